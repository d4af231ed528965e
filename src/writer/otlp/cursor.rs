//! Where an output is in the log: the sequence number of the last entry the collector
//! acknowledged, kept in a small file beside the store's spill file
//! (`<store file>.otlp-<name>.cursor`).
//!
//! A file rather than a row in the store: the store's schema stays the same for both backends
//! and for every read command, a PostgreSQL store shared by a fleet needs no per-sidecar table,
//! and the cursor is written only by its exporter, off the writer's connection. Each write goes
//! to a temporary file, is fsynced, and is renamed over the old one, so a crash leaves either the
//! old cursor or the new one, never a torn one.
//!
//! The cursor also records the log id and the leaf hash of the acknowledged entry, so a cursor
//! found beside a different log (a store restored from an older copy, or moved aside for a new
//! log) is recognised and not trusted: the output then starts again from the first entry, which
//! may resend entries but never skips one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::config::StoreConfig;

/// The saved position of one output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cursor {
    /// Which log the position is in.
    pub log_id: String,
    /// The endpoint it was sent to (for a reader of the file; a moved endpoint keeps the cursor
    /// of its `name`).
    pub endpoint: String,
    /// The last acknowledged entry's sequence number; 0 before the first.
    pub seq: u64,
    /// That entry's leaf hash (hex), to recognise the log; absent at 0.
    pub leaf: Option<String>,
}

/// The cursor file of the output `name` for the store of `store`.
pub fn cursor_path(store: &StoreConfig, name: &str) -> PathBuf {
    let spill = store.spill_path();
    let file_name = store
        .path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "audit.db".to_string());
    spill.with_file_name(format!("{file_name}.otlp-{name}.cursor"))
}

/// Reads the cursor; `Ok(None)` when there is none yet.
pub fn read(path: &Path) -> Result<Option<Cursor>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| format!("{} is not a cursor: {error}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(format!("cannot read {}: {error}", path.display())),
    }
}

/// Replaces the cursor durably (temporary file, fsync, rename, fsync of the directory).
pub fn write(path: &Path, cursor: &Cursor) -> std::io::Result<()> {
    let directory = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(directory)?;
    let mut temporary = path.as_os_str().to_os_string();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    {
        let mut file = std::fs::File::create(&temporary)?;
        let mut bytes = serde_json::to_vec(cursor).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    // The rename itself is durable only once the directory is.
    if let Ok(directory) = std::fs::File::open(directory) {
        let _ = directory.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_a_round_trip_and_a_missing_one_is_none() {
        let dir = std::env::temp_dir().join(format!("auditgate-cursor-{}", ulid::Ulid::new()));
        let path = dir.join("nested/audit.db.otlp-siem.cursor");
        assert_eq!(read(&path), Ok(None));
        let cursor = Cursor {
            log_id: "orders".into(),
            endpoint: "http://collector:4318/v1/logs".into(),
            seq: 17,
            leaf: Some("ab".repeat(32)),
        };
        write(&path, &cursor).expect("writes");
        assert_eq!(read(&path), Ok(Some(cursor.clone())));
        let later = Cursor { seq: 18, ..cursor };
        write(&path, &later).expect("replaces");
        assert_eq!(read(&path), Ok(Some(later)));
        std::fs::write(&path, b"{\"seq\": ").expect("write");
        assert!(read(&path).expect_err("torn").contains("is not a cursor"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
