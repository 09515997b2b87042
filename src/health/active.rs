//! Active health checks: one background task per checked instance, started
//! and stopped by a supervisor that follows the published snapshots. Checks
//! never run on the request path.
//!
//! State machine per instance: `unknown` (checks configured, none run yet)
//! becomes `healthy` on its first pass or `unhealthy` after
//! `unhealthy_threshold` failures; `healthy` becomes `unhealthy` after
//! `unhealthy_threshold` consecutive failures; `unhealthy` becomes `healthy`
//! after `healthy_threshold` consecutive passes (and starts its slow-start
//! ramp). Each transition is logged once, with the reason.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::clock;
use crate::config::{CheckKind, HealthCheck, Protocol, Upstream};
use crate::registry::{Health, InstanceKey, InstanceState, Registry, ServiceEntry};
use crate::tls::{Alpn, Negotiated};

/// How often panic-mode flags are refreshed, since ejections end by time
/// rather than by an event.
const PANIC_REFRESH: Duration = Duration::from_millis(250);

/// Starts the supervisor: it keeps one checker per instance of every
/// service that has `[services.NAME.health]`, and refreshes panic flags
/// (and has the registry apply the panic-mode rule on every rebuild).
/// Ends when the registry is dropped.
pub fn spawn_supervisor(registry: &Arc<Registry>) -> JoinHandle<()> {
    // From now on every rebuild applies the panic-mode rule before it
    // publishes; the services already published get it now.
    registry.reassess_with(super::panic::update);
    let now = clock::now_ms();
    for service in registry.load().services() {
        super::panic::update(service, now);
    }
    let weak = Arc::downgrade(registry);
    let versions = registry.watch();
    tokio::spawn(supervise(weak, versions))
}

struct Checker {
    check: HealthCheck,
    upstream: Upstream,
    slow_start: Duration,
    task: JoinHandle<()>,
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn supervise(registry: Weak<Registry>, mut versions: tokio::sync::watch::Receiver<u64>) {
    let mut checkers: HashMap<InstanceKey, Checker> = HashMap::new();
    let mut seen = u64::MAX;
    let mut refresh = tokio::time::interval(PANIC_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = true;
    // When each service's success rates, and latencies, were last compared.
    let mut judged: HashMap<Arc<str>, u64> = HashMap::new();
    let mut timed: HashMap<Arc<str>, u64> = HashMap::new();
    loop {
        let Some(reg) = registry.upgrade() else {
            return;
        };
        let snap = reg.load_full();
        drop(reg);
        let now = clock::now_ms();
        if snap.version() != seen {
            seen = snap.version();
            let mut wanted: HashMap<InstanceKey, Checker> = HashMap::new();
            for service in snap.services() {
                let Some(check) = &service.policy().health else {
                    continue;
                };
                let slow_start = service.policy().slow_start;
                let upstream = &service.policy().upstream;
                for m in service.members() {
                    let key = m.instance.key().clone();
                    let kept = checkers.remove(&key).filter(|c| {
                        &c.check == check
                            && &c.upstream == upstream
                            && c.slow_start == slow_start
                            && !c.task.is_finished()
                    });
                    let checker = kept.unwrap_or_else(|| Checker {
                        check: check.clone(),
                        upstream: upstream.clone(),
                        slow_start,
                        task: tokio::spawn(check_loop(
                            registry.clone(),
                            m.instance.clone(),
                            (check.clone(), upstream.clone()),
                            slow_start,
                        )),
                    });
                    wanted.insert(key, checker);
                }
            }
            // Whatever is left belongs to instances that left: dropping
            // the checkers stops them.
            checkers = wanted;
        }
        // A rebuild sets panic mode for the services it rebuilt; the
        // periodic sweep catches what time changes (ejections ending,
        // checks passing), so a swap does not walk every instance.
        if sweep {
            for service in snap.services() {
                super::panic::update(service, now);
                let outlier = &service.policy().outlier;
                let rates = outlier.success_rate;
                if rates.min_requests > 0 && due(&mut judged, service, rates.interval, now) {
                    super::success_rate::evaluate(service, now);
                }
                let latency = outlier.latency;
                if latency.min_requests > 0 && due(&mut timed, service, latency.interval, now) {
                    super::latency::evaluate(service, now);
                }
            }
        }
        drop(snap);
        sweep = tokio::select! {
            changed = versions.changed() => {
                if changed.is_err() {
                    return;
                }
                false
            }
            _ = refresh.tick() => true,
        };
    }
}

/// Whether `service`'s comparison every `interval` is due at `now` (the
/// first one an interval after the service was first seen); if so, its
/// time is recorded.
fn due(
    last: &mut HashMap<Arc<str>, u64>,
    service: &ServiceEntry,
    interval: Duration,
    now: u64,
) -> bool {
    let last = last.entry(service.name().clone()).or_insert(now);
    if now.saturating_sub(*last) >= interval.as_millis() as u64 {
        *last = now;
        true
    } else {
        false
    }
}

/// Checks one instance forever (until aborted).
async fn check_loop(
    registry: Weak<Registry>,
    instance: Arc<InstanceState>,
    (check, upstream): (HealthCheck, Upstream),
    slow_start: Duration,
) {
    let mut rng = Jitter::seeded(&instance);
    // First check soon, spread so many instances do not fire together.
    tokio::time::sleep(rng.upto(check.jitter.min(check.interval / 4))).await;
    let (mut passes, mut failures) = (0u32, 0u32);
    loop {
        let outcome = run_check(&check, &upstream, instance.addr()).await;
        let health = instance.health();
        let changed = match outcome.clone() {
            Ok(()) => {
                failures = 0;
                passes = passes.saturating_add(1);
                let admit = match health {
                    Health::Unknown => true,
                    Health::Unhealthy => passes >= check.healthy_threshold,
                    Health::Healthy | Health::NotChecked => false,
                };
                if admit {
                    // Ramp up instances coming back, and those that joined a
                    // running service; not the ones present at start.
                    let ramp = health == Health::Unhealthy || instance.is_late_joiner();
                    if ramp && !slow_start.is_zero() {
                        instance.start_warming(clock::now_ms());
                    }
                    let reason = if health == Health::Unknown {
                        "first check passed".to_owned()
                    } else {
                        format!("{passes} consecutive checks passed")
                    };
                    instance.mark_healthy(reason);
                }
                admit
            }
            Err(reason) => {
                passes = 0;
                failures = failures.saturating_add(1);
                let remove = matches!(health, Health::Healthy | Health::Unknown)
                    && failures >= check.unhealthy_threshold;
                if remove {
                    instance.mark_unhealthy(format!(
                        "{failures} consecutive checks failed, last: {reason}"
                    ));
                } else if health == Health::Healthy {
                    tracing::debug!(service = %instance.key().service, instance = %instance.addr(), %reason, failures, "health check failed");
                }
                remove
            }
        };
        if changed {
            if let Some(reg) = registry.upgrade() {
                if let Some(service) = reg.load().service(&instance.key().service) {
                    super::panic::update(service, clock::now_ms());
                }
            }
        }
        // Last, so whoever waits for a check sees its consequences.
        instance.record_check(outcome);
        tokio::time::sleep(check.interval + rng.upto(check.jitter)).await;
    }
}

/// Runs one check against `addr`, spoken to as the service's instances
/// are (`upstream`: plain or TLS, HTTP/1.1 or HTTP/2); `Err` says why it
/// failed. Over TLS, even a TCP check completes the handshake, so an
/// instance whose certificate would be refused is not taken as healthy.
pub async fn run_check(
    check: &HealthCheck,
    upstream: &Upstream,
    addr: SocketAddr,
) -> Result<(), String> {
    match tokio::time::timeout(check.timeout, attempt(check, upstream, addr)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}

async fn attempt(check: &HealthCheck, upstream: &Upstream, addr: SocketAddr) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let Some(tls) = &upstream.tls else {
        if matches!(check.kind, CheckKind::Tcp) {
            return Ok(());
        }
        return http_check(
            check,
            addr,
            stream,
            upstream.protocol == Protocol::H2c,
            false,
        )
        .await;
    };
    let alpn = match upstream.protocol {
        Protocol::Http1 => Alpn::Http1,
        Protocol::H2 | Protocol::H2c => Alpn::H2,
        Protocol::Auto => Alpn::Both,
    };
    let (stream, negotiated) = tls
        .connect(addr.ip(), stream, alpn)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    if matches!(check.kind, CheckKind::Tcp) {
        return Ok(());
    }
    http_check(check, addr, stream, negotiated == Negotiated::H2, true).await
}

/// One HTTP check request over `io`, in HTTP/2 when `h2`.
async fn http_check<T>(
    check: &HealthCheck,
    addr: SocketAddr,
    io: T,
    h2: bool,
    tls: bool,
) -> Result<(), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let CheckKind::Http {
        method,
        path,
        host,
        expect,
    } = &check.kind
    else {
        return Ok(());
    };
    let host = host.clone().unwrap_or_else(|| addr.to_string());
    let mut req = Request::builder()
        .method(method.clone())
        .header(header::USER_AGENT, "wayfinder-health-check");
    let sent = if h2 {
        let scheme = if tls { "https" } else { "http" };
        let req = req
            .uri(format!("{scheme}://{host}{path}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(io),
        )
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        let conn = tokio::spawn(conn);
        let sent = sender.send_request(req).await;
        conn.abort();
        sent
    } else {
        let host = HeaderValue::from_str(&host).map_err(|_| "unusable host".to_owned())?;
        req = req
            .uri(path.as_str())
            .header(header::HOST, host)
            .header(header::CONNECTION, "close");
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let conn = tokio::spawn(conn);
        let sent = sender.send_request(req).await;
        conn.abort();
        sent
    };
    match sent {
        Ok(resp) => {
            let code = resp.status().as_u16();
            if expect.iter().any(|&(lo, hi)| (lo..=hi).contains(&code)) {
                Ok(())
            } else {
                Err(format!("status {code}"))
            }
        }
        Err(e) => Err(format!("request: {e}")),
    }
}

/// A small xorshift generator for check jitter; no need for a crate.
struct Jitter(u64);

impl Jitter {
    fn seeded(instance: &InstanceState) -> Jitter {
        let addr = instance.addr();
        let mut seed = clock::now_ms() ^ (u64::from(addr.port()) << 32);
        if let std::net::IpAddr::V4(v4) = addr.ip() {
            seed ^= u64::from(u32::from(v4)) << 7;
        }
        Jitter(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A random duration in `[0, max)`.
    fn upto(&mut self, max: Duration) -> Duration {
        let ms = max.as_millis() as u64;
        if ms == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(self.next() % ms)
        }
    }
}
