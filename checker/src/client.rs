//! A small HTTP client for the feed API.

use std::time::Duration;

use reqwest::header::HeaderMap;

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    pub base_url: String,
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl Reply {
    /// What to grade when no response came at all: status 0, the reason as the body.
    pub fn nothing(why: &str) -> Self {
        Self { status: 0, headers: HeaderMap::new(), body: bytes::Bytes::from(why.to_owned()) }
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn is_problem_json(&self) -> bool {
        self.header("content-type").is_some_and(|c| c.starts_with("application/problem+json"))
            && self.json().is_some_and(|j| j.get("title").is_some() && j.get("status").is_some())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request's outcome as the checks count it: its status ("429"), or why no answer came ("no
/// answer: timed out"), never a made-up status code.
pub fn outcome(result: &anyhow::Result<Reply>) -> String {
    match result {
        Ok(reply) => reply.status.to_string(),
        Err(e) => format!(
            "no answer: {}",
            match e.downcast_ref::<reqwest::Error>() {
                Some(e) if e.is_timeout() => "timed out",
                Some(e) if e.is_connect() => "could not connect",
                Some(e) if e.is_body() || e.is_decode() => "cut off mid-body",
                _ => "connection closed",
            }
        ),
    }
}

impl Api {
    pub fn new(base_url: &str) -> Self {
        Self::from_address(base_url, None)
    }

    /// A client whose connections leave from `local` (a loopback address such as 127.0.0.5): the
    /// service sees requests from another peer address.
    pub fn from_address(base_url: &str, local: Option<std::net::IpAddr>) -> Self {
        let http = reqwest::Client::builder()
            // A hang is a failure too: no request may take longer than this.
            .timeout(Duration::from_secs(15))
            .pool_max_idle_per_host(128)
            .local_address(local)
            .build()
            .expect("building an HTTP client");
        Self { http, base_url: base_url.trim_end_matches('/').to_owned() }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Reply> {
        let response = request.send().await?;
        Ok(Reply {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.bytes().await?,
        })
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.base_url))
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.delete(format!("{}{path}", self.base_url))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.base_url))
    }

    /// `GET /api/feed` as the token's user; `query` is the raw query string ("" or "limit=5").
    pub async fn feed(&self, token: &str, query: &str) -> anyhow::Result<Reply> {
        let path = if query.is_empty() { "/api/feed".to_owned() } else { format!("/api/feed?{query}") };
        self.send(self.get(&path).bearer_auth(token)).await
    }
}
