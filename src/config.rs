//! Configuration: one typed struct, from flags or the matching environment
//! variables, read once in `main` and passed down.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "trailcast", version, about = "Live-tracking server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server.
    Serve(Config),
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "TRAILCAST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory of the embedded store.
    #[arg(long, env = "TRAILCAST_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Redis for recent positions; unset keeps them in process.
    #[arg(long, env = "TRAILCAST_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key (lets several deployments or tests share
    /// one Redis).
    #[arg(long, env = "TRAILCAST_REDIS_PREFIX", default_value = "tc:")]
    pub redis_prefix: String,
    /// ScyllaDB contact points, comma-separated; unset uses the embedded store.
    #[arg(long, env = "TRAILCAST_SCYLLA_NODES", value_delimiter = ',')]
    pub scylla_nodes: Vec<String>,
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
    /// Log format: `text` or `json`.
    #[arg(long, env = "TRAILCAST_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

impl Config {
    /// The defaults, as `trailcast serve` with no flags would use them.
    pub fn defaults() -> Config {
        match Cli::parse_from(["trailcast", "serve"]).command {
            Command::Serve(config) => config,
        }
    }
}
