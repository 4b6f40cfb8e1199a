//! Share links (Garmin LiveTrack style): the athlete creates an expiring
//! token for one activity; anyone holding it may watch that activity live,
//! without an account, until it expires or is revoked. Revocation also
//! closes this node's open WebSockets that use it.
//!
//! - `POST /v1/shares` `{activity_id, expires_in_s}` → the link, with its
//!   token and ready `watch_url` (the token is shown this once: only its
//!   hash is stored).
//! - `GET /v1/activities/{id}/shares` (the athlete only) → every link of the
//!   activity, newest first, `active` while unexpired, without tokens.
//! - `DELETE /v1/shares/{id}` revokes one.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::auth::new_token;
use super::{ApiContext, ApiError, AuthUser, hash_token};
use crate::domain::time::to_rfc3339;
use crate::store::Share;

pub const DEFAULT_SHARE_S: i64 = 24 * 3600;
pub const MIN_SHARE_S: i64 = 5;
pub const MAX_SHARE_S: i64 = 7 * 24 * 3600;

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/v1/shares", post(create_share))
        .route("/v1/shares/{id}", delete(revoke_share))
        .route("/v1/activities/{id}/shares", get(list_shares))
}

#[utoipa::path(
    get,
    path = "/v1/activities/{id}/shares",
    tag = "shares",
    params(("id" = Uuid, Path, description = "the activity")),
    responses((status = 200, description = "the activity's share links, newest first (no tokens)", body = serde_json::Value)),
)]
async fn list_shares(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let activity = ctx.tracker.owned(me.id, id).await?.activity;
    let now = ctx.clock.now_ms();
    let mut shares = ctx.store.activities.shares_of(activity.id).await?;
    shares.retain(|s| s.owner_id == me.id);
    shares.sort_by_key(|s| std::cmp::Reverse(s.id));
    let items: Vec<Value> = shares
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "activity_id": s.activity_id,
                "expires_at": to_rfc3339(s.expires_at),
                "active": s.expires_at > now,
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewShare {
    activity_id: Uuid,
    expires_in_s: Option<i64>,
}

#[utoipa::path(
    post,
    path = "/v1/shares",
    tag = "shares",
    request_body = NewShare,
    responses((status = 201, description = "the share link (token shown once)", body = serde_json::Value)),
)]
async fn create_share(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Json(body): Json<NewShare>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let ttl = body.expires_in_s.unwrap_or(DEFAULT_SHARE_S);
    if !(MIN_SHARE_S..=MAX_SHARE_S).contains(&ttl) {
        return Err(ApiError::invalid(
            "invalid_expiry",
            format!("expires_in_s must be {MIN_SHARE_S} to {MAX_SHARE_S}"),
        ));
    }
    let activity = ctx.tracker.owned(me.id, body.activity_id).await?.activity;
    let token = new_token();
    let share = Share {
        id: Uuid::now_v7(),
        activity_id: activity.id,
        owner_id: me.id,
        expires_at: ctx.clock.now_ms() + ttl * 1000,
        token_hash: hash_token(&token),
    };
    ctx.store.activities.put_share(&share).await?;
    let id = activity.id;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": share.id,
            "activity_id": id,
            "token": token,
            "expires_at": to_rfc3339(share.expires_at),
            "poll_url": format!("/v1/activities/{id}/live?share={token}"),
            "ws_url": format!("/v1/activities/{id}/live/ws?share={token}"),
            "watch_url": format!("/watch.html?activity={id}&share={token}"),
        })),
    ))
}

#[utoipa::path(
    delete,
    path = "/v1/shares/{id}",
    tag = "shares",
    params(("id" = Uuid, Path, description = "the share")),
    responses((status = 200, description = "revoked", body = serde_json::Value)),
)]
async fn revoke_share(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let share = ctx
        .store
        .activities
        .share(id)
        .await?
        .filter(|s| s.owner_id == me.id)
        .ok_or(ApiError::NotFound)?;
    ctx.store.activities.delete_share(&share).await?;
    let _ = ctx.live.revoked.send(share.id);
    ctx.changes
        .announce(crate::store::changes::Change::Share(share.id));
    Ok(Json(json!({"status": "revoked"})))
}
