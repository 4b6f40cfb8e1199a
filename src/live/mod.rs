//! Live playback: each point is released to watchers `lag` seconds after it
//! arrived, so a watcher always holds the next point beyond its playback head
//! and can draw continuous motion.
//!
//! Shape: one `Feed` per activity that somebody on this node watches. Its
//! task (the only reader of that activity's recent stream on this node)
//! wakes every `TICK`, reads what arrived since its last cursor and appends
//! it to a bounded in-memory window, then bumps a `watch` counter. Pollers
//! and WebSocket watchers read that window, never the store, so N watchers
//! cost one store read per tick. Each watcher applies its own lag: an entry
//! is released to it once `entry.cursor.ms + lag <= now` (the cursor *is*
//! the arrival time), which is the same cut for everyone and monotone in
//! time, so cursors never skip or repeat an entry.
//!
//! An activity nobody watches has no feed and costs nothing here. A feed
//! whose last watcher left `FEED_IDLE` ago stops and is removed. Bounds: a
//! feed keeps the last `RECENT_WINDOW_MS` of entries, at most `RECENT_CAP`
//! (older history is in persistence and served by the catch-up path).
//!
//! - `feed`: the per-activity window and the hub that starts and retires
//!   feeds;
//! - `playback`: one watcher's view of a feed (its lag and cursor) and the
//!   rules of what it is shown when: catch-up, release, state, retry time.
//!   The HTTP layer only turns its typed results into JSON.

mod feed;
mod playback;

pub use feed::{Feed, LiveEntry, LiveHub, WatchGuard};
pub use playback::{CatchUp, LivePoint, LiveStatus, Playback, Release, Released, StateAt, Status};

use std::time::Duration;

use crate::domain::time::Millis;

pub const TICK: Duration = Duration::from_millis(250);
pub const FEED_IDLE_MS: Millis = 30_000;
pub const DEFAULT_LAG_MS: Millis = 8_000;
pub const MIN_LAG_MS: Millis = 5_000;
pub const MAX_LAG_MS: Millis = 10_000;

/// Playback delay chosen by a watcher, 5 to 10 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag(Millis);

impl Lag {
    pub fn from_seconds(s: Option<f64>) -> Option<Lag> {
        let Some(s) = s else {
            return Some(Lag(DEFAULT_LAG_MS));
        };
        let ms = (s * 1000.0).round();
        (ms.is_finite() && (MIN_LAG_MS as f64..=MAX_LAG_MS as f64).contains(&ms))
            .then_some(Lag(ms as Millis))
    }

    pub fn ms(self) -> Millis {
        self.0
    }

    pub fn seconds(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}
