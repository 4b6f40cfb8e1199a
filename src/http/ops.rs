//! Operations endpoints: liveness, readiness with each dependency's state,
//! and Prometheus metrics. None needs a token.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use uuid::Uuid;

use super::ApiContext;

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn readyz(State(ctx): State<ApiContext>) -> impl IntoResponse {
    let store_ok = ctx.store.activities.activity(Uuid::nil()).await.is_ok();
    let queued = ctx.batcher.queued_points();
    let capacity = ctx.batcher.capacity();
    // Above 90% the node is about to refuse points: take it out of rotation.
    let queue_ok = queued * 10 < capacity * 9;
    let ready = store_ok && queue_ok;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ready { "ready" } else { "not_ready" },
            "checks": {
                "persistence": {"backend": "embedded", "status": if store_ok { "up" } else { "down" }},
                "recent_positions": {"backend": "in_process", "status": "up"},
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

fn gauge_hot_state(ctx: &ApiContext) {
    metrics::gauge!("trailcast_hot_activities").set(ctx.tracker.hot_len() as f64);
    metrics::gauge!("trailcast_write_queue_points").set(ctx.batcher.queued_points() as f64);
}
