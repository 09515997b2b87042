//! What the fuzz targets under `fuzz/` drive (feature `fuzzing`, hidden
//! from the docs; not an API): the HTTP/1.1 fast path's handling of a
//! client's request bytes and of an instance's response bytes, and its
//! chunked scanner, each on a byte string with no socket. The functions
//! call the same code the connection does ([`crate::proxy::h1`]'s head
//! codec and body scans, [`crate::proxy::policy`]), in the order it does,
//! with the bytes arriving in the pieces the caller chooses; they return
//! what the fast path would forward and where it found the message's end,
//! for the targets' reference parsers to check. (The config loader,
//! [`crate::config::Config::parse`], is public already.)

use crate::proxy::fuzz_hooks as hooks;

pub use hooks::{Asked, Chunked, Forwarded, Framing, Hop, Relayed, Request, Response};

/// The fast path's view of a client's bytes `input`, arriving in pieces
/// that end at the offsets in `arrivals` (then at the end of `input`):
/// the first request's outcome, as the connection would act on it.
pub fn request(input: &[u8], arrivals: &[usize], hop: Hop) -> Request {
    hooks::request(input, arrivals, hop)
}

/// The fast path's relay of an instance's bytes `input` (arriving as for
/// [`request`]) for a request described by `asked`: interim answers, the
/// final head and as much of the body as `input` holds.
pub fn response(input: &[u8], arrivals: &[usize], asked: Asked) -> Response {
    hooks::response(input, arrivals, asked)
}

/// The chunked scanner fed `input` in pieces, as both directions feed it,
/// keeping the trailer fields named in `declared` (lower case).
pub fn chunked(input: &[u8], arrivals: &[usize], declared: &[&[u8]]) -> Chunked {
    hooks::chunked(input, arrivals, declared)
}
