//! The request id, decided once for both codecs: a request that carries a
//! usable id in the configured header (`proxy.request_id_header`,
//! `x-request-id` by default) keeps it; otherwise the proxy makes one and
//! adds it to the forwarded request. Either way the client gets it back in
//! the response and the access log records it. W3C `traceparent` and
//! `tracestate` are ordinary fields here: they pass through untouched.
//!
//! Usable: 1 to [`MAX_LEN`] visible ASCII characters, on exactly one line.
//! Anything else (empty, too long, spaces or control characters, two
//! lines) is dropped and replaced, so a client cannot put a forged
//! second id or a line break into the logs.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

/// Longest id kept from a request.
pub(crate) const MAX_LEN: usize = 128;

/// A request id, held inline (no allocation per request).
#[derive(Clone, Copy)]
pub(crate) struct RequestId {
    len: u8,
    bytes: [u8; MAX_LEN],
}

impl RequestId {
    /// The id as received or made: visible ASCII only.
    #[inline]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The id as text.
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// `value` as an id, if it is usable.
    pub(crate) fn accept(value: &[u8]) -> Option<RequestId> {
        if value.is_empty() || value.len() > MAX_LEN || !value.iter().all(|b| b.is_ascii_graphic())
        {
            return None;
        }
        let mut bytes = [0; MAX_LEN];
        bytes[..value.len()].copy_from_slice(value);
        Some(RequestId {
            len: value.len() as u8,
            bytes,
        })
    }

    /// A new id: 32 hex digits, a random per-process prefix and a counter,
    /// so ids are unique within the process and unlikely to repeat across
    /// processes.
    pub(crate) fn make() -> RequestId {
        static SEED: OnceLock<u64> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let seed = *SEED.get_or_init(|| {
            std::collections::hash_map::RandomState::new().hash_one(std::process::id())
        });
        let n = NEXT.fetch_add(1, Relaxed);
        let mut bytes = [0; MAX_LEN];
        hex(seed, &mut bytes[..16]);
        hex(n, &mut bytes[16..32]);
        RequestId { len: 32, bytes }
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `v` as 16 lowercase hex digits into `out`.
fn hex(v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, o) in out.iter_mut().enumerate() {
        *o = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

/// What the request's id lines come to: keep the one received line, or
/// drop them all and add the made id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Decision {
    /// The request's id.
    pub id: RequestId,
    /// The id was made here: the forwarded request needs its line.
    pub made: bool,
    /// Received id lines not forwarded, by index.
    pub skip: u128,
}

/// Decides the id of a request whose id lines (by index) are `lines`,
/// with `value` reading line `i`.
pub(crate) fn decide<'v>(lines: u128, value: impl Fn(usize) -> &'v [u8]) -> Decision {
    if lines.count_ones() == 1 {
        if let Some(id) = RequestId::accept(value(lines.trailing_zeros() as usize)) {
            return Decision {
                id,
                made: false,
                skip: 0,
            };
        }
    }
    Decision {
        id: RequestId::make(),
        made: true,
        skip: lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_one_good_id_and_replaces_the_rest() {
        let values: [&[u8]; 3] = [b"abc-123", b"two words", b"x"];
        let d = decide(0b001, |i| values[i]);
        assert_eq!(d.id.as_bytes(), b"abc-123");
        assert!(!d.made);
        assert_eq!(d.skip, 0);
        let d = decide(0b010, |i| values[i]);
        assert!(d.made, "a space is not allowed");
        assert_eq!(d.skip, 0b010);
        let d = decide(0b101, |i| values[i]);
        assert!(d.made, "two lines");
        assert_eq!(d.skip, 0b101);
        let d = decide(0, |i| values[i]);
        assert!(d.made);
        assert_eq!(d.id.as_bytes().len(), 32);
        assert!(RequestId::accept(&[b'a'; MAX_LEN]).is_some());
        assert!(RequestId::accept(&[b'a'; MAX_LEN + 1]).is_none());
        assert!(RequestId::accept(b"").is_none());
        assert!(RequestId::accept(b"a\r\nb").is_none());
    }

    #[test]
    fn made_ids_differ() {
        let a = RequestId::make();
        let b = RequestId::make();
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_eq!(
            &a.as_bytes()[..16],
            &b.as_bytes()[..16],
            "one prefix per process"
        );
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
