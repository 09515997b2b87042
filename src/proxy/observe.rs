//! What a finished request leaves behind: its count and latency in the
//! metrics (through the atomics of its instance's and service's live
//! state, see [`crate::registry::stats`]) and its access log line. Both
//! codecs call [`Proxy::finish`] once per request with a [`Done`], so the
//! two paths count and log alike. Also the process-wide gauges and
//! counters that belong to no service: client connections by protocol and
//! requests answered before any service was chosen.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

use super::access_log::Entry;
use super::attempt::Tally;
use super::policy::request_id::RequestId;
use super::{Client, Proxy};
use crate::registry::stats::{self, class_index};
use crate::registry::{InstanceState, ServiceEntry};

/// Open client connections by protocol (`[http1, http2]`) and TLS
/// (`[plain, tls]`).
static CONNECTIONS: [[AtomicI64; 2]; 2] = [
    [AtomicI64::new(0), AtomicI64::new(0)],
    [AtomicI64::new(0), AtomicI64::new(0)],
];

/// Requests answered before a service was chosen (no route, malformed),
/// by status class.
static UNROUTED: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// Open client connections: `(protocol, tls, count)` for each kind.
pub fn connections() -> [(&'static str, bool, i64); 4] {
    let n = |p: usize, t: usize| CONNECTIONS[p][t].load(Relaxed);
    [
        ("http1", false, n(0, 0)),
        ("http1", true, n(0, 1)),
        ("http2", false, n(1, 0)),
        ("http2", true, n(1, 1)),
    ]
}

/// Requests answered before a service was chosen, by status class.
pub fn unrouted() -> [u64; 5] {
    std::array::from_fn(|i| UNROUTED[i].load(Relaxed))
}

/// Counts one open client connection until dropped.
#[derive(Debug)]
pub(crate) struct Connection {
    h2: bool,
    tls: bool,
}

impl Connection {
    /// A new HTTP/1 connection (plain or `tls`).
    pub(crate) fn open(tls: bool) -> Connection {
        CONNECTIONS[0][usize::from(tls)].fetch_add(1, Relaxed);
        Connection { h2: false, tls }
    }

    /// The connection turned out to speak HTTP/2.
    pub(crate) fn set_h2(&mut self, h2: bool) {
        if h2 != self.h2 {
            let t = usize::from(self.tls);
            CONNECTIONS[usize::from(self.h2)][t].fetch_sub(1, Relaxed);
            CONNECTIONS[usize::from(h2)][t].fetch_add(1, Relaxed);
            self.h2 = h2;
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        CONNECTIONS[usize::from(self.h2)][usize::from(self.tls)].fetch_sub(1, Relaxed);
    }
}

/// When a request's clock starts: now, if anything will read it (metrics
/// or the access log).
#[inline]
pub(crate) fn start(proxy: &Proxy) -> Option<Instant> {
    (stats::enabled() || proxy.settings.access_log.is_some()).then(Instant::now)
}

/// One finished request, as either codec saw it.
#[derive(Debug)]
pub(crate) struct Done<'a> {
    /// The service it was routed to, if it got that far.
    pub service: Option<&'a ServiceEntry>,
    /// The instance that answered, if one did.
    pub instance: Option<&'a InstanceState>,
    /// The status the client got (499: the client went away first).
    pub status: u16,
    /// From [`start`].
    pub started: Option<Instant>,
    pub tally: Tally,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub request_id: Option<&'a RequestId>,
    /// The method as logged (`-` when the access log is off).
    pub method: &'a str,
    /// The method's [`stats::method_index`], for the metrics.
    pub method_index: usize,
    pub target: &'a str,
    pub protocol: &'static str,
    pub client: &'a Client,
}

impl Proxy {
    /// Counts a finished request and logs it.
    #[inline]
    pub(crate) fn finish(&self, done: Done<'_>) {
        let took = done.started.map(|s| s.elapsed());
        if stats::enabled() {
            match (done.service, done.instance) {
                (Some(service), instance) => {
                    let s = service.live().stats();
                    if let Some(took) = took {
                        s.duration.observe(took);
                    }
                    let method = done.method_index;
                    match instance {
                        Some(i) => i.stats().answered(method, done.status),
                        None => s.answered_locally(method, done.status),
                    }
                }
                (None, _) => {
                    UNROUTED[class_index(done.status)].fetch_add(1, Relaxed);
                }
            }
        }
        if let Some(log) = &self.settings.access_log {
            log.send(entry(&done, took.unwrap_or_default()));
        }
    }
}

/// The access log's record of `done`.
fn entry(done: &Done<'_>, took: std::time::Duration) -> Entry {
    let mut request = String::with_capacity(done.method.len() + 1 + done.target.len());
    request.push_str(done.method);
    request.push(' ');
    request.push_str(done.target);
    Entry {
        time: SystemTime::now(),
        client: done.client.peer(),
        request,
        method_len: done.method.len(),
        protocol: done.protocol,
        status: done.status,
        service: done.service.map(|s| s.name().clone()),
        instance: done.instance.map(InstanceState::addr),
        attempts: done.tally.attempts,
        duration: took,
        upstream: done.tally.upstream,
        bytes_in: done.bytes_in,
        bytes_out: done.bytes_out,
        request_id: done.request_id.copied(),
    }
}

/// What the hyper path knows of a request by the time its response head
/// is ready; the request is [`Proxy::finish`]ed when the response body
/// ends, with the bytes it carried.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub service: Option<Arc<ServiceEntry>>,
    pub instance: Option<Arc<InstanceState>>,
    pub status: u16,
    pub started: Option<Instant>,
    pub tally: Tally,
    pub bytes_in: u64,
    pub request_id: Option<RequestId>,
    /// Method, a space and target, when the access log is on.
    pub logged: String,
    pub method_len: usize,
    /// The method's [`stats::method_index`].
    pub method_index: usize,
    pub protocol: &'static str,
}

impl Pending {
    /// The finished request, `bytes_out` bytes of body sent.
    pub(crate) fn done<'a>(&'a self, client: &'a Client, bytes_out: u64) -> Done<'a> {
        let (method, target) = self.logged.split_at(self.method_len);
        Done {
            service: self.service.as_deref(),
            instance: self.instance.as_deref(),
            status: self.status,
            started: self.started,
            tally: self.tally,
            bytes_in: self.bytes_in,
            bytes_out,
            request_id: self.request_id.as_ref(),
            method: if method.is_empty() { "-" } else { method },
            method_index: self.method_index,
            target: target.get(1..).unwrap_or("-"),
            protocol: self.protocol,
            client,
        }
    }
}
