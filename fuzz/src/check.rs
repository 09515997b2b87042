//! The oracles, one per target: each runs the proxy's code through
//! `wayfinder::fuzzing` (or the public config loader) and panics, which
//! libFuzzer reports as a crash, when the proxy disagrees with the
//! reference in this crate or breaks an invariant of its own.

use std::path::Path;

use wayfinder::config::{Config, ConfigError};
use wayfinder::fuzzing::{self, Asked, Framing as Fast, Hop, Request, Response};

use crate::{decode_chunked, parse_head, parse_message, Field, Framing, Head, Input, Start};

/// With `FUZZ_DEBUG` set (when replaying one input), prints what the
/// proxy made of it.
fn debug(what: &impl std::fmt::Debug) {
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        let text = format!("{what:#?}");
        eprintln!("{}", text.replace("\\r\\n", "\\r\\n\n"));
    }
}

fn debug_bytes(what: &str, bytes: &[u8]) {
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!("{what}:\n{}", String::from_utf8_lossy(bytes));
    }
}

fn same(fast: Fast, reference: Framing) -> bool {
    matches!(
        (fast, reference),
        (Fast::Empty, Framing::Empty)
            | (Fast::Chunked, Framing::Chunked)
            | (Fast::UntilClose, Framing::UntilClose)
    ) || matches!((fast, reference), (Fast::Length(a), Framing::Length(b)) if a == b)
}

/// Fields a forwarded request never carries (hop-by-hop, or consumed by
/// the proxy).
const REQUEST_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "http2-settings",
    "proxy-authorization",
    "proxy-authenticate",
    "expect",
];

/// Fields the proxy writes itself on a forwarded request.
const REQUEST_MANAGED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "via",
];

/// Fields a relayed response never carries from the instance.
const RESPONSE_HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "http2-settings",
    "proxy-authenticate",
    "proxy-authorization",
];

fn is_one_of(name: &[u8], list: &[&str]) -> bool {
    list.iter().any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

/// A name that reads as a special one when `_` is taken for `-`.
fn confusable(name: &[u8]) -> bool {
    name.contains(&b'_') && {
        let dashed: Vec<u8> = name
            .iter()
            .map(|&b| if b == b'_' { b'-' } else { b })
            .collect();
        is_one_of(&dashed, REQUEST_HOP) || is_one_of(&dashed, REQUEST_MANAGED)
    }
}

/// Every field of `out` not in `managed` appears in `received`, same name
/// and value, in the same order: nothing is mangled or made up.
fn kept_in_order(out: &[Field], received: &[Field], managed: &[&str]) {
    let mut rest = received.iter();
    for f in out.iter().filter(|f| !is_one_of(&f.name, managed)) {
        assert!(
            rest.any(|r| r == f),
            "forwarded field {:?}: {:?} is not a received one (in order)",
            String::from_utf8_lossy(&f.name),
            String::from_utf8_lossy(&f.value)
        );
    }
}

/// httparse reads the head of `bytes` as the reference does.
fn httparse_agrees(bytes: &[u8], head: &Head) {
    let mut slots = [httparse::EMPTY_HEADER; 512];
    let (len, fields) = match head.start {
        Start::Request { .. } => {
            let mut r = httparse::Request::new(&mut slots);
            let status = r.parse(bytes).expect("httparse rejects a forwarded head");
            (status, r.headers.to_vec())
        }
        Start::Status { .. } => {
            let mut r = httparse::Response::new(&mut slots);
            let status = r.parse(bytes).expect("httparse rejects a relayed head");
            (status, r.headers.to_vec())
        }
    };
    assert_eq!(
        len,
        httparse::Status::Complete(head.len),
        "httparse ends the head elsewhere"
    );
    let fields: Vec<Field> = fields
        .iter()
        .map(|h| Field {
            name: h.name.as_bytes().to_vec(),
            value: h.value.trim_ascii().to_vec(),
        })
        .collect();
    assert_eq!(fields, head.fields, "httparse reads other fields");
}

/// A framing line of `head`: the single value of `name`, if any, and
/// how many lines there are.
fn lines<'a>(head: &'a Head, name: &'a str) -> Vec<&'a [u8]> {
    head.values(name).collect()
}

/// Trailer fields of a forwarded body: each received and passable.
fn trailers_kept(out: &[Field], received: &[Field]) {
    for f in out {
        assert!(
            !is_one_of(
                &f.name,
                &["content-length", "transfer-encoding", "host", "trailer"]
            ),
            "framing or routing field in forwarded trailers"
        );
        assert!(
            received.contains(f),
            "forwarded trailer field was not received"
        );
    }
}

/// The request head parser, the request policy and the request body scan.
pub fn request(data: &[u8]) {
    let Some(input) = Input::split(data) else {
        return;
    };
    let hop = Hop {
        trusted: input.flags & 1 != 0,
        forwarded: input.flags & 2 != 0,
    };
    let bytes = input.bytes;
    let got = fuzzing::request(bytes, &input.arrivals, hop);
    let whole = fuzzing::request(bytes, &[], hop);
    debug(&got);
    match (&got, &whole) {
        // The message may count what had arrived (431: "N header lines").
        (Request::Refused { status: a, .. }, Request::Refused { status: b, .. }) => {
            assert_eq!(a, b, "the status depends on how the bytes arrived")
        }
        _ => assert_eq!(
            format!("{got:?}"),
            format!("{whole:?}"),
            "the outcome depends on how the bytes arrived"
        ),
    }
    let reference = parse_message(bytes, true, false, true);
    let f = match got {
        Request::Forwarded(f) => f,
        Request::Partial => {
            if let Ok(Some(m)) = reference {
                panic!(
                    "the fast path waits for more, the reference has a whole request of {} bytes",
                    m.end
                );
            }
            return;
        }
        Request::Refused { .. } | Request::Fallback(_) => return,
    };
    debug_bytes("forwarded", &f.out);
    let m = match reference {
        Ok(Some(m)) => m,
        Ok(None) => panic!("the fast path forwards a request the reference finds incomplete"),
        Err(e) => panic!("the fast path forwards a request the reference refuses: {e}"),
    };
    assert_eq!(f.head_len, m.head.len, "the head ends elsewhere");
    assert!(
        same(f.framing, m.framing),
        "framing {:?} vs {:?}",
        f.framing,
        m.framing
    );
    assert_eq!(f.end, m.end, "the request ends elsewhere");
    if m.head.has("transfer-encoding") && m.head.has("content-length") {
        assert!(f.close, "both framings, and the connection stays open");
    }
    // What the instance gets: exactly one strictly valid request.
    let o = match parse_message(&f.out, true, false, false) {
        Ok(Some(o)) => o,
        Ok(None) => panic!("the forwarded request is incomplete"),
        Err(e) => panic!("the forwarded request is invalid: {e}"),
    };
    assert_eq!(
        o.end,
        f.out.len(),
        "the forwarded bytes hold more than one request"
    );
    assert_eq!(o.framing, m.framing, "the instance reads another framing");
    assert_eq!(o.body, m.body, "the instance reads another body");
    if let (Some(oc), Some(mc)) = (&o.chunked, &m.chunked) {
        trailers_kept(&oc.trailers, &mc.trailers);
    }
    let (Start::Request { method, minor, .. }, Start::Request { method: sent, .. }) =
        (&o.head.start, &m.head.start)
    else {
        unreachable!("requests");
    };
    assert_eq!(method, sent);
    assert_eq!(method.as_slice(), f.method.as_bytes());
    assert_eq!(*minor, 1);
    assert_eq!(lines(&o.head, "host"), [f.authority.as_bytes()], "Host");
    for field in &o.head.fields {
        assert!(
            !is_one_of(&field.name, REQUEST_HOP) && !confusable(&field.name),
            "hop-by-hop or confusable field forwarded: {:?}",
            String::from_utf8_lossy(&field.name)
        );
    }
    let (cl, te) = (
        lines(&o.head, "content-length"),
        lines(&o.head, "transfer-encoding"),
    );
    match m.framing {
        Framing::Empty => assert!(cl.is_empty() && te.is_empty(), "framing on an empty body"),
        Framing::Length(n) => {
            assert!(
                te.is_empty() && cl == [n.to_string().as_bytes()],
                "Content-Length"
            )
        }
        Framing::Chunked => assert!(cl.is_empty() && te == [b"chunked"], "Transfer-Encoding"),
        Framing::UntilClose => unreachable!("requests"),
    }
    kept_in_order(&o.head.fields, &m.head.fields, REQUEST_MANAGED);
    httparse_agrees(&f.out, &o.head);
    // Forwarded again, it stays the same request.
    match fuzzing::request(&f.out, &[], hop) {
        Request::Forwarded(g) => {
            assert_eq!(g.end, f.out.len(), "forwarded again, it ends elsewhere");
            assert_eq!(g.framing, f.framing, "forwarded again, another framing");
            let again = parse_message(&g.out, true, false, false);
            assert_eq!(
                again.map(|a| a.map(|a| a.body)),
                Ok(Some(o.body)),
                "forwarded again, another body"
            );
        }
        Request::Refused { status: 431, .. } => {} // the proxy's own fields added up
        other => panic!("forwarded again: {other:?}"),
    }
}

/// The reference's reading of an instance's bytes: the interim heads,
/// then the final message (or its error).
fn reference_response(
    bytes: &[u8],
    head_request: bool,
    bare_lf: bool,
) -> (usize, Result<Option<crate::Message>, &'static str>) {
    let mut at = 0;
    loop {
        match parse_head(&bytes[at..], false, bare_lf) {
            Ok(Some(h))
                if matches!(
                    h.start,
                    Start::Status {
                        code: 100..=199,
                        ..
                    }
                ) =>
            {
                at += h.len;
            }
            Ok(_) => {
                return (
                    at,
                    parse_message(&bytes[at..], false, head_request, bare_lf),
                )
            }
            Err(e) => return (at, Err(e)),
        }
    }
}

/// The response head parser, the response policy and the relay.
pub fn response(data: &[u8]) {
    let Some(input) = Input::split(data) else {
        return;
    };
    let asked = Asked {
        head: input.flags & 1 != 0,
        accepts_trailers: input.flags & 2 != 0,
        close: input.flags & 4 != 0,
    };
    let bytes = input.bytes;
    let got = fuzzing::response(bytes, &input.arrivals, asked);
    let whole = fuzzing::response(bytes, &[], asked);
    debug(&(asked, &got));
    if let (Response::Relayed(a), Response::Relayed(b)) = (&got, &whole) {
        if a.complete && b.complete {
            assert_eq!(a.out, b.out, "the relay depends on how the bytes arrived");
            assert_eq!(a.end, b.end, "the end depends on how the bytes arrived");
        }
        assert_eq!(a.head_len, b.head_len);
    }
    let Response::Relayed(r) = got else {
        return;
    };
    debug_bytes("relayed", &r.out);
    let (at, reference) = reference_response(bytes, asked.head, true);
    let head_len = match &reference {
        Ok(Some(m)) => m.head.len,
        Err(_) | Ok(None) => match parse_head(&bytes[at..], false, true) {
            Ok(Some(h)) => h.len,
            Ok(None) => panic!("the fast path relays a head the reference finds incomplete"),
            Err(e) => panic!("the fast path relays a head the reference refuses: {e}"),
        },
    };
    assert_eq!(r.head_len, at + head_len, "the head ends elsewhere");
    let m = match reference {
        Ok(Some(m)) => Some(m),
        Ok(None) if !r.complete => None,
        // The scanner found the error too, after part of the answer left.
        Err(_) if r.broken => None,
        Ok(None) => panic!("the fast path ends a response the reference finds incomplete"),
        Err(e) => panic!("the fast path relays a response the reference refuses: {e}"),
    };
    if let Some(m) = &m {
        assert!(
            same(r.framing, m.framing),
            "framing {:?} vs {:?}",
            r.framing,
            m.framing
        );
        if r.complete {
            assert_eq!(r.end, at + m.end, "the response ends elsewhere");
        }
    }
    if r.framing == Fast::UntilClose {
        assert!(!r.reusable, "a connection read until close is pooled");
    }
    // What the client gets: interim heads, then one strictly valid response.
    let (oat, o) = reference_response(&r.out, asked.head, false);
    let o = match o {
        Ok(Some(o)) => o,
        Ok(None) if !r.complete => return,
        Ok(None) => panic!("the relayed response is incomplete"),
        Err(e) => panic!("the relayed response is invalid: {e}"),
    };
    let Start::Status { code, minor } = o.head.start else {
        unreachable!("responses");
    };
    assert_eq!(code, r.status);
    assert_eq!(minor, 1);
    assert_eq!(
        oat + o.head.len + (r.out.len() - oat - o.head.len),
        r.out.len()
    );
    httparse_agrees(&r.out[oat..], &o.head);
    let close = o
        .head
        .values("connection")
        .any(|v| v.eq_ignore_ascii_case(b"close"));
    let (cl, te) = (
        lines(&o.head, "content-length"),
        lines(&o.head, "transfer-encoding"),
    );
    if code == 204 || (100..200).contains(&code) {
        assert!(cl.is_empty() && te.is_empty(), "framing on a {code}");
    }
    for field in &o.head.fields {
        assert!(
            !is_one_of(&field.name, RESPONSE_HOP),
            "hop-by-hop field relayed: {:?}",
            String::from_utf8_lossy(&field.name)
        );
    }
    if let Some(m) = &m {
        kept_in_order(
            &o.head.fields,
            &m.head.fields,
            &["content-length", "transfer-encoding", "connection"],
        );
    }
    match r.framing {
        Fast::UntilClose => {
            assert!(close, "a body read until close, and no `Connection: close`");
            assert_eq!(
                o.framing,
                Framing::UntilClose,
                "the client reads another framing"
            );
            if !r.broken {
                assert_eq!(o.body, &bytes[r.head_len..], "the client gets another body");
            }
        }
        _ if r.complete => {
            let m = m.expect("complete");
            assert_eq!(
                oat + o.end,
                r.out.len(),
                "the client gets more than one response"
            );
            assert_eq!(o.framing, m.framing, "the client reads another framing");
            assert_eq!(o.body, m.body, "the client gets another body");
            match (&o.chunked, &m.chunked) {
                (Some(oc), Some(mc)) => {
                    if !asked.accepts_trailers {
                        assert!(
                            oc.trailers.is_empty(),
                            "trailers the client did not ask for"
                        );
                    }
                    trailers_kept(&oc.trailers, &mc.trailers);
                    assert_eq!(oc.sizes, mc.sizes, "chunks pass as they are");
                }
                (None, None) => {}
                _ => panic!("chunked on one side only"),
            }
        }
        _ => {}
    }
}

/// The declared trailer fields a flag byte picks.
fn declared(flags: u8) -> Vec<&'static [u8]> {
    const NAMES: &[&[u8]] = &[b"x-a", b"x-b", b"checksum", b"server-timing"];
    NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| flags & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// Errors the scanner gives for its own limits, which the reference does
/// not have.
const LIMITS: &[&str] = &[
    "chunk size line too long",
    "trailer section too large",
    "too many trailer lines",
    "chunk size too large",
];

/// The chunked scanner: the reference's reading, any arrival pieces.
pub fn chunked(data: &[u8]) {
    let Some(input) = Input::split(data) else {
        return;
    };
    let declared = declared(input.flags);
    let bytes = input.bytes;
    let got = fuzzing::chunked(bytes, &input.arrivals, &declared);
    let whole = fuzzing::chunked(bytes, &[], &declared);
    debug(&got);
    if got.error.is_some() || whole.error.is_some() {
        // Bytes before the error may have passed with the earlier pieces.
        assert_eq!(
            got.error, whole.error,
            "the scan depends on how the bytes arrived"
        );
    } else {
        assert_eq!(
            format!("{got:?}"),
            format!("{whole:?}"),
            "the scan depends on how the bytes arrived"
        );
    }
    let reference = decode_chunked(bytes);
    let Some(end) = got.end else {
        match (got.error, reference) {
            (Some(e), Ok(Some(c))) if !LIMITS.contains(&e) => {
                panic!(
                    "the scanner refuses ({e}) a body the reference reads ({} bytes)",
                    c.len
                )
            }
            (None, Ok(Some(c))) => {
                panic!(
                    "the scanner waits for more, the reference has a whole body of {} bytes",
                    c.len
                )
            }
            _ => {}
        }
        return;
    };
    let c = match reference {
        Ok(Some(c)) => c,
        Ok(None) => panic!("the scanner ends a body the reference finds incomplete"),
        Err(e) => panic!("the scanner accepts a body the reference refuses: {e}"),
    };
    assert_eq!(end, c.len, "the body ends elsewhere");
    // Taken apart (for HTTP/2 clients): exactly the reference's data.
    assert_eq!(got.data, c.data, "the chunk data found differs");
    // Passed as received: everything before the trailer section.
    assert_eq!(&bytes[..got.passed.len()], got.passed.as_slice());
    let kept = parse_fields(&got.trailers);
    for f in &kept {
        assert!(
            declared.iter().any(|d| f.name.eq_ignore_ascii_case(d)),
            "an undeclared trailer passes"
        );
    }
    trailers_kept(&kept, &c.trailers);
    // Trailer section after the passed bytes: the reference's trailers.
    let mut section = b"0\r\n".to_vec();
    section.extend_from_slice(&bytes[got.passed.len()..end]);
    match decode_chunked(&section) {
        Ok(Some(t)) => assert_eq!(t.trailers, c.trailers, "passed bytes end elsewhere"),
        other => panic!("the bytes held back are not a trailer section: {other:?}"),
    }
    // Written out again: the same data, plain sizes, the kept trailers.
    let again = match decode_chunked(&got.rechunked) {
        Ok(Some(a)) => a,
        other => panic!("rechunked body unreadable: {other:?}"),
    };
    assert_eq!(
        again.len,
        got.rechunked.len(),
        "rechunked body followed by more"
    );
    assert_eq!(again.data, c.data, "rechunked data differs");
    assert_eq!(again.trailers, kept, "rechunked trailers differ");
}

/// `name: value\r\n` lines.
fn parse_fields(lines: &[u8]) -> Vec<Field> {
    let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
    head.extend_from_slice(lines);
    head.extend_from_slice(b"\r\n");
    parse_head(&head, false, false)
        .expect("kept trailer lines are valid")
        .expect("whole")
        .fields
}

/// The config loader: never panics, and every error names a key and a
/// line of the text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count().max(1);
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(config) => {
            let again = Config::parse(text, Path::new("fuzz.toml")).expect("parses again");
            assert_eq!(config, again, "the same text gives another config");
            serde_json::to_string(&config).expect("a valid config serializes");
        }
        Err(e) => {
            for one in e.each() {
                match one {
                    ConfigError::Invalid { line, key, .. } => {
                        assert!(!key.is_empty(), "an error names no key: {one}");
                        assert!(
                            (1..=lines + 1).contains(line),
                            "an error names line {line} of {lines}: {one}"
                        );
                    }
                    other => panic!("not an error about the text: {other}"),
                }
            }
        }
    }
}
