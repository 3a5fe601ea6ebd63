//! Errors as OpenAI's API returns them: an HTTP status and
//! `{"error": {"message", "type", "param", "code"}}`, which the `openai`
//! clients turn into their typed exceptions (`NotFoundError`, ...).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tonic::Code;

/// A failed HTTP call.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`,
    /// `permission_error`, `not_found_error`, `server_error`.
    pub kind: &'static str,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// A machine-readable reason, when there is one.
    pub code: Option<String>,
}

impl ApiError {
    /// A request the caller must change: HTTP 400.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// Nothing of this tenant's has that name: HTTP 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// The coordinator failed: HTTP 500.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// Names the request field at fault.
    pub fn param(mut self, param: impl Into<String>) -> ApiError {
        self.param = Some(param.into());
        self
    }

    /// Sets the machine-readable reason.
    pub fn code(mut self, code: impl Into<String>) -> ApiError {
        self.code = Some(code.into());
        self
    }
}

impl From<tonic::Status> for ApiError {
    /// The gRPC service's answer as the HTTP one it stands for.
    fn from(status: tonic::Status) -> ApiError {
        let (http, kind) = match status.code() {
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                (StatusCode::BAD_REQUEST, "invalid_request_error")
            }
            Code::NotFound => (StatusCode::NOT_FOUND, "invalid_request_error"),
            Code::AlreadyExists | Code::Aborted => (StatusCode::CONFLICT, "invalid_request_error"),
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "invalid_request_error"),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "invalid_request_error"),
            Code::ResourceExhausted => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error"),
            Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "server_error"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        };
        ApiError {
            status: http,
            message: status.message().to_string(),
            kind,
            param: None,
            code: (status.code() == Code::Unauthenticated).then(|| "invalid_api_key".to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        (self.status, Json(body)).into_response()
    }
}
