//! Opening a SQLite log for the read commands (`query`, `export`, `verify`, `backup`) without
//! creating or changing any file.
//!
//! Plain `SQLITE_OPEN_READ_ONLY` is not enough for that: on a database in WAL mode SQLite
//! creates the `-wal` and `-shm` files beside it (and a read-only connection cannot remove them
//! again). So a WAL-mode file with no `-wal` beside it, which no sidecar has open, is read as
//! `immutable` (no locks, no side files), and the file's size and modification time are compared
//! after the read: a sidecar that started on it meanwhile and checkpointed into it makes the read
//! fail rather than return a mixture. A file with a `-wal` beside it is in use (or was not
//! stopped cleanly) and is read normally, through that WAL.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::{Connection, OpenFlags};

use crate::store::StoreError;

/// Offset of the "file format read version" byte of the SQLite header: 2 means WAL mode.
const HEADER_READ_VERSION: usize = 18;

/// How a read-only connection reaches the file; [`ReadOnlySource::connect`] opens more of them
/// (the reader pool) the same way.
#[derive(Debug, Clone)]
pub struct ReadOnlySource {
    path: PathBuf,
    /// `Some(uri)` when read as immutable.
    immutable_uri: Option<String>,
    /// Size and modification time at open, for an immutable read.
    stamp: Option<(u64, Option<SystemTime>)>,
}

/// The file SQLite keeps a database's write-ahead log in.
pub fn wal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push("-wal");
    PathBuf::from(name)
}

fn stamp(path: &Path) -> Option<(u64, Option<SystemTime>)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.len(), metadata.modified().ok()))
}

/// What to tell the user when a file holds no log, pointing at a `-wal` file beside it.
fn no_log(path: &Path, what: &str) -> StoreError {
    let wal = wal_path(path);
    let hint = if wal.exists() {
        format!(
            "; a WAL file {} lies beside it that SQLite could not use with it (was the database \
             file copied, or replaced, without it?): copy a running store with `auditgate \
             backup`, or stop the sidecar first",
            wal.display()
        )
    } else {
        " (a copy of a running store's file without its -wal file looks like this: copy a \
         running store with `auditgate backup`, or stop the sidecar first)"
            .to_string()
    };
    StoreError::NoLog {
        path: path.display().to_string(),
        message: format!("{what}{hint}"),
    }
}

/// A file written before schema version 4 has no `recent` table, and a read command must not add
/// one to it: an empty temporary table of that name stands in, so every read runs the same SQL on
/// every version. Temporary tables live in the connection's own temporary database, never in the
/// file.
fn provide_recent(connection: &Connection) -> rusqlite::Result<()> {
    if !super::rows::has_table(connection, "recent")? {
        let schema = include_str!("schema_v4.sql");
        let create = schema
            .find("CREATE TABLE")
            .map_or(schema, |start| &schema[start..]);
        connection.execute_batch(&create.replacen("CREATE TABLE", "CREATE TEMP TABLE", 1))?;
    }
    Ok(())
}

impl ReadOnlySource {
    /// Checks that `path` is an existing SQLite file holding an auditgate log (schema version 1
    /// or later) and opens a first connection to it, read-only, creating nothing.
    pub fn open(path: &Path) -> Result<(ReadOnlySource, Connection), StoreError> {
        let open_error = |message: String| StoreError::Open {
            path: path.display().to_string(),
            message,
        };
        let metadata = match std::fs::metadata(path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NoLog {
                    path: path.display().to_string(),
                    message: "no such file (read commands never create one)".to_string(),
                })
            }
            Err(error) => return Err(open_error(error.to_string())),
        };
        if !metadata.is_file() {
            return Err(open_error("not a file".to_string()));
        }
        if metadata.len() == 0 {
            return Err(no_log(path, "the file is empty"));
        }
        let mut header = [0u8; 100];
        {
            use std::io::Read as _;
            let mut file =
                std::fs::File::open(path).map_err(|error| open_error(error.to_string()))?;
            file.read_exact(&mut header).map_err(|_| {
                open_error("not a SQLite database (shorter than its header)".into())
            })?;
        }
        if &header[..16] != b"SQLite format 3\0" {
            return Err(open_error("not a SQLite database".to_string()));
        }
        let wal_mode = header[HEADER_READ_VERSION] == 2;
        let immutable_uri = if wal_mode && !wal_path(path).exists() {
            path.to_str().map(immutable_uri)
        } else {
            None
        };
        let source = ReadOnlySource {
            path: path.to_path_buf(),
            stamp: immutable_uri.as_ref().and_then(|_| stamp(path)),
            immutable_uri,
        };
        let connection = source.connect()?;
        let version: i64 = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|error| open_error(error.to_string()))?;
        if version == 0 {
            return Err(no_log(path, "it is a SQLite file with no audit log in it"));
        }
        Ok((source, connection))
    }

    /// Another read-only connection to the same file, opened the same way.
    pub fn connect(&self) -> Result<Connection, StoreError> {
        let open_error = |error: rusqlite::Error| StoreError::Open {
            path: self.path.display().to_string(),
            message: error.to_string(),
        };
        let connection = match &self.immutable_uri {
            Some(uri) => Connection::open_with_flags(
                uri,
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_URI
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            ),
            None => Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            ),
        }
        .map_err(open_error)?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        provide_recent(&connection).map_err(open_error)?;
        Ok(connection)
    }

    /// Whether the file is read without locks (no sidecar had it open).
    pub fn is_immutable(&self) -> bool {
        self.immutable_uri.is_some()
    }

    /// After an immutable read: fails when the file changed while it was read (a sidecar started
    /// on it and wrote into it), since what was read may then mix two states.
    pub fn check_unchanged(&self) -> Result<(), StoreError> {
        if self.immutable_uri.is_none() || stamp(&self.path) == self.stamp {
            return Ok(());
        }
        Err(StoreError::Other(format!(
            "{} changed while it was being read (a sidecar started on it?); run the command again",
            self.path.display()
        )))
    }
}

/// `file:` URI of a path with the `immutable` parameter; `%`, `?` and `#` are escaped, as the
/// URI syntax SQLite parses requires.
fn immutable_uri(path: &str) -> String {
    let mut uri = String::from("file:");
    for character in path.chars() {
        match character {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            other => uri.push(other),
        }
    }
    uri.push_str("?immutable=1");
    uri
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_characters_of_a_path_are_escaped_in_the_uri() {
        assert_eq!(
            immutable_uri("/data/a%b?c#d.db"),
            "file:/data/a%25b%3fc%23d.db?immutable=1"
        );
    }
}
