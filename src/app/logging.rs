//! The log output of `wayfinder`: to stderr, filtered by `RUST_LOG` or
//! `--log-level` (levels checked, so a mistyped one is refused instead of
//! silencing every line), in colour only on a terminal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

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

/// Logs to stderr, filtered by RUST_LOG when it is set and not empty, else
/// by `--log-level`. Colour only on a terminal, and not with NO_COLOR.
pub fn init(log_level: &str) -> Result<(), String> {
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
    tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
    Ok(())
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
