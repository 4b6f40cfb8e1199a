//! Two real server processes sharing one Redis and one CQL server: an
//! athlete posts through node A, a friend watches through node B and sees
//! the same lagged stream, over polling and WebSocket. Persistent state
//! (users, friends, activities, points) is shared through the Scylla
//! backend, on kassandra (in this process) or the cluster in
//! `SCYLLA_NODES`; live state through the Redis on 127.0.0.1:6379.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::helpers::{TestApp, cql_server, now_ms, start_binary};
use crate::live::{close_reason, connect, next_json};
use crate::redis::{SHARED_REDIS, prefix};

const LAG_S: i64 = 5;
const POINTS: usize = 8;

fn ms(rfc3339: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

/// Polls `node` with its own cursor until the activity's finish is
/// released; returns the points' timestamps in the order received.
async fn poll_until_finished(node: &TestApp, id: &str, token: &str) -> Vec<i64> {
    let mut received = Vec::new();
    let mut cursor = String::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        assert!(Instant::now() < deadline, "finish not released in time");
        let (status, body) = node
            .get(
                &format!("/v1/activities/{id}/live?lag={LAG_S}&after={cursor}"),
                token,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let server_now = ms(&body["server_time"]);
        for p in body["points"].as_array().unwrap() {
            let ts = ms(&p["ts"]);
            assert!(
                server_now - ts >= LAG_S * 1000 - 100,
                "released before its lag"
            );
            received.push(ts);
        }
        if body["state"] == "COMPLETE" {
            return received;
        }
        cursor = body["cursor"].as_str().unwrap().to_string();
        let retry = body["retry_after_ms"].as_u64().unwrap().min(1_000);
        tokio::time::sleep(Duration::from_millis(retry)).await; // as a client is told to
    }
}

/// Two server processes sharing one CQL keyspace (kassandra in this
/// process, or the cluster in `SCYLLA_NODES`) and one Redis prefix; the
/// processes end when this is dropped.
pub(crate) struct TwoNodes {
    pub a: TestApp,
    pub b: TestApp,
    _processes: (tokio::process::Child, tokio::process::Child),
}

pub(crate) async fn two_nodes() -> TwoNodes {
    two_nodes_on(&["--redis-url", SHARED_REDIS]).await
}

/// The same over the local Redis Cluster (`scripts/redis-cluster`).
pub(crate) async fn two_nodes_on_a_redis_cluster() -> TwoNodes {
    let nodes = crate::redis::cluster_nodes().join(",");
    crate::redis::cluster_redis(&prefix()).await;
    two_nodes_on(&["--redis-cluster-nodes", &nodes]).await
}

async fn two_nodes_on(redis: &[&str]) -> TwoNodes {
    let cql = cql_server();
    let (keyspace, _) = cql.keyspace().await;
    println!("two nodes on {}, keyspace {keyspace}", cql.name());
    let prefix = prefix();
    let nodes = cql.nodes.join(",");
    let args = [
        "--rate-limit",
        "1000000",
        "--scylla-nodes",
        &nodes,
        "--scylla-keyspace",
        &keyspace,
        "--redis-prefix",
        &prefix,
    ];
    let args: Vec<&str> = args.iter().chain(redis).copied().collect();
    let (node_a, base_a) = start_binary(&args).await;
    let (node_b, base_b) = start_binary(&args).await;
    let nodes = TwoNodes {
        a: TestApp::at(base_a),
        b: TestApp::at(base_b),
        _processes: (node_a, node_b),
    };
    // From here on each node keeps its copies until the other says it
    // changed them (`store::changes`): the tests below would see a change
    // made through the other node only after a minute without that.
    until_listening(&nodes.a).await;
    until_listening(&nodes.b).await;
    nodes
}

/// What `/readyz` says of the node's change bus.
async fn changes_status(node: &TestApp) -> Value {
    let (_, ready) = node.call(reqwest::Method::GET, "/readyz", None, None).await;
    ready["checks"]["changes"].clone()
}

/// Waits (bounded) until the node hears the other nodes' changes.
async fn until_listening(node: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = changes_status(node).await;
        if status == "listening" {
            return;
        }
        assert!(Instant::now() < deadline, "never listening: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded by `within`) until node's view of the activity has
/// `state`; returns how long that took.
async fn until_state(node: &TestApp, id: &str, token: &str, state: &str, within: Duration) {
    let started = Instant::now();
    loop {
        let (status, activity) = node.get(&format!("/v1/activities/{id}"), token).await;
        assert_eq!(status, StatusCode::OK, "{activity}");
        if activity["state"] == state {
            return;
        }
        assert!(
            started.elapsed() < within,
            "still {} after {within:?}, not {state}",
            activity["state"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The node tracking an activity (A) holds its record and keeps it a
/// minute while it hears the other nodes. A pause taken through node B
/// reaches A at once all the same, while the athlete keeps posting to A,
/// and so does the resume after A lost its subscription and got it back.
#[tokio::test]
async fn a_change_through_another_node_reaches_the_tracking_node_at_once() {
    let port = crate::redis::free_port();
    let _redis = crate::redis::start_redis(port).await;
    let url = format!("redis://127.0.0.1:{port}");
    let nodes = two_nodes_on(&["--redis-url", &url]).await;
    let (a, b) = (&nodes.a, &nodes.b);
    let ann = a.user("Ann").await;
    let id = a.start(&ann, json!({"type": "RUN"})).await;
    let t0 = now_ms();
    let track = crate::helpers::track(t0, 40, 1_000, 3.0);
    let (status, body) = a.post_points(&ann, &id, track[0].clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    until_state(a, &id, &ann.token, "STARTED", Duration::ZERO).await;

    let path = format!("/v1/activities/{id}");
    let (status, body) = b.patch(&path, &ann.token, json!({"state": "PAUSED"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = a.post_points(&ann, &id, track[1].clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    until_state(a, &id, &ann.token, "PAUSED", Duration::from_secs(3)).await;

    // Every pub/sub connection of this Redis dropped: A reconnects, and
    // doubts whatever it holds (a change may have gone by meanwhile).
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let killed: i64 = ::redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(killed, 2, "one subscription per node");
    let (status, body) = b
        .patch(&path, &ann.token, json!({"state": "STARTED"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    until_listening(a).await;
    let (status, body) = a.post_points(&ann, &id, track[2].clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    until_state(a, &id, &ann.token, "STARTED", Duration::from_secs(3)).await;
}

#[tokio::test]
async fn an_athlete_posting_to_node_a_is_watched_through_node_b() {
    watched_through_node_b(two_nodes().await).await;
}

/// The same with live state on a Redis Cluster: streams, the live
/// registry (friends live now, split per slot) and leaderboards.
#[tokio::test]
async fn an_athlete_posting_to_node_a_is_watched_through_node_b_over_a_redis_cluster() {
    watched_through_node_b(two_nodes_on_a_redis_cluster().await).await;
}

async fn watched_through_node_b(nodes: TwoNodes) {
    let (a, b) = (&nodes.a, &nodes.b);

    // Accounts and friendship, each made on a different node.
    let ann = a.user("Ann").await;
    let bob = b.user("Bob").await;
    assert_eq!(
        a.put(&format!("/v1/friends/{}", bob.id), &ann.token)
            .await
            .0,
        StatusCode::OK
    );
    let (_, asked) = b.put(&format!("/v1/friends/{}", ann.id), &bob.token).await;
    assert_eq!(asked["status"], "friends", "{asked}");
    let (_, friends) = a.get("/v1/friends", &ann.token).await;
    assert_eq!(friends["items"][0]["id"], bob.id.as_str());

    let id = a.start(&ann, json!({"type": "RUN"})).await;
    let (status, seen) = b.get(&format!("/v1/activities/{id}"), &bob.token).await;
    assert_eq!(
        (status, seen["state"].as_str()),
        (StatusCode::OK, Some("STARTED"))
    );
    let (_, live) = b.get("/v1/live", &bob.token).await;
    assert_eq!(live["items"][0]["activity"]["id"], id.as_str(), "{live}");

    // Bob watches through B: a WebSocket, and a poller; Ann herself polls
    // through A.
    let mut ws = connect(b, &id, &format!("lag={LAG_S}&token={}", bob.token)).await;
    assert_eq!(
        next_json(&mut ws, Duration::from_secs(5)).await.unwrap()["type"],
        "catch_up"
    );
    let poll_b = {
        let (b, id, token) = (TestApp::at(b.base.clone()), id.clone(), bob.token.clone());
        tokio::spawn(async move { poll_until_finished(&b, &id, &token).await })
    };
    let poll_a = {
        let (a, id, token) = (TestApp::at(a.base.clone()), id.clone(), ann.token.clone());
        tokio::spawn(async move { poll_until_finished(&a, &id, &token).await })
    };

    // Ann runs: a point every 400 ms through A, then finishes through A.
    let mut sent = Vec::new();
    for i in 0..POINTS {
        let t = now_ms();
        let point = json!({"ts": t, "lat": 52.5 + i as f64 * 1e-4, "lng": 13.4});
        let (status, body) = a.post_points(&ann, &id, point).await;
        assert_eq!(
            (status, body["accepted"].as_u64()),
            (StatusCode::OK, Some(1))
        );
        sent.push(t);
        if i == 0 {
            let (_, early) = b
                .get(&format!("/v1/activities/{id}/live?lag={LAG_S}"), &bob.token)
                .await;
            assert_eq!(early["points"], json!([]), "nothing before the lag");
        }
        tokio::time::sleep(Duration::from_millis(400)).await; // the athlete's cadence
    }
    let (status, done) = a
        .patch(
            &format!("/v1/activities/{id}"),
            &ann.token,
            json!({"state": "COMPLETE"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");

    let mut over_ws = Vec::new();
    let mut states = Vec::new();
    while let Some(msg) = next_json(&mut ws, Duration::from_secs(15)).await {
        match msg["type"].as_str().unwrap() {
            "points" => over_ws.extend(
                msg["points"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| ms(&p["ts"])),
            ),
            "state" => states.push(msg["state"].as_str().unwrap().to_owned()),
            _ => {}
        }
        if states.last().is_some_and(|s| s == "COMPLETE") {
            break;
        }
    }
    assert_eq!(
        close_reason(&mut ws, Duration::from_secs(5)).await,
        (1000, "activity finished".into())
    );
    assert_eq!(over_ws, sent, "WebSocket on B: every point once, in order");
    assert_eq!(states.last().map(String::as_str), Some("COMPLETE"));
    assert_eq!(poll_b.await.unwrap(), sent, "polling on B");
    assert_eq!(poll_a.await.unwrap(), sent, "polling on A");

    // The finished activity, read through B, is the one A completed.
    let (_, on_b) = b.get(&format!("/v1/activities/{id}"), &bob.token).await;
    assert_eq!(on_b["state"], "COMPLETE", "{on_b}");
    assert_eq!(on_b["stats"]["points"], POINTS as u64);
    let (_, route) = b
        .get(&format!("/v1/activities/{id}/route"), &bob.token)
        .await;
    let route: Vec<i64> = route["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| ms(&p["ts"]))
        .collect();
    assert_eq!(
        route, sent,
        "the route, read from the shared store through B"
    );
}

/// A share link revoked through node A closes its viewer's socket on node
/// B at once (B would otherwise notice at its next check of the link, up
/// to 15 s later).
#[tokio::test]
async fn a_share_revoked_through_one_node_closes_its_socket_on_the_other() {
    let nodes = two_nodes().await;
    let (a, b) = (&nodes.a, &nodes.b);
    let ann = a.user("Ann").await;
    let id = a.start(&ann, json!({"type": "RUN"})).await;
    let (status, share) = a
        .post("/v1/shares", &ann.token, json!({"activity_id": id}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{share}");
    let token = share["token"].as_str().unwrap();
    let mut ws = connect(b, &id, &format!("share={token}")).await;
    assert_eq!(
        next_json(&mut ws, Duration::from_secs(5)).await.unwrap()["type"],
        "catch_up"
    );
    let share_id = share["id"].as_str().unwrap();
    let (status, _) = a
        .delete(&format!("/v1/shares/{share_id}"), &ann.token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        close_reason(&mut ws, Duration::from_secs(3)).await,
        (4003, "share revoked".into())
    );
}
