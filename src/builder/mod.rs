//! The builder: turns queued deployments into stored, served ones.
//!
//! ```text
//!  worker ×concurrency:  claim (queue.rs) ──► clone (source.rs) ──► plan (plan.rs)
//!       ▲                     │ lease renewed every 2 s; lost lease or cancel ─► kill
//!       │                     ▼
//!   wake-up / 2 s poll    Runner::run per step (runner/) ──► upload (upload.rs)
//!                             │ lines ─► LogWriter (logs/)        │
//!                             ▼                                   ▼
//!                        ready: status + hostnames in one transaction ─► route table
//! ```
//!
//! # Layout
//! - `queue.rs`: claiming with leases, conditional transitions, queue position.
//! - `source.rs`: git2 fetch of one ref. `workspace.rs`: the build's directory.
//! - `plan.rs`: what to run. `upload.rs`: output and manifest to the object store.
//! - `runner/`: the `Runner` trait and the Docker runner.
//!
//! Untrusted code runs only inside the runner's container. The host side reads the
//! checkout only through `Workspace::resolve` (no symlink is followed) and uploads after
//! the container is gone. A build's end is written only after its log is flushed.

pub mod plan;
pub mod queue;
pub mod runner;
pub mod source;
pub mod upload;
pub mod workspace;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::db::{DeploymentStatus, deployment, domains, env_var, project};
use crate::logs::writer::LogLimits;
use crate::logs::{DeploymentEvent, LogWriter, SystemEvent};
use crate::names;
use runner::{Runner, RunnerError, Step, StepOutcome};
use upload::{UploadError, UploadLimits};
use workspace::Workspace;

const RENEW_EVERY: Duration = Duration::from_secs(2);
const POLL_EVERY: Duration = Duration::from_secs(2);
const REAP_EVERY: Duration = Duration::from_secs(10);

/// Why a build did not reach `ready`.
enum Stop {
    Failed(String),
    Canceled,
    /// This process is shutting down.
    Interrupted,
}

impl From<RunnerError> for Stop {
    fn from(e: RunnerError) -> Self {
        Stop::Failed(e.to_string())
    }
}

/// The build workers of one process.
pub struct Builder {
    state: AppState,
    runner: Arc<dyn Runner>,
    /// Stable across restarts of this node (kept in `data_dir`).
    node_id: String,
    /// This run of this node: `<node_id>/<uuid>`; workers are `<run_id>/<n>`.
    run_id: String,
    running: Mutex<HashMap<String, CancellationToken>>,
}

impl Builder {
    pub fn new(state: AppState, runner: Arc<dyn Runner>, node_id: String) -> Arc<Builder> {
        let run_id = format!("{node_id}/{}", uuid::Uuid::new_v4().simple());
        Arc::new(Builder {
            state,
            runner,
            node_id,
            run_id,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Starts the workers, the reaper and the cancel listener; they stop with `shutdown`.
    /// Deployments an earlier run of this node left `building` are failed first.
    pub async fn start(self: Arc<Self>, shutdown: CancellationToken) -> JoinSet<()> {
        self.reap(true).await;
        match self.runner.remove_node(&self.node_id).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(containers = n, "removed build containers of an earlier run"),
            Err(e) => tracing::warn!(error = %e, "could not look for leftover build containers"),
        }
        let mut tasks = JoinSet::new();
        for n in 0..self.state.config.builder.concurrency {
            let (me, shutdown) = (self.clone(), shutdown.clone());
            tasks.spawn(async move { me.work(n, shutdown).await });
        }
        let (me, stop) = (self.clone(), shutdown.clone());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(REAP_EVERY) => me.reap(false).await,
                }
            }
        });
        let (me, stop) = (self.clone(), shutdown);
        tasks.spawn(async move { me.listen(stop).await });
        tasks
    }

    /// Relays system events: cancels reach the build, queued events wake workers.
    async fn listen(&self, shutdown: CancellationToken) {
        loop {
            let mut events = match self.state.bus.subscribe_system().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "no system events; relying on polling");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    }
                }
            };
            loop {
                let event = tokio::select! {
                    () = shutdown.cancelled() => return,
                    e = events.next() => e,
                };
                match event {
                    Some(SystemEvent::Canceled { deployment_id }) => {
                        if let Some(token) = self.running.lock().expect("lock").get(&deployment_id)
                        {
                            token.cancel();
                        }
                    }
                    Some(SystemEvent::Queued) => self.state.queue_wakeup.notify_waiters(),
                    Some(SystemEvent::RoutesChanged { .. }) => {}
                    None => break,
                }
            }
        }
    }

    async fn work(&self, n: usize, shutdown: CancellationToken) {
        let worker = format!("{}/{n}", self.run_id);
        while !shutdown.is_cancelled() {
            // Register interest before claiming, so a wake-up between the two is not lost.
            let wakeup = self.state.queue_wakeup.notified();
            match queue::claim(&self.state.db, &worker).await {
                Ok(Some(d)) => self.build(d, &worker, &shutdown).await,
                Ok(None) => {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = wakeup => {},
                        () = tokio::time::sleep(POLL_EVERY) => {},
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claiming a build failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(POLL_EVERY) => {},
                    }
                }
            }
        }
    }

    /// Fails deployments whose worker is gone and removes their containers. At start,
    /// `restart` also takes those of earlier runs of this node, whose lease may not have
    /// lapsed yet.
    async fn reap(&self, restart: bool) {
        let prefix = format!("{}/", self.node_id);
        let found = match queue::abandoned(&self.state.db, restart.then_some(prefix.as_str())).await
        {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "looking for abandoned builds failed");
                return;
            }
        };
        for d in found {
            if d.claimed_by
                .as_deref()
                .is_some_and(|by| by.starts_with(&self.run_id))
            {
                continue;
            }
            let message = if restart
                && d.claimed_by
                    .as_deref()
                    .is_some_and(|b| b.starts_with(&prefix))
            {
                "interrupted: the server restarted"
            } else {
                "interrupted: its build worker stopped renewing the lease"
            };
            if let Err(e) = self.runner.remove_deployment(&d.id).await {
                tracing::warn!(deployment = %d.short_id, error = %e, "containers not removed");
            }
            if let Ok(mut log) = self.open_log(&d.id).await {
                log.system(format!("Build {message}"));
                log.finish().await;
            }
            match queue::fail_abandoned(&self.state.db, &d, message).await {
                Ok(true) => {
                    tracing::warn!(deployment = %d.short_id, "{message}");
                    self.state.bus.publish(
                        &d.id,
                        DeploymentEvent::Status {
                            status: DeploymentStatus::Failed,
                        },
                    );
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(deployment = %d.short_id, error = %e, "could not fail abandoned build")
                }
            }
        }
    }

    async fn open_log(&self, deployment_id: &str) -> Result<LogWriter, sea_orm::DbErr> {
        let c = &self.state.config.logs;
        LogWriter::open(
            self.state.db.clone(),
            self.state.bus.clone(),
            deployment_id,
            LogLimits {
                max_lines: c.max_lines,
                max_bytes: c.max_mb * 1024 * 1024,
            },
        )
        .await
    }

    /// Runs one claimed deployment to its end.
    async fn build(&self, d: deployment::Model, worker: &str, shutdown: &CancellationToken) {
        let started = std::time::Instant::now();
        let mut log = match self.open_log(&d.id).await {
            Ok(log) => log,
            Err(e) => {
                tracing::error!(deployment = %d.short_id, error = %e, "cannot open the build log");
                return;
            }
        };
        self.state.bus.publish(
            &d.id,
            DeploymentEvent::Status {
                status: DeploymentStatus::Building,
            },
        );
        let cancel = CancellationToken::new();
        self.running
            .lock()
            .expect("lock")
            .insert(d.id.clone(), cancel.clone());
        let done = CancellationToken::new();
        let renewer = tokio::spawn(renew_lease(
            self.state.db.clone(),
            d.id.clone(),
            worker.to_string(),
            cancel.clone(),
            done.clone(),
        ));
        let stop_on_shutdown = {
            let (cancel, shutdown) = (cancel.clone(), shutdown.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                cancel.cancel();
            })
        };
        tracing::info!(deployment = %d.short_id, "build started");
        let result = self.pipeline(&d, &mut log, &cancel).await;
        done.cancel();
        stop_on_shutdown.abort();
        let _ = renewer.await;
        self.running.lock().expect("lock").remove(&d.id);
        let took = started.elapsed().as_secs_f64();
        let result = match result {
            Err(Stop::Canceled) if shutdown.is_cancelled() => Err(Stop::Interrupted),
            other => other,
        };
        self.conclude(d, worker, &mut Some(log), result, took).await;
    }

    /// Writes the end of a build: last log line, flush, then status (and hostnames).
    async fn conclude(
        &self,
        d: deployment::Model,
        worker: &str,
        log: &mut Option<LogWriter>,
        result: Result<Ready, Stop>,
        took: f64,
    ) {
        let Some(mut writer) = log.take() else { return };
        let db = &self.state.db;
        let (status, error) = match &result {
            Ok(ready) => {
                writer.system(format!("Deployment ready in {took:.1} s: {}", ready.url));
                (DeploymentStatus::Ready, None)
            }
            Err(Stop::Failed(msg)) => {
                writer.system(format!("Build failed: {msg}"));
                (DeploymentStatus::Failed, Some(msg.clone()))
            }
            Err(Stop::Canceled) => {
                writer.system("Build canceled");
                (DeploymentStatus::Canceled, None)
            }
            Err(Stop::Interrupted) => {
                writer.system("Build interrupted: the server is stopping");
                (
                    DeploymentStatus::Failed,
                    Some("interrupted: the server was stopped".to_string()),
                )
            }
        };
        writer.finish().await;
        let end = queue::Finish {
            status,
            error: error.as_deref(),
            files: result.as_ref().ok().map(|r| r.files),
            bytes: result.as_ref().ok().map(|r| r.bytes),
        };
        let outcome = match &result {
            Ok(ready) => self.finish_ready(&d, worker, end, &ready.project).await,
            Err(_) => queue::finish(db, &d.id, worker, end).await,
        };
        match outcome {
            Ok(true) => {
                tracing::info!(deployment = %d.short_id, status = status.as_str(), "build ended");
                self.state
                    .bus
                    .publish(&d.id, DeploymentEvent::Status { status });
                if status == DeploymentStatus::Ready {
                    self.state.routes_changed().await;
                }
            }
            Ok(false) => {
                // Canceled (or deleted) while it ran: its artifacts must not linger.
                tracing::info!(deployment = %d.short_id, "build ended after it was canceled");
                if let Err(e) = queue::release(db, &d.id, worker).await {
                    tracing::warn!(deployment = %d.short_id, error = %e, "lease not released; it lapses");
                }
                let final_status = deployment::Entity::find_by_id(d.id.clone())
                    .one(db)
                    .await
                    .ok()
                    .flatten()
                    .map(|row| row.status());
                if let Some(status) = final_status {
                    self.state
                        .bus
                        .publish(&d.id, DeploymentEvent::Status { status });
                }
                if result.is_ok() {
                    let _ =
                        crate::storage::delete_deployment(self.state.store.as_ref(), &d.id).await;
                }
            }
            Err(e) => {
                tracing::error!(deployment = %d.short_id, error = %e, "cannot record the end of a build")
            }
        }
    }

    async fn finish_ready(
        &self,
        d: &deployment::Model,
        worker: &str,
        end: queue::Finish<'_>,
        p: &project::Model,
    ) -> Result<bool, sea_orm::DbErr> {
        let txn = self.state.db.begin().await?;
        if !queue::finish(&txn, &d.id, worker, end).await? {
            txn.rollback().await?;
            return Ok(false);
        }
        domains::allocate_ready(&txn, p, d).await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Clone, plan, build, upload. Leaves the deployment `building`.
    async fn pipeline(
        &self,
        d: &deployment::Model,
        log: &mut LogWriter,
        cancel: &CancellationToken,
    ) -> Result<Ready, Stop> {
        let config = &self.state.config.builder;
        let db = &self.state.db;
        let deadline = Instant::now() + Duration::from_secs(config.timeout_secs);
        let timed_out = || Stop::Failed(format!("build timed out after {} s", config.timeout_secs));
        let p = project::Entity::find_by_id(d.project_id)
            .one(db)
            .await
            .map_err(|e| Stop::Failed(format!("cannot read the project: {e}")))?
            .ok_or_else(|| Stop::Failed("the project was deleted".into()))?;
        let ws = Workspace::create(&self.state.config.work_dir())
            .map_err(|e| Stop::Failed(format!("cannot create the workspace: {e}")))?;

        // Source.
        log.system(format!(
            "Cloning {} (ref {})",
            names::redact_git_url(&p.git_url),
            d.git_ref
        ));
        let fetched = {
            let (url, git_ref, pinned, dest) = (
                p.git_url.clone(),
                d.git_ref.clone(),
                d.commit_sha.clone(),
                ws.src(),
            );
            let allow = config.allow_local_git;
            let job = tokio::task::spawn_blocking(move || {
                source::fetch(&url, &git_ref, pinned.as_deref(), &dest, allow)
            });
            tokio::select! {
                r = job => r.map_err(|e| Stop::Failed(format!("clone task failed: {e}")))?,
                () = cancel.cancelled() => return Err(Stop::Canceled),
                () = tokio::time::sleep_until(deadline) => return Err(timed_out()),
            }
        }
        .map_err(|e| Stop::Failed(e.to_string()))?;
        log.system(format!(
            "Commit {}: {}",
            &fetched.commit_sha[..12.min(fetched.commit_sha.len())],
            fetched.message
        ));
        queue::set_commit(db, &d.id, &fetched.commit_sha, &fetched.message)
            .await
            .map_err(|e| Stop::Failed(format!("cannot record the commit: {e}")))?;

        // Plan.
        let plan = plan::plan(&p, &ws, &config.default_image).map_err(Stop::Failed)?;
        for line in plan.describe() {
            log.system(line);
        }

        // Build.
        let steps: Vec<(&'static str, String)> =
            [("install", &plan.install), ("build", &plan.build)]
                .into_iter()
                .filter_map(|(name, c)| c.clone().map(|c| (name, c)))
                .collect();
        if !steps.is_empty() {
            let env = env_var::Entity::find()
                .filter(env_var::Column::ProjectId.eq(p.id))
                .all(db)
                .await
                .map_err(|e| Stop::Failed(format!("cannot read env vars: {e}")))?
                .into_iter()
                .map(|v| (v.key, v.value))
                .collect::<Vec<_>>();
            tokio::select! {
                r = self.runner.prepare(&plan.image, log) => r?,
                () = cancel.cancelled() => return Err(Stop::Canceled),
                () = tokio::time::sleep_until(deadline) => return Err(timed_out()),
            }
            for (name, command) in steps {
                log.system(format!("Running {name} command: {command}"));
                let step = Step {
                    name,
                    command,
                    image: plan.image.clone(),
                    workdir: plan.root_dir.clone(),
                    env: env.clone(),
                    deployment_id: d.id.clone(),
                    short_id: d.short_id.clone(),
                };
                match self
                    .runner
                    .run(ws.root(), &step, log, deadline, cancel)
                    .await?
                {
                    StepOutcome::Succeeded => {}
                    StepOutcome::Failed { exit_code } => {
                        return Err(Stop::Failed(format!(
                            "{name} command exited with status {exit_code}"
                        )));
                    }
                    StepOutcome::OutOfMemory => {
                        return Err(Stop::Failed(format!(
                            "{name} command ran out of memory (builder.memory_mb = {}) and was killed",
                            config.memory_mb
                        )));
                    }
                    StepOutcome::TimedOut => return Err(timed_out()),
                    StepOutcome::Canceled => return Err(Stop::Canceled),
                }
            }
        }

        // Upload.
        let out_rel = plan::resolve_output(&plan, &ws).map_err(Stop::Failed)?;
        let out = ws
            .resolve(&out_rel)
            .map_err(Stop::Failed)?
            .ok_or_else(|| Stop::Failed(format!("output directory '{out_rel}' is gone")))?;
        log.system(format!("Uploading '{out_rel}'"));
        let limits = UploadLimits {
            max_files: config.max_files,
            max_bytes: config.max_output_mb * 1024 * 1024,
        };
        let summary = tokio::select! {
            r = upload::upload(self.state.store.clone(), &d.id, &out, limits) => r,
            () = cancel.cancelled() => return Err(Stop::Canceled),
        }
        .map_err(|e: UploadError| Stop::Failed(e.to_string()))?;
        for link in &summary.skipped_symlinks {
            log.system(format!(
                "warning: skipped symlink '{link}' (symlinks are not followed)"
            ));
        }
        log.system(format!(
            "Uploaded {} files, {} bytes in {:.2} s",
            summary.files, summary.bytes, summary.seconds
        ));
        if cancel.is_cancelled() {
            return Err(Stop::Canceled);
        }
        drop(ws);
        Ok(Ready {
            url: self
                .state
                .site_url(&names::deployment_label(&p.name, &d.short_id)),
            files: summary.files,
            bytes: summary.bytes,
            project: p,
        })
    }
}

struct Ready {
    url: String,
    files: u64,
    bytes: u64,
    project: project::Model,
}

/// Renews the lease until `done`; cancels the build when the lease is lost (the
/// deployment was canceled elsewhere, or reaped).
async fn renew_lease(
    db: sea_orm::DatabaseConnection,
    id: String,
    worker: String,
    cancel: CancellationToken,
    done: CancellationToken,
) {
    loop {
        tokio::select! {
            () = done.cancelled() => return,
            () = tokio::time::sleep(RENEW_EVERY) => {}
        }
        match queue::renew(&db, &id, &worker).await {
            Ok(true) => {}
            Ok(false) => {
                cancel.cancel();
                return;
            }
            Err(e) => tracing::warn!(deployment = %id, error = %e, "lease renewal failed"),
        }
    }
}

/// The id of this node, kept in `<data_dir>/node-id` so a restart recognises its own
/// abandoned builds.
pub fn node_id(data_dir: &std::path::Path) -> std::io::Result<String> {
    let path = data_dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    std::fs::create_dir_all(data_dir)?;
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    std::fs::write(&path, &id)?;
    Ok(id)
}
