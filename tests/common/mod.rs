//! Shared test harness: a real ScaleMesh server on 127.0.0.1:0 over a fresh SQLite file
//! or a fresh PostgreSQL database, and a client that speaks to it by Host.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use reqwest::Method;
use scalemesh::app::{self, AppState};
use scalemesh::config::Config;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const BASE: &str = "sm.test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A config for tests: everything under `dir`, Docker builds off unless a test turns
/// them on, local git allowed.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.server.base_domain = BASE.into();
    c.server.public_url = format!("http://{BASE}:8080");
    c.server.data_dir = dir.to_path_buf();
    c.database.url = format!("sqlite://{}", dir.join("scalemesh.db").display());
    c.storage.url = format!("file://{}", dir.join("artifacts").display());
    c.builder.concurrency = 0;
    c.builder.allow_local_git = true;
    c
}

/// A new, empty PostgreSQL database on the server named by `POSTGRES_TEST_URL`.
pub async fn fresh_postgres() -> String {
    use sea_orm::ConnectionTrait;
    let admin = std::env::var("POSTGRES_TEST_URL").expect(
        "POSTGRES_TEST_URL must name a PostgreSQL server for the Postgres tests \
         (`bash .ci/run` starts one and sets it)",
    );
    let name = format!("sm_test_{}", uuid::Uuid::new_v4().simple());
    let db = sea_orm::Database::connect(&admin)
        .await
        .expect("connect to Postgres");
    db.execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    db.close().await.ok();
    let (base, _) = admin.rsplit_once('/').expect("URL with a database");
    format!("{base}/{name}")
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub state: AppState,
    pub shutdown: CancellationToken,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(dir.path());
        if backend == Backend::Postgres {
            config.database.url = fresh_postgres().await;
        }
        tweak(&mut config);
        Self::start_config(config, dir).await
    }

    pub async fn start_config(config: Config, dir: tempfile::TempDir) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, config, dir).await
    }

    /// Serves `config` on a listener bound beforehand (when a URL must name its port).
    pub async fn start_on(
        listener: tokio::net::TcpListener,
        config: Config,
        dir: tempfile::TempDir,
    ) -> TestServer {
        let state = AppState::build(config).await.expect("state builds");
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let (state, shutdown) = (state.clone(), shutdown.clone());
            async move { app::serve(listener, state, shutdown).await.expect("serve") }
        });
        TestServer {
            addr,
            state,
            shutdown,
            dir,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            task,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// A request to the dashboard host.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.request_host(method, BASE, path)
    }

    /// A request with any Host header.
    pub fn request_host(&self, method: Method, host: &str, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("http://{}{}", self.addr, path))
            .header(reqwest::header::HOST, host)
    }

    /// Sends a JSON request to the API; returns status and body (Null when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.request(method, path);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    /// Signs up `email` (password `password123`) and returns its token.
    pub async fn signup(&self, email: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/auth/signup",
                None,
                Some(json!({"email": email, "password": "password123"})),
            )
            .await;
        assert_eq!(status, 201, "signup of {email}: {body}");
        body["token"].as_str().unwrap().to_string()
    }

    /// Creates a project and asserts it worked.
    pub async fn create_project(&self, token: &str, body: Value) -> Value {
        let (status, project) = self
            .call(Method::POST, "/api/v1/projects", Some(token), Some(body))
            .await;
        assert_eq!(status, 201, "create project: {project}");
        project
    }

    /// Queues a deployment of `project`'s production branch; returns its id.
    pub async fn queue_deployment(&self, token: &str, project: &str) -> String {
        let (status, d) = self
            .call(
                Method::POST,
                &format!("/api/v1/projects/{project}/deployments"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(status, 202, "queue a deployment of {project}: {d}");
        d["id"].as_str().unwrap().to_string()
    }

    /// Deploys `project` and waits until the deployment is ready; returns it.
    pub async fn deploy_ready(&self, token: &str, project: &str) -> Value {
        let id = self.queue_deployment(token, project).await;
        let done = wait_finished(self, token, &id, 60).await;
        assert_eq!(done["status"], "ready", "{done}");
        done
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Asserts the API error shape and returns the code.
pub fn error_code(body: &Value) -> String {
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an API error: {body}"));
    assert!(
        body["error"]["message"].is_string(),
        "error has a message: {body}"
    );
    code.to_string()
}

pub mod fixtures;
pub mod images;

/// Polls a deployment until `done` holds for it (or `secs` pass); returns it.
async fn wait_for(
    srv: &TestServer,
    token: &str,
    id: &str,
    secs: u64,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let (status, d) = srv
            .call(
                Method::GET,
                &format!("/api/v1/deployments/{id}"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(status, 200, "{d}");
        if done(&d) {
            return d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "deployment not {what} in {secs} s: {d}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Polls a deployment until it is finished (or `secs` pass); returns it.
pub async fn wait_finished(srv: &TestServer, token: &str, id: &str, secs: u64) -> Value {
    wait_for(srv, token, id, secs, "finished", |d| {
        matches!(d["status"].as_str(), Some("ready" | "failed" | "canceled"))
    })
    .await
}

/// Polls until a deployment has `status`.
pub async fn wait_status(
    srv: &TestServer,
    token: &str,
    id: &str,
    status: &str,
    secs: u64,
) -> Value {
    wait_for(srv, token, id, secs, status, |d| d["status"] == status).await
}

/// A server whose builds run for real on Docker in the busybox test image, without a
/// network; `tweak` adjusts the rest.
pub async fn building_server(tweak: impl FnOnce(&mut Config)) -> TestServer {
    images::ensure();
    TestServer::start_with(Backend::Sqlite, |c| {
        c.builder.concurrency = 2;
        c.builder.default_image = images::BUSYBOX.into();
        c.builder.network = scalemesh::config::BuildNetwork::None;
        tweak(c);
    })
    .await
}

/// The stored log of a deployment, as `stream: text` lines, read from the database.
pub async fn stored_log(srv: &TestServer, id: &str) -> Vec<(i64, String, String)> {
    use scalemesh::db::log_line;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
    log_line::Entity::find()
        .filter(log_line::Column::DeploymentId.eq(id))
        .order_by_asc(log_line::Column::Seq)
        .all(&srv.state.db)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.seq, l.stream, l.text))
        .collect()
}

/// IDs of containers carrying `label=value`.
pub fn containers_with_label(label: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={label}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
