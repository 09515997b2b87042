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
use super::request::{content_length, protocol_name};
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
    /// The received `Transfer-Encoding: chunked` line is kept as it is.
    chunked_line: bool,
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
                let n = content_length(value).ok_or("bad Content-Length")?;
                match length {
                    Some((_, first)) if first != value => {
                        return Err("conflicting Content-Length headers")
                    }
                    _ => length = Some((n, value)),
                }
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
        });
    }
    let no_body = asked.head || status == 204 || status == 304;
    let body = if no_body {
        Framing::Empty
    } else if codings.any {
        if codings.chunked_last {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match length {
            Some((0, _)) => Framing::Empty,
            Some((n, _)) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    if body == Framing::UntilClose && codings.any {
        // The client reads it until close too, through the same codings.
        for i in 0..n {
            if classify(fields.name(i)) == Name::TransferEncoding {
                skip &= !(1u128 << i);
            }
        }
    }
    // A 204 or 304 that announces a body may well send one: those bytes
    // would be read as the next response, so the connection is not reused.
    let announces_body = no_body
        && !asked.head
        && (codings.any || length.is_some_and(|(n, _)| n > 0) && status == 204);
    let persistent = if resp.minor >= 1 {
        !conn.close
    } else {
        conn.keep_alive && !conn.close && !codings.any
    } && !announces_body;
    let mut length = match (body, length) {
        (Framing::Length(n), _) => Some(n),
        // The length of what a GET would have returned.
        (Framing::Empty, Some((n, _))) if (asked.head || status == 304) && !codings.any => Some(n),
        _ => None,
    };
    let mut chunked_line = false;
    match (body, length) {
        (_, Some(n))
            if super::request::keep_canonical_length(fields, length_lines, n, &mut skip) =>
        {
            length = None;
        }
        (_, Some(_)) => {}
        (Framing::Chunked, None) => {
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
    })
}

/// The transfer codings of a response, summed over its lines.
#[derive(Debug, Default)]
struct Codings {
    any: bool,
    chunked: bool,
    chunked_last: bool,
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
            if self.chunked {
                // A coding after chunked: read until close (RFC 9112 6.3).
                self.chunked_last = false;
            }
            self.any = true;
            self.chunked |= chunked;
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
                Ok((Framing::UntilClose, false)),
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
                Ok((Framing::Chunked, false)),
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
        assert_eq!(out, "transfer-encoding: chunked\r\n");
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
