//! The access log and request ids, against the real `wayfinder run` binary
//! in front of a real hyper instance that echoes what it received: one
//! line per request in JSON and in the text format, on both codecs (the
//! HTTP/1.1 fast path and hyper, here HTTP/1.0); an incoming
//! `X-Request-Id` kept, a missing or unusable one replaced, the id
//! forwarded and returned; `traceparent`/`tracestate` passed through
//! untouched; the file reopened on SIGUSR1 after a rename (logrotate).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use support::backend::Mode;
use support::{send, temp_path, wayfinder, within, Backend, ConfigFile, Proc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(config: &str) -> (Proc, ConfigFile, SocketAddr) {
    let file = ConfigFile::new("access-log", config);
    let proc = Proc::spawn(wayfinder(&["run", "--config", file.path.to_str().unwrap()]));
    let l = proc.listening(20).await;
    (proc, file, l.listen[0])
}

/// The lines of `path` once it has at least `n` (bounded wait: lines are
/// written by a task of their own, just after the response).
async fn lines(path: &Path, n: usize) -> Vec<String> {
    within(10, &format!("{n} access log lines"), async {
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A GET for `web.svc` with extra header lines; the reply.
async fn get_with(proxy: SocketAddr, headers: &[(&str, &str)]) -> support::Reply {
    let mut req = support::client::request("GET", "web.svc", "/a?b=1");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    within(10, "GET", send(proxy, req.body(support::empty()).unwrap()))
        .await
        .unwrap()
}

/// The header `name`'s values the instance received, from its echo.
fn received(reply: &support::Reply, name: &str) -> Vec<String> {
    let v: Value = serde_json::from_slice(&reply.body).expect("echo JSON");
    v["headers"][name]
        .as_array()
        .map(|a| a.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn json_lines_and_request_ids_on_both_codecs() {
    let backend = Backend::builder("a").mode(Mode::Echo).start().await;
    let log = temp_path("access", ".log");
    let config = format!(
        "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [proxy]\nrequest_id = true\n\
         [access_log]\nenabled = true\nformat = \"json\"\npath = \"{}\"\n\
         [services.web]\ninstances = [\"{}\"]\n",
        log.display(),
        backend.addr
    );
    let (proc, _file, proxy) = start(&config).await;

    // 1. An incoming id is kept, forwarded and returned; trace context
    //    passes through untouched.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = get_with(
        proxy,
        &[
            ("x-request-id", "client-id-1"),
            ("traceparent", tp),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-request-id"], "client-id-1");
    assert_eq!(received(&r, "x-request-id"), ["client-id-1"]);
    assert_eq!(received(&r, "traceparent"), [tp]);
    assert_eq!(received(&r, "tracestate"), ["congo=t61rcWkgMzE"]);

    // 2. None: one is made, forwarded and returned.
    let r = get_with(proxy, &[]).await;
    let made = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(made.len(), 32, "{made}");
    assert_eq!(received(&r, "x-request-id"), std::slice::from_ref(&made));

    // 3. An unusable one (a space in it) is replaced, not forwarded.
    let r = get_with(proxy, &[("x-request-id", "two words")]).await;
    let replaced = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(replaced, "two words");
    assert_eq!(
        received(&r, "x-request-id"),
        std::slice::from_ref(&replaced)
    );

    // 4. HTTP/1.0 (the hyper codec), with an id.
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET /old HTTP/1.0\r\nHost: web.svc\r\nX-Request-Id: via-hyper\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    within(10, "HTTP/1.0 answer", s.read_to_string(&mut out))
        .await
        .unwrap();
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    assert!(
        out.to_ascii_lowercase().contains("x-request-id: via-hyper"),
        "{out}"
    );

    // 5. No route: answered by the proxy, logged too.
    let req = support::client::request("GET", "nowhere.example", "/x")
        .body(support::empty())
        .unwrap();
    assert_eq!(send(proxy, req).await.unwrap().status, 404);

    let lines = lines(&log, 5).await;
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // A line is written when its response has been sent, so the client
    // may see the next answer first: lines are found by request id.
    let by_id = |id: &str| {
        parsed
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no line with request id {id}: {parsed:?}"))
    };
    let first = by_id("client-id-1");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["target"], "/a?b=1");
    assert_eq!(first["protocol"], "HTTP/1.1");
    assert_eq!(first["status"], 200);
    assert_eq!(first["service"], "web");
    assert_eq!(first["instance"], backend.addr.to_string());
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["client"], "127.0.0.1");
    assert!(first["duration"].as_f64().unwrap() > 0.0);
    assert!(first["upstream"].as_f64().unwrap() > 0.0);
    assert!(first["bytes_in"].as_u64().unwrap() > 0);
    assert!(first["bytes_out"].as_u64().unwrap() > 0);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    by_id(&made);
    by_id(&replaced);
    let old = by_id("via-hyper");
    assert_eq!(old["protocol"], "HTTP/1.0");
    assert_eq!(old["target"], "/old");
    assert_eq!(old["instance"], backend.addr.to_string());
    assert!(old["bytes_out"].as_u64().unwrap() > 0);
    let unrouted = parsed
        .iter()
        .find(|l| l["status"] == 404)
        .expect("the unrouted request's line");
    assert_eq!(unrouted["service"], Value::Null);
    assert_eq!(unrouted["instance"], Value::Null);

    // logrotate: the file is moved away, SIGUSR1 reopens the configured
    // path, and the next line lands in the new file.
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    proc.signal(Signal::SIGUSR1);
    proc.wait_log(10, "reopening the access log").await;
    within(10, "a line in the reopened file", async {
        loop {
            get_with(proxy, &[("x-request-id", "after-rotate")]).await;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("after-rotate") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(!std::fs::read_to_string(&rotated)
        .unwrap()
        .contains("after-rotate"));
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&rotated);
}

#[tokio::test]
async fn text_lines_by_default() {
    let backend = Backend::start("a").await;
    let log = temp_path("access", ".log");
    let config = format!(
        "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [access_log]\nenabled = true\npath = \"{}\"\n\
         [services.web]\ninstances = [\"{}\"]\n",
        log.display(),
        backend.addr
    );
    let (mut proc, _file, proxy) = start(&config).await;
    let r = get_with(proxy, &[("x-request-id", "not-used")]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers.get("x-request-id").is_none(),
        "request ids are off by default"
    );
    let lines = lines(&log, 1).await;
    let line = &lines[0];
    // Common Log Format first, then key=value pairs.
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        line.contains("] \"GET /a?b=1 HTTP/1.1\" 200 1 request_id=- service=web"),
        "{line}"
    );
    assert!(
        line.contains(&format!(" instance={} attempts=1 duration=", backend.addr)),
        "{line}"
    );
    assert!(line.contains(" upstream=0."), "{line}");

    // The lines of the last requests before a graceful stop are written
    // before the process exits (the writer gathers lines for a moment
    // between writes; shutdown flushes it).
    for _ in 0..20 {
        assert_eq!(get_with(proxy, &[]).await.status, 200);
    }
    proc.signal(Signal::SIGTERM);
    let status = proc.wait(30, "the proxy after SIGTERM").await;
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 21, "{text}");
    let _ = std::fs::remove_file(&log);
}

/// The process log (`--log-format`): JSON lines, journald's priority
/// prefixes, and plain text without colour codes when stderr is not a
/// terminal (here a pipe).
#[tokio::test]
async fn process_log_formats() {
    let config = "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"off\"\n";
    let file = ConfigFile::new("log-format", config);
    let path = file.path.to_str().unwrap();
    for format in ["text", "json", "journald"] {
        let mut proc = Proc::spawn(wayfinder(&[
            "--log-format",
            format,
            "run",
            "--config",
            path,
        ]));
        proc.wait_log(20, "wayfinder listening").await;
        proc.signal(Signal::SIGTERM);
        proc.wait(30, "wayfinder stops").await;
        let log = proc.log();
        assert!(
            !log.contains('\x1b'),
            "{format}: no ANSI codes in a pipe:\n{log}"
        );
        let line = log
            .lines()
            .find(|l| l.contains("wayfinder listening"))
            .unwrap();
        match format {
            "json" => {
                let v: Value = serde_json::from_str(line).expect("a JSON line");
                assert_eq!(v["level"], "INFO");
                assert_eq!(v["fields"]["message"], "wayfinder listening");
                for l in log.lines() {
                    serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
                }
            }
            "journald" => {
                assert!(
                    line.starts_with("<6>wayfinder::app::start: wayfinder listening"),
                    "{line}"
                );
            }
            _ => assert!(line.contains(" INFO "), "{line}"),
        }
    }
}
