//! Coached courses (Runday's step programmes) and planned routes.
//!
//! A course is an ordered list of steps (warm-up, walk, jog, run, rest,
//! cool-down), each lasting a duration or a distance, with the cue to speak
//! at its start and optional half-way and last-30-s cues; and/or a planned
//! route to follow. An activity started on a course keeps a copy of its
//! steps (`Plan`), so a course edited later never changes a run already
//! made.
//!
//! Steps are timed on moving time (pauses stop the clock) and measured on
//! the track's distance. `CourseProgress` is a fold over the track, pushed
//! from `TrackAccumulator` at every kept fix: it records each step when its
//! end is crossed (the crossing interpolated between the two fixes around
//! it), so a step record is exact to the sample, not to the fix. Between
//! fixes, `status` advances a copy of the fold to "now" (a timed step ends
//! on time even while no fix arrives).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::summary::round_to;
use super::track::haversine_m;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    WarmUp,
    Walk,
    Jog,
    Run,
    Rest,
    CoolDown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Beginner,
    Intermediate,
    Advanced,
}

/// One step: exactly one of `duration_s` and `distance_m`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub kind: StepKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance_m: Option<f64>,
    /// Spoken when the step starts.
    pub cue: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halfway_cue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_30s_cue: Option<String>,
}

impl Step {
    /// Why this step cannot be run, if it cannot.
    pub fn problem(&self) -> Option<&'static str> {
        match (self.duration_s, self.distance_m) {
            (Some(_), Some(_)) | (None, None) => Some("a step has either duration_s or distance_m"),
            (Some(s), None) if !(1.0..=86_400.0).contains(&s) => {
                Some("duration_s must be 1 to 86400")
            }
            (None, Some(m)) if !(1.0..=500_000.0).contains(&m) => {
                Some("distance_m must be 1 to 500000")
            }
            _ if self.cue.trim().is_empty() || self.cue.len() > 300 => {
                Some("cue must be 1 to 300 characters")
            }
            _ => None,
        }
    }
}

/// A course: steps to be coached through, a planned route, or both.
/// Catalogue courses (`owner_id` none) are for everyone; an athlete's own
/// are visible as their activities are (`visibility`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Course {
    pub id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub level: Level,
    #[serde(default)]
    pub themes: Vec<String>,
    #[serde(default)]
    pub steps: Vec<Step>,
    /// The planned route as `[lat, lng]` pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Vec<[f64; 2]>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<Uuid>,
    #[serde(default)]
    pub visibility: super::Visibility,
}

/// Most steps in a course, and most points in a planned route.
pub const MAX_STEPS: usize = 200;
pub const MAX_ROUTE_POINTS: usize = 20_000;

impl Course {
    /// Why this course cannot be run, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.name.trim().is_empty() || self.name.chars().count() > 120 {
            return Some("name must be 1 to 120 characters".into());
        }
        if self.steps.is_empty() && self.route.is_none() {
            return Some("a course needs steps, a route, or both".into());
        }
        if self.steps.len() > MAX_STEPS {
            return Some(format!("at most {MAX_STEPS} steps"));
        }
        if let Some((i, why)) = self
            .steps
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.problem().map(|why| (i, why)))
        {
            return Some(format!("step {}: {why}", i + 1));
        }
        if let Some(route) = &self.route {
            if route.len() < 2 || route.len() > MAX_ROUTE_POINTS {
                return Some(format!("a route has 2 to {MAX_ROUTE_POINTS} points"));
            }
            if route
                .iter()
                .any(|[lat, lng]| !(-90.0..=90.0).contains(lat) || !(-180.0..=180.0).contains(lng))
            {
                return Some("route points must be valid [lat, lng] pairs".into());
            }
        }
        None
    }

    /// Planned moving time and distance of the timed and measured steps.
    pub fn planned(&self) -> (f64, f64) {
        self.steps.iter().fold((0.0, 0.0), |(s, m), step| {
            (
                s + step.duration_s.unwrap_or(0.0),
                m + step.distance_m.unwrap_or(0.0),
            )
        })
    }

    /// What an activity started on this course keeps of it.
    pub fn plan(&self) -> Plan {
        Plan {
            course_id: self.id,
            name: self.name.clone(),
            steps: self.steps.clone(),
        }
    }

    pub fn planned_route(&self) -> Option<Route> {
        self.route
            .as_ref()
            .map(|r| Route::new(r.iter().map(|[lat, lng]| (*lat, *lng)).collect()))
    }
}

/// The steps an activity was started on, copied from its course.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub course_id: Uuid,
    pub name: String,
    pub steps: Vec<Step>,
}

/// One step as the athlete ran it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub index: usize,
    pub kind: StepKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planned_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planned_m: Option<f64>,
    /// Moving time spent in the step (pauses excluded).
    pub actual_s: f64,
    pub actual_m: f64,
    pub pace_s_per_km: Option<f64>,
    /// False for the step the activity ended in before its end.
    pub completed: bool,
}

/// Where the athlete is in the plan now: the step, what is left of it, and
/// the cue that comes next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepStatus {
    pub index: usize,
    pub count: usize,
    pub kind: StepKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_left_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distance_left_m: Option<f64>,
    /// The cue of the next step (none in the last).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cue: Option<String>,
}

/// The fold over the track (stored with the track summary).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CourseProgress {
    /// The current step (`steps.len()` once the plan is done).
    pub index: usize,
    step_start_ms: f64,
    step_start_m: f64,
    last_ms: f64,
    last_m: f64,
    pub records: Vec<StepRecord>,
}

impl CourseProgress {
    /// Moves to moving time `ms` and distance `m` (both since the start and
    /// never decreasing), recording every step that ended on the way.
    pub fn push(&mut self, steps: &[Step], ms: f64, m: f64) {
        while let Some(step) = steps.get(self.index) {
            let crossing = match (step.duration_s, step.distance_m) {
                (Some(s), _) => {
                    let end_ms = self.step_start_ms + s * 1000.0;
                    (ms >= end_ms).then(|| (end_ms, self.interpolate_m(end_ms, ms, m)))
                }
                (None, Some(d)) => {
                    let end_m = self.step_start_m + d;
                    (m >= end_m).then(|| (self.interpolate_ms(end_m, ms, m), end_m))
                }
                (None, None) => Some((self.last_ms, self.last_m)),
            };
            let Some((end_ms, end_m)) = crossing else {
                break;
            };
            self.records.push(self.record(steps, end_ms, end_m, true));
            self.index += 1;
            self.step_start_ms = end_ms;
            self.step_start_m = end_m;
            self.last_ms = end_ms;
            self.last_m = end_m;
        }
        self.last_ms = ms;
        self.last_m = m;
    }

    fn interpolate_m(&self, at_ms: f64, ms: f64, m: f64) -> f64 {
        let span = ms - self.last_ms;
        if span <= 0.0 {
            return m;
        }
        self.last_m + (m - self.last_m) * (at_ms - self.last_ms) / span
    }

    fn interpolate_ms(&self, at_m: f64, ms: f64, m: f64) -> f64 {
        let span = m - self.last_m;
        if span <= 0.0 {
            return ms;
        }
        self.last_ms + (ms - self.last_ms) * (at_m - self.last_m) / span
    }

    fn record(&self, steps: &[Step], end_ms: f64, end_m: f64, completed: bool) -> StepRecord {
        let step = &steps[self.index];
        let actual_s = ((end_ms - self.step_start_ms) / 1000.0).max(0.0);
        let actual_m = (end_m - self.step_start_m).max(0.0);
        StepRecord {
            index: self.index,
            kind: step.kind,
            planned_s: step.duration_s,
            planned_m: step.distance_m,
            actual_s: round_to(actual_s, 1),
            actual_m: round_to(actual_m, 1),
            pace_s_per_km: (actual_m >= 10.0).then(|| round_to(actual_s * 1000.0 / actual_m, 1)),
            completed,
        }
    }

    /// Every step record, with the step the track ended in as a partial one.
    pub fn records(&self, steps: &[Step]) -> Vec<StepRecord> {
        let mut records = self.records.clone();
        if self.index < steps.len() && self.last_ms > self.step_start_ms {
            records.push(self.record(steps, self.last_ms, self.last_m, false));
        }
        records
    }

    /// The status at moving time `ms` and distance `m` (now), without
    /// changing the fold.
    pub fn status(&self, steps: &[Step], ms: f64, m: f64) -> Option<StepStatus> {
        let mut now = self.clone();
        now.push(steps, ms.max(self.last_ms), m.max(self.last_m));
        let step = steps.get(now.index)?;
        Some(StepStatus {
            index: now.index,
            count: steps.len(),
            kind: step.kind,
            time_left_s: step
                .duration_s
                .map(|s| round_to((s - (ms - now.step_start_ms) / 1000.0).max(0.0), 1)),
            distance_left_m: step
                .distance_m
                .map(|d| round_to((d - (m - now.step_start_m)).max(0.0), 1)),
            next_cue: steps.get(now.index + 1).map(|s| s.cue.clone()),
        })
    }
}

/// How far along a planned route the athlete is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteProgress {
    pub total_m: f64,
    pub done_m: f64,
    pub left_m: f64,
    /// Distance from the route; more than `OFF_ROUTE_M` is off route.
    pub off_by_m: f64,
    pub off_route: bool,
    /// When the athlete arrives at the recent pace (epoch ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_ms: Option<i64>,
}

pub const OFF_ROUTE_M: f64 = 100.0;

/// A planned route: a polyline with the distance along it at each vertex.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    points: Vec<(f64, f64)>,
    along: Vec<f64>,
}

impl Route {
    pub fn new(points: Vec<(f64, f64)>) -> Route {
        let mut along = Vec::with_capacity(points.len());
        let mut total = 0.0;
        for (i, p) in points.iter().enumerate() {
            if i > 0 {
                let q = points[i - 1];
                total += haversine_m(q.0, q.1, p.0, p.1);
            }
            along.push(total);
        }
        Route { points, along }
    }

    pub fn total_m(&self) -> f64 {
        self.along.last().copied().unwrap_or(0.0)
    }

    pub fn points(&self) -> &[(f64, f64)] {
        &self.points
    }

    /// The athlete at `(lat, lng)` projected onto the route: the nearest
    /// point of any segment (in a local flat frame, fine at segment scale),
    /// its distance along the route, and how far off it the athlete is.
    /// `after_m` prefers the part of the route not yet done when the route
    /// crosses itself: segments ending before it are considered only if no
    /// later one is within `OFF_ROUTE_M`.
    pub fn progress(
        &self,
        lat: f64,
        lng: f64,
        after_m: f64,
        pace_m_s: Option<f64>,
        now: i64,
    ) -> RouteProgress {
        let mut best: Option<(f64, f64)> = None; // (off, along)
        let mut best_ahead: Option<(f64, f64)> = None;
        for i in 1..self.points.len() {
            let (a, b) = (self.points[i - 1], self.points[i]);
            let (off, t) = project(a, b, (lat, lng));
            let along = self.along[i - 1] + t * (self.along[i] - self.along[i - 1]);
            if best.is_none_or(|(o, _)| off < o) {
                best = Some((off, along));
            }
            if self.along[i] >= after_m
                && off <= OFF_ROUTE_M
                && best_ahead.is_none_or(|(o, _)| off < o)
            {
                best_ahead = Some((off, along));
            }
        }
        let (off, done) = best_ahead.or(best).unwrap_or_else(|| {
            let p = self.points.first().copied().unwrap_or((lat, lng));
            (haversine_m(p.0, p.1, lat, lng), 0.0)
        });
        let total = self.total_m();
        let left = (total - done).max(0.0);
        RouteProgress {
            total_m: round_to(total, 1),
            done_m: round_to(done, 1),
            left_m: round_to(left, 1),
            off_by_m: round_to(off, 1),
            off_route: off > OFF_ROUTE_M,
            eta_ms: pace_m_s
                .filter(|v| *v > 0.1)
                .map(|v| now + (left / v * 1000.0) as i64),
        }
    }
}

/// The distance from `p` to segment `a`–`b` and where along it (0–1) the
/// nearest point lies, in an equirectangular frame around `a`.
fn project(a: (f64, f64), b: (f64, f64), p: (f64, f64)) -> (f64, f64) {
    let k = a.0.to_radians().cos();
    let to_xy = |q: (f64, f64)| ((q.1 - a.1) * k * 111_195.0, (q.0 - a.0) * 111_195.0);
    let (bx, by) = to_xy(b);
    let (px, py) = to_xy(p);
    let len2 = bx * bx + by * by;
    let t = if len2 == 0.0 {
        0.0
    } else {
        ((px * bx + py * by) / len2).clamp(0.0, 1.0)
    };
    let (dx, dy) = (px - t * bx, py - t * by);
    ((dx * dx + dy * dy).sqrt(), t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(kind: StepKind, duration_s: Option<f64>, distance_m: Option<f64>) -> Step {
        Step {
            kind,
            duration_s,
            distance_m,
            cue: format!("{kind:?}"),
            halfway_cue: None,
            last_30s_cue: None,
        }
    }

    /// Walk 60 s, run 200 m, walk 60 s.
    fn three_steps() -> Vec<Step> {
        vec![
            step(StepKind::Walk, Some(60.0), None),
            step(StepKind::Run, None, Some(200.0)),
            step(StepKind::CoolDown, Some(60.0), None),
        ]
    }

    #[test]
    fn steps_end_on_time_or_distance_with_the_crossing_interpolated() {
        let steps = three_steps();
        let mut p = CourseProgress::default();
        // 1.5 m/s walking for 70 s: the walk ends at 60 s, 90 m.
        p.push(&steps, 50_000.0, 75.0);
        assert_eq!(p.index, 0);
        p.push(&steps, 70_000.0, 105.0);
        assert_eq!(p.index, 1);
        assert_eq!(p.records[0].actual_s, 60.0);
        assert_eq!(p.records[0].actual_m, 90.0);
        // Running 4 m/s: 200 m more after 90 m is at 290 m.
        p.push(&steps, 120_000.0, 305.0);
        assert_eq!(p.index, 2);
        let run = &p.records[1];
        assert_eq!(run.actual_m, 200.0);
        assert_eq!(
            run.actual_s, 56.3,
            "from 60 s to (290-105)/(305-105)*50 s + 70 s"
        );
        let status = p.status(&steps, 130_000.0, 320.0).unwrap();
        assert_eq!((status.index, status.kind), (2, StepKind::CoolDown));
        assert_eq!(status.time_left_s, Some(46.3), "60 s from 116.25 s");
        assert_eq!(status.next_cue, None);
        // Time passes without fixes: the last step ends by the clock.
        assert!(p.status(&steps, 200_000.0, 320.0).is_none(), "plan done");
        let records = p.records(&steps);
        assert_eq!(records.len(), 3);
        assert!(
            !records[2].completed,
            "the activity ended inside the cool-down"
        );
    }

    #[test]
    fn status_gives_the_next_cue_and_what_is_left() {
        let steps = three_steps();
        let p = CourseProgress::default();
        let s = p.status(&steps, 15_000.0, 20.0).unwrap();
        assert_eq!((s.index, s.count), (0, 3));
        assert_eq!(s.time_left_s, Some(45.0));
        assert_eq!(s.next_cue.as_deref(), Some("Run"));
    }

    #[test]
    fn a_step_without_a_measure_or_with_both_is_refused() {
        assert!(step(StepKind::Run, None, None).problem().is_some());
        assert!(
            step(StepKind::Run, Some(1.0), Some(1.0))
                .problem()
                .is_some()
        );
        assert!(step(StepKind::Run, Some(0.0), None).problem().is_some());
        assert!(step(StepKind::Run, Some(30.0), None).problem().is_none());
    }

    #[test]
    fn progress_along_a_curved_route_is_projected_not_straight_line() {
        // An L: 1 km north, then 1 km east.
        let north = 1_000.0 / 111_195.0;
        let east = 1_000.0 / (111_195.0 * 48f64.to_radians().cos());
        let route = Route::new(vec![
            (48.0, 11.0),
            (48.0 + north, 11.0),
            (48.0 + north, 11.0 + east),
        ]);
        assert!((route.total_m() - 2_000.0).abs() < 2.0);
        // Half-way along the second leg, 20 m north of it.
        let lat = 48.0 + north + 20.0 / 111_195.0;
        let at = route.progress(lat, 11.0 + east / 2.0, 0.0, Some(4.0), 0);
        assert!((at.done_m - 1_500.0).abs() < 3.0, "{at:?}");
        assert!((at.left_m - 500.0).abs() < 3.0);
        assert!((at.off_by_m - 20.0).abs() < 1.0);
        assert!(!at.off_route);
        let eta = at.eta_ms.unwrap();
        assert!((eta - 125_000).abs() < 1_000, "500 m at 4 m/s: {eta}");
        let far = route.progress(48.0 + north / 2.0, 11.0 + east / 2.0, 0.0, None, 0);
        assert!(far.off_route, "{far:?}");
    }
}
