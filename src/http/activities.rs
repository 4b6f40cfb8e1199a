//! Activities: create, change state, read one, read its route, list
//! history (mine or my friends'), newest start first.
//!
//! Who may see an activity: its athlete always; friends when visibility is
//! `friends` or `public`; any signed-in user when `public`. Discarded
//! activities are the athlete's alone. Everyone else gets 404, exactly as
//! for an id that does not exist, so ids do not leak.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{ApiContext, ApiError, AuthUser, page_limit};
use crate::domain::activity::Event;
use crate::domain::point::MAX_FUTURE_SKEW_MS;
use crate::domain::time::{
    Millis, deserialize_opt_ms, now_ms, serialize_ms, serialize_opt_ms, to_rfc3339,
};
use crate::domain::track::Split;
use crate::domain::{Activity, ActivityState, ActivityType, Point, Stats, Visibility};
use crate::ingest::ActivitySnapshot;
use crate::store::{HistoryKey, User, read_track};

/// How far back a client may date an activity it recorded offline.
pub const MAX_BACKDATE_MS: Millis = 30 * 24 * 60 * 60 * 1000;
pub const DEFAULT_PAGE: usize = 20;
pub const MAX_PAGE: usize = 100;

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/v1/activities", get(list_activities).post(create_activity))
        .route("/v1/activities/{id}", get(get_activity).patch(change_state))
        .route("/v1/activities/{id}/route", get(get_route))
}

/// The API's Activity: the stored record plus statistics as of now.
#[derive(Serialize)]
pub struct ActivityView<'a> {
    id: Uuid,
    athlete_id: Uuid,
    #[serde(rename = "type")]
    activity_type: ActivityType,
    state: ActivityState,
    visibility: Visibility,
    course_id: Option<Uuid>,
    #[serde(serialize_with = "serialize_ms")]
    started_at: Millis,
    #[serde(serialize_with = "serialize_opt_ms")]
    finished_at: Option<Millis>,
    events: &'a [Event],
    stats: Stats,
    splits: &'a [Split],
}

impl<'a> ActivityView<'a> {
    pub fn of(s: &'a ActivitySnapshot, now: Millis) -> ActivityView<'a> {
        let a = &s.activity;
        ActivityView {
            id: a.id,
            athlete_id: a.athlete_id,
            activity_type: a.activity_type,
            state: a.state,
            visibility: a.visibility,
            course_id: a.course_id,
            started_at: a.started_at,
            finished_at: a.finished_at,
            events: &a.events,
            stats: Stats::of(a, &s.track, now),
            splits: &s.track.splits,
        }
    }
}

pub fn activity_json(s: &ActivitySnapshot) -> Value {
    serde_json::to_value(ActivityView::of(s, now_ms())).unwrap_or(Value::Null)
}

/// Whether `viewer` may see `activity` (see the module comment).
pub async fn can_view(
    ctx: &ApiContext,
    viewer: &User,
    activity: &Activity,
) -> Result<bool, ApiError> {
    if activity.athlete_id == viewer.id {
        return Ok(true);
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

#[derive(Deserialize)]
struct NewActivity {
    #[serde(rename = "type")]
    activity_type: ActivityType,
    course_id: Option<Uuid>,
    #[serde(default)]
    visibility: Visibility,
    #[serde(default, deserialize_with = "deserialize_opt_ms")]
    started_at: Option<Millis>,
}

async fn create_activity(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Json(body): Json<NewActivity>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let now = now_ms();
    let started_at = body.started_at.unwrap_or(now);
    if started_at > now + MAX_FUTURE_SKEW_MS || started_at < now - MAX_BACKDATE_MS {
        return Err(ApiError::invalid(
            "invalid_started_at",
            "started_at must be within the last 30 days and not in the future",
        ));
    }
    let activity = Activity::start(
        Uuid::now_v7(),
        me.id,
        body.activity_type,
        body.visibility,
        body.course_id,
        started_at,
    );
    let snapshot = ctx.tracker.create(activity).await?;
    Ok((StatusCode::CREATED, Json(activity_json(&snapshot))))
}

async fn get_activity(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let snapshot = visible_snapshot(&ctx, &me, id).await?;
    Ok(Json(activity_json(&snapshot)))
}

#[derive(Deserialize)]
struct StateChange {
    state: ActivityState,
    #[serde(default, deserialize_with = "deserialize_opt_ms")]
    at: Option<Millis>,
}

async fn change_state(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<StateChange>,
) -> Result<Json<Value>, ApiError> {
    let current = ctx.tracker.snapshot(id).await?;
    if current.activity.athlete_id != me.id {
        return Err(ApiError::NotFound);
    }
    let snapshot = ctx.tracker.transition(id, body.state, body.at).await?;
    Ok(Json(activity_json(&snapshot)))
}

#[derive(Deserialize)]
struct RouteQuery {
    format: Option<String>,
}

async fn get_route(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Path(id): Path<Uuid>,
    Query(q): Query<RouteQuery>,
) -> Result<Response, ApiError> {
    let snapshot = visible_snapshot(&ctx, &me, id).await?;
    let track = read_track(ctx.store.points.as_ref(), id).await?;
    match q.format.as_deref().unwrap_or("json") {
        "json" => Ok(Json(json!({"points": track})).into_response()),
        "geojson" => Ok((
            [(header::CONTENT_TYPE, "application/geo+json")],
            Json(geojson(&track)),
        )
            .into_response()),
        "gpx" => Ok((
            [
                (header::CONTENT_TYPE, "application/gpx+xml".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{id}.gpx\""),
                ),
            ],
            gpx(&snapshot.activity, &track),
        )
            .into_response()),
        other => Err(ApiError::BadRequest(format!(
            "unknown format {other:?}; use json, geojson or gpx"
        ))),
    }
}

fn geojson(track: &[Point]) -> Value {
    let coordinates: Vec<Value> = track
        .iter()
        .map(|p| match p.alt {
            Some(alt) => json!([p.lng, p.lat, alt]),
            None => json!([p.lng, p.lat]),
        })
        .collect();
    let times: Vec<String> = track.iter().map(|p| to_rfc3339(p.ts)).collect();
    json!({
        "type": "Feature",
        "geometry": {"type": "LineString", "coordinates": coordinates},
        "properties": {"coordTimes": times},
    })
}

/// GPX 1.1, written directly: a track is a few lines of XML and no field we
/// emit needs escaping beyond the activity type.
fn gpx(activity: &Activity, track: &[Point]) -> String {
    let kind = serde_json::to_value(activity.activity_type)
        .ok()
        .and_then(|v| v.as_str().map(str::to_lowercase))
        .unwrap_or_default();
    let mut out = String::with_capacity(200 + track.len() * 120);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(
        "<gpx version=\"1.1\" creator=\"trailcast\" xmlns=\"http://www.topografix.com/GPX/1/1\">\n",
    );
    out.push_str(&format!(
        "<metadata><time>{}</time></metadata>\n<trk><name>{}</name><type>{kind}</type><trkseg>\n",
        to_rfc3339(activity.started_at),
        activity.id
    ));
    for p in track {
        out.push_str(&format!("<trkpt lat=\"{}\" lon=\"{}\">", p.lat, p.lng));
        if let Some(alt) = p.alt {
            out.push_str(&format!("<ele>{alt}</ele>"));
        }
        out.push_str(&format!("<time>{}</time></trkpt>\n", to_rfc3339(p.ts)));
    }
    out.push_str("</trkseg></trk>\n</gpx>\n");
    out
}

#[derive(Deserialize)]
struct ListQuery {
    mode: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn encode_cursor(k: HistoryKey) -> String {
    format!("{}_{}", k.started_at, k.activity_id)
}

fn decode_cursor(s: &str) -> Option<HistoryKey> {
    let (at, id) = s.split_once('_')?;
    Some(HistoryKey {
        started_at: at.parse().ok()?,
        activity_id: id.parse().ok()?,
    })
}

/// Up to `limit` activities of `athlete` after `after` that pass `keep`,
/// reading the history partition page by page.
async fn history_page(
    ctx: &ApiContext,
    athlete: Uuid,
    mut after: Option<HistoryKey>,
    limit: usize,
    keep: impl Fn(&Activity) -> bool,
) -> Result<Vec<Activity>, ApiError> {
    let mut out = Vec::new();
    loop {
        let page = ctx.store.activities.history(athlete, after, limit).await?;
        let exhausted = page.len() < limit;
        after = page.last().map(HistoryKey::of);
        out.extend(page.into_iter().filter(|a| keep(a)));
        if exhausted || out.len() >= limit {
            out.truncate(limit);
            return Ok(out);
        }
    }
}

async fn list_activities(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = page_limit(q.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let after = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| ApiError::BadRequest("bad cursor".into()))?),
    };
    // One more than asked tells whether another page exists.
    let mut items = match q.mode.as_deref().unwrap_or("mine") {
        "mine" => {
            history_page(&ctx, me.id, after, limit + 1, |a| {
                a.state != ActivityState::Discarded
            })
            .await?
        }
        "friends" => {
            let mut all = Vec::new();
            for friend in ctx.store.users.friends_of(me.id).await? {
                all.extend(
                    history_page(&ctx, friend, after, limit + 1, |a| {
                        a.state != ActivityState::Discarded && a.visibility != Visibility::Private
                    })
                    .await?,
                );
            }
            all.sort_by_key(|a| std::cmp::Reverse(HistoryKey::of(a)));
            all
        }
        other => {
            return Err(ApiError::BadRequest(format!(
                "unknown mode {other:?}; use mine or friends"
            )));
        }
    };
    let next_cursor =
        (items.len() > limit).then(|| encode_cursor(HistoryKey::of(&items[limit - 1])));
    items.truncate(limit);
    let mut out = Vec::with_capacity(items.len());
    for a in items {
        out.push(activity_json(&ctx.tracker.refresh(a).await));
    }
    Ok(Json(json!({"items": out, "next_cursor": next_cursor})))
}
