//! Activity fields (Strava's "All the Data"): any named number per activity,
//! read back as a time series per athlete and field.
//!
//! Athletes set their own (`PUT /v1/activities/{id}/fields`: names
//! `[a-z0-9_]{1,40}`, at most `MAX_FIELDS` per activity besides the
//! computed ones); the computed ones (`COMPUTED`) are written when an
//! activity completes and cannot be set by hand.

use std::collections::BTreeMap;

use super::activity::Activity;
use super::point::Point;
use super::summary::Stats;
use super::time::Millis;

/// Most athlete-set fields on one activity.
pub const MAX_FIELDS: usize = 64;
pub const MAX_NAME_LEN: usize = 40;

/// The fields written when an activity completes.
pub const COMPUTED: [&str; 11] = [
    "distance_m",
    "moving_time_s",
    "elapsed_time_s",
    "elevation_gain_m",
    "avg_speed_m_s",
    "avg_pace_s_per_km",
    "calories_kcal",
    "points",
    "avg_hr",
    "max_hr",
    "avg_cadence",
];

pub fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

pub fn is_computed(name: &str) -> bool {
    COMPUTED.contains(&name)
}

/// Why a fields update was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FieldsError {
    #[error("field name `{0}` must be 1 to {MAX_NAME_LEN} of a-z, 0-9 and _")]
    BadName(String),
    #[error("field `{0}` is computed when the activity completes and cannot be set")]
    Computed(String),
    #[error("field `{0}` must be a finite number (or null to remove it)")]
    NotFinite(String),
    #[error("at most {MAX_FIELDS} fields per activity besides the computed ones")]
    TooMany,
}

/// Applies an update (`None` removes the field) to an activity's fields,
/// all or nothing.
pub fn apply(
    fields: &mut BTreeMap<String, f64>,
    update: &BTreeMap<String, Option<f64>>,
) -> Result<(), FieldsError> {
    let mut next = fields.clone();
    for (name, value) in update {
        if !is_valid_name(name) {
            return Err(FieldsError::BadName(name.chars().take(60).collect()));
        }
        if is_computed(name) {
            return Err(FieldsError::Computed(name.clone()));
        }
        match value {
            Some(v) if v.is_finite() => {
                next.insert(name.clone(), *v);
            }
            Some(_) => return Err(FieldsError::NotFinite(name.clone())),
            None => {
                next.remove(name);
            }
        }
    }
    if next.keys().filter(|n| !is_computed(n)).count() > MAX_FIELDS {
        return Err(FieldsError::TooMany);
    }
    *fields = next;
    Ok(())
}

/// The computed fields of a finished activity, from its statistics and
/// track. Absent values (no heart rate in the track, no pace when standing
/// still) are absent, not zero.
pub fn computed(activity: &Activity, track: &[Point], now: Millis) -> BTreeMap<String, f64> {
    let stats = Stats::of(activity, &activity.track, now);
    let mut out = BTreeMap::new();
    let mut put = |name: &str, v: Option<f64>| {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            out.insert(name.to_string(), v);
        }
    };
    put("distance_m", Some(stats.distance_m));
    put("moving_time_s", Some(stats.moving_time_s));
    put("elapsed_time_s", Some(stats.elapsed_time_s));
    put("elevation_gain_m", Some(stats.elevation_gain_m));
    put("avg_speed_m_s", stats.avg_speed_m_s);
    put("avg_pace_s_per_km", stats.avg_pace_s_per_km);
    put("calories_kcal", Some(stats.calories_kcal));
    put("points", Some(stats.points as f64));
    let hr: Vec<f64> = track.iter().filter_map(|p| p.hr).map(f64::from).collect();
    put("avg_hr", mean(&hr));
    put("max_hr", hr.iter().copied().reduce(f64::max));
    let cadence: Vec<f64> = track
        .iter()
        .filter_map(|p| p.cadence)
        .map(f64::from)
        .collect();
    put("avg_cadence", mean(&cadence));
    out
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty())
        .then(|| (values.iter().sum::<f64>() / values.len() as f64 * 10.0).round() / 10.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(pairs: &[(&str, Option<f64>)]) -> BTreeMap<String, Option<f64>> {
        pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect()
    }

    #[test]
    fn names_are_short_lowercase_identifiers() {
        for good in ["rpe", "shoe_km", "a", &"x".repeat(40), "hr2"] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", "RPE", "with space", "é", &"x".repeat(41), "a-b"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn an_update_sets_and_removes_all_or_nothing() {
        let mut fields = BTreeMap::new();
        apply(
            &mut fields,
            &update(&[("rpe", Some(7.0)), ("shoe_km", Some(312.5))]),
        )
        .unwrap();
        assert_eq!(fields.len(), 2);
        apply(&mut fields, &update(&[("rpe", None)])).unwrap();
        assert_eq!(fields.keys().collect::<Vec<_>>(), ["shoe_km"]);
        let refused = apply(
            &mut fields,
            &update(&[("mood", Some(1.0)), ("distance_m", Some(5.0))]),
        );
        assert_eq!(refused, Err(FieldsError::Computed("distance_m".into())));
        assert_eq!(fields.len(), 1, "nothing of a refused update is applied");
        let nan = apply(&mut fields, &update(&[("x", Some(f64::INFINITY))]));
        assert_eq!(nan, Err(FieldsError::NotFinite("x".into())));
    }

    #[test]
    fn at_most_sixty_four_set_by_the_athlete() {
        let mut fields: BTreeMap<String, f64> =
            COMPUTED.iter().map(|n| (n.to_string(), 1.0)).collect();
        let many: Vec<(String, Option<f64>)> =
            (0..64).map(|i| (format!("f{i}"), Some(1.0))).collect();
        apply(&mut fields, &many.iter().cloned().collect()).unwrap();
        let one_more = update(&[("f64", Some(1.0))]);
        assert_eq!(apply(&mut fields, &one_more), Err(FieldsError::TooMany));
    }
}
