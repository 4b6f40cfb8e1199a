//! `spawn_app()`: the real server, started in-process on port 0 with its own
//! data directory, plus a small client for the API.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use trailcast::config::Config;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

pub struct TestUser {
    pub id: String,
    pub token: String,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn test_config(data_dir: PathBuf) -> Config {
    let mut config = Config::defaults();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = data_dir;
    config.redis_url = None;
    config.scylla_nodes = Vec::new();
    // Tests drive one token hard; the limit has its own test.
    config.rate_limit = 1e6;
    config.rate_burst = 1e6;
    config
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let tmp = tempfile::tempdir().unwrap();
    let mut app = spawn_on(tmp.path().to_path_buf(), adjust).await;
    app._tmp = Some(tmp);
    app
}

/// Starts a server on an existing data directory (to test restarts).
pub async fn spawn_on(data_dir: PathBuf, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config(data_dir.clone());
    adjust(&mut config);
    let listener = TcpListener::bind(config.listen).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(trailcast::run(config, listener, async move {
        let _ = stopped.await;
    }));
    TestApp {
        base,
        client: reqwest::Client::new(),
        data_dir,
        _tmp: None,
        stop: Some(stop),
        server: Some(server),
    }
}

impl TestApp {
    /// Graceful shutdown; returns what `run` returned.
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.server.take() {
            Some(server) => server.await.unwrap(),
            None => Ok(()),
        }
    }

    /// Takes the temporary data dir out so that it outlives this server.
    pub fn keep_data(&mut self) -> Option<tempfile::TempDir> {
        self._tmp.take()
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request reaches the server");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.base);
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn put(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(token), None).await
    }

    pub async fn user(&self, name: &str) -> TestUser {
        let (status, body) = self
            .call(Method::POST, "/v1/users", None, Some(json!({"name": name})))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        TestUser {
            id: body["id"].as_str().unwrap().to_string(),
            token: body["token"].as_str().unwrap().to_string(),
        }
    }

    pub async fn befriend(&self, a: &TestUser, b: &TestUser) {
        assert_eq!(
            self.put(&format!("/v1/friends/{}", b.id), &a.token).await.0,
            StatusCode::OK
        );
        let (status, body) = self.put(&format!("/v1/friends/{}", a.id), &b.token).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (StatusCode::OK, Some("friends"))
        );
    }

    /// Starts an activity and returns its id.
    pub async fn start(&self, user: &TestUser, body: Value) -> String {
        let (status, activity) = self.post("/v1/activities", &user.token, body).await;
        assert_eq!(status, StatusCode::CREATED, "{activity}");
        activity["id"].as_str().unwrap().to_string()
    }

    pub async fn post_points(
        &self,
        user: &TestUser,
        id: &str,
        points: Value,
    ) -> (StatusCode, Value) {
        self.post(&format!("/v1/activities/{id}/points"), &user.token, points)
            .await
    }
}

/// A straight run due north from (48.0, 11.0) at `speed` m/s, one fix every
/// `every_ms`, starting at `t0`.
pub fn track(t0: i64, n: usize, every_ms: i64, speed: f64) -> Vec<Value> {
    let deg_per_m = 1.0 / 111_195.0;
    (0..n)
        .map(|i| {
            let t = i as i64 * every_ms;
            json!({"ts": t0 + t, "lat": 48.0 + (t as f64 / 1000.0) * speed * deg_per_m, "lng": 11.0})
        })
        .collect()
}

/// The value of the first sample of `name` in Prometheus text (the recorder
/// is shared by every server in the test process, so tests compare deltas
/// or lower bounds).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
