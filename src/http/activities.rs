//! Activities: create, change state, read one, read its route, list
//! history (mine or my friends'), newest start first. Who may see an
//! activity is `access`'s rule.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::access::visible_snapshot;
use super::views::{ActivityView, Page};
use super::{ApiContext, ApiError, AuthUser, page_limit};
use crate::domain::point::MAX_FUTURE_SKEW_MS;
use crate::domain::privacy::MAX_HIDE_ENDS_M;
use crate::domain::time::{Millis, deserialize_opt_ms, to_rfc3339};
use crate::domain::{Activity, ActivityState, ActivityType, Point, Visibility};
use crate::formats;
use crate::store::{HistoryKey, read_track};

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

#[derive(Deserialize, utoipa::ToSchema)]
struct NewActivity {
    #[serde(rename = "type")]
    activity_type: ActivityType,
    course_id: Option<Uuid>,
    #[serde(default)]
    visibility: Visibility,
    #[serde(default, deserialize_with = "deserialize_opt_ms")]
    #[schema(value_type = Option<super::openapi::TimeIn>)]
    started_at: Option<Millis>,
}

#[utoipa::path(
    post,
    path = "/v1/activities",
    tag = "activities",
    request_body = NewActivity,
    responses((status = 201, description = "the activity", body = serde_json::Value)),
)]
async fn create_activity(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Json(body): Json<NewActivity>,
) -> Result<(StatusCode, Json<ActivityView>), ApiError> {
    let now = ctx.clock.now_ms();
    let started_at = body.started_at.unwrap_or(now);
    if started_at > now + MAX_FUTURE_SKEW_MS || started_at < now - MAX_BACKDATE_MS {
        return Err(ApiError::invalid(
            "invalid_started_at",
            "started_at must be within the last 30 days and not in the future",
        ));
    }
    let mut activity = Activity::start(
        Uuid::now_v7(),
        me.id,
        body.activity_type,
        body.visibility,
        body.course_id,
        started_at,
    );
    if let Some(course_id) = body.course_id {
        let course = match ctx.courses.visible(&ctx, &me, course_id).await {
            Err(ApiError::NotFound) => {
                return Err(ApiError::invalid(
                    "unknown_course",
                    "no course with that id that you may use",
                ));
            }
            other => other?,
        };
        activity.plan = Some(Box::new(course.plan()));
    }
    let snapshot = ctx.tracker.create(activity).await?;
    Ok((
        StatusCode::CREATED,
        Json(ActivityView::of(&snapshot, ctx.clock.now_ms())),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/activities/{id}",
    tag = "activities",
    params(("id" = Uuid, Path, description = "the activity")),
    responses((status = 200, description = "the activity with statistics", body = serde_json::Value)),
)]
async fn get_activity(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<ActivityView>, ApiError> {
    let snapshot = visible_snapshot(&ctx, &me, id).await?;
    Ok(Json(ActivityView::of(&snapshot, ctx.clock.now_ms())))
}

/// `PATCH /v1/activities/{id}`: a state change, the athlete's audience
/// settings, or both (the settings first).
#[derive(Deserialize, utoipa::ToSchema)]
struct Change {
    state: Option<ActivityState>,
    #[serde(default, deserialize_with = "deserialize_opt_ms")]
    #[schema(value_type = Option<super::openapi::TimeIn>)]
    at: Option<Millis>,
    visibility: Option<Visibility>,
    hide_ends_m: Option<u32>,
}

#[utoipa::path(
    patch,
    path = "/v1/activities/{id}",
    tag = "activities",
    params(("id" = Uuid, Path, description = "the activity")),
    request_body = Change,
    responses((status = 200, description = "the activity after the change", body = serde_json::Value)),
)]
async fn change_state(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<Change>,
) -> Result<Json<ActivityView>, ApiError> {
    if body.hide_ends_m.is_some_and(|m| m > MAX_HIDE_ENDS_M) {
        return Err(ApiError::invalid(
            "invalid_hide_ends",
            format!("hide_ends_m must be 0 to {MAX_HIDE_ENDS_M}"),
        ));
    }
    let mut snapshot = None;
    if body.visibility.is_some() || body.hide_ends_m.is_some() {
        snapshot = Some(
            ctx.tracker
                .amend(me.id, id, |a| {
                    a.visibility = body.visibility.unwrap_or(a.visibility);
                    a.hide_ends_m = body.hide_ends_m.unwrap_or(a.hide_ends_m);
                    Ok(())
                })
                .await?,
        );
        ctx.rules.forget(id);
        let _ = ctx.live.access_changed.send(id);
    }
    if let Some(state) = body.state {
        // As for points: a change that was stored is also published, even
        // if the client hangs up meanwhile.
        let (tracker, at) = (ctx.tracker.clone(), body.at);
        let change = tokio::spawn(async move { tracker.transition(me.id, id, state, at).await });
        snapshot = Some(
            change
                .await
                .map_err(|e| ApiError::Internal(Box::new(e)))??,
        );
        // A finished activity's hidden end is now known.
        ctx.rules.forget(id);
    }
    let Some(snapshot) = snapshot else {
        return Err(ApiError::invalid(
            "empty_change",
            "give a state, a visibility or hide_ends_m",
        ));
    };
    Ok(Json(ActivityView::of(&snapshot, ctx.clock.now_ms())))
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RouteFormat {
    #[default]
    Json,
    Geojson,
    Gpx,
    Tcx,
}

#[derive(Deserialize)]
struct RouteQuery {
    #[serde(default)]
    format: RouteFormat,
}

#[utoipa::path(
    get,
    path = "/v1/activities/{id}/route",
    tag = "activities",
    params(("id" = Uuid, Path, description = "the activity"), ("format" = Option<String>, Query, description = "json (default), geojson, gpx or tcx")),
    responses((status = 200, description = "the track", body = serde_json::Value)),
)]
async fn get_route(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Path(id): Path<Uuid>,
    Query(q): Query<RouteQuery>,
) -> Result<Response, ApiError> {
    let snapshot = visible_snapshot(&ctx, &me, id).await?;
    let mut track = read_track(ctx.store.points.as_ref(), id).await?;
    if snapshot.activity.athlete_id != me.id {
        let rules = ctx.rules.get(&ctx, id).await?;
        if !rules.filter.is_empty() {
            track.retain(|p| !rules.filter.hides(p.lat, p.lng));
        }
    }
    match q.format {
        RouteFormat::Json => Ok(Json(json!({"points": track})).into_response()),
        RouteFormat::Geojson => Ok((
            [(header::CONTENT_TYPE, "application/geo+json")],
            Json(geojson(&track)),
        )
            .into_response()),
        RouteFormat::Gpx => Ok(download(
            "application/gpx+xml",
            format!("{id}.gpx"),
            formats::gpx::write(&snapshot.activity, &track),
        )),
        RouteFormat::Tcx => Ok(download(
            "application/vnd.garmin.tcx+xml",
            format!("{id}.tcx"),
            formats::tcx::write(
                &snapshot.activity,
                &track,
                &snapshot.stats(ctx.clock.now_ms()),
            ),
        )),
    }
}

fn download(content_type: &'static str, file_name: String, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file_name}\""),
            ),
        ],
        body,
    )
        .into_response()
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

/// Whose history: the caller's own, or their friends' (merged).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum HistoryMode {
    #[default]
    Mine,
    Friends,
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    mode: HistoryMode,
    limit: Option<usize>,
    cursor: Option<String>,
}

pub(crate) fn encode_cursor(k: HistoryKey) -> String {
    format!("{}_{}", k.started_at, k.activity_id)
}

pub(crate) fn decode_cursor(s: &str) -> Option<HistoryKey> {
    let (at, id) = s.split_once('_')?;
    Some(HistoryKey {
        started_at: at.parse().ok()?,
        activity_id: id.parse().ok()?,
    })
}

/// Up to `limit` activities of `athlete` after `after` that pass `keep`,
/// reading the history partition page by page.
/// Friends' history pages read at once for the friends feed.
const FEED_READS_IN_FLIGHT: usize = 16;

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

#[utoipa::path(
    get,
    path = "/v1/activities",
    tag = "activities",
    params(("mode" = Option<String>, Query, description = "mine (default) or friends"), ("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, description = "a page of history", body = serde_json::Value)),
)]
async fn list_activities(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<ActivityView>>, ApiError> {
    let limit = page_limit(q.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let after = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| ApiError::BadRequest("bad cursor".into()))?),
    };
    // One more than asked tells whether another page exists.
    let mut items = match q.mode {
        HistoryMode::Mine => {
            history_page(&ctx, me.id, after, limit + 1, |a| {
                a.state != ActivityState::Discarded
            })
            .await?
        }
        HistoryMode::Friends => {
            // Each friend's newest page after the cursor, read
            // `FEED_READS_IN_FLIGHT` friends at a time, merged newest first.
            use futures_util::{StreamExt, TryStreamExt};
            let friends = ctx.store.users.friends_of(me.id).await?;
            let pages: Vec<Vec<Activity>> = futures_util::stream::iter(friends)
                .map(|friend| {
                    history_page(&ctx, friend, after, limit + 1, |a| {
                        a.state != ActivityState::Discarded && a.visibility != Visibility::Private
                    })
                })
                .buffer_unordered(FEED_READS_IN_FLIGHT)
                .try_collect()
                .await?;
            let mut all: Vec<Activity> = pages.into_iter().flatten().collect();
            all.sort_by_key(|a| std::cmp::Reverse(HistoryKey::of(a)));
            all
        }
    };
    let next_cursor =
        (items.len() > limit).then(|| encode_cursor(HistoryKey::of(&items[limit - 1])));
    items.truncate(limit);
    let now = ctx.clock.now_ms();
    let mut out = Vec::with_capacity(items.len());
    for a in items {
        out.push(ActivityView::of(&ctx.tracker.refresh(a).await, now));
    }
    Ok(Json(Page {
        items: out,
        next_cursor,
    }))
}
