//! Async HTTP client for quorum-kv.
//!
//! Invariants: this crate talks HTTP only and never depends on RocksDB or openraft
//! (it shares only kv-core's input checks). Every request has a timeout.
//!
//! This is the first cut: single-key get, put and delete against a list of endpoints,
//! moving to the next endpoint when one cannot be reached. Retries with idempotency
//! keys, conditional writes and listing come with the client issue.

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Characters escaped in a key path segment; '/' and ':' stay as they are.
const KEY_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// One key's entry as the server reports it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Entry<T> {
    pub key: String,
    pub value: T,
    pub revision: u64,
    pub create_revision: u64,
    pub version: u64,
    pub expires_at_ms: Option<u64>,
    pub ttl_ms: Option<u64>,
}

/// Metadata of a write.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WriteMeta {
    pub key: String,
    pub revision: u64,
    pub create_revision: u64,
    pub version: u64,
    pub expires_at_ms: Option<u64>,
}

/// What a delete reported.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Deleted {
    pub deleted: bool,
    pub revision: u64,
}

/// The server's error body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServerError {
    pub code: String,
    pub message: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ServerError,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid input: {0}")]
    Input(#[from] kv_core::validate::InputError),
    #[error("server answered {status}: {} ({})", .error.message, .error.code)]
    Server { status: u16, error: ServerError },
    #[error("no endpoint could be reached: {0}")]
    Unreachable(String),
    #[error("transport: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("encoding the value: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A client over one or more node URLs such as `http://127.0.0.1:7001`.
#[derive(Clone)]
pub struct KvClient {
    endpoints: Vec<String>,
    http: reqwest::Client,
}

impl KvClient {
    /// A client trying `endpoints` in order.
    pub fn new(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Self, ClientError> {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(|e| e.into().trim_end_matches('/').to_owned())
            .collect();
        if endpoints.is_empty() {
            return Err(ClientError::Unreachable("no endpoints given".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self { endpoints, http })
    }

    /// Sends to each endpoint in turn until one answers. A request that never left
    /// (connect error) moves on; so does a failed read, which is safe to repeat. A write
    /// that failed after it was sent has an unknown outcome and is reported as is.
    async fn send(
        &self,
        is_read: bool,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let mut last = String::new();
        for base in &self.endpoints {
            match build(base).send().await {
                Ok(r) => return Ok(r),
                Err(e) if e.is_connect() || is_read => last = e.to_string(),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ClientError::Unreachable(last))
    }

    async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ClientError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response.json().await?);
        }
        let bytes = response.bytes().await?;
        let error = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.error)
            .unwrap_or_else(|_| ServerError {
                code: "unparseable".into(),
                message: String::from_utf8_lossy(&bytes).into_owned(),
            });
        Err(ClientError::Server {
            status: status.as_u16(),
            error,
        })
    }

    fn key_path(key: &str) -> Result<String, ClientError> {
        kv_core::validate::check_key(key)?;
        Ok(format!("/v1/kv/{}", utf8_percent_encode(key, KEY_ESCAPES)))
    }

    /// Reads `key` linearizably; `None` when absent or expired.
    pub async fn get<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Entry<T>>, ClientError> {
        let path = Self::key_path(key)?;
        let response = self
            .send(true, |base| self.http.get(format!("{base}{path}")))
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            let e = Self::decode::<serde_json::Value>(response).await;
            return match e {
                Err(ClientError::Server { error, .. }) if error.code == "key_not_found" => Ok(None),
                Err(e) => Err(e),
                Ok(_) => Ok(None),
            };
        }
        Self::decode(response).await.map(Some)
    }

    /// Writes `value` to `key`, expiring after `ttl` (whole seconds) if given.
    pub async fn put<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<WriteMeta, ClientError> {
        let path = Self::key_path(key)?;
        let query = ttl
            .map(|t| format!("?ttl={}", t.as_secs().max(1)))
            .unwrap_or_default();
        let body = serde_json::to_vec(value)?;
        let response = self
            .send(false, |base| {
                self.http
                    .put(format!("{base}{path}{query}"))
                    .header("content-type", "application/json")
                    .body(body.clone())
            })
            .await?;
        Self::decode(response).await
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &str) -> Result<Deleted, ClientError> {
        let path = Self::key_path(key)?;
        let response = self
            .send(false, |base| self.http.delete(format!("{base}{path}")))
            .await?;
        Self::decode(response).await
    }

    /// The cluster status as the first reachable node sees it.
    pub async fn cluster(&self) -> Result<serde_json::Value, ClientError> {
        let response = self
            .send(true, |base| self.http.get(format!("{base}/v1/cluster")))
            .await?;
        Self::decode(response).await
    }
}
