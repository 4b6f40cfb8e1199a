//! Point ingest: `POST /v1/activities/{id}/points` with one point or
//! `{"points": [...]}` (offline sync, at most `MAX_POINTS_PER_REQUEST`).
//!
//! Parse: the body is read as JSON and each point decoded on its own, so one
//! malformed fix is reported by index instead of failing the batch. Apply:
//! the tracker validates, de-duplicates and stores durably. Reply:
//! `{accepted, duplicates, rejected: [{index, code}], stats}`; a single
//! point that is invalid is a 422 with its code instead.

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;
use uuid::Uuid;

use super::views::{PointsReply, Rejection};
use super::{ApiContext, ApiError, AuthUser, MAX_POINTS_PER_REQUEST};
use crate::domain::{Fix, PointInput, RejectCode};

pub fn router() -> Router<ApiContext> {
    Router::new().route("/v1/activities/{id}/points", post(post_points))
}

fn decode(value: Value) -> Result<Fix, RejectCode> {
    serde_json::from_value::<PointInput>(value)
        .map_err(|_| RejectCode::InvalidPoint)?
        .to_fix()
}

async fn post_points(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<Value>,
) -> Result<Json<PointsReply>, ApiError> {
    let (inputs, single) = match body {
        Value::Object(mut obj) if obj.contains_key("points") => match obj.remove("points") {
            Some(Value::Array(points)) => {
                if points.len() > MAX_POINTS_PER_REQUEST {
                    return Err(ApiError::invalid(
                        "too_many_points",
                        format!("at most {MAX_POINTS_PER_REQUEST} points per request"),
                    ));
                }
                (points.into_iter().map(decode).collect::<Vec<_>>(), false)
            }
            _ => {
                return Err(ApiError::invalid(
                    "invalid_body",
                    "`points` must be an array",
                ));
            }
        },
        Value::Object(obj) => (vec![decode(Value::Object(obj))], true),
        _ => {
            return Err(ApiError::invalid(
                "invalid_body",
                "expected a point object or {\"points\": [...]}",
            ));
        }
    };

    // Once the points are durable, the running statistics and the live
    // stream must see them even if the client hangs up: the write runs as
    // its own task, which a dropped connection does not cancel.
    let tracker = ctx.tracker.clone();
    let outcome = tokio::spawn(async move { tracker.ingest(me.id, id, inputs).await })
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))??;
    if single && let Some((_, code)) = outcome.rejected.first() {
        return Err(ApiError::invalid(
            code.as_str(),
            format!("point rejected: {}", code.as_str()),
        ));
    }
    Ok(Json(PointsReply {
        accepted: outcome.accepted,
        duplicates: outcome.duplicates,
        rejected: outcome
            .rejected
            .into_iter()
            .map(|(index, code)| Rejection { index, code })
            .collect(),
        stats: outcome.snapshot.stats(ctx.clock.now_ms()),
    }))
}
