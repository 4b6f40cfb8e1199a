//! trailcast: a live-tracking server.
//!
//! `run` builds the whole server from a `Config`, a bound listener and a
//! shutdown future; `main` and every integration test call it, so tests run
//! exactly what production runs.
//!
//! Tasks and how they stop:
//! - the HTTP server (axum), which on shutdown stops accepting and lets
//!   in-flight requests finish (they wait for their points to be durable);
//! - the write-behind writer (`ingest::batcher`), told to stop once the HTTP
//!   server is done; it flushes everything queued and exits;
//! - the sweeper, which evicts idle hot state and expired recent positions
//!   once a minute, and every second while something is missing back-fills
//!   the recent store and adds leaderboard differences owed after an
//!   outage; it stops with the shutdown signal.
//!
//! Only then is the store closed (its journal synced).

pub mod config;
pub mod domain;
pub mod http;
pub mod ingest;
pub mod live;
pub mod store;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use config::Config;
use domain::time::now_ms;
use http::ApiContext;
use ingest::Tracker;
use ingest::batcher::{BatcherConfig, WriteBehind};
use store::embedded::EmbeddedStore;
use store::leaderboard::{Leaderboard, MemoryLeaderboard, RedisLeaderboard};
use store::recent_memory::MemoryRecentStore;
use store::recent_redis::RedisRecentStore;
use store::registry::{LiveRegistry, MemoryRegistry, RedisRegistry};
use store::scylla::ScyllaStore;
use store::{Persistence, RecentStore};

const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How often the recent store is retried for activities it missed.
const BACKFILL_EVERY: Duration = Duration::from_secs(1);
/// Kernel send buffer per connection (Linux doubles it). Fixed rather than
/// auto-tuned (up to 4 MiB) so that a watcher that stops reading pins a
/// known, small amount of kernel memory; see `http::live`.
pub const SOCKET_SEND_BUFFER: usize = 64 * 1024;

pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (store, embedded) = open_persistence(&config).await?;
    let recent_memory = Arc::new(MemoryRecentStore::new());
    type Shared = (
        Arc<dyn RecentStore>,
        Arc<dyn Leaderboard>,
        Arc<dyn LiveRegistry>,
    );
    let (recent, leaderboard, registry): Shared = match &config.redis_url {
        Some(url) => {
            let redis =
                RedisRecentStore::new(url, &config.redis_prefix).context("the Redis URL")?;
            let board = RedisLeaderboard::new(redis.connection(), &config.redis_prefix);
            let registry = RedisRegistry::new(redis.connection(), &config.redis_prefix);
            (Arc::new(redis), Arc::new(board), Arc::new(registry))
        }
        None => (
            recent_memory.clone(),
            Arc::new(MemoryLeaderboard::default()),
            Arc::new(MemoryRegistry::default()),
        ),
    };

    // Two signals: `closing` fires when shutdown starts (WebSockets, feeds
    // and the sweeper stop); `drain` fires once the HTTP server has finished
    // its in-flight requests, which still need the write-behind queue.
    let (closing_tx, closing_rx) = watch::channel(false);
    let (drain_tx, drain_rx) = watch::channel(false);
    let (batcher, writer) = WriteBehind::start(
        store.points.clone(),
        BatcherConfig {
            queue_points: config.queue_points,
            max_batch_points: config.max_batch_points,
        },
        drain_rx,
    );
    let tracker = Arc::new(Tracker::new(
        store.clone(),
        recent.clone(),
        batcher.clone(),
        leaderboard.clone(),
        registry.clone(),
    ));
    let limiter = Arc::new(http::ratelimit::RateLimiter::new(
        config.rate_limit,
        config.rate_burst,
    ));
    let sweeper = tokio::spawn(sweep(
        tracker.clone(),
        recent_memory,
        limiter.clone(),
        closing_rx.clone(),
    ));

    let ctx = ApiContext {
        store,
        recent: recent.clone(),
        tracker,
        batcher,
        metrics: telemetry::metrics_handle(),
        live: live::LiveHub::new(recent.clone(), closing_rx.clone()),
        limiter: limiter.clone(),
        leaderboard,
        registry,
        shutdown: closing_rx,
    };
    let app = http::router(ctx);
    tracing::info!(addr = %listener.local_addr()?, "trailcast listening");
    let http_stop = {
        let closing_tx = closing_tx.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections");
            let _ = closing_tx.send(true);
        }
    };
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
        let _ = socket2::SockRef::from(&*tcp).set_send_buffer_size(SOCKET_SEND_BUFFER);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(http_stop)
        .await?;

    let _ = closing_tx.send(true);
    let _ = drain_tx.send(true);
    writer.await.context("write-behind writer panicked")?;
    sweeper.await.context("sweeper panicked")?;
    if let Some(embedded) = embedded {
        embedded.close()?;
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// Scylla when `--scylla-nodes` is set, else the embedded store (returned
/// too, so that shutdown can close it).
async fn open_persistence(config: &Config) -> anyhow::Result<(Persistence, Option<EmbeddedStore>)> {
    let scylla = &config.scylla;
    if !scylla.nodes.is_empty() {
        let session = store::scylla::connect(scylla, true).await?;
        if config.scylla_migrate {
            store::scylla::migrate(&session, &scylla.keyspace, &scylla.replication).await?;
        }
        let db =
            Arc::new(ScyllaStore::open(session, &scylla.keyspace, scylla.max_in_flight).await?);
        tracing::info!(nodes = %scylla.nodes.join(","), keyspace = %scylla.keyspace, "persistence: ScyllaDB");
        let store = Persistence {
            users: db.clone(),
            activities: db.clone(),
            points: db,
        };
        return Ok((store, None));
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let embedded = EmbeddedStore::open(&config.data_dir)
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    let store = Persistence {
        users: Arc::new(embedded.clone()),
        activities: Arc::new(embedded.clone()),
        points: Arc::new(embedded.clone()),
    };
    Ok((store, Some(embedded)))
}

/// Resolves once the shutdown flag is set (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn sweep(
    tracker: Arc<Tracker>,
    recent: Arc<MemoryRecentStore>,
    limiter: Arc<http::ratelimit::RateLimiter>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    let mut retry = tokio::time::interval(BACKFILL_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = now_ms();
                tracker.sweep(now);
                limiter.sweep();
                recent.expire_idle(now);
            }
            _ = retry.tick() => {
                if tracker.unpublished_len() > 0 {
                    let caught_up = tracker.backfill().await;
                    if caught_up > 0 {
                        tracing::info!(activities = caught_up, "recent positions back-filled");
                    }
                }
                if tracker.owed_len() > 0 {
                    let settled = tracker.settle_leaderboards().await;
                    if settled > 0 {
                        tracing::info!(activities = settled, "leaderboard differences added");
                    }
                }
            }
            _ = stopped(&mut stop) => return,
        }
    }
}
