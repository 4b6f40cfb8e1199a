//! The hot-state cache: the activities this node has touched recently, each
//! with its record and running statistics (`TrackAccumulator`), in a
//! `DashMap` keyed by activity id.
//!
//! Each entry sits behind its own async mutex. The write path (`Tracker`)
//! holds it for the whole of a points request or a state change, so
//! requests for one activity apply in order; requests for different
//! activities never wait on each other.
//!
//! The map is a cache over persistence, rebuilt from it after a restart
//! (`load`), and checked against it now and then (`resync`) in case another
//! node changed the record. `sweep` evicts entries idle for
//! `IDLE_EVICT_MS`, which bounds the map by the activities active in that
//! window.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::Mutex;
use uuid::Uuid;

use super::{ActivitySnapshot, IngestError};
use crate::clock::Clock;
use crate::domain::time::Millis;
use crate::domain::{Activity, TrackAccumulator};
use crate::store::{Persistence, read_track};

/// Entries untouched this long are dropped from the map.
pub const IDLE_EVICT_MS: Millis = 10 * 60 * 1000;

/// How stale an entry may be before a read checks it against the store.
/// Another node may have changed the activity (a state change taken there
/// while the load balancer moved it); watchers are 5-10 s behind anyway.
pub const RECHECK_MS: Millis = 5_000;

pub(crate) struct Hot {
    pub activity: Activity,
    pub acc: TrackAccumulator,
    pub touched: Millis,
    /// When the entry was last known to match the store: loaded, written
    /// through this node, or checked.
    pub synced: Millis,
    /// When this node last marked the activity in the live registry.
    pub marked: Millis,
}

impl Hot {
    pub fn fresh(activity: Activity, now: Millis) -> Hot {
        Hot {
            acc: TrackAccumulator::new(activity.activity_type),
            activity,
            touched: now,
            synced: now,
            marked: 0,
        }
    }

    pub fn snapshot(&self) -> ActivitySnapshot {
        ActivitySnapshot {
            activity: self.activity.clone(),
            track: self.acc.summary(),
        }
    }

    pub fn is_stale(&self, now: Millis) -> bool {
        now - self.synced >= RECHECK_MS
    }
}

pub(crate) type HotEntry = Arc<Mutex<Hot>>;

pub(crate) struct HotActivities {
    map: DashMap<Uuid, HotEntry>,
    store: Persistence,
    clock: Clock,
}

impl HotActivities {
    pub fn new(store: Persistence, clock: Clock) -> HotActivities {
        HotActivities {
            map: DashMap::new(),
            store,
            clock,
        }
    }

    /// The entry if it is in the cache (no I/O).
    pub fn get(&self, id: Uuid) -> Option<HotEntry> {
        self.map.get(&id).map(|h| h.clone())
    }

    /// Puts a just-created activity in the cache.
    pub fn insert(&self, hot: Hot) {
        self.map.insert(hot.activity.id, Arc::new(Mutex::new(hot)));
    }

    /// The entry for an activity, rebuilt from persistence if needed.
    pub async fn load(&self, id: Uuid) -> Result<HotEntry, IngestError> {
        if let Some(hot) = self.get(id) {
            return Ok(hot);
        }
        let activity = self
            .store
            .activities
            .activity(id)
            .await?
            .ok_or(IngestError::NotFound)?;
        let track = read_track(self.store.points.as_ref(), id).await?;
        let acc = TrackAccumulator::from_track(&activity, &track);
        let mut hot = Hot::fresh(activity, self.clock.now_ms());
        hot.acc = acc;
        // Two loads may race; the first one in wins and both use it.
        Ok(self
            .map
            .entry(id)
            .or_insert(Arc::new(Mutex::new(hot)))
            .clone())
    }

    /// Brings an entry in line with the store if another node changed the
    /// activity record (state, events, summary) since it was synced. Points
    /// another node ingested for a live activity show up at its next state
    /// change here; the load balancer keeps an activity on one node, so this
    /// is the fallback, not the rule.
    pub async fn resync(&self, hot: &mut Hot, now: Millis) -> Result<(), IngestError> {
        let id = hot.activity.id;
        let stored = self
            .store
            .activities
            .activity(id)
            .await?
            .ok_or(IngestError::NotFound)?;
        let a = &hot.activity;
        if (stored.state, &stored.events, &stored.track) != (a.state, &a.events, &a.track) {
            let track = read_track(self.store.points.as_ref(), id).await?;
            hot.acc = TrackAccumulator::from_track(&stored, &track);
            hot.activity = stored;
        }
        hot.synced = now;
        Ok(())
    }

    /// Evicts entries idle for `IDLE_EVICT_MS` that nobody is using.
    pub fn sweep(&self, now: Millis) {
        self.map.retain(|_, hot| match hot.try_lock() {
            Ok(h) => now - h.touched < IDLE_EVICT_MS,
            Err(_) => true,
        });
        metrics::gauge!("trailcast_hot_activities").set(self.map.len() as f64);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}
