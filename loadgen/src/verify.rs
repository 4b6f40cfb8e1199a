//! The durability check: every point the server acknowledged is readable.
//!
//! Acknowledged fixes are `0..acked` of each athlete, and fix times are a
//! pure function of the athlete (see `sim`), so the expected timestamps are
//! re-derived and compared with `GET /v1/activities/{id}/route`.

use std::collections::HashSet;

use reqwest::{Client, StatusCode};
use serde::Serialize;

use crate::client;
use crate::options::Options;
use crate::setup::Fleet;
use crate::sim::Shape;

#[derive(Debug, Clone, Serialize, Default)]
pub struct VerifyReport {
    pub activities_checked: usize,
    pub acked_points: u64,
    pub stored_points: u64,
    pub missing_points: u64,
    /// Route reads that failed (status or transport).
    pub read_errors: u64,
    /// A few missing points, as "activity ts".
    pub examples: Vec<String>,
}

/// Checks `sample` activities spread evenly over the fleet.
pub async fn check(
    client: &Client,
    opts: &Options,
    fleet: &Fleet,
    base_ms: i64,
    shape: Shape,
    sample: usize,
) -> VerifyReport {
    let n = fleet.athletes.len();
    let sample = sample.min(n);
    let mut report = VerifyReport::default();
    for k in 0..sample {
        let i = k * n / sample;
        let a = &fleet.athletes[i];
        let id = fleet.activity_id(i);
        let url = format!("{}/v1/activities/{id}/route", opts.target);
        let stored: HashSet<i64> = match client::get(client, &url, fleet.token_of(i)).await {
            Ok((StatusCode::OK, text)) => route_timestamps(&text).into_iter().collect(),
            _ => {
                report.read_errors += 1;
                continue;
            }
        };
        report.activities_checked += 1;
        report.stored_points += stored.len() as u64;
        for fix in 0..a.acked() {
            report.acked_points += 1;
            let ts = base_ms + a.fix_at(fix, shape) as i64;
            if !stored.contains(&ts) {
                report.missing_points += 1;
                if report.examples.len() < 5 {
                    report.examples.push(format!("{id} {ts}"));
                }
            }
        }
    }
    report
}

/// The `ts` of every point in a route reply (RFC 3339 or epoch ms).
pub fn route_timestamps(json: &str) -> Vec<i64> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    v["points"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| match &p["ts"] {
                    serde_json::Value::String(s) => parse_rfc3339_ms(s),
                    other => other.as_i64(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` (what the server writes) to epoch ms.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let ms: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    let days = days_from_civil(y, m, day);
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms)
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_servers_timestamps() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2026-11-23T10:34:19.123Z"),
            Some(1_795_430_059_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T23:59:59.5Z"),
            Some(1_709_251_199_500)
        );
    }
}
