//! API errors: each has a stable code and status, and is always a JSON body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kv_core::validate::InputError;
use kv_core::ErrorCode;
use serde_json::json;

/// Why a client request failed: a stable code (which fixes the status) and a message for
/// people. Translated to HTTP in one place, [`IntoResponse`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The code this error answers with.
    #[cfg(test)]
    pub(crate) fn code(&self) -> ErrorCode {
        self.code
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl From<kv_store::StoreError> for ApiError {
    fn from(e: kv_store::StoreError) -> Self {
        if matches!(e, kv_store::StoreError::Installing) {
            return Self::new(
                ErrorCode::Unavailable,
                "this node is installing a snapshot; ask another node or again shortly",
            );
        }
        tracing::error!(error = %e, "storage read failed");
        Self::new(ErrorCode::Internal, format!("storage: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).expect("every error code has a valid status");
        let body = json!({ "error": { "code": self.code.as_str(), "message": self.message } });
        let mut response = (status, axum::Json(body)).into_response();
        if self.code == ErrorCode::Unauthenticated {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"quorum-kv\""),
            );
        }
        if matches!(
            status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
        ) {
            // hyper does not keep a connection whose request was refused as too large;
            // saying so keeps clients from reusing it for their next request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

pub(crate) async fn route_not_found() -> ApiError {
    ApiError::new(ErrorCode::RouteNotFound, "no such route")
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `| status | `code` | … |` rows of README's error table.
    fn readme_error_table() -> Vec<(u16, String)> {
        let readme = include_str!("../../../../README.md");
        let table = readme
            .split("| Status | Code | When |")
            .nth(1)
            .expect("README has the error table");
        table
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|row| {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                let status = cells[1].parse().expect("a status number");
                let code = cells[2].trim_matches('`').to_owned();
                (status, code)
            })
            .collect()
    }

    #[test]
    fn readme_lists_every_error_code_with_its_status() {
        let documented = readme_error_table();
        let coded: Vec<(u16, String)> = ErrorCode::ALL
            .iter()
            .map(|c| (c.status(), c.as_str().to_owned()))
            .collect();
        assert_eq!(
            documented, coded,
            "README's error table must equal ErrorCode::ALL"
        );
    }

    #[test]
    fn an_error_answers_with_its_codes_status_as_json() {
        for &code in ErrorCode::ALL {
            let response = ApiError::new(code, "why").into_response();
            assert_eq!(response.status().as_u16(), code.status());
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "application/json",
                "{code}"
            );
        }
    }
}
