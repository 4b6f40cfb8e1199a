//! Trust on long, messy runs: hostile numbers never spoil a record, a
//! record stored spoiled is repaired or skipped (never a 500 for a whole
//! list), and a client that hangs up after sending still gets its points
//! applied and published.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::helpers::{TestApp, spawn_app, spawn_on, track};

fn finite_stats(stats: &Value) {
    for (name, v) in stats.as_object().unwrap() {
        if let Some(n) = v.as_f64() {
            assert!(n.is_finite(), "{name} = {n}");
        }
        assert!(
            !v.is_null() || name.starts_with("avg_"),
            "{name} is null: {stats}"
        );
    }
}

#[tokio::test]
async fn hostile_numbers_are_refused_and_statistics_stay_finite() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let t0 = app.now_ms() - 60_000;
    let id = app
        .start(&ann, json!({"type": "RUN", "started_at": t0}))
        .await;
    let mut points = track(t0 + 1_000, 20, 1_000, 3.0);
    let hostile = [
        ("alt", 1e308),
        ("alt", -1e308),
        ("alt", 10_001.0),
        ("speed", 1e308),
        ("accuracy", 1e308),
        ("hr", 301.0),
        ("cadence", -1.0),
    ];
    for (i, (field, value)) in hostile.iter().enumerate() {
        points[i + 5][*field] = json!(value);
    }
    let (status, reply) = app.post_points(&ann, &id, json!({"points": points})).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let rejected: Vec<(u64, &str)> = reply["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        rejected,
        (5..12).map(|i| (i, "invalid_value")).collect::<Vec<_>>()
    );
    assert_eq!(reply["accepted"], 13);
    finite_stats(&reply["stats"]);
    let (status, single) = app
        .post_points(
            &ann,
            &id,
            json!({"ts": t0 + 30_000, "lat": 48.0, "lng": 11.0, "alt": 1e308}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), &single["error"]["code"]),
        (422, &json!("invalid_value"))
    );
    let (status, view) = app
        .patch(
            &format!("/v1/activities/{id}"),
            &ann.token,
            json!({"state": "COMPLETE"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    finite_stats(&view["stats"]);
    let (status, _) = app.get("/v1/activities", &ann.token).await;
    assert_eq!(status, StatusCode::OK);
}

/// Rewrites one stored activity document in the embedded store (the
/// server stopped), as a bug of an older release would have left it.
fn spoil(dir: &std::path::Path, id: &str, spoil: impl FnOnce(&mut Value)) {
    let db = fjall::Database::builder(dir).open().unwrap();
    let activities = db
        .keyspace("activities", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    let key = uuid::Uuid::parse_str(id).unwrap();
    let mut doc: Value =
        serde_json::from_slice(&activities.get(key.as_bytes()).unwrap().unwrap()).unwrap();
    spoil(&mut doc);
    activities
        .insert(key.as_bytes(), serde_json::to_vec(&doc).unwrap())
        .unwrap();
    db.persist(fjall::PersistMode::SyncAll).unwrap();
}

#[tokio::test]
async fn a_stored_record_with_null_numbers_is_read_listed_and_discardable() {
    let mut app = spawn_app().await;
    let (ann, bob) = (app.user("Ann").await, app.user("Bob").await);
    app.befriend(&ann, &bob).await;
    let t0 = app.now_ms() - 600_000;
    let spoiled = app
        .start(&ann, json!({"type": "RUN", "started_at": t0}))
        .await;
    app.post_points(
        &ann,
        &spoiled,
        json!({"points": track(t0 + 1_000, 50, 1_000, 3.0)}),
    )
    .await;
    let broken = app
        .start(&ann, json!({"type": "RUN", "started_at": t0 + 1}))
        .await;
    let fine = app
        .start(&ann, json!({"type": "RIDE", "started_at": t0 + 2}))
        .await;
    app.shutdown().await.unwrap();
    let keep = app.keep_data();
    // A non-finite statistic stored as null (the reported bug), and a
    // document no repair can read.
    spoil(&app.data_dir, &spoiled, |doc| {
        doc["track"]["distance_m"] = Value::Null;
        doc["leaderboard_m"] = Value::Null;
    });
    spoil(&app.data_dir, &broken, |doc| {
        doc["state"] = json!(42);
    });

    let again: TestApp = spawn_on(app.data_dir.clone(), |_| {}).await;
    let path = format!("/v1/activities/{spoiled}");
    let (status, view) = again.get(&path, &ann.token).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    // Read again, with the live statistics recomputed from the stored track.
    finite_stats(&view["stats"]);
    assert!(
        view["stats"]["distance_m"].as_f64().unwrap() > 100.0,
        "{view}"
    );
    let (status, mine) = again.get("/v1/activities", &ann.token).await;
    assert_eq!(status, StatusCode::OK, "{mine}");
    let ids: Vec<&str> = mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [fine.as_str(), spoiled.as_str()],
        "the unreadable one is skipped"
    );
    let (status, feed) = again.get("/v1/activities?mode=friends", &bob.token).await;
    assert_eq!(status, StatusCode::OK, "{feed}");
    assert_eq!(feed["items"].as_array().unwrap().len(), 2);
    let (status, points) = again
        .post_points(
            &ann,
            &spoiled,
            json!({"ts": t0 + 100_000, "lat": 48.1, "lng": 11.0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{points}");
    let (status, discarded) = again
        .patch(&path, &ann.token, json!({"state": "DISCARDED"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{discarded}");
    assert!(
        again
            .metrics()
            .await
            .contains("trailcast_store_skipped_records_total"),
        "skips are counted"
    );
    drop(keep);
}

#[tokio::test]
async fn a_client_that_hangs_up_after_sending_still_gets_its_points_applied() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let t0 = app.now_ms() - 6_000_000;
    let id = app
        .start(&ann, json!({"type": "RUN", "started_at": t0}))
        .await;
    let body =
        serde_json::to_vec(&json!({"points": track(t0 + 1_000, 5_000, 1_000, 3.0)})).unwrap();
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/activities/{id}/points HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        ann.token,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    // Hang up right after sending (a phone losing signal): the server sees
    // the connection end while it handles the request.
    stream.shutdown().await.unwrap();
    drop(stream);

    // The statistics and the live stream show every point (waited for as
    // an outcome, with a deadline).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, view) = app.get(&format!("/v1/activities/{id}"), &ann.token).await;
        if view["stats"]["points"] == 5_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never applied: {}",
            view["stats"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, retry) = app
        .post_points(
            &ann,
            &id,
            json!({"points": track(t0 + 1_000, 5_000, 1_000, 3.0)}),
        )
        .await;
    assert_eq!(retry["duplicates"], 5_000);
    assert_eq!(retry["stats"]["points"], 5_000, "the retry sees them too");
}
