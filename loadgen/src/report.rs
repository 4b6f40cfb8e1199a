//! The final report: what was simulated and scaled, how setup went, each
//! phase's endpoints (and WebSocket watchers), ingest as a fraction of the
//! baseline, and memory per live activity in the server and in Redis.
//! Rendered as text or JSON.

use std::fmt::Write;

use serde::Serialize;

use crate::options::Options;
use crate::redis_info::RedisMemory;
use crate::server_metrics::{PerActivity, Sample, per_activity};
use crate::setup::SetupTimes;
use crate::stats::{Endpoint, EndpointSummary};
use crate::verify::VerifyReport;
use crate::ws::WsSummary;

/// How long the server keeps items in an activity's Redis stream
/// (`MINID ~ now - 60 s`, README "Redis").
const REDIS_WINDOW_S: f64 = 60.0;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub athletes: usize,
    pub users: usize,
    pub activities_per_user: usize,
    /// Polling watchers.
    pub watchers: usize,
    pub ws_watchers: usize,
    /// The lag both kinds of watcher ask for, in seconds.
    pub watch_lag_s: f64,
    pub points_per_request: usize,
    pub scaling: Scaling,
    pub setup: Setup,
    pub phases: Vec<Phase>,
    pub ingest_vs_baseline: Option<VsBaseline>,
    pub server_memory: ServerMemory,
    /// With --redis-info: Redis `used_memory` per live activity.
    pub redis_memory: Option<RedisMemory>,
    pub verify: Option<VerifyReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Scaling {
    pub time_scale: f64,
    pub interval_ms: [u64; 2],
    pub scaled_interval_ms: [f64; 2],
    pub watch_interval_ms: f64,
    /// Ingest requests/s the athletes offer as scaled, and unscaled.
    pub offered_requests_per_s: f64,
    pub unscaled_requests_per_s: f64,
    pub offered_points_per_s: f64,
    pub unscaled_points_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub users_s: f64,
    pub activities_s: f64,
    pub users_per_s: f64,
    pub activities_per_s: f64,
    pub endpoints: Vec<EndpointSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub duration_s: f64,
    pub endpoints: Vec<EndpointSummary>,
    /// Posts not sent because the phone was offline (sent later, batched).
    pub offline_posts_skipped: u64,
    /// Posts folded into the next one because the previous was in flight.
    pub posts_coalesced: u64,
    /// The WebSocket watchers (ingest phase with --ws-watchers).
    pub ws_watchers: Option<WsSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VsBaseline {
    /// Ingest successful requests/s over baseline successful requests/s.
    pub throughput_fraction: f64,
    pub ingest_p99_ms: f64,
    pub baseline_p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerMemory {
    /// Resident bytes per hot activity: setup delta (records only).
    pub after_setup: Option<PerActivity>,
    /// The same over setup and the run (records plus points' hot state).
    pub after_run: Option<PerActivity>,
}

impl Report {
    pub fn build(
        opts: &Options,
        setup_endpoints: (&Endpoint, &Endpoint),
        times: SetupTimes,
        phases: Vec<Phase>,
        memory: (Option<Sample>, Option<Sample>, Option<Sample>),
        redis_memory: Option<RedisMemory>,
        verify: Option<VerifyReport>,
    ) -> Report {
        let users = opts.users();
        let ppr = opts.points_per_request as f64;
        let find = |name: &str| {
            phases
                .iter()
                .find(|p| p.name == name)
                .map(|p| &p.endpoints[0])
        };
        let ingest_vs_baseline = match (find("ingest"), find("baseline")) {
            (Some(i), Some(b)) if b.ok_per_s > 0.0 => Some(VsBaseline {
                throughput_fraction: i.ok_per_s / b.ok_per_s,
                ingest_p99_ms: i.latency_ms.p99,
                baseline_p99_ms: b.latency_ms.p99,
            }),
            _ => None,
        };
        let (before, after_setup, after_run) = memory;
        Report {
            target: opts.target.clone(),
            athletes: opts.athletes,
            users,
            activities_per_user: opts.activities_per_user,
            watchers: opts.watchers,
            ws_watchers: opts.ws_watchers,
            watch_lag_s: opts.watch_lag,
            points_per_request: opts.points_per_request,
            scaling: Scaling {
                time_scale: opts.time_scale,
                interval_ms: [opts.interval_min_ms, opts.interval_max_ms],
                scaled_interval_ms: [
                    opts.interval_min_ms as f64 * opts.time_scale,
                    opts.interval_max_ms as f64 * opts.time_scale,
                ],
                watch_interval_ms: opts.watch_interval_ms as f64 * opts.time_scale,
                offered_requests_per_s: opts.offered_rate(),
                unscaled_requests_per_s: opts.unscaled_rate(),
                offered_points_per_s: opts.offered_rate() * ppr,
                unscaled_points_per_s: opts.unscaled_rate() * ppr,
            },
            setup: Setup {
                users_s: times.users.as_secs_f64(),
                activities_s: times.activities.as_secs_f64(),
                users_per_s: users as f64 / times.users.as_secs_f64().max(1e-9),
                activities_per_s: opts.athletes as f64 / times.activities.as_secs_f64().max(1e-9),
                endpoints: vec![
                    setup_endpoints.0.summary(times.users),
                    setup_endpoints.1.summary(times.activities),
                ],
            },
            phases,
            ingest_vs_baseline,
            server_memory: ServerMemory {
                after_setup: before.zip(after_setup).map(|(b, a)| per_activity(b, a)),
                after_run: before.zip(after_run).map(|(b, a)| per_activity(b, a)),
            },
            redis_memory,
            verify,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let s = &self.scaling;
        let _ = writeln!(o, "trailcast-loadgen against {}", self.target);
        let _ = writeln!(
            o,
            "  {} live activities, {} users ({} per user), {} point(s) per post",
            self.athletes, self.users, self.activities_per_user, self.points_per_request
        );
        let _ = writeln!(
            o,
            "  watchers: {} polling, {} on WebSockets, lag {} s",
            self.watchers, self.ws_watchers, self.watch_lag_s
        );
        let _ = writeln!(
            o,
            "  time scale x{:.3}: posts every {:.1}-{:.1} s (real phones: {:.1}-{:.1} s), watcher polls every {:.1} s",
            s.time_scale,
            s.scaled_interval_ms[0] / 1000.0,
            s.scaled_interval_ms[1] / 1000.0,
            s.interval_ms[0] as f64 / 1000.0,
            s.interval_ms[1] as f64 / 1000.0,
            s.watch_interval_ms / 1000.0
        );
        let _ = writeln!(
            o,
            "  offered {:.0} req/s ({:.0} points/s); unscaled these activities would offer {:.0} req/s ({:.0} points/s)",
            s.offered_requests_per_s,
            s.offered_points_per_s,
            s.unscaled_requests_per_s,
            s.unscaled_points_per_s
        );
        let st = &self.setup;
        let _ = writeln!(
            o,
            "\nsetup: {} users in {:.1} s ({:.0}/s), {} activities in {:.1} s ({:.0}/s)",
            self.users,
            st.users_s,
            st.users_per_s,
            self.athletes,
            st.activities_s,
            st.activities_per_s
        );
        for e in &st.endpoints {
            endpoint_text(&mut o, e, "created");
        }
        for p in &self.phases {
            let _ = writeln!(
                o,
                "\nphase {} ({:.0} s; {} posts skipped while offline, {} folded into the next post while one was in flight)",
                p.name, p.duration_s, p.offline_posts_skipped, p.posts_coalesced
            );
            for e in &p.endpoints {
                let unit = if e.endpoint.contains("/live") {
                    "received"
                } else {
                    "acked"
                };
                endpoint_text(&mut o, e, unit);
            }
            if let Some(w) = &p.ws_watchers {
                ws_text(&mut o, w);
            }
        }
        if let Some(v) = &self.ingest_vs_baseline {
            let _ = writeln!(
                o,
                "\ningest vs baseline: {:.1}% of the no-op request rate; p99 {:.1} ms vs {:.1} ms",
                v.throughput_fraction * 100.0,
                v.ingest_p99_ms,
                v.baseline_p99_ms
            );
        }
        let _ = writeln!(o, "\nserver memory (from /metrics):");
        for (label, m) in [
            ("after setup", &self.server_memory.after_setup),
            ("after run", &self.server_memory.after_run),
        ] {
            match m {
                Some(m) => {
                    let _ = writeln!(
                        o,
                        "  {label}: resident {:.1} -> {:.1} MiB, hot activities {:.0} -> {:.0}: {}",
                        m.before.resident_bytes / 1048576.0,
                        m.after.resident_bytes / 1048576.0,
                        m.before.hot_activities,
                        m.after.hot_activities,
                        m.bytes_per_activity.map_or("n/a".to_string(), |b| format!(
                            "{b:.0} bytes per live activity"
                        ))
                    );
                }
                None => {
                    let _ = writeln!(o, "  {label}: gauges not available");
                }
            }
        }
        if let Some(r) = &self.redis_memory {
            redis_text(&mut o, r, self.athletes);
            if self
                .phases
                .iter()
                .any(|p| p.name == "ingest" && p.duration_s < REDIS_WINDOW_S)
            {
                let _ = writeln!(
                    o,
                    "  (a recent-position stream keeps about {REDIS_WINDOW_S:.0} s of items in 4 KiB \
                     nodes allocated whole: a shorter run understates the steady state)"
                );
            }
        }
        if let Some(v) = &self.verify {
            let _ = writeln!(
                o,
                "\nverify: {} activities, {} acknowledged points, {} stored, {} missing, {} read errors {:?}",
                v.activities_checked,
                v.acked_points,
                v.stored_points,
                v.missing_points,
                v.read_errors,
                v.examples
            );
        }
        o
    }
}

fn endpoint_text(o: &mut String, e: &EndpointSummary, unit: &str) {
    let l = &e.latency_ms;
    let _ = writeln!(
        o,
        "  {}: {} requests ({:.0}/s), {} ok ({:.0}/s), {} errors",
        e.endpoint, e.requests, e.requests_per_s, e.ok, e.ok_per_s, e.errors
    );
    if e.points_sent > 0 || e.points_accepted > 0 {
        let _ = writeln!(
            o,
            "    points: {} sent, {} {unit} ({:.0}/s), {} duplicates",
            e.points_sent, e.points_accepted, e.points_acked_per_s, e.points_duplicate
        );
    }
    let _ = writeln!(
        o,
        "    latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}",
        l.p50, l.p90, l.p99, l.p999, l.max, l.mean
    );
    for (kind, n) in &e.errors_by_kind {
        let _ = writeln!(o, "    error {kind}: {n}");
    }
}

fn ws_text(o: &mut String, w: &WsSummary) {
    let c = &w.connect_ms;
    let _ = writeln!(
        o,
        "  WebSocket watchers, {} (lag {} s): {} watchers, {} connected, {} connect errors{}",
        w.endpoint,
        w.lag_s,
        w.watchers,
        w.connected,
        w.connect_errors,
        if w.not_connected > 0 {
            format!(", {} not connected by the end", w.not_connected)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        o,
        "    handshake ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        c.p50, c.p90, c.p99, c.max
    );
    for (kind, n) in &w.connect_errors_by_kind {
        let _ = writeln!(o, "    connect error {kind}: {n}");
    }
    let _ = writeln!(
        o,
        "    at the end: {} still connected (then closed by the loadgen), {} closed by the server with 1000 (activity finished), {} dropped by the server",
        w.still_connected_at_end, w.finished_by_server, w.dropped_by_server
    );
    for (why, n) in &w.dropped_by_reason {
        let _ = writeln!(o, "    dropped, {why}: {n}");
    }
    let _ = writeln!(
        o,
        "    received: {} messages ({:.0}/s), {} points ({:.0}/s) plus {} in catch-up messages, {} marked late, {} malformed messages",
        w.messages,
        w.messages_per_s,
        w.points,
        w.points_per_s,
        w.catch_up_points,
        w.late_points,
        w.malformed_messages
    );
    let _ = writeln!(
        o,
        "    per watcher: {} to {} points, {} watchers received none",
        w.points_per_watcher_min, w.points_per_watcher_max, w.watchers_without_points
    );
    let d = &w.delay_after_ts_ms;
    let _ = writeln!(
        o,
        "    playback delay ms (arrival here - point ts; includes the {} s lag, not a request latency):",
        w.lag_s
    );
    let _ = writeln!(
        o,
        "      p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  mean {:.0}",
        d.p50, d.p90, d.p99, d.p999, d.max, d.mean
    );
}

fn redis_text(o: &mut String, r: &RedisMemory, athletes: usize) {
    let mib = |b: u64| b as f64 / 1048576.0;
    let _ = writeln!(
        o,
        "\nredis memory (INFO used_memory at {}, over {athletes} activities):",
        r.url
    );
    for (label, after, per) in [
        (
            "after setup",
            r.after_setup_bytes,
            r.bytes_per_activity_after_setup,
        ),
        (
            "after run (activities still live)",
            r.after_run_bytes,
            r.bytes_per_activity,
        ),
    ] {
        match after.zip(per) {
            Some((after, per)) => {
                let _ = writeln!(
                    o,
                    "  {label}: used {:.1} -> {:.1} MiB: {per:.0} redis bytes per live activity",
                    mib(r.before_setup_bytes),
                    mib(after)
                );
            }
            None => {
                let _ = writeln!(
                    o,
                    "  {label}: n/a ({})",
                    r.error.as_deref().unwrap_or("not read")
                );
            }
        }
    }
}
