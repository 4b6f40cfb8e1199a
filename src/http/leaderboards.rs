//! `GET /v1/leaderboards/{type}?window=week|month|all&region=&limit=`: the
//! top athletes by distance on the current period's board, and the caller's
//! own rank. See `store::leaderboard` for how activities count.

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiContext, ApiError, AuthUser, page_limit};
use crate::domain::ActivityType;
use crate::store::leaderboard::{Board, Window};

pub const DEFAULT_LIMIT: usize = 10;
pub const MAX_LIMIT: usize = 100;

pub fn router() -> Router<ApiContext> {
    Router::new().route("/v1/leaderboards/{activity_type}", get(leaderboard))
}

#[derive(Deserialize)]
struct BoardQuery {
    #[serde(default)]
    window: Window,
    region: Option<String>,
    limit: Option<usize>,
}

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
    let top = ctx.leaderboard.top(&board, limit).await?;
    let mut items = Vec::with_capacity(top.len());
    // An athlete whose contributions were all taken back (activities made
    // private) stays a member at 0 m: not shown. Scores only fall to 0 at
    // the end of the board, so ranks stay consecutive.
    let top = top.into_iter().filter(|(_, d)| *d >= 0.05);
    for (i, (athlete, distance_m)) in top.enumerate() {
        let name = ctx.store.users.user(athlete).await?.map(|u| u.name);
        items.push(json!({
            "rank": i + 1,
            "athlete": {"id": athlete, "name": name},
            "distance_m": (distance_m * 10.0).round() / 10.0,
        }));
    }
    let mine = ctx.leaderboard.rank(&board, me.id).await?;
    Ok(Json(json!({
        "board": board.name(),
        "window": window,
        "period": board.period,
        "items": items,
        "me": mine.map(|(rank, d)| json!({"rank": rank, "distance_m": (d * 10.0).round() / 10.0})),
    })))
}
