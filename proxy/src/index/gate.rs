//! A cap on concurrent indexing jobs: at most `max_jobs` run, at most
//! `max_waiting` more wait for a slot, and any job beyond that is refused at
//! once (so a flood of index requests neither runs nor queues unbounded).

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Semaphore, SemaphorePermit};

/// A job was refused: every slot is taken and the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{max_jobs} indexing jobs run and {max_waiting} wait already (`max_jobs`, `max_waiting` in the proxy's [index] config); retry later"
)]
pub struct GateFull {
    /// Jobs that may run at once.
    pub max_jobs: usize,
    /// Jobs that may wait for a slot.
    pub max_waiting: usize,
}

/// The gate every indexing job passes.
#[derive(Debug)]
pub struct JobGate {
    slots: Semaphore,
    max_jobs: usize,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// Counts a waiting job for as long as it waits (also when its future is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl JobGate {
    /// A gate letting `max_jobs` (at least 1) run and `max_waiting` wait.
    pub fn new(max_jobs: usize, max_waiting: usize) -> Self {
        let max_jobs = max_jobs.max(1);
        JobGate {
            slots: Semaphore::new(max_jobs),
            max_jobs,
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// Takes a slot, waiting for one if the queue has room; the job runs
    /// while the permit lives.
    pub async fn enter(&self) -> Result<SemaphorePermit<'_>, GateFull> {
        let full = GateFull {
            max_jobs: self.max_jobs,
            max_waiting: self.max_waiting,
        };
        if let Ok(permit) = self.slots.try_acquire() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(full);
        }
        let _waiting = Waiting(&self.waiting);
        // The semaphore is never closed.
        self.slots.acquire().await.map_err(|_| full)
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.max_jobs - self.slots.available_permits()
    }

    /// Jobs waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn jobs_beyond_the_slots_wait_and_beyond_the_queue_are_refused() {
        let gate = Arc::new(JobGate::new(2, 1));
        let a = gate.enter().await.unwrap();
        let _b = gate.enter().await.unwrap();
        assert_eq!(gate.running(), 2);
        let g = gate.clone();
        let third = tokio::spawn(async move {
            let _p = g.enter().await.unwrap();
            g.running()
        });
        while gate.waiting() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(!third.is_finished());
        // The queue (1) is full: the fourth is refused at once.
        let err = gate.enter().await.unwrap_err();
        assert_eq!(
            err,
            GateFull {
                max_jobs: 2,
                max_waiting: 1
            }
        );
        assert!(err.to_string().contains("max_waiting"), "{err}");
        drop(a);
        assert_eq!(third.await.unwrap(), 2);
        assert_eq!((gate.running(), gate.waiting()), (1, 0));
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_the_queue() {
        let gate = JobGate::new(1, 1);
        let _a = gate.enter().await.unwrap();
        let timed_out = tokio::time::timeout(Duration::from_millis(20), gate.enter()).await;
        assert!(timed_out.is_err());
        assert_eq!(gate.waiting(), 0);
        // Its place in the queue is free again.
        let again = tokio::time::timeout(Duration::from_millis(20), gate.enter()).await;
        assert!(again.is_err(), "still waiting, not refused");
    }
}
