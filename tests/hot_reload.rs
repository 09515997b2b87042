//! Hot reload of the config file by the real `wayfinder run` binary: a
//! changed file is applied at the next poll (routes, services, policies)
//! without cutting a response in flight, SIGHUP reloads a change the poll
//! cannot see, and an invalid file is rejected with its named error while
//! the running config stays.
//!
//! The binary listens on port 0 and the test reads the address from its
//! log; it is killed if the test ends early (`kill_on_drop`), and only its
//! PID is ever signalled.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use nix::sys::signal::Signal;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use support::{
    empty, request, wayfinder, within, Backend, ConfigFile, Gate, H1Client, Proc, Reply,
};

// === helpers: a backend whose response spans the reload ===

/// An HTTP/1.1 instance answering every request with `chunks` chunks: the
/// first at once, the others once `gate` is open, so the response is in
/// flight for as long as the test needs. Stops (with its connections) on
/// drop.
struct HeldStream {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for HeldStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn stream_chunk(i: usize) -> String {
    format!("chunk {i:04} {}\n", "x".repeat(1000))
}

fn stream_expected(chunks: usize) -> String {
    (0..chunks).map(stream_chunk).collect()
}

async fn held_stream_backend(chunks: usize, gate: &Gate) -> HeldStream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let gate = gate.clone();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            };
            while conns.try_join_next().is_some() {}
            let gate = gate.clone();
            conns.spawn(async move {
                let service = service_fn(move |_req| {
                    let gate = gate.clone();
                    async move {
                        let body = futures_util::stream::unfold(0usize, move |i| {
                            let gate = gate.clone();
                            async move {
                                if i >= chunks {
                                    return None;
                                }
                                if i == 1 {
                                    gate.passed().await;
                                }
                                let frame = Frame::data(Bytes::from(stream_chunk(i)));
                                Some((Ok::<_, Infallible>(frame), i + 1))
                            }
                        });
                        Ok::<_, Infallible>(hyper::Response::new(StreamBody::new(body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    HeldStream { addr, task }
}

// === hot reload ===

/// Pads `text` with a comment to exactly `len` bytes.
fn pad_to(text: &str, len: usize) -> String {
    assert!(text.len() + 2 <= len, "{} > {len}", text.len());
    format!("{text}#{}\n", "-".repeat(len - text.len() - 2))
}

/// A GET on a fresh connection to `addr`, bounded.
async fn get_at(addr: SocketAddr, host: &str) -> Reply {
    within(10, "GET", support::get(addr, host, "/"))
        .await
        .unwrap_or_else(|e| panic!("GET {host}: {e}"))
}

/// Waits (bounded) until `host` answers 200 through `addr`.
async fn wait_routed(addr: SocketAddr, host: &str, what: &str) {
    within(30, what, async {
        while get_at(addr, host).await.status != StatusCode::OK {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_applies_valid_files_keeps_streams_and_rejects_invalid_ones() {
    let old = Backend::start("old").await;
    let fresh = Backend::start("fresh").await;
    let chunks = 20;
    let gate = Gate::new();
    let streamer = held_stream_backend(chunks, &gate).await;

    // Every version listens on port 0: `listen` applies at start only, and
    // an unchanged value needs no restart.
    let v1 = format!(
        "listen = [\"127.0.0.1:0\"]\n\
         [admin]\nlisten = \"off\"\n\
         [services.old]\ninstances = [\"{}\"]\n\
         [services.stream]\ninstances = [\"{}\"]\n",
        old.addr, streamer.addr
    );
    // A new route and service; the streaming service's policy changes too.
    let v2_body = format!(
        "listen = [\"127.0.0.1:0\"]\n\
         [admin]\nlisten = \"off\"\n\
         [[routes]]\nhost = \"new.example\"\nservice = \"fresh\"\n\
         [services.old]\ninstances = [\"{}\"]\n\
         [services.stream]\nbalance = \"least_connections\"\ninstances = [\"{}\"]\n\
         [services.fresh]\ninstances = [\"{}\"]\n",
        old.addr, streamer.addr, fresh.addr
    );
    // Another route, for the SIGHUP step.
    let v3 = format!(
        "listen = [\"127.0.0.1:0\"]\n\
         [admin]\nlisten = \"off\"\n\
         [[routes]]\nhost = \"new.example\"\nservice = \"fresh\"\n\
         [[routes]]\nhost = \"hup.example\"\nservice = \"old\"\n\
         [services.old]\ninstances = [\"{}\"]\n\
         [services.stream]\nbalance = \"least_connections\"\ninstances = [\"{}\"]\n\
         [services.fresh]\ninstances = [\"{}\"]\n",
        old.addr, streamer.addr, fresh.addr
    );
    let v2 = pad_to(&v2_body, v3.len());
    // A typo: the same named error `wayfinder check` gives.
    let invalid = format!("{v3}[timeouts]\nconect = \"2s\"\n");

    let file = ConfigFile::new("hot-reload", &v1);
    let mut cmd = wayfinder(&["run", "--config"]);
    cmd.arg(&file.path);
    let mut proc = Proc::spawn(cmd);
    let addr = proc.listening(30).await.proxy();

    assert_eq!(get_at(addr, "old.svc").await.text(), "old");
    assert_eq!(
        get_at(addr, "new.example").await.status,
        StatusCode::NOT_FOUND
    );

    // A streaming response is in flight (its first chunk is here, the rest
    // held back by the instance)...
    let mut client = H1Client::connect(addr).await.unwrap();
    let resp = client
        .send(request("GET", "stream.svc", "/").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = within(10, "first chunk", body.frame())
        .await
        .expect("a first frame")
        .expect("first chunk")
        .into_data()
        .expect("data");
    let stream = tokio::spawn(async move { body.collect().await.map(|b| b.to_bytes()) });

    // ...when the file changes: the new route works after the next poll.
    file.write(&v2);
    wait_routed(addr, "new.example", "new route after a file change").await;
    proc.wait_log(10, "config reloaded").await;
    assert_eq!(get_at(addr, "new.example").await.text(), "fresh");
    assert_eq!(get_at(addr, "old.svc").await.text(), "old");

    // The response spans the reload: the rest comes now, whole.
    assert!(
        !stream.is_finished(),
        "the stream ended before its gate opened"
    );
    gate.open();
    let rest = within(20, "stream completes", stream)
        .await
        .unwrap()
        .expect("stream body across the reload");
    let mut whole = first.to_vec();
    whole.extend_from_slice(&rest);
    assert_eq!(
        whole.len(),
        stream_expected(chunks).len(),
        "stream cut short across the reload"
    );
    assert!(
        whole == stream_expected(chunks).as_bytes(),
        "stream corrupted"
    );

    // SIGHUP reloads a change the poll cannot see: the file is replaced
    // keeping its size and modification time (`replace_unnoticed` checks
    // both), which is all the poll compares.
    file.replace_unnoticed(&v3);
    proc.signal(Signal::SIGHUP);
    wait_routed(addr, "hup.example", "new route after SIGHUP").await;
    assert_eq!(get_at(addr, "hup.example").await.text(), "old");

    // An invalid file is rejected with the named error; the config stays.
    let rejected_before = proc.log().matches("config reload rejected").count();
    file.write(&invalid);
    proc.wait_log(30, "config reload rejected").await;
    let log = proc.log();
    assert!(log.contains("timeouts.conect"), "error not named:\n{log}");
    assert!(log.contains("unknown field"), "{log}");
    for (host, want) in [
        ("old.svc", "old"),
        ("new.example", "fresh"),
        ("hup.example", "old"),
    ] {
        let r = get_at(addr, host).await;
        assert_eq!(r.status, StatusCode::OK, "{host} after an invalid file");
        assert_eq!(r.text(), want);
    }
    // SIGHUP with the invalid file: rejected again, still serving.
    proc.signal(Signal::SIGHUP);
    within(30, "second rejection", async {
        while proc.log().matches("config reload rejected").count() < rejected_before + 2 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(get_at(addr, "new.example").await.text(), "fresh");

    proc.signal(Signal::SIGTERM);
    let status = proc.wait(20, "wayfinder exits after SIGTERM").await;
    assert!(status.success(), "{status}\n{}", proc.log());
}
