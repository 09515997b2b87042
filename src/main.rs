//! The `wayfinder` command: parses arguments, calls the library (`app`,
//! `registrar`, `demo`) and turns the outcome into messages and an exit
//! code. Everything else (logging, the runtime, signals) lives in the
//! library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use wayfinder::app::{logging, signals};
use wayfinder::config::Config;
use wayfinder::registrar::{Check, Options};

/// `wayfinder --version`: the version, the commit it was built from
/// ("unknown" outside a git checkout) and the build profile.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WAYFINDER_COMMIT"),
    ", ",
    env!("WAYFINDER_PROFILE"),
    " build)"
);

/// Exit code for a command line that cannot run (clap's, for usage errors).
const USAGE_ERROR: u8 = 2;

/// A service-discovery load-balancing reverse proxy.
#[derive(Debug, Parser)]
#[command(version = VERSION, about)]
struct Cli {
    /// Log level when RUST_LOG is not set: error, warn (or warning), info,
    /// debug, trace or off; or filter directives such as
    /// `info,wayfinder::health=debug`. RUST_LOG, when set, takes the same
    /// syntax. An unknown level is refused (exit 2).
    #[arg(long, global = true, default_value = "info", value_name = "LEVEL", value_parser = parse_log_filter)]
    log_level: String,
    /// Log line format: `text` (human-readable; colour only on a
    /// terminal), `json` (one JSON object per line, for log shippers) or
    /// `journald` (`<N>` priority prefixes and no timestamp, for systemd's
    /// journal, which adds its own).
    #[arg(
        long,
        global = true,
        default_value = "text",
        value_name = "FORMAT",
        env = "WAYFINDER_LOG_FORMAT"
    )]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy with a config file until SIGTERM or SIGINT, then report
    /// not ready for timeouts.pre_stop while still serving, and drain; a
    /// second signal exits at once. The file is watched and reloaded on
    /// change or SIGHUP. With --handoff-socket, SIGUSR2 starts a hot
    /// restart (below).
    #[command(after_help = RUN_AFTER_HELP)]
    Run {
        /// The config file.
        #[arg(long, short, default_value = "config/wayfinder.toml")]
        config: PathBuf,
        /// Listen on this unix socket for a successor process (`wayfinder
        /// run --takeover PATH`) to take over the listeners and the
        /// registrations kept in memory; this process then stops accepting,
        /// drains and exits 0.
        #[arg(long, value_name = "PATH")]
        handoff_socket: Option<PathBuf>,
        /// Take over the listening sockets and registrations of the
        /// wayfinder running with `--handoff-socket PATH`, then tell it to
        /// drain: an upgrade or restart without refusing a connection. Fails
        /// (exit 1) when nothing answers there within 10s.
        #[arg(long, value_name = "PATH")]
        takeover: Option<PathBuf>,
    },
    /// Validate a config file and exit: 0 when valid (warnings on stderr), 1
    /// with every error (file:line:column: key: message; at most 20) when
    /// not. Environment variables it names are checked by name, not value.
    Check {
        /// The config file.
        #[arg(long, short, default_value = "config/wayfinder.toml")]
        config: PathBuf,
    },
    /// Keep a service registered with a proxy while it is healthy (third-party
    /// registration); optionally start it: `wayfinder register ... -- CMD ARGS`.
    #[command(after_help = REGISTER_AFTER_HELP)]
    Register(Box<RegisterArgs>),
    /// Run the built-in example config with demo instances on loopback and
    /// show requests rotating between them.
    Demo {
        /// Proxy listen address (default: the example config's 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Make a local certificate authority and a server certificate signed by
    /// it (PEM: ca.crt, server.crt, server.key) for trying TLS listeners on
    /// this machine; clients trust ca.crt. Not for production.
    Cert {
        /// Directory for the files (created if needed).
        #[arg(long, default_value = "config/tls")]
        out: PathBuf,
        /// Names the certificate is valid for (DNS names, *.wildcards, IPs).
        #[arg(long = "name", default_values = ["localhost", "127.0.0.1"])]
        names: Vec<String>,
    },
    /// Print the running proxy's services and instances with their state
    /// (health, ejection, drain, weight, in-flight requests...), its
    /// sources and its snapshot, from the admin API.
    Status(StatusArgs),
    /// Internal: how `wayfinder register` starts its command (see
    /// `wayfinder::registrar::exec_child`).
    #[command(name = "register-exec", hide = true)]
    RegisterExec {
        /// The registrar's PID: the command is not started when it is gone.
        #[arg(long)]
        parent: u32,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// `wayfinder run --help`, after the options.
const RUN_AFTER_HELP: &str = "\
Hot restart (upgrade the binary, or apply settings that need a restart):
  wayfinder run -c wayfinder.toml --handoff-socket /run/wayfinder/handoff.sock      # running
  wayfinder run -c wayfinder.toml --takeover /run/wayfinder/handoff.sock \\
                                  --handoff-socket /run/wayfinder/handoff.sock      # successor
The successor receives the listening sockets (proxy, TLS, admin) over the unix socket, with the
registrations made through the admin API (and their TTLs) and the operator's drains; it binds
only listeners its config adds. Once it serves, the previous process stops accepting, closes
each connection after its next response, drains (timeouts.shutdown_drain) and exits 0. If the
successor fails to start, the previous one keeps serving. Not with [registry.gossip].

SIGUSR2 makes a process started with --handoff-socket start its successor itself (the binary at
the same path, the same arguments, --takeover). Under systemd (NOTIFY_SOCKET set) each process
sends READY=1 and MAINPID= once it serves: Type=notify, NotifyAccess=all, and
ExecReload=/bin/kill -USR2 $MAINPID make `systemctl reload` a hot restart.";

/// `wayfinder register --help`, after the options.
const REGISTER_AFTER_HELP: &str = "\
Signals: SIGTERM, SIGINT and SIGQUIT drain, deregister, then stop the command (SIGTERM to its
process group, SIGKILL after --stop-timeout). SIGHUP is passed on to the command's process group.

Exit code: 0 after a stop it was asked for when the command exited 0 or of that SIGTERM; the
command's code (128 + signal) when it exits by itself or had to be killed; 1 when the registry
refuses the registration for good (400, 401, 403, 404: not retried); 2 for a bad command line.

With --docker: SIGTERM, SIGINT and SIGQUIT stop it and leave the registrations to their TTL (a
registrar started within it takes them over); SIGHUP lists the containers again and reconciles.

With --gossip: joins the proxies' gossip fleet ([registry.gossip]) instead of calling an admin API
and publishes the instance while its check passes; SIGTERM, SIGINT and SIGQUIT publish it draining,
wait --drain-timeout, then leave the fleet (every proxy removes it) and exit 0.";

#[derive(Debug, clap::Args)]
struct RegisterArgs {
    /// The proxy's admin API: http://HOST:PORT.
    #[arg(long, default_value = "http://127.0.0.1:9900", value_parser = parse_registry)]
    registry: http::Uri,
    /// Service name.
    #[arg(long, required_unless_present = "docker")]
    service: Option<String>,
    /// The instance's address (IP:PORT).
    #[arg(long, required_unless_present = "docker")]
    address: Option<std::net::SocketAddr>,
    /// Instance id (default: the address).
    #[arg(long)]
    id: Option<String>,
    /// HTTP health check, GET; 2xx/3xx passes. Either a URL,
    /// http://HOST:PORT/PATH, or a /PATH on --address.
    #[arg(long, conflicts_with = "check_tcp", value_parser = parse_check)]
    check: Option<CheckTarget>,
    /// Check by connecting to --address.
    #[arg(long)]
    check_tcp: bool,
    /// TTL to register with; heartbeats every third of it.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
    /// Tag as KEY=VALUE (repeatable).
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// Bearer token for the admin API (or WAYFINDER_TOKEN).
    #[arg(long, env = "WAYFINDER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Longest wait for in-flight requests before deregistering on stop.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: std::time::Duration,
    /// Longest wait for the command to exit after SIGTERM when stopping;
    /// then its process group gets SIGKILL.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    stop_timeout: std::time::Duration,
    /// The service to start and watch, after `--`.
    #[arg(last = true)]
    command: Vec<String>,
    #[command(flatten)]
    gossip: GossipArgs,
    #[command(flatten)]
    docker: wayfinder::registrar::docker::DockerArgs,
}

/// `wayfinder status`.
#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// The proxy's admin API: http://HOST:PORT.
    #[arg(long, default_value = "http://127.0.0.1:9900", value_parser = parse_registry)]
    admin: http::Uri,
    /// Print the admin API's answers as one JSON object (`status`,
    /// `services`, `sources`) instead of the table.
    #[arg(long)]
    json: bool,
    /// Bearer token for the admin API (or WAYFINDER_TOKEN), needed with
    /// `admin.auth_reads`.
    #[arg(long, env = "WAYFINDER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Longest wait for each answer.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

/// `wayfinder register --gossip`: join the gossip fleet instead of calling
/// an admin API.
#[derive(Debug, clap::Args)]
struct GossipArgs {
    /// Join the gossip fleet ([registry.gossip] of the proxies) and publish
    /// the instance as this member's state; --registry and --token are not
    /// used. A command after `--` is started and stopped as without it.
    #[arg(long, conflicts_with = "docker")]
    gossip: bool,
    /// UDP IP:PORT this member gossips on.
    #[arg(long, requires = "gossip", default_value = "127.0.0.1:7950")]
    gossip_bind: std::net::SocketAddr,
    /// IP:PORT the other members reach this one at (default: --gossip-bind).
    #[arg(long, requires = "gossip")]
    gossip_advertise: Option<std::net::SocketAddr>,
    /// A seed member, HOST:PORT (repeatable).
    #[arg(long = "join", requires = "gossip")]
    join: Vec<String>,
    /// The fleet's cluster name.
    #[arg(long, requires = "gossip", default_value = "wayfinder")]
    cluster: String,
    /// The fleet's shared secret (or WAYFINDER_GOSSIP_SECRET).
    #[arg(
        long,
        requires = "gossip",
        env = "WAYFINDER_GOSSIP_SECRET",
        hide_env_values = true
    )]
    gossip_secret: Option<String>,
    /// How soon the other members declare this one dead once it stops
    /// (as the proxies' registry.gossip.failure_detection).
    #[arg(long, requires = "gossip", default_value = "4s", value_parser = humantime::parse_duration)]
    failure_detection: std::time::Duration,
    /// Time between gossip rounds (default and longest: a sixth of --failure-detection).
    #[arg(long, requires = "gossip", value_parser = humantime::parse_duration)]
    gossip_interval: Option<std::time::Duration>,
    /// This member's name (default: SERVICE/ID@ADVERTISE).
    #[arg(long, requires = "gossip")]
    member_name: Option<String>,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// Where `--check` points: a full URL, or a path on `--address`.
#[derive(Debug, Clone)]
enum CheckTarget {
    Url(http::Uri),
    Path(String),
}

/// The accepted forms of `--check`, for its error messages.
const CHECK_FORMS: &str =
    "write a URL, http://HOST:PORT/PATH (e.g. http://127.0.0.1:9001/healthz), \
     or a /PATH to check on --address (e.g. /healthz); --check-tcp checks by connecting";

fn parse_check(s: &str) -> Result<CheckTarget, String> {
    if s.starts_with('/') {
        return match s.parse::<http::uri::PathAndQuery>() {
            Ok(p) => Ok(CheckTarget::Path(p.as_str().to_owned())),
            Err(e) => Err(format!("{s:?} is not a usable path ({e}): {CHECK_FORMS}")),
        };
    }
    parse_http_url(s, CHECK_FORMS).map(CheckTarget::Url)
}

/// `--registry`: http://HOST:PORT, nothing after it but an optional `/`.
fn parse_registry(s: &str) -> Result<http::Uri, String> {
    const FORMS: &str = "write the admin API as http://HOST:PORT (e.g. http://127.0.0.1:9900)";
    let uri = parse_http_url(s, FORMS)?;
    match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("/") => Ok(uri),
        Some(rest) => Err(format!(
            "{s:?} has a path ({rest}); the admin API's paths are fixed: {FORMS}"
        )),
    }
}

/// An `http://HOST[:PORT][/PATH]` URL; anything else is refused with an
/// error that names the accepted `forms`.
fn parse_http_url(s: &str, forms: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = s
        .parse()
        .map_err(|e| format!("{s:?} is not a URL ({e}): {forms}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!(
                "{s:?}: only http:// is supported, not {other}://: {forms}"
            ))
        }
        None => return Err(format!("{s:?} has no http:// in front: {forms}")),
    }
    match uri.host() {
        Some(h) if !h.is_empty() => Ok(uri),
        _ => Err(format!("{s:?} names no host: {forms}")),
    }
}

/// `--log-level`: validated and normalised by [`logging::filter`].
fn parse_log_filter(s: &str) -> Result<String, String> {
    logging::filter(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Replaced by the command right away: no logging, no runtime.
    if let Command::RegisterExec { parent, command } = &cli.command {
        return ExitCode::from(wayfinder::registrar::exec_child(*parent, command));
    }
    if let Err(e) = logging::init(&cli.log_level, cli.log_format) {
        eprintln!("wayfinder: {e}");
        return ExitCode::from(USAGE_ERROR);
    }

    match cli.command {
        Command::Check { config } => match Config::check(&config) {
            Ok(wayfinder::config::Checked {
                config: c,
                warnings,
            }) => {
                for w in &warnings {
                    eprintln!("wayfinder: warning: {w}");
                }
                println!(
                    "{}: ok ({} routes, {} services, {} static instances)",
                    config.display(),
                    c.routes.len(),
                    c.services.len(),
                    c.static_instance_count()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Run {
            config: path,
            handoff_socket,
            takeover,
        } => {
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let handoff = wayfinder::app::Handoff {
                listen: handoff_socket,
                takeover,
            };
            runtime(config.startup.runtime.worker_threads).block_on(async {
                let stop = signals::shutdown_signal();
                match wayfinder::app::run(&config, Some(&path), &handoff, stop).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(e),
                }
            })
        }
        Command::Status(args) => {
            let opts = wayfinder::registrar::status::Options {
                admin: args.admin,
                token: args.token,
                json: args.json,
                timeout: args.timeout,
            };
            runtime(Some(1)).block_on(async {
                match wayfinder::registrar::status::run(&opts).await {
                    Ok(out) => {
                        print!("{out}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(e),
                }
            })
        }
        Command::Register(args) if args.docker.docker => {
            let opts = match wayfinder::registrar::docker::DockerOptions::new(
                args.docker,
                args.registry,
                args.token,
                args.ttl,
                args.drain_timeout,
            ) {
                Ok(opts) => opts,
                Err(e) => {
                    eprintln!("wayfinder: {e}");
                    return ExitCode::from(USAGE_ERROR);
                }
            };
            runtime(None).block_on(async {
                match wayfinder::registrar::docker::run(opts).await {
                    Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                    Err(e) => fail(e),
                }
            })
        }
        Command::Register(args) => {
            // clap requires both without --docker.
            let (Some(service), Some(address)) = (args.service, args.address) else {
                return fail("--service and --address are required without --docker");
            };
            let check = match (args.check, args.check_tcp) {
                (Some(CheckTarget::Url(url)), _) => Check::Http(url),
                (Some(CheckTarget::Path(path)), _) => {
                    match format!("http://{address}{path}").parse() {
                        Ok(url) => Check::Http(url),
                        Err(e) => return fail(format!("--check {path}: {e}")),
                    }
                }
                (None, true) => Check::Tcp,
                (None, false) => Check::None,
            };
            let gossip = args.gossip;
            let opts = Options {
                registry: args.registry,
                id: args
                    .id
                    .unwrap_or_else(|| address.to_string().replace(['[', ']'], "")),
                service,
                address,
                check,
                ttl: args.ttl,
                tags: args.tags.into_iter().collect(),
                token: args.token,
                drain_timeout: args.drain_timeout,
                stop_timeout: args.stop_timeout,
                command: args.command,
            };
            if gossip.gossip {
                let advertise = gossip.gossip_advertise.unwrap_or(gossip.gossip_bind);
                if advertise.ip().is_unspecified() || advertise.port() == 0 {
                    return fail("--gossip-advertise: other members cannot reach an unspecified address or port 0");
                }
                let longest =
                    wayfinder::config::GossipSettings::interval_for(gossip.failure_detection);
                if gossip
                    .gossip_interval
                    .is_some_and(|i| i > longest || i.is_zero())
                {
                    return fail(format!(
                        "--gossip-interval: rounds longer than {longest:?} (or zero) cannot declare this member dead within --failure-detection"
                    ));
                }
                let settings = wayfinder::config::GossipSettings {
                    name: gossip
                        .member_name
                        .unwrap_or_else(|| format!("{}/{}@{advertise}", opts.service, opts.id)),
                    bind: gossip.gossip_bind,
                    advertise,
                    join: gossip.join,
                    cluster: gossip.cluster,
                    secret: gossip.gossip_secret,
                    secret_env: None,
                    failure_detection: gossip.failure_detection,
                    interval: gossip.gossip_interval.unwrap_or_else(|| {
                        wayfinder::config::GossipSettings::interval_for(gossip.failure_detection)
                    }),
                    phi_threshold: 8,
                    retry_join_max: std::time::Duration::from_secs(30),
                    leave_timeout: std::time::Duration::from_secs(2),
                    share_ejections: false,
                };
                return runtime(None).block_on(async {
                    match wayfinder::registrar::gossip::run(opts, settings).await {
                        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                        Err(e) => fail(e),
                    }
                });
            }
            // The registrar runs on this (the main) thread: the command it
            // starts is tied to the thread that started it (see
            // `registrar::exec_child`), and this one lives as long as the
            // process.
            runtime(None).block_on(async {
                match wayfinder::registrar::run(opts).await {
                    Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                    Err(e) => fail(e),
                }
            })
        }
        Command::Demo { listen } => runtime(None).block_on(async {
            match wayfinder::demo::run(listen, signals::shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }),
        Command::Cert { out, names } => match wayfinder::app::cert::make(&out, &names) {
            Ok(made) => {
                println!(
                    "wrote {} and {} (valid for {}), signed by the local CA {}",
                    made.cert.display(),
                    made.key.display(),
                    names.join(", "),
                    made.ca.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::RegisterExec { .. } => unreachable!("handled before logging starts"),
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("wayfinder: {e}");
    ExitCode::FAILURE
}

/// A Tokio runtime with `workers` threads (default: one per core).
fn runtime(workers: Option<usize>) -> tokio::runtime::Runtime {
    wayfinder::app::runtime(workers).expect("cannot start the Tokio runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_accepts_urls_and_paths_and_explains_otherwise() {
        assert!(matches!(
            parse_check("http://127.0.0.1:9001/healthz"),
            Ok(CheckTarget::Url(u)) if u.path() == "/healthz"
        ));
        assert!(matches!(
            parse_check("/healthz?deep=1"),
            Ok(CheckTarget::Path(p)) if p == "/healthz?deep=1"
        ));
        for bad in [
            "127.0.0.1:9001/healthz",
            "localhost:9001",
            "healthz",
            "https://127.0.0.1:9001/healthz",
            "http:///healthz",
        ] {
            let e = parse_check(bad).expect_err(bad);
            assert!(e.contains("http://HOST:PORT/PATH"), "{bad}: {e}");
            assert!(e.contains("/PATH"), "{bad}: {e}");
        }
    }

    #[test]
    fn registry_is_an_http_url_without_a_path() {
        assert!(parse_registry("http://127.0.0.1:9900").is_ok());
        assert!(parse_registry("http://127.0.0.1:9900/").is_ok());
        for bad in ["127.0.0.1:9900", "https://x:1", "http://x:1/v1", "x"] {
            let e = parse_registry(bad).expect_err(bad);
            assert!(e.contains("http://HOST:PORT"), "{bad}: {e}");
        }
    }
}
