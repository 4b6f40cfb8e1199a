//! Side effects owed after a write to persistence, and the one loop that
//! retries them.
//!
//! Persistence is the truth; three other places mirror it and may be down
//! (on Redis) when a write succeeds:
//! - the activity's recent stream, which watchers read (`publish`);
//! - the leaderboards, for a completed activity (`count_on_leaderboards`);
//! - the live registry, which lists live activities (`register`).
//!
//! Each is attempted right after the write. A failure is logged, never
//! returned (the caller's write already succeeded), and recorded here as a
//! debt of that activity; `settle` (run every second by the server's
//! sweeper) retries every debt under the activity's lock, so it cannot
//! interleave with ingest. The map holds one small entry per activity in
//! debt, so it is bounded by the activities written during an outage.

use std::collections::HashSet;
use std::sync::Arc;

use dashmap::DashMap;
use uuid::Uuid;

use super::hot::{Hot, HotActivities};
use crate::clock::Clock;
use crate::domain::time::Millis;
use crate::domain::{Activity, ActivityState, Visibility};
use crate::store::leaderboard::{Board, Leaderboard};
use crate::store::recent::{RECENT_CAP, RECENT_WINDOW_MS};
use crate::store::registry::LiveRegistry;
use crate::store::{Persistence, RecentItem, RecentStore, read_track};

/// What one activity is owed.
#[derive(Debug, Default, Clone, Copy)]
struct Debt {
    /// The recent stream missed items: re-publish stored points from this
    /// time on (`Millis::MAX` if it missed only state or statistics), then
    /// the current state and statistics.
    publish_since: Option<Millis>,
    /// A completed activity's leaderboard difference was not added.
    leaderboard: bool,
    /// The live registry does not show the activity's current state.
    registry: bool,
}

pub(crate) struct Outbox {
    store: Persistence,
    recent: Arc<dyn RecentStore>,
    leaderboard: Arc<dyn Leaderboard>,
    registry: Arc<dyn LiveRegistry>,
    clock: Clock,
    debts: DashMap<Uuid, Debt>,
}

impl Outbox {
    pub fn new(
        store: Persistence,
        recent: Arc<dyn RecentStore>,
        leaderboard: Arc<dyn Leaderboard>,
        registry: Arc<dyn LiveRegistry>,
        clock: Clock,
    ) -> Outbox {
        Outbox {
            store,
            recent,
            leaderboard,
            registry,
            clock,
            debts: DashMap::new(),
        }
    }

    fn owe(&self, id: Uuid, add: impl FnOnce(&mut Debt)) {
        add(&mut self.debts.entry(id).or_default());
    }

    /// Clears one kind of debt; forgets the activity once it owes nothing.
    fn settle_part(&self, id: Uuid, clear: impl FnOnce(&mut Debt)) {
        if let Some(mut debt) = self.debts.get_mut(&id) {
            clear(&mut debt);
        }
        self.debts.remove_if(&id, |_, d| {
            d.publish_since.is_none() && !d.leaderboard && !d.registry
        });
    }

    /// Appends to the activity's recent stream for watchers.
    pub async fn publish(&self, id: Uuid, items: Vec<RecentItem>) {
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
        if let Some(mut debt) = self.debts.get_mut(&id)
            && let Some(since) = debt.publish_since.as_mut()
        {
            *since = (*since).min(earliest);
            return;
        }
        if let Err(e) = self.recent.append(id, &items).await {
            metrics::counter!("trailcast_recent_append_failures_total").increment(1);
            tracing::warn!(error = %e, activity = %id, "recent positions not updated; will back-fill");
            self.owe(id, |d| {
                d.publish_since = Some(d.publish_since.map_or(earliest, |s| s.min(earliest)));
            });
        }
    }

    /// Sets a completed activity's leaderboard contribution to its distance
    /// (0 if private); the board adds only the difference, idempotently
    /// (see `store::leaderboard`). If that fails it stays owed (also across
    /// a restart, since the stored record keeps what was last set).
    pub async fn count_on_leaderboards(&self, activity: &mut Activity) {
        if activity.state != ActivityState::Complete {
            return;
        }
        // A private activity is the athlete's alone: it counts nothing (and
        // what it counted while it was not private is taken back).
        let target = match activity.visibility {
            Visibility::Private => 0.0,
            _ => activity.track.distance_m,
        };
        if (target - activity.leaderboard_m).abs() < 0.05 {
            return;
        }
        let region = match self.store.users.user(activity.athlete_id).await {
            Ok(user) => user.and_then(|u| u.region),
            Err(e) => {
                tracing::warn!(error = %e, "leaderboard update postponed");
                self.owe(activity.id, |d| d.leaderboard = true);
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
            .set(&boards, activity.athlete_id, activity.id, target)
            .await
        {
            Ok(()) => {
                activity.leaderboard_m = target;
                self.settle_part(activity.id, |d| d.leaderboard = false);
            }
            Err(e) => {
                metrics::counter!("trailcast_leaderboard_failures_total").increment(1);
                tracing::warn!(error = %e, activity = %activity.id, "leaderboard update postponed");
                self.owe(activity.id, |d| d.leaderboard = true);
            }
        }
    }

    /// Records in the live registry whether the activity is live; returns
    /// whether that worked (else it is owed).
    pub async fn register(&self, activity: &Activity, now: Millis) -> bool {
        let (athlete, id) = (activity.athlete_id, activity.id);
        let result = match activity.is_live() {
            true => self.registry.mark_live(athlete, id, now).await,
            false => self.registry.mark_done(athlete, id).await,
        };
        match result {
            Ok(()) => {
                self.settle_part(id, |d| d.registry = false);
                true
            }
            Err(e) => {
                tracing::warn!(activity = %id, error = %e, "live registry not updated");
                self.owe(id, |d| d.registry = true);
                false
            }
        }
    }

    /// Activities owing anything.
    pub fn len(&self) -> usize {
        self.debts.len()
    }

    /// Activities whose recent stream waits for back-fill.
    pub fn unpublished_len(&self) -> usize {
        self.debts
            .iter()
            .filter(|d| d.publish_since.is_some())
            .count()
    }

    /// Retries every debt; returns how many activities were settled.
    pub async fn settle(&self, hot: &HotActivities) -> usize {
        let owing: Vec<Uuid> = self.debts.iter().map(|e| *e.key()).collect();
        let mut settled = 0;
        for id in owing {
            let Ok(entry) = hot.load(id).await else {
                continue;
            };
            let mut hot = entry.lock().await;
            let Some(debt) = self.debts.get(&id).map(|d| *d) else {
                continue;
            };
            if let Some(since) = debt.publish_since {
                self.backfill(&hot, since).await;
            }
            if debt.leaderboard {
                self.settle_leaderboard(&mut hot).await;
            }
            if debt.registry {
                let now = self.clock.now_ms();
                if self.register(&hot.activity, now).await {
                    hot.marked = now;
                }
            }
            if !self.debts.contains_key(&id) {
                settled += 1;
            }
        }
        metrics::gauge!("trailcast_recent_unpublished_activities")
            .set(self.unpublished_len() as f64);
        settled
    }

    /// Re-publishes what the recent store missed while it was down: the
    /// stored points from the earliest missed one on, then the current state
    /// and statistics.
    ///
    /// Exactly once for watchers: a write that timed out may still have
    /// been applied (a stalled Redis runs it afterwards), so points the
    /// stream already holds are left out. And from `RECENT_WINDOW_MS`
    /// before the first miss: a Redis that restarted empty lost what it had
    /// acknowledged just before it died.
    async fn backfill(&self, hot: &Hot, since: Millis) {
        let id = hot.activity.id;
        let mut items = Vec::new();
        if since != Millis::MAX {
            let Ok(held) = self.recent.since(id, None, RECENT_CAP).await else {
                return;
            };
            let held: HashSet<Millis> = held
                .iter()
                .filter_map(|e| match &e.item {
                    RecentItem::Point(p) => Some(p.ts),
                    _ => None,
                })
                .collect();
            let Ok(track) = read_track(self.store.points.as_ref(), id).await else {
                return;
            };
            let from = since.saturating_sub(RECENT_WINDOW_MS);
            items.extend(
                track
                    .into_iter()
                    .filter(|p| p.ts >= from && !held.contains(&p.ts))
                    .map(RecentItem::Point),
            );
        }
        let last = hot
            .activity
            .events
            .last()
            .map_or(hot.activity.started_at, |e| e.at);
        items.push(RecentItem::State {
            state: hot.activity.state,
            at: last,
        });
        items.push(RecentItem::Stats(hot.snapshot().stats(self.clock.now_ms())));
        if self.recent.append(id, &items).await.is_ok() {
            self.settle_part(id, |d| d.publish_since = None);
        }
    }

    async fn settle_leaderboard(&self, hot: &mut Hot) {
        let mut next = hot.activity.clone();
        self.count_on_leaderboards(&mut next).await;
        if next.leaderboard_m == hot.activity.leaderboard_m {
            return;
        }
        // Counted: keep that in memory whatever happens to the write, so
        // this process never counts it twice; the record is saved now or
        // with the activity's next write.
        if let Err(e) = self.store.activities.put_activity(&next).await {
            tracing::warn!(error = %e, activity = %next.id, "leaderboard progress not saved yet");
        }
        hot.activity = next;
    }
}
