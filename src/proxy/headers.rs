//! The hyper codec's side of the forwarding policy: header maps are turned
//! into the policy's indexed view, and rebuilt from the lines it keeps plus
//! the lines it adds. The rules themselves live in [`super::policy`], so
//! this path and the fast path cannot drift apart.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::error::ProxyError;
use super::policy::request::{self, Hop, RequestView, Version};
use super::policy::HeadWriter;

/// A header map's lines in order, as the policy indexes them. Cloning a
/// name or value is a reference-count increment or a small copy.
pub(crate) fn fields(map: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    map.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
}

/// [`fields`], moving the lines out of `map` instead of copying them: `map`
/// is left empty with its memory kept, for [`keep_into`].
pub(crate) fn drain(map: &mut HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let mut out: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(map.len());
    for (name, value) in map.drain() {
        // `None`: another value of the name just pushed.
        let name = match name {
            Some(n) => n,
            None => match out.last() {
                Some((n, _)) => n.clone(),
                None => continue,
            },
        };
        out.push((name, value));
    }
    out
}

/// A map of the lines whose index is not in `skip`.
pub(crate) fn keep(fields: &[(HeaderName, HeaderValue)], skip: u128) -> HeaderMap {
    let mut map = HeaderMap::new();
    keep_into(&mut map, fields, skip);
    map
}

/// [`keep`], written into `map` (emptied first; its memory is reused).
pub(crate) fn keep_into(map: &mut HeaderMap, fields: &[(HeaderName, HeaderValue)], skip: u128) {
    map.clear();
    map.reserve(fields.len() + 6);
    for (i, (n, v)) in fields.iter().enumerate() {
        if super::policy::passes(skip, i) {
            map.append(n.clone(), v.clone());
        }
    }
}

/// Writes the policy's additions into a header map. For an HTTP/2 peer the
/// connection-specific fields (`Transfer-Encoding`, `Connection`,
/// `Upgrade`) are left out: HTTP/2 frames messages itself.
///
/// The names the policy writes are made without allocating (static
/// `HeaderName`s), as are the values known in advance (`http`/`https`,
/// the proxy's own `Via` when given in `via`); other values are copied
/// once.
#[derive(Debug)]
pub(crate) struct MapWriter<'m> {
    pub map: &'m mut HeaderMap,
    pub h2: bool,
    /// This hop's `Via` value, cloned (by reference count) for the `via`
    /// field instead of copying its bytes.
    pub via: Option<&'m HeaderValue>,
}

/// The `HeaderName` of a field name the policy writes, made without
/// allocating; `None` for others (a configured request id header).
fn known_name(name: &[u8]) -> Option<HeaderName> {
    use http::header;
    Some(match name {
        b"host" => header::HOST,
        b"content-length" => header::CONTENT_LENGTH,
        b"transfer-encoding" => header::TRANSFER_ENCODING,
        b"x-forwarded-for" => HeaderName::from_static("x-forwarded-for"),
        b"x-forwarded-proto" => HeaderName::from_static("x-forwarded-proto"),
        b"x-forwarded-host" => HeaderName::from_static("x-forwarded-host"),
        b"forwarded" => header::FORWARDED,
        b"via" => header::VIA,
        b"connection" => header::CONNECTION,
        b"upgrade" => header::UPGRADE,
        _ => return None,
    })
}

impl MapWriter<'_> {
    fn append(&mut self, name: &'static [u8], value: HeaderValue) {
        match known_name(name) {
            Some(n) => {
                self.map.append(n, value);
            }
            None => {
                if let Ok(n) = HeaderName::from_bytes(name) {
                    self.map.append(n, value);
                }
            }
        }
    }

    fn skips(&self, name: &[u8]) -> bool {
        self.h2 && matches!(name, b"transfer-encoding" | b"connection" | b"upgrade")
    }
}

impl HeadWriter for MapWriter<'_> {
    fn field(&mut self, name: &'static [u8], value: &[u8]) {
        if self.skips(name) {
            return;
        }
        let value = match (name, value) {
            (b"via", _) if self.via.is_some_and(|v| v.as_bytes() == value) => self.via.cloned(),
            (_, b"http") => Some(HeaderValue::from_static("http")),
            (_, b"https") => Some(HeaderValue::from_static("https")),
            (_, b"chunked") => Some(HeaderValue::from_static("chunked")),
            _ => HeaderValue::from_bytes(value).ok(),
        };
        if let Some(v) = value {
            self.append(name, v);
        }
    }

    fn field_with(&mut self, name: &'static [u8], value: impl FnOnce(&mut Vec<u8>)) {
        if self.skips(name) {
            return;
        }
        // Built in a buffer kept per thread, then copied once into the
        // value.
        thread_local!(static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) });
        let mut v = SCRATCH.take();
        v.clear();
        value(&mut v);
        let made = HeaderValue::from_bytes(&v);
        SCRATCH.set(v);
        if let Ok(v) = made {
            self.append(name, v);
        }
    }
}

/// The hyper codec's whole request-header step for an origin-form
/// HTTP/1.1 `GET /` carrying `src`, from an untrusted client at
/// `client_ip`, with default settings: what the benches measure.
pub fn request_headers(src: &HeaderMap, client_ip: &str) -> Result<HeaderMap, ProxyError> {
    let fields = fields(src);
    let hop = Hop {
        client_ip,
        trusted: false,
        proto: "http",
        via: b"1.1 wayfinder",
        forwarded: false,
        max_uri_bytes: 8192,
        request_id: None,
    };
    let view = RequestView {
        method: "GET",
        target: "/",
        version: Version::H11,
        fields: &fields[..],
        protocol: None,
    };
    let plan = request::plan(&view, &hop)?;
    let mut out = keep(&fields, plan.skip);
    plan.write_additions(
        &fields[..],
        &hop,
        None,
        &mut MapWriter {
            map: &mut out,
            h2: false,
            via: None,
        },
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_codec_applies_the_policy() {
        let mut src = HeaderMap::new();
        for (k, v) in [
            ("host", "api.svc"),
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("accept", "*/*"),
            ("accept", "text/plain"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-proto", "https"),
        ] {
            src.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let out = request_headers(&src, "10.0.0.9").unwrap();
        for gone in ["connection", "x-secret", "te"] {
            assert!(!out.contains_key(gone), "{gone} forwarded");
        }
        assert_eq!(out.get_all("accept").iter().count(), 2);
        assert_eq!(out["transfer-encoding"], "chunked");
        assert_eq!(out["x-forwarded-for"], "1.1.1.1, 10.0.0.9");
        assert_eq!(out["x-forwarded-proto"], "http", "untrusted client");
        assert_eq!(out["x-forwarded-host"], "api.svc");
        assert_eq!(out["via"], "1.1 wayfinder");
    }
}
