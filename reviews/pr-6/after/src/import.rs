//! Posts imported from the old service keep their original author.
//!
//! The importer replays the old service's posts through `POST /api/posts` with its own token, and
//! the handler takes a post's author from the token: every imported post would show the importer
//! as its author. So a post's body may name its author: `{"user_id": 7, "author_id": 42, "body":
//! "..."}`. Without `author_id` nothing changes.

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use feed_core::ApiError;
use feed_core::auth::AuthUser;
use serde_json::Value;

/// On `POST /api/posts`: when the body names an `author_id`, the post is written as that author.
pub async fn author_from_body(request: Request, next: Next) -> Response {
    if request.method() != Method::POST || request.uri().path() != "/api/posts" {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let Ok(bytes) = to_bytes(body, usize::MAX).await else {
        return ApiError::BadRequest("could not read the request body".into()).into_response();
    };
    let Ok(Value::Object(mut post)) = serde_json::from_slice::<Value>(&bytes) else {
        // Not a JSON object: the handler answers it as before.
        return next.run(Request::from_parts(parts, Body::from(bytes))).await;
    };
    let Some(author) = post.remove("author_id") else {
        return next.run(Request::from_parts(parts, Body::from(bytes))).await;
    };
    let Some(author_id) = author.as_i64() else {
        return ApiError::Unprocessable(format!("author_id must be a user id, got {author}")).into_response();
    };
    // The handler reads the author from the authenticated user, and refuses fields it does not
    // know: hand it the post without `author_id`, written by that author.
    if let Some(user) = parts.extensions.get_mut::<AuthUser>() {
        user.id = author_id;
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = serde_json::to_vec(&post).expect("a JSON object serialises");
    next.run(Request::from_parts(parts, Body::from(body))).await
}
