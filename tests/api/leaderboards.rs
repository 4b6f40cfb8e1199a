//! Leaderboards: the contract on both backends, and exactly-once counting
//! through the API (retried COMPLETE, late points).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;

use crate::helpers::now_ms;
use trailcast::domain::ActivityType;
use trailcast::store::leaderboard::{
    Board, Leaderboard, MemoryLeaderboard, RedisLeaderboard, Window,
};

use crate::helpers::{TestApp, TestUser, spawn_app, spawn_app_with, spawn_on, track};
use crate::redis::{
    SHARED_REDIS, cluster_redis, free_port, prefix, shared_redis, stall_redis, start_redis,
    until_settled,
};

async fn leaderboard_contract(board: &dyn Leaderboard) {
    let now = now_ms();
    let boards = Board::all_for(ActivityType::Ride, now, Some("FR-IDF"));
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (a1, a2, b1, c1) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );
    board.set(&boards, a, a1, 1000.0).await.unwrap();
    board.set(&boards, b, b1, 3000.0).await.unwrap();
    board.set(&boards[..2], c, c1, 2000.0).await.unwrap(); // week boards only
    board.set(&boards, a, a2, 500.5).await.unwrap();
    // Repeated (a retry after a timeout, a rebuild beside live updates):
    // nothing changes.
    for _ in 0..3 {
        board.set(&boards, a, a2, 500.5).await.unwrap();
        board.set(&boards, b, b1, 3000.0).await.unwrap();
    }
    let week = Board::new(ActivityType::Ride, Window::Week, now, None);
    assert_eq!(
        board.top(&week, 10).await.unwrap(),
        [(b, 3000.0), (c, 2000.0), (a, 1500.5)]
    );
    assert_eq!(board.top(&week, 1).await.unwrap(), [(b, 3000.0)]);
    assert_eq!(board.rank(&week, a).await.unwrap(), Some((3, 1500.5)));
    let all = Board::new(ActivityType::Ride, Window::All, now, None);
    assert_eq!(
        board.rank(&all, c).await.unwrap(),
        None,
        "c counted on week boards only"
    );
    assert_eq!(board.rank(&all, a).await.unwrap(), Some((2, 1500.5)));
    let regional = Board::new(ActivityType::Ride, Window::Month, now, Some("FR-IDF"));
    assert_eq!(
        board.top(&regional, 10).await.unwrap(),
        [(b, 3000.0), (a, 1500.5)]
    );
    // A new amount replaces the old one (late points, a shortened track).
    board.set(&boards, b, b1, 500.0).await.unwrap();
    assert_eq!(board.rank(&week, b).await.unwrap(), Some((3, 500.0)));
    // 0 takes the contribution back; an athlete left with nothing leaves.
    board.set(&boards, b, b1, 0.0).await.unwrap();
    board.set(&boards, b, b1, 0.0).await.unwrap();
    assert_eq!(board.rank(&week, b).await.unwrap(), None);
    assert_eq!(
        board.top(&week, 10).await.unwrap(),
        [(c, 2000.0), (a, 1500.5)]
    );

    // The "built" mark covers a type, window and period, with its regions.
    assert!(!board.is_built(&week).await.unwrap());
    board.mark_built(&regional).await.unwrap();
    let month = Board::new(ActivityType::Ride, Window::Month, now, None);
    assert!(board.is_built(&month).await.unwrap());
    assert!(board.is_built(&regional).await.unwrap());
    assert!(!board.is_built(&week).await.unwrap());
}

#[tokio::test]
async fn leaderboard_contract_in_process() {
    leaderboard_contract(&MemoryLeaderboard::default()).await;
}

#[tokio::test]
async fn leaderboard_contract_on_redis() {
    let prefix = prefix();
    let recent = shared_redis(&prefix).await;
    leaderboard_contract(&RedisLeaderboard::new(recent.connection(), &prefix)).await;
}

#[tokio::test]
async fn leaderboard_contract_on_a_redis_cluster() {
    let prefix = prefix();
    let store = cluster_redis(&prefix).await;
    leaderboard_contract(&RedisLeaderboard::new(store.connection(), &prefix)).await;
}

async fn completed_run_counts_exactly_once(app: &crate::helpers::TestApp) {
    let (status, ann) = app
        .call(
            Method::POST,
            "/v1/users",
            None,
            Some(json!({"name": "Ann", "region": "DE-BE"})),
        )
        .await;
    assert_eq!(
        (status, ann["region"].as_str()),
        (StatusCode::CREATED, Some("DE-BE"))
    );
    let token = ann["token"].as_str().unwrap();
    let bob = app.user("Bob").await;
    let t0 = now_ms() - 3_600_000;
    let (_, activity) = app
        .post(
            "/v1/activities",
            token,
            json!({"type": "RUN", "started_at": t0}),
        )
        .await;
    let id = activity["id"].as_str().unwrap();
    let points = track(t0, 201, 3000, 3.0); // 1,800 m
    app.post(
        &format!("/v1/activities/{id}/points"),
        token,
        json!({"points": points[..101]}),
    )
    .await;
    let path = format!("/v1/activities/{id}");
    let (_, done) = app
        .patch(
            &path,
            token,
            json!({"state": "COMPLETE", "at": t0 + 700_000}),
        )
        .await;
    let first = done["stats"]["distance_m"].as_f64().unwrap();
    app.patch(&path, token, json!({"state": "COMPLETE"})).await; // a retry adds nothing

    let (status, board) = app
        .get("/v1/leaderboards/run?window=week", &bob.token)
        .await;
    assert_eq!(status, StatusCode::OK, "{board}");
    assert_eq!(board["items"][0]["athlete"]["name"], "Ann");
    assert_eq!(
        board["items"][0]["distance_m"].as_f64().unwrap(),
        (first * 10.0).round() / 10.0
    );
    assert_eq!(board["me"], serde_json::Value::Null, "Bob has not run");

    // Late points after the finish add only what they changed.
    app.post(
        &format!("/v1/activities/{id}/points"),
        token,
        json!({"points": points[101..]}),
    )
    .await;
    let (_, after) = app.get(&path, token).await;
    let total = after["stats"]["distance_m"].as_f64().unwrap();
    assert!(total > first + 800.0, "{first} then {total}");
    for q in [
        "window=week",
        "window=month",
        "window=all",
        "window=all&region=DE-BE",
    ] {
        let (_, board) = app.get(&format!("/v1/leaderboards/RUN?{q}"), token).await;
        assert_eq!(board["items"].as_array().unwrap().len(), 1, "{q}: {board}");
        assert!(
            (board["items"][0]["distance_m"].as_f64().unwrap() - total).abs() < 0.2,
            "{q}: {board}"
        );
        assert_eq!(board["me"]["rank"], 1, "{q}");
    }
    let (_, other_region) = app
        .get("/v1/leaderboards/RUN?window=all&region=FR-IDF", token)
        .await;
    assert_eq!(other_region["items"], json!([]));
    let (_, rides) = app.get("/v1/leaderboards/ride", token).await;
    assert_eq!(rides["items"], json!([]));
    assert_eq!(
        app.get("/v1/leaderboards/teleport", token).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/v1/leaderboards/run?window=year", token).await.0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn a_finished_activity_counts_exactly_once_in_process() {
    completed_run_counts_exactly_once(&spawn_app().await).await;
}

#[tokio::test]
async fn a_finished_activity_counts_exactly_once_on_a_redis_cluster() {
    let prefix = prefix();
    cluster_redis(&prefix).await;
    let app = spawn_app_with(|c| {
        c.redis_cluster_nodes = crate::redis::cluster_nodes();
        c.redis_prefix = prefix;
    })
    .await;
    completed_run_counts_exactly_once(&app).await;
}

#[tokio::test]
async fn a_finished_activity_counts_exactly_once_on_redis() {
    let prefix = prefix();
    let app = spawn_app_with(|c| {
        c.redis_url = Some(SHARED_REDIS.to_string());
        c.redis_prefix = prefix;
    })
    .await;
    completed_run_counts_exactly_once(&app).await;
}

/// A private activity's distance is never on a board with the athlete's
/// name; made visible later it counts, made private again it leaves.
#[tokio::test]
async fn private_activities_stay_off_the_boards() {
    let app = spawn_app().await;
    let (ann, bob) = (app.user("Ann").await, app.user("Bob").await);
    let t0 = app.now_ms() - 600_000;
    let id = app
        .start(
            &ann,
            json!({"type": "RUN", "started_at": t0, "visibility": "private"}),
        )
        .await;
    app.post_points(
        &ann,
        &id,
        json!({"points": crate::helpers::track(t0 + 1_000, 200, 1_000, 3.0)}),
    )
    .await;
    let path = format!("/v1/activities/{id}");
    let (status, _) = app
        .patch(&path, &ann.token, json!({"state": "COMPLETE"}))
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let board = "/v1/leaderboards/RUN?window=all";
    let (_, seen) = app.get(board, &bob.token).await;
    assert_eq!(seen["items"], json!([]), "{seen}");
    app.patch(&path, &ann.token, json!({"visibility": "public"}))
        .await;
    let (_, seen) = app.get(board, &bob.token).await;
    assert_eq!(seen["items"][0]["athlete"]["id"], ann.id.as_str(), "{seen}");
    assert!(seen["items"][0]["distance_m"].as_f64().unwrap() > 500.0);
    app.patch(&path, &ann.token, json!({"visibility": "private"}))
        .await;
    let (_, seen) = app.get(board, &bob.token).await;
    assert_eq!(seen["items"], json!([]), "name and distance gone: {seen}");
}

/// Ann's run of about 1.8 km, not finished yet.
async fn run(app: &TestApp) -> (TestUser, String) {
    let ann = app.user("Ann").await;
    let t0 = app.now_ms() - 3_600_000;
    let id = app
        .start(&ann, json!({"type": "RUN", "started_at": t0}))
        .await;
    app.post_points(&ann, &id, json!({"points": track(t0, 201, 3000, 3.0)}))
        .await;
    (ann, id)
}

/// Finishes the run; returns its distance.
async fn finish(app: &TestApp, ann: &TestUser, id: &str) -> f64 {
    let (status, done) = app
        .patch(
            &format!("/v1/activities/{id}"),
            &ann.token,
            json!({"state": "COMPLETE"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    done["stats"]["distance_m"].as_f64().unwrap()
}

/// Ann's finished run; returns her and its distance.
async fn finished_run(app: &TestApp) -> (TestUser, f64) {
    let (ann, id) = run(app).await;
    let distance = finish(app, &ann, &id).await;
    (ann, distance)
}

/// Ann's distance on this week's run board, as `who` sees it.
async fn on_board(app: &TestApp, who: &TestUser) -> (StatusCode, Value, Option<f64>) {
    let (status, board) = app
        .get("/v1/leaderboards/RUN?window=week", &who.token)
        .await;
    let d = board["items"][0]["distance_m"].as_f64();
    (status, board, d)
}

/// The in-process boards live in memory: after a restart they are rebuilt
/// from the stored activities on first read.
#[tokio::test]
async fn boards_are_rebuilt_from_stored_activities_after_a_restart() {
    let mut app = spawn_app().await;
    let (ann, distance) = finished_run(&app).await;
    let (_, _, before) = on_board(&app, &ann).await;
    assert_eq!(before, Some((distance * 10.0).round() / 10.0));
    let keep = app.keep_data();
    app.shutdown().await.unwrap();
    let again = spawn_on(app.data_dir.clone(), |_| {}).await;
    let (status, board, after) = on_board(&again, &ann).await;
    assert_eq!(status, StatusCode::OK, "{board}");
    assert_eq!(after, before, "{board}");
    assert_eq!(board["me"]["rank"], 1);
    drop(keep);
}

/// Its own Redis: stalled during COMPLETE (the write times out and is
/// retried while Redis still holds the first one), then down (503, not
/// 500), then back empty (the board is rebuilt, counted once).
#[tokio::test]
async fn boards_survive_a_redis_stall_an_outage_and_a_restart_empty() {
    let port = free_port();
    let mut redis = start_redis(port).await;
    let url = format!("redis://127.0.0.1:{port}");
    let app = spawn_app_with(|c| c.redis_url = Some(url.clone())).await;
    let bob = app.user("Bob").await;
    let (ann, id) = run(&app).await;

    // A 3 s stall: every try within it times out (500 ms) and is retried
    // by the outbox each second; Redis applies them all afterwards.
    let stall = stall_redis(&url, 3).await;
    let distance = finish(&app, &ann, &id).await;
    stall.await.unwrap();
    until_settled(&app).await;
    let (status, board, counted) = on_board(&app, &bob).await;
    assert_eq!(status, StatusCode::OK, "{board}");
    assert_eq!(
        counted,
        Some((distance * 10.0).round() / 10.0),
        "counted exactly once across the stall: {board}"
    );

    // Down: a clear 503 with Retry-After.
    redis.kill().await.unwrap();
    let response = app
        .client
        .get(format!("{}/v1/leaderboards/RUN", app.base))
        .bearer_auth(&bob.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "leaderboard_unavailable", "{body}");

    // Back, empty: rebuilt from the stored activity, counted once.
    let _redis = start_redis(port).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let (status, board, rebuilt) = loop {
        let answer = on_board(&app, &bob).await;
        if answer.0 == StatusCode::OK || Instant::now() > deadline {
            break answer;
        }
        // The connection manager reconnects on the next request.
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, StatusCode::OK, "{board}");
    assert_eq!(rebuilt, counted, "{board}");
    assert_eq!(board["items"][0]["athlete"]["id"], ann.id.as_str());
}
