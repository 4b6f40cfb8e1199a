//! A GPS fix as the phone sends it, and the rules that make it a `Point`.
//!
//! A `Point` exists only if its numbers are finite and in range and its
//! timestamp falls inside the activity's window; `PointInput::validate` is the
//! one place that checks. Identity is (activity, `ts`): the same `ts` sent twice
//! is the same point.

use serde::{Deserialize, Serialize};

use super::fix::Fix;
use super::time::{Millis, TsInput, deserialize_ms, serialize_ms};

/// How far ahead of the server's clock a point's `ts` may be (phone clocks
/// drift; GPS time does not, but not every client uses it).
pub const MAX_FUTURE_SKEW_MS: Millis = 30_000;
/// How far before `started_at` (or after `finished_at`) a point may lie:
/// the first fix often arrives stamped just before the start button.
pub const WINDOW_SLACK_MS: Millis = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    #[serde(serialize_with = "serialize_ms", deserialize_with = "deserialize_ms")]
    pub ts: Millis,
    pub lat: f64,
    pub lng: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alt: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hr: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cadence: Option<u16>,
    /// The phone's battery in percent, when the tracker app reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery: Option<u8>,
}

/// The wire form: every field optional so that a batch can report a missing
/// field per point instead of failing as a whole.
#[derive(Debug, Clone, Deserialize)]
pub struct PointInput {
    pub ts: Option<TsInput>,
    pub lat: Option<f64>,
    pub lng: Option<f64>,
    pub alt: Option<f64>,
    pub speed: Option<f64>,
    pub accuracy: Option<f64>,
    pub hr: Option<f64>,
    pub cadence: Option<f64>,
    pub battery: Option<f64>,
    /// Whether the object also has a `points` key (its value is skipped):
    /// then it is no point but a batch, or both (`http::points`).
    #[serde(default)]
    pub points: Option<serde::de::IgnoredAny>,
}

/// Why a point was refused; serialised as the `code` of a rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// Not an object of the Point shape (wrong types, not an object).
    InvalidPoint,
    MissingField,
    InvalidTimestamp,
    NonFinite,
    LatOutOfRange,
    LngOutOfRange,
    /// speed/accuracy negative, hr or cadence outside 0..=300.
    InvalidValue,
    TsBeforeStart,
    TsAfterFinish,
    TsInFuture,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::InvalidPoint => "invalid_point",
            RejectCode::MissingField => "missing_field",
            RejectCode::InvalidTimestamp => "invalid_timestamp",
            RejectCode::NonFinite => "non_finite",
            RejectCode::LatOutOfRange => "lat_out_of_range",
            RejectCode::LngOutOfRange => "lng_out_of_range",
            RejectCode::InvalidValue => "invalid_value",
            RejectCode::TsBeforeStart => "ts_before_start",
            RejectCode::TsAfterFinish => "ts_after_finish",
            RejectCode::TsInFuture => "ts_in_future",
        }
    }
}

/// The span of time in which an activity accepts points.
#[derive(Debug, Clone, Copy)]
pub struct PointWindow {
    pub started_at: Millis,
    pub finished_at: Option<Millis>,
    pub now: Millis,
}

impl PointInput {
    /// The fix this JSON point describes, if it has the fields a fix needs
    /// and a readable timestamp; `Fix::validate` checks the rest.
    pub fn to_fix(&self) -> Result<Fix, RejectCode> {
        let (Some(ts), Some(lat), Some(lng)) = (&self.ts, self.lat, self.lng) else {
            return Err(RejectCode::MissingField);
        };
        let ts = ts.to_millis().ok_or(RejectCode::InvalidTimestamp)?;
        Ok(Fix {
            ts,
            lat,
            lng,
            alt: self.alt,
            speed: self.speed,
            accuracy: self.accuracy,
            hr: self.hr,
            cadence: self.cadence,
            battery: self.battery,
        })
    }

    pub fn validate(&self, window: PointWindow) -> Result<Point, RejectCode> {
        self.to_fix()?.validate(window)
    }
}

// Which optional fields a compact encoding holds (`Point::present`): the
// stored value here and the live stream's (`store::recent_codec`).
pub(crate) const HAS_ALT: u8 = 1;
pub(crate) const HAS_SPEED: u8 = 2;
pub(crate) const HAS_ACCURACY: u8 = 4;
pub(crate) const HAS_HR: u8 = 8;
pub(crate) const HAS_CADENCE: u8 = 16;
pub(crate) const HAS_BATTERY: u8 = 32;

impl Point {
    /// A fix with a time and a position and nothing else (tests).
    #[cfg(test)]
    pub(crate) fn bare(ts: Millis, lat: f64, lng: f64) -> Point {
        Point {
            ts,
            lat,
            lng,
            alt: None,
            speed: None,
            accuracy: None,
            hr: None,
            cadence: None,
            battery: None,
        }
    }

    /// The flags byte of the compact encodings: a `HAS_*` bit per optional
    /// field that is present.
    pub(crate) fn present(&self) -> u8 {
        [
            (self.alt.is_some(), HAS_ALT),
            (self.speed.is_some(), HAS_SPEED),
            (self.accuracy.is_some(), HAS_ACCURACY),
            (self.hr.is_some(), HAS_HR),
            (self.cadence.is_some(), HAS_CADENCE),
            (self.battery.is_some(), HAS_BATTERY),
        ]
        .iter()
        .filter(|(present, _)| *present)
        .fold(0u8, |acc, (_, bit)| acc | bit)
    }

    /// Compact storage encoding of everything but `ts` (which is in the key):
    /// a flags byte, lat and lng, then the optional fields that are present.
    /// 17 bytes for a bare fix, 46 with everything.
    pub fn encode_value(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(45);
        out.push(self.present());
        out.extend_from_slice(&self.lat.to_le_bytes());
        out.extend_from_slice(&self.lng.to_le_bytes());
        for v in [self.alt, self.speed, self.accuracy].into_iter().flatten() {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.hr, self.cadence].into_iter().flatten() {
            out.extend_from_slice(&v.to_le_bytes());
        }
        if let Some(b) = self.battery {
            out.push(b);
        }
        out
    }

    pub fn decode_value(ts: Millis, bytes: &[u8]) -> Option<Point> {
        let (&flags, mut rest) = bytes.split_first()?;
        let mut f64_next = || -> Option<f64> {
            let (head, tail) = rest.split_first_chunk::<8>()?;
            rest = tail;
            Some(f64::from_le_bytes(*head))
        };
        let lat = f64_next()?;
        let lng = f64_next()?;
        let mut opt_f64 = |bit| {
            if flags & bit != 0 {
                f64_next().map(Some)
            } else {
                Some(None)
            }
        };
        let alt = opt_f64(HAS_ALT)?;
        let speed = opt_f64(HAS_SPEED)?;
        let accuracy = opt_f64(HAS_ACCURACY)?;
        let mut opt_u16 = |bit| -> Option<Option<u16>> {
            if flags & bit == 0 {
                return Some(None);
            }
            let (head, tail) = rest.split_first_chunk::<2>()?;
            rest = tail;
            Some(Some(u16::from_le_bytes(*head)))
        };
        let hr = opt_u16(HAS_HR)?;
        let cadence = opt_u16(HAS_CADENCE)?;
        let battery = match flags & HAS_BATTERY {
            0 => None,
            _ => Some(*rest.first()?),
        };
        Some(Point {
            ts,
            lat,
            lng,
            alt,
            speed,
            accuracy,
            hr,
            cadence,
            battery,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: &str) -> PointInput {
        serde_json::from_str(json).unwrap()
    }

    const WINDOW: PointWindow = PointWindow {
        started_at: 1_000_000_000,
        finished_at: None,
        now: 1_000_100_000,
    };

    #[test]
    fn a_good_fix_becomes_a_point() {
        let p = input(r#"{"ts":1000050000,"lat":52.5,"lng":13.4,"hr":150}"#)
            .validate(WINDOW)
            .unwrap();
        assert_eq!(
            (p.ts, p.lat, p.lng, p.hr),
            (1_000_050_000, 52.5, 13.4, Some(150))
        );
    }

    #[test]
    fn each_rule_has_its_code() {
        let cases = [
            (r#"{"lat":1,"lng":1}"#, RejectCode::MissingField),
            (
                r#"{"ts":"soon","lat":1,"lng":1}"#,
                RejectCode::InvalidTimestamp,
            ),
            (
                r#"{"ts":1000050000,"lat":91,"lng":1}"#,
                RejectCode::LatOutOfRange,
            ),
            (
                r#"{"ts":1000050000,"lat":1,"lng":-180.5}"#,
                RejectCode::LngOutOfRange,
            ),
            (
                r#"{"ts":1000050000,"lat":1,"lng":1,"speed":-1}"#,
                RejectCode::InvalidValue,
            ),
            (
                r#"{"ts":1000050000,"lat":1,"lng":1,"hr":400}"#,
                RejectCode::InvalidValue,
            ),
            (
                r#"{"ts":1000200000,"lat":1,"lng":1}"#,
                RejectCode::TsInFuture,
            ),
            (
                r#"{"ts":900000000,"lat":1,"lng":1}"#,
                RejectCode::TsBeforeStart,
            ),
        ];
        for (json, code) in cases {
            assert_eq!(input(json).validate(WINDOW), Err(code), "{json}");
        }
        let finished = PointWindow {
            finished_at: Some(1_000_010_000),
            ..WINDOW
        };
        assert_eq!(
            input(r#"{"ts":1000090000,"lat":1,"lng":1}"#).validate(finished),
            Err(RejectCode::TsAfterFinish)
        );
    }

    #[test]
    fn storage_encoding_round_trips_every_shape() {
        let full = Point {
            ts: 7,
            lat: -33.5,
            lng: 151.25,
            alt: Some(12.5),
            speed: None,
            accuracy: Some(4.0),
            hr: Some(142),
            cadence: None,
            battery: None,
        };
        let bare = Point {
            alt: None,
            accuracy: None,
            hr: None,
            ..full
        };
        for p in [full, bare] {
            assert_eq!(Point::decode_value(7, &p.encode_value()), Some(p));
        }
        assert_eq!(Point::decode_value(7, &[0, 1, 2]), None);
    }
}
