//! Timestamps are `i64` milliseconds since the Unix epoch inside the server
//! and RFC 3339 strings with milliseconds (UTC, `Z`) in JSON.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serializer};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

pub fn to_rfc3339(ms: Millis) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc).timestamp_millis())
}

/// A timestamp given either as an RFC 3339 string or as integer epoch ms.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TsInput {
    Millis(i64),
    Text(String),
}

impl TsInput {
    pub fn to_millis(&self) -> Option<Millis> {
        match self {
            // Reject values outside years 1970..10000 so that later
            // arithmetic and formatting can never overflow.
            TsInput::Millis(ms) => (0..253_402_300_800_000).contains(ms).then_some(*ms),
            TsInput::Text(s) => parse_rfc3339(s).filter(|ms| *ms >= 0),
        }
    }
}

pub fn serialize_ms<S: Serializer>(ms: &Millis, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&to_rfc3339(*ms))
}

pub fn serialize_opt_ms<S: Serializer>(ms: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_str(&to_rfc3339(*ms)),
        None => s.serialize_none(),
    }
}

pub fn deserialize_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
    TsInput::deserialize(d)?
        .to_millis()
        .ok_or_else(|| serde::de::Error::custom("invalid timestamp"))
}

pub fn deserialize_opt_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Millis>, D::Error> {
    match Option::<TsInput>::deserialize(d)? {
        None => Ok(None),
        Some(t) => t
            .to_millis()
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("invalid timestamp")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip_keeps_milliseconds() {
        let ms = 1_700_000_000_123;
        let text = to_rfc3339(ms);
        assert_eq!(text, "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_rfc3339(&text), Some(ms));
        assert_eq!(parse_rfc3339("2023-11-14T23:13:20.123+01:00"), Some(ms));
    }

    #[test]
    fn ts_input_accepts_both_forms_and_rejects_nonsense() {
        assert_eq!(TsInput::Millis(5).to_millis(), Some(5));
        assert_eq!(TsInput::Millis(-1).to_millis(), None);
        assert_eq!(TsInput::Text("yesterday".into()).to_millis(), None);
    }
}
