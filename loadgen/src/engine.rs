//! The run: setup, then one or two load phases (the no-op baseline and
//! ingest), then the report.
//!
//! Tasks during a phase:
//! - the scheduler (this module's `drive`), sole owner of the timer wheel;
//!   every few ms it takes the athletes whose post is due and spawns one
//!   request task per post. It never waits for the server.
//! - request tasks: wait for a connection permit (`max_in_flight`, the size
//!   of the keep-alive pool), send, record latency from the planned time and
//!   mark fixes acknowledged. At most one per athlete (`Athlete::busy`), and
//!   at most `BACKLOG_FACTOR * max_in_flight` alive at once: beyond that the
//!   post is skipped and counted as `client backlog`, so a stalled server
//!   cannot grow loadgen memory without bound.
//! - watcher tasks (optional, `--watchers`): each polls one activity's live
//!   endpoint (`lag=--watch-lag`) on its own open-loop schedule.
//! - WebSocket watcher tasks (optional, `--ws-watchers`, ingest phase only;
//!   see `ws`): each holds one live WebSocket, connecting when the phase
//!   starts and closing when it ends.
//! - the progress task, which redraws the bar four times a second.
//!
//! With `--redis-info`, Redis's `used_memory` is read before setup, after
//! setup and right after the ingest phase (`redis_info`), the activities
//! still live.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::{Client, StatusCode};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::client::{self, post_json};
use crate::options::Options;
use crate::redis_info::{self, RedisMemory};
use crate::report::{Phase, Report};
use crate::server_metrics;
use crate::setup::{self, Fleet};
use crate::sim::{Shape, mix};
use crate::stats::{Endpoint, ErrorKind};
use crate::verify::{self, VerifyReport};
use crate::wheel::{SLOT_MS, Wheel};
use crate::ws::WsWatchers;

/// Request tasks alive at most, as a multiple of the connection pool.
const BACKLOG_FACTOR: usize = 8;
const TICK: Duration = Duration::from_millis(2);

/// What a phase sends its posts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `POST /v1/noop`: same bodies and auth header, no work behind it.
    Baseline,
    /// `POST /v1/activities/{id}/points`.
    Ingest,
}

/// The report, plus what `verify` needs to re-derive the acknowledged points.
pub struct Outcome {
    pub report: Report,
    pub fleet: Fleet,
    /// Base time (epoch ms) and shape of the ingest phase, if it ran.
    pub ingest_base_ms: Option<i64>,
    pub shape: Shape,
}

pub fn epoch_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn shape_of(opts: &Options) -> Shape {
    Shape {
        points_per_request: opts.points_per_request as u32,
        offline_permille: opts.offline_permille,
        pause_permille: opts.pause_permille,
    }
}

fn progress_bar(opts: &Options) -> ProgressBar {
    let target = if opts.quiet || opts.json {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(0), target);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    bar
}

/// Runs the whole thing: setup, phases, verification, report.
pub async fn run(opts: Options) -> anyhow::Result<Outcome> {
    let opts = opts.validated()?;
    let client = client::pool(opts.max_in_flight, opts.request_timeout())?;
    let bar = progress_bar(&opts);
    bar.enable_steady_tick(Duration::from_millis(250));
    let shape = shape_of(&opts);

    // Before any activity exists; a Redis that does not answer now is a
    // mistake in the options, not something to report at the end.
    let redis_before = match &opts.redis_info {
        Some(url) => Some(
            redis_info::used_memory(url)
                .await
                .map_err(|e| e.context("--redis-info: reading INFO memory before setup"))?,
        ),
        None => None,
    };
    let mem_before = server_metrics::sample(&client, &opts.target).await;
    let users_stats = Endpoint::new("setup: POST /v1/users");
    let activities_stats = Endpoint::new("setup: POST /v1/activities");
    let (fleet, times) =
        setup::create_fleet(&client, &opts, &users_stats, &activities_stats, &bar).await?;
    let mem_after_setup = server_metrics::sample(&client, &opts.target).await;
    let redis_after_setup = match &opts.redis_info {
        Some(url) if redis_before.is_some() => Some(redis_info::used_memory(url).await),
        _ => None,
    };
    let fleet = Arc::new(fleet);

    let mut phases = Vec::new();
    let mut ingest_base_ms = None;
    if opts.baseline || opts.baseline_only {
        let (phase, _) = drive(&opts, &client, &fleet, Mode::Baseline, &bar).await?;
        phases.push(phase);
    }
    let mut redis_after_run = None;
    if !opts.baseline_only {
        for a in &fleet.athletes {
            a.acked.store(0, Ordering::Release);
        }
        let (phase, base_ms) = drive(&opts, &client, &fleet, Mode::Ingest, &bar).await?;
        if let Some(url) = &opts.redis_info {
            redis_after_run = Some(redis_info::used_memory(url).await);
        }
        phases.push(phase);
        ingest_base_ms = Some(base_ms);
    }
    let mem_after_run = server_metrics::sample(&client, &opts.target).await;
    bar.finish_and_clear();

    let fleet =
        Arc::try_unwrap(fleet).map_err(|_| anyhow::anyhow!("a request task outlived its phase"))?;
    let verified: Option<VerifyReport> = match ingest_base_ms {
        Some(base_ms) if opts.verify > 0 => {
            Some(verify::check(&client, &opts, &fleet, base_ms, shape, opts.verify).await)
        }
        _ => None,
    };

    let redis_memory = match (&opts.redis_info, redis_before, redis_after_setup) {
        (Some(url), Some(before), Some(after_setup)) => Some(RedisMemory::new(
            url,
            before,
            after_setup,
            redis_after_run,
            opts.athletes,
        )),
        _ => None,
    };
    let report = Report::build(
        &opts,
        (&users_stats, &activities_stats),
        times,
        phases,
        (mem_before, mem_after_setup, mem_after_run),
        redis_memory,
        verified,
    );
    Ok(Outcome {
        report,
        fleet,
        ingest_base_ms,
        shape,
    })
}

/// Shared between the scheduler and its request tasks for one phase.
struct PhaseState {
    opts: Options,
    client: Client,
    fleet: Arc<Fleet>,
    mode: Mode,
    shape: Shape,
    base: Instant,
    base_ms: i64,
    connections: Semaphore,
    alive: AtomicUsize,
    posts: Endpoint,
}

/// One phase of `--duration` seconds; returns its report and base time.
async fn drive(
    opts: &Options,
    client: &Client,
    fleet: &Arc<Fleet>,
    mode: Mode,
    bar: &ProgressBar,
) -> anyhow::Result<(Phase, i64)> {
    let lead = Duration::from_millis(50);
    let st = Arc::new(PhaseState {
        opts: opts.clone(),
        client: client.clone(),
        fleet: fleet.clone(),
        mode,
        shape: shape_of(opts),
        base: Instant::now() + lead,
        base_ms: epoch_ms() + lead.as_millis() as i64,
        connections: Semaphore::new(opts.max_in_flight),
        alive: AtomicUsize::new(0),
        posts: Endpoint::new(match mode {
            Mode::Baseline => "POST /v1/noop (baseline)",
            Mode::Ingest => "POST /v1/activities/{id}/points",
        }),
    });
    let live = Arc::new(Endpoint::new("GET /v1/activities/{id}/live"));
    let stop = Arc::new(AtomicBool::new(false));
    let watchers = if mode == Mode::Ingest {
        (0..opts.watchers)
            .map(|w| tokio::spawn(watch(st.clone(), live.clone(), stop.clone(), w)))
            .collect()
    } else {
        Vec::new()
    };
    let ws_watchers = if mode == Mode::Ingest && opts.ws_watchers > 0 {
        Some(WsWatchers::start(opts, fleet)?)
    } else {
        None
    };

    let max_interval = fleet
        .athletes
        .iter()
        .map(|a| a.interval_ms as u64)
        .max()
        .unwrap_or(1);
    let mut wheel = Wheel::new(max_interval + SLOT_MS);
    for (i, a) in fleet.athletes.iter().enumerate() {
        wheel.insert(a.phase_ms(), i as u32);
    }
    let duration_ms = opts.run_for().as_millis() as u64;
    let (mut offline, mut coalesced) = (0u64, 0u64);
    let mut spare = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    bar.set_length(duration_ms / 1000);
    bar.set_position(0);
    let mut last_draw = (Instant::now(), 0u64);
    let label = match mode {
        Mode::Baseline => "baseline",
        Mode::Ingest => "ingest",
    };
    loop {
        tick.tick().await;
        let now = Instant::now()
            .saturating_duration_since(st.base)
            .as_millis() as u64;
        if now >= duration_ms {
            break;
        }
        while let Some((start, due)) = wheel.due(now, std::mem::take(&mut spare)) {
            for &i in &due {
                let a = &fleet.athletes[i as usize];
                let interval = a.interval_ms as u64;
                let phase = a.phase_ms();
                let n = (start + SLOT_MS - 1).saturating_sub(phase) / interval;
                let planned = phase + n * interval;
                wheel.insert(planned + interval, i);
                if a.offline(n, st.shape) {
                    offline += 1;
                } else if !a.try_claim() {
                    coalesced += 1;
                } else if st.alive.load(Ordering::Acquire) >= BACKLOG_FACTOR * opts.max_in_flight {
                    a.release();
                    st.posts.error(ErrorKind::ClientBacklog, None, 0);
                } else {
                    st.alive.fetch_add(1, Ordering::AcqRel);
                    tokio::spawn(post(st.clone(), i, n, planned));
                }
            }
            spare = due;
        }
        if last_draw.0.elapsed() >= Duration::from_millis(250) {
            let requests = st.posts.requests();
            let s = st.posts.summary(Duration::from_millis(now.max(1)));
            let rate = (requests - last_draw.1) as f64 / last_draw.0.elapsed().as_secs_f64();
            bar.set_position(now / 1000);
            let ws = ws_watchers
                .as_ref()
                .map_or(String::new(), |w| format!(", {} WebSockets open", w.open()));
            bar.set_message(format!(
                "{label}: {rate:.0} req/s, {} ok, {} errors, p99 {:.1} ms, {} in flight{ws}",
                s.ok,
                s.errors,
                s.latency_ms.p99,
                st.alive.load(Ordering::Relaxed)
            ));
            last_draw = (Instant::now(), requests);
        }
    }
    stop.store(true, Ordering::Release);
    if let Some(w) = &ws_watchers {
        w.stop();
    }
    // Let every request planned inside the window finish (or time out).
    let drain_until = Instant::now() + opts.request_timeout() + Duration::from_secs(2);
    while st.alive.load(Ordering::Acquire) > 0 && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for w in watchers {
        let _ = w.await;
    }
    let window = opts.run_for();
    let ws = match ws_watchers {
        Some(w) => Some(w.finish(window).await),
        None => None,
    };
    let mut endpoints = vec![st.posts.summary(window)];
    if mode == Mode::Ingest && opts.watchers > 0 {
        endpoints.push(live.summary(window));
    }
    let phase = Phase {
        name: label.to_string(),
        duration_s: window.as_secs_f64(),
        endpoints,
        offline_posts_skipped: offline,
        posts_coalesced: coalesced,
        ws_watchers: ws,
    };
    Ok((phase, st.base_ms))
}

#[derive(Deserialize)]
struct PostReply {
    #[serde(default)]
    accepted: u64,
    #[serde(default)]
    duplicates: u64,
    #[serde(default)]
    rejected: Vec<Rejected>,
}

#[derive(Deserialize)]
struct Rejected {
    code: String,
}

/// One post of athlete `i`: fixes from the first unacknowledged one up to
/// those of post `n` (at most `MAX_POINTS_PER_REQUEST`).
async fn post(st: Arc<PhaseState>, i: u32, n: u64, planned_ms: u64) {
    let a = &st.fleet.athletes[i as usize];
    let planned = st.base + Duration::from_millis(planned_ms);
    let from = a.acked();
    let last = a.last_fix_of_post(n, st.shape);
    let to = last.min(from + crate::options::MAX_POINTS_PER_REQUEST as u64 - 1);
    if from <= to {
        // The wheel hands out a slot when it starts: wait for the exact time.
        tokio::time::sleep_until(planned.into()).await;
        let _permit = st.connections.acquire().await;
        let mut body = String::with_capacity(32 + 160 * (to - from + 1) as usize);
        body.push_str(r#"{"points":["#);
        a.write_fixes(from, to, st.base_ms, st.shape, &mut body);
        body.push_str("]}");
        let url = match st.mode {
            Mode::Baseline => format!("{}/v1/noop", st.opts.target),
            Mode::Ingest => format!(
                "{}/v1/activities/{}/points",
                st.opts.target,
                st.fleet.activity_id(i as usize)
            ),
        };
        let token = st.fleet.token_of(i as usize);
        let sent = to - from + 1;
        let res = post_json(&st.client, &url, Some(token), body).await;
        let latency = planned.elapsed();
        match res {
            Ok((StatusCode::OK, text)) => match serde_json::from_str::<PostReply>(&text) {
                Ok(reply) => {
                    st.posts.ok(latency, sent, reply.accepted, reply.duplicates);
                    for r in &reply.rejected {
                        st.posts.rejected(&r.code, 1);
                    }
                    a.ack_through(to);
                }
                Err(_) => st.posts.error(ErrorKind::Other, Some(latency), sent),
            },
            Ok((status, _)) => st
                .posts
                .error(client::status_kind(status), Some(latency), sent),
            Err(kind) => st.posts.error(kind, Some(latency), sent),
        }
    }
    a.release();
    st.alive.fetch_sub(1, Ordering::AcqRel);
}

/// A watcher: polls one activity's live endpoint every (scaled) watch
/// interval with the cursor of its last answer and `lag=--watch-lag`, until
/// the phase stops.
async fn watch(st: Arc<PhaseState>, stats: Arc<Endpoint>, stop: Arc<AtomicBool>, w: usize) {
    let fleet = &st.fleet;
    let i = (mix(st.opts.seed ^ 0x77a7c4 ^ mix(w as u64)) % fleet.athletes.len() as u64) as usize;
    let every = Duration::from_millis(
        ((st.opts.watch_interval_ms as f64 * st.opts.time_scale) as u64).max(SLOT_MS),
    );
    let offset = Duration::from_millis(mix(w as u64) % every.as_millis().max(1) as u64);
    let Ok(mut base) = reqwest::Url::parse(&format!(
        "{}/v1/activities/{}/live",
        st.opts.target,
        fleet.activity_id(i)
    )) else {
        return;
    };
    base.query_pairs_mut()
        .append_pair("lag", &st.opts.watch_lag.to_string());
    let token = fleet.token_of(i);
    let end = st.base + st.opts.run_for();
    let mut cursor: Option<String> = None;
    for k in 0u32.. {
        let planned = st.base + offset + every * k;
        if planned >= end || stop.load(Ordering::Acquire) {
            return;
        }
        tokio::time::sleep_until(planned.into()).await;
        let mut url = base.clone();
        if let Some(c) = &cursor {
            url.query_pairs_mut().append_pair("after", c);
        }
        match client::get(&st.client, url.as_str(), token).await {
            Ok((StatusCode::OK, text)) => {
                let points = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .map(|v| {
                        if let Some(c) = v.get("cursor").filter(|c| !c.is_null()) {
                            cursor = Some(match c {
                                serde_json::Value::String(s) => s.clone(),
                                other => other.to_string(),
                            });
                        }
                        v["points"].as_array().map_or(0, Vec::len) as u64
                    })
                    .unwrap_or(0);
                stats.ok(planned.elapsed(), 0, points, 0);
            }
            Ok((status, _)) => stats.error(client::status_kind(status), Some(planned.elapsed()), 0),
            Err(kind) => stats.error(kind, Some(planned.elapsed()), 0),
        }
    }
}
