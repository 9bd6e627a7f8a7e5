//! The API's request and response types. Every stage serves exactly these (see docs/api.md).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `GET /api/feed` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feed {
    pub user_id: i64,
    pub items: Vec<FeedItem>,
}

/// One post on a timeline, with its author inlined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedItem {
    pub id: i64,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub author: Author,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    pub id: i64,
    pub name: String,
    pub avatar: String,
}

/// `GET /api/feed` query string.
#[derive(Debug, Deserialize)]
pub struct FeedParams {
    pub limit: Option<i64>,
}

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

/// `POST /api/posts` body: a post by the caller on `user_id`'s timeline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPost {
    pub user_id: i64,
    pub body: String,
}

pub const MAX_BODY_CHARS: usize = 2000;

/// `POST /api/posts` response (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Post {
    pub id: i64,
    pub user_id: i64,
    pub author_id: i64,
    pub body: String,
    pub created_at: DateTime<Utc>,
}
