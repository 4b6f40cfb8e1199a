//! The HTTP API (v1): one module per resource, each exporting a `router()`,
//! merged here with the cross-cutting layers.
//!
//! Layers, outermost first: JSON error shape for every error response,
//! request tracing (method and path only: query strings may carry tokens),
//! a request timeout, the body size limit; per-route latency metrics sit on
//! the matched routes.

mod access;
pub(crate) mod activities;
mod auth;
pub mod courses;
mod devices;
mod error;
mod fields;
mod friends;
mod import;
pub mod leaderboards;
mod live;
mod openapi;
mod ops;
pub(crate) mod points;
pub mod privacy;
pub mod ratelimit;
mod shares;
pub mod tokens;
pub mod users;
mod views;
mod web;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use auth::{AuthUser, hash_token};
pub use error::ApiError;

use crate::clock::Clock;
use crate::ingest::Tracker;
use crate::ingest::batcher::WriteBehind;
use crate::live::LiveHub;
use crate::store::{Persistence, RecentStore};

/// Largest request body accepted (a 10,000-point batch is about 1.5 MB).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Most points in one request.
pub const MAX_POINTS_PER_REQUEST: usize = 10_000;
/// A request taking longer than this is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a handler may touch: one `Arc`, so the clone axum makes for
/// every extractor is one atomic increment, not one per field (the profile
/// of single-point ingest showed the field-wise clone and drop at ~1.5 %).
#[derive(Clone)]
pub struct ApiContext(Arc<ApiState>);

impl ApiContext {
    pub fn new(state: ApiState) -> ApiContext {
        ApiContext(Arc::new(state))
    }
}

impl std::ops::Deref for ApiContext {
    type Target = ApiState;
    fn deref(&self) -> &ApiState {
        &self.0
    }
}

/// What `ApiContext` shares.
pub struct ApiState {
    pub clock: Clock,
    pub store: Persistence,
    pub recent: Arc<dyn RecentStore>,
    pub tracker: Arc<Tracker>,
    pub batcher: WriteBehind,
    pub metrics: PrometheusHandle,
    pub live: Arc<LiveHub>,
    pub limiter: Arc<ratelimit::RateLimiter>,
    /// Token → user, recently looked up (see `tokens`).
    pub tokens: Arc<tokens::TokenCache>,
    /// Sign-ups per client address.
    pub signups: Arc<ratelimit::RateLimiter>,
    pub leaderboard: Arc<dyn crate::store::leaderboard::Leaderboard>,
    /// Leaderboard rebuilds running on this node.
    pub boards: Arc<leaderboards::Rebuilds>,
    pub registry: Arc<dyn crate::store::registry::LiveRegistry>,
    pub audience: Arc<dyn crate::store::audience::Audience>,
    /// Audience settings and privacy filters of recently watched activities.
    pub rules: Arc<privacy::RulesCache>,
    /// What this node tells other nodes it changed, and hears from them.
    pub changes: Arc<crate::store::changes::ChangeBus>,
    /// The course catalogue, and the planned routes looked at recently.
    pub courses: Arc<courses::Courses>,
    /// Tracker apps' automatic activities.
    pub devices: Arc<crate::ingest::devices::AutoActivities>,
    /// Set to `true` when the server is shutting down (WebSockets close).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

pub fn router(ctx: ApiContext) -> Router {
    Router::new()
        .merge(users::router())
        .merge(friends::router())
        .merge(activities::router())
        .merge(points::router())
        .merge(live::router())
        .merge(shares::router())
        .merge(privacy::router())
        .merge(fields::router())
        .merge(courses::router())
        .merge(devices::router())
        .merge(import::router())
        .merge(leaderboards::router())
        .merge(openapi::router())
        .route_layer(middleware::from_fn(record_metrics))
        .merge(ops::router())
        .merge(web::router())
        .fallback(|| async { ApiError::NotFound })
        .with_state(ctx)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path())
        }))
        .layer(middleware::map_response(error::json_errors))
}

/// A `limit` query parameter: `default` when absent, 1 to `max` otherwise.
pub(crate) fn page_limit(
    limit: Option<usize>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::BadRequest(format!("limit must be 1 to {max}")))
    }
}

/// Request count and latency by route template (never by raw path, so ids
/// do not explode the label set).
async fn record_metrics(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().to_string();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("trailcast_http_request_duration_seconds",
        "route" => route.clone(), "method" => method.clone())
    .record(started.elapsed().as_secs_f64());
    metrics::counter!("trailcast_http_requests_total",
        "route" => route, "method" => method, "status" => status)
    .increment(1);
    response
}
