//! API errors: each has a stable code and status, and is always a JSON body.

use std::borrow::Cow;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kv_core::validate::InputError;
use kv_core::ErrorCode;
use serde::Serialize;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;

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
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().into(),
                message: self.message.as_str().into(),
            },
        };
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

/// `{"error": {"code", "message"}}`, the body of every error answer.
#[derive(Serialize)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[serde(deny_unknown_fields)]
pub(crate) struct ErrorBody<'a> {
    #[serde(borrow)]
    pub error: ErrorDetail<'a>,
}

/// An error's stable code and its message for people.
#[derive(Serialize)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[serde(deny_unknown_fields)]
pub(crate) struct ErrorDetail<'a> {
    #[serde(borrow)]
    pub code: Cow<'a, str>,
    #[serde(borrow)]
    pub message: Cow<'a, str>,
}

/// The schema of [`ErrorDetail`] for answers of `status`: its code is one of the
/// [`ErrorCode`]s with that status.
pub(crate) fn error_detail_schema(status: u16) -> Schema {
    let codes: Vec<&str> = ErrorCode::ALL
        .iter()
        .filter(|c| c.status() == status)
        .map(|c| c.as_str())
        .collect();
    assert!(!codes.is_empty(), "no error code has status {status}");
    ObjectBuilder::new()
        .property(
            "code",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(codes))
                .description(Some("The stable error code (README lists them).")),
        )
        .required("code")
        .property(
            "message",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("Why, for people; may change between versions.")),
        )
        .required("message")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        .into()
}

/// Declares one OpenAPI schema per error status, `ErrorNNN`: an [`ErrorBody`] whose code
/// has that status. Generated from [`ErrorCode::ALL`], so a new code shows up in them.
macro_rules! error_answers {
    ($($name:ident = $status:literal),* $(,)?) => {
        $(
            #[doc = concat!("The OpenAPI schema of an error answer with status ", stringify!($status), ".")]
            pub(crate) struct $name;

            impl utoipa::PartialSchema for $name {
                fn schema() -> RefOr<Schema> {
                    ObjectBuilder::new()
                        .property("error", error_detail_schema($status))
                        .required("error")
                        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
                        .into()
                }
            }

            impl utoipa::ToSchema for $name {}
        )*

        /// Every status an [`ErrorCode`] has, with its schema's name.
        #[cfg(test)]
        pub(crate) const ERROR_ANSWERS: &[(u16, &str)] = &[$(($status, stringify!($name))),*];
    };
}

error_answers! {
    Error400 = 400,
    Error401 = 401,
    Error403 = 403,
    Error404 = 404,
    Error405 = 405,
    Error408 = 408,
    Error409 = 409,
    Error413 = 413,
    Error414 = 414,
    Error415 = 415,
    Error422 = 422,
    Error431 = 431,
    Error500 = 500,
    Error503 = 503,
    Error504 = 504,
    Error507 = 507,
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
    fn every_error_status_has_its_schema() {
        let mut statuses: Vec<u16> = ErrorCode::ALL.iter().map(|c| c.status()).collect();
        statuses.dedup();
        // A failed precondition always answers with the key's entry: answer::PreconditionFailed.
        statuses.retain(|s| *s != 412);
        let described: Vec<u16> = ERROR_ANSWERS.iter().map(|(s, _)| *s).collect();
        assert_eq!(statuses, described, "error_answers! must list every status");
    }

    #[test]
    fn an_error_body_is_exactly_its_code_and_message() {
        let response = ApiError::new(ErrorCode::InvalidKey, "why").into_response();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a test runtime");
        let bytes = rt
            .block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
            .expect("an in-memory body");
        let body: ErrorBody<'_> = serde_json::from_slice(&bytes).expect("an ErrorBody");
        assert_eq!(
            (&*body.error.code, &*body.error.message),
            ("invalid_key", "why")
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
