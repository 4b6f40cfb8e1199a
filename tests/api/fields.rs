//! All the Data and files: activity fields and their time series, GPX and
//! TCX import, and exports that gpsbabel (Debian's package) reads back.

use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, spawn_app, track};

async fn put_fields(app: &TestApp, user: &TestUser, id: &str, body: Value) -> (StatusCode, Value) {
    app.call(
        Method::PUT,
        &format!("/v1/activities/{id}/fields"),
        Some(&user.token),
        Some(body),
    )
    .await
}

/// A finished run of `n` points starting `days_ago` days ago.
async fn finished_run(app: &TestApp, user: &TestUser, days_ago: i64, visibility: &str) -> String {
    let t0 = app.now_ms() - days_ago * 86_400_000;
    let id = app
        .start(
            user,
            json!({"type": "RUN", "started_at": t0, "visibility": visibility}),
        )
        .await;
    let mut points = track(t0 + 1_000, 120, 1_000, 3.0);
    for (i, p) in points.iter_mut().enumerate() {
        p["hr"] = json!(140 + (i % 20));
    }
    let (status, _) = app.post_points(user, &id, json!({"points": points})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app
        .patch(
            &format!("/v1/activities/{id}"),
            &user.token,
            json!({"state": "COMPLETE", "at": t0 + 125_000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    id
}

fn values(series: &Value) -> Vec<f64> {
    series["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"].as_f64().unwrap())
        .collect()
}

#[tokio::test]
async fn fields_round_trip_and_refuse_bad_names_and_values() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let id = app.start(&ann, json!({"type": "RUN"})).await;
    let (status, view) = put_fields(&app, &ann, &id, json!({"rpe": 7, "shoe_km": 312.5})).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["fields"], json!({"rpe": 7.0, "shoe_km": 312.5}));
    let (_, view) = put_fields(&app, &ann, &id, json!({"rpe": null, "mood": 3})).await;
    assert_eq!(view["fields"], json!({"mood": 3.0, "shoe_km": 312.5}));
    let (_, read) = app.get(&format!("/v1/activities/{id}"), &ann.token).await;
    assert_eq!(read["fields"], view["fields"]);

    let many: serde_json::Map<String, Value> =
        (0..63).map(|i| (format!("f{i}"), json!(i))).collect();
    for (body, status, code) in [
        (json!({"Bad Name": 1}), 422, "invalid_field"),
        (json!({"distance_m": 1}), 422, "invalid_field"),
        (json!({"x".repeat(41): 1}), 422, "invalid_field"),
        (Value::Object(many), 422, "too_many_fields"),
        (json!({"rpe": "high"}), 422, "invalid_body"),
    ] {
        let (got, reply) = put_fields(&app, &ann, &id, body).await;
        assert_eq!(got.as_u16(), status, "{reply}");
        assert_eq!(reply["error"]["code"], code, "{reply}");
    }
    let (_, read) = app.get(&format!("/v1/activities/{id}"), &ann.token).await;
    assert_eq!(read["fields"], view["fields"], "nothing refused was stored");
    let bob = app.user("Bob").await;
    assert_eq!(
        put_fields(&app, &bob, &id, json!({"rpe": 1})).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn completed_activities_carry_computed_fields_read_as_a_series_under_visibility_rules() {
    let app = spawn_app().await;
    let (ann, bob, sam) = (
        app.user("Ann").await,
        app.user("Bob").await,
        app.user("Sam").await,
    );
    app.befriend(&ann, &bob).await;
    let old = finished_run(&app, &ann, 3, "public").await;
    let private = finished_run(&app, &ann, 2, "private").await;
    let recent = finished_run(&app, &ann, 1, "friends").await;
    let (_, view) = app
        .get(&format!("/v1/activities/{recent}"), &ann.token)
        .await;
    let fields = &view["fields"];
    for name in [
        "distance_m",
        "moving_time_s",
        "elevation_gain_m",
        "avg_hr",
        "calories_kcal",
    ] {
        assert!(fields[name].is_number(), "{name} missing: {fields}");
    }
    assert_eq!(fields["distance_m"], view["stats"]["distance_m"]);
    assert_eq!(fields["max_hr"], 159.0);

    let series = format!("/v1/athletes/{}/fields/distance_m", ann.id);
    let (_, own) = app.get(&series, &ann.token).await;
    let ids: Vec<&str> = own["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["activity_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [&recent, &private, &old],
        "newest first, all for the athlete"
    );
    let (_, friend) = app.get(&series, &bob.token).await;
    assert_eq!(friend["items"].as_array().unwrap().len(), 2, "{friend}");
    let (_, stranger) = app.get(&series, &sam.token).await;
    assert_eq!(stranger["items"][0]["activity_id"], old.as_str());
    assert_eq!(stranger["items"].as_array().unwrap().len(), 1);

    // A range and a limit.
    let now = app.now_ms();
    let (_, ranged) = app
        .get(
            &format!("{series}?from={}&to={}", now - 2 * 86_400_000 - 60_000, now),
            &ann.token,
        )
        .await;
    assert_eq!(values(&ranged).len(), 2, "{ranged}");
    let (_, one) = app.get(&format!("{series}?limit=1"), &ann.token).await;
    assert_eq!(one["items"][0]["activity_id"], recent.as_str());

    // Visibility changes and discards reach the series.
    app.patch(
        &format!("/v1/activities/{recent}"),
        &ann.token,
        json!({"visibility": "private"}),
    )
    .await;
    let (_, friend) = app.get(&series, &bob.token).await;
    assert_eq!(friend["items"].as_array().unwrap().len(), 1, "{friend}");
    assert_eq!(friend["items"][0]["activity_id"], old.as_str());
    put_fields(&app, &ann, &old, json!({"rpe": 6})).await;
    let (_, rpe) = app
        .get(&format!("/v1/athletes/{}/fields/rpe", ann.id), &sam.token)
        .await;
    assert_eq!(values(&rpe), [6.0]);
    // A discarded activity leaves every series.
    let live = app
        .start(&ann, json!({"type": "RUN", "visibility": "public"}))
        .await;
    put_fields(&app, &ann, &live, json!({"rpe": 9})).await;
    let rpe_series = format!("/v1/athletes/{}/fields/rpe", ann.id);
    assert_eq!(
        values(&app.get(&rpe_series, &ann.token).await.1),
        [9.0, 6.0]
    );
    let (status, _) = app
        .patch(
            &format!("/v1/activities/{live}"),
            &ann.token,
            json!({"state": "DISCARDED"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(values(&app.get(&rpe_series, &ann.token).await.1), [6.0]);
    let (status, bad) = app
        .get(&format!("{series}?from=yesterday"), &ann.token)
        .await;
    assert_eq!(
        (status.as_u16(), &bad["error"]["code"]),
        (422, &json!("invalid_time"))
    );
}

/// A GPX file as Garmin Connect writes it: two tracks, heart rate and
/// cadence in the TrackPointExtension, one point without elevation and one
/// duplicate timestamp.
fn garmin_gpx(t0_s: i64) -> String {
    let time = |s: i64| {
        chrono::DateTime::from_timestamp(t0_s + s, 0)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<gpx creator=\"Garmin Connect\" version=\"1.1\" \
         xmlns=\"http://www.topografix.com/GPX/1/1\" \
         xmlns:ns3=\"http://www.garmin.com/xmlschemas/TrackPointExtension/v1\">\n",
    );
    for (k, kind) in ["running", "cycling"].iter().enumerate() {
        out.push_str(&format!(
            "<trk><name>Track {k}</name><type>{kind}</type><trkseg>\n"
        ));
        for i in 0..50 {
            let s = k as i64 * 3_600 + i.min(48);
            let ele = if i == 10 {
                String::new()
            } else {
                format!("<ele>{}</ele>", 30 + i)
            };
            out.push_str(&format!(
                "<trkpt lat=\"{}\" lon=\"13.4\">{ele}<time>{}</time><extensions><ns3:TrackPointExtension>\
                 <ns3:hr>{}</ns3:hr><ns3:cad>{}</ns3:cad></ns3:TrackPointExtension></extensions></trkpt>\n",
                52.5 + i as f64 * 3e-5,
                time(s),
                120 + i,
                80 + i % 5
            ));
        }
        out.push_str("</trkseg></trk>\n");
    }
    out.push_str("</gpx>\n");
    out
}

async fn import(
    app: &TestApp,
    user: &TestUser,
    query: &str,
    body: String,
    content_type: &str,
) -> (StatusCode, Value) {
    let resp = app
        .client
        .post(format!("{}/v1/activities/import{query}", app.base))
        .bearer_auth(&user.token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn gpx_import_makes_one_finished_activity_per_track_once() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let t0_s = app.now_ms() / 1000 - 40 * 86_400;
    let file = garmin_gpx(t0_s);
    let (status, reply) = import(&app, &ann, "", file.clone(), "application/gpx+xml").await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
    let activities = reply["activities"].as_array().unwrap();
    assert_eq!(activities.len(), 2);
    assert_eq!(
        reply["points"], 98,
        "duplicate timestamps keep the first: {reply}"
    );
    let run = &activities[0];
    assert_eq!(
        (run["type"].as_str(), run["state"].as_str()),
        (Some("RUN"), Some("COMPLETE"))
    );
    assert_eq!(activities[1]["type"], "RIDE");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(run["started_at"].as_str().unwrap())
            .unwrap()
            .timestamp(),
        t0_s
    );
    assert!(run["stats"]["distance_m"].as_f64().unwrap() > 150.0);
    assert_eq!(run["fields"]["avg_cadence"], 82.0);
    let id = run["id"].as_str().unwrap();
    let (_, route) = app
        .get(&format!("/v1/activities/{id}/route"), &ann.token)
        .await;
    let points = route["points"].as_array().unwrap();
    assert_eq!(points.len(), 49);
    assert_eq!(
        (points[0]["hr"].as_u64(), points[0]["cadence"].as_u64()),
        (Some(120), Some(80))
    );
    assert!(
        points[10].get("alt").is_none(),
        "a missing elevation stays missing"
    );

    // The same file again: the same activities, nothing new.
    let (status, again) = import(&app, &ann, "", file.clone(), "application/gpx+xml").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["activities"][0]["id"], run["id"]);
    let (_, history) = app.get("/v1/activities?limit=10", &ann.token).await;
    assert_eq!(history["items"].as_array().unwrap().len(), 2);

    // As a multipart upload, with the type given.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::text(garmin_gpx(t0_s - 86_400)).file_name("run.gpx"),
    );
    let resp = app
        .client
        .post(format!("{}/v1/activities/import?type=WALK", app.base))
        .bearer_auth(&ann.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let reply: Value = resp.json().await.unwrap();
    assert_eq!(reply["activities"][1]["type"], "WALK");
}

#[tokio::test]
async fn malformed_files_are_refused_naming_the_line() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let broken = garmin_gpx(1_700_000_000).replacen("</trkpt>", "</trkpoint>", 1);
    let (status, reply) = import(&app, &ann, "", broken, "application/gpx+xml").await;
    assert_eq!(status.as_u16(), 422, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid_file");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("line 4:"),
        "{reply}"
    );
    let no_time = "<gpx><trk><trkseg>\n<trkpt lat=\"1\" lon=\"2\"/>\n</trkseg></trk></gpx>";
    let (_, reply) = import(&app, &ann, "", no_time.into(), "application/xml").await;
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("line 2:"),
        "{reply}"
    );
    let (status, reply) = import(
        &app,
        &ann,
        "",
        "<gpx version=\"1.1\"/>".into(),
        "application/xml",
    )
    .await;
    assert_eq!(
        (status.as_u16(), &reply["error"]["code"]),
        (422, &json!("empty_file"))
    );
    let (status, reply) = import(
        &app,
        &ann,
        "",
        "{\"not\": \"xml\"}".into(),
        "application/json",
    )
    .await;
    assert_eq!(
        (status.as_u16(), &reply["error"]["code"]),
        (422, &json!("invalid_file"))
    );
    let (_, history) = app.get("/v1/activities", &ann.token).await;
    assert!(history["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_hundred_thousand_point_tcx_file_imports() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let t0 = app.now_ms() - 30 * 3_600_000;
    let mut file = String::from(
        "<?xml version=\"1.0\"?>\n<TrainingCenterDatabase xmlns=\"http://www.garmin.com/xmlschemas/TrainingCenterDatabase/v2\">\
         <Activities><Activity Sport=\"Biking\"><Id>x</Id><Lap StartTime=\"x\"><Track>\n",
    );
    for i in 0..100_000i64 {
        file.push_str(&format!(
            "<Trackpoint><Time>{}</Time><Position><LatitudeDegrees>{}</LatitudeDegrees>\
             <LongitudeDegrees>11.0</LongitudeDegrees></Position><HeartRateBpm><Value>130</Value></HeartRateBpm></Trackpoint>\n",
            trailcast::domain::time::to_rfc3339(t0 + i * 1000),
            48.0 + i as f64 * 5e-5,
        ));
    }
    file.push_str("</Track></Lap></Activity></Activities></TrainingCenterDatabase>\n");
    assert!(file.len() > 10_000_000, "a realistic size: {}", file.len());
    let (status, reply) = import(&app, &ann, "", file, "application/vnd.garmin.tcx+xml").await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
    assert_eq!(reply["points"], 100_000);
    assert_eq!(reply["activities"][0]["type"], "RIDE");
    assert_eq!(reply["activities"][0]["stats"]["points"], 100_000);
}

/// Reads `text` with gpsbabel as `format` and returns each point's time
/// (gpsbabel's unicsv output: one line per point).
fn gpsbabel_times(text: &str, format: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join(format!("in.{format}"));
    let output = dir.path().join("out.csv");
    std::fs::write(&input, text).unwrap();
    let run = Command::new("gpsbabel")
        .args(["-t", "-i", format, "-f"])
        .arg(&input)
        .args(["-o", "unicsv,utc=0", "-F"])
        .arg(&output)
        .output()
        .expect("gpsbabel runs (scripts/test installs Debian's gpsbabel)");
    assert!(
        run.status.success(),
        "gpsbabel: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let csv = std::fs::read_to_string(output).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let (date, time) = (
        header.iter().position(|h| *h == "Date").unwrap(),
        header.iter().position(|h| *h == "Time").unwrap(),
    );
    lines
        .map(|l| {
            let cols: Vec<&str> = l.split(',').collect();
            format!("{}T{}", cols[date], cols[time])
        })
        .collect()
}

#[tokio::test]
async fn gpx_and_tcx_exports_are_read_back_by_gpsbabel() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let id = finished_run(&app, &ann, 1, "friends").await;
    let (_, route) = app
        .get(&format!("/v1/activities/{id}/route"), &ann.token)
        .await;
    let expected: Vec<String> = route["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            chrono::DateTime::parse_from_rfc3339(p["ts"].as_str().unwrap())
                .unwrap()
                .format("%Y/%m/%dT%H:%M:%S")
                .to_string()
        })
        .collect();
    assert_eq!(expected.len(), 120);
    for format in ["gpx", "tcx"] {
        let resp = app
            .client
            .get(format!(
                "{}/v1/activities/{id}/route?format={format}",
                app.base
            ))
            .bearer_auth(&ann.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let text = resp.text().await.unwrap();
        if format == "gpx" {
            assert!(
                text.contains("<gpxtpx:hr>140</gpxtpx:hr>"),
                "heart rate exported"
            );
            assert!(text.contains("<name>Run, "), "a readable name");
        }
        let gpsbabel_format = if format == "tcx" { "gtrnctr" } else { "gpx" };
        let times = gpsbabel_times(&text, gpsbabel_format);
        let times: Vec<String> = times
            .iter()
            .map(|t| t.split('.').next().unwrap().to_string())
            .collect();
        assert_eq!(times, expected, "{format}: every point, same times");
    }
}
