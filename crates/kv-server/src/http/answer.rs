//! Encoding the answers of `/v1/kv`: entries, pages, write results and failed
//! preconditions. Stored values are validated JSON text, so they are copied into answers
//! as they are rather than parsed again.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kv_core::{Entry, ErrorCode, Failure, OpResult};
use serde::Serialize;
use utoipa::ToSchema;

use super::leader::Local;
use super::{ApiError, App};

fn etag(revision: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\""))
        .expect("a quoted number is a valid header value")
}

/// A JSON answer, with the entry's revision as its ETag when there is one.
pub(crate) fn json_response(status: StatusCode, body: Vec<u8>, revision: Option<u64>) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(r) = revision {
        headers.insert(header::ETAG, etag(r));
    }
    response
}

fn push_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("strings and numbers always serialize");
}

/// An entry's metadata as it goes out: everything but the value.
struct Meta {
    revision: u64,
    create_revision: u64,
    version: u64,
    expires_at_ms: Option<u64>,
}

impl Meta {
    fn of(e: &Entry) -> Self {
        Self {
            revision: e.revision,
            create_revision: e.create_revision,
            version: e.version,
            expires_at_ms: e.expires_at_ms,
        }
    }
}

/// Writes `{"key", "value"?, "revision", "create_revision", "version", "expires_at_ms",
/// "ttl_ms"}`; `ttl_ms` is what is left at `now_ms`.
fn push_entry(out: &mut Vec<u8>, key: &str, meta: &Meta, now_ms: u64, value: Option<&[u8]>) {
    out.reserve(128 + key.len() + value.map_or(0, <[u8]>::len));
    out.extend_from_slice(b"{\"key\":");
    push_json(out, key);
    if let Some(v) = value {
        out.extend_from_slice(b",\"value\":");
        out.extend_from_slice(v);
    }
    out.extend_from_slice(b",\"revision\":");
    push_json(out, &meta.revision);
    out.extend_from_slice(b",\"create_revision\":");
    push_json(out, &meta.create_revision);
    out.extend_from_slice(b",\"version\":");
    push_json(out, &meta.version);
    out.extend_from_slice(b",\"expires_at_ms\":");
    push_json(out, &meta.expires_at_ms);
    out.extend_from_slice(b",\"ttl_ms\":");
    push_json(out, &meta.expires_at_ms.map(|at| at.saturating_sub(now_ms)));
    out.push(b'}');
}

/// The OpenAPI schema of an entry with its value, as [`push_entry`] writes it. A test
/// decodes the encoder's output into it, so the two cannot drift apart.
#[derive(ToSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[serde(deny_unknown_fields)]
#[schema(as = Entry, description = "An entry with its value.")]
#[allow(
    dead_code,
    reason = "an OpenAPI schema of a hand-encoded answer, decoded only in tests"
)]
pub(crate) struct EntryAnswer {
    /// The key.
    key: String,
    /// The value, the JSON document as it was written.
    value: serde_json::Value,
    /// The log index of the key's last change; also its `ETag`.
    revision: u64,
    /// The log index that created the key.
    create_revision: u64,
    /// Writes since the key was created, counting from 1.
    #[schema(minimum = 1)]
    version: u64,
    /// When the key expires (Unix milliseconds), null if never.
    #[schema(required = true)]
    expires_at_ms: Option<u64>,
    /// Milliseconds left until it expires, null if never.
    #[schema(required = true)]
    ttl_ms: Option<u64>,
}

/// The OpenAPI schema of an entry without its value: the answer to a write, and a list
/// item with `keys_only=true`.
#[derive(ToSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[serde(deny_unknown_fields)]
#[schema(as = EntryMeta, description = "An entry without its value: the answer to a write, and a list item with `keys_only=true`.")]
#[allow(
    dead_code,
    reason = "an OpenAPI schema of a hand-encoded answer, decoded only in tests"
)]
pub(crate) struct EntryMetaAnswer {
    /// The key.
    key: String,
    /// The log index of the key's last change; also its `ETag`.
    revision: u64,
    /// The log index that created the key.
    create_revision: u64,
    /// Writes since the key was created, counting from 1.
    #[schema(minimum = 1)]
    version: u64,
    /// When the key expires (Unix milliseconds), null if never.
    #[schema(required = true)]
    expires_at_ms: Option<u64>,
    /// Milliseconds left until it expires, null if never.
    #[schema(required = true)]
    ttl_ms: Option<u64>,
}

/// The OpenAPI schema of one list page, as [`page`] writes it.
#[derive(ToSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[serde(deny_unknown_fields)]
#[schema(as = Page, description = "One page of a list.")]
#[allow(
    dead_code,
    reason = "an OpenAPI schema of a hand-encoded answer, decoded only in tests"
)]
pub(crate) struct PageAnswer {
    /// Entries in key order: with their values, or without them when `keys_only=true`.
    items: Vec<ListedAnswer>,
    /// The last key when more may follow (pass it as `after`), else null.
    #[schema(required = true)]
    next: Option<String>,
}

/// A list item: an entry with its value, or only its key and metadata.
#[derive(ToSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[serde(untagged)]
#[allow(
    dead_code,
    reason = "an OpenAPI schema of a hand-encoded answer, decoded only in tests"
)]
pub(crate) enum ListedAnswer {
    Entry(EntryAnswer),
    Meta(EntryMetaAnswer),
}

/// The OpenAPI schema of a failed precondition, as [`precondition_failed`] writes it.
#[derive(ToSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[serde(deny_unknown_fields)]
#[schema(as = PreconditionFailed, description = "A failed precondition, with the key's current entry.")]
#[allow(
    dead_code,
    reason = "an OpenAPI schema of a hand-encoded answer, decoded only in tests"
)]
pub(crate) struct PreconditionFailedAnswer<'a> {
    #[serde(borrow)]
    #[schema(schema_with = precondition_error)]
    error: super::error::ErrorDetail<'a>,
    /// The key's current entry, null when it is absent.
    #[schema(required = true)]
    current: Option<EntryAnswer>,
}

fn precondition_error() -> utoipa::openapi::schema::Schema {
    super::error::error_detail_schema(StatusCode::PRECONDITION_FAILED.as_u16())
}

/// `{"deleted": bool, "revision"}`: the answer to a key's delete.
#[derive(Serialize, ToSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[serde(deny_unknown_fields)]
#[schema(as = Deleted)]
pub(crate) struct DeletedAnswer {
    /// Whether the key was there (deleting a missing key is not an error).
    deleted: bool,
    /// The log index of the delete; the key's last revision when nothing was deleted.
    revision: u64,
}

/// `{"revision"}`: every key under the prefix is deleted at this revision.
#[derive(Serialize, ToSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[serde(deny_unknown_fields)]
#[schema(as = PrefixDeleted)]
pub(crate) struct PrefixDeletedAnswer {
    /// The log index of the prefix delete.
    revision: u64,
}

/// `{"deleted": n, "revision"}`: a prefix delete's answer recorded (under an
/// Idempotency-Key) before prefix deletes became tombstones, replayed.
#[derive(Serialize, ToSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[serde(deny_unknown_fields)]
#[schema(as = PrefixDeletedCount)]
pub(crate) struct PrefixDeletedCountAnswer {
    /// How many keys were deleted.
    deleted: u64,
    /// The log index of the prefix delete.
    revision: u64,
}

/// The answer to a prefix delete: tombstoned, or a count replayed from an old record.
#[derive(ToSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[serde(untagged)]
#[allow(
    dead_code,
    reason = "an OpenAPI schema of a hand-encoded answer, decoded only in tests"
)]
pub(crate) enum PrefixDeleteAnswer {
    Tombstoned(PrefixDeletedAnswer),
    Counted(PrefixDeletedCountAnswer),
}

/// `{"session", "expires_at_ms"}`: an opened client session.
#[derive(Serialize, ToSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[serde(deny_unknown_fields)]
#[schema(as = SessionOpened)]
pub(crate) struct SessionAnswer<'a> {
    /// The session id, 32 hex digits, for the `Kv-Session` header.
    #[schema(value_type = String, pattern = "^[0-9a-f]{32}$")]
    session: &'a str,
    /// When the session ends without writes (Unix milliseconds).
    expires_at_ms: u64,
}

/// `200` with a live entry and its value.
pub(crate) fn entry(key: &str, e: &Entry, now_ms: u64) -> Response {
    let mut body = Vec::new();
    push_entry(&mut body, key, &Meta::of(e), now_ms, Some(&e.value));
    json_response(StatusCode::OK, body, Some(e.revision))
}

/// `200 {"items": [...], "next": K|null}`: one list page; `next` is the last key when
/// more may follow.
pub(crate) fn page(
    items: &[(String, Entry)],
    more: bool,
    keys_only: bool,
    now_ms: u64,
) -> Response {
    let mut body = b"{\"items\":[".to_vec();
    for (i, (key, e)) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let value = (!keys_only).then_some(e.value.as_slice());
        push_entry(&mut body, key, &Meta::of(e), now_ms, value);
    }
    body.extend_from_slice(b"],\"next\":");
    let next = items.last().filter(|_| more).map(|(k, _)| k.as_str());
    push_json(&mut body, &next);
    body.push(b'}');
    json_response(StatusCode::OK, body, None)
}

/// `412` with the code of the failed precondition and the key's current entry (null
/// when absent), so the caller can act on it without another read.
fn precondition_failed(
    key: &str,
    failure: Failure,
    current: Option<Entry>,
    now_ms: u64,
) -> Response {
    let message = match failure {
        Failure::KeyExists => "the key already exists; current holds its entry",
        Failure::RevisionMismatch => {
            "the key is not at the expected revision; current holds its entry (null when absent)"
        }
        // Answered as plain errors by `written`; listed for completeness.
        Failure::QuotaExceeded
        | Failure::PrefixDeletesPending
        | Failure::RecordsFull
        | Failure::SessionWindowFull
        | Failure::Unauthenticated
        | Failure::Forbidden
        | Failure::TokensFull => "the write was refused",
    };
    let code: ErrorCode = failure.code();
    let mut body = b"{\"error\":{\"code\":".to_vec();
    push_json(&mut body, code.as_str());
    body.extend_from_slice(b",\"message\":");
    push_json(&mut body, message);
    body.extend_from_slice(b"},\"current\":");
    let revision = current.as_ref().map(|e| e.revision);
    match current {
        Some(e) => push_entry(&mut body, key, &Meta::of(&e), now_ms, Some(&e.value)),
        None => body.extend_from_slice(b"null"),
    }
    body.push(b'}');
    json_response(StatusCode::PRECONDITION_FAILED, body, revision)
}

/// `200` with a delete's answer.
fn deleted<T: Serialize>(answer: &T) -> Response {
    let body = serde_json::to_vec(answer).expect("a small object serializes");
    json_response(StatusCode::OK, body, None)
}

/// Why a write was refused without a precondition failing, as a plain error.
pub(crate) fn refused(failure: Failure) -> ApiError {
    let message = match failure {
        Failure::QuotaExceeded => {
            "storing this would take the keys and values stored past limits.max_data_bytes; \
             writes that grow the data resume once deletes or expiry make room"
        }
        Failure::PrefixDeletesPending => {
            "too many prefix deletes are still removing their keys; retry shortly"
        }
        Failure::RecordsFull => {
            "recording this write's answer would take the idempotency records, sessions and \
             session answers stored past limits.max_records; it was not applied. Writes \
             without an Idempotency-Key or Kv-Session go on, and records free up as they expire"
        }
        Failure::SessionWindowFull => {
            "this session already keeps the answers of its most unacknowledged writes; \
             acknowledge some (raise ack) before sending more"
        }
        Failure::Unauthenticated => {
            "the token was revoked before this write applied; it was not applied"
        }
        Failure::Forbidden => {
            "the token does not grant this write (or token management); it was not applied"
        }
        Failure::TokensFull => {
            "the cluster keeps as many tokens as it can; revoke one before creating another"
        }
        Failure::KeyExists | Failure::RevisionMismatch => "the precondition failed",
    };
    ApiError::new(failure.code(), message)
}

/// The answer to an applied write of `key`. `created` says a success is a creation (201).
pub(crate) fn written(
    app: &App,
    key: &str,
    result: OpResult,
    created: bool,
) -> Result<Local, ApiError> {
    let now_ms = app.read_time_ms();
    let response = match result {
        OpResult::Failed { failure, .. } if failure.is_transient() => return Err(refused(failure)),
        OpResult::Failed { failure, current } => precondition_failed(key, failure, current, now_ms),
        OpResult::Written {
            revision,
            create_revision,
            version,
            expires_at_ms,
        } => {
            let meta = Meta {
                revision,
                create_revision,
                version,
                expires_at_ms,
            };
            let mut body = Vec::new();
            push_entry(&mut body, key, &meta, now_ms, None);
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json_response(status, body, Some(revision))
        }
        OpResult::SessionOpened { expires_at_ms } => {
            let body = serde_json::to_vec(&SessionAnswer {
                session: key,
                expires_at_ms,
            })
            .expect("a small object serializes");
            json_response(StatusCode::CREATED, body, None)
        }
        OpResult::PrefixDeleted { revision } => deleted(&PrefixDeletedAnswer { revision }),
        OpResult::DeletedPrefix {
            deleted: n,
            revision,
        } => deleted(&PrefixDeletedCountAnswer {
            deleted: n,
            revision,
        }),
        OpResult::Deleted {
            deleted: d,
            revision,
        } => deleted(&DeletedAnswer {
            deleted: d,
            revision,
        }),
        other => {
            return Err(ApiError::new(
                ErrorCode::Internal,
                format!("unexpected write result {other:?}"),
            ))
        }
    };
    Ok(Local::Done(response))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_at(revision: u64, expires_at_ms: Option<u64>, value: &str) -> Entry {
        Entry {
            value: value.as_bytes().to_vec(),
            revision,
            create_revision: 2,
            version: 3,
            expires_at_ms,
        }
    }

    fn json_of(body: &[u8]) -> serde_json::Value {
        serde_json::from_slice(body).expect("answers are JSON")
    }

    #[test]
    fn entries_carry_the_value_as_sent_and_the_ttl_left() {
        let mut body = Vec::new();
        let e = entry_at(7, Some(10_500), r#"{"a": [1, 2.50]}"#);
        push_entry(&mut body, "k\"ey", &Meta::of(&e), 10_000, Some(&e.value));
        assert!(body.windows(16).any(|w| w == br#"{"a": [1, 2.50]}"#));
        let v = json_of(&body);
        assert_eq!(v["key"], "k\"ey");
        assert_eq!(v["revision"], 7);
        assert_eq!(v["create_revision"], 2);
        assert_eq!(v["version"], 3);
        assert_eq!(v["expires_at_ms"], 10_500);
        assert_eq!(v["ttl_ms"], 500);
    }

    #[test]
    fn pages_name_the_next_key_only_when_more_may_follow() {
        let items = vec![
            ("a".to_owned(), entry_at(1, None, "1")),
            ("b".to_owned(), entry_at(2, None, "2")),
        ];
        let body = |more, keys_only| {
            let response = page(&items, more, keys_only, 0);
            let bytes = body_bytes(response);
            json_of(&bytes)
        };
        let v = body(true, false);
        assert_eq!(v["next"], "b");
        assert_eq!(v["items"][1]["value"], 2);
        assert_eq!(v["items"][0]["ttl_ms"], serde_json::Value::Null);
        let v = body(false, true);
        assert_eq!(v["next"], serde_json::Value::Null);
        assert!(v["items"][0].get("value").is_none());
    }

    #[test]
    fn a_failed_precondition_is_an_error_body_with_the_current_entry() {
        let e = entry_at(9, None, "\"worker-a\"");
        let response = precondition_failed("lock", Failure::KeyExists, Some(e), 0);
        assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
        assert_eq!(response.headers()[header::ETAG], "\"9\"");
        let v = json_of(&body_bytes(response));
        assert_eq!(v["error"]["code"], "key_exists");
        assert_eq!(v["current"]["value"], "worker-a");
        let response = precondition_failed("lock", Failure::RevisionMismatch, None, 0);
        let v = json_of(&body_bytes(response));
        assert_eq!(v["error"]["code"], "revision_mismatch");
        assert_eq!(v["current"], serde_json::Value::Null);
    }

    #[test]
    fn entries_and_pages_are_what_their_schemas_describe() {
        let e = entry_at(7, Some(10_500), r#"{"a": [1, null]}"#);
        let got: EntryAnswer =
            serde_json::from_slice(&body_bytes(entry("k/1", &e, 10_000))).expect("an Entry");
        assert_eq!((got.key.as_str(), got.ttl_ms), ("k/1", Some(500)));
        let forever = entry_at(8, None, "null");
        let got: EntryAnswer =
            serde_json::from_slice(&body_bytes(entry("k", &forever, 0))).expect("an Entry");
        assert_eq!(
            (got.value, got.expires_at_ms),
            (serde_json::Value::Null, None)
        );

        let mut written = Vec::new();
        push_entry(&mut written, "k", &Meta::of(&e), 0, None);
        let got: EntryMetaAnswer = serde_json::from_slice(&written).expect("an EntryMeta");
        assert_eq!(got.version, 3);
        // The schemas forbid what they do not name: an entry is not an EntryMeta.
        assert!(serde_json::from_slice::<EntryMetaAnswer>(&body_bytes(entry("k", &e, 0))).is_err());

        let items = vec![("a".to_owned(), e.clone()), ("b".to_owned(), forever)];
        for keys_only in [false, true] {
            for more in [false, true] {
                let bytes = body_bytes(page(&items, more, keys_only, 0));
                let got: PageAnswer = serde_json::from_slice(&bytes).expect("a Page");
                assert_eq!(got.next.is_some(), more);
                for item in got.items {
                    assert_eq!(matches!(item, ListedAnswer::Meta(_)), keys_only);
                }
            }
        }
        let empty: PageAnswer =
            serde_json::from_slice(&body_bytes(page(&[], false, false, 0))).expect("a Page");
        assert!(empty.items.is_empty());
    }

    #[test]
    fn failed_preconditions_are_what_their_schema_describes() {
        let e = entry_at(9, Some(5), "\"worker-a\"");
        for (failure, current) in [
            (Failure::KeyExists, Some(e.clone())),
            (Failure::RevisionMismatch, Some(e)),
            (Failure::RevisionMismatch, None),
        ] {
            let bytes = body_bytes(precondition_failed("lock", failure, current.clone(), 0));
            let got: PreconditionFailedAnswer<'_> =
                serde_json::from_slice(&bytes).expect("a PreconditionFailed");
            assert_eq!(got.error.code, failure.code().as_str());
            assert_eq!(got.current.is_some(), current.is_some());
        }
    }

    #[test]
    fn delete_and_session_answers_are_what_their_schemas_describe() {
        let bytes = body_bytes(deleted(&DeletedAnswer {
            deleted: true,
            revision: 4,
        }));
        let _: DeletedAnswer = serde_json::from_slice(&bytes).expect("a Deleted");
        for bytes in [
            body_bytes(deleted(&PrefixDeletedAnswer { revision: 4 })),
            body_bytes(deleted(&PrefixDeletedCountAnswer {
                deleted: 2,
                revision: 4,
            })),
        ] {
            let _: PrefixDeleteAnswer = serde_json::from_slice(&bytes).expect("a prefix delete");
        }
        let session = serde_json::to_vec(&SessionAnswer {
            session: "0123456789abcdef0123456789abcdef",
            expires_at_ms: 1,
        })
        .expect("serializes");
        let _: SessionAnswer<'_> = serde_json::from_slice(&session).expect("a SessionOpened");
    }

    /// The whole body of an answer built in memory.
    fn body_bytes(response: Response) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a test runtime");
        rt.block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
            .expect("an in-memory body")
            .to_vec()
    }
}
