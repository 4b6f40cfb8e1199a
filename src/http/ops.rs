//! Operations endpoints: liveness, readiness with each dependency's state,
//! and Prometheus metrics. None needs a token.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use uuid::Uuid;

use super::ApiContext;

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/noop", post(noop))
}

/// The load generator's baseline: the same request shape as ingest (a JSON
/// body read and parsed) with no authentication, storage or statistics, so
/// ingest throughput can be quoted as a fraction of what the machine does
/// with HTTP + JSON alone.
async fn noop(Json(body): Json<serde_json::Value>) -> Json<serde_json::Value> {
    let points = body
        .get("points")
        .and_then(|p| p.as_array())
        .map_or(1, Vec::len);
    Json(json!({"accepted": points}))
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses((status = 200, description = "ready or degraded", body = serde_json::Value)),
    security(()),
)]
async fn readyz(State(ctx): State<ApiContext>) -> impl IntoResponse {
    let store_ok = ctx.store.activities.activity(Uuid::nil()).await.is_ok();
    // A full disk takes the node out of rotation until space returns.
    let store_full = ctx.store.activities.writable().is_err();
    let queued = ctx.batcher.queued_points();
    let capacity = ctx.batcher.capacity();
    // Above 90% the node is about to refuse points: take it out of rotation.
    let queue_ok = queued * 10 < capacity * 9;
    let ready = store_ok && !store_full && queue_ok;
    // Recent positions only feed live watching: when they are down the node
    // still ingests and persists, so it stays in rotation, reported degraded.
    let recent_ok = matches!(
        tokio::time::timeout(std::time::Duration::from_secs(1), ctx.recent.health()).await,
        Ok(Ok(()))
    );
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": match (ready, recent_ok) {
                (false, _) => "not_ready",
                (true, false) => "degraded",
                (true, true) => "ready",
            },
            "checks": {
                "persistence": {"backend": ctx.store.backend(), "status": match (store_ok, store_full) {
                    (false, _) => "down",
                    (true, true) => "full",
                    (true, false) => "up",
                }},
                "recent_positions": {"backend": ctx.recent.backend(), "status": if recent_ok { "up" } else { "down" },
                                     "unpublished_activities": ctx.tracker.unpublished_len()},
                // Activities whose publish, registry or leaderboard update
                // failed and is being retried (`ingest::outbox`).
                "owed_activities": ctx.tracker.owed_len(),
                // Whether this node hears other nodes' changes (`store::changes`):
                // "alone" (embedded store), "unheard" (ScyllaDB without Redis),
                // "listening" or "connecting" (Redis pub/sub).
                "changes": ctx.changes.status(),
                "write_queue": {"queued_points": queued, "capacity_points": capacity,
                                "status": if queue_ok { "up" } else { "saturated" }},
            }
        })),
    )
}

async fn metrics(State(ctx): State<ApiContext>) -> impl IntoResponse {
    gauge_hot_state(&ctx);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ctx.metrics.render(),
    )
}

/// Resident set size from `/proc/self/statm` (Linux), for the load
/// generator's bytes-per-live-activity figure.
fn resident_bytes() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0)
}

fn gauge_hot_state(ctx: &ApiContext) {
    if let Some(rss) = resident_bytes() {
        metrics::gauge!("trailcast_process_resident_bytes").set(rss);
    }
    metrics::gauge!("trailcast_hot_activities").set(ctx.tracker.hot_len() as f64);
    metrics::gauge!("trailcast_write_queue_points").set(ctx.batcher.queued_points() as f64);
}
