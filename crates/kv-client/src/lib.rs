//! Async HTTP client for quorum-kv.
//!
//! Invariants: this crate talks HTTP only and never depends on RocksDB or openraft (it
//! shares only kv-core's input checks, error codes and key paths). Every request has a
//! timeout, every call an overall deadline. Every write carries one client-session write
//! number per logical call, reused on every retry, so a retried write is applied at most
//! once (a caller's own `Idempotency-Key` header replaces it).
//!
//! Retries: connection errors, `503` and `504 outcome_unknown` are retried with capped
//! exponential backoff and jitter, moving to the next endpoint each time. Other answers,
//! `4xx` included, are final.

mod error;
mod pager;
mod retry;
mod session;

use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use error::{ClientError, ServerError};
pub use kv_core::ErrorCode;
pub use pager::{ListPages, PageStream};
pub use retry::RetryPolicy;

use error::decode_ok;
use retry::Call;

/// The local three-node cluster that `scripts/cluster.sh up` starts.
pub const LOCAL_CLUSTER: &str = "http://127.0.0.1:7001,http://127.0.0.1:7002,http://127.0.0.1:7003";

/// Endpoints from `KV_ENDPOINTS` (comma-separated URLs), else [`LOCAL_CLUSTER`].
pub fn endpoints_from_env() -> Vec<String> {
    std::env::var("KV_ENDPOINTS")
        .unwrap_or_else(|_| LOCAL_CLUSTER.to_owned())
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

/// One key's entry as the server reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry<T> {
    pub key: String,
    pub value: T,
    /// Log index of the key's last change; the ETag, and what compare-and-set takes.
    pub revision: u64,
    pub create_revision: u64,
    /// Writes since the key was created, from 1.
    pub version: u64,
    pub expires_at_ms: Option<u64>,
    /// Milliseconds left at the time the server answered.
    pub ttl_ms: Option<u64>,
}

/// Metadata of a successful write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteMeta {
    pub key: String,
    pub revision: u64,
    pub create_revision: u64,
    pub version: u64,
    pub expires_at_ms: Option<u64>,
}

/// What a delete reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// Whether a live key was there.
    pub deleted: bool,
    /// The delete's revision.
    pub revision: u64,
}

/// What a prefix delete reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedPrefix {
    /// Every key under the prefix written before this revision is deleted.
    pub revision: u64,
}

/// What a token may do on the keys under `prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenGrant {
    pub prefix: String,
    /// `"read"` or `"write"` (which includes reading).
    pub access: String,
}

/// A token to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    /// Who holds it, for people.
    pub name: String,
    /// May manage tokens and read the cluster's state.
    pub admin: bool,
    pub grants: Vec<TokenGrant>,
}

/// A token as the cluster lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// 16 hex digits.
    pub id: String,
    pub name: String,
    pub admin: bool,
    pub grants: Vec<TokenGrant>,
    pub created_ms: u64,
}

/// A token just created: its id and its secret, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    pub id: String,
    /// What clients send as `Authorization: Bearer <token>`.
    pub token: String,
    pub revision: u64,
}

/// What a revoke reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// Whether the token existed.
    pub revoked: bool,
    pub revision: u64,
}

/// Outcome of [`KvClient::create`].
#[derive(Debug, Clone, PartialEq)]
pub enum Created<T> {
    /// This call created the key.
    Created(WriteMeta),
    /// The key existed: the entry that won.
    Exists(Entry<T>),
}

/// Outcome of [`KvClient::compare_and_set`] and [`KvClient::delete_if`].
#[derive(Debug, Clone, PartialEq)]
pub enum Swapped<M, T> {
    /// The write applied.
    Swapped(M),
    /// The key was at another revision (its entry) or absent (`None`).
    Mismatch(Option<Entry<T>>),
}

/// How a read is served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Confirmed by the leader: reflects every write acknowledged before the call.
    #[default]
    Linearizable,
    /// The contacted node's local copy; may lag.
    Stale,
}

/// Options of [`KvClient::get_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    pub consistency: Consistency,
}

/// Options of [`KvClient::set`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SetOptions {
    /// Expire this long after the write (rounded up to whole seconds).
    pub ttl: Option<Duration>,
    /// Keep the key's current expiry.
    pub keep_ttl: bool,
}

/// How a [`KvClient`] connects and retries.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// Deadlines and backoff.
    pub policy: RetryPolicy,
    /// Sent as `Authorization: Bearer <token>` with every request, for clusters with
    /// auth on.
    pub token: Option<String>,
    /// PEM certificates to trust for `https://` endpoints, instead of the system's:
    /// the cluster's CA.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate and its private key (PEM, one after the other), for nodes
    /// with `require_client_cert = true`.
    pub identity_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("policy", &self.policy)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field(
                "identity_pem",
                &self.identity_pem.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl ClientOptions {
    /// Options from the environment: `KV_TOKEN`, and the paths of PEM files in
    /// `KV_CACERT`, `KV_CERT` and `KV_KEY` (the client certificate and its key).
    pub fn from_env() -> Result<Self, ClientError> {
        let read = |name: &str| -> Result<Option<Vec<u8>>, ClientError> {
            match std::env::var_os(name).filter(|p| !p.is_empty()) {
                Some(path) => std::fs::read(&path).map(Some).map_err(|e| {
                    ClientError::Setup(format!("reading {name} {}: {e}", path.to_string_lossy()))
                }),
                None => Ok(None),
            }
        };
        let identity_pem = match (read("KV_CERT")?, read("KV_KEY")?) {
            (Some(mut cert), Some(key)) => {
                cert.extend(key);
                Some(cert)
            }
            (None, None) => None,
            _ => {
                return Err(ClientError::Setup(
                    "set both KV_CERT and KV_KEY, or neither".into(),
                ))
            }
        };
        Ok(Self {
            policy: RetryPolicy::default(),
            token: std::env::var("KV_TOKEN").ok().filter(|t| !t.is_empty()),
            ca_pem: read("KV_CACERT")?,
            identity_pem,
        })
    }
}

/// A client over one or more node URLs such as `http://127.0.0.1:7001`.
#[derive(Clone)]
pub struct KvClient {
    call: Call,
}

fn ttl_query(ttl: Duration) -> String {
    // Whole seconds, rounded up: a TTL never ends earlier than asked.
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    format!("ttl={}", secs.max(1))
}

impl KvClient {
    /// A client trying `endpoints` in turn, with the default [`RetryPolicy`].
    pub fn new(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Self, ClientError> {
        Self::with_policy(endpoints, RetryPolicy::default())
    }

    /// A client with its own retry policy and deadline.
    pub fn with_policy(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
        policy: RetryPolicy,
    ) -> Result<Self, ClientError> {
        let options = ClientOptions {
            policy,
            ..ClientOptions::default()
        };
        Self::with_options(endpoints, options)
    }

    /// A client with a token, a CA to trust, or its own retry policy.
    pub fn with_options(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(|e| e.into().trim_end_matches('/').to_owned())
            .collect();
        Ok(Self {
            call: Call::new(endpoints, options)?,
        })
    }

    fn key_path(key: &str) -> Result<String, ClientError> {
        kv_core::validate::check_key(key)?;
        Ok(kv_core::key_path(key))
    }

    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ClientError> {
        serde_json::to_vec(value).map_err(|e| ClientError::Codec(e.to_string()))
    }

    /// Reads `key` linearizably; `None` when absent or expired.
    pub async fn get<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Entry<T>>, ClientError> {
        self.get_with(key, ReadOptions::default()).await
    }

    /// Reads `key` with options; `None` when absent or expired.
    pub async fn get_with<T: DeserializeOwned>(
        &self,
        key: &str,
        options: ReadOptions,
    ) -> Result<Option<Entry<T>>, ClientError> {
        let mut path = Self::key_path(key)?;
        if options.consistency == Consistency::Stale {
            path.push_str("?consistency=stale");
        }
        match decode_ok(self.call.run(Method::GET, &path, None, &[], false).await?) {
            Ok(entry) => Ok(Some(entry)),
            Err(ClientError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `value` to `key` unconditionally.
    pub async fn set<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        options: SetOptions,
    ) -> Result<WriteMeta, ClientError> {
        self.set_with_headers(key, value, options, &[]).await
    }

    /// [`KvClient::set`] under an idempotency key of the caller's (a webhook delivery's
    /// id, say): the cluster applies it at most once for as long as it keeps the key's
    /// record (`limits.idempotency_retention_s`, 24 h by default), across processes and
    /// restarts; a repeat gets the first answer. Without one, a call is applied at most
    /// once across its own retries only.
    pub async fn set_idempotent<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        options: SetOptions,
        idempotency_key: &str,
    ) -> Result<WriteMeta, ClientError> {
        kv_core::validate::check_idempotency_key(idempotency_key.as_bytes())?;
        let header = [("idempotency-key", idempotency_key.to_owned())];
        self.set_with_headers(key, value, options, &header).await
    }

    async fn set_with_headers<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        options: SetOptions,
        headers: &[(&str, String)],
    ) -> Result<WriteMeta, ClientError> {
        let mut path = Self::key_path(key)?;
        match (options.ttl, options.keep_ttl) {
            (Some(ttl), _) => path = format!("{path}?{}", ttl_query(ttl)),
            (None, true) => path.push_str("?keep_ttl=true"),
            (None, false) => {}
        }
        let body = Self::encode(value)?;
        decode_ok(
            self.call
                .run(Method::PUT, &path, Some(body), headers, true)
                .await?,
        )
    }

    /// Creates `key` only if it is absent (or expired). Exactly one of any number of
    /// concurrent creators gets `Created`; the others get the winner's entry.
    pub async fn create<T: Serialize + DeserializeOwned>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<Created<T>, ClientError> {
        let mut path = Self::key_path(key)?;
        if let Some(ttl) = ttl {
            path = format!("{path}?{}", ttl_query(ttl));
        }
        let body = Self::encode(value)?;
        let answer = self
            .call
            .run(
                Method::PUT,
                &path,
                Some(body),
                &[("if-none-match", "*".into())],
                true,
            )
            .await?;
        match decode_ok(answer) {
            Ok(meta) => Ok(Created::Created(meta)),
            Err(ClientError::PreconditionFailed {
                code,
                current: Some(current),
            }) if code == ErrorCode::KeyExists.as_str() => Ok(Created::Exists(
                serde_json::from_value(current).map_err(|e| ClientError::Codec(e.to_string()))?,
            )),
            Err(e) => Err(e),
        }
    }

    /// Writes `value` only if `key` is at `revision` (compare-and-swap).
    pub async fn compare_and_set<T: Serialize + DeserializeOwned>(
        &self,
        key: &str,
        value: &T,
        revision: u64,
    ) -> Result<Swapped<WriteMeta, T>, ClientError> {
        let path = Self::key_path(key)?;
        let body = Self::encode(value)?;
        let if_match = [("if-match", format!("\"{revision}\""))];
        mismatch_or(decode_ok(
            self.call
                .run(Method::PUT, &path, Some(body), &if_match, true)
                .await?,
        ))
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &str) -> Result<Deleted, ClientError> {
        let path = Self::key_path(key)?;
        decode_ok(
            self.call
                .run(Method::DELETE, &path, None, &[], true)
                .await?,
        )
    }

    /// Deletes `key` only if it is at `revision`.
    pub async fn delete_if<T: DeserializeOwned>(
        &self,
        key: &str,
        revision: u64,
    ) -> Result<Swapped<Deleted, T>, ClientError> {
        let path = Self::key_path(key)?;
        let if_match = [("if-match", format!("\"{revision}\""))];
        mismatch_or(decode_ok(
            self.call
                .run(Method::DELETE, &path, None, &if_match, true)
                .await?,
        ))
    }

    /// Pages through the live keys starting with `prefix`, in key order.
    pub fn list<T: DeserializeOwned>(&self, prefix: &str) -> ListPages<'_, T> {
        self.list_with(prefix, 100)
    }

    /// [`KvClient::list`] with a page size (1 to 1000).
    pub fn list_with<T: DeserializeOwned>(
        &self,
        prefix: &str,
        page_size: usize,
    ) -> ListPages<'_, T> {
        ListPages::new(self, prefix, page_size)
    }

    /// Deletes every key starting with `prefix` (which must not be empty).
    pub async fn delete_prefix(&self, prefix: &str) -> Result<DeletedPrefix, ClientError> {
        let qs = serde_urlencoded::to_string([("prefix", prefix)])
            .map_err(|e| ClientError::Codec(e.to_string()))?;
        decode_ok(
            self.call
                .run(Method::DELETE, &format!("/v1/kv?{qs}"), None, &[], true)
                .await?,
        )
    }

    /// Creates a token (an admin's call). The answer holds its secret, `token`, which
    /// the cluster never shows again.
    pub async fn create_token(&self, spec: &NewToken) -> Result<CreatedToken, ClientError> {
        let body = Self::encode(spec)?;
        // Its secret is shown once, so a retry cannot get it back: retried only while no
        // attempt may have applied, else `OutcomeUnknown` (list the tokens to see).
        decode_ok(self.call.run_once(Method::POST, "/v1/tokens", body).await?)
    }

    /// Every token, without secrets (an admin's call).
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, ClientError> {
        #[derive(Deserialize)]
        struct Tokens {
            tokens: Vec<TokenInfo>,
        }
        let all: Tokens = decode_ok(
            self.call
                .run(Method::GET, "/v1/tokens", None, &[], false)
                .await?,
        )?;
        Ok(all.tokens)
    }

    /// Revokes token `id` (16 hex digits) on every node; `revoked` is false if it did
    /// not exist (an admin's call).
    pub async fn revoke_token(&self, id: &str) -> Result<Revoked, ClientError> {
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ClientError::Codec(format!(
                "a token id is 16 hex digits, not {id:?}"
            )));
        }
        decode_ok(
            self.call
                .run(Method::DELETE, &format!("/v1/tokens/{id}"), None, &[], true)
                .await?,
        )
    }

    /// The members with their roles and replication lag, as the leader sees them (an
    /// admin's call).
    pub async fn members(&self) -> Result<Value, ClientError> {
        decode_ok(
            self.call
                .run(Method::GET, "/v1/admin/members", None, &[], false)
                .await?,
        )
    }

    /// Adds a node as a learner (an admin's call); the answer holds its id and the
    /// cluster id it joins. At most once: after an attempt that may have applied, the
    /// outcome is `OutcomeUnknown` (list the members to see).
    pub async fn add_member(
        &self,
        client_addr: &str,
        raft_addr: &str,
        id: Option<u64>,
    ) -> Result<Value, ClientError> {
        let mut body = serde_json::json!({ "client_addr": client_addr, "raft_addr": raft_addr });
        if let Some(id) = id {
            body["id"] = id.into();
        }
        let body = Self::encode(&body)?;
        decode_ok(
            self.call
                .run_once(Method::POST, "/v1/admin/members", body)
                .await?,
        )
    }

    /// Makes learner `id` a voter once it has caught up (an admin's call); refused with
    /// `not_caught_up` before.
    pub async fn promote_member(&self, id: u64) -> Result<Value, ClientError> {
        let path = format!("/v1/admin/members/{id}/promote");
        decode_ok(self.call.run_once(Method::POST, &path, Vec::new()).await?)
    }

    /// Removes node `id`, voter or learner, the leader included (an admin's call).
    pub async fn remove_member(&self, id: u64) -> Result<Value, ClientError> {
        let path = format!("/v1/admin/members/{id}");
        decode_ok(
            self.call
                .run_once(Method::DELETE, &path, Vec::new())
                .await?,
        )
    }

    /// Hands leadership to voter `to`, or to the voter that has replicated furthest (an
    /// admin's call); answers once it leads, about a lease and an election later.
    pub async fn move_leader(&self, to: Option<u64>) -> Result<Value, ClientError> {
        let body = match to {
            Some(id) => Self::encode(&serde_json::json!({ "to": id }))?,
            None => Vec::new(),
        };
        decode_ok(
            self.call
                .run_once(Method::POST, "/v1/admin/leader", body)
                .await?,
        )
    }

    /// Downloads a backup of the whole cluster from its leader into `path` (an admin's
    /// call): streamed into `path.tmp`, checked against the SHA-256 it ends with,
    /// fsynced, then renamed, so `path` is only ever a whole, checked backup. Each chunk
    /// must arrive within the policy's request timeout.
    pub async fn backup_to(&self, path: &std::path::Path) -> Result<Backup, ClientError> {
        use tokio::io::AsyncWriteExt;
        let io = |e: std::io::Error| ClientError::Codec(format!("{}: {e}", path.display()));
        let mut response = self.call.open_stream("/v1/admin/backup").await?;
        let index = response
            .headers()
            .get("kv-backup-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| ClientError::Codec("the backup has no Kv-Backup-Index".into()))?;
        let tmp = path.with_extension("tmp");
        let mut out = tokio::fs::File::create(&tmp).await.map_err(io)?;
        let mut bytes = 0u64;
        loop {
            let chunk = tokio::time::timeout(self.call.request_timeout(), response.chunk())
                .await
                .map_err(|_| ClientError::Unavailable {
                    attempts: 1,
                    last: format!("the backup stalled after {bytes} bytes"),
                })?
                .map_err(|e| ClientError::Unavailable {
                    attempts: 1,
                    last: format!("the backup broke off after {bytes} bytes: {e}"),
                })?;
            let Some(chunk) = chunk else { break };
            bytes += chunk.len() as u64;
            out.write_all(&chunk).await.map_err(io)?;
        }
        out.sync_all().await.map_err(io)?;
        drop(out);
        let checked = tmp.clone();
        let verdict = tokio::task::spawn_blocking(move || check_backup(&checked))
            .await
            .map_err(|e| ClientError::Codec(e.to_string()))?;
        if let Err(why) = verdict {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(ClientError::Codec(format!("the backup is damaged: {why}")));
        }
        tokio::fs::rename(&tmp, path).await.map_err(io)?;
        Ok(Backup { index, bytes })
    }

    /// The cluster status as the answering node sees it.
    pub async fn cluster(&self) -> Result<Value, ClientError> {
        decode_ok(
            self.call
                .run(Method::GET, "/v1/cluster", None, &[], false)
                .await?,
        )
    }
}

/// A backup written by [`KvClient::backup_to`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Backup {
    /// The log index the backup holds every applied write up to.
    pub index: u64,
    /// Its size.
    pub bytes: u64,
}

/// Checks a backup file: its head, and its trailer's length and SHA-256.
fn check_backup(path: &std::path::Path) -> Result<(), String> {
    use kv_core::snapshot_file::{parse_head, Trailer, HEAD_LEN, TRAILER_LEN};
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if size < HEAD_LEN + TRAILER_LEN {
        return Err(format!("{size} bytes is shorter than any backup"));
    }
    let mut head = [0; HEAD_LEN as usize];
    file.read_exact(&mut head).map_err(|e| e.to_string())?;
    let meta_len = match parse_head(&head) {
        Some(Ok(len)) => u64::from(len),
        Some(Err(v)) => return Err(format!("layout version {v} is not one this kvctl reads")),
        None => return Err("it does not start as a backup".into()),
    };
    let mut end = [0; TRAILER_LEN as usize];
    file.seek(SeekFrom::Start(size - TRAILER_LEN))
        .and_then(|_| file.read_exact(&mut end))
        .map_err(|e| e.to_string())?;
    let trailer = Trailer::parse(&end).ok_or("it has no trailer (cut short?)")?;
    if HEAD_LEN + meta_len + trailer.data_len + TRAILER_LEN != size {
        return Err("its length is not the one its trailer gives".into());
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut left = size - TRAILER_LEN + 8;
    let mut buf = vec![0; 1024 * 1024];
    while left > 0 {
        let n = buf.len().min(left as usize);
        file.read_exact(&mut buf[..n]).map_err(|e| e.to_string())?;
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    if hash.finish().as_ref() != trailer.sha256 {
        return Err("it does not match its SHA-256".into());
    }
    Ok(())
}

fn mismatch_or<M, T: DeserializeOwned>(
    result: Result<M, ClientError>,
) -> Result<Swapped<M, T>, ClientError> {
    match result {
        Ok(meta) => Ok(Swapped::Swapped(meta)),
        Err(ClientError::PreconditionFailed { code, current })
            if code == ErrorCode::RevisionMismatch.as_str() =>
        {
            let current = current
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| ClientError::Codec(e.to_string()))?;
            Ok(Swapped::Mismatch(current))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_arrives_as_it_left_through_the_url_parser() {
        // The path a node forwards to the leader is the same `kv_core::key_path`.
        for key in [
            "users/1:profile",
            "a\\b",
            "sp ace/q?x#y&z=1+2",
            "caf\u{e9}/\u{1f600}",
            "a//b/",
            "%2e%2e",
            "a/%2e%2e/b",
            "a\\..\\b",
            "a/...",
            "%",
            "[x]|^",
        ] {
            let path = KvClient::key_path(key).expect("a valid key");
            let url = reqwest::Url::parse(&format!("http://127.0.0.1:1{path}")).expect("a URL");
            let sent = url.path().strip_prefix("/v1/kv/").expect("the route stays");
            let decoded = percent_encoding::percent_decode_str(sent)
                .decode_utf8()
                .expect("UTF-8");
            assert_eq!(decoded, key);
        }
    }
}
