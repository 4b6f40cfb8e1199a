//! A compact encoding of `RecentItem`s for the Redis streams, where every
//! byte is paid for by every live activity (#13: a post's point and
//! statistics entries were ~90 + ~200 bytes of JSON; they are ~25 + ~22
//! bytes here).
//!
//! An encoded item starts with a tag byte: `1` a point, `2` statistics
//! without a course step. Anything else (state changes, statistics with a
//! step) stays JSON, which starts with `{`, so streams written before this
//! encoding (or by an older node during an upgrade) still read.
//!
//! Numbers are lossless. A float is written as the smallest `k` in 0..=8
//! for which `n / 10^k` gives back exactly the same `f64` (the statistics
//! are rounded to 0–3 decimals, GPS fixes usually carry at most 7), as a
//! varint of `zigzag(n) << 4 | k`; any other float is `15` followed by its
//! eight bytes. Integers are plain varints.

use crate::domain::point::{HAS_ACCURACY, HAS_ALT, HAS_BATTERY, HAS_CADENCE, HAS_HR, HAS_SPEED};
use crate::domain::time::Millis;
use crate::domain::{Point, Stats};

use super::recent::RecentItem;

const TAG_POINT: u8 = 1;
const TAG_STATS: u8 = 2;

const HAS_PACE: u8 = 1;
const HAS_AVG_SPEED: u8 = 2;

/// Exactly representable powers of ten, the same on both sides.
const POW10: [f64; 9] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8];
const RAW_F64: u64 = 15;
/// Integers up to this fit an `f64` exactly.
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

/// The bytes stored for `item`.
pub fn encode(item: &RecentItem) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    match item {
        RecentItem::Point(p) => {
            out.push(TAG_POINT);
            out.push(p.present());
            put_varint(&mut out, zigzag(p.ts));
            put_f64(&mut out, p.lat);
            put_f64(&mut out, p.lng);
            put_point_rest(&mut out, p);
        }
        RecentItem::Stats(s) if s.step.is_none() => {
            out.push(TAG_STATS);
            let mut flags = 0;
            if s.avg_pace_s_per_km.is_some() {
                flags |= HAS_PACE;
            }
            if s.avg_speed_m_s.is_some() {
                flags |= HAS_AVG_SPEED;
            }
            out.push(flags);
            for v in [s.distance_m, s.moving_time_s, s.elapsed_time_s] {
                put_f64(&mut out, v);
            }
            for v in [s.avg_pace_s_per_km, s.avg_speed_m_s].into_iter().flatten() {
                put_f64(&mut out, v);
            }
            put_f64(&mut out, s.elevation_gain_m);
            put_f64(&mut out, s.calories_kcal);
            put_varint(&mut out, s.points);
        }
        other => {
            // A `RecentItem` always serialises: plain data, string keys.
            out = serde_json::to_vec(other).expect("a recent item serialises");
        }
    }
    out
}

/// Whether `bytes` (from `encode`) hold a point, without decoding them.
pub fn is_point(bytes: &[u8]) -> bool {
    bytes.first() == Some(&TAG_POINT)
}

/// The item `bytes` hold, or why not.
pub fn decode(bytes: &[u8]) -> Result<RecentItem, String> {
    let (&tag, rest) = bytes.split_first().ok_or("an empty item")?;
    let mut r = Reader(rest);
    let item = match tag {
        TAG_POINT => {
            let flags = r.byte()?;
            let ts: Millis = unzigzag(r.varint()?);
            let lat = r.f64()?;
            let lng = r.f64()?;
            RecentItem::Point(read_point_rest(&mut r, flags, ts, lat, lng)?)
        }
        TAG_STATS => {
            let flags = r.byte()?;
            let distance_m = r.f64()?;
            let moving_time_s = r.f64()?;
            let elapsed_time_s = r.f64()?;
            let avg_pace_s_per_km = if flags & HAS_PACE != 0 {
                Some(r.f64()?)
            } else {
                None
            };
            let avg_speed_m_s = if flags & HAS_AVG_SPEED != 0 {
                Some(r.f64()?)
            } else {
                None
            };
            RecentItem::Stats(Stats {
                distance_m,
                moving_time_s,
                elapsed_time_s,
                avg_pace_s_per_km,
                avg_speed_m_s,
                elevation_gain_m: r.f64()?,
                calories_kcal: r.f64()?,
                points: r.varint()?,
                step: None,
            })
        }
        b'{' => return serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        other => return Err(format!("unknown item tag {other}")),
    };
    match r.0.is_empty() {
        true => Ok(item),
        false => Err(format!("{} bytes after the item", r.0.len())),
    }
}

pub(super) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(super) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_f64(out: &mut Vec<u8>, v: f64) {
    if let Some((k, n)) = (0..=MAX_SCALE).find_map(|k| scaled(v, k).map(|n| (k, n))) {
        put_varint(out, zigzag(n) << 4 | k as u64);
        return;
    }
    put_varint(out, RAW_F64);
    out.extend_from_slice(&v.to_le_bytes());
}

/// A point's optional values after its flags, time and position (the
/// point encoding here, and Scylla's packed chunks): each present one in
/// flag order, floats as `put_f64`, heart rate and cadence as varints,
/// battery as a byte.
pub(super) fn put_point_rest(out: &mut Vec<u8>, p: &Point) {
    for v in [p.alt, p.speed, p.accuracy].into_iter().flatten() {
        put_f64(out, v);
    }
    for v in [p.hr, p.cadence].into_iter().flatten() {
        put_varint(out, u64::from(v));
    }
    if let Some(b) = p.battery {
        out.push(b);
    }
}

/// Reads what `put_point_rest` wrote for a point with these flags, time
/// and position.
pub(super) fn read_point_rest(
    r: &mut Reader<'_>,
    flags: u8,
    ts: Millis,
    lat: f64,
    lng: f64,
) -> Result<Point, String> {
    let mut opt = |bit: u8| -> Result<Option<f64>, String> {
        if flags & bit == 0 {
            Ok(None)
        } else {
            r.f64().map(Some)
        }
    };
    let (alt, speed, accuracy) = (opt(HAS_ALT)?, opt(HAS_SPEED)?, opt(HAS_ACCURACY)?);
    let mut opt_u16 = |bit: u8| -> Result<Option<u16>, String> {
        if flags & bit == 0 {
            return Ok(None);
        }
        let v = r.varint()?;
        u16::try_from(v)
            .map(Some)
            .map_err(|_| format!("{v} is not a u16"))
    };
    let (hr, cadence) = (opt_u16(HAS_HR)?, opt_u16(HAS_CADENCE)?);
    let battery = match flags & HAS_BATTERY {
        0 => None,
        _ => Some(r.byte()?),
    };
    Ok(Point {
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

/// `v` as the integer `n` with `v == n / 10^k` exactly, if there is one
/// that fits (what `put_f64` writes for the smallest such `k`). If `v` is
/// exact at `k`, it is at every larger `k` too (both divisions round the
/// same real number).
pub(super) fn scaled(v: f64, k: usize) -> Option<i64> {
    let scale = *POW10.get(k)?;
    let n = (v * scale).round();
    // Below 2^49 the integer is exact and leaves room for the zigzag bit
    // and the 4-bit k. The check decodes the integer, as `decode` will (so
    // -0.0, whose integer is 0, falls back to raw bytes).
    if n.abs() >= MAX_EXACT / 16.0 {
        return None;
    }
    let n = n as i64;
    ((n as f64 / scale).to_bits() == v.to_bits()).then_some(n)
}

/// The value `scaled` gave `n` for.
pub(super) fn unscaled(n: i64, k: usize) -> Result<f64, String> {
    let scale = *POW10.get(k).ok_or("a bad number scale")?;
    Ok(n as f64 / scale)
}

/// The largest `k` `scaled` takes.
pub(super) const MAX_SCALE: usize = 8;

pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl Reader<'_> {
    pub(super) fn byte(&mut self) -> Result<u8, String> {
        let (&b, rest) = self.0.split_first().ok_or("the item ends early")?;
        self.0 = rest;
        Ok(b)
    }

    pub(super) fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a varint longer than 64 bits".into())
    }

    fn f64(&mut self) -> Result<f64, String> {
        let v = self.varint()?;
        if v == RAW_F64 {
            let (head, rest) = self
                .0
                .split_first_chunk::<8>()
                .ok_or("the item ends early")?;
            self.0 = rest;
            return Ok(f64::from_le_bytes(*head));
        }
        let scale = *POW10.get((v & 15) as usize).ok_or("a bad number scale")?;
        Ok(unzigzag(v >> 4) as f64 / scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ActivityState;

    fn point(lat: f64, lng: f64) -> Point {
        Point::bare(1_796_649_333_355, lat, lng)
    }

    fn stats() -> Stats {
        Stats {
            distance_m: 12_345.6,
            moving_time_s: 3_012.4,
            elapsed_time_s: 3_100.0,
            avg_pace_s_per_km: Some(244.0),
            avg_speed_m_s: Some(4.098),
            elevation_gain_m: 87.3,
            calories_kcal: 850.0,
            points: 1_204,
            step: None,
        }
    }

    fn round_trip(item: RecentItem) -> usize {
        let bytes = encode(&item);
        let back = decode(&bytes).unwrap();
        // Bit-equal numbers, not just `==` (which calls -0.0 and 0.0 equal).
        assert_eq!(format!("{back:?}"), format!("{item:?}"));
        assert_eq!(back, item);
        bytes.len()
    }

    #[test]
    fn points_come_back_bit_for_bit_and_small() {
        assert!(round_trip(RecentItem::Point(point(52.5200083, 13.4049541))) <= 19);
        let full = Point {
            alt: Some(34.5),
            speed: Some(3.21),
            accuracy: Some(4.0),
            hr: Some(151),
            cadence: Some(172),
            battery: Some(64),
            ..point(-33.8688197, 151.2092955)
        };
        assert!(round_trip(RecentItem::Point(full)) <= 30);
        // Coordinates no decimal scale holds, and odd values, fall back to
        // their eight bytes and still come back exactly.
        for v in [
            52.520_008_345_678_91,
            1.0 / 3.0,
            -0.0,
            f64::MIN_POSITIVE,
            -179.999_999_999,
            1e300,
        ] {
            round_trip(RecentItem::Point(point(v, -v)));
        }
        round_trip(RecentItem::Point(Point {
            ts: -5,
            ..point(0.0, 0.0)
        }));
    }

    #[test]
    fn statistics_come_back_exactly_and_small() {
        assert!(round_trip(RecentItem::Stats(stats())) <= 26);
        round_trip(RecentItem::Stats(Stats {
            avg_pace_s_per_km: None,
            avg_speed_m_s: None,
            distance_m: 0.0,
            ..stats()
        }));
    }

    #[test]
    fn other_items_stay_json_and_json_from_older_nodes_still_reads() {
        let state = RecentItem::State {
            state: ActivityState::Paused,
            at: 1_796_649_333_355,
        };
        let bytes = encode(&state);
        assert_eq!(bytes[0], b'{');
        assert_eq!(decode(&bytes).unwrap(), state);
        let old = serde_json::to_vec(&RecentItem::Point(point(52.52, 13.4))).unwrap();
        assert_eq!(decode(&old).unwrap(), RecentItem::Point(point(52.52, 13.4)));
    }

    #[test]
    fn damaged_items_are_errors_not_panics() {
        let bytes = encode(&RecentItem::Stats(stats()));
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "{len} bytes decoded");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        assert!(decode(&[9, 1, 2]).is_err());
        // Arbitrary bytes after each tag (xorshift): errors or items that
        // encode and decode again, never a panic.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for n in 0..20_000 {
            let mut bytes = vec![[TAG_POINT, TAG_STATS][n % 2]];
            for _ in 0..(n % 40) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bytes.push(x as u8);
            }
            if let Ok(item) = decode(&bytes) {
                let again = decode(&encode(&item)).unwrap();
                assert_eq!(format!("{again:?}"), format!("{item:?}"));
            }
        }
        assert!(
            decode(&[
                TAG_POINT, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
            ])
            .is_err()
        );
    }
}
