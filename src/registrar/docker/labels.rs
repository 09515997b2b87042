//! What a container asks for: its labels (and, Registrator-style, its
//! environment) read into the registrations it should have. Pure functions
//! of a [`Container`], so every rule is unit tested here.
//!
//! Two label schemes, read side by side:
//!
//! - wayfinder's: `wayfinder.service=NAME` registers one port
//!   (`wayfinder.port`, or the container's only candidate port), with
//!   `wayfinder.weight`, `wayfinder.tags.KEY=VALUE` and
//!   `wayfinder.check=/PATH`;
//! - Registrator's, as labels or environment variables (labels win):
//!   `SERVICE_NAME`, `SERVICE_TAGS`, `SERVICE_IGNORE`, `SERVICE_CHECK_HTTP`
//!   and their per-port forms `SERVICE_<port>_NAME` (...), which take
//!   precedence for that port. Like Registrator's `-explicit` mode, only
//!   ports with a name are registered; a name that applies to several
//!   ports gets `-<port>` appended (Registrator's rule).
//!
//! A port wayfinder's scheme registers is not registered again by
//! Registrator's. `SERVICE_IGNORE` (any value) ignores the whole container,
//! `SERVICE_<port>_IGNORE` that port.
//!
//! Candidate ports are TCP: in the default (external) mode the published
//! ones, addressed as the advertised IP (or the binding's own IP when it is
//! specific) and the host port; in internal mode (`--docker-network`) the
//! exposed and published ones, addressed as the container's IP on that
//! network and the container port.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

/// What the registrar knows of a container (from an inspect).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Container {
    /// Full id.
    pub id: String,
    /// Name, without Docker's leading `/`.
    pub name: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Running (paused or not).
    pub running: bool,
    /// Paused.
    pub paused: bool,
    /// Its HEALTHCHECK's status; `None` without a HEALTHCHECK.
    pub health: Option<Health>,
    /// Published TCP ports.
    pub published: Vec<Published>,
    /// Exposed TCP ports.
    pub exposed: Vec<u16>,
    /// Network name -> the container's IP on it.
    pub networks: BTreeMap<String, IpAddr>,
    /// The signal `docker stop` sends it (a name like `SIGTERM`, or a
    /// number); `None`: SIGTERM.
    pub stop_signal: Option<String>,
}

/// A HEALTHCHECK's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No result yet.
    Starting,
    /// Passing.
    Healthy,
    /// Failing.
    Unhealthy,
}

/// A published TCP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The container's port.
    pub container_port: u16,
    /// The host address it is bound to (`0.0.0.0` or `::` for all).
    pub host_ip: Option<IpAddr>,
    /// The host port.
    pub host_port: u16,
}

/// How registrations are addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Published ports on the host; the IP to advertise (`None`: the
    /// binding's own IP, which must then be specific).
    External {
        /// `--advertise-ip`.
        advertise_ip: Option<IpAddr>,
    },
    /// The container's IP on this network and its own port.
    Internal {
        /// `--docker-network`.
        network: String,
    },
}

/// A registration a container asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// Registration id: the registrar's prefix, the container's short id
    /// and the container port.
    pub id: String,
    /// Service name.
    pub service: String,
    /// Address to register.
    pub address: SocketAddr,
    /// Weight (`None`: the proxy's default).
    pub weight: Option<u32>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Path the registrar checks on the address before registering.
    pub check: Option<String>,
}

/// What a container asks for, and what in its labels could not be used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Registrations, by container port.
    pub wants: Vec<Want>,
    /// One line per label problem (logged when they change).
    pub problems: Vec<String>,
}

impl Container {
    /// Its first 12 characters of id, as `docker ps` shows it.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }

    /// Whether it opts in at all (any wayfinder or Registrator label or
    /// variable naming a service).
    pub fn opts_in(&self) -> bool {
        self.labels.contains_key("wayfinder.service") || !self.registrator().is_empty()
    }

    /// Whether it can take requests now: running, not paused, and healthy
    /// when it has a HEALTHCHECK.
    pub fn serving(&self) -> bool {
        self.running && !self.paused && matches!(self.health, None | Some(Health::Healthy))
    }

    /// Registrator's `SERVICE_*` settings: from the environment, then the
    /// labels (which win), keys lower-cased without the prefix
    /// (`SERVICE_80_NAME` -> `80_name`).
    fn registrator(&self) -> BTreeMap<String, String> {
        let env = self.env.iter().filter_map(|kv| kv.split_once('='));
        let labels = self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        env.chain(labels)
            .filter_map(|(k, v)| {
                let key = k.strip_prefix("SERVICE_")?;
                (!key.is_empty()).then(|| (key.to_ascii_lowercase(), v.to_owned()))
            })
            .collect()
    }
}

/// Registration ids of a container start with this (after the registrar's
/// prefix).
pub fn id_for(prefix: &str, container: &Container, port: u16) -> String {
    format!("{prefix}{}:{port}", container.short_id())
}

/// The registrations `container` asks for (whether or not it is serving:
/// the caller decides when to hold them).
pub fn plan(container: &Container, mode: &Mode, prefix: &str) -> Plan {
    let mut plan = Plan::default();
    let candidates = candidate_ports(container, mode);
    let meta = container.registrator();
    let ignored_all = meta.get("ignore").is_some_and(|v| !v.is_empty());
    if ignored_all {
        return plan;
    }
    let mut taken = BTreeSet::new();

    // wayfinder's labels.
    if let Some(service) = container.labels.get("wayfinder.service") {
        let l = &container.labels;
        let port = match l.get("wayfinder.port") {
            Some(p) => match p.trim().parse::<u16>() {
                Ok(p) if p > 0 && candidates.contains(&p) => Some(p),
                Ok(p) if p > 0 => {
                    plan.problems.push(format!(
                        "wayfinder.port={p}: {}",
                        not_candidate(mode, &candidates)
                    ));
                    None
                }
                _ => {
                    plan.problems
                        .push(format!("wayfinder.port={p:?} is not a port number"));
                    None
                }
            },
            None => match candidates.len() {
                1 => candidates.first().copied(),
                0 => {
                    plan.problems.push(format!(
                        "wayfinder.service={service}: {}",
                        no_candidates(mode)
                    ));
                    None
                }
                _ => {
                    plan.problems.push(format!(
                        "wayfinder.service={service}: several ports ({}); say which with wayfinder.port",
                        list(&candidates)
                    ));
                    None
                }
            },
        };
        let weight = match l.get("wayfinder.weight").map(|w| w.trim().parse::<u32>()) {
            None => Ok(None),
            Some(Ok(w)) if (1..=1000).contains(&w) => Ok(Some(w)),
            Some(_) => Err(format!(
                "wayfinder.weight={:?} is not a weight from 1 to 1000",
                l["wayfinder.weight"]
            )),
        };
        let tags: BTreeMap<String, String> = l
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("wayfinder.tags.")?.to_owned(), v.clone())))
            .filter(|(k, _)| !k.is_empty())
            .collect();
        let check = check_path("wayfinder.check", l.get("wayfinder.check"));
        match (port, weight, check) {
            (Some(port), Ok(weight), Ok(check)) => {
                taken.insert(port);
                match want(container, mode, prefix, port, service, weight, tags, check) {
                    Ok(w) => plan.wants.push(w),
                    Err(e) => plan.problems.push(e),
                }
            }
            (_, w, c) => {
                plan.problems.extend(w.err());
                plan.problems.extend(c.err());
            }
        }
    }

    // Registrator's conventions, port by port.
    for &port in &candidates {
        if taken.contains(&port) {
            continue;
        }
        let specific = |key: &str| meta.get(&format!("{port}_{key}"));
        let get = |key: &str| specific(key).or_else(|| meta.get(key));
        if specific("ignore").is_some_and(|v| !v.is_empty()) {
            continue;
        }
        let Some(name) = get("name").filter(|n| !n.is_empty()) else {
            continue;
        };
        let mut service = name.clone();
        if specific("name").is_none() && candidates.len() > 1 {
            service = format!("{service}-{port}");
        }
        let tags = get("tags")
            .map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| match t.split_once('=') {
                        Some((k, v)) => (k.to_owned(), v.to_owned()),
                        None => (t.to_owned(), String::new()),
                    })
                    .filter(|(k, _)| !k.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let check = match check_path("SERVICE_CHECK_HTTP", get("check_http")) {
            Ok(c) => c,
            Err(e) => {
                plan.problems.push(e);
                continue;
            }
        };
        match want(container, mode, prefix, port, &service, None, tags, check) {
            Ok(w) => plan.wants.push(w),
            Err(e) => plan.problems.push(e),
        }
    }
    plan
}

fn check_path(key: &str, value: Option<&String>) -> Result<Option<String>, String> {
    match value.map(|v| v.trim()) {
        None | Some("") => Ok(None),
        Some(p) if p.starts_with('/') && p.parse::<http::uri::PathAndQuery>().is_ok() => {
            Ok(Some(p.to_owned()))
        }
        Some(p) => Err(format!("{key}={p:?} is not a /PATH (e.g. /healthz)")),
    }
}

#[allow(clippy::too_many_arguments)]
fn want(
    container: &Container,
    mode: &Mode,
    prefix: &str,
    port: u16,
    service: &str,
    weight: Option<u32>,
    tags: BTreeMap<String, String>,
    check: Option<String>,
) -> Result<Want, String> {
    crate::config::check_service_name(service).map_err(|e| format!("port {port}: {e}"))?;
    let address = address(container, mode, port)?;
    Ok(Want {
        id: id_for(prefix, container, port),
        service: service.to_owned(),
        address,
        weight,
        tags,
        check,
    })
}

/// The address of `port` (a candidate port) in `mode`.
fn address(container: &Container, mode: &Mode, port: u16) -> Result<SocketAddr, String> {
    match mode {
        Mode::Internal { network } => container
            .networks
            .get(network)
            .map(|ip| SocketAddr::new(*ip, port))
            .ok_or_else(|| format!("port {port}: not attached to network {network:?}")),
        Mode::External { advertise_ip } => {
            // IPv4 bindings first: Docker publishes on 0.0.0.0 and :: alike.
            let mut bindings: Vec<&Published> = container
                .published
                .iter()
                .filter(|p| p.container_port == port)
                .collect();
            bindings.sort_by_key(|p| !p.host_ip.is_none_or(|ip| ip.is_ipv4()));
            let binding = bindings
                .first()
                .ok_or_else(|| format!("port {port} is not published"))?;
            let ip = match (advertise_ip, binding.host_ip) {
                (Some(ip), _) => *ip,
                (None, Some(ip)) if !ip.is_unspecified() => ip,
                _ => {
                    return Err(format!(
                        "port {port} is published on all host addresses: give --advertise-ip"
                    ))
                }
            };
            Ok(SocketAddr::new(ip, binding.host_port))
        }
    }
}

/// The ports a service may use, in order.
fn candidate_ports(container: &Container, mode: &Mode) -> Vec<u16> {
    let mut ports: BTreeSet<u16> = container
        .published
        .iter()
        .filter(|p| p.host_port != 0)
        .map(|p| p.container_port)
        .collect();
    if matches!(mode, Mode::Internal { .. }) {
        ports.extend(container.exposed.iter().copied());
    }
    ports.into_iter().collect()
}

fn no_candidates(mode: &Mode) -> &'static str {
    match mode {
        Mode::External { .. } => "no published TCP port (publish one with -p)",
        Mode::Internal { .. } => "no exposed or published TCP port",
    }
}

fn not_candidate(mode: &Mode, candidates: &[u16]) -> String {
    let what = match mode {
        Mode::External { .. } => "published",
        Mode::Internal { .. } => "exposed or published",
    };
    if candidates.is_empty() {
        format!("not {what}; {}", no_candidates(mode))
    } else {
        format!("not {what} (the {what} ones: {})", list(candidates))
    }
}

fn list(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "docker:h1:";

    fn ext() -> Mode {
        Mode::External {
            advertise_ip: Some("10.0.0.9".parse().unwrap()),
        }
    }

    fn container(labels: &[(&str, &str)], published: &[(u16, u16)]) -> Container {
        Container {
            id: "0123456789abcdef0123".into(),
            name: "web".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            running: true,
            published: published
                .iter()
                .flat_map(|&(c, h)| {
                    ["0.0.0.0", "::"].map(|ip| Published {
                        container_port: c,
                        host_ip: Some(ip.parse().unwrap()),
                        host_port: h,
                    })
                })
                .collect(),
            ..Container::default()
        }
    }

    fn services(plan: &Plan) -> Vec<(String, String, String)> {
        plan.wants
            .iter()
            .map(|w| (w.service.clone(), w.address.to_string(), w.id.clone()))
            .collect()
    }

    #[test]
    fn wayfinder_labels_register_the_only_published_port() {
        let c = container(
            &[
                ("wayfinder.service", "api"),
                ("wayfinder.weight", "3"),
                ("wayfinder.tags.version", "2"),
                ("wayfinder.check", "/healthz"),
            ],
            &[(8080, 32768)],
        );
        let plan = plan(&c, &ext(), PREFIX);
        assert_eq!(plan.problems, Vec::<String>::new());
        assert_eq!(
            plan.wants,
            vec![Want {
                id: "docker:h1:0123456789ab:8080".into(),
                service: "api".into(),
                address: "10.0.0.9:32768".parse().unwrap(),
                weight: Some(3),
                tags: [("version".to_owned(), "2".to_owned())].into(),
                check: Some("/healthz".into()),
            }]
        );
        assert!(c.opts_in());
    }

    #[test]
    fn no_labels_no_registration() {
        let c = container(&[("maintainer", "me")], &[(80, 32768)]);
        assert!(!c.opts_in());
        assert_eq!(plan(&c, &ext(), PREFIX), Plan::default());
    }

    #[test]
    fn several_ports_need_wayfinder_port() {
        let c = container(&[("wayfinder.service", "api")], &[(80, 1001), (443, 1002)]);
        let p = plan(&c, &ext(), PREFIX);
        assert!(p.wants.is_empty());
        assert_eq!(
            p.problems,
            ["wayfinder.service=api: several ports (80, 443); say which with wayfinder.port"]
        );
        let c = container(
            &[("wayfinder.service", "api"), ("wayfinder.port", "443")],
            &[(80, 1001), (443, 1002)],
        );
        assert_eq!(
            services(&plan(&c, &ext(), PREFIX)),
            [(
                "api".into(),
                "10.0.0.9:1002".into(),
                "docker:h1:0123456789ab:443".into()
            )]
        );
        let c = container(
            &[("wayfinder.service", "api"), ("wayfinder.port", "22")],
            &[(80, 1001)],
        );
        assert_eq!(
            plan(&c, &ext(), PREFIX).problems,
            ["wayfinder.port=22: not published (the published ones: 80)"]
        );
    }

    #[test]
    fn bad_labels_are_problems_not_registrations() {
        for (k, v, problem) in [
            (
                "wayfinder.weight",
                "0",
                "wayfinder.weight=\"0\" is not a weight from 1 to 1000",
            ),
            (
                "wayfinder.weight",
                "x",
                "wayfinder.weight=\"x\" is not a weight from 1 to 1000",
            ),
            (
                "wayfinder.check",
                "healthz",
                "wayfinder.check=\"healthz\" is not a /PATH (e.g. /healthz)",
            ),
            (
                "wayfinder.port",
                "http",
                "wayfinder.port=\"http\" is not a port number",
            ),
        ] {
            let c = container(&[("wayfinder.service", "api"), (k, v)], &[(80, 1001)]);
            let p = plan(&c, &ext(), PREFIX);
            assert!(p.wants.is_empty(), "{k}={v}");
            assert_eq!(p.problems, [problem], "{k}={v}");
        }
        let c = container(&[("wayfinder.service", "Bad.Name")], &[(80, 1001)]);
        let p = plan(&c, &ext(), PREFIX);
        assert!(p.wants.is_empty());
        assert!(
            p.problems[0].contains("invalid service name \"Bad.Name\""),
            "{p:?}"
        );
        let c = container(&[("wayfinder.service", "api")], &[]);
        assert_eq!(
            plan(&c, &ext(), PREFIX).problems,
            ["wayfinder.service=api: no published TCP port (publish one with -p)"]
        );
    }

    #[test]
    fn registrator_names_tags_and_ports() {
        // One port: SERVICE_NAME as is; tags split on commas.
        let c = container(
            &[
                ("SERVICE_NAME", "web"),
                ("SERVICE_TAGS", "primary, version=2"),
            ],
            &[(80, 1001)],
        );
        let p = plan(&c, &ext(), PREFIX);
        assert_eq!(
            services(&p),
            [(
                "web".into(),
                "10.0.0.9:1001".into(),
                "docker:h1:0123456789ab:80".into()
            )]
        );
        assert_eq!(
            p.wants[0].tags,
            [
                ("primary".to_owned(), String::new()),
                ("version".to_owned(), "2".to_owned())
            ]
            .into()
        );
        // Several ports: NAME-PORT, unless a port has its own name; a
        // port can be ignored.
        let c = container(
            &[
                ("SERVICE_NAME", "web"),
                ("SERVICE_443_NAME", "tls"),
                ("SERVICE_9000_IGNORE", "yes"),
            ],
            &[(80, 1001), (443, 1002), (9000, 1003)],
        );
        assert_eq!(
            services(&plan(&c, &ext(), PREFIX)),
            [
                (
                    "web-80".into(),
                    "10.0.0.9:1001".into(),
                    "docker:h1:0123456789ab:80".into()
                ),
                (
                    "tls".into(),
                    "10.0.0.9:1002".into(),
                    "docker:h1:0123456789ab:443".into()
                ),
            ]
        );
        // Per-port names only: the other ports are not registered.
        let c = container(&[("SERVICE_80_NAME", "web")], &[(80, 1001), (443, 1002)]);
        assert_eq!(services(&plan(&c, &ext(), PREFIX)).len(), 1);
        // SERVICE_IGNORE ignores the whole container, wayfinder's labels too.
        let c = container(
            &[
                ("SERVICE_NAME", "web"),
                ("SERVICE_IGNORE", "1"),
                ("wayfinder.service", "api"),
            ],
            &[(80, 1001)],
        );
        assert_eq!(plan(&c, &ext(), PREFIX), Plan::default());
    }

    #[test]
    fn registrator_settings_come_from_the_environment_too_labels_win() {
        let mut c = container(&[("SERVICE_TAGS", "fromlabel")], &[(80, 1001)]);
        c.env = vec![
            "SERVICE_NAME=web".into(),
            "SERVICE_TAGS=fromenv".into(),
            "SERVICE_CHECK_HTTP=/ping".into(),
            "PATH=/bin".into(),
        ];
        assert!(c.opts_in());
        let p = plan(&c, &ext(), PREFIX);
        assert_eq!(p.wants[0].service, "web");
        assert_eq!(
            p.wants[0].tags,
            [("fromlabel".to_owned(), String::new())].into()
        );
        assert_eq!(p.wants[0].check.as_deref(), Some("/ping"));
    }

    #[test]
    fn wayfinder_takes_its_port_registrator_the_others() {
        let c = container(
            &[
                ("wayfinder.service", "api"),
                ("wayfinder.port", "80"),
                ("SERVICE_NAME", "web"),
            ],
            &[(80, 1001), (443, 1002)],
        );
        assert_eq!(
            services(&plan(&c, &ext(), PREFIX)),
            [
                (
                    "api".into(),
                    "10.0.0.9:1001".into(),
                    "docker:h1:0123456789ab:80".into()
                ),
                (
                    "web-443".into(),
                    "10.0.0.9:1002".into(),
                    "docker:h1:0123456789ab:443".into()
                ),
            ]
        );
    }

    #[test]
    fn external_addresses_use_the_advertised_ip_or_a_specific_binding() {
        let mut c = container(&[("wayfinder.service", "api")], &[]);
        c.published = vec![Published {
            container_port: 80,
            host_ip: Some("127.0.0.1".parse().unwrap()),
            host_port: 4000,
        }];
        let none = Mode::External { advertise_ip: None };
        assert_eq!(
            plan(&c, &none, PREFIX).wants[0].address.to_string(),
            "127.0.0.1:4000"
        );
        assert_eq!(
            plan(&c, &ext(), PREFIX).wants[0].address.to_string(),
            "10.0.0.9:4000"
        );
        let c = container(&[("wayfinder.service", "api")], &[(80, 4000)]);
        assert_eq!(
            plan(&c, &none, PREFIX).problems,
            ["port 80 is published on all host addresses: give --advertise-ip"]
        );
    }

    #[test]
    fn internal_mode_uses_the_network_ip_and_exposed_ports() {
        let mut c = container(&[("wayfinder.service", "api")], &[]);
        c.exposed = vec![8080];
        c.networks
            .insert("backend".into(), "172.20.0.5".parse().unwrap());
        let internal = Mode::Internal {
            network: "backend".into(),
        };
        assert_eq!(
            services(&plan(&c, &internal, PREFIX)),
            [(
                "api".into(),
                "172.20.0.5:8080".into(),
                "docker:h1:0123456789ab:8080".into()
            )]
        );
        let other = Mode::Internal {
            network: "frontend".into(),
        };
        assert_eq!(
            plan(&c, &other, PREFIX).problems,
            ["port 8080: not attached to network \"frontend\""]
        );
        // Exposed but not published: not a candidate in external mode.
        assert!(plan(&c, &ext(), PREFIX).wants.is_empty());
    }

    #[test]
    fn serving_means_running_unpaused_and_healthy_if_checked() {
        let mut c = container(&[], &[]);
        assert!(c.serving());
        c.health = Some(Health::Starting);
        assert!(!c.serving());
        c.health = Some(Health::Unhealthy);
        assert!(!c.serving());
        c.health = Some(Health::Healthy);
        assert!(c.serving());
        c.paused = true;
        assert!(!c.serving());
        c.paused = false;
        c.running = false;
        assert!(!c.serving());
    }
}
