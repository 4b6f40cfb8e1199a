//! `POST /v1/activities/import?type=&visibility=`: a GPX 1.1 or TCX file
//! (raw body, or the first file of a `multipart/form-data` body; up to
//! `MAX_IMPORT_BYTES`) becomes one finished activity per track.
//!
//! - Times, elevation, heart rate and cadence come from the file; the type
//!   from `type`, else the file, else OTHER.
//! - Points go through the same validation as posted ones; a point that
//!   fails it is skipped and counted (`rejected`), duplicate timestamps keep
//!   the first. A track left without points is skipped.
//! - Idempotent: an activity's id is derived from the athlete, the file's
//!   bytes and the track's position in it, so the same file twice gives the
//!   same activities (200 instead of 201), never copies.
//! - A file that is not well-formed GPX or TCX is refused with 422
//!   `invalid_file`, naming the line.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::views::ActivityView;
use super::{ApiContext, ApiError, AuthUser};
use crate::domain::{Activity, ActivityState, ActivityType, Point, Visibility};
use crate::formats::{self, ImportedTrack, MAX_IMPORT_BYTES};

pub fn router() -> Router<ApiContext> {
    Router::new().route(
        "/v1/activities/import",
        post(import).layer(DefaultBodyLimit::max(MAX_IMPORT_BYTES)),
    )
}

#[derive(Deserialize)]
struct ImportQuery {
    #[serde(rename = "type")]
    activity_type: Option<ActivityType>,
    #[serde(default)]
    visibility: Visibility,
}

#[derive(Serialize)]
struct Imported {
    activities: Vec<ActivityView>,
    points: usize,
    rejected: usize,
}

#[utoipa::path(
    post,
    path = "/v1/activities/import",
    tag = "activities",
    params(("type" = Option<ActivityType>, Query), ("visibility" = Option<Visibility>, Query)),
    responses((status = 201, description = "the imported activities", body = serde_json::Value)),
)]
async fn import(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Query(q): Query<ImportQuery>,
    request: Request,
) -> Result<(StatusCode, Json<Imported>), ApiError> {
    let file = file_of(request, &ctx).await?;
    let text = std::str::from_utf8(&file)
        .map_err(|_| ApiError::invalid("invalid_file", "the file must be UTF-8 text"))?;
    let text = text.trim_start_matches('\u{feff}');
    let tracks =
        formats::read(text).map_err(|e| ApiError::invalid("invalid_file", e.to_string()))?;
    let digest: [u8; 32] = Sha256::new()
        .chain_update(me.id.as_bytes())
        .chain_update(&file)
        .finalize()
        .into();
    let now = ctx.clock.now_ms();
    let (mut activities, mut points, mut rejected, mut created) = (Vec::new(), 0, 0, false);
    for (index, track) in tracks.into_iter().enumerate() {
        let id = activity_id(&digest, index);
        if let Some(existing) = ctx.store.activities.activity(id).await? {
            points += existing.track.points as usize;
            activities.push(ActivityView::of(&ctx.tracker.refresh(existing).await, now));
            continue;
        }
        let activity_type = q
            .activity_type
            .or(track.activity_type)
            .unwrap_or(ActivityType::Other);
        let Some((activity, track, refused)) =
            finished(id, me.id, activity_type, q.visibility, track, now)
        else {
            continue;
        };
        rejected += refused;
        points += track.len();
        let snapshot = ctx.tracker.import(activity, track).await?;
        activities.push(ActivityView::of(&snapshot, now));
        created = true;
    }
    if activities.is_empty() {
        return Err(ApiError::invalid(
            "empty_file",
            "the file holds no track with a usable point",
        ));
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(Imported {
            activities,
            points,
            rejected,
        }),
    ))
}

/// The file: the raw body, or the first file part of a multipart body.
async fn file_of(request: Request, ctx: &ApiContext) -> Result<Bytes, ApiError> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let too_large = || ApiError::invalid("invalid_file", "could not read the upload");
    if !multipart {
        return Bytes::from_request(request, ctx)
            .await
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(MAX_IMPORT_BYTES),
                _ => too_large(),
            });
    }
    let mut form = Multipart::from_request(request, ctx)
        .await
        .map_err(|e| ApiError::BadRequest(e.body_text()))?;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::BadRequest(e.body_text()))?
    {
        if field.file_name().is_some() || field.name() == Some("file") {
            return field.bytes().await.map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(MAX_IMPORT_BYTES),
                _ => ApiError::BadRequest(e.body_text()),
            });
        }
    }
    Err(ApiError::invalid(
        "invalid_file",
        "the form has no file part (name it `file`)",
    ))
}

/// The id of the `index`th track of a file: the same file gives the same ids.
fn activity_id(digest: &[u8; 32], index: usize) -> Uuid {
    let hash: [u8; 32] = Sha256::new()
        .chain_update(digest)
        .chain_update((index as u64).to_be_bytes())
        .finalize()
        .into();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash[..16]);
    Uuid::new_v8(bytes)
}

/// A finished activity from a track: its valid points in time order (the
/// first of each timestamp) and how many were refused; `None` if no point
/// is usable.
fn finished(
    id: Uuid,
    athlete: Uuid,
    activity_type: ActivityType,
    visibility: Visibility,
    mut track: ImportedTrack,
    now: i64,
) -> Option<(Activity, Vec<Point>, usize)> {
    track.fixes.sort_by_key(|f| f.ts);
    track.fixes.dedup_by_key(|f| f.ts);
    let first = track.fixes.first()?.ts;
    let mut activity = Activity::start(id, athlete, activity_type, visibility, None, first);
    let window = activity.point_window(now);
    let mut points = Vec::with_capacity(track.fixes.len());
    let mut refused = 0;
    for fix in &track.fixes {
        match fix.validate(window) {
            Ok(point) => points.push(point),
            Err(_) => refused += 1,
        }
    }
    let last = points.last()?.ts;
    if let Some(p) = points.first() {
        activity.started_at = p.ts;
        activity.events[0].at = p.ts;
    }
    activity
        .transition(ActivityState::Complete, last, now)
        .ok()?;
    Some((activity, points, refused))
}
