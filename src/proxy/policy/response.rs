//! The response half of the forwarding policy: whether an instance's
//! response head can be relayed, how its body is delimited, whether the
//! upstream connection can carry another request, and which lines travel
//! back to the client.
//!
//! Status: below 100 or above 599 is a bad response (502). `100` is
//! consumed; other 1xx answers (`103 Early Hints`) are relayed as interim
//! responses; `101` only completes an upgrade the client asked for and the
//! route allowed, to the protocol it named (else 502).
//!
//! Framing (RFC 9112 section 6.3): no body after a HEAD request, a 1xx, a
//! 204 or a 304; `Transfer-Encoding` ending in `chunked` (exactly once)
//! means chunked, any other coding means "until close"; `Content-Length`
//! must be digits, duplicates identical; no framing field means "until
//! close". `Transfer-Encoding` in an HTTP/1.0 response is faulty framing:
//! the body is read as it says, and the connection is closed after it. The
//! framing fields are written by the proxy (a 204 never gets a
//! `Content-Length`), and a `Connection` header cannot remove them.

use super::fields::{self, classify, ConnectionTokens, Name};
use super::request::{add_length, protocol_name};
use super::{Fields, Framing, HeadWriter};

/// A response head as received from an instance.
#[derive(Debug)]
pub(crate) struct ResponseView<'a, F: ?Sized> {
    pub status: u16,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub minor: u8,
    pub fields: &'a F,
}

/// What the request asked for that shapes its response.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Asked<'a> {
    /// The method was HEAD.
    pub head: bool,
    /// The upgrade forwarded to the instance, if any.
    pub upgrade: Option<&'a [u8]>,
}

/// What kind of response a head is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `100 Continue`: consumed by the proxy.
    Continue,
    /// Another 1xx: relayed to the client, then the final answer follows.
    Interim,
    /// `101`: the upgrade the client asked for.
    Switching,
    /// The final answer.
    Final,
}

/// How a valid response head is relayed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResponsePlan {
    pub kind: Kind,
    pub body: Framing,
    /// The upstream connection may carry another request afterwards.
    pub reusable: bool,
    /// Received lines not relayed, by index.
    pub skip: u128,
    /// `Content-Length` to write (for a body, or for HEAD/304 answers);
    /// `None` also when the received line is kept as it is.
    length: Option<u64>,
    /// The received `Transfer-Encoding` lines are kept as they are (one
    /// canonical `chunked`, or codings the client needs before it).
    chunked_line: bool,
    /// The `Trailer` lines: the trailer fields the response declares.
    pub trailer_lines: u128,
}

/// Checks a response head and decides how it is relayed; `Err` names
/// what is wrong with it (answered as 502 by the caller).
pub(crate) fn plan<F: Fields + ?Sized>(
    resp: &ResponseView<'_, F>,
    asked: Asked<'_>,
) -> Result<ResponsePlan, &'static str> {
    let status = resp.status;
    if !(100..=599).contains(&status) {
        return Err("status code outside 100-599");
    }
    let fields = resp.fields;
    let n = fields.len();
    if n > super::request::MAX_FIELDS {
        return Err("too many response header lines");
    }
    let mut skip = 0u128;
    let mut length: Option<(u64, &[u8])> = None;
    // The framing lines, by index, for keeping a single canonical one.
    let (mut length_lines, mut coding_lines) = (0u128, 0u128);
    let mut codings = Codings::default();
    let mut conn = ConnectionTokens::default();
    let mut upgrade: Option<&[u8]> = None;
    let mut trailer_lines = 0u128;
    for i in 0..n {
        let (name, value) = (fields.name(i), fields.value(i));
        let class = classify(name);
        let bit = 1u128 << i;
        if class.always_dropped() {
            skip |= bit;
        }
        match class {
            Name::ContentLength => {
                skip |= bit;
                length_lines |= bit;
                add_length(&mut length, value)?;
            }
            Name::TransferEncoding => {
                skip |= bit;
                coding_lines |= bit;
                codings.add(value)?;
            }
            Name::Connection => conn.add(value),
            Name::Upgrade => {
                skip |= bit;
                upgrade = Some(value);
            }
            Name::Other if name.eq_ignore_ascii_case(b"trailer") => trailer_lines |= bit,
            _ => {}
        }
    }
    if conn.lists_fields {
        for i in 0..n {
            let name = fields.name(i);
            if classify(name).connection_may_remove() {
                let listed = (0..n)
                    .filter(|&j| classify(fields.name(j)) == Name::Connection)
                    .map(|j| fields.value(j));
                if fields::connection_names(listed, name) {
                    skip |= 1 << i;
                }
            }
        }
    }
    let kind = match status {
        100 => Kind::Continue,
        101 => {
            let (Some(asked), Some(got)) = (asked.upgrade, upgrade) else {
                return Err("switched protocols without being asked to");
            };
            if !protocol_name(asked).eq_ignore_ascii_case(protocol_name(got)) {
                return Err("switched to a protocol the client did not ask for");
            }
            Kind::Switching
        }
        102..=199 => Kind::Interim,
        _ => Kind::Final,
    };
    if kind != Kind::Final {
        return Ok(ResponsePlan {
            kind,
            body: Framing::Empty,
            reusable: false,
            skip,
            length: None,
            chunked_line: false,
            trailer_lines: 0,
        });
    }
    if codings.any && resp.minor == 0 {
        // RFC 9112 section 6.1: faulty framing. hyper's client refuses it
        // too, so both codecs answer 502.
        return Err("Transfer-Encoding in an HTTP/1.0 response");
    }
    if codings.chunked && !codings.chunked_last {
        // `chunked, gzip`: chunked applied, then another coding: read until
        // close by the letter of RFC 9112 6.3, but no client can be given
        // it in one valid message.
        return Err("chunked is not the last transfer coding");
    }
    let no_body = asked.head || status == 204 || status == 304;
    let body = if no_body {
        Framing::Empty
    } else if codings.chunked {
        Framing::Chunked
    } else if codings.any {
        Framing::UntilClose
    } else {
        match length {
            Some((0, _)) => Framing::Empty,
            Some((n, _)) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    // Codings other than `chunked` (`gzip`) stay on the body: the client
    // needs them. The lines were checked token by token; they are kept.
    let kept_codings = codings.others && !no_body;
    if kept_codings {
        skip &= !coding_lines;
    }
    // A 204 that announces a body may well send one: those bytes would be
    // read as the next response, so the connection is not reused.
    let announces_body = no_body
        && !asked.head
        && (codings.any || status == 204 && length.is_some_and(|(n, _)| n > 0));
    let persistent = if resp.minor >= 1 {
        !conn.close
    } else {
        conn.keep_alive && !conn.close
    } && !announces_body;
    // The length the client is told: the body's, `0` for an empty body, the
    // would-be length for HEAD (except on a 204, which never has one, RFC
    // 9110 section 8.6); none for 204 and 304.
    let mut length = match (body, length) {
        (Framing::Length(n), _) => Some(n),
        (Framing::Empty, _) if !no_body => Some(0),
        (Framing::Empty, Some((n, _))) if asked.head && !codings.any && status != 204 => Some(n),
        _ => None,
    };
    let mut chunked_line = kept_codings && body == Framing::Chunked;
    match (body, length) {
        (_, Some(_)) if super::request::keep_canonical_length(fields, length_lines, &mut skip) => {
            length = None;
        }
        (_, Some(_)) => {}
        (Framing::Chunked, None) if !chunked_line => {
            chunked_line = super::request::keep_canonical_chunked(fields, coding_lines, &mut skip);
        }
        _ => {}
    }
    Ok(ResponsePlan {
        kind,
        body,
        reusable: persistent && body != Framing::UntilClose,
        skip,
        length,
        chunked_line,
        trailer_lines,
    })
}

/// The transfer codings of a response, summed over its lines.
#[derive(Debug, Default)]
struct Codings {
    any: bool,
    /// `chunked` was seen.
    chunked: bool,
    /// The last coding is `chunked`.
    chunked_last: bool,
    /// A coding other than `chunked` was seen.
    others: bool,
}

impl Codings {
    fn add(&mut self, value: &[u8]) -> Result<(), &'static str> {
        let mut seen = false;
        for t in fields::list(value) {
            seen = true;
            let name = t.split(|&b| b == b';').next().unwrap_or(t).trim_ascii();
            if !fields::is_token(name) {
                return Err("bad Transfer-Encoding");
            }
            let chunked = name.eq_ignore_ascii_case(b"chunked");
            if chunked && (self.chunked || t != name) {
                return Err("bad Transfer-Encoding");
            }
            self.any = true;
            self.chunked |= chunked;
            self.others |= !chunked;
            self.chunked_last = chunked;
        }
        if seen {
            Ok(())
        } else {
            Err("bad Transfer-Encoding")
        }
    }
}

impl ResponsePlan {
    /// Writes the framing line the proxy adds for the client (the
    /// `Connection`/`Upgrade` pair for a 101).
    pub(crate) fn write_additions<W: HeadWriter>(&self, upgrade: Option<&[u8]>, w: &mut W) {
        match (self.kind, self.body, self.length) {
            (Kind::Switching, _, _) => {
                w.field(b"connection", b"upgrade");
                if let Some(p) = upgrade {
                    w.field(b"upgrade", p);
                }
            }
            (_, Framing::Chunked, _) if !self.chunked_line => {
                w.field(b"transfer-encoding", b"chunked")
            }
            (_, _, Some(n)) => w.field_with(b"content-length", |v| {
                v.extend_from_slice(itoa::Buffer::new().format(n).as_bytes())
            }),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, asked: Asked<'_>) -> Result<(ResponsePlan, String), &'static str> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut headers);
        r.parse(raw.as_bytes()).unwrap();
        let view = ResponseView {
            status: r.code.unwrap(),
            minor: r.version.unwrap(),
            fields: &r.headers[..],
        };
        let plan = plan(&view, asked)?;
        let mut out = Vec::new();
        for (i, h) in r.headers.iter().enumerate() {
            if plan.skip & (1 << i) == 0 {
                out.field(b"", h.value);
                out.truncate(out.len() - 2);
                out.extend_from_slice(b"|");
                let _ = h.name;
            }
        }
        plan.write_additions(asked.upgrade, &mut out);
        Ok((plan, String::from_utf8(out).unwrap()))
    }

    fn framing(raw: &str) -> Result<(Framing, bool), &'static str> {
        parse(raw, Asked::default()).map(|(p, _)| (p.body, p.reusable))
    }

    #[test]
    fn framing_rules() {
        type Want = Result<(Framing, bool), &'static str>;
        let cases: &[(&str, Want)] = &[
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Ok((Framing::Length(5), true)),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                Ok((Framing::Length(5), true)),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                Err("conflicting Content-Length headers"),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
                Err("bad Content-Length"),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
                Err("bad Content-Length"),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                Ok((Framing::Chunked, true)),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: CHUNKED\r\n\r\n",
                Ok((Framing::Chunked, true)),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                Ok((Framing::UntilClose, false)),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
                Err("chunked is not the last transfer coding"),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
                Ok((Framing::Chunked, true)),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                Err("bad Transfer-Encoding"),
            ),
            (
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err("Transfer-Encoding in an HTTP/1.0 response"),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                Ok((Framing::Empty, true)),
            ),
            (
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\n",
                Ok((Framing::Length(5), true)),
            ),
            (
                "HTTP/1.1 200 OK\r\nX: y\r\n\r\n",
                Ok((Framing::UntilClose, false)),
            ),
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                Ok((Framing::Empty, false)),
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                Ok((Framing::Empty, true)),
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
                Ok((Framing::Empty, true)),
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\n",
                Ok((Framing::Length(5), true)),
            ),
            (
                "HTTP/1.1 099 Weird\r\n\r\n",
                Err("status code outside 100-599"),
            ),
            (
                "HTTP/1.1 000 Zero\r\n\r\n",
                Err("status code outside 100-599"),
            ),
            (
                "HTTP/1.1 999 Nine\r\n\r\n",
                Err("status code outside 100-599"),
            ),
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                Err("switched protocols without being asked to"),
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(&framing(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn framing_lines_are_written_by_the_proxy() {
        let (_, out) = parse(
            "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX: 1\r\n\r\n",
            Asked::default(),
        )
        .unwrap();
        assert_eq!(out, ": 1|", "no Content-Length on a 204");
        let head = Asked {
            head: true,
            upgrade: None,
        };
        let (_, out) = parse("HTTP/1.1 200 OK\r\nContent-Length: 05\r\n\r\n", head).unwrap();
        assert_eq!(out, "content-length: 5\r\n");
        // Found by the response_head fuzz target: a HEAD answered 204 kept
        // the instance's Content-Length.
        let (_, out) = parse("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", head).unwrap();
        assert_eq!(out, "", "no Content-Length on a 204, HEAD or not");
        let err = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            Asked::default(),
        )
        .unwrap_err();
        assert_eq!(err, "bad Transfer-Encoding");
        let (_, out) = parse(
            "HTTP/1.1 200 OK\r\nConnection: close, x-a\r\nX-A: 1\r\nKeep-Alive: 1\r\nProxy-Authenticate: b\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
            Asked::default(),
        )
        .unwrap();
        assert_eq!(
            out, ": gzip|: chunked|",
            "codings the client needs stay as received"
        );
        let (_, out) = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 00\r\n\r\n",
            Asked::default(),
        )
        .unwrap();
        assert_eq!(
            out, "content-length: 0\r\n",
            "an empty body is still framed"
        );
        let (_, out) = parse(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            Asked::default(),
        )
        .unwrap();
        assert_eq!(out, "", "no length on a 304 (as hyper)");
    }

    #[test]
    fn interim_and_switching() {
        let (p, _) = parse(
            "HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n",
            Asked::default(),
        )
        .unwrap();
        assert_eq!(p.kind, Kind::Interim);
        let (p, _) = parse("HTTP/1.1 100 Continue\r\n\r\n", Asked::default()).unwrap();
        assert_eq!(p.kind, Kind::Continue);
        let ws = Asked {
            head: false,
            upgrade: Some(b"websocket"),
        };
        let (p, out) = parse(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: upgrade\r\n\r\n",
            ws,
        )
        .unwrap();
        assert_eq!(p.kind, Kind::Switching);
        assert_eq!(out, "connection: upgrade\r\nupgrade: websocket\r\n");
        assert_eq!(
            parse(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
                ws
            )
            .unwrap_err(),
            "switched to a protocol the client did not ask for"
        );
    }
}
