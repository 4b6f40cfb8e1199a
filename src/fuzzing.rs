//! Entry points for the fuzz targets in `fuzz/` (not an API): each runs
//! the parser the server runs on untrusted input, on arbitrary bytes, and
//! panics if an invariant the rest of the server relies on breaks.

use crate::domain::point::PointWindow;
use crate::domain::{Fix, Point};
use crate::store::recent::{RecentItem, StreamCursor};
use crate::store::recent_codec;

/// What every fix the server accepts must satisfy once validated (as the
/// tracker validates it): finite numbers in range, so statistics stay
/// finite (the ±1e308 altitudes of issue #11), and a stored form that
/// reads back the same.
fn check_fix(fix: &Fix) {
    let window = PointWindow {
        started_at: i64::MIN / 4,
        finished_at: None,
        now: i64::MAX / 4,
    };
    let Ok(point) = fix.validate(window) else {
        return;
    };
    assert!((-90.0..=90.0).contains(&point.lat), "lat {}", point.lat);
    assert!((-180.0..=180.0).contains(&point.lng), "lng {}", point.lng);
    for v in [point.alt, point.speed, point.accuracy]
        .into_iter()
        .flatten()
    {
        assert!(v.is_finite() && v.abs() <= 100_000.0, "{v}");
    }
    let stored = Point::decode_value(point.ts, &point.encode_value());
    assert_eq!(stored.as_ref(), Some(&point));
    let item = RecentItem::Point(point);
    let streamed = recent_codec::decode(&recent_codec::encode(&item)).expect("a fix streams");
    assert_eq!(format!("{streamed:?}"), format!("{item:?}"));
}

/// A points body: one point or `{"points": [...]}`.
pub fn points(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = crate::http::points::parse_body(text);
    // The one-pass ways (a point, a batch) answer as the careful one.
    assert_eq!(
        format!("{parsed:?}"),
        format!("{:?}", crate::http::points::parse_carefully(text))
    );
    if let Ok((fixes, single)) = parsed {
        assert!(!single || fixes.len() == 1);
        assert!(fixes.len() <= crate::http::MAX_POINTS_PER_REQUEST);
        fixes.iter().flatten().for_each(check_fix);
    }
}

/// The history cursor and the live stream cursor: what decodes encodes
/// back to an equal value.
pub fn cursors(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(key) = crate::http::activities::decode_cursor(text) {
        let again = crate::http::activities::encode_cursor(key);
        assert_eq!(crate::http::activities::decode_cursor(&again), Some(key));
    }
    if let Ok(cursor) = text.parse::<StreamCursor>() {
        assert_eq!(
            cursor.to_string().parse::<StreamCursor>().ok(),
            Some(cursor)
        );
    }
}

/// The tracker apps' uploads; the first line of the input is the query
/// string, the rest the body.
pub fn trackers(data: &[u8]) {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let query = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 1..).unwrap_or_default();
    use crate::formats::trackers;
    let mut uploads = vec![
        trackers::owntracks(body),
        trackers::traccar(&query, body),
        trackers::gpslogger(&query, body),
    ];
    uploads.extend(trackers::overland(body).ok());
    for upload in uploads {
        upload.fixes.iter().for_each(check_fix);
    }
    let _ = trackers::parse_time(&query);
}

/// GPX and TCX files (import) and GPX course routes.
pub fn import(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(tracks) = crate::formats::read(text) {
        for track in tracks {
            track.fixes.iter().for_each(check_fix);
        }
    }
    if let Ok(route) = crate::formats::gpx::route(text) {
        for [a, b] in route {
            assert!(a.is_finite() && b.is_finite());
        }
    }
}

/// A stored point's bytes (a timestamp, then the value): what decodes
/// re-encodes to bytes that decode and encode to the same bytes. The same
/// bytes as a live stream's item.
pub fn stored_point(data: &[u8]) {
    let Some((ts, value)) = data.split_first_chunk::<8>() else {
        return;
    };
    let ts = i64::from_be_bytes(*ts);
    if let Some(point) = Point::decode_value(ts, value) {
        let bytes = point.encode_value();
        let again = Point::decode_value(ts, &bytes).expect("re-encoded point decodes");
        assert_eq!(again.encode_value(), bytes);
        assert_eq!(again.ts, ts);
    }
    // A Redis stream value (`recent_codec`): read from a shared Redis, so
    // never trusted. What decodes encodes to a value that decodes the same.
    // (JSON items are only required to decode again: serde_json's default
    // float parsing is not guaranteed to round-trip the last bit.)
    if let Ok(item) = recent_codec::decode(data) {
        let bytes = recent_codec::encode(&item);
        let again = recent_codec::decode(&bytes).expect("re-encoded item decodes");
        if bytes.first() != Some(&b'{') {
            assert_eq!(format!("{again:?}"), format!("{item:?}"));
        }
    }
}
