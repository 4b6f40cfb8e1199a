//! Who may see what, in one place.
//!
//! An activity is visible to its athlete always; to friends when its
//! visibility is `friends` or `public`; to any signed-in user when `public`.
//! Discarded activities are the athlete's alone, and a user the athlete
//! removed from an activity's audience (`privacy`) no longer sees it. Everyone else gets 404,
//! exactly as for an id that does not exist, so ids do not leak.
//!
//! The live endpoints are also open to holders of a share link, and take
//! credentials where a browser can put them on a WebSocket: the bearer token
//! as `Authorization`, as the offered subprotocol `bearer.<token>` (what the
//! web app uses: nothing a console or proxy logs) or `?token=`, a share
//! token as the subprotocol `share.<token>`, the header `X-Share-Token` or
//! `?share=`. The `Viewer`
//! extractor reads them (query strings are never logged).

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde::Deserialize;
use uuid::Uuid;

use super::auth::{bearer_token, protocol_token, user_for_token};
use super::{ApiContext, ApiError, hash_token};
use crate::domain::{Activity, ActivityState, Visibility};
use crate::ingest::ActivitySnapshot;
use crate::store::{Share, User};

/// Whether `viewer` may see `activity` (see the module comment).
pub async fn can_view(
    ctx: &ApiContext,
    viewer: &User,
    activity: &Activity,
) -> Result<bool, ApiError> {
    if activity.athlete_id == viewer.id {
        return Ok(true);
    }
    if activity.blocked_viewers.contains(&viewer.id) {
        return Ok(false);
    }
    Ok(match (activity.state, activity.visibility) {
        (ActivityState::Discarded, _) | (_, Visibility::Private) => false,
        (_, Visibility::Public) => true,
        (_, Visibility::Friends) => {
            ctx.store
                .users
                .are_friends(viewer.id, activity.athlete_id)
                .await?
        }
    })
}

/// The activity if `viewer` may see it, otherwise `NotFound`.
pub async fn visible_snapshot(
    ctx: &ApiContext,
    viewer: &User,
    id: Uuid,
) -> Result<ActivitySnapshot, ApiError> {
    let snapshot = ctx.tracker.snapshot(id).await?;
    if can_view(ctx, viewer, &snapshot.activity).await? {
        Ok(snapshot)
    } else {
        Err(ApiError::NotFound)
    }
}

/// Who is watching a live activity: a signed-in user, or the holder of a
/// share link.
pub enum Viewer {
    User(User),
    Share(Share),
}

#[derive(Deserialize)]
struct Credentials {
    token: Option<String>,
    share: Option<String>,
}

impl FromRequestParts<ApiContext> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &ApiContext) -> Result<Self, ApiError> {
        let query = Query::<Credentials>::try_from_uri(&parts.uri)
            .map(|q| q.0)
            .unwrap_or(Credentials {
                token: None,
                share: None,
            });
        let headers = &parts.headers;
        if let Some(token) = bearer_token(headers)
            .or_else(|| protocol_token(headers, "bearer"))
            .or(query.token.as_deref())
        {
            return Ok(Viewer::User(user_for_token(ctx, token).await?));
        }
        let share_header = headers.get("x-share-token").and_then(|v| v.to_str().ok());
        let Some(token) = protocol_token(headers, "share")
            .or(share_header)
            .or(query.share.as_deref())
        else {
            return Err(ApiError::Unauthorized);
        };
        let share = ctx
            .store
            .activities
            .share_by_token(hash_token(token))
            .await?
            .ok_or(ApiError::NotFound)?;
        // Share-link watchers have no token of their own: one bucket per link.
        ctx.limiter
            .check(share.id)
            .map_err(|retry_after_s| ApiError::RateLimited { retry_after_s })?;
        Ok(Viewer::Share(share))
    }
}

impl Viewer {
    /// The activity, if this viewer may watch it now; `NotFound` otherwise.
    pub async fn watch(&self, ctx: &ApiContext, id: Uuid) -> Result<ActivitySnapshot, ApiError> {
        match self {
            Viewer::User(user) => visible_snapshot(ctx, user, id).await,
            Viewer::Share(share) => {
                if share.activity_id != id || share.expires_at <= ctx.clock.now_ms() {
                    return Err(ApiError::NotFound);
                }
                let snapshot = ctx.tracker.snapshot(id).await?;
                match snapshot.activity.state {
                    ActivityState::Discarded => Err(ApiError::NotFound),
                    _ => Ok(snapshot),
                }
            }
        }
    }

    pub fn share(&self) -> Option<&Share> {
        match self {
            Viewer::Share(share) => Some(share),
            Viewer::User(_) => None,
        }
    }
}
