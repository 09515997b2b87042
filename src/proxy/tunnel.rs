//! Tunnels: a request that turns its exchange into a byte stream of another
//! protocol (WebSocket) once the instance agrees. HTTP has two forms of it,
//! and either client form reaches either kind of instance:
//!
//! | form | asks with | agreed by |
//! |---|---|---|
//! | HTTP/1.1 upgrade (RFC 9110 section 7.8) | `GET` + `Connection: upgrade` + `Upgrade: P` | `101 Switching Protocols` |
//! | HTTP/2 extended CONNECT (RFC 8441) | `CONNECT` + `:protocol = P` | a `2xx` |
//!
//! The form towards the instance follows the service's protocol: HTTP/2
//! instances (`h2c`, `h2`) get extended CONNECT, once the instance has
//! offered it (`SETTINGS_ENABLE_CONNECT_PROTOCOL`); every other instance
//! gets an HTTP/1.1 upgrade. WebSocket's handshake differs between the two
//! (RFC 8441 section 5: HTTP/2 drops `Sec-WebSocket-Key` and
//! `Sec-WebSocket-Accept`), so when the forms differ the proxy takes that
//! part: it sends an HTTP/1.1 instance a key of its own and checks the
//! instance's accept, or answers an HTTP/1.1 client's key itself.
//!
//! What the request may ask (a protocol the route allows, named as a
//! token) is the request policy's decision, the same for both forms; this
//! module rewrites the two ends and relays the bytes once both switched.

use base64::Engine as _;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::policy::request::protocol_name;
use super::upstream::Sender;
use crate::registry::InFlightGuard;

/// `Sec-WebSocket-Key`: what an HTTP/1.1 WebSocket client sends.
static WS_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
/// `Sec-WebSocket-Accept`: what an HTTP/1.1 WebSocket server answers.
static WS_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

/// The GUID RFC 6455 (section 1.3) appends to the key before hashing.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// One of the two forms of asking for a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// HTTP/1.1 `Upgrade`, agreed by `101`.
    Upgrade,
    /// HTTP/2 extended CONNECT, agreed by a `2xx`.
    Connect,
}

/// A request asking for a tunnel: the form on each side and what the
/// WebSocket handshake needs across them.
#[derive(Debug)]
pub(crate) struct Tunnel {
    /// How the client asked.
    pub client: Form,
    /// How the instance is asked.
    pub instance: Form,
    /// The protocol's name as asked (`websocket`).
    protocol: HeaderValue,
    /// The HTTP/1.1 client's `Sec-WebSocket-Key`, answered by the proxy
    /// when the instance is asked by extended CONNECT.
    client_key: Option<HeaderValue>,
    /// The accept an HTTP/1.1 instance must answer to the key the proxy
    /// sent it for an HTTP/2 client.
    expected_accept: Option<String>,
}

impl Tunnel {
    /// A tunnel to `protocol` (the `Upgrade` value or `:protocol`) asked in
    /// `client` form of an instance spoken to over HTTP/2 (`h2`) or not.
    pub(crate) fn new(client: Form, protocol: &[u8], h2_instance: bool) -> Option<Tunnel> {
        let protocol = HeaderValue::from_bytes(protocol).ok()?;
        Some(Tunnel {
            client,
            instance: if h2_instance {
                Form::Connect
            } else {
                Form::Upgrade
            },
            protocol,
            client_key: None,
            expected_accept: None,
        })
    }

    /// Whether the protocol is WebSocket, whose handshake the proxy
    /// translates between the forms.
    fn websocket(&self) -> bool {
        protocol_name(self.protocol.as_bytes()).eq_ignore_ascii_case(b"websocket")
    }

    /// The `:protocol` value for extended CONNECT: the protocol's name.
    fn connect_protocol(&self) -> hyper::ext::Protocol {
        let name = protocol_name(self.protocol.as_bytes());
        hyper::ext::Protocol::from(std::str::from_utf8(name).unwrap_or("websocket"))
    }

    /// Rewrites the request for the instance: its method, and `headers`
    /// (already the policy's, with `Connection`/`Upgrade` for an upgrade);
    /// returns the `:protocol` extension to send when the instance is asked
    /// by extended CONNECT.
    pub(crate) fn for_instance(
        &mut self,
        method: &mut Method,
        headers: &mut HeaderMap,
    ) -> Option<hyper::ext::Protocol> {
        match (self.client, self.instance) {
            (Form::Upgrade, Form::Upgrade) => None,
            (Form::Connect, Form::Upgrade) => {
                *method = Method::GET;
                if self.websocket() {
                    let key = new_key();
                    self.expected_accept = Some(accept_for(key.as_bytes()));
                    if let Ok(v) = HeaderValue::from_str(&key) {
                        headers.insert(WS_KEY.clone(), v);
                    }
                    headers
                        .entry(HeaderName::from_static("sec-websocket-version"))
                        .or_insert(HeaderValue::from_static("13"));
                }
                None
            }
            (client, Form::Connect) => {
                *method = Method::CONNECT;
                if client == Form::Upgrade {
                    self.client_key = headers.remove(&WS_KEY);
                }
                headers.remove(header::CONNECTION);
                headers.remove(header::UPGRADE);
                Some(self.connect_protocol())
            }
        }
    }

    /// Whether the instance's answer (`status`, after the response policy
    /// accepted it) opens the tunnel; `Err` names why it is a bad answer.
    pub(crate) fn opens(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Result<bool, &'static str> {
        match self.instance {
            Form::Upgrade if status == StatusCode::SWITCHING_PROTOCOLS => {
                if let Some(expected) = &self.expected_accept {
                    let got = headers.get(&WS_ACCEPT).map(HeaderValue::as_bytes);
                    if got != Some(expected.as_bytes()) {
                        return Err("WebSocket accept key does not match the key sent");
                    }
                }
                Ok(true)
            }
            // An HTTP/2 client takes any 2xx to its CONNECT as the tunnel
            // being open: an instance that answered without switching
            // cannot be relayed as one.
            Form::Upgrade if self.client == Form::Connect && status.is_success() => {
                Err("answered the upgrade without switching protocols")
            }
            Form::Upgrade => Ok(false),
            Form::Connect => Ok(status.is_success()),
        }
    }

    /// Turns the instance's answer that opened the tunnel into the
    /// client's: `101` with the upgrade's fields for an HTTP/1.1 client,
    /// `200` for an HTTP/2 one. `headers` are the instance's, as the
    /// response policy relays them.
    pub(crate) fn for_client(&self, status: &mut StatusCode, headers: &mut HeaderMap) {
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::TRANSFER_ENCODING);
        match self.client {
            Form::Upgrade => {
                *status = StatusCode::SWITCHING_PROTOCOLS;
                if self.instance == Form::Connect {
                    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    headers.insert(header::UPGRADE, self.protocol.clone());
                    if let Some(key) = &self.client_key {
                        if let Ok(v) = HeaderValue::from_str(&accept_for(key.as_bytes())) {
                            headers.insert(WS_ACCEPT.clone(), v);
                        }
                    }
                }
            }
            Form::Connect => {
                *status = StatusCode::OK;
                headers.remove(&WS_ACCEPT);
                headers.remove(header::CONNECTION);
                headers.remove(header::UPGRADE);
            }
        }
    }
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64 (RFC 6455 section
/// 4.1).
fn new_key() -> String {
    use ring::rand::SecureRandom as _;
    let mut nonce = [0u8; 16];
    // The system's generator does not fail on Linux; a zero nonce would
    // still be a valid key (it only guards against caches, not attackers).
    let _ = ring::rand::SystemRandom::new().fill(&mut nonce);
    base64::engine::general_purpose::STANDARD.encode(nonce)
}

/// The `Sec-WebSocket-Accept` for `key`: base64 of SHA-1 of the key and
/// RFC 6455's GUID.
fn accept_for(key: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(WS_GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// Relays bytes both ways once client and instance have both switched
/// protocols. The request stays counted in flight (and an HTTP/2
/// instance's stream counted on its connection) while the tunnel is open.
pub(crate) async fn relay(
    client: OnUpgrade,
    upstream: OnUpgrade,
    guard: InFlightGuard,
    sender: Sender,
) {
    let addr = guard.instance().addr();
    let service = guard.instance().key().service.clone();
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (c, u) => {
            tracing::debug!(%service, instance = %addr, client_ok = c.is_ok(), upstream_ok = u.is_ok(), "upgrade did not complete");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => tracing::debug!(%service, instance = %addr, up, down, "tunnel closed"),
        Err(e) => {
            tracing::debug!(%service, instance = %addr, error = %e, "tunnel ended with an error")
        }
    }
    drop(sender);
    drop(guard);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_is_rfc_6455s_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_for(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn keys_are_16_bytes_and_differ() {
        let (a, b) = (new_key(), new_key());
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&a)
                .unwrap()
                .len(),
            16
        );
        assert_ne!(a, b);
    }

    #[test]
    fn http2_client_to_http1_instance_sends_a_key_and_checks_the_accept() {
        let mut t = Tunnel::new(Form::Connect, b"websocket", false).unwrap();
        let (mut method, mut headers) = (Method::CONNECT, HeaderMap::new());
        assert!(t.for_instance(&mut method, &mut headers).is_none());
        assert_eq!(method, Method::GET);
        let key = headers.get(&WS_KEY).expect("a key is sent").clone();
        assert_eq!(headers["sec-websocket-version"], "13");

        let mut answer = HeaderMap::new();
        answer.insert(WS_ACCEPT.clone(), HeaderValue::from_static("wrong"));
        assert!(t.opens(StatusCode::SWITCHING_PROTOCOLS, &answer).is_err());
        answer.insert(
            WS_ACCEPT.clone(),
            HeaderValue::from_str(&accept_for(key.as_bytes())).unwrap(),
        );
        assert_eq!(t.opens(StatusCode::SWITCHING_PROTOCOLS, &answer), Ok(true));
        // A 200 to a GET would read as an open tunnel to the client.
        assert!(t.opens(StatusCode::OK, &answer).is_err());
        assert_eq!(t.opens(StatusCode::FORBIDDEN, &answer), Ok(false));

        let mut status = StatusCode::SWITCHING_PROTOCOLS;
        t.for_client(&mut status, &mut answer);
        assert_eq!(status, StatusCode::OK);
        assert!(answer.get(&WS_ACCEPT).is_none());
    }

    #[test]
    fn http1_client_to_http2_instance_gets_its_key_answered() {
        let mut t = Tunnel::new(Form::Upgrade, b"websocket", true).unwrap();
        let mut method = Method::GET;
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            WS_KEY.clone(),
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        let protocol = t.for_instance(&mut method, &mut headers).unwrap();
        assert_eq!(protocol.as_ref(), b"websocket");
        assert_eq!(method, Method::CONNECT);
        assert!(headers.is_empty(), "{headers:?}");

        assert_eq!(t.opens(StatusCode::OK, &HeaderMap::new()), Ok(true));
        assert_eq!(t.opens(StatusCode::NOT_FOUND, &HeaderMap::new()), Ok(false));
        let (mut status, mut out) = (StatusCode::OK, HeaderMap::new());
        out.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        t.for_client(&mut status, &mut out);
        assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(out["upgrade"], "websocket");
        assert_eq!(out["connection"], "upgrade");
        assert_eq!(out["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(out.get(header::CONTENT_LENGTH).is_none());
    }

    #[test]
    fn same_forms_pass_through() {
        let mut t = Tunnel::new(Form::Connect, b"websocket", true).unwrap();
        let (mut method, mut headers) = (Method::CONNECT, HeaderMap::new());
        assert!(t.for_instance(&mut method, &mut headers).is_some());
        assert!(headers.is_empty());
        let mut t = Tunnel::new(Form::Upgrade, b"websocket", false).unwrap();
        let mut method = Method::GET;
        assert!(t.for_instance(&mut method, &mut headers).is_none());
        assert_eq!(method, Method::GET);
        assert_eq!(t.opens(StatusCode::SWITCHING_PROTOCOLS, &headers), Ok(true));
        assert_eq!(t.opens(StatusCode::OK, &headers), Ok(false));
    }
}
