//! Router assembly, handlers and the server loop shared by every stage.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::api::{DEFAULT_LIMIT, FeedParams, MAX_BODY_CHARS, MAX_LIMIT, NewPost, Post};
use crate::auth::{AuthUser, JwtKeys};
use crate::error::{ApiJson, ApiQuery, Problem};
use crate::{ApiError, Config, FeedSource, RedisConn};

/// What a stage is built from: the config and live handles to Postgres and Redis.
#[derive(Clone)]
pub struct Context {
    pub config: Config,
    pub db: PgPool,
    pub redis: RedisConn,
}

/// How long a Redis call may take before it counts as failed. It tells a Redis that is down or
/// hung from one that is busy: it sits above the slowest call a healthy Redis answered under load
/// (with the CPU saturated too), and low enough that a hung Redis costs a stage-3 request at most
/// two of them (limiter, then cache) plus the query and still keeps it inside the 500 ms p99 gate.
/// A timeout near the query's own few milliseconds would send every slow call to Postgres,
/// exactly when the machine is busiest. docs/walkthrough/stage-2.md ("Redis down") quotes the
/// measured figures.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(150);

/// Run one Redis call under [`REDIS_TIMEOUT`]; running out of time is an error like any other,
/// so callers handle "slow" and "down" the same way.
pub async fn redis_call<T>(call: impl Future<Output = redis::RedisResult<T>>) -> redis::RedisResult<T> {
    tokio::time::timeout(REDIS_TIMEOUT, call).await.unwrap_or_else(|_| {
        Err(redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "redis call timed out")))
    })
}

impl Context {
    /// Build the pool and the Redis connection, and run the migrations (so the service refuses to
    /// start, with a clear message, when Postgres is not there at all). One Redis server connects
    /// on first use: the service starts without it and serves what it can. A cluster must be
    /// reachable at start (see [`RedisConn::connect`]).
    pub async fn connect(config: Config) -> anyhow::Result<Self> {
        let db = crate::db::pool(&config)?;
        crate::db::migrate(&db).await.map_err(|e| {
            anyhow::anyhow!(
                "could not migrate {}: {e}\nIs PostgreSQL running? `cargo run -p checker -- up` starts one.",
                config.database_url
            )
        })?;
        let redis = RedisConn::connect(&config.redis_url, config.redis_cluster_nodes.as_deref(), REDIS_TIMEOUT).await?;
        Ok(Self { config, db, redis })
    }
}

/// Extra layers a stage wraps around the `/api` routes (inside authentication).
pub type ApiLayer = Box<dyn FnOnce(Router) -> Router + Send>;

/// A stage: its feed source and, optionally, layers around the API routes.
pub struct Stage {
    pub name: &'static str,
    pub feed: Arc<dyn FeedSource>,
    pub api_layer: Option<ApiLayer>,
    /// Layers around the whole app, outside authentication and around `/health`, `/ready` and
    /// `/metrics` too. No reference stage uses it; `mistakes/` does, to serve a limiter put there.
    pub app_layer: Option<ApiLayer>,
}

impl Stage {
    pub fn new(name: &'static str, feed: impl FeedSource) -> Self {
        Self { name, feed: Arc::new(feed), api_layer: None, app_layer: None }
    }

    pub fn with_api_layer(mut self, layer: impl FnOnce(Router) -> Router + Send + 'static) -> Self {
        self.api_layer = Some(Box::new(layer));
        self
    }

    pub fn with_app_layer(mut self, layer: impl FnOnce(Router) -> Router + Send + 'static) -> Self {
        self.app_layer = Some(Box::new(layer));
        self
    }
}

#[derive(Clone)]
struct AppState {
    db: PgPool,
    redis: RedisConn,
    feed: Arc<dyn FeedSource>,
    /// The longest a request may spend on the database (waiting for a connection included).
    db_deadline: Duration,
}

impl AppState {
    /// Run database work under the request's deadline: a stalled network answers 503, not never.
    async fn within_deadline<T>(&self, work: impl Future<Output = Result<T, ApiError>>) -> Result<T, ApiError> {
        tokio::time::timeout(self.db_deadline, work)
            .await
            .unwrap_or_else(|_| Err(ApiError::DatabaseUnavailable(sqlx::Error::PoolTimedOut)))
    }
}

/// The whole application: `/api/*` (authenticated, plus the stage's layers), `/health`,
/// `/ready`, `/metrics`, and problem+json for anything else.
fn router(ctx: &Context, stage: Stage) -> Router {
    // Room for the acquire timeout plus one statement_timeout; the server cuts off either first.
    let db_deadline = ctx.config.db_acquire_timeout() * 2;
    let state = AppState { db: ctx.db.clone(), redis: ctx.redis.clone(), feed: stage.feed, db_deadline };
    let keys = Arc::new(JwtKeys::new(&ctx.config.jwt_secret));

    let api = Router::new()
        .route("/api/feed", get(get_feed))
        .route("/api/posts", post(create_post))
        .with_state(state.clone());
    let api = match stage.api_layer {
        Some(layer) => layer(api),
        None => api,
    };
    // Added last, so it runs first: no stage layer sees an unauthenticated request.
    let api = api.layer(middleware::from_fn_with_state(keys, crate::auth::authenticate));

    let ops = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state);

    let app = api.merge(ops);
    let app = match stage.app_layer {
        Some(layer) => layer(app),
        None => app,
    };
    app.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(crate::metrics::track))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal server error",
                "an unexpected error occurred; it has been logged",
            )
            .into_response()
        }))
}

async fn get_feed(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(params): ApiQuery<FeedParams>,
) -> Result<Response, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit must be between 1 and {MAX_LIMIT}, got {limit}")));
    }
    // The body arrives serialised (see `FeedSource::feed_json`): the bytes `Json(Feed { .. })`
    // would write, sent as they are.
    let body = state.within_deadline(async { Ok(state.feed.feed_json(user.id, limit).await?) }).await?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response())
}

async fn create_post(
    State(state): State<AppState>,
    author: AuthUser,
    ApiJson(new): ApiJson<NewPost>,
) -> Result<(StatusCode, Json<Post>), ApiError> {
    let chars = new.body.chars().count();
    if new.body.trim().is_empty() || chars > MAX_BODY_CHARS {
        return Err(ApiError::Unprocessable(format!(
            "body must be 1 to {MAX_BODY_CHARS} characters and not only whitespace (got {chars})"
        )));
    }
    if new.body.contains('\0') {
        // Postgres text cannot hold NUL: refuse it here rather than fail the insert.
        return Err(ApiError::Unprocessable("body must not contain NUL characters".into()));
    }
    let insert = async {
        sqlx::query_as::<_, Post>(
            "insert into posts (user_id, author_id, body) values ($1, $2, $3)
         returning id, user_id, author_id, body, created_at",
        )
        .bind(new.user_id)
        .bind(author.id)
        .bind(&new.body)
        .fetch_one(&state.db)
        .await
        .map_err(|e| match e.as_database_error().and_then(|d| d.code()).as_deref() {
            // foreign_key_violation: the timeline owner or the token's user does not exist
            Some("23503") => {
                ApiError::Unprocessable(format!("user {} or author {} does not exist", new.user_id, author.id))
            }
            _ => e.into(),
        })
    };
    let post = state.within_deadline(insert).await?;
    state.feed.timeline_changed(post.user_id).await;
    Ok((StatusCode::CREATED, Json(post)))
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Ready when Postgres and Redis both answer within a second.
async fn ready(State(state): State<AppState>) -> Response {
    let timeout = Duration::from_secs(1);
    let postgres = tokio::time::timeout(timeout, sqlx::query("select 1").execute(&state.db)).await;
    let mut redis = state.redis.clone();
    let redis = tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(&mut redis)).await;
    let problems: Vec<String> = [
        ("postgres", postgres.map_err(|e| e.to_string()).and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()))),
        ("redis", redis.map_err(|e| e.to_string()).and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()))),
    ]
    .into_iter()
    .filter_map(|(name, result)| result.err().map(|e| format!("{name}: {e}")))
    .collect();
    if problems.is_empty() {
        Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Not ready", problems.join("; ")).into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    crate::metrics::record_pool(&state.db);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::handle().render())
}

async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "Not found", format!("no route for {}; see docs/api.md", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Serve `app` on `listener` until `shutdown` resolves, then finish in-flight requests. Each
/// request carries the peer's address (`ConnectInfo<SocketAddr>`) for layers that want it.
async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

/// The body of every stage's `main`: logging, connect, build the stage, serve until Ctrl-C or
/// SIGTERM.
pub async fn run<F, Fut>(config: Config, build: F) -> anyhow::Result<()>
where
    F: FnOnce(Context) -> Fut,
    Fut: Future<Output = anyhow::Result<Stage>>,
{
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    if config.jwt_secret == crate::auth::DEV_SECRET {
        tracing::warn!("JWT_SECRET is not set: using the development secret; never do this in production");
    }
    crate::metrics::handle();
    let ctx = Context::connect(config).await?;
    let stage = build(ctx.clone()).await?;
    let name = stage.name;
    let listener = TcpListener::bind(ctx.config.listen).await?;
    tracing::info!(stage = name, addr = %listener.local_addr()?, "listening");
    serve(listener, router(&ctx, stage), shutdown_signal()).await?;
    tracing::info!("shut down cleanly");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
