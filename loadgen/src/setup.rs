//! Setup: users and activities created through the API, concurrently, by
//! `setup_concurrency` worker tasks pulling indices from a shared counter.
//!
//! What is kept is compact: a token per user, a 16-byte id per activity and
//! an `Athlete` per activity (the simulation state).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use indicatif::ProgressBar;
use reqwest::{Client, StatusCode};
use serde::Deserialize;

use crate::client::post_json;
use crate::options::Options;
use crate::sim::{Athlete, Kind, mix};
use crate::stats::Endpoint;

const ATTEMPTS: u32 = 5;

/// Everything the run needs about the simulated population.
pub struct Fleet {
    pub tokens: Vec<Box<str>>,
    pub activity_ids: Vec<u128>,
    pub athletes: Vec<Athlete>,
}

impl Fleet {
    pub fn activity_id(&self, i: usize) -> String {
        format_uuid(self.activity_ids[i])
    }

    pub fn token_of(&self, i: usize) -> &str {
        &self.tokens[self.athletes[i].user as usize]
    }
}

pub struct SetupTimes {
    pub users: Duration,
    pub activities: Duration,
}

#[derive(Deserialize)]
struct Created {
    id: String,
    #[serde(default)]
    token: Option<String>,
}

/// The athletes' simulation state (no server calls): kind, interval, seed.
pub fn athletes(opts: &Options) -> Vec<Athlete> {
    let span = opts.interval_max_ms - opts.interval_min_ms + 1;
    (0..opts.athletes)
        .map(|i| {
            let seed = mix(opts.seed ^ mix(i as u64)) as u32;
            let raw = opts.interval_min_ms + mix(seed as u64 ^ 0x5eed) % span;
            let interval = (raw as f64 * opts.time_scale).round().max(1.0) as u32;
            let user = (i / opts.activities_per_user) as u32;
            Athlete::new(seed, user, interval)
        })
        .collect()
}

pub async fn create_fleet(
    client: &Client,
    opts: &Options,
    users_stats: &Endpoint,
    activities_stats: &Endpoint,
    bar: &ProgressBar,
) -> anyhow::Result<(Fleet, SetupTimes)> {
    let athletes = athletes(opts);
    let users = opts.users();

    bar.set_length(users as u64);
    bar.set_position(0);
    bar.set_message("creating users");
    let started = Instant::now();
    let base = opts.target.clone();
    let created = create_all(client, opts, users, bar, users_stats, move |i| {
        (
            format!("{base}/v1/users"),
            None,
            format!(r#"{{"name":"loadgen athlete {i}"}}"#),
        )
    })
    .await
    .context("creating users")?;
    let tokens: Vec<Box<str>> = created
        .into_iter()
        .map(|c| c.token.map(String::into_boxed_str))
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow!("POST /v1/users answered without a token"))?;
    let users_took = started.elapsed();

    bar.set_length(athletes.len() as u64);
    bar.set_position(0);
    bar.set_message("creating activities");
    let started = Instant::now();
    let tokens = Arc::new(tokens);
    let kinds: Arc<Vec<(Kind, u32)>> =
        Arc::new(athletes.iter().map(|a| (a.kind, a.user)).collect());
    let base = opts.target.clone();
    let toks = tokens.clone();
    let created = create_all(
        client,
        opts,
        athletes.len(),
        bar,
        activities_stats,
        move |i| {
            let (kind, user) = kinds[i];
            (
                format!("{base}/v1/activities"),
                Some(toks[user as usize].to_string()),
                format!(r#"{{"type":"{}","visibility":"friends"}}"#, kind.as_str()),
            )
        },
    )
    .await
    .context("creating activities")?;
    let activity_ids = created
        .iter()
        .map(|c| parse_uuid(&c.id))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| anyhow!("POST /v1/activities answered with a malformed id"))?;
    let activities_took = started.elapsed();

    let tokens = Arc::try_unwrap(tokens).unwrap_or_else(|t| (*t).clone());
    Ok((
        Fleet {
            tokens,
            activity_ids,
            athletes,
        },
        SetupTimes {
            users: users_took,
            activities: activities_took,
        },
    ))
}

/// Creates `n` resources with `setup_concurrency` workers; `request(i)`
/// gives the URL, token and body of the i-th. Retries a failed creation a
/// few times (with a pause when the server says it is overloaded).
async fn create_all<F>(
    client: &Client,
    opts: &Options,
    n: usize,
    bar: &ProgressBar,
    stats: &Endpoint,
    request: F,
) -> anyhow::Result<Vec<Created>>
where
    F: Fn(usize) -> (String, Option<String>, String) + Send + Sync + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let request = Arc::new(request);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..opts.setup_concurrency.min(n.max(1)) {
        let (client, next, request, bar) =
            (client.clone(), next.clone(), request.clone(), bar.clone());
        workers.spawn(async move {
            let mut done = Vec::new();
            let mut latencies = Vec::new();
            let mut failures = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let (url, token, body) = request(i);
                let mut attempt = 0;
                loop {
                    let sent = Instant::now();
                    let res = post_json(&client, &url, token.as_deref(), body.clone()).await;
                    match res {
                        Ok((StatusCode::CREATED, text)) => {
                            latencies.push(sent.elapsed());
                            let created: Created = serde_json::from_str(&text)
                                .map_err(|e| anyhow!("unexpected reply {text:?}: {e}"))?;
                            done.push((i, created));
                            break;
                        }
                        Ok((status, text)) => {
                            failures.push((crate::client::status_kind(status), sent.elapsed()));
                            attempt += 1;
                            if attempt >= ATTEMPTS {
                                bail!("{url}: {status} {text}");
                            }
                        }
                        Err(kind) => {
                            failures.push((kind.clone(), sent.elapsed()));
                            attempt += 1;
                            if attempt >= ATTEMPTS {
                                bail!("{url}: {}", kind.label());
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                bar.inc(1);
            }
            Ok::<_, anyhow::Error>((done, latencies, failures))
        });
    }
    let mut all: Vec<Option<Created>> = (0..n).map(|_| None).collect();
    while let Some(joined) = workers.join_next().await {
        let (done, latencies, failures) = joined??;
        for l in latencies {
            stats.ok(l, 0, 0, 0);
        }
        for (kind, l) in failures {
            stats.error(kind, Some(l), 0);
        }
        for (i, c) in done {
            all[i] = Some(c);
        }
    }
    all.into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| anyhow!("a creation went missing"))
}

pub fn parse_uuid(s: &str) -> Option<u128> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(&hex, 16).ok()
}

pub fn format_uuid(v: u128) -> String {
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_round_trip() {
        let s = "0192f1c4-7a3b-7c9d-8e0f-123456789abc";
        assert_eq!(format_uuid(parse_uuid(s).unwrap()), s);
    }
}
