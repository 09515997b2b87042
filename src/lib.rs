//! wayfinder: a service-discovery load-balancing reverse proxy.
pub mod balance;
pub mod clock;
pub mod config;
pub mod proxy;
pub mod registry;
pub mod router;
