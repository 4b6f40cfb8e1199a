//! The web app (`web/app/`): watch page, history, runner PWA, sign-in.
//!
//! The files are embedded with rust-embed, so a release binary serves them
//! without anything on disk; a debug build reads them from `web/app/` on
//! each request (rust-embed's debug behaviour), so editing a page needs no
//! rebuild. Only GET and HEAD of an existing file are answered; every other
//! request that no API route matched gets the API's JSON 404, as before.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use rust_embed::RustEmbed;

use super::auth::hex;
use super::{ApiContext, ApiError};

#[derive(RustEmbed)]
#[folder = "web/app/"]
struct Assets;

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/", any(|req: Request| serve_asset("index.html", req)))
        .route(
            "/{*path}",
            any(|Path(path): Path<String>, req: Request| async move {
                serve_asset(&path, req).await
            }),
        )
}

async fn serve_asset(path: &str, req: Request) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return ApiError::NotFound.into_response();
    }
    let Some(file) = Assets::get(path) else {
        return ApiError::NotFound.into_response();
    };
    let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()[..16]));
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Response::new(Body::from(file.data.into_owned()))
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    // Pages and the service worker must be revalidated so a new release is
    // picked up; the ETag makes that a cheap 304.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    response
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}
