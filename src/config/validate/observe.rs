//! The operator's tables: `[metrics]` and `[access_log]`.

use std::path::{Path, PathBuf};

use crate::config::check::Cx;
use crate::config::defaults::{access_log as al, metrics as m};
use crate::config::raw::{RawAccessLog, RawMetrics};
use crate::config::{AccessLogFormat, AccessLogSettings, MetricsSettings};

/// `[metrics]`.
pub(super) fn metrics(raw: &RawMetrics) -> MetricsSettings {
    MetricsSettings {
        enabled: raw.enabled.unwrap_or(m::ENABLED),
    }
}

/// `[access_log]`: a relative path is taken from the config file's
/// directory; `"stdout"` means standard output.
pub(super) fn access_log(cx: &Cx<'_>, raw: &RawAccessLog) -> AccessLogSettings {
    let path = match &raw.path {
        None => None,
        Some(p) if p.get_ref() == al::PATH => None,
        Some(p) if p.get_ref().trim().is_empty() => {
            cx.push(cx.err_at(
                p,
                "access_log.path",
                "name a file, or \"stdout\" for standard output",
            ));
            None
        }
        Some(p) => {
            let path = PathBuf::from(p.get_ref());
            Some(if path.is_relative() {
                cx.file().parent().unwrap_or(Path::new(".")).join(path)
            } else {
                path
            })
        }
    };
    let format = match raw.format.as_ref().map(|f| (f, f.get_ref().as_str())) {
        None => AccessLogFormat::Text,
        Some((_, f)) if f == al::FORMAT => AccessLogFormat::Text,
        Some((_, "json")) => AccessLogFormat::Json,
        Some((f, _)) => {
            cx.push(cx.err_at(f, "access_log.format", "use \"text\" or \"json\""));
            AccessLogFormat::Text
        }
    };
    AccessLogSettings {
        enabled: raw.enabled.unwrap_or(al::ENABLED),
        path,
        format,
        queue: cx.int_or(&raw.queue, "access_log.queue", al::QUEUE, 1..=1_048_576),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_util::{err, parse};
    use crate::config::AccessLogFormat;

    #[test]
    fn defaults_and_values() {
        let c = parse("").unwrap();
        assert!(c.startup.metrics.enabled);
        assert!(!c.startup.access_log.enabled);
        assert_eq!(c.startup.access_log.path, None);
        let c = parse(
            "[metrics]\nenabled = false\n[access_log]\nenabled = true\npath = \"a.log\"\nformat = \"json\"\nqueue = 10\n",
        )
        .unwrap();
        assert!(!c.startup.metrics.enabled);
        let a = &c.startup.access_log;
        assert!(a.enabled && a.format == AccessLogFormat::Json && a.queue == 10);
        assert!(a.path.as_ref().unwrap().ends_with("a.log"));
    }

    #[test]
    fn bad_values_are_named() {
        let (_, key, _) = err("[access_log]\nformat = \"xml\"\n");
        assert_eq!(key, "access_log.format");
        let (_, key, _) = err("[access_log]\nqueue = 0\n");
        assert_eq!(key, "access_log.queue");
        let (_, key, _) = err("[proxy]\nrequest_id_header = \"via\"\n");
        assert_eq!(key, "proxy.request_id_header");
    }
}
