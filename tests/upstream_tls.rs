//! TLS towards instances, end to end: gRPC over HTTP/2 with TLS (ALPN
//! `h2`) and HTTP/1.1 over TLS, certificates verified against a CA file,
//! by a configured name or the instance's IP address; an instance whose
//! certificate is not trusted is refused with the reason in the answer;
//! instances that require a client certificate (mTLS); `auto` following
//! what each instance chooses by ALPN.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tonic::Code;

use std::time::Duration;
use support::grpc::{client, say, GrpcInstance, Msg};
use support::pki::Pki;

use support::{full, get, wait_for, within, Proxy};

/// An HTTP/1.1 instance over TLS answering `200 "<name> <version>"`.
struct H1TlsInstance {
    addr: SocketAddr,
    _tasks: JoinSet<()>,
}

impl H1TlsInstance {
    async fn start(name: &'static str, config: Arc<rustls::ServerConfig>) -> H1TlsInstance {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let text = format!("{name} {:?}", req.version());
                        Ok::<_, Infallible>(Response::new(full(text)))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        H1TlsInstance {
            addr,
            _tasks: tasks,
        }
    }
}

/// Routes `/echo.Echo` to `echo` and everything else to `web`, with the
/// service tables given.
async fn proxy(echo: &str, web: &str) -> Proxy {
    Proxy::start(&format!(
        "{echo}\n{web}\n\
         [[routes]]\npath = \"/echo.Echo\"\nservice = \"echo\"\n\
         [[routes]]\npath = \"/\"\nservice = \"web\"\n"
    ))
    .await
}

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_http1_over_tls_verified_by_a_ca_file() {
    let pki = Pki::new("up-tls");
    pki.leaf("grpc", &["grpc.internal"], false);
    // No name: verified against the instance's IP address.
    pki.leaf("web", &["127.0.0.1"], false);
    let g = GrpcInstance::start_tls("g", pki.server_config("grpc", &[b"h2"], false)).await;
    let w = H1TlsInstance::start("w", pki.server_config("web", &[b"http/1.1"], false)).await;
    let ca = path(&pki.ca_file());
    let proxy = proxy(
        &format!(
            "[services.echo]\nprotocol = \"h2\"\ninstances = [\"{}\"]\n\
             tls = {{ ca_file = \"{ca}\", server_name = \"grpc.internal\" }}",
            g.addr
        ),
        &format!(
            "[services.web]\ninstances = [\"{}\"]\ntls = {{ ca_file = \"{ca}\" }}",
            w.addr
        ),
    )
    .await;

    let mut c = client(proxy.addr).await;
    for i in 0..20 {
        let reply = say(&mut c, Msg::text(&i.to_string()), None)
            .await
            .expect("call over TLS");
        assert_eq!((reply.text, reply.instance), (i.to_string(), "g".into()));
    }
    assert_eq!(g.connections(), 1, "one shared HTTP/2 connection");
    for _ in 0..5 {
        let r = within(10, "GET", get(proxy.addr, "web.example", "/"))
            .await
            .unwrap();
        assert_eq!(
            (r.status.as_u16(), r.text()),
            (200, "w HTTP/1.1".to_owned())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_instance_is_refused_with_the_reason() {
    let trusted = Pki::new("up-tls-ours");
    let other = Pki::new("up-tls-theirs");
    other.leaf("grpc", &["grpc.internal"], false);
    other.leaf("web", &["127.0.0.1"], false);
    trusted.leaf("wrong-name", &["elsewhere.internal"], false);
    let g = GrpcInstance::start_tls("g", other.server_config("grpc", &[b"h2"], false)).await;
    let w = H1TlsInstance::start("w", other.server_config("web", &[b"http/1.1"], false)).await;
    let ca = path(&trusted.ca_file());
    let proxy = proxy(
        &format!(
            "[services.echo]\nprotocol = \"h2\"\ninstances = [\"{}\"]\n\
             tls = {{ ca_file = \"{ca}\", server_name = \"grpc.internal\" }}",
            g.addr
        ),
        &format!(
            "[services.web]\ninstances = [\"{}\"]\ntls = {{ ca_file = \"{ca}\" }}",
            w.addr
        ),
    )
    .await;

    let mut c = client(proxy.addr).await;
    let status = say(&mut c, Msg::text("x"), None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("certificate"),
        "the reason is named: {status:?}"
    );
    assert_eq!(g.calls(), 0, "nothing reached the untrusted instance");

    let r = within(10, "GET", get(proxy.addr, "web.example", "/"))
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 502, "{}", r.text());
    assert!(r.text().contains("certificate"), "{}", r.text());

    // A trusted certificate for another name is refused too.
    let named =
        GrpcInstance::start_tls("n", trusted.server_config("wrong-name", &[b"h2"], false)).await;
    let named_proxy = proxy_one_h2(&named, &ca, "grpc.internal").await;
    let mut c = client(named_proxy.addr).await;
    let status = say(&mut c, Msg::text("x"), None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("certificate"), "{status:?}");
}

async fn proxy_one_h2(i: &GrpcInstance, ca: &str, name: &str) -> Proxy {
    proxy(
        &format!(
            "[services.echo]\nprotocol = \"h2\"\ninstances = [\"{}\"]\n\
             tls = {{ ca_file = \"{ca}\", server_name = \"{name}\" }}",
            i.addr
        ),
        "[services.web]",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_that_require_a_client_certificate() {
    let pki = Pki::new("up-mtls");
    pki.leaf("grpc", &["grpc.internal"], false);
    let (cert, key) = pki.leaf("proxy-client", &["wayfinder.internal"], false);
    let g = GrpcInstance::start_tls("g", pki.server_config("grpc", &[b"h2"], true)).await;
    let ca = path(&pki.ca_file());

    // Without a client certificate: refused.
    let without = proxy_one_h2(&g, &ca, "grpc.internal").await;
    let mut c = client(without.addr).await;
    let status = say(&mut c, Msg::text("x"), None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(g.calls(), 0);

    // With one signed by the CA the instance trusts: served.
    let proxy = proxy(
        &format!(
            "[services.echo]\nprotocol = \"h2\"\ninstances = [\"{}\"]\n\
             tls = {{ ca_file = \"{ca}\", server_name = \"grpc.internal\", cert = \"{}\", key = \"{}\" }}",
            g.addr,
            path(&cert),
            path(&key)
        ),
        "[services.web]",
    )
    .await;
    let mut c = client(proxy.addr).await;
    let reply = say(&mut c, Msg::text("mutual"), None)
        .await
        .expect("mTLS call");
    assert_eq!(reply.instance, "g");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_follows_what_each_instance_chooses() {
    let pki = Pki::new("up-auto");
    pki.leaf("both", &["127.0.0.1"], false);
    // The gRPC instance offers only h2; the web one only http/1.1.
    let g = GrpcInstance::start_tls("g", pki.server_config("both", &[b"h2"], false)).await;
    let w = H1TlsInstance::start("w", pki.server_config("both", &[b"http/1.1"], false)).await;
    let ca = path(&pki.ca_file());
    let proxy = proxy(
        &format!(
            "[services.echo]\nprotocol = \"auto\"\ninstances = [\"{}\"]\ntls = {{ ca_file = \"{ca}\" }}",
            g.addr
        ),
        &format!(
            "[services.web]\nprotocol = \"auto\"\ninstances = [\"{}\"]\ntls = {{ ca_file = \"{ca}\" }}",
            w.addr
        ),
    )
    .await;
    let mut c = client(proxy.addr).await;
    for _ in 0..10 {
        assert_eq!(
            say(&mut c, Msg::text("a"), None).await.unwrap().instance,
            "g"
        );
    }
    assert_eq!(g.connections(), 1, "HTTP/2 chosen and shared");
    let r = within(10, "GET", get(proxy.addr, "web.example", "/"))
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (200, "w HTTP/1.1".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_speak_tls_and_http2_as_requests_do() {
    let pki = Pki::new("up-tls-health");
    let other = Pki::new("up-tls-health-other");
    pki.leaf("both", &["127.0.0.1"], false);
    other.leaf("both", &["127.0.0.1"], false);
    // An HTTP check over HTTP/2 with TLS (the gRPC instance answers any
    // path with HTTP 200), and one over HTTP/1.1 with TLS to an instance
    // whose certificate is not trusted.
    let g = GrpcInstance::start_tls("g", pki.server_config("both", &[b"h2"], false)).await;
    let w = H1TlsInstance::start("w", other.server_config("both", &[b"http/1.1"], false)).await;
    let ca = path(&pki.ca_file());
    let health = "kind = \"http\"\npath = \"/healthz\"\ninterval = \"100ms\"\n\
                  unhealthy_threshold = 1\nhealthy_threshold = 1";
    let proxy = proxy(
        &format!(
            "[services.echo]\nprotocol = \"h2\"\ninstances = [\"{}\"]\npanic_threshold = 0\n\
             tls = {{ ca_file = \"{ca}\" }}\n[services.echo.health]\n{health}",
            g.addr
        ),
        &format!(
            "[services.web]\ninstances = [\"{}\"]\npanic_threshold = 0\n\
             tls = {{ ca_file = \"{ca}\" }}\n[services.web.health]\n{health}",
            w.addr
        ),
    )
    .await;
    // The trusted instance passes its checks and takes calls.
    let c = client(proxy.addr).await;
    wait_for(
        Duration::from_secs(10),
        "the h2-over-TLS check passes",
        || {
            let mut c = c.clone();
            async move { say(&mut c, Msg::text("x"), None).await.is_ok() }
        },
    )
    .await;
    assert!(
        g.calls() >= 2,
        "checks reached the instance too: {}",
        g.calls()
    );
    // The untrusted one fails its checks: no healthy instance (503), not
    // a 502 per request.
    let addr = proxy.addr;
    wait_for(
        Duration::from_secs(10),
        "the TLS check fails on the untrusted certificate",
        || async move {
            let r = within(10, "GET", get(addr, "web.example", "/"))
                .await
                .unwrap();
            r.status.as_u16() == 503
        },
    )
    .await;
}
