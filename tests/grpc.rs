//! gRPC through the proxy, with a real gRPC client (tonic's channel) and
//! real gRPC instances (tonic's server machinery over hyper HTTP/2): unary,
//! server-streaming and bidirectional calls; calls balanced one by one
//! over few client connections; the proxy's own errors as gRPC statuses
//! (no instance, a deadline, an unknown method's route, an instance that
//! dies mid-stream).

mod support;

use std::collections::HashMap;

use tonic::{Code, Request};

use std::time::Duration;
use support::grpc::{client, codec, count, raw_call, say, GrpcInstance, Msg};

use support::{within, AdminProxy, Proxy};

/// A proxy routing `/echo.Echo/` to service `echo` (h2c) on `instances`.
async fn proxy(instances: &[&GrpcInstance], extra: &str) -> Proxy {
    let list: Vec<String> = instances
        .iter()
        .map(|i| format!("\"{}\"", i.addr))
        .collect();
    Proxy::start(&format!(
        "[services.echo]\nprotocol = \"h2c\"\ninstances = [{}]\n{extra}\n\
         [[routes]]\npath = \"/echo.Echo\"\nservice = \"echo\"\n",
        list.join(", ")
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_spread_evenly_over_instances_from_few_connections() {
    let a = GrpcInstance::start("a").await;
    let b = GrpcInstance::start("b").await;
    let c = GrpcInstance::start("c").await;
    let proxy = proxy(&[&a, &b, &c], "").await;

    let mut seen: HashMap<String, usize> = HashMap::new();
    // Two client connections, 150 calls each, some of them concurrent.
    let mut tasks = Vec::new();
    for conn in 0..2 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let mut client = client(addr).await;
            let mut got = Vec::new();
            for i in 0..150 {
                let msg = say(&mut client, Msg::text(&format!("{conn}-{i}")), None)
                    .await
                    .expect("call");
                assert_eq!(msg.text, format!("{conn}-{i}"));
                got.push(msg.instance);
            }
            got
        }));
    }
    for t in tasks {
        for instance in within(30, "calls finish", t).await.unwrap() {
            *seen.entry(instance).or_default() += 1;
        }
    }
    // Per-call balancing: round-robin gives each of the three a third.
    for name in ["a", "b", "c"] {
        let n = seen.get(name).copied().unwrap_or(0);
        assert!((90..=110).contains(&n), "{name} got {n} of 300: {seen:?}");
    }
    // Few upstream connections: multiplexed, not one per call.
    for i in [&a, &b, &c] {
        assert!(
            i.connections() <= 4,
            "{} connections to {}",
            i.connections(),
            i.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streaming_and_bidirectional_calls_pass_whole() {
    let a = GrpcInstance::start("a").await;
    let proxy = proxy(&[&a], "").await;
    let mut client = client(proxy.addr).await;

    // Server streaming: 1,000 messages, in order.
    let mut stream = count(&mut client, 1000, 0).await;
    let mut received = 0u32;
    while let Some(msg) = within(30, "next message", stream.message())
        .await
        .expect("message")
    {
        assert_eq!(msg.text, received.to_string());
        received += 1;
    }
    assert_eq!(received, 1000);

    // Bidirectional: each message answered before the next is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
    client.ready().await.unwrap();
    let mut replies = client
        .streaming(
            Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            "/echo.Echo/Chat".parse().unwrap(),
            codec(),
        )
        .await
        .expect("chat starts")
        .into_inner();
    for i in 0..100 {
        tx.send(Msg::text(&format!("ping {i}"))).await.unwrap();
        let reply = within(10, "reply", replies.message())
            .await
            .expect("reply")
            .expect("not ended");
        assert_eq!(reply.text, format!("ping {i}"));
        assert_eq!(reply.instance, "a");
    }
    drop(tx);
    assert!(within(10, "end", replies.message())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_errors_are_grpc_statuses() {
    let a = GrpcInstance::start("a").await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = Proxy::start(&format!(
        "[services.echo]\nprotocol = \"h2c\"\ninstances = [\"{}\"]\n\
         [services.gone]\nprotocol = \"h2c\"\ninstances = [\"{dead}\"]\n\
         [[routes]]\npath = \"/echo.Echo\"\nservice = \"echo\"\n\
         [[routes]]\npath = \"/gone.Gone\"\nservice = \"gone\"\n",
        a.addr
    ))
    .await;
    let mut client = client(proxy.addr).await;

    // A `grpc-timeout` shorter than the instance takes: the proxy ends the
    // call with DEADLINE_EXCEEDED (sent by hand: tonic's client would give
    // up by itself at the same moment).
    let slow = Msg {
        delay_ms: 3000,
        ..Msg::text("slow")
    };
    let call = within(
        10,
        "the proxy's deadline answer",
        raw_call(
            proxy.addr,
            "/echo.Echo/Say",
            &slow,
            &[("grpc-timeout", "200m")],
        ),
    )
    .await;
    assert_eq!(call.http, 200);
    assert_eq!(call.grpc_status(), Some(4), "{:?}", call.fields);
    assert!(call.fields.contains_key("grpc-message"));

    // Nothing listens at the instance: UNAVAILABLE, with a message.
    client.ready().await.unwrap();
    let status = client
        .unary::<Msg, Msg, _>(
            Request::new(Msg::text("x")),
            "/gone.Gone/Say".parse().unwrap(),
            codec(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(!status.message().is_empty(), "{status:?}");

    // No route: UNIMPLEMENTED.
    client.ready().await.unwrap();
    let status = client
        .unary::<Msg, Msg, _>(
            Request::new(Msg::text("x")),
            "/nothing.Here/Say".parse().unwrap(),
            codec(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");

    // The client connection still works after all of that.
    let msg = say(&mut client, Msg::text("still here"), None)
        .await
        .unwrap();
    assert_eq!(msg.instance, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_instance_is_unavailable_with_a_message() {
    let proxy = Proxy::start(
        "[services.echo]\nprotocol = \"h2c\"\n\
         [[routes]]\npath = \"/echo.Echo\"\nservice = \"echo\"\n",
    )
    .await;
    let mut client = client(proxy.addr).await;
    let status = say(&mut client, Msg::text("x"), None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("instance"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_stream_ends_the_call_with_a_status() {
    let a = GrpcInstance::start("a").await;
    let proxy = proxy(&[&a], "").await;
    let mut client = client(proxy.addr).await;
    let mut stream = count(&mut client, 1000, 20).await;
    for _ in 0..3 {
        within(10, "first messages", stream.message())
            .await
            .expect("message")
            .expect("not ended");
    }
    a.kill();
    let status = loop {
        match within(10, "the stream ends", stream.message()).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended as if complete"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(!status.message().is_empty(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_share_a_few_upstream_connections() {
    let a = GrpcInstance::start("a").await;
    let proxy = proxy(&[&a], "").await;
    let client = client(proxy.addr).await;
    // 1,000 calls at once over one client connection, each held 100 ms by
    // the instance so that they overlap.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let mut client = client.clone();
        calls.spawn(async move {
            let msg = Msg {
                delay_ms: 100,
                ..Msg::text(&i.to_string())
            };
            say(&mut client, msg, None).await.map(|m| (i, m.text))
        });
    }
    let mut ok = 0;
    while let Some(done) = within(60, "the calls end", calls.join_next()).await {
        let (i, text) = done.unwrap().expect("call succeeds");
        assert_eq!(text, i.to_string());
        ok += 1;
    }
    assert_eq!(ok, 1000);
    // 100 streams a connection by default, at most 4 connections: the
    // rest wait in hyper's queue instead of opening more.
    assert!(
        (1..=4).contains(&a.connections()),
        "{} upstream connections",
        a.connections()
    );
    assert_eq!(a.calls(), 1000);
}

// A service whose config does not write `protocol` speaks what its
// instances' registrations declare (`protocol`, kept as the `protocol` tag); a
// declaration the config contradicts or cannot carry is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_declares_that_its_instance_speaks_h2c() {
    let a = GrpcInstance::start("a").await;
    let proxy = AdminProxy::start(
        "",
        "[services.echo]\n[services.plain]\nprotocol = \"http1\"\n\
         [[routes]]\npath = \"/echo.Echo\"\nservice = \"echo\"\n",
    )
    .await;
    let body = |protocol: &str| format!(r#"{{"address": "{}", "protocol": "{protocol}"}}"#, a.addr);
    for (service, protocol, why) in [
        ("echo", "h3", "is not"),
        ("echo", "h2", "no tls in the config"),
        ("plain", "h2c", "as its config writes"),
    ] {
        let reply = proxy.api.register(service, "a", &body(protocol)).await;
        assert_eq!(reply.status, 400, "{service} {protocol}: {}", reply.text());
        assert!(reply.text().contains(why), "{}", reply.text());
    }
    let reply = proxy.api.register("echo", "a", &body("h2c")).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.json()["tags"]["protocol"], "h2c");
    let mut client = client(proxy.proxy).await;
    let msg = within(10, "the call", say(&mut client, Msg::text("hi"), None)).await;
    assert_eq!(msg.expect("answered over h2c").instance, "a");
}

// A call queued behind the instance's stream limit (one stream, one
// connection, held by a slow call) is not sent for as long as the slow call
// runs: the response-header timeout bounds that wait too (before, the timer
// started only once the request body had been sent, so it waited unbounded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_queued_behind_the_stream_limit_times_out() {
    let a = GrpcInstance::start_limited("a", 1).await;
    let proxy = proxy(
        &[&a],
        "[services.echo.timeouts]\nresponse_header = \"1s\"\n\
         [http2]\nupstream_max_connections = 1\n",
    )
    .await;
    // A server stream whose first message comes at once (so its own
    // response-header timer is satisfied) and its second in 8 s: it holds
    // the instance's only stream.
    let mut slow_client = client(proxy.addr).await;
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let slow = tokio::spawn(async move {
        let mut stream = count(&mut slow_client, 2, 8_000).await;
        let first = stream.message().await;
        let _ = first_tx.send(first.map(|m| m.is_some()));
        let _ = stream.message().await;
    });
    let first = within(10, "the slow stream's first message", first_rx).await;
    assert!(matches!(first, Ok(Ok(true))), "{first:?}");
    let mut client = client(proxy.addr).await;
    let started = std::time::Instant::now();
    let queued = within(
        6,
        "the queued call ends",
        say(&mut client, Msg::text("q"), None),
    )
    .await;
    let status = queued.expect_err(&format!(
        "no stream for it within the timeout ({} connections)",
        a.connections()
    ));
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_eq!(
        a.calls(),
        1,
        "the queued call never reached the instance ({} connections)",
        a.connections()
    );
    slow.abort();
}

// Once flaky (a call in flight at GOAWAY ended in "connection error" or
// never ended): h2 lets a client open streams on a connection after the
// instance's GOAWAY; the instance ignores them and they fail as a broken
// pipe when it closes. The proxy now notices GOAWAY as it reads it
// (proxy/upstream/goaway.rs) and puts no new stream there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_going_away_mid_load_loses_no_call() {
    let a = GrpcInstance::start("a").await;
    let b = GrpcInstance::start("b").await;
    let proxy = proxy(&[&a, &b], "").await;
    let client = client(proxy.addr).await;
    let mut workers = tokio::task::JoinSet::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for w in 0..8 {
        let mut client = client.clone();
        let done_tx = done_tx.clone();
        workers.spawn(async move {
            for i in 0..100 {
                let msg = Msg {
                    delay_ms: 5,
                    ..Msg::text(&format!("{w}-{i}"))
                };
                let reply = say(&mut client, msg, None).await;
                let _ = done_tx.send(());
                let text = reply.map(|m| m.text);
                assert!(
                    matches!(&text, Ok(t) if *t == format!("{w}-{i}")),
                    "call {w}-{i}: {text:?}"
                );
            }
        });
    }
    drop(done_tx);
    // A quarter of the way in, `a` sends GOAWAY on every connection (and
    // on any new one): its open calls finish, new ones go elsewhere.
    for _ in 0..200 {
        within(30, "calls progress", done_rx.recv()).await;
    }
    a.goaway();
    while let Some(w) = within(60, "the workers end", workers.join_next()).await {
        w.expect("every call answered correctly");
    }
    assert!(
        b.calls() > 400,
        "b took over: a {} b {}",
        a.calls(),
        b.calls()
    );
}

/// `timeouts.response_body`: a server stream whose instance falls silent
/// for longer than the limit ends with DEADLINE_EXCEEDED naming the
/// setting; one whose messages keep coming within the limit runs past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_silent_past_the_pause_limit_is_deadline_exceeded() {
    let a = GrpcInstance::start("a").await;
    let proxy = proxy(
        &[&a],
        "[services.echo.timeouts]\nresponse_body = \"300ms\"\n",
    )
    .await;
    let mut client = client(proxy.addr).await;

    // Eight messages 60 ms apart: 420 ms in all, each pause well within.
    let mut stream = count(&mut client, 8, 60).await;
    let mut got = 0;
    while let Some(_msg) = within(10, "a steady stream", stream.message())
        .await
        .expect("no error")
    {
        got += 1;
    }
    assert_eq!(got, 8);

    // The first message at once, the second 20 s later.
    let mut stream = count(&mut client, 2, 20_000).await;
    within(10, "the first message", stream.message())
        .await
        .expect("message")
        .expect("not ended");
    let status = within(10, "the pause is cut off", stream.message())
        .await
        .expect_err("the stream ends with a status");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("timeouts.response_body"),
        "{status:?}"
    );
}
