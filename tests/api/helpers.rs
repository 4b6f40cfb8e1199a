//! `spawn_app()`: the real server, started in-process on port 0 with its own
//! data directory, plus a small client for the API.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use trailcast::clock::Clock;
use trailcast::config::Config;

pub struct TestApp {
    pub base: String,
    /// The server's clock: under `#[tokio::test(start_paused = true)]` it
    /// moves only with tokio's time, so lags and timeouts pass in no real
    /// time; use `app.now_ms()`, not `now_ms()`, for timestamps there.
    pub clock: Clock,
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
    config.redis_cluster_nodes = Vec::new();
    config.scylla.nodes = Vec::new();
    // Tests drive one token hard; the limit has its own test.
    config.rate_limit = 1e6;
    config.rate_burst = 1e6;
    config.signup_rate = 1e9;
    config.signup_burst = 1e6;
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
    config.clock = Clock::tokio();
    adjust(&mut config);
    let listener = TcpListener::bind(config.listen).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let config_clock = config.clock;
    let server = tokio::spawn(trailcast::run(config, listener, async move {
        let _ = stopped.await;
    }));
    TestApp {
        base,
        clock: config_clock,
        client: reqwest::Client::new(),
        data_dir,
        _tmp: None,
        stop: Some(stop),
        server: Some(server),
    }
}

/// Starts the real binary (`trailcast serve --listen 127.0.0.1:0` plus
/// `args`) and reads its address from stdout. Killed when dropped.
pub async fn start_binary(args: &[&str]) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_trailcast"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        // kassandra, the CQL test server, lists no peers, so the scylla
        // driver's metadata refresh logs an error every few seconds.
        .env("RUST_LOG", "warn,scylla=off")
        .env_remove("TRAILCAST_REDIS_URL")
        .env_remove("TRAILCAST_SCYLLA_NODES")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the trailcast binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = lines.next_line().await.unwrap().expect("a listening line");
    let base = line.rsplit(' ').next().unwrap().to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{line}");
    (child, base)
}

impl TestApp {
    /// A client for a server running elsewhere (another process).
    pub fn at(base: String) -> TestApp {
        TestApp {
            base,
            clock: Clock::System,
            client: reqwest::Client::new(),
            data_dir: PathBuf::new(),
            _tmp: None,
            stop: None,
            server: None,
        }
    }

    /// Milliseconds since the epoch on the server's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

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

    pub async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(token), None).await
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

/// The CQL server the Scylla backend's tests use: the real cluster named by
/// `SCYLLA_NODES` when set, else kassandra, an in-memory CQL v4 server
/// started once in this process (no ScyllaDB can be installed on CI
/// machines). Each test makes its own keyspace, so they share it.
pub struct CqlServer {
    pub nodes: Vec<String>,
    /// False against kassandra: the only statements it cannot run are the
    /// multi-column slice of history pages, and it ignores
    /// `CLUSTERING ORDER BY ... DESC` and page sizes (see `storage`).
    pub real: bool,
}

pub fn cql_server() -> CqlServer {
    if let Ok(nodes) = std::env::var("SCYLLA_NODES") {
        let nodes: Vec<String> = nodes.split(',').map(str::to_owned).collect();
        return CqlServer { nodes, real: true };
    }
    static ADDR: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();
    let addr = *ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("kassandra".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let tester = kassandra_tester::KassandraTester::new(
                    kassandra_tester::kassandra::session::KassandraSession::new(),
                );
                let served = runtime.block_on(tester.in_scope(|addr| {
                    let tx = tx.clone();
                    async move {
                        tx.send(addr).unwrap();
                        std::future::pending::<Result<(), ()>>().await
                    }
                }));
                drop(served);
            })
            .unwrap();
        rx.recv().expect("kassandra starts")
    });
    CqlServer {
        nodes: vec![addr.to_string()],
        real: false,
    }
}

impl CqlServer {
    pub fn name(&self) -> String {
        match self.real {
            true => format!("ScyllaDB at {}", self.nodes.join(",")),
            false => format!("kassandra (in-memory CQL test server) at {}", self.nodes[0]),
        }
    }

    /// A fresh keyspace with the whole schema, for one test.
    pub async fn keyspace(&self) -> (String, trailcast::config::ScyllaArgs) {
        let keyspace = format!("tc_test_{}", uuid::Uuid::now_v7().simple());
        let mut args = Config::defaults().scylla;
        args.nodes = self.nodes.clone();
        args.keyspace = keyspace.clone();
        args.replication = std::env::var("SCYLLA_REPLICATION")
            .unwrap_or_else(|_| "{'class': 'SimpleStrategy', 'replication_factor': 1}".to_owned());
        let session = trailcast::store::scylla::connect(&args, self.real)
            .await
            .unwrap();
        trailcast::store::scylla::migrate(&session, &keyspace, &args.replication)
            .await
            .unwrap();
        (keyspace, args)
    }
}
