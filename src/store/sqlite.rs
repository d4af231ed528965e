//! The embedded SQLite store: one file, WAL journal, versioned migrations.
//!
//! One connection writes (the writer thread's); readers take a connection from a small pool, so
//! admin queries never block appends (WAL lets readers and the writer proceed together).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use rusqlite::{params, Connection, OpenFlags};

use super::query::{Filter, PageRequest};
use super::sqlite_rows::{self, Bucket, Page, StatsBy};
use super::{Store, StoreError};
use crate::config::SyncMode;
use crate::entry::{format_timestamp, AuditEntry};

/// Migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[include_str!("schema_v1.sql")];

/// How many idle reader connections are kept.
const READER_POOL: usize = 4;

pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    next_seq: AtomicU64,
    /// The database file as opened, to notice it removed or replaced while in use.
    database_file: Option<FileIdentity>,
    /// The WAL file as opened (absent when SQLite had not created one).
    wal_file: Option<FileIdentity>,
    /// Set once the entries of a removed WAL have been checkpointed into the database file.
    wal_rescued: AtomicBool,
}

/// Which file a path names (device and inode). SQLite keeps writing through its open handles
/// when the database or its WAL is deleted or replaced under it, and everything written there
/// is gone at the next start; comparing identities is how that is noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
}

impl FileIdentity {
    fn of(path: &Path) -> std::io::Result<FileIdentity> {
        let metadata = std::fs::metadata(path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Ok(FileIdentity {
                device: metadata.dev(),
                inode: metadata.ino(),
            })
        }
        #[cfg(not(unix))]
        {
            // Elsewhere only removal is noticed.
            let _ = metadata;
            Ok(FileIdentity {
                device: 0,
                inode: 0,
            })
        }
    }
}

/// The WAL file SQLite keeps beside a database.
fn wal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push("-wal");
    PathBuf::from(name)
}

fn open_connection(path: &Path, sync: SyncMode) -> Result<Connection, StoreError> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|error| StoreError::Open {
        path: path.display().to_string(),
        message: error.to_string(),
    })?;
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    let synchronous = match sync {
        SyncMode::Normal => "NORMAL",
        SyncMode::Full => "FULL",
    };
    connection.pragma_update(None, "synchronous", synchronous)?;
    Ok(connection)
}

fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::SchemaTooNew {
            found: version,
            known,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let transaction = connection.transaction()?;
        transaction.execute_batch(sql)?;
        transaction.pragma_update(None, "user_version", (index + 1) as i64)?;
        transaction.commit()?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path, sync: SyncMode) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|error| StoreError::Open {
                    path: path.display().to_string(),
                    message: format!("cannot create directory {}: {error}", parent.display()),
                })?;
            }
        }
        let mut writer = open_connection(path, sync)?;
        migrate(&mut writer)?;
        sqlite_rows::register_functions(&writer)?;
        let last: Option<i64> =
            writer.query_row("SELECT max(seq) FROM entries", [], |row| row.get(0))?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            database_file: FileIdentity::of(path).ok(),
            wal_file: FileIdentity::of(&wal_path(path)).ok(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            next_seq: AtomicU64::new(last.unwrap_or(0) as u64 + 1),
            wal_rescued: AtomicBool::new(false),
        })
    }

    /// Fails when the database file or its WAL is no longer the one opened (deleted, or replaced
    /// by another file): writes from now on would land in a file nobody will read again, so they
    /// are refused and the writer spills them instead. When the WAL went, what was committed to
    /// it is first checkpointed into the database file, which still holds every entry then.
    /// Two `stat` calls: cheap beside the commit it guards.
    fn check_files(&self, connection: &Connection) -> Result<(), StoreError> {
        if let Some(expected) = self.database_file {
            match FileIdentity::of(&self.path) {
                Ok(actual) if actual == expected => {}
                Ok(_) => {
                    return Err(StoreError::Other(format!(
                        "the database file {} was replaced while in use; restart auditgate",
                        self.path.display()
                    )))
                }
                Err(_) => {
                    return Err(StoreError::Other(format!(
                        "the database file {} was removed while in use; restart auditgate",
                        self.path.display()
                    )))
                }
            }
        }
        if let Some(expected) = self.wal_file {
            let wal = wal_path(&self.path);
            if FileIdentity::of(&wal).ok() != Some(expected) {
                self.rescue_wal(connection);
                return Err(StoreError::Other(format!(
                    "the WAL file {} was removed or replaced while in use; restart auditgate",
                    wal.display()
                )));
            }
        }
        Ok(())
    }

    /// Copies what the removed WAL holds into the database file (once), so that a crash before
    /// the restart loses nothing that was committed.
    fn rescue_wal(&self, connection: &Connection) {
        if self.wal_rescued.load(Ordering::Acquire) {
            return;
        }
        let result = connection.query_row("PRAGMA wal_checkpoint(FULL)", [], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        });
        match result {
            Ok((0, frames, copied)) if frames == copied => {
                self.wal_rescued.store(true, Ordering::Release);
                tracing::error!(frames, "the WAL file was removed while in use; what it held was copied into the database file, and writes are refused until auditgate is restarted");
            }
            Ok((busy, frames, copied)) => {
                tracing::error!(busy, frames, copied, "the WAL file was removed while in use and could not yet be copied whole into the database file; retrying at the next write");
            }
            Err(error) => {
                tracing::error!(%error, "the WAL file was removed while in use and copying it into the database file failed; retrying at the next write");
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How long a write waits for a lock held by another process before failing (default 5 s).
    pub fn set_busy_timeout(&self, timeout: std::time::Duration) -> Result<(), StoreError> {
        let connection = self
            .writer
            .lock()
            .map_err(|_| StoreError::Other("writer connection poisoned".into()))?;
        connection.busy_timeout(timeout)?;
        Ok(())
    }

    /// Runs `work` with a reader connection from the pool.
    pub fn with_reader<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self
            .readers
            .lock()
            .map_err(|_| StoreError::Other("reader pool poisoned".into()))?
            .pop();
        let connection = match pooled {
            Some(connection) => connection,
            None => {
                let connection = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                connection.busy_timeout(std::time::Duration::from_secs(5))?;
                sqlite_rows::register_functions(&connection)?;
                connection
            }
        };
        let result = work(&connection);
        if let Ok(mut readers) = self.readers.lock() {
            if readers.len() < READER_POOL {
                readers.push(connection);
            }
        }
        result
    }
}

impl Store for SqliteStore {
    fn append(&self, entries: &mut [AuditEntry]) -> Result<(), StoreError> {
        let mut connection = self
            .writer
            .lock()
            .map_err(|_| StoreError::Other("writer connection poisoned".into()))?;
        self.check_files(&connection)?;
        let first = self.next_seq.load(Ordering::Acquire);
        let transaction = connection.transaction()?;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT INTO entries (seq, id, log_id, created_at, actor_id, actor_email, actor_name, \
                 actor_source, actor_verified, tenant, action, resource_type, resource_id, outcome, status, \
                 method, path, route, rule, ip, user_agent, request_id, duration_us, error, metadata) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
                 ?19, ?20, ?21, ?22, ?23, ?24, ?25)",
            )?;
            for (offset, entry) in entries.iter_mut().enumerate() {
                entry.seq = first + offset as u64;
                let metadata =
                    serde_json::to_string(&entry.metadata).unwrap_or_else(|_| "{}".to_string());
                insert.execute(params![
                    entry.seq as i64,
                    entry.id,
                    entry.log_id,
                    format_timestamp(&entry.created_at),
                    entry.actor_id,
                    entry.actor_email,
                    entry.actor_name,
                    entry.actor_source,
                    entry.actor_verified,
                    entry.tenant,
                    entry.action,
                    entry.resource_type,
                    entry.resource_id,
                    entry.outcome.as_str(),
                    entry.status,
                    entry.method,
                    entry.path,
                    entry.route,
                    entry.rule,
                    entry.ip,
                    entry.user_agent,
                    entry.request_id,
                    entry.duration_us.map(|us| us as i64),
                    entry.error,
                    metadata,
                ])?;
            }
        }
        match transaction.commit() {
            Ok(()) => {
                self.next_seq
                    .store(first + entries.len() as u64, Ordering::Release);
                // A file removed during the commit: the batch may be in a file nobody will read.
                // Reporting the failure sends it to the spill file; a re-import skips it if it
                // did reach the database.
                self.check_files(&connection)
            }
            Err(error) => {
                for entry in entries.iter_mut() {
                    entry.seq = 0;
                }
                Err(error.into())
            }
        }
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        let connection = self
            .writer
            .lock()
            .map_err(|_| StoreError::Other("writer connection poisoned".into()))?;
        // BEGIN IMMEDIATE takes the write lock: it fails when the file is locked or read-only.
        connection.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?;
        self.check_files(&connection)
    }

    fn size(&self) -> Result<u64, StoreError> {
        Ok(self.next_seq.load(Ordering::Acquire) - 1)
    }

    fn list(&self, filter: &Filter, page: &PageRequest) -> Result<Page, StoreError> {
        self.with_reader(|connection| Ok(sqlite_rows::list(connection, filter, page)?))
    }

    fn list_offset(
        &self,
        filter: &Filter,
        offset: u64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.with_reader(|connection| {
            Ok(sqlite_rows::list_offset(connection, filter, offset, limit)?)
        })
    }

    fn count(&self, filter: &Filter) -> Result<u64, StoreError> {
        self.with_reader(|connection| Ok(sqlite_rows::count(connection, filter)?))
    }

    fn get(&self, id: &str) -> Result<Option<AuditEntry>, StoreError> {
        self.with_reader(|connection| Ok(sqlite_rows::get(connection, id)?))
    }

    fn stats(&self, filter: &Filter, by: StatsBy, limit: u32) -> Result<Vec<Bucket>, StoreError> {
        self.with_reader(|connection| Ok(sqlite_rows::stats(connection, filter, by, limit)?))
    }

    fn record_intents(&self, intents: &[AuditEntry]) -> Result<(), StoreError> {
        let mut connection = self
            .writer
            .lock()
            .map_err(|_| StoreError::Other("writer connection poisoned".into()))?;
        self.check_files(&connection)?;
        let transaction = connection.transaction()?;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT OR REPLACE INTO pending (id, created_at, entry) VALUES (?1, ?2, ?3)",
            )?;
            for intent in intents {
                let json = serde_json::to_string(intent)
                    .map_err(|error| StoreError::Other(error.to_string()))?;
                insert.execute(params![
                    intent.id,
                    format_timestamp(&intent.created_at),
                    json
                ])?;
            }
        }
        transaction.commit()?;
        // An intent in a removed file is not durable: the request must not be forwarded.
        self.check_files(&connection)
    }

    fn clear_intents(&self, ids: &[String]) -> Result<(), StoreError> {
        let mut connection = self
            .writer
            .lock()
            .map_err(|_| StoreError::Other("writer connection poisoned".into()))?;
        let transaction = connection.transaction()?;
        {
            let mut delete = transaction.prepare_cached("DELETE FROM pending WHERE id = ?1")?;
            for id in ids {
                delete.execute(params![id])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    fn unfinished_intents(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let connection = self
            .writer
            .lock()
            .map_err(|_| StoreError::Other("writer connection poisoned".into()))?;
        connection.execute(
            "DELETE FROM pending WHERE id IN (SELECT id FROM entries)",
            [],
        )?;
        let mut statement =
            connection.prepare("SELECT id, entry FROM pending ORDER BY created_at, id")?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut intents = Vec::new();
        for row in rows {
            let (id, json) = row?;
            match serde_json::from_str::<AuditEntry>(&json) {
                Ok(entry) => intents.push(entry),
                Err(error) => {
                    // Keep the id at least: an unreadable intent still becomes an entry.
                    tracing::error!(%id, %error, "unreadable write-ahead intent");
                    let mut entry = AuditEntry::new("", "unknown");
                    entry.id = id;
                    entry.error =
                        Some(format!("the write-ahead intent could not be read: {error}"));
                    intents.push(entry);
                }
            }
        }
        Ok(intents)
    }

    fn existing_ids(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let connection = self
            .writer
            .lock()
            .map_err(|_| StoreError::Other("writer connection poisoned".into()))?;
        let mut statement = connection.prepare_cached("SELECT 1 FROM entries WHERE id = ?1")?;
        let mut found = Vec::new();
        for id in ids {
            if statement.exists(params![id])? {
                found.push(id.clone());
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_get_consecutive_sequence_numbers_across_reopen() {
        let dir = std::env::temp_dir().join(format!("auditgate-sqlite-{}", ulid::Ulid::new()));
        let path = dir.join("audit.db");
        {
            let store = SqliteStore::open(&path, SyncMode::Normal).expect("opens");
            let mut batch = vec![AuditEntry::new("t", "a.one"), AuditEntry::new("t", "a.two")];
            store.append(&mut batch).expect("appends");
            assert_eq!((batch[0].seq, batch[1].seq), (1, 2));
            store.check_writable().expect("writable");
        }
        let store = SqliteStore::open(&path, SyncMode::Full).expect("reopens");
        let mut batch = vec![AuditEntry::new("t", "a.three")];
        store.append(&mut batch).expect("appends");
        assert_eq!(batch[0].seq, 3);
        assert_eq!(store.size().expect("size"), 3);
        let count: i64 = store
            .with_reader(|connection| {
                Ok(connection.query_row("SELECT count(*) FROM entries", [], |row| row.get(0))?)
            })
            .expect("reads");
        assert_eq!(count, 3);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_removed_database_file_refuses_writes() {
        let dir = std::env::temp_dir().join(format!("auditgate-sqlite-{}", ulid::Ulid::new()));
        let path = dir.join("audit.db");
        let store = SqliteStore::open(&path, SyncMode::Normal).expect("opens");
        store
            .append(&mut [AuditEntry::new("t", "before")])
            .expect("appends");
        std::fs::remove_file(&path).expect("removes");
        let error = store.check_writable().expect_err("noticed");
        assert!(error.to_string().contains("was removed"), "{error}");
        assert!(store.append(&mut [AuditEntry::new("t", "after")]).is_err());
        assert!(store
            .record_intents(&[AuditEntry::new("t", "intent")])
            .is_err());
        // Another file in its place is not the log either.
        std::fs::write(&path, b"").expect("replaces");
        let error = store.check_writable().expect_err("noticed");
        assert!(error.to_string().contains("was replaced"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_removed_wal_is_copied_into_the_database_file() {
        let dir = std::env::temp_dir().join(format!("auditgate-sqlite-{}", ulid::Ulid::new()));
        let path = dir.join("audit.db");
        let store = SqliteStore::open(&path, SyncMode::Normal).expect("opens");
        let mut batch: Vec<AuditEntry> = (0..3)
            .map(|index| AuditEntry::new("t", format!("in.wal.{index}")))
            .collect();
        store.append(&mut batch).expect("appends");
        // The database file alone, as a crash would leave it once the WAL is gone.
        let count_without_wal = |label: &str| -> Option<i64> {
            let copy = dir.join(format!("{label}.db"));
            std::fs::copy(&path, &copy).expect("copies");
            let connection = Connection::open(&copy).expect("opens copy");
            connection
                .query_row("SELECT count(*) FROM entries", [], |row| row.get(0))
                .ok()
        };
        assert_ne!(
            count_without_wal("before"),
            Some(3),
            "entries are in the WAL"
        );
        std::fs::remove_file(wal_path(&path)).expect("removes the WAL");
        let error = store.check_writable().expect_err("noticed");
        assert!(error.to_string().contains("WAL"), "{error}");
        assert_eq!(
            count_without_wal("after"),
            Some(3),
            "rescued into the database"
        );
        assert!(store
            .append(&mut [AuditEntry::new("t", "refused")])
            .is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_failed_batch_appends_nothing() {
        let dir = std::env::temp_dir().join(format!("auditgate-sqlite-{}", ulid::Ulid::new()));
        let store = SqliteStore::open(&dir.join("audit.db"), SyncMode::Normal).expect("opens");
        let duplicate = AuditEntry::new("t", "dup");
        let mut batch = vec![duplicate.clone(), duplicate];
        assert!(store.append(&mut batch).is_err());
        assert_eq!(store.size().expect("size"), 0);
        let mut batch = vec![AuditEntry::new("t", "ok")];
        store.append(&mut batch).expect("appends");
        assert_eq!(batch[0].seq, 1);
        let _ = std::fs::remove_dir_all(dir);
    }
}
