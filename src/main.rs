//! The `wayfinder` command: parses arguments and calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use wayfinder::config::Config;

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
    /// Run the proxy with a config file until SIGTERM or SIGINT, then drain.
    Run {
        /// The config file.
        #[arg(long, short, default_value = "config/wayfinder.toml")]
        config: PathBuf,
    },
    /// Validate a config file and exit: 0 when valid, 1 with the error
    /// (file:line:column: key: message) when not.
    Check {
        /// The config file.
        #[arg(long, short, default_value = "config/wayfinder.toml")]
        config: PathBuf,
    },
    /// Run the built-in example config with demo instances on loopback and
    /// show requests rotating between them.
    Demo {
        /// Proxy listen address (default: the example config's 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
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
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
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
        Command::Run { config } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            runtime().block_on(async {
                match wayfinder::app::run(&config, shutdown_signal()).await {
                    Ok(()) => ExitCode::SUCCESS,
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
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
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
