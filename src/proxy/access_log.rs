//! The access log: one line per request, written by a thread of its own so
//! the request path never waits on a disk or a pipe. A finished request
//! hands its [`Entry`] to a bounded channel with `try_send`; when the
//! channel is full the line is dropped and counted
//! (`wayfinder_access_log_dropped_total`), never waited for. The writer,
//! a thread of its own, batches what is queued, flushes when the queue is
//! empty, and reopens its file before the next line after
//! [`AccessLog::reopen`] (SIGUSR1, for logrotate).
//!
//! Formats (`access_log.format`):
//! - `text`: the Common Log Format's fields, then `key=value` pairs:
//!   `127.0.0.1 - - [30/Nov/2026:00:01:02 +0000] "GET /a?b HTTP/1.1" 200 5
//!   request_id=... service=web instance=127.0.0.1:8081 attempts=1
//!   duration=0.000412 upstream=0.000301 bytes_in=78`
//!   (`-` for what a request does not have; durations in seconds);
//! - `json`: one JSON object per line with the same fields (`time` in RFC
//!   3339, UTC).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};

use super::policy::request_id::RequestId;

/// Lines dropped because the writer's queue was full.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Lines written.
pub static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Common Log Format fields, then `key=value` pairs.
    Text,
    /// JSON lines.
    Json,
}

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The process's standard output.
    Stdout,
    /// A file, appended to (created if missing).
    File(PathBuf),
}

/// One finished request.
#[derive(Debug)]
pub(crate) struct Entry {
    pub time: SystemTime,
    pub client: SocketAddr,
    /// Method, a space, the target.
    pub request: String,
    pub method_len: usize,
    pub protocol: &'static str,
    pub status: u16,
    pub service: Option<Arc<str>>,
    pub instance: Option<SocketAddr>,
    pub attempts: u32,
    pub duration: Duration,
    pub upstream: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub request_id: Option<RequestId>,
}

/// What the writer is handed. Lines go by value (boxing them would cost an
/// allocation per request); flushes are rare.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Msg {
    /// A line.
    Line(Entry),
    /// Write what came before, then answer.
    Flush(oneshot::Sender<()>),
}

/// The sending side, held by the proxy.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<Msg>,
    reopen: Arc<AtomicBool>,
}

impl AccessLog {
    /// Starts the writer thread writing to `target` in `format`, with room
    /// for `queue` lines. Fails when the file cannot be opened.
    pub fn start(target: Target, format: Format, queue: usize) -> io::Result<AccessLog> {
        let out = open(&target)?;
        let (tx, rx) = mpsc::channel(queue.max(1));
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = reopen.clone();
        std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || write_lines(rx, out, target, format, flag))?;
        Ok(AccessLog { tx, reopen })
    }

    /// Hands a line to the writer, or drops and counts it when the queue
    /// is full.
    #[inline]
    pub(crate) fn send(&self, entry: Entry) {
        if self.tx.try_send(Msg::Line(entry)).is_err() {
            DROPPED.fetch_add(1, Relaxed);
        }
    }

    /// Reopens the file (after logrotate moved it) before the next line.
    pub fn reopen(&self) {
        self.reopen.store(true, Relaxed);
    }

    /// Returns once every line handed over before has been written (at
    /// shutdown), or after `timeout`.
    pub async fn flush(&self, timeout: Duration) {
        let (ack, done) = oneshot::channel();
        let flushed = async {
            if self.tx.send(Msg::Flush(ack)).await.is_ok() {
                let _ = done.await;
            }
        };
        if tokio::time::timeout(timeout, flushed).await.is_err() {
            tracing::warn!(?timeout, "access log not flushed in time");
        }
    }
}

fn open(target: &Target) -> io::Result<Box<dyn Write + Send>> {
    Ok(match target {
        Target::Stdout => Box::new(io::stdout()),
        Target::File(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
    })
}

/// How long the writer lets lines gather after writing a batch that
/// emptied the queue: one write and no wake-up per line under load (the
/// writer is not waiting, so a request's `try_send` wakes nobody), lines
/// at most this late. At 50,000 requests a second that is 1,000 lines,
/// well within the default queue of 8,192.
const GATHER: Duration = Duration::from_millis(20);

/// The writer, a thread of its own (blocking writes never hold up the
/// runtime): waits for a line, formats it and whatever else is queued into
/// one buffer, writes and flushes it; after a batch that emptied the queue
/// it lets the next lines gather for [`GATHER`]. Ends when every sender
/// is gone.
fn write_lines(
    mut rx: mpsc::Receiver<Msg>,
    mut out: Box<dyn Write + Send>,
    target: Target,
    format: Format,
    reopen: Arc<AtomicBool>,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.blocking_recv() {
        let mut n = 0u64;
        let mut next = Some(first);
        let mut full = false;
        let mut acks = Vec::new();
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(e) => {
                    write_entry(&mut buf, &e, format);
                    n += 1;
                }
                Msg::Flush(ack) => acks.push(ack),
            }
            full = buf.len() >= 60 * 1024 || !acks.is_empty();
            if !full {
                next = rx.try_recv().ok();
            }
        }
        if reopen.swap(false, Relaxed) {
            match open(&target) {
                Ok(o) => out = o,
                Err(e) => {
                    tracing::warn!(error = %e, "access log not reopened; writing to the old file")
                }
            }
        }
        match out.write_all(&buf).and_then(|()| out.flush()) {
            Ok(()) => {
                WRITTEN.fetch_add(n, Relaxed);
            }
            Err(e) => {
                DROPPED.fetch_add(n, Relaxed);
                tracing::warn!(error = %e, "access log write failed");
            }
        }
        buf.clear();
        for ack in acks {
            let _ = ack.send(());
        }
        if !full {
            std::thread::sleep(GATHER);
        }
    }
    let _ = out.flush();
}

/// Appends one line for `e` in `format`.
pub(crate) fn write_entry(buf: &mut Vec<u8>, e: &Entry, format: Format) {
    match format {
        Format::Text => write_text(buf, e),
        Format::Json => write_json(buf, e),
    }
}

fn write_text(buf: &mut Vec<u8>, e: &Entry) {
    let _ = write!(buf, "{} - - [", e.client.ip());
    clf_time(buf, e.time);
    buf.extend_from_slice(b"] \"");
    escaped(buf, e.request.as_bytes());
    let _ = write!(buf, " {}\" {} {}", e.protocol, e.status, e.bytes_out);
    buf.extend_from_slice(b" request_id=");
    match &e.request_id {
        Some(id) => buf.extend_from_slice(id.as_bytes()),
        None => buf.push(b'-'),
    }
    buf.extend_from_slice(b" service=");
    match &e.service {
        Some(s) => escaped(buf, s.as_bytes()),
        None => buf.push(b'-'),
    }
    match e.instance {
        Some(i) => {
            let _ = write!(buf, " instance={i}");
        }
        None => buf.extend_from_slice(b" instance=-"),
    }
    let _ = write!(buf, " attempts={} duration=", e.attempts);
    seconds(buf, e.duration);
    match e.upstream {
        Some(u) => {
            buf.extend_from_slice(b" upstream=");
            seconds(buf, u);
        }
        None => buf.extend_from_slice(b" upstream=-"),
    }
    let _ = writeln!(buf, " bytes_in={}", e.bytes_in);
}

/// Writes `s` with `"`, `\` and anything not visible ASCII escaped.
fn escaped(buf: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        match b {
            b'"' | b'\\' => {
                buf.push(b'\\');
                buf.push(b);
            }
            0x20..=0x7e => buf.push(b),
            _ => {
                let _ = write!(buf, "\\x{b:02x}");
            }
        }
    }
}

/// One JSON object, fields in the documented order, written straight
/// into the buffer (no intermediate map: a `serde_json::Value` per line
/// cost more than the rest of the request).
fn write_json(buf: &mut Vec<u8>, e: &Entry) {
    let (method, target) = e.request.split_at(e.method_len.min(e.request.len()));
    let (y, mo, d, h, mi, sec, ms) = civil(e.time);
    let _ = write!(
        buf,
        "{{\"time\":\"{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{sec:02}.{ms:03}Z\",\"client\":\"{}\",\"method\":",
        e.client.ip()
    );
    json_str(buf, method);
    buf.extend_from_slice(b",\"target\":");
    json_str(buf, target.trim_start());
    let _ = write!(
        buf,
        ",\"protocol\":\"{}\",\"status\":{},\"request_id\":",
        e.protocol, e.status
    );
    match &e.request_id {
        Some(id) => json_str(buf, id.as_str()),
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"service\":");
    match &e.service {
        Some(s) => json_str(buf, s),
        None => buf.extend_from_slice(b"null"),
    }
    match e.instance {
        Some(i) => {
            let _ = write!(buf, ",\"instance\":\"{i}\"");
        }
        None => buf.extend_from_slice(b",\"instance\":null"),
    }
    let _ = write!(buf, ",\"attempts\":{},\"duration\":", e.attempts);
    seconds(buf, e.duration);
    buf.extend_from_slice(b",\"upstream\":");
    match e.upstream {
        Some(u) => seconds(buf, u),
        None => buf.extend_from_slice(b"null"),
    }
    let _ = writeln!(
        buf,
        ",\"bytes_in\":{},\"bytes_out\":{}}}",
        e.bytes_in, e.bytes_out
    );
}

/// `d` in seconds with six decimals (`0.001500`), from integers: float
/// formatting cost more than the rest of a line.
fn seconds(buf: &mut Vec<u8>, d: Duration) {
    let us = d.as_micros();
    let _ = write!(buf, "{}.{:06}", us / 1_000_000, us % 1_000_000);
}

/// `s` as a JSON string: `"` and `\` escaped, control characters as
/// `\u00XX`; other text (UTF-8) as it is.
fn json_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' | b'\\' => {
                buf.push(b'\\');
                buf.push(b);
            }
            0..=0x1f | 0x7f => {
                let _ = write!(buf, "\\u{b:04x}");
            }
            _ => buf.push(b),
        }
    }
    buf.push(b'"');
}

/// Civil date and time (UTC) of `t`: year, month, day, hour, minute,
/// second, milliseconds.
fn civil(t: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400) as u32);
    // Days to civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis(),
    )
}

/// `30/Nov/2026:00:01:02 +0000`.
fn clf_time(buf: &mut Vec<u8>, t: SystemTime) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s, _) = civil(t);
    let _ = write!(
        buf,
        "{d:02}/{}/{y}:{h:02}:{mi:02}:{s:02} +0000",
        MONTHS[(mo - 1) as usize]
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_083_322_345),
            client: "10.0.0.9:5555".parse().unwrap(),
            request: "GET /a?\"b\"".to_owned(),
            method_len: 3,
            protocol: "HTTP/1.1",
            status: 200,
            service: Some(Arc::from("web")),
            instance: Some("127.0.0.1:8081".parse().unwrap()),
            attempts: 2,
            duration: Duration::from_micros(1500),
            upstream: None,
            bytes_in: 78,
            bytes_out: 5,
            request_id: RequestId::accept(b"abc"),
        }
    }

    #[test]
    fn text_line() {
        let mut buf = Vec::new();
        write_entry(&mut buf, &entry(), Format::Text);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "10.0.0.9 - - [01/Dec/2026:00:02:02 +0000] \"GET /a?\\\"b\\\" HTTP/1.1\" 200 5 \
             request_id=abc service=web instance=127.0.0.1:8081 attempts=2 duration=0.001500 \
             upstream=- bytes_in=78\n"
        );
    }

    #[test]
    fn json_line() {
        let mut buf = Vec::new();
        write_entry(&mut buf, &entry(), Format::Json);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["time"], "2026-12-01T00:02:02.345Z");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["target"], "/a?\"b\"");
        assert_eq!(v["request_id"], "abc");
        assert_eq!(v["upstream"], serde_json::Value::Null);
        assert_eq!(v["bytes_out"], 5);
        assert_eq!(v["bytes_in"], 78);
        assert_eq!(v["client"], "10.0.0.9");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["service"], "web");
        assert_eq!(v["instance"], "127.0.0.1:8081");
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["duration"], 0.0015);
        assert_eq!(v.as_object().unwrap().len(), 14);
        assert!(buf.ends_with(b"}\n") && !buf[..buf.len() - 1].contains(&b'\n'));
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        let mut buf = Vec::new();
        json_str(&mut buf, "a\"b\\c\u{1}\u{7f}é");
        assert_eq!(buf, "\"a\\\"b\\\\c\\u0001\\u007fé\"".as_bytes());
        let back: String = serde_json::from_slice(&buf).unwrap();
        assert_eq!(back, "a\"b\\c\u{1}\u{7f}é");
        let mut e = entry();
        e.upstream = Some(Duration::from_micros(250));
        e.request_id = None;
        e.service = None;
        e.instance = None;
        let mut buf = Vec::new();
        write_entry(&mut buf, &e, Format::Json);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["upstream"], 0.00025);
        assert_eq!(v["request_id"], serde_json::Value::Null);
        assert_eq!(v["service"], serde_json::Value::Null);
        assert_eq!(v["instance"], serde_json::Value::Null);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(SystemTime::UNIX_EPOCH), (1970, 1, 1, 0, 0, 0, 0));
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(civil(leap), (2000, 2, 29, 0, 0, 0, 0));
    }
}
