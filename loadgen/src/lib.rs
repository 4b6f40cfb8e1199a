//! trailcast-loadgen: simulated athletes (and optionally watchers) against a
//! trailcast node on this machine, open-loop, with a no-op baseline.
//!
//! How a run flows:
//! 1. `setup` creates users and activities through the API, concurrently,
//!    and keeps only compact state per activity (`sim::Athlete`: a few
//!    bytes, no task, no connection).
//! 2. `engine` drives every athlete from one scheduler task and a timer
//!    wheel (`wheel`): each tick it takes the athletes whose post is due and
//!    spawns one short-lived request task per post, bounded by a semaphore
//!    (the connection pool size). The schedule is open-loop: a post is due at
//!    its planned time whatever the server is doing, and its latency is
//!    measured from that planned time, so a slow server shows up as latency
//!    instead of as fewer requests (coordinated omission corrected).
//!    Watchers (optional) run during the ingest phase: polling ones
//!    (`--watchers`, one short request per poll) and WebSocket ones
//!    (`--ws-watchers`, module `ws`: a task and a socket each, connected
//!    for the whole phase, measuring each point's delay after its
//!    timestamp, i.e. playback delay with the lag in it).
//! 3. `report` turns the per-endpoint histograms (`stats`), the WebSocket
//!    watchers' numbers, the server's `/metrics` gauges (`server_metrics`)
//!    and Redis's `used_memory` (`redis_info`, with `--redis-info`) into
//!    text or JSON, memory as bytes per live activity.
//! 4. `verify` reads routes back and checks that every acknowledged point is
//!    stored (the CI smoke test).

pub mod client;
pub mod engine;
pub mod options;
pub mod order;
pub mod redis_info;
pub mod report;
pub mod server_metrics;
pub mod setup;
pub mod sim;
pub mod stats;
pub mod verify;
pub mod wheel;
pub mod ws;

pub use engine::{Outcome, run};
pub use options::Options;
pub use report::Report;
