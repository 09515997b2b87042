//! The one table of header field names the proxy treats specially, and the
//! rules that follow from it: which fields are hop-by-hop, which ones the
//! proxy writes itself, what a `Connection` header may remove, and what may
//! travel in a trailer section. Both codecs (the byte-level fast path and
//! hyper's header maps) classify names here, so they cannot disagree.

/// What a header field name means to the proxy, matched case-insensitively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Name {
    /// An end-to-end field the proxy does not interpret: forwarded as is.
    Other,
    /// `Host`: routing; rewritten for absolute-form targets.
    Host,
    /// `Content-Length`: framing, always re-derived and written by the proxy.
    ContentLength,
    /// `Transfer-Encoding`: framing, always re-derived and written by the proxy.
    TransferEncoding,
    /// `Connection`: consumed (its tokens steer this hop only).
    Connection,
    /// Hop-by-hop by definition and dropped: `Keep-Alive`,
    /// `Proxy-Connection`, `TE`, `HTTP2-Settings`.
    Hop,
    /// `Upgrade`: forwarded only for an upgrade the route allows.
    Upgrade,
    /// `Expect`: answered by the proxy (or its codec), never forwarded.
    Expect,
    /// `Proxy-Authorization` / `Proxy-Authenticate`: meant for a proxy and
    /// consumed by it (RFC 9110 section 11.7), never forwarded.
    ProxyAuth,
    /// `X-Forwarded-For`: the proxy appends the client.
    Xff,
    /// `X-Forwarded-Proto`: set by the proxy unless the peer is trusted.
    Xfp,
    /// `X-Forwarded-Host`: set by the proxy unless the peer is trusted.
    Xfh,
    /// `Forwarded` (RFC 7239): set by the proxy unless the peer is trusted.
    Forwarded,
    /// `Via`: the proxy appends its own entry.
    Via,
    /// A name with `_` that reads as one of the names above when `_` is
    /// taken for `-` (`Transfer_Encoding`, `Content_Length`, `X_Forwarded_For`):
    /// servers that map field names to variables (CGI, many frameworks)
    /// cannot tell them apart, so they are dropped (as nginx does).
    Confusable,
}

/// Classifies a field name (case-insensitive; any bytes).
#[inline]
pub(crate) fn classify(name: &[u8]) -> Name {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    match name.len() {
        2 if is(b"te") => Name::Hop,
        3 if is(b"via") => Name::Via,
        4 if is(b"host") => Name::Host,
        6 if is(b"expect") => Name::Expect,
        7 if is(b"upgrade") => Name::Upgrade,
        9 if is(b"forwarded") => Name::Forwarded,
        10 if is(b"connection") => Name::Connection,
        10 if is(b"keep-alive") => Name::Hop,
        14 if is(b"content-length") => Name::ContentLength,
        14 if is(b"http2-settings") => Name::Hop,
        15 if is(b"x-forwarded-for") => Name::Xff,
        16 if is(b"proxy-connection") => Name::Hop,
        16 if is(b"x-forwarded-host") => Name::Xfh,
        17 if is(b"transfer-encoding") => Name::TransferEncoding,
        17 if is(b"x-forwarded-proto") => Name::Xfp,
        18 if is(b"proxy-authenticate") => Name::ProxyAuth,
        19 if is(b"proxy-authorization") => Name::ProxyAuth,
        // Only names as long as a special one can read as one.
        n if n < 20 && SPECIAL_LENGTHS & (1 << n) != 0 && name.contains(&b'_') => confusable(name),
        _ => Name::Other,
    }
}

/// The lengths of the names [`classify`] knows, as a bit set.
const SPECIAL_LENGTHS: u32 = 1 << 2
    | 1 << 3
    | 1 << 4
    | 1 << 6
    | 1 << 7
    | 1 << 9
    | 1 << 10
    | 1 << 14
    | 1 << 15
    | 1 << 16
    | 1 << 17
    | 1 << 18
    | 1 << 19;

/// [`Name::Confusable`] when `name`, with `_` read as `-`, is a name the
/// proxy treats specially.
#[cold]
fn confusable(name: &[u8]) -> Name {
    let mut dashed = [0u8; 24];
    if name.len() > dashed.len() {
        return Name::Other;
    }
    for (d, &c) in dashed.iter_mut().zip(name) {
        *d = if c == b'_' { b'-' } else { c };
    }
    match classify(&dashed[..name.len()]) {
        Name::Other => Name::Other,
        _ => Name::Confusable,
    }
}

impl Name {
    /// Whether a `Connection` header may remove a field of this kind. Only
    /// plain end-to-end fields can be made hop-by-hop by the sender: framing
    /// (`Content-Length`, `Transfer-Encoding`), routing (`Host`) and the
    /// fields the proxy manages can never be, or a client could make the
    /// proxy forward a body without its framing (request smuggling).
    /// Everything else is dropped anyway.
    #[inline]
    pub(crate) fn connection_may_remove(self) -> bool {
        self == Name::Other
    }

    /// Whether a field of this kind is dropped on every hop, whatever the
    /// message says.
    #[inline]
    pub(crate) fn always_dropped(self) -> bool {
        matches!(
            self,
            Name::Connection | Name::Hop | Name::Expect | Name::ProxyAuth | Name::Confusable
        )
    }
}

/// Whether a field may travel in a chunked trailer section. Fields that
/// frame, route, authenticate or describe the content must come in the
/// header section (RFC 9110 section 6.5.1); so must anything the proxy
/// manages. The list matches hyper's trailer encoder, so the two codecs
/// drop the same fields.
pub(crate) fn trailer_allowed(name: &[u8]) -> bool {
    if classify(name) != Name::Other {
        return false;
    }
    const NOT_IN_TRAILERS: [&[u8]; 8] = [
        b"authorization",
        b"cache-control",
        b"content-encoding",
        b"content-range",
        b"content-type",
        b"max-forwards",
        b"set-cookie",
        b"trailer",
    ];
    !NOT_IN_TRAILERS.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// The field names the `Trailer` lines in `mask` declare, lower-cased:
/// only these may come in the trailer section (hyper's encoder passes no
/// other). Allocates only for a message that declares trailers.
pub(crate) fn declared_trailers<F: super::Fields + ?Sized>(fields: &F, mask: u128) -> Vec<Vec<u8>> {
    let mut names = Vec::new();
    let mut rest = mask;
    while rest != 0 {
        let i = rest.trailing_zeros() as usize;
        rest &= rest - 1;
        for t in list(fields.value(i)) {
            if trailer_allowed(t) {
                names.push(t.to_ascii_lowercase());
            }
        }
    }
    names
}

/// The comma-separated elements of a list field value, trimmed of optional
/// white space; empty elements are skipped (RFC 9110 section 5.6.1).
pub(crate) fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Whether `b` may appear in a token (RFC 9110 section 5.6.2).
#[inline]
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `s` is a non-empty token.
#[inline]
pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Whether `value` is a valid field value: visible characters, spaces,
/// tabs and obs-text, without leading or trailing white space issues that
/// matter here (RFC 9110 section 5.5). NUL, CR, LF and other controls are
/// refused.
#[inline]
pub(crate) fn is_field_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// What a `Connection` header says about this hop.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionTokens {
    /// `close`.
    pub close: bool,
    /// `keep-alive` (HTTP/1.0 persistence).
    pub keep_alive: bool,
    /// `upgrade`.
    pub upgrade: bool,
    /// Names other fields (which may be removed when they are plain
    /// end-to-end fields).
    pub lists_fields: bool,
}

impl ConnectionTokens {
    /// Adds the tokens of one `Connection` field line.
    pub(crate) fn add(&mut self, value: &[u8]) {
        // The usual single-token values, without splitting.
        if value.eq_ignore_ascii_case(b"keep-alive") {
            self.keep_alive = true;
            return;
        }
        if value.eq_ignore_ascii_case(b"close") {
            self.close = true;
            return;
        }
        for t in list(value) {
            if t.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if t.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else {
                self.lists_fields = true;
            }
        }
    }
}

/// Whether any of the `Connection` values names the field `name`.
pub(crate) fn connection_names<'a>(
    connection_values: impl Iterator<Item = &'a [u8]>,
    name: &[u8],
) -> bool {
    let mut values = connection_values;
    values.any(|v| list(v).any(|t| t.eq_ignore_ascii_case(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_names_in_any_case() {
        assert_eq!(classify(b"Content-Length"), Name::ContentLength);
        assert_eq!(classify(b"TRANSFER-ENCODING"), Name::TransferEncoding);
        assert_eq!(classify(b"http2-settings"), Name::Hop);
        assert_eq!(classify(b"Proxy-Authorization"), Name::ProxyAuth);
        assert_eq!(classify(b"Proxy-Authenticate"), Name::ProxyAuth);
        assert_eq!(classify(b"Trailer"), Name::Other, "end-to-end in RFC 9110");
        assert_eq!(classify(b"X-Secret"), Name::Other);
        assert_eq!(classify(b"Forwarded"), Name::Forwarded);
        assert_eq!(classify(b"Transfer_Encoding"), Name::Confusable);
        assert_eq!(classify(b"x_forwarded_for"), Name::Confusable);
        assert_eq!(classify(b"x_custom_header"), Name::Other);
    }

    #[test]
    fn connection_cannot_remove_what_frames_routes_or_is_managed() {
        for name in [
            &b"content-length"[..],
            b"transfer-encoding",
            b"host",
            b"x-forwarded-for",
            b"x-forwarded-proto",
            b"x-forwarded-host",
            b"forwarded",
            b"via",
            b"upgrade",
        ] {
            assert!(!classify(name).connection_may_remove(), "{name:?}");
        }
        assert!(classify(b"x-secret").connection_may_remove());
    }

    #[test]
    fn trailers_exclude_framing_routing_and_managed_fields() {
        for name in [
            &b"Content-Length"[..],
            b"Transfer-Encoding",
            b"Host",
            b"Trailer",
            b"Connection",
            b"X-Forwarded-For",
            b"Set-Cookie",
        ] {
            assert!(!trailer_allowed(name), "{name:?}");
        }
        assert!(trailer_allowed(b"grpc-status"));
        assert!(trailer_allowed(b"x-checksum"));
    }

    #[test]
    fn connection_tokens() {
        let mut t = ConnectionTokens::default();
        t.add(b"keep-alive, Upgrade");
        t.add(b" close ,x-a");
        assert_eq!(
            t,
            ConnectionTokens {
                close: true,
                keep_alive: true,
                upgrade: true,
                lists_fields: true
            }
        );
        assert!(connection_names([&b"a, X-B"[..]].into_iter(), b"x-b"));
        assert!(!connection_names([&b"a"[..]].into_iter(), b"x-b"));
    }

    #[test]
    fn field_values_refuse_controls() {
        assert!(is_field_value(b"a b\tc\xff"));
        for bad in [&b"a\x00b"[..], b"a\rb", b"a\nb", b"a\x7fb", b"\x01"] {
            assert!(!is_field_value(bad), "{bad:?}");
        }
    }
}
