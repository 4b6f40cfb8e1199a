//! Courses: the catalogue's step programmes and athletes' own courses with
//! planned routes.
//!
//! - `GET /v1/courses?q=&level=&theme=`: catalogue courses whose name or
//!   description contains `q`, at that level, with that theme.
//! - `GET /v1/courses/{id}`: everything a client needs to run the course
//!   offline (steps with their cues, the planned route), with an `ETag`;
//!   `If-None-Match` with it answers 304.
//! - `POST /v1/courses` `{name, description?, level?, visibility?, steps?,
//!   gpx?}`: the caller's own course; `gpx` is a GPX document whose route
//!   (`rtept`) or track (`trkpt`) becomes the planned route. Visible as
//!   activities are (`visibility`, default `friends`).
//!
//! An activity started with `course_id` keeps the course's steps (`Plan`);
//! its statistics carry the current step, its summary one record per step.
//! Watchers of an activity on a course with a route get `route`: distance
//! done and left along it, an ETA, and an off-route flag.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::auth::hex;
use super::{ApiContext, ApiError, AuthUser};
use crate::catalogue::Catalogue;
use crate::domain::course::{Course, Level, Route, RouteProgress, Step};
use crate::domain::time::Millis;
use crate::domain::{Activity, Point, Stats, TrackSummary, Visibility};
use crate::formats;
use crate::store::User;

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/v1/courses", get(search).post(create))
        .route("/v1/courses/{id}", get(course))
}

/// The catalogue, and the planned routes of courses watched recently
/// (courses never change once made, so a route is read once per node).
pub struct Courses {
    pub catalogue: Catalogue,
    routes: DashMap<Uuid, Option<Arc<Route>>>,
}

/// Most planned routes kept in memory per node.
const ROUTE_CACHE: usize = 10_000;

impl Courses {
    pub fn new(catalogue: Catalogue) -> Courses {
        Courses {
            catalogue,
            routes: DashMap::new(),
        }
    }

    /// The course, if `viewer` may see it: catalogue courses are for
    /// everyone, an athlete's own as their activities are.
    pub async fn visible(
        &self,
        ctx: &ApiContext,
        viewer: &User,
        id: Uuid,
    ) -> Result<Arc<Course>, ApiError> {
        if let Some(course) = self.catalogue.get(id) {
            return Ok(course);
        }
        let course = ctx
            .store
            .courses
            .course(id)
            .await?
            .ok_or(ApiError::NotFound)?;
        let owner = course.owner_id.unwrap_or_default();
        let visible = owner == viewer.id
            || match course.visibility {
                Visibility::Public => true,
                Visibility::Friends => ctx.store.users.are_friends(viewer.id, owner).await?,
                Visibility::Private => false,
            };
        match visible {
            true => Ok(Arc::new(course)),
            false => Err(ApiError::NotFound),
        }
    }

    /// The planned route of a course, if it has one.
    async fn route(&self, ctx: &ApiContext, id: Uuid) -> Option<Arc<Route>> {
        if let Some(route) = self.routes.get(&id) {
            return route.clone();
        }
        let course = match self.catalogue.get(id) {
            Some(course) => Some(course),
            None => match ctx.store.courses.course(id).await {
                Ok(course) => course.map(Arc::new),
                // Not cached: the next look may find the store back.
                Err(_) => return None,
            },
        };
        let route = course.and_then(|c| c.planned_route()).map(Arc::new);
        if self.routes.len() >= ROUTE_CACHE {
            self.routes.clear();
        }
        self.routes.insert(id, route.clone());
        route
    }

    /// How far along its planned route the activity is at `at` (the last
    /// position a watcher was shown), with an ETA at the recent pace.
    pub async fn progress(
        &self,
        ctx: &ApiContext,
        activity: &Activity,
        track: &TrackSummary,
        stats: &Stats,
        at: Option<&Point>,
        now: Millis,
    ) -> Option<RouteProgress> {
        let plan = activity.plan.as_ref()?;
        let at = at?;
        let route = self.route(ctx, plan.course_id).await?;
        // The current kilometre's pace once it is under way, else the
        // average so far.
        let recent = track
            .splits
            .last()
            .filter(|s| s.distance_m >= 200.0 && s.time_s > 0.0)
            .map(|s| s.distance_m / s.time_s);
        let pace = recent.or(stats.avg_speed_m_s);
        Some(route.progress(at.lat, at.lng, stats.distance_m * 0.8, pace, now))
    }
}

#[derive(Deserialize)]
struct SearchQuery {
    q: Option<String>,
    level: Option<Level>,
    theme: Option<String>,
}

/// A course in a search result.
#[derive(Serialize)]
struct CourseSummary {
    id: Uuid,
    slug: Option<String>,
    name: String,
    description: String,
    level: Level,
    themes: Vec<String>,
    steps: usize,
    planned_s: f64,
    planned_m: f64,
    has_route: bool,
}

#[derive(Serialize)]
struct CourseList {
    items: Vec<CourseSummary>,
}

#[utoipa::path(
    get,
    path = "/v1/courses",
    tag = "courses",
    params(("q" = Option<String>, Query), ("level" = Option<String>, Query), ("theme" = Option<String>, Query)),
    responses((status = 200, description = "matching courses", body = serde_json::Value)),
)]
async fn search(
    State(ctx): State<ApiContext>,
    AuthUser(_): AuthUser,
    Query(q): Query<SearchQuery>,
) -> Json<CourseList> {
    let items = ctx
        .courses
        .catalogue
        .search(q.q.as_deref(), q.level, q.theme.as_deref())
        .into_iter()
        .map(|c| {
            let (planned_s, planned_m) = c.planned();
            CourseSummary {
                id: c.id,
                slug: c.slug.clone(),
                name: c.name.clone(),
                description: c.description.clone(),
                level: c.level,
                themes: c.themes.clone(),
                steps: c.steps.len(),
                planned_s,
                planned_m,
                has_route: c.route.is_some(),
            }
        })
        .collect();
    Json(CourseList { items })
}

#[utoipa::path(
    get,
    path = "/v1/courses/{id}",
    tag = "courses",
    params(("id" = String, Path, description = "id or slug")),
    responses((status = 200, description = "the course", body = serde_json::Value)),
)]
async fn course(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let course = ctx.courses.visible(&ctx, &me, id).await?;
    let body = serde_json::to_vec(course.as_ref()).map_err(|e| ApiError::Internal(Box::new(e)))?;
    let etag = format!("\"{}\"", &hex(&Sha256::digest(&body))[..32]);
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let cache = [
        (header::ETAG, etag),
        (header::CACHE_CONTROL, "private, no-cache".to_string()),
    ];
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, cache).into_response());
    }
    Ok((
        cache,
        [(header::CONTENT_TYPE, "application/json".to_string())],
        body,
    )
        .into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewCourse {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default = "default_level")]
    #[schema(value_type = String)]
    level: Level,
    #[serde(default)]
    visibility: Visibility,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    steps: Vec<Step>,
    /// A GPX document: its route or track is the planned route.
    gpx: Option<String>,
}

fn default_level() -> Level {
    Level::Beginner
}

#[utoipa::path(
    post,
    path = "/v1/courses",
    tag = "courses",
    request_body = NewCourse,
    responses((status = 201, description = "the course", body = serde_json::Value)),
)]
async fn create(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Json(body): Json<NewCourse>,
) -> Result<(StatusCode, Json<Course>), ApiError> {
    let route = match body.gpx.as_deref() {
        Some(gpx) => Some(
            formats::gpx::route(gpx)
                .map_err(|e| ApiError::invalid("invalid_gpx", e.to_string()))?,
        ),
        None => None,
    };
    let course = Course {
        id: Uuid::now_v7(),
        slug: None,
        name: body.name.trim().to_string(),
        description: body.description,
        level: body.level,
        themes: Vec::new(),
        steps: body.steps,
        route,
        owner_id: Some(me.id),
        visibility: body.visibility,
    };
    if let Some(why) = course.problem() {
        return Err(ApiError::invalid("invalid_course", why));
    }
    ctx.store.courses.put_course(&course).await?;
    Ok((StatusCode::CREATED, Json(course)))
}
