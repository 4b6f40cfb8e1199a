//! Privacy the athlete controls: zones and hidden ends keep places out of
//! everything others receive (poll, WebSocket, `/v1/live`, route, GPX);
//! the athlete sees who watches and can remove one viewer.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, spawn_app};
use crate::live::{Ws, close_reason, connect, next_json};

/// Metres per degree of latitude.
const M_PER_DEG: f64 = 111_195.0;
const HOME: (f64, f64) = (48.0, 11.0);

fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (p1, p2) = (a.0.to_radians(), b.0.to_radians());
    let dl = (b.1 - a.1).to_radians();
    let h = ((p2 - p1) / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6_371_008.8 * h.sqrt().asin()
}

/// A 1,200 m run due north from HOME, one point a second at 3 m/s, ending
/// `secs_ago` before now.
fn run(end_ms: i64) -> Vec<Value> {
    (0..400)
        .map(|i| {
            json!({
                "ts": end_ms - (399 - i) * 1000,
                "lat": HOME.0 + i as f64 * 3.0 / M_PER_DEG,
                "lng": HOME.1,
            })
        })
        .collect()
}

fn end_of_run() -> (f64, f64) {
    (HOME.0 + 399.0 * 3.0 / M_PER_DEG, HOME.1)
}

fn coords(points: &Value) -> Vec<(f64, f64)> {
    points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["lat"].as_f64().unwrap(), p["lng"].as_f64().unwrap()))
        .collect()
}

/// The `lat`/`lon` of every `trkpt` of a GPX document.
fn gpx_coords(gpx: &str) -> Vec<(f64, f64)> {
    let attr = |tag: &str, name: &str| -> f64 {
        let at = tag.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        tag[at..at + tag[at..].find('"').unwrap()].parse().unwrap()
    };
    gpx.split("<trkpt ")
        .skip(1)
        .map(|tag| (attr(tag, "lat"), attr(tag, "lon")))
        .collect()
}

fn none_within(points: &[(f64, f64)], zones: &[((f64, f64), f64)], what: &str) {
    for p in points {
        for (centre, radius) in zones {
            assert!(
                distance_m(*p, *centre) > *radius,
                "{what}: {p:?} is inside the zone around {centre:?}"
            );
        }
    }
}

async fn set_zones(app: &TestApp, user: &TestUser, zones: Value) -> (StatusCode, Value) {
    app.call(
        Method::PUT,
        "/v1/me/privacy-zones",
        Some(&user.token),
        Some(zones),
    )
    .await
}

/// Ann, her friend Bob, and Ann's friends-visible activity with the whole
/// run posted and released to watchers.
async fn ann_runs(app: &TestApp) -> (TestUser, TestUser, String) {
    let (ann, bob) = (app.user("Ann").await, app.user("Bob").await);
    app.befriend(&ann, &bob).await;
    let now = app.now_ms();
    let id = app
        .start(&ann, json!({"type": "RUN", "started_at": now - 500_000}))
        .await;
    let (status, body) = app
        .post_points(&ann, &id, json!({"points": run(now - 10_000)}))
        .await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (StatusCode::OK, Some(400)),
        "{body}"
    );
    // Playback runs the lag behind arrival: let it pass (paused clock).
    tokio::time::sleep(Duration::from_secs(6)).await;
    (ann, bob, id)
}

async fn ws_catch_up(app: &TestApp, id: &str, token: &str) -> (Ws, Vec<(f64, f64)>) {
    let mut ws = connect(app, id, &format!("lag=5&token={token}")).await;
    let first = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(first["type"], "catch_up", "{first}");
    assert_eq!(first["more"], false, "400 points fit one message");
    (ws, coords(&first["points"]))
}

#[tokio::test(start_paused = true)]
async fn zones_keep_the_start_and_end_from_everyone_but_the_athlete() {
    let app = spawn_app().await;
    let zones = [(HOME, 200.0), (end_of_run(), 150.0)];
    let (ann, bob, id) = ann_runs(&app).await;
    let body = json!(
        zones
            .iter()
            .map(|((lat, lng), r)| json!({"lat": lat, "lng": lng, "radius_m": r}))
            .collect::<Vec<_>>()
    );
    assert_eq!(set_zones(&app, &ann, body).await.0, StatusCode::OK);
    let (_, stored) = app.get("/v1/me/privacy-zones", &ann.token).await;
    assert_eq!(stored.as_array().unwrap().len(), 2);

    // A friend: poll, WebSocket, route, GPX and /v1/live show nothing inside.
    let live = format!("/v1/activities/{id}/live?lag=5");
    let (_, polled) = app.get(&live, &bob.token).await;
    let seen = coords(&polled["points"]);
    none_within(&seen, &zones, "poll");
    // 200 m and 150 m of a 1,197 m straight run are hidden, the rest shown.
    assert!((270..=290).contains(&seen.len()), "{}", seen.len());
    let (_ws, over_ws) = ws_catch_up(&app, &id, &bob.token).await;
    none_within(&over_ws, &zones, "websocket");
    assert_eq!(over_ws, seen);
    let (_, route) = app
        .get(&format!("/v1/activities/{id}/route"), &bob.token)
        .await;
    none_within(&coords(&route["points"]), &zones, "route");
    let gpx = app
        .client
        .get(format!("{}/v1/activities/{id}/route?format=gpx", app.base))
        .bearer_auth(&bob.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let in_gpx = gpx_coords(&gpx);
    none_within(&in_gpx, &zones, "gpx");
    assert_eq!(in_gpx.len(), seen.len());
    let (_, friends_live) = app.get("/v1/live", &bob.token).await;
    assert_eq!(friends_live["items"][0]["activity"]["id"], id.as_str());
    assert_eq!(
        friends_live["items"][0]["position"],
        Value::Null,
        "the latest position is inside a zone"
    );

    // The athlete sees it all; statistics are those of the full track.
    let (_, own) = app.get(&live, &ann.token).await;
    assert_eq!(own["points"].as_array().unwrap().len(), 400);
    let (_, own_route) = app
        .get(&format!("/v1/activities/{id}/route"), &ann.token)
        .await;
    assert_eq!(own_route["points"].as_array().unwrap().len(), 400);
    let (_, as_bob) = app.get(&format!("/v1/activities/{id}"), &bob.token).await;
    let (_, as_ann) = app.get(&format!("/v1/activities/{id}"), &ann.token).await;
    assert_eq!(as_bob["stats"], as_ann["stats"]);
    assert!(as_bob["stats"]["distance_m"].as_f64().unwrap() > 1_100.0);
}

#[tokio::test(start_paused = true)]
async fn zone_changes_apply_to_past_activities_too() {
    let app = spawn_app().await;
    let (ann, bob, id) = ann_runs(&app).await;
    let path = format!("/v1/activities/{id}");
    app.patch(&path, &ann.token, json!({"state": "COMPLETE"}))
        .await;
    let route = format!("/v1/activities/{id}/route");
    let count = |body: Value| body["points"].as_array().unwrap().len();
    assert_eq!(count(app.get(&route, &bob.token).await.1), 400);

    let zone = json!([{"lat": HOME.0, "lng": HOME.1, "radius_m": 300}]);
    assert_eq!(set_zones(&app, &ann, zone).await.0, StatusCode::OK);
    let (_, after) = app.get(&route, &bob.token).await;
    none_within(&coords(&after["points"]), &[(HOME, 300.0)], "route");
    assert!(count(after) < 305);

    assert_eq!(set_zones(&app, &ann, json!([])).await.0, StatusCode::OK);
    assert_eq!(count(app.get(&route, &bob.token).await.1), 400);
}

#[tokio::test]
async fn bad_zones_and_hidden_ends_are_refused_with_a_reason() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let zone = |r: f64| json!({"lat": 1.0, "lng": 2.0, "radius_m": r});
    for (body, code) in [
        (json!([zone(99.0)]), "invalid_zone"),
        (json!([zone(1_001.0)]), "invalid_zone"),
        (
            json!([{"lat": 91, "lng": 0, "radius_m": 200}]),
            "invalid_zone",
        ),
        (json!(vec![zone(200.0); 11]), "too_many_zones"),
    ] {
        let (status, reply) = set_zones(&app, &ann, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
        assert_eq!(reply["error"]["code"], code, "{reply}");
    }
    let (_, zones) = app.get("/v1/me/privacy-zones", &ann.token).await;
    assert_eq!(zones, json!([]), "nothing refused was stored");
    let id = app.start(&ann, json!({"type": "RUN"})).await;
    let (status, reply) = app
        .patch(
            &format!("/v1/activities/{id}"),
            &ann.token,
            json!({"hide_ends_m": 1_001}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid_hide_ends");
}

#[tokio::test(start_paused = true)]
async fn hidden_ends_cover_the_start_while_live_and_both_ends_once_finished() {
    let app = spawn_app().await;
    let (ann, bob, id) = ann_runs(&app).await;
    let path = format!("/v1/activities/{id}");
    let (status, view) = app
        .patch(&path, &ann.token, json!({"hide_ends_m": 250}))
        .await;
    assert_eq!(
        (status, &view["hide_ends_m"]),
        (StatusCode::OK, &json!(250))
    );
    let live = format!("/v1/activities/{id}/live?lag=5");
    let (_, polled) = app.get(&live, &bob.token).await;
    let seen = coords(&polled["points"]);
    none_within(&seen, &[(HOME, 250.0)], "live poll");
    assert_eq!(
        seen.last(),
        Some(&end_of_run()),
        "the end is where Ann is now"
    );

    app.patch(&path, &ann.token, json!({"state": "COMPLETE"}))
        .await;
    let (_, route) = app.get(&format!("{path}/route"), &bob.token).await;
    let seen = coords(&route["points"]);
    none_within(&seen, &[(HOME, 250.0), (end_of_run(), 250.0)], "route");
    assert!(!seen.is_empty());
    let (_, own) = app.get(&format!("{path}/route"), &ann.token).await;
    assert_eq!(own["points"].as_array().unwrap().len(), 400);
}

#[tokio::test(start_paused = true)]
async fn the_athlete_sees_who_watches_and_removing_one_viewer_closes_only_theirs() {
    let app = spawn_app().await;
    let (ann, bob, id) = ann_runs(&app).await;
    let cid = app.user("Cid").await;
    app.befriend(&ann, &cid).await;
    let (_, share) = app
        .post("/v1/shares", &ann.token, json!({"activity_id": id}))
        .await;
    let share_token = share["token"].as_str().unwrap().to_string();

    let (mut bob_ws, _) = ws_catch_up(&app, &id, &bob.token).await;
    let (mut cid_ws, _) = ws_catch_up(&app, &id, &cid.token).await;
    let (_own_ws, _) = ws_catch_up(&app, &id, &ann.token).await;
    let mut share_ws = connect(&app, &id, &format!("lag=5&share={share_token}")).await;
    assert_eq!(
        next_json(&mut share_ws, Duration::from_secs(5))
            .await
            .unwrap()["type"],
        "catch_up"
    );
    let viewers = format!("/v1/activities/{id}/viewers");
    let (status, list) = app.get(&viewers, &ann.token).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let names: Vec<&str> = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{list}");
    assert!(names.contains(&"Bob") && names.contains(&"Cid"), "{list}");
    assert_eq!(list["shares"][0]["share_id"], share["id"]);
    assert_eq!(list["shares"][0]["viewers"], 1);
    assert_eq!(list["total"], 3, "the athlete does not count: {list}");
    assert_eq!(
        app.get(&viewers, &bob.token).await.0,
        StatusCode::NOT_FOUND,
        "only the athlete sees the audience"
    );

    let (status, _) = app
        .delete(&format!("{viewers}/{}", bob.id), &ann.token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        close_reason(&mut bob_ws, Duration::from_secs(2)).await,
        (4003, "access revoked".into())
    );
    let live = format!("/v1/activities/{id}/live?lag=5");
    assert_eq!(app.get(&live, &bob.token).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        app.get(&format!("/v1/activities/{id}"), &bob.token).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.get(&live, &cid.token).await.0, StatusCode::OK);
    // Cid's socket still plays: a new point reaches it.
    let t = app.now_ms();
    app.post_points(
        &ann,
        &id,
        json!({"ts": t, "lat": end_of_run().0 + 1e-4, "lng": HOME.1}),
    )
    .await;
    let message = next_json(&mut cid_ws, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(message["type"], "points", "{message}");
    let (_, list) = app.get(&viewers, &ann.token).await;
    assert_eq!(list["removed"], json!([bob.id]));
    assert!(
        list["users"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["name"] != "Bob"),
        "{list}"
    );
    // Still a friend: Bob sees Ann's other activities.
    let (_, friends) = app.get("/v1/friends", &bob.token).await;
    assert_eq!(friends["items"][0]["id"], ann.id.as_str());
}

#[tokio::test(start_paused = true)]
async fn making_a_live_activity_private_closes_friends_sockets_at_once() {
    let app = spawn_app().await;
    let (ann, bob, id) = ann_runs(&app).await;
    let (mut bob_ws, _) = ws_catch_up(&app, &id, &bob.token).await;
    let (status, view) = app
        .patch(
            &format!("/v1/activities/{id}"),
            &ann.token,
            json!({"visibility": "private"}),
        )
        .await;
    assert_eq!(
        (status, &view["visibility"]),
        (StatusCode::OK, &json!("private"))
    );
    assert_eq!(
        view["state"], "STARTED",
        "a settings change keeps the state"
    );
    assert_eq!(
        close_reason(&mut bob_ws, Duration::from_secs(2)).await,
        (4003, "access revoked".into())
    );
    let live = format!("/v1/activities/{id}/live?lag=5");
    assert_eq!(app.get(&live, &bob.token).await.0, StatusCode::NOT_FOUND);
}

/// Two server processes sharing Redis and a CQL server: the audience is
/// the same on both, and removing a viewer through node A closes their
/// socket on node B within two seconds (real time: separate processes).
#[tokio::test]
async fn viewers_are_seen_and_removed_across_nodes() {
    let nodes = crate::cluster::two_nodes().await;
    let (a, b) = (&nodes.a, &nodes.b);
    let (ann, bob, cid) = (
        a.user("Ann").await,
        a.user("Bob").await,
        a.user("Cid").await,
    );
    a.befriend(&ann, &bob).await;
    a.befriend(&ann, &cid).await;
    let id = a.start(&ann, json!({"type": "RUN"})).await;

    let (mut bob_ws, _) = ws_catch_up(b, &id, &bob.token).await;
    let (cid_ws, _) = ws_catch_up(a, &id, &cid.token).await;
    let viewers = format!("/v1/activities/{id}/viewers");
    for node in [&a, &b] {
        let (status, list) = node.get(&viewers, &ann.token).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        assert_eq!(list["total"], 2, "both nodes' watchers: {list}");
    }

    let (status, _) = a.delete(&format!("{viewers}/{}", bob.id), &ann.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        close_reason(&mut bob_ws, Duration::from_secs(2)).await,
        (4003, "access revoked".into())
    );
    let (_, list) = b.get(&viewers, &ann.token).await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["users"][0]["name"], "Cid");
    let (status, _) = b
        .get(&format!("/v1/activities/{id}/live?lag=5"), &bob.token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    drop(cid_ws);
}
