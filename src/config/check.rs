//! What every validation step shares, so the section validators depend on
//! this module and never on each other: the error context [`Cx`] (file,
//! text, the errors and warnings collected so far, the environment rule)
//! and the checks of values that appear in several sections (durations,
//! integers in a range, socket addresses, host name syntax), with [`Dur`],
//! how a duration is written. A leaf: it uses only [`ConfigError`].

use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::error::{ConfigError, MAX_ERRORS};

/// Whether the environment variables a file names must be set
/// (`wayfinder run`, reloads) or are only checked by name (`wayfinder
/// check`, which may run elsewhere than the proxy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Env {
    /// An unset variable is an error.
    Require,
    /// An unset variable is a warning.
    ShapeOnly,
}

/// What every check needs: the text (to turn spans into lines), the file
/// name, and where errors and warnings are collected. A check records a
/// problem and goes on with a fallback value, so one run reports every
/// error.
pub(super) struct Cx<'a> {
    text: &'a str,
    file: &'a Path,
    env: Env,
    errors: RefCell<Vec<ConfigError>>,
    warnings: RefCell<Vec<String>>,
}

impl<'a> Cx<'a> {
    pub(super) fn new(text: &'a str, file: &'a Path, env: Env) -> Self {
        Cx {
            text,
            file,
            env,
            errors: RefCell::new(Vec::new()),
            warnings: RefCell::new(Vec::new()),
        }
    }

    /// The file's text.
    pub(super) fn text(&self) -> &'a str {
        self.text
    }

    /// The file's name, as errors show it.
    pub(super) fn file(&self) -> &Path {
        self.file
    }

    /// An error about `key` at `span` (its line and column), not recorded.
    pub(super) fn err(
        &self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = match span {
            Some(span) => line_col(self.text, span.start),
            None => (0, 0),
        };
        ConfigError::Invalid {
            file: self.file.to_owned(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }

    /// An error about `key`, whose value is `at`, not recorded.
    pub(super) fn err_at<T>(
        &self,
        at: &Spanned<T>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        self.err(Some(at.span()), key, message)
    }

    /// Records `e`; checking goes on.
    pub(super) fn push(&self, e: ConfigError) {
        self.errors.borrow_mut().push(e);
    }

    /// Whether an error was recorded.
    pub(super) fn has_errors(&self) -> bool {
        !self.errors.borrow().is_empty()
    }

    /// The value, or `None` with the error recorded.
    pub(super) fn ok<T>(&self, r: Result<T, ConfigError>) -> Option<T> {
        r.map_err(|e| self.push(e)).ok()
    }

    /// The value, or `fallback` with the error recorded.
    pub(super) fn keep<T>(&self, r: Result<T, ConfigError>, fallback: T) -> T {
        self.ok(r).unwrap_or(fallback)
    }

    /// [`duration`] at `key`, with a bad value recorded and `default` kept.
    pub(super) fn duration_or(
        &self,
        v: &Option<Spanned<Dur>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        self.keep(duration(self, v, key, default), default)
    }

    /// [`int`] at `key`, with a bad value recorded and `default` kept.
    pub(super) fn int_or<T: TryFrom<i64> + Copy>(
        &self,
        v: &Option<Spanned<i64>>,
        key: &str,
        default: T,
        range: RangeInclusive<i64>,
    ) -> T {
        self.keep(int(self, v, key, default, range), default)
    }

    /// Records a warning (the file stays valid).
    pub(super) fn warn(&self, message: String) {
        self.warnings.borrow_mut().push(message);
    }

    /// The value of the environment variable `var` names (`key` is the
    /// key naming it). An unset or empty one is an error when running, a
    /// warning (and `None`) when only checking.
    pub(super) fn env_var(
        &self,
        var: &Spanned<String>,
        key: &str,
    ) -> Result<Option<String>, ConfigError> {
        let name = var.get_ref();
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(self.err_at(
                var,
                key,
                format!("{name:?} is not an environment variable name"),
            ));
        }
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(Some(v)),
            _ if self.env == Env::ShapeOnly => {
                self.warn(format!(
                    "{key}: environment variable {name} is not set here; \
                     `wayfinder run` refuses to start without it"
                ));
                Ok(None)
            }
            _ => Err(self.err_at(
                var,
                key,
                format!("environment variable {name} is not set or empty"),
            )),
        }
    }

    /// `value` when nothing was recorded, else the errors in line order.
    pub(super) fn finish<T>(&self, value: T) -> Result<T, ConfigError> {
        if self.has_errors() {
            Err(self.collected())
        } else {
            Ok(value)
        }
    }

    /// The errors recorded so far (at least one), in line order.
    pub(super) fn collected(&self) -> ConfigError {
        let mut errors = std::mem::take(&mut *self.errors.borrow_mut());
        // Errors without a line last; otherwise by line and column.
        errors.sort_by_key(|e| match e {
            ConfigError::Invalid { line, column, .. } => (*line == 0, *line, *column),
            _ => (true, 0, 0),
        });
        if errors.len() == 1 {
            return errors.pop().expect("one error");
        }
        let truncated = errors.len() > MAX_ERRORS;
        errors.truncate(MAX_ERRORS);
        ConfigError::Several { errors, truncated }
    }

    /// The warnings recorded.
    pub(super) fn warnings(self) -> Vec<String> {
        self.warnings.into_inner()
    }
}

/// 1-based line and column of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// An `IP:PORT` address.
pub(super) fn socket_addr(
    cx: &Cx<'_>,
    s: &Spanned<String>,
    key: &str,
) -> Result<SocketAddr, ConfigError> {
    s.get_ref().parse().map_err(|_| {
        cx.err_at(
            s,
            key,
            format!(
                "{:?} is not an IP:PORT address (e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")",
                s.get_ref()
            ),
        )
    })
}

/// A duration greater than zero; `default` when absent.
pub(super) fn duration(
    cx: &Cx<'_>,
    v: &Option<Spanned<Dur>>,
    key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(d) if d.get_ref().0.is_zero() => Err(cx.err_at(d, key, "must be greater than zero")),
        Some(d) => Ok(d.get_ref().0),
    }
}

/// A duration that may be zero (zero turns the feature off); `default`
/// when absent.
pub(super) fn duration_or_zero(v: &Option<Spanned<Dur>>, default: Duration) -> Duration {
    v.as_ref().map_or(default, |d| d.get_ref().0)
}

/// An integer within `range`; `default` when absent.
pub(super) fn int<T: TryFrom<i64>>(
    cx: &Cx<'_>,
    v: &Option<Spanned<i64>>,
    key: &str,
    default: T,
    range: RangeInclusive<i64>,
) -> Result<T, ConfigError> {
    match v {
        None => Ok(default),
        Some(n) if range.contains(n.get_ref()) => {
            T::try_from(*n.get_ref()).map_err(|_| cx.err_at(n, key, "out of range"))
        }
        Some(n) => Err(cx.err_at(
            n,
            key,
            format!(
                "{} is out of range {}..={}",
                n.get_ref(),
                range.start(),
                range.end()
            ),
        )),
    }
}

/// Whether `h` is written as a host name: dot-separated labels of letters,
/// digits, `-` and `_`, no empty label.
pub(super) fn valid_host_chars(h: &str) -> bool {
    !h.is_empty()
        && !h.starts_with('.')
        && !h.ends_with('.')
        && !h.contains("..")
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// A duration written with units: `"250ms"`, `"5s"`, `"1m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\" or \"5s\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                parse_duration(s).map(Dur).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Parses a duration written with units, with our own message for each
/// way it can be wrong (the parser's own messages speak of offsets).
pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    const HOW: &str = "write a number with a unit, e.g. \"250ms\", \"5s\" or \"1m\"";
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("empty duration: {HOW}"));
    }
    if t.starts_with('-') {
        return Err(format!(
            "{s:?} is negative: a duration is zero or more; {HOW}"
        ));
    }
    humantime::parse_duration(t).map_err(|e| match e {
        humantime::DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
            format!("{s:?} has no unit; {HOW}")
        }
        humantime::DurationError::UnknownUnit { unit, .. } => {
            format!("{s:?}: unknown unit {unit:?} (use ns, us, ms, s, m, h or d); {HOW}")
        }
        humantime::DurationError::NumberOverflow => format!("{s:?} is too long a duration"),
        _ => format!("{s:?} is not a duration; {HOW}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn host_syntax() {
        for good in ["a", "api.example.com", "_http._tcp.x", "a-b.c"] {
            assert!(valid_host_chars(good), "{good}");
        }
        for bad in ["", ".a", "a.", "a..b", "a b", "a:80", "a/b"] {
            assert!(!valid_host_chars(bad), "{bad}");
        }
    }

    #[test]
    fn duration_messages_are_our_own() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        let neg = parse_duration("-5s").unwrap_err();
        assert!(neg.contains("negative"), "{neg}");
        assert!(!neg.contains("expected"), "{neg}");
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("5 parsecs")
            .unwrap_err()
            .contains("\"parsecs\""));
        assert!(parse_duration("soon").unwrap_err().contains("\"250ms\""));
    }
}
