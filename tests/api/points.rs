use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{now_ms, spawn_app, track};

const MIN: i64 = 60_000;

#[tokio::test]
async fn a_single_point_is_stored_and_counted() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let id = app.start(&ann, json!({"type": "RUN"})).await;
    let (status, body) = app
        .post_points(
            &ann,
            &id,
            json!({"ts": now_ms(), "lat": 48.1, "lng": 11.5, "hr": 140, "accuracy": 5}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["accepted"].as_u64(), body["duplicates"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(body["rejected"], json!([]));
    assert_eq!(body["stats"]["points"], 1);
    let (_, route) = app
        .get(&format!("/v1/activities/{id}/route"), &ann.token)
        .await;
    assert_eq!(route["points"][0]["hr"], 140);
    assert_eq!(route["points"][0]["lat"], 48.1);
}

#[tokio::test]
async fn a_single_invalid_point_is_422_with_its_reason() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let id = app.start(&ann, json!({"type": "RUN"})).await;
    let now = now_ms();
    let cases = [
        (
            json!({"ts": now, "lat": 90.5, "lng": 0}),
            "lat_out_of_range",
        ),
        (json!({"ts": now, "lat": 0, "lng": 181}), "lng_out_of_range"),
        (
            json!({"ts": now + 10 * MIN, "lat": 0, "lng": 0}),
            "ts_in_future",
        ),
        (
            json!({"ts": now - 10 * MIN, "lat": 0, "lng": 0}),
            "ts_before_start",
        ),
        (
            json!({"ts": "not a time", "lat": 0, "lng": 0}),
            "invalid_timestamp",
        ),
        (
            json!({"ts": now, "lat": "north", "lng": 0}),
            "invalid_point",
        ),
        (json!({"ts": now, "lng": 0}), "missing_field"),
        (
            json!({"ts": now, "lat": 0, "lng": 0, "accuracy": -3}),
            "invalid_value",
        ),
    ];
    for (point, code) in cases {
        let (status, body) = app.post_points(&ann, &id, point.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{point}");
        assert_eq!(body["error"]["code"], code, "{point}");
    }
    let (_, a) = app.get(&format!("/v1/activities/{id}"), &ann.token).await;
    assert_eq!(a["stats"]["points"], 0);
}

#[tokio::test]
async fn a_batch_stores_the_good_points_and_reports_the_bad_by_index() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let t0 = now_ms() - 5 * MIN;
    let id = app
        .start(&ann, json!({"type": "RUN", "started_at": t0}))
        .await;
    let mut points = track(t0, 6, 3000, 3.0);
    points[1]["lat"] = json!(123.0);
    points[4] = json!("not a point");
    let (status, body) = app.post_points(&ann, &id, json!({"points": points})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], 4);
    assert_eq!(
        body["rejected"],
        json!([{"index": 1, "code": "lat_out_of_range"}, {"index": 4, "code": "invalid_point"}])
    );
    assert_eq!(body["stats"]["points"], 4);
}

#[tokio::test]
async fn resent_points_are_duplicates_never_stored_twice() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let t0 = now_ms() - 5 * MIN;
    let id = app
        .start(&ann, json!({"type": "RUN", "started_at": t0}))
        .await;
    let points = track(t0, 10, 3000, 3.0);
    let (_, first) = app
        .post_points(&ann, &id, json!({"points": points[..6]}))
        .await;
    assert_eq!(first["accepted"], 6);
    // Overlapping resend (offline sync retry) with a duplicate inside the batch too.
    let mut resend = points[3..].to_vec();
    resend.push(points[9].clone());
    let (_, second) = app.post_points(&ann, &id, json!({"points": resend})).await;
    assert_eq!(
        (second["accepted"].as_u64(), second["duplicates"].as_u64()),
        (Some(4), Some(4))
    );
    let (_, single) = app.post_points(&ann, &id, points[0].clone()).await;
    assert_eq!(
        (single["accepted"].as_u64(), single["duplicates"].as_u64()),
        (Some(0), Some(1))
    );
    let (_, route) = app
        .get(&format!("/v1/activities/{id}/route"), &ann.token)
        .await;
    assert_eq!(route["points"].as_array().unwrap().len(), 10);
    assert_eq!(single["stats"]["points"], 10);
}

#[tokio::test]
async fn out_of_order_and_late_points_are_accepted_and_the_summary_recomputed() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let t0 = now_ms() - 20 * MIN;
    let id = app
        .start(&ann, json!({"type": "RUN", "started_at": t0}))
        .await;
    let points = track(t0, 200, 3000, 3.0); // 1,791 m over 597 s
    let (evens, odds): (Vec<_>, Vec<_>) = points
        .iter()
        .cloned()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let strip =
        |v: Vec<(usize, serde_json::Value)>| v.into_iter().map(|(_, p)| p).collect::<Vec<_>>();
    let (evens, odds) = (strip(evens), strip(odds));

    // The phone sends every other point live, then completes...
    let (_, live) = app
        .post_points(&ann, &id, json!({"points": evens[..50]}))
        .await;
    let partial = live["stats"]["distance_m"].as_f64().unwrap();
    let path = format!("/v1/activities/{id}");
    app.patch(
        &path,
        &ann.token,
        json!({"state": "COMPLETE", "at": t0 + 600_000}),
    )
    .await;
    // ...and uploads the rest after the finish, newest first.
    let mut rest: Vec<_> = evens[50..].iter().chain(odds.iter()).cloned().collect();
    rest.reverse();
    let (status, late) = app.post_points(&ann, &id, json!({"points": rest})).await;
    assert_eq!(status, StatusCode::OK, "{late}");
    assert_eq!(late["accepted"], 150);
    let (_, done) = app.get(&path, &ann.token).await;
    let total = done["stats"]["distance_m"].as_f64().unwrap();
    assert!(
        partial < 900.0 && (total - 199.0 * 9.0).abs() < 5.0,
        "{partial} then {total}"
    );
    assert_eq!(done["stats"]["points"], 200);
    assert_eq!(done["splits"][0]["km"], 1);
    // Stored, not just cached: the list (read from storage) agrees.
    let (_, list) = app.get("/v1/activities", &ann.token).await;
    assert_eq!(
        list["items"][0]["stats"]["distance_m"],
        done["stats"]["distance_m"]
    );
}

#[tokio::test]
async fn only_the_athlete_may_post_points() {
    let app = spawn_app().await;
    let (ann, friend) = (app.user("Ann").await, app.user("Fay").await);
    app.befriend(&ann, &friend).await;
    let id = app.start(&ann, json!({"type": "RUN"})).await;
    let (status, _) = app
        .post_points(&friend, &id, json!({"ts": now_ms(), "lat": 1, "lng": 1}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .post_points(
            &ann,
            &uuid::Uuid::now_v7().to_string(),
            json!({"ts": now_ms(), "lat": 1, "lng": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn batches_are_limited_to_10000_points() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let t0 = now_ms() - 600 * MIN;
    let id = app
        .start(&ann, json!({"type": "RUN", "started_at": t0}))
        .await;
    let (status, body) = app
        .post_points(&ann, &id, json!({"points": track(t0, 10_001, 1000, 3.0)}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("too_many_points"))
    );
    let (status, body) = app
        .post_points(&ann, &id, json!({"points": track(t0, 10_000, 1000, 3.0)}))
        .await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (StatusCode::OK, Some(10_000))
    );
    let (status, body) = app.post_points(&ann, &id, json!({"points": 7})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_body"))
    );
    // Both a point and a batch: refused whole, nothing of it stored.
    let late = t0 + 20_000 * 1000;
    let (status, body) = app
        .post_points(
            &ann,
            &id,
            json!({"ts": late, "lat": 1, "lng": 1, "points": track(late, 2, 1000, 3.0)}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_body"))
    );
    let (_, route) = app
        .get(&format!("/v1/activities/{id}/route"), &ann.token)
        .await;
    assert_eq!(route["points"].as_array().map(Vec::len), Some(10_000));
}

#[tokio::test]
async fn a_full_write_queue_answers_503_with_retry_after() {
    let app = crate::helpers::spawn_app_with(|c| c.queue_points = 5).await;
    let ann = app.user("Ann").await;
    let t0 = now_ms() - 5 * MIN;
    let id = app
        .start(&ann, json!({"type": "RUN", "started_at": t0}))
        .await;
    let resp = app
        .client
        .post(format!("{}/v1/activities/{id}/points", app.base))
        .bearer_auth(&ann.token)
        .json(&json!({"points": track(t0, 10, 1000, 3.0)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    // Nothing was half-stored, and a request that fits goes through.
    let (_, ok) = app
        .post_points(&ann, &id, json!({"points": track(t0, 5, 1000, 3.0)}))
        .await;
    assert_eq!(ok["accepted"], 5);
}

/// What an offline phone produces: fixes shuffled within blocks of ten, one
/// per request, plus one far older than the rest. The running statistics
/// (folded from the newest checkpoint before a late point, or from the
/// start when none is old enough) must equal a fold of the whole stored
/// track, which COMPLETE computes.
#[tokio::test]
async fn late_points_fold_into_the_running_statistics_as_a_full_recompute_would() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let t0 = now_ms() - 60 * MIN;
    let id = app
        .start(&ann, json!({"type": "RUN", "started_at": t0}))
        .await;
    // Climbing and descending, with a noisy fix now and then, so that
    // distance, elevation and the jump filter all depend on the order.
    let mut points: Vec<serde_json::Value> = track(t0, 700, 3000, 3.0)
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            p["alt"] = json!(500.0 + 40.0 * ((i as f64) / 60.0).sin());
            if i % 97 == 13 {
                p["lng"] = json!(11.01);
            }
            p
        })
        .collect();
    // A detour of about 20 m sideways, so that it adds distance.
    let mut far_late = points.remove(20);
    far_late["lng"] = json!(11.0003);
    let mut order: Vec<usize> = (0..points.len()).collect();
    // A fixed shuffle within each block of ten (no randomness in tests).
    for block in order.chunks_mut(10) {
        block.reverse();
        block.swap(0, block.len() / 2);
    }
    let mut live = serde_json::Value::Null;
    for i in order {
        let (status, body) = app.post_points(&ann, &id, points[i].clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        live = body;
    }
    let (status, body) = app.post_points(&ann, &id, far_late.clone()).await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    let before_far = live;
    live = body;
    assert_ne!(
        before_far["stats"]["distance_m"], live["stats"]["distance_m"],
        "the far late point changes the distance"
    );
    let path = format!("/v1/activities/{id}");
    let (_, done) = app
        .patch(&path, &ann.token, json!({"state": "COMPLETE"}))
        .await;
    for key in ["distance_m", "elevation_gain_m", "points"] {
        assert_eq!(live["stats"][key], done["stats"][key], "{key}");
    }
    assert_eq!(done["stats"]["points"], 700);
    assert!(done["stats"]["distance_m"].as_f64().unwrap() > 5_000.0);
    let (_, route) = app.get(&format!("{path}/route"), &ann.token).await;
    assert_eq!(route["points"].as_array().unwrap().len(), 700);
}
