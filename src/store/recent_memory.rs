//! In-process `RecentStore`: a `DashMap` of capped ring buffers.
//!
//! Bounded on both axes: each stream holds the last `RECENT_WINDOW_MS` of
//! entries (at most `RECENT_CAP`), and
//! `expire_idle` (run by the server's sweeper) drops streams untouched for
//! `RECENT_TTL_MS`, so finished or abandoned activities cost nothing later.

use std::collections::VecDeque;

use async_trait::async_trait;
use dashmap::DashMap;
use uuid::Uuid;

use super::StoreResult;
use super::recent::{
    RECENT_CAP, RECENT_TTL_MS, RECENT_WINDOW_MS, RecentEntry, RecentItem, RecentStore, StreamCursor,
};
use crate::clock::Clock;
use crate::domain::time::Millis;
use crate::startup::Sweep;

#[derive(Default)]
pub struct MemoryRecentStore {
    streams: DashMap<Uuid, Stream>,
    clock: Clock,
}

struct Stream {
    entries: VecDeque<RecentEntry>,
    last: StreamCursor,
    touched: Millis,
}

impl MemoryRecentStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stamps arrivals with `clock` (the server's).
    pub fn with_clock(clock: Clock) -> Self {
        MemoryRecentStore {
            streams: DashMap::new(),
            clock,
        }
    }

    /// Drops streams that received nothing for `RECENT_TTL_MS`.
    pub fn expire_idle(&self, now: Millis) {
        self.streams.retain(|_, s| now - s.touched < RECENT_TTL_MS);
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

impl Sweep for MemoryRecentStore {
    fn sweep(&self, now: Millis) {
        self.expire_idle(now);
    }
}

#[async_trait]
impl RecentStore for MemoryRecentStore {
    async fn append(&self, activity: Uuid, items: &[RecentItem]) -> StoreResult<()> {
        let arrived = self.clock.now_ms();
        let mut stream = self.streams.entry(activity).or_insert_with(|| Stream {
            entries: VecDeque::new(),
            last: StreamCursor { ms: 0, seq: 0 },
            touched: arrived,
        });
        stream.touched = arrived;
        for item in items {
            // Like a Redis stream: ids only grow, even if the clock steps back.
            let cursor = if arrived > stream.last.ms {
                StreamCursor {
                    ms: arrived,
                    seq: 0,
                }
            } else {
                StreamCursor {
                    ms: stream.last.ms,
                    seq: stream.last.seq + 1,
                }
            };
            stream.last = cursor;
            stream.entries.push_back(RecentEntry {
                cursor,
                item: item.clone(),
            });
        }
        let oldest_kept = stream.last.ms - RECENT_WINDOW_MS;
        while stream.entries.len() > RECENT_CAP
            || stream
                .entries
                .front()
                .is_some_and(|e| e.cursor.ms < oldest_kept)
        {
            stream.entries.pop_front();
        }
        Ok(())
    }

    async fn since(
        &self,
        activity: Uuid,
        after: Option<StreamCursor>,
        limit: usize,
    ) -> StoreResult<Vec<RecentEntry>> {
        let Some(stream) = self.streams.get(&activity) else {
            return Ok(Vec::new());
        };
        let start = match after {
            Some(c) => stream.entries.partition_point(|e| e.cursor <= c),
            None => 0,
        };
        Ok(stream.entries.range(start..).take(limit).cloned().collect())
    }

    async fn latest_point(
        &self,
        activity: Uuid,
        until: Millis,
    ) -> StoreResult<Option<RecentEntry>> {
        let Some(stream) = self.streams.get(&activity) else {
            return Ok(None);
        };
        Ok(stream
            .entries
            .iter()
            .rev()
            .filter(|e| e.cursor.ms <= until)
            .find(|e| matches!(e.item, RecentItem::Point(_)))
            .cloned())
    }
}
