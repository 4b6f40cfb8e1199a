//! Live watching over buffered polling and WebSocket, and the list of
//! friends live now. Both transports serve one `live::Playback` of the
//! activity's feed; this module checks access (`access::Viewer`) and turns
//! what the playback returns into JSON.
//!
//! WebSocket watcher, per connection, as three parts joined by `select!`
//! (whichever ends first ends the connection, with its close code) and a
//! sender task that alone writes to the socket:
//! - playback: the catch-up (in chunks of `CATCH_UP_CHUNK` points, so a
//!   24-hour activity never needs one huge frame), then each release when
//!   due, queued as JSON messages on a bounded channel (`WS_QUEUE` messages
//!   of at most `MAX_POINTS_PER_MESSAGE` points);
//! - liveness: reads the client (pongs, close), pings every `PING_EVERY`,
//!   closes after `IDLE_TIMEOUT` of silence;
//! - access: share-link expiry and revocation, and server shutdown.
//!
//! A consumer too slow to keep the queue from filling is disconnected, so a
//! watcher that never reads holds at most the queue, the WebSocket's write
//! buffer (`WS_MAX_WRITE_BUFFER`, 256 KiB) and the kernel send buffer
//! (`SOCKET_SEND_BUFFER`, 128 KiB as Linux counts it), however much the
//! athlete posts.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use uuid::Uuid;

use super::access::Viewer;
use super::auth::WS_PROTOCOL;
use super::privacy::{RULES_TTL_MS, Rules};
use super::views::ActivityView;
use super::{ApiContext, ApiError, AuthUser};
use crate::domain::course::RouteProgress;
use crate::domain::time::{Millis, serialize_ms};
use crate::domain::{ActivityState, ActivityType, Point, PrivacyFilter, Stats, Visibility};
use crate::ingest::{ActivitySnapshot, IngestError};
use crate::live::{
    CatchUp, DEFAULT_LAG_MS, Lag, LivePoint, LiveStatus, Playback, Release, Released, StateAt,
};
use crate::store::audience::{LEASE_MS, POLL_LEASE_MS, RENEW_EVERY_MS, Watcher, Who};
use crate::store::registry::REGISTRY_TTL_MS;
use crate::store::{RecentItem, StoreError, StreamCursor};

pub const WS_QUEUE: usize = 16;
pub const MAX_POINTS_PER_MESSAGE: usize = 100;
/// Points per catch-up message (about 75 KB of JSON at most).
pub const CATCH_UP_CHUNK: usize = 500;
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

/// `?after=&lag=`; the credentials (`token`, `share`) are the `Viewer`'s.
#[derive(Deserialize)]
struct LiveQuery {
    after: Option<String>,
    lag: Option<f64>,
}

fn parse_lag(lag: Option<f64>) -> Result<Lag, ApiError> {
    Lag::from_seconds(lag)
        .ok_or_else(|| ApiError::invalid("invalid_lag", "lag must be 5 to 10 seconds"))
}

fn parse_cursor(after: Option<&str>) -> Result<Option<StreamCursor>, ApiError> {
    match after {
        None | Some("") => Ok(None),
        Some(c) => c
            .parse()
            .map(Some)
            .map_err(|_| ApiError::BadRequest("bad cursor".into())),
    }
}

/// The reply to a poll.
#[derive(Serialize)]
struct LivePoll {
    points: Vec<LivePoint>,
    events: Vec<StateAt>,
    state: ActivityState,
    #[serde(serialize_with = "serialize_ms")]
    state_at: Millis,
    stats: Stats,
    cursor: String,
    /// The cursor had fallen out of the window: this is a fresh catch-up
    /// (points are identified by `ts`, so the client merges them).
    reset: bool,
    #[serde(serialize_with = "serialize_ms")]
    server_time: Millis,
    lag_s: f64,
    retry_after_ms: Millis,
    live_status: LiveStatus,
    /// Progress along the course's planned route, for an activity on one.
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<RouteProgress>,
    /// With a catch-up: the activity's type, start and athlete.
    #[serde(skip_serializing_if = "Option::is_none")]
    about: Option<About>,
}

/// Who and what a watcher is looking at: sent with every catch-up, so a
/// share-link viewer (who cannot read the activity) sees it too.
#[derive(Serialize)]
struct About {
    #[serde(rename = "type")]
    activity_type: ActivityType,
    #[serde(serialize_with = "serialize_ms")]
    started_at: Millis,
    athlete: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    course_name: Option<String>,
}

async fn about(ctx: &ApiContext, playback: &Playback) -> Option<About> {
    let activity = &playback.snapshot().activity;
    let athlete = match ctx.store.users.user(activity.athlete_id).await {
        Ok(Some(user)) => user.name,
        _ => return None,
    };
    Some(About {
        activity_type: activity.activity_type,
        started_at: activity.started_at,
        athlete,
        course_name: activity.plan.as_ref().map(|p| p.name.clone()),
    })
}

/// Progress along the planned route at the last position this watcher was
/// shown (`shown`), or else the latest released one the filter lets through.
async fn route_now(
    ctx: &ApiContext,
    playback: &Playback,
    stats: &Stats,
    shown: Option<&Point>,
    filter: Option<&PrivacyFilter>,
    now: Millis,
) -> Option<RouteProgress> {
    let snapshot = playback.snapshot();
    snapshot.activity.plan.as_ref()?;
    let at = match shown {
        Some(p) => Some(*p),
        None => ctx
            .recent
            .latest_point(snapshot.activity.id, now - playback.lag().ms())
            .await
            .ok()
            .flatten()
            .and_then(|e| match e.item {
                RecentItem::Point(p) => Some(p),
                _ => None,
            })
            .filter(|p| filter.is_none_or(|f| !f.hides(p.lat, p.lng))),
    };
    ctx.courses
        .progress(
            ctx,
            &snapshot.activity,
            &snapshot.track,
            stats,
            at.as_ref(),
            now,
        )
        .await
}

async fn playback(
    ctx: &ApiContext,
    snapshot: ActivitySnapshot,
    lag: Lag,
    after: Option<StreamCursor>,
    watching: bool,
) -> Result<Playback, StoreError> {
    let id = snapshot.activity.id;
    let (feed, guard) = ctx
        .live
        .feed(id, snapshot.activity.started_at, watching)
        .await?;
    Ok(Playback::new(feed, snapshot, lag, after, guard))
}

/// The activity's rules, if they let `viewer` in (`NotFound` otherwise).
async fn admitted(ctx: &ApiContext, viewer: &Viewer, id: Uuid) -> Result<Arc<Rules>, ApiError> {
    let rules = ctx.rules.get(ctx, id).await?;
    match rules.excludes(viewer) {
        true => Err(ApiError::NotFound),
        false => Ok(rules),
    }
}

/// Who `viewer` is in the activity's audience; `None` for the athlete, who
/// does not count as watching their own activity.
fn watcher_of(viewer: &Viewer, rules: &Rules, connection: Uuid) -> Option<Watcher> {
    let who = match viewer {
        _ if rules.is_athlete(viewer) => return None,
        Viewer::User(user) => Who::User(user.id),
        Viewer::Share(share) => Who::Share(share.id),
    };
    Some(Watcher { who, connection })
}

/// Takes or renews a watcher's lease; the audience list is best effort, so
/// a failure is logged, never the watcher's problem.
async fn attend(ctx: &ApiContext, id: Uuid, watcher: Watcher, until: Millis) {
    if let Err(e) = ctx.audience.renew(id, watcher, until).await {
        tracing::warn!(error = %e, activity = %id, "could not record a viewer");
    }
}

#[utoipa::path(
    get,
    path = "/v1/activities/{id}/live",
    tag = "live",
    params(("id" = Uuid, Path, description = "the activity"), ("after" = Option<String>, Query, description = "stream cursor"), ("lag" = Option<f64>, Query, description = "5 to 10 s")),
    responses((status = 200, description = "what was released after the cursor", body = serde_json::Value)),
)]
async fn poll(
    State(ctx): State<ApiContext>,
    Path(id): Path<Uuid>,
    Query(q): Query<LiveQuery>,
    viewer: Viewer,
) -> Result<Json<LivePoll>, ApiError> {
    let lag = parse_lag(q.lag)?;
    let after = parse_cursor(q.after.as_deref())?;
    let snapshot = viewer.watch(&ctx, id).await?;
    let rules = admitted(&ctx, &viewer, id).await?;
    let mut playback = playback(&ctx, snapshot, lag, after, false).await?;
    let now = ctx.clock.now_ms();
    if let Some(watcher) = watcher_of(&viewer, &rules, Uuid::nil()) {
        attend(&ctx, id, watcher, now + POLL_LEASE_MS).await;
    }
    let reset = playback.lost();
    let caught_up = after.is_none() || reset;
    let (mut points, events, cut_short) = if caught_up {
        let CatchUp { points, events, .. } =
            playback.catch_up(ctx.store.points.as_ref(), now).await?;
        (points, events, false)
    } else {
        let release = playback.release(now, MAX_POLL_ENTRIES);
        let cut_short = release.entries == MAX_POLL_ENTRIES;
        let points = release.points().cloned().collect();
        (points, release.events().collect(), cut_short)
    };
    if let Some(filter) = rules.filter_for(&viewer) {
        points.retain(|p| !filter.hides(p.point.lat, p.point.lng));
    }
    let status = playback.status(now);
    let finished = status.state.is_final();
    let shown = points.last().map(|p| p.point);
    let route = route_now(
        &ctx,
        &playback,
        &status.stats,
        shown.as_ref(),
        rules.filter_for(&viewer),
        now,
    )
    .await;
    let about = match caught_up {
        true => about(&ctx, &playback).await,
        false => None,
    };
    Ok(Json(LivePoll {
        about,
        route,
        points,
        events,
        state: status.state.state,
        state_at: status.state.at,
        stats: status.stats,
        cursor: playback
            .cursor()
            .unwrap_or(StreamCursor { ms: 0, seq: 0 })
            .to_string(),
        reset,
        server_time: now,
        lag_s: lag.seconds(),
        retry_after_ms: playback.retry_after_ms(now, cut_short, finished),
        live_status: playback.live_status(),
    }))
}

async fn websocket(
    ws: WebSocketUpgrade,
    State(ctx): State<ApiContext>,
    Path(id): Path<Uuid>,
    Query(q): Query<LiveQuery>,
    viewer: Viewer,
) -> Result<Response, ApiError> {
    let lag = parse_lag(q.lag)?;
    let snapshot = viewer.watch(&ctx, id).await?;
    admitted(&ctx, &viewer, id).await?;
    Ok(ws
        .protocols([WS_PROTOCOL])
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

/// A WebSocket message to a watcher.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WsMessage<'a> {
    /// Everything released so far; when `more`, further history follows in
    /// `points` messages flagged `catch_up` before anything new.
    CatchUp {
        points: &'a [LivePoint],
        more: bool,
        state: ActivityState,
        #[serde(serialize_with = "serialize_ms")]
        state_at: Millis,
        stats: &'a Stats,
        cursor: String,
        #[serde(serialize_with = "serialize_ms")]
        server_time: Millis,
        lag_s: f64,
        live_status: LiveStatus,
        #[serde(skip_serializing_if = "Option::is_none")]
        route: Option<RouteProgress>,
        #[serde(skip_serializing_if = "Option::is_none")]
        about: Option<About>,
    },
    Points {
        points: &'a [LivePoint],
        cursor: String,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        catch_up: bool,
    },
    State {
        state: ActivityState,
        #[serde(serialize_with = "serialize_ms")]
        at: Millis,
        cursor: String,
    },
    Stats {
        stats: &'a Stats,
        cursor: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        route: Option<RouteProgress>,
    },
}

/// How a watcher's connection ends.
enum End {
    /// Closed with this code and reason.
    Close(u16, &'static str),
    /// The watcher does not keep up (or its connection broke): dropped.
    TooSlow,
    Failed(StoreError),
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// Queues a message, waiting up to `SLOW_CONSUMER_TIMEOUT` for room; a
/// consumer that cannot take it by then is too slow.
async fn enqueue(tx: &mpsc::Sender<Message>, message: &WsMessage<'_>) -> Result<(), End> {
    let text = serde_json::to_string(message)
        .map_err(|e| End::Failed(StoreError::corrupt("live message", e)))?;
    tx.send_timeout(Message::Text(text.into()), SLOW_CONSUMER_TIMEOUT)
        .await
        .map_err(|_| End::TooSlow)
}

async fn watch_socket(
    ctx: ApiContext,
    socket: WebSocket,
    snapshot: ActivitySnapshot,
    lag: Lag,
    viewer: Viewer,
) -> Result<(), StoreError> {
    let id = snapshot.activity.id;
    let mut playback = playback(&ctx, snapshot, lag, None, true).await?;
    let (mut sink, incoming) = socket.split();
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

    let rules = ctx.rules.get(&ctx, id).await.ok();
    let watcher = rules
        .as_deref()
        .and_then(|rules| watcher_of(&viewer, rules, Uuid::now_v7()));
    if let Some(watcher) = watcher {
        attend(&ctx, id, watcher, ctx.clock.now_ms() + LEASE_MS).await;
    }
    let end = tokio::select! {
        end = play(&ctx, &mut playback, &tx, &viewer) => end,
        end = liveness(incoming, &tx) => end,
        end = access(&ctx, id, &viewer, watcher) => end,
    };
    if let Some(watcher) = watcher
        && let Err(e) = ctx.audience.leave(id, watcher).await
    {
        tracing::warn!(error = %e, activity = %id, "could not remove a viewer");
    }
    match end {
        End::Close(code, reason) => {
            let _ = tx.try_send(close(code, reason));
            drop(tx);
            let _ = tokio::time::timeout(Duration::from_secs(2), sender).await;
            Ok(())
        }
        End::TooSlow => {
            metrics::counter!("trailcast_live_slow_watchers_dropped_total").increment(1);
            tracing::info!(activity = %id, "dropping a watcher that does not keep up");
            sender.abort();
            Ok(())
        }
        End::Failed(e) => {
            let _ = tx.try_send(close(1011, "server error"));
            drop(tx);
            let _ = tokio::time::timeout(Duration::from_secs(2), sender).await;
            Err(e)
        }
    }
}

/// The playback part: catch-up, then each release when it falls due.
async fn play(
    ctx: &ApiContext,
    playback: &mut Playback,
    tx: &mpsc::Sender<Message>,
    viewer: &Viewer,
) -> End {
    let id = playback.activity();
    let mut arrived = playback.arrivals();
    let now = ctx.clock.now_ms();
    let mut catch_up = match playback.catch_up(ctx.store.points.as_ref(), now).await {
        Ok(catch_up) => catch_up,
        Err(e) => return End::Failed(e),
    };
    let rules = match ctx.rules.get(ctx, id).await {
        Ok(rules) => rules,
        Err(_) => return End::Close(4003, "access revoked"),
    };
    if let Some(filter) = rules.filter_for(viewer) {
        catch_up
            .points
            .retain(|p| !filter.hides(p.point.lat, p.point.lng));
    }
    let mut shown = catch_up.points.last().map(|p| p.point);
    let route = route_now(
        ctx,
        playback,
        &catch_up.status.stats,
        shown.as_ref(),
        rules.filter_for(viewer),
        now,
    )
    .await;
    let about = about(ctx, playback).await;
    if let Err(end) = send_catch_up(tx, &catch_up, playback, now, route, about).await {
        return end;
    }
    let mut finished = catch_up.status.state.is_final();
    loop {
        if finished {
            return End::Close(1000, "activity finished");
        }
        let now = ctx.clock.now_ms();
        let release = playback.release(now, MAX_POLL_ENTRIES);
        if release.entries > 0 {
            let rules = match ctx.rules.get(ctx, id).await {
                Ok(rules) => rules,
                Err(_) => return End::Close(4003, "access revoked"),
            };
            let filter = rules.filter_for(viewer);
            if let Some(p) = release
                .points()
                .filter(|p| filter.is_none_or(|f| !f.hides(p.point.lat, p.point.lng)))
                .last()
            {
                shown = Some(p.point);
            }
            let route = match &release.stats {
                Some((stats, _)) => {
                    route_now(ctx, playback, stats, shown.as_ref(), filter, now).await
                }
                None => None,
            };
            if let Err(end) = send_release(tx, &release, filter, route).await {
                return end;
            }
            finished = release.finished;
            continue;
        }
        let wake = playback.wake_at().map_or_else(
            || Instant::now() + Duration::from_secs(86_400),
            |due| ctx.clock.instant_at(due),
        );
        tokio::select! {
            _ = sleep_until(wake) => {}
            changed = arrived.changed() => {
                if changed.is_err() {
                    return End::Close(1011, "feed stopped");
                }
            }
        }
    }
}

async fn send_catch_up(
    tx: &mpsc::Sender<Message>,
    catch_up: &CatchUp,
    playback: &Playback,
    now: Millis,
    route: Option<RouteProgress>,
    about: Option<About>,
) -> Result<(), End> {
    let cursor = catch_up.cursor.to_string();
    let mut chunks = catch_up.points.chunks(CATCH_UP_CHUNK);
    let first = chunks.next().unwrap_or_default();
    let more = catch_up.points.len() > first.len();
    enqueue(
        tx,
        &WsMessage::CatchUp {
            points: first,
            more,
            state: catch_up.status.state.state,
            state_at: catch_up.status.state.at,
            stats: &catch_up.status.stats,
            cursor: cursor.clone(),
            server_time: now,
            lag_s: playback.lag().seconds(),
            live_status: playback.live_status(),
            route,
            about,
        },
    )
    .await?;
    for chunk in chunks {
        let message = WsMessage::Points {
            points: chunk,
            cursor: cursor.clone(),
            catch_up: true,
        };
        enqueue(tx, &message).await?;
    }
    Ok(())
}

/// Turns a release into `points`, `state` and `stats` messages, in stream
/// order.
async fn send_release(
    tx: &mpsc::Sender<Message>,
    release: &Release,
    filter: Option<&PrivacyFilter>,
    route: Option<RouteProgress>,
) -> Result<(), End> {
    for item in &release.items {
        match item {
            Released::Points { points, cursor } => {
                let shown: Vec<LivePoint>;
                let points = match filter {
                    Some(filter) => {
                        shown = points
                            .iter()
                            .filter(|p| !filter.hides(p.point.lat, p.point.lng))
                            .cloned()
                            .collect();
                        &shown
                    }
                    None => points,
                };
                for chunk in points.chunks(MAX_POINTS_PER_MESSAGE) {
                    let message = WsMessage::Points {
                        points: chunk,
                        cursor: cursor.to_string(),
                        catch_up: false,
                    };
                    enqueue(tx, &message).await?;
                }
            }
            Released::State { change, cursor } => {
                let message = WsMessage::State {
                    state: change.state,
                    at: change.at,
                    cursor: cursor.to_string(),
                };
                enqueue(tx, &message).await?;
            }
        }
    }
    if let Some((stats, cursor)) = &release.stats {
        let message = WsMessage::Stats {
            stats,
            cursor: cursor.to_string(),
            route,
        };
        enqueue(tx, &message).await?;
    }
    Ok(())
}

/// The liveness part: reads the client, pings it, closes on silence.
async fn liveness(mut incoming: SplitStream<WebSocket>, tx: &mpsc::Sender<Message>) -> End {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            message = incoming.next() => match message {
                Some(Ok(Message::Close(_))) | None => return End::Close(1000, "bye"),
                // A frame over the size limit: say so (1009), as RFC 6455
                // asks, rather than dropping the connection.
                Some(Err(e)) if too_big(&e) => return End::Close(1009, "message too big"),
                // Reading also flushes pending writes: a peer whose write
                // buffer overflowed fails here, as a consumer too slow.
                Some(Err(_)) => return End::TooSlow,
                Some(Ok(_)) => last_heard = Instant::now(),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > IDLE_TIMEOUT {
                    return End::Close(4001, "idle timeout");
                }
                if tx.try_send(Message::Ping(Vec::new().into())).is_err() {
                    return End::TooSlow;
                }
            }
        }
    }
}

/// Whether a read failed because the peer sent a frame or message over
/// the limit (tungstenite's capacity error).
fn too_big(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Space limit exceeded") || text.contains("too long") || text.contains("too big")
}

/// The access part: the viewer's lease in the audience, the activity's
/// audience settings (checked again when this node changes them and at
/// least every `RULES_TTL_MS`), a share link's expiry and revocation, and
/// shutdown.
async fn access(ctx: &ApiContext, id: Uuid, viewer: &Viewer, watcher: Option<Watcher>) -> End {
    let mut stop = ctx.shutdown.clone();
    let mut revoked = ctx.live.revoked.subscribe();
    let mut changed = ctx.live.access_changed.subscribe();
    let share = viewer.share();
    let expiry = share.map(|s| ctx.clock.instant_at(s.expires_at));
    let mut recheck = tokio::time::interval(Duration::from_millis(RULES_TTL_MS as u64));
    let mut renew = tokio::time::interval(Duration::from_millis(RENEW_EVERY_MS as u64));
    renew.reset();
    let mut share_check = tokio::time::interval(PING_EVERY);
    share_check.reset();
    loop {
        tokio::select! {
            _ = renew.tick(), if watcher.is_some() => {
                if let Some(watcher) = watcher {
                    attend(ctx, id, watcher, ctx.clock.now_ms() + LEASE_MS).await;
                }
            }
            _ = recheck.tick() => {
                if let Some(end) = still_admitted(ctx, id, viewer).await {
                    return end;
                }
            }
            changed_id = changed.recv() => match changed_id {
                Ok(changed_id) if changed_id != id => {}
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    if let Some(end) = still_admitted(ctx, id, viewer).await {
                        return end;
                    }
                }
                Err(RecvError::Closed) => return End::Close(1001, "server shutting down"),
            },
            _ = sleep_until(expiry.unwrap_or_else(far_future)), if expiry.is_some() => {
                return End::Close(4003, "share expired");
            }
            revoked_id = revoked.recv(), if share.is_some() => match revoked_id {
                Ok(revoked_id) if Some(revoked_id) == share.map(|s| s.id) => {
                    return End::Close(4003, "share revoked");
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return End::Close(1001, "server shutting down"),
            },
            // A share revoked through another node is noticed here, at most
            // one period late (this node's revocations arrive at once).
            _ = share_check.tick(), if share.is_some() => {
                if let Some(share) = share
                    && matches!(ctx.store.activities.share(share.id).await, Ok(None))
                {
                    return End::Close(4003, "share revoked");
                }
            }
            _ = crate::stopped(&mut stop) => return End::Close(1001, "server shutting down"),
        }
    }
}

/// `None` while the activity's rules still let `viewer` in; the close
/// otherwise. A store that cannot answer keeps the watcher (the next check
/// may).
async fn still_admitted(ctx: &ApiContext, id: Uuid, viewer: &Viewer) -> Option<End> {
    match ctx.rules.get(ctx, id).await {
        Ok(rules) if rules.excludes(viewer) => Some(End::Close(4003, "access revoked")),
        Err(ApiError::NotFound) => Some(End::Close(4003, "access revoked")),
        Ok(_) | Err(_) => None,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

#[derive(Serialize)]
struct LiveItem {
    activity: ActivityView,
    position: Option<Point>,
}

#[derive(Serialize)]
struct LiveList {
    items: Vec<LiveItem>,
}

/// Friends' activities live now, with their last released position. The
/// live registry names them (shared by every node); if it cannot answer
/// (Redis down), each friend's newest activities are read from persistence.
#[utoipa::path(
    get,
    path = "/v1/live",
    tag = "live",
    responses((status = 200, description = "friends live now", body = serde_json::Value)),
)]
async fn friends_live(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
) -> Result<Json<LiveList>, ApiError> {
    let now = ctx.clock.now_ms();
    let friends = ctx.store.users.friends_of(me.id).await?;
    let candidates: Vec<Uuid> = match ctx.registry.live_of(&friends, now - REGISTRY_TTL_MS).await {
        Ok(live) => live.into_iter().map(|(_, activity)| activity).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "live registry unavailable; reading histories");
            // Live activities are the newest ones; a handful covers any
            // athlete. Read 16 friends at a time.
            use futures_util::{StreamExt, TryStreamExt};
            let newest: Vec<Vec<crate::domain::Activity>> =
                futures_util::stream::iter(friends.iter().copied())
                    .map(|friend| ctx.store.activities.history(friend, None, 5))
                    .buffered(16)
                    .try_collect()
                    .await?;
            newest
                .into_iter()
                .flatten()
                .filter(|a| a.is_live())
                .map(|a| a.id)
                .collect()
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
                RecentItem::Point(p) => Some(p),
                _ => None,
            });
        let rules = match ctx.rules.get(&ctx, id).await {
            Ok(rules) if !rules.blocked.contains(&me.id) => rules,
            Ok(_) | Err(ApiError::NotFound) => continue,
            Err(e) => return Err(e),
        };
        let position = position.filter(|p| !rules.filter.hides(p.lat, p.lng));
        items.push(LiveItem {
            activity: ActivityView::of(&snapshot, now),
            position,
        });
    }
    // Most recently started first, as the history is.
    items.sort_by_key(|item| std::cmp::Reverse(item.activity.started_at));
    Ok(Json(LiveList { items }))
}
