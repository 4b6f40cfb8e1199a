//! One storage contract, run against every persistence backend: the
//! embedded store, and the Scylla backend on the CQL server of
//! `helpers::cql_server` (a real cluster when `SCYLLA_NODES` is set, else
//! the in-memory kassandra). Each run prints which server it used and which
//! cases that server could not cover.
//!
//! kassandra (0.13) cannot cover, and so these cases run only on the
//! embedded store and on a real cluster:
//! - newest-first history order: it ignores `CLUSTERING ORDER BY ... DESC`
//!   and returns clustering columns ascending;
//! - history pages after a cursor: it cannot parse the multi-column slice
//!   `(started_at, activity_id) < (?, ?)` (it prepares the statement with
//!   one bind marker, so the call fails rather than answering wrongly);
//! - bounded pages: it ignores the page size and answers a whole partition
//!   in one page (route pages are still bounded: the store cuts them).

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::json;
use uuid::Uuid;

use trailcast::domain::{Activity, ActivityType, Point, PrivacyZone, Visibility};
use trailcast::store::embedded::EmbeddedStore;
use trailcast::store::scylla::ScyllaStore;
use trailcast::store::{FieldValue, HistoryKey, Persistence, Share, User, read_track};

use crate::helpers::cql_server;

/// What the server under test can answer faithfully.
struct Server {
    name: String,
    /// Clustering order DESC, multi-column slices, page sizes.
    full_cql: bool,
}

struct Report {
    covered: Vec<&'static str>,
    uncovered: Vec<&'static str>,
}

impl Report {
    fn print(&self, server: &Server) {
        println!(
            "storage contract on {}: {} cases passed ({}); not covered here: {}",
            server.name,
            self.covered.len(),
            self.covered.join(", "),
            match self.uncovered.is_empty() {
                true => "none".to_owned(),
                false => self.uncovered.join(", "),
            }
        );
    }
}

fn point(ts: i64, i: usize) -> Point {
    Point {
        ts,
        lat: 52.5 + i as f64 * 1e-5,
        lng: 13.4,
        alt: i.is_multiple_of(2).then_some(34.5),
        speed: i.is_multiple_of(3).then_some(3.2),
        accuracy: Some(4.0),
        hr: i.is_multiple_of(4).then_some(151),
        cadence: None,
        battery: i.is_multiple_of(5).then_some(77),
    }
}

fn activity(athlete: Uuid, started_at: i64) -> Activity {
    Activity::start(
        Uuid::now_v7(),
        athlete,
        ActivityType::Run,
        Visibility::Friends,
        None,
        started_at,
    )
}

fn same(a: &Activity, b: &Activity) -> bool {
    serde_json::to_value(a).unwrap() == serde_json::to_value(b).unwrap()
}

/// A series as read; on a server that ignores `CLUSTERING ORDER BY ...
/// DESC` (the in-memory CQL test server) put in that order here, so the
/// other checks still run there (the order itself is checked only on a
/// real server).
fn newest_first(mut series: Vec<FieldValue>, server: &Server) -> Vec<FieldValue> {
    if !server.full_cql {
        series.sort_by_key(|v| std::cmp::Reverse((v.started_at, v.activity_id)));
    }
    series
}

/// The API's whole time range (`TsInput`: 1970 to 9999).
const ALL_TIME: i64 = 253_402_300_800_000;

async fn contract(store: &Persistence, server: &Server) -> Report {
    let mut covered = Vec::new();
    let mut uncovered = Vec::new();

    // Users and tokens.
    let user = User {
        id: Uuid::now_v7(),
        name: "Ada Ö".into(),
        created_at: 1_700_000_000_123,
        region: Some("DE-BE".into()),
    };
    let token = [7u8; 32];
    store.users.create_user(&user, token).await.unwrap();
    let by_id = store
        .users
        .user(user.id)
        .await
        .unwrap()
        .expect("user by id");
    let by_token = store
        .users
        .user_by_token(token)
        .await
        .unwrap()
        .expect("user by token");
    for found in [by_id, by_token] {
        assert_eq!(
            (
                found.id,
                found.name.as_str(),
                found.created_at,
                found.region.as_deref()
            ),
            (user.id, "Ada Ö", 1_700_000_000_123, Some("DE-BE"))
        );
    }
    assert!(
        store
            .users
            .user_by_token([8u8; 32])
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.users.user(Uuid::now_v7()).await.unwrap().is_none());
    covered.push("users and tokens");

    // Privacy zones: none until set, replaced as a whole, clearable.
    assert!(store.users.privacy_zones(user.id).await.unwrap().is_empty());
    let zones = [
        PrivacyZone {
            lat: 52.52,
            lng: 13.405,
            radius_m: 250.0,
        },
        PrivacyZone {
            lat: -33.9,
            lng: 151.2,
            radius_m: 1_000.0,
        },
    ];
    store
        .users
        .set_privacy_zones(user.id, &zones)
        .await
        .unwrap();
    assert_eq!(store.users.privacy_zones(user.id).await.unwrap(), zones);
    store
        .users
        .set_privacy_zones(user.id, &zones[1..])
        .await
        .unwrap();
    assert_eq!(
        store.users.privacy_zones(user.id).await.unwrap(),
        zones[1..]
    );
    store.users.set_privacy_zones(user.id, &[]).await.unwrap();
    assert!(store.users.privacy_zones(user.id).await.unwrap().is_empty());
    covered.push("privacy zones");

    // Athletes' own courses.
    let course = trailcast::domain::course::Course {
        id: Uuid::now_v7(),
        slug: None,
        name: "Canal loop".into(),
        description: String::new(),
        level: trailcast::domain::course::Level::Beginner,
        themes: vec![],
        steps: vec![],
        route: Some(vec![[52.5, 13.4], [52.51, 13.41]]),
        owner_id: Some(user.id),
        visibility: Visibility::Friends,
    };
    assert!(store.courses.course(course.id).await.unwrap().is_none());
    store.courses.put_course(&course).await.unwrap();
    assert_eq!(store.courses.course(course.id).await.unwrap(), Some(course));
    covered.push("courses");

    // Devices: by key, by owner, updated, deleted with their key.
    let mut device = trailcast::store::Device {
        id: Uuid::now_v7(),
        owner_id: user.id,
        name: "Pixel".into(),
        activity_type: ActivityType::Run,
        created_at: 1_700_000_000_000,
        key_hash: [9u8; 32],
        current_activity: None,
    };
    store.devices.put_device(&device).await.unwrap();
    assert_eq!(
        store.devices.device_by_key([9u8; 32]).await.unwrap(),
        Some(device.clone())
    );
    assert!(
        store
            .devices
            .device_by_key([8u8; 32])
            .await
            .unwrap()
            .is_none()
    );
    device.current_activity = Some(Uuid::now_v7());
    store.devices.put_device(&device).await.unwrap();
    assert_eq!(
        store.devices.devices_of(user.id).await.unwrap(),
        [device.clone()]
    );
    store.devices.delete_device(&device).await.unwrap();
    assert!(
        store
            .devices
            .device_by_key([9u8; 32])
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.devices.devices_of(user.id).await.unwrap().is_empty());
    covered.push("devices");

    // Field series: one partition per athlete and field, newest first, a
    // time range, overwrite, delete.
    let athlete = Uuid::now_v7();
    let keys: Vec<HistoryKey> = (0..5)
        .map(|i| HistoryKey {
            started_at: 1_700_000_000_000 + i * 86_400_000,
            activity_id: Uuid::now_v7(),
        })
        .collect();
    for (i, key) in keys.iter().enumerate() {
        let visibility = if i == 1 {
            Visibility::Private
        } else {
            Visibility::Friends
        };
        let values = [
            ("distance_m".to_string(), 1_000.0 * (i + 1) as f64),
            ("rpe".to_string(), i as f64),
        ];
        store
            .fields
            .put_fields(athlete, *key, visibility, &values)
            .await
            .unwrap();
    }
    let all = newest_first(
        store
            .fields
            .field_series(athlete, "distance_m", 0, ALL_TIME, 100)
            .await
            .unwrap(),
        server,
    );
    let values: Vec<f64> = all.iter().map(|v| v.value).collect();
    assert_eq!(
        values,
        [5_000.0, 4_000.0, 3_000.0, 2_000.0, 1_000.0],
        "newest first"
    );
    assert_eq!(all[3].visibility, Visibility::Private);
    assert_eq!(
        (all[0].activity_id, all[0].started_at),
        (keys[4].activity_id, keys[4].started_at)
    );
    store
        .fields
        .put_fields(
            athlete,
            keys[4],
            Visibility::Public,
            &[("distance_m".into(), 5_500.0)],
        )
        .await
        .unwrap();
    store
        .fields
        .delete_fields(athlete, keys[0], &["distance_m".into()])
        .await
        .unwrap();
    let all = newest_first(
        store
            .fields
            .field_series(athlete, "distance_m", 0, ALL_TIME, 100)
            .await
            .unwrap(),
        server,
    );
    assert_eq!(all.len(), 4, "one deleted");
    assert_eq!(
        (all[0].value, all[0].visibility),
        (5_500.0, Visibility::Public)
    );
    assert_eq!(
        store
            .fields
            .field_series(athlete, "rpe", 0, ALL_TIME, 2)
            .await
            .unwrap()
            .len(),
        2,
        "limit"
    );
    assert!(
        store
            .fields
            .field_series(Uuid::now_v7(), "rpe", 0, ALL_TIME, 10)
            .await
            .unwrap()
            .is_empty()
    );
    covered.push("field series: overwrite, delete, limit");
    if server.full_cql {
        covered.push("field series: newest first");
        // A time range: [day 1, day 3) holds days 1 and 2.
        let ranged = store
            .fields
            .field_series(athlete, "rpe", keys[1].started_at, keys[3].started_at, 10)
            .await
            .unwrap();
        let days: Vec<f64> = ranged.iter().map(|v| v.value).collect();
        assert_eq!(days, [2.0, 1.0], "from inclusive, to exclusive");
        covered.push("field series: time range");
    } else {
        uncovered.push("field series: newest first");
        uncovered.push("field series: time range");
    }

    // Friendship: both directions, then removal of both.
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    store.users.add_friend_request(a, b).await.unwrap();
    assert!(
        !store.users.are_friends(a, b).await.unwrap(),
        "one side only"
    );
    store.users.add_friend_request(b, a).await.unwrap();
    store.users.add_friend_request(a, c).await.unwrap();
    store.users.add_friend_request(a, b).await.unwrap(); // repeated: no-op
    assert!(store.users.are_friends(a, b).await.unwrap());
    assert!(store.users.has_friend_request(a, c).await.unwrap());
    assert!(!store.users.has_friend_request(c, a).await.unwrap());
    let from_a: BTreeSet<Uuid> = store
        .users
        .friend_requests_from(a)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(from_a, BTreeSet::from([b, c]));
    assert_eq!(store.users.friends_of(a).await.unwrap(), vec![b]);
    store.users.remove_friendship(a, b).await.unwrap();
    assert!(!store.users.has_friend_request(a, b).await.unwrap());
    assert!(!store.users.has_friend_request(b, a).await.unwrap());
    assert!(store.users.has_friend_request(a, c).await.unwrap());
    assert!(store.users.friends_of(a).await.unwrap().is_empty());
    assert!(store.users.friends_of(b).await.unwrap().is_empty());
    // A request answered later is a friendship on both sides.
    store.users.add_friend_request(c, a).await.unwrap();
    assert_eq!(store.users.friends_of(a).await.unwrap(), vec![c]);
    assert_eq!(store.users.friends_of(c).await.unwrap(), vec![a]);
    covered.push("friend requests");

    // Activities: round trip and replacement.
    let athlete = Uuid::now_v7();
    let mut first = activity(athlete, 1_700_000_000_000);
    store.activities.put_activity(&first).await.unwrap();
    let read = store.activities.activity(first.id).await.unwrap().unwrap();
    assert!(same(&read, &first));
    first.track.distance_m = 1234.5;
    first.leaderboard_m = 1234.5;
    first
        .transition(
            trailcast::domain::ActivityState::Complete,
            1_700_000_600_000,
            1_700_000_600_000,
        )
        .unwrap();
    store.activities.put_activity(&first).await.unwrap();
    let read = store.activities.activity(first.id).await.unwrap().unwrap();
    assert!(same(&read, &first), "an update replaces the record");
    assert!(
        store
            .activities
            .activity(Uuid::now_v7())
            .await
            .unwrap()
            .is_none()
    );
    covered.push("activity records");

    // History: one athlete's partition, the updated document in it.
    let mut all = vec![first.clone()];
    for i in 1..5 {
        let a = activity(athlete, 1_700_000_000_000 + i * 86_400_000);
        store.activities.put_activity(&a).await.unwrap();
        all.push(a);
    }
    // Other years (Scylla keeps a partition per athlete and year): the
    // history and its pages run across them.
    for started_at in [1_600_000_000_000, 1_735_700_000_000] {
        let a = activity(athlete, started_at);
        store.activities.put_activity(&a).await.unwrap();
        all.push(a);
    }
    // Two activities starting in the same millisecond: the id breaks the tie.
    let twin = activity(athlete, all[4].started_at);
    store.activities.put_activity(&twin).await.unwrap();
    all.push(twin);
    store
        .activities
        .put_activity(&activity(Uuid::now_v7(), 1_700_000_000_000))
        .await
        .unwrap();
    let everything = store.activities.history(athlete, None, 100).await.unwrap();
    let ids: BTreeSet<Uuid> = everything.iter().map(|a| a.id).collect();
    assert_eq!(ids, all.iter().map(|a| a.id).collect());
    let stored_first = everything.iter().find(|a| a.id == first.id).unwrap();
    assert!(
        same(stored_first, &first),
        "history holds the latest document"
    );
    assert_eq!(
        store
            .activities
            .history(athlete, None, 2)
            .await
            .unwrap()
            .len(),
        2,
        "limit honoured"
    );
    // The newest year comes first (one activity in 2025, the rest older),
    // which the CQL test server can answer too.
    let newest = store.activities.history(athlete, None, 1).await.unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].started_at, 1_735_700_000_000, "newest year first");
    covered.push("history partition and limit");

    // A paged scan of every activity (leaderboard rebuilds) meets each one
    // once. The keyspace may hold other tests' activities too.
    let (mut seen, mut after, mut pages) = (Vec::new(), None, 0);
    loop {
        let (page, next) = store.activities.scan_activities(after, 3).await.unwrap();
        pages += 1;
        seen.extend(page.iter().map(|a| a.id));
        match next {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
        assert!(pages < 10_000, "the scan never ends");
    }
    let once: BTreeSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(once.len(), seen.len(), "no activity twice in a scan");
    assert!(
        all.iter().all(|a| once.contains(&a.id)),
        "every activity scanned"
    );
    covered.push("paged scan of every activity");
    if server.full_cql {
        let mut expected: Vec<HistoryKey> = all.iter().map(HistoryKey::of).collect();
        expected.sort();
        expected.reverse();
        let keys: Vec<HistoryKey> = everything.iter().map(HistoryKey::of).collect();
        assert_eq!(keys, expected, "newest start first, id breaking ties");
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = store.activities.history(athlete, after, 2).await.unwrap();
            assert!(page.len() <= 2);
            let Some(last) = page.last() else { break };
            after = Some(HistoryKey::of(last));
            paged.extend(page.iter().map(HistoryKey::of));
        }
        assert_eq!(paged, expected, "pages after a cursor cover each once");
        covered.push("history order and cursor pages");
    } else {
        uncovered.push("history order and cursor pages");
    }

    // Shares: by id, by token, deletion of both.
    let share = Share {
        id: Uuid::now_v7(),
        activity_id: first.id,
        owner_id: athlete,
        expires_at: 1_800_000_000_000,
        token_hash: [9u8; 32],
    };
    store.activities.put_share(&share).await.unwrap();
    for found in [
        store.activities.share(share.id).await.unwrap(),
        store.activities.share_by_token([9u8; 32]).await.unwrap(),
    ] {
        let found = found.expect("share");
        assert_eq!(
            json!([
                found.id,
                found.activity_id,
                found.owner_id,
                found.expires_at,
                found.token_hash
            ]),
            json!([
                share.id,
                share.activity_id,
                share.owner_id,
                share.expires_at,
                share.token_hash
            ])
        );
    }
    let second = Share {
        id: Uuid::now_v7(),
        token_hash: [8u8; 32],
        ..share.clone()
    };
    store.activities.put_share(&second).await.unwrap();
    let listed = |v: Vec<Share>| v.iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(
        listed(store.activities.shares_of(first.id).await.unwrap()),
        [share.id, second.id],
        "an activity's links, oldest first"
    );
    assert!(
        store
            .activities
            .shares_of(Uuid::now_v7())
            .await
            .unwrap()
            .is_empty()
    );
    store.activities.delete_share(&share).await.unwrap();
    assert_eq!(
        listed(store.activities.shares_of(first.id).await.unwrap()),
        [second.id],
        "a revoked link leaves the list"
    );
    assert!(store.activities.share(share.id).await.unwrap().is_none());
    assert!(
        store
            .activities
            .share_by_token([9u8; 32])
            .await
            .unwrap()
            .is_none()
    );
    covered.push("share links");

    // Points: several activities in one group commit, out of order, with a
    // resent point; optional values survive as they were (absent stays
    // absent).
    let (x, y) = (Uuid::now_v7(), Uuid::now_v7());
    let t0 = 1_700_000_000_000i64;
    let mut group: Vec<(Uuid, Point)> = Vec::new();
    for i in (0..250).rev() {
        group.push((x, point(t0 + i as i64 * 1000, i)));
        if i.is_multiple_of(50) {
            group.push((y, point(t0 + i as i64, i)));
        }
    }
    group.push((x, point(t0 + 7_000, 7))); // resent: same identity
    store.points.append_points(Arc::new(group)).await.unwrap();
    let track = read_track(store.points.as_ref(), x).await.unwrap();
    assert_eq!(track.len(), 250, "a resent point is the same point");
    let expected: Vec<Point> = (0..250).map(|i| point(t0 + i as i64 * 1000, i)).collect();
    assert_eq!(
        serde_json::to_value(&track).unwrap(),
        serde_json::to_value(&expected).unwrap(),
        "time order, every field as written"
    );
    assert_eq!(read_track(store.points.as_ref(), y).await.unwrap().len(), 5);
    assert!(
        read_track(store.points.as_ref(), Uuid::now_v7())
            .await
            .unwrap()
            .is_empty()
    );
    let exist = store
        .points
        .points_exist(x, vec![t0, t0 + 1, t0 + 249_000, t0 + 250_000])
        .await
        .unwrap();
    assert_eq!(exist, vec![true, false, true, false]);
    covered.push("points: group commit, order, duplicates, optional values, existence");

    // Route pages: concatenated they are the track, each point once.
    let mut pages = Vec::new();
    let mut from = None;
    let mut largest = 0;
    loop {
        let (page, next) = store.points.route_page(x, from, 60).await.unwrap();
        largest = largest.max(page.len());
        pages.extend(page.into_iter().map(|p| p.ts));
        match next {
            Some(cursor) => from = Some(cursor),
            None => break,
        }
    }
    assert_eq!(pages, expected.iter().map(|p| p.ts).collect::<Vec<_>>());
    covered.push("route pages cover the track once");
    // Scylla's packed tracks are read by equality and cut to the limit by
    // the store, so this holds on the CQL test server too.
    assert!(largest <= 60, "a page holds at most its limit ({largest})");
    covered.push("route page bound");

    // The tail after a time: strictly later, in order, bounded, and read
    // to the end in pages.
    let after = store
        .points
        .points_after(x, t0 + 239_000, 1_000)
        .await
        .unwrap();
    assert_eq!(
        after.iter().map(|p| p.ts).collect::<Vec<_>>(),
        expected[240..].iter().map(|p| p.ts).collect::<Vec<_>>()
    );
    let two = store.points.points_after(x, t0 + 100, 2).await.unwrap();
    assert_eq!(
        two.iter().map(|p| p.ts).collect::<Vec<_>>(),
        [t0 + 1000, t0 + 2000]
    );
    let tail = trailcast::store::read_track_after(store.points.as_ref(), x, t0 + 9_500)
        .await
        .unwrap();
    assert_eq!(tail.len(), 240);
    assert!(
        store
            .points
            .points_after(x, t0 + 249_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    covered.push("points after a time");
    Report { covered, uncovered }
}

#[tokio::test]
async fn storage_contract_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedStore::open(dir.path(), 0).unwrap();
    let store = Persistence {
        users: Arc::new(db.clone()),
        activities: Arc::new(db.clone()),
        points: Arc::new(db.clone()),
        fields: Arc::new(db.clone()),
        courses: Arc::new(db.clone()),
        devices: Arc::new(db.clone()),
    };
    let server = Server {
        name: "the embedded store".into(),
        full_cql: true,
    };
    let report = contract(&store, &server).await;
    assert!(report.uncovered.is_empty());
    report.print(&server);
    db.close().unwrap();
}

#[tokio::test]
async fn storage_contract_on_scylla() {
    let cql = cql_server();
    let (keyspace, args) = cql.keyspace().await;
    let session = trailcast::store::scylla::connect(&args, cql.real)
        .await
        .unwrap();
    let db = Arc::new(ScyllaStore::open(session, &keyspace, 64).await.unwrap());
    let store = Persistence {
        users: db.clone(),
        activities: db.clone(),
        points: db.clone(),
        fields: db.clone(),
        courses: db.clone(),
        devices: db,
    };
    let server = Server {
        name: cql.name(),
        full_cql: cql.real,
    };
    let report = contract(&store, &server).await;
    report.print(&server);
}

#[test]
fn migrate_applies_exactly_the_schema_shipped_in_deploy() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trailcast"))
        .args(["migrate", "--print"])
        .env_remove("TRAILCAST_SCYLLA_KEYSPACE")
        .env_remove("TRAILCAST_SCYLLA_REPLICATION")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/scylla/schema.cql");
    assert!(
        out.stdout == std::fs::read(shipped).unwrap(),
        "`trailcast migrate --print` differs from {shipped}"
    );
}

/// Versioned migrations: a keyspace made by an older version gets the
/// migrations it lacks, once, in order; a new keyspace is recorded at the
/// newest version without running them. The test runs migrations of its
/// own that kassandra can parse (it has no `ALTER TABLE`, which the real
/// migrations use); against a real cluster (`SCYLLA_NODES`) it also runs
/// the shipped ones on an older keyspace.
#[tokio::test]
async fn scylla_migrations_run_once_in_order_on_older_keyspaces_only() {
    use trailcast::store::scylla::{MIGRATIONS, Migration, applied_versions, migrate_with};
    assert!(
        MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version)
            && MIGRATIONS.iter().all(|m| m.version > 1),
        "migrations in version order, after the first schema"
    );
    let cql = cql_server();
    let (_, args) = cql.keyspace().await;
    let session = trailcast::store::scylla::connect(&args, cql.real)
        .await
        .unwrap();
    let ours = [
        Migration {
            version: 2,
            what: "a table",
            cql: "CREATE TABLE IF NOT EXISTS {ks}.probe (id int, PRIMARY KEY ((id)))",
        },
        Migration {
            version: 3,
            what: "a row in it",
            cql: "INSERT INTO {ks}.probe (id) VALUES (3)",
        },
    ];
    let probe = |ks: String| {
        let session = &session;
        async move {
            session
                .query_unpaged(format!("SELECT id FROM {ks}.probe WHERE id = 3"), ())
                .await
                .ok()
                .map(|r| r.into_rows_result().unwrap().rows_num())
        }
    };

    // A keyspace as the first version left it: version 1 only.
    let old = format!("tc_test_{}", Uuid::now_v7().simple());
    migrate_with(&session, &old, &args.replication, &[])
        .await
        .unwrap();
    assert_eq!(applied_versions(&session, &old).await.unwrap(), [1]);
    migrate_with(&session, &old, &args.replication, &ours)
        .await
        .unwrap();
    assert_eq!(applied_versions(&session, &old).await.unwrap(), [1, 2, 3]);
    assert_eq!(probe(old.clone()).await, Some(1), "both migrations ran");
    // Run again: nothing runs twice (the deleted row stays deleted).
    session
        .query_unpaged(format!("DELETE FROM {old}.probe WHERE id = 3"), ())
        .await
        .unwrap();
    migrate_with(&session, &old, &args.replication, &ours)
        .await
        .unwrap();
    assert_eq!(probe(old.clone()).await, Some(0), "a migration ran twice");
    assert_eq!(applied_versions(&session, &old).await.unwrap(), [1, 2, 3]);

    // A new keyspace: every version recorded, no migration run.
    let new = format!("tc_test_{}", Uuid::now_v7().simple());
    migrate_with(&session, &new, &args.replication, &ours)
        .await
        .unwrap();
    assert_eq!(applied_versions(&session, &new).await.unwrap(), [1, 2, 3]);
    assert_eq!(probe(new).await, None, "no probe table in a new keyspace");

    if cql.real {
        // The shipped migrations on a keyspace of the first version.
        let shipped = format!("tc_test_{}", Uuid::now_v7().simple());
        migrate_with(&session, &shipped, &args.replication, &[])
            .await
            .unwrap();
        trailcast::store::scylla::migrate(&session, &shipped, &args.replication)
            .await
            .unwrap();
        let want: Vec<i32> = [1]
            .into_iter()
            .chain(MIGRATIONS.iter().map(|m| m.version))
            .collect();
        assert_eq!(applied_versions(&session, &shipped).await.unwrap(), want);
    } else {
        println!("the shipped migrations (ALTER TABLE) need a real cluster: SCYLLA_NODES is unset");
    }
}

/// Friendships made before the Scylla `friends` table existed are only in
/// `friend_requests`: the first `friends_of` finds them there and writes
/// them to `friends`, so the next read is one partition.
#[tokio::test]
async fn scylla_friendships_older_than_the_friends_table_are_found_and_indexed() {
    let cql = cql_server();
    let (keyspace, args) = cql.keyspace().await;
    let session = trailcast::store::scylla::connect(&args, cql.real)
        .await
        .unwrap();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    for (from, to) in [(a, b), (b, a)] {
        session
            .query_unpaged(
                format!("INSERT INTO {keyspace}.friend_requests (from_id, to_id) VALUES (?, ?)"),
                (from, to),
            )
            .await
            .unwrap();
    }
    let indexed = |user: Uuid| {
        let (session, keyspace) = (&session, &keyspace);
        async move {
            let rows = session
                .query_unpaged(
                    format!("SELECT friend_id FROM {keyspace}.friends WHERE user_id = ?"),
                    (user,),
                )
                .await
                .unwrap()
                .into_rows_result()
                .unwrap();
            rows.rows::<(Uuid,)>()
                .unwrap()
                .map(|r| r.unwrap().0)
                .collect::<Vec<_>>()
        }
    };
    // A friendship from before the table, and one made after it.
    assert!(indexed(a).await.is_empty(), "made before the table");
    use trailcast::store::UserStore;
    let db = ScyllaStore::open(
        trailcast::store::scylla::connect(&args, cql.real)
            .await
            .unwrap(),
        &keyspace,
        64,
    )
    .await
    .unwrap();
    let c = Uuid::now_v7();
    db.add_friend_request(a, c).await.unwrap();
    db.add_friend_request(c, a).await.unwrap();
    assert_eq!(indexed(a).await, vec![c], "only the new one so far");
    let mut friends = db.friends_of(a).await.unwrap();
    friends.sort();
    assert_eq!(friends, [b, c], "the old friendship is not lost");
    let mut rows = indexed(a).await;
    rows.sort();
    assert_eq!(
        rows,
        [Uuid::nil(), b, c],
        "indexed, with the checked marker"
    );
    assert_eq!(db.friends_of(b).await.unwrap(), vec![a]);
    // The second read is the table's (a friendship removed from the
    // requests behind its back is not recomputed).
    session
        .query_unpaged(
            format!("DELETE FROM {keyspace}.friend_requests WHERE from_id = ? AND to_id = ?"),
            (b, a),
        )
        .await
        .unwrap();
    let mut again = db.friends_of(a).await.unwrap();
    again.sort();
    assert_eq!(again, [b, c]);
}

/// #19 item 4: a node's points go to its ingest log, its packer turns them
/// into hourly chunks, and a node that stops leaves its log for another to
/// pack. The track reads the same at every stage, from any node.
#[tokio::test]
async fn scylla_tracks_read_the_same_from_the_log_the_chunks_and_an_adopted_log() {
    use trailcast::store::PointStore;
    use trailcast::store::scylla::{ADOPT_AFTER_MS, BUCKET_MS};

    let cql = cql_server();
    let (keyspace, args) = cql.keyspace().await;
    let open = || async {
        let session = trailcast::store::scylla::connect(&args, cql.real)
            .await
            .unwrap();
        ScyllaStore::open(session, &keyspace, 64).await.unwrap()
    };
    let raw = trailcast::store::scylla::connect(&args, cql.real)
        .await
        .unwrap();
    let log_rows = || async {
        raw.query_unpaged(format!("SELECT activity_id FROM {keyspace}.ingest_log"), ())
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .rows_num()
    };
    let check = |store: ScyllaStore, x: Uuid, expected: Vec<Point>, stage: &'static str| async move {
        let ts = |points: &[Point]| points.iter().map(|p| p.ts).collect::<Vec<_>>();
        let track = read_track(&store, x).await.unwrap();
        assert_eq!(
            serde_json::to_value(&track).unwrap(),
            serde_json::to_value(&expected).unwrap(),
            "{stage}: the whole track, in order, every field"
        );
        let (mut pages, mut from) = (Vec::new(), None);
        loop {
            let (page, next) = store.route_page(x, from, 60).await.unwrap();
            assert!(page.len() <= 60, "{stage}");
            pages.extend(page);
            match next {
                Some(cursor) => from = Some(cursor),
                None => break,
            }
        }
        assert_eq!(ts(&pages), ts(&expected), "{stage}: route pages");
        let after = store
            .points_after(x, expected[150].ts, 1_000)
            .await
            .unwrap();
        assert_eq!(ts(&after), ts(&expected[151..]), "{stage}: points after");
        let probe = vec![
            expected[3].ts,
            expected[3].ts + 1,
            expected.last().unwrap().ts,
        ];
        let exist = store.points_exist(x, probe).await.unwrap();
        assert_eq!(exist, [true, false, true], "{stage}: existence");
    };

    // 2 h 13 min of track (three hours of chunks), one point every 20 s,
    // posted as two requests of one commit, the second out of order. `a`
    // wrote it and reads its own log from memory, `b` reads it from Scylla.
    let a = open().await;
    let x = Uuid::now_v7();
    let t0 = 1_700_000_000_000i64;
    let mut expected: Vec<Point> = (0..400).map(|i| point(t0 + i as i64 * 20_000, i)).collect();
    let first: Vec<(Uuid, Point)> = expected[..200].iter().map(|p| (x, *p)).collect();
    let mut second: Vec<(Uuid, Point)> = expected[200..].iter().rev().map(|p| (x, *p)).collect();
    second.push((x, expected[7])); // resent
    let results = a.append_groups(vec![first, second]).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(log_rows().await >= 400, "the points are in the log");
    check(a.clone(), x, expected.clone(), "in the log, from memory").await;
    let b = open().await;
    check(b.clone(), x, expected.clone(), "in the log, from Scylla").await;

    let later = trailcast::clock::Clock::System.now_ms() + 10 * 60_000;
    assert!(a.pack_closed(later).await.unwrap() >= 1);
    assert_eq!(log_rows().await, 0, "packed buckets leave the log");
    check(a.clone(), x, expected.clone(), "packed").await;

    // A point resent with new values replaces the packed one; one more at
    // the end. Both wait in the log.
    let mut replaced = point(expected[10].ts, 10);
    replaced.lat += 0.5;
    expected[10] = replaced;
    let tail = point(t0 + 400 * 20_000, 400);
    expected.push(tail);
    a.append_points(Arc::new(vec![(x, replaced), (x, tail)]))
        .await
        .unwrap();
    check(a.clone(), x, expected.clone(), "the log over the chunks").await;

    // The node stops before packing them: another reads its log, and once
    // it has been silent long enough packs it.
    a.stop_packer();
    drop(a);
    check(
        b.clone(),
        x,
        expected.clone(),
        "another node, before adopting",
    )
    .await;
    let silent = trailcast::clock::Clock::System.now_ms() + ADOPT_AFTER_MS + 2 * BUCKET_MS;
    assert_eq!(b.adopt_silent(silent).await.unwrap(), 1);
    assert_eq!(log_rows().await, 0, "an adopted log is emptied");
    check(b.clone(), x, expected.clone(), "adopted").await;
    assert_eq!(b.adopt_silent(silent).await.unwrap(), 0, "and forgotten");

    // A node shutting down packs everything at once and forgets itself.
    let more = point(t0 + 401 * 20_000, 401);
    expected.push(more);
    b.append_points(Arc::new(vec![(x, more)])).await.unwrap();
    assert!(log_rows().await > 0);
    assert_eq!(b.flush_log().await.unwrap(), 1);
    assert_eq!(log_rows().await, 0, "a flushed log is empty");
    let incarnations = raw
        .query_unpaged(
            format!("SELECT incarnation FROM {keyspace}.ingest_incarnations"),
            (),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows_num();
    assert_eq!(incarnations, 0, "nothing left to adopt");
    check(b.clone(), x, expected.clone(), "flushed on shutdown").await;
}
