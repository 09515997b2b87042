//! The request half of the forwarding policy: from a received request head
//! (as either codec parsed it) to the decision of what the instance gets:
//! whether the request is valid at all, its body framing, which received
//! header lines travel on, and what the proxy adds.
//!
//! Framing (RFC 9112 section 6): `Transfer-Encoding` must be exactly
//! `chunked` (other codings: 501; `chunked` twice, bad tokens, or in an
//! HTTP/1.0 request: 400); `Content-Length` is digits only, duplicates must
//! be identical (then they count once), and with `Transfer-Encoding` the
//! request is refused (400 and close). The framing fields are never copied:
//! the proxy writes `content-length: N` or `transfer-encoding: chunked`
//! itself, so the instance reads the body exactly as the proxy did.
//!
//! Trust: `X-Forwarded-For` is always appended to. `X-Forwarded-Proto`,
//! `X-Forwarded-Host` and `Forwarded` are the proxy's own unless the peer
//! is in `proxy.trusted_proxies`, in which case what it sent is kept
//! (`Forwarded`, when the proxy writes one, is then appended to).

use super::super::error::ProxyError;
use super::fields::{self, classify, ConnectionTokens, Name};
use super::request_id::{self, RequestId};
use super::target::{self, Target};
use super::{Fields, Framing, HeadWriter};

/// The HTTP version a request came in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    H10,
    H11,
    /// HTTP/2: framing comes from the stream, not from the fields.
    H2 {
        /// The stream carries a body.
        has_body: bool,
    },
}

/// A request head as received, in codec-neutral form.
#[derive(Debug)]
pub(crate) struct RequestView<'a, F: ?Sized> {
    pub method: &'a str,
    pub target: &'a str,
    pub version: Version,
    pub fields: &'a F,
    /// HTTP/2's `:protocol` (RFC 8441 extended CONNECT), if sent.
    pub protocol: Option<&'a [u8]>,
}

/// What the proxy knows about the hop a request came in on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hop<'a> {
    /// The client's IP, formatted.
    pub client_ip: &'a str,
    /// The client is one of `proxy.trusted_proxies`.
    pub trusted: bool,
    /// `http` or `https`.
    pub proto: &'static str,
    /// This hop's `Via` entry (`1.1 wayfinder`).
    pub via: &'a [u8],
    /// Write an RFC 7239 `Forwarded` field.
    pub forwarded: bool,
    /// `limits.max_uri_bytes`.
    pub max_uri_bytes: usize,
    /// The request id header (`proxy.request_id_header`, lowercase), when
    /// request ids are on.
    pub request_id: Option<&'static [u8]>,
}

/// Most header lines a request may have (one bit each in [`RequestPlan::skip`]).
pub(crate) const MAX_FIELDS: usize = 128;

/// What to do with a valid request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestPlan<'a> {
    /// Its authority and the target to forward.
    pub target: Target<'a>,
    /// How its body is delimited.
    pub body: Framing,
    /// The client asked to close the connection after this exchange.
    pub close: bool,
    /// The client asked for an upgrade to this protocol (the `Upgrade`
    /// value); whether it is forwarded depends on the route.
    pub upgrade: Option<&'a [u8]>,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// Received lines not copied as they are, by index.
    pub skip: u128,
    /// `X-Forwarded-For` lines (joined into the proxy's own line).
    xff: u128,
    /// Received `Forwarded` lines to join into the proxy's own.
    forwarded: u128,
    /// The received `X-Forwarded-Proto` / `-Host` lines are kept.
    keep_xfp: bool,
    keep_xfh: bool,
    /// The received framing line is kept as it is (a single canonical
    /// `Content-Length` or `Transfer-Encoding: chunked`).
    framing_line: bool,
    /// The client sent `TE: trailers`: it takes trailer fields in the
    /// response.
    pub accepts_trailers: bool,
    /// The `Trailer` lines: the trailer fields the request declares (only
    /// those are forwarded, as hyper's encoder does).
    pub trailer_lines: u128,
    /// The request's id (kept or made), when request ids are on.
    pub request_id: Option<RequestId>,
    /// The id was made here: its line is added to the forwarded head.
    write_request_id: bool,
}

/// Checks a request head and decides how it is forwarded.
pub(crate) fn plan<'a, F: Fields + ?Sized>(
    req: &RequestView<'a, F>,
    hop: &Hop<'_>,
) -> Result<RequestPlan<'a>, ProxyError> {
    let fields = req.fields;
    let n = fields.len();
    if n > MAX_FIELDS {
        return Err(ProxyError::TooManyHeaders {
            count: n,
            limit: MAX_FIELDS,
        });
    }
    let mut hosts: [&[u8]; 2] = [b""; 2];
    let mut host_count = 0;
    let mut length: Option<(u64, &[u8])> = None;
    let mut coding = Coding::None;
    let mut conn = ConnectionTokens::default();
    let mut upgrade: Option<&[u8]> = None;
    let mut upgrades = 0;
    let mut expect_continue = false;
    let (mut accepts_trailers, mut trailer_lines) = (false, 0u128);
    let (mut skip, mut xff, mut fwd) = (0u128, 0u128, 0u128);
    let (mut length_lines, mut coding_lines) = (0u128, 0u128);
    let (mut xfp, mut xfh) = (0u128, 0u128);
    let mut id_lines = 0u128;
    for i in 0..n {
        let (name, value) = (fields.name(i), fields.value(i));
        let class = classify(name);
        if hop
            .request_id
            .is_some_and(|id| class == Name::Other && name.eq_ignore_ascii_case(id))
        {
            id_lines |= 1 << i;
        }
        let bit = 1u128 << i;
        if class.always_dropped() {
            skip |= bit;
        }
        match class {
            Name::Hop => {
                accepts_trailers |= name.eq_ignore_ascii_case(b"te")
                    && fields::list(value).any(|t| t.eq_ignore_ascii_case(b"trailers"));
            }
            Name::Other if name.eq_ignore_ascii_case(b"trailer") => trailer_lines |= bit,
            Name::Other => {}
            Name::ProxyAuth | Name::Via | Name::Confusable => {}
            Name::Host => {
                if host_count < 2 {
                    hosts[host_count] = value;
                }
                host_count += 1;
            }
            Name::ContentLength => {
                skip |= bit;
                length_lines |= bit;
                add_length(&mut length, value).map_err(ProxyError::BadRequest)?;
            }
            Name::TransferEncoding => {
                skip |= bit;
                coding_lines |= bit;
                coding.add(value);
            }
            Name::Connection => conn.add(value),
            Name::Upgrade => {
                skip |= bit;
                upgrades += 1;
                upgrade = Some(value);
            }
            Name::Expect => {
                if !value.eq_ignore_ascii_case(b"100-continue") {
                    return Err(ProxyError::ExpectationFailed);
                }
                expect_continue = true;
            }
            Name::Xff => {
                skip |= bit;
                xff |= bit;
            }
            Name::Xfp => xfp |= bit,
            Name::Xfh => xfh |= bit,
            Name::Forwarded => fwd |= bit,
        }
    }
    // RFC 8441: an HTTP/2 `CONNECT` carrying `:protocol` asks for a tunnel
    // of that protocol to the resource it names (scheme, authority, path),
    // as an HTTP/1.1 upgrade does; it is routed like one. A plain `CONNECT`
    // (to a host and port) is still refused.
    let extended = matches!(req.version, Version::H2 { .. })
        && req.method == "CONNECT"
        && req.protocol.is_some();
    if extended && !req.protocol.is_some_and(fields::is_token) {
        return Err(ProxyError::BadRequest("bad :protocol"));
    }
    let target = target::resolve(
        if extended { "GET" } else { req.method },
        req.target,
        &hosts[..host_count.min(2)],
        hop.max_uri_bytes,
        matches!(req.version, Version::H2 { .. }),
    )
    .map_err(|e| match e {
        // Two Host lines, whatever their values.
        ProxyError::BadRequest(_) if host_count > 2 => {
            ProxyError::BadRequest("more than one Host header")
        }
        e => e,
    })?;
    if target.from_target {
        for i in 0..n {
            if classify(fields.name(i)) == Name::Host {
                skip |= 1 << i;
            }
        }
    }
    let body = match req.version {
        Version::H2 { has_body } => match length {
            Some((0, _)) => Framing::Empty,
            Some((n, _)) => Framing::Length(n),
            None if has_body => Framing::Chunked,
            None => Framing::Empty,
        },
        Version::H10 if coding != Coding::None => {
            return Err(ProxyError::BadRequest(
                "Transfer-Encoding in an HTTP/1.0 request",
            ))
        }
        Version::H10 | Version::H11 => match (coding, length) {
            (Coding::None, None | Some((0, _))) => Framing::Empty,
            (Coding::None, Some((n, _))) => Framing::Length(n),
            // With both, Transfer-Encoding wins and the connection closes
            // after the exchange (RFC 9112 section 6.3); the length is not
            // forwarded.
            (Coding::Chunked, _) => Framing::Chunked,
            (Coding::OpenChunked, _) => return Err(ProxyError::UnsupportedCoding),
            (Coding::Open | Coding::Invalid, _) => {
                return Err(ProxyError::BadRequest("bad Transfer-Encoding"))
            }
        },
    };
    if conn.lists_fields {
        skip |= listed(fields, n);
    }
    let framing_line = match body {
        Framing::Length(_) if !matches!(req.version, Version::H2 { .. }) => {
            keep_canonical_length(fields, length_lines, &mut skip)
        }
        Framing::Chunked if !matches!(req.version, Version::H2 { .. }) => {
            keep_canonical_chunked(fields, coding_lines, &mut skip)
        }
        _ => false,
    };
    // Trust: a peer's own forwarding claims count only when it is trusted.
    let keep_xfp = hop.trusted && xfp != 0;
    let keep_xfh = hop.trusted && xfh != 0;
    if !keep_xfp {
        skip |= xfp;
    }
    if !keep_xfh {
        skip |= xfh;
    }
    if !hop.trusted || hop.forwarded {
        skip |= fwd;
    }
    let id = hop
        .request_id
        .map(|_| request_id::decide(id_lines, |i| fields.value(i)));
    if let Some(d) = &id {
        skip |= d.skip;
    }
    let both_framings = coding != Coding::None && length.is_some();
    let close = both_framings
        || match req.version {
            Version::H10 => !conn.keep_alive || conn.close,
            _ => conn.close,
        };
    let upgrade = match (req.version, conn.upgrade, upgrades, upgrade) {
        (Version::H2 { .. }, ..) if extended => req.protocol,
        (Version::H11, true, 1, Some(value)) if fields::is_token(protocol_name(value)) => {
            Some(value)
        }
        _ => None,
    };
    Ok(RequestPlan {
        target,
        body,
        close,
        upgrade,
        expect_continue,
        skip,
        xff,
        forwarded: if hop.trusted && hop.forwarded { fwd } else { 0 },
        keep_xfp,
        keep_xfh,
        framing_line,
        accepts_trailers,
        trailer_lines,
        request_id: id.map(|d| d.id),
        write_request_id: id.is_some_and(|d| d.made),
    })
}

/// The protocol name of an `Upgrade` value (`websocket` of
/// `websocket/13`); the whole value when it lists several protocols is not
/// a token, so it never matches an allowed name.
pub(crate) fn protocol_name(value: &[u8]) -> &[u8] {
    let value = value.trim_ascii();
    value
        .iter()
        .position(|&b| b == b'/')
        .map_or(value, |i| &value[..i])
}

/// The lines a `Connection` header lists that it may remove.
fn listed<F: Fields + ?Sized>(fields: &F, n: usize) -> u128 {
    let mut mask = 0;
    for i in 0..n {
        let name = fields.name(i);
        if !classify(name).connection_may_remove() {
            continue;
        }
        let connection = (0..n)
            .filter(|&j| classify(fields.name(j)) == Name::Connection)
            .map(|j| fields.value(j));
        if fields::connection_names(connection, name) {
            mask |= 1 << i;
        }
    }
    mask
}

/// A `Content-Length` value: 1 to 19 digits.
pub(crate) fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')),
    )
}

/// Keeps the one received framing line in `lines` (clears it from `skip`)
/// when it is written exactly as the proxy would write it, and says so:
/// copying it keeps the received lines in one run. Otherwise (several
/// lines, or another spelling) the proxy writes the line itself.
fn keep_canonical<F: Fields + ?Sized>(
    fields: &F,
    lines: u128,
    skip: &mut u128,
    canonical: impl Fn(&[u8]) -> bool,
) -> bool {
    let keep = lines.count_ones() == 1 && canonical(fields.value(lines.trailing_zeros() as usize));
    if keep {
        *skip &= !lines;
    }
    keep
}

/// [`keep_canonical`] for a `Content-Length` line (already checked to be
/// digits): canonical without a leading zero.
pub(crate) fn keep_canonical_length<F: Fields + ?Sized>(
    fields: &F,
    lines: u128,
    skip: &mut u128,
) -> bool {
    keep_canonical(fields, lines, skip, |v| {
        v.len() == 1 || v.first() != Some(&b'0')
    })
}

/// [`keep_canonical`] for a `Transfer-Encoding` line: exactly `chunked`.
pub(crate) fn keep_canonical_chunked<F: Fields + ?Sized>(
    fields: &F,
    lines: u128,
    skip: &mut u128,
) -> bool {
    keep_canonical(fields, lines, skip, |v| v == b"chunked")
}

/// Adds one `Content-Length` line to `length` (the value so far and the
/// line it came from): digits only, and every line the same value.
pub(crate) fn add_length<'v>(
    length: &mut Option<(u64, &'v [u8])>,
    value: &'v [u8],
) -> Result<(), &'static str> {
    let n = content_length(value).ok_or("bad Content-Length")?;
    match length {
        Some((first, _)) if *first != n => Err("conflicting Content-Length headers"),
        _ => {
            *length = Some((n, value));
            Ok(())
        }
    }
}

/// The transfer codings of a request, summed over its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    None,
    /// Exactly `chunked`.
    Chunked,
    /// Codings other than `chunked` so far (`gzip`): the length is unknown
    /// unless `chunked` follows (400 otherwise, RFC 9112 section 6.3).
    Open,
    /// Other codings, then `chunked` last (`gzip, chunked`): well framed,
    /// but not something a request may use here (501).
    OpenChunked,
    /// Not a list of tokens, or `chunked` more than once, with parameters
    /// or not last.
    Invalid,
}

impl Coding {
    /// Adds one `Transfer-Encoding` line.
    pub(crate) fn add(&mut self, value: &[u8]) {
        let mut any = false;
        for t in fields::list(value) {
            any = true;
            let name = t.split(|&b| b == b';').next().unwrap_or(t).trim_ascii();
            let chunked = name.eq_ignore_ascii_case(b"chunked");
            *self = match *self {
                _ if !fields::is_token(name) || (chunked && t != name) => Coding::Invalid,
                Coding::Invalid | Coding::Chunked | Coding::OpenChunked => Coding::Invalid,
                Coding::None if chunked => Coding::Chunked,
                Coding::Open if chunked => Coding::OpenChunked,
                Coding::None | Coding::Open => Coding::Open,
            };
        }
        if !any {
            *self = Coding::Invalid;
        }
    }
}

impl RequestPlan<'_> {
    /// Writes what the proxy adds to the forwarded head: `Host` (for an
    /// absolute-form target), the framing field, the forwarding fields,
    /// `Via` and, for an allowed upgrade, `Connection`/`Upgrade`.
    pub(crate) fn write_additions<F: Fields + ?Sized, W: HeadWriter>(
        &self,
        fields: &F,
        hop: &Hop<'_>,
        upgrade: Option<&[u8]>,
        w: &mut W,
    ) {
        let authority = self.target.authority.as_bytes();
        if self.target.from_target {
            w.field(b"host", authority);
        }
        match self.body {
            _ if self.framing_line => {}
            Framing::Length(n) => w.field_with(b"content-length", |v| {
                v.extend_from_slice(itoa::Buffer::new().format(n).as_bytes())
            }),
            Framing::Chunked => w.field(b"transfer-encoding", b"chunked"),
            Framing::Empty | Framing::UntilClose => {}
        }
        w.field_with(b"x-forwarded-for", |v| {
            if join(fields, self.xff, v) {
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(hop.client_ip.as_bytes());
        });
        if !self.keep_xfp {
            w.field(b"x-forwarded-proto", hop.proto.as_bytes());
        }
        if !self.keep_xfh {
            w.field(b"x-forwarded-host", authority);
        }
        if hop.forwarded {
            w.field_with(b"forwarded", |v| {
                if join(fields, self.forwarded, v) {
                    v.extend_from_slice(b", ");
                }
                forwarded_element(v, hop.client_ip, self.target.authority, hop.proto);
            });
        }
        w.field(b"via", hop.via);
        if let (true, Some(name), Some(id)) =
            (self.write_request_id, hop.request_id, &self.request_id)
        {
            w.field(name, id.as_bytes());
        }
        if let Some(protocol) = upgrade {
            w.field(b"connection", b"upgrade");
            w.field(b"upgrade", protocol);
        }
    }
}

/// Appends the values of the lines in `mask`, joined by `, `; whether
/// there were any.
fn join<F: Fields + ?Sized>(fields: &F, mask: u128, out: &mut Vec<u8>) -> bool {
    let mut rest = mask;
    while rest != 0 {
        let i = rest.trailing_zeros() as usize;
        if rest != mask {
            out.extend_from_slice(b", ");
        }
        rest &= rest - 1;
        out.extend_from_slice(fields.value(i));
    }
    mask != 0
}

/// One `Forwarded` element (RFC 7239): `for=...;host=...;proto=...`, with
/// values that are not tokens (IPv6 addresses, ports) quoted.
fn forwarded_element(out: &mut Vec<u8>, client_ip: &str, host: &str, proto: &str) {
    out.extend_from_slice(b"for=");
    if client_ip.contains(':') {
        out.extend_from_slice(b"\"[");
        out.extend_from_slice(client_ip.as_bytes());
        out.extend_from_slice(b"]\"");
    } else {
        out.extend_from_slice(client_ip.as_bytes());
    }
    out.extend_from_slice(b";host=");
    if fields::is_token(host.as_bytes()) {
        out.extend_from_slice(host.as_bytes());
    } else {
        // A valid authority has no quote or backslash to escape.
        out.push(b'"');
        out.extend_from_slice(host.as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(proto.as_bytes());
}

#[cfg(test)]
mod tests;
