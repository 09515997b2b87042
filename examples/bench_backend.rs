//! The instance behind the proxies in the end-to-end benches
//! (`benches/e2e/*.sh`); not part of wayfinder.
//!
//! ```text
//! bench_backend http ADDR [DELAY_US]   200 "hello" after DELAY_US µs (HTTP/1.1 and h2c);
//!                                      GET /count: how many "hello"s so far, at once
//! bench_backend grpc ADDR              gRPC unary `/bench.Echo/Say` (h2c), echoes the message
//! ```
//!
//! `http` holds each request for a fixed delay before answering. The delay
//! is a `std::thread::sleep` on tokio's blocking pool (nanosleep), not a
//! tokio timer, because tokio's timer wheel rounds every sleep up to the
//! next millisecond: a 1 ms sleep would last 1 to 2 ms and a "10x slower"
//! instance would be only 6 to 7 times slower. nginx-light has no delay
//! directive (`echo_sleep` is not in it), hence this program.
//!
//! `grpc` is a real gRPC server (tonic's codec and unary handling, a
//! `prost` message derived by hand, so no `protoc`): it answers
//! `bench.Echo/Say` with the request's message, `grpc-status: 0` in the
//! trailers; any other path gets UNIMPLEMENTED.
//!
//! It prints `ready` on stdout once it listens and runs until killed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tonic::codec::ProstCodec;
use tonic::codegen::{BoxFuture, Service};
use tonic::{Request, Response, Status};

/// The message of `bench.Echo/Say`, both ways.
#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
}

/// The unary handler: echoes the message.
#[derive(Clone, Copy)]
struct Say;

impl Service<Request<Msg>> for Say {
    type Response = Response<Msg>;
    type Error = Status;
    type Future = BoxFuture<Response<Msg>, Status>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Status>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        Box::pin(async move { Ok(Response::new(req.into_inner())) })
    }
}

async fn grpc(
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<tonic::body::Body>, Infallible> {
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
    Ok(match req.uri().path() {
        "/bench.Echo/Say" => grpc.unary(Say, req).await,
        _ => Status::unimplemented("no such method").into_http(),
    })
}

/// Requests answered with "hello" (what `GET /count` reports).
static SERVED: AtomicU64 = AtomicU64::new(0);

async fn hello(
    delay: Option<Duration>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/count" {
        let count = SERVED.load(Ordering::Relaxed).to_string();
        return Ok(hyper::Response::new(Full::new(Bytes::from(count))));
    }
    SERVED.fetch_add(1, Ordering::Relaxed);
    if let Some(delay) = delay {
        // A panic in the blocking task (none expected) still answers.
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(delay)).await;
    }
    Ok(hyper::Response::builder()
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"hello")))
        .expect("static response"))
}

fn usage() -> ! {
    eprintln!("usage: bench_backend http ADDR [DELAY_US] | bench_backend grpc ADDR");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, addr) = match (args.first(), args.get(1)) {
        (Some(mode), Some(addr)) => (mode.clone(), addr.parse::<SocketAddr>()),
        _ => usage(),
    };
    let Ok(addr) = addr else { usage() };
    let delay_us: u64 = match args.get(2).map(|d| d.parse()) {
        None => 0,
        Some(Ok(us)) => us,
        Some(Err(_)) => usage(),
    };
    let delay = (delay_us > 0).then(|| Duration::from_micros(delay_us));
    if mode != "http" && mode != "grpc" {
        usage();
    }
    // One worker, as the nginx backends run one worker; sleeping requests
    // wait on the blocking pool, not on the worker.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1024)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let listener = match TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("bench_backend: cannot listen on {addr}: {e}");
                std::process::exit(1);
            }
        };
        println!("ready");
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let io = TokioIo::new(tcp);
            if mode == "grpc" {
                tokio::spawn(async move {
                    let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection(io, hyper::service::service_fn(grpc))
                        .await;
                });
            } else {
                tokio::spawn(async move {
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let service = hyper::service::service_fn(move |req| hello(delay, req));
                    let _ = builder.serve_connection(io, service).await;
                });
            }
        }
    });
}
