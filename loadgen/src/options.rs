//! Command-line options: one typed struct, parsed once in `main` (or built
//! with `Options::parse_from` by the smoke test) and passed down.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::Parser;

/// Most points the server takes in one request.
pub const MAX_POINTS_PER_REQUEST: usize = 10_000;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "trailcast-loadgen",
    version,
    about = "Load generator for trailcast: simulated athletes and watchers, open-loop"
)]
pub struct Options {
    /// Server base URL; only 127.0.0.1, localhost or [::1] are allowed.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Concurrent live activities (simulated athletes).
    #[arg(long, default_value_t = 1000)]
    pub athletes: usize,
    /// Activities per user: users = ceil(athletes / this).
    #[arg(long, default_value_t = 1)]
    pub activities_per_user: usize,
    /// Shortest posting interval of an athlete, in ms (before --time-scale).
    #[arg(long, default_value_t = 2000)]
    pub interval_min_ms: u64,
    /// Longest posting interval of an athlete, in ms (before --time-scale).
    #[arg(long, default_value_t = 5000)]
    pub interval_max_ms: u64,
    /// Stretch every interval (posting, pauses, offline stretches, watcher
    /// polls) by this factor, so many activities can be live while the
    /// request rate stays within what this machine can drive.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Instead of --time-scale: pick the scale that offers this many
    /// ingest requests per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// GPS fixes per regular post (1 = a phone posting each fix; 100 = the
    /// batched upload shape). Fixes are spread evenly over the interval.
    #[arg(long, default_value_t = 1)]
    pub points_per_request: usize,
    /// Per mille of 20-post stretches an athlete spends offline; what it
    /// recorded meanwhile is uploaded later as one batch.
    #[arg(long, default_value_t = 20)]
    pub offline_permille: u32,
    /// Per mille of 20-post stretches an athlete stands still (pauses).
    #[arg(long, default_value_t = 50)]
    pub pause_permille: u32,
    /// Simulated watchers polling GET /v1/activities/{id}/live?lag=…
    /// (each picks an activity at random and uses its athlete's token).
    #[arg(long, default_value_t = 0)]
    pub watchers: usize,
    /// Watcher poll interval in ms (before --time-scale).
    #[arg(long, default_value_t = 2000)]
    pub watch_interval_ms: u64,
    /// Simulated watchers each holding one WebSocket to
    /// GET /v1/activities/{id}/live/ws?lag=…&token=…, spread evenly over the
    /// activities (with the athlete's own token). They connect at the start
    /// of the ingest phase, `WS_CONNECT_CONCURRENCY` handshakes at a time,
    /// and close at its end; the report gives the delay of each point after
    /// its timestamp (playback delay, lag included).
    #[arg(long, default_value_t = 0)]
    pub ws_watchers: usize,
    /// Playback lag both kinds of watcher ask for (`lag=`), in seconds,
    /// 5 to 10 as the server allows. Not stretched by --time-scale.
    #[arg(long, default_value_t = 8.0)]
    pub watch_lag: f64,
    /// Redis the server under test uses (redis://127.0.0.1:6379; only this
    /// machine): its `INFO memory` `used_memory` is read before setup,
    /// after setup and at the end of the ingest phase to price one live
    /// activity in Redis bytes. Anything else stored in that Redis while the
    /// run goes counts too. The server's streams keep about 60 s of items
    /// in preallocated 4 KiB nodes, so runs under a minute or two
    /// understate the steady state.
    #[arg(long, value_name = "URL")]
    pub redis_info: Option<String>,
    /// How long the load runs, in seconds (each phase with --baseline).
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Also run the same pattern against POST /v1/noop first, for the same
    /// duration, and quote ingest as a fraction of it.
    #[arg(long)]
    pub baseline: bool,
    /// Only the no-op baseline (still sets up users for real tokens).
    #[arg(long, conflicts_with = "baseline")]
    pub baseline_only: bool,
    /// Requests in flight at most (= keep-alive connections in the pool).
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// Concurrent requests while creating users and activities.
    #[arg(long, default_value_t = 64)]
    pub setup_concurrency: usize,
    /// Per-request timeout in ms.
    #[arg(long, default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// After the run, read back this many activities' routes and check that
    /// every acknowledged point is stored (0 = skip).
    #[arg(long, default_value_t = 0)]
    pub verify: usize,
    /// Seed for routes, intervals and phases.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Instead of the simulation: the out-of-order benchmark with tracks of
    /// this many points (module `order`), printing shuffled / in-order time.
    #[arg(long, value_name = "POINTS")]
    pub order_test: Option<usize>,
    /// Block size of the out-of-order shuffle.
    #[arg(long, default_value_t = 10)]
    pub order_block: usize,
    /// Activities posted at once in the out-of-order benchmark.
    #[arg(long, default_value_t = 4)]
    pub order_tracks: usize,
    /// Machine-readable report on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// No progress bar (also implied when stderr is not a terminal).
    #[arg(long)]
    pub quiet: bool,
}

/// WebSocket handshakes in progress at most while the watchers connect.
pub const WS_CONNECT_CONCURRENCY: usize = 64;

/// Shortest scaled posting interval (a few scheduler slots).
pub const MIN_SCALED_INTERVAL_MS: f64 = 20.0;

/// Longest run accepted: every run must stop by itself.
pub const MAX_DURATION_S: u64 = 3600;

impl Options {
    /// Checks the options and resolves --rate into a time scale.
    pub fn validated(mut self) -> anyhow::Result<Options> {
        let url = reqwest::Url::parse(&self.target).context("--target is not a URL")?;
        match url.host_str() {
            Some("127.0.0.1" | "localhost" | "[::1]") => {}
            other => bail!("--target must be on this machine (127.0.0.1), not {other:?}"),
        }
        ensure!(
            self.ws_watchers == 0 || url.scheme() == "http",
            "--ws-watchers need an http:// --target (ws://, no TLS)"
        );
        self.target = self.target.trim_end_matches('/').to_string();
        ensure!(self.athletes >= 1, "--athletes must be at least 1");
        ensure!(
            self.athletes <= u32::MAX as usize,
            "--athletes must fit in 32 bits"
        );
        ensure!(
            self.activities_per_user >= 1,
            "--activities-per-user must be at least 1"
        );
        ensure!(
            self.interval_min_ms >= 1 && self.interval_min_ms <= self.interval_max_ms,
            "need 1 <= --interval-min-ms <= --interval-max-ms"
        );
        ensure!(
            (1..=MAX_POINTS_PER_REQUEST).contains(&self.points_per_request),
            "--points-per-request must be 1..={MAX_POINTS_PER_REQUEST}"
        );
        ensure!(
            (1..=MAX_DURATION_S).contains(&self.duration),
            "--duration must be 1..={MAX_DURATION_S} s"
        );
        ensure!(
            self.max_in_flight >= 1,
            "--max-in-flight must be at least 1"
        );
        ensure!(
            self.setup_concurrency >= 1,
            "--setup-concurrency must be at least 1"
        );
        ensure!(
            (5.0..=10.0).contains(&self.watch_lag),
            "--watch-lag must be 5 to 10 seconds"
        );
        if let Some(points) = self.order_test {
            ensure!(
                (1..=200_000).contains(&points),
                "--order-test must be 1..=200000 points (it must stop by itself)"
            );
            ensure!(
                (1..=1000).contains(&self.order_block),
                "--order-block must be 1..=1000"
            );
            ensure!(
                (1..=64).contains(&self.order_tracks),
                "--order-tracks must be 1..=64"
            );
        }
        if let Some(url) = &self.redis_info {
            crate::redis_info::address(url)?;
        }
        if let Some(rate) = self.rate {
            ensure!(rate > 0.0, "--rate must be positive");
            self.time_scale = self.unscaled_rate() / rate;
        }
        ensure!(
            self.time_scale.is_finite() && self.time_scale > 0.0,
            "--time-scale must be positive"
        );
        let shortest = self.interval_min_ms as f64 * self.time_scale;
        ensure!(
            shortest >= self.points_per_request as f64 && shortest >= MIN_SCALED_INTERVAL_MS,
            "the scaled interval ({shortest:.1} ms) must be at least {MIN_SCALED_INTERVAL_MS} ms \
             and leave at least 1 ms between fixes"
        );
        ensure!(
            self.interval_max_ms as f64 * self.time_scale < u32::MAX as f64,
            "the scaled interval does not fit in 32 bits of milliseconds"
        );
        Ok(self)
    }

    /// Ingest requests per second the athletes would offer at time scale 1
    /// (intervals uniform in [min, max]: mean of 1/interval).
    pub fn unscaled_rate(&self) -> f64 {
        let (a, b) = (self.interval_min_ms as f64, self.interval_max_ms as f64);
        let per_athlete = if b > a {
            (b / a).ln() / (b - a) * 1000.0
        } else {
            1000.0 / a
        };
        self.athletes as f64 * per_athlete
    }

    /// Requests per second offered after scaling.
    pub fn offered_rate(&self) -> f64 {
        self.unscaled_rate() / self.time_scale
    }

    pub fn run_for(&self) -> Duration {
        Duration::from_secs(self.duration)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn users(&self) -> usize {
        self.athletes.div_ceil(self.activities_per_user)
    }
}
