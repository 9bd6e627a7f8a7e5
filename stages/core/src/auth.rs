//! Bearer-token authentication: HS256 JWTs with `sub` = user id and `tier`.
//!
//! The algorithm is pinned (a token signed with anything else, or `alg: none`, is refused) and
//! `exp` is required. The verified user travels in the request's extensions as [`AuthUser`], so
//! handlers and the stage-3 rate limiter agree on who is calling.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::ApiError;

/// The secret used when `JWT_SECRET` is not set. Fine on your laptop, never in production.
pub const DEV_SECRET: &str = "slow-api-kata-dev-secret";

/// Rate-limit tier, carried in the token (stage-3 gives each its own bucket size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Free,
    Pro,
    Internal,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Pro => "pro",
            Self::Internal => "internal",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, as a string (RFC 7519 makes `sub` a string).
    pub sub: String,
    pub tier: Tier,
    pub iat: u64,
    pub exp: u64,
}

/// The authenticated caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthUser {
    pub id: i64,
    pub tier: Tier,
}

pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl JwtKeys {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// A token for `user_id` in `tier`, valid for `ttl`.
    pub fn mint(&self, user_id: i64, tier: Tier, ttl: Duration) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        self.sign(&Claims { sub: user_id.to_string(), tier, iat: now, exp: now + ttl.as_secs() })
    }

    /// Sign any claims (the checker uses it to make an expired token).
    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<AuthUser, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| ApiError::Unauthorized(format!("invalid bearer token: {e}")))?;
        let id = data
            .claims
            .sub
            .parse()
            .map_err(|_| ApiError::Unauthorized(format!("token subject {:?} is not a user id", data.claims.sub)))?;
        Ok(AuthUser { id, tier: data.claims.tier })
    }
}

/// Middleware on the `/api` routes: 401 unless a valid bearer token is present.
pub async fn authenticate(
    State(keys): State<Arc<JwtKeys>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = request.headers().get(AUTHORIZATION).ok_or_else(|| {
        ApiError::Unauthorized("missing Authorization header; send `Authorization: Bearer <token>` (mint one with `cargo kata token --user ID`)".into())
    })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .ok_or_else(|| ApiError::Unauthorized("Authorization header must be `Bearer <token>`".into()))?;
    let user = keys.verify(token.trim())?;
    request.extensions_mut().insert(user);
    Ok(next.run(request).await)
}

impl<S: Send + Sync> FromRequestParts<S> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<AuthUser>().copied().ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("AuthUser read on a route without the authenticate layer"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_verifies_to_its_user_and_tier() {
        let keys = JwtKeys::new("s");
        let token = keys.mint(42, Tier::Pro, Duration::from_secs(60));
        assert_eq!(keys.verify(&token).unwrap(), AuthUser { id: 42, tier: Tier::Pro });
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let token = JwtKeys::new("other").mint(42, Tier::Free, Duration::from_secs(60));
        assert!(matches!(JwtKeys::new("s").verify(&token), Err(ApiError::Unauthorized(_))));
    }

    #[test]
    fn an_expired_token_is_refused() {
        let keys = JwtKeys::new("s");
        let token = keys.sign(&Claims { sub: "42".into(), tier: Tier::Free, iat: 0, exp: 1 });
        let err = keys.verify(&token).unwrap_err();
        assert!(err.to_string().contains("ExpiredSignature"), "{err}");
    }

    #[test]
    fn an_unsigned_alg_none_token_is_refused() {
        // header {"alg":"none","typ":"JWT"}, claims {"sub":"1","tier":"internal","iat":0,"exp":9999999999}
        let token = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiIxIiwidGllciI6ImludGVybmFsIiwiaWF0IjowLCJleHAiOjk5OTk5OTk5OTl9.";
        assert!(JwtKeys::new("s").verify(token).is_err());
    }
}
