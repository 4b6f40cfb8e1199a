//! An activity and its state machine.
//!
//! States: STARTED ⇄ PAUSED, either → COMPLETE or DISCARDED (both final).
//! Every change is appended to `events` with the time it happened (the
//! client's `at` for offline use, otherwise the server's clock), so elapsed
//! and moving time are derived from the log, never stored twice.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::course::Plan;
use super::point::{MAX_FUTURE_SKEW_MS, PointWindow};
use super::summary::{Stats, TrackSummary, round_to};
use super::time::{Millis, deserialize_ms, deserialize_opt_ms, serialize_ms, serialize_opt_ms};

/// Calorie estimates assume this body mass (no profile weight yet).
pub const DEFAULT_MASS_KG: f64 = 70.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ActivityState {
    Started,
    Paused,
    Complete,
    Discarded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ActivityType {
    Run,
    Ride,
    Walk,
    Hike,
    Ski,
    Swim,
    Other,
}

impl ActivityType {
    /// The fastest this sport plausibly moves: a fix that would need more
    /// from the last one is a GPS jump.
    pub fn max_speed_m_s(self) -> f64 {
        match self {
            ActivityType::Run => 12.0,
            ActivityType::Walk | ActivityType::Hike => 4.0,
            ActivityType::Ride => 35.0,
            ActivityType::Ski => 45.0,
            ActivityType::Swim => 3.0,
            ActivityType::Other => 60.0,
        }
    }

    /// kcal per kg of body mass per km, a common rule-of-thumb estimate.
    pub fn kcal_per_kg_km(self) -> f64 {
        match self {
            ActivityType::Run => 1.0,
            ActivityType::Walk => 0.65,
            ActivityType::Hike => 0.8,
            ActivityType::Ride => 0.3,
            ActivityType::Ski | ActivityType::Other => 0.5,
            ActivityType::Swim => 3.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    Private,
    #[default]
    Friends,
    Public,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub state: ActivityState,
    #[serde(serialize_with = "serialize_ms", deserialize_with = "deserialize_ms")]
    pub at: Millis,
}

/// The stored record. Statistics that depend on the clock (elapsed and
/// moving time) are computed on read from `events`; the track-derived part
/// is kept in `track` so history pages never rescan points.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Activity {
    pub id: Uuid,
    pub athlete_id: Uuid,
    #[serde(rename = "type")]
    pub activity_type: ActivityType,
    pub state: ActivityState,
    pub visibility: Visibility,
    pub course_id: Option<Uuid>,
    #[serde(serialize_with = "serialize_ms", deserialize_with = "deserialize_ms")]
    pub started_at: Millis,
    #[serde(
        serialize_with = "serialize_opt_ms",
        deserialize_with = "deserialize_opt_ms"
    )]
    pub finished_at: Option<Millis>,
    pub events: Vec<Event>,
    #[serde(default)]
    pub track: TrackSummary,
    /// Metres this activity has added to the leaderboards so far.
    #[serde(default)]
    pub leaderboard_m: f64,
    /// Radius hidden around the first and last point from everyone but the
    /// athlete (`privacy`); 0 hides nothing.
    #[serde(default)]
    pub hide_ends_m: u32,
    /// Users the athlete removed from this activity's audience: they see it
    /// as if it did not exist, whatever its visibility.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_viewers: Vec<Uuid>,
    /// Named numbers (`fields`): the athlete's own and, once complete, the
    /// computed ones.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, f64>,
    /// The steps of the course it was started on, as they were then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Boxed: most activities have none, and every live one is held in
    /// memory (#13).
    pub plan: Option<Box<Plan>>,
    /// The tracker app device that started it (an automatic activity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("cannot go from {from:?} to {to:?}")]
    Illegal {
        from: ActivityState,
        to: ActivityState,
    },
    #[error("`at` must not be before the previous state change nor in the future")]
    BadTime,
}

/// The outcome of a legal request: either a real change or a retry of the
/// change that already happened (idempotent for clients that resend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Changed,
    AlreadyThere,
}

impl Activity {
    pub fn start(
        id: Uuid,
        athlete_id: Uuid,
        activity_type: ActivityType,
        visibility: Visibility,
        course_id: Option<Uuid>,
        started_at: Millis,
    ) -> Activity {
        Activity {
            id,
            athlete_id,
            activity_type,
            state: ActivityState::Started,
            visibility,
            course_id,
            started_at,
            finished_at: None,
            events: vec![Event {
                state: ActivityState::Started,
                at: started_at,
            }],
            track: TrackSummary::default(),
            leaderboard_m: 0.0,
            hide_ends_m: 0,
            blocked_viewers: Vec::new(),
            fields: BTreeMap::new(),
            plan: None,
            device_id: None,
        }
    }

    /// The one place that knows which state changes are legal.
    pub fn transition(
        &mut self,
        to: ActivityState,
        at: Millis,
        now: Millis,
    ) -> Result<Transition, TransitionError> {
        use ActivityState::*;
        if to == self.state {
            return Ok(Transition::AlreadyThere);
        }
        match (self.state, to) {
            (Started, Paused) | (Paused, Started) => {}
            (Started | Paused, Complete | Discarded) => {}
            (from, to) => return Err(TransitionError::Illegal { from, to }),
        }
        let last = self.events.last().map_or(self.started_at, |e| e.at);
        if at < last || at > now + MAX_FUTURE_SKEW_MS {
            return Err(TransitionError::BadTime);
        }
        self.state = to;
        self.events.push(Event { state: to, at });
        if matches!(to, Complete | Discarded) {
            self.finished_at = Some(at);
        }
        Ok(Transition::Changed)
    }

    pub fn is_live(&self) -> bool {
        matches!(self.state, ActivityState::Started | ActivityState::Paused)
    }

    pub fn point_window(&self, now: Millis) -> PointWindow {
        PointWindow {
            started_at: self.started_at,
            finished_at: self.finished_at,
            now,
        }
    }

    /// Wall time from start to finish (or to `now` while live).
    pub fn elapsed_ms(&self, now: Millis) -> Millis {
        (self.finished_at.unwrap_or(now) - self.started_at).max(0)
    }

    /// The sum of the STARTED stretches of the log, up to `now` while live.
    pub fn moving_ms(&self, now: Millis) -> Millis {
        self.moving_ms_between(Millis::MIN, now)
    }

    /// How much of `[from, to]` the athlete spent in STARTED stretches.
    /// Used to time splits without counting pauses.
    pub fn moving_ms_between(&self, from: Millis, to: Millis) -> Millis {
        let mut total = 0;
        let mut stretch_start = None;
        for event in &self.events {
            match (event.state, stretch_start) {
                (ActivityState::Started, None) => stretch_start = Some(event.at),
                (ActivityState::Started, Some(_)) => {}
                (_, Some(start)) => {
                    total += overlap(start, event.at, from, to);
                    stretch_start = None;
                }
                (_, None) => {}
            }
        }
        if let Some(start) = stretch_start {
            total += overlap(start, Millis::MAX, from, to);
        }
        total
    }
}

impl Stats {
    /// The statistics of `activity` with this track summary, as of `now`
    /// (elapsed and moving time run on while the activity is live).
    pub fn of(activity: &Activity, track: &TrackSummary, now: Millis) -> Stats {
        let moving_s = activity.moving_ms(now) as f64 / 1000.0;
        let km = track.distance_m / 1000.0;
        let moving = moving_s > 0.0 && track.distance_m >= 10.0;
        let kcal_per_kg_km = activity.activity_type.kcal_per_kg_km();
        Stats {
            distance_m: round_to(track.distance_m, 1),
            moving_time_s: round_to(moving_s, 1),
            elapsed_time_s: round_to(activity.elapsed_ms(now) as f64 / 1000.0, 1),
            avg_pace_s_per_km: moving.then(|| round_to(moving_s / km, 1)),
            avg_speed_m_s: moving.then(|| round_to(track.distance_m / moving_s, 3)),
            elevation_gain_m: round_to(track.elevation_gain_m, 1),
            calories_kcal: round_to(km * DEFAULT_MASS_KG * kcal_per_kg_km, 0),
            points: track.points,
            step: activity.plan.as_ref().and_then(|plan| {
                let progress = track.course.clone().unwrap_or_default();
                match activity.is_live() {
                    true => progress.status(&plan.steps, moving_s * 1000.0, track.distance_m),
                    false => None,
                }
            }),
        }
    }
}

fn overlap(a0: Millis, a1: Millis, b0: Millis, b1: Millis) -> Millis {
    (a1.min(b1) - a0.max(b0)).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ActivityState::*;

    const MIN: Millis = 60_000;

    fn activity() -> Activity {
        Activity::start(
            Uuid::nil(),
            Uuid::nil(),
            ActivityType::Run,
            Visibility::Friends,
            None,
            0,
        )
    }

    #[test]
    fn strava_example_moving_and_elapsed_time() {
        // started 00:00, paused 00:10, resumed 00:15, stopped 00:20
        let mut a = activity();
        let now = 30 * MIN;
        a.transition(Paused, 10 * MIN, now).unwrap();
        a.transition(Started, 15 * MIN, now).unwrap();
        a.transition(Complete, 20 * MIN, now).unwrap();
        assert_eq!(a.moving_ms(now), 15 * MIN);
        assert_eq!(a.elapsed_ms(now), 20 * MIN);
        assert_eq!(a.moving_ms_between(5 * MIN, 17 * MIN), 7 * MIN);
    }

    #[test]
    fn live_activity_counts_up_to_now() {
        let mut a = activity();
        a.transition(Paused, 4 * MIN, 4 * MIN).unwrap();
        assert_eq!(a.moving_ms(9 * MIN), 4 * MIN);
        assert_eq!(a.elapsed_ms(9 * MIN), 9 * MIN);
        a.transition(Started, 9 * MIN, 9 * MIN).unwrap();
        assert_eq!(a.moving_ms(10 * MIN), 5 * MIN);
    }

    #[test]
    fn only_legal_transitions_pass() {
        let now = 100 * MIN;
        let mut a = activity();
        a.transition(Complete, MIN, now).unwrap();
        for to in [Started, Paused, Discarded] {
            assert!(matches!(
                a.transition(to, 2 * MIN, now),
                Err(TransitionError::Illegal { .. })
            ));
        }
        assert_eq!(
            a.transition(Complete, 2 * MIN, now),
            Ok(Transition::AlreadyThere)
        );
        assert_eq!(a.events.len(), 2);
        assert_eq!(a.finished_at, Some(MIN));
    }

    #[test]
    fn state_change_times_must_move_forward() {
        let now = 100 * MIN;
        let mut a = activity();
        a.transition(Paused, 10 * MIN, now).unwrap();
        assert_eq!(
            a.transition(Started, 5 * MIN, now),
            Err(TransitionError::BadTime)
        );
        assert_eq!(
            a.transition(Started, now + 10 * MIN, now),
            Err(TransitionError::BadTime)
        );
    }
}
