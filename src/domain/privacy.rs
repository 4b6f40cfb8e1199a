//! Privacy zones: circles around places an athlete keeps to themselves
//! (home, work). For everyone but the athlete, no point inside a zone is
//! ever sent; the track appears to start or end at the zone's edge.
//! Statistics stay those of the full track.
//!
//! An activity may also hide its ends (`hide_ends_m`, for athletes without
//! zones): a circle of that radius around the track's first point, and,
//! once the activity is finished, around its last point. While it is live
//! the end is where the athlete is now, so only the start is hidden.

use serde::{Deserialize, Serialize};

use super::track::haversine_m;

pub const MAX_ZONES: usize = 10;
pub const MIN_ZONE_RADIUS_M: f64 = 100.0;
pub const MAX_ZONE_RADIUS_M: f64 = 1_000.0;
/// Largest `hide_ends_m` of an activity.
pub const MAX_HIDE_ENDS_M: u32 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrivacyZone {
    pub lat: f64,
    pub lng: f64,
    pub radius_m: f64,
}

impl PrivacyZone {
    fn is_valid(&self) -> bool {
        (-90.0..=90.0).contains(&self.lat)
            && (-180.0..=180.0).contains(&self.lng)
            && (MIN_ZONE_RADIUS_M..=MAX_ZONE_RADIUS_M).contains(&self.radius_m)
    }
}

/// Why a set of zones was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZonesError {
    #[error("at most {MAX_ZONES} privacy zones")]
    TooMany,
    #[error(
        "zone {0}: lat must be -90 to 90, lng -180 to 180, radius_m {MIN_ZONE_RADIUS_M} to {MAX_ZONE_RADIUS_M}"
    )]
    Invalid(usize),
}

/// Checks a whole set of zones as an athlete sends it.
pub fn validate_zones(zones: &[PrivacyZone]) -> Result<(), ZonesError> {
    if zones.len() > MAX_ZONES {
        return Err(ZonesError::TooMany);
    }
    match zones.iter().position(|z| !z.is_valid()) {
        Some(i) => Err(ZonesError::Invalid(i)),
        None => Ok(()),
    }
}

/// What one viewer (not the athlete) may not see of one activity: a set of
/// circles. Empty for an athlete without zones and hidden ends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PrivacyFilter {
    circles: Vec<PrivacyZone>,
}

impl PrivacyFilter {
    /// The athlete's zones plus the activity's hidden ends around `first`
    /// and (once finished) `last`.
    pub fn new(
        zones: &[PrivacyZone],
        hide_ends_m: u32,
        first: Option<(f64, f64)>,
        last: Option<(f64, f64)>,
    ) -> PrivacyFilter {
        let mut circles = zones.to_vec();
        if hide_ends_m > 0 {
            for (lat, lng) in first.into_iter().chain(last) {
                circles.push(PrivacyZone {
                    lat,
                    lng,
                    radius_m: f64::from(hide_ends_m),
                });
            }
        }
        PrivacyFilter { circles }
    }

    pub fn is_empty(&self) -> bool {
        self.circles.is_empty()
    }

    /// Whether a point at `lat`, `lng` must be hidden.
    pub fn hides(&self, lat: f64, lng: f64) -> bool {
        self.circles
            .iter()
            .any(|z| haversine_m(z.lat, z.lng, lat, lng) <= z.radius_m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: PrivacyZone = PrivacyZone {
        lat: 48.0,
        lng: 11.0,
        radius_m: 200.0,
    };

    #[test]
    fn a_zone_hides_what_is_inside_it_and_nothing_else() {
        let filter = PrivacyFilter::new(&[HOME], 0, None, None);
        assert!(filter.hides(48.0, 11.0));
        assert!(filter.hides(48.0 + 150.0 / 111_195.0, 11.0));
        assert!(!filter.hides(48.0 + 250.0 / 111_195.0, 11.0));
    }

    #[test]
    fn hidden_ends_are_circles_around_the_first_and_last_point() {
        let filter = PrivacyFilter::new(&[], 100, Some((10.0, 10.0)), Some((20.0, 20.0)));
        assert!(filter.hides(10.0, 10.0) && filter.hides(20.0, 20.0));
        assert!(!filter.hides(15.0, 15.0));
        assert!(PrivacyFilter::new(&[], 0, Some((10.0, 10.0)), None).is_empty());
    }

    #[test]
    fn zones_are_checked_as_a_set() {
        assert_eq!(validate_zones(&[HOME; 10]), Ok(()));
        assert_eq!(validate_zones(&[HOME; 11]), Err(ZonesError::TooMany));
        let small = PrivacyZone {
            radius_m: 99.0,
            ..HOME
        };
        assert_eq!(validate_zones(&[HOME, small]), Err(ZonesError::Invalid(1)));
        let nan = PrivacyZone {
            lat: f64::NAN,
            ..HOME
        };
        assert_eq!(validate_zones(&[nan]), Err(ZonesError::Invalid(0)));
    }
}
