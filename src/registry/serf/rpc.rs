//! The Serf agent's RPC protocol, as much as the source needs: msgpack
//! values over one TCP connection. A request is a header map (`Command`,
//! `Seq`) followed by its body, if any; an answer is a header (`Seq`,
//! `Error`) followed by a body for the calls that return one (`members`,
//! and every event of a `stream` after its first, bodiless answer).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Cursor;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::de::{DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why talking to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// Connecting, reading or writing.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A value that is not what the protocol says.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// The agent answered with an error.
    #[error("the agent refused {command}: {error}")]
    Refused {
        /// The call.
        command: &'static str,
        /// The agent's words.
        error: String,
    },
    /// The agent closed the connection.
    #[error("the agent closed the connection")]
    Closed,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RequestHeader {
    command: &'static str,
    seq: u64,
}

/// An answer's header.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResponseHeader {
    /// The call it answers.
    pub seq: u64,
    /// Empty when it succeeded.
    #[serde(default)]
    pub error: String,
}

/// One Serf member.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SerfMember {
    /// Its node name.
    pub name: String,
    /// Its address.
    pub addr: SerfIp,
    /// Its gossip port.
    pub port: u16,
    /// Its tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// `alive`, `leaving`, `left` or `failed`.
    pub status: String,
}

/// The `members` answer's body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MembersBody {
    /// Every member the agent knows.
    pub members: Vec<SerfMember>,
}

/// One event of a `stream`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EventBody {
    /// `member-join`, `member-leave`, `member-failed`, `member-update`,
    /// `member-reap` (or `user`, `query`: not asked for).
    pub event: String,
    /// The members it is about.
    #[serde(default)]
    pub members: Vec<SerfMember>,
}

/// An IP address as Serf sends it: 4 or 16 raw bytes (Go's `net.IP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerfIp(pub IpAddr);

impl<'de> Deserialize<'de> for SerfIp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SerfIp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("4 or 16 bytes of an IP address")
            }
            fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<SerfIp, E> {
                ip_of(b).ok_or_else(|| E::custom(format!("{} bytes are not an IP", b.len())))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<SerfIp, E> {
                // Raw bytes sent as a string by an older encoder, or text.
                ip_of(s.as_bytes())
                    .or_else(|| s.parse().ok().map(SerfIp))
                    .ok_or_else(|| E::custom("not an IP"))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<SerfIp, A::Error> {
                let mut v = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    v.push(b);
                }
                self.visit_bytes(&v)
            }
        }
        d.deserialize_any(V)
    }
}

fn ip_of(b: &[u8]) -> Option<SerfIp> {
    match b.len() {
        4 => Some(SerfIp(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))),
        16 => {
            let octets: [u8; 16] = b.try_into().ok()?;
            let v6 = Ipv6Addr::from(octets);
            Some(SerfIp(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }))
        }
        _ => None,
    }
}

/// One RPC connection.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    seq: u64,
}

impl Connection {
    /// Connects to the agent at `addr` and shakes hands (and authenticates
    /// with `auth_key`).
    pub async fn open(addr: SocketAddr, auth_key: Option<&str>) -> Result<Connection, RpcError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut c = Connection {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            seq: 0,
        };
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Handshake {
            version: u32,
        }
        let seq = c.send("handshake", Some(&Handshake { version: 1 })).await?;
        c.expect_ok("handshake", seq).await?;
        if let Some(key) = auth_key {
            #[derive(Serialize)]
            #[serde(rename_all = "PascalCase")]
            struct Auth<'a> {
                auth_key: &'a str,
            }
            let seq = c.send("auth", Some(&Auth { auth_key: key })).await?;
            c.expect_ok("auth", seq).await?;
        }
        Ok(c)
    }

    /// Sends a call; its sequence number.
    pub async fn send<B: Serialize>(
        &mut self,
        command: &'static str,
        body: Option<&B>,
    ) -> Result<u64, RpcError> {
        let seq = self.seq;
        self.seq += 1;
        let mut out = rmp_serde::to_vec_named(&RequestHeader { command, seq })
            .map_err(|e| RpcError::Decode(e.to_string()))?;
        if let Some(b) = body {
            out.extend(rmp_serde::to_vec_named(b).map_err(|e| RpcError::Decode(e.to_string()))?);
        }
        self.stream.write_all(&out).await?;
        Ok(seq)
    }

    /// Reads the bodiless answer to `seq`.
    async fn expect_ok(&mut self, command: &'static str, seq: u64) -> Result<(), RpcError> {
        let h: ResponseHeader = self.read().await?;
        if h.seq != seq {
            return Err(RpcError::Decode(format!(
                "answer to {} before {command}",
                h.seq
            )));
        }
        if !h.error.is_empty() {
            return Err(RpcError::Refused {
                command,
                error: h.error,
            });
        }
        Ok(())
    }

    /// Reads the next msgpack value.
    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<T, RpcError> {
        loop {
            if !self.buf.is_empty() {
                let mut cur = Cursor::new(&self.buf[..]);
                match rmp_serde::from_read::<_, T>(&mut cur) {
                    Ok(v) => {
                        let used = cur.position() as usize;
                        self.buf.drain(..used);
                        return Ok(v);
                    }
                    Err(e) if incomplete(&e) => {}
                    Err(e) => return Err(RpcError::Decode(e.to_string())),
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(RpcError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Whether decoding failed only because the value is not all here yet.
fn incomplete(e: &rmp_serde::decode::Error) -> bool {
    use rmp_serde::decode::Error as E;
    match e {
        E::InvalidMarkerRead(io) | E::InvalidDataRead(io) => {
            io.kind() == std::io::ErrorKind::UnexpectedEof
        }
        E::Syntax(s) => s.contains("EOF") || s.contains("eof"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_decode_with_raw_ip_bytes() {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct M<'a> {
            name: &'a str,
            #[serde(with = "serde_bytes_like")]
            addr: Vec<u8>,
            port: u16,
            tags: BTreeMap<&'a str, &'a str>,
            status: &'a str,
            protocol_min: u8,
        }
        mod serde_bytes_like {
            pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(v)
            }
        }
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Body<'a> {
            members: Vec<M<'a>>,
        }
        let mut mapped = vec![0u8; 10];
        mapped.extend([0xff, 0xff, 127, 0, 0, 1]);
        let bytes = rmp_serde::to_vec_named(&Body {
            members: vec![
                M {
                    name: "a",
                    addr: vec![127, 0, 0, 2],
                    port: 7946,
                    tags: [("service", "api")].into(),
                    status: "alive",
                    protocol_min: 1,
                },
                M {
                    name: "b",
                    addr: mapped,
                    port: 7947,
                    tags: BTreeMap::new(),
                    status: "failed",
                    protocol_min: 1,
                },
            ],
        })
        .unwrap();
        let body: MembersBody = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(body.members[0].addr.0.to_string(), "127.0.0.2");
        assert_eq!(body.members[1].addr.0.to_string(), "127.0.0.1");
        assert_eq!(body.members[0].tags["service"], "api");
        // A value cut short is incomplete, not an error.
        let cut = rmp_serde::from_slice::<MembersBody>(&bytes[..bytes.len() - 3]).unwrap_err();
        assert!(incomplete(&cut), "{cut:?}");
    }
}
