//! The forwarding policy: every decision about what a request or response
//! may be and what crosses the proxy, written once and applied by both
//! codecs (the HTTP/1.1 fast path on raw bytes, and hyper's header maps for
//! HTTP/2, HTTP/1.0, upgrades and streamed bodies). The codecs only parse
//! and write bytes; a rule lives here or nowhere.
//!
//! - [`fields`]: the table of header names (hop-by-hop, framing, managed)
//!   and what `Connection` may remove;
//! - [`target`]: request targets and `Host`;
//! - [`request`]: request framing, trust in forwarding fields, upgrades,
//!   and what the proxy adds;
//! - [`request_id`]: the request id, kept or made;
//! - [`response`]: response status and framing, what travels back;
//! - [`chunked`]: the strict chunked-body scanner both directions use on
//!   the fast path.
//!
//! Error answers are [`super::error::ProxyError`]s, rendered once per codec.

pub(crate) mod chunked;
#[cfg(test)]
pub(crate) mod test_util {
    //! What the policy's and the codecs' unit tests share.

    use super::request::Hop;

    /// An untrusted client at 10.0.0.9 on plain HTTP, default settings.
    pub(crate) const HOP: Hop<'static> = Hop {
        client_ip: "10.0.0.9",
        trusted: false,
        proto: "http",
        via: b"1.1 wayfinder",
        forwarded: false,
        max_uri_bytes: 8192,
        request_id: None,
    };
}
pub(crate) mod fields;
pub(crate) mod request;
pub(crate) mod request_id;
pub(crate) mod response;
pub(crate) mod target;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Whether line `i` of a head passes a plan's `skip` mask (bit `i` set:
/// the line is dropped). Plans refuse heads over
/// [`request::MAX_FIELDS`] lines, so every line has a bit.
#[inline]
pub(crate) fn passes(skip: u128, i: usize) -> bool {
    i >= 128 || skip & (1 << i) == 0
}

/// The header lines of a received head, by index, as either codec holds
/// them.
pub(crate) trait Fields {
    /// Number of lines.
    fn len(&self) -> usize;
    /// The name of line `i`.
    fn name(&self, i: usize) -> &[u8];
    /// The value of line `i`.
    fn value(&self, i: usize) -> &[u8];
}

impl Fields for [httparse::Header<'_>] {
    #[inline]
    fn len(&self) -> usize {
        <[_]>::len(self)
    }
    #[inline]
    fn name(&self, i: usize) -> &[u8] {
        self[i].name.as_bytes()
    }
    #[inline]
    fn value(&self, i: usize) -> &[u8] {
        self[i].value
    }
}

impl Fields for [(http::HeaderName, http::HeaderValue)] {
    #[inline]
    fn len(&self) -> usize {
        <[_]>::len(self)
    }
    #[inline]
    fn name(&self, i: usize) -> &[u8] {
        self[i].0.as_str().as_bytes()
    }
    #[inline]
    fn value(&self, i: usize) -> &[u8] {
        self[i].1.as_bytes()
    }
}

/// Where a codec writes the header lines the policy adds.
pub(crate) trait HeadWriter {
    /// Adds the line `name: value`.
    fn field(&mut self, name: &'static [u8], value: &[u8]);
    /// Adds a line whose value the closure appends to the buffer it is
    /// given (which may already hold other bytes: append only).
    fn field_with(&mut self, name: &'static [u8], value: impl FnOnce(&mut Vec<u8>));
}

/// Raw head bytes: each line is written as `name: value\r\n`.
impl HeadWriter for Vec<u8> {
    #[inline]
    fn field(&mut self, name: &'static [u8], value: &[u8]) {
        self.extend_from_slice(name);
        self.extend_from_slice(b": ");
        self.extend_from_slice(value);
        self.extend_from_slice(b"\r\n");
    }

    #[inline]
    fn field_with(&mut self, name: &'static [u8], value: impl FnOnce(&mut Vec<u8>)) {
        self.extend_from_slice(name);
        self.extend_from_slice(b": ");
        value(self);
        self.extend_from_slice(b"\r\n");
    }
}
