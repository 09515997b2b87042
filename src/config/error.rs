//! [`ConfigError`]: why a configuration was rejected, naming the file, the
//! line and column, and the key path of each thing wrong with it.

use std::path::PathBuf;

/// Most errors one file reports; further ones are counted, not listed.
pub(crate) const MAX_ERRORS: usize = 20;

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but its content is wrong.
    #[error("{file}:{line}:{column}: {key}: {message}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line of the offending value (0 when unknown).
        line: usize,
        /// 1-based column.
        column: usize,
        /// Dotted key path, e.g. `services.api.instances[1]`.
        key: String,
        /// What is wrong, and what is expected.
        message: String,
    },
    /// More than one thing is wrong: each error on its own line, in file
    /// order, at most 20 (`MAX_ERRORS`) of them.
    #[error("{}", several(errors, *truncated))]
    Several {
        /// The errors, each an [`ConfigError::Invalid`], in line order.
        errors: Vec<ConfigError>,
        /// Whether checking stopped at `MAX_ERRORS` with more to find.
        truncated: bool,
    },
}

fn several(errors: &[ConfigError], truncated: bool) -> String {
    let head = if truncated {
        format!("more than {MAX_ERRORS} errors; the first {MAX_ERRORS}:")
    } else {
        format!("{} errors:", errors.len())
    };
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    format!("{head}\n{}", lines.join("\n"))
}

impl ConfigError {
    /// The key path the error names (the first one's when there are
    /// several), if it is about content.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } => None,
            ConfigError::Several { errors, .. } => errors.first().and_then(ConfigError::key),
        }
    }

    /// The 1-based line the error names (the first one's), if known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } if *line > 0 => Some(*line),
            ConfigError::Several { errors, .. } => errors.first().and_then(ConfigError::line),
            _ => None,
        }
    }

    /// Each error on its own: the listed ones of [`ConfigError::Several`],
    /// else this one.
    pub fn each(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Several { errors, .. } => errors.iter().collect(),
            e => vec![e],
        }
    }
}
