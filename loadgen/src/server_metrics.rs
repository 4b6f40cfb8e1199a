//! The server's own view of its memory: `/metrics` gauges read before and
//! after setup (and after the run) to price one live activity in bytes.

use reqwest::Client;
use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Sample {
    pub resident_bytes: f64,
    pub hot_activities: f64,
}

/// Reads the two gauges; `None` if the server does not export them.
pub async fn sample(client: &Client, base: &str) -> Option<Sample> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(Sample {
        resident_bytes: gauge(&text, "trailcast_process_resident_bytes")?,
        hot_activities: gauge(&text, "trailcast_hot_activities")?,
    })
}

/// The value of an unlabelled gauge in Prometheus text format.
pub fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = rest.strip_prefix(' ').or_else(|| {
            // A labelled series: `name{...} value`.
            rest.starts_with('{')
                .then(|| rest.split_once("} ").map(|(_, v)| v))?
        })?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Memory per live activity between two samples.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PerActivity {
    pub before: Sample,
    pub after: Sample,
    pub resident_delta_bytes: f64,
    pub hot_delta: f64,
    pub bytes_per_activity: Option<f64>,
}

pub fn per_activity(before: Sample, after: Sample) -> PerActivity {
    let resident_delta_bytes = after.resident_bytes - before.resident_bytes;
    let hot_delta = after.hot_activities - before.hot_activities;
    PerActivity {
        before,
        after,
        resident_delta_bytes,
        hot_delta,
        bytes_per_activity: (hot_delta > 0.0).then(|| resident_delta_bytes / hot_delta),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_gauges_and_ignores_similar_names() {
        let text = "# TYPE trailcast_hot_activities gauge\n\
                    trailcast_hot_activities_total 9\n\
                    trailcast_hot_activities 42\n\
                    trailcast_process_resident_bytes 1.5e6\n";
        assert_eq!(gauge(text, "trailcast_hot_activities"), Some(42.0));
        assert_eq!(gauge(text, "trailcast_process_resident_bytes"), Some(1.5e6));
        assert_eq!(gauge(text, "missing"), None);
    }
}
