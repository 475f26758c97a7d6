//! ScaleMesh's own HTTP/1.1 connection loop, for requests that carry no body: every
//! request a site gets, and the dashboard's reads, the live log stream among them.
//!
//! It exists for what hyper's connection cannot do: send a large file with `sendfile`
//! (no copy through user memory), and keep nothing per idle connection but the socket:
//! the read buffer is freed between requests and a response is written straight from
//! its body, so an open log stream costs its stream and no connection buffers.
//!
//! Anything else — a request body, `Expect`, an upgrade, HTTP/2's preface — is handed,
//! with the bytes already read, to hyper, which serves the connection from then on.
//! The limits are the listener's: the head must arrive within the header timeout,
//! with at most [`MAX_HEADERS`] headers in [`MAX_HEAD_BYTES`].

use std::cell::RefCell;
use std::io::{self, IoSlice, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, Request, Response, StatusCode, Uri, Version};
use bytes::Bytes;
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Limits, MAX_HEAD_BYTES, MAX_HEADERS};
use crate::app::Dispatch;
use crate::body::{FileBody, ResponseBody};

/// How long a connection may sit idle between two requests.
const KEEP_ALIVE: Duration = Duration::from_secs(75);
/// The first read of a request head; the buffer grows from there up to the limit.
const FIRST_READ: usize = 1024;

/// How a connection left this loop.
pub enum Ended {
    Closed,
    /// A request this loop does not serve: hyper takes the connection, with the bytes
    /// read so far.
    Handoff(Rewound),
}

/// Serves requests on `stream` until the client closes, a limit is hit, `shutdown` is
/// cancelled, or a request needs hyper.
pub async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    dispatch: &Dispatch,
    limits: Limits,
    shutdown: &CancellationToken,
) -> Ended {
    let header_timeout = limits.header_timeout;
    let mut buf: Vec<u8> = Vec::new();
    // One timer per connection, moved for each wait.
    let timer = tokio::time::sleep(header_timeout);
    tokio::pin!(timer);
    let mut first = true;
    loop {
        if !first {
            if buf.is_empty() {
                timer.as_mut().reset(Instant::now() + KEEP_ALIVE);
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Ended::Closed,
                    () = &mut timer => return Ended::Closed,
                    ready = stream.readable() => if ready.is_err() { return Ended::Closed },
                }
            }
            // The head's time starts with its first byte (or with the connection).
            timer.as_mut().reset(Instant::now() + header_timeout);
        }
        first = false;
        let head = loop {
            match parse(&buf) {
                Parsed::Request(head) => break head,
                Parsed::Partial if buf.len() < MAX_HEAD_BYTES => {}
                Parsed::Partial => {
                    return refuse(stream, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE).await;
                }
                Parsed::Bad(status) => return refuse(stream, status).await,
                Parsed::Handoff => return Ended::Handoff(Rewound::new(buf, stream)),
            }
            buf.reserve(FIRST_READ.max(buf.len()).min(MAX_HEAD_BYTES - buf.len()));
            tokio::select! {
                () = &mut timer => {
                    if buf.is_empty() {
                        return Ended::Closed;
                    }
                    return refuse(stream, StatusCode::REQUEST_TIMEOUT).await;
                }
                read = stream.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => return Ended::Closed,
                    Ok(_) => {}
                },
            }
        };
        let Head {
            request,
            consumed,
            keep_alive,
        } = head;
        // What follows the head is the next pipelined request; an empty buffer is freed,
        // so an idle connection holds no memory for reading.
        if consumed == buf.len() {
            buf = Vec::new();
        } else {
            buf.drain(..consumed);
        }
        let is_head = request.method() == Method::HEAD;
        let version = request.version();
        // Boxed: the handler's future lives only while it runs, and a connection that
        // waits (idle, or streaming a log) does not keep room for it.
        let res = Box::pin(dispatch.handle(request, Some(peer))).await;
        let keep_alive =
            keep_alive && !shutdown.is_cancelled() && !has_token(res.headers(), "close");
        let out = Out {
            stream: &stream,
            stall: limits.send_timeout,
        };
        match write_response(out, res, is_head, version, keep_alive, buf.is_empty()).await {
            Ok(true) if keep_alive => {}
            _ => {
                let _ = stream.shutdown().await;
                return Ended::Closed;
            }
        }
    }
}

/// A request head, parsed.
struct Head {
    request: Request<axum::body::Body>,
    /// Bytes of the buffer the head took.
    consumed: usize,
    keep_alive: bool,
}

#[expect(
    clippy::large_enum_variant,
    reason = "returned once per request and matched at once; a box would cost an allocation per request"
)]
enum Parsed {
    Request(Head),
    Partial,
    Handoff,
    Bad(StatusCode),
}

fn parse(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let consumed = match head.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // HTTP/2 with prior knowledge: hyper's.
        Err(_) if buf.starts_with(b"PRI ") => return Parsed::Handoff,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Bad(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
        Err(_) => return Parsed::Bad(StatusCode::BAD_REQUEST),
    };
    let (Some(method), Some(target), Some(minor)) = (head.method, head.path, head.version) else {
        return Parsed::Bad(StatusCode::BAD_REQUEST);
    };
    let (Ok(method), Ok(uri)) = (Method::from_bytes(method.as_bytes()), Uri::try_from(target))
    else {
        return Parsed::Bad(StatusCode::BAD_REQUEST);
    };
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut map = HeaderMap::with_capacity(head.headers.len());
    for h in head.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::Bad(StatusCode::BAD_REQUEST);
        };
        // A body, or anything beyond one request and one response, is hyper's.
        let handoff = match name {
            header::CONTENT_LENGTH => value != "0",
            header::TRANSFER_ENCODING | header::EXPECT | header::UPGRADE => true,
            _ => false,
        };
        if handoff {
            return Parsed::Handoff;
        }
        map.append(name, value);
    }
    let keep_alive = if version == Version::HTTP_10 {
        has_token(&map, "keep-alive")
    } else {
        !has_token(&map, "close")
    };
    let mut request = Request::new(axum::body::Body::empty());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = map;
    Parsed::Request(Head {
        request,
        consumed,
        keep_alive,
    })
}

/// Whether a `Connection` header lists `token`.
fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Answers a request that cannot be served with `status`, and closes.
async fn refuse(mut stream: TcpStream, status: StatusCode) -> Ended {
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.shutdown().await;
    Ended::Closed
}

/// How the body of a response is delimited on the wire.
#[derive(Clone, Copy, PartialEq)]
enum Framing {
    /// No body is sent (HEAD, 204, 304).
    None,
    Length,
    Chunked,
    /// HTTP/1.0 with a body of unknown length: it ends when the connection does.
    Close,
}

/// Writes `res`; `Ok(false)` when the connection cannot carry another response.
/// `watch_close` says whether the socket may be read while a streamed body waits: a
/// client that hangs up then ends the stream at once.
async fn write_response(
    out: Out<'_>,
    res: Response<ResponseBody>,
    is_head: bool,
    version: Version,
    keep_alive: bool,
    watch_close: bool,
) -> io::Result<bool> {
    let (parts, body) = res.into_parts();
    let status = parts.status;
    let known = body.size_hint().exact();
    let framing = if is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::None
    } else if known.is_some() {
        Framing::Length
    } else if version == Version::HTTP_11 {
        Framing::Chunked
    } else {
        Framing::Close
    };
    let keep_alive = keep_alive && framing != Framing::Close;
    let head = render_head(&parts, framing, known, is_head, version, keep_alive);
    // A stream may stay open for hours: it keeps nothing of the response but its body.
    drop(parts);
    if framing == Framing::None {
        out.write(&mut [&head]).await?;
        return Ok(true);
    }
    match body {
        ResponseBody::Full(None) => out.write(&mut [&head]).await?,
        ResponseBody::Full(Some(bytes)) => out.write(&mut [&head[..], &bytes[..]]).await?,
        // Boxed, these two: a connection's future stays the size that a small file
        // needs, which is what an idle connection keeps.
        ResponseBody::File(file) => Box::pin(out.send_file(&head, &file)).await?,
        ResponseBody::Router(body) => {
            out.write(&mut [&head]).await?;
            drop(head);
            return Box::pin(write_streamed(out, body, framing, watch_close)).await;
        }
    }
    Ok(true)
}

fn render_head(
    parts: &axum::http::response::Parts,
    framing: Framing,
    known: Option<u64>,
    is_head: bool,
    version: Version,
    keep_alive: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + parts.headers.len() * 32);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    let mut has_length = false;
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            continue;
        }
        has_length |= name == header::CONTENT_LENGTH;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        http_date(&mut out);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length if !has_length => {
            let n = known.unwrap_or(0);
            out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
        }
        // HEAD says the length GET would send, when the body's length is known.
        Framing::None if is_head && !has_length => {
            if let Some(n) = known.filter(|&n| n > 0) {
                out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
            }
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Appends the current `Date` (IMF-fixdate), formatted once a second per thread.
fn http_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second || text.is_empty() {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// The socket a response is written to. Every write is tried at once; only a full
/// socket waits, and it may wait `stall` for room before the response is given up
/// (a client that stops reading holds a connection no longer than that).
#[derive(Clone, Copy)]
struct Out<'a> {
    stream: &'a TcpStream,
    stall: Duration,
}

impl Out<'_> {
    /// Waits until the socket takes more, at most `stall`.
    async fn room(&self) -> io::Result<()> {
        match tokio::time::timeout(self.stall, self.stream.writable()).await {
            Ok(ready) => ready,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// Runs a non-blocking write, and again each time the socket has room, until the
    /// socket takes some of it.
    async fn retry<T>(&self, mut attempt: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        loop {
            match attempt() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.room().await?,
                done => return done,
            }
        }
    }

    /// Writes every byte of `parts`, in as few `writev`s as the socket allows.
    async fn write(&self, parts: &mut [&[u8]]) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            match self
                .retry(|| self.stream.try_write_vectored(slices))
                .await?
            {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => IoSlice::advance_slices(&mut slices, n),
            }
        }
        Ok(())
    }

    /// The head, held back (`MSG_MORE`) so it leaves in one segment with the file's
    /// first bytes, then the file by `sendfile`: from the page cache to the socket, no
    /// copy.
    async fn send_file(&self, head: &[u8], file: &FileBody) -> io::Result<()> {
        let stream = self.stream;
        let mut sent = 0;
        while sent < head.len() {
            sent += self
                .retry(|| {
                    stream.try_io(Interest::WRITABLE, || {
                        rustix::net::send(stream, &head[sent..], rustix::net::SendFlags::MORE)
                            .map_err(io::Error::from)
                    })
                })
                .await?;
        }
        let mut offset = file.offset;
        let end = file.offset + file.len;
        while offset < end {
            let count = usize::try_from(end - offset).unwrap_or(usize::MAX);
            let sent = self
                .retry(|| {
                    stream.try_io(Interest::WRITABLE, || {
                        rustix::fs::sendfile(stream, &*file.file, Some(&mut offset), count)
                            .map_err(io::Error::from)
                    })
                })
                .await?;
            if sent == 0 {
                // The file is shorter than its manifest says.
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }
}

/// Writes a body that arrives in frames (the dashboard's responses, the log stream),
/// each frame as soon as it comes.
async fn write_streamed(
    out: Out<'_>,
    mut body: axum::body::Body,
    framing: Framing,
    mut watch_close: bool,
) -> io::Result<bool> {
    let mut probe = [0u8; 1];
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        let frame = tokio::select! {
            frame = frame => frame,
            peeked = out.stream.peek(&mut probe), if watch_close => match peeked {
                // The client hung up: the stream ends here.
                Ok(0) | Err(_) => return Ok(false),
                // A pipelined request: it waits in the socket for its turn.
                Ok(_) => {
                    watch_close = false;
                    continue;
                }
            },
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed");
                return Ok(false);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        if framing == Framing::Chunked {
            // The chunk's size line, written on the stack: no allocation per log line.
            let mut size = [0u8; 20];
            let n = {
                let mut line = &mut size[..];
                let _ = write!(line, "{:x}\r\n", data.len());
                20 - line.len()
            };
            out.write(&mut [&size[..n], &data, b"\r\n"]).await?;
        } else {
            out.write(&mut [&data]).await?;
        }
    }
    if framing == Framing::Chunked {
        out.write(&mut [b"0\r\n\r\n"]).await?;
    }
    Ok(framing != Framing::Close)
}

/// A connection handed to hyper: the bytes this loop read, then the socket.
pub struct Rewound {
    read: Bytes,
    stream: TcpStream,
}

impl Rewound {
    fn new(read: Vec<u8>, stream: TcpStream) -> Rewound {
        Rewound {
            read: Bytes::from(read),
            stream,
        }
    }
}

impl AsyncRead for Rewound {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(raw: &[u8]) -> Head {
        match parse(raw) {
            Parsed::Request(head) => head,
            _ => panic!("not a request: {}", String::from_utf8_lossy(raw)),
        }
    }

    #[test]
    fn heads_are_parsed_with_their_connection_semantics() {
        let head = request(b"GET /a?b=1 HTTP/1.1\r\nHost: x.test\r\n\r\nGET /next");
        assert_eq!(head.consumed, 37);
        assert!(head.keep_alive);
        assert_eq!(head.request.uri(), "/a?b=1");
        assert_eq!(head.request.headers()["host"], "x.test");
        let head = request(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n");
        assert!(!head.keep_alive);
        let head = request(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!head.keep_alive);
        let head = request(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n");
        assert!(head.keep_alive);
        let head = request(b"DELETE /x HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(head.request.method(), Method::DELETE);
    }

    #[test]
    fn bodies_upgrades_and_http2_go_to_hyper() {
        for raw in [
            &b"POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"PUT / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nupgrade: websocket\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(matches!(parse(raw), Parsed::Handoff), "{raw:?}");
        }
    }

    #[test]
    fn broken_heads_are_refused() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: x"),
            Parsed::Partial
        ));
        for raw in [
            &b"GET / HTTP/1.1\r\nbad header\r\n\r\n"[..],
            b"GET /\x01 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/3.0\r\n\r\n",
        ] {
            assert!(
                matches!(parse(raw), Parsed::Bad(StatusCode::BAD_REQUEST)),
                "{raw:?}"
            );
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("h{i}: v\r\n"))
            .collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            parse(raw.as_bytes()),
            Parsed::Bad(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        ));
    }
}
