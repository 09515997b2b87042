//! The fast path without sockets, for the fuzz targets (feature
//! `fuzzing`; see `crate::fuzzing`): the steps [`super::conn`] takes on a
//! client's request bytes and on an instance's response bytes, in its
//! order, on byte strings that arrive in chosen pieces. Only the I/O, the
//! timers, routing and the attempt loop are left out; the parsing, the
//! policy, the limits and the body scans are the connection's own.

use super::body::{RequestBody, RequestBodyScan, ResponseBodyScan};
use super::head::{self, HeadError};
use super::upstream::MAX_INTERIM;
use crate::config::defaults::limits;
use crate::proxy::policy::chunked::{rechunk, ChunkedScanner};
use crate::proxy::policy::request::{self as policy_request, protocol_name};
use crate::proxy::policy::response::Asked as PolicyAsked;
use crate::proxy::policy::Framing as PolicyFraming;
use crate::proxy::upstream::MAX_RESPONSE_HEAD;
use crate::proxy::ProxyError;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

impl From<PolicyFraming> for Framing {
    fn from(f: PolicyFraming) -> Self {
        match f {
            PolicyFraming::Empty => Framing::Empty,
            PolicyFraming::Length(n) => Framing::Length(n),
            PolicyFraming::Chunked => Framing::Chunked,
            PolicyFraming::UntilClose => Framing::UntilClose,
        }
    }
}

/// The client's side of the hop.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hop {
    /// The client is one of `proxy.trusted_proxies`.
    pub trusted: bool,
    /// `proxy.forwarded`: write an RFC 7239 `Forwarded` field.
    pub forwarded: bool,
}

/// What the fast path does with the first request of a client's bytes.
#[derive(Debug)]
pub enum Request {
    /// It waits for more bytes.
    Partial,
    /// It answers with this status and closes.
    Refused { status: u16, why: String },
    /// The general (hyper) path takes the connection.
    Fallback(&'static str),
    /// It forwards the request.
    Forwarded(Forwarded),
}

/// A request the fast path forwards.
#[derive(Debug)]
pub struct Forwarded {
    pub method: String,
    /// The authority routed on, sent as `Host`.
    pub authority: String,
    /// Where the head ends in the input.
    pub head_len: usize,
    /// Where the request (head and body) ends in the input.
    pub end: usize,
    pub framing: Framing,
    /// The connection closes after the exchange.
    pub close: bool,
    /// The bytes the instance gets: head and body.
    pub out: Vec<u8>,
}

/// Client address used in the hop.
const CLIENT_IP: &str = "10.0.0.9";

/// Prefix lengths of `input` at which pieces arrive, increasing, ending
/// with the whole input.
fn pieces(input: &[u8], arrivals: &[usize]) -> Vec<usize> {
    let mut out: Vec<usize> = arrivals
        .iter()
        .map(|&a| a.min(input.len()))
        .filter(|&a| a > 0)
        .collect();
    out.push(input.len());
    out.sort_unstable();
    out.dedup();
    out
}

/// The first request of `input`, as `conn::request` takes it.
pub fn request(input: &[u8], arrivals: &[usize], hop: Hop) -> Request {
    let via = b"1.1 wayfinder";
    let hop = policy_request::Hop {
        client_ip: CLIENT_IP,
        trusted: hop.trusted,
        proto: "http",
        via,
        forwarded: hop.forwarded,
        max_uri_bytes: limits::MAX_URI_BYTES,
        // Off, as by default: a made-up id would differ run to run.
        request_id: None,
    };
    let max_header_bytes = limits::MAX_HEADER_BYTES;
    let refused = |e: ProxyError| Request::Refused {
        status: e.status().as_u16(),
        why: e.to_string(),
    };
    let pieces = pieces(input, arrivals);
    let mut out = Vec::new();
    let mut at = 0;
    // The head, parsed again each time bytes arrive (as the connection does).
    let (forwarded, mut scan) = loop {
        let Some(&avail) = pieces.get(at) else {
            return Request::Partial;
        };
        at += 1;
        let buf = &input[..avail];
        let mut slots = head::header_slots();
        match head::parse_request(buf, &mut slots, &hop) {
            Ok(Some(h)) => {
                if h.len > max_header_bytes {
                    return refused(ProxyError::HeadersTooLarge {
                        size: h.len,
                        limit: max_header_bytes,
                    });
                }
                let plan = &h.plan;
                // Routing is left out; the default `proxy.upgrades`
                // (websocket) is allowed, so hyper would take those.
                if plan
                    .upgrade
                    .is_some_and(|u| protocol_name(u).eq_ignore_ascii_case(b"websocket"))
                {
                    return Request::Fallback("upgrade");
                }
                let target = plan.target.forward(0);
                h.write_upstream(&target, &hop, &mut out);
                let forwarded = Forwarded {
                    method: h.method.to_owned(),
                    authority: plan.target.authority.to_owned(),
                    head_len: h.len,
                    end: 0,
                    framing: plan.body.into(),
                    close: plan.close,
                    out: Vec::new(),
                };
                let scan = RequestBodyScan::new(plan.body, h.len, h.declared_trailers());
                break (forwarded, scan);
            }
            Ok(None) => {}
            Err(HeadError::Fallback(why)) => return Request::Fallback(why),
            Err(HeadError::Refuse(e)) => return refused(e),
        }
        // `Conn::head_over_limits`.
        let line = buf.iter().position(|&b| b == b'\n');
        if line.map_or(buf.len(), |l| l) > limits::MAX_URI_BYTES + 32 {
            return refused(ProxyError::UriTooLong {
                size: line.unwrap_or(buf.len()),
                limit: limits::MAX_URI_BYTES,
            });
        }
        if buf.len() > max_header_bytes {
            return refused(ProxyError::HeadersTooLarge {
                size: buf.len(),
                limit: max_header_bytes,
            });
        }
    };
    // The body, looked at again each time bytes arrive, starting with the
    // piece that completed the head.
    at -= 1;
    loop {
        let Some(&avail) = pieces.get(at) else {
            return Request::Partial;
        };
        at += 1;
        match scan.step(&input[..avail], &mut out) {
            RequestBody::Ready { end } => {
                return Request::Forwarded(Forwarded {
                    end,
                    out,
                    ..forwarded
                })
            }
            RequestBody::Fallback => return Request::Fallback("body"),
            RequestBody::More => {}
            RequestBody::Bad(e) => return refused(ProxyError::BadRequest(e.0)),
        }
    }
}

/// What the request asked for that shapes the response.
#[derive(Debug, Clone, Copy, Default)]
pub struct Asked {
    /// The method was HEAD.
    pub head: bool,
    /// The client sent `TE: trailers`.
    pub accepts_trailers: bool,
    /// The client's connection closes after this exchange.
    pub close: bool,
}

/// What the fast path does with an instance's bytes.
#[derive(Debug)]
pub enum Response {
    /// It waits for more bytes of a head.
    Partial,
    /// Nothing was sent to the client: it gets a 502.
    Bad(&'static str),
    /// It relays the response.
    Relayed(Relayed),
}

/// A relayed response.
#[derive(Debug)]
pub struct Relayed {
    pub status: u16,
    /// Interim (1xx) responses before the final one, relayed or skipped.
    pub interim: usize,
    /// Where the final head ends in the input.
    pub head_len: usize,
    pub framing: Framing,
    /// The upstream connection may be pooled after the body.
    pub reusable: bool,
    /// The body ended where its framing said (`UntilClose`: never).
    pub complete: bool,
    /// The body was malformed after the client got part of the answer.
    pub broken: bool,
    /// Where the response ended in the input, when complete.
    pub end: usize,
    /// The bytes the client got.
    pub out: Vec<u8>,
}

/// An instance's answer, as `conn::response_head` and `Conn::relay_body`
/// take it.
pub fn response(input: &[u8], arrivals: &[usize], asked: Asked) -> Response {
    let pieces = pieces(input, arrivals);
    let policy_asked = PolicyAsked {
        head: asked.head,
        upgrade: None,
    };
    let mut out = Vec::new();
    let mut start = 0;
    let mut interim = 0;
    let mut at = 0;
    let (mut relayed, mut scan) = 'head: loop {
        let Some(&avail) = pieces.get(at) else {
            return Response::Partial;
        };
        at += 1;
        while start < avail {
            let buf = &input[start..avail];
            let mut slots = head::header_slots();
            match head::parse_response(buf, &mut slots, policy_asked) {
                Ok(Some(h)) if h.len > MAX_RESPONSE_HEAD => {
                    return Response::Bad("response head too large")
                }
                Ok(Some(h)) if h.status < 200 => {
                    interim += 1;
                    if interim > MAX_INTERIM {
                        return Response::Bad("too many interim responses");
                    }
                    if h.is_interim() {
                        h.write_client(&mut out);
                        out.extend_from_slice(b"\r\n");
                    }
                    start += h.len;
                }
                Ok(Some(h)) => {
                    let plan = &h.plan;
                    let trailers = if asked.accepts_trailers && plan.body == PolicyFraming::Chunked
                    {
                        h.declared_trailers()
                    } else {
                        Vec::new()
                    };
                    h.write_client(&mut out);
                    let close = asked.close || plan.body == PolicyFraming::UntilClose;
                    if close {
                        out.extend_from_slice(b"connection: close\r\n");
                    }
                    out.extend_from_slice(b"\r\n");
                    start += h.len;
                    let relayed = Relayed {
                        status: h.status,
                        interim,
                        head_len: start,
                        framing: plan.body.into(),
                        reusable: plan.reusable,
                        complete: false,
                        broken: false,
                        end: 0,
                        out: Vec::new(),
                    };
                    break 'head (relayed, ResponseBodyScan::new(plan.body, trailers));
                }
                Ok(None) if buf.len() > MAX_RESPONSE_HEAD => {
                    return Response::Bad("response head too large")
                }
                Ok(None) => break,
                Err(why) => return Response::Bad(why),
            }
        }
    };
    // The body: the bytes after the head in the piece that completed it,
    // then each later piece.
    at -= 1;
    let mut pending = true;
    while let Some(&avail) = pieces.get(at) {
        at += 1;
        let step = match scan.step(&input[start..avail]) {
            Ok(step) => step,
            Err(e) if pending => return Response::Bad(e.0),
            Err(_) => {
                relayed.broken = true;
                break;
            }
        };
        pending = false;
        out.extend_from_slice(&input[start..start + step.pass]);
        start += step.consumed;
        if step.done {
            if relayed.framing == Framing::Chunked {
                out.extend_from_slice(scan.trailers());
                out.extend_from_slice(b"\r\n");
            }
            relayed.complete = true;
            relayed.end = start;
            break;
        }
    }
    relayed.out = out;
    Response::Relayed(relayed)
}

/// What the chunked scanner made of a body.
#[derive(Debug)]
pub struct Chunked {
    /// Where the body ended, if it did.
    pub end: Option<usize>,
    /// Why it is malformed, if it is.
    pub error: Option<&'static str>,
    /// The bytes passed as they are (response direction).
    pub passed: Vec<u8>,
    /// The trailer lines kept.
    pub trailers: Vec<u8>,
    /// The body written out again (request direction), once ended.
    pub rechunked: Vec<u8>,
    /// The chunk data as [`ChunkedScanner::feed_data`] found it (what an
    /// HTTP/2 client gets of an HTTP/1.1 instance's chunked body).
    pub data: Vec<u8>,
}

/// The chunked scanner on `input`.
pub fn chunked(input: &[u8], arrivals: &[usize], declared: &[&[u8]]) -> Chunked {
    let mut scanner = ChunkedScanner::with_trailers(declared.iter().map(|d| d.to_vec()).collect());
    let mut result = Chunked {
        end: None,
        error: None,
        passed: Vec::new(),
        trailers: Vec::new(),
        rechunked: Vec::new(),
        data: Vec::new(),
    };
    let mut start = 0;
    for avail in pieces(input, arrivals) {
        let piece = &input[start..avail];
        let data = &mut result.data;
        match scanner.feed_data(piece, |a, b| data.extend_from_slice(&piece[a..b])) {
            Ok(scan) => {
                result
                    .passed
                    .extend_from_slice(&input[start..start + scan.pass]);
                start += scan.consumed;
                if scan.done {
                    result.end = Some(start);
                    result.trailers = scanner.trailers().to_vec();
                    rechunk(&input[..start], scanner.trailers(), &mut result.rechunked);
                    return result;
                }
            }
            Err(e) => {
                result.error = Some(e.0);
                return result;
            }
        }
    }
    result
}
