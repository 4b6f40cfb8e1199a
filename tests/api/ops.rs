use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{metric, now_ms, spawn_app};

#[tokio::test]
async fn health_and_readiness_report_each_dependency() {
    let app = spawn_app().await;
    let (status, body) = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, body) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["persistence"]["status"], "up");
    assert_eq!(body["checks"]["write_queue"]["queued_points"], 0);
}

#[tokio::test]
async fn metrics_count_points_and_time_routes() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let id = app.start(&ann, json!({"type": "RUN"})).await;
    let now = now_ms();
    app.post_points(&ann, &id, json!({"points": [
        {"ts": now, "lat": 1, "lng": 1}, {"ts": now, "lat": 1, "lng": 1}, {"ts": now, "lat": 100, "lng": 1}
    ]}))
    .await;
    let text = app.metrics().await;
    // The recorder is shared by every server in this test process, so check
    // that series exist and count at least what this test did.
    let value = |name: &str| -> f64 {
        metric(&text, name).unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
    };
    assert!(value("trailcast_points_accepted_total") >= 1.0);
    assert!(value("trailcast_points_duplicate_total") >= 1.0);
    assert!(value("trailcast_points_rejected_total") >= 1.0);
    assert!(value("trailcast_batch_points_count") >= 1.0);
    assert!(value("trailcast_flush_seconds_count") >= 1.0);
    assert!(text.contains("trailcast_write_queue_points"));
    assert!(text.contains(
        "trailcast_http_request_duration_seconds_bucket{route=\"/v1/activities/{id}/points\",method=\"POST\""
    ));
}

#[tokio::test]
async fn the_noop_baseline_parses_the_body_and_stores_nothing() {
    let app = spawn_app().await;
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/noop",
            None,
            Some(json!({"points": [{"ts": 1}, {"ts": 2}]})),
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"accepted": 2})));
    let (status, _) = app.call(Method::POST, "/v1/noop", None, None).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let text = app.metrics().await;
    assert!(text.contains("trailcast_process_resident_bytes"));
}
