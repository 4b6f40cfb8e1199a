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
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::views::{PointsReply, Rejection};
use super::{ApiContext, ApiError, AuthUser, MAX_POINTS_PER_REQUEST};
use crate::domain::{Fix, PointInput, RejectCode};

pub fn router() -> Router<ApiContext> {
    Router::new().route("/v1/activities/{id}/points", post(post_points))
}

/// A point from its own JSON text: typed, so a duplicated key is refused
/// (as in every other body) rather than silently keeping the last value.
fn decode(raw: &str) -> Result<Fix, RejectCode> {
    serde_json::from_str::<PointInput>(raw)
        .map_err(|_| RejectCode::InvalidPoint)?
        .to_fix()
}

/// A body's shape: its `points` (`P`: the raw text for the careful way,
/// the array of the points' texts for the one-pass way), if it has that
/// key, and whether it also carries a point's own fields (which makes it
/// ambiguous).
#[derive(Deserialize)]
#[serde(bound(deserialize = "'de: 'a, P: Deserialize<'de>"))]
struct Shape<'a, P> {
    #[serde(default = "Option::default")]
    points: Option<P>,
    #[serde(borrow, default)]
    ts: Option<&'a RawValue>,
    #[serde(borrow, default)]
    lat: Option<&'a RawValue>,
    #[serde(borrow, default)]
    lng: Option<&'a RawValue>,
}

impl<P> Shape<'_, P> {
    /// Whether it has a point's own fields too.
    fn is_a_point_too(&self) -> bool {
        self.ts.is_some() || self.lat.is_some() || self.lng.is_some()
    }
}

/// The fixes of a points body (one point, or `{"points": [...]}`), each
/// decoded on its own, and whether it was a single point. Pure: this is
/// what the fuzz target `points` drives (see `crate::fuzzing`).
///
/// Every body a client sends in earnest is read in as few passes as it
/// can be: a point in one, a batch in one plus one per point. Anything
/// else (a value of the wrong type, a body that is both, too many points,
/// not an object) goes the careful way, which gives the same answer.
pub(crate) fn parse_body(body: &str) -> Result<(Vec<Result<Fix, RejectCode>>, bool), ApiError> {
    if !body.contains("\"points\"") {
        if let Ok(point) = serde_json::from_str::<PointInput>(body)
            && point.points.is_none()
        {
            return Ok((vec![point.to_fix()], true));
        }
    } else if let Ok(batch) = serde_json::from_str::<Shape<Vec<&RawValue>>>(body)
        && !batch.is_a_point_too()
        && let Some(points) = batch.points
        && points.len() <= MAX_POINTS_PER_REQUEST
    {
        return Ok((points.iter().map(|p| decode(p.get())).collect(), false));
    }
    parse_carefully(body)
}

/// `parse_body` for every body: the shape first, then each point.
pub(crate) fn parse_carefully(
    body: &str,
) -> Result<(Vec<Result<Fix, RejectCode>>, bool), ApiError> {
    let not_a_body = || {
        ApiError::invalid(
            "invalid_body",
            "expected a point object or {\"points\": [...]}",
        )
    };
    // The probe checks the whole body's syntax too (skipped values are
    // still parsed), so such a body is read twice.
    let probe: Shape<&RawValue> = serde_json::from_str(body).map_err(|_| not_a_body())?;
    Ok(match probe.points {
        // `{"ts", "lat", "lng", "points": [...]}` is both a point and a
        // batch (the document's `oneOf` forbids it): refuse rather than
        // guess which was meant.
        Some(_) if probe.is_a_point_too() => {
            return Err(ApiError::invalid(
                "invalid_body",
                "a body is one point or {\"points\": [...]}, not both",
            ));
        }
        Some(points) => {
            let points: Vec<&RawValue> = serde_json::from_str(points.get())
                .map_err(|_| ApiError::invalid("invalid_body", "`points` must be an array"))?;
            if points.len() > MAX_POINTS_PER_REQUEST {
                return Err(ApiError::invalid(
                    "too_many_points",
                    format!("at most {MAX_POINTS_PER_REQUEST} points per request"),
                ));
            }
            (
                points
                    .into_iter()
                    .map(|p| decode(p.get()))
                    .collect::<Vec<_>>(),
                false,
            )
        }
        None => (vec![decode(body)], true),
    })
}

#[utoipa::path(
    post,
    path = "/v1/activities/{id}/points",
    tag = "activities",
    params(("id" = Uuid, Path, description = "the activity")),
    request_body = super::openapi::PointsBody,
    responses((status = 200, description = "accepted, duplicates, rejected and statistics", body = serde_json::Value)),
)]
async fn post_points(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<Box<RawValue>>,
) -> Result<Json<PointsReply>, ApiError> {
    let (inputs, single) = parse_body(body.get())?;

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
        stats: outcome.stats,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass path answers exactly as the careful one.
    #[test]
    fn one_pass_and_careful_parses_agree() {
        for body in [
            r#"{"ts":1700000000000,"lat":48.1,"lng":11.5,"alt":500.5,"hr":150}"#,
            r#"{"ts":"2026-12-08T00:00:00Z","lat":48.1,"lng":11.5}"#,
            r#"{"ts":1700000000000,"lat":91,"lng":11.5}"#,
            r#"{"lat":48.1,"lng":11.5}"#,
            r#"{"ts":1,"lat":"48","lng":11.5}"#,
            r#"{"ts":1,"lat":48,"lat":49,"lng":11.5}"#,
            r#"{"ts":1,"lat":48,"lng":11.5,"points":[]}"#,
            r#"{"points":[{"ts":1,"lat":48,"lng":11}, 5]}"#,
            r#"{"points":5}"#,
            r#"{"ts":1.5,"lat":48,"lng":11.5}"#,
            r#"{"ts":1,"lat":48,"lng":11.5,"extra":{"a":[1,2]}}"#,
            r#"[1,2]"#,
            r#"{}"#,
            r#"{"points":[]}"#,
            r#"{"points":[{"ts":1,"lat":48,"lng":11},{"ts":2,"lat":"x","lng":11},[]]}"#,
            r#"{"points":{"ts":1}}"#,
            r#"{"alt":5,"points":[{"ts":1,"lat":48,"lng":11}]}"#,
            r#"{"lat":5,"points":[{"ts":1,"lat":48,"lng":11}]}"#,
            r#"{"points":[],"points":[]}"#,
            r#"{"points":null}"#,
            r#"{"points":null,"ts":1,"lat":48,"lng":11}"#,
            r#"{"\u0070oints":[{"ts":1,"lat":48,"lng":11}]}"#,
            r#"{"ts":1,"lat":48,"lng":11,"\u0070oints":1}"#,
            r#"{"note":"\"points\"","ts":1,"lat":48,"lng":11}"#,
        ] {
            assert_eq!(
                format!("{:?}", parse_body(body)),
                format!("{:?}", parse_carefully(body)),
                "{body}"
            );
        }
        let point = r#"{"ts":1,"lat":48,"lng":11}"#;
        let too_many = format!(
            r#"{{"points":[{}]}}"#,
            vec![point; MAX_POINTS_PER_REQUEST + 1].join(",")
        );
        let err = format!("{:?}", parse_body(&too_many));
        assert!(err.contains("too_many_points"), "{err}");
        assert_eq!(err, format!("{:?}", parse_carefully(&too_many)));
    }
}
