//! Coached courses and planned routes: the catalogue, step records of an
//! activity run on a course (a pause inside a step included), and progress
//! along a planned route for watchers.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, spawn_app};

const M_PER_DEG: f64 = 111_195.0;

#[tokio::test]
async fn the_catalogue_is_searchable_and_served_with_an_etag() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let (status, list) = app
        .get(
            "/v1/courses?level=beginner&theme=walk-run%20programme",
            &ann.token,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 24, "the 8-week programme, 3 sessions a week");
    assert!(items.iter().all(|c| c["level"] == "beginner"));
    let (_, found) = app.get("/v1/courses?q=intervals", &ann.token).await;
    let found = found["items"].as_array().unwrap();
    assert!(found.len() >= 2, "{found:?}");
    assert!(found.iter().all(|c| {
        let text = format!("{} {}", c["name"], c["description"]).to_lowercase();
        text.contains("interval")
    }));
    let (_, none) = app.get("/v1/courses?q=zzzz-nothing", &ann.token).await;
    assert_eq!(none["items"], json!([]));

    let id = items[0]["id"].as_str().unwrap();
    let url = format!("{}/v1/courses/{id}", app.base);
    let first = app
        .client
        .get(&url)
        .bearer_auth(&ann.token)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    let course: Value = first.json().await.unwrap();
    let steps = course["steps"].as_array().unwrap();
    assert_eq!(steps[0]["kind"], "warm_up");
    assert!(
        steps
            .iter()
            .all(|s| s["cue"].as_str().is_some_and(|c| !c.is_empty()))
    );
    let again = app
        .client
        .get(&url)
        .bearer_auth(&ann.token)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    let stale = app
        .client
        .get(&url)
        .bearer_auth(&ann.token)
        .header("if-none-match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
    let (status, _) = app
        .call(reqwest::Method::GET, "/v1/courses", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[test]
fn a_bad_catalogue_file_is_refused_at_start_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("club.json"),
        "[\n  {\"slug\": \"club-1\", \"name\": \"Club\", \"level\": \"beginner\",\n   \"steps\": [{\"kind\": \"sprint\", \"duration_s\": 10, \"cue\": \"Go\"}]}\n]\n",
    )
    .unwrap();
    let err = trailcast::catalogue::Catalogue::load(Some(dir.path()))
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("club.json: line 3:"), "{err}");
    std::fs::write(
        dir.path().join("club.json"),
        "[{\"slug\": \"club-1\", \"name\": \"Club\", \"level\": \"beginner\",\n \"steps\": [{\"kind\": \"run\", \"duration_s\": 10, \"cue\": \"Go\"}]}]",
    )
    .unwrap();
    let catalogue = trailcast::catalogue::Catalogue::load(Some(dir.path())).unwrap();
    assert!(
        catalogue
            .get(trailcast::catalogue::catalogue_id("club-1"))
            .is_some()
    );
}

async fn own_course(app: &TestApp, user: &TestUser, body: Value) -> String {
    let (status, course) = app.post("/v1/courses", &user.token, body).await;
    assert_eq!(status, StatusCode::CREATED, "{course}");
    course["id"].as_str().unwrap().to_string()
}

/// A point `metres` north of (48.0, 11.0).
fn at(ts: i64, metres: f64) -> Value {
    json!({"ts": ts, "lat": 48.0 + metres / M_PER_DEG, "lng": 11.0})
}

#[tokio::test]
async fn a_three_step_course_gives_step_records_with_a_pause_inside_a_step() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let course = own_course(
        &app,
        &ann,
        json!({"name": "Walk, run, walk", "steps": [
            {"kind": "walk", "duration_s": 60, "cue": "Walk for a minute."},
            {"kind": "run", "distance_m": 300, "cue": "Run 300 metres.", "halfway_cue": "Halfway."},
            {"kind": "cool_down", "duration_s": 60, "cue": "Cool down."}
        ]}),
    )
    .await;
    let t0 = app.now_ms() - 600_000;
    let (status, created) = app
        .post(
            "/v1/activities",
            &ann.token,
            json!({"type": "RUN", "started_at": t0, "course_id": course}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["course_name"], "Walk, run, walk");
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/activities/{id}");

    // Walk 60 s at 1.5 m/s, then run at 3 m/s; a fix every 2 s.
    let mut metres = 0.0;
    let mut first: Vec<Value> = Vec::new();
    for k in 0..=50 {
        if k > 0 {
            metres += if k <= 30 { 3.0 } else { 6.0 };
        }
        first.push(at(t0 + k * 2_000, metres));
    }
    let (_, reply) = app.post_points(&ann, id, json!({"points": first})).await;
    let step = &reply["stats"]["step"];
    assert_eq!(
        (step["index"].as_u64(), step["kind"].as_str()),
        (Some(1), Some("run"))
    );
    assert_eq!(step["distance_left_m"], 180.0, "120 of 300 m run: {step}");
    assert_eq!(step["next_cue"], "Cool down.");

    // A 30 s pause in the middle of the run step, then on.
    let change = |state: &str, at_s: i64| json!({"state": state, "at": t0 + at_s * 1000});
    assert_eq!(
        app.patch(&path, &ann.token, change("PAUSED", 100)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.patch(&path, &ann.token, change("STARTED", 130)).await.0,
        StatusCode::OK
    );
    let mut second = Vec::new();
    for k in 1..=55 {
        // 30 more fixes running (180 m), then 25 walking.
        metres += if k <= 30 { 6.0 } else { 3.0 };
        second.push(at(t0 + 130_000 + k * 2_000, metres));
    }
    app.post_points(&ann, id, json!({"points": second})).await;
    let (status, done) = app.patch(&path, &ann.token, change("COMPLETE", 240)).await;
    assert_eq!(status, StatusCode::OK, "{done}");

    let (_, view) = app.get(&path, &ann.token).await;
    let steps = view["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "{view}");
    let got = |i: usize, f: &str| steps[i][f].as_f64().unwrap();
    assert_eq!(
        (steps[0]["kind"].as_str(), got(0, "actual_s")),
        (Some("walk"), 60.0)
    );
    assert!((got(0, "actual_m") - 90.0).abs() < 0.5, "{}", steps[0]);
    assert_eq!(steps[1]["planned_m"], 300.0);
    assert!((got(1, "actual_m") - 300.0).abs() < 0.5, "{}", steps[1]);
    assert!(
        (got(1, "actual_s") - 100.0).abs() < 0.5,
        "the 30 s pause is not part of the step: {}",
        steps[1]
    );
    assert!((got(1, "pace_s_per_km") - 333.3).abs() < 2.0);
    assert_eq!(steps[2]["completed"], false, "ended inside the cool-down");
    assert!((got(2, "actual_s") - 50.0).abs() < 0.5, "{}", steps[2]);
    assert_eq!(
        view["stats"].get("step"),
        None,
        "no current step once finished"
    );
}

#[tokio::test]
async fn an_unknown_or_invisible_course_is_refused() {
    let app = spawn_app().await;
    let (ann, bob) = (app.user("Ann").await, app.user("Bob").await);
    let private = own_course(
        &app,
        &ann,
        json!({"name": "Secret", "visibility": "private",
               "steps": [{"kind": "run", "duration_s": 60, "cue": "Go"}]}),
    )
    .await;
    for course in [private.as_str(), "01936d1a-0000-7000-8000-000000000000"] {
        let (status, reply) = app
            .post(
                "/v1/activities",
                &bob.token,
                json!({"type": "RUN", "course_id": course}),
            )
            .await;
        assert_eq!(status.as_u16(), 422, "{reply}");
        assert_eq!(reply["error"]["code"], "unknown_course");
    }
    assert_eq!(
        app.get(&format!("/v1/courses/{private}"), &bob.token)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (status, reply) = app
        .post("/v1/courses", &ann.token, json!({"name": "Nothing"}))
        .await;
    assert_eq!(
        (status.as_u16(), &reply["error"]["code"]),
        (422, &json!("invalid_course"))
    );
}

/// An L-shaped planned route as a GPX route: 1 km north, then 1 km east.
fn l_route_gpx() -> String {
    let north = 1_000.0 / M_PER_DEG;
    let east = 1_000.0 / (M_PER_DEG * 48f64.to_radians().cos());
    let mut pts = Vec::new();
    for i in 0..=10 {
        pts.push((48.0 + north * i as f64 / 10.0, 11.0));
    }
    for i in 1..=10 {
        pts.push((48.0 + north, 11.0 + east * i as f64 / 10.0));
    }
    let rtepts: String = pts
        .iter()
        .map(|(lat, lng)| format!("<rtept lat=\"{lat}\" lon=\"{lng}\"/>"))
        .collect();
    format!(
        "<?xml version=\"1.0\"?><gpx version=\"1.1\" xmlns=\"http://www.topografix.com/GPX/1/1\"><rte>{rtepts}</rte></gpx>"
    )
}

#[tokio::test(start_paused = true)]
async fn watchers_see_distance_left_along_a_curved_route_an_eta_and_going_off_route() {
    let app = spawn_app().await;
    let (ann, bob) = (app.user("Ann").await, app.user("Bob").await);
    app.befriend(&ann, &bob).await;
    let course = own_course(
        &app,
        &ann,
        json!({"name": "Canal L", "gpx": l_route_gpx(), "visibility": "friends"}),
    )
    .await;
    let (_, planned) = app.get(&format!("/v1/courses/{course}"), &bob.token).await;
    assert_eq!(planned["route"].as_array().unwrap().len(), 21);
    let t0 = app.now_ms() - 400_000;
    let id = app
        .start(
            &ann,
            json!({"type": "RUN", "started_at": t0, "course_id": course}),
        )
        .await;
    // 1,200 m along the route in 400 s (3 m/s), a fix every 4 s: the last
    // one 200 m along the east leg.
    let north = 1_000.0 / M_PER_DEG;
    let east_per_m = 1.0 / (M_PER_DEG * 48f64.to_radians().cos());
    let points: Vec<Value> = (0..=100)
        .map(|k| {
            let m = k as f64 * 12.0;
            let (lat, lng) = if m <= 1_000.0 {
                (48.0 + m / M_PER_DEG, 11.0)
            } else {
                (48.0 + north, 11.0 + (m - 1_000.0) * east_per_m)
            };
            json!({"ts": t0 + k * 4_000, "lat": lat, "lng": lng})
        })
        .collect();
    app.post_points(&ann, &id, json!({"points": points})).await;
    tokio::time::sleep(Duration::from_secs(6)).await; // the lag passes (paused clock)
    let live = format!("/v1/activities/{id}/live?lag=5");
    let (_, polled) = app.get(&live, &bob.token).await;
    let route = &polled["route"];
    let done = route["done_m"].as_f64().unwrap();
    assert!(
        (done - 1_200.0).abs() < 5.0,
        "along the route, not straight-line: {route}"
    );
    assert!(
        (route["left_m"].as_f64().unwrap() - 800.0).abs() < 5.0,
        "{route}"
    );
    assert_eq!(route["off_route"], false);
    let eta = route["eta_ms"].as_i64().unwrap();
    let expected = app.now_ms() + (800.0 / 3.0 * 1000.0) as i64;
    assert!(
        (eta - expected).abs() < 20_000,
        "800 m at about 3 m/s: {route}"
    );

    // 300 m south of the east leg: off route.
    let off = json!({"ts": t0 + 404_000, "lat": 48.0 + north - 300.0 / M_PER_DEG,
                     "lng": 11.0 + 200.0 * east_per_m});
    app.post_points(&ann, &id, off).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (_, polled) = app
        .get(
            &format!("{live}&after={}", polled["cursor"].as_str().unwrap()),
            &bob.token,
        )
        .await;
    assert_eq!(polled["route"]["off_route"], true, "{}", polled["route"]);
}
