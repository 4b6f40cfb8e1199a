//! Telling the other nodes what this node changed, so that their copies of
//! it need no periodic re-read from the store.
//!
//! A node keeps copies of records other nodes may change: the hot entry of
//! an activity it tracks (`ingest::hot`), the audience rules and privacy
//! zones of activities watched through it (`http::privacy`). Without word
//! from the other nodes it re-reads them every few seconds (`RECHECK_MS`,
//! `RULES_TTL_MS`), and at 10 M live activities those re-reads were most of
//! the Scylla cluster's reads (deploy/CAPACITY.md), though they almost
//! never find a change: the load balancer sends an activity's requests to
//! the node tracking it.
//!
//! With Redis, each node publishes what it changed on one pub/sub channel
//! (`<prefix>changes`; on a Redis Cluster, `PUBLISH` reaches every node's
//! subscribers), and every node listens. While it listens, a node keeps its
//! copies `TRUSTED_TTL_MS` or `TRUSTED_RECHECK_MS` (a safety net for a
//! message lost on the way) and drops a copy when a message names it. Pub/sub delivers at most once,
//! and only to connected subscribers, so:
//! - a node counts as listening only from its subscription's confirmation
//!   until the connection fails (a `PING` every `PING_EVERY` finds a
//!   silently dead one); meanwhile copies live their short TTLs again;
//! - every (re)subscription doubts every copy (`Heard::Reset`): what
//!   changed while it was away is read again;
//! - a publish that fails is retried for a few seconds; one that still
//!   fails is counted (`trailcast_changes_lost_total`) and left to the
//!   safety net.
//!
//! The embedded store cannot be shared, so a node on it is alone: nobody
//! else changes anything, and copies live as long as while listening. A node on
//! ScyllaDB without Redis hears nothing and keeps the short TTLs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use uuid::Uuid;

use super::redis_conn::{REDIS_TIMEOUT, RedisConn};
use crate::domain::time::Millis;

/// How long a copy of what watchers may see (an activity's audience
/// rules, an athlete's zones) stays good while every change reaches this
/// node: the safety net for a lost message.
pub const TRUSTED_TTL_MS: Millis = 60_000;
/// The same for the tracking node's copy of an activity record, which
/// only decides what the next post does (5 minutes, like a token).
pub const TRUSTED_RECHECK_MS: Millis = 5 * 60_000;
/// How often the subscription is checked for a silently dead connection.
pub const PING_EVERY: Duration = Duration::from_secs(5);
/// Attempts to publish one change before it is given up.
const PUBLISH_ATTEMPTS: u32 = 5;

/// Something a node changed that other nodes may hold a copy of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// An activity's record: state, settings, audience, summary.
    Activity(Uuid),
    /// An athlete's privacy zones.
    Athlete(Uuid),
    /// A share link, revoked.
    Share(Uuid),
}

/// What the listener hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// Another node changed this.
    Change(Change),
    /// (Re)subscribed: anything may have changed meanwhile.
    Reset,
}

impl Change {
    /// `<node> <kind> <id>`: the sending node, so it can skip its own.
    fn encode(self, node: Uuid) -> String {
        let (kind, id) = match self {
            Change::Activity(id) => ('a', id),
            Change::Athlete(id) => ('u', id),
            Change::Share(id) => ('s', id),
        };
        format!("{} {kind} {}", node.simple(), id.simple())
    }

    fn decode(text: &str) -> Option<(Uuid, Change)> {
        let mut parts = text.split(' ');
        let node = Uuid::try_parse(parts.next()?).ok()?;
        let kind = parts.next()?;
        let id = Uuid::try_parse(parts.next()?).ok()?;
        if parts.next().is_some() {
            return None;
        }
        let change = match kind {
            "a" => Change::Activity(id),
            "u" => Change::Athlete(id),
            "s" => Change::Share(id),
            _ => return None,
        };
        Some((node, change))
    }
}

enum Peers {
    /// No other node shares the store (the embedded one).
    None,
    /// Other nodes may share it, and nothing tells this one what they do.
    Unheard,
    /// Redis pub/sub: published through `conn`, heard by subscribing to
    /// the first of `urls` that answers.
    Redis {
        conn: RedisConn,
        urls: Vec<String>,
        channel: String,
    },
}

pub struct ChangeBus {
    node: Uuid,
    peers: Peers,
    listening: AtomicBool,
}

impl ChangeBus {
    /// A node on a store nobody else shares.
    pub fn alone() -> Arc<ChangeBus> {
        Self::with(Peers::None, true)
    }

    /// A node sharing its store with nodes it cannot hear.
    pub fn unheard() -> Arc<ChangeBus> {
        Self::with(Peers::Unheard, false)
    }

    /// Changes go through Redis: published with `conn`, heard through
    /// `urls` (one Redis, or any node of a cluster).
    pub fn redis(conn: RedisConn, urls: Vec<String>, prefix: &str) -> Arc<ChangeBus> {
        let channel = format!("{prefix}changes");
        Self::with(
            Peers::Redis {
                conn,
                urls,
                channel,
            },
            false,
        )
    }

    fn with(peers: Peers, listening: bool) -> Arc<ChangeBus> {
        Arc::new(ChangeBus {
            node: Uuid::new_v4(),
            peers,
            listening: AtomicBool::new(listening),
        })
    }

    /// Whether every change another node makes reaches this one now.
    pub fn trusted(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// How long a copy stays good: `short` unless every change reaches
    /// this node, `trusted` while it does.
    pub fn ttl(&self, short: Millis, trusted: Millis) -> Millis {
        match self.trusted() {
            true => trusted,
            false => short,
        }
    }

    /// What `/healthz` says of it.
    pub fn status(&self) -> &'static str {
        match (&self.peers, self.trusted()) {
            (Peers::None, _) => "alone",
            (Peers::Unheard, _) => "unheard",
            (Peers::Redis { .. }, true) => "listening",
            (Peers::Redis { .. }, false) => "connecting",
        }
    }

    /// Tells the other nodes, in the background: the change is stored
    /// already, and a lost message only makes a copy live to its TTL.
    pub fn announce(&self, change: Change) {
        let Peers::Redis { conn, channel, .. } = &self.peers else {
            return;
        };
        let (mut conn, channel) = (conn.clone(), channel.clone());
        let message = change.encode(self.node);
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(100);
            for attempt in 1..=PUBLISH_ATTEMPTS {
                let mut publish = redis::cmd("PUBLISH");
                publish.arg(&channel).arg(&message);
                let publish = publish.query_async::<redis::Value>(&mut conn);
                match tokio::time::timeout(REDIS_TIMEOUT, publish).await {
                    Ok(Ok(_)) => {
                        metrics::counter!("trailcast_changes_published_total").increment(1);
                        return;
                    }
                    Ok(Err(e)) if attempt == PUBLISH_ATTEMPTS => {
                        tracing::warn!(error = %e, "publishing a change failed")
                    }
                    _ => {}
                }
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            metrics::counter!("trailcast_changes_lost_total").increment(1);
        });
    }

    /// Hears the other nodes until `stop`: calls `heard` with every change
    /// another node announces, and with `Reset` at every (re)subscription.
    /// Returns at once when there is nothing to hear.
    pub async fn listen(&self, heard: impl Fn(Heard), mut stop: watch::Receiver<bool>) {
        let Peers::Redis { urls, channel, .. } = &self.peers else {
            return;
        };
        let mut backoff = Duration::from_millis(100);
        for url in urls.iter().cycle() {
            tokio::select! {
                _ = self.hear(url, channel, &heard) => {}
                _ = crate::stopped(&mut stop) => return,
            }
            self.listening.store(false, Ordering::Release);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = crate::stopped(&mut stop) => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One subscription, until its connection fails.
    async fn hear(&self, url: &str, channel: &str, heard: &impl Fn(Heard)) {
        let subscribed = async {
            let client = redis::Client::open(url)?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(REDIS_TIMEOUT * 4, subscribed).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => {
                tracing::warn!(%url, error = %e, "subscribing to other nodes' changes");
                return;
            }
            Err(_) => {
                tracing::warn!(%url, "subscribing to other nodes' changes timed out");
                return;
            }
        };
        let (mut sink, mut messages) = pubsub.split();
        heard(Heard::Reset);
        self.listening.store(true, Ordering::Release);
        tracing::info!(%url, "listening to other nodes' changes");
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.reset();
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let text = String::from_utf8_lossy(message.get_payload_bytes());
                    match Change::decode(&text) {
                        Some((node, _)) if node == self.node => {}
                        Some((_, change)) => {
                            metrics::counter!("trailcast_changes_heard_total").increment(1);
                            heard(Heard::Change(change));
                        }
                        None => tracing::warn!(message = %text, "an unreadable change message"),
                    }
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(REDIS_TIMEOUT * 2, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        self.listening.store(false, Ordering::Release);
        tracing::warn!(%url, "stopped hearing other nodes' changes; reconnecting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_odd_ones_are_refused() {
        let node = Uuid::new_v4();
        for change in [
            Change::Activity(Uuid::now_v7()),
            Change::Athlete(Uuid::now_v7()),
            Change::Share(Uuid::now_v7()),
        ] {
            assert_eq!(Change::decode(&change.encode(node)), Some((node, change)));
        }
        let id = Uuid::nil().simple();
        for odd in [
            String::new(),
            format!("{} x {id}", node.simple()),
            format!("{} a", node.simple()),
            format!("{} a {id} more", node.simple()),
            format!("node a {id}"),
        ] {
            assert_eq!(Change::decode(&odd), None, "{odd:?}");
        }
    }

    #[tokio::test]
    async fn copies_live_long_only_while_every_change_is_heard() {
        assert_eq!(
            ChangeBus::alone().ttl(1_000, TRUSTED_TTL_MS),
            TRUSTED_TTL_MS
        );
        assert_eq!(ChangeBus::unheard().ttl(1_000, TRUSTED_TTL_MS), 1_000);
        let conn = RedisConn::single("redis://127.0.0.1:1").unwrap();
        let bus = ChangeBus::redis(conn, vec![], "t:");
        assert_eq!(
            (bus.ttl(1_000, TRUSTED_TTL_MS), bus.status()),
            (1_000, "connecting")
        );
        bus.listening.store(true, Ordering::Release);
        assert_eq!(
            (bus.ttl(1_000, TRUSTED_TTL_MS), bus.status()),
            (TRUSTED_TTL_MS, "listening")
        );
    }
}
