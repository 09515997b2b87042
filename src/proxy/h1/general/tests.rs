//! `RawBody` over real loopback sockets: each framing read to its end in
//! pieces, the connection pooled only after a clean end, and failures
//! reported (to gRPC clients as a status).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::registry::{Health, InstanceKey, InstanceState};

/// A body framed by `framing` on a fresh loopback connection whose far
/// end writes `pieces` (one write each, yielding between them, so they
/// may arrive apart: any split reads the same, see the scanner's tests),
/// then closes when `close`.
async fn body_of(
    framing: Framing,
    trailers: &[&str],
    grpc: bool,
    pieces: &'static [&'static [u8]],
    close: bool,
) -> (RawBody, Arc<InstanceState>) {
    let (body, instance) = with_read(b"", framing, trailers, grpc, pieces, close).await;
    (body.unwrap(), instance)
}

/// [`body_of`], with `read` already read with the head.
async fn with_read(
    read: &[u8],
    framing: Framing,
    trailers: &[&str],
    grpc: bool,
    pieces: &'static [&'static [u8]],
    close: bool,
) -> (Result<RawBody, &'static str>, Arc<InstanceState>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        for p in pieces {
            s.write_all(p).await.unwrap();
            tokio::task::yield_now().await;
        }
        if !close {
            std::future::pending::<()>().await;
        }
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    on_stream(stream, read, framing, trailers, grpc)
}

/// The body framed by `framing` on `stream` (to an instance already
/// started), with `read` already read with the head.
fn on_stream(
    stream: TcpStream,
    read: &[u8],
    framing: Framing,
    trailers: &[&str],
    grpc: bool,
) -> (Result<RawBody, &'static str>, Arc<InstanceState>) {
    let addr = stream.peer_addr().unwrap();
    let instance = Arc::new(InstanceState::new(
        InstanceKey {
            service: "a".into(),
            addr,
        },
        Health::NotChecked,
    ));
    // The instance's pool exists, as once the proxy has used it.
    assert!(upstream::pool(&instance, 4).is_some());
    let conn = RawConn {
        stream,
        buf: BytesMut::from(read),
    };
    let (parts, ()) = Response::new(()).into_parts();
    let mut mapped = Mapped {
        parts,
        framing,
        reusable: true,
        trailers: trailers.iter().map(|t| t.as_bytes().to_vec()).collect(),
    };
    let guard = InFlightGuard::new(instance.clone());
    (
        RawBody::new(conn, guard, &mut mapped, grpc, PAUSE),
        instance,
    )
}

/// `timeouts.response_body` for these bodies: short, so that an instance
/// falling silent is noticed within the test.
const PAUSE: Duration = Duration::from_millis(300);

/// The body's data, its trailers, and the error that ended it, if any.
async fn read_all(body: &mut RawBody) -> (Vec<u8>, Option<HeaderMap>, Option<String>) {
    let mut data = Vec::new();
    let mut trailers = None;
    let read = async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) if f.is_data() => data.extend_from_slice(&f.into_data().unwrap()),
                Ok(f) => trailers = Some(f.into_trailers().unwrap()),
                Err(e) => return Some(e.to_string()),
            }
        }
        None
    };
    let error = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the body ends");
    (data, trailers, error)
}

#[tokio::test]
async fn a_length_body_in_pieces_ends_and_pools_its_connection() {
    let (mut body, instance) = body_of(
        Framing::Length(11),
        &[],
        false,
        &[b"hel", b"lo wo", b"rld"],
        false,
    )
    .await;
    assert_eq!(body.size_hint().exact(), Some(11));
    let (data, trailers, error) = read_all(&mut body).await;
    assert_eq!(
        (&data[..], trailers, error),
        (&b"hello world"[..], None, None)
    );
    assert!(body.is_end_stream());
    assert_eq!(instance.in_flight(), 0, "the count ends with the body");
    assert_eq!(upstream::idle_connections(&instance), 1, "pooled");
}

#[tokio::test]
async fn a_chunked_body_is_taken_apart_with_its_declared_trailers() {
    let pieces: &[&[u8]] = &[
        b"5\r\nhel",
        b"lo\r\n6;ext=1\r\n worl",
        b"d\r\n0\r\nx-sum: 7\r\nx-undeclared: 1\r\n\r\n",
    ];
    let (mut body, instance) = body_of(Framing::Chunked, &["x-sum"], false, pieces, false).await;
    let (data, trailers, error) = read_all(&mut body).await;
    assert_eq!(String::from_utf8_lossy(&data), "hello world");
    assert_eq!(error, None);
    let trailers = trailers.expect("trailers");
    assert_eq!(trailers.len(), 1, "only the declared field: {trailers:?}");
    assert_eq!(trailers["x-sum"], "7");
    assert_eq!(instance.in_flight(), 0);
    assert_eq!(upstream::idle_connections(&instance), 1);
}

#[tokio::test]
async fn a_body_until_close_ends_at_close_and_is_not_pooled() {
    let (mut body, instance) =
        body_of(Framing::UntilClose, &[], false, &[b"abc", b"def"], true).await;
    let (data, _, error) = read_all(&mut body).await;
    assert_eq!((&data[..], error), (&b"abcdef"[..], None));
    assert_eq!(instance.in_flight(), 0);
    assert_eq!(upstream::idle_connections(&instance), 0);
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_or_a_grpc_status() {
    let (mut body, instance) = body_of(Framing::Length(10), &[], false, &[b"abc"], true).await;
    let (data, _, error) = read_all(&mut body).await;
    assert_eq!(data, b"abc");
    assert_eq!(error.as_deref(), Some("instance closed mid-body"));
    assert_eq!(upstream::idle_connections(&instance), 0);
    assert_eq!(instance.in_flight(), 0);

    let (mut body, _) = body_of(Framing::Length(10), &[], true, &[b"abc"], true).await;
    let (_, trailers, error) = read_all(&mut body).await;
    assert_eq!(error, None, "a gRPC client gets a status instead");
    assert_eq!(trailers.expect("trailers")["grpc-status"], "14");
}

#[tokio::test]
async fn an_instance_silent_mid_body_is_cut_off_after_the_pause_limit() {
    let (mut body, instance) = body_of(Framing::Length(10), &[], false, &[b"abc"], false).await;
    let (data, _, error) = read_all(&mut body).await;
    assert_eq!(data, b"abc", "what came before the pause is delivered");
    assert_eq!(
        error.as_deref(),
        Some("instance sent nothing for 300ms mid-body (timeouts.response_body)")
    );
    assert_eq!(upstream::idle_connections(&instance), 0, "not pooled");
    assert_eq!(instance.in_flight(), 0);

    let (mut body, _) = body_of(Framing::Chunked, &[], true, &[b"3\r\nabc\r\n"], false).await;
    let (data, trailers, error) = read_all(&mut body).await;
    assert_eq!((&data[..], error), (&b"abc"[..], None));
    let trailers = trailers.expect("a gRPC client gets a status");
    assert_eq!(trailers["grpc-status"], "4", "DEADLINE_EXCEEDED");
    assert!(trailers["grpc-message"]
        .to_str()
        .unwrap()
        .contains("timeouts.response_body"));
}

#[tokio::test]
async fn a_body_that_keeps_coming_outlives_the_pause_limit() {
    // Each piece arrives within the limit; the whole body takes longer.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        for _ in 0..4 {
            s.write_all(b"ab").await.unwrap();
            // Paced by the reader: the next piece once this one was read,
            // after a third of the limit.
            if rx.recv().await.is_none() {
                return;
            }
            tokio::time::sleep(PAUSE / 3).await;
        }
        std::future::pending::<()>().await;
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    let (body, _) = on_stream(stream, b"", Framing::Length(8), &[], false);
    let mut body = body.unwrap();
    let started = tokio::time::Instant::now();
    let mut data = Vec::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("a frame within the bound")
    {
        data.extend_from_slice(&frame.expect("no pause error").into_data().unwrap());
        let _ = tx.try_send(());
    }
    assert_eq!(data, b"abababab");
    assert!(
        started.elapsed() >= PAUSE,
        "the body took longer than one limit"
    );
}

#[tokio::test]
async fn a_malformed_chunked_body_is_an_error() {
    let (mut body, instance) = body_of(
        Framing::Chunked,
        &[],
        false,
        &[b"5\r\nhello\r\nzz\r\n"],
        false,
    )
    .await;
    let (data, _, error) = read_all(&mut body).await;
    assert_eq!(data, b"", "the read that holds the fault is refused whole");
    assert!(error.unwrap().contains("bad chunk size"));
    assert_eq!(upstream::idle_connections(&instance), 0);
}

#[tokio::test]
async fn bytes_after_the_body_keep_the_connection_out_of_the_pool() {
    let (mut body, instance) = body_of(
        Framing::Length(2),
        &[],
        false,
        &[b"okHTTP/1.1 200 OK\r\n"],
        false,
    )
    .await;
    let (data, _, error) = read_all(&mut body).await;
    assert_eq!((&data[..], error), (&b"ok"[..], None));
    assert_eq!(instance.in_flight(), 0);
    assert_eq!(upstream::idle_connections(&instance), 0, "unasked bytes");
}

#[tokio::test]
async fn a_body_dropped_unread_is_not_pooled() {
    let (body, instance) = body_of(Framing::Length(5), &[], false, &[b"he"], false).await;
    drop(body);
    assert_eq!(instance.in_flight(), 0);
    assert_eq!(upstream::idle_connections(&instance), 0);
}

#[tokio::test]
async fn body_bytes_read_with_the_head_are_checked_at_once() {
    // Whole already: the connection is pooled and the count released
    // before the client takes the data.
    let (body, instance) = with_read(b"hello", Framing::Length(5), &[], false, &[], false).await;
    let mut body = body.unwrap();
    assert_eq!(upstream::idle_connections(&instance), 1);
    assert_eq!(instance.in_flight(), 0);
    assert!(!body.is_end_stream());
    let (data, _, error) = read_all(&mut body).await;
    assert_eq!((&data[..], error), (&b"hello"[..], None));
    // Malformed already (a bare LF ending the chunked body, then a second
    // response): refused before the head goes out, as on the fast path.
    let read = b"5\r\nhello\r\n0\r\n\nHTTP/1.1 200 OK\r\nX-Injected: yes\r\n\r\n";
    let (body, instance) = with_read(read, Framing::Chunked, &[], false, &[], false).await;
    assert!(body.is_err());
    assert_eq!(instance.in_flight(), 0);
    assert_eq!(upstream::idle_connections(&instance), 0);
    // Part of a chunked body: its data comes first, the rest from the
    // socket.
    let (body, _) = with_read(
        b"3\r\nabc\r\n",
        Framing::Chunked,
        &[],
        false,
        &[b"2\r\nde\r\n0\r\n\r\n"],
        false,
    )
    .await;
    let (data, _, error) = read_all(&mut body.unwrap()).await;
    assert_eq!((&data[..], error), (&b"abcde"[..], None));
}

#[test]
fn request_heads_are_written_from_the_plan() {
    use crate::proxy::policy::request::{self, RequestView, Version};
    use crate::proxy::policy::test_util::HOP;
    let fields = vec![
        (
            HeaderName::from_static("accept"),
            HeaderValue::from_static("*/*"),
        ),
        (
            HeaderName::from_static("te"),
            HeaderValue::from_static("trailers"),
        ),
        (
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_static("6.6.6.6"),
        ),
    ];
    let view = RequestView {
        method: "GET",
        target: "http://example.com/a?b",
        version: Version::H2 { has_body: false },
        fields: &fields[..],
        protocol: None,
    };
    let plan = request::plan(&view, &HOP).unwrap();
    let mut out = Vec::new();
    request_head("GET", "/a?b", &fields, &plan, &HOP, &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with("GET /a?b HTTP/1.1\r\naccept: */*\r\n"),
        "{text}"
    );
    assert!(text.contains("host: example.com\r\n"), "{text}");
    assert!(
        text.contains("x-forwarded-for: 6.6.6.6, 10.0.0.9\r\n"),
        "{text}"
    );
    assert!(!text.contains("te:"), "hop-by-hop: {text}");
    assert!(text.ends_with("\r\n\r\n"));
}
