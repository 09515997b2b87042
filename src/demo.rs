//! `wayfinder demo`: the shipped example config plus real demo instances,
//! so a newcomer sees discovery and balancing work without writing anything.
//!
//! Starts an HTTP listener for every static instance in
//! `config/wayfinder.toml` (each answers with its own address), starts the
//! proxy on that config, sends a few requests through it to show the
//! rotation, and prints curl lines to try by hand.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::app::{self, StartError};
use crate::config::{Config, ConfigError};

/// The example config shipped in `config/wayfinder.toml`, built in.
const EXAMPLE_CONFIG: &str = include_str!("../config/wayfinder.toml");

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The built-in config did not parse (a build defect).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A demo instance could not listen.
    #[error("cannot start demo instance on {addr}: {source}")]
    Instance {
        /// Its address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The proxy could not start.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Runs the demo until `shutdown` completes. `listen` overrides the proxy's
/// listen address.
pub async fn run(
    listen: Option<SocketAddr>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DemoError> {
    let mut config = Config::parse(
        EXAMPLE_CONFIG,
        Path::new("config/wayfinder.toml (built in)"),
    )?;
    if let Some(addr) = listen {
        config.startup.listen = vec![addr];
    }
    let mut instances = Vec::new();
    for svc in config.services.values() {
        for inst in &svc.instances {
            let listener =
                TcpListener::bind(inst.addr)
                    .await
                    .map_err(|source| DemoError::Instance {
                        addr: inst.addr,
                        source,
                    })?;
            instances.push(tokio::spawn(serve_instance(listener, svc.name.to_string())));
        }
    }
    let running = app::start(&config).await?;
    // With health checks configured, instances wait for their first pass.
    for _ in 0..100 {
        let snap = running.registry.load();
        if snap.services().all(|s| {
            s.members()
                .iter()
                .all(|m| m.instance.is_available(crate::clock::now_ms()))
        }) {
            break;
        }
        drop(snap);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let proxy = running.listen[0];
    println!(
        "wayfinder demo: proxy on http://{proxy}, {} demo instances",
        instances.len()
    );
    for svc in config.services.values() {
        let addrs: Vec<String> = svc.instances.iter().map(|i| i.addr.to_string()).collect();
        println!("  service {:?}: {}", &*svc.name, addrs.join(", "));
    }
    if let Some(svc) = config.services.keys().next() {
        println!("\nsix requests for Host: {svc}.svc through the proxy:");
        for _ in 0..6 {
            match get(proxy, &format!("{svc}.svc"), "/").await {
                Ok(body) => print!("  {body}"),
                Err(e) => println!("  request failed: {e}"),
            }
        }
        println!("\ntry it yourself:");
        println!("  curl -s -H 'Host: {svc}.svc' http://{proxy}/");
        println!("  curl -s http://localhost:{}/", proxy.port());
        println!("  curl -s http://{proxy}/greet/");
        if let Some(admin) = running.admin {
            println!("  curl -s http://{admin}/v1/services");
        }
    }
    println!("\nCtrl-C stops the demo.");
    shutdown.await;
    running.shutdown().await;
    for i in instances {
        i.abort();
    }
    Ok(())
}

/// A demo instance: answers every request with its service and address.
async fn serve_instance(listener: TcpListener, service: String) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let reply = Bytes::from(format!("hello from {service} instance {addr}\n"));
        tokio::spawn(async move {
            let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                let reply = reply.clone();
                async move { Ok::<_, Infallible>(Response::new(Full::new(reply))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// One GET through the proxy; returns the body.
async fn get(
    proxy: SocketAddr,
    host: &str,
    path: &str,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(proxy).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}
