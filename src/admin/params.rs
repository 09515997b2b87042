//! Request parameters: query strings (decoded as
//! `application/x-www-form-urlencoded`: `%XX` escapes, `+` for a space)
//! and percent-encoded path segments, with the long-poll and wait
//! parameters checked.

use std::borrow::Cow;
use std::time::Duration;

/// Longest long poll.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// Long poll length when `index` is given without `wait`.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// A query parameter's value, decoded as a form value (`%XX` escapes,
/// `+` for a space): the first one when the name is repeated, `""` when it
/// has no `=`. `query` is the request target's query, if any.
pub(super) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<Cow<'a, str>> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// `index` and `wait`; `Err` is the 400 message.
pub(super) fn long_poll_params(query: Option<&str>) -> Result<(Option<u64>, Duration), String> {
    let index = match query_param(query, "index") {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => return Err(format!("index: {v:?} is not a number\n")),
        },
    };
    let wait = parse_wait(query, "wait")?.unwrap_or(DEFAULT_WAIT);
    Ok((index, wait))
}

/// A duration query parameter; `Err` is the 400 message.
pub(super) fn parse_wait(query: Option<&str>, name: &str) -> Result<Option<Duration>, String> {
    match query_param(query, name) {
        None => Ok(None),
        Some(v) => match humantime::parse_duration(&v) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_form_decoded() {
        let q = Some("wait=1m%2030s&timeout=1m+30s&healthy=%74rue&flag&index=7&index=8");
        assert_eq!(query_param(q, "wait").as_deref(), Some("1m 30s"));
        assert_eq!(query_param(q, "timeout").as_deref(), Some("1m 30s"));
        assert_eq!(query_param(q, "healthy").as_deref(), Some("true"));
        assert_eq!(query_param(q, "flag").as_deref(), Some(""));
        assert_eq!(query_param(q, "index").as_deref(), Some("7"), "the first");
        assert_eq!(query_param(q, "nope"), None);
        assert_eq!(query_param(None, "wait"), None);
        assert_eq!(parse_wait(q, "wait"), Ok(Some(Duration::from_secs(90))));
        assert_eq!(long_poll_params(q), Ok((Some(7), Duration::from_secs(90))));
        assert!(parse_wait(Some("wait=20m"), "wait").is_err());
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(
            percent_decode("127.0.0.1%3A9001").as_deref(),
            Some("127.0.0.1:9001")
        );
        assert_eq!(percent_decode("a+b").as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
