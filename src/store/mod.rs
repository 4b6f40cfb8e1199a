//! Storage, one small trait per concern, one file per backend.
//!
//! - `UserStore`, `ActivityStore`, `PointStore`: persistence, the source of
//!   truth. Every write method returns only once the data is durable.
//!   Backends: `embedded` (fjall, the default).
//! - `RecentStore`: recent positions of live activities, what watchers read.
//!   Backends: `recent_memory` (in-process, the default).
//!
//! Key layouts are documented in the backend files; they follow DESIGN.md
//! (a partition is what one query reads, in clustering order).

pub mod audience;
pub mod changes;
pub mod embedded;
pub mod leaderboard;
pub mod recent;
pub mod recent_codec;
pub mod recent_memory;
pub mod recent_redis;
pub mod redis_conn;
pub mod registry;
pub mod scylla;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::course::Course;
use crate::domain::time::{Millis, deserialize_ms, serialize_ms};
use crate::domain::{Activity, Point, PrivacyZone, Visibility};

pub use recent::{RecentEntry, RecentItem, RecentStore, StreamCursor};

/// Why a storage call failed: the operation, and the backend's own error
/// kept as the source (logged with its whole chain, never sent to clients).
/// Cloneable, so that one failed group commit can answer every request in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{op}: storage backend failed")]
    Backend {
        op: &'static str,
        #[source]
        source: Cause,
    },
    #[error("{op}: stored record is corrupt")]
    Corrupt {
        op: &'static str,
        #[source]
        source: Cause,
    },
    /// The cluster is overloaded, timing out or short of replicas: retry
    /// shortly (a write that timed out may or may not have been applied;
    /// every write is idempotent).
    #[error("{op}: storage is busy")]
    Busy {
        op: &'static str,
        #[source]
        source: Cause,
    },
    /// The disk under the store is (about to be) full: nothing was
    /// written; retry when space returns.
    #[error("{op}: storage is full")]
    Full {
        op: &'static str,
        #[source]
        source: Cause,
    },
}

impl StoreError {
    pub fn backend(op: &'static str, cause: impl Into<BoxError>) -> StoreError {
        StoreError::Backend {
            op,
            source: Cause(Arc::from(cause.into())),
        }
    }

    pub fn busy(op: &'static str, cause: impl Into<BoxError>) -> StoreError {
        StoreError::Busy {
            op,
            source: Cause(Arc::from(cause.into())),
        }
    }

    pub fn full(op: &'static str, cause: impl Into<BoxError>) -> StoreError {
        StoreError::Full {
            op,
            source: Cause(Arc::from(cause.into())),
        }
    }

    pub fn corrupt(op: &'static str, cause: impl Into<BoxError>) -> StoreError {
        StoreError::Corrupt {
            op,
            source: Cause(Arc::from(cause.into())),
        }
    }

    /// The same failure, named after the operation that met it.
    pub fn during(self, name: &'static str) -> StoreError {
        match self {
            StoreError::Backend { source, .. } => StoreError::Backend { op: name, source },
            StoreError::Corrupt { source, .. } => StoreError::Corrupt { op: name, source },
            StoreError::Full { source, .. } => StoreError::Full { op: name, source },
            StoreError::Busy { source, .. } => StoreError::Busy { op: name, source },
        }
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A backend error shared between the requests it failed.
#[derive(Debug, Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: Uuid,
    pub name: String,
    #[serde(serialize_with = "serialize_ms", deserialize_with = "deserialize_ms")]
    pub created_at: Millis,
    /// Where the athlete competes on regional leaderboards (e.g. `DE-BE`).
    #[serde(default)]
    pub region: Option<String>,
}

#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Stores the user and the SHA-256 of their token (never the token).
    async fn create_user(&self, user: &User, token_hash: [u8; 32]) -> StoreResult<()>;
    async fn user(&self, id: Uuid) -> StoreResult<Option<User>>;
    async fn user_by_token(&self, token_hash: [u8; 32]) -> StoreResult<Option<User>>;
    /// Records that `from` asked `to` to be friends (idempotent).
    async fn add_friend_request(&self, from: Uuid, to: Uuid) -> StoreResult<()>;
    /// Forgets both directions of a friendship or request.
    async fn remove_friendship(&self, a: Uuid, b: Uuid) -> StoreResult<()>;
    async fn has_friend_request(&self, from: Uuid, to: Uuid) -> StoreResult<bool>;
    /// Everyone `from` has asked, friends or not yet.
    async fn friend_requests_from(&self, from: Uuid) -> StoreResult<Vec<Uuid>>;

    /// The athlete's privacy zones (none when never set).
    async fn privacy_zones(&self, user: Uuid) -> StoreResult<Vec<PrivacyZone>>;
    /// Replaces the athlete's privacy zones (already validated).
    async fn set_privacy_zones(&self, user: Uuid, zones: &[PrivacyZone]) -> StoreResult<()>;

    async fn are_friends(&self, a: Uuid, b: Uuid) -> StoreResult<bool> {
        Ok(self.has_friend_request(a, b).await? && self.has_friend_request(b, a).await?)
    }

    /// Whom `user` asked and who asked back (`friends_by_requests`; the
    /// Scylla backend keeps a friends table instead).
    async fn friends_of(&self, user: Uuid) -> StoreResult<Vec<Uuid>> {
        friends_by_requests(self, user).await
    }
}

/// Whom `user` asked and who asked back: one read of the requests sent,
/// then the answers checked `FRIEND_LOOKUPS_IN_FLIGHT` at a time.
pub async fn friends_by_requests<S: UserStore + ?Sized>(
    store: &S,
    user: Uuid,
) -> StoreResult<Vec<Uuid>> {
    use futures_util::{StreamExt, TryStreamExt};
    let asked = store.friend_requests_from(user).await?;
    let answered: Vec<bool> = futures_util::stream::iter(asked.iter().copied())
        .map(|other| store.has_friend_request(other, user))
        .buffered(FRIEND_LOOKUPS_IN_FLIGHT)
        .try_collect()
        .await?;
    Ok(asked
        .into_iter()
        .zip(answered)
        .filter_map(|(other, yes)| yes.then_some(other))
        .collect())
}

/// Friendship checks in flight for one `friends_of`.
pub const FRIEND_LOOKUPS_IN_FLIGHT: usize = 32;

/// Decodes a stored activity document. A document that does not decode
/// because a number was stored as `null` (what a non-finite statistic
/// became before inputs were range-checked) is repaired: such numbers read
/// as 0, and the repair is logged, so the record can still be read, listed,
/// finished or discarded. Anything else is `Corrupt`.
pub fn decode_activity(doc: &[u8], op: &'static str) -> StoreResult<Activity> {
    let err = match serde_json::from_slice(doc) {
        Ok(activity) => return Ok(activity),
        Err(e) => e,
    };
    let repaired = serde_json::from_slice::<serde_json::Value>(doc)
        .ok()
        .and_then(|mut value| {
            null_numbers_to_zero(&mut value);
            serde_json::from_value::<Activity>(value).ok()
        });
    match repaired {
        Some(activity) => {
            tracing::warn!(activity = %activity.id, error = %err, "repaired a stored activity with null numbers");
            metrics::counter!("trailcast_store_repaired_records_total").increment(1);
            Ok(activity)
        }
        None => Err(StoreError::corrupt(op, err)),
    }
}

/// Logs and counts a record a list leaves out because it cannot be read.
pub fn skip_corrupt(e: &StoreError) {
    tracing::error!(error = %e, cause = ?std::error::Error::source(e).map(|c| c.to_string()), "skipping an unreadable stored record");
    metrics::counter!("trailcast_store_skipped_records_total").increment(1);
}

/// The numeric fields of an activity's track summary that were ever
/// written as `null`, replaced by 0.
fn null_numbers_to_zero(value: &mut serde_json::Value) {
    const NUMBERS: [&str; 8] = [
        "distance_m",
        "elevation_gain_m",
        "leaderboard_m",
        "time_s",
        "pace_s_per_km",
        "actual_s",
        "actual_m",
        "points",
    ];
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if v.is_null() && NUMBERS.contains(&key.as_str()) {
                    *v = serde_json::Value::from(0u8);
                } else {
                    null_numbers_to_zero(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(null_numbers_to_zero),
        _ => {}
    }
}

/// Position of an activity in an athlete's history, newest first: the
/// clustering key of `activities_by_athlete`, and what a page cursor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HistoryKey {
    pub started_at: Millis,
    pub activity_id: Uuid,
}

impl HistoryKey {
    pub fn of(a: &Activity) -> HistoryKey {
        HistoryKey {
            started_at: a.started_at,
            activity_id: a.id,
        }
    }
}

/// A share link (Garmin LiveTrack style): lets anyone holding its token
/// watch one activity until it expires or is revoked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Share {
    pub id: Uuid,
    pub activity_id: Uuid,
    pub owner_id: Uuid,
    #[serde(serialize_with = "serialize_ms", deserialize_with = "deserialize_ms")]
    pub expires_at: Millis,
    /// SHA-256 of the token; the token itself is shown once.
    pub token_hash: [u8; 32],
}

/// Where a scan of every activity goes on (opaque to callers).
#[derive(Debug, Clone)]
pub struct ScanCursor(pub Vec<u8>);

#[async_trait]
pub trait ActivityStore: Send + Sync + 'static {
    /// Which backend this is, for `/readyz` (`embedded`, `scylla`).
    fn backend(&self) -> &'static str;
    /// Whether writes can be taken now (`Full` when the disk is full).
    fn writable(&self) -> StoreResult<()> {
        Ok(())
    }
    /// Creates or replaces the activity record (and its history entry).
    async fn put_activity(&self, activity: &Activity) -> StoreResult<()>;
    async fn activity(&self, id: Uuid) -> StoreResult<Option<Activity>>;
    /// Up to `limit` of the athlete's activities, newest start first,
    /// strictly after `after` in that order.
    async fn history(
        &self,
        athlete: Uuid,
        after: Option<HistoryKey>,
        limit: usize,
    ) -> StoreResult<Vec<Activity>>;
    /// One page (at most `limit`) of every stored activity, in the
    /// backend's order, after the page `after` ended; the position the next
    /// page starts from, `None` at the end. For rebuilding what is derived
    /// from activities (leaderboards); unreadable records are skipped.
    async fn scan_activities(
        &self,
        after: Option<ScanCursor>,
        limit: usize,
    ) -> StoreResult<(Vec<Activity>, Option<ScanCursor>)>;
    async fn put_share(&self, share: &Share) -> StoreResult<()>;
    async fn share(&self, id: Uuid) -> StoreResult<Option<Share>>;
    async fn share_by_token(&self, token_hash: [u8; 32]) -> StoreResult<Option<Share>>;
    async fn delete_share(&self, share: &Share) -> StoreResult<()>;
    /// The activity's share links (expired ones included), oldest first.
    async fn shares_of(&self, activity: Uuid) -> StoreResult<Vec<Share>>;
}

#[async_trait]
pub trait PointStore: Send + Sync + 'static {
    /// Writes a group of points (any activities) durably: one group commit.
    async fn append_points(&self, points: Arc<Vec<(Uuid, Point)>>) -> StoreResult<()>;
    /// Writes several requests' points in one group commit and answers
    /// each request by its own outcome, so that one failed partition does
    /// not fail the others. By default one write for all, its outcome for
    /// each (what a single fsync gives).
    async fn append_groups(&self, groups: Vec<Vec<(Uuid, Point)>>) -> Vec<StoreResult<()>> {
        let n = groups.len();
        let all: Vec<(Uuid, Point)> = groups.into_iter().flatten().collect();
        let result = self.append_points(Arc::new(all)).await;
        vec![result; n]
    }
    /// For each timestamp, whether the activity already has a point there.
    async fn points_exist(&self, activity: Uuid, ts: Vec<Millis>) -> StoreResult<Vec<bool>>;
    /// The next page (at most `limit` points, in time order) of the track,
    /// from the start or from where `from` left off, and where the page
    /// after it starts (`None` at the end of the track).
    async fn route_page(
        &self,
        activity: Uuid,
        from: Option<RouteCursor>,
        limit: usize,
    ) -> StoreResult<(Vec<Point>, Option<RouteCursor>)>;
    /// At most `limit` points of the track later than `after`, in time
    /// order: how the write path re-folds the tail of a track after a late
    /// point without reading it from the start.
    async fn points_after(
        &self,
        activity: Uuid,
        after: Millis,
        limit: usize,
    ) -> StoreResult<Vec<Point>>;
}

/// Where a route read goes on: opaque to callers. The embedded store keeps
/// the last timestamp read; Scylla its paging state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCursor(pub Vec<u8>);

/// Page size when a whole track is read: no single unbounded query.
pub const ROUTE_PAGE: usize = 5_000;

/// Reads the track later than `after`, time-ordered, one page at a time.
pub async fn read_track_after(
    points: &dyn PointStore,
    activity: Uuid,
    mut after: Millis,
) -> StoreResult<Vec<Point>> {
    let mut track: Vec<Point> = Vec::new();
    loop {
        let page = points.points_after(activity, after, ROUTE_PAGE).await?;
        let full = page.len() == ROUTE_PAGE;
        track.extend(page);
        match track.last() {
            Some(last) if full => after = last.ts,
            _ => return Ok(track),
        }
    }
}

/// Reads an activity's whole track, time-ordered, one page at a time.
pub async fn read_track(points: &dyn PointStore, activity: Uuid) -> StoreResult<Vec<Point>> {
    let mut track = Vec::new();
    let mut from = None;
    loop {
        let (page, next) = points.route_page(activity, from, ROUTE_PAGE).await?;
        track.extend(page);
        match next {
            Some(cursor) => from = Some(cursor),
            None => return Ok(track),
        }
    }
}

/// One value of a field time series: which activity, when it started, and
/// who may see it (the activity's visibility, kept with the value so that a
/// series is read without reading every activity).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldValue {
    pub activity_id: Uuid,
    pub started_at: Millis,
    pub value: f64,
    pub visibility: Visibility,
}

/// Activity fields read as time series per athlete and field (`fields`).
#[async_trait]
pub trait FieldStore: Send + Sync + 'static {
    /// Writes (or overwrites) the activity's values of these fields.
    async fn put_fields(
        &self,
        athlete: Uuid,
        activity: HistoryKey,
        visibility: Visibility,
        values: &[(String, f64)],
    ) -> StoreResult<()>;
    /// Removes the activity's values of these fields.
    async fn delete_fields(
        &self,
        athlete: Uuid,
        activity: HistoryKey,
        names: &[String],
    ) -> StoreResult<()>;
    /// Up to `limit` values of one field with `from <= started_at < to`,
    /// newest start first.
    async fn field_series(
        &self,
        athlete: Uuid,
        field: &str,
        from: Millis,
        to: Millis,
        limit: usize,
    ) -> StoreResult<Vec<FieldValue>>;
}

/// A phone's tracker app, allowed to post one athlete's fixes with its key
/// (stored only as its SHA-256, like tokens).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    /// The type of the activities it starts.
    pub activity_type: crate::domain::ActivityType,
    #[serde(serialize_with = "serialize_ms", deserialize_with = "deserialize_ms")]
    pub created_at: Millis,
    pub key_hash: [u8; 32],
    /// Its automatic activity, while one is open.
    #[serde(default)]
    pub current_activity: Option<Uuid>,
}

#[async_trait]
pub trait DeviceStore: Send + Sync + 'static {
    /// Creates or updates the device (and its key and owner indexes).
    async fn put_device(&self, device: &Device) -> StoreResult<()>;
    async fn device_by_key(&self, key_hash: [u8; 32]) -> StoreResult<Option<Device>>;
    async fn devices_of(&self, owner: Uuid) -> StoreResult<Vec<Device>>;
    /// Removes the device and its key: the key stops working at once.
    async fn delete_device(&self, device: &Device) -> StoreResult<()>;
}

/// Athletes' own courses (the catalogue's live in memory, `catalogue`).
#[async_trait]
pub trait CourseStore: Send + Sync + 'static {
    async fn put_course(&self, course: &Course) -> StoreResult<()>;
    async fn course(&self, id: Uuid) -> StoreResult<Option<Course>>;
}

/// The persistence backends the server runs on.
#[derive(Clone)]
pub struct Persistence {
    pub users: Arc<dyn UserStore>,
    pub activities: Arc<dyn ActivityStore>,
    pub points: Arc<dyn PointStore>,
    pub fields: Arc<dyn FieldStore>,
    pub courses: Arc<dyn CourseStore>,
    pub devices: Arc<dyn DeviceStore>,
}

impl Persistence {
    pub fn backend(&self) -> &'static str {
        self.activities.backend()
    }
}
