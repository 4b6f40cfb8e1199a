//! Building a server from its configuration: which backends it runs on
//! (`Backends::open`), and the periodic housekeeping they need (`Sweep`).
//! `lib::run` only wires what this builds.

use std::sync::Arc;

use anyhow::Context;

use crate::clock::Clock;
use crate::config::Config;
use crate::domain::time::Millis;
use crate::store::audience::{Audience, MemoryAudience, RedisAudience};
use crate::store::changes::ChangeBus;
use crate::store::embedded::EmbeddedStore;
use crate::store::leaderboard::{Leaderboard, MemoryLeaderboard, RedisLeaderboard};
use crate::store::recent_memory::MemoryRecentStore;
use crate::store::recent_redis::RedisRecentStore;
use crate::store::registry::{LiveRegistry, MemoryRegistry, RedisRegistry};
use crate::store::scylla::ScyllaStore;
use crate::store::{Persistence, RecentStore};

/// Housekeeping a component needs now and then: dropping what has been idle
/// too long. The server's sweeper calls every registered one once a minute.
pub trait Sweep: Send + Sync {
    fn sweep(&self, now: Millis);
}

/// The storage a server runs on.
pub struct Backends {
    pub persistence: Persistence,
    pub recent: Arc<dyn RecentStore>,
    pub leaderboard: Arc<dyn Leaderboard>,
    pub registry: Arc<dyn LiveRegistry>,
    /// Who watches which live activity now.
    pub audience: Arc<dyn Audience>,
    /// How this node hears what other nodes sharing its store change.
    pub changes: Arc<ChangeBus>,
    /// In-process stores that need sweeping (only those in use).
    pub sweepers: Vec<Arc<dyn Sweep>>,
    /// The embedded store, closed (its journal synced) on shutdown.
    embedded: Option<EmbeddedStore>,
    /// The Scylla store, whose ingest log is packed on shutdown.
    scylla: Option<Arc<ScyllaStore>>,
}

impl Backends {
    /// Persistence: ScyllaDB when `--scylla-nodes` is set, else the embedded
    /// store in `--data-dir`. Recent positions, leaderboards and the live
    /// registry: Redis when `--redis-url` is set, a Redis Cluster when
    /// `--redis-cluster-nodes` is, else in process.
    pub async fn open(config: &Config, clock: Clock) -> anyhow::Result<Backends> {
        let (persistence, embedded, scylla) = open_persistence(config).await?;
        let mut sweepers: Vec<Arc<dyn Sweep>> = Vec::new();
        let redis = match (&config.redis_url, config.redis_cluster_nodes.is_empty()) {
            (Some(url), _) => {
                Some(RedisRecentStore::new(url, &config.redis_prefix).context("the Redis URL")?)
            }
            (None, false) => Some(
                RedisRecentStore::cluster(&config.redis_cluster_nodes, &config.redis_prefix)
                    .context("the Redis Cluster nodes")?,
            ),
            (None, true) => None,
        };
        // The embedded store is this node's alone; nodes sharing ScyllaDB
        // hear each other through Redis when they have one.
        let changes = match (&scylla, &redis) {
            (None, _) => ChangeBus::alone(),
            (Some(_), None) => ChangeBus::unheard(),
            (Some(_), Some(redis)) => {
                let urls = match &config.redis_url {
                    Some(url) => vec![url.clone()],
                    None => config
                        .redis_cluster_nodes
                        .iter()
                        .map(|n| crate::store::redis_conn::node_url(n))
                        .collect(),
                };
                ChangeBus::redis(redis.connection(), urls, &config.redis_prefix)
            }
        };
        match redis {
            Some(redis) => {
                let redis = redis.with_clock(clock);
                let prefix = &config.redis_prefix;
                Ok(Backends {
                    persistence,
                    leaderboard: Arc::new(RedisLeaderboard::new(redis.connection(), prefix)),
                    registry: Arc::new(RedisRegistry::new(redis.connection(), prefix)),
                    audience: Arc::new(RedisAudience::new(redis.connection(), prefix)),
                    changes,
                    recent: Arc::new(redis),
                    sweepers,
                    embedded,
                    scylla,
                })
            }
            None => {
                let recent = Arc::new(MemoryRecentStore::with_clock(clock));
                sweepers.push(recent.clone());
                let registry = Arc::new(MemoryRegistry::default());
                sweepers.push(registry.clone());
                Ok(Backends {
                    persistence,
                    recent,
                    leaderboard: Arc::new(MemoryLeaderboard::default()),
                    registry,
                    audience: Arc::new(MemoryAudience::default()),
                    changes,
                    sweepers,
                    embedded,
                    scylla,
                })
            }
        }
    }
    /// Packs the Scylla ingest log (a stopped node's log would otherwise
    /// wait two minutes for another node to pack it); called once the
    /// write-behind queue is flushed. A failure is logged, not fatal: the
    /// log stays readable and another node packs it.
    pub async fn flush(&self) {
        if let Some(scylla) = &self.scylla {
            match scylla.flush_log().await {
                Ok(buckets) => tracing::info!(buckets, "packed the ingest log"),
                Err(e) => tracing::warn!(error = %e, "packing the ingest log on shutdown"),
            }
        }
    }

    /// Closes what needs closing; called once every task using the
    /// backends has stopped.
    pub fn close(self) -> anyhow::Result<()> {
        if let Some(embedded) = self.embedded {
            embedded.close().context("closing the embedded store")?;
        }
        Ok(())
    }
}

type Opened = (Persistence, Option<EmbeddedStore>, Option<Arc<ScyllaStore>>);

async fn open_persistence(config: &Config) -> anyhow::Result<Opened> {
    let scylla = &config.scylla;
    if !scylla.nodes.is_empty() {
        let session = crate::store::scylla::connect(scylla, true).await?;
        if config.scylla_migrate {
            crate::store::scylla::migrate(&session, &scylla.keyspace, &scylla.replication).await?;
        }
        let db =
            Arc::new(ScyllaStore::open(session, &scylla.keyspace, scylla.max_in_flight).await?);
        tracing::info!(nodes = %scylla.nodes.join(","), keyspace = %scylla.keyspace, "persistence: ScyllaDB");
        let store = Persistence {
            users: db.clone(),
            activities: db.clone(),
            points: db.clone(),
            fields: db.clone(),
            courses: db.clone(),
            devices: db.clone(),
        };
        return Ok((store, None, Some(db)));
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let embedded = EmbeddedStore::open(&config.data_dir, config.min_free_disk_mb << 20)
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    let store = Persistence {
        users: Arc::new(embedded.clone()),
        activities: Arc::new(embedded.clone()),
        points: Arc::new(embedded.clone()),
        fields: Arc::new(embedded.clone()),
        courses: Arc::new(embedded.clone()),
        devices: Arc::new(embedded.clone()),
    };
    Ok((store, Some(embedded), None))
}
