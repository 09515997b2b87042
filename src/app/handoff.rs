//! Hot restart: a running proxy hands its listening sockets (proxy, TLS
//! and admin listeners) and the state it keeps in memory (self-registered
//! instances with the time left on their TTLs, the operator's drains) to a
//! successor process, as HAProxy's `-x` and Envoy's hot restart do.
//!
//! The running proxy, started with `--handoff-socket PATH`, listens on
//! that unix socket. `wayfinder run --takeover PATH` connects, and the
//! protocol is three steps, each bounded by a timeout:
//!
//! 1. the predecessor pauses its admin API (stops accepting, closes its
//!    connections after their current request) so no registration changes
//!    after the copy, and sends one [`Offer`] (JSON) with the listening
//!    sockets attached (`SCM_RIGHTS`; duplicates of its own, so the kernel's
//!    accept queues are shared and nothing queued is lost);
//! 2. the successor starts on those sockets (binding only listeners its
//!    config adds), takes over the state, and once serving writes
//!    `serving\n`;
//! 3. the predecessor stops accepting and drains ([`Drain::AfterNextResponse`]:
//!    no pre-stop delay, since the successor already serves; each HTTP/1
//!    connection is closed after its next response so no client's request
//!    races a close), then exits.
//!
//! If the successor goes away before step 3, the predecessor resumes its
//! admin API and keeps serving. File descriptors are passed with `rustix`
//! (`sendmsg`/`recvmsg` with `SCM_RIGHTS`), which hands received
//! descriptors over as `OwnedFd` without `unsafe` code.
//!
//! [`Drain::AfterNextResponse`]: crate::proxy::server::Drain::AfterNextResponse

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::registry::registrations::{Carried, Registrations};
use crate::registry::{InstanceKey, Registry};

/// Longest wait for the running proxy to answer a takeover (connecting
/// and receiving its offer).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest the running proxy waits for its successor to say it serves.
pub const SERVING_TIMEOUT: Duration = Duration::from_secs(60);

/// Most listening sockets one hand-over carries (the kernel's limit for
/// one message is 253).
const MAX_SOCKETS: usize = 200;

/// Largest offer accepted (JSON).
const MAX_OFFER: usize = 64 << 20;

/// What the successor writes once it serves.
const SERVING: &[u8] = b"serving\n";

/// Why a takeover failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// Nothing listens on the socket, or it did not answer in time.
    #[error("--takeover {}: no running wayfinder answered ({source}); start the running one with --handoff-socket {}", path.display(), path.display())]
    NoAnswer {
        /// The socket.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The running proxy refused (its reason).
    #[error("--takeover {}: the running wayfinder refused: {reason}", path.display())]
    Refused {
        /// The socket.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The offer was malformed.
    #[error("--takeover {}: unreadable hand-over: {reason}", path.display())]
    Malformed {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// `--handoff-socket` cannot be listened on.
    #[error("--handoff-socket {}: {source}", path.display())]
    Listen {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Which listener a socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerRole {
    /// A plain proxy listener (`listen`).
    Proxy,
    /// A TLS listener (`[[tls]] listen`).
    Tls,
    /// The admin API (`[admin] listen`).
    Admin,
}

/// A listening socket the process can hand over: a duplicate of the one
/// it serves on.
#[derive(Debug)]
pub(crate) struct Handed {
    pub role: ListenerRole,
    pub addr: SocketAddr,
    pub fd: OwnedFd,
}

/// An operator's drain, as handed over.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CarriedDrain {
    service: Arc<str>,
    address: SocketAddr,
    since: SystemTime,
}

/// The predecessor's one message: the sockets attached to it (in the order
/// of `listeners`) and its state; or why it refuses.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum Offer {
    Sockets {
        pid: u32,
        version: String,
        listeners: Vec<(ListenerRole, SocketAddr)>,
        /// `None`: the registrations are kept elsewhere (etcd).
        registrations: Option<Vec<Carried>>,
        drains: Vec<CarriedDrain>,
    },
    Refused {
        reason: String,
    },
}

// === the predecessor ===

/// What the running proxy hands over, and the controls it pauses.
#[derive(Debug)]
pub(crate) struct Offerer {
    pub sockets: Vec<Handed>,
    pub registrations: Arc<Registrations>,
    pub registry: Arc<Registry>,
    /// `true` pauses the admin API.
    pub admin_pause: watch::Sender<bool>,
    /// Why a takeover is refused, if it is (gossip's UDP socket is not
    /// handed over).
    pub refuse: Option<String>,
}

/// The hand-over socket this process listens on for a successor.
#[derive(Debug)]
pub(crate) struct HandoffSocket {
    listener: tokio::net::UnixListener,
    path: PathBuf,
    /// Where it was bound, until [`HandoffSocket::publish`] moves it to
    /// `path`.
    bound: PathBuf,
}

impl HandoffSocket {
    /// Binds beside `path` (so a failure is found before anything starts
    /// and the predecessor's socket stays reachable until this process
    /// serves).
    pub(crate) fn bind(path: &Path) -> Result<HandoffSocket, HandoffError> {
        let fail = |source| HandoffError::Listen {
            path: path.to_owned(),
            source,
        };
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{}", std::process::id()));
        let bound = PathBuf::from(name);
        let _ = std::fs::remove_file(&bound);
        let listener = tokio::net::UnixListener::bind(&bound).map_err(fail)?;
        Ok(HandoffSocket {
            listener,
            path: path.to_owned(),
            bound,
        })
    }

    /// Moves the socket to its path (replacing the predecessor's or a
    /// stale one); returns its inode, by which the path is known to be
    /// this process's.
    pub(crate) fn publish(&mut self) -> Result<u64, HandoffError> {
        use std::os::unix::fs::MetadataExt;
        let fail = |source| HandoffError::Listen {
            path: self.path.clone(),
            source,
        };
        std::fs::rename(&self.bound, &self.path).map_err(fail)?;
        self.bound = self.path.clone();
        Ok(std::fs::metadata(&self.path).map_err(fail)?.ino())
    }
}

impl Drop for HandoffSocket {
    fn drop(&mut self) {
        if self.bound != self.path {
            let _ = std::fs::remove_file(&self.bound);
        }
    }
}

/// Removes the socket file at `path` if it is still the one this process
/// published (`inode`), not a successor's.
pub(crate) fn remove_if_ours(path: &Path, inode: u64) {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata(path).is_ok_and(|m| m.ino() == inode) {
        let _ = std::fs::remove_file(path);
    }
}

/// Answers successors on `listener` until one takes over; returns then.
/// A failed attempt is logged, the admin API resumes, and the next
/// successor may try.
pub(crate) async fn serve(socket: HandoffSocket, offerer: Offerer) {
    let offerer = Arc::new(offerer);
    loop {
        let stream = match socket.listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "hand-over socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tracing::info!("a successor asks to take over; pausing the admin API");
        let _ = offerer.admin_pause.send(true);
        let o = offerer.clone();
        let outcome = match stream.into_std() {
            Ok(stream) => tokio::task::spawn_blocking(move || offer(stream, &o))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e))),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                tracing::info!("the successor serves; stopping accepting and draining");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "hand-over failed; still serving, admin API resumed");
                let _ = offerer.admin_pause.send(false);
            }
        }
    }
}

/// Sends the offer on `stream` and waits for the successor to serve.
fn offer(stream: UnixStream, offerer: &Offerer) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    if let Some(reason) = &offerer.refuse {
        let msg = Offer::Refused {
            reason: reason.clone(),
        };
        send(&stream, &msg, &[])?;
        return Err(io::Error::other(format!("refused: {reason}")));
    }
    let drains = offerer
        .registry
        .operator_drains()
        .into_iter()
        .map(|(k, since)| CarriedDrain {
            service: k.service,
            address: k.addr,
            since,
        })
        .collect();
    let msg = Offer::Sockets {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        listeners: offerer.sockets.iter().map(|s| (s.role, s.addr)).collect(),
        registrations: offerer.registrations.hand_over(),
        drains,
    };
    let fds: Vec<_> = offerer.sockets.iter().map(|s| s.fd.as_fd()).collect();
    send(&stream, &msg, &fds)?;
    stream.set_read_timeout(Some(SERVING_TIMEOUT))?;
    let mut answer = [0u8; SERVING.len()];
    (&stream).read_exact(&mut answer).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("the successor did not say it serves within {SERVING_TIMEOUT:?}: {e}"),
        )
    })?;
    if answer != SERVING {
        return Err(io::Error::other("the successor answered something else"));
    }
    Ok(())
}

/// Writes `msg` (length-prefixed JSON) with `fds` attached to its first
/// bytes.
fn send(stream: &UnixStream, msg: &Offer, fds: &[std::os::fd::BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_SOCKETS {
        return Err(io::Error::other(format!(
            "{} listeners; at most {MAX_SOCKETS} can be handed over",
            fds.len()
        )));
    }
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let len = u32::try_from(body.len())
        .map_err(io::Error::other)?
        .to_be_bytes();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("no room for the sockets in the message"));
    }
    let iov = [IoSlice::new(&len), IoSlice::new(&body)];
    let sent = rustix::net::sendmsg(stream, &iov, &mut control, SendFlags::NOSIGNAL)?;
    // The descriptors went with the first bytes; the rest is plain data.
    let rest: Vec<u8> = len.iter().chain(&body).skip(sent).copied().collect();
    let mut w = stream;
    w.write_all(&rest)
}

// === the successor ===

/// What a successor received from the running proxy.
#[derive(Debug)]
pub struct Inherited {
    path: PathBuf,
    stream: UnixStream,
    from_pid: u32,
    sockets: Vec<Option<Handed>>,
    registrations: Option<Vec<Carried>>,
    drains: Vec<CarriedDrain>,
}

/// Connects to the running proxy at `path` and receives its sockets and
/// state (bounded by [`ANSWER_TIMEOUT`]).
pub async fn take_over(path: &Path) -> Result<Inherited, HandoffError> {
    let path = path.to_owned();
    let p = path.clone();
    tokio::task::spawn_blocking(move || receive(&p))
        .await
        .unwrap_or_else(|e| {
            Err(HandoffError::Malformed {
                path,
                reason: e.to_string(),
            })
        })
}

fn receive(path: &Path) -> Result<Inherited, HandoffError> {
    let no_answer = |source: io::Error| HandoffError::NoAnswer {
        path: path.to_owned(),
        source: match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {ANSWER_TIMEOUT:?}"),
            ),
            _ => source,
        },
    };
    let malformed = |reason: String| HandoffError::Malformed {
        path: path.to_owned(),
        reason,
    };
    let stream = UnixStream::connect(path).map_err(no_answer)?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(no_answer)?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut len = [0u8; 4];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut len)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| no_answer(e.into()))?;
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    if got.bytes == 0 {
        return Err(no_answer(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed without an answer",
        )));
    }
    let mut r = &stream;
    r.read_exact(&mut len[got.bytes..]).map_err(no_answer)?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_OFFER {
        return Err(malformed(format!("{n} bytes")));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body).map_err(no_answer)?;
    let offer: Offer = serde_json::from_slice(&body).map_err(|e| malformed(e.to_string()))?;
    let (pid, version, listeners, registrations, drains) = match offer {
        Offer::Refused { reason } => {
            return Err(HandoffError::Refused {
                path: path.to_owned(),
                reason,
            })
        }
        Offer::Sockets {
            pid,
            version,
            listeners,
            registrations,
            drains,
        } => (pid, version, listeners, registrations, drains),
    };
    if listeners.len() != fds.len() {
        return Err(malformed(format!(
            "{} listeners named, {} sockets attached",
            listeners.len(),
            fds.len()
        )));
    }
    tracing::info!(
        from_pid = pid,
        from_version = %version,
        listeners = listeners.len(),
        registrations = registrations.as_ref().map_or(0, Vec::len),
        "received the running proxy's sockets"
    );
    let sockets = listeners
        .into_iter()
        .zip(fds)
        .map(|((role, addr), fd)| Some(Handed { role, addr, fd }))
        .collect();
    Ok(Inherited {
        path: path.to_owned(),
        stream,
        from_pid: pid,
        sockets,
        registrations,
        drains,
    })
}

impl Inherited {
    /// The inherited listener for `addr` in `role`, if one was handed over:
    /// the one bound to `addr`, or for a port-0 `addr` the first one left
    /// of that role on the same IP.
    pub(crate) fn take(
        &mut self,
        role: ListenerRole,
        addr: SocketAddr,
    ) -> Option<std::net::TcpListener> {
        let exact = self
            .sockets
            .iter()
            .position(|s| matches!(s, Some(h) if h.role == role && h.addr == addr));
        let i = exact.or_else(|| {
            (addr.port() == 0).then(|| {
                self.sockets.iter().position(
                    |s| matches!(s, Some(h) if h.role == role && h.addr.ip() == addr.ip()),
                )
            })?
        })?;
        let handed = self.sockets[i].take()?;
        let l = std::net::TcpListener::from(handed.fd);
        match l.set_nonblocking(true).and_then(|()| l.local_addr()) {
            Ok(_) => Some(l),
            Err(e) => {
                tracing::warn!(addr = %handed.addr, error = %e, "inherited socket unusable; binding anew");
                None
            }
        }
    }

    /// Takes over the handed state into `registrations` and `registry`.
    pub(crate) fn restore(&mut self, registrations: &Registrations, registry: &Registry) {
        registry.restore_operator_drains(self.drains.drain(..).map(|d| {
            (
                InstanceKey {
                    service: d.service,
                    addr: d.address,
                },
                d.since,
            )
        }));
        if let Some(carried) = self.registrations.take() {
            registrations.take_over(carried);
        }
    }

    /// Tells the predecessor this process serves: it stops accepting and
    /// drains. Sockets the config no longer names are closed.
    pub(crate) fn confirm(mut self) -> io::Result<()> {
        for h in self.sockets.drain(..).flatten() {
            tracing::info!(addr = %h.addr, role = ?h.role, "closing an inherited listener the config no longer names");
        }
        self.stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        self.stream.write_all(SERVING)?;
        tracing::info!(
            from_pid = self.from_pid,
            socket = %self.path.display(),
            "took over; the previous process drains"
        );
        Ok(())
    }
}
