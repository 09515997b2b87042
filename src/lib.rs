//! wayfinder: a service-discovery load-balancing reverse proxy.
pub mod config;
