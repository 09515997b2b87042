//! One instance's shared HTTP/2 connections ([`H2Set`]): a few
//! connections, each carrying many requests at once as streams.
//!
//! A request takes a stream on the first open connection with fewer than
//! `upstream_max_streams` streams ([`H2Set::reuse`]: one atomic load of the
//! list, no lock). When every connection is busy, one new connection is
//! dialed at a time ([`H2Set::open`]: the dial lock is the only lock, and it
//! is waited on for at most the connect timeout); at
//! `upstream_max_connections` the least busy connection takes the stream
//! anyway (hyper queues it until the instance's own stream limit allows).
//!
//! A connection the instance closes or sends GOAWAY on stops taking new
//! streams (hyper reports it closed; a GOAWAY is noticed as it is read,
//! see [`goaway`](super::goaway)); its open streams finish, and the next
//! request dials a fresh connection. When the instance leaves or turns
//! unhealthy the set is emptied ([`H2Set::clear`]): each connection closes
//! once its last stream ends. A connection with no stream for longer than
//! the upstream idle timeout is closed by the reaper.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::client::conn::http2;

use super::goaway::Peer;
use super::ConnectError;
use crate::clock;
use crate::proxy::request_body::UpstreamBody;

/// The sending half of one upstream HTTP/2 connection.
pub(crate) type H2Sender = http2::SendRequest<UpstreamBody>;

/// A new HTTP/2 connection: its sender, and the flag its
/// [`GoAwayWatch`](super::goaway::GoAwayWatch) raises at the instance's
/// GOAWAY.
#[derive(Debug)]
pub(crate) struct H2Dialed {
    pub sender: H2Sender,
    pub peer: Arc<Peer>,
}

/// One HTTP/2 connection and the streams open on it.
#[derive(Debug)]
struct H2Conn {
    sender: H2Sender,
    peer: Arc<Peer>,
    streams: AtomicUsize,
    /// When the last stream ended (clock ms).
    idle_since: AtomicU64,
}

impl H2Conn {
    fn new(dialed: H2Dialed) -> Arc<Self> {
        Arc::new(H2Conn {
            sender: dialed.sender,
            peer: dialed.peer,
            streams: AtomicUsize::new(0),
            idle_since: AtomicU64::new(clock::now_ms()),
        })
    }

    /// Whether the connection takes new streams: not closed, and the
    /// instance has not sent GOAWAY on it.
    fn is_open(&self) -> bool {
        !self.sender.is_closed() && !self.peer.going_away.load(Ordering::Acquire)
    }

    /// A stream, if the connection has fewer than `max` open.
    fn try_stream(self: &Arc<Self>, max: usize) -> Option<H2Stream> {
        let mut n = self.streams.load(Ordering::Relaxed);
        loop {
            if n >= max {
                return None;
            }
            match self
                .streams
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(self.stream_counted()),
                Err(now) => n = now,
            }
        }
    }

    /// A stream whatever the count.
    fn stream(self: &Arc<Self>) -> H2Stream {
        self.streams.fetch_add(1, Ordering::AcqRel);
        self.stream_counted()
    }

    fn stream_counted(self: &Arc<Self>) -> H2Stream {
        H2Stream {
            sender: self.sender.clone(),
            conn: Arc::clone(self),
        }
    }
}

/// One request's stream on a shared connection: counted against the
/// connection until dropped (with the response body, or the attempt).
#[derive(Debug)]
pub(crate) struct H2Stream {
    pub(super) sender: H2Sender,
    conn: Arc<H2Conn>,
}

impl H2Stream {
    /// Whether the instance takes extended CONNECT on this connection,
    /// waiting at most `wait` for its settings on a fresh one.
    pub(crate) async fn extended_connect(&self, wait: Duration) -> bool {
        self.conn.peer.extended_connect(wait).await
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        if self.conn.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.conn
                .idle_since
                .store(clock::now_ms(), Ordering::Relaxed);
        }
    }
}

/// One instance's HTTP/2 connections.
#[derive(Debug)]
pub(crate) struct H2Set {
    conns: ArcSwap<Vec<Arc<H2Conn>>>,
    /// Held while dialing, so concurrent requests dial one connection, not
    /// one each.
    dialing: tokio::sync::Mutex<()>,
}

impl Default for H2Set {
    fn default() -> Self {
        H2Set {
            conns: ArcSwap::from_pointee(Vec::new()),
            dialing: tokio::sync::Mutex::new(()),
        }
    }
}

impl H2Set {
    /// A stream on an open connection with room for it, if there is one.
    pub(crate) fn reuse(&self, max_streams: usize) -> Option<H2Stream> {
        self.conns
            .load()
            .iter()
            .filter(|c| c.is_open())
            .find_map(|c| c.try_stream(max_streams))
    }

    /// A stream for a request that [`reuse`](Self::reuse) found no room
    /// for: on a connection another request dialed meanwhile, on a new
    /// connection from `dial`, or, at `max_conns`, on the least busy one.
    /// Waits at most `wait` for another request's dial.
    pub(crate) async fn open<F>(
        &self,
        max_streams: usize,
        max_conns: usize,
        wait: Duration,
        dial: F,
    ) -> Result<H2Stream, ConnectError>
    where
        F: std::future::Future<Output = Result<H2Dialed, ConnectError>>,
    {
        let _dialing = tokio::time::timeout(wait, self.dialing.lock())
            .await
            .map_err(|_| ConnectError::Timeout(wait))?;
        if let Some(stream) = self.reuse(max_streams) {
            return Ok(stream);
        }
        let mut live: Vec<Arc<H2Conn>> = self
            .conns
            .load()
            .iter()
            .filter(|c| c.is_open())
            .cloned()
            .collect();
        if live.len() >= max_conns {
            if let Some(least) = live
                .iter()
                .min_by_key(|c| c.streams.load(Ordering::Relaxed))
            {
                return Ok(least.stream());
            }
        }
        let conn = H2Conn::new(dial.await?);
        let stream = conn.stream();
        live.push(conn);
        self.conns.store(Arc::new(live));
        Ok(stream)
    }

    /// Adds a connection dialed elsewhere (`auto` over TLS, where the
    /// instance chose HTTP/2) and takes a stream on it.
    pub(crate) fn adopt(&self, dialed: H2Dialed) -> H2Stream {
        let conn = H2Conn::new(dialed);
        let stream = conn.stream();
        self.conns.rcu(|conns| {
            let mut next: Vec<_> = conns.iter().filter(|c| c.is_open()).cloned().collect();
            next.push(Arc::clone(&conn));
            next
        });
        stream
    }

    /// Forgets every connection: each closes when its last stream ends.
    pub(crate) fn clear(&self) {
        if !self.conns.load().is_empty() {
            self.conns.store(Arc::new(Vec::new()));
        }
    }

    /// Forgets closed connections, and those without a stream since
    /// before `oldest_ok` (clock ms).
    pub(crate) fn reap(&self, oldest_ok: u64) {
        let keep = |c: &Arc<H2Conn>| {
            c.is_open()
                && (c.streams.load(Ordering::Acquire) > 0
                    || c.idle_since.load(Ordering::Relaxed) >= oldest_ok)
        };
        if self.conns.load().iter().all(keep) {
            return;
        }
        self.conns.rcu(|conns| {
            conns
                .iter()
                .filter(|c| keep(c))
                .cloned()
                .collect::<Vec<_>>()
        });
    }

    /// Open connections with no stream.
    pub(crate) fn idle(&self) -> usize {
        self.conns
            .load()
            .iter()
            .filter(|c| c.is_open() && c.streams.load(Ordering::Relaxed) == 0)
            .count()
    }

    /// Open connections.
    pub(crate) fn len(&self) -> usize {
        self.conns.load().iter().filter(|c| c.is_open()).count()
    }

    /// Open streams over every connection.
    pub(crate) fn streams(&self) -> usize {
        self.conns
            .load()
            .iter()
            .map(|c| c.streams.load(Ordering::Relaxed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    /// A client connection over an in-memory pipe whose far end is a real
    /// HTTP/2 server that never answers (so streams stay open).
    async fn sender() -> (H2Dialed, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let service = hyper::service::service_fn(|_req| async {
                std::future::pending::<Result<http::Response<String>, std::convert::Infallible>>()
                    .await
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server), service)
                .await;
        });
        let (io, peer) = super::super::goaway::GoAwayWatch::new(client);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake::<_, UpstreamBody>(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        (H2Dialed { sender, peer }, server)
    }

    #[tokio::test]
    async fn streams_fill_one_connection_then_open_the_next_up_to_the_limit() {
        let set = H2Set::default();
        let wait = Duration::from_secs(1);
        assert!(set.reuse(2).is_none(), "no connection yet");
        let dials = AtomicUsize::new(0);
        let dial = || async {
            dials.fetch_add(1, Ordering::Relaxed);
            Ok(sender().await.0)
        };
        let s1 = set.open(2, 2, wait, dial()).await.unwrap();
        let s2 = set.reuse(2).expect("room for a second stream");
        assert!(set.reuse(2).is_none(), "first connection full");
        let s3 = set.open(2, 2, wait, dial()).await.unwrap();
        let s4 = set.reuse(2).unwrap();
        assert_eq!((set.len(), set.streams()), (2, 4));
        // At the connection limit the least busy connection takes more.
        drop(s1);
        let s5 = set.open(2, 2, wait, dial()).await.unwrap();
        assert_eq!(dials.load(Ordering::Relaxed), 2, "no third connection");
        assert_eq!(set.streams(), 4);
        drop((s2, s3, s4, s5));
        assert_eq!((set.streams(), set.idle()), (0, 2));
        set.clear();
        assert_eq!(set.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_reaped_and_busy_ones_kept() {
        let set = H2Set::default();
        let wait = Duration::from_secs(1);
        let busy = set
            .open(1, 4, wait, async { Ok(sender().await.0) })
            .await
            .unwrap();
        let idle = set
            .open(1, 4, wait, async { Ok(sender().await.0) })
            .await
            .unwrap();
        drop(idle);
        tokio::time::advance(Duration::from_secs(90)).await;
        set.reap(clock::now_ms() - 60_000);
        assert_eq!(set.len(), 1, "the idle one closed, the busy one kept");
        assert_eq!(set.streams(), 1);
        drop(busy);
    }

    #[tokio::test]
    async fn a_connection_the_instance_sends_goaway_on_takes_no_new_stream() {
        // A real HTTP/2 server that holds its first request and then shuts
        // down gracefully: GOAWAY, the held stream still open, so hyper
        // does not report the connection closed yet.
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
        let held_tx = std::sync::Mutex::new(Some(held_tx));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req| {
                if let Some(tx) = held_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                std::future::pending::<Result<http::Response<String>, std::convert::Infallible>>()
            });
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop_rx => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
        let (io, peer) = super::super::goaway::GoAwayWatch::new(client);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake::<_, UpstreamBody>(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        let set = H2Set::default();
        let mut held = set.adopt(H2Dialed { sender, peer });
        let request = http::Request::builder()
            .uri("http://x/")
            .body(UpstreamBody::Empty)
            .unwrap();
        let pending = tokio::spawn(async move {
            let r = held.sender.send_request(request).await;
            (held, r)
        });
        tokio::time::timeout(Duration::from_secs(5), held_rx)
            .await
            .expect("the server got the request")
            .unwrap();
        assert!(set.reuse(10).is_some(), "open before GOAWAY");
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while set.reuse(10).is_some() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("no new stream once GOAWAY is read");
        assert!(!pending.is_finished(), "the held stream is still open");
        pending.abort();
    }

    #[tokio::test]
    async fn a_closed_connection_takes_no_stream() {
        let set = H2Set::default();
        let (tx, server) = sender().await;
        let s = set.adopt(tx);
        server.abort();
        // The connection task notices the pipe closed.
        for _ in 0..1000 {
            if s.sender.is_closed() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(s.sender.is_closed());
        drop(s);
        assert!(set.reuse(10).is_none());
        assert_eq!(set.len(), 0);
    }
}
