//! A real gRPC instance (tonic's server machinery, prost messages derived
//! by hand, so no `protoc`), served over HTTP/2 by hyper on loopback: plain
//! (h2c) or over TLS (ALPN `h2`). Service `echo.Echo`:
//!
//! - `Say` (unary): answers the message with the instance's name, after
//!   `delay_ms`;
//! - `Count` (server streaming): `n` messages, `delay_ms` apart;
//! - `Chat` (bidirectional): echoes each message as it comes.
//!
//! [`GrpcInstance::kill`] drops every connection at once (as a crashed
//! process would); [`GrpcInstance::goaway`] asks every connection to shut
//! down gracefully (GOAWAY, in-flight streams finish).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::codec::{ProstCodec, Streaming};
use tonic::codegen::{tokio_stream, BoxFuture, BoxStream, Service};
use tonic::{Request, Response, Status};

/// The one message type of `echo.Echo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    /// Free text; echoed.
    #[prost(string, tag = "1")]
    pub text: String,
    /// The instance that answered.
    #[prost(string, tag = "2")]
    pub instance: String,
    /// `Count`: how many messages to stream.
    #[prost(uint32, tag = "3")]
    pub n: u32,
    /// `Say`: delay before answering; `Count`: between messages.
    #[prost(uint32, tag = "4")]
    pub delay_ms: u32,
}

impl Msg {
    /// A message with `text`.
    pub fn text(text: &str) -> Msg {
        Msg {
            text: text.to_owned(),
            ..Msg::default()
        }
    }
}

/// The codec of every method.
pub fn codec() -> ProstCodec<Msg, Msg> {
    ProstCodec::default()
}

#[derive(Clone)]
struct Say(Arc<str>);

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
        let name = self.0.clone();
        Box::pin(async move {
            let msg = req.into_inner();
            if msg.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(msg.delay_ms.into())).await;
            }
            Ok(Response::new(Msg {
                instance: name.to_string(),
                ..msg
            }))
        })
    }
}

#[derive(Clone)]
struct Count(Arc<str>);

impl Service<Request<Msg>> for Count {
    type Response = Response<BoxStream<Msg>>;
    type Error = Status;
    type Future = BoxFuture<Response<BoxStream<Msg>>, Status>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Status>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        let name = self.0.clone();
        Box::pin(async move {
            let ask = req.into_inner();
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tokio::spawn(async move {
                for i in 0..ask.n {
                    if ask.delay_ms > 0 && i > 0 {
                        tokio::time::sleep(Duration::from_millis(ask.delay_ms.into())).await;
                    }
                    let msg = Msg {
                        text: i.to_string(),
                        instance: name.to_string(),
                        ..Msg::default()
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
            });
            let stream: BoxStream<Msg> = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
            Ok(Response::new(stream))
        })
    }
}

#[derive(Clone)]
struct Chat(Arc<str>);

impl Service<Request<Streaming<Msg>>> for Chat {
    type Response = Response<BoxStream<Msg>>;
    type Error = Status;
    type Future = BoxFuture<Response<BoxStream<Msg>>, Status>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Status>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        let name = self.0.clone();
        Box::pin(async move {
            let mut incoming = req.into_inner();
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tokio::spawn(async move {
                loop {
                    match incoming.message().await {
                        Ok(Some(msg)) => {
                            let reply = Msg {
                                instance: name.to_string(),
                                ..msg
                            };
                            if tx.send(Ok(reply)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    }
                }
            });
            let stream: BoxStream<Msg> = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
            Ok(Response::new(stream))
        })
    }
}

/// Routes one HTTP/2 request to its method.
async fn dispatch(
    name: Arc<str>,
    calls: Arc<AtomicUsize>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<tonic::body::Body>, std::convert::Infallible> {
    calls.fetch_add(1, Ordering::SeqCst);
    let mut grpc = tonic::server::Grpc::new(codec());
    Ok(match req.uri().path() {
        "/echo.Echo/Say" => grpc.unary(Say(name), req).await,
        "/echo.Echo/Count" => grpc.server_streaming(Count(name), req).await,
        "/echo.Echo/Chat" => grpc.streaming(Chat(name), req).await,
        _ => Status::unimplemented("no such method").into_http(),
    })
}

/// A gRPC instance on loopback.
pub struct GrpcInstance {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its name, in every answer's `instance`.
    pub name: Arc<str>,
    calls: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    tasks: Arc<Mutex<JoinSet<()>>>,
    shutdown: watch::Sender<bool>,
}

impl GrpcInstance {
    /// Serves HTTP/2 by prior knowledge (h2c).
    pub async fn start(name: &str) -> GrpcInstance {
        GrpcInstance::serve(name, None, None).await
    }

    /// Serves h2c, with at most `max` concurrent streams per connection.
    pub async fn start_limited(name: &str, max: u32) -> GrpcInstance {
        GrpcInstance::serve(name, None, Some(max)).await
    }

    /// Serves HTTP/2 over TLS with `config` (its ALPN should offer `h2`).
    pub async fn start_tls(name: &str, config: Arc<rustls::ServerConfig>) -> GrpcInstance {
        GrpcInstance::serve(name, Some(tokio_rustls::TlsAcceptor::from(config)), None).await
    }

    async fn serve(
        name: &str,
        tls: Option<tokio_rustls::TlsAcceptor>,
        max_streams: Option<u32>,
    ) -> GrpcInstance {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let name: Arc<str> = Arc::from(name);
        let calls = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let (shutdown, _) = watch::channel(false);
        let accept = {
            let (name, calls, connections, tasks) = (
                name.clone(),
                calls.clone(),
                connections.clone(),
                tasks.clone(),
            );
            let shutdown = shutdown.subscribe();
            async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let (name, calls, tls) = (name.clone(), calls.clone(), tls.clone());
                    let mut shutdown = shutdown.clone();
                    tasks.lock().unwrap().spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            dispatch(name.clone(), calls.clone(), req)
                        });
                        let mut builder =
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                        builder.max_concurrent_streams(max_streams);
                        macro_rules! run {
                            ($io:expr) => {{
                                let conn = builder.serve_connection(TokioIo::new($io), service);
                                tokio::pin!(conn);
                                tokio::select! {
                                    _ = conn.as_mut() => return,
                                    _ = shutdown.wait_for(|s| *s) => {}
                                }
                                conn.as_mut().graceful_shutdown();
                                let _ = conn.await;
                            }};
                        }
                        match tls {
                            None => run!(tcp),
                            Some(acceptor) => {
                                let Ok(stream) = acceptor.accept(tcp).await else {
                                    return;
                                };
                                run!(stream)
                            }
                        }
                    });
                }
            }
        };
        tasks.lock().unwrap().spawn(accept);
        GrpcInstance {
            addr,
            name,
            calls,
            connections,
            tasks,
            shutdown,
        }
    }

    /// Requests received (every method).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Connections accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Sends GOAWAY on every open connection (in-flight streams finish,
    /// new ones are refused); new connections are still accepted, and get
    /// GOAWAY at once too until [`GrpcInstance::resume`].
    pub fn goaway(&self) {
        self.shutdown.send_replace(true);
    }

    /// New connections are served normally again.
    pub fn resume(&self) {
        self.shutdown.send_replace(false);
    }

    /// Drops the listener and every connection at once, as a crash would.
    pub fn kill(&self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

impl Drop for GrpcInstance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A gRPC client over one HTTP/2 connection to `addr` (h2c).
pub async fn client(addr: SocketAddr) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the proxy");
    tonic::client::Grpc::new(channel)
}

/// A `Count` call (server streaming): `n` messages, `delay_ms` apart
/// after the first.
pub async fn count(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    n: u32,
    delay_ms: u32,
) -> Streaming<Msg> {
    client.ready().await.expect("client ready");
    let ask = Msg {
        n,
        delay_ms,
        ..Msg::default()
    };
    client
        .server_streaming(
            Request::new(ask),
            "/echo.Echo/Count".parse().unwrap(),
            codec(),
        )
        .await
        .expect("stream starts")
        .into_inner()
}

/// One `Say` call on `client`, with an optional deadline.
pub async fn say(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    msg: Msg,
    deadline: Option<Duration>,
) -> Result<Msg, Status> {
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut req = Request::new(msg);
    if let Some(d) = deadline {
        req.set_timeout(d);
    }
    client
        .unary(req, "/echo.Echo/Say".parse().unwrap(), codec())
        .await
        .map(Response::into_inner)
}

/// What a raw gRPC call got: the HTTP status, the response headers and
/// trailers merged (a trailers-only answer has `grpc-status` in its head),
/// and the messages' bytes.
pub struct RawCall {
    pub http: u16,
    pub fields: http::HeaderMap,
    pub body: bytes::Bytes,
}

impl RawCall {
    /// The `grpc-status` of the call.
    pub fn grpc_status(&self) -> Option<u32> {
        self.fields.get("grpc-status")?.to_str().ok()?.parse().ok()
    }
}

/// One unary call sent by hand over a new HTTP/2 connection to `addr`
/// (prior knowledge), with `extra` request fields: for what tonic's
/// client does not let a test control (it enforces `grpc-timeout` itself).
pub async fn raw_call(addr: SocketAddr, path: &str, msg: &Msg, extra: &[(&str, &str)]) -> RawCall {
    use http_body_util::BodyExt;
    use prost::Message as _;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let encoded = msg.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    let mut req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
        .unwrap();
    let resp = sender.send_request(req).await.expect("a response");
    let http = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("the whole body");
    let mut fields = parts.headers;
    if let Some(t) = collected.trailers() {
        fields.extend(t.clone());
    }
    RawCall {
        http,
        fields,
        body: collected.to_bytes(),
    }
}
