//! The ScyllaDB persistence backend, through the official `scylla` driver.
//!
//! Tables are those of `deploy/scylla/schema.cql` (embedded here as
//! [`SCHEMA`]; `trailcast migrate` applies it). What a query reads is one
//! partition:
//!
//! - tracks: packed (`tracks`): a node's ingest log by (process, 10 s,
//!   shard), and per activity one partition per hour of point time; every
//!   read is one partition by equality, cut to the page the caller asked
//!   for;
//! - history: `athlete_history` by athlete and year (`athlete_years` lists
//!   the years), clustered by `(started_at, activity_id) DESC`; the page
//!   after a cursor is a multi-column slice on those two columns in the
//!   cursor's year, then whole years, newest first;
//! - users, tokens, friend requests, activities and shares by their key.
//!
//! Writes: every statement is prepared (so the driver routes it to a
//! replica of its partition, token-aware); a group commit's points go in
//! one unlogged batch to the node's ingest log; a record kept in two
//! tables (activity and history entry, user and token, share and token)
//! goes in one logged batch so both or neither land. Every statement here is an upsert, a delete or a read,
//! so all are marked idempotent and may be retried; nothing here (no
//! counters, no list appends) would double on a retry. The retry policy
//! (`WriteTimeoutRetry`) is the driver's default plus up to two retries of
//! an idempotent write that timed out on its replicas (the default retries
//! only batch-log timeouts, so an overloaded replica would fail a point
//! write at once). Requests in flight from this node are bounded by a
//! semaphore; one request, retries included, by `--scylla-request-timeout-ms`.
//! Consistency is configurable, LOCAL_QUORUM by default, for reads and
//! writes alike, so a point acknowledged by one node is read by another.
//!
//! Points are stored encoded in blobs (`recent_codec`), so absent optional
//! values cost nothing and write no tombstone.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt, stream};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::policies::retry::{
    DefaultRetrySession, RequestInfo, RetryDecision, RetryPolicy, RetrySession,
};
use scylla::response::query_result::QueryResult;
use scylla::response::{PagingState, PagingStateResponse};
use scylla::serialize::row::SerializeRow;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use tokio::sync::Semaphore;
use uuid::Uuid;

mod tracks;

pub use tracks::{ADOPT_AFTER_MS, BUCKET_MS};
use tracks::{IngestLog, TrackStatements};

use super::{
    ActivityStore, BoxError, CourseStore, Device, DeviceStore, FieldStore, FieldValue, HistoryKey,
    PointStore, RouteCursor, ScanCursor, Share, StoreError, StoreResult, User, UserStore,
    decode_activity, skip_corrupt,
};
use crate::config::ScyllaArgs;
use crate::domain::course::Course;
use crate::domain::time::Millis;
use crate::domain::{Activity, Point, PrivacyZone, Visibility};

/// The schema, as shipped in deploy/ (one copy for the binary and deploy/).
pub const SCHEMA: &str = include_str!("../../deploy/scylla/schema.cql");
/// The version of the first schema. A keyspace made from [`SCHEMA`] is at
/// the newest version at once: the file holds every migration's change.
pub const SCHEMA_VERSION: i32 = 1;

/// A change to a table that exists already (`CREATE … IF NOT EXISTS` in
/// [`SCHEMA`] cannot change one). `migrate` runs each once, in version
/// order, on a keyspace whose `schema_migrations` lacks its version, and
/// then records it; `{ks}` in `cql` is the keyspace.
pub struct Migration {
    pub version: i32,
    pub what: &'static str,
    pub cql: &'static str,
}

/// Every migration after version 1, oldest first. When adding one, make
/// the same change in deploy/scylla/schema.cql.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 2,
    what: "points: 30-day compaction windows instead of one-day ones (about 12 windows a year, not 365)",
    cql: "ALTER TABLE {ks}.points WITH compaction = {'class': 'TimeWindowCompactionStrategy', 'compaction_window_unit': 'DAYS', 'compaction_window_size': 30}",
}];
pub const DEFAULT_KEYSPACE: &str = "trailcast";
pub use crate::config::DEFAULT_REPLICATION;

/// Batches in flight for one group commit (the node-wide bound is the
/// in-flight semaphore).
const BATCHES_IN_FLIGHT: usize = 64;
/// Point lookups in flight for one `points_exist` call.
const LOOKUPS_IN_FLIGHT: usize = 32;
/// Rows per page when a whole partition is read (friend lists).
const MAX_PAGE_ROWS: usize = 1_000;
/// Retries of an idempotent write that timed out on its replicas.
const WRITE_TIMEOUT_RETRIES: u8 = 2;

/// The schema with the keyspace and its replication filled in; with the
/// defaults it is [`SCHEMA`] byte for byte.
pub fn render_schema(keyspace: &str, replication: &str) -> String {
    SCHEMA
        .replace(
            &format!("IF NOT EXISTS {DEFAULT_KEYSPACE} WITH replication = {DEFAULT_REPLICATION}"),
            &format!("IF NOT EXISTS {keyspace} WITH replication = {replication}"),
        )
        .replace(
            &format!("IF NOT EXISTS {DEFAULT_KEYSPACE}."),
            &format!("IF NOT EXISTS {keyspace}."),
        )
}

/// The statements of a rendered schema: `--` comment lines dropped, split
/// on `;`.
pub fn schema_statements(schema: &str) -> Vec<String> {
    let text: String = schema
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .map(|line| format!("{line}\n"))
        .collect();
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A keyspace name goes into CQL text: only plain identifiers.
pub fn check_keyspace(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 48;
    if !ok {
        bail!("keyspace {name:?}: use lowercase letters, digits and _ (at most 48)");
    }
    Ok(())
}

pub fn parse_consistency(name: &str) -> anyhow::Result<Consistency> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "one" => Consistency::One,
        "local_one" => Consistency::LocalOne,
        "quorum" => Consistency::Quorum,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "all" => Consistency::All,
        other => bail!(
            "consistency {other:?}: use one, local_one, quorum, local_quorum, each_quorum or all"
        ),
    })
}

/// Connects to the cluster. `schema_agreement` waits after each schema
/// change until every node has it (always on against a real cluster; the
/// in-memory CQL test server has no peers to agree with).
pub async fn connect(args: &ScyllaArgs, schema_agreement: bool) -> anyhow::Result<Session> {
    check_keyspace(&args.keyspace)?;
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &args.local_dc {
        policy = policy.prefer_datacenter(dc.clone());
    }
    let profile = ExecutionProfile::builder()
        .consistency(parse_consistency(&args.consistency)?)
        .load_balancing_policy(policy.build())
        .retry_policy(Arc::new(WriteTimeoutRetry))
        .request_timeout(Some(Duration::from_millis(args.request_timeout_ms.max(1))))
        .build();
    SessionBuilder::new()
        .known_nodes(&args.nodes)
        .default_execution_profile_handle(profile.into_handle())
        .auto_await_schema_agreement(schema_agreement)
        .build()
        .await
        .with_context(|| format!("connecting to ScyllaDB at {}", args.nodes.join(",")))
}

/// The driver's default retry policy, plus: an idempotent write that timed
/// out on its replicas (coordinator `WriteTimeout`, any write type) is
/// retried on the next replica up to `WRITE_TIMEOUT_RETRIES` times. Every
/// write here is an upsert of the same values, so a retry of a write that
/// did land changes nothing. Within the request timeout, so a stalled
/// cluster still answers 503 in bounded time.
#[derive(Debug)]
pub struct WriteTimeoutRetry;

impl RetryPolicy for WriteTimeoutRetry {
    fn new_session(&self) -> Box<dyn RetrySession> {
        Box::new(WriteTimeoutRetrySession {
            default: DefaultRetrySession::new(),
            write_timeouts: 0,
        })
    }
}

struct WriteTimeoutRetrySession {
    default: DefaultRetrySession,
    write_timeouts: u8,
}

impl RetrySession for WriteTimeoutRetrySession {
    fn decide_should_retry(&mut self, info: RequestInfo) -> RetryDecision {
        use scylla::errors::{DbError, RequestAttemptError};
        let timed_out = matches!(
            info.error,
            RequestAttemptError::DbError(DbError::WriteTimeout { .. }, _)
        );
        if timed_out && info.is_idempotent && !info.consistency.is_serial() {
            if self.write_timeouts < WRITE_TIMEOUT_RETRIES {
                self.write_timeouts += 1;
                metrics::counter!("trailcast_scylla_write_retries_total").increment(1);
                return RetryDecision::RetryNextTarget(None);
            }
            return RetryDecision::DontRetry;
        }
        self.default.decide_should_retry(info)
    }

    fn reset(&mut self) {
        self.default.reset();
        self.write_timeouts = 0;
    }
}

/// Creates whatever of the schema is missing, then brings an existing
/// keyspace up to date with [`MIGRATIONS`].
pub async fn migrate(session: &Session, keyspace: &str, replication: &str) -> anyhow::Result<()> {
    migrate_with(session, keyspace, replication, MIGRATIONS).await
}

/// [`migrate`] with the given migrations (tests run their own).
///
/// A keyspace with no version recorded is new: [`SCHEMA`] made it as the
/// newest version, so every version is recorded and no migration runs.
/// One with versions recorded (every keyspace `migrate` ever touched has
/// at least 1) gets the migrations it lacks, each recorded as it is done,
/// so an interrupted run resumes where it stopped.
pub async fn migrate_with(
    session: &Session,
    keyspace: &str,
    replication: &str,
    migrations: &[Migration],
) -> anyhow::Result<()> {
    check_keyspace(keyspace)?;
    for statement in schema_statements(&render_schema(keyspace, replication)) {
        let head = statement.lines().next().unwrap_or_default().to_owned();
        session
            .query_unpaged(statement, ())
            .await
            .with_context(|| format!("applying `{head}`"))?;
    }
    let applied = applied_versions(session, keyspace).await?;
    let record = |version: i32| async move {
        session
            .query_unpaged(
                format!(
                    "INSERT INTO {keyspace}.schema_migrations (version, applied_at) VALUES (?, ?)"
                ),
                (version, CqlTimestamp(crate::clock::Clock::System.now_ms())),
            )
            .await
            .with_context(|| format!("recording schema version {version}"))
    };
    if applied.is_empty() {
        record(SCHEMA_VERSION).await?;
        for m in migrations {
            record(m.version).await?;
        }
        return Ok(());
    }
    for m in migrations.iter().filter(|m| !applied.contains(&m.version)) {
        tracing::info!(
            version = m.version,
            what = m.what,
            "applying a schema migration"
        );
        session
            .query_unpaged(m.cql.replace("{ks}", keyspace), ())
            .await
            .with_context(|| format!("schema migration {}: {}", m.version, m.what))?;
        record(m.version).await?;
    }
    Ok(())
}

/// The versions `schema_migrations` holds.
pub async fn applied_versions(session: &Session, keyspace: &str) -> anyhow::Result<Vec<i32>> {
    check_keyspace(keyspace)?;
    let read = async {
        let rows = session
            .query_unpaged(
                format!("SELECT version FROM {keyspace}.schema_migrations"),
                (),
            )
            .await?
            .into_rows_result()?;
        let versions = rows
            .rows::<(i32,)>()?
            .map(|row| row.map(|(v,)| v))
            .collect::<Result<Vec<i32>, _>>()?;
        anyhow::Ok(versions)
    };
    let mut versions = read.await.context("reading the schema versions")?;
    versions.sort_unstable();
    Ok(versions)
}

/// A failed request: `Busy` when the cluster is overloaded, timing out or
/// short of replicas (the client may retry: 503 with Retry-After), else a
/// backend failure (500).
fn backend(e: impl Into<BoxError>) -> StoreError {
    let e = e.into();
    match is_busy(e.as_ref()) {
        true => StoreError::busy("scylla", e),
        false => StoreError::backend("scylla", e),
    }
}

/// Whether a driver error says "not now" rather than "wrong": timeouts
/// (client or coordinator), overloaded or bootstrapping nodes, too few
/// replicas alive, rate limits, no connection to any node.
fn is_busy(e: &(dyn std::error::Error + 'static)) -> bool {
    use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
    match e.downcast_ref::<ExecutionError>() {
        Some(ExecutionError::RequestTimeout(_) | ExecutionError::ConnectionPoolError(_)) => true,
        Some(ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _))) => matches!(
            db,
            DbError::Overloaded
                | DbError::IsBootstrapping
                | DbError::Unavailable { .. }
                | DbError::ReadTimeout { .. }
                | DbError::WriteTimeout { .. }
                | DbError::RateLimitReached { .. }
        ),
        _ => false,
    }
}

fn corrupt(e: impl Into<BoxError>) -> StoreError {
    StoreError::corrupt("scylla", e)
}

/// Prepares `cql`, marked idempotent (every statement here is).
async fn prepare(session: &Session, cql: String) -> anyhow::Result<PreparedStatement> {
    let mut statement = session
        .prepare(cql.as_str())
        .await
        .with_context(|| format!("preparing `{cql}` (has `trailcast migrate` run?)"))?;
    statement.set_is_idempotent(true);
    Ok(statement)
}

/// The prepared statements, one per access path.
struct Statements {
    insert_user: PreparedStatement,
    insert_user_token: PreparedStatement,
    select_user: PreparedStatement,
    select_user_by_token: PreparedStatement,
    select_user_by_token_one: PreparedStatement,
    insert_friend_request: PreparedStatement,
    delete_friend_request: PreparedStatement,
    select_friend_request: PreparedStatement,
    select_friend_requests_from: PreparedStatement,
    insert_friend: PreparedStatement,
    delete_friend: PreparedStatement,
    select_friends: PreparedStatement,
    insert_privacy_zones: PreparedStatement,
    insert_field: PreparedStatement,
    delete_field: PreparedStatement,
    select_field_series: PreparedStatement,
    select_field_range: PreparedStatement,
    insert_course: PreparedStatement,
    insert_device: PreparedStatement,
    insert_device_key: PreparedStatement,
    insert_device_by_owner: PreparedStatement,
    select_device: PreparedStatement,
    select_device_by_key: PreparedStatement,
    select_devices_of: PreparedStatement,
    delete_device: PreparedStatement,
    delete_device_key: PreparedStatement,
    delete_device_by_owner: PreparedStatement,
    select_course: PreparedStatement,
    select_privacy_zones: PreparedStatement,
    insert_activity: PreparedStatement,
    insert_history: PreparedStatement,
    insert_history_year: PreparedStatement,
    select_history_years: PreparedStatement,
    select_activity: PreparedStatement,
    scan_activities: PreparedStatement,
    select_history: PreparedStatement,
    select_history_after: PreparedStatement,
    /// `activities_by_athlete` (whole, after a cursor), when it exists.
    legacy_history: Option<(PreparedStatement, PreparedStatement)>,
    insert_share: PreparedStatement,
    insert_share_token: PreparedStatement,
    select_share: PreparedStatement,
    select_share_by_token: PreparedStatement,
    delete_share: PreparedStatement,
    insert_share_by_activity: PreparedStatement,
    select_shares_of: PreparedStatement,
    delete_share_by_activity: PreparedStatement,
    delete_share_token: PreparedStatement,
}

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> anyhow::Result<Statements> {
        let prepare = |cql: String| prepare(session, cql);
        Ok(Statements {
            insert_user: prepare(format!(
                "INSERT INTO {ks}.users (id, name, created_at, region) VALUES (?, ?, ?, ?)"
            ))
            .await?,
            insert_user_token: prepare(format!(
                "INSERT INTO {ks}.user_tokens (token_hash, user_id, name, created_at, region) \
                 VALUES (?, ?, ?, ?, ?)"
            ))
            .await?,
            select_user: prepare(format!(
                "SELECT id, name, created_at, region FROM {ks}.users WHERE id = ?"
            ))
            .await?,
            select_user_by_token: prepare(format!(
                "SELECT user_id, name, created_at, region FROM {ks}.user_tokens \
                 WHERE token_hash = ?"
            ))
            .await?,
            // A token never changes once written: one replica that has it
            // is enough (a miss is asked again at the configured level).
            select_user_by_token_one: {
                let mut one = prepare(format!(
                    "SELECT user_id, name, created_at, region FROM {ks}.user_tokens \
                     WHERE token_hash = ?"
                ))
                .await?;
                one.set_consistency(Consistency::LocalOne);
                one
            },
            insert_friend_request: prepare(format!(
                "INSERT INTO {ks}.friend_requests (from_id, to_id) VALUES (?, ?)"
            ))
            .await?,
            delete_friend_request: prepare(format!(
                "DELETE FROM {ks}.friend_requests WHERE from_id = ? AND to_id = ?"
            ))
            .await?,
            select_friend_request: prepare(format!(
                "SELECT to_id FROM {ks}.friend_requests WHERE from_id = ? AND to_id = ?"
            ))
            .await?,
            select_friend_requests_from: prepare(format!(
                "SELECT to_id FROM {ks}.friend_requests WHERE from_id = ?"
            ))
            .await?,
            insert_friend: prepare(format!(
                "INSERT INTO {ks}.friends (user_id, friend_id) VALUES (?, ?)"
            ))
            .await?,
            delete_friend: prepare(format!(
                "DELETE FROM {ks}.friends WHERE user_id = ? AND friend_id = ?"
            ))
            .await?,
            select_friends: prepare(format!(
                "SELECT friend_id FROM {ks}.friends WHERE user_id = ?"
            ))
            .await?,
            insert_privacy_zones: prepare(format!(
                "INSERT INTO {ks}.privacy_zones (user_id, zones) VALUES (?, ?)"
            ))
            .await?,
            select_privacy_zones: prepare(format!(
                "SELECT zones FROM {ks}.privacy_zones WHERE user_id = ?"
            ))
            .await?,
            insert_field: prepare(format!(
                "INSERT INTO {ks}.field_series \
                 (athlete_id, field, started_at, activity_id, value, visibility) \
                 VALUES (?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            delete_field: prepare(format!(
                "DELETE FROM {ks}.field_series WHERE athlete_id = ? AND field = ? \
                 AND started_at = ? AND activity_id = ?"
            ))
            .await?,
            select_field_series: prepare(format!(
                "SELECT started_at, activity_id, value, visibility FROM {ks}.field_series \
                 WHERE athlete_id = ? AND field = ?"
            ))
            .await?,
            // The in-memory CQL test server cannot parse a clustering
            // range: it prepares this with two bind markers, so the call
            // fails loudly there. The storage contract lists it as
            // uncovered on that server.
            select_field_range: prepare(format!(
                "SELECT started_at, activity_id, value, visibility FROM {ks}.field_series \
                 WHERE athlete_id = ? AND field = ? AND started_at >= ? AND started_at < ?"
            ))
            .await?,
            insert_device: prepare(format!(
                "INSERT INTO {ks}.devices (id, owner_id, doc) VALUES (?, ?, ?)"
            ))
            .await?,
            insert_device_key: prepare(format!(
                "INSERT INTO {ks}.device_keys (key_hash, device_id) VALUES (?, ?)"
            ))
            .await?,
            insert_device_by_owner: prepare(format!(
                "INSERT INTO {ks}.devices_by_owner (owner_id, device_id) VALUES (?, ?)"
            ))
            .await?,
            select_device: prepare(format!("SELECT doc FROM {ks}.devices WHERE id = ?")).await?,
            select_device_by_key: prepare(format!(
                "SELECT device_id FROM {ks}.device_keys WHERE key_hash = ?"
            ))
            .await?,
            select_devices_of: prepare(format!(
                "SELECT device_id FROM {ks}.devices_by_owner WHERE owner_id = ?"
            ))
            .await?,
            delete_device: prepare(format!("DELETE FROM {ks}.devices WHERE id = ?")).await?,
            delete_device_key: prepare(format!("DELETE FROM {ks}.device_keys WHERE key_hash = ?"))
                .await?,
            delete_device_by_owner: prepare(format!(
                "DELETE FROM {ks}.devices_by_owner WHERE owner_id = ? AND device_id = ?"
            ))
            .await?,
            insert_course: prepare(format!(
                "INSERT INTO {ks}.courses (id, owner_id, doc) VALUES (?, ?, ?)"
            ))
            .await?,
            select_course: prepare(format!("SELECT doc FROM {ks}.courses WHERE id = ?")).await?,
            insert_activity: prepare(format!(
                "INSERT INTO {ks}.activities (id, athlete_id, started_at, doc) VALUES (?, ?, ?, ?)"
            ))
            .await?,
            insert_history: prepare(format!(
                "INSERT INTO {ks}.athlete_history \
                 (athlete_id, year, started_at, activity_id, doc) VALUES (?, ?, ?, ?, ?)"
            ))
            .await?,
            insert_history_year: prepare(format!(
                "INSERT INTO {ks}.athlete_years (athlete_id, year) VALUES (?, ?)"
            ))
            .await?,
            select_history_years: prepare(format!(
                "SELECT year FROM {ks}.athlete_years WHERE athlete_id = ?"
            ))
            .await?,
            select_activity: prepare(format!("SELECT doc FROM {ks}.activities WHERE id = ?"))
                .await?,
            // A full scan, paged: only for rebuilding leaderboards after
            // Redis lost them (see `store::leaderboard`).
            scan_activities: prepare(format!("SELECT doc FROM {ks}.activities")).await?,
            select_history: prepare(format!(
                "SELECT doc FROM {ks}.athlete_history WHERE athlete_id = ? AND year = ?"
            ))
            .await?,
            // The in-memory CQL test server cannot parse a multi-column
            // slice: it prepares this with one bind marker, so the call
            // fails loudly there (never silently wrong). The storage
            // contract suite lists it as uncovered on that server.
            select_history_after: prepare(format!(
                "SELECT doc FROM {ks}.athlete_history WHERE athlete_id = ? AND year = ? \
                 AND (started_at, activity_id) < (?, ?)"
            ))
            .await?,
            // Keyspaces made before histories by year: their old table.
            legacy_history: match prepare(format!(
                "SELECT doc FROM {ks}.activities_by_athlete WHERE athlete_id = ?"
            ))
            .await
            {
                Err(_) => None,
                Ok(all) => Some((
                    all,
                    prepare(format!(
                        "SELECT doc FROM {ks}.activities_by_athlete WHERE athlete_id = ? \
                         AND (started_at, activity_id) < (?, ?)"
                    ))
                    .await?,
                )),
            },
            insert_share: prepare(format!(
                "INSERT INTO {ks}.shares (id, activity_id, owner_id, expires_at, token_hash) \
                 VALUES (?, ?, ?, ?, ?)"
            ))
            .await?,
            insert_share_token: prepare(format!(
                "INSERT INTO {ks}.share_tokens (token_hash, share_id) VALUES (?, ?)"
            ))
            .await?,
            select_share: prepare(format!(
                "SELECT id, activity_id, owner_id, expires_at, token_hash FROM {ks}.shares \
                 WHERE id = ?"
            ))
            .await?,
            select_share_by_token: prepare(format!(
                "SELECT share_id FROM {ks}.share_tokens WHERE token_hash = ?"
            ))
            .await?,
            delete_share: prepare(format!("DELETE FROM {ks}.shares WHERE id = ?")).await?,
            insert_share_by_activity: prepare(format!(
                "INSERT INTO {ks}.shares_by_activity (activity_id, share_id) VALUES (?, ?)"
            ))
            .await?,
            select_shares_of: prepare(format!(
                "SELECT share_id FROM {ks}.shares_by_activity WHERE activity_id = ?"
            ))
            .await?,
            delete_share_by_activity: prepare(format!(
                "DELETE FROM {ks}.shares_by_activity WHERE activity_id = ? AND share_id = ?"
            ))
            .await?,
            delete_share_token: prepare(format!(
                "DELETE FROM {ks}.share_tokens WHERE token_hash = ?"
            ))
            .await?,
        })
    }
}

#[derive(Clone)]
pub struct ScyllaStore {
    session: Arc<Session>,
    q: Arc<Statements>,
    tracks: Arc<TrackStatements>,
    log: Arc<IngestLog>,
    in_flight: Arc<Semaphore>,
}

type PointRow = (
    CqlTimestamp,
    f64,
    f64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<i32>,
    Option<i32>,
    Option<i32>,
);

type UserRow = (Uuid, String, CqlTimestamp, Option<String>);

impl ScyllaStore {
    /// Prepares every statement against `keyspace` (which must exist).
    pub async fn open(
        session: Session,
        keyspace: &str,
        max_in_flight: usize,
    ) -> anyhow::Result<ScyllaStore> {
        check_keyspace(keyspace)?;
        let q = Statements::prepare(&session, keyspace).await?;
        let tracks = TrackStatements::prepare(&session, keyspace).await?;
        let store = ScyllaStore {
            session: Arc::new(session),
            q: Arc::new(q),
            tracks: Arc::new(tracks),
            log: Arc::new(IngestLog::new()),
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
        };
        store.start_packer();
        Ok(store)
    }

    async fn execute(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> StoreResult<QueryResult> {
        count(statement, 1);
        let _permit = self.in_flight.acquire().await.map_err(backend)?;
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(backend)
    }

    async fn batch<V: scylla::serialize::batch::BatchValues>(
        &self,
        kind: BatchType,
        statements: &[&PreparedStatement],
        values: V,
    ) -> StoreResult<()> {
        let mut batch = Batch::new(kind);
        for statement in statements {
            batch.append_statement((*statement).clone());
        }
        if let Some(first) = statements.first() {
            count(first, statements.len() as u64);
        }
        batch.set_is_idempotent(true);
        let _permit = self.in_flight.acquire().await.map_err(backend)?;
        self.session
            .batch(&batch, values)
            .await
            .map(|_| ())
            .map_err(backend)
    }

    /// One page of a paged read: at most `page_size` rows.
    async fn page(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        page_size: usize,
        state: PagingState,
    ) -> StoreResult<(QueryResult, PagingStateResponse)> {
        let mut statement = statement.clone();
        statement.set_page_size(page_size.clamp(1, i32::MAX as usize) as i32);
        count(&statement, 1);
        let _permit = self.in_flight.acquire().await.map_err(backend)?;
        self.session
            .execute_single_page(&statement, values, state)
            .await
            .map_err(backend)
    }

    /// Up to `limit` rows of one partition read (paged until filled, since
    /// a page may come back short).
    async fn first_rows<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow + Clone,
        limit: usize,
    ) -> StoreResult<Vec<R>>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let mut out = Vec::new();
        let mut state = PagingState::start();
        while out.len() < limit {
            let page_size = (limit - out.len()).min(MAX_PAGE_ROWS);
            let (result, next) = self
                .page(statement, values.clone(), page_size, state)
                .await?;
            let rows = result.into_rows_result().map_err(backend)?;
            for row in rows.rows::<R>().map_err(corrupt)? {
                out.push(row.map_err(corrupt)?);
            }
            match next {
                PagingStateResponse::HasMorePages { state: more } => state = more,
                PagingStateResponse::NoMorePages => break,
            }
        }
        // A server that ignores the page size (the CQL test server does)
        // may return more.
        out.truncate(limit);
        Ok(out)
    }

    async fn one_row<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> StoreResult<Option<R>>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let result = self.execute(statement, values).await?;
        result
            .into_rows_result()
            .map_err(backend)?
            .maybe_first_row::<R>()
            .map_err(corrupt)
    }

    /// Both directions of a friendship in `friends`.
    async fn befriend(&self, a: Uuid, b: Uuid) -> StoreResult<()> {
        let insert = &self.q.insert_friend;
        self.batch(BatchType::Logged, &[insert, insert], ((a, b), (b, a)))
            .await
    }

    fn user_from(row: UserRow) -> User {
        User {
            id: row.0,
            name: row.1,
            created_at: row.2.0,
            region: row.3,
        }
    }
}

#[async_trait]
impl UserStore for ScyllaStore {
    async fn create_user(&self, user: &User, token_hash: [u8; 32]) -> StoreResult<()> {
        let at = CqlTimestamp(user.created_at);
        self.batch(
            BatchType::Logged,
            &[&self.q.insert_user, &self.q.insert_user_token],
            (
                (user.id, &user.name, at, &user.region),
                (&token_hash[..], user.id, &user.name, at, &user.region),
            ),
        )
        .await
    }

    async fn user(&self, id: Uuid) -> StoreResult<Option<User>> {
        let row: Option<UserRow> = self.one_row(&self.q.select_user, (id,)).await?;
        Ok(row.map(Self::user_from))
    }

    async fn user_by_token(&self, token_hash: [u8; 32]) -> StoreResult<Option<User>> {
        let mut row: Option<UserRow> = self
            .one_row(&self.q.select_user_by_token_one, (&token_hash[..],))
            .await?;
        if row.is_none() {
            // Not on the replica asked (a sign-up a moment ago, a replica
            // catching up): ask a quorum before saying no.
            row = self
                .one_row(&self.q.select_user_by_token, (&token_hash[..],))
                .await?;
        }
        Ok(row.map(Self::user_from))
    }

    /// The request, then, if the other direction exists, the friendship in
    /// both directions of `friends`. Two requests racing on two nodes: each
    /// writes, then reads the other direction, so at the configured
    /// (quorum) consistency at least one of them sees both and writes the
    /// friendship.
    async fn add_friend_request(&self, from: Uuid, to: Uuid) -> StoreResult<()> {
        self.execute(&self.q.insert_friend_request, (from, to))
            .await?;
        if self.has_friend_request(to, from).await? {
            self.befriend(from, to).await?;
        }
        Ok(())
    }

    async fn remove_friendship(&self, a: Uuid, b: Uuid) -> StoreResult<()> {
        let (request, friend) = (&self.q.delete_friend_request, &self.q.delete_friend);
        self.batch(
            BatchType::Logged,
            &[request, request, friend, friend],
            ((a, b), (b, a), (a, b), (b, a)),
        )
        .await
    }

    /// One partition read of `friends`. A partition without the marker row
    /// (friend id nil) has not been checked against the requests yet
    /// (friendships made before the table existed): they are computed from
    /// the requests once, written, and the marker with them.
    async fn friends_of(&self, user: Uuid) -> StoreResult<Vec<Uuid>> {
        let rows: Vec<(Uuid,)> = self
            .first_rows(&self.q.select_friends, (user,), usize::MAX)
            .await?;
        let ids: Vec<Uuid> = rows.into_iter().map(|(id,)| id).collect();
        if ids.contains(&Uuid::nil()) {
            return Ok(ids.into_iter().filter(|id| !id.is_nil()).collect());
        }
        let friends = super::friends_by_requests(self, user).await?;
        for friend in &friends {
            self.befriend(user, *friend).await?;
        }
        self.execute(&self.q.insert_friend, (user, Uuid::nil()))
            .await?;
        Ok(friends)
    }

    async fn has_friend_request(&self, from: Uuid, to: Uuid) -> StoreResult<bool> {
        let row: Option<(Uuid,)> = self
            .one_row(&self.q.select_friend_request, (from, to))
            .await?;
        // Compared, not just counted: kassandra, the CQL test server, reads
        // `ck = ?` on a single clustering column as `ck >= ?`.
        Ok(row.is_some_and(|(found,)| found == to))
    }

    async fn friend_requests_from(&self, from: Uuid) -> StoreResult<Vec<Uuid>> {
        let rows: Vec<(Uuid,)> = self
            .first_rows(&self.q.select_friend_requests_from, (from,), usize::MAX)
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    async fn privacy_zones(&self, user: Uuid) -> StoreResult<Vec<PrivacyZone>> {
        let row: Option<(String,)> = self.one_row(&self.q.select_privacy_zones, (user,)).await?;
        match row {
            Some((zones,)) => serde_json::from_str(&zones).map_err(corrupt),
            None => Ok(Vec::new()),
        }
    }

    async fn set_privacy_zones(&self, user: Uuid, zones: &[PrivacyZone]) -> StoreResult<()> {
        let zones = serde_json::to_string(zones).map_err(corrupt)?;
        self.execute(&self.q.insert_privacy_zones, (user, zones))
            .await
            .map(|_| ())
    }
}

fn activity_doc(activity: &Activity) -> StoreResult<String> {
    serde_json::to_string(activity).map_err(corrupt)
}

fn activity_from(doc: &str) -> StoreResult<Activity> {
    decode_activity(doc.as_bytes(), "scylla")
}

#[async_trait]
impl ActivityStore for ScyllaStore {
    fn backend(&self) -> &'static str {
        "scylla"
    }

    async fn put_activity(&self, activity: &Activity) -> StoreResult<()> {
        let doc = activity_doc(activity)?;
        let started = CqlTimestamp(activity.started_at);
        let year = year_of(activity.started_at);
        let athlete = activity.athlete_id;
        self.batch(
            BatchType::Logged,
            &[
                &self.q.insert_activity,
                &self.q.insert_history,
                &self.q.insert_history_year,
            ],
            (
                (activity.id, athlete, started, &doc),
                (athlete, year, started, activity.id, &doc),
                (athlete, year),
            ),
        )
        .await
    }

    async fn activity(&self, id: Uuid) -> StoreResult<Option<Activity>> {
        let row: Option<(String,)> = self.one_row(&self.q.select_activity, (id,)).await?;
        row.map(|(doc,)| activity_from(&doc)).transpose()
    }

    async fn scan_activities(
        &self,
        after: Option<ScanCursor>,
        limit: usize,
    ) -> StoreResult<(Vec<Activity>, Option<ScanCursor>)> {
        let state = match after {
            Some(ScanCursor(bytes)) => PagingState::new_from_raw_bytes(bytes),
            None => PagingState::start(),
        };
        let (result, next) = self.page(&self.q.scan_activities, (), limit, state).await?;
        let rows = result.into_rows_result().map_err(backend)?;
        let mut out = Vec::with_capacity(rows.rows_num());
        for row in rows.rows::<(String,)>().map_err(corrupt)? {
            match row.map_err(corrupt).and_then(|(doc,)| activity_from(&doc)) {
                Ok(activity) => out.push(activity),
                Err(e) => skip_corrupt(&e),
            }
        }
        let next = match next {
            PagingStateResponse::HasMorePages { state } => state
                .as_bytes_slice()
                .map(|bytes| ScanCursor(bytes.to_vec())),
            PagingStateResponse::NoMorePages => None,
        };
        Ok((out, next))
    }

    /// Newest first, a year partition at a time (from the cursor's year),
    /// merged with the old one-partition table where it exists.
    async fn history(
        &self,
        athlete: Uuid,
        after: Option<HistoryKey>,
        limit: usize,
    ) -> StoreResult<Vec<Activity>> {
        let years: Vec<(i32,)> = self
            .first_rows(&self.q.select_history_years, (athlete,), MAX_PAGE_ROWS)
            .await?;
        let mut years: Vec<i32> = years.into_iter().map(|(y,)| y).collect();
        years.sort_unstable_by(|a, b| b.cmp(a));
        years.dedup();
        let from_year = after.as_ref().map(|k| year_of(k.started_at));
        let mut docs: Vec<String> = Vec::new();
        for year in years {
            if from_year.is_some_and(|f| year > f) {
                continue;
            }
            let want = limit - docs.len().min(limit);
            if want == 0 {
                break;
            }
            let rows: Vec<(String,)> = match &after {
                Some(key) if Some(year) == from_year => {
                    let values = (athlete, year, CqlTimestamp(key.started_at), key.activity_id);
                    self.first_rows(&self.q.select_history_after, values, want)
                        .await?
                }
                _ => {
                    self.first_rows(&self.q.select_history, (athlete, year), want)
                        .await?
                }
            };
            docs.extend(rows.into_iter().map(|(doc,)| doc));
        }
        // One bad record never takes a whole list down.
        let mut out: Vec<Activity> = docs
            .iter()
            .filter_map(|doc| activity_from(doc).inspect_err(skip_corrupt).ok())
            .collect();
        if let Some((all, after_key)) = &self.q.legacy_history {
            let rows: Vec<(String,)> = match &after {
                None => self.first_rows(all, (athlete,), limit).await?,
                Some(key) => {
                    let values = (athlete, CqlTimestamp(key.started_at), key.activity_id);
                    self.first_rows(after_key, values, limit).await?
                }
            };
            // A record in both tables: the new one is the latest.
            let known: std::collections::HashSet<Uuid> = out.iter().map(|a| a.id).collect();
            out.extend(
                rows.iter()
                    .filter_map(|(doc,)| activity_from(doc).inspect_err(skip_corrupt).ok())
                    .filter(|a| !known.contains(&a.id)),
            );
            out.sort_by_key(|a| std::cmp::Reverse(HistoryKey::of(a)));
            out.truncate(limit);
        }
        Ok(out)
    }

    async fn put_share(&self, share: &Share) -> StoreResult<()> {
        let hash = &share.token_hash[..];
        self.batch(
            BatchType::Logged,
            &[
                &self.q.insert_share,
                &self.q.insert_share_token,
                &self.q.insert_share_by_activity,
            ],
            (
                (
                    share.id,
                    share.activity_id,
                    share.owner_id,
                    CqlTimestamp(share.expires_at),
                    hash,
                ),
                (hash, share.id),
                (share.activity_id, share.id),
            ),
        )
        .await
    }

    async fn share(&self, id: Uuid) -> StoreResult<Option<Share>> {
        let row: Option<(Uuid, Uuid, Uuid, CqlTimestamp, Vec<u8>)> =
            self.one_row(&self.q.select_share, (id,)).await?;
        row.map(|(id, activity_id, owner_id, expires_at, hash)| {
            Ok(Share {
                id,
                activity_id,
                owner_id,
                expires_at: expires_at.0,
                token_hash: hash.try_into().map_err(|_| corrupt("share token hash"))?,
            })
        })
        .transpose()
    }

    async fn share_by_token(&self, token_hash: [u8; 32]) -> StoreResult<Option<Share>> {
        let row: Option<(Uuid,)> = self
            .one_row(&self.q.select_share_by_token, (&token_hash[..],))
            .await?;
        match row {
            Some((id,)) => self.share(id).await,
            None => Ok(None),
        }
    }

    async fn delete_share(&self, share: &Share) -> StoreResult<()> {
        self.batch(
            BatchType::Logged,
            &[
                &self.q.delete_share,
                &self.q.delete_share_token,
                &self.q.delete_share_by_activity,
            ],
            (
                (share.id,),
                (&share.token_hash[..],),
                (share.activity_id, share.id),
            ),
        )
        .await
    }

    async fn shares_of(&self, activity: Uuid) -> StoreResult<Vec<Share>> {
        let rows: Vec<(Uuid,)> = self
            .first_rows(&self.q.select_shares_of, (activity,), MAX_PAGE_ROWS)
            .await?;
        let shares: Vec<Option<Share>> = stream::iter(rows)
            .map(|(id,)| self.share(id))
            .buffered(LOOKUPS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(shares.into_iter().flatten().collect())
    }
}

#[async_trait]
impl PointStore for ScyllaStore {
    async fn append_points(&self, points: Arc<Vec<(Uuid, Point)>>) -> StoreResult<()> {
        let group = points.iter().copied().collect();
        self.append_groups(vec![group])
            .await
            .pop()
            .unwrap_or(Ok(()))
    }

    /// The group commit goes to this node's ingest log (`tracks`): one
    /// partition, one unlogged batch (split every 500 rows, the parts
    /// written together); each request is answered by the batches that
    /// carry its points.
    async fn append_groups(&self, groups: Vec<Vec<(Uuid, Point)>>) -> Vec<StoreResult<()>> {
        self.log_groups(groups).await
    }

    async fn points_exist(&self, activity: Uuid, ts: Vec<Millis>) -> StoreResult<Vec<bool>> {
        self.track_has(activity, &ts).await
    }

    /// The cursor is the last time read (8 bytes, big-endian).
    async fn route_page(
        &self,
        activity: Uuid,
        from: Option<RouteCursor>,
        limit: usize,
    ) -> StoreResult<(Vec<Point>, Option<RouteCursor>)> {
        let after = match from {
            None => None,
            Some(RouteCursor(bytes)) => {
                Some(Millis::from_be_bytes(bytes.as_slice().try_into().map_err(
                    |_| corrupt("a route cursor that is not 8 bytes"),
                )?))
            }
        };
        let points = self.track_after(activity, after, limit).await?;
        // A full page may have more after it; a short one is the end.
        let next = match points.last() {
            Some(last) if points.len() == limit => {
                Some(RouteCursor(last.ts.to_be_bytes().to_vec()))
            }
            _ => None,
        };
        Ok((points, next))
    }

    async fn points_after(
        &self,
        activity: Uuid,
        after: Millis,
        limit: usize,
    ) -> StoreResult<Vec<Point>> {
        self.track_after(activity, Some(after), limit).await
    }
}

/// Counts a request to the cluster by table and kind (`read`, `write`, or
/// `batch` with the rows it writes), so that the per-operation costs in
/// deploy/CAPACITY.md are counted from what the backend issues under the
/// loadgen: `trailcast_scylla_requests_total` and
/// `trailcast_scylla_rows_written_total`.
fn count(statement: &PreparedStatement, rows: u64) {
    let cql = statement.get_statement();
    let table = table_of(cql);
    let kind = match cql.trim_start().get(..6) {
        Some(verb) if verb.eq_ignore_ascii_case("SELECT") => "read",
        _ if rows > 1 => "batch",
        _ => "write",
    };
    metrics::counter!("trailcast_scylla_requests_total", "table" => table.clone(), "kind" => kind)
        .increment(1);
    if kind != "read" {
        metrics::counter!("trailcast_scylla_rows_written_total", "table" => table).increment(rows);
    }
}

/// The table a CQL statement names (after FROM, INTO or UPDATE), without
/// its keyspace.
fn table_of(cql: &str) -> String {
    let mut words = cql.split_whitespace();
    while let Some(word) = words.next() {
        if ["FROM", "INTO", "UPDATE"]
            .iter()
            .any(|k| word.eq_ignore_ascii_case(k))
            && let Some(name) = words.next()
        {
            let name = name.split('(').next().unwrap_or(name);
            return name.rsplit('.').next().unwrap_or(name).to_owned();
        }
    }
    "other".to_owned()
}

fn point_from(row: PointRow) -> Point {
    let (ts, lat, lng, alt, speed, accuracy, hr, cadence, battery) = row;
    let small = |v: Option<i32>| v.and_then(|v| u16::try_from(v).ok());
    Point {
        ts: ts.0,
        lat,
        lng,
        alt,
        speed,
        accuracy,
        hr: small(hr),
        cadence: small(cadence),
        battery: battery.and_then(|v| u8::try_from(v).ok()),
    }
}

/// The calendar year (UTC) of a time: the history partition it goes in.
fn year_of(t: Millis) -> i32 {
    use chrono::Datelike;
    chrono::DateTime::from_timestamp_millis(t).map_or(1970, |d| d.year())
}

/// The latest time the API accepts (`TsInput`: year 9999).
const MAX_TIME: Millis = 253_402_300_800_000;

fn visibility_name(v: Visibility) -> &'static str {
    match v {
        Visibility::Private => "private",
        Visibility::Friends => "friends",
        Visibility::Public => "public",
    }
}

fn visibility_from(name: &str) -> StoreResult<Visibility> {
    match name {
        "private" => Ok(Visibility::Private),
        "friends" => Ok(Visibility::Friends),
        "public" => Ok(Visibility::Public),
        other => Err(corrupt(format!("visibility {other}"))),
    }
}

impl ScyllaStore {
    async fn device(&self, id: Uuid) -> StoreResult<Option<Device>> {
        let row: Option<(String,)> = self.one_row(&self.q.select_device, (id,)).await?;
        row.map(|(doc,)| serde_json::from_str(&doc).map_err(corrupt))
            .transpose()
    }
}

#[async_trait]
impl DeviceStore for ScyllaStore {
    async fn put_device(&self, device: &Device) -> StoreResult<()> {
        let doc = serde_json::to_string(device).map_err(corrupt)?;
        // Three partitions: the key row last, so a key never names a
        // device that is not there.
        self.execute(&self.q.insert_device, (device.id, device.owner_id, doc))
            .await?;
        self.execute(&self.q.insert_device_by_owner, (device.owner_id, device.id))
            .await?;
        self.execute(&self.q.insert_device_key, (&device.key_hash[..], device.id))
            .await
            .map(|_| ())
    }

    async fn device_by_key(&self, key_hash: [u8; 32]) -> StoreResult<Option<Device>> {
        let row: Option<(Uuid,)> = self
            .one_row(&self.q.select_device_by_key, (&key_hash[..],))
            .await?;
        match row {
            Some((id,)) => self.device(id).await,
            None => Ok(None),
        }
    }

    async fn devices_of(&self, owner: Uuid) -> StoreResult<Vec<Device>> {
        let rows: Vec<(Uuid,)> = self
            .first_rows(&self.q.select_devices_of, (owner,), 1_000)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (id,) in rows {
            if let Some(device) = self.device(id).await? {
                out.push(device);
            }
        }
        Ok(out)
    }

    async fn delete_device(&self, device: &Device) -> StoreResult<()> {
        // The key first: it stops working before anything else goes.
        self.execute(&self.q.delete_device_key, (&device.key_hash[..],))
            .await?;
        self.execute(&self.q.delete_device, (device.id,)).await?;
        self.execute(&self.q.delete_device_by_owner, (device.owner_id, device.id))
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl CourseStore for ScyllaStore {
    async fn put_course(&self, course: &Course) -> StoreResult<()> {
        let doc = serde_json::to_string(course).map_err(corrupt)?;
        self.execute(&self.q.insert_course, (course.id, course.owner_id, doc))
            .await
            .map(|_| ())
    }

    async fn course(&self, id: Uuid) -> StoreResult<Option<Course>> {
        let row: Option<(String,)> = self.one_row(&self.q.select_course, (id,)).await?;
        row.map(|(doc,)| serde_json::from_str(&doc).map_err(corrupt))
            .transpose()
    }
}

/// Each field is its own partition: the values of one activity are written
/// side by side (bounded by the in-flight permits), not as a batch.
#[async_trait]
impl FieldStore for ScyllaStore {
    async fn put_fields(
        &self,
        athlete: Uuid,
        activity: HistoryKey,
        visibility: Visibility,
        values: &[(String, f64)],
    ) -> StoreResult<()> {
        let started = CqlTimestamp(activity.started_at);
        let vis = visibility_name(visibility);
        futures_util::future::try_join_all(values.iter().map(|(name, value)| {
            self.execute(
                &self.q.insert_field,
                (athlete, name, started, activity.activity_id, *value, vis),
            )
        }))
        .await
        .map(|_| ())
    }

    async fn delete_fields(
        &self,
        athlete: Uuid,
        activity: HistoryKey,
        names: &[String],
    ) -> StoreResult<()> {
        let started = CqlTimestamp(activity.started_at);
        futures_util::future::try_join_all(names.iter().map(|name| {
            self.execute(
                &self.q.delete_field,
                (athlete, name, started, activity.activity_id),
            )
        }))
        .await
        .map(|_| ())
    }

    async fn field_series(
        &self,
        athlete: Uuid,
        field: &str,
        from: Millis,
        to: Millis,
        limit: usize,
    ) -> StoreResult<Vec<FieldValue>> {
        if from >= to {
            return Ok(Vec::new());
        }
        // The whole series (the common read) needs no range.
        let rows: Vec<(CqlTimestamp, Uuid, f64, String)> = if from <= 0 && to >= MAX_TIME {
            self.first_rows(&self.q.select_field_series, (athlete, field), limit)
                .await?
        } else {
            self.first_rows(
                &self.q.select_field_range,
                (athlete, field, CqlTimestamp(from), CqlTimestamp(to)),
                limit,
            )
            .await?
        };
        rows.into_iter()
            .map(|(started, activity_id, value, vis)| {
                Ok(FieldValue {
                    activity_id,
                    started_at: started.0,
                    value,
                    visibility: visibility_from(&vis)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_counted_by_their_table() {
        assert_eq!(
            table_of("SELECT ts FROM ks.points WHERE activity_id = ?"),
            "points"
        );
        assert_eq!(
            table_of("INSERT INTO ks.points (activity_id, ts) VALUES (?, ?)"),
            "points"
        );
        assert_eq!(table_of("insert into users(id) values (?)"), "users");
        assert_eq!(table_of("UPDATE ks.activities SET doc = ?"), "activities");
        assert_eq!(table_of("DELETE FROM shares WHERE id = ?"), "shares");
        assert_eq!(table_of("TRUNCATE x"), "other");
    }

    /// Overload, timeouts and missing replicas are `Busy` (503 with
    /// Retry-After, the client retries); anything else stays a failure.
    #[test]
    fn overload_and_timeouts_are_busy_the_rest_fails() {
        use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
        let attempt = |db: DbError| {
            ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, "test".into()))
        };
        let busy = [
            ExecutionError::RequestTimeout(std::time::Duration::from_secs(2)),
            attempt(DbError::Overloaded),
            attempt(DbError::IsBootstrapping),
        ];
        for e in busy {
            let text = e.to_string();
            assert!(matches!(backend(e), StoreError::Busy { .. }), "{text}");
        }
        for e in [
            attempt(DbError::SyntaxError),
            attempt(DbError::Invalid),
            attempt(DbError::ServerError),
        ] {
            let text = e.to_string();
            assert!(matches!(backend(e), StoreError::Backend { .. }), "{text}");
        }
        assert!(matches!(
            backend("not a driver error"),
            StoreError::Backend { .. }
        ));
    }

    #[test]
    fn default_render_is_the_shipped_file() {
        assert_eq!(render_schema(DEFAULT_KEYSPACE, DEFAULT_REPLICATION), SCHEMA);
    }

    #[test]
    fn render_renames_every_table_and_the_keyspace() {
        let cql = render_schema(
            "tc_test",
            "{'class': 'SimpleStrategy', 'replication_factor': 1}",
        );
        let statements = schema_statements(&cql);
        assert!(statements[0].starts_with("CREATE KEYSPACE IF NOT EXISTS tc_test WITH"));
        assert!(statements[0].contains("SimpleStrategy"));
        let tables: Vec<_> = statements[1..].iter().collect();
        assert!(tables.len() >= 9, "{tables:?}");
        for t in tables {
            assert!(t.starts_with("CREATE TABLE IF NOT EXISTS tc_test."), "{t}");
        }
        assert!(!statements.iter().any(|s| s.contains("--")));
    }

    #[test]
    fn keyspace_names_are_plain_identifiers() {
        assert!(check_keyspace("trailcast_2").is_ok());
        for bad in ["", "Trail", "a;DROP", "1abc", "a.b"] {
            assert!(check_keyspace(bad).is_err(), "{bad}");
        }
    }
}
