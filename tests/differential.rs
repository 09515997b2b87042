//! Differential test of the two codecs over the one forwarding policy
//! (issue 11, "One forwarding policy, two codecs"): every case of the
//! table below is run twice, once with `proxy.fast_path = true` (plain
//! HTTP/1.1 requests are parsed and written by the fast path,
//! `src/proxy/h1`) and once with `proxy.fast_path = false` (everything
//! goes through hyper's server, `src/proxy/forward.rs`; a request with a
//! body then goes through hyper's client, a bodyless one through the
//! general path's raw-socket exchange, `src/proxy/h1/general.rs`, which
//! reads the response with the fast path's codec), each time on a fresh
//! proxy with a fresh [`RecordingBackend`] behind it (two instances of
//! one service, recorded in one log, so that a request repeated on the
//! other instance shows). The outcomes must be the same.
//!
//! A case is the bytes a raw client sends (possibly in several writes,
//! with pauses, a half-close), the answer the instance scripts for each
//! request (exact bytes, possibly several writes, a pause, a close, no
//! answer at all, a tunnel), and settings. Its outcome is:
//!
//! - what the client got, read with the strict reference parser
//!   ([`strict_response`]): the interim (1xx) answers, the final answers
//!   (status, header lines, decoded body, trailers, and whether the body
//!   was delimited by the close), and how reading ended (all expected
//!   answers, closed early or in the middle of an answer, stalled,
//!   malformed bytes);
//! - whether the connection was still usable: after its expected answers
//!   the client sends `GET /__alive` twice, one after the other (with two
//!   instances taken in turn, one of them reaches the instance the case
//!   used, maybe on its pooled connection), the second asking to close,
//!   and records what answers them, or that the connection closed;
//! - what the instances received, read with the strict reference parser
//!   ([`strict_request`]): every request (method, target, version, all
//!   header lines, body framing, decoded body, trailers), every refusal
//!   of the strict parser (with its reason) and every incomplete request,
//!   in order; and for an upgrade, the tunnelled bytes both ways.
//!
//! Normalised away, because they are not semantic and the two codecs
//! legitimately write them differently:
//!
//! - the case of header field names (hyper writes them in lower case,
//!   the fast path copies them as received);
//! - the order of field lines with different names (RFC 9110 section
//!   5.3; hyper's header map groups lines by name): lines are sorted by
//!   name, stably, so the order of lines with the same name still counts;
//! - `date` in answers to the client (hyper dates every response, the
//!   fast path only its own error answers);
//! - the framing of a response body to the client: `content-length`, and
//!   `chunked` in `transfer-encoding`, are dropped from answers that have
//!   a body, whose decoded bytes are compared instead (the proxy may
//!   re-frame; other codings are kept, and a body delimited by the close
//!   is marked as such). Answers without a body (HEAD, 1xx, 204, 304)
//!   keep their `content-length`;
//! - chunk sizes and extensions (bodies are compared decoded, trailers
//!   as lines);
//! - the reason phrase;
//! - the instance addresses in the proxy's error texts (they change from
//!   run to run);
//! - whether a close came as FIN or as RST (that depends on unread bytes
//!   in the proxy's socket, not on a decision).
//!
//! Everything else counts, in particular: an extra or missing request at
//! the instances, a missing or different body, a header line more or
//! less, a different status, a different number of answers, and a
//! connection kept open on one path and closed on the other.
//!
//! The table says, per case, whether the fast path serves it; the test
//! checks from the bytes the instance received that it did (the fast
//! path copies the client's `Host` and `User-Agent` lines as received,
//! hyper writes `host` and `user-agent`), so a case cannot silently
//! compare hyper with itself.
//!
//! Differences that are intended are marked in the table
//! ([`Case::intended`]), each with its reason and the part of the outcome
//! it excuses; everything else must agree. Disagreements believed to be
//! bugs are listed in [`KNOWN_DISAGREEMENTS`]: they are still run and
//! still fail the test (with every disagreement listed, both outcomes and
//! the raw bytes each way), until they are fixed; a listed case that
//! agrees fails too, so the list stays true.
//!
//! `DIFFERENTIAL_SHOW=1 cargo test --test differential -- --nocapture`
//! prints every case's outcomes, agreeing or not.

mod support;

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use support::raw::{
    decode_chunked, strict_request, strict_response, Act, Field, ParsedRequest, ParsedResponse,
    Received, RecordingBackend,
};
use support::{refused_addr, wait_until, within, Proxy};

// === the table ===

/// The Host every case's service answers to (`[conventions]` `.svc`).
const HOST: &str = "c.svc";

/// The instance's default answer.
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nX-Backend: raw\r\nContent-Length: 2\r\n\r\nok";

/// What the client does.
#[derive(Debug, Clone)]
enum Step {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Wait this long.
    Pause(u64),
    /// Wait (bounded) until the instance has received this many requests.
    AwaitRequests(usize),
    /// Shut down the writing half (the proxy reads EOF).
    HalfClose,
}

type ScriptFn = Arc<dyn Fn(&ParsedRequest) -> Vec<Act> + Send + Sync>;

/// One case of the table.
#[derive(Clone)]
struct Case {
    name: &'static str,
    steps: Vec<Step>,
    /// The instance's acts for each request (but `/__alive`).
    script: ScriptFn,
    /// Final answers the client waits for.
    expect: usize,
    /// The requests are HEADs (their answers have no body).
    head: bool,
    /// Lines added to `[proxy]`.
    proxy_conf: &'static str,
    /// `[timeouts] response_header`.
    response_header: &'static str,
    /// Bytes sent through the tunnel after a `101`.
    tunnel: Option<&'static [u8]>,
    /// The fast path hands this request to hyper: both runs use hyper.
    handed_over: bool,
    /// Instances of the service (all recorded together).
    instances: usize,
    /// A second service `down.svc` whose only instance refuses
    /// connections.
    down_service: bool,
    /// An intended difference: why, and what part of the outcome it
    /// excuses (applied to both outcomes, which must then agree).
    intended: Option<(&'static str, Excuse)>,
}

/// What an intended difference excuses: applied to both outcomes.
type Excuse = fn(&mut Outcome);

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Case").field("name", &self.name).finish()
    }
}

/// A case sending `bytes` in one write, answered with [`OK`].
fn case(name: &'static str, bytes: impl AsRef<[u8]>) -> Case {
    Case {
        name,
        steps: vec![Step::Send(bytes.as_ref().to_vec())],
        script: Arc::new(|_| vec![Act::Write(OK.to_vec())]),
        expect: 1,
        head: false,
        proxy_conf: "",
        response_header: "2s",
        tunnel: None,
        handed_over: false,
        instances: 2,
        down_service: false,
        intended: None,
    }
}

/// A response-side case: `GET /r`, answered with `acts`.
fn answer(name: &'static str, acts: Vec<Act>) -> Case {
    case(name, get("/r")).acts(acts)
}

/// A response-side case answered with `bytes` in one write.
fn answer_bytes(name: &'static str, bytes: impl AsRef<[u8]>) -> Case {
    answer(name, vec![Act::Write(bytes.as_ref().to_vec())])
}

impl Case {
    fn acts(mut self, acts: Vec<Act>) -> Self {
        self.script = Arc::new(move |_| acts.clone());
        self
    }
    fn expect(mut self, n: usize) -> Self {
        self.expect = n;
        self
    }
    fn head(mut self) -> Self {
        self.head = true;
        self
    }
    fn then(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }
    fn proxy_conf(mut self, lines: &'static str) -> Self {
        self.proxy_conf = lines;
        self
    }
    fn response_header(mut self, t: &'static str) -> Self {
        self.response_header = t;
        self
    }
    fn tunnel(mut self, bytes: &'static [u8]) -> Self {
        self.tunnel = Some(bytes);
        self
    }
    fn handed_over(mut self) -> Self {
        self.handed_over = true;
        self
    }
    fn instances(mut self, n: usize) -> Self {
        self.instances = n;
        self
    }
    fn down_service(mut self) -> Self {
        self.down_service = true;
        self
    }
    /// Marks an intended difference between the codecs.
    fn intended(mut self, reason: &'static str, excuse: Excuse) -> Self {
        self.intended = Some((reason, excuse));
        self
    }
}

/// `first` then `Host: c.svc`, `User-Agent`, `headers` and `body`.
fn req(first: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{first}\r\nHost: {HOST}\r\nUser-Agent: differential\r\n").into_bytes();
    for h in headers {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A GET whose head is `len` bytes long.
fn head_of(len: usize) -> Vec<u8> {
    let base = req("GET / HTTP/1.1", &["X: "], b"").len();
    req(
        "GET / HTTP/1.1",
        &[&format!("X: {}", "v".repeat(len - base))],
        b"",
    )
}

fn get(path: &str) -> Vec<u8> {
    req(&format!("GET {path} HTTP/1.1"), &[], b"")
}

/// A chunked POST with `body` (already chunked).
fn chunked(body: &[u8]) -> Vec<u8> {
    req("POST /c HTTP/1.1", &["Transfer-Encoding: chunked"], body)
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A request pipelined after the case's own, to see where the first ended.
const AFTER: &[u8] = b"GET /after HTTP/1.1\r\nHost: c.svc\r\n\r\n";
const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: c.svc\r\n\r\n";
const POISON: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON";

fn w(bytes: &[u8]) -> Act {
    Act::Write(bytes.to_vec())
}

fn pause(ms: u64) -> Act {
    Act::Pause(Duration::from_millis(ms))
}

fn table() -> Vec<Case> {
    let t = vec![
        // --- framing: Content-Length
        case("baseline GET", get("/")),
        case(
            "POST with Content-Length",
            req("POST /p HTTP/1.1", &["Content-Length: 5"], b"hello"),
        ),
        case(
            "POST with Content-Length 0",
            req("POST /p HTTP/1.1", &["Content-Length: 0"], b""),
        ),
        case(
            "POST without framing has no body",
            req("POST /p HTTP/1.1", &[], b""),
        ),
        case(
            "Content-Length twice, identical",
            req(
                "POST /p HTTP/1.1",
                &["Content-Length: 5", "Content-Length: 5"],
                b"hello",
            ),
        ),
        case(
            "Content-Length 5 and 05",
            req(
                "POST /p HTTP/1.1",
                &["Content-Length: 5", "Content-Length: 05"],
                b"hello",
            ),
        ),
        case(
            "Content-Length 5 and 6",
            req(
                "POST /p HTTP/1.1",
                &["Content-Length: 5", "Content-Length: 6"],
                b"hello!",
            ),
        )
        .intended(HYPER_REFUSES, error_text),
        case(
            "Content-Length list 5, 5",
            req("POST /p HTTP/1.1", &["Content-Length: 5, 5"], b"hello"),
        )
        .intended(HYPER_REFUSES, error_text),
        case(
            "Content-Length +5",
            req("POST /p HTTP/1.1", &["Content-Length: +5"], b"hello"),
        )
        .intended(HYPER_REFUSES, error_text),
        case(
            "Content-Length 005",
            req("POST /p HTTP/1.1", &["Content-Length: 005"], b"hello"),
        ),
        case(
            "Content-Length with white space",
            req("POST /p HTTP/1.1", &["Content-Length:   5  "], b"hello"),
        ),
        case(
            "Content-Length -1",
            req("POST /p HTTP/1.1", &["Content-Length: -1"], b""),
        )
        .intended(HYPER_REFUSES, error_text),
        case(
            "Content-Length empty",
            req("POST /p HTTP/1.1", &["Content-Length: "], b""),
        )
        .intended(HYPER_REFUSES, error_text),
        case(
            "Content-Length of 20 digits",
            req(
                "POST /p HTTP/1.1",
                &["Content-Length: 99999999999999999999"],
                b"x",
            ),
        )
        .intended(HYPER_REFUSES, error_text),
        case(
            "GET with a body, then a pipelined GET",
            cat(&[
                &req("GET /g HTTP/1.1", &["Content-Length: 5"], b"hello"),
                AFTER,
            ]),
        )
        .expect(2),
        case(
            "GET whose unannounced body is a request",
            cat(&[&get("/1"), b"GET /2 HTTP/1.1\r\nHost: c.svc\r\n\r\n"]),
        )
        .expect(2),
        // --- framing: Transfer-Encoding
        case(
            "chunked body, then a pipelined GET",
            cat(&[&chunked(b"5\r\nhello\r\n0\r\n\r\n"), AFTER]),
        )
        .expect(2),
        case(
            "Content-Length then Transfer-Encoding",
            cat(&[
                &req(
                    "POST /p HTTP/1.1",
                    &["Content-Length: 6", "Transfer-Encoding: chunked"],
                    b"0\r\n\r\nX",
                ),
                AFTER,
            ]),
        ),
        case(
            "Transfer-Encoding then Content-Length",
            cat(&[
                &req(
                    "POST /p HTTP/1.1",
                    &["Transfer-Encoding: chunked", "Content-Length: 3"],
                    b"a\r\n0123456789\r\n0\r\n\r\n",
                ),
                AFTER,
            ]),
        ),
        case(
            "Transfer-Encoding Chunked in capitals",
            cat(&[
                &req(
                    "POST /p HTTP/1.1",
                    &["Transfer-Encoding: CHUNKED"],
                    b"5\r\nhello\r\n0\r\n\r\n",
                ),
                AFTER,
            ]),
        )
        .expect(2),
        case(
            "Transfer-Encoding chunked, identity",
            req(
                "POST /p HTTP/1.1",
                &["Transfer-Encoding: chunked, identity"],
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
        )
        .intended(HYPER_REFUSES, error_text),
        case(
            "Transfer-Encoding gzip, chunked",
            req(
                "POST /p HTTP/1.1",
                &["Transfer-Encoding: gzip, chunked"],
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        case(
            "Transfer-Encoding xchunked",
            req(
                "POST /p HTTP/1.1",
                &["Transfer-Encoding: xchunked"],
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
        )
        .intended(HYPER_REFUSES, error_text),
        case(
            "Transfer-Encoding chunked twice",
            req(
                "POST /p HTTP/1.1",
                &["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"],
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        case(
            "Transfer-Encoding chunked;q=1",
            req(
                "POST /p HTTP/1.1",
                &["Transfer-Encoding: chunked;q=1"],
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
        )
        .intended(HYPER_REFUSES, error_text),
        case(
            "Transfer-Encoding folded onto a second line",
            req(
                "POST /p HTTP/1.1",
                &["Transfer-Encoding:", " chunked"],
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
        )
        .intended(HYPER_REFUSES, error_text),
        case(
            "Transfer-Encoding with a space before the colon",
            req(
                "POST /p HTTP/1.1",
                &["Transfer-Encoding : chunked"],
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
        )
        .intended(HYPER_REFUSES, error_text),
        case(
            "Transfer_Encoding with an underscore is just a field",
            req("POST /p HTTP/1.1", &["Transfer_Encoding: chunked"], b"0\r\n\r\n"),
        )
        .intended(HYPER_REFUSES, error_text)
        .expect(2),
        // --- chunked bodies
        case(
            "chunk extensions and a trailer",
            chunked(b"3;ext=1\r\nabc\r\nA;q=\"x; y\"\r\n0123456789\r\n0\r\nx-sum: 1\r\n\r\n"),
        ),
        case(
            "chunk size and extension with white space",
            cat(&[&chunked(b"5 ; a = b\r\nhello\r\n0\r\n\r\n"), AFTER]),
        )
        .expect(2),
        case(
            "chunk size of 17 hex digits",
            chunked(b"10000000000000005\r\nhello\r\n0\r\n\r\n"),
        ),
        case(
            "chunk size with 17 digits of leading zeros",
            chunked(b"00000000000000005\r\nhello\r\n0\r\n\r\n"),
        ),
        case("chunk size 0x5", chunked(b"0x5\r\nhello\r\n0\r\n\r\n")),
        case("chunk size 5 6", chunked(b"5 6\r\nhello\r\n0\r\n\r\n")),
        case(
            "chunk extension ended by bare LF",
            chunked(b"5;a\nhello\r\n0\r\n\r\n"),
        ),
        case("chunk size line ended by bare LF", chunked(b"5\nhello\r\n0\r\n\r\n")),
        case(
            "chunk data not followed by CRLF",
            chunked(b"5\r\nhelloXX\r\n0\r\n\r\n"),
        )
        .intended(STREAMED, streamed),
        case(
            "request trailers with forbidden fields",
            cat(&[
                &chunked(b"5\r\nhello\r\n0\r\nContent-Length: 100\r\nHost: evil\r\nX-Ok: 1\r\n\r\n"),
                AFTER,
            ]),
        )
        .expect(2),
        case(
            "request trailers declared in Trailer",
            req(
                "POST /c HTTP/1.1",
                &["Transfer-Encoding: chunked", "Trailer: x-sum"],
                b"5\r\nhello\r\n0\r\nx-sum: 9\r\n\r\n",
            ),
        ),
        case(
            "request trailer line ended by bare LF",
            chunked(b"5\r\nhello\r\n0\r\nX: a\nY: b\r\n\r\n"),
        )
        .intended(STREAMED, streamed),
        case(
            "request trailer line without a colon",
            chunked(b"5\r\nhello\r\n0\r\nnot a field\r\n\r\n"),
        )
        .intended(STREAMED, streamed),
        case(
            "request trailer folded",
            chunked(b"5\r\nhello\r\n0\r\nX: a\r\n b\r\n\r\n"),
        )
        .intended(STREAMED, streamed),
        case(
            "last chunk then bare LF, smuggled request",
            cat(&[&chunked(b"5\r\nhello\r\n0\r\n\n"), SMUGGLED]),
        )
        .intended(LENIENT_CHUNK_END, everything),
        case(
            "chunked GET body, then a pipelined GET",
            cat(&[
                &req(
                    "GET /g HTTP/1.1",
                    &["Transfer-Encoding: chunked"],
                    b"5\r\nhello\r\n0\r\n\r\n",
                ),
                AFTER,
            ]),
        )
        .expect(2),
        case(
            "Content-Length body in two writes",
            req("POST /p HTTP/1.1", &["Content-Length: 10"], b"01234"),
        )
        .then(Step::Pause(50))
        .then(Step::Send(b"56789".to_vec())),
        case(
            "body over 64 KiB",
            req(
                "POST /big HTTP/1.1",
                &["Content-Length: 70000"],
                &vec![b'x'; 70_000],
            ),
        )
        .handed_over(),
        case(
            "chunked body in two writes",
            chunked(b"5\r\nhel"),
        )
        .then(Step::Pause(50))
        .then(Step::Send(b"lo\r\n0\r\n\r\n".to_vec())),
        // --- head syntax
        case(
            "bare LF line endings",
            "GET /lf HTTP/1.1\nHost: c.svc\nX-F: f\n\n",
        ),
        case("bare CR in a header value", req("GET / HTTP/1.1", &["X: a\rb"], b""))
        .intended(HYPER_REFUSES, error_text),
        case(
            "folded request header",
            req("GET / HTTP/1.1", &["X: a", " b"], b""),
        )
        .intended(HYPER_REFUSES, error_text),
        case("NUL in a header value", req("GET / HTTP/1.1", &["X: a\0b"], b""))
        .intended(HYPER_REFUSES, error_text),
        case("DEL in a header value", req("GET / HTTP/1.1", &["X: a\x7fb"], b""))
        .intended(HYPER_REFUSES, error_text),
        case(
            "obs-text in a header value",
            &b"GET / HTTP/1.1\r\nHost: c.svc\r\nX-Name: caf\xe9 \xff\r\n\r\n"[..],
        ),
        case("UTF-8 in the request target", "GET /caf\u{e9} HTTP/1.1\r\nHost: c.svc\r\n\r\n"),
        case(
            "obs-text in an absolute-form target",
            &b"GET http://c.svc/caf\xe9 HTTP/1.1\r\nHost: c.svc\r\n\r\n"[..],
        )
        .intended(HYPER_REFUSES, error_text),
        case("fragment in the request target", get("/a#frag")),
        case("tab in the request target", get("/a\tb"))
        .intended(HYPER_REFUSES, error_text),
        case("two spaces in the request line", req("GET  / HTTP/1.1", &[], b""))
        .intended(HYPER_REFUSES, error_text),
        case("header line without a colon", req("GET / HTTP/1.1", &["Foo"], b""))
        .intended(HYPER_REFUSES, error_text),
        case(
            "empty line before the request line",
            cat(&[b"\r\n", &get("/")]),
        ),
        case("lower-case method", req("get /m HTTP/1.1", &[], b"")),
        case("HTTP/1.2", req("GET / HTTP/1.2", &[], b""))
        .intended(HYPER_REFUSES, error_text),
        // --- request targets
        case(
            "absolute-form, Host the same",
            req("GET http://c.svc/abs?q=1 HTTP/1.1", &[], b""),
        ),
        case(
            "absolute-form, Host differs",
            "GET http://c.svc/abs HTTP/1.1\r\nHost: other.example\r\nUser-Agent: differential\r\n\r\n",
        ),
        case(
            "absolute-form with https",
            req("GET https://c.svc/abs HTTP/1.1", &[], b""),
        ),
        case(
            "absolute-form with user info",
            req("GET http://u:p@c.svc/abs HTTP/1.1", &[], b""),
        ),
        case(
            "absolute-form without path, with query",
            req("GET http://c.svc?q HTTP/1.1", &[], b""),
        ),
        case(
            "CONNECT in authority-form",
            req("CONNECT c.svc:80 HTTP/1.1", &[], b""),
        ),
        case(
            "authority-form with GET",
            req("GET c.svc:80 HTTP/1.1", &[], b""),
        ),
        case("OPTIONS *", req("OPTIONS * HTTP/1.1", &[], b"")),
        case("GET *", req("GET * HTTP/1.1", &[], b"")),
        case(
            "target without a leading slash",
            req("GET abc HTTP/1.1", &[], b""),
        ),
        case(
            "request target over max_uri_bytes",
            get(&format!("/{}", "a".repeat(9000))),
        ),
        case(
            "request target of max_uri_bytes",
            get(&format!("/{}", "a".repeat(8191))),
        ),
        case(
            "request target one byte over max_uri_bytes",
            get(&format!("/{}", "a".repeat(8192))),
        ),
        case(
            "130 header lines",
            req(
                "GET / HTTP/1.1",
                &(0..130)
                    .map(|i| format!("X-{i}: v"))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
                b"",
            ),
        ),
        case(
            "head over max_header_bytes",
            req("GET / HTTP/1.1", &[&format!("X: {}", "v".repeat(17_000))], b""),
        ),
        case("head one byte over max_header_bytes", head_of(16_385)),
        case("head exactly max_header_bytes", head_of(16_384)),
        // --- Host
        case("missing Host", "GET / HTTP/1.1\r\n\r\n"),
        case(
            "two Host lines, same value",
            req("GET / HTTP/1.1", &["Host: c.svc"], b""),
        ),
        case(
            "two Host lines, different values",
            req("GET / HTTP/1.1", &["Host: other.svc"], b""),
        ),
        case(
            "Host with user info",
            "GET / HTTP/1.1\r\nHost: user:pw@c.svc\r\n\r\n",
        ),
        case("Host empty", "GET / HTTP/1.1\r\nHost: \r\n\r\n"),
        case("Host with a path", "GET / HTTP/1.1\r\nHost: c.svc/x?y\r\n\r\n"),
        case(
            "Host with a space inside",
            "GET / HTTP/1.1\r\nHost: c.svc evil\r\n\r\n",
        ),
        case("Host with a port", "GET / HTTP/1.1\r\nHost: c.svc:8080\r\n\r\n"),
        case("Host in capitals", "GET / HTTP/1.1\r\nHost: C.SVC\r\n\r\n"),
        case("Host an IPv6 literal", "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"),
        // --- Connection and hop-by-hop fields
        case(
            "Connection: content-length",
            req(
                "POST /p HTTP/1.1",
                &[
                    "Connection: content-length",
                    &format!("Content-Length: {}", SMUGGLED.len()),
                ],
                SMUGGLED,
            ),
        ),
        case(
            "Connection: keep-alive, Content-Length",
            req(
                "POST /p HTTP/1.1",
                &[
                    &format!("Content-Length: {}", SMUGGLED.len()),
                    "Connection: keep-alive, Content-Length",
                ],
                SMUGGLED,
            ),
        ),
        case(
            "Connection: transfer-encoding",
            req(
                "POST /p HTTP/1.1",
                &["Connection: transfer-encoding", "Transfer-Encoding: chunked"],
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        case(
            "Connection: host",
            req("GET / HTTP/1.1", &["Connection: host"], b""),
        ),
        case(
            "Connection lists X-Forwarded-Proto",
            req(
                "GET / HTTP/1.1",
                &["X-Forwarded-Proto: https", "Connection: x-forwarded-proto"],
                b"",
            ),
        ),
        case(
            "Connection lists an end-to-end field",
            req(
                "GET / HTTP/1.1",
                &["Connection: X-Secret, keep-alive", "X-Secret: 1", "X-Kept: 2"],
                b"",
            ),
        ),
        case(
            "hop-by-hop request fields",
            req(
                "GET / HTTP/1.1",
                &[
                    "Keep-Alive: timeout=5",
                    "TE: trailers",
                    "Proxy-Connection: keep-alive",
                    "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
                    "Trailer: x-sum",
                    "Proxy-Authorization: Basic dTpw",
                    "X-Kept: 1",
                ],
                b"",
            ),
        ),
        case(
            "forwarding fields from an untrusted client",
            req(
                "GET / HTTP/1.1",
                &[
                    "X-Forwarded-For: 6.6.6.6",
                    "X-Forwarded-For: 7.7.7.7, 8.8.8.8",
                    "X-Forwarded-Proto: https",
                    "X-Forwarded-Host: admin.internal",
                    "Forwarded: for=6.6.6.6;proto=https",
                    "Via: 1.1 elsewhere",
                ],
                b"",
            ),
        ),
        case(
            "forwarding fields from a trusted client, Forwarded on",
            req(
                "GET / HTTP/1.1",
                &[
                    "X-Forwarded-For: 6.6.6.6",
                    "X-Forwarded-Proto: https",
                    "X-Forwarded-Host: shop.example",
                    "Forwarded: for=6.6.6.6;proto=https",
                ],
                b"",
            ),
        )
        .proxy_conf("trusted_proxies = [\"127.0.0.0/8\"]\nforwarded = true"),
        case(
            "repeated end-to-end fields keep their order",
            req(
                "GET / HTTP/1.1",
                &["Accept: a", "X-B: 1", "Accept: b", "Cookie: c=1", "Accept: c"],
                b"",
            ),
        ),
        // --- Expect
        case(
            "Expect other than 100-continue",
            req(
                "POST /p HTTP/1.1",
                &["Expect: 200-ok", "Content-Length: 5"],
                b"hello",
            ),
        ),
        case(
            "Expect: 100-continue with the body at once",
            req(
                "POST /p HTTP/1.1",
                &["Expect: 100-continue", "Content-Length: 5"],
                b"hello",
            ),
        )
        .handed_over(),
        // --- upgrades
        case(
            "websocket upgrade, allowed",
            req(
                "GET /ws HTTP/1.1",
                &[
                    "Upgrade: websocket",
                    "Connection: Upgrade",
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                    "Sec-WebSocket-Version: 13",
                ],
                b"",
            ),
        )
        .acts(vec![
            w(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"),
            Act::Echo,
        ])
        .tunnel(b"tunnelled bytes")
        .handed_over(),
        case(
            "websocket upgrade refused by the instance",
            req(
                "GET /ws HTTP/1.1",
                &["Upgrade: websocket", "Connection: Upgrade"],
                b"",
            ),
        )
        .handed_over(),
        case(
            "h2c upgrade is served as plain HTTP/1.1",
            req(
                "GET / HTTP/1.1",
                &[
                    "Upgrade: h2c",
                    "Connection: Upgrade, HTTP2-Settings",
                    "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
                ],
                b"",
            ),
        ),
        case(
            "Upgrade without Connection: upgrade",
            req("GET / HTTP/1.1", &["Upgrade: websocket"], b""),
        ),
        // --- pipelining and connection management
        case(
            "three pipelined GETs",
            cat(&[&get("/1"), &get("/2"), &get("/3")]),
        )
        .expect(3),
        case(
            "a good request, then a bad one",
            cat(&[&get("/1"), b"GET /\x01 HTTP/1.1\r\nHost: c.svc\r\n\r\n"]),
        )
        .intended(HYPER_REFUSES, error_text)
        .expect(2),
        case(
            "Connection: close",
            req("GET / HTTP/1.1", &["Connection: close"], b""),
        ),
        case("HEAD", req("HEAD /h HTTP/1.1", &[], b""))
            .head()
            .acts(vec![w(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")]),
        // --- errors
        case(
            "no route",
            "GET /x HTTP/1.1\r\nHost: nowhere.example\r\n\r\n",
        ),
        case(
            "unknown service",
            "GET /x HTTP/1.1\r\nHost: ghost.svc\r\n\r\n",
        ),
        case(
            "unknown service, HEAD",
            "HEAD /x HTTP/1.1\r\nHost: ghost.svc\r\n\r\n",
        )
        .head(),
        case(
            "no route for a POST with a body",
            "POST /x HTTP/1.1\r\nHost: nowhere.example\r\nContent-Length: 5\r\n\r\nhello",
        )
        .intended(UNREAD_BODY, connection_reuse),
        case(
            "instance down",
            "GET /x HTTP/1.1\r\nHost: down.svc\r\n\r\n",
        )
        .down_service(),
        case("instance too slow", get("/slow"))
            .acts(vec![Act::Hold])
            .response_header("300ms"),
        case("instance closes without answering", get("/"))
            .acts(vec![Act::Close]),
        case(
            "POST the instance closes on without answering",
            req("POST /p HTTP/1.1", &["Content-Length: 5"], b"hello"),
        )
        .intended(ERROR_WORDING, error_text)
        .acts(vec![Act::Close]),
        // --- client aborts
        case(
            "client half-closes while the instance works",
            get("/slow"),
        )
        .acts(vec![pause(300), w(OK)])
        .then(Step::AwaitRequests(1))
        .then(Step::HalfClose),
        case(
            "client stops in the middle of a Content-Length body",
            req("POST /p HTTP/1.1", &["Content-Length: 10"], b"hel"),
        )
        .intended(STREAMED, streamed)
        .then(Step::HalfClose),
        case(
            "client pauses in the middle of a chunked body",
            chunked(b"5\r\nhello\r\n"),
        )
        .intended(STREAMED, streamed),
        case(
            "client stops in the middle of a head",
            "GET / HTTP/1.1\r\nHost: c.sv",
        )
        .then(Step::HalfClose),
        // --- responses: framing
        answer_bytes(
            "response with Content-Length and Transfer-Encoding",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        answer_bytes(
            "response with two different Content-Lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        answer_bytes(
            "response with two identical Content-Lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        ),
        answer_bytes(
            "response Content-Length list",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
        ),
        answer_bytes(
            "response Content-Length +5",
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
        ),
        answer_bytes(
            "response Content-Length: 0",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ),
        answer_bytes(
            "chunked response with extensions",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n",
        ),
        answer_bytes(
            "response with a bad chunk size",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        )
        .intended(STREAMED_RESPONSE, everything),
        answer_bytes(
            "response chunk data not followed by CRLF",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n",
        )
        .intended(STREAMED_RESPONSE, everything),
        answer(
            "response with a bad second chunk",
            vec![
                w(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"),
                pause(100),
                w(b"zz\r\n"),
            ],
        ),
        answer(
            "response delimited by close",
            vec![w(b"HTTP/1.1 200 OK\r\nX: y\r\n\r\nbody until close"), Act::Close],
        )
        .intended(CLOSE_DELIMITED, connection_reuse),
        answer(
            "response closed in the middle of a Content-Length body",
            vec![w(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"), Act::Close],
        ),
        answer(
            "response closed in the middle of a chunked body",
            vec![
                w(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"),
                Act::Close,
            ],
        ),
        answer(
            "response closed before the last CRLF",
            vec![
                w(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"),
                Act::Close,
            ],
        ),
        answer(
            "response closed in the middle of its head",
            vec![w(b"HTTP/1.1 200 OK\r\nContent-Le"), Act::Close],
        ),
        answer_bytes(
            "response followed by stray bytes in the same write",
            cat(&[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", POISON]),
        ),
        answer_bytes(
            "response with Connection: close, then stray bytes",
            cat(&[
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                POISON,
            ]),
        ),
        answer_bytes(
            "response Connection: content-length",
            b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello",
        ),
        answer_bytes(
            "response Connection: transfer-encoding",
            b"HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        answer_bytes(
            "HTTP/1.0 response with Transfer-Encoding and keep-alive",
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        answer_bytes(
            "HTTP/1.0 response with keep-alive and Content-Length",
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello",
        )
        .instances(1),
        answer(
            "response Transfer-Encoding gzip",
            vec![w(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nrawbytes"), Act::Close],
        )
        .intended(CLOSE_DELIMITED, connection_reuse),
        answer(
            "response Transfer-Encoding chunked, then gzip",
            vec![
                w(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
                Act::Close,
            ],
        ),
        answer_bytes(
            "response Transfer-Encoding gzip, then chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        answer_bytes(
            "response trailers, declared",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: 42\r\n\r\n",
        ),
        case(
            "response trailers, declared, client accepts trailers",
            req("GET /r HTTP/1.1", &["TE: trailers"], b""),
        )
        .acts(vec![w(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: 42\r\n\r\n")]),
        answer_bytes(
            "response trailers, not declared",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: 42\r\n\r\n",
        ),
        answer_bytes(
            "response trailers with forbidden fields",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: content-length, set-cookie, x-ok\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 9\r\nSet-Cookie: a=b\r\nX-Ok: 1\r\n\r\n",
        ),
        answer_bytes(
            "response trailer ended by bare LF, then a response",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Injected: yes\r\n\r\n",
        )
        .intended(LENIENT_CHUNK_END, everything),
        // --- responses: status
        answer_bytes(
            "100 Continue, then 200",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ),
        answer_bytes(
            "103 Early Hints, then 200",
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )
        .intended(INTERIM, interim),
        answer_bytes(
            "20 interim 100 answers, then 200",
            cat(&[
                &b"HTTP/1.1 100 Continue\r\n\r\n".repeat(20),
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            ]),
        ),
        answer_bytes(
            "100 Continue with a body, then 200",
            b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ),
        answer_bytes(
            "response with Connection: close",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        ),
        answer_bytes(
            "204 with Content-Length and a body",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
        ),
        answer_bytes(
            "204 without a body",
            b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
        ),
        answer_bytes(
            "304 with Content-Length",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: \"x\"\r\n\r\n",
        ),
        answer_bytes(
            "304 with Transfer-Encoding",
            b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
        ),
        answer_bytes(
            "status 099",
            b"HTTP/1.1 099 Weird\r\nContent-Length: 5\r\n\r\nhello",
        ),
        answer_bytes(
            "status 000, then 200",
            b"HTTP/1.1 000 Zero\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ),
        answer_bytes(
            "status 999",
            b"HTTP/1.1 999 Nine\r\nContent-Length: 2\r\n\r\nok",
        ),
        answer_bytes(
            "status 500 from the instance",
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops",
        ),
        answer_bytes(
            "unsolicited 101",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nRAW",
        ),
        // --- responses: head syntax and fields
        answer_bytes(
            "response header line ended by bare LF",
            b"HTTP/1.1 200 OK\r\nX: a\nInjected: 1\r\nContent-Length: 2\r\n\r\nok",
        ),
        answer_bytes(
            "bare CR in a response header",
            b"HTTP/1.1 200 OK\r\nX: a\rInjected: 1\r\nContent-Length: 2\r\n\r\nok",
        )
        ,
        answer_bytes(
            "folded response header",
            b"HTTP/1.1 200 OK\r\nX: a\r\n Injected: 1\r\nContent-Length: 2\r\n\r\nok",
        )
        ,
        answer_bytes(
            "response header with a space before the colon",
            b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
        )
        ,
        answer_bytes(
            "NUL in a response header",
            b"HTTP/1.1 200 OK\r\nX: a\0b\r\nContent-Length: 2\r\n\r\nok",
        )
        ,
        answer_bytes(
            "response reason with obs-text",
            b"HTTP/1.1 200 \xff\xfe OK\r\nContent-Length: 2\r\n\r\nok",
        ),
        answer_bytes(
            "hop-by-hop response fields",
            b"HTTP/1.1 200 OK\r\nConnection: x-secret, keep-alive\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nProxy-Connection: keep-alive\r\nX-Kept: 2\r\nContent-Length: 2\r\n\r\nok",
        ),
        answer_bytes(
            "repeated response fields keep their order",
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-B: 1\r\nSet-Cookie: b=2\r\nVary: x\r\nSet-Cookie: c=3\r\nContent-Length: 2\r\n\r\nok",
        ),
        answer_bytes(
            "response head of 70000 bytes",
            format!(
                "HTTP/1.1 200 OK\r\nX: {}\r\nContent-Length: 2\r\n\r\nok",
                "a".repeat(70_000)
            ),
        ),
        case(
            "HEAD answered with Transfer-Encoding",
            req("HEAD /h HTTP/1.1", &[], b""),
        )
        .head()
        .acts(vec![w(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")]),
        case("HEAD answered with a body anyway", req("HEAD /h HTTP/1.1", &[], b""))
            .head()
            .acts(vec![w(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")]),
    ];
    t
}

// === intended differences: reasons and what they excuse ===

/// hyper's own parser refuses the request.
const HYPER_REFUSES: &str = "hyper's server parser refuses this request itself and answers a \
     bare 400 (no body) before the policy sees it; the fast path's policy refusal has the same \
     status and also closes, with the problem named in its body";

/// The instance's protocol error, in two wordings.
const ERROR_WORDING: &str = "same status, same connection handling, same requests at the \
     instance; only the error text differs: hyper's client reports the instance's protocol \
     error in its own words, the fast path's parser names it";

/// Request bodies: streamed by hyper, buffered by the fast path.
const STREAMED: &str = "hyper streams a request body to the instance as it arrives; the fast \
     path sends a body (up to 64 KiB) once it is whole: a body the client never finished, or \
     that turns out malformed, reaches the instance in part on hyper only (and that upstream \
     request is abandoned, its connection closed). The client's outcome is the same";

/// Close-delimited response bodies.
const CLOSE_DELIMITED: &str = "the fast path relays a body delimited by the close as it came and \
     so must close the client connection after it; hyper re-frames it as chunked and keeps the \
     client connection. The client gets the same head and body either way";

/// Interim responses.
const INTERIM: &str = "hyper's client cannot relay informational responses (it reads past \
     them), so only the fast path passes 103 Early Hints on to the client";

/// An error answer before the request body was read.
const UNREAD_BODY: &str = "an error answer to a request whose body was not read: the fast path \
     closes the connection (it never reads a body it does not forward), hyper reads the rest of \
     the small body and keeps the connection. Both are safe; the answer is the same";

/// hyper's chunk decoder and the end of a chunked body.
const LENIENT_CHUNK_END: &str = "hyper's chunk decoder takes a bare LF after the last chunk and \
     drops what follows it as a malformed trailer section, where the policy refuses the message \
     (400 for a request, 502 for a response). Either way nothing reaches the other side that it \
     could read differently: hyper re-encodes the body, and the bytes after the LF are dropped, \
     neither forwarded nor answered";

/// A malformed chunked response body.
const STREAMED_RESPONSE: &str = "hyper sends the response head as soon as it has it and streams \
     the body; a malformed body is then cut off (the client sees an incomplete message, never a \
     second one). The fast path has the head and the first bytes of the body in one read, so it \
     answers 502 instead";

/// Excuses everything: for a case where the two paths refuse the same
/// bad message at different points (the table still runs it, and the
/// reason says why both are safe).
fn everything(o: &mut Outcome) {
    *o = Outcome::default();
}

/// Excuses the proxy's error texts (and hyper's bare 400): keeps the
/// status and the `connection` field of error answers.
fn error_text(o: &mut Outcome) {
    for m in o.answers.iter_mut().chain(o.after.iter_mut()) {
        if m.start.starts_with('4') || m.start.starts_with('5') {
            m.headers.retain(|h| h.starts_with("connection:"));
            m.body.clear();
        }
    }
}

/// Excuses partial requests at the instance.
fn streamed(o: &mut Outcome) {
    o.instance.retain(|i| !i.starts_with("incomplete"));
}

/// Excuses whether the connection stayed usable (and what the proxy said
/// about it).
fn connection_reuse(o: &mut Outcome) {
    for m in &mut o.answers {
        m.headers.retain(|h| h != "connection: close");
        m.start = m.start.replace(" (body delimited by the close)", "");
    }
    o.after.clear();
    o.after_end.clear();
    o.instance.retain(|i| !i.starts_with("GET /__alive "));
}

fn interim(o: &mut Outcome) {
    o.interim.clear();
}

/// A disagreement believed to be a bug: the case and what differs.
struct Known {
    case: &'static str,
    what: &'static str,
}

/// Disagreements believed to be bugs (for the lead to fix): still run, and
/// still failing the test, until the two paths agree.
const KNOWN_DISAGREEMENTS: &[Known] = &[];

// === running a case ===

/// An answer as compared: status (and whether its body was delimited by
/// the close), normalised header lines, decoded body, trailer lines.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    start: String,
    headers: Vec<String>,
    body: String,
    trailers: Vec<String>,
}

/// The comparable outcome of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Outcome {
    /// Interim answers the client got.
    interim: Vec<Msg>,
    /// The case's final answers.
    answers: Vec<Msg>,
    /// How reading them ended.
    end: String,
    /// What answered the `/__alive` requests after them, and how that
    /// ended (`closed` when the proxy closed, as the last one asked).
    after: Vec<Msg>,
    after_end: String,
    /// Bytes that came back through a tunnel.
    tunnel: Option<String>,
    /// What the instance received, in order.
    instance: Vec<String>,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msgs = |f: &mut fmt::Formatter<'_>, label: &str, m: &[Msg]| -> fmt::Result {
            for m in m {
                writeln!(f, "    {label}: {}", m.start)?;
                for h in &m.headers {
                    writeln!(f, "      {}", cut(h, 300))?;
                }
                if !m.body.is_empty() {
                    writeln!(f, "      body: {}", cut(&m.body, 300))?;
                }
                for t in &m.trailers {
                    writeln!(f, "      trailer {t}")?;
                }
            }
            Ok(())
        };
        msgs(f, "interim", &self.interim)?;
        msgs(f, "answer", &self.answers)?;
        writeln!(f, "    end: {}", self.end)?;
        msgs(f, "after", &self.after)?;
        writeln!(f, "    after: {}", self.after_end)?;
        if let Some(t) = &self.tunnel {
            writeln!(f, "    tunnel: {t}")?;
        }
        if self.instance.is_empty() {
            writeln!(f, "    instance: nothing")?;
        }
        for i in &self.instance {
            writeln!(f, "    instance: {}", cut(i, 1000))?;
        }
        Ok(())
    }
}

/// One run of one case.
struct Run {
    outcome: Outcome,
    /// `Some(true)` when the instance's bytes show the fast path wrote the
    /// request, `Some(false)` hyper, `None` when they do not tell.
    fast_codec: Option<bool>,
    /// The raw bytes each way, for the report.
    client_bytes: Vec<u8>,
    instance_bytes: Vec<Vec<u8>>,
}

fn esc(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

/// `s`, cut to at most `max` characters for a report.
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}... ({} bytes in all)", &s[..i], s.len()),
        None => s.to_owned(),
    }
}

/// Header lines as compared: `name: value`, sorted by name (stably).
/// `rewrite` may drop a line (`Some(None)`) or replace its value
/// (`Some(Some(value))`); `None` keeps it.
fn lines(
    fields: &[Field],
    rewrite: impl Fn(&str, &[u8]) -> Option<Option<Vec<u8>>>,
) -> Vec<String> {
    let mut out: Vec<(String, String)> = fields
        .iter()
        .filter_map(|(n, v)| match rewrite(n, v) {
            None => Some((n.clone(), esc(v))),
            Some(None) => None,
            Some(Some(v)) => Some((n.clone(), esc(&v))),
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter().map(|(n, v)| format!("{n}: {v}")).collect()
}

/// The transfer codings of a value without `chunked`.
fn without_chunked(v: &[u8]) -> Option<Vec<u8>> {
    let rest: Vec<&[u8]> = v
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.eq_ignore_ascii_case(b"chunked"))
        .collect();
    (!rest.is_empty()).then(|| rest.join(&b", "[..]))
}

fn response_msg(r: &ParsedResponse, addrs: &[(String, &str)]) -> Msg {
    let has_body = r.framing != support::raw::Framing::None;
    let headers = lines(&r.headers, |n, v| match n {
        "date" => Some(None),
        "content-length" if has_body => Some(None),
        "transfer-encoding" if has_body => Some(without_chunked(v)),
        _ => None,
    });
    let mut body = esc(&r.body);
    for (addr, placeholder) in addrs {
        body = body.replace(addr.as_str(), placeholder);
    }
    Msg {
        start: if r.framing == support::raw::Framing::Close {
            format!("{} (body delimited by the close)", r.status)
        } else {
            r.status.to_string()
        },
        headers,
        body,
        trailers: lines(&r.trailers, |_, _| None),
    }
}

fn request_text(r: &ParsedRequest) -> String {
    let mut s = format!(
        "{} {} HTTP/1.{} [{:?}] {{ {} }}",
        r.method,
        r.target,
        r.minor,
        r.framing,
        lines(&r.headers, |_, _| None).join(" | ")
    );
    if !r.body.is_empty() {
        s.push_str(&format!(" body {:?}", esc(&r.body)));
    }
    if !r.trailers.is_empty() {
        s.push_str(&format!(
            " trailers {{ {} }}",
            lines(&r.trailers, |_, _| None).join(" | ")
        ));
    }
    s
}

/// Bytes that are not a whole request, described without what the codecs
/// may write differently: a complete head is shown normalised, with the
/// number of bytes after it.
fn partial_text(bytes: &[u8]) -> String {
    let mut slots = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => {
            let fields: Vec<Field> = req
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                .collect();
            format!(
                "{} {} {{ {} }} then {:?}",
                req.method.unwrap_or(""),
                req.path.unwrap_or(""),
                lines(&fields, |_, _| None).join(" | "),
                esc(&bytes[n..])
            )
        }
        _ => format!("{} bytes of a head", bytes.len()),
    }
}

/// A request the client sends after a case's answers, to see whether the
/// connection is still usable; the `last` one asks to close.
fn alive_request(last: bool) -> Vec<u8> {
    let close = if last { "Connection: close\r\n" } else { "" };
    format!("GET /__alive HTTP/1.1\r\nHost: {HOST}\r\n{close}\r\n").into_bytes()
}

const ALIVE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nalive";

/// How long the client waits for the next bytes before calling the
/// exchange stalled.
const CLIENT_WAIT: Duration = Duration::from_secs(3);

struct ClientSide {
    interim: Vec<ParsedResponse>,
    answers: Vec<ParsedResponse>,
    end: String,
    after: Vec<ParsedResponse>,
    after_end: String,
    tunnel: Option<Vec<u8>>,
    bytes: Vec<u8>,
}

/// Reads responses off `stream` until `want` final ones arrived (a `101`
/// counts as final), the connection ends, or nothing comes for
/// [`CLIENT_WAIT`]. Interim answers go to `interim`.
async fn read_answers(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    all: &mut Vec<u8>,
    head: bool,
    want: usize,
    interim: &mut Vec<ParsedResponse>,
) -> (Vec<ParsedResponse>, String) {
    let mut answers = Vec::new();
    let mut eof = false;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        loop {
            match strict_response(buf, head, eof) {
                Ok(Some((r, n))) => {
                    buf.drain(..n);
                    if r.status < 200 && r.status != 101 {
                        interim.push(r);
                        continue;
                    }
                    let switched = r.status == 101;
                    answers.push(r);
                    if switched || answers.len() == want {
                        return (answers, "answered".to_owned());
                    }
                }
                Ok(None) => break,
                Err(e) => return (answers, format!("malformed: {e}")),
            }
        }
        if eof {
            if buf.is_empty() {
                return (answers, "closed".to_owned());
            }
            // A response cut short: say which, without its framing bytes.
            let status = buf.get(9..12).map(esc).unwrap_or_default();
            return (
                answers,
                format!("closed in the middle of a {status} response"),
            );
        }
        match tokio::time::timeout(CLIENT_WAIT, stream.read(&mut chunk)).await {
            Err(_) => return (answers, "stalled".to_owned()),
            Ok(Ok(0)) | Ok(Err(_)) => eof = true,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                all.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

async fn client(addr: SocketAddr, case: &Case, backend: &RecordingBackend) -> ClientSide {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    stream.set_nodelay(true).unwrap();
    for step in &case.steps {
        match step {
            Step::Send(bytes) => {
                // A proxy that closed early makes this fail; what it
                // answered is still read below.
                let _ = stream.write_all(bytes).await;
            }
            Step::Pause(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
            Step::AwaitRequests(n) => {
                let n = *n;
                wait_until(10, "the instance to receive the request", || {
                    backend.requests() >= n
                })
                .await;
            }
            Step::HalfClose => {
                let _ = stream.shutdown().await;
            }
        }
    }
    let (mut buf, mut all) = (Vec::new(), Vec::new());
    let mut interim = Vec::new();
    let (answers, end) = read_answers(
        &mut stream,
        &mut buf,
        &mut all,
        case.head,
        case.expect,
        &mut interim,
    )
    .await;
    let mut side = ClientSide {
        interim,
        answers,
        end,
        after: Vec::new(),
        after_end: String::new(),
        tunnel: None,
        bytes: Vec::new(),
    };
    let switched = side.answers.last().is_some_and(|r| r.status == 101);
    if side.end != "answered" {
        side.after_end = "not tried".to_owned();
    } else if let (true, Some(bytes)) = (switched, case.tunnel) {
        // Through the tunnel and back: the instance echoes.
        let mut got = std::mem::take(&mut buf);
        let _ = stream.write_all(bytes).await;
        let mut chunk = [0u8; 4096];
        while got.len() < bytes.len() {
            match tokio::time::timeout(CLIENT_WAIT, stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        side.tunnel = Some(got);
        side.after_end = "tunnel".to_owned();
    } else {
        // Two more requests, one after the other: with two instances taken
        // in turn, one of them goes to the instance (and maybe the pooled
        // connection) the case's request used.
        let mut interim = Vec::new();
        for last in [false, true] {
            let _ = stream.write_all(&alive_request(last)).await;
            let (after, end) =
                read_answers(&mut stream, &mut buf, &mut all, false, 1, &mut interim).await;
            let closing = after.iter().any(|r| {
                r.values("connection")
                    .iter()
                    .any(|v| v.eq_ignore_ascii_case(b"close"))
            });
            side.after.extend(after);
            side.after_end = end;
            if side.after_end != "answered" || closing {
                break;
            }
        }
        if side.after_end == "answered" {
            // Answered the last one: now the proxy closes (it said so).
            let (after, end) =
                read_answers(&mut stream, &mut buf, &mut all, false, 1, &mut interim).await;
            side.after.extend(after);
            side.after_end = end;
        }
        side.after.extend(interim);
    }
    side.bytes = all;
    side
}

/// The proxy's config for a run of `case` against `backend`.
fn config(case: &Case, fast: bool, backend: &[SocketAddr], down: Option<SocketAddr>) -> String {
    let instances: Vec<String> = backend.iter().map(|a| format!("\"{a}\"")).collect();
    let mut c = format!(
        "[proxy]\nfast_path = {fast}\nmax_attempts = 2\n{}\n\
         [timeouts]\nclient_header = \"2s\"\nclient_body = \"400ms\"\nclient_send = \"2s\"\n\
         connect = \"500ms\"\nresponse_header = \"{}\"\nshutdown_drain = \"300ms\"\n\
         [services.c]\ninstances = [{}]\n",
        case.proxy_conf,
        case.response_header,
        instances.join(", ")
    );
    if let Some(down) = down {
        c.push_str(&format!("[services.down]\ninstances = [\"{down}\"]\n"));
    }
    c
}

async fn run(case: Arc<Case>, fast: bool) -> Run {
    let script = case.script.clone();
    let backend = RecordingBackend::start_many(case.instances, move |r| {
        if r.target == "/__alive" {
            vec![Act::Write(ALIVE.to_vec())]
        } else {
            script(r)
        }
    })
    .await;
    let (_hold, down) = refused_addr();
    let down = case.down_service.then_some(down);
    let mut proxy = Proxy::start(&config(&case, fast, &backend.addrs, down)).await;
    let side = within(30, case.name, client(proxy.addr, &case, &backend)).await;
    within(10, "proxy shutdown", proxy.shutdown()).await;
    // The proxy's upstream connections close with it; wait (bounded) so
    // that what was in flight to the instance has arrived. Connections
    // still open after that are reported with what they hold.
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while !backend.all_closed() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let rec = backend.recording();
    let mut addrs: Vec<(String, &str)> = backend
        .addrs
        .iter()
        .map(|a| (a.to_string(), "<instance>"))
        .collect();
    if let Some(d) = down {
        addrs.push((d.to_string(), "<down>"));
    }
    let instance = rec
        .received
        .iter()
        .map(|(conn, r)| match r {
            Received::Request(r) => request_text(r),
            Received::Refused { why, bytes } => {
                format!("refused ({why}): {}", partial_text(bytes))
            }
            Received::Incomplete(bytes) => format!(
                "incomplete ({}): {}",
                if rec.conns[*conn].open {
                    "connection still open"
                } else {
                    "connection closed"
                },
                partial_text(bytes)
            ),
        })
        .collect();
    let tunnel = rec
        .conns
        .iter()
        .find(|c| !c.tunnel.is_empty())
        .map(|c| esc(&c.tunnel));
    let fast_codec = rec.conns.first().and_then(|c| codec_of(&c.bytes));
    let outcome = Outcome {
        interim: side
            .interim
            .iter()
            .map(|r| response_msg(r, &addrs))
            .collect(),
        answers: side
            .answers
            .iter()
            .map(|r| response_msg(r, &addrs))
            .collect(),
        end: side.end,
        after: side.after.iter().map(|r| response_msg(r, &addrs)).collect(),
        after_end: side.after_end,
        tunnel: side.tunnel.map(|t| esc(&t)).map(|t| match &tunnel {
            Some(at_instance) => format!("client got {t}, instance got {at_instance}"),
            None => format!("client got {t}, instance got nothing"),
        }),
        instance,
    };
    Run {
        outcome,
        fast_codec,
        client_bytes: side.bytes,
        instance_bytes: rec.conns.into_iter().map(|c| c.bytes).collect(),
    }
}

/// Which codec wrote the request head at the start of `bytes`: the fast
/// path copies the client's `Host` and `User-Agent` lines as received
/// (capitalised in every case of the table), hyper writes every name in
/// lower case. `Some(true)`: the fast path.
fn codec_of(bytes: &[u8]) -> Option<bool> {
    // The first head only (a body may hold anything).
    let end = support::raw::find(bytes, b"\r\n\r\n").map_or(bytes.len(), |e| e + 2);
    let head = &bytes[..end];
    let has = |s: &[u8]| support::raw::find(head, s).is_some();
    if has(b"\r\nHost: ") || has(b"\r\nUser-Agent: ") {
        Some(true)
    } else if has(b"\r\nhost: ") || has(b"\r\nuser-agent: ") {
        Some(false)
    } else {
        None
    }
}

/// Runs every case both ways, at most `parallel` runs at once.
async fn run_all(cases: &[Case], parallel: usize) -> Vec<(Run, Run)> {
    let permits = Arc::new(Semaphore::new(parallel));
    let mut set = JoinSet::new();
    for (i, case) in cases.iter().enumerate() {
        let case = Arc::new(case.clone());
        for fast in [true, false] {
            let (case, permits) = (case.clone(), permits.clone());
            set.spawn(async move {
                let _permit = permits.acquire_owned().await.unwrap();
                (i, fast, run(case, fast).await)
            });
        }
    }
    let mut fast_runs: Vec<Option<Run>> = (0..cases.len()).map(|_| None).collect();
    let mut hyper_runs: Vec<Option<Run>> = (0..cases.len()).map(|_| None).collect();
    while let Some(done) = set.join_next().await {
        let (i, fast, r) = done.expect("a run panicked");
        if fast {
            fast_runs[i] = Some(r);
        } else {
            hyper_runs[i] = Some(r);
        }
    }
    fast_runs
        .into_iter()
        .zip(hyper_runs)
        .map(|(f, h)| (f.unwrap(), h.unwrap()))
        .collect()
}

fn report(case: &Case, fast: &Run, hyper: &Run) -> String {
    let raw = |r: &Run| {
        let mut s = format!("    client received: {}\n", cut(&esc(&r.client_bytes), 600));
        for (i, b) in r.instance_bytes.iter().enumerate() {
            s.push_str(&format!(
                "    instance connection {i}: {}\n",
                cut(&esc(b), 600)
            ));
        }
        s
    };
    let sent: Vec<String> = case
        .steps
        .iter()
        .map(|s| match s {
            Step::Send(b) => cut(&esc(b), 600),
            other => format!("{other:?}"),
        })
        .collect();
    format!(
        "  sent: {}\n  fast path:\n{}{}  hyper:\n{}{}",
        sent.join(" "),
        fast.outcome,
        raw(fast),
        hyper.outcome,
        raw(hyper)
    )
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_and_hyper_agree() {
    let cases = table();
    assert!(cases.len() >= 80, "only {} cases", cases.len());
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), cases.len(), "case names must be unique");
    for k in KNOWN_DISAGREEMENTS {
        assert!(
            names.contains(k.case),
            "listed case {:?} is not in the table",
            k.case
        );
    }

    let runs = run_all(&cases, 8).await;

    // `DIFFERENTIAL_SHOW=1 cargo test --test differential -- --nocapture`
    // prints every case's outcomes, agreeing or not.
    if std::env::var_os("DIFFERENTIAL_SHOW").is_some() {
        for (case, (fast, hyper)) in cases.iter().zip(&runs) {
            println!("=== {}\n{}", case.name, report(case, fast, hyper));
        }
    }
    let mut failures = Vec::new();
    let mut codec_known = 0;
    for (case, (fast, hyper)) in cases.iter().zip(&runs) {
        // Each run used the codec it was meant to.
        if let (Some(f), Some(h)) = (fast.fast_codec, hyper.fast_codec) {
            codec_known += 1;
            if h {
                failures.push(format!(
                    "{}: the fast_path = false run was written by the fast path",
                    case.name
                ));
            }
            if f == case.handed_over {
                failures.push(format!(
                    "{}: the fast_path = true run was written by {} (the table says {})",
                    case.name,
                    if f { "the fast path" } else { "hyper" },
                    if case.handed_over {
                        "it is handed to hyper"
                    } else {
                        "the fast path serves it"
                    }
                ));
            }
        }
        let intended = case.intended;
        let known = KNOWN_DISAGREEMENTS.iter().find(|k| k.case == case.name);
        let same = fast.outcome == hyper.outcome;
        match (intended, known) {
            (Some((reason, excuse)), _) => {
                if same {
                    failures.push(format!(
                        "{}: marked as an intended difference ({reason}), but both paths \
                         agree: remove the mark",
                        case.name
                    ));
                    continue;
                }
                let (mut f, mut h) = (fast.outcome.clone(), hyper.outcome.clone());
                excuse(&mut f);
                excuse(&mut h);
                if f != h {
                    failures.push(format!(
                        "{}: the paths differ beyond the intended difference ({reason})\n{}",
                        case.name,
                        report(case, fast, hyper)
                    ));
                }
            }
            (None, Some(k)) if same => failures.push(format!(
                "{}: listed in KNOWN_DISAGREEMENTS ({}), but both paths agree now: remove it",
                case.name, k.what
            )),
            (None, Some(k)) => failures.push(format!(
                "{}: KNOWN DISAGREEMENT: {}\n{}",
                case.name,
                k.what,
                report(case, fast, hyper)
            )),
            (None, None) if !same => failures.push(format!(
                "{}: the paths disagree\n{}",
                case.name,
                report(case, fast, hyper)
            )),
            (None, None) => {}
        }
    }
    // Most cases reach the instance; the check above is not vacuous.
    assert!(
        codec_known >= 60,
        "only {codec_known} cases told which codec wrote the request"
    );
    assert!(
        failures.is_empty(),
        "{} cases, {} problem(s) ({} of them in KNOWN_DISAGREEMENTS)\n\n{}",
        cases.len(),
        failures.len(),
        failures
            .iter()
            .filter(|f| f.contains(": KNOWN DISAGREEMENT: "))
            .count(),
        failures.join("\n\n")
    );
}

#[test]
fn reference_parser_is_strict() {
    let good = b"POST /a?b HTTP/1.1\r\nHost: c.svc\r\nTransfer-Encoding: chunked\r\n\r\n\
                 3;x=\"y z\"\r\nabc\r\n0\r\nx-sum: 1\r\n\r\nGET";
    let (r, n) = strict_request(good).unwrap().unwrap();
    assert_eq!(
        (r.method.as_str(), r.target.as_str(), r.minor),
        ("POST", "/a?b", 1)
    );
    assert_eq!(r.body, b"abc");
    assert_eq!(r.trailers, [("x-sum".to_owned(), b"1".to_vec())]);
    assert_eq!(&good[n..], b"GET");
    assert_eq!(
        strict_request(b"GET / HTTP/1.1\r\nHost: c\r\n").unwrap(),
        None,
        "incomplete"
    );
    for bad in [
        &b"GET / HTTP/1.1\nHost: c\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: c\rX: y\r\n\r\n",
        b"\r\nGET / HTTP/1.1\r\nHost: c\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nX : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\x01\r\n\r\n",
        b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: c\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\nY: b\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n",
    ] {
        assert!(strict_request(bad).is_err(), "accepted {:?}", esc(bad));
    }
    // Responses: framing by rule, by length, chunked, by close.
    let (r, _) = strict_response(
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        false,
        false,
    )
    .unwrap()
    .unwrap();
    assert_eq!((r.status, r.body.len()), (204, 0));
    assert_eq!(
        strict_response(b"HTTP/1.1 200 OK\r\n\r\nab", false, false).unwrap(),
        None
    );
    let (r, _) = strict_response(b"HTTP/1.1 200 OK\r\n\r\nab", false, true)
        .unwrap()
        .unwrap();
    assert_eq!(r.body, b"ab");
    assert!(strict_response(b"HTTP/1.1 200 OK\nX: y\r\n\r\n", false, true).is_err());
    assert_eq!(
        decode_chunked(b"5 ; a = b\r\nhello\r\n0\r\n\r\n")
            .unwrap()
            .unwrap()
            .0,
        b"hello"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_tell_apart_what_matters() {
    // The comparison is not blind: two runs that differ in what the
    // instance answered, or in what it received, have different outcomes;
    // two runs of the same case on the same path have the same.
    let base = case("baseline GET", get("/"));
    let other = case("baseline GET", get("/"))
        .acts(vec![w(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nko")]);
    let two = case("baseline GET", cat(&[&get("/"), AFTER])).expect(2);
    let runs = run_all(&[base.clone(), base, other, two], 4).await;
    let fast: Vec<&Outcome> = runs.iter().map(|(f, _)| &f.outcome).collect();
    assert_eq!(fast[0], fast[1], "the same case twice");
    assert_ne!(fast[0], fast[2], "a different answer body");
    assert_ne!(fast[0].instance, fast[3].instance, "an extra request");
    assert_eq!(runs[0].0.fast_codec, Some(true));
    assert_eq!(runs[0].1.fast_codec, Some(false));
}
