//! Request parameters: query strings (decoded as
//! `application/x-www-form-urlencoded`: `%XX` escapes, `+` for a space)
//! and percent-encoded path segments, with the long-poll and wait
//! parameters checked.

use std::time::Duration;

use http::Request;
use hyper::body::Incoming;

/// Longest long poll.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// Long poll length when `index` is given without `wait`.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// A query parameter's value.
pub(super) fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `index` and `wait`; `Err` is the 400 message.
pub(super) fn long_poll_params(req: &Request<Incoming>) -> Result<(Option<u64>, Duration), String> {
    let index = match query_param(req, "index") {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => return Err(format!("index: {v:?} is not a number\n")),
        },
    };
    let wait = parse_wait(req, "wait")?.unwrap_or(DEFAULT_WAIT);
    Ok((index, wait))
}

/// A duration query parameter; `Err` is the 400 message.
pub(super) fn parse_wait(req: &Request<Incoming>, name: &str) -> Result<Option<Duration>, String> {
    match query_param(req, name) {
        None => Ok(None),
        Some(v) => match humantime::parse_duration(v) {
            Ok(d) if d <= MAX_WAIT => Ok(Some(d)),
            Ok(_) => Err(format!("{name}: longer than {MAX_WAIT:?}\n")),
            Err(e) => Err(format!("{name}: {e} (write e.g. \"30s\")\n")),
        },
    }
}

/// `s` with `%XX` escapes decoded; `None` when an escape is malformed or
/// the result is not UTF-8.
pub(super) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
