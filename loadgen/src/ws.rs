//! WebSocket watchers (`--ws-watchers`): one task per watcher, holding one
//! WebSocket to `GET /v1/activities/{id}/live/ws?lag=…&token=…` for the
//! ingest phase.
//!
//! Watcher `w` of `W` watches activity `w * athletes / W` (evenly spread;
//! several per activity when there are more watchers than activities) with
//! its athlete's token. The tasks start with the phase and connect at most
//! `WS_CONNECT_CONCURRENCY` handshakes at a time; a failed or timed-out
//! handshake is a connect error by kind and the task ends. Connected, a
//! task reads until the phase stops it (it then closes with 1000 and waits
//! briefly for the server's close) or the server closes: with 1000 the
//! activity finished, any other code or a reset is a watcher dropped.
//! tungstenite answers the server's pings while the task keeps reading.
//!
//! Each text message is parsed in place and dropped (nothing is buffered).
//! For every point of a `points` message the delay from the point's `ts` to
//! its arrival here (epoch clock) goes into a histogram: that is playback
//! delay, which includes the lag the watcher asked for, not a request
//! latency. Points of the `catch_up` message are counted apart (they were
//! released before the watcher connected).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::options::{Options, WS_CONNECT_CONCURRENCY};
use crate::setup::Fleet;
use crate::stats::{ErrorKind, Latency, histogram, latency_of};
use crate::verify::parse_rfc3339_ms;

pub const ENDPOINT: &str = "GET /v1/activities/{id}/live/ws";
/// How long a closing watcher waits for the server's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The WebSocket watchers of one phase.
pub struct WsWatchers {
    stats: Arc<WsStats>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    lag_s: f64,
}

impl WsWatchers {
    /// Spawns `opts.ws_watchers` watcher tasks; they connect at once.
    pub fn start(opts: &Options, fleet: &Fleet) -> anyhow::Result<WsWatchers> {
        let stats = Arc::new(WsStats::new());
        let (stop, stopped) = watch::channel(false);
        let connects = Arc::new(Semaphore::new(WS_CONNECT_CONCURRENCY));
        let mut tasks = Vec::with_capacity(opts.ws_watchers);
        for w in 0..opts.ws_watchers {
            let i = activity_of(w, opts.ws_watchers, fleet.athletes.len());
            let url = watch_url(opts, &fleet.activity_id(i), fleet.token_of(i))?;
            tasks.push(tokio::spawn(watcher(
                url,
                stats.clone(),
                connects.clone(),
                opts.request_timeout(),
                stopped.clone(),
            )));
        }
        Ok(WsWatchers {
            stats,
            stop,
            tasks,
            lag_s: opts.watch_lag,
        })
    }

    /// Watchers connected and not yet closed (for the progress line).
    pub fn open(&self) -> u64 {
        self.stats.with(|i| i.open)
    }

    /// Ends the phase for every watcher: each closes its socket.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits for every watcher to close (stopping them if not done yet);
    /// rates are over `window`.
    pub async fn finish(self, window: Duration) -> WsSummary {
        self.stop();
        for t in self.tasks {
            let _ = t.await;
        }
        self.stats.summary(window, self.lag_s)
    }
}

/// The activity watcher `w` of `watchers` watches: evenly spaced over the
/// `activities`, each watched by `watchers / activities` (rounded down or up).
pub fn activity_of(w: usize, watchers: usize, activities: usize) -> usize {
    (w as u128 * activities as u128 / watchers.max(1) as u128) as usize
}

/// `ws://…/v1/activities/{id}/live/ws?lag=…&token=…` on the target.
pub fn watch_url(opts: &Options, activity: &str, token: &str) -> anyhow::Result<String> {
    let mut url =
        reqwest::Url::parse(&format!("{}/v1/activities/{activity}/live/ws", opts.target))?;
    let scheme = match url.scheme() {
        "http" => "ws",
        other => anyhow::bail!("WebSocket watchers need an http:// target, not {other}://"),
    };
    url.set_scheme(scheme)
        .map_err(|_| anyhow::anyhow!("cannot make a ws:// URL of {}", opts.target))?;
    url.query_pairs_mut()
        .append_pair("lag", &opts.watch_lag.to_string())
        .append_pair("token", token);
    Ok(url.into())
}

/// Small buffers: a watcher receives messages of at most 100 points.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
}

enum End {
    /// The phase ended while connected.
    Stopped,
    /// The server sent a close frame (with this code, if any).
    Closed(Option<u16>),
    /// The connection failed or ended without a close frame.
    Failed(&'static str),
}

async fn watcher(
    url: String,
    stats: Arc<WsStats>,
    connects: Arc<Semaphore>,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ws = {
        let permit = tokio::select! {
            permit = connects.acquire() => permit,
            _ = stop.wait_for(|s| *s) => {
                stats.with(|i| i.not_connected += 1);
                return;
            }
        };
        let started = Instant::now();
        let handshake = tokio_tungstenite::connect_async_with_config(url, Some(config()), true);
        let result = tokio::select! {
            r = tokio::time::timeout(timeout, handshake) => r,
            _ = stop.wait_for(|s| *s) => {
                stats.with(|i| i.not_connected += 1);
                return;
            }
        };
        drop(permit);
        match result {
            Ok(Ok((ws, _))) => {
                let took = started.elapsed();
                stats.with(|i| {
                    i.connect.saturating_record(took.as_micros() as u64);
                    i.connected += 1;
                    i.open += 1;
                });
                ws
            }
            Ok(Err(e)) => {
                stats.connect_failed(connect_kind(&e));
                return;
            }
            Err(_) => {
                stats.connect_failed(ErrorKind::Timeout);
                return;
            }
        }
    };
    let mut points = 0u64;
    let end = loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break End::Stopped,
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => points += stats.message(&text),
                Some(Ok(Message::Close(frame))) => break End::Closed(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => {}
                Some(Err(e)) => break End::Failed(failure(&e)),
                None => break End::Failed("ended without a close frame"),
            },
        }
    };
    // Finish the closing handshake (ours, or the reply to the server's),
    // without counting what still arrives.
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        if matches!(end, End::Stopped) {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: Utf8Bytes::from_static("loadgen phase over"),
            };
            let _ = ws.close(Some(frame)).await;
        }
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    stats.with(|i| {
        i.open -= 1;
        match end {
            End::Stopped => i.still_connected += 1,
            End::Closed(Some(1000)) => i.finished += 1,
            End::Closed(Some(code)) => *i.dropped.entry(format!("close {code}")).or_insert(0) += 1,
            End::Closed(None) => *i.dropped.entry("close without code".into()).or_insert(0) += 1,
            End::Failed(why) => *i.dropped.entry(why.to_string()).or_insert(0) += 1,
        }
        if points == 0 {
            i.watchers_without_points += 1;
        }
        i.points_per_watcher_min = i.points_per_watcher_min.min(points);
        i.points_per_watcher_max = i.points_per_watcher_max.max(points);
    });
}

fn connect_kind(e: &WsError) -> ErrorKind {
    match e {
        WsError::Http(response) => match response.status().as_u16() {
            503 => ErrorKind::Overloaded,
            status => ErrorKind::Status(status),
        },
        WsError::Io(_) => ErrorKind::Connect,
        _ => ErrorKind::Other,
    }
}

fn failure(e: &WsError) -> &'static str {
    match e {
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            "reset without a close frame"
        }
        WsError::Io(_) => "i/o error",
        WsError::Capacity(_) => "message too large",
        WsError::Protocol(_) => "protocol error",
        _ => "other error",
    }
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    points: Vec<IncomingPoint<'a>>,
}

#[derive(Deserialize)]
struct IncomingPoint<'a> {
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(default)]
    late: bool,
}

/// What every watcher of a phase received, behind one lock (taken once per
/// message).
pub struct WsStats {
    inner: Mutex<Inner>,
}

struct Inner {
    /// Receive time − point ts, µs.
    delay: Histogram<u64>,
    /// Handshake time, µs.
    connect: Histogram<u64>,
    connected: u64,
    open: u64,
    connect_errors: BTreeMap<ErrorKind, u64>,
    not_connected: u64,
    still_connected: u64,
    finished: u64,
    dropped: BTreeMap<String, u64>,
    messages: u64,
    points: u64,
    catch_up_points: u64,
    late_points: u64,
    malformed: u64,
    watchers_without_points: u64,
    points_per_watcher_min: u64,
    points_per_watcher_max: u64,
}

/// The WebSocket watchers' numbers for the report.
#[derive(Debug, Clone, Serialize)]
pub struct WsSummary {
    pub endpoint: String,
    pub lag_s: f64,
    pub watchers: u64,
    pub connected: u64,
    pub connect_errors: u64,
    pub connect_errors_by_kind: BTreeMap<String, u64>,
    /// Still waiting for a handshake when the phase ended.
    pub not_connected: u64,
    pub connect_ms: Latency,
    /// Connected when the phase ended (then closed by the loadgen).
    pub still_connected_at_end: u64,
    /// Closed by the server with 1000 (the activity finished).
    pub finished_by_server: u64,
    /// Closed by the server with another code, or reset.
    pub dropped_by_server: u64,
    pub dropped_by_reason: BTreeMap<String, u64>,
    pub messages: u64,
    pub messages_per_s: f64,
    /// Points in `points` messages (each one's delay is measured).
    pub points: u64,
    pub points_per_s: f64,
    /// Points in the `catch_up` messages (not in the delay histogram).
    pub catch_up_points: u64,
    /// Points the server marked `late` (older than one already sent).
    pub late_points: u64,
    pub malformed_messages: u64,
    /// Points (catch-up included) per connected watcher.
    pub points_per_watcher_min: u64,
    pub points_per_watcher_max: u64,
    pub watchers_without_points: u64,
    /// Receive time here minus the point's `ts`: playback delay, which
    /// includes the lag, ingest latency and how long the phone held the fix
    /// (offline uploads); not a request latency.
    pub delay_after_ts_ms: Latency,
}

impl Default for WsStats {
    fn default() -> Self {
        Self::new()
    }
}

impl WsStats {
    pub fn new() -> WsStats {
        WsStats {
            inner: Mutex::new(Inner {
                delay: histogram(),
                connect: histogram(),
                connected: 0,
                open: 0,
                connect_errors: BTreeMap::new(),
                not_connected: 0,
                still_connected: 0,
                finished: 0,
                dropped: BTreeMap::new(),
                messages: 0,
                points: 0,
                catch_up_points: 0,
                late_points: 0,
                malformed: 0,
                watchers_without_points: 0,
                points_per_watcher_min: u64::MAX,
                points_per_watcher_max: 0,
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut inner)
    }

    fn connect_failed(&self, kind: ErrorKind) {
        self.with(|i| *i.connect_errors.entry(kind).or_insert(0) += 1);
    }

    /// Counts one text message and measures its points; returns how many
    /// points it carried.
    pub fn message(&self, text: &str) -> u64 {
        let now_us = epoch_us();
        let parsed = serde_json::from_str::<Incoming>(text);
        self.with(|i| {
            i.messages += 1;
            let Ok(m) = parsed else {
                i.malformed += 1;
                return 0;
            };
            let n = m.points.len() as u64;
            if m.kind == "catch_up" {
                i.catch_up_points += n;
                return n;
            }
            for p in &m.points {
                match parse_rfc3339_ms(&p.ts) {
                    Some(ts) => {
                        let delay = (now_us - ts * 1000).max(0) as u64;
                        i.delay.saturating_record(delay);
                        i.points += 1;
                        i.late_points += p.late as u64;
                    }
                    None => i.malformed += 1,
                }
            }
            n
        })
    }

    pub fn summary(&self, window: Duration, lag_s: f64) -> WsSummary {
        self.with(|i| {
            let secs = window.as_secs_f64().max(1e-9);
            let connect_errors = i.connect_errors.values().sum();
            let ended = i.still_connected + i.finished + i.dropped.values().sum::<u64>();
            WsSummary {
                endpoint: ENDPOINT.to_string(),
                lag_s,
                watchers: i.connected + connect_errors + i.not_connected,
                connected: i.connected,
                connect_errors,
                connect_errors_by_kind: i
                    .connect_errors
                    .iter()
                    .map(|(k, n)| (k.label(), *n))
                    .collect(),
                not_connected: i.not_connected,
                connect_ms: latency_of(&i.connect),
                still_connected_at_end: i.still_connected,
                finished_by_server: i.finished,
                dropped_by_server: i.dropped.values().sum(),
                dropped_by_reason: i.dropped.clone(),
                messages: i.messages,
                messages_per_s: i.messages as f64 / secs,
                points: i.points,
                points_per_s: i.points as f64 / secs,
                catch_up_points: i.catch_up_points,
                late_points: i.late_points,
                malformed_messages: i.malformed,
                points_per_watcher_min: if ended > 0 {
                    i.points_per_watcher_min
                } else {
                    0
                },
                points_per_watcher_max: i.points_per_watcher_max,
                watchers_without_points: i.watchers_without_points,
                delay_after_ts_ms: latency_of(&i.delay),
            }
        })
    }
}

fn epoch_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_points_and_measures_their_delay() {
        let stats = WsStats::new();
        let now = epoch_us() / 1000;
        let ts = |ms: i64| {
            // The server's format: UTC with milliseconds.
            let days = ms.div_euclid(86_400_000);
            let rest = ms.rem_euclid(86_400_000);
            let (y, m, d) = civil_from_days(days);
            format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                rest / 3_600_000,
                rest / 60_000 % 60,
                rest / 1000 % 60,
                rest % 1000
            )
        };
        let catch_up = format!(
            r#"{{"type":"catch_up","points":[{{"ts":"{}","lat":1,"lng":2}}],"state":"ACTIVE"}}"#,
            ts(now - 60_000)
        );
        assert_eq!(stats.message(&catch_up), 1);
        let points = format!(
            r#"{{"type":"points","points":[{{"ts":"{}","lat":1,"lng":2}},{{"ts":"{}","lat":1,"lng":2,"late":true}}],"cursor":"1-0"}}"#,
            ts(now - 8_000),
            ts(now - 9_000)
        );
        assert_eq!(stats.message(&points), 2);
        assert_eq!(
            stats.message(r#"{"type":"stats","stats":{"distance_m":3}}"#),
            0
        );
        assert_eq!(stats.message("not json"), 0);
        let s = stats.summary(Duration::from_secs(2), 8.0);
        assert_eq!(s.messages, 4);
        assert_eq!((s.points, s.catch_up_points, s.late_points), (2, 1, 1));
        assert_eq!(s.malformed_messages, 1);
        assert_eq!(s.points_per_s, 1.0);
        let d = s.delay_after_ts_ms;
        assert!(d.p50 >= 8_000.0 && d.p50 < 8_500.0, "{d:?}");
        assert!(d.max >= 9_000.0 && d.max < 9_500.0, "{d:?}");
    }

    /// Inverse of `verify`'s `days_from_civil`, for the test's timestamps.
    fn civil_from_days(z: i64) -> (i64, i64, i64) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        (yoe + era * 400 + i64::from(m <= 2), m, d)
    }

    #[test]
    fn watchers_spread_evenly_over_activities() {
        let picks: Vec<usize> = (0..4).map(|w| activity_of(w, 4, 100)).collect();
        assert_eq!(picks, [0, 25, 50, 75]);
        let mut per = [0; 3];
        for w in 0..10 {
            per[activity_of(w, 10, 3)] += 1;
        }
        assert_eq!(per, [4, 3, 3]);
    }

    #[test]
    fn ws_urls_carry_lag_and_token() {
        let opts = <Options as clap::Parser>::parse_from([
            "loadgen",
            "--target",
            "http://127.0.0.1:8080",
            "--watch-lag",
            "7.5",
        ]);
        let url = watch_url(&opts, "0192f1c4-7a3b-7c9d-8e0f-123456789abc", "t/k+n").unwrap();
        assert_eq!(
            url,
            "ws://127.0.0.1:8080/v1/activities/0192f1c4-7a3b-7c9d-8e0f-123456789abc/live/ws\
             ?lag=7.5&token=t%2Fk%2Bn"
        );
    }
}
