//! The write-behind batcher: group commit for points.
//!
//! Request handlers `submit` their validated, de-duplicated points and await
//! the returned receiver; the writer task takes every job waiting in the
//! queue (up to `max_batch_points`) as one group, writes it with one
//! `PointStore::append_groups` call (one fsync / one round of Scylla
//! batches) and answers each job by its own outcome. A request is therefore
//! acknowledged only after its points are durable, and under load many
//! requests share one commit.
//!
//! Up to `max_flushes` groups are written at once: the writer starts the
//! next group as soon as a flush slot is free, not when the previous write
//! returns, so a backend whose commit is a network round trip (Scylla) is
//! not capped at one round trip per group. While every slot is busy, jobs
//! wait in the queue and make the next group larger. Requests for one
//! activity are serialised by its hot entry (the handler holds it until its
//! points are durable), so concurrent groups never race on one partition.
//!
//! Bounds: the queue holds at most `queue_points` points, counted with a
//! semaphore whose permits travel with each job and are released after its
//! flush. When it is full `submit` fails at once with `QueueFull` and the
//! handler answers 503 with Retry-After; nothing is buffered without bound.
//!
//! Shutdown: when the shutdown signal fires the writer closes the queue
//! (later submits fail), flushes everything already queued, answers those
//! jobs and exits; `run` awaits it before closing the store.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::domain::Point;
use crate::store::{PointStore, StoreResult};

#[derive(Debug, Clone, Copy)]
pub struct BatcherConfig {
    /// Points waiting for a flush, across all requests.
    pub queue_points: usize,
    /// Most points written in one group commit.
    pub max_batch_points: usize,
    /// Group commits in flight at once (at least 1).
    pub max_flushes: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("write queue is full")]
pub struct QueueFull;

struct Job {
    points: Vec<(Uuid, Point)>,
    done: oneshot::Sender<StoreResult<()>>,
    _permit: OwnedSemaphorePermit,
}

#[derive(Clone)]
pub struct WriteBehind {
    tx: mpsc::Sender<Job>,
    room: Arc<Semaphore>,
    config: BatcherConfig,
}

impl WriteBehind {
    pub fn start(
        store: Arc<dyn PointStore>,
        config: BatcherConfig,
        shutdown: watch::Receiver<bool>,
    ) -> (WriteBehind, JoinHandle<()>) {
        // A job holds at least one point, so the channel never fills before
        // the semaphore does; the semaphore is the real bound.
        let (tx, rx) = mpsc::channel(config.queue_points.max(1));
        let room = Arc::new(Semaphore::new(config.queue_points));
        let writer = tokio::spawn(write_loop(store, rx, room.clone(), config, shutdown));
        (WriteBehind { tx, room, config }, writer)
    }

    /// Queues points for the next group commit. The receiver yields once
    /// they are durable (or the write failed).
    pub fn submit(
        &self,
        points: Vec<(Uuid, Point)>,
    ) -> Result<oneshot::Receiver<StoreResult<()>>, QueueFull> {
        let n = u32::try_from(points.len()).map_err(|_| QueueFull)?;
        let permit = self
            .room
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| QueueFull)?;
        let (done, rx) = oneshot::channel();
        self.tx
            .try_send(Job {
                points,
                done,
                _permit: permit,
            })
            .map_err(|_| QueueFull)?;
        metrics::gauge!("trailcast_write_queue_points").set(self.queued_points() as f64);
        Ok(rx)
    }

    pub fn capacity(&self) -> usize {
        self.config.queue_points
    }

    pub fn queued_points(&self) -> usize {
        self.config.queue_points - self.room.available_permits()
    }
}

async fn write_loop(
    store: Arc<dyn PointStore>,
    mut rx: mpsc::Receiver<Job>,
    room: Arc<Semaphore>,
    config: BatcherConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let flushes = Arc::new(Semaphore::new(config.max_flushes.max(1)));
    loop {
        // A free flush slot first: while none is, jobs gather in the queue.
        let Ok(slot) = flushes.clone().acquire_owned().await else {
            break;
        };
        let first = tokio::select! {
            job = rx.recv() => job,
            _ = crate::stopped(&mut shutdown) => {
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { break };
        let mut jobs = vec![first];
        let mut n = jobs[0].points.len();
        while n < config.max_batch_points {
            match rx.try_recv() {
                Ok(job) => {
                    n += job.points.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let (store, room) = (store.clone(), room.clone());
        tokio::spawn(async move {
            flush_batch(store.as_ref(), jobs, n).await;
            let queued = config.queue_points - room.available_permits();
            metrics::gauge!("trailcast_write_queue_points").set(queued as f64);
            drop(slot);
        });
    }
    // Every flush still running holds a slot: having them all means done.
    let _all = flushes.acquire_many(config.max_flushes.max(1) as u32).await;
    tracing::info!("write-behind queue drained");
}

async fn flush_batch(store: &dyn PointStore, jobs: Vec<Job>, n: usize) {
    let started = Instant::now();
    let mut groups = Vec::with_capacity(jobs.len());
    let mut replies = Vec::with_capacity(jobs.len());
    for job in jobs {
        groups.push(job.points);
        replies.push((job.done, job._permit));
    }
    let results = store.append_groups(groups).await;
    metrics::histogram!("trailcast_batch_points").record(n as f64);
    metrics::histogram!("trailcast_flush_seconds").record(started.elapsed().as_secs_f64());
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        tracing::error!(error = %e, points = n, requests = results.len(), failed, "group commit failed");
    }
    for ((done, permit), result) in replies.into_iter().zip(results) {
        // The handler may have gone away (client disconnected); the points
        // are durable either way. The room is given back once answered.
        let _ = done.send(result);
        drop(permit);
    }
}
