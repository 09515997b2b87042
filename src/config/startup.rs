//! [`Startup`]: the settings the process reads once, when it starts (the
//! listeners, the admin API, where registrations are kept, the runtime,
//! the connection timeouts and limits of the server, how requests are
//! rewritten, HTTP/2). A reload that changes one of them applies it at the
//! next restart; [`Startup::changed_keys`] names which.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::ser::SerializeStruct;
use serde::Serialize;
use serde_json::Value;

use super::serialize;

/// The settings read only at start, by table as in the file. The rest of
/// [`super::Config`] is what a reload applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Startup {
    /// Where clients connect.
    pub listen: Vec<SocketAddr>,
    /// `[admin]`.
    pub admin: AdminSettings,
    /// `[registry]`: where registrations are kept.
    pub registry: RegistrationSettings,
    /// `[runtime]`.
    pub runtime: Runtime,
    /// `[timeouts]` of client and pooled upstream connections.
    pub timeouts: ConnectionTimeouts,
    /// `[limits]`.
    pub limits: Limits,
    /// `[proxy]`: how forwarded requests and responses are rewritten.
    pub proxy: ForwardingSettings,
    /// `[http2]`.
    pub http2: Http2Settings,
    /// `[[tls]]`: the TLS listeners (their certificate files are read
    /// again when they change, without a restart).
    pub tls: Vec<TlsListener>,
    /// `[metrics]`.
    pub metrics: MetricsSettings,
    /// `[access_log]`.
    pub access_log: AccessLogSettings,
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetricsSettings {
    /// Whether requests are counted (`GET /metrics` answers either way).
    pub enabled: bool,
}

/// `[access_log]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessLogSettings {
    /// Whether requests are logged.
    pub enabled: bool,
    /// The file lines are appended to; `None`: standard output.
    #[serde(serialize_with = "serialize::log_path")]
    pub path: Option<PathBuf>,
    /// How lines are written.
    pub format: AccessLogFormat,
    /// Lines queued for the writer before new ones are dropped.
    pub queue: usize,
}

/// `access_log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// Common Log Format fields, then `key=value` pairs.
    Text,
    /// JSON lines.
    Json,
}

/// One `[[tls]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsListener {
    /// Where it listens.
    pub listen: Vec<SocketAddr>,
    /// Its certificates; the first is served when no other matches the
    /// client's server name.
    pub certificates: Vec<crate::tls::CertFiles>,
}

impl Startup {
    /// The keys whose values differ between `self` and `other`, as the file
    /// names them (`listen`, `limits.max_connections`, `registry.etcd`):
    /// tables in file order, keys within a table alphabetically. Every key
    /// of every table is compared, so a setting added to these tables is
    /// covered without being listed anywhere.
    pub(crate) fn changed_keys(&self, other: &Startup) -> Vec<String> {
        let mut out = Vec::new();
        for ((section, a), (_, b)) in self.tables().into_iter().zip(other.tables()) {
            match (&a, &b) {
                (Value::Object(at), Value::Object(bt)) => {
                    for (key, v) in at {
                        let name = format!("{section}.{key}");
                        if bt.get(key) != Some(v) || self.secret_differs(other, &name) {
                            out.push(name);
                        }
                    }
                }
                _ if a != b => out.push(section.to_owned()),
                _ => {}
            }
        }
        out
    }

    /// Each table (and `listen`) by its name in the file, in file order.
    fn tables(&self) -> [(&'static str, Value); 11] {
        // No `..`: a new field is a compile error here until it is listed.
        let Startup {
            listen,
            admin,
            registry,
            runtime,
            timeouts,
            limits,
            proxy,
            http2,
            tls,
            metrics,
            access_log,
        } = self;
        fn v<T: Serialize>(x: &T) -> Value {
            serde_json::to_value(x).expect("settings serialize")
        }
        [
            ("listen", v(listen)),
            ("admin", v(admin)),
            ("registry", v(registry)),
            ("runtime", v(runtime)),
            ("timeouts", v(timeouts)),
            ("limits", v(limits)),
            ("proxy", v(proxy)),
            ("http2", v(http2)),
            ("tls", v(tls)),
            ("metrics", v(metrics)),
            ("access_log", v(access_log)),
        ]
    }

    /// Whether the secret under `key` differs: secrets serialize redacted,
    /// so their values are compared here.
    fn secret_differs(&self, other: &Startup, key: &str) -> bool {
        match key {
            "admin.token" => self.admin.token != other.admin.token,
            "registry.etcd" => self.registry.etcd != other.registry.etcd,
            "registry.gossip" => self.registry.gossip != other.registry.gossip,
            "registry.serf" => self.registry.serf != other.registry.serf,
            _ => false,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminSettings {
    /// The admin API listener; `None` when disabled (`"off"`).
    #[serde(serialize_with = "serialize::admin_listen")]
    pub listen: Option<SocketAddr>,
    /// Bearer token that admin calls must carry (the mutating ones, or all
    /// but `/healthz` and `/readyz` with `auth_reads`), if set. With
    /// `token_env`, the variable's value (`None` when only checked with
    /// [`super::Config::check`] and the variable is not set). Serializes
    /// redacted.
    #[serde(serialize_with = "serialize::secret")]
    pub token: Option<String>,
    /// `admin.token_env`: the environment variable the token is read from.
    pub token_env: Option<String>,
    /// `admin.auth_reads`: reads need the token too.
    pub auth_reads: bool,
}

/// The `[registry]` settings read at start: where registrations are kept
/// and the TTL of those that name none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistrationSettings {
    /// Where the registration API's instances are saved, if anywhere.
    pub state_file: Option<PathBuf>,
    /// TTL of registrations that name none.
    #[serde(serialize_with = "serialize::duration")]
    pub default_ttl: Duration,
    /// `[registry.etcd]`: the shared registry, when several proxies share one.
    pub etcd: Option<EtcdSettings>,
    /// `[registry.gossip]`: the gossip fleet this proxy is a member of.
    pub gossip: Option<super::GossipSettings>,
    /// `[registry.serf]`: the Serf cluster this proxy follows.
    pub serf: Option<super::SerfSettings>,
}

/// `[registry.etcd]`: etcd (v3, through its JSON gateway) as the registry
/// shared by several proxies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EtcdSettings {
    /// Client URLs (`http://host:port`), tried in order.
    #[serde(serialize_with = "serialize::uris")]
    pub endpoints: Vec<http::Uri>,
    /// Key prefix, starting and ending with `/`.
    pub prefix: String,
    /// User and password for etcd authentication, when enabled there.
    pub auth: Option<EtcdAuth>,
    /// TCP connect to an endpoint.
    #[serde(serialize_with = "serialize::duration")]
    pub dial_timeout: Duration,
    /// One etcd call (not the long-lived watch).
    #[serde(serialize_with = "serialize::duration")]
    pub request_timeout: Duration,
}

/// etcd credentials. Neither `Debug` nor `Serialize` shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdAuth {
    /// The etcd user.
    pub username: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAuth")
            .field("username", &self.username)
            .field("password", &serialize::REDACTED)
            .finish()
    }
}

impl Serialize for EtcdAuth {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("EtcdAuth", 2)?;
        m.serialize_field("username", &self.username)?;
        m.serialize_field("password", serialize::REDACTED)?;
        m.end()
    }
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Runtime {
    /// Tokio worker threads; `None` means one per available core.
    pub worker_threads: Option<usize>,
}

/// The `[timeouts]` of connections: client connections (request heads and
/// bodies, writes), pooled upstream connections, and the drain at
/// shutdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionTimeouts {
    /// Waiting for a complete request head from a client. The clock starts
    /// when the connection starts waiting for a request, so this also closes
    /// HTTP/1 keep-alive connections that stay idle for longer.
    #[serde(serialize_with = "serialize::duration")]
    pub client_header: Duration,
    /// How long an idle pooled upstream connection is kept before closing.
    #[serde(serialize_with = "serialize::duration")]
    pub upstream_idle: Duration,
    /// How long shutdown waits for in-flight requests before exiting.
    #[serde(serialize_with = "serialize::duration")]
    pub shutdown_drain: Duration,
    /// Longest pause while a client sends a request body.
    #[serde(serialize_with = "serialize::duration")]
    pub client_body: Duration,
    /// Longest a write to a client may make no progress.
    #[serde(serialize_with = "serialize::duration")]
    pub client_send: Duration,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Largest request head (request line and headers) accepted, in bytes.
    pub max_header_bytes: usize,
    /// Most client connections served at once; further clients wait in the
    /// kernel's accept backlog.
    pub max_connections: usize,
    /// Most idle pooled upstream connections kept per instance.
    pub max_idle_per_instance: usize,
    /// Longest request target accepted, in bytes.
    pub max_uri_bytes: usize,
}

/// The `[proxy]` settings of request and response rewriting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForwardingSettings {
    /// The pseudonym written into `Via`.
    pub via: String,
    /// Whether responses carry `x-wayfinder-debug` (which instance served,
    /// which attempts failed).
    pub debug_header: bool,
    /// Whether responses carry `x-wayfinder-snapshot: VERSION; age=MS`.
    pub snapshot_header: bool,
    /// Peers whose forwarding headers are kept.
    pub trusted_proxies: Vec<Cidr>,
    /// Whether the proxy writes an RFC 7239 `Forwarded` header.
    pub forwarded: bool,
    /// Whether plain HTTP/1.1 takes the fast path.
    pub fast_path: bool,
    /// Whether requests get an id (kept or made), forwarded and returned.
    pub request_id: bool,
    /// The header carrying it.
    pub request_id_header: String,
}

/// An address block: `10.0.0.0/8`, `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}/{}", self.addr, self.prefix))
    }
}

impl std::str::FromStr for Cidr {
    type Err = ();

    /// `ADDR/PREFIX`, or a single address.
    fn from_str(s: &str) -> Result<Cidr, ()> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| ())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or(())?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is inside the block (IPv4-mapped IPv6 addresses count
    /// as their IPv4 address).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `[http2]`: limits and timers of HTTP/2 client connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Http2Settings {
    /// Streams a client may have open at once.
    pub max_concurrent_streams: u32,
    /// PING interval.
    #[serde(serialize_with = "serialize::duration")]
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered.
    #[serde(serialize_with = "serialize::duration")]
    pub keepalive_timeout: Duration,
    /// A connection with no open stream for this long is closed.
    #[serde(serialize_with = "serialize::duration")]
    pub idle_timeout: Duration,
    /// Streams reset by the client before being handled, at once.
    pub max_pending_reset_streams: usize,
    /// Streams reset for protocol errors before the connection closes.
    pub max_local_error_resets: usize,
    /// Streams opened at once on one HTTP/2 connection to an instance;
    /// past it, another connection is opened.
    pub upstream_max_streams: usize,
    /// HTTP/2 connections opened to one instance; when all are at
    /// `upstream_max_streams`, new streams go to the least busy one.
    pub upstream_max_connections: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_util::parse;

    #[test]
    fn cidr_blocks() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x", "10.0.0.0/", "::1/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    fn changed(a: &str, b: &str) -> Vec<String> {
        parse(a)
            .unwrap()
            .startup
            .changed_keys(&parse(b).unwrap().startup)
    }

    #[test]
    fn changed_keys_names_every_changed_setting_as_the_file_does() {
        assert!(changed("", "").is_empty());
        assert_eq!(
            changed(
                "",
                "listen = [\"127.0.0.1:1\"]\n[proxy]\nvia = \"x\"\n[limits]\nmax_connections = 5\n"
            ),
            ["listen", "limits.max_connections", "proxy.via"]
        );
        // Settings a reload applies are not named.
        assert!(changed(
            "",
            "[timeouts]\nconnect = \"1s\"\npre_stop = \"1s\"\n[proxy]\nmax_attempts = 2\n"
        )
        .is_empty());
        // Settings read at start that no hand-kept list named before.
        assert_eq!(
            changed(
                "",
                "[proxy]\ntrusted_proxies = [\"10.0.0.0/8\"]\nforwarded = true\nfast_path = false\n\
                 [timeouts]\nclient_body = \"1s\"\nclient_send = \"1s\"\n\
                 [limits]\nmax_uri_bytes = 4096\n[http2]\nidle_timeout = \"1s\"\n"
            ),
            [
                "timeouts.client_body",
                "timeouts.client_send",
                "limits.max_uri_bytes",
                "proxy.fast_path",
                "proxy.forwarded",
                "proxy.trusted_proxies",
                "http2.idle_timeout",
            ]
        );
    }

    #[test]
    fn changed_secrets_are_named_though_they_serialize_redacted() {
        assert_eq!(
            changed(
                "[admin]\ntoken = \"12345678\"\n",
                "[admin]\ntoken = \"87654321\"\n"
            ),
            ["admin.token"]
        );
        let etcd = |password: &str| {
            format!(
                "[registry.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n\
                 username = \"u\"\npassword = \"{password}\"\n"
            )
        };
        assert_eq!(changed(&etcd("one"), &etcd("two")), ["registry.etcd"]);
    }
}
