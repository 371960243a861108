//! `ApiError`: the one place an error becomes an HTTP status and body.
//!
//! Owns the closed set of error kinds the HTTP API answers with and how each is written:
//! a plain-text body (the message), `Content-Type: text/plain; charset=utf-8` and
//! `X-Content-Type-Options: nosniff`, as Loki does for push and query endpoints. It does not
//! own the messages: each module's error says what was wrong and which setting to change,
//! and the handler picks the kind.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// What kind of failure a request met; decides the status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiErrorKind {
    /// 400: bad parameter, bad body, invalid entries (the valid ones were still stored).
    BadRequest,
    /// 401: `X-Scope-OrgID` missing while `auth_enabled` is true.
    Unauthorized,
    /// 404: unknown path or object.
    NotFound,
    /// 413: body or decompressed body over its cap.
    PayloadTooLarge,
    /// 422: a push with no streams.
    UnprocessableEntity,
    /// 429: rate or stream limit; clients retry later.
    TooManyRequests,
    /// 499: the client went away.
    ClientClosed,
    /// 500: our fault (WAL, storage); clients retry.
    Internal,
    /// 503: not ready (starting or shutting down).
    Unavailable,
    /// 504: a query ran out of time.
    Timeout,
}

impl ApiErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ApiErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ApiErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiErrorKind::NotFound => StatusCode::NOT_FOUND,
            ApiErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiErrorKind::UnprocessableEntity => StatusCode::UNPROCESSABLE_ENTITY,
            ApiErrorKind::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            // 499 is nginx's "client closed request", which Loki uses too.
            ApiErrorKind::ClientClosed => {
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ApiErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ApiErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

/// An error answer: a kind and the message the client reads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ApiErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ApiErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ApiErrorKind::BadRequest, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ApiErrorKind::Internal, message)
    }

    /// Go's `http.NotFound` answer, which clients (and Loki) show for unknown paths.
    pub fn page_not_found() -> Self {
        Self::new(ApiErrorKind::NotFound, "404 page not found")
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }
}

impl From<crate::tenant::TenantError> for ApiError {
    fn from(e: crate::tenant::TenantError) -> Self {
        match e {
            crate::tenant::TenantError::Missing => {
                ApiError::new(ApiErrorKind::Unauthorized, e.to_string())
            }
            crate::tenant::TenantError::Invalid(_) => ApiError::bad_request(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.kind == ApiErrorKind::Internal {
            tracing::warn!(error = %self.message, "request failed");
        }
        let mut body = self.message;
        body.push('\n');
        let mut response = (self.kind.status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tenant_is_401_with_lokis_words() {
        let e = ApiError::from(crate::tenant::TenantError::Missing);
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        assert!(e.message.starts_with("no org id"));
        let r = e.into_response();
        assert_eq!(
            r.headers().get(header::CONTENT_TYPE).unwrap(),
            "text/plain; charset=utf-8"
        );
    }

    #[test]
    fn client_closed_is_499() {
        assert_eq!(ApiErrorKind::ClientClosed.status().as_u16(), 499);
    }
}
