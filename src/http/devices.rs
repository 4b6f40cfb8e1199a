//! Phones' own tracker apps (OwnTracks, Overland, Traccar Client,
//! GPSLogger) as devices of an athlete.
//!
//! - `POST /v1/devices` `{name, type?}` → 201 `{id, name, type, key, urls}`:
//!   the key is shown once and stored only as its SHA-256; `urls` are what
//!   to paste into each app. `GET /v1/devices` lists them (no keys);
//!   `DELETE /v1/devices/{id}` revokes one at once.
//! - `/ingest/{app}/{key}` (GET or POST; `app` = `owntracks`, `overland`,
//!   `traccar`, `gpslogger`), or `/ingest/{app}` with the key as the HTTP
//!   Basic password (OwnTracks) or `Authorization: Bearer` (Overland). A
//!   wrong or revoked key is 401. Fixes go through the same validation,
//!   de-duplication and durability as `POST /v1/activities/{id}/points`
//!   into the device's automatic activity (`ingest::devices`). A fix that
//!   fails validation is dropped and counted, and the app still gets its
//!   success reply: it cannot fix it, and retrying it would block every
//!   later fix in its queue.
//!
//! Replies: OwnTracks a JSON array (the live friends' last positions as
//! `location` messages, so they show on the runner's own map); Overland
//! `{"result": "ok"}` once the points are durable (`{"error": …}` if the
//! body is not Overland's); Traccar and GPSLogger 200.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get};
use axum::{Json, Router};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::auth::{bearer_token, new_token};
use super::{ApiContext, ApiError, AuthUser, hash_token};
use crate::domain::time::{Millis, serialize_ms};
use crate::domain::{ActivityType, Visibility};
use crate::formats::trackers::{self, Upload};
use crate::live::DEFAULT_LAG_MS;
use crate::store::registry::REGISTRY_TTL_MS;
use crate::store::{Device, RecentItem};

pub const MAX_DEVICE_NAME: usize = 64;
/// Devices one athlete may have.
pub const MAX_DEVICES: usize = 20;

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/v1/devices", get(list).post(create))
        .route("/v1/devices/{id}", delete(revoke))
        .route("/ingest/{app}/{key}", any(ingest_with_key))
        .route("/ingest/{app}", any(ingest))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewDevice {
    name: String,
    #[serde(rename = "type", default = "default_type")]
    activity_type: ActivityType,
}

fn default_type() -> ActivityType {
    ActivityType::Run
}

#[derive(Serialize)]
struct DeviceView {
    id: Uuid,
    name: String,
    #[serde(rename = "type")]
    activity_type: ActivityType,
    #[serde(serialize_with = "serialize_ms")]
    created_at: Millis,
    current_activity: Option<Uuid>,
}

impl DeviceView {
    fn of(d: &Device) -> DeviceView {
        DeviceView {
            id: d.id,
            name: d.name.clone(),
            activity_type: d.activity_type,
            created_at: d.created_at,
            current_activity: d.current_activity,
        }
    }
}

/// This server's address as the phone should reach it.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("http");
    format!("{proto}://{host}")
}

#[utoipa::path(
    post,
    path = "/v1/devices",
    tag = "devices",
    request_body = NewDevice,
    responses((status = 201, description = "the device and its key (shown once)", body = serde_json::Value)),
)]
async fn create(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    headers: HeaderMap,
    Json(body): Json<NewDevice>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = body.name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_DEVICE_NAME
        || name.chars().any(super::users::unsafe_char)
    {
        return Err(ApiError::invalid(
            "invalid_name",
            format!("a device name is 1 to {MAX_DEVICE_NAME} printable characters"),
        ));
    }
    if ctx.store.devices.devices_of(me.id).await?.len() >= MAX_DEVICES {
        return Err(ApiError::invalid(
            "too_many_devices",
            format!("at most {MAX_DEVICES} devices; revoke one first"),
        ));
    }
    let key = new_token();
    let device = Device {
        id: Uuid::now_v7(),
        owner_id: me.id,
        name: name.to_string(),
        activity_type: body.activity_type,
        created_at: ctx.clock.now_ms(),
        key_hash: hash_token(&key),
        current_activity: None,
    };
    ctx.store.devices.put_device(&device).await?;
    let base = base_url(&headers);
    let view = DeviceView::of(&device);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": view.id,
            "name": view.name,
            "type": view.activity_type,
            "key": key,
            "urls": {
                "owntracks": format!("{base}/ingest/owntracks/{key}"),
                "overland": format!("{base}/ingest/overland/{key}"),
                "traccar": format!("{base}/ingest/traccar/{key}"),
                "gpslogger": format!(
                    "{base}/ingest/gpslogger/{key}?lat=%LAT&lon=%LON&time=%TIME&alt=%ALT&acc=%ACC&spd=%SPD&dir=%DIR&batt=%BATT"
                ),
            },
        })),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/devices",
    tag = "devices",
    responses((status = 200, description = "the devices", body = serde_json::Value)),
)]
async fn list(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
) -> Result<Json<Value>, ApiError> {
    let devices = ctx.store.devices.devices_of(me.id).await?;
    let items: Vec<DeviceView> = devices.iter().map(DeviceView::of).collect();
    Ok(Json(json!({ "items": items })))
}

#[utoipa::path(
    delete,
    path = "/v1/devices/{id}",
    tag = "devices",
    params(("id" = Uuid, Path, description = "the device")),
    responses((status = 200, description = "revoked", body = serde_json::Value)),
)]
async fn revoke(
    State(ctx): State<ApiContext>,
    AuthUser(me): AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let device = ctx
        .store
        .devices
        .devices_of(me.id)
        .await?
        .into_iter()
        .find(|d| d.id == id)
        .ok_or(ApiError::NotFound)?;
    ctx.store.devices.delete_device(&device).await?;
    Ok(Json(json!({"status": "revoked"})))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum App {
    Owntracks,
    Overland,
    Traccar,
    Gpslogger,
}

impl App {
    fn name(self) -> &'static str {
        match self {
            App::Owntracks => "owntracks",
            App::Overland => "overland",
            App::Traccar => "traccar",
            App::Gpslogger => "gpslogger",
        }
    }
}

async fn ingest_with_key(
    State(ctx): State<ApiContext>,
    Path((app, key)): Path<(App, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    upload(ctx, app, Some(key), query, body).await
}

async fn ingest(
    State(ctx): State<ApiContext>,
    Path(app): Path<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = basic_password(&headers).or_else(|| bearer_token(&headers).map(str::to_string));
    upload(ctx, app, key, query, body).await
}

/// The password of an HTTP Basic `Authorization` (OwnTracks puts the key
/// there; the user name is whatever the app was given).
fn basic_password(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_string())
}

async fn upload(
    ctx: ApiContext,
    app: App,
    key: Option<String>,
    query: Option<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = key.ok_or(ApiError::Unauthorized)?;
    let device = ctx
        .store
        .devices
        .device_by_key(hash_token(&key))
        .await?
        .ok_or(ApiError::Unauthorized)?;
    ctx.limiter
        .check(device.owner_id)
        .map_err(|retry_after_s| ApiError::RateLimited { retry_after_s })?;
    let query = query.unwrap_or_default();
    let parsed: Upload = match app {
        App::Owntracks => trackers::owntracks(&body),
        App::Overland => match trackers::overland(&body) {
            Ok(upload) => upload,
            Err(why) => {
                return Ok((StatusCode::BAD_REQUEST, Json(json!({"error": why}))).into_response());
            }
        },
        App::Traccar => trackers::traccar(&query, &body),
        App::Gpslogger => trackers::gpslogger(&query, &body),
    };
    let count = |outcome: &'static str, n: usize| {
        metrics::counter!("trailcast_tracker_app_fixes_total", "app" => app.name(), "outcome" => outcome)
            .increment(n as u64);
    };
    count("unusable", parsed.unusable);
    if !parsed.fixes.is_empty() {
        // As for posted points: once durable, applied even if the app hangs up.
        let (devices, fixes, d) = (ctx.devices.clone(), parsed.fixes, device.clone());
        let outcome = tokio::spawn(async move { devices.ingest(&d, fixes).await })
            .await
            .map_err(|e| ApiError::Internal(Box::new(e)))??;
        count("accepted", outcome.accepted);
        count("duplicate", outcome.duplicates);
        count("rejected", outcome.rejected.len());
    }
    Ok(match app {
        App::Owntracks => Json(friends_locations(&ctx, &device).await).into_response(),
        App::Overland => Json(json!({"result": "ok"})).into_response(),
        App::Traccar | App::Gpslogger => StatusCode::OK.into_response(),
    })
}

/// OwnTracks' reply: the athlete's friends live now, each as a `location`
/// message (two-letter `tid`), so they appear on the runner's own map.
/// Best effort: an error answers `[]`.
async fn friends_locations(ctx: &ApiContext, device: &Device) -> Vec<Value> {
    let now = ctx.clock.now_ms();
    let Ok(friends) = ctx.store.users.friends_of(device.owner_id).await else {
        return Vec::new();
    };
    let Ok(live) = ctx.registry.live_of(&friends, now - REGISTRY_TTL_MS).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (athlete, activity) in live {
        let Ok(snapshot) = ctx.tracker.snapshot(activity).await else {
            continue;
        };
        let a = &snapshot.activity;
        if !a.is_live()
            || a.visibility == Visibility::Private
            || a.blocked_viewers.contains(&device.owner_id)
        {
            continue;
        }
        let Ok(Some(entry)) = ctx
            .recent
            .latest_point(activity, now - DEFAULT_LAG_MS)
            .await
        else {
            continue;
        };
        let RecentItem::Point(p) = entry.item else {
            continue;
        };
        if let Ok(rules) = ctx.rules.get(ctx, activity).await
            && rules.filter.hides(p.lat, p.lng)
        {
            continue;
        }
        let name = match ctx.store.users.user(athlete).await {
            Ok(Some(u)) => u.name,
            _ => continue,
        };
        let tid: String = name
            .chars()
            .filter(|c| c.is_alphanumeric())
            .take(2)
            .collect::<String>()
            .to_uppercase();
        out.push(json!({
            "_type": "location",
            "tid": if tid.is_empty() { "TC".to_string() } else { tid },
            "lat": p.lat,
            "lon": p.lng,
            "tst": p.ts / 1000,
            "topic": format!("owntracks/trailcast/{athlete}"),
        }));
    }
    out
}
