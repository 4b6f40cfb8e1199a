//! Live watching: lagged playback over polling and WebSocket, access, share
//! links, fan-out to many watchers and slow consumers.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::helpers::{TestApp, TestUser, metric, now_ms, spawn_app};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) fn ws_url(app: &TestApp, id: &str, query: &str) -> String {
    format!(
        "{}/v1/activities/{id}/live/ws?{query}",
        app.base.replacen("http", "ws", 1)
    )
}

pub(crate) async fn connect(app: &TestApp, id: &str, query: &str) -> Ws {
    let (ws, _) = connect_async(ws_url(app, id, query))
        .await
        .expect("websocket connects");
    ws
}

/// The next JSON message, answering nothing else; `None` once closed.
pub(crate) async fn next_json(ws: &mut Ws, within: Duration) -> Option<Value> {
    loop {
        match timeout(within, ws.next())
            .await
            .expect("a message in time")?
        {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Reads until the server closes; returns the close code and reason.
pub(crate) async fn close_reason(ws: &mut Ws, within: Duration) -> (u16, String) {
    loop {
        match timeout(within, ws.next()).await.expect("closed in time") {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (frame.code.into(), frame.reason.to_string());
            }
            Some(Ok(_)) => continue,
            other => panic!("connection ended without a close frame: {other:?}"),
        }
    }
}

fn point(ts: i64, i: usize) -> Value {
    json!({"ts": ts, "lat": 48.0 + i as f64 * 1e-4, "lng": 11.0})
}

async fn athlete_with_activity(app: &TestApp) -> (TestUser, String) {
    let ann = app.user("Ann").await;
    let id = app
        .start(
            &ann,
            json!({"type": "RUN", "started_at": app.now_ms() - 60_000}),
        )
        .await;
    (ann, id)
}

// Time here is tokio's, paused: it moves only when every task waits, so a
// lag is observed exactly, in no real time.
#[tokio::test(start_paused = true)]
async fn the_lag_is_honoured_within_a_tick_for_lag_5_and_10() {
    let app = spawn_app().await;
    let (ann, id) = athlete_with_activity(&app).await;
    let q = |lag: u32| format!("lag={lag}&token={}", ann.token);
    let (mut ws5, mut ws10) = (
        connect(&app, &id, &q(5)).await,
        connect(&app, &id, &q(10)).await,
    );
    for ws in [&mut ws5, &mut ws10] {
        let catch_up = next_json(ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(catch_up["type"], "catch_up");
    }
    let (status, _) = app.post_points(&ann, &id, point(app.now_ms(), 1)).await;
    assert_eq!(status, StatusCode::OK);
    let acked = Instant::now();
    for (ws, lag) in [(&mut ws5, 5.0), (&mut ws10, 10.0)] {
        loop {
            let msg = next_json(ws, Duration::from_secs(15)).await.unwrap();
            if msg["type"] == "points" {
                // The feed reads the stream every 250 ms; release is exact.
                let waited = acked.elapsed().as_secs_f64();
                assert!(
                    (lag..=lag + 0.25).contains(&waited),
                    "lag {lag}: delivered after {waited:.3} s"
                );
                break;
            }
        }
    }
    // Lags outside 5..=10 s are refused.
    let (status, body) = app
        .get(&format!("/v1/activities/{id}/live?lag=3"), &ann.token)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_lag"))
    );
}

#[tokio::test(start_paused = true)]
async fn polling_across_cursors_has_no_gaps_or_repeats_and_retry_follows_the_next_release() {
    let app = spawn_app().await;
    let (ann, id) = athlete_with_activity(&app).await;
    let mut sent = Vec::new();
    let poster = {
        let (client, url, token, clock) = (
            app.client.clone(),
            format!("{}/v1/activities/{id}/points", app.base),
            ann.token.clone(),
            app.clock,
        );
        tokio::spawn(async move {
            let mut ts = Vec::new();
            for i in 0..12 {
                let t = clock.now_ms();
                let resp = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&point(t, i))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                ts.push(t);
                tokio::time::sleep(Duration::from_millis(400)).await; // the athlete's cadence
            }
            ts
        })
    };
    let mut received = Vec::new();
    let mut cursor = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.len() < 12 && Instant::now() < deadline {
        let (status, body) = app
            .get(
                &format!("/v1/activities/{id}/live?lag=5&after={cursor}"),
                &ann.token,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let server_now =
            chrono::DateTime::parse_from_rfc3339(body["server_time"].as_str().unwrap())
                .unwrap()
                .timestamp_millis();
        for p in body["points"].as_array().unwrap() {
            received.push(
                chrono::DateTime::parse_from_rfc3339(p["ts"].as_str().unwrap())
                    .unwrap()
                    .timestamp_millis(),
            );
            assert!(
                server_now - received.last().unwrap() >= 4_900,
                "released before its lag"
            );
        }
        cursor = body["cursor"].as_str().unwrap().to_string();
        let retry = body["retry_after_ms"].as_i64().unwrap();
        assert!((0..=5_000).contains(&retry), "{retry}");
        assert_eq!(body["lag_s"], 5.0);
        tokio::time::sleep(Duration::from_millis(retry as u64)).await; // as a client is told to
    }
    sent.extend(poster.await.unwrap());
    assert_eq!(received, sent, "every point exactly once, in order");
}

#[tokio::test(start_paused = true)]
async fn pause_resume_finish_and_late_points_arrive_then_the_socket_closes_cleanly() {
    let app = spawn_app().await;
    let (ann, id) = athlete_with_activity(&app).await;
    let t = app.now_ms();
    app.post_points(
        &ann,
        &id,
        json!({"points": [point(t - 20_000, 0), point(t - 10_000, 1)]}),
    )
    .await;
    let mut ws = connect(&app, &id, &format!("lag=5&token={}", ann.token)).await;
    assert_eq!(
        next_json(&mut ws, Duration::from_secs(5)).await.unwrap()["type"],
        "catch_up"
    );
    let path = format!("/v1/activities/{id}");
    app.patch(&path, &ann.token, json!({"state": "PAUSED"}))
        .await;
    app.patch(&path, &ann.token, json!({"state": "STARTED"}))
        .await;
    app.post_points(&ann, &id, point(t - 15_000, 2)).await; // late: older than one already sent
    app.patch(&path, &ann.token, json!({"state": "COMPLETE"}))
        .await;

    let mut states = Vec::new();
    let mut late = Vec::new();
    let mut saw_stats = false;
    while let Some(msg) = next_json(&mut ws, Duration::from_secs(15)).await {
        match msg["type"].as_str().unwrap() {
            "state" => states.push(msg["state"].as_str().unwrap().to_string()),
            "points" => late.extend(
                msg["points"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["late"] == true),
            ),
            "stats" => saw_stats = true,
            other => panic!("unexpected {other}"),
        }
        // The final stats may come with or right after the COMPLETE state.
        if saw_stats && states.last().is_some_and(|s| s == "COMPLETE") {
            break;
        }
    }
    assert_eq!(states, ["STARTED", "PAUSED", "STARTED", "COMPLETE"]);
    assert_eq!(late, [false, false, true], "the late point is marked");
    assert!(saw_stats);
    assert_eq!(
        close_reason(&mut ws, Duration::from_secs(5)).await,
        (1000, "activity finished".into())
    );
}

#[tokio::test]
async fn only_the_athlete_friends_and_share_holders_may_watch() {
    let app = spawn_app().await;
    let (ann, id) = athlete_with_activity(&app).await;
    let (friend, stranger) = (app.user("Fay").await, app.user("Sam").await);
    app.befriend(&ann, &friend).await;
    let live = format!("/v1/activities/{id}/live");
    assert_eq!(app.get(&live, &friend.token).await.0, StatusCode::OK);
    assert_eq!(
        app.get(&live, &stranger.token).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _) = app.call(reqwest::Method::GET, &live, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    match connect_async(ws_url(&app, &id, &format!("token={}", stranger.token))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 404),
        other => panic!(
            "a stranger's websocket must be refused: {:?}",
            other.map(|_| ())
        ),
    }
    connect(&app, &id, &format!("token={}", friend.token)).await;
}

#[tokio::test(start_paused = true)]
async fn share_links_work_without_an_account_expire_and_revoke() {
    let app = spawn_app().await;
    let (ann, id) = athlete_with_activity(&app).await;
    let stranger = app.user("Sam").await;
    let (status, share) = app
        .post("/v1/shares", &ann.token, json!({"activity_id": id}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{share}");
    let token = share["token"].as_str().unwrap();
    let (status, _) = app
        .post("/v1/shares", &stranger.token, json!({"activity_id": id}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "only the athlete shares");

    let poll = format!("/v1/activities/{id}/live?share={token}");
    let (status, body) = app.call(reqwest::Method::GET, &poll, None, None).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("STARTED"))
    );
    let mut ws = connect(&app, &id, &format!("share={token}")).await;
    assert_eq!(
        next_json(&mut ws, Duration::from_secs(5)).await.unwrap()["type"],
        "catch_up"
    );
    let other = app.start(&ann, json!({"type": "RUN"})).await;
    let (status, _) = app
        .call(
            reqwest::Method::GET,
            &format!("/v1/activities/{other}/live?share={token}"),
            None,
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a share opens one activity only"
    );

    let share_id = share["id"].as_str().unwrap();
    let (status, _) = app
        .delete(&format!("/v1/shares/{share_id}"), &ann.token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        close_reason(&mut ws, Duration::from_secs(5)).await,
        (4003, "share revoked".into())
    );
    assert_eq!(
        app.call(reqwest::Method::GET, &poll, None, None).await.0,
        StatusCode::NOT_FOUND
    );

    let (_, short) = app
        .post(
            "/v1/shares",
            &ann.token,
            json!({"activity_id": id, "expires_in_s": 5}),
        )
        .await;
    let short_token = short["token"].as_str().unwrap();
    let mut ws = connect(&app, &id, &format!("share={short_token}")).await;
    assert_eq!(
        close_reason(&mut ws, Duration::from_secs(10)).await,
        (4003, "share expired".into())
    );
    let (status, _) = app
        .call(
            reqwest::Method::GET,
            &format!("/v1/activities/{id}/live?share={short_token}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_thousand_watchers_of_one_activity_all_receive_every_point() {
    let app = spawn_app().await;
    let (ann, id) = athlete_with_activity(&app).await;
    let mut watchers = Vec::new();
    for _ in 0..1000 {
        let mut ws = connect(&app, &id, &format!("lag=5&token={}", ann.token)).await;
        assert_eq!(
            next_json(&mut ws, Duration::from_secs(10)).await.unwrap()["type"],
            "catch_up"
        );
        watchers.push(ws);
    }
    let t = now_ms();
    let points: Vec<Value> = (0..5)
        .map(|i| point(t - 5_000 + i as i64 * 1000, i))
        .collect();
    let expected: BTreeSet<String> = points
        .iter()
        .map(|p| {
            chrono::DateTime::from_timestamp_millis(p["ts"].as_i64().unwrap())
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        })
        .collect();
    for p in &points {
        assert_eq!(
            app.post_points(&ann, &id, p.clone()).await.0,
            StatusCode::OK
        );
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut ws in watchers {
        let expected = expected.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = BTreeSet::new();
            while got != expected {
                let msg = next_json(&mut ws, Duration::from_secs(30))
                    .await
                    .expect("still open");
                if msg["type"] == "points" {
                    got.extend(
                        msg["points"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|p| p["ts"].as_str().unwrap().to_string()),
                    );
                }
            }
            let _ = ws.close(None).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!(
        "1000 watchers x 5 points delivered {:.2} s after the last post",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn a_watcher_that_never_reads_is_dropped_instead_of_growing_memory() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let t0 = now_ms() - 3_600_000;
    let id = app
        .start(&ann, json!({"type": "RIDE", "started_at": t0}))
        .await;
    let dropped =
        |text: &str| metric(text, "trailcast_live_slow_watchers_dropped_total").unwrap_or(0.0);
    let dropped_before = dropped(&app.metrics().await);

    // A client with a tiny receive window that completes the handshake and
    // then never reads again.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket
        .connect(app.base.trim_start_matches("http://").parse().unwrap())
        .await
        .unwrap();
    let (_stalled, _) = tokio_tungstenite::client_async(
        ws_url(&app, &id, &format!("lag=5&token={}", ann.token)),
        tcp,
    )
    .await
    .unwrap();
    // A reader that keeps up, on the same activity.
    let mut healthy = connect(&app, &id, &format!("lag=5&token={}", ann.token)).await;

    // Batches of 4,000 points (under the recent-positions cap), each sent
    // once the healthy reader got the previous one: about 3 MB in all, four
    // times the stated per-watcher bound.
    for batch in 0..4 {
        let points: Vec<Value> = (0..4_000)
            .map(|i| {
                let n = batch * 4_000 + i;
                json!({"ts": t0 + n as i64 * 10, "lat": 48.0 + n as f64 * 1e-6, "lng": 11.0,
                       "alt": 500.5, "speed": 8.25, "accuracy": 4.5, "hr": 150, "cadence": 90})
            })
            .collect();
        let last_ts =
            chrono::DateTime::from_timestamp_millis(t0 + (batch as i64 * 4_000 + 3_999) * 10)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let (status, body) = app.post_points(&ann, &id, json!({"points": points})).await;
        assert_eq!(
            (status, body["accepted"].as_u64()),
            (StatusCode::OK, Some(4_000))
        );
        loop {
            let msg = next_json(&mut healthy, Duration::from_secs(30))
                .await
                .expect("healthy watcher stays");
            let points = msg["points"].as_array();
            if points.is_some_and(|p| p.iter().any(|p| p["ts"] == last_ts.as_str())) {
                break;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = app.metrics().await;
        if dropped(&text) > dropped_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled watcher was never dropped: {}",
            text.lines()
                .filter(|l| l.contains("live"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn friends_live_now_lists_live_activities_with_their_released_position() {
    let app = spawn_app().await;
    let (ann, id) = athlete_with_activity(&app).await;
    let (me, stranger) = (app.user("Me").await, app.user("Sam").await);
    app.befriend(&ann, &me).await;
    let done = app.start(&ann, json!({"type": "WALK"})).await;
    app.patch(
        &format!("/v1/activities/{done}"),
        &ann.token,
        json!({"state": "COMPLETE"}),
    )
    .await;
    app.post_points(&ann, &id, point(app.now_ms(), 3)).await;

    let (_, now_live) = app.get("/v1/live", &me.token).await;
    let items = now_live["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{now_live}");
    assert_eq!(items[0]["activity"]["id"], id.as_str());
    assert_eq!(items[0]["position"], Value::Null, "nothing released yet");
    assert_eq!(
        app.get("/v1/live", &stranger.token).await.1,
        json!({"items": []})
    );

    // Once the point's lag has passed it is the released position.
    let mut ws = connect(&app, &id, &format!("lag=8&token={}", me.token)).await;
    while next_json(&mut ws, Duration::from_secs(15)).await.unwrap()["type"] != "points" {}
    let (_, now_live) = app.get("/v1/live", &me.token).await;
    assert_eq!(now_live["items"][0]["position"]["lat"], 48.0003);
}

/// Browsers cannot set headers on a WebSocket; the web app offers its
/// credential as a subprotocol, which no console or proxy log shows.
#[tokio::test]
async fn credentials_may_come_as_a_websocket_subprotocol_and_the_catch_up_says_whose_it_is() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let app = spawn_app().await;
    let (ann, id) = athlete_with_activity(&app).await;
    let (_, share) = app
        .post("/v1/shares", &ann.token, json!({"activity_id": id}))
        .await;
    for offered in [
        format!("trailcast, bearer.{}", ann.token),
        format!("trailcast, share.{}", share["token"].as_str().unwrap()),
    ] {
        let mut request = ws_url(&app, &id, "lag=5").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", offered.parse().unwrap());
        let (mut ws, response) = connect_async(request).await.expect("websocket connects");
        assert_eq!(response.headers()["sec-websocket-protocol"], "trailcast");
        let first = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(first["type"], "catch_up");
        assert_eq!(first["about"]["athlete"], "Ann", "{first}");
        assert_eq!(first["about"]["type"], "RUN");
    }
    let mut request = ws_url(&app, &id, "lag=5").into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "trailcast, bearer.wrong".parse().unwrap(),
    );
    assert!(
        connect_async(request).await.is_err(),
        "a wrong token is refused"
    );
    let (_, polled) = app
        .get(&format!("/v1/activities/{id}/live?lag=5"), &ann.token)
        .await;
    assert_eq!(polled["about"]["athlete"], "Ann");
    let (_, next) = app
        .get(
            &format!(
                "/v1/activities/{id}/live?lag=5&after={}",
                polled["cursor"].as_str().unwrap()
            ),
            &ann.token,
        )
        .await;
    assert!(next.get("about").is_none(), "only with a catch-up");
    let bob = app.user("Bob").await;
    let (_, card) = app.get(&format!("/v1/users/{}", ann.id), &bob.token).await;
    assert_eq!(card, json!({"id": ann.id, "name": "Ann"}));
}

/// The athlete sees every link of an activity from any device (without
/// tokens, which only the creating reply carries), newest first, and what
/// they revoke leaves the list; nobody else may list them.
#[tokio::test]
async fn the_athlete_lists_an_activitys_share_links_and_revokes_them() {
    let app = spawn_app().await;
    let (ann, id) = athlete_with_activity(&app).await;
    let bob = app.user("Bob").await;
    app.befriend(&ann, &bob).await;
    let mut made = Vec::new();
    for expires in [3600, 5] {
        let (status, share) = app
            .post(
                "/v1/shares",
                &ann.token,
                json!({"activity_id": id, "expires_in_s": expires}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{share}");
        let url = share["watch_url"].as_str().unwrap();
        assert!(url.starts_with(&format!("/watch.html?activity={id}&share=")));
        made.push(share["id"].as_str().unwrap().to_owned());
    }
    let path = format!("/v1/activities/{id}/shares");
    let (status, list) = app.get(&path, &ann.token).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [made[1].as_str(), made[0].as_str()], "newest first");
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["active"] == true)
    );
    assert!(
        !list.to_string().contains("token"),
        "no token in a list: {list}"
    );
    for who in [&bob] {
        assert_eq!(app.get(&path, &who.token).await.0, StatusCode::NOT_FOUND);
    }

    app.delete(&format!("/v1/shares/{}", made[0]), &ann.token)
        .await;
    let (_, list) = app.get(&path, &ann.token).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["id"], made[1].as_str());
}
