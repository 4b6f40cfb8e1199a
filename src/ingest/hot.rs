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
//! (`load`), and checked against it (`resync`) in case another node changed
//! the record: when that node says so (`doubt`, from the change bus,
//! `store::changes`), and otherwise once the entry is older than its TTL
//! (`RECHECK_MS`, or `TRUSTED_RECHECK_MS` while every change is heard).
//! `sweep` evicts entries idle for `IDLE_EVICT_MS`, which bounds the map by
//! the activities active in that window.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use dashmap::{DashMap, DashSet};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::{ActivitySnapshot, IngestError};
use crate::clock::Clock;
use crate::domain::Point;
use crate::domain::time::Millis;
use crate::domain::{Activity, TrackAccumulator};
use crate::store::changes::{ChangeBus, TRUSTED_RECHECK_MS};
use crate::store::{Persistence, PointStore, read_track, read_track_after};

/// Entries untouched this long are dropped from the map.
pub const IDLE_EVICT_MS: Millis = 10 * 60 * 1000;

/// How stale an entry may be before a read checks it against the store,
/// when other nodes' changes are not heard. Another node may have changed
/// the activity (a state change taken there while the load balancer moved
/// it); watchers are 5-10 s behind anyway.
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
    /// Copies of `acc` as it was after every `CHECKPOINT_EVERY`th point of
    /// the recent track, oldest first: a late point is folded in from the
    /// newest one before it instead of from the start of the track. Empty
    /// until the activity's first late point, so in-order activities pay
    /// no memory for them.
    pub checkpoints: VecDeque<TrackAccumulator>,
}

/// Points between two checkpoints of the running statistics.
pub const CHECKPOINT_EVERY: u64 = 64;
/// Checkpoints kept per activity: a late point within about the newest
/// `CHECKPOINT_EVERY * CHECKPOINTS_KEPT` points costs a re-fold of at most
/// that many points read from storage; an older one re-folds the track.
pub const CHECKPOINTS_KEPT: usize = 4;

impl Hot {
    pub fn fresh(activity: Activity, now: Millis) -> Hot {
        Hot {
            acc: TrackAccumulator::default(),
            activity,
            touched: now,
            synced: now,
            marked: 0,
            checkpoints: VecDeque::new(),
        }
    }

    /// Replaces the running statistics (a full re-fold, a state change):
    /// checkpoints of the old ones no longer apply.
    pub fn set_acc(&mut self, acc: TrackAccumulator) {
        self.acc = acc;
        self.checkpoints.clear();
    }

    /// Adds points later than every point folded so far.
    pub fn push_in_order(&mut self, points: &[Point]) {
        let Hot {
            activity,
            acc,
            checkpoints,
            ..
        } = self;
        for p in points {
            acc.push(activity, p);
            if !checkpoints.is_empty() {
                keep_checkpoint(checkpoints, acc);
            }
        }
    }

    /// Folds in points of which the first is not later than the newest
    /// point folded so far. They are already stored: the track after the
    /// newest checkpoint before them is read back and re-folded, or the
    /// whole track when no checkpoint is that old.
    pub async fn fold_late(
        &mut self,
        points: &dyn PointStore,
        first_ts: Millis,
    ) -> Result<(), IngestError> {
        // A checkpoint at or after the late point's time lacks it.
        while self
            .checkpoints
            .back()
            .is_some_and(|c| c.last_ts().is_some_and(|t| t >= first_ts))
        {
            self.checkpoints.pop_back();
        }
        let id = self.activity.id;
        let newest = self.checkpoints.back();
        let (mut acc, tail) = match newest.and_then(|c| Some((c, c.last_ts()?))) {
            Some((c, after)) => {
                metrics::counter!("trailcast_late_refold_total", "from" => "checkpoint")
                    .increment(1);
                (c.clone(), read_track_after(points, id, after).await?)
            }
            None => {
                metrics::counter!("trailcast_late_refold_total", "from" => "start").increment(1);
                let track = read_track(points, id).await?;
                (TrackAccumulator::default(), track)
            }
        };
        for p in &tail {
            acc.push(&self.activity, p);
            keep_checkpoint(&mut self.checkpoints, &acc);
        }
        if self.checkpoints.is_empty() {
            // Too short a track for a checkpoint: keep the empty fold, so
            // that the next late point re-reads no more than now and the
            // in-order path starts taking checkpoints.
            self.checkpoints.push_back(TrackAccumulator::default());
        }
        self.acc = acc;
        Ok(())
    }

    pub fn snapshot(&self) -> ActivitySnapshot {
        ActivitySnapshot {
            activity: self.activity.clone(),
            track: self.acc.summary(),
        }
    }
}

pub(crate) type HotEntry = Arc<Mutex<Hot>>;

pub(crate) struct HotActivities {
    map: DashMap<Uuid, HotEntry>,
    /// Entries another node said it changed since they were last read.
    doubted: DashSet<Uuid>,
    /// Entries synced at or before this time are doubted (this node may
    /// have missed other nodes' changes until then).
    doubted_until: AtomicI64,
    /// When the last change to any activity was heard.
    heard_at: AtomicI64,
    store: Persistence,
    changes: Arc<ChangeBus>,
    clock: Clock,
}

impl HotActivities {
    pub fn new(store: Persistence, changes: Arc<ChangeBus>, clock: Clock) -> HotActivities {
        HotActivities {
            map: DashMap::new(),
            doubted: DashSet::new(),
            doubted_until: AtomicI64::new(Millis::MIN),
            heard_at: AtomicI64::new(Millis::MIN),
            store,
            changes,
            clock,
        }
    }

    /// How old the tracking node's copy of a record may get.
    pub fn recheck_ms(&self) -> Millis {
        self.changes.ttl(RECHECK_MS, TRUSTED_RECHECK_MS)
    }

    /// Whether `hot` must be checked against the store before use: another
    /// node said it changed it, or its copy is older than `ttl`.
    pub fn is_stale(&self, hot: &Hot, now: Millis, ttl: Millis) -> bool {
        now - hot.synced >= ttl
            || hot.synced <= self.doubted_until.load(Ordering::Acquire)
            || self.doubted.contains(&hot.activity.id)
    }

    /// Another node changed this activity: its entry, if any, is read again
    /// before its next use.
    pub fn doubt(&self, id: Uuid) {
        self.heard_at
            .fetch_max(self.clock.now_ms(), Ordering::AcqRel);
        if self.map.contains_key(&id) {
            self.doubted.insert(id);
        }
    }

    /// Other nodes may have changed anything until `now`.
    pub fn doubt_all(&self, now: Millis) {
        self.doubted_until.fetch_max(now, Ordering::AcqRel);
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
        let read_at = self.clock.now_ms();
        let activity = self
            .store
            .activities
            .activity(id)
            .await?
            .ok_or(IngestError::NotFound)?;
        let track = read_track(self.store.points.as_ref(), id).await?;
        let acc = TrackAccumulator::from_track(&activity, &track);
        let mut hot = Hot::fresh(activity, read_at);
        hot.touched = self.clock.now_ms();
        hot.set_acc(acc);
        // Two loads may race; the first one in wins and both use it.
        let entry = self
            .map
            .entry(id)
            .or_insert(Arc::new(Mutex::new(hot)))
            .clone();
        // A change heard during the read found no entry to doubt: doubt
        // this one if any change was heard since the read began.
        if self.heard_at.load(Ordering::Acquire) >= read_at {
            self.doubted.insert(id);
        }
        Ok(entry)
    }

    /// Brings an entry in line with the store if another node changed the
    /// activity record (state, events, summary) since it was synced. Points
    /// another node ingested for a live activity show up at its next state
    /// change here; the load balancer keeps an activity on one node, so this
    /// is the fallback, not the rule.
    pub async fn resync(&self, hot: &mut Hot, now: Millis) -> Result<(), IngestError> {
        let id = hot.activity.id;
        // Before the read: a change announced while it runs doubts again.
        self.doubted.remove(&id);
        let stored = self
            .store
            .activities
            .activity(id)
            .await?
            .ok_or(IngestError::NotFound)?;
        let a = &hot.activity;
        if (stored.state, &stored.events, &stored.track) != (a.state, &a.events, &a.track) {
            let track = read_track(self.store.points.as_ref(), id).await?;
            hot.set_acc(TrackAccumulator::from_track(&stored, &track));
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
        self.doubted.retain(|id| self.map.contains_key(id));
        metrics::gauge!("trailcast_hot_activities").set(self.map.len() as f64);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}

fn keep_checkpoint(checkpoints: &mut VecDeque<TrackAccumulator>, acc: &TrackAccumulator) {
    if acc.points().is_multiple_of(CHECKPOINT_EVERY) {
        if checkpoints.len() == CHECKPOINTS_KEPT {
            checkpoints.pop_front();
        }
        checkpoints.push_back(acc.clone());
    }
}
