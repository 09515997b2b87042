use super::*;

use crate::proxy::policy::test_util::HOP;

/// Plans `raw` (an HTTP/1.x head) and returns the forwarded lines: the
/// received ones kept, then the additions.
fn forward(raw: &str, hop: &Hop<'_>) -> Result<(RequestPlan<'static>, String), u16> {
    let raw: &'static str = Box::leak(raw.to_owned().into_boxed_str());
    let headers: &'static mut [httparse::Header<'static>] =
        Box::leak(vec![httparse::EMPTY_HEADER; 200].into_boxed_slice());
    let mut r = httparse::Request::new(headers);
    r.parse(raw.as_bytes()).unwrap();
    let version = if r.version == Some(0) {
        Version::H10
    } else {
        Version::H11
    };
    let fields: &'static [httparse::Header<'static>] =
        Box::leak(r.headers.to_vec().into_boxed_slice());
    let view = RequestView {
        method: r.method.unwrap(),
        target: r.path.unwrap(),
        version,
        fields,
        protocol: None,
    };
    let plan = plan(&view, hop).map_err(|e| e.status().as_u16())?;
    let mut out = Vec::new();
    for (i, h) in fields.iter().enumerate() {
        if plan.skip & (1 << i) == 0 {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    plan.write_additions(fields, hop, plan.upgrade, &mut out);
    Ok((plan, String::from_utf8(out).unwrap()))
}

fn status(raw: &str) -> u16 {
    forward(raw, &HOP).map_or_else(|s| s, |_| 200)
}

#[test]
fn rewrites_and_adds() {
    let (plan, out) = forward(
        "POST /p?q HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 1.2.3.4\r\nContent-Length: 05\r\nContent-Length: 05\r\nProxy-Authorization: Basic x\r\nAccept: */*\r\n\r\n",
        // Duplicate (and non-canonical) lengths: the proxy writes its own.
        &HOP,
    )
    .unwrap();
    assert_eq!(plan.body, Framing::Length(5));
    assert_eq!(
        out,
        "Host: a.example\r\nAccept: */*\r\ncontent-length: 5\r\nx-forwarded-for: 1.2.3.4, 10.0.0.9\r\n\
         x-forwarded-proto: http\r\nx-forwarded-host: a.example\r\nvia: 1.1 wayfinder\r\n"
    );
}

#[test]
fn connection_cannot_remove_framing_routing_or_managed_fields() {
    let (plan, out) = forward(
        "POST / HTTP/1.1\r\nHost: b\r\nConnection: content-length, host, x-forwarded-proto, via\r\nContent-Length: 3\r\nVia: 1.0 edge\r\n\r\n",
        &HOP,
    )
    .unwrap();
    assert_eq!(plan.body, Framing::Length(3));
    assert!(
        out.starts_with("Host: b\r\nContent-Length: 3\r\nVia: 1.0 edge\r\n"),
        "{out}"
    );
    let (plan, out) = forward(
        "POST / HTTP/1.1\r\nHost: b\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n",
        &HOP,
    )
    .unwrap();
    assert_eq!(plan.body, Framing::Chunked);
    assert!(out.contains("Transfer-Encoding: chunked\r\n"), "{out}");
}

#[test]
fn framing_rules() {
    let post = |fields: &str| status(&format!("POST / HTTP/1.1\r\nHost: b\r\n{fields}\r\n"));
    // Both framings: chunked wins, the length is not forwarded, and the
    // connection closes after the exchange (as hyper does).
    for both in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    ] {
        let (plan, out) =
            forward(&format!("POST / HTTP/1.1\r\nHost: b\r\n{both}\r\n"), &HOP).unwrap();
        assert_eq!((plan.body, plan.close), (Framing::Chunked, true));
        assert!(
            !out.to_ascii_lowercase().contains("content-length"),
            "{out}"
        );
    }
    assert_eq!(post("Content-Length: 5\r\nContent-Length: 6\r\n"), 400);
    // Equal values count once, written canonically.
    let (plan, out) = forward(
        "POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\nContent-Length: 05\r\n\r\n",
        &HOP,
    )
    .unwrap();
    assert_eq!(plan.body, Framing::Length(5));
    assert!(
        out.contains("content-length: 5\r\n") && !out.contains("05"),
        "{out}"
    );
    assert_eq!(post("Transfer-Encoding: xchunked\r\n"), 400);
    assert_eq!(post("Transfer-Encoding: gzip\r\n"), 400);
    assert_eq!(post("Content-Length: 5, 5\r\n"), 400);
    assert_eq!(post("Content-Length: +5\r\n"), 400);
    assert_eq!(post("Content-Length: 99999999999999999999\r\n"), 400);
    assert_eq!(post("Transfer-Encoding: chunked, chunked\r\n"), 400);
    assert_eq!(
        post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
        400
    );
    assert_eq!(post("Transfer-Encoding: chunked, gzip\r\n"), 400);
    assert_eq!(post("Transfer-Encoding: \"chunked\"\r\n"), 400);
    assert_eq!(post("Transfer-Encoding: chunked;q=1\r\n"), 400);
    assert_eq!(post("Transfer-Encoding: gzip, chunked\r\n"), 501);
    assert_eq!(
        post("Transfer-Encoding: identity\r\n"),
        400,
        "chunked is not last"
    );
    assert_eq!(post("Transfer-Encoding: CHUNKED\r\n"), 200);
    assert_eq!(post("Content-Length: 005\r\n"), 200);
    assert_eq!(
        status("POST / HTTP/1.0\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n"),
        400
    );
    assert_eq!(
        status("GET / HTTP/1.1\r\nHost: b\r\nExpect: 200-ok\r\n\r\n"),
        417
    );
    assert_eq!(status("CONNECT b:80 HTTP/1.1\r\nHost: b\r\n\r\n"), 405);
    assert_eq!(
        status("GET / HTTP/1.0\r\n\r\n"),
        400,
        "HTTP/1.0 needs Host too"
    );
    let mut many = String::from("GET / HTTP/1.1\r\nHost: b\r\n");
    for i in 0..150 {
        many.push_str(&format!("x-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(status(&many), 431);
}

#[test]
fn absolute_form_replaces_host() {
    let (plan, out) = forward(
        "GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\nX: y\r\n\r\n",
        &HOP,
    )
    .unwrap();
    assert_eq!(
        (plan.target.authority, plan.target.path_and_query),
        ("a.example", "/x")
    );
    assert_eq!(
        out,
        "X: y\r\nhost: a.example\r\nx-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\n\
         x-forwarded-host: a.example\r\nvia: 1.1 wayfinder\r\n"
    );
}

#[test]
fn forwarding_fields_are_ours_unless_the_peer_is_trusted() {
    let raw = "GET / HTTP/1.1\r\nHost: b\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: admin.internal\r\nForwarded: for=6.6.6.6\r\n\r\n";
    let (_, out) = forward(raw, &HOP).unwrap();
    assert_eq!(
        out,
        "Host: b\r\nx-forwarded-for: 6.6.6.6, 10.0.0.9\r\nx-forwarded-proto: http\r\n\
         x-forwarded-host: b\r\nvia: 1.1 wayfinder\r\n"
    );
    let trusted = Hop {
        trusted: true,
        ..HOP
    };
    let (_, out) = forward(raw, &trusted).unwrap();
    assert_eq!(
        out,
        "Host: b\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: admin.internal\r\nForwarded: for=6.6.6.6\r\n\
         x-forwarded-for: 6.6.6.6, 10.0.0.9\r\nvia: 1.1 wayfinder\r\n"
    );
    let with_fwd = Hop {
        trusted: true,
        forwarded: true,
        client_ip: "::1",
        ..HOP
    };
    let (_, out) = forward(raw, &with_fwd).unwrap();
    assert!(
        out.contains("forwarded: for=6.6.6.6, for=\"[::1]\";host=b;proto=http\r\n"),
        "{out}"
    );
    let untrusted_fwd = Hop {
        forwarded: true,
        ..HOP
    };
    let (_, out) = forward(
        "GET / HTTP/1.1\r\nHost: b:8080\r\nForwarded: for=6.6.6.6\r\n\r\n",
        &untrusted_fwd,
    )
    .unwrap();
    assert!(
        out.contains("forwarded: for=10.0.0.9;host=\"b:8080\";proto=http\r\n"),
        "{out}"
    );
    assert!(!out.contains("6.6.6.6"), "{out}");
}

#[test]
fn upgrades_are_offered_only_when_asked_properly() {
    let up = |raw: &str| forward(raw, &HOP).unwrap().0.upgrade.map(|u| u.to_vec());
    assert_eq!(
        up("GET / HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
        Some(b"websocket".to_vec())
    );
    assert_eq!(
        up("GET / HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\n\r\n"),
        None
    );
    assert_eq!(
        up("GET / HTTP/1.1\r\nHost: b\r\nUpgrade: websocket, h2c\r\nConnection: upgrade\r\n\r\n"),
        None
    );
    let (plan, out) = forward(
        "GET / HTTP/1.1\r\nHost: b\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMA\r\n\r\n",
        &HOP,
    )
    .unwrap();
    assert_eq!(plan.upgrade, Some(&b"h2c"[..]));
    let mut plain = Vec::new();
    let none: &[httparse::Header<'_>] = &[];
    plan.write_additions(none, &HOP, None, &mut plain);
    assert!(
        !out.to_ascii_lowercase().contains("http2-settings"),
        "{out}"
    );
    assert!(!String::from_utf8(plain).unwrap().contains("upgrade"));
}

#[test]
fn client_intent() {
    let (plan, _) = forward(
        "GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n",
        &HOP,
    )
    .unwrap();
    assert!(plan.close);
    let (plan, _) = forward("GET / HTTP/1.0\r\nHost: b\r\n\r\n", &HOP).unwrap();
    assert!(plan.close);
    let (plan, _) = forward(
        "GET / HTTP/1.0\r\nHost: b\r\nConnection: keep-alive\r\n\r\n",
        &HOP,
    )
    .unwrap();
    assert!(!plan.close);
    let (plan, _) = forward(
        "PUT / HTTP/1.1\r\nHost: b\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n",
        &HOP,
    )
    .unwrap();
    assert!(plan.expect_continue);
}

#[test]
fn request_ids_are_kept_or_made_once() {
    let hop = Hop {
        request_id: Some(b"x-request-id"),
        ..HOP
    };
    // Kept: forwarded as received, nothing added.
    let (plan, out) = forward(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc-1\r\ntraceparent: 00-aa-bb-01\r\n\r\n",
        &hop,
    )
    .unwrap();
    assert_eq!(plan.request_id.unwrap().as_bytes(), b"abc-1");
    assert_eq!(out.matches("abc-1").count(), 1, "{out}");
    assert!(out.contains("traceparent: 00-aa-bb-01\r\n"), "{out}");
    // Missing: made and added.
    let (plan, out) = forward("GET / HTTP/1.1\r\nHost: a\r\n\r\n", &hop).unwrap();
    let id = plan.request_id.unwrap();
    assert!(
        out.contains(&format!("x-request-id: {}\r\n", id.as_str())),
        "{out}"
    );
    // Two lines: both dropped, one made.
    let (plan, out) = forward(
        "GET / HTTP/1.1\r\nHost: a\r\nx-request-id: a\r\nX-Request-ID: b\r\n\r\n",
        &hop,
    )
    .unwrap();
    assert_eq!(
        out.to_ascii_lowercase().matches("x-request-id").count(),
        1,
        "{out}"
    );
    assert_eq!(plan.request_id.unwrap().as_bytes().len(), 32);
    // Off: no id, the line passes as any other.
    let (plan, out) = forward(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: a b\r\n\r\n",
        &HOP,
    )
    .unwrap();
    assert!(plan.request_id.is_none());
    assert!(out.contains("X-Request-Id: a b\r\n"));
}

#[test]
fn http2_extended_connect_is_an_upgrade_and_plain_connect_is_refused() {
    let fields: &[httparse::Header<'_>] = &[];
    let view = |method, protocol| RequestView {
        method,
        target: "http://chat.svc/socket",
        version: Version::H2 { has_body: false },
        fields,
        protocol,
    };
    let status = |v: &RequestView<'_, [httparse::Header<'_>]>| {
        plan(v, &HOP).map(|_| ()).map_err(|e| e.status().as_u16())
    };
    let ws = plan(&view("CONNECT", Some(&b"websocket"[..])), &HOP).unwrap();
    assert_eq!(ws.upgrade, Some(&b"websocket"[..]));
    assert_eq!(ws.target.authority, "chat.svc");
    assert_eq!(ws.target.path_and_query, "/socket");
    assert_eq!(status(&view("CONNECT", None)), Err(405));
    assert_eq!(status(&view("CONNECT", Some(&b"web socket"[..]))), Err(400));
    // `:protocol` on another method is not an upgrade (h2 refuses it first).
    let get = plan(&view("GET", Some(&b"websocket"[..])), &HOP).unwrap();
    assert_eq!(get.upgrade, None);
    // HTTP/1.1 cannot ask this way.
    let h1 = RequestView {
        method: "CONNECT",
        target: "chat.svc:443",
        version: Version::H11,
        fields: &[httparse::Header {
            name: "host",
            value: b"chat.svc:443",
        }][..],
        protocol: None,
    };
    assert_eq!(status(&h1), Err(405));
}
