//! How calls fail: the server's error body and the typed errors callers match on.

use kv_core::ErrorCode;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::retry::Attempt;

/// The server's error body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServerError {
    /// The stable code; see [`ServerError::known_code`].
    pub code: String,
    pub message: String,
}

impl ServerError {
    /// The code as one this client knows; `None` for a code a newer server added.
    pub fn known_code(&self) -> Option<ErrorCode> {
        ErrorCode::parse(&self.code)
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The key is absent or expired.
    #[error("key not found: {0}")]
    NotFound(String),
    /// A precondition did not hold; `current` is the key's entry as JSON (None if absent).
    #[error("precondition failed ({code}); current entry: {current:?}")]
    PreconditionFailed {
        code: String,
        current: Option<Value>,
    },
    /// The request was refused (a 4xx other than 404 and 412); never retried.
    #[error("request refused with {status}: {} ({})", .error.message, .error.code)]
    Rejected { status: u16, error: ServerError },
    /// No node could serve the call before the deadline; nothing was applied.
    #[error("unavailable after {attempts} attempts: {last}")]
    Unavailable { attempts: u32, last: String },
    /// A write may or may not have been applied and the deadline passed. Repeating it is
    /// safe only under an idempotency key of the caller's (`KvClient::set_idempotent`).
    #[error("outcome unknown after {attempts} attempts: {last}")]
    OutcomeUnknown { attempts: u32, last: String },
    /// Input refused before sending.
    #[error("invalid input: {0}")]
    Input(#[from] kv_core::validate::InputError),
    /// A value could not be encoded or an answer decoded.
    #[error("encoding or decoding: {0}")]
    Codec(String),
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Setup(String),
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ServerError,
    #[serde(default)]
    current: Option<Value>,
}

pub(crate) fn decode_ok<T: DeserializeOwned>(answer: Attempt) -> Result<T, ClientError> {
    if answer.status.is_success() {
        serde_json::from_slice(&answer.body).map_err(|e| ClientError::Codec(e.to_string()))
    } else {
        Err(refusal(answer))
    }
}

/// Turns a final non-success answer into its typed error.
fn refusal(answer: Attempt) -> ClientError {
    let parsed = serde_json::from_slice::<ErrorBody>(&answer.body);
    let (error, current) = match parsed {
        Ok(b) => (b.error, b.current.filter(|c| !c.is_null())),
        Err(_) => (
            ServerError {
                code: "unparseable".into(),
                message: String::from_utf8_lossy(&answer.body).into_owned(),
            },
            None,
        ),
    };
    match answer.status {
        StatusCode::NOT_FOUND if error.known_code() == Some(ErrorCode::KeyNotFound) => {
            ClientError::NotFound(error.message)
        }
        StatusCode::PRECONDITION_FAILED => ClientError::PreconditionFailed {
            code: error.code,
            current,
        },
        status => ClientError::Rejected {
            status: status.as_u16(),
            error,
        },
    }
}
