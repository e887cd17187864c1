//! Problem reporting: every problem of a file with its key and reason,
//! all at once, and reading TOML into typed files with the line of each
//! mistake.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: PathBuf,
    /// Dotted key, e.g. `region[0].node[1].kafka`; empty for whole-file errors.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.path.display(), self.reason)
        } else {
            write!(f, "{}: {}: {}", self.path.display(), self.key, self.reason)
        }
    }
}

/// All problems found while loading configuration.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub(super) fn one(path: &Path, key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![ConfigProblem {
                path: path.to_path_buf(),
                key: key.into(),
                reason: reason.into(),
            }],
        }
    }
}

/// Collects problems for one file.
pub(super) struct Problems<'a> {
    path: &'a Path,
    list: Vec<ConfigProblem>,
}

impl<'a> Problems<'a> {
    pub(super) fn new(path: &'a Path) -> Self {
        Problems {
            path,
            list: Vec::new(),
        }
    }
    pub(super) fn add(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.list.push(ConfigProblem {
            path: self.path.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        });
    }
    pub(super) fn finish(self) -> Result<(), ConfigError> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                problems: self.list,
            })
        }
    }
}

pub(super) fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::one(
            path,
            "",
            format!("cannot read the file: {e}; check the path and its permissions"),
        )
    })?;
    parse_toml(path, &text)
}

pub(super) fn parse_toml<T: for<'de> Deserialize<'de>>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        // toml's message names the line, column and key, e.g.
        // "unknown field `kafak`, expected one of `id`, `quic`, ...".
        let key = e
            .span()
            .map(|s| {
                let line = text[..s.start].matches('\n').count() + 1;
                format!("line {line}")
            })
            .unwrap_or_default();
        ConfigError::one(path, key, e.message().trim().to_string())
    })
}

/// A node config problem that is another file's problems, one per line.
pub(super) fn cannot_use(what: &str, path: &Path, e: &ConfigError) -> String {
    let lines: Vec<String> = e.problems.iter().map(|x| x.to_string()).collect();
    format!(
        "cannot use {what} file {}:\n    {}",
        path.display(),
        lines.join("\n    ")
    )
}
