//! The recent-positions contract on both backends, and a node riding out a
//! Redis outage. Needs a Redis on 127.0.0.1:6379 (scripts/test starts one)
//! and the `redis-server` binary for the outage test.

use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use uuid::Uuid;

use trailcast::domain::{ActivityState, Point, Stats};
use trailcast::store::RecentEntry;
use trailcast::store::recent::RECENT_CAP;
use trailcast::store::recent_memory::MemoryRecentStore;
use trailcast::store::recent_redis::RedisRecentStore;
use trailcast::store::registry::{LiveRegistry, MemoryRegistry, REGISTRY_TTL_MS, RedisRegistry};
use trailcast::store::{RecentItem, RecentStore};

use crate::helpers::{now_ms, spawn_app_with, track};

pub const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

pub fn prefix() -> String {
    format!("tc-test-{}:", Uuid::now_v7())
}

/// The shared Redis under `prefix`, failing loudly if it does not answer.
pub async fn shared_redis(prefix: &str) -> RedisRecentStore {
    let store = RedisRecentStore::new(SHARED_REDIS, prefix).unwrap();
    if let Err(e) = store.health().await {
        panic!("no Redis at {SHARED_REDIS} ({e}); scripts/test starts one");
    }
    store
}

/// The local Redis Cluster's nodes: `TRAILCAST_TEST_REDIS_CLUSTER`, else
/// the ones `scripts/redis-cluster` starts.
pub fn cluster_nodes() -> Vec<String> {
    std::env::var("TRAILCAST_TEST_REDIS_CLUSTER")
        .unwrap_or_else(|_| {
            (7101..=7106)
                .map(|p| format!("127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .split(',')
        .map(str::to_string)
        .collect()
}

/// The local Redis Cluster under `prefix`, failing loudly if it does not
/// answer.
pub async fn cluster_redis(prefix: &str) -> RedisRecentStore {
    let nodes = cluster_nodes();
    let store = RedisRecentStore::cluster(&nodes, prefix).unwrap();
    if let Err(e) = store.health().await {
        panic!(
            "no Redis Cluster at {nodes:?} ({e}); scripts/test starts one (scripts/redis-cluster)"
        );
    }
    store
}

fn p(ts: i64) -> Point {
    Point {
        ts,
        lat: 48.0,
        lng: 11.0,
        alt: Some(500.0),
        speed: None,
        accuracy: Some(3.0),
        hr: Some(150),
        cadence: None,
        battery: None,
    }
}

async fn recent_contract(store: &dyn RecentStore) {
    let a = Uuid::now_v7();
    assert!(
        store.since(a, None, 10).await.unwrap().is_empty(),
        "unknown activity has an empty stream"
    );
    let items = vec![
        RecentItem::State {
            state: ActivityState::Started,
            at: 1_000,
        },
        RecentItem::Point(p(2_000)),
        RecentItem::Point(p(1_500)),
    ];
    store.append(a, &items).await.unwrap();
    store
        .append(a, &[RecentItem::Point(p(3_000))])
        .await
        .unwrap();
    let all = store.since(a, None, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.item.clone()).collect::<Vec<_>>(),
        [items.clone(), vec![RecentItem::Point(p(3_000))]].concat()
    );
    assert!(
        all.windows(2).all(|w| w[0].cursor < w[1].cursor),
        "cursors grow"
    );
    let now = now_ms();
    assert!(
        all.iter().all(|e| (now - e.cursor.ms).abs() < 5_000),
        "cursors are arrival times"
    );
    let after_second = store.since(a, Some(all[1].cursor), 100).await.unwrap();
    assert_eq!(after_second, all[2..].to_vec(), "since is exclusive");
    assert_eq!(
        store.since(a, None, 2).await.unwrap(),
        all[..2].to_vec(),
        "limit"
    );
    let latest = store.latest_point(a, now + 1_000).await.unwrap().unwrap();
    assert_eq!(latest.item, RecentItem::Point(p(3_000)));
    assert_eq!(
        store.latest_point(a, all[0].cursor.ms - 1).await.unwrap(),
        None,
        "nothing arrived by then"
    );

    statistics_contract(store).await;

    let b = Uuid::now_v7();
    let many: Vec<RecentItem> = (0..RECENT_CAP as i64 + 500)
        .map(|i| RecentItem::Point(p(i)))
        .collect();
    // In posts of a realistic size: one 16,884-entry pipeline can take
    // longer than the store's 500 ms response timeout on a loaded machine.
    for chunk in many.chunks(500) {
        store.append(b, chunk).await.unwrap();
    }
    let mut kept = Vec::new();
    loop {
        let page = store
            .since(b, kept.last().map(|e: &RecentEntry| e.cursor), 1_000)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        kept.extend(page);
    }
    // Redis trims with `MAXLEN ~` (whole macro nodes), so allow its slack.
    assert!(
        kept.len() >= RECENT_CAP && kept.len() < RECENT_CAP + 200,
        "{} kept",
        kept.len()
    );
    assert_eq!(
        kept.last().unwrap().item,
        *many.last().unwrap(),
        "the newest are kept"
    );
    store.health().await.unwrap();
}

fn stats(points: u64) -> RecentItem {
    RecentItem::Stats(Stats {
        distance_m: points as f64 * 4.5,
        moving_time_s: points as f64,
        elapsed_time_s: points as f64 + 0.5,
        avg_pace_s_per_km: Some(222.2),
        avg_speed_m_s: Some(4.5),
        elevation_gain_m: 1.5,
        calories_kcal: 3.0,
        points,
        step: None,
    })
}

/// Statistics end an append and follow the entry appended before them. A
/// backend may keep only the newest (Redis does, #13: they were half of
/// every stream), so a reader is promised the newest statistics after its
/// cursor, in their place, and no page boundary loses them or a point.
async fn statistics_contract(store: &dyn RecentStore) {
    let c = Uuid::now_v7();
    let point = |ts| RecentItem::Point(p(ts));
    store.append(c, &[point(1_000), stats(1)]).await.unwrap();
    let first = store.since(c, None, 100).await.unwrap();
    assert_eq!(
        first.iter().map(|e| e.item.clone()).collect::<Vec<_>>(),
        [point(1_000), stats(1)]
    );
    store
        .append(c, &[point(2_000), point(3_000), stats(3)])
        .await
        .unwrap();
    let all = store.since(c, None, 100).await.unwrap();
    let items: Vec<RecentItem> = all.iter().map(|e| e.item.clone()).collect();
    assert_eq!(
        items
            .iter()
            .filter(|i| matches!(i, RecentItem::Point(_)))
            .cloned()
            .collect::<Vec<_>>(),
        [point(1_000), point(2_000), point(3_000)]
    );
    assert_eq!(items[items.len() - 2..], [point(3_000), stats(3)]);
    assert!(all.windows(2).all(|w| w[0].cursor < w[1].cursor));
    // A reader that saw the first post gets the second and its statistics.
    let next = store.since(c, Some(first[1].cursor), 100).await.unwrap();
    assert_eq!(
        next.iter().map(|e| e.item.clone()).collect::<Vec<_>>(),
        [point(2_000), point(3_000), stats(3)]
    );
    // One entry per page: the same entries, none lost at a boundary.
    let mut paged: Vec<RecentEntry> = Vec::new();
    loop {
        let page = store
            .since(c, paged.last().map(|e| e.cursor), 1)
            .await
            .unwrap();
        assert!(page.len() <= 1, "a page of {}", page.len());
        if page.is_empty() {
            break;
        }
        paged.extend(page);
    }
    assert_eq!(paged, all);
    // Statistics with nothing before them in the append still arrive.
    store.append(c, &[stats(4)]).await.unwrap();
    let last = store
        .since(c, all.last().map(|e| e.cursor), 100)
        .await
        .unwrap();
    assert_eq!(
        last.iter().map(|e| e.item.clone()).collect::<Vec<_>>(),
        [stats(4)]
    );
    // And the next post after them lands after them.
    store.append(c, &[point(5_000), stats(5)]).await.unwrap();
    let after = store.since(c, Some(last[0].cursor), 100).await.unwrap();
    assert_eq!(
        after.iter().map(|e| e.item.clone()).collect::<Vec<_>>(),
        [point(5_000), stats(5)]
    );
}

#[tokio::test]
async fn recent_positions_contract_in_process() {
    recent_contract(&MemoryRecentStore::new()).await;
}

#[tokio::test]
async fn recent_positions_contract_on_redis() {
    recent_contract(&shared_redis(&prefix()).await).await;
}

#[tokio::test]
async fn recent_positions_contract_on_a_redis_cluster() {
    let store = cluster_redis(&prefix()).await;
    assert_eq!(store.backend(), "redis-cluster");
    recent_contract(&store).await;
}

async fn registry_contract(registry: &dyn LiveRegistry) {
    let (ann, bob, cy) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (run, ride, walk) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let now = now_ms();
    let sorted = |mut v: Vec<(Uuid, Uuid)>| {
        v.sort();
        v
    };
    assert!(registry.live_of(&[], now).await.unwrap().is_empty());
    registry.mark_live(ann, run, now - 10_000).await.unwrap();
    registry.mark_live(ann, ride, now).await.unwrap();
    registry.mark_live(bob, walk, now).await.unwrap();
    registry.mark_live(ann, run, now).await.unwrap(); // marked again: one entry
    assert_eq!(
        sorted(
            registry
                .live_of(&[ann, bob, cy], now - 60_000)
                .await
                .unwrap()
        ),
        sorted(vec![(ann, run), (ann, ride), (bob, walk)])
    );
    assert_eq!(
        registry.live_of(&[bob], now - 60_000).await.unwrap(),
        vec![(bob, walk)],
        "only the athletes asked for"
    );
    registry.mark_done(ann, ride).await.unwrap();
    registry.mark_done(cy, walk).await.unwrap(); // not there: no-op
    assert_eq!(
        registry.live_of(&[ann], now - 60_000).await.unwrap(),
        vec![(ann, run)]
    );
    // An abandoned activity drops out once its mark is older than asked.
    let stale = Uuid::now_v7();
    registry
        .mark_live(cy, stale, now - REGISTRY_TTL_MS - 1)
        .await
        .unwrap();
    assert!(
        registry
            .live_of(&[cy], now - REGISTRY_TTL_MS)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn live_registry_contract_in_process() {
    registry_contract(&MemoryRegistry::default()).await;
}

#[tokio::test]
async fn the_in_process_registry_sweeps_abandoned_activities() {
    use trailcast::startup::Sweep;
    let registry = MemoryRegistry::default();
    let (ann, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let (abandoned, live) = (Uuid::now_v7(), Uuid::now_v7());
    let now = now_ms();
    registry.mark_live(ann, abandoned, now).await.unwrap();
    registry.mark_live(bob, live, now + 60_000).await.unwrap();
    // Asked with an old `since`, both are still there until swept.
    let since = now - REGISTRY_TTL_MS;
    assert_eq!(registry.live_of(&[ann, bob], since).await.unwrap().len(), 2);
    registry.sweep(now + REGISTRY_TTL_MS + 1);
    assert_eq!(
        registry.live_of(&[ann, bob], since).await.unwrap(),
        vec![(bob, live)],
        "the mark older than REGISTRY_TTL_MS is gone, the newer one kept"
    );
}

#[tokio::test]
async fn live_registry_contract_on_redis() {
    let store = shared_redis(&prefix()).await;
    registry_contract(&RedisRegistry::new(store.connection(), &prefix())).await;
}

#[tokio::test]
async fn live_registry_contract_on_a_redis_cluster() {
    let store = cluster_redis(&prefix()).await;
    registry_contract(&RedisRegistry::new(store.connection(), &prefix())).await;
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn start_redis(port: u16) -> Child {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            // DEBUG SLEEP stalls it in the leaderboard test.
            "--enable-debug-command",
            "yes",
        ])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server is installed (scripts/test installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "redis-server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}

/// Stalls the Redis at `url` for `seconds` (DEBUG SLEEP); returns once
/// the stall has begun (a PING goes unanswered) with the task that ends
/// with it.
pub async fn stall_redis(url: &str, seconds: u64) -> tokio::task::JoinHandle<()> {
    let client = ::redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    conn.set_response_timeout(Duration::from_secs(seconds + 30));
    let mut probe = client.get_multiplexed_async_connection().await.unwrap();
    let stall = tokio::spawn(async move {
        ::redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(seconds)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "Redis never stalled");
        let ping = ::redis::cmd("PING");
        let answer = ping.query_async::<()>(&mut probe);
        if tokio::time::timeout(Duration::from_millis(100), answer)
            .await
            .is_err()
        {
            return stall;
        }
    }
}

/// Waits (bounded) until the node owes Redis nothing.
pub async fn until_settled(app: &crate::helpers::TestApp) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, ready) = app.call(reqwest::Method::GET, "/readyz", None, None).await;
        if ready["checks"]["owed_activities"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "never settled: {ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Points posted while Redis stalls time out there, are applied by Redis
/// afterwards and owed by the node: watchers still get each point once.
#[tokio::test]
async fn a_redis_stall_delivers_each_point_once() {
    let port = free_port();
    let _redis = start_redis(port).await;
    let url = format!("redis://127.0.0.1:{port}");
    let app = spawn_app_with(|c| c.redis_url = Some(url.clone())).await;
    let ann = app.user("Ann").await;
    let t0 = now_ms() - 60_000;
    let id = app
        .start(&ann, json!({"type": "RUN", "started_at": t0}))
        .await;
    let pt = |i: i64| json!({"ts": t0 + i * 1000, "lat": 48.0 + i as f64 * 1e-4, "lng": 11.0});
    assert_eq!(app.post_points(&ann, &id, pt(1)).await.0, StatusCode::OK);
    let stall = stall_redis(&url, 3).await;
    for i in 2..5 {
        let (status, body) = app.post_points(&ann, &id, pt(i)).await;
        assert_eq!(
            (status, body["accepted"].as_u64()),
            (StatusCode::OK, Some(1))
        );
    }
    stall.await.unwrap();
    until_settled(&app).await;
    let store = RedisRecentStore::new(&url, "tc:").unwrap();
    let stream = store.since(id.parse().unwrap(), None, 100).await.unwrap();
    let points: Vec<i64> = stream
        .iter()
        .filter_map(|e| match &e.item {
            RecentItem::Point(p) => Some(p.ts),
            _ => None,
        })
        .collect();
    assert_eq!(
        points,
        (1..5).map(|i| t0 + i * 1000).collect::<Vec<_>>(),
        "each point once, in order"
    );
}

#[tokio::test]
async fn ingest_survives_a_redis_outage_and_watchers_catch_up_after_it() {
    let port = free_port();
    let mut redis = start_redis(port).await;
    let url = format!("redis://127.0.0.1:{port}");
    let app = spawn_app_with(|c| c.redis_url = Some(url.clone())).await;
    let ann = app.user("Ann").await;
    let fan = app.user("Fan").await;
    app.befriend(&ann, &fan).await;
    let t0 = now_ms() - 60_000;
    let id = app
        .start(&ann, json!({"type": "RUN", "started_at": t0}))
        .await;
    let pt = |i: i64| json!({"ts": t0 + i * 1000, "lat": 48.0 + i as f64 * 1e-4, "lng": 11.0});
    assert_eq!(app.post_points(&ann, &id, pt(1)).await.0, StatusCode::OK);
    let (_, ready) = app.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(
        (
            ready["status"].as_str(),
            ready["checks"]["recent_positions"]["backend"].as_str()
        ),
        (Some("ready"), Some("redis"))
    );

    redis.start_kill().unwrap();
    redis.wait().await.unwrap();
    for i in 2..6 {
        let (status, body) = app.post_points(&ann, &id, pt(i)).await;
        assert_eq!(
            (status, body["accepted"].as_u64()),
            (StatusCode::OK, Some(1)),
            "ingest goes on: {body}"
        );
    }
    let (status, ready) = app.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["checks"]["recent_positions"]["status"], "down");
    let (status, live) = app
        .get(&format!("/v1/activities/{id}/live?lag=5"), &ann.token)
        .await;
    assert_eq!(
        (status, live["live_status"].as_str()),
        (StatusCode::OK, Some("degraded")),
        "{live}"
    );
    let (_, route) = app
        .get(&format!("/v1/activities/{id}/route"), &ann.token)
        .await;
    assert_eq!(
        route["points"].as_array().unwrap().len(),
        5,
        "persisted while Redis was down"
    );
    // A walk finished while Redis is down owes its distance to the
    // leaderboards.
    let walk = app
        .start(&ann, json!({"type": "WALK", "started_at": t0}))
        .await;
    // 1.1 m/s, a fix every 10 s: about 100 m.
    let stroll = track(t0, 10, 10_000, 1.1);
    let (status, _) = app
        .post_points(&ann, &walk, json!({ "points": stroll }))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, walked) = app
        .patch(
            &format!("/v1/activities/{walk}"),
            &ann.token,
            json!({"state": "COMPLETE"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{walked}");
    let walked_m = walked["stats"]["distance_m"].as_f64().unwrap();
    assert!(walked_m > 50.0, "{walked}");

    let (status, now_live) = app.get("/v1/live", &fan.token).await;
    assert_eq!(status, StatusCode::OK, "{now_live}");
    assert_eq!(
        now_live["items"][0]["activity"]["id"],
        id.as_str(),
        "friends live now, read from persistence without the registry"
    );

    let _redis = start_redis(port).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, ready) = app.call(reqwest::Method::GET, "/readyz", None, None).await;
        if ready["status"] == "ready"
            && ready["checks"]["recent_positions"]["unpublished_activities"] == 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {ready}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The owed distance is added once Redis is back, without another
    // COMPLETE (the restarted Redis is empty, so it is all there is).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, board) = app
            .get("/v1/leaderboards/WALK?window=all", &ann.token)
            .await;
        if let Some(m) = board["items"][0]["distance_m"].as_f64() {
            assert!((m - walked_m).abs() < 0.2, "{board} vs {walked_m}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "owed distance never added: {board}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The back-filled stream reaches watchers once their lag has passed.
    let store = RedisRecentStore::new(&url, "tc:").unwrap();
    let stream = store.since(id.parse().unwrap(), None, 100).await.unwrap();
    let points: Vec<i64> = stream
        .iter()
        .filter_map(|e| match &e.item {
            RecentItem::Point(p) => Some(p.ts),
            _ => None,
        })
        .collect();
    assert_eq!(
        points,
        (1..6).map(|i| t0 + i * 1000).collect::<Vec<_>>(),
        "missed points re-published in order, with the one the dead Redis \
         had acknowledged and lost"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, live) = app
            .get(&format!("/v1/activities/{id}/live?lag=5"), &ann.token)
            .await;
        if live["live_status"] == "ok" && live["points"].as_array().unwrap().len() == 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "watchers never caught up: {live}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_poller_whose_cursor_left_the_window_is_caught_up_afresh() {
    let prefix = prefix();
    let app = spawn_app_with(|c| {
        c.redis_url = Some(SHARED_REDIS.into());
        c.redis_prefix = prefix.clone();
    })
    .await;
    let ann = app.user("Ann").await;
    let t0 = now_ms() - 60_000;
    let id = app
        .start(&ann, json!({"type": "RUN", "started_at": t0}))
        .await;
    let path = format!("/v1/activities/{id}");
    for state in ["PAUSED", "STARTED"] {
        let (status, body) = app
            .patch(&path, &ann.token, json!({ "state": state }))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let pts: Vec<_> = (1..4)
        .map(|i| json!({"ts": now_ms() - 5_000 + i * 1000, "lat": 48.0 + i as f64 * 1e-5, "lng": 11.0}))
        .collect();
    assert_eq!(
        app.post_points(&ann, &id, json!({ "points": pts })).await.0,
        StatusCode::OK
    );
    // Trim the stream's beginning up to the resume, as the time window
    // would after 30 s, before any node reads it: it now begins with a
    // STARTED state, but not the one that started the activity.
    let store = shared_redis(&prefix).await;
    let stream = store.since(id.parse().unwrap(), None, 100).await.unwrap();
    let resume = stream
        .iter()
        .rfind(|e| {
            matches!(
                e.item,
                RecentItem::State {
                    state: ActivityState::Started,
                    ..
                }
            )
        })
        .unwrap()
        .cursor;
    let mut conn = store.connection();
    let _: i64 = redis::cmd("XTRIM")
        .arg(format!("{prefix}recent:{{{id}}}"))
        .arg("MINID")
        .arg(resume.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    let cursor = loop {
        let (status, body) = app
            .get(
                &format!("/v1/activities/{id}/live?lag=5&after=1-0"),
                &ann.token,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["reset"], true, "{body}");
        if body["points"].as_array().unwrap().len() == 3 {
            break body["cursor"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "points never released: {body}");
        let retry = body["retry_after_ms"].as_u64().unwrap();
        tokio::time::sleep(Duration::from_millis(retry)).await; // as a client is told to
    };
    let (_, body) = app
        .get(
            &format!("/v1/activities/{id}/live?lag=5&after={cursor}"),
            &ann.token,
        )
        .await;
    assert_eq!(
        (
            body["reset"].as_bool(),
            body["points"].as_array().unwrap().len()
        ),
        (Some(false), 0),
        "an up-to-date cursor goes on: {body}"
    );
}

/// A Redis Cluster of its own (`scripts/redis-cluster` on 7201-7206), so
/// that killing a primary does not disturb the other tests.
async fn own_cluster() -> Vec<String> {
    let out = Command::new("scripts/redis-cluster")
        .env("REDIS_CLUSTER_BASE", "7200")
        .output()
        .await
        .expect("scripts/redis-cluster runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .split(',')
        .map(str::to_string)
        .collect()
}

/// Whether a `CLUSTER NODES` line's slot ranges hold `slot`.
fn serves(line: &str, slot: u16) -> bool {
    line.split_whitespace().skip(8).any(|range| {
        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
        match (lo.parse::<u16>(), hi.parse::<u16>()) {
            (Ok(lo), Ok(hi)) => (lo..=hi).contains(&slot),
            _ => false,
        }
    })
}

/// `redis-cli -p <port> <args>`'s output.
async fn redis_cli(port: &str, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port)
        .args(args)
        .output()
        .await
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// A primary dies mid-activity: ingest keeps answering, its replica is
/// promoted, and once the client follows the new slot map the stream goes
/// on with every point exactly once (what the dead primary had not passed
/// on is re-published from persistence).
#[tokio::test]
async fn a_redis_cluster_primary_dies_mid_activity() {
    let nodes = own_cluster().await;
    let app = spawn_app_with(|c| c.redis_cluster_nodes = nodes.clone()).await;
    let ann = app.user("Ann").await;
    let t0 = now_ms() - 60_000;
    let id = app
        .start(&ann, json!({"type": "RUN", "started_at": t0}))
        .await;
    let pt = |i: i64| json!({"ts": t0 + i * 1000, "lat": 48.0 + i as f64 * 1e-4, "lng": 11.0});
    for i in 1..4 {
        assert_eq!(app.post_points(&ann, &id, pt(i)).await.0, StatusCode::OK);
    }

    // The primary holding this activity's stream.
    let port = |node: &str| node.rsplit(':').next().unwrap().to_string();
    let any = port(&nodes[0]);
    let slot: u16 = redis_cli(
        &any,
        &["cluster", "keyslot", &format!("tc:recent:{{{id}}}")],
    )
    .await
    .trim()
    .parse()
    .unwrap();
    let table = redis_cli(&any, &["cluster", "nodes"]).await;
    let primary = table
        .lines()
        .find(|line| line.contains("master") && !line.contains("fail") && serves(line, slot))
        .expect("a primary serves the slot");
    let victim = port(
        primary
            .split_whitespace()
            .nth(1)
            .unwrap()
            .split('@')
            .next()
            .unwrap(),
    );
    // kill -9: gone at once, as a crashed machine.
    let info = redis_cli(&victim, &["info", "server"]).await;
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .unwrap()
        .trim()
        .to_string();
    let killed = Command::new("kill")
        .args(["-9", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());

    // Ingest answers throughout the failover.
    for i in 4..9 {
        let (status, body) = app.post_points(&ann, &id, pt(i)).await;
        assert_eq!(
            (status, body["accepted"].as_u64()),
            (StatusCode::OK, Some(1)),
            "{body}"
        );
    }
    // Promoted: another primary, not failing, serves the slot.
    let survivor = nodes
        .iter()
        .map(|n| port(n))
        .find(|p| *p != victim)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let table = redis_cli(&survivor, &["cluster", "nodes"]).await;
        let promoted = table.lines().any(|line| {
            line.contains("master")
                && !line.contains("fail")
                && !line.contains(&format!(":{victim}@"))
                && serves(line, slot)
        });
        if promoted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no replica was promoted: {table}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    until_settled(&app).await;
    let (_, ready) = app.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(
        ready["checks"]["recent_positions"]["status"], "up",
        "{ready}"
    );

    let store = RedisRecentStore::cluster(&nodes, "tc:").unwrap();
    let stream = store.since(id.parse().unwrap(), None, 100).await.unwrap();
    let points: Vec<i64> = stream
        .iter()
        .filter_map(|e| match &e.item {
            RecentItem::Point(p) => Some(p.ts),
            _ => None,
        })
        .collect();
    let mut sorted = points.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), points.len(), "no point twice: {points:?}");
    assert_eq!(
        sorted,
        (1..9).map(|i| t0 + i * 1000).collect::<Vec<_>>(),
        "every point"
    );
    // And a watcher polling from now on gets each of them once, as their
    // lag passes (re-published points count from their new arrival).
    let (mut seen, mut cursor) = (Vec::new(), String::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 8 {
        assert!(Instant::now() < deadline, "watcher got only {seen:?}");
        let (status, live) = app
            .get(
                &format!("/v1/activities/{id}/live?lag=5&after={cursor}"),
                &ann.token,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{live}");
        for p in live["points"].as_array().unwrap() {
            seen.push(p["ts"].as_str().unwrap().to_string());
        }
        cursor = live["cursor"].as_str().unwrap().to_string();
        let retry = live["retry_after_ms"].as_u64().unwrap().min(1_000);
        tokio::time::sleep(Duration::from_millis(retry)).await; // as a client is told to
    }
    let mut once = seen.clone();
    once.sort();
    once.dedup();
    assert_eq!((seen.len(), once.len()), (8, 8), "{seen:?}");

    // The dead primary comes back as a replica: the cluster is whole again.
    own_cluster().await;
}
