//! The log output of `wayfinder`: to stderr, filtered by `RUST_LOG` or
//! `--log-level` (levels checked, so a mistyped one is refused instead of
//! silencing every line), as text (in colour only on a terminal), JSON
//! lines or journald's priority-prefixed lines (`--log-format`).

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines with a timestamp; colour only on a terminal.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`,
    /// `target`, `spans`).
    Json,
    /// `<N>` syslog priority prefix, target and fields, no timestamp and
    /// no colour: what systemd's journal reads from a service's stderr.
    Journald,
}

/// The log levels accepted, for error messages.
const LOG_LEVELS: &str = "error, warn (or warning), info, debug, trace or off";

/// Checks a log filter (`LEVEL`, `TARGET=LEVEL`, comma-separated, as
/// tracing's `EnvFilter` reads them) and returns it with level aliases
/// (`warning`) replaced. A bare word must be a level: `EnvFilter` would read
/// a mistyped level (`inof`) as a target name and log nothing at all.
pub fn filter(spec: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        // A `=` inside `[span{field=value}]` is not the level's.
        let level_at = directive
            .rfind('=')
            .filter(|&i| !directive[i + 1..].contains([']', '}']));
        match level_at {
            Some(i) => {
                let target = &directive[..i];
                if target.is_empty() {
                    return Err(format!("{directive:?} names no target before '='"));
                }
                out.push(format!("{target}={}", log_level(&directive[i + 1..])?));
            }
            // A span filter without a level (`target[span]`) is EnvFilter's own.
            None if directive.contains('[') => out.push(directive.to_owned()),
            None => out.push(log_level(directive)?.to_owned()),
        }
    }
    if out.is_empty() {
        return Err(format!("no log level given: use {LOG_LEVELS}"));
    }
    let filter = out.join(",");
    EnvFilter::builder()
        .parse(&filter)
        .map_err(|e| format!("{spec:?}: {e}"))?;
    Ok(filter)
}

/// The level `word` names (`warning` is `warn`), any case.
fn log_level(word: &str) -> Result<&'static str, String> {
    Ok(match word.trim().to_ascii_lowercase().as_str() {
        "error" => "error",
        "warn" | "warning" => "warn",
        "info" => "info",
        "debug" => "debug",
        "trace" => "trace",
        "off" => "off",
        _ => {
            return Err(format!(
                "{word:?} is not a log level: use {LOG_LEVELS} (a target's level is TARGET=LEVEL)"
            ))
        }
    })
}

/// Logs to stderr in `format`, filtered by RUST_LOG when it is set and not
/// empty, else by `--log-level`. Colour only on a terminal, and not with
/// NO_COLOR.
pub fn init(log_level: &str, format: LogFormat) -> Result<(), String> {
    let spec = match std::env::var("RUST_LOG") {
        Ok(v) if v.trim().is_empty() => log_level.to_owned(),
        Ok(v) => filter(&v).map_err(|e| format!("RUST_LOG: {e}"))?,
        Err(std::env::VarError::NotPresent) => log_level.to_owned(),
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err("RUST_LOG is not valid UTF-8".to_owned())
        }
    };
    let env_filter = EnvFilter::builder()
        .parse(&spec)
        .map_err(|e| format!("log filter {spec:?}: {e}"))?;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colour).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
        LogFormat::Journald => builder.with_ansi(false).event_format(Journald).init(),
    }
    Ok(())
}

/// Lines for systemd's journal: `<6>wayfinder::app: message key=value`
/// (sd-daemon(3) priority prefixes; the journal adds the time).
struct Journald;

impl<S, N> FormatEvent<S, N> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        write!(writer, "<{}>{}: ", priority(*meta.level()), meta.target())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The syslog priority of a level: err, warning, info, debug.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_and_their_aliases() {
        assert_eq!(filter("info").unwrap(), "info");
        assert_eq!(filter("warning").unwrap(), "warn");
        assert_eq!(filter("WARN").unwrap(), "warn");
        assert_eq!(filter(" Debug ").unwrap(), "debug");
        assert_eq!(filter("off").unwrap(), "off");
        assert_eq!(
            filter("info,wayfinder::health=warning").unwrap(),
            "info,wayfinder::health=warn"
        );
        assert_eq!(
            filter("wayfinder[request{id=7}]=debug").unwrap(),
            "wayfinder[request{id=7}]=debug"
        );
        assert_eq!(filter("wayfinder[request]").unwrap(), "wayfinder[request]");
    }

    #[test]
    fn unknown_levels_are_refused_naming_the_word() {
        for bad in [
            "bogus",
            "inof",
            "wayfinder",
            "info,wanr",
            "hyper=loud",
            "=info",
            "",
            " , ",
        ] {
            let e = filter(bad).expect_err(bad);
            assert!(
                e.contains("not a log level")
                    || e.contains("no target")
                    || e.contains("no log level"),
                "{bad:?}: {e}"
            );
        }
        let e = filter("inof").unwrap_err();
        assert!(e.contains("\"inof\"") && e.contains("warning"), "{e}");
    }
}
