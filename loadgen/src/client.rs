//! The HTTP client: one keep-alive pool shared by every request task, and
//! the mapping from a failed request to an `ErrorKind`.

use std::time::Duration;

use reqwest::{Client, StatusCode};

use crate::stats::ErrorKind;

/// A client whose pool keeps up to `connections` idle keep-alive
/// connections, so steady load reuses them instead of reconnecting.
pub fn pool(connections: usize, timeout: Duration) -> anyhow::Result<Client> {
    Ok(Client::builder()
        .pool_max_idle_per_host(connections)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .build()?)
}

pub fn classify(e: &reqwest::Error) -> ErrorKind {
    if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_connect() {
        ErrorKind::Connect
    } else {
        ErrorKind::Other
    }
}

pub fn status_kind(status: StatusCode) -> ErrorKind {
    if status == StatusCode::SERVICE_UNAVAILABLE {
        ErrorKind::Overloaded
    } else {
        ErrorKind::Status(status.as_u16())
    }
}

/// POSTs `body` (JSON) with the bearer `token`; the body is read to the end
/// so the connection goes back to the pool.
pub async fn post_json(
    client: &Client,
    url: &str,
    token: Option<&str>,
    body: String,
) -> Result<(StatusCode, String), ErrorKind> {
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    finish(req.send().await).await
}

pub async fn get(
    client: &Client,
    url: &str,
    token: &str,
) -> Result<(StatusCode, String), ErrorKind> {
    finish(client.get(url).bearer_auth(token).send().await).await
}

async fn finish(
    sent: reqwest::Result<reqwest::Response>,
) -> Result<(StatusCode, String), ErrorKind> {
    let resp = sent.map_err(|e| classify(&e))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| classify(&e))?;
    Ok((status, text))
}
