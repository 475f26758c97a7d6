//! Runners: where a build step runs. One small trait, chosen once in `app.rs` from
//! `builder.runner`; `docker.rs` is the embedded default.
//!
//! A runner gets the workspace, one command and the project's build env, and nothing
//! else: no Docker socket, no store or Redis credentials, no platform env. Output goes
//! to the deployment's [`LogWriter`] line by line, as it comes.

pub mod docker;

use std::path::Path;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::logs::LogWriter;

/// One command to run for a deployment.
#[derive(Debug, Clone)]
pub struct Step {
    /// `install` or `build`: names the container and the messages.
    pub name: &'static str,
    pub command: String,
    pub image: String,
    /// The working directory, relative to the checkout (`root_dir`).
    pub workdir: String,
    /// The project's env vars, and nothing of ScaleMesh's.
    pub env: Vec<(String, String)>,
    pub deployment_id: String,
    pub short_id: String,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    Succeeded,
    Failed { exit_code: i64 },
    OutOfMemory,
    TimedOut,
    Canceled,
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("image {image} is not available: {reason}")]
    Image { image: String, reason: String },
    #[error("the build runner failed: {0}")]
    Infrastructure(String),
}

#[async_trait::async_trait]
pub trait Runner: Send + Sync {
    /// Makes `image` available (pulling it when absent), reporting progress to `log`.
    /// Runs once per build, before its first step.
    async fn prepare(&self, image: &str, log: &mut LogWriter) -> Result<(), RunnerError>;

    /// Runs one step with `workspace` mounted, until it exits, `deadline` passes or
    /// `cancel` fires; in the last two cases the step is killed first.
    async fn run(
        &self,
        workspace: &Path,
        step: &Step,
        log: &mut LogWriter,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<StepOutcome, RunnerError>;

    /// Kills and removes whatever still runs for `deployment_id` (crash recovery).
    async fn remove_deployment(&self, deployment_id: &str) -> Result<(), RunnerError>;

    /// Kills and removes every build container this node started (a restart).
    async fn remove_node(&self, node_id: &str) -> Result<usize, RunnerError>;

    /// Whether the runner's engine answers (for `/readyz`).
    async fn ping(&self) -> bool;
}
