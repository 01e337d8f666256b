//! The API's error: an HTTP status and a JSON body `{"error": "...", "field": "..."}` naming the
//! request field at fault when there is one.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault (`model`, `calibration.text`, `fit.max_kld`).
    pub field: Option<String>,
    /// Seconds to wait before retrying (`429`, `503`).
    pub retry_after: Option<u64>,
}

/// The JSON body of every error.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), field: None, retry_after: None }
    }

    /// `400`: a field of the request is wrong.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = message.into();
        let message = if message.starts_with(&field) { message } else { format!("{field}: {message}") };
        ApiError { status: StatusCode::BAD_REQUEST, message, field: Some(field), retry_after: None }
    }

    /// `403`: a path outside the roots it may be in.
    pub fn forbidden(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::FORBIDDEN, ..ApiError::field(field, message) }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError { retry_after: Some(5), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message) }
    }

    /// `429` with `Retry-After`.
    pub fn too_many(message: impl Into<String>, retry_after: u64) -> Self {
        ApiError { retry_after: Some(retry_after), ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, message) }
    }

    /// A crunch library error: a wrong job field is a `400` naming it, the rest keep `status`.
    pub fn from_crunch(e: crunch::Error, status: StatusCode) -> Self {
        match e {
            crunch::Error::Field { field, message } => ApiError::field(field, message),
            e => ApiError::new(status, e.to_string()),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<crunch_registry::RegistryError> for ApiError {
    fn from(e: crunch_registry::RegistryError) -> Self {
        match e {
            crunch_registry::RegistryError::NoSuchRun(_) | crunch_registry::RegistryError::NoSuchJob(_) => {
                ApiError::not_found(e.to_string())
            }
            e => ApiError::internal(e.to_string()),
        }
    }
}

/// A library error from a registry query: a wrong field is a `400` naming it, a missing run a
/// `404` (as [`crunch::Error::Invalid`] says when a run list is empty), the rest a `500`.
impl From<crunch::Error> for ApiError {
    fn from(e: crunch::Error) -> Self {
        match e {
            crunch::Error::Field { field, message } => ApiError::field(field, message),
            crunch::Error::Registry(r) => ApiError::from(r),
            crunch::Error::Invalid(m) => ApiError::not_found(m),
            e => ApiError::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: self.message, field: self.field };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"crunch\""));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
