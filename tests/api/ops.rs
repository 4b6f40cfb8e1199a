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

/// `/v1/openapi.json` describes every `/v1` route the server has (read
/// from the routers' sources), each method of it, and only those; the
/// WebSocket upgrade, the no-op baseline and the document itself are left
/// out on purpose.
#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let app = spawn_app().await;
    let (status, doc) = app.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let documented: std::collections::BTreeSet<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect();
    let mut routed = std::collections::BTreeSet::new();
    let route = regex_lite_route();
    for entry in std::fs::read_dir("src/http").unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for (path, methods) in route(&text) {
            if !path.starts_with("/v1/")
                || path.ends_with("/live/ws")
                || path == "/v1/noop"
                || path == "/v1/openapi.json"
            {
                continue;
            }
            for method in methods {
                routed.insert(format!("{method} {path}"));
            }
        }
    }
    routed.insert("GET /readyz".into());
    assert!(routed.len() > 25, "{routed:?}");
    assert_eq!(documented, routed);
}

/// `.route("<path>", get(..).post(..))` in a router's source: the path and
/// its methods.
fn regex_lite_route() -> impl Fn(&str) -> Vec<(String, Vec<String>)> {
    |text: &str| {
        let mut out = Vec::new();
        for (i, _) in text.match_indices(".route(") {
            let rest = &text[i + ".route(".len()..];
            // A router's `.route("/path", ...)`, not some other `route(`.
            let start = rest.len() - rest.trim_start().len();
            if !rest[start..].starts_with('"') {
                continue;
            }
            let Some(len) = rest[start + 1..].find('"') else {
                continue;
            };
            let path = rest[start + 1..start + 1 + len].to_string();
            // The handlers: up to the end of this `.route(...)` call.
            let mut depth = 1;
            let mut end = rest.len();
            for (j, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = j;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let call = &rest[start + 1 + len..end];
            let methods = ["get", "post", "put", "patch", "delete"]
                .into_iter()
                .filter(|m| call.contains(&format!("{m}(")))
                .map(str::to_uppercase)
                .collect();
            out.push((path, methods));
        }
        out
    }
}

/// A token is read from the store once, then from the node's cache; an
/// unknown one is refused every time.
#[tokio::test]
async fn tokens_are_looked_up_once_then_cached() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let hits = |text: &str| metric(text, "trailcast_token_cache_hits_total").unwrap_or(0.0);
    let before = hits(&app.metrics().await);
    for _ in 0..3 {
        assert_eq!(app.get("/v1/me", &ann.token).await.0, StatusCode::OK);
    }
    // The recorder is shared by every server in this process: at least.
    assert!(hits(&app.metrics().await) >= before + 2.0);
    for _ in 0..2 {
        assert_eq!(
            app.get("/v1/me", "tc_not-a-token").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
}
