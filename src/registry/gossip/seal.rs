//! The gossip transport: chitchat's messages over UDP, each datagram
//! sealed with the fleet's shared secret when one is set.
//!
//! Sealing: XChaCha20-Poly1305 (RustCrypto's audited implementation) with
//! a key derived from the secret and the cluster name (SHA-256), a fresh
//! random 24-byte nonce per datagram (large enough that random nonces never
//! repeat in practice) and the cluster name as associated data. A datagram
//! that does not open with the key (a stranger, a wrong secret, a bit
//! flipped on the way) is dropped before chitchat sees it, so it can
//! neither join nor inject a member. Without a secret, datagrams go in
//! clear and chitchat's own cluster-name check is the only filter.
//!
//! Either way the socket counts bytes and dropped datagrams ([`Traffic`]),
//! for `GET /v1/members` and the bandwidth figures of the benchmark.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chitchat::transport::UdpSocket as ChitchatUdp;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::ChitchatEnvelope;
use sha2::{Digest, Sha256};

/// Largest UDP payload (IPv4).
const MAX_DATAGRAM: usize = 65_507;
/// First bytes of a sealed datagram: format and version.
const MAGIC: &[u8; 4] = b"WFG1";
const NONCE_LEN: usize = 24;

/// Bytes and datagrams through the gossip socket.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes sent (UDP payloads).
    pub sent_bytes: AtomicU64,
    /// Bytes received and accepted.
    pub received_bytes: AtomicU64,
    /// Datagrams dropped: not sealed with our key, or not a gossip message.
    pub rejected: AtomicU64,
    /// Messages too large to send sealed (dropped).
    pub oversized: AtomicU64,
    /// Empty acknowledgements not sent (see [`is_empty_ack`]).
    pub empty_acks: AtomicU64,
    /// Woken when a gossip message has been handed to chitchat.
    pub(super) arrived: tokio::sync::Notify,
}

/// Opens sockets that seal (with a key) or pass in clear.
pub(super) struct SealedTransport {
    cipher: Option<Arc<Cipher>>,
    traffic: Arc<Traffic>,
}

struct Cipher {
    aead: XChaCha20Poly1305,
    aad: Vec<u8>,
}

impl SealedTransport {
    /// A transport for `cluster`, sealing with `secret` when given.
    pub(super) fn new(cluster: &str, secret: Option<&str>, traffic: Arc<Traffic>) -> Self {
        let cipher = secret.map(|s| {
            let mut h = Sha256::new();
            h.update(b"wayfinder gossip key v1\0");
            h.update(cluster.as_bytes());
            h.update(b"\0");
            h.update(s.as_bytes());
            let key = h.finalize();
            Arc::new(Cipher {
                aead: XChaCha20Poly1305::new_from_slice(&key).expect("a 32-byte key"),
                aad: cluster.as_bytes().to_vec(),
            })
        });
        SealedTransport { cipher, traffic }
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, bind: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let real = tokio::net::UdpSocket::bind(bind)
            .await
            .with_context(|| format!("cannot listen for gossip on {bind}/udp"))?;
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let inner = ChitchatUdp::open(loopback).await?;
        let inner_addr = inner.local_addr()?;
        let tap = tokio::net::UdpSocket::bind(loopback).await?;
        let relays = Arc::new(Mutex::new(Relays::default()));
        let real = Arc::new(real);
        let receiver = tokio::spawn(receive(
            real.clone(),
            self.cipher.clone(),
            self.traffic.clone(),
            relays.clone(),
            inner_addr,
        ));
        Ok(Box::new(SealedSocket {
            real,
            inner,
            tap,
            cipher: self.cipher.clone(),
            traffic: self.traffic.clone(),
            relays,
            receiver,
            buf: vec![0; MAX_DATAGRAM],
            warned_oversized: AtomicBool::new(false),
        }))
    }
}

/// A socket chitchat talks to. chitchat encodes its messages only inside
/// its own UDP socket (the encoding is not public), so that socket, the
/// *inner* one, is bound on loopback and this one stands between it and
/// the network:
/// - sending, the inner socket sends the message to the *tap*, and the
///   bytes read there go out sealed from the real socket;
/// - receiving, a task opens each datagram the real socket gets and
///   passes the message to the inner socket from a *relay* socket of that
///   peer's own (one per peer, made on its first good datagram), so the
///   sender chitchat sees maps back to the peer: nothing depends on order
///   or on a datagram not being lost, and a message that reaches the inner
///   socket from anywhere but a relay is dropped.
struct SealedSocket {
    real: Arc<tokio::net::UdpSocket>,
    inner: ChitchatUdp,
    tap: tokio::net::UdpSocket,
    cipher: Option<Arc<Cipher>>,
    traffic: Arc<Traffic>,
    relays: Arc<Mutex<Relays>>,
    receiver: tokio::task::JoinHandle<()>,
    buf: Vec<u8>,
    warned_oversized: AtomicBool,
}

impl Drop for SealedSocket {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

/// The relay socket of each peer, both ways.
#[derive(Default)]
struct Relays {
    by_peer: HashMap<SocketAddr, Arc<tokio::net::UdpSocket>>,
    peer_of: HashMap<SocketAddr, SocketAddr>,
}

/// Most peers given a relay; past it the oldest-made are forgotten.
const MAX_RELAYS: usize = 4096;

impl Relays {
    fn relay(&mut self, peer: SocketAddr) -> std::io::Result<Arc<tokio::net::UdpSocket>> {
        if let Some(r) = self.by_peer.get(&peer) {
            return Ok(r.clone());
        }
        if self.by_peer.len() >= MAX_RELAYS {
            self.by_peer.clear();
            self.peer_of.clear();
        }
        let std = std::net::UdpSocket::bind(("127.0.0.1", 0))?;
        std.set_nonblocking(true)?;
        let socket = Arc::new(tokio::net::UdpSocket::from_std(std)?);
        self.peer_of.insert(socket.local_addr()?, peer);
        self.by_peer.insert(peer, socket.clone());
        Ok(socket)
    }
}

/// Opens what the real socket receives and hands it to the inner socket
/// through the sender's relay.
async fn receive(
    real: Arc<tokio::net::UdpSocket>,
    cipher: Option<Arc<Cipher>>,
    traffic: Arc<Traffic>,
    relays: Arc<Mutex<Relays>>,
    inner: SocketAddr,
) {
    let mut buf = vec![0; MAX_DATAGRAM];
    loop {
        let (n, from) = match real.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) if transient(&e) => continue,
            Err(e) => {
                tracing::error!(error = %e, "gossip socket failed; no longer receiving");
                return;
            }
        };
        let opened;
        let plain: &[u8] = match &cipher {
            Some(c) => match c.open(&buf[..n]) {
                Some(p) => {
                    opened = p;
                    &opened
                }
                None => {
                    reject(&traffic, from, "not sealed with this fleet's secret");
                    continue;
                }
            },
            None => &buf[..n],
        };
        if !plain.starts_with(&CHITCHAT_MAGIC) {
            reject(&traffic, from, "not a gossip message");
            continue;
        }
        traffic
            .received_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
        let relay = relays.lock().unwrap_or_else(|e| e.into_inner()).relay(from);
        match relay {
            Ok(r) => {
                let _ = r.send_to(plain, inner).await;
                traffic.arrived.notify_one();
            }
            Err(e) => tracing::warn!(error = %e, "gossip: no relay socket"),
        }
    }
}

/// The first bytes of every chitchat message.
const CHITCHAT_MAGIC: [u8; 2] = 45_139u16.to_le_bytes();
/// chitchat's message type of the third step of an exchange.
const CHITCHAT_ACK: u8 = 2;

/// Whether an encoded chitchat message is an acknowledgement carrying
/// nothing: magic (2 bytes), protocol version, message type, and a delta
/// of one byte, its end mark. It is the third step of an exchange, and
/// when this member has nothing newer for the peer (an idle fleet, most
/// exchanges) its receiver learns nothing from it (it holds no digest, so
/// no heartbeat either). Not sending it saves a sealed datagram of 49
/// bytes per exchange, three of every nine a member sends in a round.
fn is_empty_ack(plain: &[u8]) -> bool {
    plain.len() == 5
        && plain.starts_with(&CHITCHAT_MAGIC)
        && plain[3] == CHITCHAT_ACK
        && plain[4] == 0
}

fn reject(traffic: &Traffic, from: SocketAddr, why: &str) {
    let before = traffic.rejected.fetch_add(1, Ordering::Relaxed);
    // The first, then every 1000th: a stranger must not flood the log.
    if before % 1000 == 0 {
        tracing::warn!(%from, rejected = before + 1, "gossip datagram dropped: {why}");
    }
}

impl Cipher {
    fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let nonce = XNonce::generate();
        let sealed = self
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: &self.aad,
                },
            )
            .expect("sealing into a Vec cannot fail");
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(nonce.as_slice());
        out.extend_from_slice(&sealed);
        out
    }

    fn open(&self, datagram: &[u8]) -> Option<Vec<u8>> {
        let rest = datagram.strip_prefix(MAGIC.as_slice())?;
        if rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).ok()?;
        self.aead
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: &self.aad,
                },
            )
            .ok()
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.real.local_addr()?)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let tap = self.tap.local_addr()?;
        let inner = self.inner.local_addr()?;
        self.inner.send(tap, envelope).await?;
        let n = loop {
            let (n, from) = self.tap.recv_from(&mut self.buf).await?;
            if from == inner {
                break n;
            }
        };
        if is_empty_ack(&self.buf[..n]) {
            self.traffic.empty_acks.fetch_add(1, Ordering::Relaxed);
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        let sealed;
        let datagram: &[u8] = match &self.cipher {
            Some(c) => {
                sealed = c.seal(&self.buf[..n]);
                &sealed
            }
            None => &self.buf[..n],
        };
        if datagram.len() > MAX_DATAGRAM {
            // chitchat fills a delta up to the bare UDP limit; sealing adds
            // 44 bytes. The next round sends a smaller delta.
            self.traffic.oversized.fetch_add(1, Ordering::Relaxed);
            if !self.warned_oversized.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    bytes = datagram.len(),
                    "gossip message too large to send sealed; dropped (the fleet's state is close to 64 KB)"
                );
            }
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        match self.real.send_to(datagram, to).await {
            Ok(n) => {
                self.traffic
                    .sent_bytes
                    .fetch_add(n as u64, Ordering::Relaxed);
                Ok(SendOutcome { num_bytes_sent: n })
            }
            // An unreachable peer is chitchat's business (it will be
            // declared dead); the socket is fine.
            Err(e) if transient(&e) => Ok(SendOutcome { num_bytes_sent: 0 }),
            Err(e) => Err(e).context("gossip send"),
        }
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let mut outcome = self.inner.recv().await?;
            let peer = self
                .relays
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .peer_of
                .get(&outcome.from_addr)
                .copied();
            match peer {
                Some(p) => {
                    outcome.from_addr = p;
                    return Ok(outcome);
                }
                // Not passed on by us: sent to the loopback socket directly.
                None => reject(
                    &self.traffic,
                    outcome.from_addr,
                    "not from the gossip socket",
                ),
            }
        }
    }
}

fn transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionReset | OutOfMemory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_datagrams_open_only_with_the_same_secret_and_cluster() {
        let t = Arc::new(Traffic::default());
        let a = SealedTransport::new("c", Some("0123456789abcdef"), t.clone());
        let b = SealedTransport::new("c", Some("0123456789abcdeX"), t.clone());
        let other = SealedTransport::new("d", Some("0123456789abcdef"), t);
        let (ca, cb, cd) = (a.cipher.unwrap(), b.cipher.unwrap(), other.cipher.unwrap());
        let sealed = ca.seal(b"hello");
        assert_eq!(ca.open(&sealed).as_deref(), Some(&b"hello"[..]));
        assert!(cb.open(&sealed).is_none(), "wrong secret");
        assert!(cd.open(&sealed).is_none(), "other cluster");
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(ca.open(&flipped).is_none(), "tampered");
        assert_ne!(ca.seal(b"hello"), sealed, "fresh nonce each time");
    }
}
