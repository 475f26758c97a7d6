//! The Docker runner (bollard): one container per step, the workspace bind-mounted at
//! `/workspace`, hardened and limited.
//!
//! Every container gets `cap-drop ALL`, `no-new-privileges`, memory (no swap), CPU and
//! pids limits, the network mode of `builder.network`, and runs as the uid:gid that owns
//! the workspace. It never gets the Docker socket, a privileged flag, or any variable
//! but the project's env and `CI`/`HOME`. Containers carry labels naming their
//! deployment and node, so a restart finds and removes what a crash left behind.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, StartContainerOptions, WaitContainerOptions,
};
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Runner, RunnerError, Step, StepOutcome};
use crate::config::{BuildNetwork, BuilderConfig};
use crate::logs::{LogWriter, Stream};

pub const LABEL_DEPLOYMENT: &str = "scalemesh.deployment";
pub const LABEL_NODE: &str = "scalemesh.node";
const PIDS_LIMIT: i64 = 1024;
/// A line longer than this without a newline is emitted as it stands.
const MAX_PENDING: usize = 64 * 1024;

pub struct DockerRunner {
    docker: Docker,
    node_id: String,
    memory_bytes: i64,
    nano_cpus: i64,
    network: BuildNetwork,
}

impl DockerRunner {
    pub fn new(docker: Docker, node_id: &str, config: &BuilderConfig) -> DockerRunner {
        DockerRunner {
            docker,
            node_id: node_id.to_string(),
            memory_bytes: (config.memory_mb * 1024 * 1024) as i64,
            nano_cpus: (config.cpus * 1e9) as i64,
            network: config.network,
        }
    }

    fn container_body(
        &self,
        workspace: &Path,
        step: &Step,
    ) -> Result<ContainerCreateBody, RunnerError> {
        let meta = std::fs::metadata(workspace)
            .map_err(|e| RunnerError::Infrastructure(format!("workspace: {e}")))?;
        let mut env: Vec<String> = vec!["CI=1".into(), "HOME=/tmp".into()];
        env.extend(step.env.iter().map(|(k, v)| format!("{k}={v}")));
        let workdir = if step.workdir == "." {
            "/workspace/src".to_string()
        } else {
            format!("/workspace/src/{}", step.workdir)
        };
        let labels = HashMap::from([
            (LABEL_DEPLOYMENT.to_string(), step.deployment_id.clone()),
            (LABEL_NODE.to_string(), self.node_id.clone()),
            ("scalemesh.step".to_string(), step.name.to_string()),
        ]);
        Ok(ContainerCreateBody {
            image: Some(step.image.clone()),
            cmd: Some(vec!["sh".into(), "-c".into(), step.command.clone()]),
            env: Some(env),
            working_dir: Some(workdir),
            user: Some(format!("{}:{}", meta.uid(), meta.gid())),
            labels: Some(labels),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            open_stdin: Some(false),
            host_config: Some(HostConfig {
                binds: Some(vec![format!("{}:/workspace", workspace.display())]),
                memory: Some(self.memory_bytes),
                memory_swap: Some(self.memory_bytes),
                nano_cpus: Some(self.nano_cpus),
                pids_limit: Some(PIDS_LIMIT),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                privileged: Some(false),
                network_mode: Some(match self.network {
                    BuildNetwork::Bridge => "bridge".into(),
                    BuildNetwork::None => "none".into(),
                }),
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn kill(&self, id: &str) {
        let _ = self
            .docker
            .kill_container(
                id,
                Some(KillContainerOptions {
                    signal: "KILL".into(),
                }),
            )
            .await;
    }

    async fn remove(&self, id: &str) {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        if let Err(e) = self.docker.remove_container(id, Some(opts)).await
            && !is_not_found(&e)
        {
            tracing::warn!(container = id, error = %e, "build container not removed");
        }
    }

    async fn containers_labelled(&self, label: &str) -> Result<Vec<String>, RunnerError> {
        let filters = HashMap::from([("label".to_string(), vec![label.to_string()])]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(infra)?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    /// Reads the whole stored output of an exited container and takes in what the
    /// follow missed, then the last unterminated lines.
    async fn read_rest(&self, id: &str, output: &mut Output, log: &mut LogWriter) {
        // An unfinished line of the follow goes on with the first bytes of the rest.
        let mut rest = Output {
            pending: std::mem::take(&mut output.pending),
            seen: [0; 2],
            skip: output.seen,
        };
        self.read_logs(id, false, &mut rest, log).await;
        rest.finish(log);
    }

    /// Streams the container's output (`follow`: until the stream ends) into `log`.
    async fn read_logs(&self, id: &str, follow: bool, output: &mut Output, log: &mut LogWriter) {
        let opts = LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            tail: "all".into(),
            ..Default::default()
        };
        let mut chunks = self.docker.logs(id, Some(opts));
        while let Some(item) = chunks.next().await {
            let Ok(chunk) = item else { break };
            match chunk {
                bollard::container::LogOutput::StdErr { message } => {
                    output.feed(true, &message, log)
                }
                bollard::container::LogOutput::StdOut { message }
                | bollard::container::LogOutput::Console { message } => {
                    output.feed(false, &message, log)
                }
                bollard::container::LogOutput::StdIn { .. } => {}
            }
        }
    }

    async fn exit_status(&self, id: &str) -> Result<StepOutcome, RunnerError> {
        let mut wait = self.docker.wait_container(
            id,
            Some(WaitContainerOptions {
                condition: "not-running".into(),
            }),
        );
        let code = match wait.next().await {
            Some(Ok(r)) => r.status_code,
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(infra(e)),
            None => -1,
        };
        let state = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(infra)?
            .state
            .unwrap_or_default();
        if state.oom_killed == Some(true) {
            return Ok(StepOutcome::OutOfMemory);
        }
        let code = state.exit_code.unwrap_or(code);
        Ok(if code == 0 {
            StepOutcome::Succeeded
        } else {
            StepOutcome::Failed { exit_code: code }
        })
    }
}

fn infra(e: DockerError) -> RunnerError {
    RunnerError::Infrastructure(e.to_string())
}

fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

#[async_trait::async_trait]
impl Runner for DockerRunner {
    async fn prepare(&self, image: &str, log: &mut LogWriter) -> Result<(), RunnerError> {
        if self.docker.inspect_image(image).await.is_ok() {
            log.system(format!("Image {image} is present"));
            return Ok(());
        }
        log.system(format!("Pulling image {image}"));
        let (name, tag) = match image.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n.to_string(), t.to_string()),
            _ => (image.to_string(), "latest".to_string()),
        };
        let opts = CreateImageOptions {
            from_image: Some(name),
            tag: Some(tag),
            ..Default::default()
        };
        let mut pull = self.docker.create_image(Some(opts), None, None);
        let mut last = String::new();
        while let Some(item) = pull.next().await {
            match item {
                Ok(info) => {
                    // Byte-level progress of each layer is noise; each new status is not.
                    let Some(status) = info.status else { continue };
                    if info
                        .progress_detail
                        .as_ref()
                        .is_some_and(|p| p.total.is_some())
                    {
                        continue;
                    }
                    let line = match info.id {
                        Some(id) => format!("  {id}: {status}"),
                        None => format!("  {status}"),
                    };
                    if line != last {
                        log.system(&line);
                        last = line;
                    }
                }
                Err(e) => {
                    return Err(RunnerError::Image {
                        image: image.to_string(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        self.docker
            .inspect_image(image)
            .await
            .map(|_| ())
            .map_err(|e| RunnerError::Image {
                image: image.to_string(),
                reason: e.to_string(),
            })
    }

    async fn run(
        &self,
        workspace: &Path,
        step: &Step,
        log: &mut LogWriter,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<StepOutcome, RunnerError> {
        let name = format!(
            "scalemesh-{}-{}-{}",
            step.short_id,
            step.name,
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let body = self.container_body(workspace, step)?;
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| match e {
                DockerError::DockerResponseServerError {
                    status_code: 404,
                    message,
                } => RunnerError::Image {
                    image: step.image.clone(),
                    reason: message,
                },
                e => infra(e),
            })?;
        let id = created.id;
        let result = async {
            self.docker
                .start_container(&id, None::<StartContainerOptions>)
                .await
                .map_err(infra)?;
            let mut output = Output::default();
            let interrupted = tokio::select! {
                // Docker may end a followed stream early for a container that exits
                // fast: after the exit, `read_rest` takes in what this did not see.
                () = self.read_logs(&id, true, &mut output, log) => None,
                () = tokio::time::sleep_until(deadline) => Some(StepOutcome::TimedOut),
                () = cancel.cancelled() => Some(StepOutcome::Canceled),
            };
            match interrupted {
                Some(outcome) => {
                    self.kill(&id).await;
                    output.finish(log);
                    Ok(outcome)
                }
                None => {
                    let status = self.exit_status(&id).await;
                    self.read_rest(&id, &mut output, log).await;
                    status
                }
            }
        }
        .await;
        self.remove(&id).await;
        result
    }

    async fn remove_deployment(&self, deployment_id: &str) -> Result<(), RunnerError> {
        for id in self
            .containers_labelled(&format!("{LABEL_DEPLOYMENT}={deployment_id}"))
            .await?
        {
            self.kill(&id).await;
            self.remove(&id).await;
        }
        Ok(())
    }

    async fn remove_node(&self, node_id: &str) -> Result<usize, RunnerError> {
        let ids = self
            .containers_labelled(&format!("{LABEL_NODE}={node_id}"))
            .await?;
        for id in &ids {
            self.remove(id).await;
        }
        Ok(ids.len())
    }

    async fn ping(&self) -> bool {
        self.docker.ping().await.is_ok()
    }
}

fn stream_of(is_err: bool) -> Stream {
    if is_err {
        Stream::Stderr
    } else {
        Stream::Stdout
    }
}

/// Splits a container's output into lines, per stream, counting the bytes seen so a
/// second read of the same output can skip them.
#[derive(Default)]
struct Output {
    /// Bytes of an unfinished line, stdout then stderr.
    pending: [Vec<u8>; 2],
    /// Bytes taken in so far, per stream.
    seen: [u64; 2],
    /// Bytes to pass over first, per stream (already taken in by an earlier read).
    skip: [u64; 2],
}

impl Output {
    fn feed(&mut self, is_err: bool, mut bytes: &[u8], log: &mut LogWriter) {
        let i = usize::from(is_err);
        let skip = self.skip[i].min(bytes.len() as u64) as usize;
        self.skip[i] -= skip as u64;
        bytes = &bytes[skip..];
        self.seen[i] += bytes.len() as u64;
        let buf = &mut self.pending[i];
        buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
            log.line(stream_of(is_err), &buf[start..start + pos]);
            start += pos + 1;
        }
        buf.drain(..start);
        if buf.len() > MAX_PENDING {
            log.line(stream_of(is_err), buf);
            buf.clear();
        }
    }

    /// Takes in the last unterminated lines.
    fn finish(&mut self, log: &mut LogWriter) {
        for (i, buf) in self.pending.iter_mut().enumerate() {
            if !buf.is_empty() {
                log.line(stream_of(i == 1), buf);
                buf.clear();
            }
        }
    }
}
