//! [`LogWriter`]: the one writer of a deployment's log while it builds.
//!
//! ```text
//!  line(stream, raw) ─► clean ─► seq n ─► bus.publish (at once)
//!                                    └──► persister task ─► log_lines (batches of
//!                                         up to 500 lines, at most every 100 ms)
//! ```
//!
//! Sequence numbers continue from the highest stored one, so a deployment whose build
//! is retried after a restart keeps a gapless log. `finish` waits until every line is
//! in the database; a database outage is retried, never skipped.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QuerySelect, Set};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::sanitize::clean_line;
use super::{DeploymentEvent, LiveLine, LogBus, LogLine, Stream};
use crate::db::log_line;

const BATCH_LINES: usize = 500;
const BATCH_INTERVAL: Duration = Duration::from_millis(100);

/// How much of one deployment's output is kept.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    pub max_lines: u64,
    pub max_bytes: u64,
}

pub struct LogWriter {
    deployment_id: String,
    next_seq: i64,
    bus: Arc<dyn LogBus>,
    limits: LogLimits,
    kept_lines: u64,
    kept_bytes: u64,
    truncated: bool,
    tx: Option<mpsc::UnboundedSender<log_line::ActiveModel>>,
    persister: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// Opens the log of `deployment_id`, continuing after its highest stored seq.
    pub async fn open(
        db: DatabaseConnection,
        bus: Arc<dyn LogBus>,
        deployment_id: &str,
        limits: LogLimits,
    ) -> Result<LogWriter, DbErr> {
        let last: Option<i64> = log_line::Entity::find()
            .select_only()
            .column_as(log_line::Column::Seq.max(), "max_seq")
            .filter(log_line::Column::DeploymentId.eq(deployment_id))
            .into_tuple::<Option<i64>>()
            .one(&db)
            .await?
            .flatten();
        let (tx, rx) = mpsc::unbounded_channel();
        let persister = tokio::spawn(persist(db, rx));
        Ok(LogWriter {
            deployment_id: deployment_id.to_string(),
            next_seq: last.unwrap_or(0) + 1,
            bus,
            limits,
            kept_lines: 0,
            kept_bytes: 0,
            truncated: false,
            tx: Some(tx),
            persister: Some(persister),
        })
    }

    /// A line from ScaleMesh itself.
    pub fn system(&mut self, text: impl AsRef<str>) {
        self.line(Stream::System, text.as_ref().as_bytes());
    }

    /// Adds one line of output (without its `\n`); multi-line input is split.
    pub fn line(&mut self, stream: Stream, raw: &[u8]) {
        for part in raw.split(|b| *b == b'\n') {
            self.one_line(stream, part);
        }
    }

    fn one_line(&mut self, stream: Stream, raw: &[u8]) {
        let text = clean_line(raw);
        if stream != Stream::System {
            let over = self.kept_lines >= self.limits.max_lines
                || self.kept_bytes + text.len() as u64 > self.limits.max_bytes;
            if over {
                if !self.truncated {
                    self.truncated = true;
                    self.emit(
                        Stream::System,
                        format!(
                            "log truncated: more than {} lines or {} MiB; later output is not kept",
                            self.limits.max_lines,
                            self.limits.max_bytes / (1024 * 1024)
                        ),
                    );
                }
                return;
            }
            self.kept_lines += 1;
            self.kept_bytes += text.len() as u64;
        }
        self.emit(stream, text);
    }

    fn emit(&mut self, stream: Stream, text: String) {
        let line = LogLine {
            seq: self.next_seq,
            ts: Utc::now(),
            stream,
            text,
        };
        self.next_seq += 1;
        if let Some(tx) = &self.tx {
            let _ = tx.send(log_line::ActiveModel {
                deployment_id: Set(self.deployment_id.clone()),
                seq: Set(line.seq),
                ts: Set(line.ts),
                stream: Set(stream.as_str().to_string()),
                text: Set(line.text.clone()),
            });
        }
        self.bus.publish(
            &self.deployment_id,
            DeploymentEvent::Line(LiveLine::new(line)),
        );
    }

    /// The seq the next line will get.
    pub fn next_seq(&self) -> i64 {
        self.next_seq
    }

    /// Waits until every line is stored.
    pub async fn finish(mut self) {
        self.tx.take();
        if let Some(p) = self.persister.take() {
            let _ = p.await;
        }
    }
}

/// Writes lines in batches until the channel closes; a failed batch is retried.
async fn persist(db: DatabaseConnection, mut rx: mpsc::UnboundedReceiver<log_line::ActiveModel>) {
    let mut batch = Vec::with_capacity(BATCH_LINES);
    loop {
        let Some(first) = rx.recv().await else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + BATCH_INTERVAL;
        while batch.len() < BATCH_LINES {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(line)) => batch.push(line),
                Ok(None) | Err(_) => break,
            }
        }
        write_batch(&db, &mut batch).await;
    }
}

async fn write_batch(db: &DatabaseConnection, batch: &mut Vec<log_line::ActiveModel>) {
    let mut wait = Duration::from_millis(100);
    loop {
        match log_line::Entity::insert_many(batch.clone())
            .exec_without_returning(db)
            .await
        {
            Ok(_) => {
                batch.clear();
                return;
            }
            Err(e)
                if matches!(
                    e.sql_err(),
                    Some(sea_orm::SqlErr::ForeignKeyConstraintViolation(_))
                ) =>
            {
                // The deployment was deleted with its project: nothing to keep.
                batch.clear();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, lines = batch.len(), "log lines not stored yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}
