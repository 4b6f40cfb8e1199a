//! Phones' own tracker apps: devices, each app's wire format exactly as it
//! sends it, and the automatic activities the fixes go to.

use std::time::Duration;

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, spawn_app};
use crate::live::{connect, next_json};

struct Phone {
    key: String,
    urls: Value,
}

async fn device(app: &TestApp, user: &TestUser, body: Value) -> Phone {
    let (status, created) = app.post("/v1/devices", &user.token, body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    Phone {
        key: created["key"].as_str().unwrap().to_string(),
        urls: created["urls"].clone(),
    }
}

fn secs(ms: i64) -> i64 {
    ms / 1000
}

fn iso(ms: i64) -> String {
    trailcast::domain::time::to_rfc3339(ms)
}

/// The user's activities, newest first.
async fn activities(app: &TestApp, user: &TestUser) -> Vec<Value> {
    let (_, page) = app.get("/v1/activities?limit=50", &user.token).await;
    page["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn devices_are_made_listed_and_revoked_at_once() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let phone = device(&app, &ann, json!({"name": "Pixel 8", "type": "RIDE"})).await;
    assert!(phone.key.starts_with("tc_"));
    let owntracks = phone.urls["owntracks"].as_str().unwrap();
    assert_eq!(
        owntracks,
        format!("{}/ingest/owntracks/{}", app.base, phone.key)
    );
    assert!(
        phone.urls["gpslogger"]
            .as_str()
            .unwrap()
            .contains("lat=%LAT&lon=%LON&time=%TIME")
    );
    let (_, list) = app.get("/v1/devices", &ann.token).await;
    let item = &list["items"][0];
    assert_eq!(
        (item["name"].as_str(), item["type"].as_str()),
        (Some("Pixel 8"), Some("RIDE"))
    );
    assert!(
        !list.to_string().contains(&phone.key),
        "keys are shown once"
    );
    let (status, bad) = app
        .post("/v1/devices", &ann.token, json!({"name": ""}))
        .await;
    assert_eq!(
        (status.as_u16(), &bad["error"]["code"]),
        (422, &json!("invalid_name"))
    );

    let fix = json!({"_type": "location", "lat": 52.5, "lon": 13.4, "tst": secs(app.now_ms())});
    let post = |url: String| {
        let client = app.client.clone();
        let fix = fix.clone();
        async move { client.post(url).json(&fix).send().await.unwrap().status() }
    };
    assert_eq!(post(owntracks.to_string()).await, StatusCode::OK);
    let bob = app.user("Bob").await;
    let id = item["id"].as_str().unwrap();
    assert_eq!(
        app.delete(&format!("/v1/devices/{id}"), &bob.token).await.0,
        StatusCode::NOT_FOUND,
        "only the owner revokes"
    );
    let (status, _) = app.delete(&format!("/v1/devices/{id}"), &ann.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        post(owntracks.to_string()).await,
        StatusCode::UNAUTHORIZED,
        "revoked at once"
    );
    assert_eq!(
        post(format!("{}/ingest/owntracks/tc_wrong", app.base)).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn owntracks_posts_one_message_and_gets_friends_back() {
    let app = spawn_app().await;
    let (ann, bob) = (app.user("Ann").await, app.user("Bob").await);
    app.befriend(&ann, &bob).await;
    let phone = device(&app, &ann, json!({"name": "iPhone"})).await;
    let t = app.now_ms() - 20_000;
    // Bob is out too, recording in the web app.
    let bobs = app
        .start(&bob, json!({"type": "RUN", "started_at": t - 60_000}))
        .await;
    app.post_points(
        &bob,
        &bobs,
        json!({"ts": t - 30_000, "lat": 48.2, "lng": 11.6}),
    )
    .await;

    // OwnTracks HTTP mode: key as the Basic password, identity headers.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("ann:{}", phone.key));
    let send = |body: Value| {
        let client = app.client.clone();
        let url = format!("{}/ingest/owntracks", app.base);
        let basic = basic.clone();
        async move {
            let resp = client
                .post(url)
                .header("authorization", format!("Basic {basic}"))
                .header("x-limit-u", "ann")
                .header("x-limit-d", "iphone")
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    for k in 0..5 {
        let body = json!({"_type": "location", "tid": "an", "lat": 52.5 + k as f64 * 1e-4, "lon": 13.4,
            "tst": secs(t) + k * 3, "acc": 8, "alt": 40, "vel": 18, "cog": 0, "batt": 90 - k,
            "bs": 1, "conn": "m", "t": "u", "topic": "owntracks/ann/iphone", "created_at": secs(t) + k * 3});
        let (status, reply) = send(body).await;
        assert_eq!(status, StatusCode::OK);
        assert!(reply.is_array(), "{reply}");
    }
    let (_, reply) = send(json!({"_type": "transition", "event": "leave"})).await;
    let tids: Vec<&str> = reply
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["tid"].as_str().unwrap())
        .collect();
    // Bob's position is released once the lag has passed since it arrived.
    let mut tries = 0;
    let mut friends = reply.clone();
    while friends.as_array().unwrap().is_empty() {
        tries += 1;
        assert!(tries < 100, "Bob never showed up: {tids:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        friends = send(json!({"_type": "card"})).await.1;
    }
    let bob_msg = &friends[0];
    assert_eq!(
        (bob_msg["_type"].as_str(), bob_msg["tid"].as_str()),
        (Some("location"), Some("BO"))
    );
    assert_eq!(
        (bob_msg["lat"].as_f64(), bob_msg["tst"].as_i64()),
        (Some(48.2), Some(secs(t - 30_000)))
    );
    let (status, junk) = send(json!({"_type": "location", "lat": "north"})).await;
    assert_eq!(
        (status, junk.is_array()),
        (StatusCode::OK, true),
        "never a 4xx for what a phone sends"
    );

    let auto = activities(&app, &ann).await;
    assert_eq!(auto.len(), 1, "one automatic activity");
    let id = auto[0]["id"].as_str().unwrap();
    assert_eq!(auto[0]["state"], "STARTED");
    let (_, route) = app
        .get(&format!("/v1/activities/{id}/route"), &ann.token)
        .await;
    let points = route["points"].as_array().unwrap();
    assert_eq!(points.len(), 5);
    assert_eq!(points[0]["speed"], 5.0, "18 km/h");
    assert_eq!(
        (points[0]["battery"].as_u64(), points[4]["battery"].as_u64()),
        (Some(90), Some(86))
    );
}

#[tokio::test]
async fn overland_batches_with_bearer_key_and_a_backlog_that_arrives_late() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let phone = device(&app, &ann, json!({"name": "iPhone", "type": "WALK"})).await;
    let t = app.now_ms() - 600_000;
    let feature = |k: i64, speed: f64| {
        json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [13.4, 52.5 + k as f64 * 1e-4]},
          "properties": {"timestamp": iso(t + k * 10_000), "altitude": 35, "speed": speed, "horizontal_accuracy": 5,
            "vertical_accuracy": 3, "course": 0, "battery_level": 0.8, "battery_state": "unplugged",
            "motion": ["walking"], "wifi": "", "device_id": "iphone"}})
    };
    let send = |locations: Vec<Value>| {
        let client = app.client.clone();
        let url = format!("{}/ingest/overland", app.base);
        let key = phone.key.clone();
        async move {
            let resp = client
                .post(url)
                .bearer_auth(key)
                .json(&json!({"locations": locations, "current": {"type": "Feature"}}))
                .send()
                .await
                .unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap())
        }
    };
    // The newest fixes first, then the backlog from earlier in the same walk.
    let (status, reply) = send((30..40).map(|k| feature(k, 1.4)).collect()).await;
    assert_eq!((status, reply), (StatusCode::OK, json!({"result": "ok"})));
    let (_, reply) = send((0..30).map(|k| feature(k, -1.0)).collect()).await;
    assert_eq!(reply, json!({"result": "ok"}));
    // Sent again (the app retried): duplicates, no new points.
    send((0..40).map(|k| feature(k, 1.4)).collect()).await;
    let auto = activities(&app, &ann).await;
    assert_eq!(auto.len(), 2, "{auto:?}");
    let (live, past): (Vec<&Value>, Vec<&Value>) =
        auto.iter().partition(|a| a["state"] == "STARTED");
    assert_eq!(
        live[0]["stats"]["points"], 10,
        "the live walk from its first fix"
    );
    assert_eq!(
        past[0]["state"], "COMPLETE",
        "the earlier backlog is its own, finished"
    );
    assert_eq!(past[0]["stats"]["points"], 30);
    assert_eq!(past[0]["type"], "WALK");
    let id = past[0]["id"].as_str().unwrap();
    let (_, route) = app
        .get(&format!("/v1/activities/{id}/route"), &ann.token)
        .await;
    assert!(
        route["points"][0].get("speed").is_none(),
        "-1 is unknown speed"
    );
    assert_eq!(route["points"][0]["battery"], 80);
    let (status, refused) = app
        .client
        .post(format!("{}/ingest/overland/{}", app.base, phone.key))
        .json(&json!({"points": []}))
        .send()
        .await
        .map(|r| (r.status(), r))
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(refused.json::<Value>().await.unwrap()["error"].is_string());
}

#[tokio::test]
async fn traccar_and_gpslogger_send_parameters_in_their_units() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let traccar = device(&app, &ann, json!({"name": "Traccar"})).await;
    let t = app.now_ms() - 60_000;
    let url = traccar.urls["traccar"].as_str().unwrap().to_string();
    // OsmAnd protocol: GET with parameters, speed in knots, time in seconds.
    let get = app
        .client
        .get(format!("{url}?id=123456&lat=48.1&lon=11.5&timestamp={}&speed=10&bearing=90&altitude=520&accuracy=4&batt=70", secs(t)))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    // Traccar Client 10: a form body, time in milliseconds.
    let form = app
        .client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "id=123456&lat=48.1001&lon=11.5&timestamp={}&speed=9.7&batt=69",
            t + 5_000
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::OK);
    // Traccar Client 9: JSON.
    let json9 = app
        .client
        .post(&url)
        .json(&json!({"location": {"timestamp": iso(t + 10_000), "coords": {"latitude": 48.1002, "longitude": 11.5,
            "accuracy": 5, "speed": 5.0, "heading": 0, "altitude": 521}, "is_moving": true,
            "battery": {"level": 0.68, "is_charging": false}}, "device_id": "123456"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json9.status(), StatusCode::OK);
    let (_, list) = app.get("/v1/activities", &ann.token).await;
    let id = list["items"][0]["id"].as_str().unwrap();
    let (_, route) = app
        .get(&format!("/v1/activities/{id}/route"), &ann.token)
        .await;
    let points = route["points"].as_array().unwrap();
    assert_eq!(points.len(), 3);
    assert!(
        (points[0]["speed"].as_f64().unwrap() - 5.144).abs() < 0.01,
        "10 knots"
    );
    assert_eq!(
        points
            .iter()
            .map(|p| p["battery"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [70, 69, 68]
    );

    let logger = device(&app, &ann, json!({"name": "GPSLogger", "type": "HIKE"})).await;
    let template = logger.urls["gpslogger"].as_str().unwrap();
    // What GPSLogger sends for the pasted URL: placeholders filled, the
    // time URL-encoded.
    let filled = template
        .replace("%LAT", "47.3")
        .replace("%LON", "8.5")
        .replace("%TIME", &iso(t).replace(':', "%3A"))
        .replace("%ALT", "410")
        .replace("%ACC", "6")
        .replace("%SPD", "1.2")
        .replace("%DIR", "180")
        .replace("%BATT", "55");
    assert_eq!(
        app.client.get(&filled).send().await.unwrap().status(),
        StatusCode::OK
    );
    let junk = app
        .client
        .get(format!(
            "{}/ingest/gpslogger/{}?lat=&lon=oops",
            app.base, logger.key
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        junk.status(),
        StatusCode::OK,
        "an unusable fix is dropped, the app told ok"
    );
    let hikes: Vec<Value> = activities(&app, &ann)
        .await
        .into_iter()
        .filter(|a| a["type"] == "HIKE")
        .collect();
    assert_eq!(hikes.len(), 1);
    assert_eq!(hikes[0]["stats"]["points"], 1);
    assert!(
        app.metrics()
            .await
            .contains("trailcast_tracker_app_fixes_total")
    );
}

#[tokio::test(start_paused = true)]
async fn an_automatic_activity_finishes_after_twenty_quiet_minutes_and_the_next_fix_starts_another()
{
    let app = spawn_app().await;
    let (ann, bob) = (app.user("Ann").await, app.user("Bob").await);
    app.befriend(&ann, &bob).await;
    let phone = device(&app, &ann, json!({"name": "Pixel"})).await;
    let url = phone.urls["traccar"].as_str().unwrap().to_string();
    let t0 = app.now_ms();
    let fix = |k: i64| {
        format!(
            "{url}?id=1&lat={}&lon=11.5&timestamp={}&batt=50",
            48.1 + k as f64 * 1e-4,
            t0 + k * 2_000
        )
    };
    for k in 0..5 {
        assert_eq!(
            app.client.get(fix(k)).send().await.unwrap().status(),
            StatusCode::OK
        );
    }
    let first = activities(&app, &ann).await;
    let id = first[0]["id"].as_str().unwrap().to_string();

    // Bob watches it like any live activity.
    tokio::time::sleep(Duration::from_secs(9)).await; // the lag passes (paused clock)
    let mut ws = connect(&app, &id, &format!("lag=5&token={}", bob.token)).await;
    let catch_up = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(catch_up["type"], "catch_up");
    assert_eq!(catch_up["points"].as_array().unwrap().len(), 5);
    assert_eq!(
        catch_up["points"][0]["battery"], 50,
        "battery shown to watchers"
    );
    // Bob's page keeps reading (and so answering pings) until the finish.
    let watcher = tokio::spawn(async move {
        loop {
            match next_json(&mut ws, Duration::from_secs(3_600)).await {
                Some(m) if m["type"] == "state" && m["state"] == "COMPLETE" => return true,
                Some(_) => continue,
                None => return false,
            }
        }
    });

    // 19 minutes of quiet: still live; past 20: completed at its last fix.
    tokio::time::sleep(Duration::from_secs(19 * 60)).await;
    let (_, view) = app.get(&format!("/v1/activities/{id}"), &ann.token).await;
    assert_eq!(view["state"], "STARTED");
    tokio::time::sleep(Duration::from_secs(2 * 60)).await;
    let mut view;
    let mut waited = 0;
    loop {
        view = app.get(&format!("/v1/activities/{id}"), &ann.token).await.1;
        if view["state"] == "COMPLETE" {
            break;
        }
        waited += 1;
        assert!(waited < 300, "never finished: {view}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        view["finished_at"].as_str().unwrap(),
        iso(t0 + 4 * 2_000),
        "at its last fix"
    );
    assert!(watcher.await.unwrap(), "the watcher sees it end");

    // The next fix starts a new activity.
    let t1 = app.now_ms();
    let next = format!("{url}?id=1&lat=48.2&lon=11.5&timestamp={}", secs(t1));
    assert_eq!(
        app.client.get(next).send().await.unwrap().status(),
        StatusCode::OK
    );
    let all = activities(&app, &ann).await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["state"], "STARTED");
    assert_ne!(all[0]["id"], id.as_str());
}
