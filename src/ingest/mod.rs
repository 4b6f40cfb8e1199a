//! Ingest: the write path for activities and their points.
//!
//! `Tracker` is the one writer of activities on this node. Every write runs
//! under the activity's entry lock in the hot cache (`hot`), from the owner
//! check through validation, de-duplication, the durable write and the
//! statistics update, so requests for one activity apply in order and the
//! fast de-duplication rule "newer than the newest point is new" stays
//! true. After a write, what watchers, leaderboards and the live registry
//! should learn goes through the `outbox`, which retries whatever failed.
//!
//! Points are made durable by the write-behind batcher (`batcher`): group
//! commit, a bounded queue, and a reply only once the points are stored.
//!
//! The load balancer routes an activity to one node, so this node is the
//! only writer of its points and state; the hot cache is rebuilt from
//! persistence after a restart.

pub mod batcher;
pub mod devices;
mod hot;
mod outbox;

use std::collections::HashSet;
use std::sync::Arc;

use uuid::Uuid;

pub use hot::IDLE_EVICT_MS;

use crate::clock::Clock;
use crate::domain::activity::Transition;
use crate::domain::fields::{self, FieldsError};
use crate::domain::time::Millis;
use crate::domain::{
    Activity, ActivityState, Fix, Point, RejectCode, Stats, TrackAccumulator, TrackSummary,
    TransitionError,
};
use crate::store::changes::{Change, ChangeBus};
use crate::store::leaderboard::Leaderboard;
use crate::store::registry::{LiveRegistry, REMARK_EVERY_MS};
use crate::store::{HistoryKey, Persistence, RecentItem, RecentStore, StoreError, read_track};
use batcher::{QueueFull, WriteBehind};
use hot::{Hot, HotActivities};
use outbox::Outbox;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No such activity, or not the caller's.
    #[error("activity not found")]
    NotFound,
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    QueueFull(#[from] QueueFull),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Fields(#[from] FieldsError),
    /// Points for an activity the athlete discarded.
    #[error("the activity was discarded")]
    Discarded,
}

/// An activity with its track summary as of now.
#[derive(Debug, Clone)]
pub struct ActivitySnapshot {
    pub activity: Activity,
    pub track: TrackSummary,
}

impl ActivitySnapshot {
    pub fn stats(&self, now: Millis) -> Stats {
        Stats::of(&self.activity, &self.track, now)
    }
}

#[derive(Debug)]
pub struct IngestOutcome {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: Vec<(usize, RejectCode)>,
    /// The statistics after this request (computed once, from the hot
    /// entry: no copy of the activity record per request).
    pub stats: Stats,
    /// The newly stored points, in time order.
    pub stored: Vec<Point>,
}

pub struct Tracker {
    hot: HotActivities,
    store: Persistence,
    batcher: WriteBehind,
    outbox: Outbox,
    /// Where the other nodes hear of this one's changes to a record.
    changes: Arc<ChangeBus>,
    clock: Clock,
}

impl Tracker {
    pub fn new(
        store: Persistence,
        recent: Arc<dyn RecentStore>,
        batcher: WriteBehind,
        leaderboard: Arc<dyn Leaderboard>,
        registry: Arc<dyn LiveRegistry>,
        changes: Arc<ChangeBus>,
        clock: Clock,
    ) -> Self {
        Tracker {
            hot: HotActivities::new(store.clone(), changes.clone(), clock),
            outbox: Outbox::new(store.clone(), recent, leaderboard, registry, clock),
            store,
            batcher,
            changes,
            clock,
        }
    }

    pub async fn create(&self, activity: Activity) -> Result<ActivitySnapshot, IngestError> {
        self.store.activities.put_activity(&activity).await?;
        let now = self.clock.now_ms();
        let mut hot = Hot::fresh(activity, now);
        if self.outbox.register(&hot.activity, now).await {
            hot.marked = now;
        }
        let snapshot = hot.snapshot();
        self.hot.insert(hot);
        let started = RecentItem::State {
            state: ActivityState::Started,
            at: snapshot.activity.started_at,
        };
        let stats = RecentItem::Stats(snapshot.stats(now));
        self.outbox
            .publish(snapshot.activity.id, vec![started, stats])
            .await;
        Ok(snapshot)
    }

    /// The activity as of now. A finished activity not in the hot cache is
    /// served from its stored summary without reading its points.
    pub async fn snapshot(&self, id: Uuid) -> Result<ActivitySnapshot, IngestError> {
        if let Some(entry) = self.hot.get(id) {
            let mut hot = entry.lock().await;
            let now = self.clock.now_ms();
            if self.hot.is_stale(&hot, now, self.hot.recheck_ms()) {
                self.hot.resync(&mut hot, now).await?;
            }
            return Ok(hot.snapshot());
        }
        let activity = self
            .store
            .activities
            .activity(id)
            .await?
            .ok_or(IngestError::NotFound)?;
        if activity.is_live() {
            return Ok(self.hot.load(id).await?.lock().await.snapshot());
        }
        let track = activity.track.clone();
        Ok(ActivitySnapshot { activity, track })
    }

    /// The activity's record from the hot cache, without I/O: only if it
    /// is there, not locked by a write in progress, and known to match the
    /// store: written or read by this node within `max_age` ms and not
    /// changed by another node since. Readers that may fall back to the
    /// store (the watchers' rules) use it to skip a read.
    pub fn cached(&self, id: Uuid, max_age: Millis) -> Option<Activity> {
        let entry = self.hot.get(id)?;
        let hot = entry.try_lock().ok()?;
        let stale = self.hot.is_stale(&hot, self.clock.now_ms(), max_age);
        (!stale).then(|| hot.activity.clone())
    }

    /// Another node changed this activity (heard on the change bus).
    pub fn doubt(&self, id: Uuid) {
        self.hot.doubt(id);
    }

    /// This node may have missed other nodes' changes until now.
    pub fn doubt_all(&self) {
        self.hot.doubt_all(self.clock.now_ms());
    }

    /// The activity if `owner` is its athlete; `NotFound` otherwise, as for
    /// an id that does not exist.
    pub async fn owned(&self, owner: Uuid, id: Uuid) -> Result<ActivitySnapshot, IngestError> {
        let snapshot = self.snapshot(id).await?;
        match snapshot.activity.athlete_id == owner {
            true => Ok(snapshot),
            false => Err(IngestError::NotFound),
        }
    }

    /// Like `snapshot` for an activity already read from storage (history
    /// pages): only live activities cost a look at the hot cache.
    pub async fn refresh(&self, activity: Activity) -> ActivitySnapshot {
        if let Some(entry) = self.hot.get(activity.id) {
            return entry.lock().await.snapshot();
        }
        let track = activity.track.clone();
        ActivitySnapshot { activity, track }
    }

    /// The hot entry of an activity `owner` may write, locked, and checked
    /// against the store if it may be stale.
    async fn lock_owned(
        &self,
        owner: Uuid,
        id: Uuid,
    ) -> Result<tokio::sync::OwnedMutexGuard<Hot>, IngestError> {
        let entry = self.hot.load(id).await?;
        let mut hot = entry.lock_owned().await;
        if hot.activity.athlete_id != owner {
            return Err(IngestError::NotFound);
        }
        let now = self.clock.now_ms();
        if self.hot.is_stale(&hot, now, self.hot.recheck_ms()) {
            self.hot.resync(&mut hot, now).await?;
        }
        Ok(hot)
    }

    /// Applies a state change by the athlete `owner`. On COMPLETE the
    /// summary is recomputed from the whole stored track and saved with the
    /// activity.
    pub async fn transition(
        &self,
        owner: Uuid,
        id: Uuid,
        to: ActivityState,
        at: Option<Millis>,
    ) -> Result<ActivitySnapshot, IngestError> {
        let mut hot = self.lock_owned(owner, id).await?;
        let now = self.clock.now_ms();
        // State changes are rare: always start from the stored record.
        self.hot.resync(&mut hot, now).await?;
        let mut next = hot.activity.clone();
        if next.transition(to, at.unwrap_or(now), now)? == Transition::AlreadyThere {
            // A retried COMPLETE settles a leaderboard difference still owed.
            let owed = next.leaderboard_m;
            self.outbox.count_on_leaderboards(&mut next).await;
            if next.leaderboard_m != owed {
                self.store.activities.put_activity(&next).await?;
                self.changes.announce(Change::Activity(id));
                hot.activity = next;
            }
            return Ok(hot.snapshot());
        }
        let acc = if to == ActivityState::Complete {
            let track = read_track(self.store.points.as_ref(), id).await?;
            let acc = TrackAccumulator::from_track(&next, &track);
            next.track = acc.summary();
            next.fields.extend(fields::computed(&next, &track, now));
            acc
        } else {
            hot.acc.clone()
        };
        next.track = acc.summary();
        // The field series are an index of the record: written first, so a
        // failure fails the change and the client's retry writes both.
        match to {
            ActivityState::Complete => self.index_fields(&next).await?,
            ActivityState::Discarded => {
                let names: Vec<String> = next.fields.keys().cloned().collect();
                self.store
                    .fields
                    .delete_fields(next.athlete_id, HistoryKey::of(&next), &names)
                    .await?;
            }
            _ => {}
        }
        self.outbox.count_on_leaderboards(&mut next).await;
        self.store.activities.put_activity(&next).await?;
        self.changes.announce(Change::Activity(id));
        hot.activity = next;
        hot.set_acc(acc);
        hot.touched = now;
        hot.synced = now;
        if self.outbox.register(&hot.activity, now).await {
            hot.marked = now;
        }
        let snapshot = hot.snapshot();
        let change = RecentItem::State {
            state: to,
            at: at.unwrap_or(now),
        };
        self.outbox
            .publish(id, vec![change, RecentItem::Stats(snapshot.stats(now))])
            .await;
        Ok(snapshot)
    }

    /// Changes the athlete's settings of an activity (visibility, hidden
    /// ends, blocked viewers): `change` edits a copy of the stored record,
    /// which is written before the hot entry takes it.
    pub async fn amend(
        &self,
        owner: Uuid,
        id: Uuid,
        change: impl FnOnce(&mut Activity) -> Result<(), IngestError>,
    ) -> Result<ActivitySnapshot, IngestError> {
        let mut hot = self.lock_owned(owner, id).await?;
        let now = self.clock.now_ms();
        self.hot.resync(&mut hot, now).await?;
        let mut next = hot.activity.clone();
        change(&mut next)?;
        let old = &hot.activity.fields;
        let gone: Vec<String> = old
            .keys()
            .filter(|name| !next.fields.contains_key(*name))
            .cloned()
            .collect();
        if !gone.is_empty() {
            self.store
                .fields
                .delete_fields(next.athlete_id, HistoryKey::of(&next), &gone)
                .await?;
        }
        if next.visibility != hot.activity.visibility || next.fields != *old {
            self.index_fields(&next).await?;
        }
        if next.visibility != hot.activity.visibility {
            // Made private: its distance leaves the boards; made visible
            // again: it comes back (a failure stays owed, as at COMPLETE).
            self.outbox.count_on_leaderboards(&mut next).await;
        }
        self.store.activities.put_activity(&next).await?;
        self.changes.announce(Change::Activity(id));
        hot.activity = next;
        hot.touched = now;
        hot.synced = now;
        Ok(hot.snapshot())
    }

    /// Stores a finished activity read from a file: its points first, in
    /// groups, then the record, so that a record exists only with its whole
    /// track and a retried import completes one that was cut short.
    pub async fn import(
        &self,
        mut activity: Activity,
        points: Vec<Point>,
    ) -> Result<ActivitySnapshot, IngestError> {
        for chunk in points.chunks(crate::store::ROUTE_PAGE) {
            let group: Vec<(Uuid, Point)> = chunk.iter().map(|p| (activity.id, *p)).collect();
            self.store.points.append_points(Arc::new(group)).await?;
        }
        let now = self.clock.now_ms();
        activity.track = TrackAccumulator::from_track(&activity, &points).summary();
        activity
            .fields
            .extend(fields::computed(&activity, &points, now));
        self.index_fields(&activity).await?;
        self.outbox.count_on_leaderboards(&mut activity).await;
        self.store.activities.put_activity(&activity).await?;
        Ok(ActivitySnapshot {
            track: activity.track.clone(),
            activity,
        })
    }

    /// Writes the activity's fields to the per-athlete series (with its
    /// visibility); a discarded activity has none there.
    async fn index_fields(&self, activity: &Activity) -> Result<(), StoreError> {
        if activity.fields.is_empty() || activity.state == ActivityState::Discarded {
            return Ok(());
        }
        let values: Vec<(String, f64)> = activity
            .fields
            .iter()
            .map(|(name, value)| (name.clone(), *value))
            .collect();
        self.store
            .fields
            .put_fields(
                activity.athlete_id,
                HistoryKey::of(activity),
                activity.visibility,
                &values,
            )
            .await
    }

    /// Validates, de-duplicates and durably stores the fixes the athlete
    /// `owner` sent (each already decoded from its wire format, or the
    /// reason it could not be), then updates the running statistics.
    pub async fn ingest(
        &self,
        owner: Uuid,
        id: Uuid,
        fixes: Vec<Result<Fix, RejectCode>>,
    ) -> Result<IngestOutcome, IngestError> {
        let mut hot = self.lock_owned(owner, id).await?;
        if hot.activity.state == ActivityState::Discarded {
            return Err(IngestError::Discarded);
        }
        let now = self.clock.now_ms();
        let window = hot.activity.point_window(now);

        let mut rejected = Vec::new();
        let mut fresh: Vec<Point> = Vec::with_capacity(fixes.len());
        let mut seen = HashSet::with_capacity(fixes.len());
        let mut duplicates = 0;
        for (index, fix) in fixes.into_iter().enumerate() {
            match fix.and_then(|f| f.validate(window)) {
                Err(code) => rejected.push((index, code)),
                Ok(p) if !seen.insert(p.ts) => duplicates += 1,
                Ok(p) => fresh.push(p),
            }
        }
        // Points newer than the newest stored one are new by construction;
        // only older ones need a look at storage.
        let newest = hot.acc.last_ts();
        let older: Vec<Millis> = fresh
            .iter()
            .map(|p| p.ts)
            .filter(|ts| newest.is_some_and(|n| *ts <= n))
            .collect();
        if !older.is_empty() {
            let exists = self.store.points.points_exist(id, older.clone()).await?;
            let stored: HashSet<Millis> = older
                .iter()
                .zip(exists)
                .filter(|(_, e)| *e)
                .map(|(ts, _)| *ts)
                .collect();
            duplicates += stored.len();
            fresh.retain(|p| !stored.contains(&p.ts));
        }
        fresh.sort_by_key(|p| p.ts);

        let mut computed = None;
        if !fresh.is_empty() {
            let job = fresh.iter().map(|p| (id, *p)).collect();
            let durable = self.batcher.submit(job)?;
            durable
                .await
                .map_err(|_| StoreError::backend("write-behind queue", "the writer stopped"))??;
            let in_order = newest.is_none_or(|n| fresh[0].ts > n);
            if in_order {
                hot.push_in_order(&fresh);
            } else {
                hot.fold_late(self.store.points.as_ref(), fresh[0].ts)
                    .await?;
            }
            if !hot.activity.is_live() {
                // Late points after the finish (offline sync): keep the
                // stored summary in step with the track.
                hot.activity.track = hot.acc.summary();
                self.outbox.count_on_leaderboards(&mut hot.activity).await;
                self.store.activities.put_activity(&hot.activity).await?;
                self.changes.announce(Change::Activity(id));
            }
            let mut items: Vec<RecentItem> = Vec::with_capacity(fresh.len() + 1);
            items.extend(fresh.iter().map(|p| RecentItem::Point(*p)));
            let stats = Stats::of(&hot.activity, &hot.acc.summary(), now);
            items.push(RecentItem::Stats(stats.clone()));
            self.outbox.publish(id, items).await;
            computed = Some(stats);
        }
        // Not `synced`: the record was not read, and a change another node
        // made must still be noticed while the athlete keeps posting.
        hot.touched = now;
        if hot.activity.is_live()
            && now - hot.marked >= REMARK_EVERY_MS
            && self.outbox.register(&hot.activity, now).await
        {
            hot.marked = now;
        }
        metrics::counter!("trailcast_points_accepted_total").increment(fresh.len() as u64);
        metrics::counter!("trailcast_points_duplicate_total").increment(duplicates as u64);
        metrics::counter!("trailcast_points_rejected_total").increment(rejected.len() as u64);
        Ok(IngestOutcome {
            accepted: fresh.len(),
            duplicates,
            rejected,
            stats: computed.unwrap_or_else(|| Stats::of(&hot.activity, &hot.acc.summary(), now)),
            stored: fresh,
        })
    }

    /// Retries the side effects owed after an outage (see `outbox`);
    /// returns how many activities were settled.
    pub async fn settle(&self) -> usize {
        if self.outbox.len() == 0 {
            return 0;
        }
        self.outbox.settle(&self.hot).await
    }

    pub fn hot_len(&self) -> usize {
        self.hot.len()
    }

    /// Activities owing a side effect (recent stream, leaderboard, registry).
    pub fn owed_len(&self) -> usize {
        self.outbox.len()
    }

    /// Activities whose recent stream waits for back-fill.
    pub fn unpublished_len(&self) -> usize {
        self.outbox.unpublished_len()
    }
}

impl crate::startup::Sweep for Tracker {
    /// Evicts hot entries idle for `IDLE_EVICT_MS`.
    fn sweep(&self, now: Millis) {
        self.hot.sweep(now);
    }
}
