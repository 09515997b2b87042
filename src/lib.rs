//! wayfinder: a service-discovery load-balancing reverse proxy.
//!
//! # Layout
//!
//! The modules follow a request's flow. Each uses only the modules above
//! it in this list (`app` and the `wayfinder` binary sit on top; `clock` and
//! `tls`, leaves, serve them all), and each opens with a doc saying what it
//! owns. Two edges go the other way, each for a stated reason: the
//! registry's snapshot carries the router's table (one swap for routes and
//! instances), and the proxy reports outcomes to passive health.
//! `tests/layering.rs` checks this order and that the graph has no cycle
//! (`cargo test --test layering -- --nocapture` prints it).
//!
//! ```text
//!   wayfinder.toml ──▶ config ──▶ registry ◀── sources: the file, registrations (admin),
//!                                   │            etcd, DNS, gossip fleet, Serf
//!                                   │ one immutable Snapshot, swapped whole
//!                                   ▼
//!   client ──▶ proxy::server ──▶ router ──▶ balance ──▶ proxy (forward) ──▶ instance
//!                 (Host, path → service)  (pick one)   │   retries, errors, upgrades
//!                                                       ▼
//!                                   health ◀── outcomes (passive) and probes (active)
//!                                                       │
//!                                   admin: status, registry API, discovery queries
//! ```
//!
//! - [`config`]: parses and validates `wayfinder.toml` into a typed
//!   [`config::Config`]; imports nothing else from the crate.
//! - [`registry`]: merges what each source reports into the published
//!   snapshot (services, members, live per-instance state).
//! - [`router`]: maps a request's Host and path to a service name.
//! - [`balance`]: picks one member of a service and counts the request in
//!   flight against it.
//! - [`proxy`]: accepts client connections and forwards each request to a
//!   picked instance (HTTP/1.1 fast path and hyper), with retries,
//!   timeouts and error answers.
//! - [`health`]: active checks, passive outlier detection and the
//!   panic-mode rule; decides which instances take traffic.
//! - `admin`: the admin API on its own listener (status, config, the
//!   registration API, discovery queries).
//! - [`app`]: the running process: starts everything in order, reloads the
//!   config, shuts down with a pre-stop delay and a bounded drain, hands
//!   its listeners and registrations to a successor (hot restart).
//! - [`registrar`]: `wayfinder register`, the client that keeps a service
//!   registered with a proxy's admin API, and `wayfinder status`.
//! - [`demo`]: `wayfinder demo`, the example config with built-in
//!   instances.
//! - [`clock`]: a cheap monotonic millisecond clock for state kept in
//!   atomics.
//! - [`tls`]: TLS material for both sides: the certificates listeners
//!   serve, the client configuration towards a service's instances.
//! - `fuzzing` (feature `fuzzing`, hidden): the fast path's codec and body
//!   scans on byte strings, for the fuzz targets under `fuzz/`.
#![forbid(unsafe_code)]

// In the order of the layout above (blank lines keep rustfmt from sorting).
pub mod config;

pub mod registry;

pub mod router;

pub mod balance;

pub mod proxy;

pub mod health;

mod admin;

pub mod app;

pub mod registrar;

pub mod demo;

pub mod clock;

pub mod tls;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
