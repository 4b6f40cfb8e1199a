//! `RecentStore` on Redis: one capped stream per live activity.
//!
//! Keys (the `{…}` hash tag keeps an activity's keys on one Redis Cluster
//! slot; `prefix` defaults to `tc:` and lets tests share a server):
//!
//! | key | type | contents | TTL |
//! | --- | --- | --- | --- |
//! | `<prefix>recent:{<activity_id>}` | stream | one field `i`: a `RecentItem`, compact (`recent_codec`: points and statistics in binary, the rest JSON) | `RECENT_TTL_MS` after the last append |
//!
//! Stream ids are Redis's own `<ms>-<seq>` (the server's clock), which are
//! exactly our `StreamCursor`s: every node releases the same entry at the
//! same moment. `append` is one pipeline (`XADD … MINID ~ <now - 30 s>` per
//! item, an `XTRIM MAXLEN ~ RECENT_CAP` as a hard bound and a `PEXPIRE`), so
//! an ingest request costs one round trip and a steady stream keeps about
//! 30 s of entries.
//!
//! Availability: the connection manager connects lazily and reconnects on
//! its own; every call has a short response timeout, so when Redis is down
//! ingest is delayed by at most that timeout and then carries on (the
//! tracker records what it could not publish and back-fills it later).

use async_trait::async_trait;
use uuid::Uuid;

use super::recent::{
    RECENT_CAP, RECENT_TTL_MS, RECENT_WINDOW_MS, RecentEntry, RecentItem, RecentStore, StreamCursor,
};
use super::{StoreError, StoreResult, recent_codec};
use crate::clock::Clock;
use crate::domain::time::Millis;

pub use super::redis_conn::REDIS_TIMEOUT;
use super::redis_conn::RedisConn;

#[derive(Clone)]
pub struct RedisRecentStore {
    conn: RedisConn,
    prefix: String,
    clock: Clock,
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError::backend("redis", e)
    }
}

/// Raw XRANGE reply: entries of `[id, [field, value, ...]]`.
type StreamReply = Vec<(String, Vec<Vec<u8>>)>;

impl RedisRecentStore {
    /// Does not connect: the first command does, so a node starts (and
    /// ingests) while Redis is down.
    pub fn new(url: &str, prefix: &str) -> StoreResult<RedisRecentStore> {
        Ok(RedisRecentStore::on(RedisConn::single(url)?, prefix))
    }

    /// On a Redis Cluster reached through `nodes` (`host:port`).
    pub fn cluster(nodes: &[String], prefix: &str) -> StoreResult<RedisRecentStore> {
        Ok(RedisRecentStore::on(RedisConn::cluster(nodes)?, prefix))
    }

    fn on(conn: RedisConn, prefix: &str) -> RedisRecentStore {
        RedisRecentStore {
            conn,
            prefix: prefix.to_string(),
            clock: Clock::System,
        }
    }

    /// Reads the time from `clock` (the server's) when trimming by time.
    pub fn with_clock(self, clock: Clock) -> RedisRecentStore {
        RedisRecentStore { clock, ..self }
    }

    /// The shared connection, for other Redis-backed stores.
    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    fn key(&self, activity: Uuid) -> String {
        format!("{}recent:{{{activity}}}", self.prefix)
    }

    fn entries(reply: StreamReply) -> StoreResult<Vec<RecentEntry>> {
        reply
            .into_iter()
            .map(|(id, fields)| {
                let cursor: StreamCursor = id
                    .parse()
                    .map_err(|_| StoreError::corrupt("recent stream", format!("stream id {id}")))?;
                let bytes = fields
                    .chunks(2)
                    .find(|kv| kv[0] == b"i")
                    .and_then(|kv| kv.get(1))
                    .ok_or_else(|| {
                        StoreError::corrupt("recent stream", format!("entry {id} has no item"))
                    })?;
                let item = recent_codec::decode(bytes).map_err(|e| {
                    StoreError::corrupt("recent stream", format!("entry {id}: {e}"))
                })?;
                Ok(RecentEntry { cursor, item })
            })
            .collect()
    }
}

#[async_trait]
impl RecentStore for RedisRecentStore {
    async fn append(&self, activity: Uuid, items: &[RecentItem]) -> StoreResult<()> {
        let key = self.key(activity);
        // MINID trims by time (ids are arrival ms); the node's clock stands
        // in for Redis's, close enough for a 30 s window.
        let min_id = self.clock.now_ms() - RECENT_WINDOW_MS;
        let mut pipe = redis::pipe();
        for item in items {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MINID")
                .arg("~")
                .arg(min_id)
                .arg("*")
                .arg("i")
                .arg(recent_codec::encode(item))
                .ignore();
        }
        pipe.cmd("XTRIM")
            .arg(&key)
            .arg("MAXLEN")
            .arg("~")
            .arg(RECENT_CAP)
            .ignore();
        pipe.cmd("PEXPIRE").arg(&key).arg(RECENT_TTL_MS).ignore();
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    async fn since(
        &self,
        activity: Uuid,
        after: Option<StreamCursor>,
        limit: usize,
    ) -> StoreResult<Vec<RecentEntry>> {
        let start = after.map_or_else(|| "-".to_string(), |c| format!("({c}"));
        let mut conn = self.conn.clone();
        let reply: StreamReply = redis::cmd("XRANGE")
            .arg(self.key(activity))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        Self::entries(reply)
    }

    async fn latest_point(
        &self,
        activity: Uuid,
        until: Millis,
    ) -> StoreResult<Option<RecentEntry>> {
        let mut conn = self.conn.clone();
        // Each points request ends with one stats entry, so a point is
        // among the newest few entries unless only state changes followed.
        let reply: StreamReply = redis::cmd("XREVRANGE")
            .arg(self.key(activity))
            .arg(until.max(0))
            .arg("-")
            .arg("COUNT")
            .arg(32)
            .query_async(&mut conn)
            .await?;
        Ok(Self::entries(reply)?
            .into_iter()
            .find(|e| matches!(e.item, RecentItem::Point(_))))
    }

    async fn health(&self) -> StoreResult<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        match self.conn.is_cluster() {
            true => "redis-cluster",
            false => "redis",
        }
    }
}
