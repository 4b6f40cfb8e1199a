//! trailcast: a live-tracking server.
//!
//! `run` builds the whole server from a `Config`, a bound listener and a
//! shutdown future; `main` and every integration test call it, so tests run
//! exactly what production runs. `startup` picks the backends; `run` wires
//! them to the write path, live playback and HTTP.
//!
//! Tasks and how they stop:
//! - the HTTP server (axum), which on shutdown stops accepting and lets
//!   in-flight requests finish (they wait for their points to be durable);
//! - the write-behind writer (`ingest::batcher`), told to stop once the HTTP
//!   server is done; it flushes everything queued and exits;
//! - the sweeper, which once a minute evicts idle state (hot activities,
//!   rate-limit buckets, in-process recent streams) and every second
//!   settles side effects owed after an outage (`ingest::outbox`); it stops
//!   with the shutdown signal.
//!
//! Only then are the backends closed (the embedded store's journal synced).

pub mod catalogue;
pub mod clock;
pub mod config;
pub mod domain;
pub mod formats;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod ingest;
pub mod live;
pub mod serve;
pub mod startup;
pub mod store;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use config::Config;
use http::ApiContext;
use ingest::Tracker;
use ingest::batcher::{BatcherConfig, WriteBehind};
use startup::{Backends, Sweep};

const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How often side effects owed after an outage are retried.
const SETTLE_EVERY: Duration = Duration::from_secs(1);
/// Kernel send buffer per connection (Linux doubles it). Fixed rather than
/// auto-tuned (up to 4 MiB) so that a watcher that stops reading pins a
/// known, small amount of kernel memory; see `http::live`.
pub const SOCKET_SEND_BUFFER: usize = 64 * 1024;

pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let clock = config.clock;
    let catalogue = catalogue::Catalogue::load(config.courses_dir.as_deref())
        .context("loading the course catalogue")?;
    tracing::info!(courses = catalogue.len(), "course catalogue loaded");
    let backends = Backends::open(&config, clock).await?;

    // Two signals: `closing` fires when shutdown starts (WebSockets, feeds
    // and the sweeper stop); `drain` fires once the HTTP server has finished
    // its in-flight requests, which still need the write-behind queue.
    let (closing_tx, closing_rx) = watch::channel(false);
    let (drain_tx, drain_rx) = watch::channel(false);
    let (batcher, writer) = WriteBehind::start(
        backends.persistence.points.clone(),
        BatcherConfig {
            queue_points: config.queue_points,
            max_batch_points: config.max_batch_points,
            max_flushes: config
                .max_flushes
                .unwrap_or(match config.scylla.nodes.is_empty() {
                    true => 1,
                    false => 4,
                }),
        },
        drain_rx,
    );
    let tracker = Arc::new(Tracker::new(
        backends.persistence.clone(),
        backends.recent.clone(),
        batcher.clone(),
        backends.leaderboard.clone(),
        backends.registry.clone(),
        backends.changes.clone(),
        clock,
    ));
    let devices = Arc::new(ingest::devices::AutoActivities::new(
        tracker.clone(),
        backends.persistence.clone(),
        clock,
        config.auto_finish_after,
    ));
    let finisher = tokio::spawn(finish_idle(devices.clone(), closing_rx.clone()));
    let limiter = Arc::new(http::ratelimit::RateLimiter::new(
        config.rate_limit,
        config.rate_burst,
    ));
    let signups = Arc::new(http::ratelimit::RateLimiter::new(
        config.signup_rate / 60.0,
        config.signup_burst,
    ));
    let mut sweepers = backends.sweepers.clone();
    sweepers.push(signups.clone());
    sweepers.push(tracker.clone());
    sweepers.push(limiter.clone());
    let rules = Arc::new(http::privacy::RulesCache::default());
    sweepers.push(rules.clone());
    let tokens = Arc::new(http::tokens::TokenCache::default());
    sweepers.push(tokens.clone());
    let sweeper = tokio::spawn(sweep(tracker.clone(), sweepers, clock, closing_rx.clone()));

    let ctx = ApiContext::new(http::ApiState {
        clock,
        store: backends.persistence.clone(),
        recent: backends.recent.clone(),
        tracker,
        batcher,
        metrics: telemetry::metrics_handle(),
        live: live::LiveHub::new(backends.recent.clone(), clock, closing_rx.clone()),
        limiter,
        tokens,
        signups,
        leaderboard: backends.leaderboard.clone(),
        boards: Arc::default(),
        registry: backends.registry.clone(),
        audience: backends.audience.clone(),
        rules,
        changes: backends.changes.clone(),
        courses: Arc::new(http::courses::Courses::new(catalogue)),
        devices,
        shutdown: closing_rx,
    });
    let listener_task = tokio::spawn(hear_other_nodes(ctx.clone()));
    let closing_rx_for_http = ctx.shutdown.clone();
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
    tokio::spawn(http_stop);
    let limits = serve::Limits {
        max_connections: config.max_connections,
        header_timeout: Duration::from_millis(config.header_timeout as u64),
        shutdown_grace: Duration::from_millis(config.shutdown_grace as u64),
    };
    serve::serve(listener, app, limits, closing_rx_for_http).await?;

    let _ = closing_tx.send(true);
    let _ = drain_tx.send(true);
    writer.await.context("write-behind writer panicked")?;
    sweeper.await.context("sweeper panicked")?;
    finisher
        .await
        .context("automatic-activity finisher panicked")?;
    listener_task
        .await
        .context("the change listener panicked")?;
    backends.flush().await;
    backends.close()?;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Resolves once the shutdown flag is set (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn sweep(
    tracker: Arc<Tracker>,
    sweepers: Vec<Arc<dyn Sweep>>,
    clock: clock::Clock,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    let mut retry = tokio::time::interval(SETTLE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = clock.now_ms();
                for sweeper in &sweepers {
                    sweeper.sweep(now);
                }
            }
            _ = retry.tick() => {
                let settled = tracker.settle().await;
                if settled > 0 {
                    tracing::info!(activities = settled, "owed side effects settled");
                }
            }
            _ = stopped(&mut stop) => return,
        }
    }
}

/// Applies what other nodes changed to this node's copies (the change
/// bus, `store::changes`) until shutdown.
async fn hear_other_nodes(ctx: ApiContext) {
    use store::changes::{Change, Heard};
    let heard = |heard: Heard| match heard {
        Heard::Change(Change::Activity(id)) => {
            ctx.tracker.doubt(id);
            ctx.rules.forget(id);
            // Every socket on this node wakes for each id sent: only those
            // of activities watched here need it (the bus carries every
            // node's changes).
            if ctx.live.is_watched(id) {
                let _ = ctx.live.access_changed.send(id);
            }
        }
        Heard::Change(Change::Athlete(id)) => ctx.rules.forget_athlete(id),
        Heard::Change(Change::Share(id)) => {
            let _ = ctx.live.revoked.send(id);
        }
        Heard::Reset => {
            ctx.tracker.doubt_all();
            ctx.rules.forget_all();
        }
    };
    ctx.changes.listen(heard, ctx.shutdown.clone()).await;
}

/// Completes tracker apps' automatic activities that have gone quiet.
async fn finish_idle(
    devices: Arc<ingest::devices::AutoActivities>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(devices.check_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => devices.finish_idle().await,
            _ = stopped(&mut stop) => return,
        }
    }
}
