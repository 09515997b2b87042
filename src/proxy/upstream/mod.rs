//! Upstream connections: dialing an instance ([`connect`], [`connect_raw`])
//! and keeping its connections for reuse ([`pool`]).

mod pool;

pub use pool::ConnectError;
pub(crate) use pool::*;
