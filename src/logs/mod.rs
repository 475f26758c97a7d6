//! Build logs: every line persisted with a gapless sequence number, and fanned out live
//! on a [`LogBus`] to whoever watches (the SSE stream, other processes).
//!
//! # Layout
//! - `sanitize.rs`: what raw output becomes before it is stored.
//! - `writer.rs`: [`LogWriter`], one per running build: numbers, publishes, persists.
//! - `memory.rs`: the in-process bus, the embedded default. `redis.rs`: across processes.
//! - `history.rs`: reading stored lines. `stream.rs`: the SSE stream of one deployment.
//!
//! The database is never skipped and publishing never waits on it: a line is published
//! at once and written in batches; a deployment reaches a final status only after its
//! writer has flushed, so "finished" means "every line is in the database".

pub mod history;
pub mod memory;
pub mod redis;
pub mod sanitize;
pub mod stream;
pub mod writer;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::db::DeploymentStatus;

pub use writer::LogWriter;

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    /// Written by ScaleMesh itself: steps, plan, upload summary, the result.
    System,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::System => "system",
        }
    }

    pub fn parse(s: &str) -> Stream {
        match s {
            "stdout" => Stream::Stdout,
            "stderr" => Stream::Stderr,
            _ => Stream::System,
        }
    }
}

/// One stored line of a build log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    pub seq: i64,
    pub ts: DateTime<Utc>,
    pub stream: Stream,
    pub text: String,
}

/// A line on its way to live watchers, with its SSE event rendered once: a thousand
/// SSE clients of one build share one serialisation and one allocation.
#[derive(Debug, PartialEq, Eq)]
pub struct LiveLine {
    pub line: LogLine,
    sse: Bytes,
}

impl LiveLine {
    pub fn new(line: LogLine) -> Arc<LiveLine> {
        let mut sse = BytesMut::new();
        line.write_sse(&mut sse);
        Arc::new(LiveLine {
            line,
            sse: sse.freeze(),
        })
    }

    /// The line's `log` event, as the SSE stream sends it.
    pub fn sse(&self) -> &Bytes {
        &self.sse
    }
}

impl LogLine {
    /// Appends the line's SSE event: `id` = seq, `event: log`, `data` = the line's JSON
    /// (`{"seq", "ts", "stream", "text"}`, as the API sends it; one line, JSON escapes
    /// every newline).
    pub fn write_sse(&self, out: &mut BytesMut) {
        let json = serde_json::to_string(self).unwrap_or_default();
        sse_event(out, Some(self.seq), "log", &json);
    }
}

/// Appends one SSE event (`data` must hold no newline).
pub fn sse_event(out: &mut BytesMut, id: Option<i64>, event: &str, data: &str) {
    use std::fmt::Write;
    if let Some(id) = id {
        let _ = writeln!(out, "id: {id}");
    }
    let _ = write!(out, "event: {event}\ndata: {data}\n\n");
}

/// What the bus carries for one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeploymentEvent {
    Line(Arc<LiveLine>),
    Status { status: DeploymentStatus },
}

/// [`DeploymentEvent`] as it crosses processes (the Redis bus).
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum WireEvent {
    Line(LogLine),
    Status { status: DeploymentStatus },
}

impl From<&DeploymentEvent> for WireEvent {
    fn from(e: &DeploymentEvent) -> Self {
        match e {
            DeploymentEvent::Line(l) => WireEvent::Line(l.line.clone()),
            DeploymentEvent::Status { status } => WireEvent::Status { status: *status },
        }
    }
}

impl From<WireEvent> for DeploymentEvent {
    fn from(e: WireEvent) -> Self {
        match e {
            WireEvent::Line(l) => DeploymentEvent::Line(LiveLine::new(l)),
            WireEvent::Status { status } => DeploymentEvent::Status { status },
        }
    }
}

/// What the bus carries for every process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SystemEvent {
    /// The domains table changed: reload the route table. `by` is the instance that
    /// changed it and has reloaded already (empty from a process that does not say).
    RoutesChanged {
        #[serde(default)]
        by: String,
    },
    /// A deployment was queued: idle workers may claim it.
    Queued,
    /// A deployment was canceled: its worker stops the build.
    Canceled { deployment_id: String },
}

/// Fan-out of live events. Delivery is best effort (the database holds the truth), and
/// a slow subscriber never slows a publisher: it misses events and notices the gap.
#[async_trait::async_trait]
pub trait LogBus: Send + Sync {
    /// Sends an event to the current subscribers of `deployment_id`. Never blocks.
    fn publish(&self, deployment_id: &str, event: DeploymentEvent);

    /// Events of `deployment_id` published from now on.
    async fn subscribe(
        &self,
        deployment_id: &str,
    ) -> anyhow::Result<BoxStream<'static, DeploymentEvent>>;

    /// Sends an event to every process. Never blocks.
    fn publish_system(&self, event: SystemEvent);

    /// System events published from now on.
    async fn subscribe_system(&self) -> anyhow::Result<BoxStream<'static, SystemEvent>>;
}
