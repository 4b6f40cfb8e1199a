//! What an activity's track adds up to: the stored summary (distance,
//! climb, splits) and the statistics every API reply carries. Plain data;
//! `track` computes the summary and `activity` the clock-dependent stats.

use serde::{Deserialize, Serialize};

use super::course::{CourseProgress, StepStatus};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Split {
    /// 1-based index of the kilometre.
    pub km: u32,
    /// 1000 for a full kilometre; less for the final partial split.
    pub distance_m: f64,
    pub time_s: f64,
    pub pace_s_per_km: f64,
}

/// The track-derived part of an activity's summary, stored with the activity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrackSummary {
    pub distance_m: f64,
    pub elevation_gain_m: f64,
    pub points: u64,
    pub splits: Vec<Split>,
    /// The fold over the plan's steps, for an activity on a course.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Boxed, as most activities have none (#13).
    pub course: Option<Box<CourseProgress>>,
    /// The time of the newest fix (any fix, kept or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fix_at: Option<i64>,
}

/// The statistics every API reply carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub distance_m: f64,
    pub moving_time_s: f64,
    pub elapsed_time_s: f64,
    pub avg_pace_s_per_km: Option<f64>,
    pub avg_speed_m_s: Option<f64>,
    pub elevation_gain_m: f64,
    pub calories_kcal: f64,
    pub points: u64,
    /// The current step of the activity's plan, while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<StepStatus>,
}

/// `v` rounded to `decimals`; a non-finite value (which validated input
/// cannot produce, but a stored statistic must never be) becomes 0.
pub(crate) fn round_to(v: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    let r = (v * f).round() / f;
    if r.is_finite() { r } else { 0.0 }
}
