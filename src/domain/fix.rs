//! A position fix as any client sends it, decoded from its wire format but
//! not yet checked: the one shape every ingest format maps into (today's
//! JSON points, and the phone trackers' formats), so that the rules that
//! make a fix a `Point` live in one place (`Fix::validate`).

use super::point::{MAX_FUTURE_SKEW_MS, Point, PointWindow, RejectCode, WINDOW_SLACK_MS};
use super::time::Millis;

/// Altitudes a fix may have: the Dead Sea shore to well above Everest.
pub const ALT_RANGE_M: std::ops::RangeInclusive<f64> = -1_000.0..=10_000.0;
/// Speeds a fix may report (no sport tracked here goes faster).
pub const SPEED_RANGE_M_S: std::ops::RangeInclusive<f64> = 0.0..=150.0;
/// Horizontal accuracy a fix may report.
pub const ACCURACY_RANGE_M: std::ops::RangeInclusive<f64> = 0.0..=100_000.0;
/// Heart rate and cadence.
pub const PER_MINUTE_RANGE: std::ops::RangeInclusive<f64> = 0.0..=300.0;

/// Units are the API's: metres, m/s, beats and steps per minute.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Fix {
    pub ts: Millis,
    pub lat: f64,
    pub lng: f64,
    pub alt: Option<f64>,
    pub speed: Option<f64>,
    pub accuracy: Option<f64>,
    pub hr: Option<f64>,
    pub cadence: Option<f64>,
    /// The phone's battery, in percent.
    pub battery: Option<f64>,
}

impl Fix {
    /// The point this fix is, if its numbers are finite and in range and its
    /// time falls inside the activity's window.
    pub fn validate(&self, window: PointWindow) -> Result<Point, RejectCode> {
        let (ts, lat, lng) = (self.ts, self.lat, self.lng);
        let optionals = [
            self.alt,
            self.speed,
            self.accuracy,
            self.hr,
            self.cadence,
            self.battery,
        ];
        if !lat.is_finite()
            || !lng.is_finite()
            || optionals.iter().flatten().any(|v| !v.is_finite())
        {
            return Err(RejectCode::NonFinite);
        }
        if !(-90.0..=90.0).contains(&lat) {
            return Err(RejectCode::LatOutOfRange);
        }
        if !(-180.0..=180.0).contains(&lng) {
            return Err(RejectCode::LngOutOfRange);
        }
        let within = |v: Option<f64>, range: std::ops::RangeInclusive<f64>| {
            v.is_none_or(|v| range.contains(&v))
        };
        if !within(self.alt, ALT_RANGE_M)
            || !within(self.speed, SPEED_RANGE_M_S)
            || !within(self.accuracy, ACCURACY_RANGE_M)
            || !within(self.hr, PER_MINUTE_RANGE)
            || !within(self.cadence, PER_MINUTE_RANGE)
            || !within(self.battery, 0.0..=100.0)
        {
            return Err(RejectCode::InvalidValue);
        }
        if ts > window.now + MAX_FUTURE_SKEW_MS {
            return Err(RejectCode::TsInFuture);
        }
        if ts < window.started_at - WINDOW_SLACK_MS {
            return Err(RejectCode::TsBeforeStart);
        }
        if window.finished_at.is_some_and(|f| ts > f + WINDOW_SLACK_MS) {
            return Err(RejectCode::TsAfterFinish);
        }
        Ok(Point {
            ts,
            lat,
            lng,
            alt: self.alt,
            speed: self.speed,
            accuracy: self.accuracy,
            hr: self.hr.map(|v| v.round() as u16),
            cadence: self.cadence.map(|v| v.round() as u16),
            battery: self.battery.map(|v| v.round() as u8),
        })
    }
}
