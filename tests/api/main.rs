//! Integration tests: the real server on port 0, spoken to over HTTP.
//! One binary, one module per capability.

mod activities;
mod apps;
mod cluster;
mod courses;
mod durability;
mod errors;
mod fields;
mod helpers;
mod history;
mod leaderboards;
mod live;
mod ops;
mod points;
mod privacy;
mod redis;
mod scylla_faults;
mod stats;
mod storage;
mod trust;
mod users;
