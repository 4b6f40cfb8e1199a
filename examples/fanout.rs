//! Measures live fan-out: N WebSocket watchers of one activity while the
//! athlete posts one point every `interval` ms; reports watchers held and
//! `points` messages (and points) delivered per second across all watchers.
//!
//! All watchers share one token, so start the server with a rate limit that
//! allows the connection burst, e.g. `trailcast serve --rate-limit 100000`.
//!
//! cargo run --release --example fanout -- http://127.0.0.1:8080 2000 20 100
//!   (base URL, watchers, seconds of posting, ms between points)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// POSTs a JSON body (with a bearer token unless empty) and returns the reply.
async fn post(http: &reqwest::Client, url: String, token: &str, body: Value) -> Value {
    let mut request = http.post(url).json(&body);
    if !token.is_empty() {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = args
        .get(1)
        .cloned()
        .unwrap_or("http://127.0.0.1:8080".into());
    let watchers: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let seconds: u64 = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(20);
    let every_ms: u64 = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(100);
    let http = reqwest::Client::new();
    let user = post(
        &http,
        format!("{base}/v1/users"),
        "",
        json!({"name": "fan"}),
    )
    .await;
    let token = user["token"].as_str().unwrap().to_string();
    let url = format!("{base}/v1/activities");
    let activity = post(&http, url, &token, json!({"type": "RUN"})).await;
    let id = activity["id"].as_str().unwrap().to_string();
    let ws_url = format!(
        "{}/v1/activities/{id}/live/ws?lag=5&token={token}",
        base.replacen("http", "ws", 1)
    );

    let messages = Arc::new(AtomicU64::new(0));
    let points = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let connecting = Instant::now();
    for _ in 0..watchers {
        let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url)
            .await
            .expect("connect");
        let (messages, points) = (messages.clone(), points.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(t) = msg {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "points" {
                        messages.fetch_add(1, Ordering::Relaxed);
                        points.fetch_add(
                            v["points"].as_array().map_or(0, |p| p.len() as u64),
                            Ordering::Relaxed,
                        );
                    }
                }
            }
        }));
    }
    println!(
        "{watchers} watchers connected in {:.1} s",
        connecting.elapsed().as_secs_f64()
    );
    let poster = {
        let (http, base, token, id) = (http.clone(), base.clone(), token.clone(), id.clone());
        tokio::spawn(async move {
            let t0 = now_ms();
            let posting = Instant::now();
            let mut i = 0;
            while posting.elapsed() < Duration::from_secs(seconds + 6) {
                let p = json!({"ts": t0 + i * every_ms as i64, "lat": 48.0 + i as f64 * 1e-5, "lng": 11.0});
                http.post(format!("{base}/v1/activities/{id}/points"))
                    .bearer_auth(&token)
                    .json(&p)
                    .send()
                    .await
                    .unwrap();
                i += 1;
                tokio::time::sleep(Duration::from_millis(every_ms)).await;
            }
            i
        })
    };
    // Steady state: points posted 5 s (the lag) ago are being released.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (m0, p0) = (
        messages.load(Ordering::Relaxed),
        points.load(Ordering::Relaxed),
    );
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let secs = window.elapsed().as_secs_f64();
    let (m1, p1) = (
        messages.load(Ordering::Relaxed),
        points.load(Ordering::Relaxed),
    );
    let posted = poster.await.unwrap();
    println!(
        "posted {posted} points; steady window {secs:.1} s: {:.0} messages/s, {:.0} points/s fanned out to {watchers} watchers",
        (m1 - m0) as f64 / secs,
        (p1 - p0) as f64 / secs
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in metrics.lines().filter(|l| {
        l.starts_with("trailcast_live_ws_watchers")
            || l.starts_with("trailcast_process_resident_bytes")
    }) {
        println!("server: {line}");
    }
    for t in tasks {
        t.abort();
    }
}
