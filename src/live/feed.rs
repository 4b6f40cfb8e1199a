//! One feed per watched activity: a bounded in-memory window over its
//! recent stream, filled by one task per feed (see the module above), and
//! the hub that hands feeds out and retires them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use super::{FEED_IDLE_MS, Lag, TICK};
use crate::clock::Clock;
use crate::domain::time::Millis;
use crate::domain::{ActivityState, Stats};
use crate::store::recent::{RECENT_CAP, RECENT_WINDOW_MS, SHARED_WINDOW_MS};
use crate::store::{RecentItem, RecentStore, StoreResult, StreamCursor};

/// Entries read from the recent store per call.
const PAGE: usize = 1_000;

/// A stream entry as watchers see it. `late` marks a point older than one
/// that came before it in the stream (an offline upload, a resend): the
/// client should redraw the track rather than extend it.
#[derive(Debug, Clone)]
pub struct LiveEntry {
    pub cursor: StreamCursor,
    pub item: RecentItem,
    pub late: bool,
}

#[derive(Default)]
struct Window {
    entries: VecDeque<LiveEntry>,
    max_point_ts: Option<Millis>,
    last: Option<StreamCursor>,
    /// The newest entry known to be missing from the window: trimmed here,
    /// or (when the first read began mid-stream) just before the first one
    /// read. A cursor older than this may have skipped entries.
    missing_upto: Option<StreamCursor>,
}

pub struct Feed {
    activity: Uuid,
    /// When the activity started: its stream's first entry is the STARTED
    /// state at this time.
    started_at: Millis,
    window: RwLock<Window>,
    arrived: watch::Sender<u64>,
    watchers: AtomicUsize,
    touched: AtomicI64,
    /// The last read of the recent store failed: watchers are told the
    /// stream may be behind rather than getting errors.
    degraded: AtomicBool,
    /// When the last successful read began (0: never).
    pulled: AtomicI64,
}

impl Feed {
    fn new(activity: Uuid, started_at: Millis, now: Millis) -> Feed {
        Feed {
            activity,
            started_at,
            window: RwLock::new(Window::default()),
            arrived: watch::channel(0).0,
            watchers: AtomicUsize::new(0),
            touched: AtomicI64::new(now),
            degraded: AtomicBool::new(false),
            pulled: AtomicI64::new(0),
        }
    }

    /// Reads what arrived since the last pull (`now` is when this one
    /// begins); returns how many entries.
    pub(crate) async fn pull(&self, recent: &dyn RecentStore, now: Millis) -> StoreResult<usize> {
        let result = self.pull_pages(recent, now).await;
        self.degraded.store(result.is_err(), Ordering::Release);
        if result.is_ok() {
            self.pulled.store(now, Ordering::Release);
        }
        result
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    async fn pull_pages(&self, recent: &dyn RecentStore, now: Millis) -> StoreResult<usize> {
        // A shared store keeps `SHARED_WINDOW_MS` of a stream, so after a
        // longer pause (reads failing, the task starved) entries that came
        // after the last read may have been trimmed before this one: the
        // watchers behind the gap must catch up afresh, not skip it.
        let previous = self.pulled.load(Ordering::Acquire);
        let mut stalled = previous > 0 && now - previous >= SHARED_WINDOW_MS;
        let mut total = 0;
        loop {
            let after = self.window.read().expect("feed lock").last;
            let page = recent.since(self.activity, after, PAGE).await?;
            let n = page.len();
            if n > 0 {
                let mut w = self.window.write().expect("feed lock");
                let first = page[0].cursor;
                if w.last.is_none() && !self.is_start(&page[0].item) {
                    w.missing_upto = Some(just_before(first));
                } else if std::mem::take(&mut stalled) && w.last.is_some() {
                    w.missing_upto = Some(just_before(first)).max(w.missing_upto);
                }
                for entry in page {
                    let late = match &entry.item {
                        RecentItem::Point(p) => {
                            let late = w.max_point_ts.is_some_and(|m| p.ts < m);
                            w.max_point_ts = Some(w.max_point_ts.map_or(p.ts, |m| m.max(p.ts)));
                            late
                        }
                        _ => false,
                    };
                    w.last = Some(entry.cursor);
                    w.entries.push_back(LiveEntry {
                        cursor: entry.cursor,
                        item: entry.item,
                        late,
                    });
                }
                let oldest_kept = w.last.map_or(0, |c| c.ms) - RECENT_WINDOW_MS;
                while w.entries.len() > RECENT_CAP
                    || w.entries.front().is_some_and(|e| e.cursor.ms < oldest_kept)
                {
                    let gone = w.entries.pop_front().map(|e| e.cursor);
                    w.missing_upto = gone.max(w.missing_upto);
                }
            }
            total += n;
            if n < PAGE {
                break;
            }
        }
        if total > 0 {
            self.arrived.send_modify(|n| *n += 1);
        }
        Ok(total)
    }

    /// Fires whenever new entries arrived (released or not yet).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.arrived.subscribe()
    }

    /// Entries after `after` already released at `now` for this `lag`, at
    /// most `limit`, in stream order.
    pub fn released(
        &self,
        after: Option<StreamCursor>,
        now: Millis,
        lag: Lag,
        limit: usize,
    ) -> Vec<LiveEntry> {
        let w = self.window.read().expect("feed lock");
        let start = after.map_or(0, |c| w.entries.partition_point(|e| e.cursor <= c));
        w.entries
            .range(start..)
            .take_while(|e| e.cursor.ms + lag.ms() <= now)
            .take(limit)
            .cloned()
            .collect()
    }

    /// When the first entry after `after` becomes due, if one is waiting.
    pub fn next_release(&self, after: Option<StreamCursor>, lag: Lag) -> Option<Millis> {
        let w = self.window.read().expect("feed lock");
        let start = after.map_or(0, |c| w.entries.partition_point(|e| e.cursor <= c));
        w.entries.get(start).map(|e| e.cursor.ms + lag.ms())
    }

    /// The newest released state change and statistics.
    pub fn released_status(
        &self,
        now: Millis,
        lag: Lag,
    ) -> (Option<(ActivityState, Millis)>, Option<Stats>) {
        let w = self.window.read().expect("feed lock");
        let mut state = None;
        let mut stats = None;
        for e in w
            .entries
            .iter()
            .rev()
            .filter(|e| e.cursor.ms + lag.ms() <= now)
        {
            match &e.item {
                RecentItem::State { state: s, at } if state.is_none() => state = Some((*s, *at)),
                RecentItem::Stats(s) if stats.is_none() => stats = Some(s.clone()),
                _ => {}
            }
            if state.is_some() && stats.is_some() {
                break;
            }
        }
        (state, stats)
    }

    /// The oldest state change in the window not yet released to a watcher
    /// with this lag: what the watcher will see next, so the state it sees
    /// now is the one before it.
    pub fn next_state(&self, now: Millis, lag: Lag) -> Option<(ActivityState, Millis)> {
        let w = self.window.read().expect("feed lock");
        w.entries
            .iter()
            .filter(|e| e.cursor.ms + lag.ms() > now)
            .find_map(|e| match &e.item {
                RecentItem::State { state, at } => Some((*state, *at)),
                _ => None,
            })
    }

    /// Whether a watcher at `cursor` may have missed entries that left the
    /// window (it polled too rarely): it should catch up afresh.
    pub fn lost_since(&self, cursor: StreamCursor) -> bool {
        let w = self.window.read().expect("feed lock");
        w.missing_upto.is_some_and(|m| cursor < m)
    }

    /// Whether the window still holds the activity from its first entry
    /// (the STARTED state published at creation), so no history is missing.
    pub fn holds_start(&self) -> bool {
        let w = self.window.read().expect("feed lock");
        w.entries.front().is_some_and(|e| self.is_start(&e.item))
    }

    /// The STARTED state published at creation (a resume is STARTED too,
    /// later).
    fn is_start(&self, item: &RecentItem) -> bool {
        matches!(item, RecentItem::State { state: ActivityState::Started, at } if *at == self.started_at)
    }

    /// The oldest point time held in the window: catch-up reads persistence
    /// for anything older.
    pub fn oldest_point_ts(&self) -> Option<Millis> {
        let w = self.window.read().expect("feed lock");
        w.entries
            .iter()
            .filter_map(|e| match &e.item {
                RecentItem::Point(p) => Some(p.ts),
                _ => None,
            })
            .min()
    }

    fn touch(&self, now: Millis) {
        self.touched.store(now, Ordering::Relaxed);
    }

    pub fn activity(&self) -> Uuid {
        self.activity
    }
}

/// Holding one counts as watching; dropping it stops counting.
pub struct WatchGuard(Arc<Feed>, Clock);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.touch(self.1.now_ms());
        self.0.watchers.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("trailcast_live_ws_watchers").decrement(1.0);
    }
}

pub struct LiveHub {
    feeds: DashMap<Uuid, Arc<Feed>>,
    recent: Arc<dyn RecentStore>,
    clock: Clock,
    stop: watch::Receiver<bool>,
    /// Ids of revoked share links, for open WebSockets to notice at once.
    pub revoked: broadcast::Sender<Uuid>,
    /// Ids of activities whose audience this node just changed (visibility,
    /// a removed viewer), for open WebSockets to check again at once.
    pub access_changed: broadcast::Sender<Uuid>,
}

impl LiveHub {
    pub fn new(
        recent: Arc<dyn RecentStore>,
        clock: Clock,
        stop: watch::Receiver<bool>,
    ) -> Arc<LiveHub> {
        Arc::new(LiveHub {
            feeds: DashMap::new(),
            recent,
            clock,
            stop,
            revoked: broadcast::channel(64).0,
            access_changed: broadcast::channel(64).0,
        })
    }

    /// The activity's feed, started (and filled) if nobody watched it yet.
    /// With `watching`, also a guard that counts a WebSocket watcher. Both
    /// the touch and the count happen under the map's shard lock, which the
    /// feed's own removal also takes, so a feed handed out here is never one
    /// that is being retired.
    pub async fn feed(
        self: &Arc<Self>,
        activity: Uuid,
        started_at: Millis,
        watching: bool,
    ) -> StoreResult<(Arc<Feed>, Option<WatchGuard>)> {
        let now = self.clock.now_ms();
        let claim = |feed: &Arc<Feed>| {
            feed.touch(now);
            watching.then(|| {
                feed.watchers.fetch_add(1, Ordering::AcqRel);
                metrics::gauge!("trailcast_live_ws_watchers").increment(1.0);
                WatchGuard(feed.clone(), self.clock)
            })
        };
        if let Some(feed) = self.feeds.get(&activity) {
            let guard = claim(&feed);
            return Ok((feed.clone(), guard));
        }
        let fresh = Arc::new(Feed::new(activity, started_at, now));
        if let Err(e) = fresh.pull(self.recent.as_ref(), now).await {
            // Serve what persistence has; the feed's task keeps retrying.
            tracing::warn!(error = %e, %activity, "live feed starts degraded");
        }
        let (feed, guard) = match self.feeds.entry(activity) {
            dashmap::Entry::Occupied(existing) => {
                let guard = claim(existing.get());
                return Ok((existing.get().clone(), guard));
            }
            dashmap::Entry::Vacant(slot) => {
                let guard = claim(&fresh);
                (slot.insert(fresh).clone(), guard)
            }
        };
        metrics::gauge!("trailcast_live_feeds").set(self.feeds.len() as f64);
        tokio::spawn(run_feed(self.clone(), feed.clone()));
        Ok((feed, guard))
    }

    pub fn feeds(&self) -> usize {
        self.feeds.len()
    }

    /// Whether anyone watches the activity through this node now.
    pub fn is_watched(&self, id: Uuid) -> bool {
        self.feeds.contains_key(&id)
    }
}

/// The newest cursor before `c`.
fn just_before(c: StreamCursor) -> StreamCursor {
    match c.seq {
        0 => StreamCursor {
            ms: c.ms - 1,
            seq: u64::MAX,
        },
        seq => StreamCursor { seq: seq - 1, ..c },
    }
}

async fn run_feed(hub: Arc<LiveHub>, feed: Arc<Feed>) {
    let mut stop = hub.stop.clone();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::stopped(&mut stop) => break,
        }
        if let Err(e) = feed.pull(hub.recent.as_ref(), hub.clock.now_ms()).await {
            tracing::warn!(error = %e, activity = %feed.activity, "live feed could not read recent positions");
        }
        // Checked under the map's lock: a watcher or poller that just came
        // keeps the feed alive.
        let retired = hub.feeds.remove_if(&feed.activity, |_, f| {
            Arc::ptr_eq(f, &feed)
                && f.watchers.load(Ordering::Acquire) == 0
                && hub.clock.now_ms() - f.touched.load(Ordering::Acquire) > FEED_IDLE_MS
        });
        if retired.is_some() {
            break;
        }
    }
    metrics::gauge!("trailcast_live_feeds").set(hub.feeds.len() as f64);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::Point;
    use crate::store::recent_memory::MemoryRecentStore;

    fn point(ts: Millis) -> RecentItem {
        RecentItem::Point(Point::bare(ts, 48.0, 11.0))
    }

    async fn advance_s(s: u64) {
        tokio::time::advance(Duration::from_secs(s)).await;
    }

    /// A feed that cannot read for longer than a shared stream keeps its
    /// entries must tell watchers behind the pause that they may have
    /// missed some, even if its own window never held them.
    #[tokio::test(start_paused = true)]
    async fn a_pause_longer_than_the_shared_window_marks_a_gap() {
        let clock = Clock::tokio();
        let recent = MemoryRecentStore::with_clock(clock);
        let id = Uuid::now_v7();
        let t0 = clock.now_ms();
        let start = RecentItem::State {
            state: ActivityState::Started,
            at: t0,
        };
        recent.append(id, &[start, point(t0)]).await.unwrap();
        let feed = Feed::new(id, t0, t0);
        feed.pull(&recent, clock.now_ms()).await.unwrap();
        let watcher = feed.window.read().unwrap().last.unwrap();

        // Read every 5 s: nothing is lost.
        for _ in 0..3 {
            advance_s(5).await;
            recent.append(id, &[point(clock.now_ms())]).await.unwrap();
            feed.pull(&recent, clock.now_ms()).await.unwrap();
        }
        assert!(!feed.lost_since(watcher), "regular reads leave no gap");

        // No read for 40 s while the athlete posts every 5 s: the store
        // trims what came early in the pause.
        let before_pause = feed.window.read().unwrap().last.unwrap();
        for _ in 0..8 {
            advance_s(5).await;
            recent.append(id, &[point(clock.now_ms())]).await.unwrap();
        }
        feed.pull(&recent, clock.now_ms()).await.unwrap();
        assert!(
            feed.lost_since(before_pause),
            "a watcher at the last entry read before the pause must catch up afresh"
        );
        let newest = feed.window.read().unwrap().last.unwrap();
        assert!(!feed.lost_since(newest), "one that is up to date need not");
    }
}
