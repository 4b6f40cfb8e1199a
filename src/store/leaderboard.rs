//! Leaderboards (the Strava seed): total distance per athlete on boards per
//! activity type and window (this ISO week, this month, all time), and the
//! same per region for athletes who have one.
//!
//! A finished activity counts once, whatever is retried: the board keeps
//! what each activity contributes and `set` *replaces* that amount, adding
//! only the difference to the athlete's score, in one atomic step. So a
//! retried COMPLETE, a write that timed out after Redis applied it, or a
//! rebuild racing live updates all leave the same score; late points after
//! the finish change it by what they changed; a private activity sets 0.
//! The window an activity counts in is the one it *started* in.
//!
//! Boards are rebuilt from persistence when they are missing (a Redis
//! restarted empty, a restart of the in-process backend, a new period):
//! each (type, window, period) has a "built" mark; without it the read
//! path scans the stored activities once and `set`s every contribution
//! (see `http::leaderboards`). An athlete whose score falls to 0 leaves
//! the board.
//!
//! Backends: `MemoryLeaderboard` (in process, the default) and
//! `RedisLeaderboard`: per board a sorted set
//! `<prefix>lb:{<TYPE>:<window>:<period>[:<region>]}` (member = athlete id,
//! score = metres), a hash `<prefix>lbc:{…}` of contributions (field =
//! activity id, value = metres) and, for the board without region, the
//! mark `<prefix>lbb:{…}`; all three share one hash tag, so one Lua script
//! updates them on one Redis Cluster slot. Week boards expire after 8
//! weeks, month boards after 13 months; the contributions and the mark
//! expire with them.

use std::collections::HashMap;

use super::redis_conn::RedisConn;
use async_trait::async_trait;
use chrono::{DateTime, Datelike, Utc};
use dashmap::DashMap;
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

    /// The same board without its region: what the "built" mark covers.
    pub fn base(&self) -> Board {
        Board {
            region: None,
            ..self.clone()
        }
    }

    /// Whether an activity started at `at` counts on this board (ignoring
    /// the athlete's region).
    pub fn counts(&self, activity_type: ActivityType, at: Millis) -> bool {
        self.activity_type == activity_type && self.window.period(at) == self.period
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

/// Scores at or below this (metres) leave the board: an athlete whose
/// contributions were all taken back is not listed at 0 m.
pub const MIN_SCORE_M: f64 = 0.05;

#[async_trait]
pub trait Leaderboard: Send + Sync + 'static {
    /// Sets what `activity` contributes (metres, 0 to take it back) to the
    /// athlete on every board, adding the difference to the old amount.
    /// Idempotent: repeating it, also after a timeout, changes nothing.
    async fn set(
        &self,
        boards: &[Board],
        athlete: Uuid,
        activity: Uuid,
        amount_m: f64,
    ) -> StoreResult<()>;
    /// The best `limit` athletes, highest distance first.
    async fn top(&self, board: &Board, limit: usize) -> StoreResult<Vec<(Uuid, f64)>>;
    /// The athlete's 1-based rank and distance, if on the board.
    async fn rank(&self, board: &Board, athlete: Uuid) -> StoreResult<Option<(usize, f64)>>;
    /// Whether `board` (and every regional board of its type, window and
    /// period) holds what persistence holds: marked after a rebuild.
    async fn is_built(&self, board: &Board) -> StoreResult<bool>;
    async fn mark_built(&self, board: &Board) -> StoreResult<()>;
}

#[derive(Default)]
struct MemoryBoard {
    scores: HashMap<Uuid, f64>,
    contributions: HashMap<Uuid, f64>,
}

#[derive(Default)]
pub struct MemoryLeaderboard {
    boards: DashMap<String, MemoryBoard>,
    built: DashMap<String, ()>,
}

fn ordered(board: &HashMap<Uuid, f64>) -> Vec<(Uuid, f64)> {
    let mut all: Vec<(Uuid, f64)> = board.iter().map(|(k, v)| (*k, *v)).collect();
    // Highest first; ties by id descending, as Redis's ZREVRANGE orders.
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
    all
}

#[async_trait]
impl Leaderboard for MemoryLeaderboard {
    async fn set(
        &self,
        boards: &[Board],
        athlete: Uuid,
        activity: Uuid,
        amount_m: f64,
    ) -> StoreResult<()> {
        for board in boards {
            let mut board = self.boards.entry(board.name()).or_default();
            let prev = match amount_m == 0.0 {
                true => board.contributions.remove(&activity),
                false => board.contributions.insert(activity, amount_m),
            };
            let delta = amount_m - prev.unwrap_or(0.0);
            if delta == 0.0 {
                continue;
            }
            let score = board.scores.entry(athlete).or_default();
            *score += delta;
            if *score <= MIN_SCORE_M {
                board.scores.remove(&athlete);
            }
        }
        Ok(())
    }

    async fn top(&self, board: &Board, limit: usize) -> StoreResult<Vec<(Uuid, f64)>> {
        Ok(self.boards.get(&board.name()).map_or_else(Vec::new, |b| {
            ordered(&b.scores).into_iter().take(limit).collect()
        }))
    }

    async fn rank(&self, board: &Board, athlete: Uuid) -> StoreResult<Option<(usize, f64)>> {
        Ok(self.boards.get(&board.name()).and_then(|b| {
            ordered(&b.scores)
                .iter()
                .position(|(id, _)| *id == athlete)
                .map(|i| (i + 1, b.scores[&athlete]))
        }))
    }

    async fn is_built(&self, board: &Board) -> StoreResult<bool> {
        Ok(self.built.contains_key(&board.base().name()))
    }

    async fn mark_built(&self, board: &Board) -> StoreResult<()> {
        self.built.insert(board.base().name(), ());
        Ok(())
    }
}

/// Replaces one activity's contribution on one board and moves the
/// athlete's score by the difference, atomically; drops a score that falls
/// to `MIN_SCORE_M` or below. KEYS: board, contributions. ARGV: athlete,
/// activity, amount (metres), TTL in seconds (0: none).
const SET_SCRIPT: &str = r#"
local prev = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
local amount = tonumber(ARGV[3])
if amount == 0 then
  redis.call('HDEL', KEYS[2], ARGV[2])
else
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
end
if amount ~= prev then
  local score = tonumber(redis.call('ZINCRBY', KEYS[1], amount - prev, ARGV[1]))
  if score <= tonumber(ARGV[5]) then
    redis.call('ZREM', KEYS[1], ARGV[1])
  end
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
return 1
"#;

#[derive(Clone)]
pub struct RedisLeaderboard {
    conn: RedisConn,
    prefix: String,
}

impl RedisLeaderboard {
    pub fn new(conn: RedisConn, prefix: &str) -> RedisLeaderboard {
        RedisLeaderboard {
            conn,
            prefix: prefix.to_string(),
        }
    }

    fn key(&self, board: &Board) -> String {
        format!("{}lb:{{{}}}", self.prefix, board.name())
    }

    fn contributions_key(&self, board: &Board) -> String {
        format!("{}lbc:{{{}}}", self.prefix, board.name())
    }

    fn built_key(&self, board: &Board) -> String {
        format!("{}lbb:{{{}}}", self.prefix, board.base().name())
    }
}

#[async_trait]
impl Leaderboard for RedisLeaderboard {
    async fn set(
        &self,
        boards: &[Board],
        athlete: Uuid,
        activity: Uuid,
        amount_m: f64,
    ) -> StoreResult<()> {
        // One script per board: each board is its own slot on a cluster
        // (one round trip for all of them on a single Redis).
        let pipes = boards
            .iter()
            .map(|board| {
                let mut pipe = redis::pipe();
                pipe.cmd("EVAL")
                    .arg(SET_SCRIPT)
                    .arg(2)
                    .arg(self.key(board))
                    .arg(self.contributions_key(board))
                    .arg(athlete.to_string())
                    .arg(activity.to_string())
                    .arg(amount_m)
                    .arg(board.window.ttl_s().unwrap_or(0))
                    .arg(MIN_SCORE_M)
                    .ignore();
                pipe
            })
            .collect();
        self.conn.each::<()>(pipes).await?;
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

    async fn is_built(&self, board: &Board) -> StoreResult<bool> {
        let mut conn = self.conn.clone();
        let built: bool = redis::cmd("EXISTS")
            .arg(self.built_key(board))
            .query_async(&mut conn)
            .await?;
        Ok(built)
    }

    async fn mark_built(&self, board: &Board) -> StoreResult<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.built_key(board)).arg(1);
        if let Some(ttl) = board.window.ttl_s() {
            cmd.arg("EX").arg(ttl);
        }
        let mut conn = self.conn.clone();
        cmd.query_async::<()>(&mut conn).await?;
        Ok(())
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
