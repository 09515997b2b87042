//! wayfinder started in this process: with its admin API off ([`Proxy`]) or
//! on a free loopback port ([`AdminProxy`], driven through [`Api`]), the
//! config snippets the tests give it and what its snapshot holds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::{header, StatusCode};
use serde_json::Value;

use wayfinder::app::{Running, StartError};
use wayfinder::config::Config;

use super::{empty, full, get, init_tracing, request, within, Backend, BoxError, H1Client, Reply};

/// Parses `text` as a test config; a rejected config fails the test,
/// showing the text.
pub fn parse_config(text: &str) -> Config {
    Config::parse(text, Path::new("test.toml"))
        .unwrap_or_else(|e| panic!("test config rejected: {e}\n{text}"))
}

/// Starts wayfinder in this process (its logs in the test output when
/// `RUST_LOG` is set).
pub async fn start_proxy(config: &Config) -> Result<Running, StartError> {
    init_tracing();
    wayfinder::app::start(config).await
}

/// Address -> weight of the instances of `service` in the current snapshot
/// of `running` (empty when it has no such service).
pub fn members(running: &Running, service: &str) -> BTreeMap<SocketAddr, u32> {
    running
        .registry
        .load()
        .service(service)
        .map(|s| {
            s.members()
                .iter()
                .map(|m| (m.instance.addr(), m.weight))
                .collect()
        })
        .unwrap_or_default()
}

// === impl Proxy ===

/// wayfinder running in this process on `127.0.0.1:0`, admin API off.
#[derive(Debug)]
pub struct Proxy {
    /// The client-facing address.
    pub addr: SocketAddr,
    /// The running proxy; `None` after [`Proxy::shutdown`].
    pub running: Option<Running>,
}

impl Proxy {
    /// Starts wayfinder with `tables` appended to a base config that sets
    /// `listen` and turns the admin API off. `tables` must therefore start
    /// with a table header (`[timeouts]`, `[services.x]`, `[[routes]]`...).
    pub async fn start(tables: &str) -> Proxy {
        let text = format!("listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"off\"\n{tables}");
        let running = start_proxy(&parse_config(&text))
            .await
            .expect("start proxy");
        Proxy {
            addr: running.listen[0],
            running: Some(running),
        }
    }

    /// Stops accepting, drains and waits until the proxy has stopped.
    pub async fn shutdown(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }

    /// A GET on a fresh connection.
    pub async fn get(&self, host: &str, path: &str) -> Result<Reply, BoxError> {
        get(self.addr, host, path).await
    }
}

/// A port that holds no listener: connecting to it is refused. Keep the
/// returned socket alive so nothing else binds the port meanwhile.
pub fn refused_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("bind without listening");
    let addr = socket.local_addr().expect("bound address");
    (socket, addr)
}

/// A `[services.NAME]` table listing `backends` as instances.
pub fn service(name: &str, backends: &[&Backend]) -> String {
    service_at(
        name,
        None,
        &backends.iter().map(|b| b.addr).collect::<Vec<_>>(),
    )
}

/// A `[services.NAME]` table with a balancing policy.
pub fn service_balanced(name: &str, balance: &str, backends: &[&Backend]) -> String {
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    service_at(name, Some(balance), &addrs)
}

/// A `[services.NAME]` table for instances at `addrs`.
pub fn service_at(name: &str, balance: Option<&str>, addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    let balance = balance.map_or(String::new(), |b| format!("balance = \"{b}\"\n"));
    format!(
        "[services.{name}]\n{balance}instances = [{}]\n",
        list.join(", ")
    )
}

// === impl AdminProxy ===

/// wayfinder in this process with its admin API on, on a loopback port.
#[derive(Debug)]
pub struct AdminProxy {
    /// The running proxy; `None` after [`AdminProxy::shutdown`].
    pub running: Option<Running>,
    /// The client-facing address.
    pub proxy: SocketAddr,
    /// Its admin API.
    pub api: Api,
}

impl AdminProxy {
    /// Starts with the proxy and the admin API on loopback port 0 (the OS
    /// picks free ports; they are read back from the running proxy);
    /// `admin_extra` goes into the `[admin]` table, `tables` after it.
    pub async fn start(admin_extra: &str, tables: &str) -> AdminProxy {
        AdminProxy::start_at(0, admin_extra, tables)
            .await
            .unwrap_or_else(|e| panic!("start: {e}"))
    }

    /// Starts with the admin API on `admin_port` (0: one the OS picks), for
    /// a test that restarts a proxy on the address it had before.
    pub async fn start_at(
        admin_port: u16,
        admin_extra: &str,
        tables: &str,
    ) -> Result<AdminProxy, StartError> {
        let text = format!(
            "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n{admin_extra}\n{tables}"
        );
        let running = start_proxy(&parse_config(&text)).await?;
        let api = Api::new(running.admin.expect("admin API on"));
        Ok(AdminProxy {
            proxy: running.listen[0],
            running: Some(running),
            api,
        })
    }

    /// The running proxy.
    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    /// A GET through the proxy for `Host: {service}.svc`.
    pub async fn get(&self, service: &str) -> Result<Reply, BoxError> {
        within(
            30,
            "GET through the proxy",
            get(self.proxy, &format!("{service}.svc"), "/"),
        )
        .await
    }

    /// The body of a GET through the proxy that must answer 200.
    pub async fn get_ok(&self, service: &str) -> String {
        let reply = self
            .get(service)
            .await
            .unwrap_or_else(|e| panic!("GET {service}.svc: {e}"));
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "GET {service}.svc: {}",
            reply.text()
        );
        reply.text()
    }

    /// Stops accepting, drains and waits (bounded) until it has stopped.
    pub async fn shutdown(&mut self) {
        if let Some(r) = self.running.take() {
            within(30, "proxy shutdown", r.shutdown()).await;
        }
    }
}

// === impl Api ===

/// A client of the admin API.
#[derive(Debug, Clone)]
pub struct Api {
    /// Where the admin API listens.
    pub addr: SocketAddr,
    /// The bearer token sent with [`Api::call`].
    pub token: Option<String>,
}

impl Api {
    /// A client of the admin API at `addr`, sending no token.
    pub fn new(addr: SocketAddr) -> Api {
        Api { addr, token: None }
    }

    /// One call on a fresh connection, bounded to 30 s.
    pub async fn call(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.call_with(method, path, self.token.as_deref(), body)
            .await
    }

    /// One call with an explicit `Authorization: Bearer` token (or none).
    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        self.call_auth(
            method,
            path,
            token.map(|t| format!("Bearer {t}")).as_deref(),
            body,
        )
        .await
    }

    /// One call with a raw `Authorization` header value (or none).
    pub async fn call_auth(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let mut req = request(method, "admin", path);
        if let Some(a) = authorization {
            req = req.header(header::AUTHORIZATION, a);
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                full(b.to_owned())
            }
            None => empty(),
        };
        let req = req.body(body).expect("admin request");
        let what = format!("admin {method} {path}");
        within(30, &what, async {
            let mut client = H1Client::connect(self.addr).await?;
            client.request(req).await
        })
        .await
        .unwrap_or_else(|e: BoxError| panic!("{what}: {e}"))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None).await
    }

    /// `GET path`, which must answer 200 with JSON.
    pub async fn json(&self, path: &str) -> Value {
        let reply = self.get(path).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()
    }

    /// `PUT /v1/registry/{service}/{id}` with `body`.
    pub async fn register(&self, service: &str, id: &str, body: &str) -> Reply {
        self.call("PUT", &format!("/v1/registry/{service}/{id}"), Some(body))
            .await
    }

    /// Registers `addr` with `ttl`.
    pub async fn register_addr(
        &self,
        service: &str,
        id: &str,
        addr: SocketAddr,
        ttl: &str,
    ) -> Reply {
        self.register(
            service,
            id,
            &format!(r#"{{"address":"{addr}","ttl":"{ttl}"}}"#),
        )
        .await
    }

    /// Registers `addr` with `ttl`, expecting 201.
    pub async fn register_ok(&self, service: &str, id: &str, addr: SocketAddr, ttl: &str) {
        let reply = self.register_addr(service, id, addr, ttl).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "register {service}/{id}: {}",
            reply.text()
        );
    }

    /// `DELETE /v1/registry/{service}/{id}`.
    pub async fn deregister(&self, service: &str, id: &str) -> Reply {
        self.call("DELETE", &format!("/v1/registry/{service}/{id}"), None)
            .await
    }

    /// `PUT /v1/registry/{service}/{id}/heartbeat`.
    pub async fn heartbeat(&self, service: &str, id: &str) -> Reply {
        self.call(
            "PUT",
            &format!("/v1/registry/{service}/{id}/heartbeat"),
            None,
        )
        .await
    }

    /// The instances `GET /v1/registry/{service}` lists (none when the
    /// service is unknown).
    pub async fn instances(&self, service: &str) -> Vec<Value> {
        let reply = self.get(&format!("/v1/registry/{service}")).await;
        match reply.status {
            StatusCode::NOT_FOUND => Vec::new(),
            StatusCode::OK => reply.json()["instances"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            s => panic!("GET /v1/registry/{service}: {s}: {}", reply.text()),
        }
    }

    /// The addresses `GET /v1/registry/{service}` lists, sorted.
    pub async fn addresses(&self, service: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .instances(service)
            .await
            .iter()
            .map(|i| i["address"].as_str().unwrap_or_default().to_owned())
            .collect();
        v.sort();
        v
    }

    /// The entry of `GET /v1/sources` named `name`.
    pub async fn source(&self, name: &str) -> Value {
        let list = self.json("/v1/sources").await;
        list.as_array()
            .and_then(|l| l.iter().find(|s| s["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no source {name:?} in {list}"))
    }

    /// Waits (bounded) until `cond` holds for the addresses of `service`.
    pub async fn wait_addresses(
        &self,
        secs: u64,
        service: &str,
        what: &str,
        cond: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        within(secs, what, async {
            loop {
                let a = self.addresses(service).await;
                if cond(&a) {
                    return a;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }
}
