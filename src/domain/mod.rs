//! Pure domain types and rules: no I/O, no clocks read behind your back.
//!
//! Everything that comes in over HTTP is parsed into these types once, at the
//! edge; code behind the edge never re-checks ranges or transitions.

pub mod activity;
pub mod course;
pub mod fields;
pub mod fix;
pub mod point;
pub mod privacy;
pub mod summary;
pub mod time;
pub mod track;

pub use activity::{Activity, ActivityState, ActivityType, Event, TransitionError, Visibility};
pub use fix::Fix;
pub use point::{Point, PointInput, RejectCode};
pub use privacy::{PrivacyFilter, PrivacyZone};
pub use summary::{Split, Stats, TrackSummary};
pub use track::TrackAccumulator;
