//! Recent positions of live activities: a capped, expiring stream per
//! activity, in arrival order, which live watchers read.
//!
//! Entries are identified like Redis stream entries, `<arrival ms>-<seq>`,
//! so a watcher's cursor means the same thing on every backend and node.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use uuid::Uuid;

use super::StoreResult;
use crate::domain::Point;
use crate::domain::time::Millis;

/// Entries kept per activity: about 1 h 40 min at one fix every 3 s. Older
/// points are still in persistence; watchers catching up read them there.
pub const RECENT_CAP: usize = 2_048;
/// An activity whose stream got nothing new for this long is forgotten.
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

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecentEntry {
    pub cursor: StreamCursor,
    pub point: Point,
}

#[async_trait]
pub trait RecentStore: Send + Sync + 'static {
    /// Appends points that arrived at `arrived` (in the given order), trims
    /// the stream to `RECENT_CAP` and renews its TTL.
    async fn append(&self, activity: Uuid, arrived: Millis, points: &[Point]) -> StoreResult<()>;
    /// Up to `limit` entries strictly after `after`, in arrival order.
    async fn since(
        &self,
        activity: Uuid,
        after: Option<StreamCursor>,
        limit: usize,
    ) -> StoreResult<Vec<RecentEntry>>;
    /// The newest entry, if the activity has a stream.
    async fn latest(&self, activity: Uuid) -> StoreResult<Option<RecentEntry>>;
}
