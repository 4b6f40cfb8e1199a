//! Who is watching a live activity now, shared by every node (the athlete's
//! "viewers" panel). In process by default; on Redis in a cluster.
//!
//! A watcher is present while it holds a lease: a WebSocket renews its
//! lease every `RENEW_EVERY_MS` and gives it back when it closes; a poller's
//! lease is renewed by each poll and lapses `POLL_LEASE_MS` after the last.
//! A node that dies takes its leases with it after at most `LEASE_MS`.
//!
//! Redis keys (the hash tag keeps one activity's audience on one slot):
//!
//! | key | type | contents | TTL |
//! | --- | --- | --- | --- |
//! | `<prefix>viewers:{<activity_id>}` | hash | field: `u:<user_id>:<conn>` or `s:<share_id>:<conn>`; value: lease end (ms) | `LEASE_MS` after the last renewal |
//!
//! Readers ignore lapsed fields; writers delete them when they renew.

use std::collections::HashMap;
use std::sync::Mutex;

use super::redis_conn::RedisConn;
use async_trait::async_trait;
use uuid::Uuid;

use super::{StoreError, StoreResult};
use crate::domain::time::Millis;

/// How long a WebSocket watcher's lease lasts without renewal.
pub const LEASE_MS: Millis = 30_000;
/// A WebSocket watcher renews its lease this often.
pub const RENEW_EVERY_MS: Millis = 10_000;
/// A poller counts as watching this long after its last poll.
pub const POLL_LEASE_MS: Millis = 20_000;

/// One watcher: a signed-in user or a share link's holder, and which of
/// their connections (a user may watch from two devices).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Watcher {
    pub who: Who,
    pub connection: Uuid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Who {
    User(Uuid),
    Share(Uuid),
}

impl Watcher {
    fn field(&self) -> String {
        match self.who {
            Who::User(id) => format!("u:{id}:{}", self.connection),
            Who::Share(id) => format!("s:{id}:{}", self.connection),
        }
    }

    fn parse(field: &str) -> Option<Watcher> {
        let mut parts = field.splitn(3, ':');
        let kind = parts.next()?;
        let id = parts.next()?.parse().ok()?;
        let connection = parts.next()?.parse().ok()?;
        let who = match kind {
            "u" => Who::User(id),
            "s" => Who::Share(id),
            _ => return None,
        };
        Some(Watcher { who, connection })
    }
}

#[async_trait]
pub trait Audience: Send + Sync + 'static {
    /// Takes or renews `watcher`'s lease on `activity` until `until`.
    async fn renew(&self, activity: Uuid, watcher: Watcher, until: Millis) -> StoreResult<()>;
    /// Gives the lease back (the connection closed).
    async fn leave(&self, activity: Uuid, watcher: Watcher) -> StoreResult<()>;
    /// Every watcher holding a lease at `now`.
    async fn watchers(&self, activity: Uuid, now: Millis) -> StoreResult<Vec<Watcher>>;
}

/// The single-node audience.
#[derive(Default)]
pub struct MemoryAudience {
    leases: Mutex<HashMap<Uuid, HashMap<Watcher, Millis>>>,
}

#[async_trait]
impl Audience for MemoryAudience {
    async fn renew(&self, activity: Uuid, watcher: Watcher, until: Millis) -> StoreResult<()> {
        let mut leases = self.leases.lock().expect("audience lock");
        let now = until - LEASE_MS.max(POLL_LEASE_MS);
        let held = leases.entry(activity).or_default();
        held.retain(|_, end| *end >= now);
        held.insert(watcher, until);
        Ok(())
    }

    async fn leave(&self, activity: Uuid, watcher: Watcher) -> StoreResult<()> {
        let mut leases = self.leases.lock().expect("audience lock");
        if let Some(held) = leases.get_mut(&activity) {
            held.remove(&watcher);
            if held.is_empty() {
                leases.remove(&activity);
            }
        }
        Ok(())
    }

    async fn watchers(&self, activity: Uuid, now: Millis) -> StoreResult<Vec<Watcher>> {
        let leases = self.leases.lock().expect("audience lock");
        Ok(leases.get(&activity).map_or_else(Vec::new, |held| {
            held.iter()
                .filter(|(_, end)| **end >= now)
                .map(|(w, _)| *w)
                .collect()
        }))
    }
}

pub struct RedisAudience {
    conn: RedisConn,
    prefix: String,
}

impl RedisAudience {
    /// Shares the recent store's connection (`RedisRecentStore::connection`).
    pub fn new(conn: RedisConn, prefix: &str) -> RedisAudience {
        RedisAudience {
            conn,
            prefix: prefix.to_string(),
        }
    }

    fn key(&self, activity: Uuid) -> String {
        format!("{}viewers:{{{activity}}}", self.prefix)
    }
}

#[async_trait]
impl Audience for RedisAudience {
    async fn renew(&self, activity: Uuid, watcher: Watcher, until: Millis) -> StoreResult<()> {
        let key = self.key(activity);
        let mut conn = self.conn.clone();
        redis::pipe()
            .cmd("HSET")
            .arg(&key)
            .arg(watcher.field())
            .arg(until)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(LEASE_MS.max(POLL_LEASE_MS))
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn leave(&self, activity: Uuid, watcher: Watcher) -> StoreResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("HDEL")
            .arg(self.key(activity))
            .arg(watcher.field())
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn watchers(&self, activity: Uuid, now: Millis) -> StoreResult<Vec<Watcher>> {
        let mut conn = self.conn.clone();
        let leases: HashMap<String, Millis> = redis::cmd("HGETALL")
            .arg(self.key(activity))
            .query_async(&mut conn)
            .await?;
        let mut out = Vec::new();
        let mut lapsed = Vec::new();
        for (field, end) in leases {
            let watcher = Watcher::parse(&field)
                .ok_or_else(|| StoreError::corrupt("audience", format!("field {field}")))?;
            if end >= now {
                out.push(watcher);
            } else {
                lapsed.push(field);
            }
        }
        if !lapsed.is_empty() {
            // Best effort: a lapsed lease is ignored by readers anyway.
            let _ = redis::cmd("HDEL")
                .arg(self.key(activity))
                .arg(lapsed)
                .query_async::<()>(&mut conn)
                .await;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watcher_survives_its_field_encoding() {
        for who in [Who::User(Uuid::now_v7()), Who::Share(Uuid::now_v7())] {
            let w = Watcher {
                who,
                connection: Uuid::now_v7(),
            };
            assert_eq!(Watcher::parse(&w.field()), Some(w));
        }
        assert_eq!(Watcher::parse("x:1:2"), None);
    }

    #[tokio::test]
    async fn leases_lapse_and_can_be_given_back() {
        let audience = MemoryAudience::default();
        let activity = Uuid::now_v7();
        let (a, b) = (
            Watcher {
                who: Who::User(Uuid::now_v7()),
                connection: Uuid::now_v7(),
            },
            Watcher {
                who: Who::Share(Uuid::now_v7()),
                connection: Uuid::now_v7(),
            },
        );
        audience.renew(activity, a, 1_000).await.unwrap();
        audience.renew(activity, b, 5_000).await.unwrap();
        assert_eq!(audience.watchers(activity, 900).await.unwrap().len(), 2);
        assert_eq!(audience.watchers(activity, 2_000).await.unwrap(), [b]);
        audience.leave(activity, b).await.unwrap();
        assert!(audience.watchers(activity, 2_000).await.unwrap().is_empty());
    }
}
