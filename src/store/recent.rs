//! Recent positions of live activities: a capped, expiring stream per
//! activity, in arrival order, which live watchers read.
//!
//! Entries are identified like Redis stream entries, `<arrival ms>-<seq>`,
//! so a watcher's cursor means the same thing on every backend and node, and
//! the arrival time needed for lagged playback is the id itself. A stream
//! carries everything a watcher sees, in one order: points, state changes
//! and statistics snapshots.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::StoreResult;
use crate::domain::time::{Millis, deserialize_ms, serialize_ms};
use crate::domain::{ActivityState, Point, Stats};

/// How much of a stream is kept: entries older than this (relative to the
/// newest) are trimmed. Watchers only need what their lag (at most 10 s) and
/// a poll's slack (20 s) cover; a watcher catching up, or a poller whose
/// cursor fell out of the window, reads older history from persistence.
/// Time, not count, so a burst (an offline upload of 10,000 points) reaches
/// watchers whole while a steady stream stays small. Measured: 60 s cost
/// ~11.7 KB of Redis per activity posting every 2-5 s (deploy/CAPACITY.md).
pub const RECENT_WINDOW_MS: Millis = 30_000;
/// How much of a stream a store shared by the nodes (Redis) keeps. Its
/// readers are the nodes' feeds, which pull every 250 ms and keep
/// `RECENT_WINDOW_MS` in their own memory (the pollers' slack is served
/// from there), and a feed that starts, which needs what the longest lag
/// (10 s) has not released yet: 10 s plus as much again of slack. Every
/// second of it costs Redis memory for every live activity (#13).
pub const SHARED_WINDOW_MS: Millis = 20_000;
/// Hard bound on entries per stream, whatever the rate.
pub const RECENT_CAP: usize = 16_384;
pub const RECENT_TTL_MS: Millis = 60 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamCursor {
    /// Server time at which the entry arrived.
    pub ms: Millis,
    pub seq: u64,
}

impl fmt::Display for StreamCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamCursor {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, seq) = s.split_once('-').ok_or(())?;
        Ok(StreamCursor {
            ms: ms.parse().map_err(|_| ())?,
            seq: seq.parse().map_err(|_| ())?,
        })
    }
}

/// What a stream entry carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecentItem {
    Point(Point),
    State {
        state: ActivityState,
        #[serde(serialize_with = "serialize_ms", deserialize_with = "deserialize_ms")]
        at: Millis,
    },
    Stats(Stats),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecentEntry {
    pub cursor: StreamCursor,
    pub item: RecentItem,
}

#[async_trait]
pub trait RecentStore: Send + Sync + 'static {
    /// Appends items (in the given order) stamped with the backend's current
    /// time, trims the stream to `RECENT_CAP` and renews its TTL.
    /// Statistics end an append (a post's points, or a state change, then
    /// the statistics after it); a backend may keep only the newest
    /// statistics of an activity (Redis does: `recent_redis`).
    async fn append(&self, activity: Uuid, items: &[RecentItem]) -> StoreResult<()>;
    /// Up to `limit` entries strictly after `after`, in arrival order. The
    /// newest statistics after `after` are among them, right after the
    /// entry appended with them, once the page reaches that entry; older
    /// statistics may be missing (playback only keeps the newest).
    async fn since(
        &self,
        activity: Uuid,
        after: Option<StreamCursor>,
        limit: usize,
    ) -> StoreResult<Vec<RecentEntry>>;
    /// The newest point entry that arrived at or before `until`.
    async fn latest_point(&self, activity: Uuid, until: Millis)
    -> StoreResult<Option<RecentEntry>>;

    /// Whether the backend answers (for `/readyz`).
    async fn health(&self) -> StoreResult<()> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "in_process"
    }
}
