"""The feed API of docs/api.md in Python, at stage-1: the feed in one JOIN, no cache, no limiter.

Start it with examples/python/run.sh and grade it with the checker (see README.md beside this
file). Every rule below mirrors stages/core/src (api.rs, auth.rs, error.rs, app.rs): the checker
compares this service's answers with its own SQL and with the Rust stage-0, byte for byte where
it matters (statuses, ids, order) and by meaning where it does not (timestamp formatting).
"""

import asyncio
import json
import logging
import os
import re
import time
from contextlib import asynccontextmanager
from datetime import datetime, timezone

import jwt
import psycopg
import redis.asyncio as aioredis
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)
import psycopg_pool
from psycopg_pool import AsyncConnectionPool
from starlette.exceptions import HTTPException

log = logging.getLogger("feed")

# --- Settings: the same environment variables as the Rust stages (.env.example). -------------

DEV_SECRET = "slow-api-kata-dev-secret"  # stages/core/src/auth.rs DEV_SECRET
DATABASE_URL = os.environ["DATABASE_URL"]
REDIS_URL = os.environ["REDIS_URL"]
JWT_SECRET = os.environ.get("JWT_SECRET", DEV_SECRET)
LISTEN_ADDR = os.environ.get("LISTEN_ADDR", "127.0.0.1:8080")
DB_POOL_SIZE = int(os.environ.get("DB_POOL_SIZE", "10"))
ACQUIRE_TIMEOUT = int(os.environ.get("DB_ACQUIRE_TIMEOUT_MS", "5000")) / 1000
# Room for the acquire timeout plus one statement_timeout, as in core: a stalled network gets
# a 503 after this long, never a hang.
DB_DEADLINE = 2 * ACQUIRE_TIMEOUT

DEFAULT_LIMIT, MAX_LIMIT = 20, 100
MAX_BODY_CHARS = 2000
MAX_REQUEST_BYTES = 2 * 1024 * 1024  # axum's default body limit, which core keeps
I64 = range(-(2**63), 2**63)
U64 = range(0, 2**64)
# Rust's str::parse::<i64> accepts exactly this (Python's int() would also take " 5", "5_0", "٥").
INTEGER = re.compile(r"[+-]?[0-9]+")
# Unicode's White_Space property, which Rust's str::trim uses. Python's str.isspace() differs
# (it also counts U+001C..U+001F), so "only whitespace" is spelled out.
WHITE_SPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                        "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")

# Connections open on first use (min_size=0, like sqlx's connect_lazy): the service starts even
# when Postgres is not up yet. autocommit, so a statement is one statement in pg_stat_statements
# (no BEGIN/COMMIT around it); statement_timeout, so the server cuts off a runaway query.
pool = AsyncConnectionPool(
    DATABASE_URL, min_size=0, max_size=DB_POOL_SIZE, timeout=ACQUIRE_TIMEOUT, open=False,
    kwargs={"autocommit": True, "connect_timeout": 5,
            "options": f"-c statement_timeout={int(ACQUIRE_TIMEOUT * 1000)}"},
)
redis = aioredis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)


async def migrate():
    """This service's own schema change, as stage-1 owns its migration: the index the feed's one
    statement needs (user_id first, then the sort keys in their directions). Idempotent, so every
    instance may run it at start. Without Postgres it is skipped: /ready says 503 until it answers."""
    try:
        async with pool.connection() as conn:
            await conn.execute(
                "create index if not exists idx_posts_user_created on posts (user_id, created_at desc, id desc)")
    except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
        log.warning("could not create the timeline index at start: %s", e)


@asynccontextmanager
async def lifespan(_app):
    if JWT_SECRET == DEV_SECRET:
        log.warning("JWT_SECRET is not set: using the development secret; never do this in production")
    await pool.open(wait=False)
    await migrate()
    yield
    await pool.close()
    await redis.aclose()


# No /docs, /redoc or /openapi.json (the contract has no such routes: they must be 404), and no
# redirect from /api/feed/ to /api/feed (core answers 404 there too).
app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)


def get(path: str):
    """A GET route that answers HEAD too, as axum's get() does."""
    return app.api_route(path, methods=["GET", "HEAD"])


# --- Errors: every one is an RFC 9457 problem document (docs/api.md#errors). ------------------


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str, headers: dict | None = None):
        self.status, self.title, self.detail, self.headers = status, title, detail, headers


def problem(status: int, title: str, detail: str, headers: dict | None = None) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return JSONResponse(body, status, headers, media_type="application/problem+json")


def unauthorized(detail: str) -> Problem:
    return Problem(401, "Unauthorized", detail, {"WWW-Authenticate": "Bearer"})


@app.exception_handler(Problem)
async def on_problem(_request, e: Problem):
    return problem(e.status, e.title, e.detail, e.headers)


@app.exception_handler(HTTPException)  # raised by the router: no such route, or wrong method
async def on_http_exception(request: Request, e: HTTPException):
    if e.status_code == 404:
        return problem(404, "Not found", f"no route for {request.url.path}; see docs/api.md")
    if e.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
        return problem(405, "Method not allowed", detail, e.headers)  # keeps the Allow header
    return problem(e.status_code, "Error", str(e.detail), e.headers)


# Postgres unreachable, pool exhausted past the acquire timeout (PoolTimeout is an
# OperationalError), a dropped connection, statement_timeout, admin shutdown: "retry", not "bug".
@app.exception_handler(psycopg.OperationalError)
@app.exception_handler(TimeoutError)
async def on_database_unavailable(_request, e: Exception):
    log.warning("database unavailable: %r", e)
    return problem(503, "Database unavailable", "the database did not answer in time; retry shortly")


@app.exception_handler(Exception)  # a bug: the cause goes to the log, never to the client
async def on_bug(_request, e: Exception):
    log.error("internal error", exc_info=e)
    return problem(500, "Internal server error", "an unexpected error occurred; it has been logged")


# --- Metrics: a small subset of docs/api.md#get-metrics. -------------------------------------

disable_created_metrics()  # no *_created series: core's exporter has none
metrics = CollectorRegistry()
LABELS = ["method", "route", "status"]
REQUESTS = Counter("http_requests_total", "HTTP requests", LABELS, registry=metrics)
DURATION = Histogram("http_request_duration_seconds", "HTTP request latency", LABELS, registry=metrics,
                     buckets=[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10])
POOL = {name: Gauge(f"db_pool_{name}", f"database pool: {name} connections", registry=metrics)
        for name in ("size", "idle", "active", "max")}


@app.middleware("http")
async def track(request: Request, call_next):
    started = time.perf_counter()
    response = await call_next(request)
    # The route template, not the raw path, so a scanner cannot blow up the label set.
    route = request.scope.get("route")
    labels = (request.method, route.path if route else "unmatched", str(response.status_code))
    REQUESTS.labels(*labels).inc()
    DURATION.labels(*labels).observe(time.perf_counter() - started)
    return response


# --- Authentication (stages/core/src/auth.rs). -----------------------------------------------


async def caller(request: Request) -> int:
    """The user id in the bearer token, or 401. `async` so FastAPI runs it on the event loop
    instead of a thread pool: it does no I/O."""
    header = request.headers.get("authorization")
    if header is None:
        raise unauthorized("missing Authorization header; send `Authorization: Bearer <token>` "
                           "(mint one with `cargo kata token --user ID`)")
    if not header.startswith(("Bearer ", "bearer ")):
        raise unauthorized("Authorization header must be `Bearer <token>`")
    try:
        # HS256 only: a token with alg none, RS256 or anything else is refused. `exp` is checked
        # below, by core's rule (expired when exp < now, no leeway); PyJWT's differs by a second.
        # Core does not check nbf, iat or jti, so neither does this.
        claims = jwt.decode(header[len("Bearer "):].strip(), JWT_SECRET, algorithms=["HS256"], options={
            "require": ["exp", "sub"], "verify_exp": False, "verify_nbf": False,
            "verify_iat": False, "verify_jti": False})
    except jwt.InvalidTokenError as e:
        raise unauthorized(f"invalid bearer token: {e}") from None
    exp, iat, tier = claims.get("exp"), claims.get("iat"), claims.get("tier")
    # The claims as core's serde types read them: exp and iat are u64, tier one of three names.
    if not (type(exp) is int and exp in U64 and type(iat) is int and iat in U64
            and tier in ("free", "pro", "internal")):
        raise unauthorized("invalid bearer token: exp and iat must be integers, tier free, pro or internal")
    if exp < int(time.time()):
        raise unauthorized("invalid bearer token: ExpiredSignature")
    sub = claims["sub"]
    if not INTEGER.fullmatch(sub) or int(sub) not in I64:
        raise unauthorized(f"token subject {sub!r} is not a user id")
    return int(sub)


# --- The API. ---------------------------------------------------------------------------------


async def fetch(sql: str, params: tuple) -> list[tuple]:
    """Run one statement on a pooled connection, under the request's database deadline."""
    async with asyncio.timeout(DB_DEADLINE), pool.connection() as conn:
        return await (await conn.execute(sql, params)).fetchall()


def rfc3339(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


# THE LESSON of stage-1: the authors come back with the posts, in the same round trip. The
# index on posts (user_id, created_at desc, id desc) hands over the newest rows already in
# order, and each finds its author by primary key. Same text as stages/stage-1/src/feed.rs.
FEED_SQL = """select p.id, p.body, p.created_at,
        u.id as author_id, u.name as author_name, u.avatar as author_avatar
 from posts p
 left join users u on p.author_id = u.id
 where p.user_id = %s
 order by p.created_at desc, p.id desc
 limit %s"""


@get("/api/feed")
async def get_feed(request: Request, user_id: int = Depends(caller)):
    # Parsed by hand, not by FastAPI: its validation errors are 422s, the contract says 400.
    values = request.query_params.getlist("limit")
    if len(values) > 1:
        raise Problem(400, "Bad request", "limit given more than once")
    limit = DEFAULT_LIMIT
    if values:
        if not INTEGER.fullmatch(values[0]):
            raise Problem(400, "Bad request", f"limit must be an integer, got {values[0]!r}")
        limit = int(values[0])
    if not 1 <= limit <= MAX_LIMIT:
        raise Problem(400, "Bad request", f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    rows = await fetch(FEED_SQL, (user_id, limit))
    items = [{"id": id_, "body": body, "created_at": rfc3339(at),
              "author": {"id": author_id, "name": name, "avatar": avatar}}
             for id_, body, at, author_id, name, avatar in rows]
    return {"user_id": user_id, "items": items}


def reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN and Infinity; JSON does not


async def read_json(request: Request):
    """The request body as JSON, with axum's Json rejections: 415, 413, then 400."""
    mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
    kind, _, subtype = mime.partition("/")
    if kind != "application" or not (subtype == "json" or subtype.endswith("+json")):
        raise Problem(415, "Unsupported Media Type", "Expected request with `Content-Type: application/json`")
    raw = bytearray()
    async for chunk in request.stream():  # stop reading at the limit, not after the whole upload
        raw += chunk
        if len(raw) > MAX_REQUEST_BYTES:
            raise Problem(413, "Payload Too Large", "request body is larger than 2 MiB")
    try:
        # Strict UTF-8 (json.loads on bytes would also take UTF-16), and no lone surrogates
        # ("\ud800"): JSON parsers such as serde refuse them, and Postgres could not store them.
        value = json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError) as e:
        raise Problem(400, "Bad Request", f"Failed to parse the request body as JSON: {e}") from None
    return value


INSERT_SQL = """insert into posts (user_id, author_id, body) values (%s, %s, %s)
 returning id, user_id, author_id, body, created_at"""


@app.post("/api/posts", status_code=201)
async def create_post(request: Request, author: int = Depends(caller)):
    new = await read_json(request)

    def wrong_shape(detail: str) -> Problem:
        return Problem(422, "Unprocessable Entity", f"Failed to deserialize the JSON body: {detail}")

    # Exactly {user_id: i64, body: string}, like serde's deny_unknown_fields. `type(...) is int`
    # because bool is an int in Python, and true is not a user id.
    if not isinstance(new, dict):
        raise wrong_shape("expected an object with user_id and body")
    if unknown := sorted(new.keys() - {"user_id", "body"}):
        raise wrong_shape(f"unknown field `{unknown[0]}`, expected `user_id` or `body`")
    if type(new.get("user_id")) is not int or new["user_id"] not in I64:
        raise wrong_shape("user_id must be a 64-bit integer")
    if not isinstance(new.get("body"), str):
        raise wrong_shape("body must be a string")
    user_id, body = new["user_id"], new["body"]

    # len() counts code points, the contract's "characters"; all() of "" is True, so an empty
    # body is refused here too.
    if len(body) > MAX_BODY_CHARS or all(c in WHITE_SPACE for c in body):
        raise Problem(422, "Invalid post", f"body must be 1 to {MAX_BODY_CHARS} characters "
                                           f"and not only whitespace (got {len(body)})")
    if "\0" in body:  # Postgres text cannot hold NUL: refuse it here rather than fail the insert
        raise Problem(422, "Invalid post", "body must not contain NUL characters")
    try:
        [post] = await fetch(INSERT_SQL, (user_id, author, body))
    except psycopg.errors.ForeignKeyViolation:  # the timeline owner or the token's user is unknown
        raise Problem(422, "Invalid post", f"user {user_id} or author {author} does not exist") from None
    id_, owner, author_id, stored_body, at = post
    return {"id": id_, "user_id": owner, "author_id": author_id, "body": stored_body, "created_at": rfc3339(at)}


# --- Operations. ------------------------------------------------------------------------------


@get("/health")
async def health():
    return {"status": "ok"}


async def ping_postgres():
    async with pool.connection(timeout=1) as conn:
        await conn.execute("select 1")


@get("/ready")
async def ready():
    """Ready when Postgres and Redis both answer within a second; `detail` names what failed."""
    problems = []
    for name, ping in (("postgres", ping_postgres), ("redis", redis.ping)):
        try:
            async with asyncio.timeout(1):
                await ping()
        except TimeoutError:
            problems.append(f"{name}: no answer within 1 s")
        except Exception as e:  # refused, reset, auth failed...: not ready either
            problems.append(f"{name}: {e}")
    if problems:
        return problem(503, "Not ready", "; ".join(problems))
    return {"status": "ready"}


@get("/metrics")
async def get_metrics():
    stats = pool.get_stats()  # sampled at scrape time, like core
    size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
    for name, value in (("size", size), ("idle", idle), ("active", size - idle), ("max", DB_POOL_SIZE)):
        POOL[name].set(value)
    return Response(generate_latest(metrics), media_type=CONTENT_TYPE_PLAIN_0_0_4)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, _, port = LISTEN_ADDR.rpartition(":")
    # No access log: one line per request would cost more than the feed query. uvicorn stops
    # on SIGTERM or Ctrl-C after finishing in-flight requests, then runs the lifespan's cleanup.
    uvicorn.run(app, host=host.strip("[]"), port=int(port), access_log=False)
