//! Friendships: mutual, both sides consent. `PUT` asks (or accepts, when the
//! other side already asked); `DELETE` ends the friendship or withdraws the
//! request from either side.

use axum::extract::{Path, State};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{ApiContext, ApiError, AuthUser};

pub fn router() -> Router<ApiContext> {
    Router::new().route("/v1/friends", get(list_friends)).route(
        "/v1/friends/{user_id}",
        put(add_friend).delete(remove_friend),
    )
}

#[utoipa::path(
    put,
    path = "/v1/friends/{user_id}",
    tag = "friends",
    params(("user_id" = Uuid, Path)),
    responses((status = 200, description = "request sent or friendship made", body = serde_json::Value)),
)]
async fn add_friend(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Path(other): Path<Uuid>,
) -> Result<Json<Value>, ApiError> {
    if other == me.id {
        return Err(ApiError::invalid(
            "invalid_friend",
            "you cannot befriend yourself",
        ));
    }
    ctx.store
        .users
        .user(other)
        .await?
        .ok_or(ApiError::NotFound)?;
    ctx.store.users.add_friend_request(me.id, other).await?;
    let mutual = ctx.store.users.has_friend_request(other, me.id).await?;
    Ok(Json(
        json!({"status": if mutual { "friends" } else { "requested" }}),
    ))
}

#[utoipa::path(
    delete,
    path = "/v1/friends/{user_id}",
    tag = "friends",
    params(("user_id" = Uuid, Path)),
    responses((status = 200, description = "removed", body = serde_json::Value)),
)]
async fn remove_friend(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Path(other): Path<Uuid>,
) -> Result<Json<Value>, ApiError> {
    ctx.store.users.remove_friendship(me.id, other).await?;
    Ok(Json(json!({"status": "none"})))
}

#[utoipa::path(
    get,
    path = "/v1/friends",
    tag = "friends",
    responses((status = 200, description = "friends and pending requests", body = serde_json::Value)),
)]
async fn list_friends(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
) -> Result<Json<Value>, ApiError> {
    let mut items = Vec::new();
    for id in ctx.store.users.friends_of(me.id).await? {
        if let Some(user) = ctx.store.users.user(id).await? {
            items.push(json!({"id": user.id, "name": user.name}));
        }
    }
    Ok(Json(json!({"items": items})))
}
