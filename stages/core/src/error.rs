//! Errors as clients see them: RFC 9457 `application/problem+json`, with a title and a detail
//! that says what to change. Causes of 500s are logged, never sent.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::FeedError;

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
}

impl Problem {
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Self { kind: "about:blank", title, status: status.as_u16(), detail: detail.into() }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(self)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        response
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{detail}")]
    Rejected { status: StatusCode, detail: String },
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(#[source] sqlx::Error),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if database_unavailable(&error) { Self::DatabaseUnavailable(error) } else { Self::Internal(error.into()) }
    }
}

/// Errors that mean "the database cannot serve us right now", as opposed to a bug: the client
/// should retry (503), not be told something broke (500).
fn database_unavailable(error: &sqlx::Error) -> bool {
    match error {
        // Unreachable, every pooled connection busy past the timeout, or the connection died.
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        // SQLSTATE class 08 (connection exception), 57P01-03 (admin shutdown, crash shutdown,
        // cannot connect now: a restart or failover), 57014 (statement_timeout), 53300 (too
        // many connections).
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "57014" | "53300")
        }),
        _ => false,
    }
}

impl From<FeedError> for ApiError {
    fn from(error: FeedError) -> Self {
        match error {
            // 503 or 500, as any database error.
            FeedError::Database(error) => error.into(),
            // A page that does not parse, or a cache error a source let through: a bug to log.
            error @ (FeedError::Decode(_) | FeedError::Cache(_)) => Self::Internal(error.into()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest(rejection.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        Self::Rejected { status: rejection.status(), detail: rejection.body_text() }
    }
}

impl ApiError {
    pub fn problem(&self) -> Problem {
        use StatusCode as S;
        match self {
            Self::BadRequest(d) => Problem::new(S::BAD_REQUEST, "Bad request", d),
            Self::Unprocessable(d) => Problem::new(S::UNPROCESSABLE_ENTITY, "Invalid post", d),
            Self::Unauthorized(d) => Problem::new(S::UNAUTHORIZED, "Unauthorized", d),
            Self::NotFound(d) => Problem::new(S::NOT_FOUND, "Not found", d),
            Self::Rejected { status, detail } => {
                Problem::new(*status, status.canonical_reason().unwrap_or("Bad request"), detail)
            }
            Self::DatabaseUnavailable(_) => Problem::new(
                S::SERVICE_UNAVAILABLE,
                "Database unavailable",
                "the database did not answer in time; retry shortly",
            ),
            Self::Unavailable(d) => Problem::new(S::SERVICE_UNAVAILABLE, "Service unavailable", d),
            Self::Internal(_) => Problem::new(
                S::INTERNAL_SERVER_ERROR,
                "Internal server error",
                "an unexpected error occurred; it has been logged",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(cause) => tracing::error!(error = ?cause, "internal error"),
            Self::DatabaseUnavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable")
            }
            _ => {}
        }
        let mut response = self.problem().into_response();
        if let Self::Unauthorized(_) = self {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// `Query<T>` whose rejection is a problem document.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `Json<T>` whose rejection is a problem document.
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

#[cfg(test)]
mod tests {
    use super::*;

    fn status(error: FeedError) -> u16 {
        ApiError::from(error).problem().status
    }

    #[test]
    fn a_feed_error_is_a_503_only_when_the_database_cannot_serve_now() {
        assert_eq!(status(FeedError::Database(sqlx::Error::PoolTimedOut)), 503);
        assert_eq!(status(FeedError::Database(sqlx::Error::RowNotFound)), 500);
        let unparsable = serde_json::from_str::<crate::api::Feed>("{").unwrap_err();
        assert_eq!(status(FeedError::Decode(unparsable)), 500);
        let redis_down = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(status(FeedError::Cache(redis_down)), 500, "Redis is not the database: no 'retry shortly'");
    }
}
