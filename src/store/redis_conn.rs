//! The connection every Redis-backed store shares: one Redis
//! (`--redis-url`, the connection manager) or a Redis Cluster
//! (`--redis-cluster-nodes`, the cluster client: slot map discovery,
//! MOVED/ASK redirects, reconnects, reads from primaries).
//!
//! Both connect lazily, so a node starts (and ingests) while Redis is
//! down, and both answer within `REDIS_TIMEOUT`. On a cluster a pipeline
//! must stay within one slot: every key an operation touches together
//! shares one hash tag (`{activity}`, `{athlete}`, `{board}`), and the
//! operations that span several (a leaderboard update over its boards, the
//! friends-live query over many athletes) go through `each`, which sends
//! one pipeline per slot in bounded parallel instead of one cross-slot
//! pipeline.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::Mutex;

/// How long any Redis call may take before it counts as failed.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// Pipelines in flight at once when an operation spans several slots.
const SLOTS_IN_FLIGHT: usize = 32;

#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(LazyCluster),
}

/// A cluster connection made on first use. The connection follows MOVED
/// and ASK itself; but when a primary dies it may keep a slot map that
/// still names the dead node (read before the replica was promoted), so a
/// connection-level failure drops it and the next call connects afresh,
/// reading the slot map anew.
#[derive(Clone)]
pub struct LazyCluster {
    client: Arc<ClusterClient>,
    conn: Arc<Mutex<Option<ClusterConnection>>>,
}

impl LazyCluster {
    async fn get(&self) -> RedisResult<ClusterConnection> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = tokio::time::timeout(REDIS_TIMEOUT * 4, self.client.get_async_connection())
            .await
            .map_err(|_| {
                redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "connecting to the Redis Cluster timed out",
                ))
            })??;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the connection after a failure that may come from a stale
    /// slot map.
    async fn failed(&self, e: &redis::RedisError) {
        if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_cluster_error() {
            self.conn.lock().await.take();
        }
    }
}

/// The URL of a cluster node given as `host:port` (or already a URL).
pub fn node_url(node: &str) -> String {
    match node.contains("://") {
        true => node.to_string(),
        false => format!("redis://{node}"),
    }
}

impl RedisConn {
    /// One Redis at `url`.
    pub fn single(url: &str) -> RedisResult<RedisConn> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(REDIS_TIMEOUT);
        Ok(RedisConn::Single(ConnectionManager::new_lazy_with_config(
            client, config,
        )?))
    }

    /// A Redis Cluster reached through any of `nodes` (`host:port`).
    pub fn cluster(nodes: &[String]) -> RedisResult<RedisConn> {
        let urls: Vec<String> = nodes.iter().map(|n| node_url(n)).collect();
        let client = ClusterClient::builder(urls)
            .connection_timeout(REDIS_TIMEOUT)
            .response_timeout(REDIS_TIMEOUT)
            .retries(2)
            .build()?;
        Ok(RedisConn::Cluster(LazyCluster {
            client: Arc::new(client),
            conn: Arc::new(Mutex::new(None)),
        }))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// Runs pipelines that each stay within one slot: merged into one
    /// round trip on a single Redis, one per slot in bounded parallel on a
    /// cluster. Returns each pipeline's replies, in order.
    pub async fn each<T: FromRedisValue + Send + 'static>(
        &self,
        pipes: Vec<Pipeline>,
    ) -> RedisResult<Vec<T>> {
        if pipes.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            RedisConn::Single(_) => {
                let mut merged = redis::pipe();
                for pipe in &pipes {
                    for cmd in pipe.cmd_iter() {
                        merged.add_command(cmd.clone());
                    }
                }
                let mut conn = self.clone();
                let flat: Vec<Value> = merged.query_async(&mut conn).await?;
                let mut flat = flat.into_iter();
                pipes
                    .iter()
                    .map(|pipe| {
                        let part: Vec<Value> = flat.by_ref().take(pipe.len()).collect();
                        T::from_redis_value(Value::Array(part)).map_err(Into::into)
                    })
                    .collect()
            }
            RedisConn::Cluster(_) => {
                futures_util::stream::iter(pipes)
                    .map(|pipe| {
                        let mut conn = self.clone();
                        async move { pipe.query_async::<T>(&mut conn).await }
                    })
                    .buffered(SLOTS_IN_FLIGHT)
                    .try_collect()
                    .await
            }
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_command(cmd),
            RedisConn::Cluster(lazy) => Box::pin(async move {
                let mut conn = lazy.get().await?;
                let reply = conn.req_packed_command(cmd).await;
                if let Err(e) = &reply {
                    lazy.failed(e).await;
                }
                reply
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(lazy) => Box::pin(async move {
                let mut conn = lazy.get().await?;
                let replies = conn.req_packed_commands(pipeline, offset, count).await;
                if let Err(e) = &replies {
                    lazy.failed(e).await;
                }
                replies
            }),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}
