//! Configuration: one typed struct, from flags or the matching environment
//! variables, read once in `main` and passed down.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::clock::Clock;

/// The keyspace's replication when `migrate` creates it.
pub const DEFAULT_REPLICATION: &str =
    "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}";

#[derive(Debug, Parser)]
#[command(name = "trailcast", version, about = "Live-tracking server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server.
    Serve(Box<Config>),
    /// Create or upgrade the ScyllaDB schema (deploy/scylla/schema.cql).
    Migrate(MigrateArgs),
}

/// Where the ScyllaDB cluster is and how to talk to it.
#[derive(Debug, Clone, Args)]
pub struct ScyllaArgs {
    /// ScyllaDB contact points (host:port), comma-separated; unset uses the
    /// embedded store.
    #[arg(
        long = "scylla-nodes",
        env = "TRAILCAST_SCYLLA_NODES",
        value_delimiter = ','
    )]
    pub nodes: Vec<String>,
    /// Keyspace holding trailcast's tables.
    #[arg(
        long = "scylla-keyspace",
        env = "TRAILCAST_SCYLLA_KEYSPACE",
        default_value = "trailcast"
    )]
    pub keyspace: String,
    /// Consistency of reads and writes: one, local_one, local_quorum, quorum
    /// or all.
    #[arg(
        long = "scylla-consistency",
        env = "TRAILCAST_SCYLLA_CONSISTENCY",
        default_value = "local_quorum"
    )]
    pub consistency: String,
    /// This node's datacenter: requests go to its replicas first.
    #[arg(long = "scylla-local-dc", env = "TRAILCAST_SCYLLA_LOCAL_DC")]
    pub local_dc: Option<String>,
    /// Replication of the keyspace when migrating creates it, as a CQL map.
    #[arg(long = "scylla-replication", env = "TRAILCAST_SCYLLA_REPLICATION", default_value = DEFAULT_REPLICATION)]
    pub replication: String,
    /// Most requests in flight to the cluster from this node; more wait.
    #[arg(
        long = "scylla-max-in-flight",
        env = "TRAILCAST_SCYLLA_MAX_IN_FLIGHT",
        default_value_t = 1024
    )]
    pub max_in_flight: usize,
    /// How long one request to the cluster may take (retries included)
    /// before it fails as busy: the client gets 503 with Retry-After.
    #[arg(
        long = "scylla-request-timeout-ms",
        env = "TRAILCAST_SCYLLA_REQUEST_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub request_timeout_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub scylla: ScyllaArgs,
    /// Print the CQL that would be applied instead of applying it.
    #[arg(long)]
    pub print: bool,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "TRAILCAST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory of the embedded store.
    #[arg(long, env = "TRAILCAST_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Free space (MiB) the embedded store keeps on its disk: below it,
    /// writes are refused with 507 and `/readyz` says not ready, until
    /// space returns.
    #[arg(long, env = "TRAILCAST_MIN_FREE_DISK_MB", default_value_t = 64)]
    pub min_free_disk_mb: u64,
    /// More course catalogue files (`*.json`), besides the shipped ones.
    #[arg(long, env = "TRAILCAST_COURSES_DIR")]
    pub courses_dir: Option<PathBuf>,
    /// Redis for recent positions; unset keeps them in process.
    #[arg(long, env = "TRAILCAST_REDIS_URL")]
    pub redis_url: Option<String>,
    /// A Redis Cluster instead (`host:port,...`, any of its nodes): the
    /// same keys, spread over its slots. Exclusive with `--redis-url`.
    #[arg(
        long,
        env = "TRAILCAST_REDIS_CLUSTER_NODES",
        value_delimiter = ',',
        conflicts_with = "redis_url"
    )]
    pub redis_cluster_nodes: Vec<String>,
    /// Prefix of every Redis key (lets several deployments or tests share
    /// one Redis).
    #[arg(long, env = "TRAILCAST_REDIS_PREFIX", default_value = "tc:")]
    pub redis_prefix: String,
    #[command(flatten)]
    pub scylla: ScyllaArgs,
    /// Apply the ScyllaDB schema on start, as `trailcast migrate` would.
    #[arg(long, env = "TRAILCAST_SCYLLA_MIGRATE")]
    pub scylla_migrate: bool,
    /// A tracker app's automatic activity is completed at its last fix once
    /// no fix has arrived for this long (`20m`, `90s`, `1h` or seconds).
    #[arg(long, env = "TRAILCAST_AUTO_FINISH_AFTER", default_value = "20m", value_parser = parse_duration_ms)]
    pub auto_finish_after: i64,
    /// Most open HTTP connections; one more is closed at once.
    #[arg(long, env = "TRAILCAST_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,
    /// A client must send a whole request head within this (and a
    /// kept-alive connection idle this long is closed).
    #[arg(long, env = "TRAILCAST_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration_ms)]
    pub header_timeout: i64,
    /// On shutdown, how long in-flight requests may take before the
    /// connections still open are dropped.
    #[arg(long, env = "TRAILCAST_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration_ms)]
    pub shutdown_grace: i64,
    /// Sign-ups per minute from one address (sustained) before 429.
    #[arg(long, env = "TRAILCAST_SIGNUP_RATE", default_value_t = 6.0)]
    pub signup_rate: f64,
    /// Sign-ups one address may make at once.
    #[arg(long, env = "TRAILCAST_SIGNUP_BURST", default_value_t = 20.0)]
    pub signup_burst: f64,
    /// Requests per second per token (sustained) before 429.
    #[arg(long, env = "TRAILCAST_RATE_LIMIT", default_value_t = 20.0)]
    pub rate_limit: f64,
    /// Requests a token may send in a burst above the sustained rate.
    #[arg(long, env = "TRAILCAST_RATE_BURST", default_value_t = 100.0)]
    pub rate_burst: f64,
    /// Points waiting for a group commit before ingest answers 503.
    #[arg(long, env = "TRAILCAST_QUEUE_POINTS", default_value_t = 200_000)]
    pub queue_points: usize,
    /// Most points written by one group commit.
    #[arg(long, env = "TRAILCAST_MAX_BATCH_POINTS", default_value_t = 20_000)]
    pub max_batch_points: usize,
    /// Group commits in flight at once. Unset: 1 on the embedded store
    /// (one fsync at a time is its fastest group commit), 4 on ScyllaDB (a
    /// commit is one batch to the node's ingest log, one round trip however
    /// many posts it holds: a few at once hide the round trip, and fewer
    /// make each commit, and so each batch, larger).
    #[arg(long, env = "TRAILCAST_MAX_FLUSHES")]
    pub max_flushes: Option<usize>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "TRAILCAST_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Where the server reads the time (the system clock; tests use one that
    /// follows tokio's paused time).
    #[arg(skip)]
    pub clock: Clock,
}

impl Config {
    /// The defaults, as `trailcast serve` with no flags would use them.
    pub fn defaults() -> Config {
        match Cli::parse_from(["trailcast", "serve"]).command {
            Command::Serve(config) => *config,
            Command::Migrate(_) => unreachable!("parsed `serve`"),
        }
    }
}

/// A duration as `20m`, `90s`, `1h`, `500ms` or plain seconds, in ms.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: i64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 20m, 90s or 1h"))?;
    let ms = match unit {
        "" | "s" => n * 1_000,
        "ms" => n,
        "m" | "min" => n * 60_000,
        "h" => n * 3_600_000,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (ms, s, m, h)")),
    };
    if ms <= 0 {
        return Err("a duration must be positive".into());
    }
    Ok(ms)
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration_ms;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration_ms("20m"), Ok(1_200_000));
        assert_eq!(parse_duration_ms("90"), Ok(90_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert!(parse_duration_ms("soon").is_err());
        assert!(parse_duration_ms("0s").is_err());
        assert!(parse_duration_ms("5 weeks").is_err());
    }
}
