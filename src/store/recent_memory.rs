//! In-process `RecentStore`: a `DashMap` of compact per-activity streams.
//!
//! Bounded on both axes: each stream holds the last `RECENT_WINDOW_MS` of
//! entries (at most `RECENT_CAP`), and
//! `expire_idle` (run by the server's sweeper) drops streams untouched for
//! `RECENT_TTL_MS`, so finished or abandoned activities cost nothing later.
//!
//! Every live activity pays for its stream (#13), so a stream is one byte
//! buffer of entries in the `recent_codec` encoding (~30 bytes a point,
//! against ~150 for a `RecentEntry` in a ring buffer), and like the Redis
//! backend it keeps only the newest statistics, which `since` puts back
//! right after the entry they followed.

use async_trait::async_trait;
use dashmap::DashMap;
use uuid::Uuid;

use super::recent::{
    RECENT_CAP, RECENT_TTL_MS, RECENT_WINDOW_MS, RecentEntry, RecentItem, RecentStore, StreamCursor,
};
use super::recent_codec::{self, Reader, put_varint};
use super::{StoreError, StoreResult};
use crate::clock::Clock;
use crate::domain::time::Millis;
use crate::startup::Sweep;

#[derive(Default)]
pub struct MemoryRecentStore {
    streams: DashMap<Uuid, Stream>,
    clock: Clock,
}

struct Stream {
    /// The entries (points and state changes) in arrival order, each as
    /// varints `ms - base`, `seq`, `len`, then `len` bytes of the item.
    buf: Vec<u8>,
    /// How many entries `buf` holds.
    len: usize,
    /// The arrival time the entries' times are counted from.
    base: Millis,
    last: StreamCursor,
    touched: Millis,
    /// The newest statistics and their own cursor (one past the entry they
    /// were appended after).
    stats: Option<(StreamCursor, Box<[u8]>)>,
}

/// One entry of a stream's buffer, not yet decoded.
struct Raw<'a> {
    cursor: StreamCursor,
    item: &'a [u8],
    /// Where the next entry starts.
    end: usize,
}

impl Stream {
    fn new(arrived: Millis) -> Stream {
        Stream {
            buf: Vec::new(),
            len: 0,
            base: arrived,
            last: StreamCursor { ms: 0, seq: 0 },
            touched: arrived,
            stats: None,
        }
    }

    /// The next id: ids only grow, like a Redis stream's, even if the
    /// clock steps back.
    fn next_cursor(&mut self, arrived: Millis) -> StreamCursor {
        self.last = match arrived > self.last.ms {
            true => StreamCursor {
                ms: arrived,
                seq: 0,
            },
            false => StreamCursor {
                seq: self.last.seq + 1,
                ..self.last
            },
        };
        self.last
    }

    fn push(&mut self, cursor: StreamCursor, item: &[u8]) {
        put_varint(&mut self.buf, (cursor.ms - self.base) as u64);
        put_varint(&mut self.buf, cursor.seq);
        put_varint(&mut self.buf, item.len() as u64);
        self.buf.extend_from_slice(item);
        self.len += 1;
    }

    /// The entry starting at byte `at`.
    fn raw(&self, at: usize) -> StoreResult<Raw<'_>> {
        let corrupt = |e: String| StoreError::corrupt("recent stream (in process)", e);
        let mut r = Reader(&self.buf[at..]);
        let ms = self.base + r.varint().map_err(corrupt)? as Millis;
        let seq = r.varint().map_err(corrupt)?;
        let len = r.varint().map_err(corrupt)? as usize;
        let item =
            r.0.get(..len)
                .ok_or_else(|| corrupt("an entry ends early".into()))?;
        Ok(Raw {
            cursor: StreamCursor { ms, seq },
            item,
            end: self.buf.len() - r.0.len() + len,
        })
    }

    /// Every entry, oldest first.
    fn entries(&self) -> impl Iterator<Item = StoreResult<Raw<'_>>> {
        let mut at = 0;
        std::iter::from_fn(move || {
            (at < self.buf.len()).then(|| {
                let raw = self.raw(at);
                at = raw.as_ref().map_or(self.buf.len(), |r| r.end);
                raw
            })
        })
    }

    /// Drops entries older than the window and beyond `RECENT_CAP`, and
    /// gives back memory a burst left behind.
    fn trim(&mut self) {
        let oldest_kept = self.last.ms - RECENT_WINDOW_MS;
        let mut cut = 0;
        let mut dropped = 0;
        for raw in self.entries() {
            let Ok(raw) = raw else {
                // Never written by `push`: start again rather than serve it.
                cut = self.buf.len();
                dropped = self.len;
                break;
            };
            if raw.cursor.ms >= oldest_kept && self.len - dropped <= RECENT_CAP {
                break;
            }
            cut = raw.end;
            dropped += 1;
        }
        self.buf.drain(..cut);
        self.len -= dropped;
        if self.buf.capacity() > 2 * self.buf.len() + 256 {
            self.buf.shrink_to(self.buf.len() + self.buf.len() / 4);
        }
    }
}

fn entry(cursor: StreamCursor, bytes: &[u8]) -> StoreResult<RecentEntry> {
    let item = recent_codec::decode(bytes)
        .map_err(|e| StoreError::corrupt("recent stream (in process)", e))?;
    Ok(RecentEntry { cursor, item })
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
        let encoded: Vec<Vec<u8>> = items.iter().map(recent_codec::encode).collect();
        let mut stream = self
            .streams
            .entry(activity)
            .or_insert_with(|| Stream::new(arrived));
        stream.touched = arrived;
        for (item, bytes) in items.iter().zip(encoded) {
            let cursor = stream.next_cursor(arrived);
            match item {
                RecentItem::Stats(_) => stream.stats = Some((cursor, bytes.into_boxed_slice())),
                _ => stream.push(cursor, &bytes),
            }
        }
        stream.trim();
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
        let mut stats = stream
            .stats
            .as_ref()
            .filter(|(cursor, _)| after.is_none_or(|a| *cursor > a));
        let mut out = Vec::new();
        for raw in stream.entries() {
            let raw = raw?;
            if after.is_some_and(|a| raw.cursor <= a) {
                continue;
            }
            if let Some((cursor, bytes)) = stats.filter(|(c, _)| *c < raw.cursor) {
                if out.len() >= limit {
                    return Ok(out);
                }
                out.push(entry(*cursor, bytes)?);
                stats = None;
            }
            if out.len() >= limit {
                return Ok(out);
            }
            out.push(entry(raw.cursor, raw.item)?);
        }
        if let Some((cursor, bytes)) = stats.filter(|_| out.len() < limit) {
            out.push(entry(*cursor, bytes)?);
        }
        Ok(out)
    }

    async fn latest_point(
        &self,
        activity: Uuid,
        until: Millis,
    ) -> StoreResult<Option<RecentEntry>> {
        let Some(stream) = self.streams.get(&activity) else {
            return Ok(None);
        };
        let mut latest = None;
        for raw in stream.entries() {
            let raw = raw?;
            if raw.cursor.ms > until {
                break;
            }
            if recent_codec::is_point(raw.item) {
                latest = Some((raw.cursor, raw.item));
            }
        }
        latest
            .map(|(cursor, bytes)| entry(cursor, bytes))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::{Point, Stats};

    fn point(ts: Millis) -> RecentItem {
        RecentItem::Point(Point {
            ts,
            lat: 48.137_154_3,
            lng: 11.576_124_9,
            alt: Some(519.5),
            speed: Some(3.1),
            accuracy: Some(4.0),
            hr: Some(151),
            cadence: None,
            battery: None,
        })
    }

    fn stats(points: u64) -> RecentItem {
        RecentItem::Stats(Stats {
            distance_m: 12.5 * points as f64,
            moving_time_s: 3.0 * points as f64,
            elapsed_time_s: 3.0 * points as f64,
            avg_pace_s_per_km: Some(240.0),
            avg_speed_m_s: Some(4.167),
            elevation_gain_m: 1.5,
            calories_kcal: 0.8,
            points,
            step: None,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_the_window_and_the_newest_statistics_in_little_memory() {
        let store = MemoryRecentStore::with_clock(Clock::tokio());
        let a = Uuid::now_v7();
        // A burst (an offline upload) first, then a post every 3 s for a minute.
        let burst: Vec<RecentItem> = (0..5_000).map(point).collect();
        store.append(a, &burst).await.unwrap();
        let burst_bytes = store.streams.get(&a).unwrap().buf.capacity();
        for n in 1..=20u64 {
            tokio::time::advance(Duration::from_secs(3)).await;
            let ts = store.clock.now_ms();
            store.append(a, &[point(ts), stats(n)]).await.unwrap();
        }
        let all = store.since(a, None, 100).await.unwrap();
        let points = all
            .iter()
            .filter(|e| matches!(e.item, RecentItem::Point(_)))
            .count();
        // 30 s of posts every 3 s: the newest 11 (the window is inclusive).
        assert_eq!(points, 11, "the burst and older posts are trimmed");
        assert_eq!(all.last().map(|e| &e.item), Some(&stats(20)));
        assert_eq!(all.len(), points + 1, "only the newest statistics are kept");
        assert!(all.windows(2).all(|w| w[0].cursor < w[1].cursor));
        let stream = store.streams.get(&a).unwrap();
        assert!(
            stream.buf.capacity() < burst_bytes / 10 && stream.buf.len() < 11 * 48,
            "the burst's memory is given back: {} of {} bytes, {} used",
            stream.buf.capacity(),
            burst_bytes,
            stream.buf.len()
        );
        drop(stream);

        // A reader paging one entry at a time meets the statistics after
        // the point they were appended with, and nothing twice.
        let mut cursor = None;
        let mut paged = Vec::new();
        while let Some(e) = store.since(a, cursor, 1).await.unwrap().pop() {
            cursor = Some(e.cursor);
            paged.push(e);
        }
        assert_eq!(paged, all);
        assert_eq!(store.since(a, None, 0).await.unwrap(), vec![]);
        let newest = store.latest_point(a, i64::MAX).await.unwrap().unwrap();
        assert_eq!(Some(&newest), all.iter().rev().nth(1));
    }
}
