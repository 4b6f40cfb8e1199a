//! Privacy the athlete controls: privacy zones, who is watching a live
//! activity, and removing one viewer from it.
//!
//! - `PUT /v1/me/privacy-zones` `[{lat, lng, radius_m}]` (at most 10, radius
//!   100–1,000 m) replaces the caller's zones; `GET` reads them. Zones apply
//!   to every activity, past ones included, for everyone but the athlete.
//! - `GET /v1/activities/{id}/viewers` (the athlete only): the friends
//!   watching now, by name, and the share-link viewers counted per link.
//! - `DELETE /v1/activities/{id}/viewers/{user_id}` removes one user from the
//!   activity's audience (their sockets close within `RULES_TTL_MS` plus a
//!   tick, polls get 404); `PUT` lets them back in.
//!
//! `Rules` is what a watcher's connection checks again and again: the
//! activity's audience settings and the privacy filter for everyone but the
//! athlete, read from the store at most once per `RULES_TTL_MS` per
//! activity and node (finished activities' hidden ends, which need the last
//! point, once per `FINAL_RULES_TTL_MS`), and forgotten at once when this
//! node changes them. A refresh reads no record that this node's hot cache
//! holds as current (the node tracking a live activity, where the load
//! balancer sends its watchers too), and the athlete's zones are kept
//! `ZONES_TTL_MS`. While this node hears other nodes' changes
//! (`store::changes`: Redis pub/sub, or a store nobody else shares), both
//! are kept `TRUSTED_TTL_MS` instead and forgotten when another node says
//! it changed them: a change made anywhere applies to watchers here at
//! once. Otherwise a zone change made through another node applies within
//! 10 s, an activity's within 1 s.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use dashmap::DashMap;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::access::Viewer;
use super::{ApiContext, ApiError, AuthUser};
use crate::domain::privacy::{ZonesError, validate_zones};
use crate::domain::time::Millis;
use crate::domain::{Activity, ActivityState, PrivacyFilter, PrivacyZone, Visibility};
use crate::startup::Sweep;
use crate::store::audience::{Watcher, Who};
use crate::store::changes::{Change, TRUSTED_TTL_MS};
use crate::store::{StoreError, read_track};

/// How stale a node's copy of an activity's rules may be.
pub const RULES_TTL_MS: Millis = 1_000;
/// The same for a finished activity (its ends no longer move).
pub const FINAL_RULES_TTL_MS: Millis = 60_000;
/// How stale a node's copy of an athlete's privacy zones may be when they
/// were changed through another node (the node that took the change
/// forgets its copy at once). Read every `RULES_TTL_MS` instead, the zones
/// cost a store read per second per watched live activity.
pub const ZONES_TTL_MS: Millis = 10_000;

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/v1/me/privacy-zones", get(get_zones).put(put_zones))
        .route("/v1/activities/{id}/viewers", get(viewers))
        .route(
            "/v1/activities/{id}/viewers/{user_id}",
            put(readmit).delete(remove),
        )
}

/// An activity's audience settings and privacy filter, as of `read_at`.
#[derive(Debug)]
pub struct Rules {
    pub athlete_id: Uuid,
    pub state: ActivityState,
    pub visibility: Visibility,
    pub blocked: Vec<Uuid>,
    /// What everyone but the athlete must not see.
    pub filter: PrivacyFilter,
    first: Option<(f64, f64)>,
    read_at: Millis,
}

impl Rules {
    /// Whether `viewer` is the athlete, who sees everything.
    pub fn is_athlete(&self, viewer: &Viewer) -> bool {
        matches!(viewer, Viewer::User(u) if u.id == self.athlete_id)
    }

    /// The filter for `viewer`: none for the athlete.
    pub fn filter_for(&self, viewer: &Viewer) -> Option<&PrivacyFilter> {
        (!self.is_athlete(viewer) && !self.filter.is_empty()).then_some(&self.filter)
    }

    /// Whether these rules, by themselves, shut `viewer` out (private,
    /// discarded or removed from the audience). Friendship is checked when
    /// the watcher connects, not again.
    pub fn excludes(&self, viewer: &Viewer) -> bool {
        if self.is_athlete(viewer) {
            return false;
        }
        if self.state == ActivityState::Discarded {
            return true;
        }
        match viewer {
            Viewer::User(u) => {
                self.visibility == Visibility::Private || self.blocked.contains(&u.id)
            }
            // A share link is the athlete's own choice to show this one.
            Viewer::Share(_) => false,
        }
    }
}

/// Every activity's `Rules` this node looked at recently.
#[derive(Default)]
pub struct RulesCache {
    rules: DashMap<Uuid, Arc<Rules>>,
    /// Each athlete's zones, as of when they were read.
    zones: DashMap<Uuid, (Arc<Vec<PrivacyZone>>, Millis)>,
}

impl RulesCache {
    /// The activity's rules, read again if older than their TTL.
    pub async fn get(&self, ctx: &ApiContext, id: Uuid) -> Result<Arc<Rules>, ApiError> {
        let now = ctx.clock.now_ms();
        let cached = self.rules.get(&id).map(|r| r.clone());
        if let Some(rules) = &cached {
            let ttl = match !matches!(rules.state, ActivityState::Started | ActivityState::Paused) {
                true => FINAL_RULES_TTL_MS,
                false => ctx.changes.ttl(RULES_TTL_MS, TRUSTED_TTL_MS),
            };
            if now - rules.read_at < ttl {
                return Ok(rules.clone());
            }
        }
        // A record this node wrote or checked within the TTL (a live
        // activity it tracks, between posts) needs no read.
        let ttl = ctx.changes.ttl(RULES_TTL_MS, TRUSTED_TTL_MS);
        let activity = match ctx.tracker.cached(id, ttl) {
            Some(activity) => activity,
            None => ctx
                .store
                .activities
                .activity(id)
                .await?
                .ok_or(ApiError::NotFound)?,
        };
        let known_first = cached.and_then(|r| r.first);
        let zones = self.zones_of(ctx, activity.athlete_id, now).await?;
        let rules = Arc::new(read_rules(ctx, &activity, &zones, known_first, now).await?);
        self.rules.insert(id, rules.clone());
        Ok(rules)
    }

    /// Forgets one activity's rules (this node just changed them).
    pub fn forget(&self, id: Uuid) {
        self.rules.remove(&id);
    }

    /// Forgets every activity of one athlete (their zones changed).
    pub fn forget_athlete(&self, athlete: Uuid) {
        self.zones.remove(&athlete);
        self.rules.retain(|_, r| r.athlete_id != athlete);
    }

    /// Forgets everything (other nodes' changes may have been missed).
    pub fn forget_all(&self) {
        self.zones.clear();
        self.rules.clear();
    }

    /// The athlete's privacy zones, read again after `ZONES_TTL_MS`.
    async fn zones_of(
        &self,
        ctx: &ApiContext,
        athlete: Uuid,
        now: Millis,
    ) -> Result<Arc<Vec<PrivacyZone>>, StoreError> {
        if let Some(entry) = self.zones.get(&athlete)
            && now - entry.1 < ctx.changes.ttl(ZONES_TTL_MS, TRUSTED_TTL_MS)
        {
            return Ok(entry.0.clone());
        }
        let zones = Arc::new(ctx.store.users.privacy_zones(athlete).await?);
        self.zones.insert(athlete, (zones.clone(), now));
        Ok(zones)
    }
}

impl Sweep for RulesCache {
    /// Drops entries nobody asked for in a while.
    fn sweep(&self, now: Millis) {
        self.rules
            .retain(|_, r| now - r.read_at < 2 * FINAL_RULES_TTL_MS);
        self.zones
            .retain(|_, z| now - z.1 < TRUSTED_TTL_MS.max(ZONES_TTL_MS));
    }
}

async fn read_rules(
    ctx: &ApiContext,
    activity: &Activity,
    zones: &[PrivacyZone],
    known_first: Option<(f64, f64)>,
    now: Millis,
) -> Result<Rules, StoreError> {
    let (mut first, mut last) = (known_first, None);
    if activity.hide_ends_m > 0 {
        let points = ctx.store.points.as_ref();
        if !activity.is_live() {
            let track = read_track(points, activity.id).await?;
            first = track.first().map(|p| (p.lat, p.lng));
            last = track.last().map(|p| (p.lat, p.lng));
        } else if first.is_none() {
            let (page, _) = points.route_page(activity.id, None, 1).await?;
            first = page.first().map(|p| (p.lat, p.lng));
        }
    }
    Ok(Rules {
        athlete_id: activity.athlete_id,
        state: activity.state,
        visibility: activity.visibility,
        blocked: activity.blocked_viewers.clone(),
        filter: PrivacyFilter::new(zones, activity.hide_ends_m, first, last),
        first,
        read_at: now,
    })
}

#[utoipa::path(
    get,
    path = "/v1/me/privacy-zones",
    tag = "privacy",
    responses((status = 200, description = "the privacy zones", body = serde_json::Value)),
)]
async fn get_zones(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
) -> Result<Json<Vec<PrivacyZone>>, ApiError> {
    Ok(Json(ctx.store.users.privacy_zones(me.id).await?))
}

#[utoipa::path(
    put,
    path = "/v1/me/privacy-zones",
    tag = "privacy",
    request_body = Vec<PrivacyZone>,
    responses((status = 200, description = "the privacy zones", body = serde_json::Value)),
)]
async fn put_zones(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Json(zones): Json<Vec<PrivacyZone>>,
) -> Result<Json<Vec<PrivacyZone>>, ApiError> {
    validate_zones(&zones).map_err(|e| match e {
        ZonesError::TooMany => ApiError::invalid("too_many_zones", e.to_string()),
        ZonesError::Invalid(_) => ApiError::invalid("invalid_zone", e.to_string()),
    })?;
    ctx.store.users.set_privacy_zones(me.id, &zones).await?;
    ctx.rules.forget_athlete(me.id);
    ctx.changes.announce(Change::Athlete(me.id));
    Ok(Json(zones))
}

#[derive(Serialize)]
struct FriendWatching {
    id: Uuid,
    name: String,
    connections: usize,
}

#[derive(Serialize)]
struct ShareWatching {
    share_id: Uuid,
    viewers: usize,
}

#[derive(Serialize)]
struct Viewers {
    users: Vec<FriendWatching>,
    shares: Vec<ShareWatching>,
    total: usize,
    /// Users removed from this activity's audience.
    removed: Vec<Uuid>,
}

#[utoipa::path(
    get,
    path = "/v1/activities/{id}/viewers",
    tag = "privacy",
    params(("id" = Uuid, Path, description = "the activity")),
    responses((status = 200, description = "who watches now", body = serde_json::Value)),
)]
async fn viewers(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Viewers>, ApiError> {
    let snapshot = ctx.tracker.owned(me.id, id).await?;
    let watchers = ctx.audience.watchers(id, ctx.clock.now_ms()).await?;
    let total = watchers.len();
    let mut users = std::collections::BTreeMap::<Uuid, usize>::new();
    let mut shares = std::collections::BTreeMap::<Uuid, usize>::new();
    for Watcher { who, .. } in watchers {
        match who {
            Who::User(id) => *users.entry(id).or_default() += 1,
            Who::Share(id) => *shares.entry(id).or_default() += 1,
        }
    }
    let mut named = Vec::with_capacity(users.len());
    for (user, connections) in users {
        if let Some(u) = ctx.store.users.user(user).await? {
            named.push(FriendWatching {
                id: u.id,
                name: u.name,
                connections,
            });
        }
    }
    Ok(Json(Viewers {
        users: named,
        shares: shares
            .into_iter()
            .map(|(share_id, viewers)| ShareWatching { share_id, viewers })
            .collect(),
        total,
        removed: snapshot.activity.blocked_viewers.clone(),
    }))
}

#[utoipa::path(
    delete,
    path = "/v1/activities/{id}/viewers/{user_id}",
    tag = "privacy",
    params(("id" = Uuid, Path, description = "the activity"), ("user_id" = Uuid, Path)),
    responses((status = 200, description = "removed", body = serde_json::Value)),
)]
async fn remove(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Path((id, user)): Path<(Uuid, Uuid)>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // Whose it is first: a stranger learns nothing, not even that it exists.
    ctx.tracker.owned(me.id, id).await?;
    if user == me.id {
        return Err(ApiError::invalid(
            "invalid_viewer",
            "you cannot remove yourself from your own activity",
        ));
    }
    ctx.tracker
        .amend(me.id, id, |a| {
            if !a.blocked_viewers.contains(&user) {
                a.blocked_viewers.push(user);
            }
            Ok(())
        })
        .await?;
    ctx.rules.forget(id);
    let _ = ctx.live.access_changed.send(id);
    Ok((StatusCode::OK, Json(json!({"status": "removed"}))))
}

#[utoipa::path(
    put,
    path = "/v1/activities/{id}/viewers/{user_id}",
    tag = "privacy",
    params(("id" = Uuid, Path, description = "the activity"), ("user_id" = Uuid, Path)),
    responses((status = 200, description = "readmitted", body = serde_json::Value)),
)]
async fn readmit(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Path((id, user)): Path<(Uuid, Uuid)>,
) -> Result<Json<Value>, ApiError> {
    ctx.tracker
        .amend(me.id, id, |a| {
            a.blocked_viewers.retain(|u| *u != user);
            Ok(())
        })
        .await?;
    ctx.rules.forget(id);
    Ok(Json(json!({"status": "admitted"})))
}
