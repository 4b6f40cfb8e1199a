//! Track maths: distance, splits, elevation gain and calories from a
//! time-ordered, de-duplicated track, with GPS noise handled.
//!
//! `TrackAccumulator` is a fold: the live path pushes each in-order point as
//! it arrives and the completion path pushes the whole stored track, so the
//! running statistics and the final summary come from the same code.
//!
//! Noise rules (thresholds in `Thresholds::for_type`):
//! - a fix with `accuracy` worse than `max_accuracy_m` is ignored;
//! - a fix that would need a speed above `max_speed_m_s` from the last kept
//!   fix is an impossible jump and is dropped; after `MAX_JUMP_STREAK` drops
//!   in a row the track re-anchors on the newest fix (the earlier anchor was
//!   the outlier), without adding distance;
//! - moves under `MIN_MOVE_M` are jitter: the anchor stays put until the
//!   athlete has really moved, so standing still adds no distance;
//! - altitude is smoothed (exponential moving average) and climbs count only
//!   past a hysteresis of `CLIMB_HYSTERESIS_M`.

use super::activity::{Activity, ActivityType};
use super::point::Point;
use super::summary::{Split, TrackSummary, round_to};
use super::time::Millis;

const EARTH_RADIUS_M: f64 = 6_371_008.8;
pub const MIN_MOVE_M: f64 = 3.0;
pub const MAX_JUMP_STREAK: u8 = 3;
pub const ALT_SMOOTHING: f64 = 0.3;
pub const CLIMB_HYSTERESIS_M: f64 = 2.0;

/// Great-circle distance in metres.
pub fn haversine_m(lat1: f64, lng1: f64, lat2: f64, lng2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lng2 - lng1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub max_speed_m_s: f64,
    pub max_accuracy_m: f64,
}

impl Thresholds {
    pub fn for_type(t: ActivityType) -> Thresholds {
        Thresholds {
            max_speed_m_s: t.max_speed_m_s(),
            max_accuracy_m: 50.0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Anchor {
    ts: Millis,
    lat: f64,
    lng: f64,
}

#[derive(Debug, Clone, Default)]
pub struct TrackAccumulator {
    last_ts: Option<Millis>,
    anchor: Option<Anchor>,
    jump_streak: u8,
    smoothed_alt: Option<f64>,
    climb_ref: f64,
    split_distance_m: f64,
    split_moving_ms: f64,
    summary: TrackSummary,
}

impl TrackAccumulator {
    /// Folds a whole time-ordered track.
    pub fn from_track<'a>(
        activity: &Activity,
        points: impl IntoIterator<Item = &'a Point>,
    ) -> Self {
        let mut acc = TrackAccumulator::default();
        for p in points {
            acc.push(activity, p);
        }
        acc
    }

    /// The newest timestamp pushed so far: a point at or before it is not
    /// "in order" and needs a full recompute.
    pub fn last_ts(&self) -> Option<Millis> {
        self.last_ts
    }

    /// Points pushed so far (kept or not).
    pub fn points(&self) -> u64 {
        self.summary.points
    }

    /// Adds the next point of the track; `p.ts` must be later than every
    /// point pushed before.
    pub fn push(&mut self, activity: &Activity, p: &Point) {
        debug_assert!(
            self.last_ts.is_none_or(|t| p.ts > t),
            "points must be pushed in order"
        );
        self.last_ts = Some(p.ts);
        self.summary.last_fix_at = Some(p.ts);
        self.summary.points += 1;
        // From the activity's type, not kept here: every live activity's
        // accumulator is held in memory (#13).
        let thresholds = Thresholds::for_type(activity.activity_type);
        if p.accuracy.is_some_and(|a| a > thresholds.max_accuracy_m) {
            return;
        }
        let Some(anchor) = self.anchor else {
            self.anchor = Some(Anchor {
                ts: p.ts,
                lat: p.lat,
                lng: p.lng,
            });
            self.climb(p.alt);
            return;
        };
        let d = haversine_m(anchor.lat, anchor.lng, p.lat, p.lng);
        let dt_s = (p.ts - anchor.ts) as f64 / 1000.0;
        if d > thresholds.max_speed_m_s * dt_s {
            self.jump_streak += 1;
            if self.jump_streak >= MAX_JUMP_STREAK {
                self.jump_streak = 0;
                self.anchor = Some(Anchor {
                    ts: p.ts,
                    lat: p.lat,
                    lng: p.lng,
                });
            }
            return;
        }
        self.jump_streak = 0;
        self.climb(p.alt);
        if d >= MIN_MOVE_M {
            let moving_ms = activity.moving_ms_between(anchor.ts, p.ts) as f64;
            self.advance(d, moving_ms);
            self.anchor = Some(Anchor {
                ts: p.ts,
                lat: p.lat,
                lng: p.lng,
            });
        }
        self.coach(activity, p.ts);
    }

    /// Moves the plan's fold to this fix (time passes while standing still
    /// too, so this runs for every kept fix).
    fn coach(&mut self, activity: &Activity, ts: Millis) {
        if let Some(plan) = &activity.plan {
            let moving_ms = activity.moving_ms_between(activity.started_at, ts) as f64;
            self.summary.course.get_or_insert_default().push(
                &plan.steps,
                moving_ms,
                self.summary.distance_m,
            );
        }
    }

    fn climb(&mut self, alt: Option<f64>) {
        let Some(alt) = alt.filter(|a| a.is_finite()) else {
            return;
        };
        let s = match self.smoothed_alt {
            None => {
                self.climb_ref = alt;
                alt
            }
            Some(prev) => prev + ALT_SMOOTHING * (alt - prev),
        };
        self.smoothed_alt = Some(s);
        if s > self.climb_ref + CLIMB_HYSTERESIS_M {
            self.summary.elevation_gain_m += s - self.climb_ref;
            self.climb_ref = s;
        } else if s < self.climb_ref {
            self.climb_ref = s;
        }
    }

    /// Adds a segment of `d` metres taking `moving_ms`, closing a split at
    /// each kilometre boundary (speed assumed uniform within the segment).
    fn advance(&mut self, mut d: f64, mut moving_ms: f64) {
        if !d.is_finite() || !moving_ms.is_finite() {
            return;
        }
        self.summary.distance_m += d;
        while self.split_distance_m + d >= 1000.0 {
            let part = 1000.0 - self.split_distance_m;
            let part_ms = moving_ms * part / d;
            let time_s = (self.split_moving_ms + part_ms) / 1000.0;
            self.summary.splits.push(Split {
                km: self.summary.splits.len() as u32 + 1,
                distance_m: 1000.0,
                time_s: round_to(time_s, 1),
                pace_s_per_km: round_to(time_s, 1),
            });
            d -= part;
            moving_ms -= part_ms;
            self.split_distance_m = 0.0;
            self.split_moving_ms = 0.0;
        }
        self.split_distance_m += d;
        self.split_moving_ms += moving_ms;
    }

    /// The summary so far, with the unfinished kilometre as a final partial
    /// split (if it is at least 10 m).
    pub fn summary(&self) -> TrackSummary {
        let mut summary = self.summary.clone();
        if self.split_distance_m >= 10.0 {
            let time_s = self.split_moving_ms / 1000.0;
            summary.splits.push(Split {
                km: summary.splits.len() as u32 + 1,
                distance_m: round_to(self.split_distance_m, 1),
                time_s: round_to(time_s, 1),
                pace_s_per_km: round_to(time_s * 1000.0 / self.split_distance_m, 1),
            });
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::activity::Visibility;
    use uuid::Uuid;

    fn run() -> Activity {
        Activity::start(
            Uuid::nil(),
            Uuid::nil(),
            ActivityType::Run,
            Visibility::Friends,
            None,
            0,
        )
    }

    fn point(ts_s: i64, lat: f64, lng: f64) -> Point {
        Point::bare(ts_s * 1000, lat, lng)
    }

    /// Due north at `speed` m/s, one fix every `every_s` seconds.
    fn straight_track(n: usize, every_s: i64, speed: f64) -> Vec<Point> {
        let deg_per_m = 1.0 / 111_195.0;
        (0..n)
            .map(|i| {
                let t = i as i64 * every_s;
                point(t, 48.0 + t as f64 * speed * deg_per_m, 11.0)
            })
            .collect()
    }

    #[test]
    fn haversine_matches_known_distance() {
        // Paris to London, about 343.5 km.
        let d = haversine_m(48.8566, 2.3522, 51.5074, -0.1278);
        assert!((d - 343_500.0).abs() < 1_000.0, "{d}");
    }

    #[test]
    fn splits_time_each_kilometre() {
        let a = run();
        let track = straight_track(1001, 3, 3.5); // 10.5 km in 3000 s at 3.5 m/s
        let summary = TrackAccumulator::from_track(&a, &track).summary();
        assert!(
            (summary.distance_m - 10_500.0).abs() < 20.0,
            "{}",
            summary.distance_m
        );
        assert_eq!(summary.splits.len(), 11);
        for s in &summary.splits[..10] {
            assert!((s.time_s - 1000.0 / 3.5).abs() < 1.0, "{s:?}");
        }
        let last = summary.splits[10];
        assert!((last.distance_m - 500.0).abs() < 20.0 && (last.pace_s_per_km - 285.7).abs() < 2.0);
    }

    #[test]
    fn jumps_and_inaccurate_fixes_add_no_distance() {
        let a = run();
        let mut track = straight_track(100, 2, 3.0);
        let clean = TrackAccumulator::from_track(&a, &track)
            .summary()
            .distance_m;
        track[50].lat += 0.05; // a 5.5 km teleport and back
        track[70].accuracy = Some(200.0);
        track[70].lng += 0.01;
        let noisy = TrackAccumulator::from_track(&a, &track).summary();
        assert!(
            (noisy.distance_m - clean).abs() < 1.0,
            "{} vs {clean}",
            noisy.distance_m
        );
        assert_eq!(noisy.points, 100);
    }

    #[test]
    fn standing_still_with_jitter_adds_nothing() {
        let a = run();
        let track: Vec<Point> = (0..60)
            .map(|i| point(i * 2, 48.0 + (i % 3) as f64 * 1e-5, 11.0))
            .collect();
        assert_eq!(
            TrackAccumulator::from_track(&a, &track)
                .summary()
                .distance_m,
            0.0
        );
    }

    #[test]
    fn a_bad_first_fix_is_abandoned() {
        let a = run();
        let mut track = straight_track(50, 2, 3.0);
        track[0].lat = 10.0;
        let d = TrackAccumulator::from_track(&a, &track)
            .summary()
            .distance_m;
        let expected = 3.0 * 2.0 * (49 - MAX_JUMP_STREAK as usize) as f64;
        assert!((d - expected).abs() < 10.0, "{d} vs {expected}");
    }

    #[test]
    fn elevation_gain_ignores_noise_but_counts_climbs() {
        let a = run();
        let mut track = straight_track(200, 2, 3.0);
        for (i, p) in track.iter_mut().enumerate() {
            let noise = if i % 2 == 0 { 0.8 } else { -0.8 };
            p.alt = Some(
                100.0
                    + noise
                    + if i >= 100 {
                        (i - 100) as f64 * 0.5
                    } else {
                        0.0
                    },
            );
        }
        let gain = TrackAccumulator::from_track(&a, &track)
            .summary()
            .elevation_gain_m;
        assert!((40.0..=51.0).contains(&gain), "{gain}");
    }

    #[test]
    fn pauses_do_not_count_in_split_time() {
        let mut a = run();
        a.transition(crate::domain::ActivityState::Paused, 101_000, 1_000_000)
            .unwrap();
        a.transition(crate::domain::ActivityState::Started, 401_000, 1_000_000)
            .unwrap();
        // 1.1 km at 5 m/s with a 300 s pause after 500 m (no fixes during it)
        let mut track: Vec<Point> = straight_track(111, 2, 5.0);
        for p in track.iter_mut().skip(51) {
            p.ts += 300_000;
        }
        let summary = TrackAccumulator::from_track(&a, &track).summary();
        let first = summary.splits[0];
        assert!((first.time_s - 200.0).abs() < 5.0, "{first:?}");
    }
}
