//! CI smoke run: the real server in-process on port 0, a few hundred
//! athletes for a few seconds (some offline, uploading later as a batch),
//! watched by polling and WebSocket watchers at the shortest lag, then
//! every acknowledged point must be readable from its route.

use std::time::Instant;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use trailcast::config::Config;
use trailcast_loadgen::Options;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_loses_no_acknowledged_point() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::defaults();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = tmp.path().to_path_buf();
    config.redis_url = None;
    config.scylla.nodes = Vec::new();
    // The fleet signs up from one address.
    config.signup_rate = 1e9;
    config.signup_burst = 1e9;
    let listener = TcpListener::bind(config.listen).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(trailcast::run(config, listener, async move {
        let _ = stopped.await;
    }));

    let athletes = 300;
    let opts = Options::parse_from([
        "trailcast-loadgen",
        "--target",
        &base,
        "--athletes",
        &athletes.to_string(),
        "--activities-per-user",
        "3",
        // Fast phones and many offline stretches, so that a few seconds
        // see regular posts, offline batches and pauses.
        "--interval-min-ms",
        "200",
        "--interval-max-ms",
        "400",
        "--offline-permille",
        "300",
        // Long enough for the points of the first second to come out of
        // the 5 s lag to the WebSocket watchers.
        "--duration",
        "7",
        "--baseline",
        "--watchers",
        "5",
        "--ws-watchers",
        "8",
        "--watch-lag",
        "5",
        "--verify",
        &athletes.to_string(),
        "--quiet",
    ]);
    let started = Instant::now();
    let outcome = trailcast_loadgen::run(opts)
        .await
        .expect("the run completes");
    let report = &outcome.report;
    println!("{}", report.to_text());
    println!("smoke run took {:.1} s", started.elapsed().as_secs_f64());

    let ingest = report
        .phases
        .iter()
        .find(|p| p.name == "ingest")
        .expect("an ingest phase");
    let posts = &ingest.endpoints[0];
    assert!(posts.ok > 1000, "too few acknowledged posts: {}", posts.ok);
    assert_eq!(posts.errors, 0, "ingest errors: {:?}", posts.errors_by_kind);
    assert_eq!(
        posts.points_duplicate, 0,
        "a fresh run resends nothing acknowledged"
    );
    assert!(
        ingest.offline_posts_skipped > 0,
        "some phones went offline and uploaded later"
    );
    let ws = ingest.ws_watchers.as_ref().expect("WebSocket watchers ran");
    assert_eq!(ws.watchers, 8);
    assert_eq!(
        ws.connected, 8,
        "connect errors: {:?}",
        ws.connect_errors_by_kind
    );
    assert_eq!(
        ws.dropped_by_server, 0,
        "dropped: {:?}",
        ws.dropped_by_reason
    );
    assert_eq!(ws.still_connected_at_end, 8);
    assert_eq!(ws.malformed_messages, 0);
    assert_eq!(
        ws.watchers_without_points, 0,
        "every WebSocket watcher received points ({} in all)",
        ws.points
    );
    assert!(
        ws.delay_after_ts_ms.p50 >= 5000.0,
        "a point is released no earlier than the lag after its ts: {:?}",
        ws.delay_after_ts_ms
    );
    assert!(
        baseline_has_no_ws(report),
        "WebSocket watchers only watch the ingest phase"
    );
    let baseline = report
        .phases
        .iter()
        .find(|p| p.name == "baseline")
        .expect("a baseline phase");
    assert!(baseline.endpoints[0].ok > 1000, "baseline ran");
    assert!(report.ingest_vs_baseline.is_some());

    let verify = report.verify.as_ref().expect("verification ran");
    assert_eq!(verify.activities_checked, athletes);
    assert_eq!(verify.read_errors, 0);
    assert!(
        verify.acked_points >= posts.points_accepted,
        "every accepted point is counted as acknowledged"
    );
    assert_eq!(
        verify.missing_points, 0,
        "acknowledged points missing: {:?}",
        verify.examples
    );
    assert!(
        outcome.fleet.athletes.iter().any(|a| a.acked() > 10),
        "athletes made progress"
    );

    let memory = report
        .server_memory
        .after_setup
        .expect("the server exports its memory gauges");
    assert_eq!(memory.hot_delta as usize, athletes);

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

fn baseline_has_no_ws(report: &trailcast_loadgen::Report) -> bool {
    report
        .phases
        .iter()
        .filter(|p| p.name == "baseline")
        .all(|p| p.ws_watchers.is_none())
}
