//! `GET /v1/openapi.json`: the API described as OpenAPI 3.1, generated
//! from the handlers' own `#[utoipa::path]` annotations and request types,
//! so it cannot drift from the routes (a test checks that every route is
//! in it). schemathesis drives the live server from it in `scripts/test`.
//!
//! Success bodies are described loosely (any JSON) for now; every error is
//! the one `ErrorBody` shape, with the statuses the server can answer.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use super::ApiContext;

pub fn router() -> Router<ApiContext> {
    Router::new().route(
        "/v1/openapi.json",
        get(|| async { Json(ApiDoc::openapi()) }),
    )
}

/// Every error: `{"error": {"code", "message"}}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// A stable, machine-readable code, e.g. `invalid_point`.
    code: String,
    /// A sentence for people.
    message: String,
}

/// One point, or `{"points": [...]}` (at most 10,000); a body with both
/// `points` and a point's `ts`, `lat` or `lng` is refused (422).
#[derive(ToSchema, serde::Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum PointsBody {
    One(PointIn),
    Batch(PointBatch),
}

/// Points in a batch are checked one by one: a malformed one is reported
/// in `rejected` (by index) and the rest are taken, so any JSON value is
/// an acceptable item (each is meant to be a `PointIn`).
#[derive(ToSchema, serde::Deserialize)]
#[allow(dead_code)]
pub struct PointBatch {
    points: Vec<serde_json::Value>,
}

/// A time: epoch milliseconds or RFC 3339.
#[derive(ToSchema, serde::Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum TimeIn {
    Millis(i64),
    #[schema(value_type = String, format = DateTime)]
    Text(String),
}

/// A GPS fix.
#[derive(ToSchema, serde::Deserialize)]
#[allow(dead_code)]
pub struct PointIn {
    ts: TimeIn,
    lat: f64,
    lng: f64,
    alt: Option<f64>,
    speed: Option<f64>,
    accuracy: Option<f64>,
    hr: Option<f64>,
    cadence: Option<f64>,
    battery: Option<f64>,
}

/// The statuses any operation may answer with an `ErrorBody`.
const ERRORS: [(&str, &str); 13] = [
    ("400", "malformed request (query, path or JSON)"),
    ("401", "missing or invalid bearer token"),
    ("403", "forbidden"),
    ("404", "not found, or not yours to see"),
    ("405", "method not allowed"),
    ("408", "request took too long"),
    ("409", "conflicts with the current state"),
    ("413", "body too large"),
    ("415", "not JSON"),
    ("422", "well-formed but invalid"),
    ("429", "rate limited (Retry-After)"),
    ("503", "overloaded or a dependency is down (Retry-After)"),
    ("507", "storage full (Retry-After)"),
];

struct Conventions;

impl Modify for Conventions {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        doc.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
        let error = ResponseBuilder::new()
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                for (status, description) in ERRORS {
                    let mut response = error.clone();
                    response.description = description.to_string();
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert(RefOr::T(response));
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "trailcast", description = "Live tracking: ingest GPS points, watch friends live, keep a history."),
    paths(
        super::users::create_user,
        super::users::me,
        super::users::user,
        super::friends::list_friends,
        super::friends::add_friend,
        super::friends::remove_friend,
        super::activities::create_activity,
        super::activities::list_activities,
        super::activities::get_activity,
        super::activities::change_state,
        super::activities::get_route,
        super::points::post_points,
        super::import::import,
        super::fields::set_fields,
        super::fields::series,
        super::live::poll,
        super::live::friends_live,
        super::leaderboards::leaderboard,
        super::shares::create_share,
        super::shares::revoke_share,
        super::shares::list_shares,
        super::privacy::get_zones,
        super::privacy::put_zones,
        super::privacy::viewers,
        super::privacy::remove,
        super::privacy::readmit,
        super::courses::search,
        super::courses::course,
        super::courses::create,
        super::devices::create,
        super::devices::list,
        super::devices::revoke,
        super::ops::readyz,
    ),
    components(schemas(ErrorBody, ErrorDetail, PointsBody, PointBatch, PointIn, TimeIn)),
    modifiers(&Conventions),
)]
pub struct ApiDoc;
