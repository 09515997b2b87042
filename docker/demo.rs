//! wayfinder-demo: a tiny HTTP/1.1 server that answers with its own name,
//! for the Docker example and tests. Standard library only, so it builds
//! with plain `rustc` into a static binary for a `FROM scratch` image:
//!
//! ```sh
//! rustc --edition 2021 -C opt-level=2 -C panic=abort \
//!     -C target-feature=+crt-static docker/demo.rs -o wayfinder-demo
//! ```
//!
//! `wayfinder-demo [--port PORT]` serves (default port 8080):
//! - `GET /` (any other path too): `hello from NAME` (NAME: `$DEMO_NAME`,
//!   else the host name, which Docker sets to the container's short id);
//! - `GET /slow?ms=N`: the same after N milliseconds;
//! - `GET /healthz`: `200 ok`, or `503 sick` after `GET /sick` (until
//!   `GET /well`).
//!
//! Every answer closes its connection. SIGTERM or SIGINT: it keeps serving
//! for `$DEMO_LAME_DUCK_MS` (default 1000: time for a registrar to take it
//! out of rotation), then stops accepting, finishes the requests in
//! flight and exits 0.
//!
//! `wayfinder-demo check [--port PORT] [PATH]` is a health-check client for
//! a Docker `HEALTHCHECK` (there is no shell or curl in the image): GET
//! `http://127.0.0.1:PORT/PATH` (default `/healthz`), exit 0 on a 200, 1
//! otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: i32) {
    STOP.store(true, Ordering::SeqCst);
}

extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
}

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut port: u16 = 8080;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--port" {
            port = it
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| usage("--port needs a number"));
        } else {
            rest.push(a.as_str());
        }
    }
    match rest.as_slice() {
        [] | ["serve"] => serve(port),
        ["check"] => check(port, "/healthz"),
        ["check", path] => check(port, path),
        _ => usage("unknown arguments"),
    }
}

fn usage(why: &str) -> ! {
    eprintln!("wayfinder-demo: {why}; usage: wayfinder-demo [serve] [--port PORT] | check [--port PORT] [PATH]");
    std::process::exit(2)
}

fn name() -> String {
    if let Ok(n) = std::env::var("DEMO_NAME") {
        if !n.is_empty() {
            return n;
        }
    }
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "wayfinder-demo".to_owned())
}

fn serve(port: u16) {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        signal(SIGTERM, on_stop);
        signal(SIGINT, on_stop);
    }
    let lame_duck = Duration::from_millis(
        std::env::var("DEMO_LAME_DUCK_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
    );
    let name: Arc<str> = name().into();
    let sick = Arc::new(AtomicBool::new(false));
    let active = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| {
        eprintln!("wayfinder-demo: cannot listen on port {port}: {e}");
        std::process::exit(1)
    });
    listener.set_nonblocking(true).expect("nonblocking");
    eprintln!("wayfinder-demo {name}: listening on port {port}");
    let mut stopping: Option<Instant> = None;
    loop {
        if stopping.is_none() && STOP.load(Ordering::SeqCst) {
            eprintln!("wayfinder-demo {name}: stopping in {lame_duck:?}");
            stopping = Some(Instant::now());
        }
        if stopping.is_some_and(|t| t.elapsed() >= lame_duck) {
            break;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let (name, sick, active) = (name.clone(), sick.clone(), active.clone());
                active.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let _ = handle(stream, &name, &sick);
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => eprintln!("wayfinder-demo {name}: accept: {e}"),
        }
    }
    drop(listener);
    let deadline = Instant::now() + Duration::from_secs(30);
    while active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("wayfinder-demo {name}: stopped");
}

fn handle(stream: TcpStream, name: &str, sick: &AtomicBool) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    // Headers: read to the blank line (bodies are not expected).
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let (status, body) = match path {
        "/healthz" if sick.load(Ordering::SeqCst) => ("503 Service Unavailable", "sick\n".to_owned()),
        "/healthz" => ("200 OK", "ok\n".to_owned()),
        "/sick" => {
            sick.store(true, Ordering::SeqCst);
            ("200 OK", "sick now\n".to_owned())
        }
        "/well" => {
            sick.store(false, Ordering::SeqCst);
            ("200 OK", "well now\n".to_owned())
        }
        "/slow" => {
            let ms = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000u64);
            std::thread::sleep(Duration::from_millis(ms.min(60_000)));
            ("200 OK", format!("hello from {name}\n"))
        }
        _ => ("200 OK", format!("hello from {name}\n")),
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}

fn check(port: u16, path: &str) {
    let ok = (|| -> std::io::Result<bool> {
        let addr = ([127, 0, 0, 1], port).into();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(s, "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(&head[9..12] == b"200")
    })()
    .unwrap_or(false);
    std::process::exit(if ok { 0 } else { 1 })
}
