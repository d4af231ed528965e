//! `[discover]`: whether the proxy learns routes from traffic, and where what it learned is kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::base::{resolve, units::parse_duration, ConfigError};

/// `[discover]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverFile {
    /// Learn route templates from the traffic (default false). Traffic is never changed.
    pub enabled: Option<bool>,
    /// The JSON file what was learned is saved to and read back from at start (default: beside
    /// the SQLite store, `<store path>.routes.json`).
    pub file: Option<String>,
    /// How often what was learned is saved (default "60s"; also saved at a clean stop).
    pub save_interval: Option<String>,
}

/// `[discover]` as the sidecar runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverConfig {
    pub enabled: bool,
    pub file: PathBuf,
    pub save_interval: Duration,
}

const DEFAULT_SAVE_INTERVAL: Duration = Duration::from_secs(60);
/// Saving more often than this would spend the disk on a summary.
const MIN_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// Where the learned routes of a store at `store_path` are kept by default.
pub fn learned_path_beside(store_path: &Path) -> PathBuf {
    let mut name = store_path
        .file_name()
        .map(|name| name.to_os_string())
        .unwrap_or_default();
    name.push(".routes.json");
    store_path.with_file_name(name)
}

/// Validates `[discover]`; relative paths start from `data_base`, the default file sits beside
/// the store at `store_path`.
pub fn validate_discover(
    file: &DiscoverFile,
    data_base: &Path,
    store_path: &Path,
    errors: &mut Vec<ConfigError>,
) -> DiscoverConfig {
    let save_interval = match file.save_interval.as_deref().map(parse_duration) {
        None => DEFAULT_SAVE_INTERVAL,
        Some(Ok(interval)) if interval >= MIN_SAVE_INTERVAL => interval,
        Some(Ok(_)) => {
            errors.push(ConfigError::new(
                "discover.save_interval",
                "must be at least 1s",
            ));
            DEFAULT_SAVE_INTERVAL
        }
        Some(Err(message)) => {
            errors.push(ConfigError::new("discover.save_interval", message));
            DEFAULT_SAVE_INTERVAL
        }
    };
    let path = match file.file.as_deref() {
        Some("") => {
            errors.push(ConfigError::new(
                "discover.file",
                "is empty: leave it out to keep the learned routes beside the store",
            ));
            learned_path_beside(store_path)
        }
        Some(path) => resolve(data_base, path),
        None => learned_path_beside(store_path),
    };
    DiscoverConfig {
        enabled: file.enabled.unwrap_or(false),
        file: path,
        save_interval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_sit_beside_the_store_and_errors_name_the_key() {
        let mut errors = Vec::new();
        let config = validate_discover(
            &DiscoverFile {
                enabled: Some(true),
                ..DiscoverFile::default()
            },
            Path::new("/etc/auditgate"),
            Path::new("/var/lib/auditgate/audit.db"),
            &mut errors,
        );
        assert!(errors.is_empty());
        assert!(config.enabled);
        assert_eq!(
            config.file,
            PathBuf::from("/var/lib/auditgate/audit.db.routes.json")
        );
        assert_eq!(config.save_interval, DEFAULT_SAVE_INTERVAL);

        let bad = DiscoverFile {
            enabled: None,
            file: Some(String::new()),
            save_interval: Some("0s".to_string()),
        };
        validate_discover(&bad, Path::new("/"), Path::new("/a.db"), &mut errors);
        let locations: Vec<&str> = errors.iter().map(|e| e.location.as_str()).collect();
        assert_eq!(locations, ["discover.save_interval", "discover.file"]);
    }
}
