//! Authentication as an extractor: a handler that takes `AuthUser` can only
//! run for a caller with a valid bearer token.
//!
//! Tokens are random (256 bits), shown once at sign-up, and stored only as
//! their SHA-256, so a copy of the database does not hold usable tokens.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};

use super::tokens::Cached;
use super::{ApiContext, ApiError};
use crate::store::User;

pub struct AuthUser(pub User);

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    format!("tc_{}", hex(&bytes))
}

/// Lower-case hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The token of an `Authorization: Bearer` header, if any.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The WebSocket subprotocol the server answers with (`Sec-WebSocket-Protocol`).
pub const WS_PROTOCOL: &str = "trailcast";

/// A credential a browser put in `Sec-WebSocket-Protocol` (it cannot set
/// headers on a WebSocket, and a URL's query string ends up in consoles and
/// logs): the offered protocol `<kind>.<token>`, e.g. `bearer.abc…`.
pub fn protocol_token<'h>(headers: &'h HeaderMap, kind: &str) -> Option<&'h str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(kind)?.strip_prefix('.'))
}

/// The user a token belongs to, or `Unauthorized`; counts the request
/// against the user's rate limit. Looked up in the token cache first.
pub async fn user_for_token(ctx: &ApiContext, token: &str) -> Result<User, ApiError> {
    let hash = hash_token(token);
    let now = ctx.clock.now_ms();
    let user = match ctx.tokens.get(&hash, now) {
        Cached::Found(user) => {
            metrics::counter!("trailcast_token_cache_hits_total").increment(1);
            user
        }
        Cached::Missing => return Err(ApiError::Unauthorized),
        Cached::Unknown => {
            let found = ctx.store.users.user_by_token(hash).await?;
            ctx.tokens.put(hash, found.clone(), now);
            found.ok_or(ApiError::Unauthorized)?
        }
    };
    ctx.limiter
        .check(user.id)
        .map_err(|retry_after_s| ApiError::RateLimited { retry_after_s })?;
    Ok(user)
}

impl FromRequestParts<ApiContext> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &ApiContext) -> Result<Self, ApiError> {
        let token = bearer_token(&parts.headers).ok_or(ApiError::Unauthorized)?;
        user_for_token(ctx, token).await.map(AuthUser)
    }
}
