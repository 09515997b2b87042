//! The HTTP/1.1 fast path. Client connections start here: requests are
//! parsed with httparse, their heads rewritten byte for byte (no header
//! map), and exchanged with instances over plain pooled sockets inside the
//! client connection's task, with no hyper connection task, channel or
//! per-request body object in between.
//!
//! It serves the common case whole: HTTP/1.1 requests in origin form with
//! no body, or a `Content-Length`/chunked body of up to 64 KiB that has
//! arrived. A request it does not take (HTTP/2 prior knowledge, HTTP/1.0,
//! an upgrade, `Expect`, a larger or still-streaming body, absolute-form
//! targets) hands the whole connection, with the bytes already read, to the
//! general hyper path in [`super::forward`], which serves it from then on.
//! Both paths share the routing, balancing, attempt loop, pools and error
//! answers, so the two behave alike.

mod body;
mod conn;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;
pub(crate) mod general;
mod head;
mod rewind;
mod upstream;

pub(crate) use conn::{serve, Ended};
pub(crate) use rewind::Rewind;
