//! Ingest: the write path for activities and their points.
//!
//! `Tracker` owns the hot state of every activity this node has touched
//! recently: the activity record and its `TrackAccumulator` (running
//! statistics), in a `DashMap` keyed by activity id. Each entry sits behind
//! its own async mutex, held for the whole of a points request or a state
//! change (validation, de-duplication, the durable write, the statistics
//! update), so requests for one activity apply in order and the fast
//! de-duplication rule "newer than the newest point is new" stays true.
//! Requests for different activities never wait on each other.
//!
//! The load balancer routes an activity to one node, so this node is the only
//! writer of its points and state; the map is a cache over persistence and
//! is rebuilt from it after a restart (`load`). `sweep` evicts entries idle
//! for `IDLE_EVICT_MS`, which bounds the map by the number of activities
//! active in that window.

pub mod batcher;

use std::collections::HashSet;
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::domain::Stats;
use crate::domain::activity::Transition;
use crate::domain::time::{Millis, now_ms};
use crate::domain::track::TrackSummary;
use crate::domain::{
    Activity, ActivityState, Point, PointInput, RejectCode, TrackAccumulator, TransitionError,
};
use crate::store::leaderboard::{Board, Leaderboard};
use crate::store::registry::{LiveRegistry, REMARK_EVERY_MS};
use crate::store::{Persistence, RecentItem, RecentStore, StoreError, read_track};
use batcher::{QueueFull, WriteBehind};

/// Entries untouched this long are dropped from the hot map.
pub const IDLE_EVICT_MS: Millis = 10 * 60 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("activity not found")]
    NotFound,
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    QueueFull(#[from] QueueFull),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An activity with its track summary as of now.
#[derive(Debug, Clone)]
pub struct ActivitySnapshot {
    pub activity: Activity,
    pub track: TrackSummary,
}

#[derive(Debug)]
pub struct IngestOutcome {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: Vec<(usize, RejectCode)>,
    pub snapshot: ActivitySnapshot,
    /// The newly stored points, in time order.
    pub stored: Vec<Point>,
}

/// How stale a hot entry may be before a read checks it against the store.
/// Another node may have changed the activity (a state change taken there
/// while the load balancer moved it); watchers are 5-10 s behind anyway.
const RECHECK_MS: Millis = 5_000;

struct Hot {
    activity: Activity,
    acc: TrackAccumulator,
    touched: Millis,
    /// When the entry was last known to match the store: loaded, written
    /// through this node, or checked.
    synced: Millis,
    /// When this node last marked the activity in the live registry.
    marked: Millis,
}

impl Hot {
    fn snapshot(&self) -> ActivitySnapshot {
        ActivitySnapshot {
            activity: self.activity.clone(),
            track: self.acc.summary(),
        }
    }
}

impl ActivitySnapshot {
    pub fn stats(&self, now: Millis) -> Stats {
        Stats::of(&self.activity, &self.track, now)
    }
}

pub struct Tracker {
    hot: DashMap<Uuid, Arc<Mutex<Hot>>>,
    store: Persistence,
    recent: Arc<dyn RecentStore>,
    batcher: WriteBehind,
    leaderboard: Arc<dyn Leaderboard>,
    registry: Arc<dyn LiveRegistry>,
    /// Activities whose recent stream missed items (the recent store was
    /// down), with the earliest point time it missed (`Millis::MAX` if it
    /// missed only state or statistics). `backfill` re-publishes from there.
    unpublished: DashMap<Uuid, Millis>,
    /// Completed activities whose leaderboard difference could not be
    /// added (Redis down); `settle_leaderboards` retries them.
    owed: DashMap<Uuid, ()>,
}

impl Tracker {
    pub fn new(
        store: Persistence,
        recent: Arc<dyn RecentStore>,
        batcher: WriteBehind,
        leaderboard: Arc<dyn Leaderboard>,
        registry: Arc<dyn LiveRegistry>,
    ) -> Self {
        Tracker {
            hot: DashMap::new(),
            store,
            recent,
            batcher,
            leaderboard,
            registry,
            unpublished: DashMap::new(),
            owed: DashMap::new(),
        }
    }

    pub async fn create(&self, activity: Activity) -> Result<ActivitySnapshot, IngestError> {
        self.store.activities.put_activity(&activity).await?;
        let now = now_ms();
        let marked = match self.register(&activity, now).await {
            true => now,
            false => 0,
        };
        let hot = Hot {
            acc: TrackAccumulator::new(activity.activity_type),
            activity,
            touched: now,
            synced: now,
            marked,
        };
        let snapshot = hot.snapshot();
        self.hot
            .insert(snapshot.activity.id, Arc::new(Mutex::new(hot)));
        let started = RecentItem::State {
            state: ActivityState::Started,
            at: snapshot.activity.started_at,
        };
        let stats = RecentItem::Stats(snapshot.stats(now_ms()));
        self.publish(snapshot.activity.id, vec![started, stats])
            .await;
        Ok(snapshot)
    }

    /// Brings a completed activity's leaderboard contribution up to its
    /// distance by adding only the difference (see `store::leaderboard`).
    /// If the leaderboard is unavailable the difference stays owed: the
    /// sweeper retries it every second (`settle_leaderboards`), and so does
    /// the next completion retry or late point (also after a restart, since
    /// the stored record keeps what was added).
    async fn count_on_leaderboards(&self, activity: &mut Activity) {
        if activity.state != ActivityState::Complete {
            return;
        }
        let delta = activity.track.distance_m - activity.leaderboard_m;
        if delta.abs() < 0.05 {
            return;
        }
        let region = match self.store.users.user(activity.athlete_id).await {
            Ok(user) => user.and_then(|u| u.region),
            Err(e) => {
                tracing::warn!(error = %e, "leaderboard update postponed");
                self.owed.insert(activity.id, ());
                return;
            }
        };
        let boards = Board::all_for(
            activity.activity_type,
            activity.started_at,
            region.as_deref(),
        );
        match self
            .leaderboard
            .add(&boards, activity.athlete_id, delta)
            .await
        {
            Ok(()) => {
                activity.leaderboard_m = activity.track.distance_m;
                self.owed.remove(&activity.id);
            }
            Err(e) => {
                metrics::counter!("trailcast_leaderboard_failures_total").increment(1);
                tracing::warn!(error = %e, activity = %activity.id, "leaderboard update postponed");
                self.owed.insert(activity.id, ());
            }
        }
    }

    pub fn owed_len(&self) -> usize {
        self.owed.len()
    }

    /// Adds the leaderboard differences still owed; returns how many
    /// activities were settled.
    pub async fn settle_leaderboards(&self) -> usize {
        let owed: Vec<Uuid> = self.owed.iter().map(|e| *e.key()).collect();
        let mut settled = 0;
        for id in owed {
            let Ok(hot) = self.load(id).await else {
                continue;
            };
            let mut hot = hot.lock().await;
            let mut next = hot.activity.clone();
            self.count_on_leaderboards(&mut next).await;
            if next.leaderboard_m == hot.activity.leaderboard_m {
                continue;
            }
            // Counted: keep that in memory whatever happens to the write,
            // so this process never counts it twice; the record is saved
            // now or with the activity's next write.
            if let Err(e) = self.store.activities.put_activity(&next).await {
                tracing::warn!(error = %e, activity = %id, "leaderboard progress not saved yet");
            }
            hot.activity = next;
            settled += 1;
        }
        settled
    }

    /// Appends to the activity's recent stream for watchers. A failure is
    /// logged, not returned: persistence is the source of truth and the
    /// caller's write already succeeded.
    async fn publish(&self, id: Uuid, items: Vec<RecentItem>) {
        let earliest = items
            .iter()
            .filter_map(|i| match i {
                RecentItem::Point(p) => Some(p.ts),
                _ => None,
            })
            .min()
            .unwrap_or(Millis::MAX);
        // Keep stream order: while an activity waits for back-fill, its new
        // items join the back-fill instead of overtaking it.
        if let Some(mut since) = self.unpublished.get_mut(&id) {
            *since = (*since).min(earliest);
            return;
        }
        if let Err(e) = self.recent.append(id, &items).await {
            metrics::counter!("trailcast_recent_append_failures_total").increment(1);
            tracing::warn!(error = %e, activity = %id, "recent positions not updated; will back-fill");
            self.unpublished
                .entry(id)
                .and_modify(|since| *since = (*since).min(earliest))
                .or_insert(earliest);
        }
    }

    /// Re-publishes what the recent store missed while it was down: the
    /// stored points from the earliest missed one on, then the current state
    /// and statistics. Runs under the activity's lock, so ingest cannot
    /// interleave. Returns how many activities were caught up.
    pub async fn backfill(&self) -> usize {
        let pending: Vec<Uuid> = self.unpublished.iter().map(|e| *e.key()).collect();
        let mut done = 0;
        for id in pending {
            let Ok(hot) = self.load(id).await else {
                continue;
            };
            let hot = hot.lock().await;
            let Some(since) = self.unpublished.get(&id).map(|s| *s) else {
                continue;
            };
            let mut items = Vec::new();
            if since != Millis::MAX {
                let Ok(track) = read_track(self.store.points.as_ref(), id).await else {
                    continue;
                };
                items.extend(
                    track
                        .into_iter()
                        .filter(|p| p.ts >= since)
                        .map(RecentItem::Point),
                );
            }
            let now = now_ms();
            let last = hot
                .activity
                .events
                .last()
                .map_or(hot.activity.started_at, |e| e.at);
            items.push(RecentItem::State {
                state: hot.activity.state,
                at: last,
            });
            items.push(RecentItem::Stats(hot.snapshot().stats(now)));
            if self.recent.append(id, &items).await.is_ok() {
                self.unpublished.remove(&id);
                done += 1;
            }
        }
        metrics::gauge!("trailcast_recent_unpublished_activities")
            .set(self.unpublished.len() as f64);
        done
    }

    pub fn unpublished_len(&self) -> usize {
        self.unpublished.len()
    }

    /// The hot entry for an activity, rebuilt from persistence if needed.
    async fn load(&self, id: Uuid) -> Result<Arc<Mutex<Hot>>, IngestError> {
        if let Some(hot) = self.hot.get(&id) {
            return Ok(hot.clone());
        }
        let activity = self
            .store
            .activities
            .activity(id)
            .await?
            .ok_or(IngestError::NotFound)?;
        let track = read_track(self.store.points.as_ref(), id).await?;
        let acc = TrackAccumulator::from_track(&activity, &track);
        let now = now_ms();
        let hot = Arc::new(Mutex::new(Hot {
            activity,
            acc,
            touched: now,
            synced: now,
            marked: 0,
        }));
        // Two loads may race; the first one in wins and both use it.
        Ok(self.hot.entry(id).or_insert(hot).clone())
    }

    /// Records in the live registry whether the activity is live. A failure
    /// (Redis down) is logged and reported as `false`; the next state change
    /// or minute of points tries again.
    async fn register(&self, activity: &Activity, now: Millis) -> bool {
        let (athlete, id) = (activity.athlete_id, activity.id);
        let result = match activity.is_live() {
            true => self.registry.mark_live(athlete, id, now).await,
            false => self.registry.mark_done(athlete, id).await,
        };
        if let Err(e) = &result {
            tracing::warn!(activity = %id, error = %e, "live registry not updated");
        }
        result.is_ok()
    }

    /// Brings a hot entry in line with the store if another node changed
    /// the activity record (state, events, summary) since it was synced.
    /// Points another node ingested for a live activity show up at its next
    /// state change here; the load balancer keeps an activity on one node,
    /// so this is the fallback, not the rule.
    async fn resync(&self, id: Uuid, hot: &mut Hot, now: Millis) -> Result<(), IngestError> {
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

    /// The activity as of now. A finished activity not in the hot map is
    /// served from its stored summary without reading its points.
    pub async fn snapshot(&self, id: Uuid) -> Result<ActivitySnapshot, IngestError> {
        if let Some(hot) = self.hot.get(&id).map(|h| h.clone()) {
            let mut hot = hot.lock().await;
            let now = now_ms();
            if now - hot.synced >= RECHECK_MS {
                self.resync(id, &mut hot, now).await?;
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
            return Ok(self.load(id).await?.lock().await.snapshot());
        }
        let track = activity.track.clone();
        Ok(ActivitySnapshot { activity, track })
    }

    /// Like `snapshot` for an activity already read from storage (history
    /// pages): only live activities cost a look at the hot map.
    pub async fn refresh(&self, activity: Activity) -> ActivitySnapshot {
        if let Some(hot) = self.hot.get(&activity.id).map(|h| h.clone()) {
            return hot.lock().await.snapshot();
        }
        let track = activity.track.clone();
        ActivitySnapshot { activity, track }
    }

    /// Applies a state change. On COMPLETE the summary is recomputed from the
    /// whole stored track and saved with the activity.
    pub async fn transition(
        &self,
        id: Uuid,
        to: ActivityState,
        at: Option<Millis>,
    ) -> Result<ActivitySnapshot, IngestError> {
        let hot = self.load(id).await?;
        let mut hot = hot.lock().await;
        let now = now_ms();
        // State changes are rare: always start from the stored record.
        self.resync(id, &mut hot, now).await?;
        let mut next = hot.activity.clone();
        if next.transition(to, at.unwrap_or(now), now)? == Transition::AlreadyThere {
            // A retried COMPLETE settles a leaderboard difference still owed.
            let owed = next.leaderboard_m;
            self.count_on_leaderboards(&mut next).await;
            if next.leaderboard_m != owed {
                self.store.activities.put_activity(&next).await?;
                hot.activity = next;
            }
            return Ok(hot.snapshot());
        }
        let acc = if to == ActivityState::Complete {
            let track = read_track(self.store.points.as_ref(), id).await?;
            TrackAccumulator::from_track(&next, &track)
        } else {
            hot.acc.clone()
        };
        next.track = acc.summary();
        self.count_on_leaderboards(&mut next).await;
        self.store.activities.put_activity(&next).await?;
        hot.activity = next;
        hot.acc = acc;
        hot.touched = now;
        hot.synced = now;
        if self.register(&hot.activity, now).await {
            hot.marked = now;
        }
        let snapshot = hot.snapshot();
        let change = RecentItem::State {
            state: to,
            at: at.unwrap_or(now),
        };
        self.publish(id, vec![change, RecentItem::Stats(snapshot.stats(now))])
            .await;
        Ok(snapshot)
    }

    /// Validates, de-duplicates and durably stores points, then updates the
    /// running statistics. `owner` must already have been checked.
    pub async fn ingest(
        &self,
        id: Uuid,
        inputs: Vec<Result<PointInput, RejectCode>>,
    ) -> Result<IngestOutcome, IngestError> {
        let hot = self.load(id).await?;
        let mut hot = hot.lock().await;
        let now = now_ms();
        let window = hot.activity.point_window(now);

        let mut rejected = Vec::new();
        let mut fresh: Vec<Point> = Vec::with_capacity(inputs.len());
        let mut seen = HashSet::with_capacity(inputs.len());
        let mut duplicates = 0;
        for (index, input) in inputs.into_iter().enumerate() {
            match input.and_then(|i| i.validate(window)) {
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

        if !fresh.is_empty() {
            let job = fresh.iter().map(|p| (id, *p)).collect();
            let durable = self.batcher.submit(job)?;
            durable
                .await
                .map_err(|_| StoreError::Backend("write-behind queue stopped".into()))??;
            let in_order = newest.is_none_or(|n| fresh[0].ts > n);
            if in_order {
                let Hot { activity, acc, .. } = &mut *hot;
                for p in &fresh {
                    acc.push(activity, p);
                }
            } else {
                let track = read_track(self.store.points.as_ref(), id).await?;
                hot.acc = TrackAccumulator::from_track(&hot.activity, &track);
            }
            if !hot.activity.is_live() {
                // Late points after the finish (offline sync): keep the
                // stored summary in step with the track.
                hot.activity.track = hot.acc.summary();
                self.count_on_leaderboards(&mut hot.activity).await;
                self.store.activities.put_activity(&hot.activity).await?;
            }
            let snapshot = hot.snapshot();
            let mut items: Vec<RecentItem> = fresh.iter().map(|p| RecentItem::Point(*p)).collect();
            items.push(RecentItem::Stats(snapshot.stats(now)));
            self.publish(id, items).await;
        }
        hot.touched = now;
        hot.synced = now;
        if hot.activity.is_live()
            && now - hot.marked >= REMARK_EVERY_MS
            && self.register(&hot.activity, now).await
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
            snapshot: hot.snapshot(),
            stored: fresh,
        })
    }

    /// Evicts entries idle for `IDLE_EVICT_MS` that nobody is using.
    pub fn sweep(&self, now: Millis) {
        self.hot.retain(|_, hot| match hot.try_lock() {
            Ok(h) => now - h.touched < IDLE_EVICT_MS,
            Err(_) => true,
        });
        metrics::gauge!("trailcast_hot_activities").set(self.hot.len() as f64);
    }

    pub fn hot_len(&self) -> usize {
        self.hot.len()
    }
}
