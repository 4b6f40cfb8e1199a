//! Activity fields (`domain::fields`): the athlete sets named numbers on an
//! activity; anyone who may see an athlete's activities reads one field of
//! theirs over time.
//!
//! - `PUT /v1/activities/{id}/fields` `{name: number | null, …}` (the
//!   athlete): sets (or, with `null`, removes) those fields; the reply is the
//!   activity with all its fields.
//! - `GET /v1/athletes/{id}/fields/{field}?from=&to=&limit=`: the values
//!   with `from <= started_at < to` (ms or RFC 3339), newest first,
//!   `{items: [{activity_id, started_at, value}]}`; the athlete sees all,
//!   friends friends' and public activities, others public ones only.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::views::ActivityView;
use super::{ApiContext, ApiError, AuthUser, page_limit};
use crate::domain::Visibility;
use crate::domain::fields::{self, is_valid_name};
use crate::domain::time::{Millis, TsInput, serialize_ms};

pub const DEFAULT_SERIES: usize = 100;
pub const MAX_SERIES: usize = 1_000;

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/v1/activities/{id}/fields", put(set_fields))
        .route("/v1/athletes/{id}/fields/{field}", get(series))
}

#[utoipa::path(
    put,
    path = "/v1/activities/{id}/fields",
    tag = "fields",
    params(("id" = Uuid, Path, description = "the activity")),
    request_body = Object,
    responses((status = 200, description = "the activity's fields", body = serde_json::Value)),
)]
async fn set_fields(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Path(id): Path<Uuid>,
    Json(update): Json<BTreeMap<String, Option<f64>>>,
) -> Result<Json<ActivityView>, ApiError> {
    let snapshot = ctx
        .tracker
        .amend(me.id, id, |a| {
            fields::apply(&mut a.fields, &update)?;
            Ok(())
        })
        .await?;
    Ok(Json(ActivityView::of(&snapshot, ctx.clock.now_ms())))
}

#[derive(Deserialize)]
struct SeriesQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
}

/// A time in a query string: epoch milliseconds or RFC 3339.
fn query_time(name: &str, value: Option<&str>) -> Result<Option<Millis>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let ts = match value.parse::<i64>() {
        Ok(ms) => TsInput::Millis(ms),
        Err(_) => TsInput::Text(value.to_string()),
    };
    ts.to_millis().map(Some).ok_or_else(|| {
        ApiError::invalid(
            "invalid_time",
            format!("{name} must be epoch milliseconds or an RFC 3339 time"),
        )
    })
}

#[derive(Serialize)]
struct SeriesItem {
    activity_id: Uuid,
    #[serde(serialize_with = "serialize_ms")]
    started_at: Millis,
    value: f64,
}

#[derive(Serialize)]
struct Series {
    items: Vec<SeriesItem>,
}

/// The whole range a stored time can take (`TsInput`: 1970 to 9999).
const EARLIEST: Millis = 0;
const LATEST: Millis = 253_402_300_800_000;

#[utoipa::path(
    get,
    path = "/v1/athletes/{id}/fields/{field}",
    tag = "fields",
    params(("id" = Uuid, Path, description = "the athlete"), ("field" = String, Path), ("from" = Option<String>, Query), ("to" = Option<String>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, description = "a field's values over time", body = serde_json::Value)),
)]
async fn series(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Path((athlete, field)): Path<(Uuid, String)>,
    Query(q): Query<SeriesQuery>,
) -> Result<Json<Series>, ApiError> {
    if !is_valid_name(&field) {
        return Err(ApiError::invalid(
            "invalid_field",
            "a field name is 1 to 40 of a-z, 0-9 and _",
        ));
    }
    let limit = page_limit(q.limit, DEFAULT_SERIES, MAX_SERIES)?;
    let from = query_time("from", q.from.as_deref())?.unwrap_or(EARLIEST);
    let mut to = query_time("to", q.to.as_deref())?.unwrap_or(LATEST);
    let shown: &[Visibility] = if athlete == me.id {
        &[Visibility::Private, Visibility::Friends, Visibility::Public]
    } else if ctx.store.users.are_friends(me.id, athlete).await? {
        &[Visibility::Friends, Visibility::Public]
    } else {
        &[Visibility::Public]
    };
    let mut items = Vec::new();
    // Values the caller may not see are skipped; read on until the page is
    // full or the range is exhausted.
    while items.len() < limit && from < to {
        let page = ctx
            .store
            .fields
            .field_series(athlete, &field, from, to, limit)
            .await?;
        let exhausted = page.len() < limit;
        if let Some(last) = page.last() {
            to = last.started_at;
        }
        items.extend(
            page.into_iter()
                .filter(|v| shown.contains(&v.visibility))
                .map(|v| SeriesItem {
                    activity_id: v.activity_id,
                    started_at: v.started_at,
                    value: v.value,
                }),
        );
        if exhausted {
            break;
        }
    }
    items.truncate(limit);
    Ok(Json(Series { items }))
}
