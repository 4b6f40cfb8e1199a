//! `GET /v1/leaderboards/{type}?window=week|month|all&region=&limit=`: the
//! top athletes by distance on the current period's board, and the caller's
//! own rank. See `store::leaderboard` for how activities count.
//!
//! A board that is not marked built (its backend lost it, or the period is
//! new) is rebuilt from the stored activities before it is answered: one
//! scan per type, window and period at a time, on every node that asks.
//! The reply waits up to `REBUILD_WAIT` for it, then says 503
//! `leaderboard_rebuilding` with Retry-After. A leaderboard backend that
//! fails (Redis down) is a 503 `leaderboard_unavailable`, never a 500.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use dashmap::DashMap;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{ApiContext, ApiError, AuthUser, page_limit};
use crate::domain::{ActivityState, ActivityType, Visibility};
use crate::store::leaderboard::{Board, Leaderboard, MIN_SCORE_M, Window};
use crate::store::{Persistence, ScanCursor, StoreError, StoreResult};

pub const DEFAULT_LIMIT: usize = 10;
pub const MAX_LIMIT: usize = 100;
/// How long a read waits for a rebuild before answering 503.
pub const REBUILD_WAIT: Duration = Duration::from_secs(3);
/// Activities read per page of a rebuild's scan.
const SCAN_PAGE: usize = 500;

pub fn router() -> Router<ApiContext> {
    Router::new().route("/v1/leaderboards/{activity_type}", get(leaderboard))
}

/// Rebuilds in progress on this node, by base board name; the receiver
/// turns `true` when the board is built.
#[derive(Default)]
pub struct Rebuilds {
    running: Arc<DashMap<String, watch::Receiver<bool>>>,
}

impl Rebuilds {
    /// Waits until `board` is built (starting its rebuild if none runs),
    /// for at most `REBUILD_WAIT`.
    async fn ensure_built(
        &self,
        board: &Board,
        leaderboard: &Arc<dyn Leaderboard>,
        store: &Persistence,
    ) -> Result<(), ApiError> {
        if leaderboard.is_built(board).await.map_err(unavailable)? {
            return Ok(());
        }
        let base = board.base();
        let mut done = self
            .running
            .entry(base.name())
            .or_insert_with(|| {
                let (tx, rx) = watch::channel(false);
                let (board, leaderboard, store) = (base.clone(), leaderboard.clone(), store.clone());
                let running = self.running.clone();
                tokio::spawn(async move {
                    let result = rebuild(&board, leaderboard.as_ref(), &store).await;
                    running.remove(&board.name());
                    match result {
                        Ok(n) => {
                            tracing::info!(board = %board.name(), activities = n, "leaderboard rebuilt from stored activities");
                            let _ = tx.send(true);
                        }
                        Err(e) => {
                            tracing::warn!(board = %board.name(), error = %e, "leaderboard rebuild failed; the next read retries")
                        }
                    }
                });
                rx
            })
            .clone();
        // A failed rebuild drops its sender: 503, and the next read starts
        // another.
        match tokio::time::timeout(REBUILD_WAIT, done.wait_for(|built| *built)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ApiError::Unavailable {
                code: "leaderboard_rebuilding",
                message: "this leaderboard is being rebuilt from stored activities; retry shortly"
                    .into(),
                retry_after_s: 2,
            }),
        }
    }
}

/// Sets the contribution of every stored, completed activity that counts
/// on `base` or on any regional board of its type, window and period, then
/// marks it built. Safe beside live updates: `set` is idempotent per
/// activity. Returns how many activities counted.
pub async fn rebuild(
    base: &Board,
    leaderboard: &dyn Leaderboard,
    store: &Persistence,
) -> StoreResult<usize> {
    let (mut after, mut counted) = (None::<ScanCursor>, 0);
    loop {
        let (page, next) = store.activities.scan_activities(after, SCAN_PAGE).await?;
        for activity in page {
            if activity.state != ActivityState::Complete
                || !base.counts(activity.activity_type, activity.started_at)
            {
                continue;
            }
            let amount = match activity.visibility {
                Visibility::Private => 0.0,
                _ => activity.track.distance_m,
            };
            let region = store
                .users
                .user(activity.athlete_id)
                .await?
                .and_then(|u| u.region);
            let boards: Vec<Board> = Board::all_for(
                activity.activity_type,
                activity.started_at,
                region.as_deref(),
            )
            .into_iter()
            .filter(|b| b.window == base.window)
            .collect();
            leaderboard
                .set(&boards, activity.athlete_id, activity.id, amount)
                .await?;
            counted += 1;
        }
        match next {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
    }
    leaderboard.mark_built(base).await?;
    Ok(counted)
}

fn unavailable(e: StoreError) -> ApiError {
    tracing::warn!(error = %e, "leaderboard backend failed");
    metrics::counter!("trailcast_leaderboard_failures_total").increment(1);
    ApiError::Unavailable {
        code: "leaderboard_unavailable",
        message: "leaderboards are unavailable right now; retry shortly".into(),
        retry_after_s: 5,
    }
}

#[derive(Deserialize)]
struct BoardQuery {
    #[serde(default)]
    window: Window,
    region: Option<String>,
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/v1/leaderboards/{activity_type}",
    tag = "leaderboards",
    params(("activity_type" = String, Path), ("window" = Option<String>, Query, description = "week (default), month or all"), ("region" = Option<String>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, description = "the board and the caller", body = serde_json::Value)),
)]
async fn leaderboard(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Path(activity_type): Path<String>,
    Query(q): Query<BoardQuery>,
) -> Result<Json<Value>, ApiError> {
    let activity_type: ActivityType =
        serde_json::from_value(Value::String(activity_type.to_uppercase()))
            .map_err(|_| ApiError::NotFound)?;
    let window = q.window;
    let limit = page_limit(q.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let board = Board::new(
        activity_type,
        window,
        ctx.clock.now_ms(),
        q.region.as_deref(),
    );
    ctx.boards
        .ensure_built(&board, &ctx.leaderboard, &ctx.store)
        .await?;
    let top = ctx
        .leaderboard
        .top(&board, limit)
        .await
        .map_err(unavailable)?;
    let mut items = Vec::with_capacity(top.len());
    // Scores only fall to 0 at the end of the board, so ranks stay
    // consecutive when such a score is left out.
    let top = top.into_iter().filter(|(_, d)| *d > MIN_SCORE_M);
    for (i, (athlete, distance_m)) in top.enumerate() {
        let name = ctx.store.users.user(athlete).await?.map(|u| u.name);
        items.push(json!({
            "rank": i + 1,
            "athlete": {"id": athlete, "name": name},
            "distance_m": (distance_m * 10.0).round() / 10.0,
        }));
    }
    let mine = ctx
        .leaderboard
        .rank(&board, me.id)
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({
        "board": board.name(),
        "window": window,
        "period": board.period,
        "items": items,
        "me": mine.map(|(rank, d)| json!({"rank": rank, "distance_m": (d * 10.0).round() / 10.0})),
    })))
}
