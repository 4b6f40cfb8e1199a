//! Leaderboards: the contract on both backends, and exactly-once counting
//! through the API (retried COMPLETE, late points).

use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::now_ms;
use trailcast::domain::ActivityType;
use trailcast::store::leaderboard::{
    Board, Leaderboard, MemoryLeaderboard, RedisLeaderboard, Window,
};

use crate::helpers::{spawn_app, spawn_app_with, track};
use crate::redis::{SHARED_REDIS, prefix, shared_redis};

async fn leaderboard_contract(board: &dyn Leaderboard) {
    let now = now_ms();
    let boards = Board::all_for(ActivityType::Ride, now, Some("FR-IDF"));
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    board.add(&boards, a, 1000.0).await.unwrap();
    board.add(&boards, b, 3000.0).await.unwrap();
    board.add(&boards[..2], c, 2000.0).await.unwrap(); // week boards only
    board.add(&boards, a, 500.5).await.unwrap();
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
    board.add(&boards, b, -2500.0).await.unwrap();
    assert_eq!(
        board.rank(&week, b).await.unwrap(),
        Some((3, 500.0)),
        "deltas may be negative"
    );
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
