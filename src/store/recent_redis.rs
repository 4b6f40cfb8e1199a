//! `RecentStore` on Redis: one capped stream per live activity.
//!
//! Keys (the `{…}` hash tag keeps an activity's keys on one Redis Cluster
//! slot; `prefix` defaults to `tc:` and lets tests share a server):
//!
//! | key | type | contents | TTL |
//! | --- | --- | --- | --- |
//! | `<prefix>recent:{<activity_id>}` | stream | one field `i`: a `RecentItem`, compact (`recent_codec`: points and statistics in binary, the rest JSON) | `RECENT_TTL_MS` after the last append |
//! | `<prefix>rstats:{<activity_id>}` | string | `<stream id> <item>`: the newest statistics and the entry they follow | as the stream |
//!
//! Stream ids are Redis's own `<ms>-<seq>` (the server's clock), which are
//! exactly our `StreamCursor`s: every node releases the same entry at the
//! same moment. `append` is one script (`APPEND_SCRIPT`): an `XADD … MINID ~
//! <now - 20 s>` per point or state change (`SHARED_WINDOW_MS`: the feeds
//! keep their own 30 s), an `XTRIM MAXLEN ~ RECENT_CAP` as a hard bound and
//! a `PEXPIRE`, so an ingest request costs one round trip and a steady
//! stream keeps about 20 s of entries.
//!
//! Statistics are kept once per activity, not once per post (#13: they
//! were half of every stream's entries, and Redis memory is per entry): the
//! statistics that end an append go to the `rstats` key with the id of the
//! entry they follow, `<ms>-<seq>`, and the script moves the stream's last
//! id to `<ms>-<seq+1>` (`XSETID`), so that id is never given to an entry
//! and is the statistics' own cursor. `since` reads both in one round trip
//! and puts the statistics in their place. Older statistics are gone: a
//! reader gets the newest statistics after its cursor, never an older one
//! (which is all playback keeps), and a feed that pulls as posts arrive
//! sees each one. An append of statistics alone (nothing to follow) is a
//! stream entry, as every item was before.
//!
//! Availability: the connection manager connects lazily and reconnects on
//! its own; every call has a short response timeout, so when Redis is down
//! ingest is delayed by at most that timeout and then carries on (the
//! tracker records what it could not publish and back-fills it later).

use async_trait::async_trait;
use uuid::Uuid;

use super::recent::{
    RECENT_CAP, RECENT_TTL_MS, RecentEntry, RecentItem, RecentStore, SHARED_WINDOW_MS, StreamCursor,
};
use super::{StoreError, StoreResult, recent_codec};
use crate::clock::Clock;
use crate::domain::time::Millis;

pub use super::redis_conn::REDIS_TIMEOUT;
use super::redis_conn::RedisConn;

/// `append`: KEYS stream, statistics; ARGV min id, cap, TTL ms, the
/// encoded statistics (or empty), then the encoded entries.
static APPEND_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local id = false
for i = 5, #ARGV do
  id = redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[1], '*', 'i', ARGV[i])
end
if ARGV[4] ~= '' then
  if id then
    local ms, seq = string.match(id, '^(%d+)-(%d+)$')
    redis.call('XSETID', KEYS[1], ms .. '-' .. string.format('%d', tonumber(seq) + 1))
    redis.call('SET', KEYS[2], id .. ' ' .. ARGV[4], 'PX', ARGV[3])
  else
    redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[1], '*', 'i', ARGV[4])
  end
end
redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 0
",
    )
});

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

    fn stats_key(&self, activity: Uuid) -> String {
        format!("{}rstats:{{{activity}}}", self.prefix)
    }

    /// The `rstats` value: the statistics and their cursor (one past the
    /// entry they follow).
    fn stats_entry(value: &[u8]) -> StoreResult<RecentEntry> {
        let corrupt = |what: String| StoreError::corrupt("recent statistics", what);
        let space = value
            .iter()
            .position(|b| *b == b' ')
            .ok_or_else(|| corrupt("no stream id".into()))?;
        let id = std::str::from_utf8(&value[..space]).unwrap_or_default();
        let follows: StreamCursor = id
            .parse()
            .map_err(|_| corrupt(format!("stream id {id:?}")))?;
        let item = recent_codec::decode(&value[space + 1..]).map_err(corrupt)?;
        Ok(RecentEntry {
            cursor: StreamCursor {
                seq: follows
                    .seq
                    .checked_add(1)
                    .ok_or_else(|| corrupt(format!("stream id {id:?}")))?,
                ..follows
            },
            item,
        })
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
        // MINID trims by time (ids are arrival ms); the node's clock stands
        // in for Redis's, close enough for a 20 s window.
        let min_id = self.clock.now_ms() - SHARED_WINDOW_MS;
        let (stats, entries) = match items.split_last() {
            Some((last @ RecentItem::Stats(_), rest)) => (recent_codec::encode(last), rest),
            _ => (Vec::new(), items),
        };
        let mut script = APPEND_SCRIPT.key(self.key(activity));
        script
            .key(self.stats_key(activity))
            .arg(min_id)
            .arg(RECENT_CAP)
            .arg(RECENT_TTL_MS)
            .arg(stats);
        for item in entries {
            script.arg(recent_codec::encode(item));
        }
        let mut conn = self.conn.clone();
        script.invoke_async::<()>(&mut conn).await?;
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
        let (reply, stats): (StreamReply, Option<Vec<u8>>) = redis::pipe()
            .cmd("XRANGE")
            .arg(self.key(activity))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .cmd("GET")
            .arg(self.stats_key(activity))
            .query_async(&mut conn)
            .await?;
        let mut entries = Self::entries(reply)?;
        let Some(stats) = stats.map(|v| Self::stats_entry(&v)).transpose()? else {
            return Ok(entries);
        };
        // The statistics go right after the entry they follow, if the
        // reader is not past them and that entry is in this page or was
        // the reader's last. Not otherwise: a full page may stop before it,
        // or a post may have landed between the two reads, and moving the
        // reader's cursor past entries it has not seen would skip them
        // (the next read has the statistics then).
        let follows = StreamCursor {
            seq: stats.cursor.seq - 1,
            ..stats.cursor
        };
        let reached = entries.last().map(|e| e.cursor).max(after);
        if after.is_none_or(|a| a <= follows) && Some(follows) <= reached {
            let at = entries.partition_point(|e| e.cursor < stats.cursor);
            entries.insert(at, stats);
            entries.truncate(limit.max(1));
        }
        Ok(entries)
    }

    async fn latest_point(
        &self,
        activity: Uuid,
        until: Millis,
    ) -> StoreResult<Option<RecentEntry>> {
        let mut conn = self.conn.clone();
        // The stream holds points and state changes (statistics live in
        // `rstats`), so a point is among the newest few entries unless
        // many state changes followed it.
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
