//! A request body as the pipeline sees it: frames handed over by the connection's task,
//! which alone reads the socket (see the module doc of [`super`]).
//!
//! The channel holds one frame, so a slow upstream slows the reading of the client. The
//! connection asks the client for the body (`100 Continue`) only once this side is first
//! polled, so an early answer (401, 413) never makes the client send it.

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Why a request body ended before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is malformed: {0}")]
    Malformed(&'static str),
    #[error("the client closed the connection in the middle of the request body")]
    Truncated,
    #[error("reading the request body: {0}")]
    Io(#[from] std::io::Error),
}

/// What both ends share besides the channel.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// The body has been polled (the client may be asked to send it).
    wanted: AtomicBool,
    /// The connection's task: woken when `wanted` is first set and when the body is
    /// dropped.
    waker: AtomicWaker,
    /// Set before the sender is dropped at the body's end; a channel that closes without it
    /// is a body cut short, never a clean end.
    complete: AtomicBool,
}

impl Shared {
    /// Whether the body has been asked for; registers for the asking otherwise.
    pub(super) fn poll_wanted(&self, cx: &mut Context<'_>) -> bool {
        if self.wanted.load(Ordering::Acquire) {
            return true;
        }
        self.waker.register(cx.waker());
        self.wanted.load(Ordering::Acquire)
    }

    /// Wakes the connection when the body is first polled or dropped.
    pub(super) fn register(&self, cx: &mut Context<'_>) {
        self.waker.register(cx.waker());
    }

    pub(super) fn set_complete(&self) {
        self.complete.store(true, Ordering::Release);
    }
}

pub(super) type Tx = tokio_util::sync::PollSender<Result<Bytes, BodyError>>;

/// The body of a request read by the gateway's own HTTP/1 server.
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Inner>,
}

#[derive(Debug)]
struct Inner {
    rx: mpsc::Receiver<Result<Bytes, BodyError>>,
    shared: Arc<Shared>,
    /// What `Content-Length` says is still to come.
    left: Option<u64>,
}

impl RequestBody {
    /// A request without a body.
    pub fn empty() -> RequestBody {
        RequestBody { inner: None }
    }

    pub(super) fn channel(length: Option<u64>) -> (RequestBody, Tx, Arc<Shared>) {
        let (tx, rx) = mpsc::channel(1);
        let shared = Arc::new(Shared::default());
        (
            RequestBody {
                inner: Some(Inner {
                    rx,
                    shared: shared.clone(),
                    left: length,
                }),
            },
            tokio_util::sync::PollSender::new(tx),
            shared,
        )
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        // The connection may be waiting for client bytes with a slot reserved; a closed
        // channel alone would not wake it.
        if let Some(inner) = self.inner.take() {
            drop(inner.rx);
            inner.shared.waker.wake();
        }
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if !inner.shared.wanted.load(Ordering::Relaxed) {
            inner.shared.wanted.store(true, Ordering::Release);
            inner.shared.waker.wake();
        }
        match inner.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(data))) => {
                if let Some(left) = &mut inner.left {
                    *left = left.saturating_sub(data.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => {
                this.inner = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                let complete = inner.shared.complete.load(Ordering::Acquire);
                this.inner = None;
                if complete {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(BodyError::Truncated)))
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            None => SizeHint::with_exact(0),
            Some(Inner { left: Some(n), .. }) => SizeHint::with_exact(*n),
            Some(_) => SizeHint::default(),
        }
    }
}
