//! Sign-up and the caller's identity.

use std::net::SocketAddr;

use axum::Extension;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::auth::new_token;
use super::{ApiContext, ApiError, AuthUser, hash_token};
use crate::store::User;

pub const MAX_NAME_CHARS: usize = 64;

/// Characters a name shown to others must not hold: controls, and the
/// bidirectional overrides and isolates that make text display as
/// something else than it is.
pub fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/v1/users", post(create_user))
        .route("/v1/me", get(me))
        .route("/v1/users/{id}", get(user))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewUser {
    name: String,
    region: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/users",
    tag = "users",
    request_body = NewUser,
    responses((status = 201, description = "the user and their token (shown once)", body = serde_json::Value)),
    security(()),
)]
async fn create_user(
    State(ctx): State<ApiContext>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Json(body): Json<NewUser>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || name.chars().any(unsafe_char) {
        return Err(ApiError::invalid(
            "invalid_name",
            format!(
                "name must be 1 to {MAX_NAME_CHARS} characters, without control or text-direction characters"
            ),
        ));
    }
    let region = body
        .region
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    if region
        .as_ref()
        .is_some_and(|r| r.len() > 32 || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    {
        return Err(ApiError::invalid(
            "invalid_region",
            "region must be up to 32 letters, digits or dashes (e.g. DE-BE)",
        ));
    }
    // Each sign-up is a fresh token (and a fresh rate-limit bucket), so
    // sign-ups themselves are limited per client address.
    if let Some(Extension(ConnectInfo(addr))) = peer {
        let ip = match addr.ip() {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            std::net::IpAddr::V6(v6) => v6,
        };
        ctx.signups
            .check(Uuid::from_u128(u128::from(ip)))
            .map_err(|retry_after_s| ApiError::RateLimited { retry_after_s })?;
    }
    let user = User {
        id: Uuid::now_v7(),
        name: name.to_string(),
        created_at: ctx.clock.now_ms(),
        region,
    };
    let token = new_token();
    ctx.store
        .users
        .create_user(&user, hash_token(&token))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(with_region(
            json!({"id": user.id, "name": user.name, "token": token}),
            &user,
        )),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "users",
    responses((status = 200, description = "the caller", body = serde_json::Value)),
)]
async fn me(AuthUser(user): AuthUser) -> Json<Value> {
    Json(with_region(
        json!({"id": user.id, "name": user.name}),
        &user,
    ))
}

/// Someone's public card (id and name), for an invite link: ids are
/// unguessable, so this names only whoever shared theirs.
#[utoipa::path(
    get,
    path = "/v1/users/{id}",
    tag = "users",
    params(("id" = Uuid, Path, description = "the user")),
    responses((status = 200, description = "a user's public card", body = serde_json::Value)),
)]
async fn user(
    State(ctx): State<ApiContext>,
    AuthUser(_): AuthUser,
    axum::extract::Path(id): axum::extract::Path<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let user = ctx.store.users.user(id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(json!({"id": user.id, "name": user.name})))
}

fn with_region(mut body: Value, user: &User) -> Value {
    if let Some(region) = &user.region {
        body["region"] = Value::String(region.clone());
    }
    body
}
