//! Leaderboards (the Strava seed): total distance per athlete on boards per
//! activity type and window (this ISO week, this month, all time), and the
//! same per region for athletes who have one.
//!
//! A finished activity counts once: the tracker remembers on the activity
//! how many metres it has already added (`Activity::leaderboard_m`) and
//! only ever adds the difference, so a retried COMPLETE adds nothing and
//! late points after the finish add just what they changed. The window an
//! activity counts in is the one it *started* in.
//!
//! Backends: `MemoryLeaderboard` (in process, the default) and
//! `RedisLeaderboard`, one sorted set per board:
//! `<prefix>lb:{<TYPE>:<window>:<period>[:<region>]}` (e.g.
//! `tc:lb:{RUN:week:2026-W48}`), member = athlete id, score = metres.
//! Week boards expire after 8 weeks, month boards after 13 months.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Utc};
use dashmap::DashMap;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::StoreResult;
use crate::domain::ActivityType;
use crate::domain::time::Millis;

/// A leaderboard's time window; `week` by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    #[default]
    Week,
    Month,
    All,
}

impl Window {
    /// The period of this window that `at` falls in, e.g. `2026-W48`.
    pub fn period(self, at: Millis) -> String {
        let t = DateTime::<Utc>::from_timestamp_millis(at).unwrap_or_default();
        match self {
            Window::Week => {
                let w = t.iso_week();
                format!("{}-W{:02}", w.year(), w.week())
            }
            Window::Month => format!("{}-{:02}", t.year(), t.month()),
            Window::All => "all".to_string(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Window::Week => "week",
            Window::Month => "month",
            Window::All => "all",
        }
    }

    fn ttl_s(self) -> Option<i64> {
        match self {
            Window::Week => Some(8 * 7 * 86_400),
            Window::Month => Some(13 * 31 * 86_400),
            Window::All => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Board {
    pub activity_type: ActivityType,
    pub window: Window,
    pub period: String,
    pub region: Option<String>,
}

impl Board {
    pub fn new(
        activity_type: ActivityType,
        window: Window,
        at: Millis,
        region: Option<&str>,
    ) -> Board {
        Board {
            activity_type,
            window,
            period: window.period(at),
            region: region.map(str::to_string),
        }
    }

    /// Every board an activity started at `at` counts on.
    pub fn all_for(activity_type: ActivityType, at: Millis, region: Option<&str>) -> Vec<Board> {
        let mut boards = Vec::new();
        for window in [Window::Week, Window::Month, Window::All] {
            boards.push(Board::new(activity_type, window, at, None));
            if region.is_some() {
                boards.push(Board::new(activity_type, window, at, region));
            }
        }
        boards
    }

    pub fn name(&self) -> String {
        let kind = serde_json::to_value(self.activity_type)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        match &self.region {
            Some(r) => format!("{kind}:{}:{}:{r}", self.window.name(), self.period),
            None => format!("{kind}:{}:{}", self.window.name(), self.period),
        }
    }
}

#[async_trait]
pub trait Leaderboard: Send + Sync + 'static {
    /// Adds `delta_m` (may be negative) to the athlete on every board.
    async fn add(&self, boards: &[Board], athlete: Uuid, delta_m: f64) -> StoreResult<()>;
    /// The best `limit` athletes, highest distance first.
    async fn top(&self, board: &Board, limit: usize) -> StoreResult<Vec<(Uuid, f64)>>;
    /// The athlete's 1-based rank and distance, if on the board.
    async fn rank(&self, board: &Board, athlete: Uuid) -> StoreResult<Option<(usize, f64)>>;
}

#[derive(Default)]
pub struct MemoryLeaderboard {
    boards: DashMap<String, HashMap<Uuid, f64>>,
}

fn ordered(board: &HashMap<Uuid, f64>) -> Vec<(Uuid, f64)> {
    let mut all: Vec<(Uuid, f64)> = board.iter().map(|(k, v)| (*k, *v)).collect();
    // Highest first; ties by id descending, as Redis's ZREVRANGE orders.
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
    all
}

#[async_trait]
impl Leaderboard for MemoryLeaderboard {
    async fn add(&self, boards: &[Board], athlete: Uuid, delta_m: f64) -> StoreResult<()> {
        for board in boards {
            *self
                .boards
                .entry(board.name())
                .or_default()
                .entry(athlete)
                .or_default() += delta_m;
        }
        Ok(())
    }

    async fn top(&self, board: &Board, limit: usize) -> StoreResult<Vec<(Uuid, f64)>> {
        Ok(self
            .boards
            .get(&board.name())
            .map_or_else(Vec::new, |b| ordered(&b).into_iter().take(limit).collect()))
    }

    async fn rank(&self, board: &Board, athlete: Uuid) -> StoreResult<Option<(usize, f64)>> {
        Ok(self.boards.get(&board.name()).and_then(|b| {
            ordered(&b)
                .iter()
                .position(|(id, _)| *id == athlete)
                .map(|i| (i + 1, b[&athlete]))
        }))
    }
}

#[derive(Clone)]
pub struct RedisLeaderboard {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisLeaderboard {
    pub fn new(conn: ConnectionManager, prefix: &str) -> RedisLeaderboard {
        RedisLeaderboard {
            conn,
            prefix: prefix.to_string(),
        }
    }

    fn key(&self, board: &Board) -> String {
        format!("{}lb:{{{}}}", self.prefix, board.name())
    }
}

#[async_trait]
impl Leaderboard for RedisLeaderboard {
    async fn add(&self, boards: &[Board], athlete: Uuid, delta_m: f64) -> StoreResult<()> {
        let mut pipe = redis::pipe();
        for board in boards {
            let key = self.key(board);
            pipe.cmd("ZINCRBY")
                .arg(&key)
                .arg(delta_m)
                .arg(athlete.to_string())
                .ignore();
            if let Some(ttl) = board.window.ttl_s() {
                pipe.cmd("EXPIRE").arg(&key).arg(ttl).ignore();
            }
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    async fn top(&self, board: &Board, limit: usize) -> StoreResult<Vec<(Uuid, f64)>> {
        let mut conn = self.conn.clone();
        let raw: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
            .arg(self.key(board))
            .arg(0)
            .arg(limit.saturating_sub(1))
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(id, m)| Some((id.parse().ok()?, m)))
            .collect())
    }

    async fn rank(&self, board: &Board, athlete: Uuid) -> StoreResult<Option<(usize, f64)>> {
        let mut conn = self.conn.clone();
        let (rank, score): (Option<usize>, Option<f64>) = redis::pipe()
            .cmd("ZREVRANK")
            .arg(self.key(board))
            .arg(athlete.to_string())
            .cmd("ZSCORE")
            .arg(self.key(board))
            .arg(athlete.to_string())
            .query_async(&mut conn)
            .await?;
        Ok(rank.zip(score).map(|(r, s)| (r + 1, s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_follow_iso_weeks_and_months() {
        // 2026-11-23 is a Monday in ISO week 48.
        let at = 1_795_392_000_000;
        assert_eq!(Window::Week.period(at), "2026-W48");
        assert_eq!(Window::Month.period(at), "2026-11");
        let boards = Board::all_for(ActivityType::Run, at, Some("DE-BE"));
        assert_eq!(boards.len(), 6);
        assert_eq!(boards[1].name(), "RUN:week:2026-W48:DE-BE");
    }
}
