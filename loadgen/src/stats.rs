//! Per-endpoint measurements: a latency histogram (µs, from the planned send
//! time), request and point counts, and errors by kind.
//!
//! Request tasks record into `Stats` behind a `std::sync::Mutex` per
//! endpoint; each critical section is a histogram increment and a few
//! additions, far below the cost of the request itself.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histograms resolve: 5 minutes, in µs.
const MAX_LATENCY_US: u64 = 300_000_000;

/// What went wrong with one request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// 503 with Retry-After: the server's write queue is full.
    Overloaded,
    Status(u16),
    Connect,
    Timeout,
    /// Any other transport or body error.
    Other,
    /// The loadgen had too many requests waiting for a connection and
    /// skipped this post (the fixes go with the next one).
    ClientBacklog,
    /// A point in an acknowledged batch was rejected, by code.
    Rejected(String),
}

impl ErrorKind {
    pub fn label(&self) -> String {
        match self {
            ErrorKind::Overloaded => "overloaded (503)".into(),
            ErrorKind::Status(s) => format!("status {s}"),
            ErrorKind::Connect => "connect".into(),
            ErrorKind::Timeout => "timeout".into(),
            ErrorKind::Other => "other".into(),
            ErrorKind::ClientBacklog => "client backlog".into(),
            ErrorKind::Rejected(code) => format!("point rejected: {code}"),
        }
    }
}

pub struct Endpoint {
    pub name: &'static str,
    inner: Mutex<Inner>,
}

struct Inner {
    latency: Histogram<u64>,
    ok: u64,
    points_sent: u64,
    points_accepted: u64,
    points_duplicate: u64,
    errors: BTreeMap<ErrorKind, u64>,
}

/// A copy of an endpoint's numbers at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointSummary {
    pub endpoint: String,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub requests_per_s: f64,
    pub ok_per_s: f64,
    pub points_sent: u64,
    pub points_accepted: u64,
    pub points_duplicate: u64,
    pub points_acked_per_s: f64,
    pub latency_ms: Latency,
    pub errors_by_kind: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// An empty histogram of µs, 1 µs to 5 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Quantiles of a histogram of µs, in ms.
pub fn latency_of(h: &Histogram<u64>) -> Latency {
    let ms = |us: u64| us as f64 / 1000.0;
    let q = |x: f64| ms(h.value_at_quantile(x));
    Latency {
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p999: q(0.999),
        max: ms(h.max()),
        mean: h.mean() / 1000.0,
    }
}

impl Endpoint {
    pub fn new(name: &'static str) -> Endpoint {
        Endpoint {
            name,
            inner: Mutex::new(Inner {
                latency: histogram(),
                ok: 0,
                points_sent: 0,
                points_accepted: 0,
                points_duplicate: 0,
                errors: BTreeMap::new(),
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut inner)
    }

    /// A request answered successfully, `latency` from its planned time.
    pub fn ok(&self, latency: Duration, points_sent: u64, accepted: u64, duplicate: u64) {
        self.with(|i| {
            i.latency.saturating_record(latency.as_micros() as u64);
            i.ok += 1;
            i.points_sent += points_sent;
            i.points_accepted += accepted;
            i.points_duplicate += duplicate;
        });
    }

    /// A failed request; failures are in the latency histogram too (a
    /// timeout is a very slow answer), except those never sent.
    pub fn error(&self, kind: ErrorKind, latency: Option<Duration>, points_sent: u64) {
        self.with(|i| {
            if let Some(l) = latency {
                i.latency.saturating_record(l.as_micros() as u64);
            }
            i.points_sent += points_sent;
            *i.errors.entry(kind).or_insert(0) += 1;
        });
    }

    /// Points refused inside an acknowledged batch (not request errors).
    pub fn rejected(&self, code: &str, n: u64) {
        self.with(|i| {
            *i.errors
                .entry(ErrorKind::Rejected(code.to_string()))
                .or_insert(0) += n
        });
    }

    pub fn requests(&self) -> u64 {
        self.with(|i| i.ok + request_errors(&i.errors))
    }

    pub fn summary(&self, elapsed: Duration) -> EndpointSummary {
        self.with(|i| {
            let secs = elapsed.as_secs_f64().max(1e-9);
            let errors = request_errors(&i.errors);
            EndpointSummary {
                endpoint: self.name.to_string(),
                requests: i.ok + errors,
                ok: i.ok,
                errors,
                requests_per_s: (i.ok + errors) as f64 / secs,
                ok_per_s: i.ok as f64 / secs,
                points_sent: i.points_sent,
                points_accepted: i.points_accepted,
                points_duplicate: i.points_duplicate,
                points_acked_per_s: (i.points_accepted + i.points_duplicate) as f64 / secs,
                latency_ms: latency_of(&i.latency),
                errors_by_kind: i.errors.iter().map(|(k, n)| (k.label(), *n)).collect(),
            }
        })
    }
}

fn request_errors(errors: &BTreeMap<ErrorKind, u64>) -> u64 {
    errors
        .iter()
        .filter(|(k, _)| !matches!(k, ErrorKind::Rejected(_)))
        .map(|(_, n)| n)
        .sum()
}
