//! The `wayfinder` command: parses arguments and calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use wayfinder::config::Config;
use wayfinder::registrar::{Check, Options};

/// A service-discovery load-balancing reverse proxy.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log level (error, warn, info, debug, trace) when RUST_LOG is not set.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy with a config file until SIGTERM or SIGINT, then report
    /// not ready for timeouts.pre_stop while still serving, and drain; a
    /// second signal exits at once. The file is watched and reloaded on
    /// change or SIGHUP.
    Run {
        /// The config file.
        #[arg(long, short, default_value = "config/wayfinder.toml")]
        config: PathBuf,
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
    Register(Box<RegisterArgs>),
    /// Run the built-in example config with demo instances on loopback and
    /// show requests rotating between them.
    Demo {
        /// Proxy listen address (default: the example config's 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
}

#[derive(Debug, clap::Args)]
struct RegisterArgs {
    /// The proxy's admin API.
    #[arg(long, default_value = "http://127.0.0.1:9900")]
    registry: http::Uri,
    /// Service name.
    #[arg(long)]
    service: String,
    /// The instance's address (IP:PORT).
    #[arg(long)]
    address: std::net::SocketAddr,
    /// Instance id (default: the address).
    #[arg(long)]
    id: Option<String>,
    /// HTTP health check URL; 2xx/3xx passes.
    #[arg(long, conflicts_with = "check_tcp")]
    check: Option<http::Uri>,
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
    /// The service to start and watch, after `--`.
    #[arg(last = true)]
    command: Vec<String>,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cli.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

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
        Command::Run { config: path } => {
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            runtime_with(config.runtime.worker_threads).block_on(async {
                match wayfinder::app::run(&config, Some(&path), shutdown_signal()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(e),
                }
            })
        }
        Command::Register(args) => {
            let check = match (args.check, args.check_tcp) {
                (Some(url), _) => Check::Http(url),
                (None, true) => Check::Tcp,
                (None, false) => Check::None,
            };
            let opts = Options {
                registry: args.registry,
                id: args
                    .id
                    .unwrap_or_else(|| args.address.to_string().replace(['[', ']'], "")),
                service: args.service,
                address: args.address,
                check,
                ttl: args.ttl,
                tags: args.tags.into_iter().collect(),
                token: args.token,
                drain_timeout: args.drain_timeout,
                command: args.command,
            };
            runtime().block_on(async {
                match wayfinder::registrar::run(opts, shutdown_signal()).await {
                    Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                    Err(e) => fail(e),
                }
            })
        }
        Command::Demo { listen } => runtime().block_on(async {
            match wayfinder::demo::run(listen, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }),
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("wayfinder: {e}");
    ExitCode::FAILURE
}

fn runtime() -> tokio::runtime::Runtime {
    runtime_with(None)
}

/// A multi-thread runtime with `workers` threads (default: Tokio's, one per
/// core, or TOKIO_WORKER_THREADS).
fn runtime_with(workers: Option<usize>) -> tokio::runtime::Runtime {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n);
    }
    b.enable_all()
        .build()
        .expect("cannot start the Tokio runtime")
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
