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

/// Reads until the server closes the connection; `true` if it did within
/// `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off() {
    let app = crate::helpers::spawn_app_with(|c| c.header_timeout = 500).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // One header line every 200 ms, never the blank line that ends the head.
    let trickle = async {
        for i in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow
                .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                return true;
            }
        }
        false
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(5), trickle)
            .await
            .unwrap_or(false),
        "the server kept a trickling client for 10 s"
    );
    // Everyone else is served.
    let (status, _) = app.call(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let app = crate::helpers::spawn_app_with(|c| c.max_connections = 3).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let mut over = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(
        closed_within(&mut over, Duration::from_secs(2)).await,
        "a fourth connection is closed"
    );
    drop(idle);
    // Once they are gone there is room again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ok = app
            .client
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after the idle ones left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        app.metrics()
            .await
            .contains("trailcast_http_connections_refused_total")
    );
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_slow_client_past_the_grace_period() {
    let mut app = crate::helpers::spawn_app_with(|c| {
        c.shutdown_grace = 1_000;
        c.header_timeout = 60_000;
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /v1/noop HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n{")
        .await
        .unwrap();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), app.shutdown())
        .await
        .expect("shutdown finished")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(slow);
}

#[tokio::test]
async fn smaller_defences_hold() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let app = crate::helpers::spawn_app_with(|c| {
        c.signup_rate = 0.001;
        c.signup_burst = 1.0;
    })
    .await;
    let ann = app.user("Ann").await;
    let id = app.start(&ann, json!({"type": "RUN"})).await;
    let path = format!("/v1/activities/{id}");

    // A point with a duplicated key is refused, not silently the last value.
    let t = app.now_ms();
    let dup = format!(r#"{{"points": [{{"ts": {t}, "lat": 48.0, "lat": 49.0, "lng": 11.0}}]}}"#);
    let resp = app
        .client
        .post(format!("{}{path}/points", app.base))
        .bearer_auth(&ann.token)
        .header("content-type", "application/json")
        .body(dup)
        .send()
        .await
        .unwrap();
    let reply: Value = resp.json().await.unwrap();
    assert_eq!(reply["rejected"][0]["code"], "invalid_point", "{reply}");
    assert_eq!(reply["accepted"], 0);

    // A WebSocket message over 64 KiB: close 1009, not a dropped connection.
    let mut ws = crate::live::connect(&app, &id, &format!("lag=5&token={}", ann.token)).await;
    crate::live::next_json(&mut ws, Duration::from_secs(5))
        .await
        .unwrap();
    ws.send(Message::Text("x".repeat(70 * 1024).into()))
        .await
        .unwrap();
    assert_eq!(
        crate::live::close_reason(&mut ws, Duration::from_secs(5)).await,
        (1009, "message too big".into())
    );

    // Names with control or text-direction characters are refused.
    for name in ["Ann\u{202E}gnp.exe", "Bob\u{0007}", "Eve\u{2066}x"] {
        let (status, reply) = app
            .call(
                reqwest::Method::POST,
                "/v1/users",
                None,
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(
            (status.as_u16(), &reply["error"]["code"]),
            (422, &json!("invalid_name"))
        );
    }

    // No more points once discarded.
    app.patch(&path, &ann.token, json!({"state": "DISCARDED"}))
        .await;
    let (status, reply) = app
        .post_points(
            &ann,
            &id,
            json!({"ts": app.now_ms(), "lat": 48.0, "lng": 11.0}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), &reply["error"]["code"]),
        (409, &json!("activity_discarded"))
    );

    // Sign-ups per address: a burst of one (Ann's; the refused names above
    // did not count), then 429 with Retry-After.
    let mut codes = Vec::new();
    for i in 0..4 {
        let resp = app
            .client
            .post(format!("{}/v1/users", app.base))
            .json(&json!({"name": format!("User {i}")}))
            .send()
            .await
            .unwrap();
        codes.push((
            resp.status().as_u16(),
            resp.headers().contains_key("retry-after"),
        ));
    }
    assert!(codes.iter().all(|(s, _)| *s == 429), "{codes:?}");
    assert!(codes.iter().all(|(_, r)| *r));
}

/// A 24-hour activity at one point per second (86,400 points) is watched
/// over a WebSocket: the catch-up comes in chunks, every point once, in
/// order, and the socket stays open.
#[tokio::test]
async fn a_day_long_activity_is_caught_up_over_a_websocket() {
    const N: usize = 86_400;
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let t0 = app.now_ms() - 25 * 3_600_000;
    let id = app
        .start(&ann, json!({"type": "HIKE", "started_at": t0}))
        .await;
    let all = track(t0 + 1_000, N, 1_000, 1.2);
    for batch in all.chunks(10_000) {
        let (status, reply) = app.post_points(&ann, &id, json!({"points": batch})).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
    }
    let mut ws = crate::live::connect(&app, &id, &format!("lag=5&token={}", ann.token)).await;
    let first = crate::live::next_json(&mut ws, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(first["type"], "catch_up");
    let mut ts: Vec<String> = Vec::with_capacity(N);
    let take = |m: &Value, ts: &mut Vec<String>| {
        for p in m["points"].as_array().unwrap() {
            ts.push(p["ts"].as_str().unwrap().to_string());
        }
    };
    take(&first, &mut ts);
    let mut more = first["more"] == true;
    let mut messages = 1;
    while more || ts.len() < N {
        let m = crate::live::next_json(&mut ws, Duration::from_secs(30))
            .await
            .expect("the socket stays open through the catch-up");
        // Points that arrived within the lag come as ordinary releases.
        if m["type"] == "points" {
            take(&m, &mut ts);
            messages += 1;
            more = ts.len() < N;
        }
    }
    assert_eq!(ts.len(), N);
    let expected: Vec<String> = all
        .iter()
        .map(|p| trailcast::domain::time::to_rfc3339(p["ts"].as_i64().unwrap()))
        .collect();
    assert!(ts == expected, "every point once, in time order");
    assert!(messages > 100, "in chunks: {messages} messages");
}

/// A stranger with a valid token walks every endpoint that names someone
/// else's things: everything private answers 404, exactly as for ids that
/// do not exist, and nothing changes.
#[tokio::test]
async fn a_stranger_reaches_nothing_private() {
    use reqwest::Method as M;
    let app = spawn_app().await;
    let (ann, sam) = (app.user("Ann").await, app.user("Sam").await);
    let id = app.start(&ann, json!({"type": "RUN"})).await;
    app.post_points(
        &ann,
        &id,
        json!({"ts": app.now_ms(), "lat": 48.0, "lng": 11.0}),
    )
    .await;
    let (_, course) = app
        .post(
            "/v1/courses",
            &ann.token,
            json!({"name": "Mine", "visibility": "friends",
                   "steps": [{"kind": "run", "duration_s": 60, "cue": "Go"}]}),
        )
        .await;
    let (_, share) = app
        .post("/v1/shares", &ann.token, json!({"activity_id": id}))
        .await;
    let (_, device) = app
        .post("/v1/devices", &ann.token, json!({"name": "Phone"}))
        .await;
    let course = course["id"].as_str().unwrap();
    let share = share["id"].as_str().unwrap();
    let device = device["id"].as_str().unwrap();
    let walk: Vec<(M, String, Option<Value>)> = vec![
        (M::GET, format!("/v1/activities/{id}"), None),
        (
            M::PATCH,
            format!("/v1/activities/{id}"),
            Some(json!({"state": "DISCARDED"})),
        ),
        (
            M::PATCH,
            format!("/v1/activities/{id}"),
            Some(json!({"visibility": "public"})),
        ),
        (
            M::POST,
            format!("/v1/activities/{id}/points"),
            Some(json!({"ts": app.now_ms(), "lat": 1, "lng": 1})),
        ),
        (M::GET, format!("/v1/activities/{id}/route"), None),
        (
            M::GET,
            format!("/v1/activities/{id}/route?format=gpx"),
            None,
        ),
        (
            M::GET,
            format!("/v1/activities/{id}/route?format=tcx"),
            None,
        ),
        (
            M::GET,
            format!("/v1/activities/{id}/route?format=geojson"),
            None,
        ),
        (M::GET, format!("/v1/activities/{id}/live"), None),
        (
            M::PUT,
            format!("/v1/activities/{id}/fields"),
            Some(json!({"rpe": 1})),
        ),
        (M::GET, format!("/v1/activities/{id}/viewers"), None),
        (
            M::DELETE,
            format!("/v1/activities/{id}/viewers/{}", sam.id),
            None,
        ),
        (
            M::PUT,
            format!("/v1/activities/{id}/viewers/{}", sam.id),
            None,
        ),
        (M::GET, format!("/v1/courses/{course}"), None),
        (M::DELETE, format!("/v1/shares/{share}"), None),
        (M::DELETE, format!("/v1/devices/{device}"), None),
    ];
    for (method, path, body) in walk {
        let (status, reply) = app
            .call(method.clone(), &path, Some(&sam.token), body)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {reply}");
        assert_eq!(reply["error"]["code"], "not_found", "{method} {path}");
    }
    let ws = tokio_tungstenite::connect_async(crate::live::ws_url(
        &app,
        &id,
        &format!("token={}", sam.token),
    ))
    .await;
    assert!(ws.is_err(), "no WebSocket either");
    let (_, series) = app
        .get(
            &format!("/v1/athletes/{}/fields/distance_m", ann.id),
            &sam.token,
        )
        .await;
    assert_eq!(series["items"], json!([]));
    let (_, live) = app.get("/v1/live", &sam.token).await;
    assert_eq!(live["items"], json!([]));
    let (_, feed) = app.get("/v1/activities?mode=friends", &sam.token).await;
    assert_eq!(feed["items"], json!([]));
    // Nothing changed for Ann.
    let (status, view) = app.get(&format!("/v1/activities/{id}"), &ann.token).await;
    assert_eq!(
        (status, view["state"].as_str(), view["visibility"].as_str()),
        (StatusCode::OK, Some("STARTED"), Some("friends"))
    );
    assert_eq!(view["stats"]["points"], 1);
    let (_, devices) = app.get("/v1/devices", &ann.token).await;
    assert_eq!(devices["items"].as_array().unwrap().len(), 1);
}

/// A tmpfs of its own, unmounted (lazily, so an open file cannot keep it)
/// when dropped.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    /// Needs root to mount, as scripts/test and CI have here.
    fn mount(mib: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status();
        match status {
            Ok(s) if s.success() => SmallDisk(dir),
            other => panic!(
                "this test fills a real disk: a {mib} MiB tmpfs, which needs root to mount ({other:?})"
            ),
        }
    }

    fn free_bytes(&self) -> u64 {
        let fs = rustix::fs::statvfs(self.0.path()).unwrap();
        fs.f_bavail * fs.f_frsize
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

async fn ready_status(app: &TestApp) -> (StatusCode, Value) {
    app.get("/readyz", "").await
}

/// Waits (bounded) until `/readyz` answers `want`: the store re-reads its
/// free space every 250 ms.
async fn until_ready_is(app: &TestApp, want: StatusCode) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = ready_status(app).await;
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A full disk: writes are refused with 507 `storage_full` (nothing
/// written, nothing acknowledged lost), `/readyz` says not ready, and once
/// space returns writes resume without a restart.
#[tokio::test]
async fn a_full_disk_refuses_writes_and_recovers_when_space_returns() {
    let disk = SmallDisk::mount(128);
    let app = spawn_on(disk.0.path().join("data"), |c| c.min_free_disk_mb = 48).await;
    let ann = app.user("Ann").await;
    let t0 = app.now_ms() - 600_000;
    let id = app
        .start(&ann, json!({"type": "RUN", "started_at": t0}))
        .await;
    let points = track(t0, 300, 1_000, 3.0);
    let (status, body) = app
        .post(
            &format!("/v1/activities/{id}/points"),
            &ann.token,
            json!({"points": points[..100]}),
        )
        .await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (StatusCode::OK, Some(100))
    );

    // Another program fills the disk up: no space left at all.
    let filler = disk.0.path().join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![7u8; 1 << 20];
        let full = loop {
            if let Err(e) = file.write_all(&chunk).and_then(|()| file.sync_all()) {
                break e;
            }
        };
        assert_eq!(full.kind(), std::io::ErrorKind::StorageFull, "{full}");
        assert!(disk.free_bytes() < 1 << 20);
    }
    let ready = until_ready_is(&app, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(ready["checks"]["persistence"]["status"], "full", "{ready}");

    let response = app
        .client
        .post(format!("{}/v1/activities/{id}/points", app.base))
        .bearer_auth(&ann.token)
        .json(&json!({"points": points[100..200]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "storage_full", "{body}");
    let (status, body) = app
        .call(
            reqwest::Method::POST,
            "/v1/users",
            None,
            Some(json!({"name": "Bob"})),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::INSUFFICIENT_STORAGE, &json!("storage_full"))
    );
    // What was acknowledged is all there, and readable.
    let (status, route) = app
        .get(&format!("/v1/activities/{id}/route"), &ann.token)
        .await;
    assert_eq!(status, StatusCode::OK, "{route}");
    assert_eq!(
        route["points"].as_array().map(Vec::len),
        Some(100),
        "{route}"
    );

    // Space returns: the same retry is taken, no restart.
    std::fs::remove_file(&filler).unwrap();
    until_ready_is(&app, StatusCode::OK).await;
    let (status, body) = app
        .post(
            &format!("/v1/activities/{id}/points"),
            &ann.token,
            json!({"points": points[100..200]}),
        )
        .await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (StatusCode::OK, Some(100)),
        "{body}"
    );
    let (_, route) = app
        .get(&format!("/v1/activities/{id}/route"), &ann.token)
        .await;
    assert_eq!(route["points"].as_array().map(Vec::len), Some(200));
    assert!(!app.user("Bob").await.token.is_empty());
}

/// Watchers that never read a byte (a stuck phone, an attacker holding
/// sockets open) are dropped once their bounded queue has been full for
/// `SLOW_CONSUMER_TIMEOUT`: the server stops sending, forgets them as
/// viewers and frees what they held, instead of buffering a whole
/// catch-up for each.
#[tokio::test]
async fn watchers_that_never_read_are_dropped() {
    const N: usize = 40_000;
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let t0 = app.now_ms() - 12 * 3_600_000;
    let id = app
        .start(&ann, json!({"type": "HIKE", "started_at": t0}))
        .await;
    for batch in track(t0 + 1_000, N, 1_000, 1.2).chunks(10_000) {
        let (status, reply) = app.post_points(&ann, &id, json!({"points": batch})).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
    }
    let addr: std::net::SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let mut stuck = Vec::new();
    for i in 0..4 {
        let fan = app.user(&format!("Fan {i}")).await;
        app.befriend(&ann, &fan).await;
        for _ in 0..2 {
            // A small receive window, so the server's sends block soon.
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            let stream = socket.connect(addr).await.unwrap();
            let url = crate::live::ws_url(&app, &id, &format!("lag=5&token={}", fan.token));
            let (ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
            stuck.push(ws.into_inner());
        }
    }
    let viewers = format!("/v1/activities/{id}/viewers");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0;
    loop {
        let (_, list) = app.get(&viewers, &ann.token).await;
        let total = list["total"].as_u64().unwrap();
        seen = seen.max(total);
        if seen == 8 && total == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "stuck watchers kept: {list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What each got before it was dropped is a fraction of the catch-up
    // (about 100 bytes a point), and then the connection ends.
    for mut stream in stuck {
        let mut got = Vec::new();
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut got),
        )
        .await;
        assert!(read.is_ok(), "the server closed the connection");
        assert!(
            got.len() < N * 100 / 2,
            "{} bytes buffered for a stuck watcher",
            got.len()
        );
    }
}
