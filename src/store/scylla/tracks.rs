//! Packed tracks on ScyllaDB (#19 item 4): a per-node ingest log that each
//! group commit writes, and a packer that turns it into per-activity chunks.
//!
//! Why: one row per GPS point made every live post one write request (3 M a
//! second at 10 M live activities) and a day-long activity 86,400 rows in
//! one partition. Now:
//!
//! - **Ingest log.** A group commit's points go to this node's log, in
//!   `ingest_log ((incarnation, bucket, shard), activity_id, ts)`: the
//!   incarnation is this process (a random id), the bucket 10 s of the
//!   node's clock, the shard the commit's number mod 8 (so a bucket's load
//!   spreads over 8 partitions and replicas). A whole commit is one
//!   unlogged single-partition batch: one request however many posts it
//!   holds, and the reply still waits for it, so an acknowledged point is
//!   in Scylla, at the configured consistency, before its reply. Each row
//!   carries its commit's number (`seq`): of two writes of one point, the
//!   later wins wherever they landed.
//! - **Chunks.** The packer (a task of the node that wrote the log) keeps
//!   the points it wrote in memory. Once the oldest unpacked bucket began a
//!   minute ago it writes every closed bucket's points as one
//!   `track_chunks` row per activity and hour
//!   (`((activity_id, hour), bucket, incarnation, packer)`, the points
//!   as differences from the point before, ~14 B each), lists the hour in
//!   `track_hours`, records the buckets as packed in `ingest_incarnations`,
//!   and deletes their log partitions. At one point every 2–5 s that is one
//!   row per activity per minute instead of 12–30, and an hour of track is
//!   one partition of at most ~3,600 points (~50 KB), however long the
//!   activity.
//! - **Reads** see the log and the chunks. This process's own log is read
//!   from its memory (watchers, COMPLETE and late points of an activity
//!   reach the node that tracks it, so that is the common case). Other
//!   processes' logs are read from Scylla: `track_logs` names the
//!   incarnations that hold (or held) an activity's points in their log,
//!   and each incarnation's row the buckets not yet packed (about 7, each
//!   read in its 8 shards). The log is read
//!   before the chunks: a point missing from the log read was deleted after
//!   its chunk was written, so the chunk read finds it. Every read is one
//!   partition by equality (no clustering range), so the storage contract
//!   runs whole on the in-memory CQL test server too.
//! - **A node that dies** leaves its unpacked buckets in the log; readers
//!   keep reading them there. Any node that sees an incarnation silent for
//!   `ADOPT_AFTER_MS` packs its log from Scylla (chunks keyed by the packer
//!   too, so two adopters at once never overwrite each other's rows; reads
//!   merge by timestamp) and then deletes its row.
//!
//! Keyspaces made before this layout keep their `points` table: when it
//! exists its rows are read as well (lowest priority), so activities
//! written before the upgrade keep their tracks.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use futures_util::{StreamExt, TryStreamExt, stream};
use scylla::statement::batch::BatchType;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use tokio::task::AbortHandle;
use uuid::Uuid;

use super::{PointRow, ScyllaStore, corrupt, point_from};
use crate::clock::Clock;
use crate::domain::Point;
use crate::domain::time::Millis;
use crate::store::recent::RecentItem;
use crate::store::recent_codec::{
    self, MAX_SCALE, Reader, put_point_rest, put_varint, read_point_rest, scaled, unscaled,
    unzigzag, zigzag,
};
use crate::store::{StoreError, StoreResult};

/// Node time per log bucket: one log partition per shard. At 28,000 posts
/// a second on a node (10 M live activities on ~110 nodes) a partition
/// holds ~35,000 rows, far below Scylla's 100,000-row warning.
pub const BUCKET_MS: Millis = 10_000;
/// Log partitions per bucket: at most this many batches per group commit.
pub const LOG_SHARDS: i32 = 8;
/// How much log one chunk row gathers: the packer waits until the oldest
/// unpacked bucket began this long ago, then packs every closed bucket.
/// So an activity gets a chunk row a minute, and a reader finds at most
/// ~7 buckets of log to read.
pub const PACK_EVERY_MS: Millis = 60_000;
/// Point time per chunk partition.
pub const HOUR_MS: Millis = 3_600_000;
/// How long after a bucket closes the packer waits (clock steps, late
/// commits of this node still in flight are counted separately).
const PACK_GRACE_MS: Millis = 2_000;
/// An incarnation whose heartbeat is older than this is packed by others.
pub const ADOPT_AFTER_MS: Millis = 120_000;
/// How often a live incarnation writes its heartbeat.
const HEARTBEAT_MS: Millis = 20_000;
/// Rows per unlogged log batch (~40 B each: far below the batch warning).
const LOG_ROWS_PER_BATCH: usize = 500;
/// Chunk writes (or log partition reads) in flight for one pack.
const PACK_IN_FLIGHT: usize = 32;
/// Rows read per log partition when adopting (a partition holds ~75,000 at
/// 40,000 posts a second per node).
const MAX_LOG_ROWS: usize = 1_000_000;
/// How long this node remembers an activity it wrote no point for (its
/// `track_logs` row written, its chunk hours listed); an athlete's offline
/// minutes or a pause should not cost those writes again.
const FORGET_AFTER_MS: Millis = 600_000;
/// An activity's `track_logs` rows live 30 days (the table's TTL); this
/// node writes its row again after a day.
const REANNOUNCE_MS: Millis = 86_400_000;

/// The statements of the packed layout.
pub(super) struct TrackStatements {
    insert_log: PreparedStatement,
    select_log_of: PreparedStatement,
    select_log_partition: PreparedStatement,
    delete_log_partition: PreparedStatement,
    open_incarnation: PreparedStatement,
    start_incarnation: PreparedStatement,
    mark_packed: PreparedStatement,
    heartbeat: PreparedStatement,
    select_incarnation: PreparedStatement,
    scan_incarnations: PreparedStatement,
    delete_incarnation: PreparedStatement,
    insert_track_log: PreparedStatement,
    select_track_logs: PreparedStatement,
    insert_chunk: PreparedStatement,
    select_chunks: PreparedStatement,
    insert_hour: PreparedStatement,
    select_hours: PreparedStatement,
    /// The one-row-per-point table of keyspaces made before packed tracks.
    legacy: Option<Legacy>,
}

struct Legacy {
    select_point: PreparedStatement,
    select_points: PreparedStatement,
    select_points_after: PreparedStatement,
}

impl TrackStatements {
    pub(super) async fn prepare(
        session: &scylla::client::session::Session,
        ks: &str,
    ) -> anyhow::Result<TrackStatements> {
        let prepare = |cql: String| super::prepare(session, cql);
        // The old `points` table exists only in keyspaces made before packed
        // tracks; preparing against a missing table fails, and that is the
        // test. (On the in-memory test server `ts > ?` is not understood,
        // but a fresh keyspace there has no `points` table either.)
        let legacy = match prepare(format!(
            "SELECT ts FROM {ks}.points WHERE activity_id = ? AND ts = ?"
        ))
        .await
        {
            Err(_) => None,
            Ok(select_point) => Some(Legacy {
                select_point,
                select_points: prepare(format!(
                    "SELECT ts, lat, lng, alt, speed, accuracy, hr, cadence, battery \
                     FROM {ks}.points WHERE activity_id = ?"
                ))
                .await?,
                select_points_after: prepare(format!(
                    "SELECT ts, lat, lng, alt, speed, accuracy, hr, cadence, battery \
                     FROM {ks}.points WHERE activity_id = ? AND ts > ?"
                ))
                .await?,
            }),
        };
        Ok(TrackStatements {
            insert_log: prepare(format!(
                "INSERT INTO {ks}.ingest_log \
                 (incarnation, bucket, shard, activity_id, ts, seq, point) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            select_log_of: prepare(format!(
                "SELECT seq, point FROM {ks}.ingest_log \
                 WHERE incarnation = ? AND bucket = ? AND shard = ? AND activity_id = ?"
            ))
            .await?,
            select_log_partition: prepare(format!(
                "SELECT activity_id, seq, point FROM {ks}.ingest_log \
                 WHERE incarnation = ? AND bucket = ? AND shard = ?"
            ))
            .await?,
            delete_log_partition: prepare(format!(
                "DELETE FROM {ks}.ingest_log WHERE incarnation = ? AND bucket = ? AND shard = ?"
            ))
            .await?,
            open_incarnation: prepare(format!(
                "INSERT INTO {ks}.ingest_incarnations (incarnation, open_bucket, alive_at) \
                 VALUES (?, ?, ?)"
            ))
            .await?,
            // The first open writes every column at once: a row with a
            // packed mark but no `alive_at` would look silent to another
            // node's `adopt_silent`, which would adopt and delete it.
            start_incarnation: prepare(format!(
                "INSERT INTO {ks}.ingest_incarnations \
                 (incarnation, open_bucket, packed_before, alive_at) VALUES (?, ?, ?, ?)"
            ))
            .await?,
            mark_packed: prepare(format!(
                "INSERT INTO {ks}.ingest_incarnations (incarnation, packed_before) VALUES (?, ?)"
            ))
            .await?,
            heartbeat: prepare(format!(
                "INSERT INTO {ks}.ingest_incarnations (incarnation, alive_at) VALUES (?, ?)"
            ))
            .await?,
            select_incarnation: prepare(format!(
                "SELECT open_bucket, packed_before FROM {ks}.ingest_incarnations \
                 WHERE incarnation = ?"
            ))
            .await?,
            scan_incarnations: prepare(format!(
                "SELECT incarnation, open_bucket, packed_before, alive_at \
                 FROM {ks}.ingest_incarnations"
            ))
            .await?,
            delete_incarnation: prepare(format!(
                "DELETE FROM {ks}.ingest_incarnations WHERE incarnation = ?"
            ))
            .await?,
            insert_track_log: prepare(format!(
                "INSERT INTO {ks}.track_logs (activity_id, incarnation, first_bucket) \
                 VALUES (?, ?, ?)"
            ))
            .await?,
            select_track_logs: prepare(format!(
                "SELECT incarnation, first_bucket FROM {ks}.track_logs WHERE activity_id = ?"
            ))
            .await?,
            insert_chunk: prepare(format!(
                "INSERT INTO {ks}.track_chunks \
                 (activity_id, hour, bucket, incarnation, packer, points) \
                 VALUES (?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            select_chunks: prepare(format!(
                "SELECT points FROM {ks}.track_chunks WHERE activity_id = ? AND hour = ?"
            ))
            .await?,
            insert_hour: prepare(format!(
                "INSERT INTO {ks}.track_hours (activity_id, hour) VALUES (?, ?)"
            ))
            .await?,
            select_hours: prepare(format!(
                "SELECT hour FROM {ks}.track_hours WHERE activity_id = ?"
            ))
            .await?,
            legacy,
        })
    }
}

/// This process's side of the log: what it wrote and has not packed yet.
pub(super) struct IngestLog {
    incarnation: Uuid,
    /// The newest bucket recorded as open in `ingest_incarnations` (a
    /// commit writes into a bucket only once it is recorded there, since
    /// readers look no further).
    open: tokio::sync::Mutex<Millis>,
    state: Mutex<LogState>,
    packer: Mutex<Option<AbortHandle>>,
}

#[derive(Default)]
struct LogState {
    /// Buckets before this are packed or being packed: no commit joins them.
    sealed_before: Millis,
    pending: BTreeMap<Millis, Pending>,
    /// Activities with a `track_logs` row for this incarnation: when it was
    /// written, and the newest bucket written for them.
    announced: HashMap<Uuid, (Millis, Millis)>,
    /// (activity, hour) already in `track_hours`.
    hours: HashMap<Uuid, Vec<Millis>>,
    /// When the heartbeat was last written.
    alive_at: Millis,
    /// Group commits so far: each one's sequence number, and its shard.
    commits: i64,
}

#[derive(Default)]
struct Pending {
    in_flight: usize,
    chunks: Chunks,
}

/// Chunks being gathered, by (activity, hour), already encoded: ~25 B a
/// point while it waits for the packer.
type Chunks = BTreeMap<(Uuid, Millis), Vec<u8>>;

/// Appends an encoded point to its chunk.
fn push_encoded(chunks: &mut Chunks, activity: Uuid, ts: Millis, encoded: &[u8]) {
    append(
        chunks.entry((activity, floor(ts, HOUR_MS))).or_default(),
        encoded,
    );
}

fn append(chunk: &mut Vec<u8>, encoded: &[u8]) {
    put_varint(chunk, encoded.len() as u64);
    chunk.extend_from_slice(encoded);
}

/// Adds `newer` after what `chunks` holds, chunk by chunk.
fn merge(chunks: &mut Chunks, newer: Chunks) {
    for (key, bytes) in newer {
        chunks.entry(key).or_default().extend(bytes);
    }
}

impl IngestLog {
    pub(super) fn new() -> IngestLog {
        IngestLog {
            incarnation: Uuid::new_v4(),
            open: tokio::sync::Mutex::new(Millis::MIN),
            state: Mutex::new(LogState::default()),
            packer: Mutex::new(None),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counts a commit out of its bucket however it ends.
struct InFlight<'a> {
    log: &'a IngestLog,
    bucket: Millis,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.log.state().pending.get_mut(&self.bucket) {
            p.in_flight -= 1;
        }
    }
}

fn now() -> Millis {
    Clock::System.now_ms()
}

fn ts(ms: Millis) -> CqlTimestamp {
    CqlTimestamp(ms)
}

fn floor(t: Millis, unit: Millis) -> Millis {
    t - t.rem_euclid(unit)
}

fn encode_point(p: &Point) -> Vec<u8> {
    recent_codec::encode(&RecentItem::Point(*p))
}

fn decode_point(bytes: &[u8]) -> StoreResult<Point> {
    match recent_codec::decode(bytes).map_err(corrupt)? {
        RecentItem::Point(p) => Ok(p),
        _ => Err(corrupt("a log or chunk entry that is not a point")),
    }
}

/// A chunk: each point as its length and its compact encoding.
#[cfg(test)]
fn encode_chunk(points: &[Point]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in points {
        append(&mut out, &encode_point(p));
    }
    out
}

/// What a packed chunk starts with; a chunk as gathered (each point as its
/// length and its compact encoding) starts with a length below 128.
const PACKED: u8 = 0xD1;

/// A gathered chunk as stored: points as differences from the one before
/// (time in ms; latitude and longitude as integers at one decimal scale for
/// the whole chunk), the rest as in the gathered form: ~14 B a point with
/// altitude, accuracy and heart rate, instead of ~25. A chunk with a coordinate no decimal scale holds
/// exactly stays as gathered.
fn pack_chunk(gathered: &[u8]) -> StoreResult<Vec<u8>> {
    let points = decode_chunk(gathered)?;
    let scale_of = |v: f64| (0..=MAX_SCALE).find(|k| scaled(v, *k).is_some());
    let mut k = 0;
    for p in &points {
        match (scale_of(p.lat), scale_of(p.lng)) {
            (Some(a), Some(b)) => k = k.max(a).max(b),
            _ => return Ok(gathered.to_vec()),
        }
    }
    let mut out = Vec::with_capacity(points.len() * 12 + 8);
    out.push(PACKED);
    put_varint(&mut out, points.len() as u64);
    out.push(k as u8);
    let (mut ts, mut lat, mut lng) = (0i64, 0i64, 0i64);
    for p in &points {
        // Exact at their own scale, so at the chunk's larger one too.
        let (Some(la), Some(ln)) = (scaled(p.lat, k), scaled(p.lng, k)) else {
            return Ok(gathered.to_vec());
        };
        out.push(p.present());
        put_varint(&mut out, zigzag(p.ts.wrapping_sub(ts)));
        put_varint(&mut out, zigzag(la.wrapping_sub(lat)));
        put_varint(&mut out, zigzag(ln.wrapping_sub(lng)));
        (ts, lat, lng) = (p.ts, la, ln);
        put_point_rest(&mut out, p);
    }
    Ok(out)
}

fn unpack_chunk(bytes: &[u8]) -> Result<Vec<Point>, String> {
    let mut r = Reader(bytes);
    r.byte()?;
    let n = r.varint()? as usize;
    let k = r.byte()? as usize;
    let mut out = Vec::with_capacity(n.min(bytes.len()));
    let (mut ts, mut lat, mut lng) = (0i64, 0i64, 0i64);
    for _ in 0..n {
        let flags = r.byte()?;
        ts = ts.wrapping_add(unzigzag(r.varint()?));
        lat = lat.wrapping_add(unzigzag(r.varint()?));
        lng = lng.wrapping_add(unzigzag(r.varint()?));
        let (la, ln) = (unscaled(lat, k)?, unscaled(lng, k)?);
        out.push(read_point_rest(&mut r, flags, ts, la, ln)?);
    }
    match r.0.is_empty() {
        true => Ok(out),
        false => Err(format!("{} bytes after a packed chunk", r.0.len())),
    }
}

/// The points of a chunk, packed or as gathered.
pub fn decode_chunk(mut bytes: &[u8]) -> StoreResult<Vec<Point>> {
    if bytes.first() == Some(&PACKED) {
        return unpack_chunk(bytes).map_err(corrupt);
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut r = Reader(bytes);
        let len = r.varint().map_err(corrupt)? as usize;
        let rest = r.0;
        let item = rest
            .get(..len)
            .ok_or_else(|| corrupt("a chunk that ends early"))?;
        out.push(decode_point(item)?);
        bytes = &rest[len..];
    }
    Ok(out)
}

/// The buckets `first..=last`.
fn buckets(first: Millis, last: Millis) -> impl Iterator<Item = Millis> + Clone {
    (0..)
        .map(move |i| first + i * BUCKET_MS)
        .take_while(move |b| *b <= last)
}

impl ScyllaStore {
    fn t(&self) -> &TrackStatements {
        &self.tracks
    }

    /// Starts the packer: every second it packs closed buckets; every
    /// `HEARTBEAT_MS` it writes this incarnation's heartbeat and packs the
    /// logs of incarnations gone silent.
    pub(super) fn start_packer(&self) {
        let this = self.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_adopt: Option<Millis> = None;
            loop {
                tick.tick().await;
                let now = now();
                if let Err(e) = this.pack_closed(now).await {
                    tracing::warn!(error = %e, "packing the ingest log (will retry)");
                }
                if last_adopt.is_none_or(|last| now - last >= HEARTBEAT_MS) {
                    last_adopt = Some(now);
                    if let Err(e) = this.adopt_silent(now).await {
                        tracing::warn!(error = %e, "packing silent incarnations' logs");
                    }
                }
            }
        });
        *self.log.packer.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
    }

    /// Stops this store's packer (what a crash does; tests use it).
    pub fn stop_packer(&self) {
        if let Some(task) = self
            .log
            .packer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }

    /// This process's id in the ingest log.
    pub fn incarnation(&self) -> Uuid {
        self.log.incarnation
    }

    /// Writes the group commit to the log: see the module comment.
    pub(super) async fn log_groups(&self, groups: Vec<Vec<(Uuid, Point)>>) -> Vec<StoreResult<()>> {
        let log = &*self.log;
        let now = now();
        let (bucket, seq, new) = {
            let mut s = log.state();
            let bucket = floor(now, BUCKET_MS).max(s.sealed_before);
            s.pending.entry(bucket).or_default().in_flight += 1;
            s.commits += 1;
            let seq = s.commits;
            let mut new: Vec<Uuid> = groups
                .iter()
                .flatten()
                .map(|(a, _)| *a)
                .filter(|a| {
                    s.announced
                        .get(a)
                        .is_none_or(|(written, _)| now - written >= REANNOUNCE_MS)
                })
                .collect();
            new.sort_unstable();
            new.dedup();
            (bucket, seq, new)
        };
        let _in_flight = InFlight { log, bucket };
        let fail_all = |e: StoreError| groups.iter().map(|_| Err(e.clone())).collect();
        if let Err(e) = self.open_bucket(bucket, now).await {
            return fail_all(e);
        }
        let inc = log.incarnation;
        let announced: StoreResult<Vec<()>> = stream::iter(new.clone())
            .map(|a| async move {
                let values = (a, inc, ts(bucket));
                self.execute(&self.t().insert_track_log, values)
                    .await
                    .map(|_| ())
            })
            .buffer_unordered(PACK_IN_FLIGHT)
            .try_collect()
            .await;
        if let Err(e) = announced {
            return fail_all(e);
        }
        {
            let mut s = log.state();
            for a in &new {
                s.announced.insert(*a, (now, bucket));
            }
        }

        // The whole commit goes to one partition (the shards take commits
        // in turn): one unlogged batch, split past LOG_ROWS_PER_BATCH, each
        // remembering the requests it carries.
        let shard = (seq % i64::from(LOG_SHARDS)) as i32;
        type Row = (Uuid, CqlTimestamp, i32, Uuid, CqlTimestamp, i64, Vec<u8>);
        let mut rows: Vec<(usize, Row)> = Vec::new();
        for (request, points) in groups.iter().enumerate() {
            for (activity, p) in points {
                let row = (
                    inc,
                    ts(bucket),
                    shard,
                    *activity,
                    ts(p.ts),
                    seq,
                    encode_point(p),
                );
                rows.push((request, row));
            }
        }
        let mut batches: Vec<(Vec<usize>, Vec<Row>)> = Vec::new();
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let (requests, values): (Vec<usize>, Vec<Row>) =
                rows.by_ref().take(LOG_ROWS_PER_BATCH).unzip();
            batches.push((requests, values));
        }
        let mut results: Vec<StoreResult<()>> = groups.iter().map(|_| Ok(())).collect();
        let mut written = stream::iter(batches)
            .map(|(requests, values)| async move {
                let statements = vec![&self.t().insert_log; values.len()];
                let result = self.batch(BatchType::Unlogged, &statements, values).await;
                (requests, result)
            })
            .buffer_unordered(super::BATCHES_IN_FLIGHT);
        while let Some((requests, result)) = written.next().await {
            if let Err(e) = result {
                for r in requests {
                    if results[r].is_ok() {
                        results[r] = Err(e.clone());
                    }
                }
            }
        }
        drop(written);

        // What was acknowledged waits in memory for the packer.
        let mut s = log.state();
        let s = &mut *s;
        let pending = s.pending.entry(bucket).or_default();
        for (points, result) in groups.iter().zip(&results) {
            if result.is_ok() {
                for (activity, p) in points {
                    push_encoded(&mut pending.chunks, *activity, p.ts, &encode_point(p));
                    if let Some(entry) = s.announced.get_mut(activity) {
                        entry.1 = entry.1.max(bucket);
                    }
                }
            }
        }
        results
    }

    /// Records `bucket` as this incarnation's open bucket before anything
    /// is written into it (the first time, also where packing starts).
    async fn open_bucket(&self, bucket: Millis, now: Millis) -> StoreResult<()> {
        let mut open = self.log.open.lock().await;
        if *open >= bucket {
            return Ok(());
        }
        let inc = self.log.incarnation;
        if *open == Millis::MIN {
            let values = (inc, ts(bucket), ts(bucket), ts(now));
            self.execute(&self.t().start_incarnation, values).await?;
        } else {
            self.execute(&self.t().open_incarnation, (inc, ts(bucket), ts(now)))
                .await?;
        }
        *open = bucket;
        self.log.state().alive_at = now;
        Ok(())
    }

    /// Packs this process's closed buckets as one group once the oldest
    /// began `PACK_EVERY_MS` ago; returns how many buckets it packed. A
    /// bucket is closed `PACK_GRACE_MS` after its end once no commit is
    /// writing into it. Public for tests, which pack with a time far ahead.
    pub async fn pack_closed(&self, now: Millis) -> StoreResult<usize> {
        self.pack(now, false).await
    }

    /// On shutdown, once no commit is in flight: packs every bucket at once
    /// and forgets this incarnation, so nobody needs to adopt its log.
    pub async fn flush_log(&self) -> StoreResult<usize> {
        self.stop_packer();
        let packed = self.pack(now(), true).await?;
        if self.log.state().pending.is_empty() {
            self.execute(&self.t().delete_incarnation, (self.log.incarnation,))
                .await?;
        }
        Ok(packed)
    }

    async fn pack(&self, now: Millis, all: bool) -> StoreResult<usize> {
        let log = &*self.log;
        let inc = log.incarnation;
        let group: Option<(Millis, Millis, Chunks)> = {
            let mut s = log.state();
            let due = s
                .pending
                .keys()
                .next()
                .is_some_and(|first| all || first + PACK_EVERY_MS + PACK_GRACE_MS <= now);
            let mut taken: Option<(Millis, Millis, Chunks)> = None;
            for (&b, p) in s.pending.iter().take_while(|_| due) {
                if (!all && b + BUCKET_MS + PACK_GRACE_MS > now) || p.in_flight > 0 {
                    break;
                }
                // Copied, not taken: until the chunks are written, this
                // node's reads of its own log come from here.
                let (_, last, chunks) = taken.get_or_insert_with(|| (b, b, Chunks::new()));
                *last = b;
                merge(chunks, p.chunks.clone());
            }
            if let Some((_, last, _)) = &taken {
                s.sealed_before = s.sealed_before.max(last + BUCKET_MS);
            }
            taken
        };
        let mut packed = 0;
        if let Some((first, last, chunks)) = group {
            // On failure the buckets stay pending: the next tick tries again.
            self.pack_group(inc, inc, first, last, &chunks).await?;
            let mut s = log.state();
            let packed_before = last + BUCKET_MS;
            s.pending.retain(|b, _| *b >= packed_before);
            s.alive_at = now;
            // Forget activities quiet for a while (all their buckets are
            // packed): their next post writes their `track_logs` row again.
            s.announced
                .retain(|_, (_, newest)| *newest + FORGET_AFTER_MS >= packed_before);
            let LogState {
                announced, hours, ..
            } = &mut *s;
            hours.retain(|a, _| announced.contains_key(a));
            packed = ((last - first) / BUCKET_MS + 1) as usize;
        }
        let heartbeat_due = !all && now.saturating_sub(log.state().alive_at) >= HEARTBEAT_MS;
        if heartbeat_due {
            self.execute(&self.t().heartbeat, (inc, ts(now))).await?;
            log.state().alive_at = now;
        }
        Ok(packed)
    }

    /// Writes buckets `first..=last` of `incarnation`'s log (their points,
    /// in bucket order) as chunks, records them packed, and deletes their
    /// log partitions.
    async fn pack_group(
        &self,
        incarnation: Uuid,
        packer: Uuid,
        first: Millis,
        last: Millis,
        chunks: &Chunks,
    ) -> StoreResult<()> {
        let own = incarnation == packer;
        let new_hours: Vec<(Uuid, Millis)> = {
            let s = self.log.state();
            chunks
                .keys()
                .filter(|(a, h)| !own || !s.hours.get(a).is_some_and(|hs| hs.contains(h)))
                .copied()
                .collect()
        };
        let rows: Vec<(Uuid, Millis, Vec<u8>)> = chunks
            .iter()
            .map(|((a, h), bytes)| Ok((*a, *h, pack_chunk(bytes)?)))
            .collect::<StoreResult<_>>()?;
        stream::iter(rows)
            .map(|(a, h, bytes)| async move {
                let values = (a, ts(h), ts(first), incarnation, packer, bytes);
                self.execute(&self.t().insert_chunk, values)
                    .await
                    .map(|_| ())
            })
            .buffer_unordered(PACK_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        stream::iter(new_hours.clone())
            .map(|(a, h)| async move {
                self.execute(&self.t().insert_hour, (a, ts(h)))
                    .await
                    .map(|_| ())
            })
            .buffer_unordered(PACK_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        if own {
            let mut s = self.log.state();
            for (a, h) in new_hours {
                s.hours.entry(a).or_default().push(h);
            }
        }
        self.execute(&self.t().mark_packed, (incarnation, ts(last + BUCKET_MS)))
            .await?;
        stream::iter(buckets(first, last))
            .flat_map(|b| stream::iter((0..LOG_SHARDS).map(move |shard| (b, shard))))
            .map(|(b, shard)| async move {
                let values = (incarnation, ts(b), shard);
                self.execute(&self.t().delete_log_partition, values)
                    .await
                    .map(|_| ())
            })
            .buffer_unordered(PACK_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Packs the logs of incarnations whose heartbeat is older than
    /// `ADOPT_AFTER_MS` (a node that died or was stopped), then forgets
    /// them; returns how many. Public for tests.
    pub async fn adopt_silent(&self, now: Millis) -> StoreResult<usize> {
        type IncRow = (
            Uuid,
            Option<CqlTimestamp>,
            Option<CqlTimestamp>,
            Option<CqlTimestamp>,
        );
        let rows: Vec<IncRow> = self
            .first_rows(&self.t().scan_incarnations, (), MAX_LOG_ROWS)
            .await?;
        let mut adopted = 0;
        for (inc, open, packed, alive) in rows {
            let silent = alive.is_none_or(|t| now.saturating_sub(t.0) >= ADOPT_AFTER_MS);
            if inc == self.log.incarnation || !silent {
                continue;
            }
            if let (Some(open), Some(packed)) = (open, packed)
                && packed.0 <= open.0
            {
                let (first, last) = (packed.0, open.0);
                let partitions: Vec<Vec<(Uuid, i64, Vec<u8>)>> = stream::iter(buckets(first, last))
                    .flat_map(|b| stream::iter((0..LOG_SHARDS).map(move |shard| (b, shard))))
                    .map(|(b, shard)| {
                        self.first_rows(
                            &self.t().select_log_partition,
                            (inc, ts(b), shard),
                            MAX_LOG_ROWS,
                        )
                    })
                    .buffered(PACK_IN_FLIGHT)
                    .try_collect()
                    .await?;
                // In commit order, so that a resent point's later value wins.
                let mut rows: Vec<(Uuid, i64, Vec<u8>)> =
                    partitions.into_iter().flatten().collect();
                rows.sort_by_key(|(_, seq, _)| *seq);
                let mut chunks = Chunks::new();
                for (activity, _, bytes) in rows {
                    let p = decode_point(&bytes)?;
                    push_encoded(&mut chunks, activity, p.ts, &bytes);
                }
                self.pack_group(inc, self.log.incarnation, first, last, &chunks)
                    .await?;
            }
            self.execute(&self.t().delete_incarnation, (inc,)).await?;
            tracing::info!(%inc, "packed the ingest log of a silent incarnation");
            adopted += 1;
        }
        Ok(adopted)
    }

    /// The activity's points still in ingest logs (any incarnation), by
    /// time; a point written twice counts once, the later write winning.
    /// This process's own log is read from memory (it holds every
    /// acknowledged point of its unpacked buckets); other incarnations'
    /// from Scylla, every shard of each unpacked bucket.
    async fn logged_points(&self, activity: Uuid) -> StoreResult<BTreeMap<Millis, Point>> {
        let rows: Vec<(Uuid, CqlTimestamp)> = self
            .first_rows(&self.t().select_track_logs, (activity,), MAX_LOG_ROWS)
            .await?;
        let mut first: BTreeMap<Uuid, Millis> = BTreeMap::new();
        for (inc, b) in rows {
            let e = first.entry(inc).or_insert(b.0);
            *e = (*e).min(b.0);
        }
        let mut out = BTreeMap::new();
        let own = self.log.incarnation;
        let mut slices: Vec<(Uuid, Millis, i32)> = Vec::new();
        for (inc, first_bucket) in first {
            if inc == own {
                continue;
            }
            let row: Option<(Option<CqlTimestamp>, Option<CqlTimestamp>)> =
                self.one_row(&self.t().select_incarnation, (inc,)).await?;
            // No row: packed and forgotten.
            let Some((Some(open), packed)) = row else {
                continue;
            };
            let from = packed.map_or(first_bucket, |p| p.0.max(first_bucket));
            for b in buckets(from, open.0) {
                slices.extend((0..LOG_SHARDS).map(|shard| (inc, b, shard)));
            }
        }
        let read: Vec<Vec<(i64, Vec<u8>)>> = stream::iter(slices)
            .map(|(inc, b, shard)| {
                self.first_rows(
                    &self.t().select_log_of,
                    (inc, ts(b), shard, activity),
                    MAX_LOG_ROWS,
                )
            })
            .buffered(PACK_IN_FLIGHT)
            .try_collect()
            .await?;
        let mut rows: Vec<(i64, Vec<u8>)> = read.into_iter().flatten().collect();
        rows.sort_by_key(|(seq, _)| *seq);
        for (_, bytes) in rows {
            let p = decode_point(&bytes)?;
            out.insert(p.ts, p);
        }
        // This process's own unpacked points, after any older incarnation's.
        let own_chunks: Vec<Vec<u8>> = {
            let s = self.log.state();
            s.pending
                .values()
                .flat_map(|p| {
                    p.chunks
                        .range((activity, Millis::MIN)..=(activity, Millis::MAX))
                        .map(|(_, bytes)| bytes.clone())
                })
                .collect()
        };
        for chunk in own_chunks {
            for p in decode_chunk(&chunk)? {
                out.insert(p.ts, p);
            }
        }
        Ok(out)
    }

    /// The hours of the activity's chunks, ascending.
    async fn chunk_hours(&self, activity: Uuid) -> StoreResult<Vec<Millis>> {
        let rows: Vec<(CqlTimestamp,)> = self
            .first_rows(&self.t().select_hours, (activity,), MAX_LOG_ROWS)
            .await?;
        let mut hours: Vec<Millis> = rows.into_iter().map(|(h,)| h.0).collect();
        hours.sort_unstable();
        hours.dedup();
        Ok(hours)
    }

    /// One hour of packed track, rows in key order (a later bucket's point
    /// replaces an earlier one at the same time).
    async fn chunk_points(&self, activity: Uuid, hour: Millis) -> StoreResult<Vec<Point>> {
        let rows: Vec<(Vec<u8>,)> = self
            .first_rows(&self.t().select_chunks, (activity, ts(hour)), MAX_LOG_ROWS)
            .await?;
        let mut out = Vec::new();
        for (bytes,) in rows {
            out.extend(decode_chunk(&bytes)?);
        }
        Ok(out)
    }

    /// At most `limit` points later than `after` (all if `None`), in time
    /// order, from the log, the chunks and (on old keyspaces) `points`.
    pub(super) async fn track_after(
        &self,
        activity: Uuid,
        after: Option<Millis>,
        limit: usize,
    ) -> StoreResult<Vec<Point>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let later = |t: Millis| after.is_none_or(|a| t > a);
        // The log first: see the module comment.
        let mut logged = self.logged_points(activity).await?;
        logged.retain(|t, _| later(*t));
        let mut track: BTreeMap<Millis, Point> = BTreeMap::new();
        if let Some(legacy) = &self.t().legacy {
            let rows: Vec<PointRow> = match after {
                None => {
                    self.first_rows(&legacy.select_points, (activity,), limit)
                        .await?
                }
                Some(a) => {
                    self.first_rows(&legacy.select_points_after, (activity, ts(a)), limit)
                        .await?
                }
            };
            track.extend(
                rows.into_iter()
                    .map(point_from)
                    .filter(|p| later(p.ts))
                    .map(|p| (p.ts, p)),
            );
        }
        let first_hour = after.map(|a| floor(a, HOUR_MS));
        for hour in self.chunk_hours(activity).await? {
            if first_hour.is_some_and(|f| hour < f) {
                continue;
            }
            for p in self.chunk_points(activity, hour).await? {
                if later(p.ts) {
                    track.insert(p.ts, p);
                }
            }
            // Everything before the hour's end is known now.
            let end = hour + HOUR_MS;
            let known = track.range(..end).count()
                + logged
                    .range(..end)
                    .filter(|(t, _)| !track.contains_key(t))
                    .count();
            if known >= limit {
                break;
            }
        }
        track.extend(logged);
        Ok(track.into_values().take(limit).collect())
    }

    /// For each timestamp, whether the activity has a point there.
    pub(super) async fn track_has(
        &self,
        activity: Uuid,
        times: &[Millis],
    ) -> StoreResult<Vec<bool>> {
        let logged = self.logged_points(activity).await?;
        let mut hours: Vec<Millis> = times.iter().map(|t| floor(*t, HOUR_MS)).collect();
        hours.sort_unstable();
        hours.dedup();
        let listed = self.chunk_hours(activity).await?;
        let mut found: std::collections::HashSet<Millis> = logged.into_keys().collect();
        for hour in hours
            .into_iter()
            .filter(|h| listed.binary_search(h).is_ok())
        {
            found.extend(
                self.chunk_points(activity, hour)
                    .await?
                    .iter()
                    .map(|p| p.ts),
            );
        }
        let mut out = Vec::with_capacity(times.len());
        for t in times {
            let mut here = found.contains(t);
            if !here && let Some(legacy) = &self.t().legacy {
                let row: Option<(CqlTimestamp,)> = self
                    .one_row(&legacy.select_point, (activity, ts(*t)))
                    .await?;
                here = row.is_some_and(|(f,)| f.0 == *t);
            }
            out.push(here);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_every_point_field() {
        let mut full = Point::bare(1_796_649_333_355, 52.520_008, 13.404_954);
        full.alt = Some(34.5);
        full.speed = Some(3.2);
        full.accuracy = Some(4.0);
        full.hr = Some(151);
        full.cadence = Some(172);
        full.battery = Some(87);
        let bare = Point::bare(-5, -33.868_82, 151.209_29);
        let points = vec![full, bare, full];
        let bytes = encode_chunk(&points);
        assert_eq!(decode_chunk(&bytes).unwrap(), points);
        assert!(bytes.len() < 3 * 40, "{} bytes", bytes.len());
        assert!(decode_chunk(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_chunk(&[]).unwrap().is_empty());
    }

    /// A minute of a run at one fix every 2–5 s, as a phone reports it.
    fn minute(t0: Millis) -> Vec<Point> {
        (0..20)
            .map(|i| {
                // Seven decimals, as parsed from a phone's JSON.
                let deg = |v: f64| (v * 1e7).round() / 1e7;
                let mut p = Point::bare(
                    t0 + i * 3_000 + (i % 3) * 7,
                    deg(52.520_008_1 + i as f64 * 1.1e-4),
                    deg(-13.404_954 - i as f64 * 0.7e-4),
                );
                p.alt = Some((345 + i * 2) as f64 / 10.0);
                p.accuracy = Some(4.0);
                p.hr = Some(140 + i as u16);
                p.battery = (i == 0).then_some(87);
                p
            })
            .collect()
    }

    #[test]
    fn packed_chunks_hold_the_same_points_in_little_more_than_half_the_bytes() {
        let mut points = minute(1_796_649_333_355);
        points.swap(3, 11); // out of order, as late points arrive
        points.push(points[5]); // a resend
        let gathered = encode_chunk(&points);
        let packed = pack_chunk(&gathered).unwrap();
        assert_eq!(packed[0], PACKED);
        assert_eq!(decode_chunk(&packed).unwrap(), points);
        let per_point = packed.len() as f64 / points.len() as f64;
        assert!(per_point < 15.0, "{per_point:.2} B a point");
        assert!(
            packed.len() * 10 < gathered.len() * 6,
            "{} B packed, {} B gathered",
            packed.len(),
            gathered.len()
        );
        assert!(decode_chunk(&packed[..packed.len() - 1]).is_err());
        let mut longer = packed.clone();
        longer.push(0);
        assert!(decode_chunk(&longer).is_err());
    }

    #[test]
    fn a_chunk_no_decimal_scale_holds_stays_as_gathered() {
        let mut points = minute(0);
        points[4].lng = 0.1 + 0.2; // 0.30000000000000004
        let gathered = encode_chunk(&points);
        let kept = pack_chunk(&gathered).unwrap();
        assert_eq!(kept, gathered);
        assert_eq!(decode_chunk(&kept).unwrap(), points);
    }

    #[test]
    fn hours_and_buckets_are_whole_units() {
        assert_eq!(floor(3_600_001, HOUR_MS), 3_600_000);
        assert_eq!(floor(-1, HOUR_MS), -HOUR_MS);
        let b: Vec<Millis> = buckets(20_000, 50_000).collect();
        assert_eq!(b, [20_000, 30_000, 40_000, 50_000]);
        assert_eq!(buckets(20_000, 10_000).count(), 0);
    }
}
