//! `wayfinder register`: third-party registration. Runs beside a service
//! (or starts it as a child), checks its health itself and keeps it
//! registered with a proxy's admin API while it is healthy.
//!
//! Loop, every `interval`: check the service; healthy and not registered:
//! register; healthy and registered: heartbeat (a 404 means the proxy lost
//! its soft state, e.g. a restart: register again); unhealthy and
//! registered: deregister. Proxy unreachable: keep trying with capped
//! exponential backoff, logging once per state change.
//!
//! Stopping (SIGTERM/SIGINT, or the child exiting): mark the instance
//! draining, wait until its in-flight requests finish (bounded by the drain
//! timeout), deregister, then stop the child and exit with its exit code.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// What to register and how to watch it.
#[derive(Debug, Clone)]
pub struct Options {
    /// The proxy's admin API, e.g. `http://127.0.0.1:9900`.
    pub registry: Uri,
    /// Service name.
    pub service: String,
    /// Instance address.
    pub address: SocketAddr,
    /// Instance id (default: the address).
    pub id: String,
    /// Health check.
    pub check: Check,
    /// TTL asked for; heartbeats go every third of it.
    pub ttl: Duration,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Bearer token for the admin API.
    pub token: Option<String>,
    /// Longest wait for in-flight requests when stopping.
    pub drain_timeout: Duration,
    /// A command to start as the service, if any.
    pub command: Vec<String>,
}

/// How the registrar checks the service.
#[derive(Debug, Clone)]
pub enum Check {
    /// GET this URL; 2xx or 3xx passes.
    Http(Uri),
    /// Connect to the instance address.
    Tcp,
    /// No check: registered while running.
    None,
}

/// Why the registrar stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RegistrarError {
    /// The child command could not start.
    #[error("cannot start {command:?}: {source}")]
    Spawn {
        /// The command.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Waiting on the child failed.
    #[error("waiting for the child failed: {0}")]
    Wait(std::io::Error),
}

/// Runs until `stop` completes or the child exits; returns the exit code to
/// use (the child's, or 0).
pub async fn run(
    opts: Options,
    stop: impl std::future::Future<Output = ()>,
) -> Result<i32, RegistrarError> {
    let mut child = match opts.command.split_first() {
        None => None,
        Some((program, args)) => Some(
            Command::new(program)
                .args(args)
                .kill_on_drop(true)
                // Its own process group: a Ctrl-C at the terminal reaches only
                // us, and we stop the child after draining.
                .process_group(0)
                .spawn()
                .map_err(|source| RegistrarError::Spawn {
                    command: opts.command.join(" "),
                    source,
                })?,
        ),
    };
    let client = Client {
        base: opts.registry.clone(),
        token: opts.token.clone(),
    };
    let path = format!("/v1/registry/{}/{}", opts.service, opts.id);
    let interval = (opts.ttl / 3).max(Duration::from_millis(50));
    let mut registered = false;
    let mut reachable = true;
    let mut backoff = Duration::ZERO;
    tokio::pin!(stop);
    let exit = loop {
        let healthy = check(&opts).await;
        let outcome = match (healthy, registered) {
            (Ok(()), false) => register(&client, &path, &opts).await.map(|()| {
                tracing::info!(service = %opts.service, id = %opts.id, address = %opts.address, "registered");
                registered = true;
            }),
            (Ok(()), true) => match client.call(Method::PUT, &format!("{path}/heartbeat"), None).await {
                Ok((StatusCode::OK, _)) => Ok(()),
                Ok((StatusCode::NOT_FOUND, _)) => {
                    tracing::warn!("registry forgot the instance (proxy restarted?); registering again");
                    register(&client, &path, &opts).await
                }
                Ok((status, body)) => Err(format!("heartbeat: {status}: {}", String::from_utf8_lossy(&body).trim())),
                Err(e) => Err(e),
            },
            (Err(reason), true) => {
                tracing::warn!(%reason, "service unhealthy; deregistering");
                let r = client.call(Method::DELETE, &path, None).await.map(|_| ());
                registered = r.is_err();
                r
            }
            (Err(reason), false) => {
                tracing::debug!(%reason, "service not healthy yet");
                Ok(())
            }
        };
        match outcome {
            Ok(()) => {
                if !reachable {
                    tracing::info!("registry reachable again");
                }
                reachable = true;
                backoff = Duration::ZERO;
            }
            Err(e) => {
                if reachable {
                    tracing::warn!(error = %e, "registry call failed; retrying with backoff");
                }
                reachable = false;
                backoff = (backoff * 2).clamp(Duration::from_millis(250), Duration::from_secs(10));
            }
        }
        let sleep = tokio::time::sleep(if reachable { interval } else { backoff });
        tokio::select! {
            () = sleep => {}
            () = &mut stop => break None,
            status = wait_child(&mut child) => break Some(status.map_err(RegistrarError::Wait)?),
        }
    };
    if registered {
        drain_and_deregister(&client, &path, opts.drain_timeout).await;
    }
    let code = match (exit, child) {
        (Some(status), _) => code_of(status),
        (None, Some(mut child)) => {
            code_of(stop_child(&mut child).await.map_err(RegistrarError::Wait)?)
        }
        (None, None) => 0,
    };
    Ok(code)
}

async fn register(client: &Client, path: &str, opts: &Options) -> Result<(), String> {
    let body = serde_json::json!({
        "address": opts.address.to_string(),
        "ttl": humantime::format_duration(opts.ttl).to_string(),
        "tags": opts.tags,
    });
    match client
        .call(Method::PUT, path, Some(body.to_string()))
        .await?
    {
        (StatusCode::OK | StatusCode::CREATED, _) => Ok(()),
        (status, body) => Err(format!(
            "register: {status}: {}",
            String::from_utf8_lossy(&body).trim()
        )),
    }
}

/// Drain handshake: stop new requests, wait for in-flight ones, deregister.
async fn drain_and_deregister(client: &Client, path: &str, timeout: Duration) {
    tracing::info!("draining before deregistering");
    if let Err(e) = client
        .call(Method::PUT, &format!("{path}/drain"), None)
        .await
    {
        tracing::warn!(error = %e, "drain call failed");
    }
    let wait = format!("{path}?wait=drained&timeout={}ms", timeout.as_millis());
    match client.call(Method::GET, &wait, None).await {
        Ok((_, body)) if String::from_utf8_lossy(&body).contains("\"drained\": true") => {
            tracing::info!("drained")
        }
        Ok(_) => tracing::warn!(?timeout, "drain timeout reached with requests in flight"),
        Err(e) => tracing::warn!(error = %e, "drain wait failed"),
    }
    match client.call(Method::DELETE, path, None).await {
        Ok(_) => tracing::info!("deregistered"),
        Err(e) => tracing::warn!(error = %e, "deregister failed; the TTL will remove the instance"),
    }
}

async fn wait_child(child: &mut Option<Child>) -> std::io::Result<ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

/// Asks the child to stop (SIGTERM), then kills it after 10 s.
async fn stop_child(child: &mut Child) -> std::io::Result<ExitStatus> {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            child.start_kill()?;
            child.wait().await
        }
    }
}

fn code_of(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

async fn check(opts: &Options) -> Result<(), String> {
    let timeout = Duration::from_secs(2).min(opts.ttl);
    let work = async {
        match &opts.check {
            Check::None => Ok(()),
            Check::Tcp => TcpStream::connect(opts.address)
                .await
                .map(|_| ())
                .map_err(|e| format!("connect: {e}")),
            Check::Http(url) => {
                let client = Client {
                    base: url.clone(),
                    token: None,
                };
                let pq = url.path_and_query().map_or("/", |p| p.as_str());
                match client.call(Method::GET, pq, None).await {
                    Ok((s, _)) if s.is_success() || s.is_redirection() => Ok(()),
                    Ok((s, _)) => Err(format!("status {s}")),
                    Err(e) => Err(e),
                }
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

/// A minimal HTTP/1.1 client for the admin API: one connection per call.
struct Client {
    base: Uri,
    token: Option<String>,
}

impl Client {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes), String> {
        let authority = self
            .base
            .authority()
            .ok_or("registry URL has no host:port")?
            .clone();
        let port = authority.port_u16().unwrap_or(80);
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let work = async {
            let stream = TcpStream::connect((host, port))
                .await
                .map_err(|e| format!("connect {authority}: {e}"))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let conn = tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, authority.as_str())
                .header(header::USER_AGENT, "wayfinder-register");
            if let Some(t) = &self.token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
            }
            if body.is_some() {
                req = req.header(header::CONTENT_TYPE, "application/json");
            }
            let req = req
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| format!("request: {e}"))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            conn.abort();
            if status == StatusCode::UNAUTHORIZED {
                return Err("401 unauthorized: check --token / WAYFINDER_TOKEN".to_owned());
            }
            Ok((status, bytes))
        };
        tokio::time::timeout(Duration::from_secs(65), work)
            .await
            .unwrap_or_else(|_| Err("timed out".to_owned()))
    }
}
