//! Wiring: connect the database and migrate it, open the store and Docker, build the
//! one `AppState`, and serve every role on a listener handed in, until shutdown.
//!
//! ```text
//!   TcpListener ──► app::Dispatch ──Host──► base_domain ──► api::router (+ UI)
//!                                      └──► other hosts ──► proxy::site
//! ```

use std::sync::Arc;

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use axum::response::IntoResponse;
use bytes::Bytes;
use object_store::ObjectStore;
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::api::error::ApiError;
use crate::auth::LoginLimiter;
use crate::body::ResponseBody;
use crate::builder::Builder;
use crate::builder::runner::Runner;
use crate::builder::runner::docker::DockerRunner;
use crate::config::{Config, LogBusKind, RunnerKind};
use crate::db::DeploymentStatus;
use crate::logs::memory::MemoryBus;
use crate::logs::redis::RedisBus;
use crate::logs::{DeploymentEvent, LogBus, SystemEvent};
use crate::metrics::Metrics;
use crate::proxy::cache::SiteCache;
use crate::proxy::host::{self, Target};
use crate::proxy::routes::RouteTable;

/// Everything a request handler or background task needs, built once. One `Arc`, so
/// handing it to a request costs one reference count, not one per part.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    pub config: Arc<Config>,
    pub db: DatabaseConnection,
    pub store: Arc<dyn ObjectStore>,
    /// Set when this process runs builds; `/readyz` pings its engine.
    pub runner: Option<Arc<dyn Runner>>,
    /// Live fan-out of log lines, statuses and system events.
    pub bus: Arc<dyn LogBus>,
    pub routes: Arc<RouteTable>,
    pub site_cache: Arc<SiteCache>,
    pub metrics: Arc<Metrics>,
    pub login_limiter: Arc<LoginLimiter>,
    /// Wakes this process's build workers when a deployment is queued here.
    pub queue_wakeup: Arc<Notify>,
    /// The scheme and port part of every URL handed out (`http://`, `:8080`).
    url_parts: Arc<(String, String)>,
    /// Names this process on the bus, so it can tell its own events from others'.
    pub instance: String,
}

impl AppState {
    /// Connects and migrates the database, opens the store and Docker, loads routes.
    pub async fn build(config: Config) -> anyhow::Result<AppState> {
        let db = crate::db::connect_and_migrate(&config.database.url)
            .await
            .with_context(|| {
                format!("database.url: cannot open {}", redact(&config.database.url))
            })?;
        let store = crate::storage::open(&config.storage.url)?;
        let runner: Option<Arc<dyn Runner>> = if config.builder.concurrency == 0 {
            None
        } else {
            match config.builder.runner {
                RunnerKind::Docker => {
                    let docker = connect_docker(&config.builder.docker_host)?;
                    let node = crate::builder::node_id(&config.server.data_dir)
                        .context("server.data_dir: cannot keep the node id")?;
                    Some(Arc::new(DockerRunner::new(docker, &node, &config.builder)))
                }
                other => anyhow::bail!(
                    "builder.runner: '{}' is not available in this build yet; use docker",
                    format!("{other:?}").to_lowercase()
                ),
            }
        };
        let bus: Arc<dyn LogBus> = match config.logs.bus {
            LogBusKind::Memory => Arc::new(MemoryBus::default()),
            LogBusKind::Redis => Arc::new(RedisBus::connect(&config.logs.redis_url)?),
        };
        let public = url::Url::parse(&config.server.public_url).context("server.public_url")?;
        let port = public.port().map(|p| format!(":{p}")).unwrap_or_default();
        let url_parts = Arc::new((format!("{}://", public.scheme()), port));
        let routes = Arc::new(RouteTable::default());
        routes
            .reload(&db)
            .await
            .context("loading the route table")?;
        let site_cache = Arc::new(SiteCache::new(
            config.proxy.cache_mb * 1024 * 1024,
            crate::storage::local_dir(&config.storage.url),
        )?);
        let metrics = Arc::new(Metrics::default());
        metrics.routes.set(routes.len() as i64);
        Ok(AppState(Arc::new(Shared {
            site_cache,
            config: Arc::new(config),
            db,
            store,
            runner,
            bus,
            routes,
            metrics,
            login_limiter: Arc::new(LoginLimiter::default()),
            queue_wakeup: Arc::new(Notify::new()),
            url_parts,
            instance: uuid::Uuid::new_v4().simple().to_string(),
        })))
    }

    /// The full URL of a hostname label: `http://<label>.<base_domain>:8080`.
    pub fn site_url(&self, label: &str) -> String {
        let (scheme, port) = self.url_parts.as_ref();
        format!("{scheme}{label}.{}{port}", self.config.server.base_domain)
    }

    /// Called after a write to the domains table: brings this process's route table up
    /// to date and tells the others (which reload theirs; this one has).
    pub async fn routes_changed(&self) {
        self.reload_routes().await;
        self.bus.publish_system(SystemEvent::RoutesChanged {
            by: self.instance.clone(),
        });
    }

    /// Reloads the route table and forgets cached files of deployments it dropped.
    pub async fn reload_routes(&self) {
        let started = std::time::Instant::now();
        match self.routes.reload(&self.db).await {
            Ok(gone) => {
                self.site_cache.forget(&gone);
                self.metrics.routes.set(self.routes.len() as i64);
                let took = started.elapsed();
                self.metrics.route_reload.observe(took.as_secs_f64());
                tracing::debug!(routes = self.routes.len(), ?took, "route table reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "route table reload failed; the periodic reload will retry");
            }
        }
    }

    /// Called after a deployment is queued, so an idle worker starts at once.
    pub fn deployment_queued(&self) {
        self.queue_wakeup.notify_waiters();
        self.bus.publish_system(SystemEvent::Queued);
    }

    /// Called after a deployment is canceled: its worker, wherever it is, stops it.
    pub fn deployment_canceled(&self, deployment_id: &str) {
        self.bus.publish(
            deployment_id,
            DeploymentEvent::Status {
                status: DeploymentStatus::Canceled,
            },
        );
        self.bus.publish_system(SystemEvent::Canceled {
            deployment_id: deployment_id.to_string(),
        });
    }
}

fn connect_docker(docker_host: &str) -> anyhow::Result<bollard::Docker> {
    let docker = if docker_host.is_empty() {
        bollard::Docker::connect_with_defaults()
    } else if docker_host.starts_with("unix://") || docker_host.starts_with('/') {
        bollard::Docker::connect_with_unix(docker_host, 120, bollard::API_DEFAULT_VERSION)
    } else {
        bollard::Docker::connect_with_http(docker_host, 120, bollard::API_DEFAULT_VERSION)
    };
    docker.context("builder.docker_host: cannot set up the Docker client")
}

/// A database URL with its password replaced, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// The one entry of the listener: the dashboard's router for `base_domain`, the proxy
/// (called directly, with no router in between) for every other host, 400 for a host
/// that cannot be trusted.
#[derive(Clone)]
pub struct Dispatch(Arc<DispatchParts>);

struct DispatchParts {
    state: AppState,
    dashboard: Router,
    /// Dashboard requests in their handler at once; the rest wait their turn holding
    /// only their request. A burst — every open log stream reconnecting after a
    /// restart — then queues for the database instead of each request holding its
    /// half-run queries in memory.
    handlers: Semaphore,
}

/// How many dashboard requests run their handler at once (twice the larger database
/// pool: enough to keep it busy).
const DASHBOARD_HANDLERS: usize = 32;

impl Dispatch {
    pub fn new(state: AppState) -> Dispatch {
        let dashboard = crate::api::router(state.clone());
        Dispatch(Arc::new(DispatchParts {
            state,
            dashboard,
            handlers: Semaphore::new(DASHBOARD_HANDLERS),
        }))
    }

    /// Answers one request; `peer` is the client's address when it is known.
    pub async fn handle<B>(
        &self,
        mut req: Request<B>,
        peer: Option<SocketAddr>,
    ) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let DispatchParts {
            state,
            dashboard,
            handlers,
        } = self.0.as_ref();
        match host::classify(req.headers(), req.uri(), &state.config.server.base_domain) {
            Ok(Target::Dashboard) => {}
            Ok(Target::Site(label)) => {
                state.metrics.site_requests.inc();
                return crate::proxy::site(state, &label, req.method(), req.uri(), req.headers())
                    .await;
            }
            Ok(Target::Elsewhere) => return crate::proxy::no_deployment(),
            Err(e) => {
                let error = ApiError::BadRequest {
                    code: "bad_host",
                    message: e.to_string(),
                };
                return error.into_response().map(ResponseBody::from);
            }
        }
        if let Some(peer) = peer {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        let _turn = handlers.acquire().await;
        let routed = Box::pin(dashboard.clone().oneshot(req.map(axum::body::Body::new))).await;
        match routed {
            Ok(res) => res.map(ResponseBody::from),
            Err(never) => match never {},
        }
    }
}

/// The listener's dispatch as a router, for `oneshot` tests.
pub fn router(state: AppState) -> Router {
    let dispatch = Dispatch::new(state);
    Router::new().fallback(move |req: axum::extract::Request| {
        let dispatch = dispatch.clone();
        async move { dispatch.handle(req, None).await.map(axum::body::Body::new) }
    })
}

/// Runs every role of `state` — HTTP on `listener`, build workers when this process
/// has a runner — until `shutdown` is cancelled; then lets requests in flight finish
/// and builds record how they ended.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let mut background = match state.runner.clone() {
        Some(runner) => {
            let node = crate::builder::node_id(&state.config.server.data_dir)?;
            Builder::new(state.clone(), runner, node)
                .start(shutdown.clone())
                .await
        }
        None => tokio::task::JoinSet::new(),
    };
    background.spawn(crate::proxy::watch_routes(state.clone(), shutdown.clone()));
    tracing::info!(%addr, base_domain = %state.config.server.base_domain, "listening");
    let limits = crate::server::Limits {
        header_timeout: std::time::Duration::from_secs(state.config.proxy.header_timeout_secs),
        send_timeout: std::time::Duration::from_secs(state.config.proxy.send_timeout_secs),
        max_connections: state.config.proxy.max_connections,
    };
    crate::server::serve(listener, Dispatch::new(state), limits, shutdown.clone()).await;
    shutdown.cancel();
    while background.join_next().await.is_some() {}
    Ok(())
}

/// `scalemesh serve`: every role in one process on `server.listen`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let addr = config.listen_addr()?;
    let state = AppState::build(config).await?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("server.listen: cannot listen on {addr}"))?;
    serve(listener, state, shutdown).await
}
