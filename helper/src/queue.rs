//! The helper's aggregation work queue. At most `workers` aggregation requests verify at once; a
//! request that finds `async_threshold` or more admitted before it is answered at once with an
//! empty body and handled in the background (DAP-18 "Asynchronous Request Handling"), so that the
//! leader's request never waits out its timeout behind a long queue; one that finds `max_queued`
//! is turned away with 503 and `Retry-After`. Below the threshold requests are answered
//! synchronously, as small jobs on an idle helper should be.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Sizes of the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Requests verifying at once.
    pub workers: usize,
    /// Requests admitted (verifying or waiting) from which on a new one is deferred.
    pub async_threshold: usize,
    /// Requests admitted from which on a new one is refused.
    pub max_queued: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self { workers, async_threshold: 2 * workers, max_queued: 64 }
    }
}

/// The queue of one helper process.
#[derive(Clone)]
pub struct WorkQueue {
    permits: Arc<Semaphore>,
    admitted: Arc<AtomicUsize>,
    limits: QueueLimits,
}

/// How a request is to be handled.
pub enum Admission {
    /// Synchronously.
    Now(Ticket),
    /// Asynchronously: answered at once, handled in the background.
    Deferred(Ticket),
    /// Not at all: the queue is full.
    Full,
}

/// A place in the queue, given up when dropped.
pub struct Ticket {
    permits: Arc<Semaphore>,
    admitted: Arc<AtomicUsize>,
}

impl Ticket {
    /// Runs `work` once a worker is free: the CPU-bound part of a request. (The rest, its
    /// database commit above all, runs outside, so that the CPUs verify the next request
    /// meanwhile.)
    pub async fn on_worker<T>(&self, work: impl Future<Output = T>) -> T {
        let _worker = self.permits.clone().acquire_owned().await;
        work.await
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

impl WorkQueue {
    pub fn new(limits: QueueLimits) -> Self {
        Self { permits: Arc::new(Semaphore::new(limits.workers.max(1))), admitted: Arc::default(), limits }
    }

    /// Admits a request, or not.
    pub fn admit(&self) -> Admission {
        let before = self.admitted.fetch_add(1, Ordering::SeqCst);
        let ticket = Ticket { permits: self.permits.clone(), admitted: self.admitted.clone() };
        if before >= self.limits.max_queued {
            drop(ticket);
            Admission::Full
        } else if before >= self.limits.async_threshold {
            Admission::Deferred(ticket)
        } else {
            Admission::Now(ticket)
        }
    }

    /// Requests admitted and not finished.
    pub fn len(&self) -> usize {
        self.admitted.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_go_synchronous_then_deferred_then_refused() {
        let q = WorkQueue::new(QueueLimits { workers: 1, async_threshold: 2, max_queued: 3 });
        let kinds = |a: &Admission| match a {
            Admission::Now(_) => "now",
            Admission::Deferred(_) => "deferred",
            Admission::Full => "full",
        };
        let held: Vec<Admission> = (0..5).map(|_| q.admit()).collect();
        assert_eq!(held.iter().map(kinds).collect::<Vec<_>>(), ["now", "now", "deferred", "full", "full"]);
        assert_eq!(q.len(), 3, "refusals hold no place");
        drop(held);
        assert!(q.is_empty(), "finished requests give their places back");
        // Workers bound the work that runs at once.
        let q = WorkQueue::new(QueueLimits { workers: 1, async_threshold: 10, max_queued: 10 });
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let Admission::Now(ticket) = q.admit() else { panic!("room") };
            let (running, most) = (running.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                ticket
                    .on_worker(async {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
        assert!(q.is_empty());
    }
}
