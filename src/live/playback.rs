//! One watcher's playback of a feed: its lag, its cursor, and the rules of
//! what it is shown and when. Pollers and WebSocket watchers use the same
//! `Playback`; the HTTP layer only serialises what it returns.
//!
//! - `catch_up` is everything released so far: the feed's window, and for
//!   activities whose early part has left the window (long or expired
//!   streams), the older points from persistence.
//! - `release(now)` is what became due since the cursor, in stream order,
//!   and moves the cursor past it.
//! - `status(now)` is the state and statistics as released to this watcher.
//! - `wake_at()` is when the next waiting entry becomes due.
//!
//! Every method takes `now` explicitly, so the rules are unit-tested without
//! a clock.

use std::sync::Arc;
use uuid::Uuid;

use serde::Serialize;

use super::Lag;
use super::feed::{Feed, LiveEntry, WatchGuard};
use crate::domain::time::{Millis, serialize_ms};
use crate::domain::{ActivityState, Point, Stats};
use crate::ingest::ActivitySnapshot;
use crate::store::{PointStore, RecentItem, StoreResult, StreamCursor, read_track};

/// A point as a watcher receives it. `late` marks a point older than one
/// that came before it in the stream (an offline upload, a resend): the
/// client should redraw the track rather than extend it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LivePoint {
    #[serde(flatten)]
    pub point: Point,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
}

/// A state and when it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StateAt {
    pub state: ActivityState,
    #[serde(serialize_with = "serialize_ms")]
    pub at: Millis,
}

impl StateAt {
    /// COMPLETE or DISCARDED: nothing more will be released.
    pub fn is_final(self) -> bool {
        matches!(
            self.state,
            ActivityState::Complete | ActivityState::Discarded
        )
    }
}

/// What the watcher sees of the activity now.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub state: StateAt,
    pub stats: Stats,
}

/// Whether the feed can read recent positions (`degraded`: the stream may
/// lag behind what the athlete sent; it is persisted and will be
/// back-filled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveStatus {
    Ok,
    Degraded,
}

#[derive(Debug, Clone)]
pub struct CatchUp {
    /// Every point released so far, oldest first.
    pub points: Vec<LivePoint>,
    /// The state changes released from the window, in stream order.
    pub events: Vec<StateAt>,
    pub status: Status,
    /// Where the next release starts.
    pub cursor: StreamCursor,
}

/// One run of released entries, in stream order.
#[derive(Debug, Clone, PartialEq)]
pub enum Released {
    /// Consecutive points; `cursor` is the last one's.
    Points {
        points: Vec<LivePoint>,
        cursor: StreamCursor,
    },
    State {
        change: StateAt,
        cursor: StreamCursor,
    },
}

#[derive(Debug, Clone, Default)]
pub struct Release {
    pub items: Vec<Released>,
    /// The newest statistics among the released entries (older ones in the
    /// same release are superseded).
    pub stats: Option<(Stats, StreamCursor)>,
    /// Entries released (points, states and statistics).
    pub entries: usize,
    /// A final state was released: nothing more will come.
    pub finished: bool,
}

impl Release {
    pub fn points(&self) -> impl Iterator<Item = &LivePoint> {
        self.items.iter().flat_map(|r| match r {
            Released::Points { points, .. } => points.as_slice(),
            Released::State { .. } => &[],
        })
    }

    pub fn events(&self) -> impl Iterator<Item = StateAt> + '_ {
        self.items.iter().filter_map(|r| match r {
            Released::State { change, .. } => Some(*change),
            Released::Points { .. } => None,
        })
    }
}

pub struct Playback {
    feed: Arc<Feed>,
    /// The activity as the watcher found it: what the state was before the
    /// first state change the stream still holds.
    snapshot: ActivitySnapshot,
    lag: Lag,
    cursor: Option<StreamCursor>,
    _watching: Option<WatchGuard>,
}

impl Playback {
    pub fn new(
        feed: Arc<Feed>,
        snapshot: ActivitySnapshot,
        lag: Lag,
        cursor: Option<StreamCursor>,
        watching: Option<WatchGuard>,
    ) -> Playback {
        Playback {
            feed,
            snapshot,
            lag,
            cursor,
            _watching: watching,
        }
    }

    pub fn lag(&self) -> Lag {
        self.lag
    }

    /// The activity played back.
    pub fn activity(&self) -> Uuid {
        self.snapshot.activity.id
    }

    /// The activity as it was when playback began.
    pub fn snapshot(&self) -> &ActivitySnapshot {
        &self.snapshot
    }

    pub fn cursor(&self) -> Option<StreamCursor> {
        self.cursor
    }

    pub fn live_status(&self) -> LiveStatus {
        match self.feed.is_degraded() {
            true => LiveStatus::Degraded,
            false => LiveStatus::Ok,
        }
    }

    /// Whether entries after the cursor have left the window (a poller that
    /// was away longer than it): the watcher should catch up afresh.
    pub fn lost(&self) -> bool {
        self.cursor.is_some_and(|c| self.feed.lost_since(c))
    }

    /// Fires whenever new entries arrive in the feed (released or not yet).
    pub fn arrivals(&self) -> tokio::sync::watch::Receiver<u64> {
        self.feed.subscribe()
    }

    /// Everything released so far, with the status; the cursor moves past
    /// it (or stays where it was if nothing in the window is released yet).
    pub async fn catch_up(&mut self, points: &dyn PointStore, now: Millis) -> StoreResult<CatchUp> {
        let released = self.feed.released(None, now, self.lag, usize::MAX);
        let mut out = Vec::new();
        if !self.feed.holds_start() {
            let oldest = self.feed.oldest_point_ts().unwrap_or(Millis::MAX);
            let history = read_track(points, self.snapshot.activity.id).await?;
            out.extend(
                history
                    .into_iter()
                    .take_while(|p| p.ts < oldest)
                    .map(|point| LivePoint { point, late: false }),
            );
        }
        out.extend(released.iter().filter_map(live_point));
        let events = released
            .iter()
            .filter_map(|e| match e.item {
                RecentItem::State { state, at } => Some(StateAt { state, at }),
                _ => None,
            })
            .collect();
        if let Some(last) = released.last() {
            self.cursor = Some(last.cursor);
        }
        Ok(CatchUp {
            points: out,
            events,
            status: self.status(now),
            cursor: self.cursor.unwrap_or(StreamCursor { ms: 0, seq: 0 }),
        })
    }

    /// What became due since the cursor (at most `limit` entries), in
    /// stream order; the cursor moves past it.
    pub fn release(&mut self, now: Millis, limit: usize) -> Release {
        let entries = self.feed.released(self.cursor, now, self.lag, limit);
        let mut release = Release {
            entries: entries.len(),
            ..Release::default()
        };
        let mut run: Vec<LivePoint> = Vec::new();
        let mut run_end = None;
        for entry in &entries {
            match &entry.item {
                RecentItem::Point(point) => {
                    run.push(LivePoint {
                        point: *point,
                        late: entry.late,
                    });
                    run_end = Some(entry.cursor);
                }
                RecentItem::State { state, at } => {
                    if let Some(cursor) = run_end.take() {
                        let points = std::mem::take(&mut run);
                        release.items.push(Released::Points { points, cursor });
                    }
                    let change = StateAt {
                        state: *state,
                        at: *at,
                    };
                    release.finished |= change.is_final();
                    release.items.push(Released::State {
                        change,
                        cursor: entry.cursor,
                    });
                }
                RecentItem::Stats(s) => release.stats = Some((s.clone(), entry.cursor)),
            }
        }
        if let Some(cursor) = run_end {
            release.items.push(Released::Points {
                points: run,
                cursor,
            });
        }
        if let Some(last) = entries.last() {
            self.cursor = Some(last.cursor);
        }
        release
    }

    /// When the first entry after the cursor becomes due, if one is waiting.
    pub fn wake_at(&self) -> Option<Millis> {
        self.feed.next_release(self.cursor, self.lag)
    }

    /// How long a poller should wait before asking again: until the first
    /// waiting entry is due, or `lag` if none waits (a point posted now
    /// cannot be released sooner); at once if the last poll was cut short;
    /// 30 s once the activity is over.
    pub fn retry_after_ms(&self, now: Millis, cut_short: bool, finished: bool) -> Millis {
        if cut_short {
            return 0;
        }
        match self.wake_at() {
            Some(due) => (due - now).clamp(50, self.lag.ms()),
            None if finished => 30_000,
            None => self.lag.ms(),
        }
    }

    /// State and statistics as released to this watcher. With no state
    /// change released yet: the state before the next one to be released
    /// (never one the watcher has not reached), or as stored when the
    /// stream holds none (an activity watched long after it ended).
    pub fn status(&self, now: Millis) -> Status {
        let (state, stats) = self.feed.released_status(now, self.lag);
        let activity = &self.snapshot.activity;
        let events = &activity.events;
        let (state, at) = state.unwrap_or_else(|| {
            let upto = match self.feed.next_state(now, self.lag) {
                // The event the stream is about to release, and the ones
                // before it: the watcher is at the one before (or at the
                // very first, the start).
                Some(next) => events
                    .iter()
                    .position(|e| (e.state, e.at) == next)
                    .map_or(events.len(), |i| i.max(1)),
                None => events.len(),
            };
            events[..upto]
                .last()
                .map_or((activity.state, activity.started_at), |e| (e.state, e.at))
        });
        Status {
            state: StateAt { state, at },
            stats: stats.unwrap_or_else(|| self.snapshot.stats(now)),
        }
    }
}

fn live_point(entry: &LiveEntry) -> Option<LivePoint> {
    match &entry.item {
        RecentItem::Point(point) => Some(LivePoint {
            point: *point,
            late: entry.late,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use uuid::Uuid;

    use super::*;
    use crate::clock::Clock;
    use crate::domain::{Activity, ActivityType, TrackSummary, Visibility};
    use crate::live::LiveHub;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::recent_memory::MemoryRecentStore;
    use crate::store::{RecentStore, StreamCursor};

    const LAG_MS: Millis = 5_000;

    fn point(ts: Millis) -> Point {
        Point::bare(ts, 48.0, 11.0)
    }

    /// A live activity started at `t0` whose stream holds its start, on a
    /// clock that moves only with tokio's paused time.
    struct Fixture {
        clock: Clock,
        recent: Arc<MemoryRecentStore>,
        hub: Arc<LiveHub>,
        snapshot: ActivitySnapshot,
        _stop: tokio::sync::watch::Sender<bool>,
    }

    impl Fixture {
        async fn new() -> Fixture {
            let clock = Clock::tokio();
            let t0 = clock.now_ms();
            let recent = Arc::new(MemoryRecentStore::with_clock(clock));
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let hub = LiveHub::new(recent.clone(), clock, stopped);
            let activity = Activity::start(
                Uuid::now_v7(),
                Uuid::now_v7(),
                ActivityType::Run,
                Visibility::Friends,
                None,
                t0,
            );
            let started = RecentItem::State {
                state: ActivityState::Started,
                at: t0,
            };
            recent.append(activity.id, &[started]).await.unwrap();
            let snapshot = ActivitySnapshot {
                activity,
                track: TrackSummary::default(),
            };
            Fixture {
                clock,
                recent,
                hub,
                snapshot,
                _stop: stop,
            }
        }

        async fn playback(&self, after: Option<StreamCursor>) -> Playback {
            let a = &self.snapshot.activity;
            let (feed, _) = self.hub.feed(a.id, a.started_at, false).await.unwrap();
            Playback::new(feed, self.snapshot.clone(), Lag(LAG_MS), after, None)
        }

        /// Appends items now and lets the feed read them.
        async fn arrive(&self, items: &[RecentItem]) {
            let id = self.snapshot.activity.id;
            self.recent.append(id, items).await.unwrap();
            let (feed, _) = self.hub.feed(id, 0, false).await.unwrap();
            feed.pull(self.recent.as_ref(), self.clock.now_ms())
                .await
                .unwrap();
        }

        fn now(&self) -> Millis {
            self.clock.now_ms()
        }
    }

    async fn advance_ms(ms: Millis) {
        tokio::time::advance(Duration::from_millis(ms as u64)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_point_is_released_exactly_lag_after_it_arrived_and_only_once() {
        let f = Fixture::new().await;
        let mut playback = f.playback(None).await;
        advance_ms(1_000).await;
        let arrived = f.now();
        f.arrive(&[RecentItem::Point(point(arrived - 500))]).await;
        // The start itself is released (it arrived 1 s earlier) ...
        advance_ms(LAG_MS - 1_000).await;
        let release = playback.release(f.now(), 100);
        assert_eq!(release.events().count(), 1);
        assert_eq!(release.points().count(), 0);
        // ... and the point waits until its own lag is over.
        assert_eq!(playback.wake_at(), Some(arrived + LAG_MS));
        advance_ms(999).await;
        assert_eq!(playback.release(f.now(), 100).entries, 0);
        advance_ms(1).await;
        let release = playback.release(f.now(), 100);
        let points: Vec<Millis> = release.points().map(|p| p.point.ts).collect();
        assert_eq!(points, [arrived - 500]);
        assert!(!release.finished);
        assert_eq!(playback.release(f.now(), 100).entries, 0, "never twice");
        assert_eq!(playback.wake_at(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn states_split_point_runs_in_stream_order_and_a_final_state_finishes() {
        let f = Fixture::new().await;
        let mut playback = f.playback(None).await;
        let t = f.now();
        let paused = StateAt {
            state: ActivityState::Paused,
            at: t + 1,
        };
        let complete = StateAt {
            state: ActivityState::Complete,
            at: t + 2,
        };
        f.arrive(&[
            RecentItem::Point(point(t - 3)),
            RecentItem::Point(point(t - 2)),
            RecentItem::State {
                state: paused.state,
                at: paused.at,
            },
            RecentItem::Point(point(t - 4)),
            RecentItem::State {
                state: complete.state,
                at: complete.at,
            },
        ])
        .await;
        advance_ms(LAG_MS).await;
        let release = playback.release(f.now(), 100);
        let shape: Vec<String> = release
            .items
            .iter()
            .map(|r| match r {
                Released::Points { points, .. } => format!("{} points", points.len()),
                Released::State { change, .. } => format!("{:?}", change.state),
            })
            .collect();
        assert_eq!(
            shape,
            ["Started", "2 points", "Paused", "1 points", "Complete"]
        );
        let late: Vec<bool> = release.points().map(|p| p.late).collect();
        assert_eq!(late, [false, false, true], "an older point is marked late");
        assert!(release.finished);
        assert!(playback.status(f.now()).state.is_final());
    }

    #[tokio::test(start_paused = true)]
    async fn status_shows_only_what_the_watcher_has_reached() {
        let mut f = Fixture::new().await;
        let t = f.now();
        // The activity was paused at t+1 (stored), which the stream releases
        // only after the lag.
        f.snapshot
            .activity
            .transition(ActivityState::Paused, t + 1, t + 1)
            .unwrap();
        let playback = f.playback(None).await;
        advance_ms(1).await;
        f.arrive(&[RecentItem::State {
            state: ActivityState::Paused,
            at: t + 1,
        }])
        .await;
        let status = playback.status(f.now());
        assert_eq!(
            status.state.state,
            ActivityState::Started,
            "not yet released"
        );
        advance_ms(LAG_MS).await;
        assert_eq!(playback.status(f.now()).state.state, ActivityState::Paused);
    }

    #[tokio::test(start_paused = true)]
    async fn catch_up_holds_everything_released_and_moves_the_cursor() {
        let f = Fixture::new().await;
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), 0).unwrap();
        let t = f.now();
        f.arrive(&[RecentItem::Point(point(t)), RecentItem::Point(point(t + 1))])
            .await;
        advance_ms(LAG_MS).await;
        f.arrive(&[RecentItem::Point(point(t + 2))]).await;
        let mut playback = f.playback(None).await;
        let catch_up = playback.catch_up(&store, f.now()).await.unwrap();
        let points: Vec<Millis> = catch_up.points.iter().map(|p| p.point.ts).collect();
        assert_eq!(points, [t, t + 1], "the third is not due yet");
        assert_eq!(Some(catch_up.cursor), playback.cursor());
        assert_eq!(catch_up.events.len(), 1, "the start");
        // A poller resuming from that cursor gets the rest once it is due.
        advance_ms(LAG_MS).await;
        let release = playback.release(f.now(), 100);
        assert_eq!(
            release.points().map(|p| p.point.ts).collect::<Vec<_>>(),
            [t + 2]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pollers_wait_for_the_next_release_or_the_lag() {
        let f = Fixture::new().await;
        let mut playback = f.playback(None).await;
        advance_ms(LAG_MS).await;
        playback.release(f.now(), 100);
        assert_eq!(playback.retry_after_ms(f.now(), false, false), LAG_MS);
        assert_eq!(playback.retry_after_ms(f.now(), false, true), 30_000);
        assert_eq!(playback.retry_after_ms(f.now(), true, false), 0);
        f.arrive(&[RecentItem::Point(point(f.now()))]).await;
        advance_ms(2_000).await;
        assert_eq!(
            playback.retry_after_ms(f.now(), false, false),
            LAG_MS - 2_000
        );
    }
}
