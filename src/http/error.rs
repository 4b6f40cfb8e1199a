//! The one error type at the HTTP edge.
//!
//! Every refusal leaves as `{"error": {"code", "message"}}` with the right
//! status. Internal failures are logged with their cause and shown to the
//! client as a bare 500. Responses produced outside our handlers (axum's own
//! rejections, 405, timeouts, body limits) are rewritten into the same shape
//! by `json_errors`, so there is one error format on every path.

use axum::body::to_bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::ingest::IngestError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    /// A conflict with a code of its own.
    #[error("{message}")]
    ConflictWith { code: &'static str, message: String },
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("the request body is larger than this endpoint takes ({0} bytes)")]
    PayloadTooLarge(usize),
    #[error("too many requests for this token; retry later")]
    RateLimited { retry_after_s: u32 },
    #[error("server is busy; retry later")]
    Overloaded { retry_after_s: u32 },
    /// A part the request needs is down or not ready: 503 with its own
    /// code and Retry-After.
    #[error("{message}")]
    Unavailable {
        code: &'static str,
        message: String,
        retry_after_s: u32,
    },
    /// The store's disk is full: nothing was written.
    #[error("the server's storage is full; nothing was written, retry later")]
    StorageFull,
    /// A failure of ours: logged with its cause chain, shown to the client
    /// only as "internal error".
    #[error("internal error")]
    Internal(#[source] crate::store::BoxError),
}

impl ApiError {
    pub fn invalid_state(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::ConflictWith {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            code,
            message: message.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "illegal_state_change"),
            ApiError::ConflictWith { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::Invalid { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::Unavailable { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, code),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::StorageFull => (StatusCode::INSUFFICIENT_STORAGE, "storage_full"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

pub fn error_body(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Internal(cause) = &self {
            tracing::error!(cause = %chain(cause.as_ref()), "internal error");
        }
        let mut response = error_body(status, code, &self.to_string());
        match self {
            ApiError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Overloaded { retry_after_s }
            | ApiError::RateLimited { retry_after_s }
            | ApiError::Unavailable { retry_after_s, .. } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, retry_after_s.into());
            }
            ApiError::StorageFull => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
            }
            _ => {}
        }
        response
    }
}

/// An error and its sources, outermost first: "a: b: c".
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Full { .. } => {
                tracing::warn!(error = %chain(&e), "write refused: storage full");
                ApiError::StorageFull
            }
            StoreError::Busy { .. } => {
                tracing::warn!(error = %chain(&e), "storage busy");
                metrics::counter!("trailcast_store_busy_total").increment(1);
                ApiError::Unavailable {
                    code: "storage_busy",
                    message: "storage is busy; retry shortly".into(),
                    retry_after_s: 1,
                }
            }
            e => ApiError::Internal(Box::new(e)),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::NotFound => ApiError::NotFound,
            IngestError::Transition(e @ crate::domain::TransitionError::Illegal { .. }) => {
                ApiError::Conflict(e.to_string())
            }
            IngestError::Transition(e) => ApiError::invalid("invalid_at", e.to_string()),
            IngestError::QueueFull(_) => ApiError::Overloaded { retry_after_s: 1 },
            IngestError::Store(e) => e.into(),
            IngestError::Discarded => ApiError::invalid_state(
                "activity_discarded",
                "the activity was discarded: it takes no more points",
            ),
            IngestError::Fields(e) => {
                let code = match e {
                    crate::domain::fields::FieldsError::TooMany => "too_many_fields",
                    _ => "invalid_field",
                };
                ApiError::invalid(code, e.to_string())
            }
        }
    }
}

fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "error",
    }
}

/// Middleware (`map_response`): rewrites any error response that is not
/// already JSON into the API's error shape, keeping axum's explanation
/// (e.g. "Failed to parse the request body as JSON: ...") as the message.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = to_bytes(body, 4096).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_string();
    if message.is_empty() || status.is_server_error() {
        message = status.canonical_reason().unwrap_or("error").to_lowercase();
    }
    let code = if message.starts_with("Failed to parse the request body as JSON") {
        "malformed_json"
    } else {
        code_for(status)
    };
    let mut rewritten = error_body(status, code, &message);
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a client is told for each kind of storage failure: retry
    /// shortly (busy), retry later (full), or nothing to retry (internal).
    #[test]
    fn storage_failures_map_to_statuses_a_client_can_act_on() {
        let cases = [
            (StoreError::busy("scylla", "overloaded"), 503, Some("1")),
            (StoreError::full("fjall", "no space"), 507, Some("30")),
            (StoreError::backend("scylla", "syntax"), 500, None),
        ];
        for (e, status, retry) in cases {
            let response = ApiError::from(e).into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(
                response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .map(|v| v.to_str().unwrap()),
                retry
            );
        }
    }
}
