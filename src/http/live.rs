//! Live watching over buffered polling and WebSocket, and the list of
//! friends live now. Both transports serve the same lagged stream from the
//! activity's `live::Feed` (see `src/live`).
//!
//! Who may watch: the athlete, viewers allowed by visibility (as for
//! `GET /v1/activities/{id}`) and holders of a share link. Browsers cannot
//! set headers on a WebSocket, so the bearer token may also come as
//! `?token=`, and a share token as `?share=`; query strings are never logged
//! (the trace layer records the path only).
//!
//! WebSocket watcher, per connection: this handler's loop releases entries
//! when due and queues JSON messages on a bounded channel (`WS_QUEUE`
//! messages of at most `MAX_POINTS_PER_MESSAGE` points); a sender task
//! writes them to the socket. A consumer too slow to keep that queue from
//! filling is disconnected, so a watcher that never reads holds at most the
//! queue (16 messages of up to 100 points, about 20 KB each), the
//! WebSocket's write buffer (`WS_MAX_WRITE_BUFFER`, 256 KiB) and the kernel
//! send buffer (`SOCKET_SEND_BUFFER`, 128 KiB as Linux counts it): under
//! 750 KiB, however much the athlete posts.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use uuid::Uuid;

use super::activities::{ActivityView, can_view};
use super::auth::{bearer_token, user_for_token};
use super::{ApiContext, ApiError, AuthUser, hash_token};
use crate::domain::time::{Millis, now_ms, to_rfc3339};
use crate::domain::{ActivityState, Visibility};
use crate::ingest::{ActivitySnapshot, IngestError};
use crate::live::{DEFAULT_LAG_MS, Feed, Lag, LiveEntry};
use crate::store::registry::REGISTRY_TTL_MS;
use crate::store::{RecentItem, Share, StoreError, StreamCursor, read_track};

pub const WS_QUEUE: usize = 16;
pub const MAX_POINTS_PER_MESSAGE: usize = 100;
pub const WS_MAX_WRITE_BUFFER: usize = 256 * 1024;
/// How long a full send queue may stay full before the watcher is dropped.
pub const SLOW_CONSUMER_TIMEOUT: Duration = Duration::from_secs(5);
pub const PING_EVERY: Duration = Duration::from_secs(15);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// Most stream entries one poll returns; `retry_after_ms` is 0 when more
/// are already released.
pub const MAX_POLL_ENTRIES: usize = 5_000;

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/v1/activities/{id}/live", get(poll))
        .route("/v1/activities/{id}/live/ws", get(websocket))
        .route("/v1/live", get(friends_live))
}

#[derive(Deserialize)]
struct LiveQuery {
    after: Option<String>,
    lag: Option<f64>,
    token: Option<String>,
    share: Option<String>,
}

/// Who is watching: a signed-in user, or the holder of a share link.
enum Viewer {
    User,
    Share(Share),
}

async fn authorize(
    ctx: &ApiContext,
    headers: &HeaderMap,
    q: &LiveQuery,
    id: Uuid,
) -> Result<(Viewer, ActivitySnapshot), ApiError> {
    if let Some(token) = bearer_token(headers).or(q.token.as_deref()) {
        let user = user_for_token(ctx, token).await?;
        let snapshot = ctx.tracker.snapshot(id).await?;
        if !can_view(ctx, &user, &snapshot.activity).await? {
            return Err(ApiError::NotFound);
        }
        return Ok((Viewer::User, snapshot));
    }
    let Some(token) = q.share.as_deref() else {
        return Err(ApiError::Unauthorized);
    };
    let share = ctx
        .store
        .activities
        .share_by_token(hash_token(token))
        .await?
        .filter(|s| s.activity_id == id && s.expires_at > now_ms())
        .ok_or(ApiError::NotFound)?;
    let snapshot = ctx.tracker.snapshot(id).await?;
    if snapshot.activity.state == ActivityState::Discarded {
        return Err(ApiError::NotFound);
    }
    Ok((Viewer::Share(share), snapshot))
}

fn parse_lag(lag: Option<f64>) -> Result<Lag, ApiError> {
    Lag::from_seconds(lag)
        .ok_or_else(|| ApiError::invalid("invalid_lag", "lag must be 5 to 10 seconds"))
}

fn point_json(entry: &LiveEntry) -> Option<Value> {
    let RecentItem::Point(p) = &entry.item else {
        return None;
    };
    let mut v = serde_json::to_value(p).ok()?;
    if entry.late {
        v["late"] = Value::Bool(true);
    }
    Some(v)
}

fn event_json(entry: &LiveEntry) -> Option<Value> {
    match &entry.item {
        RecentItem::State { state, at } => Some(json!({"state": state, "at": to_rfc3339(*at)})),
        _ => None,
    }
}

/// `degraded` while the recent store cannot be read: the stream may lag
/// behind what the athlete sent (it is persisted and will be back-filled).
fn live_status(feed: &Feed) -> &'static str {
    if feed.is_degraded() { "degraded" } else { "ok" }
}

fn is_final(state: ActivityState) -> bool {
    matches!(state, ActivityState::Complete | ActivityState::Discarded)
}

/// Everything released so far: the feed's window, and for activities whose
/// early part has left the window (long or expired streams), the older
/// points from persistence.
async fn catch_up(
    ctx: &ApiContext,
    feed: &Feed,
    snapshot: &ActivitySnapshot,
    now: Millis,
    lag: Lag,
) -> Result<(Vec<Value>, Vec<LiveEntry>), StoreError> {
    let released = feed.released(None, now, lag, usize::MAX);
    let mut points = Vec::new();
    if !feed.holds_start() {
        let oldest = feed.oldest_point_ts().unwrap_or(Millis::MAX);
        let history = read_track(ctx.store.points.as_ref(), snapshot.activity.id).await?;
        points.extend(
            history
                .iter()
                .take_while(|p| p.ts < oldest)
                .filter_map(|p| serde_json::to_value(p).ok()),
        );
    }
    points.extend(released.iter().filter_map(point_json));
    Ok((points, released))
}

/// State and stats as released to this watcher. With no state change
/// released yet, the state before the next one to be released (never one
/// the watcher has not reached), or as stored when the stream holds none
/// (an activity watched long after it ended).
fn status(feed: &Feed, snapshot: &ActivitySnapshot, now: Millis, lag: Lag) -> (Value, Value) {
    let (state, stats) = feed.released_status(now, lag);
    let events = &snapshot.activity.events;
    let (state, at) = state.unwrap_or_else(|| {
        let upto = match feed.next_state(now, lag) {
            // The event the stream is about to release, and the ones
            // before it: the watcher is at the one before (or at the
            // very first, the start).
            Some(next) => events
                .iter()
                .position(|e| (e.state, e.at) == next)
                .map_or(events.len(), |i| i.max(1)),
            None => events.len(),
        };
        events[..upto].last().map_or(
            (snapshot.activity.state, snapshot.activity.started_at),
            |e| (e.state, e.at),
        )
    });
    let state = json!({"state": state, "at": to_rfc3339(at)});
    let stats = match stats {
        Some(s) => serde_json::to_value(s).unwrap_or(Value::Null),
        None => serde_json::to_value(snapshot.stats(now)).unwrap_or(Value::Null),
    };
    (state, stats)
}

async fn poll(
    State(ctx): State<ApiContext>,
    Path(id): Path<Uuid>,
    Query(q): Query<LiveQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let lag = parse_lag(q.lag)?;
    let after = match q.after.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            c.parse::<StreamCursor>()
                .map_err(|_| ApiError::BadRequest("bad cursor".into()))?,
        ),
    };
    let (_, snapshot) = authorize(&ctx, &headers, &q, id).await?;
    let (feed, _) = ctx
        .live
        .feed(id, snapshot.activity.started_at, false)
        .await?;
    let now = now_ms();
    // A cursor older than what the window still holds (a poller that was
    // away longer than the window) gets a fresh catch-up, flagged `reset`:
    // points are identified by `ts`, so the client merges them.
    let reset = after.is_some_and(|c| feed.lost_since(c));
    let (points, entries) = match after {
        Some(_) if !reset => {
            let entries = feed.released(after, now, lag, MAX_POLL_ENTRIES);
            (entries.iter().filter_map(point_json).collect(), entries)
        }
        _ => catch_up(&ctx, &feed, &snapshot, now, lag).await?,
    };
    let cursor = entries
        .last()
        .map(|e| e.cursor)
        .or(after)
        .unwrap_or(StreamCursor { ms: 0, seq: 0 });
    let (state, stats) = status(&feed, &snapshot, now, lag);
    let finished = state["state"]
        .as_str()
        .is_some_and(|s| s == "COMPLETE" || s == "DISCARDED");
    // The next point cannot be released before the first waiting entry is
    // due, or (if none waits) before `lag` from now.
    let retry_after_ms = if entries.len() == MAX_POLL_ENTRIES {
        0
    } else {
        match feed.next_release(Some(cursor), lag) {
            Some(due) => (due - now).clamp(50, lag.ms()),
            None if finished => 30_000,
            None => lag.ms(),
        }
    };
    Ok(Json(json!({
        "points": points,
        "events": entries.iter().filter_map(event_json).collect::<Vec<_>>(),
        "state": state["state"],
        "state_at": state["at"],
        "stats": stats,
        "cursor": cursor.to_string(),
        "reset": reset,
        "server_time": to_rfc3339(now),
        "lag_s": lag.seconds(),
        "retry_after_ms": retry_after_ms,
        "live_status": live_status(&feed),
    })))
}

async fn websocket(
    ws: WebSocketUpgrade,
    State(ctx): State<ApiContext>,
    Path(id): Path<Uuid>,
    Query(q): Query<LiveQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let lag = parse_lag(q.lag)?;
    let (viewer, snapshot) = authorize(&ctx, &headers, &q, id).await?;
    Ok(ws
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(WS_MAX_WRITE_BUFFER)
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| async move {
            if let Err(e) = watch_socket(ctx, socket, snapshot, lag, viewer).await {
                tracing::warn!(error = %e, activity = %id, "live watcher ended with an error");
            }
        }))
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// Why a watcher stopped being able to take messages.
struct TooSlow;

/// Queues a message, waiting up to `SLOW_CONSUMER_TIMEOUT` for room; a
/// consumer that cannot take it by then is too slow.
async fn enqueue(tx: &mpsc::Sender<Message>, value: Value) -> Result<(), TooSlow> {
    tx.send_timeout(
        Message::Text(value.to_string().into()),
        SLOW_CONSUMER_TIMEOUT,
    )
    .await
    .map_err(|_| TooSlow)
}

/// Turns released entries into `points`, `state` and `stats` messages, in
/// stream order; returns whether a final state was among them.
async fn send_released(tx: &mpsc::Sender<Message>, entries: &[LiveEntry]) -> Result<bool, TooSlow> {
    let mut finished = false;
    let mut points = Vec::new();
    let mut stats = None;
    for entry in entries {
        match &entry.item {
            RecentItem::Point(_) => points.extend(point_json(entry)),
            RecentItem::State { state, at } => {
                send_points(tx, &mut points, entry.cursor).await?;
                finished |= is_final(*state);
                let msg = json!({"type": "state", "state": state, "at": to_rfc3339(*at),
                                 "cursor": entry.cursor.to_string()});
                enqueue(tx, msg).await?;
            }
            RecentItem::Stats(s) => stats = Some((s, entry.cursor)),
        }
    }
    if let Some(last) = entries.last() {
        send_points(tx, &mut points, last.cursor).await?;
    }
    // Only the newest statistics matter; older ones in the same release are
    // superseded.
    if let Some((s, cursor)) = stats {
        enqueue(
            tx,
            json!({"type": "stats", "stats": s, "cursor": cursor.to_string()}),
        )
        .await?;
    }
    Ok(finished)
}

async fn send_points(
    tx: &mpsc::Sender<Message>,
    points: &mut Vec<Value>,
    cursor: StreamCursor,
) -> Result<(), TooSlow> {
    for chunk in points.chunks(MAX_POINTS_PER_MESSAGE) {
        let msg = json!({"type": "points", "points": chunk, "cursor": cursor.to_string()});
        enqueue(tx, msg).await?;
    }
    points.clear();
    Ok(())
}

async fn watch_socket(
    ctx: ApiContext,
    socket: WebSocket,
    snapshot: ActivitySnapshot,
    lag: Lag,
    viewer: Viewer,
) -> Result<(), StoreError> {
    let id = snapshot.activity.id;
    let (feed, guard) = ctx
        .live
        .feed(id, snapshot.activity.started_at, true)
        .await?;
    let _guard = guard;
    let (mut sink, mut incoming) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(WS_QUEUE);
    let sender = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            let closing = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let now = now_ms();
    let (points, released) = catch_up(&ctx, &feed, &snapshot, now, lag).await?;
    let (state, stats) = status(&feed, &snapshot, now, lag);
    let mut cursor = released.last().map(|e| e.cursor);
    let catch_up_msg = json!({
        "type": "catch_up",
        "points": points,
        "state": state["state"],
        "state_at": state["at"],
        "stats": stats,
        "cursor": cursor.map_or_else(|| "0-0".to_string(), |c| c.to_string()),
        "server_time": to_rfc3339(now),
        "lag_s": lag.seconds(),
        "live_status": live_status(&feed),
    });
    // The catch-up may be larger than a normal message; it is the first one,
    // so the queue has room.
    let _ = tx.try_send(Message::Text(catch_up_msg.to_string().into()));
    let mut finished = state["state"]
        .as_str()
        .is_some_and(|s| s == "COMPLETE" || s == "DISCARDED");

    let mut arrived = feed.subscribe();
    let mut revoked = ctx.live.revoked.subscribe();
    let mut stop = ctx.shutdown.clone();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    let mut last_heard = Instant::now();
    let far = Instant::now() + Duration::from_secs(86_400);
    let share_expiry = match &viewer {
        Viewer::Share(share) => {
            Instant::now() + Duration::from_millis((share.expires_at - now_ms()).max(0) as u64)
        }
        Viewer::User => far,
    };
    let share_id = match &viewer {
        Viewer::Share(share) => Some(share.id),
        Viewer::User => None,
    };

    let outcome = loop {
        if finished {
            break Some(close(1000, "activity finished"));
        }
        let now = now_ms();
        let due = feed.released(cursor, now, lag, MAX_POLL_ENTRIES);
        if let Some(last) = due.last() {
            cursor = Some(last.cursor);
            match send_released(&tx, &due).await {
                Ok(done) => finished = done,
                Err(TooSlow) => break None,
            }
            continue;
        }
        let wake = feed.next_release(cursor, lag).map_or(far, |due| {
            Instant::now() + Duration::from_millis((due - now).max(0) as u64)
        });
        tokio::select! {
            _ = sleep_until(wake) => {}
            changed = arrived.changed() => {
                if changed.is_err() {
                    break Some(close(1011, "feed stopped"));
                }
            }
            message = incoming.next() => match message {
                Some(Ok(Message::Close(_))) | None => break Some(close(1000, "bye")),
                // Reading also flushes pending writes: a peer whose write
                // buffer overflowed fails here, as a consumer too slow.
                Some(Err(_)) => break None,
                Some(Ok(_)) => last_heard = Instant::now(),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > IDLE_TIMEOUT {
                    break Some(close(4001, "idle timeout"));
                }
                if tx.try_send(Message::Ping(Vec::new().into())).is_err() {
                    break None;
                }
                // A share revoked through another node is noticed here, at
                // most one ping period late (this node's revocations arrive
                // at once through `revoked`).
                if let Some(id) = share_id
                    && matches!(ctx.store.activities.share(id).await, Ok(None))
                {
                    break Some(close(4003, "share revoked"));
                }
            }
            revoked_id = revoked.recv() => {
                if revoked_id.is_ok_and(|r| Some(r) == share_id) {
                    break Some(close(4003, "share revoked"));
                }
            }
            _ = sleep_until(share_expiry) => break Some(close(4003, "share expired")),
            _ = crate::stopped(&mut stop) => break Some(close(1001, "server shutting down")),
        }
    };
    match outcome {
        Some(message) => {
            let _ = tx.try_send(message);
            drop(tx);
            let _ = tokio::time::timeout(Duration::from_secs(2), sender).await;
        }
        None => {
            metrics::counter!("trailcast_live_slow_watchers_dropped_total").increment(1);
            tracing::info!(activity = %id, "dropping a watcher that does not keep up");
            sender.abort();
        }
    }
    Ok(())
}

/// Friends' activities live now, with their last released position. The
/// live registry names them (shared by every node); if it cannot answer
/// (Redis down), each friend's newest activities are read from persistence.
async fn friends_live(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
) -> Result<Json<Value>, ApiError> {
    let now = now_ms();
    let friends = ctx.store.users.friends_of(me.id).await?;
    let candidates: Vec<Uuid> = match ctx.registry.live_of(&friends, now - REGISTRY_TTL_MS).await {
        Ok(live) => live.into_iter().map(|(_, activity)| activity).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "live registry unavailable; reading histories");
            let mut ids = Vec::new();
            for friend in &friends {
                // Live activities are the newest ones; a handful covers any athlete.
                let newest = ctx.store.activities.history(*friend, None, 5).await?;
                ids.extend(newest.iter().filter(|a| a.is_live()).map(|a| a.id));
            }
            ids
        }
    };
    let mut items = Vec::new();
    for id in candidates {
        let snapshot = match ctx.tracker.snapshot(id).await {
            Ok(snapshot) => snapshot,
            Err(IngestError::NotFound) => continue,
            Err(e) => return Err(e.into()),
        };
        let activity = &snapshot.activity;
        if !activity.is_live() || activity.visibility == Visibility::Private {
            continue;
        }
        // Without the recent store, list the activity without a position.
        let position = ctx
            .recent
            .latest_point(id, now - DEFAULT_LAG_MS)
            .await
            .unwrap_or_default()
            .and_then(|e| match e.item {
                RecentItem::Point(p) => serde_json::to_value(p).ok(),
                _ => None,
            });
        items.push((
            activity.started_at,
            json!({
                "activity": ActivityView::of(&snapshot, now),
                "position": position,
            }),
        ));
    }
    // Most recently started first, as the history is.
    items.sort_by_key(|(started, _)| std::cmp::Reverse(*started));
    let items: Vec<Value> = items.into_iter().map(|(_, item)| item).collect();
    Ok(Json(json!({"items": items})))
}
