//! The attempt loop both forwarding paths share: pick an instance, try it,
//! report the outcome to passive health and the debug trail, and retry on
//! another instance while the request allows it and the retry budget lasts.
//! How one attempt is made (hyper client or the HTTP/1.1 fast path) is the
//! caller's [`Exchange`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::error::ProxyError;
use super::retry;
use crate::balance::{queue, Choice, Tried, Unpicked};
use crate::clock;
use crate::config::Balance;
use crate::health::passive::{self, Failure};
use crate::registry::stats::{self, AttemptFailure};
use crate::registry::{InFlightGuard, InstanceState, ServiceEntry};

/// What the attempts of one request came to, for the metrics and the
/// access log.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    /// Attempts made (instances tried).
    pub attempts: u32,
    /// From sending to the instance that answered to its response head.
    pub upstream: Option<Duration>,
}

/// Whether `method` may be repeated with the same effect as one request
/// (RFC 9110 section 9.2.2): only these are resent after being written.
pub(crate) fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// How one attempt on one instance ended.
pub(crate) enum Outcome<A> {
    /// The instance sent a response head with this status.
    Answered(A, u16),
    /// No response.
    Failed {
        error: String,
        /// What to hold against the instance, if anything.
        failure: Option<Failure>,
        /// Whether the request may still go to another instance.
        retry: bool,
    },
    /// No response head within the response-header timeout.
    TimedOut,
    /// The instance answered with a head that cannot be relayed.
    BadResponse(&'static str),
    /// The client went away: nothing to answer, nobody to blame.
    Abandoned,
}

/// One way of making attempts for a request.
pub(crate) trait Exchange {
    /// What an answered attempt yields.
    type Answer;

    /// Tries `instance` once.
    fn attempt(&mut self, instance: &InstanceState) -> impl Future<Output = Outcome<Self::Answer>>;

    /// When the request may be hedged: the delay after which a second
    /// attempt starts beside a first one still waiting, and the exchange
    /// that makes it. `None` (the default): never.
    fn hedge(&self) -> Option<(Duration, Self)>
    where
        Self: Sized,
    {
        None
    }
}

/// Tries instances of `service` until one answers, the attempts or the
/// retry budget run out, or a failure makes retrying unsafe. The answer
/// comes with the in-flight guard of the instance that gave it. A request
/// the exchange may hedge gets a second attempt beside the first when the
/// first has not ended after the hedge delay ([`super::hedge`]).
pub(crate) async fn run<E: Exchange>(
    service: &Arc<ServiceEntry>,
    choice: &Choice,
    exchange: &mut E,
    trail: &mut Option<String>,
    tally: &mut Tally,
) -> Result<(E::Answer, InFlightGuard), ProxyError> {
    let policy = service.policy();
    let counting = stats::enabled();
    let mut tried = Tried::default();
    let mut last_error: Option<String> = None;
    let mut n = 0;
    while n < policy.max_attempts {
        n += 1;
        if n > 1 && !retry::take(service, clock::now_ms()) {
            last_error = Some(format!(
                "{}; retry budget exhausted",
                last_error.unwrap_or_default()
            ));
            break;
        }
        let guard = match queue::acquire(service, choice, &tried).await {
            Ok(guard) => guard,
            Err(Unpicked::Unavailable) => break,
            Err(Unpicked::Saturated) => {
                let timeout = policy.traffic.queue.timeout;
                return Err(ProxyError::Saturated {
                    service: service.name().clone(),
                    retry_after: Duration::from_secs(timeout.as_secs().max(1)),
                });
            }
        };
        tried.add(guard.instance());
        tally.attempts = n;
        if n > 1 && counting {
            service.live().stats().retried();
        }
        let hedge = if n < policy.max_attempts {
            exchange.hedge()
        } else {
            None
        };
        let (settled, guard) = match hedge {
            None => {
                let sent = tokio::time::Instant::now();
                let outcome = exchange.attempt(guard.instance()).await;
                let settled = settle(service, n, guard.instance(), sent, outcome, trail, tally);
                (settled, guard)
            }
            Some((delay, twin)) => {
                let race = super::hedge::Race {
                    service,
                    choice,
                    delay,
                    counting,
                };
                race.run(exchange, twin, guard, &mut tried, &mut n, trail, tally)
                    .await
            }
        };
        match settled {
            Settled::Answered(answer) => return Ok((answer, guard)),
            Settled::Failed(e) => return Err(e),
            Settled::Next { error, retry } => {
                last_error = Some(error);
                if !retry {
                    break;
                }
            }
        }
    }
    Err(match last_error {
        None => ProxyError::NoInstance {
            service: service.name().clone(),
            why: why_unavailable(service, clock::now_ms()),
        },
        Some(detail) => ProxyError::Unreachable {
            service: service.name().clone(),
            detail,
        },
    })
}

/// What an attempt's outcome means for the request.
pub(crate) enum Settled<A> {
    /// Relay this answer.
    Answered(A),
    /// Answer this error.
    Failed(ProxyError),
    /// Another instance may be tried (`retry`), or not.
    Next { error: String, retry: bool },
}

/// Reports attempt `n` on `instance`, sent at `sent`, to the metrics,
/// the latency records, passive health and the debug trail, and says what
/// it means for the request.
pub(crate) fn settle<A>(
    service: &ServiceEntry,
    n: u32,
    instance: &InstanceState,
    sent: tokio::time::Instant,
    outcome: Outcome<A>,
    trail: &mut Option<String>,
    tally: &mut Tally,
) -> Settled<A> {
    let policy = service.policy();
    let addr = instance.addr();
    if stats::enabled() {
        count_failure(instance, &outcome);
    }
    if matches!(outcome, Outcome::Answered(..) | Outcome::TimedOut) {
        observe_latency(service, instance, sent.elapsed());
    }
    if policy.outlier.success_rate.min_requests > 0 {
        let ok = match &outcome {
            Outcome::Answered(_, status) => Some(*status < 500),
            Outcome::Abandoned => None,
            Outcome::Failed { failure, .. } => failure.map(|_| false),
            Outcome::TimedOut | Outcome::BadResponse(_) => Some(false),
        };
        if let Some(ok) = ok {
            instance.count_outcome(ok);
        }
    }
    match outcome {
        Outcome::Answered(answer, status) => {
            let ttfb = sent.elapsed();
            tally.upstream = Some(ttfb);
            if stats::enabled() {
                service.live().stats().upstream_ttfb.observe(ttfb);
            }
            if status >= 500 {
                passive::on_failure(service, instance, Failure::Status5xx, clock::now_ms());
            } else {
                passive::on_success(instance);
            }
            note(trail, n, addr, format_args!("{status}"));
            Settled::Answered(answer)
        }
        Outcome::BadResponse(detail) => {
            passive::on_failure(service, instance, Failure::Reset, clock::now_ms());
            note(trail, n, addr, format_args!("bad response: {detail}"));
            Settled::Failed(ProxyError::BadResponse {
                service: service.name().clone(),
                addr,
                detail,
            })
        }
        Outcome::Abandoned => {
            note(trail, n, addr, format_args!("client gone"));
            Settled::Failed(ProxyError::ClientGone)
        }
        Outcome::TimedOut => {
            passive::on_failure(service, instance, Failure::Timeout, clock::now_ms());
            note(trail, n, addr, format_args!("timeout"));
            Settled::Failed(ProxyError::Timeout {
                service: service.name().clone(),
                addr,
                timeout: policy.timeouts.response_header,
            })
        }
        Outcome::Failed {
            error,
            failure,
            retry,
        } => {
            if let Some(failure) = failure {
                passive::on_failure(service, instance, failure, clock::now_ms());
            }
            tracing::debug!(service = %service.name(), instance = %addr, %error, "attempt failed");
            note(trail, n, addr, format_args!("{error}"));
            Settled::Next {
                error: format!("{addr}: {error}"),
                retry,
            }
        }
    }
}

/// Feeds a response time (or a lower bound of one: a timeout, a hedged
/// attempt cancelled) to what uses it: `p2c_ewma`'s average and latency
/// outlier detection.
pub(crate) fn observe_latency(service: &ServiceEntry, instance: &InstanceState, took: Duration) {
    let policy = service.policy();
    if service.balance() == Balance::P2cEwma {
        let decay = policy.traffic.p2c.decay;
        instance.latency().observe(took, clock::now_ms(), decay);
    }
    if policy.outlier.latency.min_requests > 0 {
        instance.latency_window().record(took);
    }
}

/// [`run`] within the service's overall request deadline and the
/// request's own (`caller`, a gRPC call's `grpc-timeout`), whichever is
/// shorter.
pub(crate) async fn run_with_deadline<E: Exchange>(
    service: &Arc<ServiceEntry>,
    choice: &Choice,
    exchange: &mut E,
    trail: &mut Option<String>,
    caller: Option<Duration>,
    tally: &mut Tally,
) -> Result<(E::Answer, InFlightGuard), ProxyError> {
    let run = run(service, choice, exchange, trail, tally);
    let deadline = match (service.policy().timeouts.request, caller) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match deadline {
        None => run.await,
        Some(deadline) => tokio::time::timeout(deadline, run)
            .await
            .unwrap_or_else(|_| {
                Err(ProxyError::Deadline {
                    service: service.name().clone(),
                    timeout: deadline,
                })
            }),
    }
}

/// Counts a failed attempt against its instance.
#[inline]
fn count_failure<A>(instance: &InstanceState, outcome: &Outcome<A>) {
    let how = match outcome {
        Outcome::Answered(..) | Outcome::Abandoned => return,
        Outcome::TimedOut => AttemptFailure::Timeout,
        Outcome::BadResponse(_) => AttemptFailure::Reset,
        Outcome::Failed {
            failure: Some(Failure::Connect),
            ..
        } => AttemptFailure::Connect,
        Outcome::Failed { .. } => AttemptFailure::Reset,
    };
    instance.stats().failed(how);
}

/// Why no instance of `service` can take a request: how many it has, and
/// how many of them are unhealthy, ejected or draining. Counted only when
/// a request fails this way.
fn why_unavailable(service: &ServiceEntry, now_ms: u64) -> String {
    let members = service.members();
    if members.is_empty() {
        return "the service has no instances".to_owned();
    }
    let (mut unhealthy, mut ejected, mut draining) = (0, 0, 0);
    for m in members {
        let i = &m.instance;
        if !i.takes_new_requests() {
            draining += 1;
        } else if i.is_ejected(now_ms) {
            ejected += 1;
        } else if !i.is_available(now_ms) {
            unhealthy += 1;
        }
    }
    let n = members.len();
    let s = if n == 1 { "" } else { "s" };
    format!("{n} instance{s}: {unhealthy} unhealthy, {ejected} ejected, {draining} draining")
}

/// Appends one attempt to the debug trail, when it is kept.
pub(crate) fn note(
    trail: &mut Option<String>,
    n: u32,
    addr: SocketAddr,
    outcome: std::fmt::Arguments<'_>,
) {
    use std::fmt::Write;
    if let Some(t) = trail {
        if !t.is_empty() {
            t.push_str("; ");
        }
        let _ = write!(t, "attempt {n} {addr} {outcome}");
    }
}
