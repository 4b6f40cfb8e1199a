//! The out-of-order benchmark (`--order-test N`): what a late point costs.
//!
//! An offline phone uploads its backlog with fixes out of order; the server
//! must fold each late point into the running statistics without
//! re-reading the whole track. This posts the same N-point tracks twice,
//! one point per request: first in time order, then shuffled within blocks
//! of `--order-block` (a fixed permutation per block: reversed, then the
//! first and middle swapped). `--order-tracks` activities go at once, each
//! posted sequentially (order is the point). The figure is the shuffled
//! run's wall time over the in-order run's, measured in the same process
//! against the same server; the issue's target is at most 1.3.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use reqwest::{Client, StatusCode};
use serde::Serialize;

use crate::Options;
use crate::client::post_json;

#[derive(Debug, Serialize)]
pub struct OrderReport {
    pub points: usize,
    pub block: usize,
    pub tracks: usize,
    pub in_order_s: f64,
    pub shuffled_s: f64,
    /// shuffled_s / in_order_s.
    pub ratio: f64,
    pub in_order_points_per_s: f64,
    pub shuffled_points_per_s: f64,
}

impl OrderReport {
    pub fn to_text(&self) -> String {
        format!(
            "out-of-order ingest: {} tracks x {} points, one point per request, shuffled \
             within blocks of {}\n  in order   {:>8.2} s  {:>9.0} points/s\n  shuffled   \
             {:>8.2} s  {:>9.0} points/s\n  ratio      {:>8.2}  (shuffled / in order)\n",
            self.tracks,
            self.points,
            self.block,
            self.in_order_s,
            self.in_order_points_per_s,
            self.shuffled_s,
            self.shuffled_points_per_s,
            self.ratio,
        )
    }
}

/// The permutation of `0..n` that posts blocks of `block` out of order.
pub fn shuffled(n: usize, block: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for b in order.chunks_mut(block.max(1)) {
        b.reverse();
        let mid = b.len() / 2;
        b.swap(0, mid);
    }
    order
}

pub async fn run(
    opts: &Options,
    points: usize,
    block: usize,
    tracks: usize,
) -> anyhow::Result<OrderReport> {
    let client = crate::client::pool(tracks * 2, Duration::from_millis(opts.request_timeout_ms))?;
    let base = &opts.target;
    let (status, text) = post_json(
        &client,
        &format!("{base}/v1/users"),
        None,
        r#"{"name":"loadgen order test"}"#.into(),
    )
    .await
    .map_err(|e| anyhow!("creating a user: {}", e.label()))?;
    if status != StatusCode::CREATED {
        bail!("creating a user: {status} {text}");
    }
    let token: String = serde_json::from_str::<serde_json::Value>(&text)?["token"]
        .as_str()
        .context("no token in the user reply")?
        .into();
    let in_order: Vec<usize> = (0..points).collect();
    let in_order_s = phase(&client, base, &token, points, tracks, &in_order).await?;
    let order = shuffled(points, block);
    let shuffled_s = phase(&client, base, &token, points, tracks, &order).await?;
    let total = (points * tracks) as f64;
    Ok(OrderReport {
        points,
        block,
        tracks,
        in_order_s,
        shuffled_s,
        ratio: shuffled_s / in_order_s,
        in_order_points_per_s: total / in_order_s,
        shuffled_points_per_s: total / shuffled_s,
    })
}

/// Creates `tracks` activities started `points` seconds ago and posts each
/// one's points in `order`, one per request; returns the wall time.
async fn phase(
    client: &Client,
    base: &str,
    token: &str,
    points: usize,
    tracks: usize,
    order: &[usize],
) -> anyhow::Result<f64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let t0 = now - points as i64 * 1000 - 60_000;
    let mut ids = Vec::new();
    for _ in 0..tracks {
        let (status, text) = post_json(
            client,
            &format!("{base}/v1/activities"),
            Some(token),
            format!(r#"{{"type":"RUN","started_at":{t0}}}"#),
        )
        .await
        .map_err(|e| anyhow!("creating an activity: {}", e.label()))?;
        if status != StatusCode::CREATED {
            bail!("creating an activity: {status} {text}");
        }
        let id: String = serde_json::from_str::<serde_json::Value>(&text)?["id"]
            .as_str()
            .context("no id in the activity reply")?
            .into();
        ids.push(id);
    }
    let started = Instant::now();
    let mut posting = tokio::task::JoinSet::new();
    for (k, id) in ids.into_iter().enumerate() {
        let (client, token, order) = (client.clone(), token.to_string(), order.to_vec());
        let url = format!("{base}/v1/activities/{id}/points");
        posting.spawn(async move {
            for i in order {
                // About 3 m/s north with a gentle climb: every point moves.
                let ts = t0 + i as i64 * 1000;
                let lat = 48.0 + k as f64 * 0.01 + i as f64 * 3.0 / 111_195.0;
                let alt = 500.0 + (i as f64 / 120.0).sin() * 30.0;
                let body = format!(r#"{{"ts":{ts},"lat":{lat},"lng":11.0,"alt":{alt:.1}}}"#);
                let (status, text) = post_json(&client, &url, Some(&token), body)
                    .await
                    .map_err(|e| anyhow!("posting a point: {}", e.label()))?;
                if status != StatusCode::OK {
                    bail!("posting a point: {status} {text}");
                }
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = posting.join_next().await {
        done??;
    }
    Ok(started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_shuffle_is_a_permutation_that_moves_points_back() {
        let order = super::shuffled(25, 10);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..25).collect::<Vec<_>>());
        assert_eq!(&order[..10], &[4, 8, 7, 6, 5, 9, 3, 2, 1, 0]);
        assert!(order.windows(2).filter(|w| w[1] < w[0]).count() > 10);
    }
}
