//! The Scylla backend when the cluster misbehaves, produced with a TCP
//! proxy between the server and the CQL test server (kassandra, or the
//! cluster named by `SCYLLA_NODES`): a stalled cluster answers 503 with
//! Retry-After within the request timeout, the write queue stays bounded,
//! and after recovery every acknowledged point is stored.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::helpers::{cql_server, now_ms, spawn_app_with};

/// Forwards TCP to `upstream`; `stall(true)` stops forwarding in both
/// directions (what arrives is held, as by a frozen node), `stall(false)`
/// lets it through again.
struct StallProxy {
    addr: String,
    stalled: Arc<watch::Sender<bool>>,
}

impl StallProxy {
    async fn start(upstream: String) -> StallProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stalled = Arc::new(watch::Sender::new(false));
        let flag = stalled.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                client.set_nodelay(true).ok();
                server.set_nodelay(true).ok();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, flag.subscribe()));
                tokio::spawn(pipe(sr, cw, flag.subscribe()));
            }
        });
        StallProxy { addr, stalled }
    }

    fn stall(&self, on: bool) {
        self.stalled.send_replace(on);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Read before the stall began: held until it ends.
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_stalled_cluster_answers_503_with_retry_after_and_loses_nothing_acknowledged() {
    let cql = cql_server();
    let (keyspace, _) = cql.keyspace().await;
    println!("stalling the CQL connection to {}", cql.name());
    let proxy = StallProxy::start(cql.nodes[0].clone()).await;
    let app = spawn_app_with(|c| {
        c.scylla.nodes = vec![proxy.addr.clone()];
        c.scylla.keyspace = keyspace.clone();
        c.scylla.request_timeout_ms = 1000;
        c.queue_points = 64;
    })
    .await;
    let ann = app.user("Ann").await;
    let t0 = now_ms() - 60_000;
    let id = app
        .start(&ann, json!({"type": "RUN", "started_at": t0}))
        .await;
    let fix = |i: i64| json!({"ts": t0 + i * 1000, "lat": 48.0 + i as f64 * 1e-4, "lng": 11.0});
    let (status, body) = app.post_points(&ann, &id, fix(0)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let mut others = Vec::new();
    for _ in 0..6 {
        others.push(
            app.start(&ann, json!({"type": "RUN", "started_at": t0}))
                .await,
        );
    }

    proxy.stall(true);
    // The token and the activity are cached, so the write is the first
    // request to reach the stalled cluster: it times out as busy.
    let url = format!("{}/v1/activities/{id}/points", app.base);
    let resp = app
        .client
        .post(&url)
        .bearer_auth(&ann.token)
        .json(&fix(1))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key("retry-after"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "storage_busy", "{body}");

    // Many requests at once: each answered 503 (busy, or queue full once 64
    // points wait: `overloaded`), none 500, none hanging; the queue empties afterwards.
    let mut posts = Vec::new();
    for other in others {
        let points: Vec<_> = (0..20).map(fix).collect();
        let (client, token) = (app.client.clone(), ann.token.clone());
        let url = format!("{}/v1/activities/{other}/points", app.base);
        posts.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"points": points}))
                .timeout(Duration::from_secs(20))
                .send()
                .await
                .unwrap();
            let retry = resp.headers().contains_key("retry-after");
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.unwrap();
            (
                status,
                retry,
                body["error"]["code"].as_str().map(str::to_owned),
            )
        }));
    }
    let mut codes = Vec::new();
    for post in posts {
        let (status, retry, code) = post.await.unwrap();
        assert_eq!(
            (status, retry),
            (StatusCode::SERVICE_UNAVAILABLE, true),
            "{code:?}"
        );
        codes.push(code.unwrap_or_default());
    }
    assert!(
        codes
            .iter()
            .all(|c| c == "storage_busy" || c == "overloaded")
            && codes.iter().any(|c| c == "overloaded")
            && codes.iter().any(|c| c == "storage_busy"),
        "{codes:?}"
    );
    // From /readyz, which reports this server's own queue: the metric is a
    // process-wide gauge, which the other servers of this test binary set
    // too (a 10,000-point batch elsewhere once read here as 10000).
    let (_, ready) = app.call(reqwest::Method::GET, "/readyz", None, None).await;
    let queued = ready["checks"]["write_queue"]["queued_points"]
        .as_u64()
        .unwrap();
    assert!(queued <= 64, "the queue is bounded ({queued}): {ready}");

    proxy.stall(false);
    // The retried post lands (or finds the timed-out write that landed
    // late, as a duplicate); either way the point is stored once.
    let (status, body) = app.post_points(&ann, &id, fix(1)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["accepted"].as_u64().unwrap() + body["duplicates"].as_u64().unwrap(),
        1
    );
    let (status, body) = app.post_points(&ann, &id, fix(2)).await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{body}"
    );
    let (_, route) = app
        .get(&format!("/v1/activities/{id}/route"), &ann.token)
        .await;
    let stored: Vec<i64> = route["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            chrono::DateTime::parse_from_rfc3339(p["ts"].as_str().unwrap())
                .unwrap()
                .timestamp_millis()
        })
        .collect();
    assert_eq!(
        stored,
        [t0, t0 + 1000, t0 + 2000],
        "every acknowledged point, once"
    );
}

/// #19: a packer that cannot reach the cluster keeps its buckets: another
/// node still reads every acknowledged point from the ingest log, and once
/// the cluster answers again the same buckets are packed and the log
/// emptied.
#[tokio::test]
async fn a_stalled_packer_keeps_its_log_and_packs_it_after_recovery() {
    use trailcast::domain::Point;
    use trailcast::store::scylla::ScyllaStore;
    use trailcast::store::{PointStore, read_track};

    let cql = cql_server();
    let (keyspace, args) = cql.keyspace().await;
    let proxy = StallProxy::start(cql.nodes[0].clone()).await;
    let mut through = args.clone();
    through.nodes = vec![proxy.addr.clone()];
    through.request_timeout_ms = 1000;
    let session = trailcast::store::scylla::connect(&through, cql.real)
        .await
        .unwrap();
    let writer = ScyllaStore::open(session, &keyspace, 64).await.unwrap();
    writer.stop_packer(); // packed by hand below
    let session = trailcast::store::scylla::connect(&args, cql.real)
        .await
        .unwrap();
    let reader = ScyllaStore::open(session, &keyspace, 64).await.unwrap();

    let x = uuid::Uuid::now_v7();
    let t0 = now_ms() - 600_000;
    let track: Vec<Point> = (0..120)
        .map(|i| Point {
            ts: t0 + i * 1000,
            lat: 48.0 + i as f64 * 1e-4,
            lng: 11.0,
            alt: None,
            speed: None,
            accuracy: Some(5.0),
            hr: Some(140),
            cadence: None,
            battery: None,
        })
        .collect();
    writer
        .append_points(Arc::new(track.iter().map(|p| (x, *p)).collect()))
        .await
        .unwrap();

    proxy.stall(true);
    let later = now_ms() + 10 * 60_000;
    assert!(
        writer.pack_closed(later).await.is_err(),
        "packing through a stalled connection fails"
    );
    let read = read_track(&reader, x).await.unwrap();
    assert_eq!(read, track, "the log still holds every acknowledged point");

    proxy.stall(false);
    assert!(writer.pack_closed(later).await.unwrap() >= 1);
    assert_eq!(read_track(&reader, x).await.unwrap(), track);
    assert_eq!(read_track(&writer, x).await.unwrap(), track);
    let rows = reader_log_rows(&args, &keyspace, cql.real).await;
    assert_eq!(rows, 0, "packed buckets leave the log");
}

async fn reader_log_rows(
    args: &trailcast::config::ScyllaArgs,
    keyspace: &str,
    real: bool,
) -> usize {
    let session = trailcast::store::scylla::connect(args, real).await.unwrap();
    session
        .query_unpaged(format!("SELECT activity_id FROM {keyspace}.ingest_log"), ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows_num()
}
