//! What every component's settings share: a configuration error with where it is, human units
//! (sizes, durations), and paths relative to the configuration file.

use std::fmt;
use std::path::{Path, PathBuf};

pub mod units;

/// One problem in the configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub location: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(location: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            location: location.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.location, self.message)
    }
}

/// All the problems of one configuration file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.errors.len();
        writeln!(
            formatter,
            "{}: {count} error{}",
            self.file,
            if count == 1 { "" } else { "s" }
        )?;
        for error in &self.errors {
            writeln!(formatter, "  - {error}")?;
        }
        Ok(())
    }
}

/// A path from the config file: absolute, or relative to the file's directory `base`.
pub(crate) fn resolve(base: &Path, path: &str) -> PathBuf {
    let path = PathBuf::from(path);
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

/// The operating-system user running this process: its name from the password database, else
/// `$USER`/`$LOGNAME`, else `uid:N`. For the records of what CLI commands did.
pub fn os_user() -> String {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_string))
        });
    if let Some(uid) = &uid {
        let named = std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|passwd| {
                passwd.lines().find_map(|line| {
                    let mut fields = line.split(':');
                    let name = fields.next()?;
                    (fields.nth(1)? == uid).then(|| name.to_string())
                })
            });
        if let Some(name) = named {
            return name;
        }
    }
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|variable| std::env::var(variable).ok().filter(|name| !name.is_empty()))
        .or_else(|| uid.map(|uid| format!("uid:{uid}")))
        .unwrap_or_else(|| "unknown".to_string())
}
