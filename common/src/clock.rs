//! The clock behind every time decision of the servers (report time checks, leases, retries,
//! key rotation, metrics' ages), injectable so that tests can move time: [`SystemClock`] in
//! production, [`TestClock`] in tests, which stands still until told to move.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where the servers read the time from.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Seconds since the Unix epoch.
    fn now_seconds(&self) -> u64;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_seconds(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }
}

/// A clock that tests set and move; clones share one time.
#[derive(Clone, Debug)]
pub struct TestClock(Arc<AtomicU64>);

impl TestClock {
    /// A clock at `seconds` since the Unix epoch.
    pub fn at(seconds: u64) -> Self {
        Self(Arc::new(AtomicU64::new(seconds)))
    }

    /// A clock at the system's time now, standing still from then on.
    pub fn now() -> Self {
        Self::at(SystemClock.now_seconds())
    }

    pub fn set(&self, seconds: u64) {
        self.0.store(seconds, Ordering::SeqCst);
    }

    pub fn advance(&self, seconds: u64) {
        self.0.fetch_add(seconds, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now_seconds(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A shared clock, as the servers hold one.
pub type SharedClock = Arc<dyn Clock>;

/// The system clock, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_clock_moves_only_when_told_and_clones_share_it() {
        let c = TestClock::at(1_000);
        let shared: SharedClock = Arc::new(c.clone());
        assert_eq!(shared.now_seconds(), 1_000);
        c.advance(3_600);
        assert_eq!(shared.now_seconds(), 4_600);
        c.set(10);
        assert_eq!(shared.now_seconds(), 10);
        assert!(SystemClock.now_seconds() > 1_700_000_000, "the system clock reads the wall time");
    }
}
