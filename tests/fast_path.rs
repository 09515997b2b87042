//! End-to-end tests of the HTTP/1.1 fast path (`src/proxy/h1`): raw client
//! sockets and real instances on loopback, wayfinder started in-process.
//! Where an instance must misbehave or frame its answers in a particular
//! way, a small raw backend ([`RawBackend`]) scripts its bytes exactly.
//! Assertions are on bytes, statuses and headers, never on how long
//! anything took.

mod support;

use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::raw::{
    all_responses, error_response, lossy, read_response, read_to_close, send_last, slow_exchange,
    undated, After, RawBackend,
};
use support::{
    empty, pattern_sha256, raw_exchange, request, service, service_at, wait_until, within, Backend,
    H1Client, Mode, Proxy,
};

/// The answer of a [`Mode::Sha256`] backend for `data`.
fn sha_answer(data: &[u8]) -> String {
    format!("{:x} {}", Sha256::digest(data), data.len())
}

/// The request line's target in a request head.
fn target_of(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_in_one_write_are_answered_in_order() {
    within(30, "pipelined requests", async {
        let echo = Backend::builder("echo").mode(Mode::Echo).start().await;
        let proxy = Proxy::start(&service("echo", &[&echo])).await;
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(
                b"GET /one HTTP/1.1\r\nHost: echo.svc\r\n\r\n\
                  GET /two?x=2 HTTP/1.1\r\nHost: echo.svc\r\n\r\n\
                  GET /three HTTP/1.1\r\nHost: echo.svc\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        let (bytes, closed) = read_to_close(&mut stream, Vec::new()).await;
        closed.expect("the proxy closes cleanly after `Connection: close`");
        let responses = all_responses(&bytes);
        assert_eq!(responses.len(), 3, "{:?}", lossy(&bytes));
        for (resp, uri) in responses.iter().zip(["/one", "/two?x=2", "/three"]) {
            assert_eq!(resp.status, 200, "{}", resp.head);
            let doc = resp.json();
            assert_eq!(doc["uri"], uri, "responses out of order: {doc}");
            assert_eq!(doc["method"], "GET");
            assert_eq!(resp.values("x-backend"), ["echo"]);
        }
        assert!(!responses[0].says_close(), "{}", responses[0].head);
        assert!(!responses[1].says_close(), "{}", responses[1].head);
        assert!(responses[2].says_close(), "{}", responses[2].head);
        assert_eq!(echo.hits(), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_stays_usable_after_an_error_answer() {
    within(30, "keep-alive after 404", async {
        let b = Backend::start("a").await;
        let proxy = Proxy::start(&service("a", &[&b])).await;
        let mut client = H1Client::connect(proxy.addr).await.unwrap();
        let reply = client.get("ghost.svc", "/").await.unwrap();
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.text(), "unknown service \"ghost\"\n");
        assert!(reply.headers.get("connection").is_none(), "{reply:?}");
        let reply = client
            .get("a.svc", "/")
            .await
            .expect("second request on the same connection");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "a");
        assert_eq!(b.hits(), 1);

        // The same on a raw socket, so the connection is provably one.
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(b"GET /x HTTP/1.1\r\nHost: nowhere.example\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let resp = read_response(&mut stream, &mut buf, false).await;
        assert_eq!(resp.status, 404, "{}", resp.head);
        assert_eq!(
            resp.text(),
            "no route for host \"nowhere.example\" and path \"/x\"\n"
        );
        let (bytes, responses) = send_last(
            &mut stream,
            buf,
            b"GET / HTTP/1.1\r\nHost: a.svc\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(responses.len(), 1, "{:?}", lossy(&bytes));
        assert_eq!(responses[0].status, 200);
        assert_eq!(responses[0].text(), "a");
        assert_eq!(b.hits(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_chunked_request_body_reaches_the_instance() {
    within(30, "chunked upload", async {
        let up = Backend::builder("up").mode(Mode::Sha256).start().await;
        let proxy = Proxy::start(&service("up", &[&up])).await;
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(
                b"POST /c HTTP/1.1\r\nHost: up.svc\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5\r\nhello\r\n0\r\n\r\n",
            )
            .await
            .unwrap();
        let mut buf = Vec::new();
        let resp = read_response(&mut stream, &mut buf, false).await;
        assert_eq!(resp.status, 200, "{}", resp.head);
        assert_eq!(resp.text(), sha_answer(b"hello"));
        assert!(buf.is_empty(), "extra bytes: {:?}", lossy(&buf));

        // A chunked body with extensions and a trailer, followed in the same
        // write by a second request: the body ends exactly where it should.
        let (bytes, responses) = send_last(
            &mut stream,
            buf,
            b"POST /c HTTP/1.1\r\nHost: up.svc\r\nTransfer-Encoding: chunked\r\n\r\n\
              3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nx-sum: 1\r\n\r\n\
              POST /d HTTP/1.1\r\nHost: up.svc\r\nContent-Length: 2\r\nConnection: close\r\n\r\nxy",
        )
        .await;
        assert_eq!(responses.len(), 2, "{:?}", lossy(&bytes));
        assert_eq!(responses[0].text(), sha_answer(b"abc0123456789"));
        assert_eq!(responses[1].text(), sha_answer(b"xy"));
        assert_eq!(up.hits(), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_body_arriving_after_its_head_is_waited_for() {
    within(30, "body after head", async {
        let up = Backend::builder("up").mode(Mode::Sha256).start().await;
        let proxy = Proxy::start(&service("up", &[&up])).await;
        let body: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .write_all(b"POST /upload HTTP/1.1\r\nHost: up.svc\r\nContent-Length: 40000\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Half the body, another pause, the rest.
        stream.write_all(&body[..20_000]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream.write_all(&body[20_000..]).await.unwrap();
        let mut buf = Vec::new();
        let resp = read_response(&mut stream, &mut buf, false).await;
        assert_eq!(resp.status, 200, "{}", resp.head);
        assert_eq!(resp.text(), sha_answer(&body));
        assert_eq!(up.hits(), 1);

        // The connection goes on after the body.
        stream
            .write_all(b"POST /again HTTP/1.1\r\nHost: up.svc\r\nContent-Length: 3\r\n\r\nabc")
            .await
            .unwrap();
        let resp = read_response(&mut stream, &mut buf, false).await;
        assert_eq!(resp.text(), sha_answer(b"abc"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_is_relayed_whole() {
    const SIZE: u64 = 8 << 20;
    within(120, "8 MiB download", async {
        let expected = tokio::task::spawn_blocking(|| pattern_sha256(SIZE))
            .await
            .unwrap();
        let down = Backend::builder("down")
            .mode(Mode::Stream(SIZE))
            .start()
            .await;
        let name = Backend::start("small").await;
        let proxy = Proxy::start(&format!(
            "{}{}",
            service("down", &[&down]),
            service("small", &[&name])
        ))
        .await;
        let mut client = H1Client::connect(proxy.addr).await.unwrap();
        let resp = client
            .send(request("GET", "down.svc", "/big").body(empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("body frame").into_data() {
                total += data.len() as u64;
                hasher.update(&data);
            }
        }
        assert_eq!(total, SIZE, "bytes received");
        assert_eq!(format!("{:x}", hasher.finalize()), expected, "checksum");
        // The body ended where its framing said: the connection goes on.
        let reply = client.get("small.svc", "/").await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "small");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_framed_by_close_is_relayed_and_closes_the_client() {
    within(30, "close-delimited response", async {
        let raw = RawBackend::start(None, |_| {
            (
                b"HTTP/1.1 200 OK\r\n\r\nbody-until-close".to_vec(),
                After::Close,
            )
        })
        .await;
        let proxy = Proxy::start(&service_at("raw", None, &[raw.addr])).await;
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: raw.svc\r\n\r\n")
            .await
            .unwrap();
        let (bytes, closed) = read_to_close(&mut stream, Vec::new()).await;
        closed.expect("clean close after the body");
        assert_eq!(
            lossy(&bytes),
            "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nbody-until-close"
        );
        assert_eq!(raw.requests(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_response_with_trailers_passes_through() {
    const CHUNKED: &str = "5\r\nhello\r\n7\r\n, world\r\n0\r\nx-checksum: 42\r\n\r\n";
    within(30, "chunked response", async {
        let raw = RawBackend::start(None, |head| {
            let answer = if target_of(head) == "/chunks" {
                format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\nX-Kind: chunked\r\n\r\n{CHUNKED}"
                )
            } else {
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain".to_owned()
            };
            (answer.into_bytes(), After::KeepAlive)
        })
        .await;
        let proxy = Proxy::start(&service_at("raw", None, &[raw.addr])).await;
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        // Trailers reach a client that takes them (`TE: trailers`), as
        // hyper's server does; a client that does not gets the body alone.
        stream
            .write_all(b"GET /chunks HTTP/1.1\r\nHost: raw.svc\r\n\r\nGET /chunks HTTP/1.1\r\nHost: raw.svc\r\nTE: trailers\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let resp = read_response(&mut stream, &mut buf, false).await;
        assert_eq!(
            lossy(&resp.body),
            "5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n",
            "no TE: trailers, no trailer fields"
        );
        let resp = read_response(&mut stream, &mut buf, false).await;
        assert_eq!(resp.status, 200, "{}", resp.head);
        assert_eq!(resp.values("transfer-encoding"), ["chunked"], "{}", resp.head);
        assert_eq!(resp.values("content-length"), Vec::<&str>::new());
        assert_eq!(resp.values("x-kind"), ["chunked"]);
        assert!(!resp.says_close(), "{}", resp.head);
        assert_eq!(lossy(&resp.body), CHUNKED, "chunked bytes with the trailer");
        assert!(buf.is_empty(), "bytes after the body: {:?}", lossy(&buf));

        let (bytes, responses) = send_last(&mut stream, buf, b"GET /plain HTTP/1.1\r\nHost: raw.svc\r\nConnection: close\r\n\r\n").await;
        assert_eq!(responses.len(), 1, "{:?}", lossy(&bytes));
        assert_eq!(responses[0].status, 200);
        assert_eq!(responses[0].text(), "plain");
        assert_eq!(raw.requests(), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_response_has_no_body_and_the_connection_goes_on() {
    within(30, "HEAD", async {
        let raw = RawBackend::start(None, |head| {
            let answer: &[u8] = if head.starts_with("HEAD ") {
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"
            };
            (answer.to_vec(), After::KeepAlive)
        })
        .await;
        let proxy = Proxy::start(&service_at("raw", None, &[raw.addr])).await;
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(b"HEAD /h HTTP/1.1\r\nHost: raw.svc\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let resp = read_response(&mut stream, &mut buf, true).await;
        assert_eq!(resp.status, 200, "{}", resp.head);
        assert_eq!(resp.values("content-length"), ["5"], "{}", resp.head);
        assert!(!resp.says_close(), "{}", resp.head);

        let (bytes, responses) = send_last(
            &mut stream,
            buf,
            b"GET /g HTTP/1.1\r\nHost: raw.svc\r\nConnection: close\r\n\r\n",
        )
        .await;
        // Nothing after the HEAD answer's head but the GET's response.
        assert_eq!(responses.len(), 1, "{:?}", lossy(&bytes));
        assert_eq!(responses[0].status, 200);
        assert_eq!(responses[0].text(), "hello");
        assert_eq!(raw.requests(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_close() {
    within(30, "400s", async {
        let b = Backend::start("a").await;
        let proxy = Proxy::start(&service("a", &[&b])).await;

        // A good request, then a bad request line, in one write.
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(
                b"GET / HTTP/1.1\r\nHost: a.svc\r\n\r\n\
                  GET /\x01 HTTP/1.1\r\nHost: a.svc\r\n\r\n",
            )
            .await
            .unwrap();
        let mut buf = Vec::new();
        let resp = read_response(&mut stream, &mut buf, false).await;
        assert_eq!(resp.status, 200, "{}", resp.head);
        assert_eq!(resp.text(), "a");
        let (bytes, closed) = read_to_close(&mut stream, buf).await;
        assert_eq!(
            undated(&bytes),
            error_response(
                "400 Bad Request",
                "bad request: malformed request head\n",
                true
            )
        );
        closed.expect("closed after the 400");

        // Two different Content-Length values.
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(
                b"POST / HTTP/1.1\r\nHost: a.svc\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
            )
            .await
            .unwrap();
        let (bytes, closed) = read_to_close(&mut stream, Vec::new()).await;
        assert_eq!(
            undated(&bytes),
            error_response(
                "400 Bad Request",
                "bad request: conflicting Content-Length headers\n",
                true
            )
        );
        closed.expect("closed after the 400");
        assert_eq!(b.hits(), 1, "only the good request was forwarded");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_and_expect_requests_fall_back_and_are_answered() {
    within(30, "fallbacks", async {
        let dflt = Backend::start("dflt").await;
        let up = Backend::builder("up").mode(Mode::Sha256).start().await;
        let proxy = Proxy::start(&format!(
            "[[routes]]\npath = \"/\"\nservice = \"dflt\"\n\
             [[routes]]\npath = \"/upload\"\nservice = \"up\"\n{}{}",
            service("dflt", &[&dflt]),
            service("up", &[&up])
        ))
        .await;

        // HTTP/1.0 is served by the general path; without Host it is
        // refused like HTTP/1.1 (the proxy routes and forwards by Host).
        let reply = raw_exchange(proxy.addr, b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{}", reply.head);
        assert_eq!(reply.body, "dflt");
        assert_eq!(dflt.hits(), 1);
        let reply = raw_exchange(proxy.addr, b"GET /old HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(reply.status, 400, "{}", reply.head);
        assert_eq!(dflt.hits(), 1);

        // A fast-path request, then `Expect: 100-continue` on the same
        // connection: the proxy invites the body, then answers.
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: dflt.svc\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let resp = read_response(&mut stream, &mut buf, false).await;
        assert_eq!((resp.status, resp.text().as_str()), (200, "dflt"));
        stream
            .write_all(
                b"POST /upload HTTP/1.1\r\nHost: up.svc\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            )
            .await
            .unwrap();
        let interim = read_response(&mut stream, &mut buf, false).await;
        assert_eq!(interim.status, 100, "{}", interim.head);
        stream.write_all(b"hello").await.unwrap();
        let resp = read_response(&mut stream, &mut buf, false).await;
        assert_eq!(resp.status, 200, "{}", resp.head);
        assert_eq!(resp.text(), sha_answer(b"hello"));
        assert_eq!(up.hits(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connection_is_not_fatal() {
    within(30, "stale pooled connection", async {
        let raw = RawBackend::start(Some(Duration::from_millis(50)), |_| {
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=60\r\n\r\nok"
                    .to_vec(),
                After::KeepAlive,
            )
        })
        .await;
        let proxy = Proxy::start(&service_at("raw", None, &[raw.addr])).await;
        let mut client = H1Client::connect(proxy.addr).await.unwrap();
        let first = client.get("raw.svc", "/1").await.unwrap();
        assert_eq!((first.status, first.text().as_str()), (StatusCode::OK, "ok"));
        // The instance closes its side of the pooled connection meanwhile
        // (idle for 50 ms).
        wait_until(10, "the instance closes the idle connection", || {
            raw.closed() == 1
        })
        .await;
        let second = client.get("raw.svc", "/2").await.unwrap();
        assert_eq!(
            (second.status, second.text().as_str()),
            (StatusCode::OK, "ok")
        );
        assert_eq!(raw.requests(), 2);
        assert_eq!(raw.accepted(), 2, "the second request needed a new connection");

        // Not idempotent, so never resent: it must not be written to the
        // stale connection in the first place.
        wait_until(10, "the instance closes the second idle connection", || {
            raw.closed() == 2
        })
        .await;
        let post = client
            .request(
                request("POST", "raw.svc", "/3")
                    .header("content-length", "4")
                    .body(support::full("data"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            (post.status, post.text().as_str()),
            (StatusCode::OK, "ok"),
            "POST after the pooled connection went stale"
        );
        assert_eq!(raw.requests(), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answer_to_head_has_no_body() {
    // RFC 9110 section 9.3.2: a response to HEAD has no content. An error
    // answer that carries one anyway puts stray bytes in front of the next
    // response on a kept-alive connection.
    within(30, "HEAD error answer", async {
        let b = Backend::start("a").await;
        let (_hold, dead) = support::refused_addr();
        let proxy = Proxy::start(&format!(
            "[proxy]\nmax_attempts = 1\n{}{}",
            service("a", &[&b]),
            service_at("down", None, &[dead])
        ))
        .await;
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        // Refused before routing (unknown service)...
        stream
            .write_all(b"HEAD / HTTP/1.1\r\nHost: ghost.svc\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let resp = read_response(&mut stream, &mut buf, true).await;
        assert_eq!(resp.status, 404, "{}", resp.head);
        assert_eq!(resp.values("content-length"), ["24"], "{}", resp.head);
        // ...and after the attempts failed (connect refused).
        stream
            .write_all(b"HEAD / HTTP/1.1\r\nHost: down.svc\r\n\r\n")
            .await
            .unwrap();
        let resp = read_response(&mut stream, &mut buf, true).await;
        assert_eq!(resp.status, 502, "{}", resp.head);
        let (bytes, responses) = send_last(
            &mut stream,
            buf,
            b"GET / HTTP/1.1\r\nHost: a.svc\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            bytes.starts_with(b"HTTP/1.1 200 "),
            "bytes after the HEAD answer's head: {:?}",
            lossy(&bytes)
        );
        assert_eq!(responses.len(), 1, "{:?}", lossy(&bytes));
        assert_eq!(responses[0].text(), "a");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_after_a_fast_path_request_are_handed_over_whole() {
    // A request the fast path cannot buffer, behind one it served, in the
    // same write: the general path gets every byte of it.
    within(30, "hand-over mid-connection", async {
        let up = Backend::builder("up").mode(Mode::Sha256).start().await;
        let proxy = Proxy::start(&service("up", &[&up])).await;
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();

        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let mut out =
            b"POST /small HTTP/1.1\r\nHost: up.svc\r\nContent-Length: 3\r\n\r\nabc".to_vec();
        out.extend_from_slice(
            b"POST /big HTTP/1.1\r\nHost: up.svc\r\nContent-Length: 100000\r\n\r\n",
        );
        out.extend_from_slice(&big);
        stream.write_all(&out).await.unwrap();
        let mut buf = Vec::new();
        let resp = read_response(&mut stream, &mut buf, false).await;
        assert_eq!(resp.text(), sha_answer(b"abc"));
        let resp = read_response(&mut stream, &mut buf, false).await;
        assert_eq!(resp.status, 200, "{}", resp.head);
        assert_eq!(resp.text(), sha_answer(&big));

        // The same with a chunked body over 64 KiB, in pieces.
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(
                b"GET / HTTP/1.1\r\nHost: up.svc\r\n\r\n\
                  POST /chunked HTTP/1.1\r\nHost: up.svc\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            .await
            .unwrap();
        let mut buf = Vec::new();
        let resp = read_response(&mut stream, &mut buf, false).await;
        assert_eq!(resp.text(), sha_answer(b""));
        for piece in big.chunks(30_000) {
            let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
            chunk.extend_from_slice(piece);
            chunk.extend_from_slice(b"\r\n");
            stream.write_all(&chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stream.write_all(b"0\r\n\r\n").await.unwrap();
        let resp = read_response(&mut stream, &mut buf, false).await;
        assert_eq!(resp.status, 200, "{}", resp.head);
        assert_eq!(resp.text(), sha_answer(&big));
        assert_eq!(up.hits(), 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_body_sent_slowly_is_not_cut_by_the_client_header_timeout() {
    // `timeouts.client_header` bounds the wait for a request head (and
    // idle keep-alive time). A small body that keeps arriving, its pieces
    // well inside that timeout of each other, must not be cut because the
    // whole body takes longer than it: the general path (hyper) only
    // times the head; the fast path gives each wait for the body the full
    // timeout, like nginx's client_body_timeout.
    within(30, "slow small bodies", async {
        let up = Backend::builder("up").mode(Mode::Sha256).start().await;
        let proxy = Proxy::start(&format!(
            "[timeouts]\nclient_header = \"1s\"\n{}",
            service("up", &[&up])
        ))
        .await;
        let gap = Duration::from_millis(400);
        let want = sha_answer(&b"0123456789".repeat(4));

        // Content-Length: 40, in 4 pieces 400 ms apart (1.6 s in all).
        let resp = slow_exchange(
            proxy.addr,
            b"POST /slow HTTP/1.1\r\nHost: up.svc\r\nContent-Length: 40\r\n\r\n",
            &[&b"0123456789"[..]; 4],
            gap,
        )
        .await
        .unwrap_or_else(|e| panic!("slow 40-byte Content-Length body: {e}"));
        assert_eq!(resp.status, 200, "{}", resp.head);
        assert_eq!(resp.text(), want);

        // Chunked: 4 chunks 400 ms apart, then the last chunk.
        let chunk: &[u8] = b"a\r\n0123456789\r\n";
        let resp = slow_exchange(
            proxy.addr,
            b"POST /slow HTTP/1.1\r\nHost: up.svc\r\nTransfer-Encoding: chunked\r\n\r\n",
            &[chunk, chunk, chunk, chunk, b"0\r\n\r\n"],
            gap,
        )
        .await
        .unwrap_or_else(|e| panic!("slow chunked body: {e}"));
        assert_eq!(resp.status, 200, "{}", resp.head);
        assert_eq!(resp.text(), want);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusually_formatted_heads_are_rewritten_into_valid_ones() {
    // Header lines without a space after the colon, with extra whitespace,
    // ended by bare LF, and hop-by-hop lines among them: what is forwarded
    // each way is well-formed and drops exactly the hop-by-hop lines.
    within(30, "head formatting", async {
        let echo = Backend::builder("echo").mode(Mode::Echo).start().await;
        let raw = RawBackend::start(None, |_| {
            (
                b"HTTP/1.1 200 OK\r\nX-A:1\r\nX-B: \t 2 \t\r\nConnection: x-c, keep-alive\r\nX-C: gone\r\n\
                  Keep-Alive: timeout=5\r\nX-Empty:\r\nX-D: 4\r\nContent-Length: 2\r\n\r\nok"
                    .to_vec(),
                After::KeepAlive,
            )
        })
        .await;
        let proxy = Proxy::start(&format!(
            "{}{}",
            service("echo", &[&echo]),
            service_at("raw", None, &[raw.addr])
        ))
        .await;
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(
                b"GET /h HTTP/1.1\r\nHost: echo.svc\r\nX-A:no-space\r\nX-B:  \t padded \t \r\n\
                  Connection: X-C\r\nX-C: gone\r\nTE: trailers\r\nX-Empty:\r\nX-D: kept\r\n\r\n",
            )
            .await
            .unwrap();
        let mut buf = Vec::new();
        let resp = read_response(&mut stream, &mut buf, false).await;
        assert_eq!(resp.status, 200, "{}", resp.head);
        let doc = resp.json();
        let seen = |name: &str| support::echoed(&doc, name);
        assert_eq!(seen("x-a"), ["no-space"]);
        assert_eq!(seen("x-b"), ["padded"]);
        assert_eq!(seen("x-c"), Vec::<String>::new(), "listed by Connection");
        assert_eq!(seen("te"), Vec::<String>::new());
        assert_eq!(seen("x-empty"), [""]);
        assert_eq!(seen("x-d"), ["kept"]);
        assert_eq!(seen("host"), ["echo.svc"]);

        // Bare LF line endings.
        stream
            .write_all(b"GET /lf HTTP/1.1\nHost: echo.svc\nX-F: f\nConnection: X-G\nX-G: g\n\n")
            .await
            .unwrap();
        let resp = read_response(&mut stream, &mut buf, false).await;
        assert_eq!(resp.status, 200, "{}", resp.head);
        let doc = resp.json();
        assert_eq!(doc["uri"], "/lf");
        assert_eq!(support::echoed(&doc, "x-f"), ["f"]);
        assert_eq!(support::echoed(&doc, "x-g"), Vec::<String>::new());

        // The response way.
        let (bytes, responses) = send_last(&mut stream, buf, b"GET / HTTP/1.1\r\nHost: raw.svc\r\nConnection: close\r\n\r\n").await;
        assert_eq!(responses.len(), 1, "{:?}", lossy(&bytes));
        let resp = &responses[0];
        let names: Vec<String> = resp
            .headers
            .iter()
            .map(|(n, _)| n.to_ascii_lowercase())
            .collect();
        assert_eq!(
            names,
            ["x-a", "x-b", "x-empty", "x-d", "content-length", "connection"],
            "{}",
            resp.head
        );
        assert_eq!(resp.values("x-a"), ["1"]);
        assert_eq!(resp.values("x-b"), ["2"]);
        assert_eq!(resp.values("x-empty"), [""]);
        assert_eq!(resp.values("x-d"), ["4"]);
        assert_eq!(resp.values("connection"), ["close"]);
        assert_eq!(resp.text(), "ok");
    })
    .await;
}
