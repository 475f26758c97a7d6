//! The SSE log stream of one deployment: history from the database, then live lines
//! from the bus, with no gap and no duplicate at the switch, then `end`.
//!
//! ```text
//!  subscribe to the bus ─► send stored lines after `after` ─► live loop:
//!     line seq == last+1 → send │ seq <= last → drop │ seq > last+1 → fill the gap
//!     from the database first │ fell behind → listen again, fill from the database │
//!     no bus → poll the database │
//!     final status and no worker holds it → drain, last read of the database, `end`
//! ```
//!
//! Subscribing before reading history is what closes the gap: a line written while the
//! history is read arrives live and is either sent or dropped as a duplicate. The
//! database is the truth the stream always falls back on.

use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use http_body::Frame;
use sea_orm::{DatabaseConnection, EntityTrait};
use tokio::time::Instant;

use super::history::lines_after;
use super::{DeploymentEvent, LiveLine, LogBus, sse_event};
use crate::db::{DeploymentStatus, deployment};

const PAGE: u64 = 1000;
/// How long the bus may be quiet before the database is asked (another process, a
/// missed event, a bus that is down).
const POLL: Duration = Duration::from_secs(1);
/// A comment at least this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Quiet time after a final status before `end`, for a line still on its way.
const DRAIN: Duration = Duration::from_millis(300);
/// Events already waiting are sent together, in one write, up to this many bytes.
const BATCH: usize = 64 * 1024;

/// Opens the stream of `deployment_id` after seq `after`: the response body, whose
/// chunks of SSE events are each written to the client at once.
pub async fn open(
    db: DatabaseConnection,
    bus: Arc<dyn LogBus>,
    deployment_id: String,
    after: i64,
) -> axum::body::Body {
    // Subscribe before anything is read, so nothing falls between history and live.
    let live = bus.subscribe(&deployment_id).await.ok();
    let outbox = Arc::new(Outbox::default());
    let mut s = LogStream {
        db,
        bus,
        outbox: outbox.clone(),
        deployment_id,
        last: after,
        status: None,
        out: BytesMut::new(),
        last_flush: Instant::now(),
    };
    axum::body::Body::new(LogBody {
        run: Some(Box::pin(async move { s.run(live).await })),
        outbox,
    })
}

/// The response body of a stream. The stream runs inside it, polled by the connection
/// that writes it: a watcher costs no task and no channel, and a client that goes away
/// drops its stream with the body.
struct LogBody {
    /// `None` once the stream has ended.
    run: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    outbox: Arc<Outbox>,
}

/// Where the stream leaves a chunk for its body to return.
#[derive(Default)]
struct Outbox(Mutex<Option<Bytes>>);

impl Outbox {
    fn put(&self, chunk: Bytes) {
        *self.0.lock().expect("outbox lock") = Some(chunk);
    }

    fn take(&self) -> Option<Bytes> {
        self.0.lock().expect("outbox lock").take()
    }

    fn is_empty(&self) -> bool {
        self.0.lock().expect("outbox lock").is_none()
    }
}

impl http_body::Body for LogBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let Some(run) = this.run.as_mut() else {
            return Poll::Ready(None);
        };
        let ended = run.as_mut().poll(cx).is_ready();
        if ended {
            this.run = None;
        }
        match this.outbox.take() {
            Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
            None if ended => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

type Live = BoxStream<'static, DeploymentEvent>;

struct LogStream {
    db: DatabaseConnection,
    bus: Arc<dyn LogBus>,
    outbox: Arc<Outbox>,
    deployment_id: String,
    last: i64,
    status: Option<DeploymentStatus>,
    /// Events not yet handed to the body.
    out: BytesMut,
    last_flush: Instant,
}

impl LogStream {
    async fn run(&mut self, mut live: Option<Live>) {
        self.catch_up(i64::MAX).await;
        let Some((status, settled)) = self.read_status().await else {
            return;
        };
        self.status_event(status);
        self.flush().await;
        if status.is_finished() && settled {
            return self.end(status).await;
        }
        // One timer for the whole stream, reset only when it fires: a live line costs
        // no timer work.
        let mut tick = pin!(tokio::time::sleep(POLL));
        let mut last_event = Instant::now();
        loop {
            let next = match live.as_mut() {
                Some(stream) => tokio::select! {
                    biased;
                    event = stream.next() => event.map_or(Next::Gone, Next::Event),
                    () = &mut tick => Next::Tick,
                },
                None => {
                    (&mut tick).await;
                    Next::Tick
                }
            };
            match next {
                Next::Event(event) => {
                    last_event = Instant::now();
                    let mut finished = self.event(event).await;
                    // Whatever else is already waiting goes out in the same write.
                    while finished.is_none() && self.out.len() < BATCH {
                        let Some(stream) = live.as_mut() else { break };
                        match stream.next().now_or_never() {
                            Some(Some(event)) => finished = self.event(event).await,
                            Some(None) => {
                                live = None;
                                break;
                            }
                            None => break,
                        }
                    }
                    // A final status from the API (cancel) comes before the worker's
                    // last lines; the stream ends once the worker has let go.
                    if let Some(status) = finished
                        && self.read_status().await.is_none_or(|(_, settled)| settled)
                    {
                        self.drain(live.as_mut()).await;
                        return self.end(status).await;
                    }
                    self.flush().await;
                }
                Next::Gone => {
                    // The bus dropped us: we fell behind, or it went away. Listen again;
                    // the first line after the gap makes `live_line` read the database for
                    // what was missed. Without a bus, the database is polled.
                    live = self.bus.subscribe(&self.deployment_id).await.ok();
                    self.catch_up(i64::MAX).await;
                }
                Next::Tick => {
                    tick.as_mut().reset(Instant::now() + POLL);
                    if last_event.elapsed() >= POLL {
                        self.catch_up(i64::MAX).await;
                        match self.read_status().await {
                            Some((status, true)) if status.is_finished() => {
                                self.status_event(status);
                                return self.end(status).await;
                            }
                            Some((status, _)) => self.status_event(status),
                            None => return,
                        }
                    }
                    if self.out.is_empty() && self.last_flush.elapsed() >= KEEP_ALIVE {
                        self.out.extend_from_slice(b": keep-alive\n\n");
                    }
                    self.flush().await;
                }
            }
        }
    }

    /// Takes in one live event; returns the final status when it is one.
    async fn event(&mut self, event: DeploymentEvent) -> Option<DeploymentStatus> {
        match event {
            DeploymentEvent::Line(line) => {
                self.live_line(line).await;
                None
            }
            DeploymentEvent::Status { status } => {
                self.status_event(status);
                status.is_finished().then_some(status)
            }
        }
    }

    async fn live_line(&mut self, live: Arc<LiveLine>) {
        let seq = live.line.seq;
        if seq <= self.last {
            return;
        }
        if seq > self.last + 1 {
            self.fill_gap(seq).await;
        }
        if seq == self.last + 1 {
            self.out.extend_from_slice(live.sse());
            self.last = seq;
        }
    }

    /// Reads lines `last+1 .. upto-1` from the database, waiting briefly for a batch
    /// that is published but not yet stored.
    async fn fill_gap(&mut self, upto: i64) {
        for _ in 0..50 {
            self.catch_up(upto - 1).await;
            if self.last >= upto - 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends stored lines after `last`, up to `upto`, a page per write.
    async fn catch_up(&mut self, upto: i64) {
        loop {
            // Boxed: an idle stream does not carry a query's state around.
            let page = Box::pin(lines_after(&self.db, &self.deployment_id, self.last, PAGE))
                .await
                .unwrap_or_default();
            let n = page.len() as u64;
            for line in page.into_iter().take_while(|l| l.seq <= upto) {
                if line.seq != self.last + 1 {
                    break;
                }
                line.write_sse(&mut self.out);
                self.last = line.seq;
            }
            self.flush().await;
            if n < PAGE || self.last >= upto {
                return;
            }
        }
    }

    async fn drain(&mut self, live: Option<&mut Live>) {
        if let Some(stream) = live {
            while let Ok(Some(event)) = tokio::time::timeout(DRAIN, stream.next()).await {
                if let DeploymentEvent::Line(line) = event {
                    self.live_line(line).await;
                }
            }
        }
    }

    async fn end(&mut self, status: DeploymentStatus) {
        self.catch_up(i64::MAX).await;
        let data = serde_json::json!({ "status": status }).to_string();
        sse_event(&mut self.out, None, "end", &data);
        self.flush().await
    }

    /// The deployment's status, and whether no worker holds it any more (no lease, or
    /// a lapsed one): only then has a finished deployment stored its last line.
    async fn read_status(&self) -> Option<(DeploymentStatus, bool)> {
        let row =
            Box::pin(deployment::Entity::find_by_id(self.deployment_id.clone()).one(&self.db))
                .await
                .ok()
                .flatten()?;
        let settled = row.lease_until.is_none_or(|t| t < chrono::Utc::now());
        Some((row.status(), settled))
    }

    fn status_event(&mut self, status: DeploymentStatus) {
        if self.status == Some(status) {
            return;
        }
        self.status = Some(status);
        let data = serde_json::json!({ "status": status }).to_string();
        sse_event(&mut self.out, None, "status", &data);
    }

    /// Hands what is pending to the body, and waits until its connection has written
    /// it: the body polls the stream again only then.
    async fn flush(&mut self) {
        if self.out.is_empty() {
            return;
        }
        self.outbox.put(std::mem::take(&mut self.out).freeze());
        self.last_flush = Instant::now();
        let outbox = &self.outbox;
        std::future::poll_fn(|_| {
            if outbox.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

/// What the live loop got next.
enum Next {
    Event(DeploymentEvent),
    /// The bus stream ended.
    Gone,
    /// The timer fired.
    Tick,
}
