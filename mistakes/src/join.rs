//! Stage-1 as learners write it: the JOIN with one thing wrong, and one correct alternative.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use feed_core::api::{Author, FeedItem};
use feed_core::{FeedError, FeedSource};
use sqlx::PgPool;

use crate::Mistake;

/// The learner's JOIN. Right except where `mistake` says.
pub struct LearnerJoin {
    db: PgPool,
    mistake: Mistake,
}

impl LearnerJoin {
    pub fn new(db: PgPool, mistake: Mistake) -> Self {
        Self { db, mistake }
    }
}

/// no-tie-breaker: `order by p.created_at desc`, and nothing after it.
const NO_TIE_BREAKER: &str = "select p.id, p.body, p.created_at, u.id, u.name, u.avatar
     from posts p join users u on u.id = p.author_id
     where p.user_id = $1 order by p.created_at desc limit $2";

/// timeline-by-author: `p.author_id = $1`, the posts the user wrote.
const TIMELINE_BY_AUTHOR: &str = "select p.id, p.body, p.created_at, u.id, u.name, u.avatar
     from posts p join users u on u.id = p.author_id
     where p.author_id = $1 order by p.created_at desc, p.id desc limit $2";

/// cut-in-rust: no `limit`; the page is cut after every row has arrived.
const WHOLE_TIMELINE: &str = "select p.id, p.body, p.created_at, u.id, u.name, u.avatar
     from posts p join users u on u.id = p.author_id
     where p.user_id = $1 order by p.created_at desc, p.id desc";

type Row = (i64, String, DateTime<Utc>, i64, String, String);

fn item((id, body, created_at, author_id, name, avatar): Row) -> FeedItem {
    FeedItem { id, body, created_at, author: Author { id: author_id, name, avatar } }
}

#[async_trait::async_trait]
impl FeedSource for LearnerJoin {
    async fn feed(&self, user_id: i64, limit: i64) -> Result<Vec<FeedItem>, FeedError> {
        let rows: Vec<Row> = match self.mistake {
            Mistake::CutInRust => {
                let all: Vec<Row> = sqlx::query_as(WHOLE_TIMELINE).bind(user_id).fetch_all(&self.db).await?;
                // The whole timeline crossed the wire to keep `limit` of it.
                all.into_iter().take(usize::try_from(limit).unwrap_or(0)).collect()
            }
            Mistake::TimelineByAuthor => {
                sqlx::query_as(TIMELINE_BY_AUTHOR).bind(user_id).bind(limit).fetch_all(&self.db).await?
            }
            // no-tie-breaker, the third learner served by this type
            _ => sqlx::query_as(NO_TIE_BREAKER).bind(user_id).bind(limit).fetch_all(&self.db).await?,
        };
        Ok(rows.into_iter().map(item).collect())
    }
}

/// batch-authors, the correct alternative (docs/walkthrough/stage-1.md, "The other fix"): the posts, then
/// every author of the page in one `where id = any($1)`. Two statements whatever the page size.
pub struct BatchAuthors {
    db: PgPool,
}

impl BatchAuthors {
    pub fn new(db: PgPool) -> Self {
        Self { db }
    }
}

#[async_trait::async_trait]
impl FeedSource for BatchAuthors {
    async fn feed(&self, user_id: i64, limit: i64) -> Result<Vec<FeedItem>, FeedError> {
        let posts: Vec<(i64, i64, String, DateTime<Utc>)> = sqlx::query_as(
            "select id, author_id, body, created_at from posts
             where user_id = $1 order by created_at desc, id desc limit $2",
        )
        .bind(user_id)
        .bind(limit)
        .fetch_all(&self.db)
        .await?;

        let mut author_ids: Vec<i64> = posts.iter().map(|p| p.1).collect();
        author_ids.sort_unstable();
        author_ids.dedup();
        let authors: HashMap<i64, Author> =
            sqlx::query_as::<_, (i64, String, String)>("select id, name, avatar from users where id = any($1)")
                .bind(&author_ids)
                .fetch_all(&self.db)
                .await?
                .into_iter()
                .map(|(id, name, avatar)| (id, Author { id, name, avatar }))
                .collect();

        posts
            .into_iter()
            .map(|(id, author_id, body, created_at)| {
                // The foreign key guarantees the author; a missing one is a broken database.
                let author = authors.get(&author_id).cloned().ok_or(sqlx::Error::RowNotFound)?;
                Ok(FeedItem { id, body, created_at, author })
            })
            .collect()
    }
}
