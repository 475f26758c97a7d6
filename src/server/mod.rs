//! The HTTP server loop: accepts on a listener handed in, serves HTTP/1.1 requests
//! without a body on its own loop (`http1.rs`: `sendfile`, no buffers held by an idle
//! connection) and hands every other request — a body, an upgrade, HTTP/2 — with its
//! connection to hyper-util; both keep the limits a public listener needs, and drain
//! on shutdown.
//!
//! - a client has `proxy.header_timeout_secs` to send its request head (slowloris);
//! - a response of the HTTP/1 loop that makes no progress for `proxy.send_timeout_secs`
//!   (a client that stops reading) is abandoned and its connection closed;
//! - at most 100 headers and 64 KiB of head per request;
//! - at most `proxy.max_connections` connections: past it a new connection gets a
//!   short 503 and is closed, instead of queueing without bound.

mod http1;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::Dispatch;

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub send_timeout: Duration,
    pub max_connections: usize,
}

const MAX_HEADERS: usize = 100;
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long connections in flight may take to finish after shutdown.
const DRAIN: Duration = Duration::from_secs(10);
const SHED: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: 1\r\nconnection: close\r\n\r\n";

/// Serves `dispatch` on `listener` until `shutdown`, then drains.
pub async fn serve(
    listener: TcpListener,
    dispatch: Dispatch,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let hyper = Arc::new(hyper_builder(limits));
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = stream.write_all(SHED).await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let (dispatch, hyper, shutdown) = (dispatch.clone(), hyper.clone(), shutdown.clone());
        connections.spawn(async move {
            let ended = http1::serve(stream, peer, &dispatch, limits, &shutdown).await;
            if let http1::Ended::Handoff(stream) = ended {
                // Boxed: hyper's connection state is large, and only these carry it.
                Box::pin(serve_hyper(&hyper, stream, peer, dispatch, &shutdown)).await;
            }
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    tokio::select! {
        () = connections.wait() => {},
        () = tokio::time::sleep(DRAIN) => tracing::info!("connections still open after the drain period were closed"),
    }
}

fn hyper_builder(limits: Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    builder
}

/// Serves the rest of a connection with hyper, until it ends or, after `shutdown`,
/// its requests in flight are answered.
async fn serve_hyper(
    builder: &auto::Builder<TokioExecutor>,
    stream: http1::Rewound,
    peer: SocketAddr,
    dispatch: Dispatch,
    shutdown: &CancellationToken,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let dispatch = dispatch.clone();
        async move { Ok::<_, Infallible>(dispatch.handle(req, Some(peer)).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}
