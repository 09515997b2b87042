//! Test support shared by the integration tests:
//!
//! - [`backend`]: real instances ([`Backend`]) and deterministic data;
//! - [`client`]: a small HTTP/1.1 client ([`H1Client`], [`send`], [`get`],
//!   [`raw_exchange`]);
//! - [`grpc`]: a real gRPC instance (h2c or TLS) and client helpers;
//! - [`inst`]: an instance whose health, speed and presence the test
//!   controls ([`Inst`]), and what `GET /v1/services` shows about it;
//! - [`load`]: clients sending requests in a loop ([`Load`]);
//! - [`proxy`]: wayfinder started in-process, with its admin API off
//!   ([`Proxy`]) or on ([`AdminProxy`], [`Api`]), and config snippets;
//! - [`raw`]: exact bytes on raw sockets (strict response reader,
//!   scripted [`raw::RawBackend`]);
//! - [`attack`]: attack scenarios (a recording, strictly parsing instance,
//!   LF-tolerant response parsing, HTTP/2 frames by hand, in-flight counts);
//! - [`pki`]: a CA made at test time and certificates signed by it;
//! - [`fleet`]: gossip fleets and Serf agents as real processes;
//! - [`netns`]: network namespaces a test creates to partition a fleet;
//! - [`procs`]: ports, temporary files and the processes a test spawns
//!   (`wayfinder` itself, [`Proc`]; etcd or dnsmasq, [`Daemon`]);
//! - here: bodies and bounded waits.
//!
//! Everything listens on loopback with ports picked at run time; every task
//! or process a helper starts is owned by the helper and stopped when it
//! stops or is dropped, so no test leaks a listener, a connection or a
//! process into another.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod attack;
pub mod backend;
pub mod client;
pub mod fleet;
pub mod grpc;
pub mod inst;
pub mod load;
pub mod netns;
pub mod pki;
pub mod procs;
pub mod proxy;
pub mod raw;

// Re-exported so tests name helpers as `support::x`; a test binary that
// uses nothing from one of them would otherwise warn.
#[allow(unused_imports)]
pub use {backend::*, client::*, inst::*, load::*, procs::*, proxy::*};

use std::convert::Infallible;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Any error, for test plumbing.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body of any kind (empty, full, streamed).
pub type Body = BoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|e: Infallible| match e {}).boxed()
}

/// A complete body.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

// === bounded waits ===

/// Runs `fut`, failing the test if it takes longer than `secs` seconds.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {secs}s"),
    }
}

/// Polls `cond` every 5 ms until it holds, failing the test after `secs`.
pub async fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    within(secs, what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Polls the asynchronous `cond` every 2 ms until it holds, failing the
/// test after `limit`. Returns how long it took.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Sends wayfinder's logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}
