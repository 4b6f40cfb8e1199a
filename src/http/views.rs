//! The API's reply shapes that are part of the contract (DESIGN.md's
//! Activity, history pages, the points reply), as typed structs: what a
//! client may rely on is visible in one place and checked by the compiler.

use std::collections::BTreeMap;

use serde::Serialize;
use uuid::Uuid;

use crate::domain::course::StepRecord;
use crate::domain::time::{Millis, serialize_ms, serialize_opt_ms};
use crate::domain::{ActivityState, ActivityType, Event, RejectCode, Split, Stats, Visibility};
use crate::ingest::ActivitySnapshot;

/// The API's Activity: the stored record plus statistics as of now.
#[derive(Debug, Serialize)]
pub struct ActivityView {
    pub id: Uuid,
    pub athlete_id: Uuid,
    #[serde(rename = "type")]
    pub activity_type: ActivityType,
    pub state: ActivityState,
    pub visibility: Visibility,
    /// Radius hidden around the track's ends from everyone but the athlete.
    pub hide_ends_m: u32,
    pub course_id: Option<Uuid>,
    /// The course's name, for an activity started on one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub course_name: Option<String>,
    #[serde(serialize_with = "serialize_ms")]
    pub started_at: Millis,
    #[serde(serialize_with = "serialize_opt_ms")]
    pub finished_at: Option<Millis>,
    pub events: Vec<Event>,
    pub stats: Stats,
    pub splits: Vec<Split>,
    /// Named numbers: the athlete's own and, once complete, the computed.
    pub fields: BTreeMap<String, f64>,
    /// One record per step of the course's plan run so far (the step the
    /// activity is in, or ended in, as a partial one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepRecord>,
}

impl ActivityView {
    pub fn of(s: &ActivitySnapshot, now: Millis) -> ActivityView {
        let a = &s.activity;
        ActivityView {
            id: a.id,
            athlete_id: a.athlete_id,
            activity_type: a.activity_type,
            state: a.state,
            visibility: a.visibility,
            hide_ends_m: a.hide_ends_m,
            course_id: a.course_id,
            course_name: a.plan.as_ref().map(|p| p.name.clone()),
            started_at: a.started_at,
            finished_at: a.finished_at,
            events: a.events.clone(),
            stats: s.stats(now),
            splits: s.track.splits.clone(),
            fields: a.fields.clone(),
            steps: match (&a.plan, &s.track.course) {
                (Some(plan), Some(progress)) => progress.records(&plan.steps),
                _ => Vec::new(),
            },
        }
    }
}

/// One page of a list, newest first; `next_cursor` is absent on the last.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// A point refused in a batch, by its index in the request.
#[derive(Debug, Serialize)]
pub struct Rejection {
    pub index: usize,
    pub code: RejectCode,
}

/// The reply to `POST /v1/activities/{id}/points`.
#[derive(Debug, Serialize)]
pub struct PointsReply {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: Vec<Rejection>,
    pub stats: Stats,
}
