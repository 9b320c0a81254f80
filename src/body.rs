//! The one body type that flows through the gateway, and the streaming size limit.
//!
//! Bodies are streamed both ways; nothing here buffers. [`Limited`] counts request bytes as
//! they pass and fails the stream at the limit, flagging it so the proxy can answer 413
//! rather than 502 when the upstream send fails because of it.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request and response bodies inside the gateway.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

/// Wraps any body with the gateway's error type.
pub fn boxed<B>(b: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

/// [`boxed`] for a body whose errors already are [`BoxError`]: without the mapping layer,
/// which cost a frame's move and a match on every poll of every proxied response.
pub fn boxed_plain<B>(b: B) -> Body
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Send + 'static,
{
    UnsyncBoxBody::new(b)
}

/// The stream was cut because it passed the limit.
#[derive(Debug, thiserror::Error)]
#[error("body larger than {0} bytes")]
pub struct TooLarge(pub u64);

/// What a [`Limited`] body saw, shared with the access log.
#[derive(Debug, Default)]
pub struct BodyStats {
    pub bytes: AtomicU64,
    pub tripped: AtomicBool,
    /// The client's body itself failed (a malformed chunk, the client gone).
    pub broken: AtomicBool,
}

pin_project_lite::pin_project! {
    /// A body that errors once more than `limit` bytes have passed.
    pub struct Limited<B> {
        #[pin]
        inner: B,
        seen: u64,
        limit: u64,
        stats: Arc<BodyStats>,
    }
}

impl<B> Limited<B> {
    pub fn new(inner: B, limit: u64, stats: Arc<BodyStats>) -> Self {
        Limited {
            inner,
            seen: 0,
            limit,
            stats,
        }
    }
}

impl<B> HttpBody for Limited<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.seen += data.len() as u64;
                    this.stats.bytes.store(*this.seen, Ordering::Relaxed);
                    if *this.seen > *this.limit {
                        this.stats.tripped.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(TooLarge(*this.limit)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.stats.broken.store(true, Ordering::Release);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// The HTTP/1 connection has a lingering close of its own (`server/h1`, 2 s / 1 MiB) for a
// refused head or a body left unread, where the connection is shut anyway; this one is for
// a request the gateway answered early while the body may still all arrive, so the
// connection may live on, and it waits longer for the body to end.

/// How much of a refused HTTP/1 request body [`linger`] reads and throws away, at most.
pub const LINGER_BYTES: u64 = 16 * 1024 * 1024;
/// How long [`linger`] keeps reading a refused body, at most.
pub const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads and discards what is left of a refused request body, in its own task, so the
/// client gets the early answer (a 413) instead of a reset.
///
/// A server that answers before reading the body and then closes makes the kernel reset the
/// connection while the client is still writing, and many clients (hyper, reqwest, browsers)
/// then report a broken pipe and never read the answer. nginx avoids this with a "lingering
/// close"; this is the same idea, bounded by [`LINGER_BYTES`] and [`LINGER_TIME`]: past
/// either, the body is dropped and the connection closes as before. When the whole body is
/// drained the HTTP/1 connection stays usable for the next request.
pub fn linger<B>(body: B)
where
    B: HttpBody<Data = Bytes> + Send + 'static,
{
    tokio::spawn(async move {
        let mut body = std::pin::pin!(body);
        let mut seen = 0u64;
        let drain = async {
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    seen += d.len() as u64;
                    if seen > LINGER_BYTES {
                        break;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limited_trips_past_the_limit() {
        let stats = Arc::new(BodyStats::default());
        let b = Limited::new(
            Full::new(Bytes::from_static(b"hello world")),
            5,
            stats.clone(),
        );
        assert!(b.collect().await.is_err());
        assert!(stats.tripped.load(Ordering::Acquire));

        let stats = Arc::new(BodyStats::default());
        let b = Limited::new(Full::new(Bytes::from_static(b"hello")), 5, stats.clone());
        assert_eq!(b.collect().await.unwrap().to_bytes(), "hello");
        assert!(!stats.tripped.load(Ordering::Acquire));
        assert_eq!(stats.bytes.load(Ordering::Relaxed), 5);
    }
}
