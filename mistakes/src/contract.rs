//! Wrong solutions of the contract itself, as a learner writing the service from docs/api.md
//! might make them, in front of stage-1's query.

use axum::Router;
use axum::extract::Request;
use axum::http::Uri;
use axum::middleware::Next;
use axum::response::Response;
use feed_core::api::{FeedItem, MAX_LIMIT};
use feed_core::{FeedError, FeedSource};
use stage_1::PostsWithAuthors;

/// limit-clamped: "be liberal in what you accept": a `limit` outside 1..=100 is clamped into it
/// instead of refused. A client that asked for 500 items gets 100 and no error, and never learns
/// its request was not what it got.
pub fn clamp_limits(api: Router) -> Router {
    api.layer(axum::middleware::from_fn(clamp))
}

async fn clamp(mut request: Request, next: Next) -> Response {
    let query = request.uri().query().unwrap_or_default().to_owned();
    let clamped: Vec<String> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some(("limit", value)) => match value.parse::<i64>() {
                Ok(n) => format!("limit={}", n.clamp(1, MAX_LIMIT)),
                Err(_) => pair.to_owned(),
            },
            _ => pair.to_owned(),
        })
        .collect();
    if let Ok(uri) = format!("{}?{}", request.uri().path(), clamped.join("&")).parse::<Uri>()
        && !clamped.is_empty()
    {
        *request.uri_mut() = uri;
    }
    next.run(request).await
}

/// empty-feed-on-db-error: "never show users an error page": a feed that cannot be read is an
/// empty feed. With Postgres down every user is told they have no posts, with a 200 that monitors
/// and retrying clients take for success.
pub struct EmptyOnError {
    inner: PostsWithAuthors,
}

impl EmptyOnError {
    pub fn new(db: sqlx::PgPool) -> Self {
        Self { inner: PostsWithAuthors::new(db) }
    }
}

#[async_trait::async_trait]
impl FeedSource for EmptyOnError {
    async fn feed(&self, user_id: i64, limit: i64) -> Result<Vec<FeedItem>, FeedError> {
        match self.inner.feed(user_id, limit).await {
            Ok(items) => Ok(items),
            Err(error) => {
                tracing::warn!(%error, "feed unavailable: answering an empty one");
                Ok(Vec::new())
            }
        }
    }
}
