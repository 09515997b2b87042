//! wayfinder: a service-discovery load-balancing reverse proxy.
#![forbid(unsafe_code)]
pub mod admin;
pub mod app;
pub mod balance;
pub mod clock;
pub mod config;
pub mod demo;
pub mod health;
pub mod proxy;
pub mod registrar;
pub mod registry;
pub mod router;
