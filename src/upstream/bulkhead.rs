//! The bulkhead of an upstream: at most `max_concurrent` requests in flight to it, so one
//! slow upstream cannot take every connection, task and socket of the gateway with it.
//!
//! Beyond the limit a request is refused at once (503), or, with a `queue`, waits for a
//! free slot for at most `queue.timeout` while no more than `queue.size` others wait. A
//! permit is held from before the first try until the response body is done (or dropped).
//!
//! Built on tokio's semaphore: taking a free permit is one atomic compare-and-swap; only
//! the opt-in queue ever waits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Bulkhead {
    sem: Arc<Semaphore>,
    pub max: usize,
    queue: Option<(usize, Duration)>,
    waiting: AtomicUsize,
}

/// Every slot is taken (and the queue is full or its wait ran out).
#[derive(Debug, thiserror::Error)]
#[error("the upstream has {0} requests in flight")]
pub struct Full(pub usize);

impl Bulkhead {
    pub fn new(max: usize, queue: Option<(usize, Duration)>) -> Bulkhead {
        Bulkhead {
            sem: Arc::new(Semaphore::new(max)),
            max,
            queue,
            waiting: AtomicUsize::new(0),
        }
    }

    /// Same limits: a reload that did not change them keeps this bulkhead (and its permits).
    pub fn same_limits(&self, max: usize, queue: Option<(usize, Duration)>) -> bool {
        self.max == max && self.queue == queue
    }

    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, Full> {
        if let Ok(p) = self.sem.clone().try_acquire_owned() {
            return Ok(p);
        }
        let Some((size, timeout)) = self.queue else {
            return Err(Full(self.max));
        };
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= size {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Full(self.max));
        }
        let got = tokio::time::timeout(timeout, self.sem.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match got {
            Ok(Ok(p)) => Ok(p),
            _ => Err(Full(self.max)),
        }
    }

    pub fn in_use(&self) -> usize {
        self.max.saturating_sub(self.sem.available_permits())
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_beyond_the_limit() {
        let b = Bulkhead::new(2, None);
        let p1 = b.acquire().await.unwrap();
        let _p2 = b.acquire().await.unwrap();
        assert!(b.acquire().await.is_err());
        assert_eq!(b.in_use(), 2);
        drop(p1);
        assert!(b.acquire().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn queue_waits_then_gives_up() {
        let b = Arc::new(Bulkhead::new(1, Some((1, Duration::from_millis(100)))));
        let p = b.acquire().await.unwrap();
        // One may wait; a second waiter is refused at once.
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.acquire().await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        assert_eq!(b.waiting(), 1);
        assert!(b.acquire().await.is_err());
        // The slot frees within the wait: the waiter gets it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(p);
        assert!(waiter.await.unwrap().is_ok());
        // Nobody frees the slot: the wait times out.
        let _p = b.acquire().await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(b.acquire().await.is_err());
        assert_eq!(started.elapsed(), Duration::from_millis(100));
    }
}
