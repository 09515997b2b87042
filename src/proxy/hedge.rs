//! Request hedging (`hedge_after`): when the first attempt of a request
//! that may be hedged ([`super::traffic::hedge_after`]: a safe method and
//! no body) has not ended after the delay, a second attempt goes to
//! another instance beside it, if one is free and the retry budget grants
//! a retry; the first response head wins, and the other attempt
//! is cancelled: its future is dropped, which drops its connection (an
//! HTTP/1.1 connection closes, it is never pooled half-read; an HTTP/2
//! stream is reset) and its in-flight guard. An attempt that fails while
//! the other still runs is reported as usual, and the other decides.
//!
//! The cancelled attempt's waiting time is a lower bound of that
//! instance's latency: it feeds `p2c_ewma` and latency outlier detection,
//! so a slow instance that is always hedged over still looks slow.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::attempt::{self, Exchange, Outcome, Settled, Tally};
use super::retry;
use crate::balance::{pick_with, Choice, Tried};
use crate::clock;
use crate::registry::{InFlightGuard, ServiceEntry};

/// One hedged attempt of a request to `service`.
pub(crate) struct Race<'a> {
    pub service: &'a Arc<ServiceEntry>,
    pub choice: &'a Choice,
    pub delay: Duration,
    pub counting: bool,
}

/// Which of the two attempts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    First,
    Second,
}

impl Race<'_> {
    /// Attempt `n` on `guard`'s instance through `exchange`, hedged after
    /// the delay through `twin` on another instance; `n` and `tried`
    /// count the hedge. Returns what the deciding attempt settled and the
    /// guard of its instance.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run<E: Exchange>(
        self,
        exchange: &mut E,
        mut twin: E,
        guard: InFlightGuard,
        tried: &mut Tried,
        n: &mut u32,
        trail: &mut Option<String>,
        tally: &mut Tally,
    ) -> (Settled<E::Answer>, InFlightGuard) {
        let service = self.service;
        let first_n = *n;
        let sent = Instant::now();
        let mut hedged_at = sent;
        let mut second: Option<InFlightGuard> = None;
        // The attempts' futures live in this block only: whichever is
        // still running when it ends is dropped, that is cancelled.
        let (side, outcome, loser_waited) = {
            let first = exchange.attempt(guard.instance());
            tokio::pin!(first);
            let early = tokio::select! {
                outcome = &mut first => Some(outcome),
                () = tokio::time::sleep(self.delay) => None,
            };
            // Another instance, then the budget (a hedge is a retry): no
            // token is spent when there is nowhere to hedge to.
            if early.is_none() {
                second = pick_with(service, self.choice, clock::now_ms(), tried)
                    .ok()
                    .filter(|_| retry::take(service, clock::now_ms()));
            }
            match (early, &second) {
                (Some(outcome), _) => (Side::First, outcome, None),
                (None, None) => (Side::First, first.await, None),
                (None, Some(other_guard)) => {
                    *n += 1;
                    tried.add(other_guard.instance());
                    tally.attempts = *n;
                    if self.counting {
                        service.live().stats().retried();
                    }
                    tracing::debug!(service = %service.name(), first = %guard.instance().addr(), hedge = %other_guard.instance().addr(), "hedging a slow attempt");
                    hedged_at = Instant::now();
                    let other = twin.attempt(other_guard.instance());
                    tokio::pin!(other);
                    let (side, outcome) = tokio::select! {
                        o = &mut first => (Side::First, o),
                        o = &mut other => (Side::Second, o),
                    };
                    if decides(&outcome) {
                        let waited = match side {
                            Side::First => hedged_at.elapsed(),
                            Side::Second => sent.elapsed(),
                        };
                        (side, outcome, Some(waited))
                    } else {
                        // Failed while the other still runs: report it;
                        // the other decides.
                        let (inst, at, num) = match side {
                            Side::First => (guard.instance(), sent, first_n),
                            Side::Second => (other_guard.instance(), hedged_at, *n),
                        };
                        let _ = attempt::settle(service, num, inst, at, outcome, trail, tally);
                        match side {
                            Side::First => (Side::Second, other.await, None),
                            Side::Second => (Side::First, first.await, None),
                        }
                    }
                }
            }
        };
        let second_n = *n;
        let (winner, loser, at, num) = match (side, second) {
            (Side::First, loser) => (guard, loser, sent, first_n),
            (Side::Second, Some(second)) => (second, Some(guard), hedged_at, second_n),
            (Side::Second, None) => unreachable!("the second attempt has a guard"),
        };
        if let (Some(waited), Some(lost)) = (loser_waited, &loser) {
            let lost = lost.instance();
            attempt::observe_latency(service, lost, waited);
            let loser_n = if side == Side::First {
                second_n
            } else {
                first_n
            };
            attempt::note(trail, loser_n, lost.addr(), format_args!("cancelled"));
        }
        drop(loser);
        let settled = attempt::settle(service, num, winner.instance(), at, outcome, trail, tally);
        (settled, winner)
    }
}

/// Whether an outcome ends the race: a response head, or the client gone.
fn decides<A>(outcome: &Outcome<A>) -> bool {
    matches!(outcome, Outcome::Answered(..) | Outcome::Abandoned)
}
