//! The Docker Engine API, through `bollard`: connecting (unix socket or
//! TCP), the host's name, listing and inspecting containers into
//! [`Container`]s, and the container event stream.
//!
//! Every call but the event stream is bounded by [`CALL_TIMEOUT`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerInspectResponse, EventMessage, HealthStatusEnum};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use bollard::Docker;
use futures_util::stream::{BoxStream, StreamExt};

use super::labels::{Container, Health, Published};

/// Longest wait for one Engine API call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the Engine API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket path.
    Unix(String),
    /// `tcp://HOST:PORT` or `http://HOST:PORT` (plain HTTP).
    Http(String),
}

impl Endpoint {
    /// Reads `DOCKER_HOST`'s forms: `unix:///path`, `tcp://host:port`,
    /// `http://host:port`, or a bare socket path.
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        const FORMS: &str =
            "write unix:///var/run/docker.sock, a socket path, or tcp://HOST:PORT (plain HTTP)";
        if let Some(path) = s.strip_prefix("unix://") {
            if path.starts_with('/') {
                return Ok(Endpoint::Unix(path.to_owned()));
            }
            return Err(format!(
                "{s:?}: a unix socket needs an absolute path: {FORMS}"
            ));
        }
        if s.starts_with('/') {
            return Ok(Endpoint::Unix(s.to_owned()));
        }
        if let Some(rest) = s
            .strip_prefix("tcp://")
            .or_else(|| s.strip_prefix("http://"))
        {
            let rest = rest.trim_end_matches('/');
            if !rest.is_empty() && !rest.contains('/') {
                return Ok(Endpoint::Http(format!("http://{rest}")));
            }
        }
        Err(format!("{s:?} is not a Docker host I can use: {FORMS}"))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{p}"),
            Endpoint::Http(u) => f.write_str(u),
        }
    }
}

/// A container event the registrar acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The container's id.
    pub id: String,
    /// The action: `start`, `die`, `kill`, `health_status`...
    pub action: String,
    /// For `kill`: the signal number sent.
    pub signal: Option<i32>,
}

/// A connected Engine API client.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
    labels: Vec<String>,
}

/// Errors of Engine calls, as text for the logs.
fn text(e: BollardError) -> String {
    e.to_string()
}

async fn bounded<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, BollardError>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(r) => r.map_err(|e| format!("{what}: {}", text(e))),
        Err(_) => Err(format!("{what}: no answer within {CALL_TIMEOUT:?}")),
    }
}

impl Engine {
    /// Connects to `endpoint` and agrees on an API version (the engine's,
    /// when it is older than the client's). `labels`: only containers with
    /// all of these (`KEY` or `KEY=VALUE`) are seen.
    pub async fn connect(endpoint: &Endpoint, labels: &[String]) -> Result<Engine, String> {
        let timeout = CALL_TIMEOUT.as_secs();
        let docker = match endpoint {
            Endpoint::Unix(path) => {
                Docker::connect_with_unix(path, timeout, bollard::API_DEFAULT_VERSION)
            }
            Endpoint::Http(url) => {
                Docker::connect_with_http(url, timeout, bollard::API_DEFAULT_VERSION)
            }
        }
        .map_err(|e| format!("{endpoint}: {}", text(e)))?;
        let docker = bounded(&format!("{endpoint}: version"), docker.negotiate_version()).await?;
        Ok(Engine {
            docker,
            labels: labels.to_vec(),
        })
    }

    /// Whether the engine answers.
    pub async fn ping(&self) -> Result<(), String> {
        bounded("ping", self.docker.ping()).await.map(|_| ())
    }

    /// The engine host's name.
    pub async fn host_name(&self) -> Result<String, String> {
        let info = bounded("info", self.docker.info()).await?;
        info.name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| "info: the engine gave no host name".to_owned())
    }

    fn filters(&self, extra: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
        let mut filters: HashMap<String, Vec<String>> = HashMap::new();
        if !self.labels.is_empty() {
            filters.insert("label".into(), self.labels.clone());
        }
        for (k, v) in extra {
            filters.entry((*k).into()).or_default().push((*v).into());
        }
        filters
    }

    /// The ids of running (including paused) containers.
    pub async fn running(&self) -> Result<Vec<String>, String> {
        let opts = ListContainersOptions {
            all: false,
            filters: Some(self.filters(&[])),
            ..Default::default()
        };
        let list = bounded("list containers", self.docker.list_containers(Some(opts))).await?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    /// One container; `Ok(None)` when it no longer exists.
    pub async fn inspect(&self, id: &str) -> Result<Option<Container>, String> {
        match tokio::time::timeout(CALL_TIMEOUT, self.docker.inspect_container(id, None)).await {
            Ok(Ok(c)) => Ok(Some(container(c))),
            Ok(Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            })) => Ok(None),
            Ok(Err(e)) => Err(format!("inspect {id}: {}", text(e))),
            Err(_) => Err(format!("inspect {id}: no answer within {CALL_TIMEOUT:?}")),
        }
    }

    /// Container events from `since` (seconds since the epoch, fractions
    /// allowed) on. Unbounded: it ends when the connection does.
    pub fn events(&self, since: &str) -> BoxStream<'static, Result<Event, String>> {
        let opts = EventsOptions {
            since: Some(since.to_owned()),
            until: None,
            filters: Some(self.filters(&[("type", "container")])),
        };
        self.docker
            .events(Some(opts))
            .filter_map(|r| async move {
                match r {
                    Ok(m) => event(m).map(Ok),
                    Err(e) => Some(Err(text(e))),
                }
            })
            .boxed()
    }
}

/// A container event from the engine's message; `None` for those of no
/// interest (`exec_*`, ...).
fn event(m: EventMessage) -> Option<Event> {
    let actor = m.actor?;
    let id = actor.id?;
    let action = m.action?;
    // `health_status: healthy` and the like.
    let action = action.split(':').next().unwrap_or("").trim().to_owned();
    let interesting = matches!(
        action.as_str(),
        "start"
            | "restart"
            | "die"
            | "stop"
            | "kill"
            | "oom"
            | "pause"
            | "unpause"
            | "health_status"
            | "destroy"
            | "rename"
            | "update"
    );
    if !interesting {
        return None;
    }
    let signal = actor
        .attributes
        .as_ref()
        .and_then(|a| a.get("signal"))
        .and_then(|s| s.parse().ok());
    Some(Event { id, action, signal })
}

/// The parts of an inspect the registrar uses.
fn container(c: ContainerInspectResponse) -> Container {
    let state = c.state.unwrap_or_default();
    let config = c.config.unwrap_or_default();
    let net = c.network_settings.unwrap_or_default();
    let health = state.health.and_then(|h| h.status).and_then(|s| match s {
        HealthStatusEnum::STARTING => Some(Health::Starting),
        HealthStatusEnum::HEALTHY => Some(Health::Healthy),
        HealthStatusEnum::UNHEALTHY => Some(Health::Unhealthy),
        HealthStatusEnum::NONE | HealthStatusEnum::EMPTY => None,
    });
    let mut published = Vec::new();
    for (port, bindings) in net.ports.unwrap_or_default() {
        let Some(container_port) = tcp_port(&port) else {
            continue;
        };
        for b in bindings.unwrap_or_default() {
            let host_port = b.host_port.as_deref().and_then(|p| p.parse().ok());
            let host_ip = b.host_ip.as_deref().and_then(|ip| ip.parse().ok());
            if let Some(host_port) = host_port.filter(|&p| p != 0) {
                published.push(Published {
                    container_port,
                    host_ip,
                    host_port,
                });
            }
        }
    }
    published.sort_by_key(|p| (p.container_port, p.host_port, p.host_ip));
    let mut exposed: Vec<u16> = config
        .exposed_ports
        .unwrap_or_default()
        .iter()
        .filter_map(|p| tcp_port(p))
        .collect();
    exposed.sort_unstable();
    exposed.dedup();
    let networks = net
        .networks
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, ep)| {
            let ip: IpAddr = ep
                .ip_address
                .filter(|ip| !ip.is_empty())
                .or(ep.global_ipv6_address.filter(|ip| !ip.is_empty()))?
                .parse()
                .ok()?;
            Some((name, ip))
        })
        .collect();
    Container {
        id: c.id.unwrap_or_default(),
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        labels: config.labels.unwrap_or_default(),
        env: config.env.unwrap_or_default(),
        running: state.running.unwrap_or(false),
        paused: state.paused.unwrap_or(false),
        health,
        published,
        exposed,
        networks,
        stop_signal: config.stop_signal.filter(|s| !s.is_empty()),
    }
}

/// `8080/tcp` -> 8080; other protocols -> `None`.
fn tcp_port(spec: &str) -> Option<u16> {
    let (port, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    (proto == "tcp").then(|| port.parse().ok()).flatten()
}

/// The number of a signal as `docker stop` names it (`SIGTERM`, `TERM`,
/// `15`); `None` when unknown.
pub fn signal_number(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_host_forms() {
        assert_eq!(
            Endpoint::parse("unix:///var/run/docker.sock"),
            Ok(Endpoint::Unix("/var/run/docker.sock".into()))
        );
        assert_eq!(
            Endpoint::parse("/tmp/d.sock"),
            Ok(Endpoint::Unix("/tmp/d.sock".into()))
        );
        assert_eq!(
            Endpoint::parse("tcp://127.0.0.1:2375"),
            Ok(Endpoint::Http("http://127.0.0.1:2375".into()))
        );
        for bad in ["unix://rel.sock", "ssh://me@host", "docker.sock", "tcp://"] {
            let e = Endpoint::parse(bad).expect_err(bad);
            assert!(e.contains("unix:///var/run/docker.sock"), "{bad}: {e}");
        }
    }

    #[test]
    fn signal_names_as_docker_writes_them() {
        assert_eq!(signal_number("SIGTERM"), Some(15));
        assert_eq!(signal_number("TERM"), Some(15));
        assert_eq!(signal_number("sigquit"), Some(3));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number("SIGNOPE"), None);
    }

    #[test]
    fn events_keep_the_action_word_and_signal() {
        let m: EventMessage = serde_json::from_str(
            r#"{"Type":"container","Action":"health_status: healthy","Actor":{"ID":"abc","Attributes":{"name":"x"}}}"#,
        )
        .unwrap();
        assert_eq!(
            event(m),
            Some(Event {
                id: "abc".into(),
                action: "health_status".into(),
                signal: None
            })
        );
        let m: EventMessage = serde_json::from_str(
            r#"{"Type":"container","Action":"kill","Actor":{"ID":"abc","Attributes":{"signal":"15"}}}"#,
        )
        .unwrap();
        assert_eq!(event(m).unwrap().signal, Some(15));
        let m: EventMessage = serde_json::from_str(
            r#"{"Type":"container","Action":"exec_start: /bin/sh -c true","Actor":{"ID":"abc"}}"#,
        )
        .unwrap();
        assert_eq!(event(m), None);
    }

    #[test]
    fn inspect_fields_become_a_container() {
        // The shape of a Docker 20.10 (API 1.41) inspect, trimmed.
        let c: ContainerInspectResponse = serde_json::from_str(
            r#"{"Id":"0123456789abcdef","Name":"/web",
                "State":{"Status":"running","Running":true,"Paused":false,
                         "Health":{"Status":"healthy","FailingStreak":0,"Log":[]}},
                "Config":{"Labels":{"wayfinder.service":"web"},"Env":["A=1"],
                          "ExposedPorts":{"8080/tcp":{},"53/udp":{}},"StopSignal":"SIGQUIT"},
                "NetworkSettings":{"Ports":{"8080/tcp":[{"HostIp":"0.0.0.0","HostPort":"32768"},{"HostIp":"::","HostPort":"32768"}],
                                            "53/udp":null},
                                   "Networks":{"bridge":{"IPAddress":"172.17.0.2"},"none":{"IPAddress":""}}}}"#,
        )
        .unwrap();
        let c = container(c);
        assert_eq!(c.name, "web");
        assert!(c.running && !c.paused);
        assert_eq!(c.health, Some(Health::Healthy));
        assert_eq!(c.exposed, [8080]);
        assert_eq!(c.published.len(), 2);
        assert_eq!(c.published[0].host_port, 32768);
        assert_eq!(c.networks.len(), 1);
        assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
    }
}
