//! A recent reading of the monotonic clock, for times that need seconds rather than
//! nanoseconds: a connection's header deadline, when a pooled connection went idle.
//!
//! Why: a clock read is a vDSO call, and in a virtual machine it was the single largest
//! user-space symbol of a proxied request (1.3% of the proxy core's time under `perf`,
//! about 35 ns a read, several reads a request). The reads that time a request stay exact
//! ([`now`]); the coarse ones ([`recent`]) reuse the last reading this thread made.
//!
//! How stale a reading can be: the binary's runtime calls [`tick`] each time a worker
//! thread wakes from its park (`on_thread_unpark`), and every exact read refreshes it, so
//! a recent reading is at most as old as the work this thread did since it last woke or
//! timed a request. A thread the hook never ran on (tests' runtimes, blocking threads)
//! keeps no reading and [`recent`] reads the clock: never a stale answer there.

use std::cell::Cell;
use std::time::Instant;

thread_local! {
    /// `None` until [`tick`] runs on this thread: only hooked threads cache.
    static RECENT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The clock, exactly; also the reading [`recent`] answers next on a hooked thread.
#[inline]
pub fn now() -> Instant {
    let t = Instant::now();
    RECENT.with(|r| {
        if r.get().is_some() {
            r.set(Some(t));
        }
    });
    t
}

/// This thread's last reading where it keeps one, else the clock.
#[inline]
pub fn recent() -> Instant {
    RECENT.with(|r| r.get()).unwrap_or_else(Instant::now)
}

/// [`recent`] on tokio's clock (the type its timers take). Where no reading is kept it is
/// tokio's own `now`, so a test that pauses tokio's time still sees the paused clock.
#[inline]
pub fn recent_tokio() -> tokio::time::Instant {
    match RECENT.with(|r| r.get()) {
        Some(t) => tokio::time::Instant::from_std(t),
        None => tokio::time::Instant::now(),
    }
}

/// Takes a reading for this thread and makes it keep readings from now on: the runtime's
/// unpark hook.
pub fn tick() {
    RECENT.with(|r| r.set(Some(Instant::now())));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_unhooked_thread_always_reads_the_clock() {
        std::thread::spawn(|| {
            let a = recent();
            std::thread::sleep(Duration::from_millis(5));
            assert!(recent() >= a + Duration::from_millis(5));
            let _ = now();
            std::thread::sleep(Duration::from_millis(5));
            // `now` did not make it start caching.
            assert!(recent().elapsed() < Duration::from_millis(5));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_hooked_thread_answers_its_last_reading_until_the_next() {
        std::thread::spawn(|| {
            tick();
            let first = recent();
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(recent(), first, "no reading between: the cached one");
            let exact = now();
            assert!(exact >= first + Duration::from_millis(5));
            assert_eq!(recent(), exact, "an exact read refreshes it");
            std::thread::sleep(Duration::from_millis(5));
            tick();
            assert!(recent() >= exact + Duration::from_millis(5));
        })
        .join()
        .unwrap();
    }
}
