//! The embedded persistence backend: fjall, an LSM store, in `--data-dir`.
//!
//! Keyspaces and keys (all integers big-endian so that a prefix scan returns
//! a partition in clustering order; `ts` has its sign bit flipped so that
//! negative values would still sort first):
//!
//! | keyspace | key | value |
//! | --- | --- | --- |
//! | `users` | user_id | JSON `User` |
//! | `tokens` | sha256(token) | user_id |
//! | `friend_requests` | from ‖ to | empty |
//! | `activities` | activity_id | JSON `Activity` |
//! | `activities_by_athlete` | athlete_id ‖ !started_at ‖ !activity_id | empty |
//! | `points` | activity_id ‖ ts | `Point::encode_value` |
//! | `shares` | share_id | JSON `Share` |
//! | `share_tokens` | sha256(token) | share_id |
//! | `shares_by_activity` | activity_id ‖ share_id | empty |
//! | `privacy_zones` | user_id | JSON `[PrivacyZone]` |
//! | `courses` | course_id | JSON `Course` (athletes' own) |
//! | `devices` | device_id | JSON `Device` |
//! | `device_keys` | sha256(key) | device_id |
//! | `devices_by_owner` | owner_id ‖ device_id | empty |
//! | `activity_fields` | athlete_id ‖ len(field) ‖ field ‖ !started_at ‖ !activity_id | f64 (8 bytes, big-endian) ‖ visibility (1 byte) |
//!
//! `activities_by_athlete` stores the bitwise complement of the clustering
//! columns so that an ascending scan is newest first (Scylla's `DESC`).
//!
//! Durability: every write method commits and then fsyncs the journal
//! (`PersistMode::SyncAll`) before returning; `append_points` is called by
//! the write-behind batcher with a whole group of requests, so one fsync
//! covers many requests (group commit). fjall is synchronous, so each call
//! runs on tokio's blocking pool.
//!
//! Disk full: fjall poisons itself for good at the first failed journal
//! write, so the store never lets the disk get there. Every write first
//! checks the free space of the data dir (`statvfs`, re-read at most every
//! `SPACE_CHECK_EVERY`) and is refused with `StoreError::Full` (HTTP 507)
//! while less than the reserve (`--min-free-disk`) is left; `/readyz` says
//! not ready meanwhile. Nothing is written, so nothing acknowledged is
//! lost, and writes resume by themselves once space returns. A failure
//! that poisons fjall anyway (the reserve eaten between two checks) is
//! reported as `Full` too; that store needs a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use uuid::Uuid;

use super::{
    ActivityStore, BoxError, CourseStore, Device, DeviceStore, FieldStore, FieldValue, HistoryKey,
    PointStore, RouteCursor, ScanCursor, Share, StoreError, StoreResult, User, UserStore,
    decode_activity, skip_corrupt,
};
use crate::domain::course::Course;
use crate::domain::time::Millis;
use crate::domain::{Activity, Point, PrivacyZone, Visibility};

/// How often writes re-read the free space of the data dir.
pub const SPACE_CHECK_EVERY: Duration = Duration::from_millis(250);
/// Free space the store keeps in reserve by default (`--min-free-disk`).
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 << 20;

/// The free-space guard of the data dir.
struct Space {
    dir: PathBuf,
    min_free: u64,
    opened: Instant,
    /// When the space was last read (ms since `opened`, +1; 0: never).
    checked_ms: AtomicU64,
    full: AtomicBool,
    free: AtomicU64,
}

impl Space {
    fn check(&self) -> StoreResult<()> {
        let now = self.opened.elapsed().as_millis() as u64 + 1;
        let last = self.checked_ms.load(Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) >= SPACE_CHECK_EVERY.as_millis() as u64 {
            self.checked_ms.store(now, Ordering::Relaxed);
            match rustix::fs::statvfs(&self.dir) {
                Ok(fs) => {
                    let free = fs.f_bavail.saturating_mul(fs.f_frsize);
                    self.free.store(free, Ordering::Relaxed);
                    let full = free < self.min_free;
                    if full != self.full.swap(full, Ordering::Relaxed) {
                        match full {
                            true => {
                                tracing::error!(free_bytes = free, reserve_bytes = self.min_free, dir = %self.dir.display(), "data dir is full: refusing writes until space returns")
                            }
                            false => tracing::info!(
                                free_bytes = free,
                                "data dir has space again: taking writes"
                            ),
                        }
                    }
                    metrics::gauge!("trailcast_store_free_bytes").set(free as f64);
                }
                Err(e) => tracing::warn!(error = %e, "could not read the data dir's free space"),
            }
        }
        match self.full.load(Ordering::Relaxed) {
            true => Err(StoreError::full(
                "fjall",
                format!(
                    "{} bytes free in {}, below the reserve of {} bytes",
                    self.free.load(Ordering::Relaxed),
                    self.dir.display(),
                    self.min_free
                ),
            )),
            false => Ok(()),
        }
    }
}

#[derive(Clone)]
pub struct EmbeddedStore {
    space: Arc<Space>,
    db: Database,
    users: Keyspace,
    tokens: Keyspace,
    friend_requests: Keyspace,
    activities: Keyspace,
    by_athlete: Keyspace,
    points: Keyspace,
    shares: Keyspace,
    share_tokens: Keyspace,
    shares_by_activity: Keyspace,
    privacy_zones: Keyspace,
    fields: Keyspace,
    courses: Keyspace,
    devices: Keyspace,
    device_keys: Keyspace,
    devices_by_owner: Keyspace,
}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        let full = match &e {
            fjall::Error::Poisoned => true,
            fjall::Error::Io(io) => io.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        };
        match full {
            true => StoreError::full("fjall", e),
            false => StoreError::backend("fjall", e),
        }
    }
}

fn ts_key(ts: Millis) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

fn ts_from_key(bytes: &[u8]) -> Option<Millis> {
    let raw: [u8; 8] = bytes.try_into().ok()?;
    Some((u64::from_be_bytes(raw) ^ (1 << 63)) as i64)
}

fn point_key(activity: Uuid, ts: Millis) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(activity.as_bytes());
    key[16..].copy_from_slice(&ts_key(ts));
    key
}

fn history_key(athlete: Uuid, at: HistoryKey) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..16].copy_from_slice(athlete.as_bytes());
    key[16..24].copy_from_slice(&ts_key(at.started_at).map(|b| !b));
    key[24..].copy_from_slice(&at.activity_id.as_bytes().map(|b| !b));
    key
}

/// The partition of one athlete's field: athlete ‖ len ‖ name.
fn field_prefix(athlete: Uuid, field: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(17 + field.len() + 24);
    key.extend_from_slice(athlete.as_bytes());
    key.push(field.len() as u8);
    key.extend_from_slice(field.as_bytes());
    key
}

/// A field value's key: its partition, then newest start first (the
/// complemented clustering columns, as in `history_key`).
fn field_key(athlete: Uuid, field: &str, at: HistoryKey) -> Vec<u8> {
    let mut key = field_prefix(athlete, field);
    key.extend_from_slice(&ts_key(at.started_at).map(|b| !b));
    key.extend_from_slice(&at.activity_id.as_bytes().map(|b| !b));
    key
}

fn visibility_byte(v: Visibility) -> u8 {
    match v {
        Visibility::Private => 0,
        Visibility::Friends => 1,
        Visibility::Public => 2,
    }
}

fn visibility_of(b: u8) -> Option<Visibility> {
    match b {
        0 => Some(Visibility::Private),
        1 => Some(Visibility::Friends),
        2 => Some(Visibility::Public),
        _ => None,
    }
}

fn pair(a: Uuid, b: Uuid) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(a.as_bytes());
    key[16..].copy_from_slice(b.as_bytes());
    key
}

fn corrupt(what: impl Into<BoxError>) -> StoreError {
    StoreError::corrupt("fjall", what)
}

/// Reads and decodes the JSON record stored under an id.
async fn get_json<T: serde::de::DeserializeOwned + Send + 'static>(
    keyspace: Keyspace,
    id: Uuid,
) -> StoreResult<Option<T>> {
    blocking(move || {
        keyspace
            .get(id.as_bytes())?
            .map(|v| serde_json::from_slice(&v).map_err(corrupt))
            .transpose()
    })
    .await
}

/// Looks a token hash up in its index and reads the record it names, in one
/// trip to the blocking pool.
async fn get_by_token<T: serde::de::DeserializeOwned + Send + 'static>(
    tokens: Keyspace,
    records: Keyspace,
    token_hash: [u8; 32],
) -> StoreResult<Option<T>> {
    blocking(move || {
        let Some(id) = tokens.get(token_hash)? else {
            return Ok(None);
        };
        records
            .get(&id)?
            .map(|v| serde_json::from_slice(&v).map_err(corrupt))
            .transpose()
    })
    .await
}

/// Runs a fjall call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> StoreResult<T> + Send + 'static,
) -> StoreResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::backend("fjall task", e))?
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, keeping `min_free` bytes of
    /// the disk free (writes are refused below that).
    pub fn open(dir: &Path, min_free: u64) -> StoreResult<EmbeddedStore> {
        let db = Database::builder(dir).open()?;
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        Ok(EmbeddedStore {
            space: Arc::new(Space {
                dir: dir.to_path_buf(),
                min_free,
                opened: Instant::now(),
                checked_ms: AtomicU64::new(0),
                full: AtomicBool::new(false),
                free: AtomicU64::new(0),
            }),
            users: ks("users")?,
            tokens: ks("tokens")?,
            friend_requests: ks("friend_requests")?,
            activities: ks("activities")?,
            by_athlete: ks("activities_by_athlete")?,
            points: ks("points")?,
            shares: ks("shares")?,
            share_tokens: ks("share_tokens")?,
            shares_by_activity: ks("shares_by_activity")?,
            privacy_zones: ks("privacy_zones")?,
            fields: ks("activity_fields")?,
            courses: ks("courses")?,
            devices: ks("devices")?,
            device_keys: ks("device_keys")?,
            devices_by_owner: ks("devices_by_owner")?,
            db,
        })
    }

    fn sync(&self) -> StoreResult<()> {
        Ok(self.db.persist(PersistMode::SyncAll)?)
    }

    /// Writes a JSON record and the token index naming it in one batch (the
    /// write side of `get_by_token`), then syncs.
    async fn put_with_token(
        &self,
        records: &Keyspace,
        tokens: &Keyspace,
        id: Uuid,
        record: &impl serde::Serialize,
        token_hash: [u8; 32],
    ) -> StoreResult<()> {
        let value = serde_json::to_vec(record).map_err(corrupt)?;
        let (this, records, tokens) = (self.clone(), records.clone(), tokens.clone());
        blocking(move || {
            this.space.check()?;
            let mut batch = this.db.batch();
            batch.insert(&records, id.as_bytes().to_vec(), value);
            batch.insert(&tokens, token_hash.to_vec(), id.as_bytes().to_vec());
            batch.commit()?;
            this.sync()
        })
        .await
    }

    /// Flushes the journal to disk; called on shutdown.
    pub fn close(&self) -> StoreResult<()> {
        self.sync()
    }
}

#[async_trait]
impl UserStore for EmbeddedStore {
    async fn create_user(&self, user: &User, token_hash: [u8; 32]) -> StoreResult<()> {
        self.put_with_token(&self.users, &self.tokens, user.id, user, token_hash)
            .await
    }

    async fn user(&self, id: Uuid) -> StoreResult<Option<User>> {
        get_json(self.users.clone(), id).await
    }

    async fn user_by_token(&self, token_hash: [u8; 32]) -> StoreResult<Option<User>> {
        get_by_token(self.tokens.clone(), self.users.clone(), token_hash).await
    }

    async fn add_friend_request(&self, from: Uuid, to: Uuid) -> StoreResult<()> {
        let this = self.clone();
        blocking(move || {
            this.space.check()?;
            this.friend_requests.insert(pair(from, to), [])?;
            this.sync()
        })
        .await
    }

    async fn remove_friendship(&self, a: Uuid, b: Uuid) -> StoreResult<()> {
        let this = self.clone();
        blocking(move || {
            this.space.check()?;
            let mut batch = this.db.batch();
            batch.remove(&this.friend_requests, pair(a, b).to_vec());
            batch.remove(&this.friend_requests, pair(b, a).to_vec());
            batch.commit()?;
            this.sync()
        })
        .await
    }

    async fn has_friend_request(&self, from: Uuid, to: Uuid) -> StoreResult<bool> {
        let this = self.clone();
        blocking(move || Ok(this.friend_requests.contains_key(pair(from, to))?)).await
    }

    async fn privacy_zones(&self, user: Uuid) -> StoreResult<Vec<PrivacyZone>> {
        Ok(get_json(self.privacy_zones.clone(), user)
            .await?
            .unwrap_or_default())
    }

    async fn set_privacy_zones(&self, user: Uuid, zones: &[PrivacyZone]) -> StoreResult<()> {
        let value = serde_json::to_vec(zones).map_err(corrupt)?;
        let this = self.clone();
        blocking(move || {
            this.space.check()?;
            this.privacy_zones.insert(user.as_bytes(), value)?;
            this.sync()
        })
        .await
    }

    async fn friend_requests_from(&self, from: Uuid) -> StoreResult<Vec<Uuid>> {
        let this = self.clone();
        blocking(move || {
            this.friend_requests
                .prefix(from.as_bytes())
                .map(|kv| {
                    let key = kv.key()?;
                    Uuid::from_slice(&key[16..]).map_err(corrupt)
                })
                .collect()
        })
        .await
    }
}

#[async_trait]
impl ActivityStore for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn writable(&self) -> StoreResult<()> {
        self.space.check()
    }

    async fn put_activity(&self, activity: &Activity) -> StoreResult<()> {
        let this = self.clone();
        let value = serde_json::to_vec(activity).map_err(corrupt)?;
        let (id, athlete, at) = (activity.id, activity.athlete_id, HistoryKey::of(activity));
        blocking(move || {
            this.space.check()?;
            let mut batch = this.db.batch();
            batch.insert(&this.activities, id.as_bytes().to_vec(), value);
            batch.insert(&this.by_athlete, history_key(athlete, at).to_vec(), vec![]);
            batch.commit()?;
            this.sync()
        })
        .await
    }

    async fn activity(&self, id: Uuid) -> StoreResult<Option<Activity>> {
        let records = self.activities.clone();
        blocking(move || {
            records
                .get(id.as_bytes())?
                .map(|v| decode_activity(&v, "fjall"))
                .transpose()
        })
        .await
    }

    async fn history(
        &self,
        athlete: Uuid,
        after: Option<HistoryKey>,
        limit: usize,
    ) -> StoreResult<Vec<Activity>> {
        let this = self.clone();
        blocking(move || {
            let prefix = athlete.as_bytes().to_vec();
            let iter = match after {
                // Keys sort newest first, so "after" is a strict lower bound.
                Some(at) => {
                    let start = history_key(athlete, at).to_vec();
                    let mut end = prefix.clone();
                    end.extend_from_slice(&[0xff; 24]);
                    this.by_athlete.range((
                        std::ops::Bound::Excluded(start),
                        std::ops::Bound::Included(end),
                    ))
                }
                None => this.by_athlete.prefix(&prefix),
            };
            let mut out = Vec::with_capacity(limit);
            for kv in iter.take(limit) {
                let key = kv.key()?;
                let id_bytes: [u8; 16] = key[24..40].try_into().map_err(corrupt)?;
                let id = Uuid::from_bytes(id_bytes.map(|b| !b));
                let Some(value) = this.activities.get(id.as_bytes())? else {
                    skip_corrupt(&corrupt(format!("history names missing activity {id}")));
                    continue;
                };
                match decode_activity(&value, "fjall") {
                    Ok(activity) => out.push(activity),
                    // One bad record never takes a whole list down.
                    Err(e) => skip_corrupt(&e),
                }
            }
            Ok(out)
        })
        .await
    }

    async fn scan_activities(
        &self,
        after: Option<ScanCursor>,
        limit: usize,
    ) -> StoreResult<(Vec<Activity>, Option<ScanCursor>)> {
        let records = self.activities.clone();
        blocking(move || {
            let iter = match after {
                Some(ScanCursor(key)) => {
                    records.range((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded))
                }
                None => records.range::<Vec<u8>, _>(..),
            };
            let (mut out, mut last, mut read) = (Vec::with_capacity(limit), None, 0);
            for kv in iter.take(limit) {
                let (key, value) = kv.into_inner()?;
                last = Some(ScanCursor(key.to_vec()));
                read += 1;
                match decode_activity(&value, "fjall") {
                    Ok(activity) => out.push(activity),
                    Err(e) => skip_corrupt(&e),
                }
            }
            Ok((out, if read == limit { last } else { None }))
        })
        .await
    }

    async fn put_share(&self, share: &Share) -> StoreResult<()> {
        let value = serde_json::to_vec(share).map_err(corrupt)?;
        let (this, id, hash, activity) =
            (self.clone(), share.id, share.token_hash, share.activity_id);
        blocking(move || {
            this.space.check()?;
            let mut batch = this.db.batch();
            batch.insert(&this.shares, id.as_bytes().to_vec(), value);
            batch.insert(&this.share_tokens, hash.to_vec(), id.as_bytes().to_vec());
            batch.insert(&this.shares_by_activity, pair(activity, id).to_vec(), []);
            batch.commit()?;
            this.sync()
        })
        .await
    }

    async fn shares_of(&self, activity: Uuid) -> StoreResult<Vec<Share>> {
        let this = self.clone();
        blocking(move || {
            let mut out = Vec::new();
            for kv in this.shares_by_activity.prefix(activity.as_bytes()) {
                let key = kv.key()?;
                let id = Uuid::from_slice(&key[16..]).map_err(corrupt)?;
                if let Some(v) = this.shares.get(id.as_bytes())? {
                    out.push(serde_json::from_slice(&v).map_err(corrupt)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn share(&self, id: Uuid) -> StoreResult<Option<Share>> {
        get_json(self.shares.clone(), id).await
    }

    async fn share_by_token(&self, token_hash: [u8; 32]) -> StoreResult<Option<Share>> {
        get_by_token(self.share_tokens.clone(), self.shares.clone(), token_hash).await
    }

    async fn delete_share(&self, share: &Share) -> StoreResult<()> {
        let this = self.clone();
        let (id, hash, activity) = (share.id, share.token_hash, share.activity_id);
        blocking(move || {
            this.space.check()?;
            let mut batch = this.db.batch();
            batch.remove(&this.shares, id.as_bytes().to_vec());
            batch.remove(&this.share_tokens, hash.to_vec());
            batch.remove(&this.shares_by_activity, pair(activity, id).to_vec());
            batch.commit()?;
            this.sync()
        })
        .await
    }
}

#[async_trait]
impl PointStore for EmbeddedStore {
    async fn append_points(&self, points: Arc<Vec<(Uuid, Point)>>) -> StoreResult<()> {
        let this = self.clone();
        blocking(move || {
            this.space.check()?;
            let mut batch = this.db.batch();
            for (activity, p) in points.iter() {
                batch.insert(
                    &this.points,
                    point_key(*activity, p.ts).to_vec(),
                    p.encode_value(),
                );
            }
            batch.commit()?;
            this.sync()
        })
        .await
    }

    async fn points_exist(&self, activity: Uuid, ts: Vec<Millis>) -> StoreResult<Vec<bool>> {
        let this = self.clone();
        blocking(move || {
            ts.iter()
                .map(|t| Ok(this.points.contains_key(point_key(activity, *t))?))
                .collect()
        })
        .await
    }

    async fn route_page(
        &self,
        activity: Uuid,
        from: Option<RouteCursor>,
        limit: usize,
    ) -> StoreResult<(Vec<Point>, Option<RouteCursor>)> {
        let this = self.clone();
        blocking(move || {
            let start = match from {
                Some(RouteCursor(last)) => {
                    let ts = ts_from_key(&last).ok_or_else(|| corrupt("route cursor"))?;
                    std::ops::Bound::Excluded(point_key(activity, ts).to_vec())
                }
                None => std::ops::Bound::Included(point_key(activity, Millis::MIN).to_vec()),
            };
            let end = std::ops::Bound::Included(point_key(activity, Millis::MAX).to_vec());
            let mut out = Vec::with_capacity(limit.min(ROUTE_PREALLOC));
            for kv in this.points.range((start, end)).take(limit) {
                let (key, value) = kv.into_inner()?;
                let ts = ts_from_key(&key[16..]).ok_or_else(|| corrupt("point key"))?;
                out.push(Point::decode_value(ts, &value).ok_or_else(|| corrupt("point value"))?);
            }
            // A full page may have more after it; a short one is the end.
            let next = match out.last() {
                Some(last) if out.len() == limit => Some(RouteCursor(ts_key(last.ts).to_vec())),
                _ => None,
            };
            Ok((out, next))
        })
        .await
    }

    async fn points_after(
        &self,
        activity: Uuid,
        after: Millis,
        limit: usize,
    ) -> StoreResult<Vec<Point>> {
        let this = self.clone();
        blocking(move || {
            let start = std::ops::Bound::Excluded(point_key(activity, after).to_vec());
            let end = std::ops::Bound::Included(point_key(activity, Millis::MAX).to_vec());
            let mut out = Vec::with_capacity(limit.min(ROUTE_PREALLOC));
            for kv in this.points.range((start, end)).take(limit) {
                let (key, value) = kv.into_inner()?;
                let ts = ts_from_key(&key[16..]).ok_or_else(|| corrupt("point key"))?;
                out.push(Point::decode_value(ts, &value).ok_or_else(|| corrupt("point value"))?);
            }
            Ok(out)
        })
        .await
    }
}

const ROUTE_PREALLOC: usize = 1024;

#[async_trait]
impl DeviceStore for EmbeddedStore {
    async fn put_device(&self, device: &Device) -> StoreResult<()> {
        let value = serde_json::to_vec(device).map_err(corrupt)?;
        let (this, id, owner, key) = (self.clone(), device.id, device.owner_id, device.key_hash);
        blocking(move || {
            this.space.check()?;
            let mut batch = this.db.batch();
            batch.insert(&this.devices, id.as_bytes().to_vec(), value);
            batch.insert(&this.device_keys, key.to_vec(), id.as_bytes().to_vec());
            batch.insert(&this.devices_by_owner, pair(owner, id).to_vec(), []);
            batch.commit()?;
            this.sync()
        })
        .await
    }

    async fn device_by_key(&self, key_hash: [u8; 32]) -> StoreResult<Option<Device>> {
        get_by_token(self.device_keys.clone(), self.devices.clone(), key_hash).await
    }

    async fn devices_of(&self, owner: Uuid) -> StoreResult<Vec<Device>> {
        let this = self.clone();
        blocking(move || {
            let mut out = Vec::new();
            for kv in this.devices_by_owner.prefix(owner.as_bytes()) {
                let key = kv.key()?;
                let id = Uuid::from_slice(&key[16..]).map_err(corrupt)?;
                if let Some(v) = this.devices.get(id.as_bytes())? {
                    out.push(serde_json::from_slice(&v).map_err(corrupt)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn delete_device(&self, device: &Device) -> StoreResult<()> {
        let (this, id, owner, key) = (self.clone(), device.id, device.owner_id, device.key_hash);
        blocking(move || {
            this.space.check()?;
            let mut batch = this.db.batch();
            batch.remove(&this.device_keys, key.to_vec());
            batch.remove(&this.devices, id.as_bytes().to_vec());
            batch.remove(&this.devices_by_owner, pair(owner, id).to_vec());
            batch.commit()?;
            this.sync()
        })
        .await
    }
}

#[async_trait]
impl CourseStore for EmbeddedStore {
    async fn put_course(&self, course: &Course) -> StoreResult<()> {
        let value = serde_json::to_vec(course).map_err(corrupt)?;
        let (this, id) = (self.clone(), course.id);
        blocking(move || {
            this.space.check()?;
            this.courses.insert(id.as_bytes(), value)?;
            this.sync()
        })
        .await
    }

    async fn course(&self, id: Uuid) -> StoreResult<Option<Course>> {
        get_json(self.courses.clone(), id).await
    }
}

#[async_trait]
impl FieldStore for EmbeddedStore {
    async fn put_fields(
        &self,
        athlete: Uuid,
        activity: HistoryKey,
        visibility: Visibility,
        values: &[(String, f64)],
    ) -> StoreResult<()> {
        let rows: Vec<(Vec<u8>, Vec<u8>)> = values
            .iter()
            .map(|(name, v)| {
                let mut value = v.to_be_bytes().to_vec();
                value.push(visibility_byte(visibility));
                (field_key(athlete, name, activity), value)
            })
            .collect();
        let this = self.clone();
        blocking(move || {
            this.space.check()?;
            let mut batch = this.db.batch();
            for (key, value) in rows {
                batch.insert(&this.fields, key, value);
            }
            batch.commit()?;
            this.sync()
        })
        .await
    }

    async fn delete_fields(
        &self,
        athlete: Uuid,
        activity: HistoryKey,
        names: &[String],
    ) -> StoreResult<()> {
        let keys: Vec<Vec<u8>> = names
            .iter()
            .map(|name| field_key(athlete, name, activity))
            .collect();
        let this = self.clone();
        blocking(move || {
            this.space.check()?;
            let mut batch = this.db.batch();
            for key in keys {
                batch.remove(&this.fields, key);
            }
            batch.commit()?;
            this.sync()
        })
        .await
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
        let prefix = field_prefix(athlete, field);
        // Newest first: the first key is the latest start before `to`, the
        // last the earliest at or after `from`.
        let mut start = prefix.clone();
        start.extend_from_slice(&ts_key(to - 1).map(|b| !b));
        let mut end = prefix.clone();
        end.extend_from_slice(&ts_key(from).map(|b| !b));
        end.extend_from_slice(&[0xff; 16]);
        let this = self.clone();
        blocking(move || {
            let mut out = Vec::with_capacity(limit.min(1_000));
            for kv in this.fields.range(start..=end).take(limit) {
                let (key, value) = kv.into_inner()?;
                let at = &key[prefix.len()..];
                let ts: [u8; 8] = at[..8].try_into().map_err(corrupt)?;
                let id: [u8; 16] = at[8..24].try_into().map_err(corrupt)?;
                let started_at =
                    ts_from_key(&ts.map(|b| !b)).ok_or_else(|| corrupt("field key"))?;
                let number: [u8; 8] = value
                    .get(..8)
                    .and_then(|v| v.try_into().ok())
                    .ok_or_else(|| corrupt("field value"))?;
                let visibility = value
                    .get(8)
                    .and_then(|b| visibility_of(*b))
                    .ok_or_else(|| corrupt("field visibility"))?;
                out.push(FieldValue {
                    activity_id: Uuid::from_bytes(id.map(|b| !b)),
                    started_at,
                    value: f64::from_be_bytes(number),
                    visibility,
                });
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts_keys_sort_like_numbers() {
        let mut values = [-5i64, 0, 3, -1_000, 1_700_000_000_000, i64::MIN, i64::MAX];
        let mut keys: Vec<_> = values.iter().map(|t| ts_key(*t)).collect();
        keys.sort();
        values.sort();
        let back: Vec<_> = keys.iter().map(|k| ts_from_key(k).unwrap()).collect();
        assert_eq!(back, values);
    }

    #[test]
    fn history_keys_sort_newest_first() {
        let athlete = Uuid::now_v7();
        let older = history_key(
            athlete,
            HistoryKey {
                started_at: 10,
                activity_id: Uuid::max(),
            },
        );
        let newer = history_key(
            athlete,
            HistoryKey {
                started_at: 20,
                activity_id: Uuid::nil(),
            },
        );
        assert!(newer < older);
    }
}
