//! Simulated athletes: compact state plus pure functions of time.
//!
//! An athlete is 20 bytes (`Athlete`) plus its activity id; there is no task
//! or connection per athlete. Everything else is derived from its seed and
//! the time: the route (a wobbly loop around a home point, travelled at the
//! activity type's speed), GPS jitter and accuracy, pauses (stretches where
//! it stands still) and offline stretches (no posts; what was recorded is
//! uploaded with the next post, as one batch). Fix `i` is recorded at
//! `phase + i * fix_period` after the run's base time, so any range of
//! fixes can be regenerated exactly: a post that failed is simply covered
//! again by the next one, which is how a phone's buffer behaves.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Posts per stretch; each stretch is independently paused or offline.
pub const STRETCH_POSTS: u64 = 20;
const M_PER_DEG: f64 = 111_195.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Run,
    Ride,
    Walk,
    Hike,
}

impl Kind {
    /// The mix: half runs, a quarter rides, the rest walks and hikes.
    pub fn pick(h: u64) -> Kind {
        match h % 20 {
            0..=9 => Kind::Run,
            10..=14 => Kind::Ride,
            15..=17 => Kind::Walk,
            _ => Kind::Hike,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Run => "RUN",
            Kind::Ride => "RIDE",
            Kind::Walk => "WALK",
            Kind::Hike => "HIKE",
        }
    }

    /// Cruising speed range in m/s.
    fn speed(self) -> (f64, f64) {
        match self {
            Kind::Run => (2.6, 4.2),
            Kind::Ride => (5.5, 10.0),
            Kind::Walk => (1.1, 1.6),
            Kind::Hike => (0.8, 1.3),
        }
    }

    fn cadence(self) -> (f64, f64) {
        match self {
            Kind::Run => (155.0, 185.0),
            Kind::Ride => (75.0, 95.0),
            Kind::Walk | Kind::Hike => (95.0, 120.0),
        }
    }
}

/// One simulated athlete. `acked` and `busy` are written by request tasks,
/// everything else is fixed at setup.
#[derive(Debug)]
pub struct Athlete {
    /// Fixes `0..acked` are acknowledged by the server.
    pub acked: AtomicU32,
    /// A request for this athlete is in flight (a phone sends one at a time).
    pub busy: AtomicBool,
    pub kind: Kind,
    pub seed: u32,
    /// Index of the user (token) owning the activity.
    pub user: u32,
    /// Posting interval, already scaled, in ms.
    pub interval_ms: u32,
}

/// The run-wide parameters every athlete shares.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub points_per_request: u32,
    pub offline_permille: u32,
    pub pause_permille: u32,
}

/// SplitMix64: a fast, well-mixed hash for deriving per-athlete values.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn h(seed: u32, a: u64, salt: u64) -> u64 {
    mix((seed as u64) << 32 ^ mix(a ^ salt.wrapping_mul(0xA24B_AED4_963E_E407)))
}

/// A uniform value in [lo, hi) from a hash.
fn unit(x: u64, lo: f64, hi: f64) -> f64 {
    lo + (x >> 11) as f64 / (1u64 << 53) as f64 * (hi - lo)
}

impl Athlete {
    pub fn new(seed: u32, user: u32, interval_ms: u32) -> Athlete {
        Athlete {
            acked: AtomicU32::new(0),
            busy: AtomicBool::new(false),
            kind: Kind::pick(h(seed, 0, 1)),
            seed,
            user,
            interval_ms,
        }
    }

    /// Offset of post 0 from the base time, spreading athletes evenly.
    pub fn phase_ms(&self) -> u64 {
        h(self.seed, 0, 2) % self.interval_ms as u64
    }

    pub fn fix_period_ms(&self, shape: Shape) -> u64 {
        (self.interval_ms / shape.points_per_request).max(1) as u64
    }

    /// Time of fix `i`, in ms after the base time.
    pub fn fix_at(&self, i: u64, shape: Shape) -> u64 {
        self.phase_ms() + i * self.fix_period_ms(shape)
    }

    /// The newest fix a post `n` carries.
    pub fn last_fix_of_post(&self, n: u64, shape: Shape) -> u64 {
        n * shape.points_per_request as u64
    }

    fn stretch_has(&self, stretch: u64, salt: u64, permille: u32) -> bool {
        stretch > 0 && h(self.seed, stretch, salt) % 1000 < permille as u64
    }

    /// The phone is offline for post `n` (it records but cannot send).
    pub fn offline(&self, n: u64, shape: Shape) -> bool {
        self.stretch_has(n / STRETCH_POSTS, 3, shape.offline_permille)
    }

    fn paused(&self, stretch: u64, shape: Shape) -> bool {
        self.stretch_has(stretch, 4, shape.pause_permille)
    }

    /// Metres travelled `t` ms after post 0 (pauses stand still).
    fn distance_at(&self, t: u64, shape: Shape) -> f64 {
        let stretch_ms = STRETCH_POSTS * self.interval_ms as u64;
        let whole = t / stretch_ms;
        let mut moving = 0u64;
        for s in 0..whole {
            if !self.paused(s, shape) {
                moving += stretch_ms;
            }
        }
        if !self.paused(whole, shape) {
            moving += t % stretch_ms;
        }
        let (lo, hi) = self.kind.speed();
        unit(h(self.seed, 0, 5), lo, hi) * moving as f64 / 1000.0
    }

    /// Appends fixes `from..=to` as JSON objects (comma-separated) to `out`;
    /// `base_ms` is the run's base time in epoch ms.
    pub fn write_fixes(&self, from: u64, to: u64, base_ms: i64, shape: Shape, out: &mut String) {
        let seed = self.seed;
        let home_lat = unit(h(seed, 0, 6), 45.0, 55.0);
        let home_lng = unit(h(seed, 0, 7), 5.0, 15.0);
        let radius = unit(h(seed, 0, 8), 600.0, 2500.0);
        let wobble = unit(h(seed, 0, 9), 0.0, std::f64::consts::TAU);
        let cos_lat = home_lat.to_radians().cos();
        let (c_lo, c_hi) = self.kind.cadence();
        let phase = self.phase_ms();
        let period = self.fix_period_ms(shape);
        let stretch_ms = STRETCH_POSTS * self.interval_ms as u64;
        for i in from..=to {
            let t = i * period;
            let d = self.distance_at(t, shape);
            let paused = self.paused(t / stretch_ms, shape);
            let theta = d / radius;
            let r = radius * (1.0 + 0.15 * (3.0 * theta + wobble).sin());
            let noise = h(seed, i, 10);
            let jx = unit(noise, -4.0, 4.0);
            let jy = unit(mix(noise), -4.0, 4.0);
            let x = r * theta.cos() + jx;
            let y = r * theta.sin() + jy;
            let lat = home_lat + y / M_PER_DEG;
            let lng = home_lng + x / (M_PER_DEG * cos_lat);
            let alt = 120.0 + 25.0 * (d / 700.0).sin();
            // One fix in a hundred is a poor one the server should ignore.
            let accuracy = if noise.is_multiple_of(100) {
                80.0
            } else {
                unit(mix(noise ^ 1), 3.0, 12.0)
            };
            let (speed, cadence) = if paused {
                (0.0, 0.0)
            } else {
                let (lo, hi) = self.kind.speed();
                (
                    unit(mix(noise ^ 2), lo, hi),
                    unit(mix(noise ^ 3), c_lo, c_hi),
                )
            };
            let hr = if paused {
                95.0
            } else {
                125.0 + 45.0 * (d / 5000.0).min(1.0)
            };
            if i != from {
                out.push(',');
            }
            let ts = base_ms + (phase + t) as i64;
            let _ = write!(
                out,
                r#"{{"ts":{ts},"lat":{lat:.6},"lng":{lng:.6},"alt":{alt:.1},"speed":{speed:.2},"accuracy":{accuracy:.1},"hr":{hr:.0},"cadence":{cadence:.0}}}"#
            );
        }
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire) as u64
    }

    /// Records that fixes `0..=to` are acknowledged.
    pub fn ack_through(&self, to: u64) {
        self.acked
            .fetch_max((to + 1).min(u32::MAX as u64) as u32, Ordering::AcqRel);
    }

    /// Claims the athlete for a request; false if one is already in flight.
    pub fn try_claim(&self) -> bool {
        !self.busy.swap(true, Ordering::AcqRel)
    }

    pub fn release(&self) {
        self.busy.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Shape = Shape {
        points_per_request: 1,
        offline_permille: 0,
        pause_permille: 0,
    };

    #[test]
    fn an_athlete_is_a_few_bytes() {
        assert!(std::mem::size_of::<Athlete>() <= 20);
    }

    #[test]
    fn fixes_move_at_the_kinds_speed_and_are_valid_json() {
        let a = Athlete::new(7, 0, 3000);
        let mut s = String::from("[");
        a.write_fixes(0, 100, 1_700_000_000_000, SHAPE, &mut s);
        s.push(']');
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        let pts = v.as_array().unwrap();
        assert_eq!(pts.len(), 101);
        let ts: Vec<i64> = pts.iter().map(|p| p["ts"].as_i64().unwrap()).collect();
        assert!(ts.windows(2).all(|w| w[1] - w[0] == 3000));
        let (lo, hi) = a.kind.speed();
        let d = a.distance_at(300_000, SHAPE);
        assert!(d >= lo * 299.0 && d <= hi * 301.0, "{d}");
    }

    #[test]
    fn regenerating_a_range_gives_the_same_fixes() {
        let a = Athlete::new(9, 0, 2500);
        let (mut all, mut part) = (String::new(), String::new());
        a.write_fixes(0, 9, 0, SHAPE, &mut all);
        a.write_fixes(5, 9, 0, SHAPE, &mut part);
        assert!(all.ends_with(&part));
    }
}
