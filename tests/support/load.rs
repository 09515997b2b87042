//! Clients that send GETs in a loop while a test changes the pool
//! ([`Load`]), and what they saw.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::task::JoinHandle;

use super::{wait_until, Reconnecting, Reply};

/// One client request of a [`Load`].
#[derive(Debug)]
pub struct Sample {
    /// When it finished.
    pub at: Instant,
    /// `Ok((status, backend))` or the client-side error.
    pub result: Result<(StatusCode, String), String>,
}

/// Clients ("workers") sending GETs one after another on keep-alive
/// connections (a new one after a failure) until finished.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Requests finished, per worker.
    done: Arc<Vec<AtomicUsize>>,
    tasks: Vec<JoinHandle<Vec<Sample>>>,
}

impl Load {
    /// Starts `workers` clients of `addr` sending `GET /` with `Host: host`.
    pub fn start(addr: SocketAddr, host: &str, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done: Arc<Vec<AtomicUsize>> = Arc::new((0..workers).map(|_| 0.into()).collect());
        let tasks = (0..workers)
            .map(|w| {
                let (stop, done, host) = (stop.clone(), done.clone(), host.to_owned());
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    let mut client = Reconnecting::new(addr);
                    while !stop.load(SeqCst) {
                        let result = match client.get(&host, "/").await {
                            Ok(reply) => Ok((reply.status, backend_of(&reply))),
                            Err(e) => Err(e.to_string()),
                        };
                        out.push(Sample {
                            at: Instant::now(),
                            result,
                        });
                        done[w].fetch_add(1, SeqCst);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    out
                })
            })
            .collect();
        Load { stop, done, tasks }
    }

    /// Requests finished so far, all workers together.
    pub fn done(&self) -> usize {
        self.done.iter().map(|d| d.load(SeqCst)).sum()
    }

    /// Waits (bounded) until `n` more requests have finished.
    pub async fn run_for(&self, n: usize) {
        let target = self.done() + n;
        wait_until(30, "load progress", || self.done() >= target).await;
    }

    /// Waits (bounded) until every worker has finished two more requests:
    /// then none is still in the request it was sending when this was
    /// called, and each has sent one that started afterwards.
    pub async fn settle(&self) {
        let now: Vec<usize> = self.done.iter().map(|d| d.load(SeqCst)).collect();
        wait_until(30, "every client finishes two more requests", || {
            self.done
                .iter()
                .zip(&now)
                .all(|(d, &n)| d.load(SeqCst) >= n + 2)
        })
        .await;
    }

    /// Stops the clients; every sample, in the order they finished.
    pub async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, SeqCst);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("client task"));
        }
        all.sort_by_key(|s| s.at);
        all
    }
}

/// Which instance answered: its `x-backend` header, else the body.
pub fn backend_of(reply: &Reply) -> String {
    reply
        .headers
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| reply.text(), str::to_owned)
}

/// Samples that are not `200`, as readable lines.
pub fn errors(samples: &[Sample]) -> Vec<String> {
    samples
        .iter()
        .filter_map(|s| match &s.result {
            Ok((StatusCode::OK, _)) => None,
            Ok((status, body)) => Some(format!("{status}: {body}")),
            Err(e) => Some(format!("client error: {e}")),
        })
        .collect()
}
