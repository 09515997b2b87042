//! The codec's own job: parsing, handing over what it does not serve, and
//! copying lines byte for byte. The rules are tested in `policy`.

use super::*;

use crate::proxy::policy::test_util::HOP;

fn upstream_head(raw: &str, target: &str) -> String {
    let mut slots = header_slots();
    let head = parse_request(raw.as_bytes(), &mut slots, &HOP)
        .unwrap()
        .unwrap();
    assert_eq!(head.len, raw.len());
    let mut out = Vec::new();
    head.write_upstream(target, &HOP, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn copies_kept_lines_and_appends_the_additions() {
    let raw = "GET /api/x?q=1 HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 1.2.3.4\r\nAccept: */*\r\n\r\n";
    assert_eq!(
        upstream_head(raw, "/x?q=1"),
        "GET /x?q=1 HTTP/1.1\r\nHost: shop.example\r\nAccept: */*\r\n\
         x-forwarded-for: 1.2.3.4, 10.0.0.9\r\nx-forwarded-proto: http\r\n\
         x-forwarded-host: shop.example\r\nvia: 1.1 wayfinder\r\n\r\n"
    );
}

#[test]
fn forwarded_lines_always_end_in_crlf() {
    let raw = "GET / HTTP/1.1\nHost: h\nA: b  \r\nB: c\r\nC:d\r\nTE: x\r\nE: f\n\n";
    assert_eq!(
        upstream_head(raw, "/"),
        "GET / HTTP/1.1\r\nHost: h\r\nA: b\r\nB: c\r\nC:d\r\nE: f\r\n\
         x-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\n\
         x-forwarded-host: h\r\nvia: 1.1 wayfinder\r\n\r\n"
    );
}

#[test]
fn sorts_requests_into_served_refused_and_handed_over() {
    let served = |raw: &str| {
        let mut slots = header_slots();
        match parse_request(raw.as_bytes(), &mut slots, &HOP) {
            Ok(Some(_)) => "served".to_owned(),
            Ok(None) => "partial".to_owned(),
            Err(HeadError::Fallback(why)) => format!("fallback: {why}"),
            Err(HeadError::Refuse(e)) => format!("{}", e.status().as_u16()),
        }
    };
    let cases = [
        ("GET / HTTP/1.1\r\nHost: h\r\n", "partial"),
        ("GET / HTTP/1.1\r\nHost: h\r\n\r\n", "served"),
        ("GET http://h/ HTTP/1.1\r\nHost: x\r\n\r\n", "served"),
        (
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "fallback: HTTP/2 prior knowledge",
        ),
        ("GET / HTTP/1.0\r\nHost: h\r\n\r\n", "fallback: HTTP/1.0"),
        (
            "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "served",
        ),
        (
            "PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "fallback: Expect",
        ),
        ("GET / HTTP/1.0\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400"),
        ("GET /\x01 HTTP/1.1\r\nHost: h\r\n\r\n", "400"),
        ("GET / HTTP/1.2\r\nHost: h\r\n\r\n", "400"),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "501",
        ),
        ("CONNECT h:1 HTTP/1.1\r\nHost: h\r\n\r\n", "405"),
    ];
    for (raw, want) in cases {
        assert_eq!(served(raw), want, "{raw:?}");
    }
    let mut many = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
    for i in 0..MAX_FIELDS {
        many.push_str(&format!("x-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(served(&many), "431");
}

fn client_head(raw: &str, head: bool) -> (String, Framing, bool) {
    let mut slots = header_slots();
    let asked = Asked {
        head,
        upgrade: None,
    };
    let h = parse_response(raw.as_bytes(), &mut slots, asked)
        .unwrap()
        .unwrap();
    let mut out = Vec::new();
    h.write_client(&mut out);
    (
        String::from_utf8(out).unwrap(),
        h.plan.body,
        h.plan.reusable,
    )
}

#[test]
fn rewrites_response_heads() {
    let (out, body, reusable) = client_head(
        "HTTP/1.1 200 OK\r\nServer: b\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n",
        false,
    );
    assert_eq!(
        out, "HTTP/1.1 200 OK\r\nServer: b\r\nContent-Length: 5\r\n",
        "a single canonical Content-Length line is kept as received"
    );
    assert_eq!((body, reusable), (Framing::Length(5), true));
    let (out, body, _) = client_head(
        "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\nConnection: close, X-A\r\nX-A: 1\r\n\r\n",
        false,
    );
    assert_eq!(
        out,
        "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n"
    );
    assert_eq!(body, Framing::Chunked);
    let (out, body, reusable) = client_head("HTTP/1.0 200 OK\r\nX: y\r\n\r\n", false);
    assert_eq!(out, "HTTP/1.1 200 OK\r\nX: y\r\n");
    assert_eq!((body, reusable), (Framing::UntilClose, false));
    let (_, body, _) = client_head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
    assert_eq!(body, Framing::Empty);
}

#[test]
fn rejects_malformed_responses() {
    for raw in [
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "HTTP/3 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX: a\nInjected: 1\rContent-Length: 2\r\n\r\n",
    ] {
        let mut slots = header_slots();
        assert!(
            parse_response(raw.as_bytes(), &mut slots, Asked::default()).is_err(),
            "{raw:?}"
        );
    }
}
