//! The live registry: which activities are live now, by athlete, shared by
//! every node (`GET /v1/live` on any node lists what was started on any
//! other). In process by default; on Redis in a cluster.
//!
//! Redis keys (the hash tag keeps one athlete's registry on one slot):
//!
//! | key | type | contents | TTL |
//! | --- | --- | --- | --- |
//! | `<prefix>live:{<athlete_id>}` | sorted set | member: activity id; score: when it was last marked live (ms) | `REGISTRY_TTL_MS` after the last mark |
//!
//! The tracker marks an activity when it starts or resumes, and again at
//! most once a minute while points arrive (`REMARK_EVERY_MS`); it removes it
//! when the activity completes or is discarded. An activity abandoned
//! without finishing drops out `REGISTRY_TTL_MS` after its last mark:
//! readers ignore older members and writers trim them.

use std::collections::HashMap;
use std::sync::Mutex;

use super::redis_conn::RedisConn;
use async_trait::async_trait;
use uuid::Uuid;

use super::recent::RECENT_TTL_MS;
use super::{StoreError, StoreResult};
use crate::domain::time::Millis;
use crate::startup::Sweep;

/// How long a mark lasts: as long as the activity's recent stream.
pub const REGISTRY_TTL_MS: Millis = RECENT_TTL_MS;
/// A live activity receiving points is marked again this often.
pub const REMARK_EVERY_MS: Millis = 60_000;

#[async_trait]
pub trait LiveRegistry: Send + Sync + 'static {
    /// Marks the activity live as of `at`.
    async fn mark_live(&self, athlete: Uuid, activity: Uuid, at: Millis) -> StoreResult<()>;
    /// Removes the activity (finished or discarded).
    async fn mark_done(&self, athlete: Uuid, activity: Uuid) -> StoreResult<()>;
    /// The live activities of these athletes marked at or after `since`, as
    /// `(athlete, activity)`.
    async fn live_of(&self, athletes: &[Uuid], since: Millis) -> StoreResult<Vec<(Uuid, Uuid)>>;
}

/// The single-node registry: each athlete's marks in a small vector (an
/// athlete rarely has more than one live activity, and a map per athlete
/// cost ~140 bytes per live activity, #13). `sweep` drops marks older than
/// `REGISTRY_TTL_MS`, so abandoned activities do not stay for good.
#[derive(Default)]
pub struct MemoryRegistry {
    live: Mutex<HashMap<Uuid, Vec<(Uuid, Millis)>>>,
}

impl Sweep for MemoryRegistry {
    fn sweep(&self, now: Millis) {
        let mut live = self.live.lock().expect("registry lock");
        live.retain(|_, marks| {
            marks.retain(|(_, marked)| *marked >= now - REGISTRY_TTL_MS);
            !marks.is_empty()
        });
    }
}

#[async_trait]
impl LiveRegistry for MemoryRegistry {
    async fn mark_live(&self, athlete: Uuid, activity: Uuid, at: Millis) -> StoreResult<()> {
        let mut live = self.live.lock().expect("registry lock");
        let marks = live.entry(athlete).or_insert_with(|| Vec::with_capacity(1));
        marks.retain(|(id, marked)| *id != activity && *marked >= at - REGISTRY_TTL_MS);
        marks.push((activity, at));
        Ok(())
    }

    async fn mark_done(&self, athlete: Uuid, activity: Uuid) -> StoreResult<()> {
        let mut live = self.live.lock().expect("registry lock");
        if let Some(marks) = live.get_mut(&athlete) {
            marks.retain(|(id, _)| *id != activity);
            if marks.is_empty() {
                live.remove(&athlete);
            }
        }
        Ok(())
    }

    async fn live_of(&self, athletes: &[Uuid], since: Millis) -> StoreResult<Vec<(Uuid, Uuid)>> {
        let live = self.live.lock().expect("registry lock");
        Ok(athletes
            .iter()
            .filter_map(|a| live.get(a).map(|marks| (a, marks)))
            .flat_map(|(a, marks)| {
                marks
                    .iter()
                    .filter(move |(_, at)| *at >= since)
                    .map(move |(id, _)| (*a, *id))
            })
            .collect())
    }
}

pub struct RedisRegistry {
    conn: RedisConn,
    prefix: String,
}

impl RedisRegistry {
    /// Shares the recent store's connection (`RedisRecentStore::connection`).
    pub fn new(conn: RedisConn, prefix: &str) -> RedisRegistry {
        RedisRegistry {
            conn,
            prefix: prefix.to_string(),
        }
    }

    fn key(&self, athlete: Uuid) -> String {
        format!("{}live:{{{athlete}}}", self.prefix)
    }
}

#[async_trait]
impl LiveRegistry for RedisRegistry {
    async fn mark_live(&self, athlete: Uuid, activity: Uuid, at: Millis) -> StoreResult<()> {
        let key = self.key(athlete);
        let mut conn = self.conn.clone();
        redis::pipe()
            .cmd("ZADD")
            .arg(&key)
            .arg(at)
            .arg(activity.to_string())
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(format!("({}", at - REGISTRY_TTL_MS))
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(REGISTRY_TTL_MS)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn mark_done(&self, athlete: Uuid, activity: Uuid) -> StoreResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("ZREM")
            .arg(self.key(athlete))
            .arg(activity.to_string())
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn live_of(&self, athletes: &[Uuid], since: Millis) -> StoreResult<Vec<(Uuid, Uuid)>> {
        if athletes.is_empty() {
            return Ok(Vec::new());
        }
        // One round trip for all of them on a single Redis; on a cluster
        // one per athlete's slot, in bounded parallel.
        let pipes = athletes
            .iter()
            .map(|athlete| {
                let mut pipe = redis::pipe();
                pipe.cmd("ZRANGEBYSCORE")
                    .arg(self.key(*athlete))
                    .arg(since)
                    .arg("+inf");
                pipe
            })
            .collect();
        let replies: Vec<(Vec<String>,)> = self.conn.each(pipes).await?;
        let replies = replies.into_iter().map(|(ids,)| ids);
        let mut out = Vec::new();
        for (athlete, ids) in athletes.iter().zip(replies) {
            for id in ids {
                let id = id
                    .parse()
                    .map_err(|_| StoreError::corrupt("live registry", format!("member {id}")))?;
                out.push((*athlete, id));
            }
        }
        Ok(out)
    }
}
