use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{now_ms, spawn_app, track};

const MIN: i64 = 60_000;

fn ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[tokio::test]
async fn a_new_activity_is_started_and_has_the_contract_shape() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let (status, a) = app
        .post("/v1/activities", &ann.token, json!({"type": "RIDE"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(a["state"], "STARTED");
    assert_eq!(a["type"], "RIDE");
    assert_eq!(a["visibility"], "friends");
    assert_eq!(a["athlete_id"], ann.id.as_str());
    assert_eq!(a["events"].as_array().unwrap().len(), 1);
    assert!(a["started_at"].as_str().unwrap().ends_with('Z'));
    for key in [
        "distance_m",
        "moving_time_s",
        "elapsed_time_s",
        "avg_pace_s_per_km",
        "avg_speed_m_s",
        "elevation_gain_m",
        "calories_kcal",
        "points",
    ] {
        assert!(a["stats"].get(key).is_some(), "stats.{key} missing: {a}");
    }
    assert_eq!(a["splits"], json!([]));
    let (status, body) = app
        .post("/v1/activities", &ann.token, json!({"type": "TELEPORT"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

#[tokio::test]
async fn strava_example_gives_15_min_moving_and_20_min_elapsed() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let t0 = now_ms() - 30 * MIN;
    let id = app
        .start(&ann, json!({"type": "RUN", "started_at": ts(t0)}))
        .await;
    let path = format!("/v1/activities/{id}");
    for (state, at) in [("PAUSED", 10), ("STARTED", 15), ("COMPLETE", 20)] {
        let (status, body) = app
            .patch(
                &path,
                &ann.token,
                json!({"state": state, "at": ts(t0 + at * MIN)}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["state"], state);
    }
    let (_, a) = app.get(&path, &ann.token).await;
    assert_eq!(a["stats"]["moving_time_s"], 900.0);
    assert_eq!(a["stats"]["elapsed_time_s"], 1200.0);
    assert_eq!(a["finished_at"], ts(t0 + 20 * MIN));
    let states: Vec<&str> = a["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["STARTED", "PAUSED", "STARTED", "COMPLETE"]);
}

#[tokio::test]
async fn illegal_transitions_are_409_and_retries_are_harmless() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let id = app.start(&ann, json!({"type": "RUN"})).await;
    let path = format!("/v1/activities/{id}");
    assert_eq!(
        app.patch(&path, &ann.token, json!({"state": "COMPLETE"}))
            .await
            .0,
        StatusCode::OK
    );
    for state in ["STARTED", "PAUSED", "DISCARDED"] {
        let (status, body) = app.patch(&path, &ann.token, json!({"state": state})).await;
        assert_eq!(status, StatusCode::CONFLICT, "{state}: {body}");
        assert_eq!(body["error"]["code"], "illegal_state_change");
    }
    let (status, body) = app
        .patch(&path, &ann.token, json!({"state": "COMPLETE"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["events"].as_array().unwrap().len(),
        2,
        "a retried COMPLETE adds no event"
    );
    let (status, _) = app
        .patch(&path, &ann.token, json!({"state": "SLEEPING"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn state_change_times_are_validated() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let t0 = now_ms() - 10 * MIN;
    let id = app
        .start(&ann, json!({"type": "RUN", "started_at": t0}))
        .await;
    let path = format!("/v1/activities/{id}");
    let (status, body) = app
        .patch(
            &path,
            &ann.token,
            json!({"state": "PAUSED", "at": ts(t0 - MIN)}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_at"))
    );
    let (status, _) = app
        .patch(
            &path,
            &ann.token,
            json!({"state": "PAUSED", "at": ts(now_ms() + 60 * MIN)}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, a) = app.get(&path, &ann.token).await;
    assert_eq!(
        (status, a["state"].as_str()),
        (StatusCode::OK, Some("STARTED")),
        "nothing changed"
    );
    let (status, _) = app
        .post(
            "/v1/activities",
            &ann.token,
            json!({"type": "RUN", "started_at": ts(now_ms() + 60 * MIN)}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

async fn visible(app: &crate::helpers::TestApp, token: &str, id: &str) -> StatusCode {
    app.get(&format!("/v1/activities/{id}"), token).await.0
}

#[tokio::test]
async fn visibility_decides_who_sees_and_everyone_else_gets_404() {
    let app = spawn_app().await;
    let (ann, friend, stranger) = (
        app.user("Ann").await,
        app.user("Fay").await,
        app.user("Sam").await,
    );
    app.befriend(&ann, &friend).await;
    let friends_only = app.start(&ann, json!({"type": "RUN"})).await;
    let private = app
        .start(&ann, json!({"type": "RUN", "visibility": "private"}))
        .await;
    let public = app
        .start(&ann, json!({"type": "RUN", "visibility": "public"}))
        .await;

    let cases = [
        (&friends_only, StatusCode::OK, StatusCode::NOT_FOUND),
        (&private, StatusCode::NOT_FOUND, StatusCode::NOT_FOUND),
        (&public, StatusCode::OK, StatusCode::OK),
    ];
    for (id, for_friend, for_stranger) in cases {
        assert_eq!(visible(&app, &ann.token, id).await, StatusCode::OK);
        assert_eq!(
            visible(&app, &friend.token, id).await,
            for_friend,
            "friend, {id}"
        );
        assert_eq!(
            visible(&app, &stranger.token, id).await,
            for_stranger,
            "stranger, {id}"
        );
        let (status, _) = app
            .get(&format!("/v1/activities/{id}/route"), &stranger.token)
            .await;
        assert_eq!(status, for_stranger);
    }
    let missing = uuid::Uuid::now_v7().to_string();
    let (status, body) = app
        .get(&format!("/v1/activities/{missing}"), &stranger.token)
        .await;
    let (_, hidden) = app
        .get(&format!("/v1/activities/{private}"), &stranger.token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body, hidden,
        "a hidden activity looks exactly like a missing one"
    );

    // Only the athlete changes state; a friend who can see it cannot.
    let (status, _) = app
        .patch(
            &format!("/v1/activities/{friends_only}"),
            &friend.token,
            json!({"state": "PAUSED"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.patch(
        &format!("/v1/activities/{friends_only}"),
        &ann.token,
        json!({"state": "DISCARDED"}),
    )
    .await;
    assert_eq!(
        visible(&app, &friend.token, &friends_only).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        visible(&app, &ann.token, &friends_only).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn route_comes_as_json_geojson_and_gpx() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let t0 = now_ms() - 10 * MIN;
    let id = app
        .start(&ann, json!({"type": "RUN", "started_at": t0}))
        .await;
    let mut points = track(t0, 5, 3000, 3.0);
    points[2]["alt"] = json!(512.5);
    points.reverse();
    app.post_points(&ann, &id, json!({"points": points})).await;

    let (status, route) = app
        .get(&format!("/v1/activities/{id}/route"), &ann.token)
        .await;
    assert_eq!(status, StatusCode::OK);
    let times: Vec<&str> = route["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["ts"].as_str().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!((times.len(), &times), (5, &sorted), "time-ordered");
    assert_eq!(route["points"][2]["alt"], 512.5);

    let (_, geo) = app
        .get(
            &format!("/v1/activities/{id}/route?format=geojson"),
            &ann.token,
        )
        .await;
    assert_eq!(geo["geometry"]["type"], "LineString");
    assert_eq!(geo["geometry"]["coordinates"][0], json!([11.0, 48.0]));
    assert_eq!(
        geo["geometry"]["coordinates"][2].as_array().unwrap().len(),
        3
    );

    let resp = app
        .client
        .get(format!("{}/v1/activities/{id}/route?format=gpx", app.base))
        .bearer_auth(&ann.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/gpx+xml");
    let gpx = resp.text().await.unwrap();
    assert!(gpx.starts_with("<?xml") && gpx.contains("<gpx version=\"1.1\""));
    assert_eq!(gpx.matches("<trkpt ").count(), 5);
    assert!(gpx.contains("<ele>512.5</ele>"));

    let (status, body) = app
        .get(&format!("/v1/activities/{id}/route?format=kml"), &ann.token)
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, Value::from("bad_request"))
    );
}
