//! The reference the fuzz targets hold the fast path to: a strict
//! HTTP/1.1 message parser written from RFC 9112 alone (start line, field
//! lines, the message-length rules of section 6.3 and the chunked coding
//! of section 7.1), sharing no code with the proxy. It is stricter than
//! the proxy may be about what it accepts (CRLF only, except where a
//! caller allows the bare LF that RFC 9112 section 2.2 lets a recipient
//! accept), and it answers the questions that matter for smuggling: where
//! does this message end, and what body does it carry.

pub mod check;

/// One field line, name and value (white space around the value trimmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// The start line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    Request {
        method: Vec<u8>,
        target: Vec<u8>,
        minor: u8,
    },
    Status {
        minor: u8,
        code: u16,
    },
}

/// A parsed message head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub start: Start,
    pub fields: Vec<Field>,
    /// Bytes of the head, final empty line included.
    pub len: usize,
}

impl Head {
    /// The values of the fields named `name` (case-insensitive).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields
            .iter()
            .filter(move |f| f.name.eq_ignore_ascii_case(name.as_bytes()))
            .map(|f| f.value.as_slice())
    }

    /// Whether a field named `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.values(name).next().is_some()
    }
}

/// `tchar` (RFC 9110 section 5.6.2).
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `field-vchar` (VCHAR / obs-text).
fn is_field_vchar(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_ows(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_ows(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// Splits `buf` into lines: each ends in CRLF (or, with `bare_lf`, LF).
/// `Ok(None)`: the next line has not ended yet.
fn next_line(buf: &[u8], at: usize, bare_lf: bool) -> Result<Option<(&[u8], usize)>, &'static str> {
    let rest = &buf[at..];
    for (i, &b) in rest.iter().enumerate() {
        match b {
            b'\n' if i > 0 && rest[i - 1] == b'\r' => {
                return Ok(Some((&rest[..i - 1], at + i + 1)))
            }
            b'\n' if bare_lf => return Ok(Some((&rest[..i], at + i + 1))),
            b'\n' => return Err("bare LF"),
            b'\r' if i + 1 < rest.len() && rest[i + 1] != b'\n' => return Err("bare CR"),
            _ => {}
        }
    }
    Ok(None)
}

/// A field line, strictly: `token ":" OWS value OWS`, no obs-fold.
fn field(line: &[u8]) -> Result<Field, &'static str> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or("field line without colon")?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if !is_token(name) {
        return Err("field name not a token");
    }
    let value = trim_ows(value);
    if !value.iter().all(|&b| is_field_vchar(b) || is_ows(b)) {
        return Err("bad field value");
    }
    Ok(Field {
        name: name.to_vec(),
        value: value.to_vec(),
    })
}

fn version(v: &[u8]) -> Result<u8, &'static str> {
    match v {
        b"HTTP/1.0" => Ok(0),
        b"HTTP/1.1" => Ok(1),
        _ => Err("bad version"),
    }
}

/// Parses a head at the start of `buf`. `Ok(None)`: incomplete. With
/// `bare_lf`, the reader is tolerant as RFC 9112 section 2.2 allows a
/// recipient to be: a bare LF ends a line, and empty lines before the start
/// line are skipped (for requests they always are).
pub fn parse_head(buf: &[u8], request: bool, bare_lf: bool) -> Result<Option<Head>, &'static str> {
    let mut at = 0;
    // RFC 9112 section 2.2: empty lines before a request line are ignored.
    // Before a status line only by a tolerant reader (as httparse does; the
    // proxy writes every head it relays afresh, without them).
    let start = loop {
        let Some((line, next)) = next_line(buf, at, bare_lf)? else {
            return Ok(None);
        };
        at = next;
        if !(line.is_empty() && (request || bare_lf)) {
            break line;
        }
    };
    let start = if request {
        let mut parts = start.split(|&b| b == b' ');
        let (Some(method), Some(target), Some(v), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("bad request line");
        };
        if !is_token(method) {
            return Err("bad method");
        }
        if target.is_empty() || !target.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
            return Err("bad request target");
        }
        Start::Request {
            method: method.to_vec(),
            target: target.to_vec(),
            minor: version(v)?,
        }
    } else {
        if start.len() < 12 || start[8] != b' ' {
            return Err("bad status line");
        }
        let minor = version(&start[..8])?;
        let code = &start[9..12];
        if !code.iter().all(u8::is_ascii_digit) {
            return Err("bad status code");
        }
        let reason = &start[12..];
        if !reason.is_empty()
            && (reason[0] != b' ' || !reason[1..].iter().all(|&b| is_field_vchar(b) || is_ows(b)))
        {
            return Err("bad reason phrase");
        }
        Start::Status {
            minor,
            code: code.iter().fold(0, |n, &d| n * 10 + u16::from(d - b'0')),
        }
    };
    let mut fields = Vec::new();
    loop {
        let Some((line, next)) = next_line(buf, at, bare_lf)? else {
            return Ok(None);
        };
        at = next;
        if line.is_empty() {
            return Ok(Some(Head {
                start,
                fields,
                len: at,
            }));
        }
        if is_ows(line[0]) {
            return Err("obs-fold");
        }
        fields.push(field(line)?);
    }
}

/// How a body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// The elements of a comma-separated list over all lines of `name`.
fn list<'a>(head: &'a Head, name: &'a str) -> Vec<&'a [u8]> {
    head.values(name)
        .flat_map(|v| v.split(|&b| b == b','))
        .map(trim_ows)
        .filter(|e| !e.is_empty())
        .collect()
}

/// The transfer codings: `Ok(None)` without `Transfer-Encoding`,
/// `Ok(Some(chunked_last))` otherwise.
fn codings(head: &Head) -> Result<Option<bool>, &'static str> {
    if !head.has("transfer-encoding") {
        return Ok(None);
    }
    let codings = list(head, "transfer-encoding");
    let Some((last, others)) = codings.split_last() else {
        return Err("empty Transfer-Encoding");
    };
    let is_chunked = |c: &[u8]| c.eq_ignore_ascii_case(b"chunked");
    for c in &codings {
        let name = trim_ows(c.split(|&b| b == b';').next().unwrap_or(c));
        if !is_token(name) {
            return Err("bad transfer coding");
        }
        if is_chunked(name) && !is_chunked(c) {
            return Err("chunked with parameters");
        }
    }
    if others.iter().any(|c| is_chunked(c)) {
        return Err("chunked applied twice or not last");
    }
    Ok(Some(is_chunked(last)))
}

/// The `Content-Length`: every element of every line the same digits.
fn content_length(head: &Head) -> Result<Option<u64>, &'static str> {
    if !head.has("content-length") {
        return Ok(None);
    }
    let mut n = None;
    for v in list(head, "content-length") {
        if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
            return Err("bad Content-Length");
        }
        let m = v.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        if n.is_some_and(|n| n != m) {
            return Err("conflicting Content-Length");
        }
        n = Some(m);
    }
    n.map(Some).ok_or("empty Content-Length")
}

/// A request's body framing (RFC 9112 section 6.3, rules 3 to 7).
pub fn request_framing(head: &Head) -> Result<Framing, &'static str> {
    match codings(head)? {
        Some(true) => Ok(Framing::Chunked),
        Some(false) => Err("request coding not ending in chunked"),
        None => match content_length(head)? {
            None | Some(0) => Ok(Framing::Empty),
            Some(n) => Ok(Framing::Length(n)),
        },
    }
}

/// A response's body framing (RFC 9112 section 6.3, rules 1 to 7).
pub fn response_framing(head: &Head, head_request: bool) -> Result<Framing, &'static str> {
    let Start::Status { code, .. } = head.start else {
        return Err("not a response");
    };
    if head_request || (100..200).contains(&code) || code == 204 || code == 304 {
        return Ok(Framing::Empty);
    }
    match codings(head)? {
        Some(true) => Ok(Framing::Chunked),
        Some(false) => Ok(Framing::UntilClose),
        None => match content_length(head)? {
            None => Ok(Framing::UntilClose),
            Some(0) => Ok(Framing::Empty),
            Some(n) => Ok(Framing::Length(n)),
        },
    }
}

/// A decoded chunked body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedBody {
    /// Bytes of the encoded body, final CRLF included.
    pub len: usize,
    /// The data, chunks joined.
    pub data: Vec<u8>,
    /// The chunk sizes, the last (0) included.
    pub sizes: Vec<u64>,
    pub trailers: Vec<Field>,
}

/// `chunk-ext` (RFC 9112 section 7.1.1): `*( BWS ";" BWS name [ BWS "=" BWS
/// ( token / quoted-string ) ] )`.
fn chunk_ext(mut s: &[u8]) -> bool {
    fn ws(s: &[u8]) -> &[u8] {
        let n = s.iter().take_while(|&&b| is_ows(b)).count();
        &s[n..]
    }
    fn token(s: &[u8]) -> Option<&[u8]> {
        let n = s.iter().take_while(|&&b| is_tchar(b)).count();
        (n > 0).then(|| &s[n..])
    }
    fn quoted(s: &[u8]) -> Option<&[u8]> {
        let mut i = 1;
        while i < s.len() {
            match s[i] {
                b'"' => return Some(&s[i + 1..]),
                b'\\' if i + 1 < s.len() && (is_ows(s[i + 1]) || is_field_vchar(s[i + 1])) => {
                    i += 2
                }
                b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => i += 1,
                _ => return None,
            }
        }
        None
    }
    while !s.is_empty() {
        s = ws(s);
        let Some(rest) = s.strip_prefix(b";") else {
            return false;
        };
        let Some(rest) = token(ws(rest)) else {
            return false;
        };
        s = rest;
        let after = ws(s);
        if let Some(rest) = after.strip_prefix(b"=") {
            let rest = ws(rest);
            let value = if rest.first() == Some(&b'"') {
                quoted(rest)
            } else {
                token(rest)
            };
            let Some(rest) = value else { return false };
            s = rest;
        }
    }
    true
}

/// Decodes a chunked body at the start of `buf`. `Ok(None)`: incomplete.
pub fn decode_chunked(buf: &[u8]) -> Result<Option<ChunkedBody>, &'static str> {
    let mut at = 0;
    let mut data = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let Some((line, next)) = next_line(buf, at, false)? else {
            return Ok(None);
        };
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 {
            return Err("bad chunk size");
        }
        // White space after the size or an extension, before the CRLF, is
        // outside the grammar but cannot be read as anything else; hyper,
        // nginx and llhttp accept it, and so does this reference.
        if !chunk_ext(trim_ows(&line[digits..])) {
            return Err("bad chunk extension");
        }
        let hex = &line[..digits];
        let hex = &hex[hex.iter().take_while(|&&b| b == b'0').count()..];
        if hex.len() > 16 {
            return Err("chunk size too large");
        }
        let size = u64::from_str_radix(std::str::from_utf8(hex).unwrap_or("0"), 16).unwrap_or(0);
        at = next;
        sizes.push(size);
        if size == 0 {
            break;
        }
        let Some(end) = usize::try_from(size).ok().and_then(|s| at.checked_add(s)) else {
            return Ok(None);
        };
        if buf.len() < end + 2 {
            return Ok(None);
        }
        data.extend_from_slice(&buf[at..end]);
        if &buf[end..end + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF");
        }
        at = end + 2;
    }
    let mut trailers = Vec::new();
    loop {
        let Some((line, next)) = next_line(buf, at, false)? else {
            return Ok(None);
        };
        at = next;
        if line.is_empty() {
            return Ok(Some(ChunkedBody {
                len: at,
                data,
                sizes,
                trailers,
            }));
        }
        if is_ows(line[0]) {
            return Err("obs-fold in trailers");
        }
        trailers.push(field(line)?);
    }
}

/// A whole message: head, then body by the framing rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub head: Head,
    pub framing: Framing,
    /// The body's data (chunks joined).
    pub body: Vec<u8>,
    /// The chunked body, when chunked.
    pub chunked: Option<ChunkedBody>,
    /// Where the message ends (`UntilClose`: the end of the input).
    pub end: usize,
}

/// Parses a whole message at the start of `buf`. `Ok(None)`: incomplete.
pub fn parse_message(
    buf: &[u8],
    request: bool,
    head_request: bool,
    bare_lf: bool,
) -> Result<Option<Message>, &'static str> {
    let Some(head) = parse_head(buf, request, bare_lf)? else {
        return Ok(None);
    };
    let framing = if request {
        request_framing(&head)?
    } else {
        response_framing(&head, head_request)?
    };
    let rest = &buf[head.len..];
    let (body, chunked, end) = match framing {
        Framing::Empty => (Vec::new(), None, head.len),
        Framing::Length(n) => {
            let Some(body) = usize::try_from(n).ok().and_then(|n| rest.get(..n)) else {
                return Ok(None);
            };
            (body.to_vec(), None, head.len + body.len())
        }
        Framing::Chunked => {
            let Some(c) = decode_chunked(rest)? else {
                return Ok(None);
            };
            (c.data.clone(), Some(c.clone()), head.len + c.len)
        }
        Framing::UntilClose => (rest.to_vec(), None, buf.len()),
    };
    Ok(Some(Message {
        head,
        framing,
        body,
        chunked,
        end,
    }))
}

/// The input of a target: a flag byte, three split points (each a
/// fraction of the input, in 255ths; 0 for none), then the bytes.
pub struct Input<'a> {
    pub flags: u8,
    pub arrivals: Vec<usize>,
    pub bytes: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn split(data: &'a [u8]) -> Option<Input<'a>> {
        let (prefix, bytes) = data.split_at_checked(4)?;
        let arrivals = prefix[1..]
            .iter()
            .filter(|&&s| s != 0)
            .map(|&s| bytes.len() * usize::from(s) / 255)
            .collect();
        Some(Input {
            flags: prefix[0],
            arrivals,
            bytes,
        })
    }
}
