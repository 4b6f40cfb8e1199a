//! Acknowledged means durable: after `kill -9` every acknowledged point and
//! state change is there; a graceful shutdown flushes the queue.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::json;
use tokio::process::Child;

use crate::helpers::{TestApp, now_ms, spawn_app, spawn_on, track};

/// The real binary on the embedded store in `data_dir`.
async fn start_binary(data_dir: &std::path::Path) -> (Child, String) {
    let dir = data_dir.to_str().unwrap();
    crate::helpers::start_binary(&["--rate-limit", "1000000", "--data-dir", dir]).await
}

#[tokio::test]
async fn kill_dash_nine_mid_stream_loses_no_acknowledged_point_or_state_change() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = start_binary(dir.path()).await;
    let client = reqwest::Client::new();
    let user: serde_json::Value = client
        .post(format!("{base}/v1/users"))
        .json(&json!({"name": "Kim"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = user["token"].as_str().unwrap().to_string();
    let t0 = now_ms() - 3_600_000;
    let activity: serde_json::Value = client
        .post(format!("{base}/v1/activities"))
        .bearer_auth(&token)
        .json(&json!({"type": "RUN", "started_at": t0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = activity["id"].as_str().unwrap().to_string();
    let paused = client
        .patch(format!("{base}/v1/activities/{id}"))
        .bearer_auth(&token)
        .json(&json!({"state": "PAUSED", "at": t0 + 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), StatusCode::OK);

    // Four writers stream points (single points and small batches) and record
    // what the server acknowledged; the process is killed while they run.
    let points = track(t0, 20_000, 100, 3.0);
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let enough = Arc::new(tokio::sync::Notify::new());
    let mut writers = Vec::new();
    for w in 0..4usize {
        let (client, base, token, id, acked, enough) = (
            client.clone(),
            base.clone(),
            token.clone(),
            id.clone(),
            acked.clone(),
            enough.clone(),
        );
        let mine: Vec<_> = points.iter().skip(w).step_by(4).cloned().collect();
        writers.push(tokio::spawn(async move {
            for chunk in mine.chunks(1 + w * 3) {
                let body = if chunk.len() == 1 {
                    chunk[0].clone()
                } else {
                    json!({"points": chunk})
                };
                let Ok(resp) = client
                    .post(format!("{base}/v1/activities/{id}/points"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                else {
                    return;
                };
                if resp.status() != StatusCode::OK {
                    return;
                }
                let ts: Vec<i64> = chunk.iter().map(|p| p["ts"].as_i64().unwrap()).collect();
                let mut acked = acked.lock().unwrap();
                acked.extend(ts);
                if acked.len() >= 500 {
                    enough.notify_one();
                }
            }
        }));
    }
    // Kill once a good number of points were acknowledged (an event, not a sleep).
    tokio::time::timeout(std::time::Duration::from_secs(60), enough.notified())
        .await
        .expect("500 points acknowledged before the kill");
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() < points.len(), "the kill happened mid-stream");

    let (mut child, base) = start_binary(dir.path()).await;
    let route: serde_json::Value = client
        .get(format!("{base}/v1/activities/{id}/route"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored: BTreeSet<i64> = route["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            chrono::DateTime::parse_from_rfc3339(p["ts"].as_str().unwrap())
                .unwrap()
                .timestamp_millis()
        })
        .collect();
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged points lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let a: serde_json::Value = client
        .get(format!("{base}/v1/activities/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a["state"], "PAUSED");
    assert_eq!(
        a["stats"]["points"].as_u64().unwrap() as usize,
        stored.len()
    );
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    eprintln!(
        "kill -9 test: {} points acknowledged before the kill, all {} found after restart",
        acked.len(),
        acked.len()
    );
}

#[tokio::test]
async fn graceful_shutdown_flushes_and_a_restart_sees_everything() {
    let mut app = spawn_app().await;
    let ann = app.user("Ann").await;
    let t0 = now_ms() - 600_000;
    let id = app
        .start(&ann, json!({"type": "RUN", "started_at": t0}))
        .await;
    let points = track(t0, 300, 1000, 3.0);
    let mut requests = Vec::new();
    for chunk in points.chunks(30) {
        let body = json!({"points": chunk});
        let (client, url, token) = (
            app.client.clone(),
            format!("{}/v1/activities/{id}/points", app.base),
            ann.token.clone(),
        );
        requests.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for r in requests {
        assert_eq!(r.await.unwrap(), StatusCode::OK);
    }
    app.patch(
        &format!("/v1/activities/{id}"),
        &ann.token,
        json!({"state": "COMPLETE"}),
    )
    .await;
    let keep = app.keep_data();
    app.shutdown().await.expect("clean shutdown");

    let again: TestApp = spawn_on(app.data_dir.clone(), |_| {}).await;
    let (_, a) = again.get(&format!("/v1/activities/{id}"), &ann.token).await;
    assert_eq!(
        (a["state"].as_str(), a["stats"]["points"].as_u64()),
        (Some("COMPLETE"), Some(300))
    );
    drop(keep);
}
