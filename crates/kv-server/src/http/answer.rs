//! Encoding the answers of `/v1/kv`: entries, pages, write results and failed
//! preconditions. Stored values are validated JSON text, so they are copied into answers
//! as they are rather than parsed again.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kv_core::{Entry, ErrorCode, Failure, OpResult};

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

/// `{"deleted": …, "revision": …}`: whether one key was there, or for prefix deletes
/// recorded before they became tombstones, a count.
fn deleted(deleted: serde_json::Value, revision: u64) -> Response {
    let body = serde_json::to_vec(&serde_json::json!({ "deleted": deleted, "revision": revision }))
        .expect("a small object serializes");
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
            let body = serde_json::to_vec(
                &serde_json::json!({ "session": key, "expires_at_ms": expires_at_ms }),
            )
            .expect("a small object serializes");
            json_response(StatusCode::CREATED, body, None)
        }
        OpResult::PrefixDeleted { revision } => {
            let body = serde_json::to_vec(&serde_json::json!({ "revision": revision }))
                .expect("a small object serializes");
            json_response(StatusCode::OK, body, None)
        }
        OpResult::DeletedPrefix {
            deleted: n,
            revision,
        } => deleted(n.into(), revision),
        OpResult::Deleted {
            deleted: d,
            revision,
        } => deleted(d.into(), revision),
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
