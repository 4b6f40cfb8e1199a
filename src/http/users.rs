//! Sign-up and the caller's identity.

use axum::extract::State;
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

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/v1/users", post(create_user))
        .route("/v1/me", get(me))
        .route("/v1/users/{id}", get(user))
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
    region: Option<String>,
}

async fn create_user(
    State(ctx): State<ApiContext>,
    Json(body): Json<NewUser>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::invalid(
            "invalid_name",
            format!("name must be 1 to {MAX_NAME_CHARS} characters"),
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

async fn me(AuthUser(user): AuthUser) -> Json<Value> {
    Json(with_region(
        json!({"id": user.id, "name": user.name}),
        &user,
    ))
}

/// Someone's public card (id and name), for an invite link: ids are
/// unguessable, so this names only whoever shared theirs.
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
