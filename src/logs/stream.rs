//! The SSE log stream of one deployment: history from the database, then live lines
//! from the bus, with no gap and no duplicate at the switch, then `end`.
//!
//! ```text
//!  subscribe to the bus ─► send stored lines after `after` ─► live loop:
//!     line seq == last+1 → send │ seq <= last → drop │ seq > last+1 → fill the gap
//!     from the database first │ fell behind → listen again, fill from the database │
//!     no bus → poll the database │
//!     final status → drain, last read of the database, `end`, close
//! ```
//!
//! Subscribing before reading history is what closes the gap: a line written while the
//! history is read arrives live and is either sent or dropped as a duplicate. The
//! database is the truth the stream always falls back on.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::Event;
use futures::StreamExt;
use futures::stream::BoxStream;
use sea_orm::{DatabaseConnection, EntityTrait};
use tokio::sync::mpsc;

use super::history::lines_after;
use super::{DeploymentEvent, LiveLine, LogBus, LogLine};
use crate::db::{DeploymentStatus, deployment};

const PAGE: u64 = 1000;
/// How often the database is read when no bus events arrive.
const POLL: Duration = Duration::from_millis(500);
/// Quiet time after a final status before `end`, for a line still on its way.
const DRAIN: Duration = Duration::from_millis(300);

/// Starts streaming `deployment_id` after seq `after` into an SSE event channel.
pub async fn start(
    db: DatabaseConnection,
    bus: Arc<dyn LogBus>,
    deployment_id: String,
    after: i64,
) -> mpsc::Receiver<Result<Event, Infallible>> {
    let (tx, rx) = mpsc::channel(64);
    // Subscribe before anything is read, so nothing falls between history and live.
    let live = bus.subscribe(&deployment_id).await.ok();
    tokio::spawn(async move {
        let mut s = LogStream {
            db,
            bus,
            tx,
            deployment_id,
            last: after,
            status: None,
        };
        if let Err(Closed) = s.run(live).await {
            // The client went away.
        }
    });
    rx
}

struct Closed;

struct LogStream {
    db: DatabaseConnection,
    bus: Arc<dyn LogBus>,
    tx: mpsc::Sender<Result<Event, Infallible>>,
    deployment_id: String,
    last: i64,
    status: Option<DeploymentStatus>,
}

impl LogStream {
    async fn run(
        &mut self,
        mut live: Option<BoxStream<'static, DeploymentEvent>>,
    ) -> Result<(), Closed> {
        self.catch_up(i64::MAX).await?;
        let Some(status) = self.read_status().await else {
            return Ok(());
        };
        self.send_status(status).await?;
        if status.is_finished() {
            return self.end(status).await;
        }
        loop {
            let next = match live.as_mut() {
                Some(stream) => match tokio::time::timeout(POLL, stream.next()).await {
                    Ok(Some(event)) => Next::Event(event),
                    Ok(None) => Next::Gone,
                    Err(_) => Next::Quiet,
                },
                None => {
                    tokio::time::sleep(POLL).await;
                    Next::Quiet
                }
            };
            match next {
                Next::Event(DeploymentEvent::Line(line)) => self.live_line(line).await?,
                Next::Event(DeploymentEvent::Status { status }) => {
                    self.send_status(status).await?;
                    if status.is_finished() {
                        self.drain(live.as_mut()).await?;
                        return self.end(status).await;
                    }
                }
                Next::Gone => {
                    // The bus dropped us: we fell behind, or it went away. Listen again;
                    // the first line after the gap makes `live_line` read the database for
                    // what was missed. Without a bus, the database is polled.
                    live = self.bus.subscribe(&self.deployment_id).await.ok();
                    self.catch_up(i64::MAX).await?;
                }
                Next::Quiet => {
                    // Quiet: the database may know more (another process, a missed event).
                    self.catch_up(i64::MAX).await?;
                    match self.read_status().await {
                        Some(status) if status.is_finished() => {
                            self.send_status(status).await?;
                            return self.end(status).await;
                        }
                        Some(status) => self.send_status(status).await?,
                        None => return Ok(()),
                    }
                }
            }
        }
    }

    async fn live_line(&mut self, live: Arc<LiveLine>) -> Result<(), Closed> {
        let seq = live.line.seq;
        if seq <= self.last {
            return Ok(());
        }
        if seq > self.last + 1 {
            self.fill_gap(seq).await?;
        }
        if seq == self.last + 1 {
            self.send_json(seq, live.json()).await?;
        }
        Ok(())
    }

    /// Reads lines `last+1 .. upto-1` from the database, waiting briefly for a batch
    /// that is published but not yet stored.
    async fn fill_gap(&mut self, upto: i64) -> Result<(), Closed> {
        for _ in 0..50 {
            self.catch_up(upto - 1).await?;
            if self.last >= upto - 1 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Sends stored lines after `last`, up to `upto`.
    async fn catch_up(&mut self, upto: i64) -> Result<(), Closed> {
        loop {
            let page = lines_after(&self.db, &self.deployment_id, self.last, PAGE)
                .await
                .unwrap_or_default();
            let n = page.len() as u64;
            for line in page.into_iter().take_while(|l| l.seq <= upto) {
                if line.seq != self.last + 1 {
                    return Ok(());
                }
                self.send_line(&line).await?;
            }
            if n < PAGE || self.last >= upto {
                return Ok(());
            }
        }
    }

    async fn drain(
        &mut self,
        live: Option<&mut BoxStream<'static, DeploymentEvent>>,
    ) -> Result<(), Closed> {
        if let Some(stream) = live {
            while let Ok(Some(event)) = tokio::time::timeout(DRAIN, stream.next()).await {
                if let DeploymentEvent::Line(line) = event {
                    self.live_line(line).await?;
                }
            }
        }
        Ok(())
    }

    async fn end(&mut self, status: DeploymentStatus) -> Result<(), Closed> {
        self.catch_up(i64::MAX).await?;
        let data = serde_json::json!({ "status": status }).to_string();
        self.send(Event::default().event("end").data(data)).await
    }

    async fn read_status(&self) -> Option<DeploymentStatus> {
        deployment::Entity::find_by_id(self.deployment_id.clone())
            .one(&self.db)
            .await
            .ok()
            .flatten()
            .map(|d| d.status())
    }

    async fn send_status(&mut self, status: DeploymentStatus) -> Result<(), Closed> {
        if self.status == Some(status) {
            return Ok(());
        }
        self.status = Some(status);
        let data = serde_json::json!({ "status": status }).to_string();
        self.send(Event::default().event("status").data(data)).await
    }

    async fn send_line(&mut self, line: &LogLine) -> Result<(), Closed> {
        let data = serde_json::to_string(line).unwrap_or_default();
        self.send_json(line.seq, &data).await
    }

    async fn send_json(&mut self, seq: i64, json: &str) -> Result<(), Closed> {
        self.send(Event::default().id(seq.to_string()).event("log").data(json))
            .await?;
        self.last = seq;
        Ok(())
    }

    async fn send(&self, event: Event) -> Result<(), Closed> {
        self.tx.send(Ok(event)).await.map_err(|_| Closed)
    }
}

/// What the live loop got next.
enum Next {
    Event(DeploymentEvent),
    /// The bus stream ended.
    Gone,
    /// Nothing for a while.
    Quiet,
}
