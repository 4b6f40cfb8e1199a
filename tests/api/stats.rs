use serde_json::{Value, json};

use crate::helpers::{now_ms, spawn_app};

/// An independent haversine (not the server's code), mean Earth radius.
fn haversine(a: (f64, f64), b: (f64, f64)) -> f64 {
    let r = 6_371_000.0_f64;
    let (la1, la2) = (a.0.to_radians(), b.0.to_radians());
    let (dla, dlo) = ((b.0 - a.0).to_radians(), (b.1 - a.1).to_radians());
    let h = (dla / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlo / 2.0).sin().powi(2);
    2.0 * r * h.sqrt().atan2((1.0 - h).sqrt())
}

/// A clean 10 km loop-ish run: north-east zig-zags, 3.2 m/s, a fix every 3 s,
/// climbing 1 m per 100 m.
fn ten_km(t0: i64) -> Vec<(i64, f64, f64, f64)> {
    let mut out = Vec::new();
    let (mut lat, mut lng, mut alt, mut dist) = (47.3769_f64, 8.5417_f64, 400.0, 0.0);
    let mut t = t0;
    while dist < 10_050.0 {
        out.push((t, lat, lng, alt));
        let heading = if (out.len() / 50) % 2 == 0 {
            30.0_f64
        } else {
            120.0_f64
        }
        .to_radians();
        let step = 3.2 * 3.0;
        lat += step * heading.cos() / 111_195.0;
        lng += step * heading.sin() / (111_195.0 * lat.to_radians().cos());
        alt += step / 100.0;
        dist += step;
        t += 3000;
    }
    out
}

#[tokio::test]
async fn a_clean_10_km_summary_matches_an_independent_haversine_within_half_a_percent() {
    let app = spawn_app().await;
    let ann = app.user("Ann").await;
    let t0 = now_ms() - 4 * 3600 * 1000;
    let id = app
        .start(&ann, json!({"type": "RUN", "started_at": t0}))
        .await;
    let fixes = ten_km(t0);
    let expected: f64 = fixes
        .windows(2)
        .map(|w| haversine((w[0].1, w[0].2), (w[1].1, w[1].2)))
        .sum();
    let points: Vec<Value> = fixes
        .iter()
        .map(|(t, lat, lng, alt)| json!({"ts": t, "lat": lat, "lng": lng, "alt": alt, "accuracy": 4}))
        .collect();
    for chunk in points.chunks(500) {
        let (status, body) = app.post_points(&ann, &id, json!({"points": chunk})).await;
        assert_eq!(status, 200, "{body}");
    }
    let end = fixes.last().unwrap().0;
    let (_, a) = app
        .patch(
            &format!("/v1/activities/{id}"),
            &ann.token,
            json!({"state": "COMPLETE", "at": end}),
        )
        .await;
    let stats = &a["stats"];
    let distance = stats["distance_m"].as_f64().unwrap();
    assert!(
        (distance - expected).abs() / expected < 0.005,
        "{distance} vs {expected}"
    );
    let moving = stats["moving_time_s"].as_f64().unwrap();
    assert_eq!(moving, ((end - t0) / 1000) as f64);
    let pace = stats["avg_pace_s_per_km"].as_f64().unwrap();
    assert!((pace - moving / (distance / 1000.0)).abs() < 0.5, "{pace}");
    assert!((stats["avg_speed_m_s"].as_f64().unwrap() - 3.2).abs() < 0.05);
    let gain = stats["elevation_gain_m"].as_f64().unwrap();
    assert!((95.0..=101.0).contains(&gain), "elevation gain {gain}");
    let kcal = stats["calories_kcal"].as_f64().unwrap();
    assert!((600.0..=800.0).contains(&kcal), "{kcal}");

    let splits = a["splits"].as_array().unwrap();
    assert_eq!(splits.len(), 11, "ten full kilometres and a partial one");
    for s in &splits[..10] {
        assert_eq!(s["distance_m"], 1000.0);
        assert!((s["time_s"].as_f64().unwrap() - 312.5).abs() < 3.0, "{s}");
    }
}
