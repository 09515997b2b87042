//! The per-service queue in front of `max_in_flight`: a request that finds
//! every candidate instance at its limit waits, if fewer than
//! `queue.size` already wait, until one of the service's requests ends
//! or `queue.timeout` passes; then it is refused (the proxy answers 503
//! with `Retry-After`). The waiters are counted in the service's live
//! state, and a finished request wakes one of them; each also looks again
//! every [`RECHECK`], which bounds the cost of a wake-up that went to a
//! waiter of another subset.

use std::time::Duration;

use tokio::time::Instant;

use super::{pick_with, Choice, Tried, Unpicked};
use crate::clock;
use crate::registry::{InFlightGuard, ServiceEntry, Waiters};

/// Longest a waiter sleeps without looking again.
const RECHECK: Duration = Duration::from_millis(50);

/// Picks like [`pick_with`], waiting in the service's queue while every
/// candidate is at its limit.
pub async fn acquire(
    service: &ServiceEntry,
    choice: &Choice,
    tried: &Tried,
) -> Result<InFlightGuard, Unpicked> {
    match pick_with(service, choice, clock::now_ms(), tried) {
        Err(Unpicked::Saturated) => {}
        done => return done,
    }
    let queue = service.policy().traffic.queue;
    let waiters = service.live().waiters();
    if queue.size == 0 || !waiters.join(queue.size as usize) {
        return Err(Unpicked::Saturated);
    }
    let _leave = Leave(waiters);
    let deadline = Instant::now() + queue.timeout;
    loop {
        let notified = waiters.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match pick_with(service, choice, clock::now_ms(), tried) {
            Err(Unpicked::Saturated) => {}
            done => return done,
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Unpicked::Saturated);
        }
        let _ = tokio::time::timeout_at(deadline.min(now + RECHECK), notified).await;
    }
}

/// Leaves the queue when the wait ends, however it ends.
struct Leave<'a>(&'a Waiters);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}
