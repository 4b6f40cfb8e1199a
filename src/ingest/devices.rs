//! Automatic activities for phones' tracker apps, which know nothing of
//! activities: a device's fixes go to its open live activity, started at
//! the first fix's time with the device's type when there is none, and
//! completed at its last fix's time once no fix has arrived for
//! `--auto-finish-after` (20 minutes by default).
//!
//! Fixes that arrive late (an app's offline backlog) join the activity of
//! this device whose time span they fall in; a backlog from before any of
//! them becomes an activity of its own, finished at its last fix.
//!
//! Uploads of one device are handled one at a time (a per-device lock), so
//! two racing uploads never start two activities. The idle clock is this
//! node's (a load balancer routes a device's uploads by their URL, so one
//! node sees them all); after a restart, the first upload finishes an open
//! activity whose last fix is older than the limit before going on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use uuid::Uuid;

use super::{ActivitySnapshot, IngestError, Tracker};
use crate::clock::Clock;
use crate::domain::point::WINDOW_SLACK_MS;
use crate::domain::time::Millis;
use crate::domain::{Activity, ActivityState, Fix, RejectCode, Visibility};
use crate::store::{Device, Persistence};

/// How many of the athlete's newest activities a late fix is matched in.
const BACKLOG_SEARCH: usize = 50;

/// What one upload came to.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DeviceOutcome {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: Vec<RejectCode>,
    /// The activities the fixes went to.
    pub activities: Vec<Uuid>,
}

/// An automatic activity this node watches for going quiet.
#[derive(Debug, Clone, Copy)]
struct Open {
    owner: Uuid,
    device: Uuid,
    last_fix: Millis,
    last_arrival: Millis,
}

pub struct AutoActivities {
    tracker: Arc<Tracker>,
    store: Persistence,
    clock: Clock,
    finish_after_ms: Millis,
    open: Mutex<HashMap<Uuid, Open>>,
    uploading: DashMap<Uuid, Arc<tokio::sync::Mutex<()>>>,
}

impl AutoActivities {
    pub fn new(
        tracker: Arc<Tracker>,
        store: Persistence,
        clock: Clock,
        finish_after_ms: Millis,
    ) -> AutoActivities {
        AutoActivities {
            tracker,
            store,
            clock,
            finish_after_ms,
            open: Mutex::new(HashMap::new()),
            uploading: DashMap::new(),
        }
    }

    pub fn finish_after_ms(&self) -> Millis {
        self.finish_after_ms
    }

    /// Stores one upload of `device`'s fixes in its activities.
    pub async fn ingest(
        &self,
        device: &Device,
        mut fixes: Vec<Fix>,
    ) -> Result<DeviceOutcome, IngestError> {
        let lock = self
            .uploading
            .entry(device.id)
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone();
        let _one_at_a_time = lock.lock().await;
        // The stored record: another upload may have moved it on.
        let mut device = self
            .store
            .devices
            .device_by_key(device.key_hash)
            .await?
            .ok_or(IngestError::NotFound)?;
        fixes.sort_by_key(|f| f.ts);
        let now = self.clock.now_ms();
        let mut current = self.current(&device, now).await?;
        let mut history: Option<Vec<Activity>> = None;
        let mut groups: Vec<(Uuid, Vec<Fix>)> = Vec::new();
        let mut backlog: Vec<Fix> = Vec::new();
        for fix in fixes {
            if let Some(cur) = &current
                && fix.ts >= cur.activity.started_at
            {
                push(&mut groups, cur.activity.id, fix);
                continue;
            }
            // Before the open activity, or none open: an earlier activity
            // of this device whose span holds it?
            if history.is_none() {
                history = Some(
                    self.store
                        .activities
                        .history(device.owner_id, None, BACKLOG_SEARCH)
                        .await?,
                );
            }
            let current_id = current.as_ref().map(|c| c.activity.id);
            let earlier = history.iter().flatten().find(|a| {
                a.device_id == Some(device.id)
                    && Some(a.id) != current_id
                    && a.state != ActivityState::Discarded
                    && fix.ts >= a.started_at
                    && a.finished_at.is_none_or(|f| fix.ts <= f + WINDOW_SLACK_MS)
            });
            match (earlier, &current) {
                (Some(a), _) => push(&mut groups, a.id, fix),
                // Older than the open one and in no span: its own activity.
                (None, Some(_)) => backlog.push(fix),
                (None, None) => {
                    let snapshot = self.start(&mut device, fix.ts).await?;
                    push(&mut groups, snapshot.activity.id, fix);
                    current = Some(snapshot);
                }
            }
        }
        let mut outcome = DeviceOutcome::default();
        for (id, fixes) in groups {
            self.store_fixes(&device, id, fixes, &mut outcome).await?;
        }
        if let Some(first) = backlog.first() {
            let (start, end) = (first.ts, backlog.last().map_or(first.ts, |f| f.ts));
            let mut activity = auto_activity(&device, start);
            activity.device_id = Some(device.id);
            let id = self.tracker.create(activity).await?.activity.id;
            self.store_fixes(&device, id, backlog, &mut outcome).await?;
            self.tracker
                .transition(device.owner_id, id, ActivityState::Complete, Some(end))
                .await?;
        }
        if let Some(cur) = &current {
            let snapshot = self.tracker.snapshot(cur.activity.id).await?;
            let last_fix = snapshot
                .track
                .last_fix_at
                .unwrap_or(snapshot.activity.started_at);
            let mut open = self.open.lock().expect("open activities lock");
            open.insert(
                cur.activity.id,
                Open {
                    owner: device.owner_id,
                    device: device.id,
                    last_fix,
                    last_arrival: now,
                },
            );
        }
        Ok(outcome)
    }

    /// The device's open activity, if it is still live; one whose last fix
    /// is older than the limit (this node restarted meanwhile) is finished
    /// here first.
    async fn current(
        &self,
        device: &Device,
        now: Millis,
    ) -> Result<Option<ActivitySnapshot>, IngestError> {
        let Some(id) = device.current_activity else {
            return Ok(None);
        };
        let snapshot = match self.tracker.snapshot(id).await {
            Ok(s) => s,
            Err(IngestError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        if !snapshot.activity.is_live() {
            return Ok(None);
        }
        let watched = self
            .open
            .lock()
            .expect("open activities lock")
            .get(&id)
            .map(|o| o.last_arrival);
        let last_heard = watched
            .or(snapshot.track.last_fix_at)
            .unwrap_or(snapshot.activity.started_at);
        if now - last_heard >= self.finish_after_ms {
            self.finish(id, device.owner_id, device.id, snapshot.track.last_fix_at)
                .await?;
            return Ok(None);
        }
        Ok(Some(snapshot))
    }

    async fn start(
        &self,
        device: &mut Device,
        at: Millis,
    ) -> Result<ActivitySnapshot, IngestError> {
        let mut activity = auto_activity(device, at);
        activity.device_id = Some(device.id);
        let snapshot = self.tracker.create(activity).await?;
        device.current_activity = Some(snapshot.activity.id);
        self.store.devices.put_device(device).await?;
        metrics::counter!("trailcast_auto_activities_started_total").increment(1);
        Ok(snapshot)
    }

    async fn store_fixes(
        &self,
        device: &Device,
        id: Uuid,
        fixes: Vec<Fix>,
        outcome: &mut DeviceOutcome,
    ) -> Result<(), IngestError> {
        let result = self
            .tracker
            .ingest(device.owner_id, id, fixes.into_iter().map(Ok).collect())
            .await?;
        outcome.accepted += result.accepted;
        outcome.duplicates += result.duplicates;
        outcome
            .rejected
            .extend(result.rejected.into_iter().map(|(_, code)| code));
        if !outcome.activities.contains(&id) {
            outcome.activities.push(id);
        }
        Ok(())
    }

    /// Completes `id` at its last fix (or, if the athlete changed its state
    /// later, then).
    async fn finish(
        &self,
        id: Uuid,
        owner: Uuid,
        device: Uuid,
        last_fix: Option<Millis>,
    ) -> Result<(), IngestError> {
        self.open.lock().expect("open activities lock").remove(&id);
        let snapshot = self.tracker.snapshot(id).await?;
        if snapshot.activity.is_live() {
            let last_event = snapshot.activity.events.last().map_or(0, |e| e.at);
            let at = last_fix
                .unwrap_or(snapshot.activity.started_at)
                .max(last_event);
            match self
                .tracker
                .transition(owner, id, ActivityState::Complete, Some(at))
                .await
            {
                Ok(_) | Err(IngestError::Transition(_)) => {}
                Err(e) => return Err(e),
            }
            metrics::counter!("trailcast_auto_activities_finished_total").increment(1);
        }
        if let Some(mut d) = self
            .store
            .devices
            .devices_of(owner)
            .await?
            .into_iter()
            .find(|d| d.id == device)
            && d.current_activity == Some(id)
        {
            d.current_activity = None;
            self.store.devices.put_device(&d).await?;
        }
        Ok(())
    }

    /// Finishes every watched activity that has gone quiet; the server calls
    /// this periodically.
    pub async fn finish_idle(&self) {
        let now = self.clock.now_ms();
        let quiet: Vec<(Uuid, Open)> = self
            .open
            .lock()
            .expect("open activities lock")
            .iter()
            .filter(|(_, o)| now - o.last_arrival >= self.finish_after_ms)
            .map(|(id, o)| (*id, *o))
            .collect();
        for (id, o) in quiet {
            if let Err(e) = self.finish(id, o.owner, o.device, Some(o.last_fix)).await {
                tracing::warn!(error = %e, activity = %id, "automatic finish postponed");
            }
        }
    }

    /// How often `finish_idle` should run: often enough to finish within a
    /// small part of the limit.
    pub fn check_every(&self) -> std::time::Duration {
        std::time::Duration::from_millis((self.finish_after_ms / 20).clamp(1_000, 60_000) as u64)
    }
}

fn push(groups: &mut Vec<(Uuid, Vec<Fix>)>, id: Uuid, fix: Fix) {
    match groups.iter_mut().find(|(g, _)| *g == id) {
        Some((_, fixes)) => fixes.push(fix),
        None => groups.push((id, vec![fix])),
    }
}

fn auto_activity(device: &Device, at: Millis) -> Activity {
    Activity::start(
        Uuid::now_v7(),
        device.owner_id,
        device.activity_type,
        Visibility::Friends,
        None,
        at,
    )
}
