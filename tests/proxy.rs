//! End-to-end tests of the proxy: real instances on loopback, wayfinder
//! started in-process, real clients. Assertions use request counts seen by
//! the instances and what clients receive, never timings.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use support::{
    echoed, empty, full, h2_client, pattern_body, pattern_sha256, post_order, raw_exchange,
    refused_addr, request, rss_bytes, service, service_at, service_balanced, wait_until, within,
    Backend, BoxError, H1Client, Mode, Proxy, Reconnecting, Reply,
};

/// Sends `total` GETs for `host` from `workers` concurrent keep-alive
/// clients; `done` counts finished requests as they finish. A worker whose
/// request fails reconnects for the next one.
async fn run_gets(
    addr: SocketAddr,
    host: &'static str,
    workers: usize,
    total: usize,
    done: Arc<AtomicUsize>,
) -> Vec<Result<Reply, String>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (next, done) = (next.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut client = Reconnecting::new(addr);
            while next.fetch_add(1, SeqCst) < total {
                let result = client.get(host, "/").await;
                out.push(result.map_err(|e| e.to_string()));
                done.fetch_add(1, SeqCst);
            }
            out
        }));
    }
    let mut results = Vec::with_capacity(total);
    for t in tasks {
        results.extend(t.await.expect("client task"));
    }
    results
}

/// The failures among `results`, as readable lines.
fn failures(results: &[Result<Reply, String>]) -> Vec<String> {
    results
        .iter()
        .filter_map(|r| match r {
            Ok(reply) if reply.status == StatusCode::OK => None,
            Ok(reply) => Some(format!("{}: {}", reply.status, reply.text())),
            Err(e) => Some(format!("error: {e}")),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_evenly() {
    within(60, "round robin run", async {
        let b = [
            Backend::start("a").await,
            Backend::start("b").await,
            Backend::start("c").await,
        ];
        let proxy = Proxy::start(&service("rr", &[&b[0], &b[1], &b[2]])).await;
        let results = run_gets(proxy.addr, "rr.svc", 4, 300, Arc::default()).await;
        assert_eq!(failures(&results), Vec::<String>::new());
        for backend in &b {
            let hits = backend.hits();
            assert!(
                (95..=105).contains(&hits),
                "{} got {hits} of 300 requests, expected 100 +-5%",
                backend.name()
            );
            let answered = results
                .iter()
                .filter(|r| r.as_ref().unwrap().text() == backend.name())
                .count();
            assert_eq!(answered, hits, "every request reached the client");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_sends_less_to_a_slow_instance() {
    within(60, "least connections run", async {
        let slow = Backend::builder("slow")
            .delay(Duration::from_millis(200))
            .start()
            .await;
        let fast1 = Backend::start("fast1").await;
        let fast2 = Backend::start("fast2").await;
        let proxy = Proxy::start(&service_balanced(
            "lc",
            "least_connections",
            &[&slow, &fast1, &fast2],
        ))
        .await;
        let total = 150;
        let results = run_gets(proxy.addr, "lc.svc", 16, total, Arc::default()).await;
        assert_eq!(failures(&results), Vec::<String>::new());
        let (s, f1, f2) = (slow.hits(), fast1.hits(), fast2.hits());
        assert_eq!(s + f1 + f2, total);
        // Round-robin would give it exactly a third (50).
        assert!(
            s * 4 < total,
            "slow instance got {s} of {total} (fast: {f1}, {f2}); expected clearly under a third"
        );
        assert!(s < f1 && s < f2, "slow {s}, fast {f1}, {f2}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_killed_mid_run_causes_no_client_errors() {
    within(60, "run with a killed instance", async {
        let b = [
            Backend::builder("a")
                .delay(Duration::from_millis(2))
                .start()
                .await,
            Backend::builder("b")
                .delay(Duration::from_millis(2))
                .start()
                .await,
            Backend::builder("c")
                .delay(Duration::from_millis(2))
                .start()
                .await,
        ];
        let b = Arc::new(b);
        let proxy = Proxy::start(&service("pool", &[&b[0], &b[1], &b[2]])).await;
        let done = Arc::new(AtomicUsize::new(0));
        let killer = {
            let (b, done) = (b.clone(), done.clone());
            tokio::spawn(async move {
                wait_until(30, "first 100 requests", || done.load(SeqCst) >= 100).await;
                b[1].stop().await;
                b[1].hits()
            })
        };
        let results = run_gets(proxy.addr, "pool.svc", 8, 300, done).await;
        let hits_at_kill = killer.await.expect("killer task");
        assert_eq!(
            failures(&results),
            Vec::<String>::new(),
            "clients saw errors after an instance was killed"
        );
        assert_eq!(results.len(), 300);
        assert_eq!(
            b[1].hits(),
            hits_at_kill,
            "no request reached the killed instance"
        );
        assert!(
            TcpStream::connect(b[1].addr).await.is_err(),
            "the stopped instance still accepts connections"
        );
        assert!(
            b[1].hits() < b[0].hits() && b[1].hits() < b[2].hits(),
            "hits: a {} b {} c {}",
            b[0].hits(),
            b[1].hits(),
            b[2].hits()
        );
        let survivors_answered = results
            .iter()
            .filter(|r| matches!(r.as_ref().unwrap().text().as_str(), "a" | "c"))
            .count();
        assert!(survivors_answered >= 300 - hits_at_kill);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_with_bounded_memory() {
    const SIZE: u64 = 64 << 20;
    const MAX_GROWTH: u64 = 48 << 20;
    within(240, "64 MiB upload and download", async {
        let expected = tokio::task::spawn_blocking(|| pattern_sha256(SIZE))
            .await
            .unwrap();
        let up = Backend::builder("up").mode(Mode::Sha256).start().await;
        let down = Backend::builder("down")
            .mode(Mode::Stream(SIZE))
            .start()
            .await;
        let proxy = Proxy::start(&format!(
            "{}{}",
            service("up", &[&up]),
            service("down", &[&down])
        ))
        .await;
        let mut client = H1Client::connect(proxy.addr).await.unwrap();
        // Warm up every path once so first-use allocations are not counted.
        let warm = client
            .request(request("POST", "up.svc", "/").body(full("x")).unwrap())
            .await
            .unwrap();
        assert_eq!(warm.status, StatusCode::OK);

        let before = rss_bytes().expect("VmRSS");
        let peak = Arc::new(AtomicUsize::new(before as usize));
        let sampler = {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    if let Some(rss) = rss_bytes() {
                        peak.fetch_max(rss as usize, SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };

        let body = pattern_body(SIZE);
        let reply = client
            .request(request("POST", "up.svc", "/upload").body(body).unwrap())
            .await
            .expect("upload");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(
            reply.text(),
            format!("{expected} {SIZE}"),
            "upload checksum"
        );

        let resp = client
            .send(
                request("GET", "down.svc", "/download")
                    .body(empty())
                    .unwrap(),
            )
            .await
            .expect("download head");
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("download body").into_data() {
                len += data.len() as u64;
                hasher.update(&data);
            }
        }
        assert_eq!(len, SIZE, "download length");
        assert_eq!(
            format!("{:x}", hasher.finalize()),
            expected,
            "download checksum"
        );

        sampler.abort();
        let after = rss_bytes().expect("VmRSS");
        let peak = (peak.load(SeqCst) as u64).max(after);
        let growth = peak.saturating_sub(before);
        assert!(
            growth < MAX_GROWTH,
            "resident memory grew by {} MiB while moving 2 x 64 MiB (before {} MiB, peak {} MiB)",
            growth >> 20,
            before >> 20,
            peak >> 20
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_upgrade() {
    within(30, "websocket echo", async {
        let ws = Backend::builder("ws").mode(Mode::WebSocket).start().await;
        let proxy = Proxy::start(&service("chat", &[&ws])).await;
        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        let (mut socket, resp) = tokio_tungstenite::client_async("ws://chat.svc/socket", stream)
            .await
            .expect("WebSocket handshake through the proxy");
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);

        echo_round_trips(&mut socket).await;
        assert_eq!(ws.hits(), 1);
    })
    .await;
}

/// An HTTP/2 (prior knowledge) connection to `addr`, once the proxy's
/// settings arrived and say it takes extended CONNECT (RFC 8441).
async fn h2_connect_client(
    addr: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, mut conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("HTTP/2 handshake with the proxy");
    use std::future::Future as _;
    // The connection tells what the server's settings said only to whoever
    // polls it, and h2 may apply them after the poll that read them, with
    // nothing left to wake the task: drive it here and, until they are in,
    // look again every millisecond (a bounded poll: 5 s at most).
    let (offered, mut watch) = tokio::sync::watch::channel(false);
    let mut tick = Box::pin(tokio::time::sleep(Duration::ZERO));
    tokio::spawn(std::future::poll_fn(move |cx| {
        let polled = std::pin::Pin::new(&mut conn).poll(cx);
        let on = conn.is_extended_connect_protocol_enabled();
        offered.send_if_modified(|v| std::mem::replace(v, on) != on);
        while !on && tick.as_mut().poll(cx).is_ready() {
            tick.as_mut()
                .reset(tokio::time::Instant::now() + Duration::from_millis(1));
        }
        polled
    }));
    tokio::time::timeout(Duration::from_secs(5), watch.wait_for(|on| *on))
        .await
        .expect("the proxy offers extended CONNECT within 5 s")
        .unwrap();
    sender
}

/// A `[services.NAME]` table for one HTTP/2 (prior knowledge) instance.
fn h2c_service(name: &str, backend: &Backend) -> String {
    format!(
        "[services.{name}]\nprotocol = \"h2c\"\ninstances = [\"{}\"]\n",
        backend.addr
    )
}

/// An RFC 8441 WebSocket request for `uri`.
fn ws_connect(uri: &str, protocol: &'static str) -> http::Request<http_body_util::Empty<Bytes>> {
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(uri)
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static(protocol));
    req
}

/// Opens a WebSocket over HTTP/2 through the proxy at `addr` and checks a
/// few echoed messages.
async fn websocket_over_h2(addr: SocketAddr, uri: &str) {
    use tokio_tungstenite::tungstenite::protocol::Role;
    let mut sender = h2_connect_client(addr).await;
    let resp = sender
        .send_request(ws_connect(uri, "websocket"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{resp:?}");
    assert!(resp.headers().get("sec-websocket-accept").is_none());
    let upgraded = hyper::upgrade::on(resp)
        .await
        .expect("the stream is the tunnel");
    let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Client,
        None,
    )
    .await;
    echo_round_trips(&mut socket).await;
}

/// Text, binary, then text again through an echoing WebSocket, and a
/// clean close.
async fn echo_round_trips<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let binary: Vec<u8> = (0..=255u8).chain([0, 0, 255]).collect();
    for msg in [
        Message::Text("hello".into()),
        Message::Binary(binary),
        Message::Text("again".into()),
    ] {
        socket.send(msg.clone()).await.unwrap();
        assert_eq!(socket.next().await.unwrap().unwrap(), msg);
    }
    socket.close(None).await.unwrap();
}

// RFC 8441: an HTTP/2 client opens a WebSocket with extended CONNECT; an
// HTTP/1.1 instance gets the upgrade it knows, with a key the proxy makes
// (and whose accept it checks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_reaches_an_http1_instance() {
    within(30, "WebSocket over HTTP/2 to HTTP/1.1", async {
        let ws = Backend::builder("ws").mode(Mode::WebSocket).start().await;
        let proxy = Proxy::start(&service("chat", &[&ws])).await;
        websocket_over_h2(proxy.addr, "http://chat.svc/socket").await;
        assert_eq!(ws.hits(), 1);
    })
    .await;
}

// Both sides over HTTP/2: the extended CONNECT passes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_reaches_an_http2_instance() {
    within(30, "WebSocket over HTTP/2 to HTTP/2", async {
        let ws = Backend::builder("ws")
            .mode(Mode::WebSocket)
            .h2c(true)
            .start()
            .await;
        let config = h2c_service("chat", &ws);
        let proxy = Proxy::start(&config).await;
        websocket_over_h2(proxy.addr, "http://chat.svc/socket").await;
        assert_eq!(ws.hits(), 1);
    })
    .await;
}

// An HTTP/1.1 WebSocket client reaches an HTTP/2-only instance: the proxy
// sends extended CONNECT and answers the client's key itself (the client
// library checks it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_websocket_reaches_an_http2_instance() {
    within(30, "WebSocket over HTTP/1.1 to HTTP/2", async {
        let ws = Backend::builder("ws")
            .mode(Mode::WebSocket)
            .h2c(true)
            .start()
            .await;
        let config = h2c_service("chat", &ws);
        let proxy = Proxy::start(&config).await;
        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        let (mut socket, resp) = tokio_tungstenite::client_async("ws://chat.svc/socket", stream)
            .await
            .expect("WebSocket handshake through the proxy");
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        echo_round_trips(&mut socket).await;
        assert_eq!(ws.hits(), 1);
    })
    .await;
}

// What cannot be tunnelled is answered, never sent on as something else:
// an HTTP/2 instance that does not offer extended CONNECT (502 naming it),
// a protocol the route does not allow (501), a plain CONNECT (405).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_connect_refusals_are_answered() {
    within(30, "extended CONNECT refusals", async {
        let plain = Backend::builder("plain")
            .mode(Mode::WebSocket)
            .h2c(false)
            .start()
            .await;
        let ws = Backend::builder("ws").mode(Mode::WebSocket).start().await;
        let config = format!("{}{}", h2c_service("old", &plain), service("chat", &[&ws]));
        let proxy = Proxy::start(&config).await;

        let req = request("GET", "old.svc", "/socket")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(empty())
            .unwrap();
        let reply = support::send(proxy.addr, req).await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
        assert!(
            reply.text().contains("extended CONNECT"),
            "{}",
            reply.text()
        );
        assert_eq!(plain.hits(), 0);

        let mut sender = h2_connect_client(proxy.addr).await;
        let resp = sender
            .send_request(ws_connect("http://chat.svc/socket", "x-not-allowed"))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_IMPLEMENTED);
        let connect = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("chat.svc:443")
            .body(http_body_util::Empty::new())
            .unwrap();
        let resp = sender.send_request(connect).await.unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(ws.hits(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_removed_and_forwarding_headers_added() {
    within(30, "header rewriting", async {
        let echo = Backend::builder("echo").mode(Mode::Echo).start().await;
        let proxy = Proxy::start(&service("echo", &[&echo])).await;
        let mut client = H1Client::connect(proxy.addr).await.unwrap();
        let req = request("GET", "echo.svc", "/headers")
            .header("connection", "keep-alive, X-Secret")
            .header("x-secret", "do-not-forward")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("proxy-connection", "keep-alive")
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-kept", "yes")
            .body(empty())
            .unwrap();
        let reply = client.request(req).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        let doc = reply.json();
        for gone in ["x-secret", "keep-alive", "te", "proxy-connection"] {
            assert_eq!(
                echoed(&doc, gone),
                Vec::<String>::new(),
                "{gone} was forwarded"
            );
        }
        for v in echoed(&doc, "connection") {
            assert!(
                !v.to_ascii_lowercase().contains("x-secret"),
                "client's Connection forwarded: {v}"
            );
        }
        assert_eq!(echoed(&doc, "x-kept"), ["yes"]);
        assert_eq!(echoed(&doc, "host"), ["echo.svc"]);
        assert_eq!(echoed(&doc, "x-forwarded-for"), ["203.0.113.7, 127.0.0.1"]);
        assert_eq!(echoed(&doc, "x-forwarded-host"), ["echo.svc"]);
        assert_eq!(echoed(&doc, "x-forwarded-proto"), ["http"]);
        assert_eq!(echoed(&doc, "via"), ["1.1 wayfinder"]);

        // The instance's own hop-by-hop headers do not reach the client.
        assert!(reply.headers.get("x-hop").is_none(), "{:?}", reply.headers);
        assert!(reply.headers.get("keep-alive").is_none());
        assert_eq!(reply.headers["x-backend"], "echo");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_names_the_protocol_version_received() {
    // RFC 9110 section 7.6.3: a Via entry carries the protocol of the
    // request as the proxy received it, so an HTTP/1.0 client gives
    // "1.0 wayfinder" (HTTP/1.1 and HTTP/2 are checked in other tests).
    within(30, "Via for HTTP/1.0", async {
        let echo = Backend::builder("echo").mode(Mode::Echo).start().await;
        let proxy = Proxy::start(&service("echo", &[&echo])).await;
        let reply = raw_exchange(proxy.addr, b"GET /old HTTP/1.0\r\nHost: echo.svc\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{}", reply.head);
        let doc: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(echoed(&doc, "via"), ["1.0 wayfinder"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_host_is_400() {
    within(30, "400", async {
        let b = Backend::start("a").await;
        let proxy = Proxy::start(&service("a", &[&b])).await;
        let reply = raw_exchange(proxy.addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(reply.status, 400, "{}", reply.head);
        assert_eq!(reply.body, "bad request: missing Host header\n");
        assert_eq!(b.hits(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_and_unknown_service_are_404() {
    within(30, "404", async {
        let b = Backend::start("a").await;
        let proxy = Proxy::start(&service("a", &[&b])).await;
        let reply = proxy.get("nowhere.example", "/x?y=1").await.unwrap();
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(
            reply.text(),
            "no route for host \"nowhere.example\" and path \"/x\"\n"
        );
        let reply = proxy.get("ghost.svc", "/").await.unwrap();
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.text(), "unknown service \"ghost\"\n");
        assert_eq!(reply.headers["content-type"], "text/plain; charset=utf-8");
        assert_eq!(b.hits(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_head_is_431() {
    within(30, "431", async {
        let b = Backend::start("a").await;
        let proxy = Proxy::start(&format!(
            "[limits]\nmax_header_bytes = 1024\n{}",
            service("a", &[&b])
        ))
        .await;
        let mut client = H1Client::connect(proxy.addr).await.unwrap();
        let small = request("GET", "a.svc", "/")
            .header("x-pad", "p".repeat(500))
            .body(empty())
            .unwrap();
        assert_eq!(client.request(small).await.unwrap().status, StatusCode::OK);
        let big = request("GET", "a.svc", "/")
            .header("x-pad", "p".repeat(1500))
            .body(empty())
            .unwrap();
        let reply = client.request(big).await.unwrap();
        assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let text = reply.text();
        assert!(
            text.starts_with("request header section is ")
                && text.ends_with(" bytes, over the limit of 1024\n"),
            "{text:?}"
        );
        assert_eq!(b.hits(), 1, "only the small request was forwarded");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_is_502_then_ejected_instance_is_503() {
    within(30, "502 then 503", async {
        let (_hold, dead) = refused_addr();
        // One connect failure ejects the instance for 1 s (the outlier
        // defaults); panic mode off, so an all-ejected service answers 503
        // instead of trying its instances anyway.
        let proxy = Proxy::start(&format!(
            "[proxy]\nmax_attempts = 1\n{}panic_threshold = 0\n\
             [services.down.outlier]\nconnect_failures = 1\nbase_ejection = \"1s\"\n",
            service_at("down", None, &[dead])
        ))
        .await;
        let reply = proxy.get("down.svc", "/").await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        let text = reply.text();
        let prefix = format!("service \"down\" unreachable: {dead}: connect failed");
        assert!(text.starts_with(&prefix), "{text:?}");
        assert!(text.ends_with('\n'));
        // The refused instance is now ejected for a second: nothing to try.
        let reply = proxy.get("down.svc", "/").await.unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.text(), "no available instance of service \"down\" (1 instance: 0 unhealthy, 1 ejected, 0 draining)\n");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_response_head_is_504_and_not_retried() {
    within(30, "504", async {
        let slow = Backend::builder("slow")
            .delay(Duration::from_secs(3))
            .start()
            .await;
        let other = Backend::start("other").await;
        let proxy = Proxy::start(&format!(
            "[timeouts]\nresponse_header = \"300ms\"\n{}",
            service("slow", &[&slow])
        ))
        .await;
        let reply = proxy.get("slow.svc", "/").await.unwrap();
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            reply.text(),
            format!(
                "service \"slow\" instance {} sent no response within 300ms\n",
                slow.addr
            )
        );
        assert_eq!(slow.hits(), 1);
        assert_eq!(other.hits(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upload_is_not_cut_by_the_response_header_timeout() {
    // timeouts.response_header runs from "request sent" to "response head
    // received" (config/wayfinder.toml). An upload that takes longer than
    // that to stream, to an instance that answers as soon as the body has
    // arrived, must not get a 504.
    within(30, "slow upload", async {
        let up = Backend::builder("up").mode(Mode::Sha256).start().await;
        let proxy = Proxy::start(&format!(
            "[timeouts]\nresponse_header = \"300ms\"\n{}",
            service("up", &[&up])
        ))
        .await;
        // 5 chunks, 200 ms apart: the body takes about 1 s to send.
        let chunks = futures_util::stream::unfold(0, |i| async move {
            if i == 5 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let frame = Frame::data(Bytes::from_static(b"0123456789"));
            Some((Ok::<_, BoxError>(frame), i + 1))
        });
        let body = BodyExt::boxed(StreamBody::new(chunks));
        let mut client = H1Client::connect(proxy.addr).await.unwrap();
        let reply = client
            .request(request("POST", "up.svc", "/slow").body(body).unwrap())
            .await
            .unwrap();
        let expected = format!("{:x} 50", Sha256::digest(b"0123456789".repeat(5)));
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.text(), expected);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_routes_strip_prefix_and_path_convention() {
    within(30, "routing", async {
        let echo = Backend::builder("echo").mode(Mode::Echo).start().await;
        let proxy = Proxy::start(&format!(
            "[conventions]\npath = true\n\
             [[routes]]\npath = \"/api\"\nstrip_prefix = true\nservice = \"echo\"\n\
             [[routes]]\nhost = \"keep.example\"\npath = \"/keep\"\nservice = \"echo\"\n{}",
            service("echo", &[&echo])
        ))
        .await;
        let uri_seen = |reply: Reply| {
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            reply.json()["uri"].as_str().unwrap().to_owned()
        };
        let cases = [
            ("other.example", "/api/users?id=7", "/users?id=7"),
            ("other.example", "/api", "/"),
            ("other.example", "/api/", "/"),
            ("other.example", "/api?x=1", "/?x=1"),
            ("keep.example", "/keep/x", "/keep/x"),
            // Path convention: "/NAME/rest" is forwarded as "/rest".
            ("other.example", "/echo/hello?q=1", "/hello?q=1"),
            ("other.example", "/echo", "/"),
        ];
        for (host, path, want) in cases {
            let got = uri_seen(proxy.get(host, path).await.unwrap());
            assert_eq!(got, want, "{host}{path}");
        }
        // "/api" matches whole segments only; "/apis" falls to the path
        // convention, which names a service that does not exist.
        let reply = proxy.get("other.example", "/apis").await.unwrap();
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.text(), "unknown service \"apis\"\n");
        assert_eq!(echo.hits(), cases.len());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_with_body_is_never_replayed() {
    within(30, "POST not replayed", async {
        let sinks = [
            Backend::close_after_request("s1").await,
            Backend::close_after_request("s2").await,
        ];
        let gets = [
            Backend::close_after_request("g1").await,
            Backend::close_after_request("g2").await,
        ];
        let proxy = Proxy::start(&format!(
            "[proxy]\nmax_attempts = 3\n{}{}",
            service("sink", &[&sinks[0], &sinks[1]]),
            service("getsink", &[&gets[0], &gets[1]])
        ))
        .await;
        let reply = post_order(proxy.addr, "sink.svc").await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert!(
            reply.text().starts_with("service \"sink\" unreachable: "),
            "{}",
            reply.text()
        );
        assert_eq!(
            sinks[0].hits() + sinks[1].hits(),
            1,
            "the POST reached an instance more than once"
        );

        // Contrast: a bodyless GET is safe to retry on the other instance.
        let reply = proxy.get("getsink.svc", "/").await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert_eq!(gets[0].hits() + gets[1].hits(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_request() {
    within(30, "graceful shutdown", async {
        let slow = Backend::builder("slow")
            .delay(Duration::from_millis(500))
            .start()
            .await;
        let mut proxy = Proxy::start(&format!(
            "[timeouts]\nshutdown_drain = \"10s\"\n{}",
            service("slow", &[&slow])
        ))
        .await;
        let addr = proxy.addr;
        let mut client = H1Client::connect(addr).await.unwrap();
        let in_flight = tokio::spawn(async move { client.get("slow.svc", "/").await });
        wait_until(10, "request reaches the instance", || slow.hits() == 1).await;

        let shutdown = tokio::spawn(async move { proxy.shutdown().await });
        // New connections are refused while the old request drains.
        within(10, "listener closes", async {
            while TcpStream::connect(addr).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        shutdown.await.unwrap();
        // Shutdown returned only after the drained request was answered
        // (a cause-and-effect check: the instance answers 500 ms after it
        // received the request).
        assert_eq!(slow.answered(), 1, "shutdown returned before draining");
        let reply = in_flight.await.unwrap().expect("in-flight request");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "slow");
        let err = TcpStream::connect(addr)
            .await
            .expect_err("connection accepted after shutdown");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_client_reaches_http1_instance_with_host() {
    within(30, "HTTP/2 to HTTP/1.1", async {
        let echo = Backend::builder("echo").mode(Mode::Echo).start().await;
        let proxy = Proxy::start(&service("echo", &[&echo])).await;
        let (mut sender, conn) = h2_client(proxy.addr).await;
        for i in 0..3 {
            let req = http::Request::get(format!("http://echo.svc/h2?i={i}"))
                .body(empty())
                .unwrap();
            let resp = sender.send_request(req).await.expect("h2 request");
            assert_eq!(resp.version(), Version::HTTP_2);
            let reply = Reply::read(resp).await.unwrap();
            assert_eq!(reply.status, StatusCode::OK);
            let doc = reply.json();
            assert_eq!(doc["version"], "HTTP/1.1");
            assert_eq!(doc["uri"], format!("/h2?i={i}"));
            assert_eq!(echoed(&doc, "host"), ["echo.svc"]);
            assert_eq!(echoed(&doc, "x-forwarded-host"), ["echo.svc"]);
            assert_eq!(echoed(&doc, "via"), ["2 wayfinder"]);
        }
        assert_eq!(echo.hits(), 3);
        drop(sender);
        conn.abort();
    })
    .await;
}

// An HTTP/2 client and an HTTP/1.1 instance answering chunked with
// trailers: the data arrives taken apart, only the trailer field the
// answer declared passes, and the instance's connection is pooled after
// the clean end and used again.
/// `timeouts.response_body`: an instance that falls silent mid-body is cut
/// off after the pause limit on every path (the HTTP/1.1 fast path, the
/// raw exchange an HTTP/2 client's GET takes, hyper's client for a request
/// with a body): the client sees the body cut short (never a clean end: a
/// close-delimited body ends in a reset), the connection is not used
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_silent_mid_body_is_cut_off_on_every_path() {
    use support::raw::{After, RawBackend};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(30, "silent instance mid-body", async {
        let raw = RawBackend::start(None, |head| {
            let answer: &[u8] = if head.starts_with("GET /until-close ") {
                b"HTTP/1.1 200 OK\r\n\r\nabc"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
            };
            (answer.to_vec(), After::KeepAlive)
        })
        .await;
        let config = format!(
            "{}[services.raw.timeouts]\nresponse_body = \"300ms\"\n",
            service_at("raw", None, &[raw.addr])
        );
        let proxy = Proxy::start(&config).await;

        // HTTP/1.1 fast path: the head and the first bytes, then a close.
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: raw.svc\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        stream
            .read_to_end(&mut got)
            .await
            .expect("a clean close: the length shows the cut");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\nabc"),
            "cut short after the data: {text}"
        );
        // A body delimited by the close: a clean close would pass the cut
        // for its end, so the client's connection is reset instead.
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(b"GET /until-close HTTP/1.1\r\nHost: raw.svc\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let read = stream.read_to_end(&mut got).await;
        assert_eq!(
            read.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset),
            "{:?}",
            String::from_utf8_lossy(&got)
        );

        // HTTP/2 client: a GET (raw exchange) and a POST (hyper's client).
        let (mut sender, conn) = h2_client(proxy.addr).await;
        for req in [
            http::Request::get("http://raw.svc/").body(empty()).unwrap(),
            http::Request::post("http://raw.svc/")
                .body(full("x"))
                .unwrap(),
        ] {
            let method = req.method().clone();
            let resp = sender.send_request(req).await.expect("h2 request");
            assert_eq!(resp.status(), StatusCode::OK, "{method}");
            let body = resp.into_body().collect().await;
            assert!(body.is_err(), "{method}: the stream is reset, not ended");
        }
        assert_eq!(raw.requests(), 4);
        assert_eq!(raw.accepted(), 4, "no cut-off connection was used again");
        drop(sender);
        conn.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_client_gets_chunked_data_and_declared_trailers_from_http1() {
    use support::raw::{After, RawBackend};
    within(30, "HTTP/2 client, chunked HTTP/1.1 answer", async {
        let raw = RawBackend::start(None, |head| {
            let answer: &[u8] = if head.starts_with("GET /chunks ") {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
                  5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-checksum: 42\r\nx-undeclared: 1\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain"
            };
            (answer.to_vec(), After::KeepAlive)
        })
        .await;
        let proxy = Proxy::start(&service_at("raw", None, &[raw.addr])).await;
        let (mut sender, conn) = h2_client(proxy.addr).await;
        let req = http::Request::get("http://raw.svc/chunks")
            .body(empty())
            .unwrap();
        let resp = sender.send_request(req).await.expect("h2 request");
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers().get("transfer-encoding").is_none());
        let body = resp.into_body().collect().await.expect("whole body");
        let trailers = body.trailers().cloned().expect("trailers");
        assert_eq!(&body.to_bytes()[..], b"hello, world");
        assert_eq!(trailers.len(), 1, "only the declared field: {trailers:?}");
        assert_eq!(trailers["x-checksum"], "42");
        let req = http::Request::get("http://raw.svc/plain")
            .body(empty())
            .unwrap();
        let resp = sender.send_request(req).await.expect("h2 request");
        let body = resp.into_body().collect().await.expect("whole body");
        assert_eq!(&body.to_bytes()[..], b"plain");
        assert_eq!(raw.requests(), 2);
        assert_eq!(raw.accepted(), 1, "the first answer's connection was used again");
        drop(sender);
        conn.abort();
    })
    .await;
}
