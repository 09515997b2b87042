//! Reading a file into the raw mirror while collecting every error it can
//! find, up to [`MAX_ERRORS`]: all TOML syntax errors (a key or table
//! defined twice named by its key path), then every type or unknown-key
//! error (each offending key is set aside and the file read again). The
//! meaning checks of `validate` then add theirs to the same context
//! ([`Cx`]). Errors come out in line order.

use std::ops::Range;

use serde_path_to_error::Segment;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::check::{line_col, Cx};
use super::error::{ConfigError, MAX_ERRORS};
use super::raw::RawConfig;

/// Parses the TOML and deserializes the raw mirror. Syntax errors end the
/// reading (all of them reported). A type or unknown-key error is recorded
/// and its key set aside, and the file is read again, so every such error
/// is found; the result lacks the keys set aside (the caller reports the
/// recorded errors after its own checks). When an error cannot be set
/// aside (an array element of the wrong type, a missing required key in
/// an array of tables), reading stops there.
pub(super) fn parse_raw(cx: &Cx<'_>) -> Result<RawConfig, ConfigError> {
    let (root, syntax) = DeTable::parse_recoverable(cx.text());
    if !syntax.is_empty() {
        let mut reported: Vec<String> = Vec::new();
        for e in &syntax {
            let err = syntax_error(cx, e, &reported);
            if let Some(err) = err {
                if let ConfigError::Invalid { key, .. } = &err {
                    reported.push(key.clone());
                }
                cx.push(err);
            }
        }
        if !cx.has_errors() {
            // Every syntax error was a follow-on of another: keep the first.
            cx.push(cx.err(syntax[0].span(), "(syntax)", syntax[0].message().trim()));
        }
        return Err(cx.collected());
    }
    let mut root = root;
    let mut aside: Vec<String> = Vec::new();
    for _ in 0..=MAX_ERRORS + 1 {
        let de = toml::de::Deserializer::from(root.clone());
        let e = match serde_path_to_error::deserialize::<_, RawConfig>(de) {
            Ok(raw) => return Ok(raw),
            Err(e) => e,
        };
        let segments: Vec<Segment> = e
            .path()
            .iter()
            .filter(|s| !matches!(s, Segment::Map { key } if key.starts_with("$__serde_spanned")))
            .cloned()
            .collect();
        let inner = e.into_inner();
        let segments = with_indices(root.get_ref(), &segments, inner.span());
        let key = key_of(&segments);
        let message = inner.message().trim();
        // A required key set aside for its own error now shows as missing:
        // not a second error; the table goes aside instead.
        let follow_on = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'))
            .is_some_and(|field| aside.contains(&format!("{key}.{field}")));
        if !follow_on {
            cx.push(cx.err(inner.span(), &key, message));
        }
        if !set_aside(root.get_mut(), &segments) {
            break;
        }
        aside.push(key);
    }
    Err(cx.collected())
}

/// Removes the key at `path` from `table`; whether it could. An error
/// inside an array (`routes[0].hots`, `instances[1]`) sets the whole array
/// aside: removing one element would renumber the others in later errors,
/// and removing a key inside one would leave it incomplete.
fn set_aside(table: &mut DeTable<'_>, path: &[Segment]) -> bool {
    let upto = path
        .iter()
        .position(|s| matches!(s, Segment::Seq { .. }))
        .unwrap_or(path.len());
    let Some((Segment::Map { key: last }, parents)) = path[..upto].split_last() else {
        return false;
    };
    let mut at = table;
    for segment in parents {
        let Segment::Map { key } = segment else {
            return false;
        };
        let Some(DeValue::Table(t)) = at.get_mut(key.as_str()).map(Spanned::get_mut) else {
            return false;
        };
        at = t;
    }
    at.remove(last.as_str()).is_some()
}

/// `segments` with the array indices the path lost on its way through
/// `Spanned` (`instances.adress` for `instances[1].adress`), found from
/// where the error is.
fn with_indices(
    root: &DeTable<'_>,
    segments: &[Segment],
    span: Option<Range<usize>>,
) -> Vec<Segment> {
    let mut out = Vec::with_capacity(segments.len() + 1);
    let mut at: Option<&DeValue<'_>> = None;
    for (i, segment) in segments.iter().enumerate() {
        let table = match at {
            None if i == 0 => Some(root),
            Some(DeValue::Table(t)) => Some(t),
            Some(DeValue::Array(items)) if matches!(segment, Segment::Map { .. }) => {
                let found = span.as_ref().and_then(|span| {
                    items.iter().position(|item| {
                        let s = item.span();
                        s.start <= span.start && span.start < s.end.max(s.start + 1)
                    })
                });
                match found {
                    Some(index) => {
                        out.push(Segment::Seq { index });
                        match items[index].get_ref() {
                            DeValue::Table(t) => Some(t),
                            _ => None,
                        }
                    }
                    None => None,
                }
            }
            _ => None,
        };
        out.push(segment.clone());
        at = match (segment, table, at) {
            (Segment::Map { key }, Some(t), _) => t.get(key.as_str()).map(Spanned::get_ref),
            (Segment::Seq { index }, _, Some(DeValue::Array(items))) => {
                items.get(*index).map(Spanned::get_ref)
            }
            _ => None,
        };
    }
    out
}

/// A path as the user wrote it: `services.api.instances[1].adress`.
fn key_of(segments: &[Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
            }
            Segment::Unknown => {}
        }
    }
    if out.is_empty() {
        "(top level)".to_owned()
    } else {
        out
    }
}

/// A TOML syntax error as a config error. A key or table defined twice is
/// named by its key path, with the line of its first definition;
/// `None` for a duplicate inside a table already reported as a duplicate.
fn syntax_error(cx: &Cx<'_>, e: &toml::de::Error, reported: &[String]) -> Option<ConfigError> {
    let message = e.message().trim();
    let Some(span) = e.span() else {
        return Some(cx.err(None, "(syntax)", message));
    };
    if message != "duplicate key" {
        return Some(cx.err(Some(span), "(syntax)", message));
    }
    let lines: Vec<&str> = cx.text().split('\n').collect();
    let (line_no, col) = line_col(cx.text(), span.end);
    let (line_no, end) = (line_no - 1, col - 1);
    let Some(path) = key_path(&lines, line_no, end) else {
        return Some(cx.err(Some(span), "(syntax)", "a key or table is defined twice"));
    };
    if reported
        .iter()
        .any(|r| path.starts_with(r.as_str()) && path[r.len()..].starts_with('.'))
    {
        return None;
    }
    let header = lines[line_no].trim_start().starts_with('[');
    let first = (0..line_no).find(|&i| {
        let len = lines[i].len();
        let key_end = if lines[i].trim_start().starts_with('[') {
            lines[i].find(']').unwrap_or(len)
        } else {
            lines[i].find('=').unwrap_or(len)
        };
        key_path(&lines, i, key_end).as_deref() == Some(path.as_str())
    });
    let what = if header {
        format!("table [{path}] is defined twice")
    } else {
        "this key is set twice in its table".to_owned()
    };
    let message = match first {
        Some(i) => format!("{what} (first on line {})", i + 1),
        None => what,
    };
    Some(cx.err(Some(span), path, message))
}

/// The dotted key path of what line `line_no` (0-based) defines up to byte
/// `end` of the line: a table header's name (`[services.api]` gives
/// `services.api`), or a key under the table the line is in
/// (`services.api.instances`; `routes[1].service` in the second
/// `[[routes]]`). `None` when the line is not that simple.
fn key_path(lines: &[&str], line_no: usize, end: usize) -> Option<String> {
    let line = lines.get(line_no)?;
    let upto = line.get(..end.min(line.len()))?;
    let t = upto.trim_start();
    if t.starts_with('[') {
        let name = t.trim_start_matches('[').trim_end_matches(']');
        return dotted(name);
    }
    let t = t.split('=').next()?;
    let key = dotted(t)?;
    let table = (0..line_no)
        .rev()
        .find(|&i| lines[i].trim_start().starts_with('['));
    match table {
        None => Some(key),
        Some(i) => Some(format!("{}.{key}", table_name(lines, i)?)),
    }
}

/// The name of the table whose header is on line `i`; an array of tables
/// gets its index (`routes[1]`).
fn table_name(lines: &[&str], i: usize) -> Option<String> {
    let t = lines[i].trim();
    let t = t.split('#').next()?.trim();
    if let Some(inner) = t.strip_prefix("[[") {
        let name = dotted(inner.trim_end_matches("]]"))?;
        let index = (0..i)
            .filter(|&j| {
                let o = lines[j].trim();
                o.starts_with("[[")
                    && dotted(o.trim_start_matches('[').split(']').next().unwrap_or("")).as_deref()
                        == Some(name.as_str())
            })
            .count();
        return Some(format!("{name}[{index}]"));
    }
    dotted(t.trim_start_matches('[').split(']').next()?)
}

/// `a . "b" .c` as `a.b.c`; `None` unless it is made of bare or quoted keys.
fn dotted(s: &str) -> Option<String> {
    let parts: Vec<String> = s
        .split('.')
        .map(|p| p.trim().trim_matches('"').trim_matches('\'').to_owned())
        .collect();
    let ok = parts.iter().all(|p| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b':')
    });
    ok.then(|| parts.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_util::errs;

    #[test]
    fn duplicate_table_names_its_key_path_and_first_line() {
        let e = errs(
            "[services.api]\ninstances = [\"127.0.0.1:1\"]\n\n[services.api]\ninstances = [\"127.0.0.1:2\"]\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        let (line, key, msg) = &e[0];
        assert_eq!((*line, key.as_str()), (4, "services.api"));
        assert!(msg.contains("[services.api] is defined twice"), "{msg}");
        assert!(msg.contains("first on line 1"), "{msg}");
    }

    #[test]
    fn duplicate_key_names_its_table() {
        let e = errs(
            "listen = [\"127.0.0.1:1\"]\n[[routes]]\nservice = \"a\"\n[[routes]]\nservice = \"a\"\nservice = \"b\"\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].0, e[0].1.as_str()), (6, "routes[1].service"));
        assert!(e[0].2.contains("first on line 5"), "{}", e[0].2);
    }

    #[test]
    fn several_shape_errors_are_all_reported_in_line_order() {
        let e = errs(
            "[timeouts]\nconect = \"2s\"\n[limits]\nmax_connections = \"many\"\n\
             [services.a]\nbalanse = \"x\"\ninstances = [\"127.0.0.1:1\", { adress = \"x\" }]\n\
             [services.b]\ninstances = [\"nowhere\"]\n\
             [services.c.health]\nkind = \"tcp\"\ninterval = \"-5s\"\n",
        );
        let keys: Vec<&str> = e.iter().map(|(_, k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "timeouts.conect",
                "limits.max_connections",
                "services.a.balanse",
                "services.a.instances[1].adress",
                "services.b.instances[0]",
                "services.c.health.interval",
            ],
            "{e:?}"
        );
        let lines: Vec<usize> = e.iter().map(|(l, _, _)| *l).collect();
        assert_eq!(lines, [2, 4, 6, 7, 9, 12]);
        assert!(e[5].2.contains("negative"), "{}", e[5].2);
    }

    #[test]
    fn errors_are_bounded() {
        let text: String = (0..30)
            .map(|i| format!("[services.s{i}]\nbalanse = 1\n"))
            .collect();
        match crate::config::test_util::parse(&text).unwrap_err() {
            ConfigError::Several { errors, truncated } => {
                assert_eq!(errors.len(), MAX_ERRORS);
                assert!(truncated);
            }
            e => panic!("{e}"),
        }
    }
}
