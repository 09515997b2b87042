//! Each instance's kept connections: idle HTTP/1.1 keep-alive connections
//! for reuse, and its shared HTTP/2 connections ([`H2Set`]). The HTTP/1.1
//! ones come in two kinds kept apart: hyper client connections ([`Sender`],
//! for the general path, plain or TLS) and plain sockets with their read
//! buffer ([`RawConn`], for the HTTP/1.1 fast path in `proxy::h1`).
//!
//! Each instance has its own small lock-free pool ([`IdlePool`]), kept in the
//! attachment slot of the instance's live state ([`pool`]), so a pool never
//! needs a lookup by address and dies with the instance: once an instance
//! leaves the registry and its last request finishes, its idle connections
//! close. The registry does not know the pool; it only tells it when the
//! instance stops taking requests ([`Attachment::release`]). A connection goes back to
//! the pool only when its response body has been read to the end; anything
//! else (error, client gone mid-body, upgrade) drops it, which closes it.

use std::any::Any;
use std::time::Duration;

use bytes::BytesMut;
use crossbeam_queue::ArrayQueue;
use hyper::client::conn::http1;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::h2::H2Set;

use crate::clock;
use crate::proxy::request_body::UpstreamBody;
use crate::registry::{Attachment, InstanceState, Lifecycle};

/// The sending half of one upstream HTTP/1.1 connection.
pub(crate) type Sender = http1::SendRequest<UpstreamBody>;

/// A fast-path upstream connection: the socket and the bytes read from it
/// but not yet used.
#[derive(Debug)]
pub(crate) struct RawConn {
    pub(crate) stream: TcpStream,
    pub(crate) buf: BytesMut,
}

impl RawConn {
    /// Whether the idle connection was closed (or sent something
    /// unasked) by the instance. Reads only the readiness tokio already
    /// has: no system call.
    fn is_closed(&self) -> bool {
        !self.buf.is_empty() || self.stream.try_io(Interest::READABLE, || Ok(())).is_ok()
    }
}

/// A pooled connection of either kind.
trait Pooled {
    fn is_closed(&self) -> bool;
}

impl Pooled for Sender {
    fn is_closed(&self) -> bool {
        Sender::is_closed(self)
    }
}

impl Pooled for RawConn {
    fn is_closed(&self) -> bool {
        RawConn::is_closed(self)
    }
}

/// Idle connections to one instance, oldest first. The queues are
/// allocated on first use, so instances that are never contacted (most of a
/// large registry on any one proxy) cost no pool memory.
pub(crate) struct IdlePool {
    queue: LazyQueue<Idle<Sender>>,
    raw: LazyQueue<Idle<RawConn>>,
    /// The instance's shared HTTP/2 connections.
    pub(super) h2: H2Set,
}

/// A bounded queue allocated when first written to.
struct LazyQueue<T> {
    capacity: usize,
    queue: std::sync::OnceLock<ArrayQueue<T>>,
}

impl<T> LazyQueue<T> {
    fn new(capacity: usize) -> Self {
        LazyQueue {
            capacity,
            queue: std::sync::OnceLock::new(),
        }
    }

    /// The queue, if it has been allocated.
    fn get(&self) -> Option<&ArrayQueue<T>> {
        self.queue.get()
    }

    /// The queue, allocated now if needed; `None` when pooling is off.
    fn get_or_init(&self) -> Option<&ArrayQueue<T>> {
        (self.capacity > 0).then(|| self.queue.get_or_init(|| ArrayQueue::new(self.capacity)))
    }
}

struct Idle<C> {
    conn: C,
    since_ms: u64,
}

fn put<C: Pooled>(q: &LazyQueue<Idle<C>>, conn: C) {
    if conn.is_closed() {
        return;
    }
    if let Some(q) = q.get_or_init() {
        let _ = q.push(Idle {
            conn,
            since_ms: clock::now_ms(),
        });
    }
}

fn reap<C: Pooled>(q: &LazyQueue<Idle<C>>, oldest_ok: u64) {
    let Some(q) = q.get() else { return };
    for _ in 0..q.len() {
        match q.pop() {
            Some(idle) if !idle.conn.is_closed() && idle.since_ms >= oldest_ok => {
                let _ = q.push(idle);
            }
            Some(_) => {}
            None => break,
        }
    }
}

fn clear<C>(q: &LazyQueue<Idle<C>>) {
    if let Some(q) = q.get() {
        while q.pop().is_some() {}
    }
}

impl std::fmt::Debug for IdlePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdlePool")
            .field("idle", &self.len())
            .finish()
    }
}

impl IdlePool {
    /// A pool keeping at most `max_idle` connections (0 disables pooling).
    pub(crate) fn new(max_idle: usize) -> Self {
        IdlePool {
            queue: LazyQueue::new(max_idle),
            raw: LazyQueue::new(max_idle),
            h2: H2Set::default(),
        }
    }

    /// Number of idle connections held.
    pub(crate) fn len(&self) -> usize {
        self.queue.get().map_or(0, ArrayQueue::len)
            + self.raw.get().map_or(0, ArrayQueue::len)
            + self.h2.idle()
    }

    /// Keeps `sender` for reuse; closes it when the pool is full.
    pub(crate) fn put(&self, sender: Sender) {
        put(&self.queue, sender);
    }

    /// Keeps a fast-path connection for reuse; closes it when the pool is
    /// full.
    pub(crate) fn put_raw(&self, conn: RawConn) {
        put(&self.raw, conn);
    }

    /// An idle fast-path connection that is still open and younger than
    /// `max_idle_time`, if there is one.
    pub(crate) fn take_raw(&self, max_idle_time: Duration) -> Option<RawConn> {
        let q = self.raw.get()?;
        let oldest_ok = clock::now_ms().saturating_sub(max_idle_time.as_millis() as u64);
        while let Some(idle) = q.pop() {
            if idle.since_ms >= oldest_ok && !idle.conn.is_closed() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// An idle connection that is still open, younger than `max_idle_time`
    /// and ready for a request, if there is one. Never waits: a connection
    /// still finishing its previous exchange (its request body may still be
    /// flowing after an early response) stays pooled for a later request,
    /// and this one gets a fresh connection instead.
    pub(crate) fn take(&self, max_idle_time: Duration) -> Option<Sender> {
        let q = self.queue.get()?;
        let oldest_ok = clock::now_ms().saturating_sub(max_idle_time.as_millis() as u64);
        for _ in 0..q.len() {
            let idle = q.pop()?;
            if idle.conn.is_closed() || idle.since_ms < oldest_ok {
                continue;
            }
            if idle.conn.is_ready() {
                return Some(idle.conn);
            }
            let _ = q.push(idle);
        }
        None
    }

    /// Closes every idle connection, and lets the HTTP/2 connections
    /// close once their open streams end.
    pub(crate) fn clear(&self) {
        clear(&self.queue);
        clear(&self.raw);
        self.h2.clear();
    }

    /// Closes connections idle for longer than `max_idle_time`.
    pub(crate) fn reap(&self, max_idle_time: Duration) {
        let oldest_ok = clock::now_ms().saturating_sub(max_idle_time.as_millis() as u64);
        reap(&self.queue, oldest_ok);
        reap(&self.raw, oldest_ok);
        self.h2.reap(oldest_ok);
    }
}

impl Attachment for IdlePool {
    /// The instance takes no new requests: its idle connections close.
    fn release(&self) {
        self.clear();
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `instance`'s idle connections, made on first use with room for
/// `max_idle` of each kind; `None` only if another type took the slot.
#[inline]
pub(crate) fn pool(instance: &InstanceState, max_idle: usize) -> Option<&IdlePool> {
    instance
        .attachment()
        .get_or_init(|| IdlePool::new(max_idle))
}

/// `instance`'s idle connections, if a request to it has made the pool.
#[inline]
pub(crate) fn pool_of(instance: &InstanceState) -> Option<&IdlePool> {
    instance.attachment().get()
}

/// Keeps `sender` for the next request to `instance`, unless the instance
/// has left the registry (then it closes).
pub(crate) fn keep_h1(instance: &InstanceState, sender: Sender) {
    if instance.lifecycle() != Lifecycle::Removed {
        if let Some(pool) = pool_of(instance) {
            pool.put(sender);
        }
    }
}

/// [`keep`] for a fast-path connection.
pub(crate) fn keep_raw(instance: &InstanceState, conn: RawConn) {
    if instance.lifecycle() != Lifecycle::Removed {
        if let Some(pool) = pool_of(instance) {
            pool.put_raw(conn);
        }
    }
}

/// Idle connections kept for `instance` (shown by the admin API).
pub(crate) fn idle_connections(instance: &InstanceState) -> usize {
    pool_of(instance).map_or(0, IdlePool::len)
}

#[cfg(test)]
mod tests {
    use super::*;

    use hyper_util::rt::TokioIo;

    #[test]
    fn pool_queues_are_allocated_on_first_use() {
        let pool = IdlePool::new(64);
        assert!(pool.queue.get().is_none() && pool.raw.get().is_none());
        assert_eq!(pool.len(), 0);
        pool.clear();
        pool.reap(Duration::from_secs(1));
        assert!(
            pool.queue.get().is_none() && pool.raw.get().is_none(),
            "reaping and clearing allocate nothing"
        );

        let q: LazyQueue<u8> = LazyQueue::new(4);
        q.get_or_init().unwrap().push(1).unwrap();
        assert_eq!(q.get().map(ArrayQueue::len), Some(1));
        let off: LazyQueue<u8> = LazyQueue::new(0);
        assert!(off.get_or_init().is_none(), "pooling off: no queue");
    }

    /// A pooled connection that is not ready yet (here: its connection
    /// task has not run) is skipped without waiting and stays pooled;
    /// once it is ready, it is taken.
    #[tokio::test(start_paused = true)]
    async fn take_never_waits_for_a_busy_connection() {
        let (client, _server) = tokio::io::duplex(1024);
        let (sender, conn) = http1::handshake::<_, UpstreamBody>(TokioIo::new(client))
            .await
            .unwrap();
        assert!(!sender.is_ready() && !sender.is_closed());
        let pool = IdlePool::new(4);
        pool.put(sender);
        let before = tokio::time::Instant::now();
        assert!(pool.take(Duration::from_secs(60)).is_none());
        assert_eq!(tokio::time::Instant::now(), before, "no time spent waiting");
        assert_eq!(pool.len(), 1, "kept for a later request");

        let driver = tokio::spawn(conn);
        let mut taken = None;
        for _ in 0..100 {
            taken = pool.take(Duration::from_secs(60));
            if taken.is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            taken.is_some_and(|s| s.is_ready()),
            "ready once its task ran"
        );
        assert_eq!(pool.len(), 0);
        driver.abort();
    }

    /// A connection idle for longer than the idle timeout (on the paused
    /// clock) is not reused; reaping closes it too.
    #[tokio::test(start_paused = true)]
    async fn idle_connections_age_on_the_clock() {
        let (client, _server) = tokio::io::duplex(1024);
        let (mut sender, conn) = http1::handshake::<_, UpstreamBody>(TokioIo::new(client))
            .await
            .unwrap();
        let driver = tokio::spawn(conn);
        sender.ready().await.unwrap();
        let idle = Duration::from_secs(60);
        let pool = IdlePool::new(4);
        pool.put(sender);
        tokio::time::advance(idle).await;
        let sender = pool.take(idle).expect("idle for exactly 60 s: reused");
        pool.put(sender);
        tokio::time::advance(idle / 2).await;
        pool.reap(idle);
        assert_eq!(pool.len(), 1, "30 s idle: kept");
        tokio::time::advance(idle / 2 + Duration::from_millis(1)).await;
        pool.reap(idle);
        assert_eq!(pool.len(), 0, "over 60 s idle: closed");
        driver.abort();
    }
}
