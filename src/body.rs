//! The body of every response the listener sends: the bytes of a deployment's file as
//! they are (no box, no dynamic dispatch on the proxy's hot path), a stretch of a file
//! on local disk (which the listener sends with `sendfile`), or whatever body the
//! dashboard's router produced.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

pub enum ResponseBody {
    /// A whole body known in advance; `None` once sent (or for an empty body).
    Full(Option<Bytes>),
    /// Bytes of a file in the local store.
    File(FileBody),
    /// A body from the dashboard's router (JSON, pages, the SSE stream).
    Router(axum::body::Body),
}

/// `len` bytes of `file` from `offset`.
pub struct FileBody {
    pub file: Arc<File>,
    pub offset: u64,
    pub len: u64,
}

/// How much of a file one frame carries when hyper, not `sendfile`, sends it.
const FILE_FRAME: u64 = 64 * 1024;

impl FileBody {
    /// The next frame's bytes, read from the page cache; a short file is an error, not
    /// a short body.
    fn next_frame(&mut self) -> std::io::Result<Bytes> {
        let mut chunk = vec![0; self.len.min(FILE_FRAME) as usize];
        self.file.read_exact_at(&mut chunk, self.offset)?;
        self.offset += chunk.len() as u64;
        self.len -= chunk.len() as u64;
        Ok(Bytes::from(chunk))
    }
}

impl ResponseBody {
    pub fn empty() -> ResponseBody {
        ResponseBody::Full(None)
    }
}

impl From<Bytes> for ResponseBody {
    fn from(bytes: Bytes) -> ResponseBody {
        ResponseBody::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl From<axum::body::Body> for ResponseBody {
    fn from(body: axum::body::Body) -> ResponseBody {
        ResponseBody::Router(body)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match self.get_mut() {
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::File(file) if file.len == 0 => Poll::Ready(None),
            ResponseBody::File(file) => Poll::Ready(Some(
                file.next_frame().map(Frame::data).map_err(axum::Error::new),
            )),
            ResponseBody::Router(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(bytes) => bytes.is_none(),
            ResponseBody::File(file) => file.len == 0,
            ResponseBody::Router(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseBody::File(file) => SizeHint::with_exact(file.len),
            ResponseBody::Router(body) => body.size_hint(),
        }
    }
}
