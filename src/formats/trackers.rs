//! What phones' tracker apps send, each in the shape its own source code
//! fixes, turned into `Fix`es in the API's units (m/s, metres, percent).
//!
//! - OwnTracks (HTTP mode): one JSON message per request; only `_type:
//!   "location"` carries a fix: `lat`, `lon`, `tst` (Unix seconds), `acc`,
//!   `alt`, `vel` (km/h), `cog`, `batt` (%).
//! - Overland (iOS): `{"locations": [GeoJSON Point Feature, …]}`,
//!   coordinates `[lon, lat]`, `properties.timestamp` (ISO 8601), `speed`
//!   (m/s, −1 unknown), `altitude`, `horizontal_accuracy`, `battery_level`
//!   (0–1).
//! - Traccar Client / OsmAnd protocol: query or form parameters `lat`,
//!   `lon`, `timestamp` (Unix seconds, milliseconds or ISO 8601), `speed`
//!   (knots), `altitude`, `accuracy`, `batt`; or Traccar Client 9's JSON
//!   `{"location": {"timestamp", "coords": {latitude, longitude, accuracy,
//!   speed (m/s), altitude}, "battery": {"level": 0–1}}}`.
//! - GPSLogger (custom URL): the parameters the user typed from its
//!   placeholders: `lat`, `lon`, `time` (ISO 8601) or `timestamp` (Unix
//!   seconds), `alt`, `acc`, `spd` (m/s), `batt`.
//!
//! A message that carries no usable fix yields none (`unusable` counts
//! them); these apps retry refused uploads at the head of their queue, so
//! the caller answers success anyway.

use serde::Deserialize;
use serde_json::Value;

use crate::domain::Fix;
use crate::domain::time::{Millis, parse_rfc3339};

/// The fixes of one upload, and how many of its messages were unusable.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Upload {
    pub fixes: Vec<Fix>,
    pub unusable: usize,
}

impl Upload {
    fn push(&mut self, fix: Option<Fix>) {
        match fix {
            Some(fix) => self.fixes.push(fix),
            None => self.unusable += 1,
        }
    }
}

const KMH: f64 = 1.0 / 3.6;

/// A 0–1 fraction as a percentage (to a tenth).
fn percent(fraction: f64) -> f64 {
    (fraction * 1000.0).round() / 10.0
}
const KNOT: f64 = 1852.0 / 3600.0;

/// A time as these apps write it: Unix seconds, Unix milliseconds (a
/// number past year 2286 in seconds), or ISO 8601.
pub fn parse_time(text: &str) -> Option<Millis> {
    let text = text.trim();
    if let Ok(n) = text.parse::<f64>() {
        if !n.is_finite() || n < 0.0 {
            return None;
        }
        let ms = if n >= 10_000_000_000.0 { n } else { n * 1000.0 };
        return Some(ms.round() as Millis);
    }
    parse_rfc3339(text).or_else(|| parse_rfc3339(&format!("{text}Z")))
}

fn num(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|v: &f64| v.is_finite())
}

/// OwnTracks: one message. Anything but a location is no fix (and not
/// unusable: transitions, waypoints, cards are normal traffic).
pub fn owntracks(body: &[u8]) -> Upload {
    let mut upload = Upload::default();
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) else {
        upload.unusable = 1;
        return upload;
    };
    if m.get("_type").and_then(Value::as_str) != Some("location") {
        return upload;
    }
    let fix = (|| {
        Some(Fix {
            ts: num(m.get("tst")).map(|s| (s * 1000.0).round() as Millis)?,
            lat: num(m.get("lat"))?,
            lng: num(m.get("lon"))?,
            alt: num(m.get("alt")),
            speed: num(m.get("vel")).filter(|v| *v >= 0.0).map(|v| v * KMH),
            accuracy: num(m.get("acc")),
            battery: num(m.get("batt")).filter(|v| *v >= 0.0),
            ..Fix::default()
        })
    })();
    upload.push(fix);
    upload
}

#[derive(Deserialize)]
struct OverlandBody {
    locations: Vec<Value>,
}

/// Overland: a batch. `Err` when the body is not Overland's shape at all.
pub fn overland(body: &[u8]) -> Result<Upload, String> {
    let body: OverlandBody = serde_json::from_slice(body)
        .map_err(|e| format!("expected {{\"locations\": [...]}}: {e}"))?;
    let mut upload = Upload::default();
    for feature in &body.locations {
        let fix = (|| {
            let coords = feature.pointer("/geometry/coordinates")?.as_array()?;
            let p = feature.get("properties")?;
            Some(Fix {
                ts: parse_time(p.get("timestamp")?.as_str()?)?,
                lat: num(coords.get(1))?,
                lng: num(coords.first())?,
                alt: num(p.get("altitude")),
                speed: num(p.get("speed")).filter(|v| *v >= 0.0),
                accuracy: num(p.get("horizontal_accuracy")).filter(|v| *v >= 0.0),
                battery: num(p.get("battery_level"))
                    .filter(|v| *v >= 0.0)
                    .map(percent),
                ..Fix::default()
            })
        })();
        upload.push(fix);
    }
    Ok(upload)
}

/// Query or form parameters, decoded.
fn params(text: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(text.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param<'a>(params: &'a [(String, String)], names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str()))
}

fn param_num(params: &[(String, String)], names: &[&str]) -> Option<f64> {
    param(params, names)?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
}

/// Traccar Client and the OsmAnd protocol: parameters in the query or a
/// form body, or Traccar Client 9's JSON body.
pub fn traccar(query: &str, body: &[u8]) -> Upload {
    let mut upload = Upload::default();
    let trimmed = body.trim_ascii_start();
    if trimmed.first() == Some(&b'{') {
        let fix = serde_json::from_slice::<Value>(trimmed).ok().and_then(|v| {
            let loc = v.get("location")?;
            let c = loc.get("coords")?;
            Some(Fix {
                ts: match loc.get("timestamp")? {
                    Value::String(s) => parse_time(s)?,
                    other => parse_time(&other.to_string())?,
                },
                lat: num(c.get("latitude"))?,
                lng: num(c.get("longitude"))?,
                alt: num(c.get("altitude")),
                speed: num(c.get("speed")).filter(|v| *v >= 0.0),
                accuracy: num(c.get("accuracy")).filter(|v| *v >= 0.0),
                battery: num(loc.pointer("/battery/level"))
                    .filter(|v| *v >= 0.0)
                    .map(percent),
                ..Fix::default()
            })
        });
        upload.push(fix);
        return upload;
    }
    let mut all = params(query);
    all.extend(params(std::str::from_utf8(body).unwrap_or("")));
    let fix = (|| {
        Some(Fix {
            ts: parse_time(param(&all, &["timestamp"])?)?,
            lat: param_num(&all, &["lat"])?,
            lng: param_num(&all, &["lon"])?,
            alt: param_num(&all, &["altitude"]),
            speed: param_num(&all, &["speed"])
                .filter(|v| *v >= 0.0)
                .map(|v| v * KNOT),
            accuracy: param_num(&all, &["accuracy"]).filter(|v| *v >= 0.0),
            battery: param_num(&all, &["batt"]).filter(|v| *v >= 0.0),
            ..Fix::default()
        })
    })();
    upload.push(fix);
    upload
}

/// GPSLogger: the parameters of its custom URL, in the query or a form body.
pub fn gpslogger(query: &str, body: &[u8]) -> Upload {
    let mut all = params(query);
    all.extend(params(std::str::from_utf8(body).unwrap_or("")));
    let mut upload = Upload::default();
    let fix = (|| {
        Some(Fix {
            ts: parse_time(param(&all, &["time", "timestamp"])?)?,
            lat: param_num(&all, &["lat"])?,
            lng: param_num(&all, &["lon", "lng"])?,
            alt: param_num(&all, &["alt"]),
            speed: param_num(&all, &["spd", "speed"]).filter(|v| *v >= 0.0),
            accuracy: param_num(&all, &["acc"]).filter(|v| *v >= 0.0),
            battery: param_num(&all, &["batt"]).filter(|v| *v >= 0.0),
            ..Fix::default()
        })
    })();
    upload.push(fix);
    upload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owntracks_location_in_its_own_units() {
        // As OwnTracks Android sends it (MessageLocation).
        let body = br#"{"_type":"location","acc":12,"alt":48,"batt":81,"bs":1,"conn":"m","created_at":1700000005,"lat":52.5163,"lon":13.3777,"m":1,"t":"u","tid":"an","tst":1700000000,"vac":3,"vel":18,"cog":270,"topic":"owntracks/ann/pixel"}"#;
        let up = owntracks(body);
        assert_eq!(up.fixes.len(), 1);
        let f = up.fixes[0];
        assert_eq!((f.ts, f.lat, f.lng), (1_700_000_000_000, 52.5163, 13.3777));
        assert_eq!(f.speed, Some(5.0), "18 km/h");
        assert_eq!(
            (f.alt, f.accuracy, f.battery),
            (Some(48.0), Some(12.0), Some(81.0))
        );
        assert_eq!(
            owntracks(br#"{"_type":"transition","event":"enter"}"#),
            Upload::default()
        );
        assert_eq!(owntracks(b"garbage").unusable, 1);
    }

    #[test]
    fn overland_batches_with_unknown_speed() {
        let body = br#"{"locations":[
          {"type":"Feature","geometry":{"type":"Point","coordinates":[-122.4194,37.7749]},
           "properties":{"timestamp":"2023-11-14T22:13:20Z","altitude":12,"speed":-1,"horizontal_accuracy":5,"vertical_accuracy":3,"course":90,"battery_level":0.8,"battery_state":"unplugged","device_id":"iphone","wifi":""}},
          {"type":"Feature","geometry":{"type":"Point","coordinates":[-122.4195,37.7750]},
           "properties":{"timestamp":"2023-11-14T22:13:25Z","speed":2.5}},
          {"type":"Feature","geometry":{"type":"Point"},"properties":{}}
        ],"current":{"type":"Feature"}}"#;
        let up = overland(body).unwrap();
        assert_eq!((up.fixes.len(), up.unusable), (2, 1));
        assert_eq!((up.fixes[0].lat, up.fixes[0].lng), (37.7749, -122.4194));
        assert_eq!(up.fixes[0].speed, None, "-1 is unknown");
        assert_eq!(up.fixes[0].battery, Some(80.0));
        assert_eq!(up.fixes[1].speed, Some(2.5));
        assert!(overland(b"{\"points\": []}").is_err());
    }

    #[test]
    fn traccar_parameters_json_and_time_formats() {
        let up = traccar(
            "id=123456&lat=48.1&lon=11.5&timestamp=1700000000&speed=10&bearing=3&altitude=520&accuracy=4.5&batt=77",
            b"",
        );
        let f = up.fixes[0];
        assert_eq!(f.ts, 1_700_000_000_000);
        assert!((f.speed.unwrap() - 5.1444).abs() < 1e-3, "10 knots");
        assert_eq!((f.alt, f.battery), (Some(520.0), Some(77.0)));
        let form = traccar("", b"id=1&lat=48.1&lon=11.5&timestamp=1700000000123");
        assert_eq!(form.fixes[0].ts, 1_700_000_000_123, "milliseconds");
        let iso = traccar(
            "id=1&lat=48.1&lon=11.5&timestamp=2023-11-14T22%3A13%3A20Z",
            b"",
        );
        assert_eq!(iso.fixes[0].ts, 1_700_000_000_000);
        let json = traccar(
            "",
            br#"{"location":{"timestamp":"2023-11-14T22:13:20.000Z","coords":{"latitude":48.1,"longitude":11.5,"accuracy":5,"speed":3.2,"heading":10,"altitude":500},"is_moving":true,"battery":{"level":0.55,"is_charging":false},"activity":{"type":"on_foot"}},"device_id":"123456"}"#,
        );
        assert_eq!(json.fixes[0].ts, 1_700_000_000_000);
        assert_eq!(
            (json.fixes[0].speed, json.fixes[0].battery),
            (Some(3.2), Some(55.0))
        );
        assert_eq!(traccar("id=1&lat=x", b"").unusable, 1);
    }

    #[test]
    fn gpslogger_custom_url() {
        let up = gpslogger(
            "lat=48.1&lon=11.5&time=2023-11-14T22%3A13%3A20.000Z&alt=500&acc=8&spd=2.5&dir=90&batt=66",
            b"",
        );
        let f = up.fixes[0];
        assert_eq!(
            (f.ts, f.speed, f.battery),
            (1_700_000_000_000, Some(2.5), Some(66.0))
        );
        assert_eq!(
            gpslogger("lat=48.1&lon=11.5&timestamp=1700000000", b"").fixes[0].ts,
            1_700_000_000_000
        );
        assert_eq!(gpslogger("lat=48.1&lon=11.5", b"").unusable, 1, "no time");
    }
}
