//! The embedded SQLite store: one file, WAL journal, versioned migrations.
//!
//! One connection writes (the writer thread's); readers take a connection from a small pool, so
//! admin queries never block appends (WAL lets readers and the writer proceed together).
//!
//! The writer connection sits in one mutex with the Merkle tree's right edge ([`Frontier`]), so
//! an append assigns sequence numbers, hashes each entry and inserts the completed tree nodes in
//! one transaction, and the in-memory frontier only moves forward when that transaction commits.
//! Appends begin `IMMEDIATE` and re-read the stored tree size first, so another process writing
//! the same file (`auditgate prune` beside a running sidecar) is picked up instead of colliding.

mod counts;
pub mod log;
pub mod readonly;
pub mod rows;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};

use self::log::SqliteNodes;
use crate::entry::{AuditEntry, StoredRow};
use crate::log::head::SignedTreeHead;
use crate::log::merkle::{self, Frontier, Hash};
use crate::store::config::SyncMode;
use crate::store::count_tally::CountTally;
use crate::store::pool::ReaderPool;
use crate::store::query::{Cursor, CursorKind, Filter, PageRequest};
use crate::store::retention::PrunePlan;
use crate::store::{Bucket, Page, StatsBy};
use crate::store::{
    LogPage, LogReader, PageReader, PruneOutcome, Store, StoreError, StoredCosignature, StoredHead,
    TreeState,
};
use readonly::{wal_path, ReadOnlySource};

/// Migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("schema_v1.sql"),
    include_str!("schema_v2.sql"),
    include_str!("schema_v3.sql"),
    include_str!("schema_v4.sql"),
    include_str!("schema_v5.sql"),
    include_str!("schema_v6.sql"),
    include_str!("schema_v7.sql"),
    include_str!("schema_v8.sql"),
];

/// The first schema version with the Merkle tree.
const TREE_SCHEMA_VERSION: i64 = 2;

/// Seal (move `recent` into the indexed `entries`, see [`rows::RECENT`]) once this many rows
/// wait: large enough that each index page is written back once for many entries (a seal writes
/// each index page it touches once, so a larger seal writes fewer pages per entry), small enough
/// that a filter walking `recent` stays a matter of milliseconds (about 2.5 ms for a filter that
/// matches nothing in 32k rows).
const SEAL_ROWS: u64 = 32_768;

/// ... or once the oldest waiting row is this old, whatever the traffic. Visibility does not
/// depend on it (every read includes `recent`); a longer wait makes seals larger, and a larger
/// seal writes fewer index pages per entry, while `SEAL_ROWS` bounds what a read walks.
const SEAL_AGE: std::time::Duration = std::time::Duration::from_secs(10);

/// The most rows one seal moves: a store that fell behind catches up over several appends, each
/// holding the write lock for a bounded time.
const SEAL_MAX: u64 = 65_536;

/// How long after a failed seal the next is tried.
const SEAL_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// How many idle reader connections are kept.
const READER_POOL: usize = 4;

pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<WriterSide>,
    readers: ReaderPool<Connection>,
    next_seq: AtomicU64,
    /// The database file as opened, to notice it removed or replaced while in use.
    database_file: Option<FileIdentity>,
    /// The WAL file as opened (absent when SQLite had not created one).
    wal_file: Option<FileIdentity>,
    /// Set once the entries of a removed WAL have been checkpointed into the database file.
    wal_rescued: AtomicBool,
    /// `Some` for a store opened by a read command: every connection is read-only and opened
    /// this way, and nothing is ever written.
    read_only: Option<ReadOnlySource>,
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

/// What only the writer touches: its connection and the tree's right edge.
struct WriterSide {
    connection: Connection,
    frontier: Frontier,
    /// Why the stored tree cannot be extended, when it cannot (found at open). Reads still work,
    /// so a damaged log can be queried and verified; appends fail with this message.
    damaged: Option<String>,
    /// Rows this store appended (or found) in `recent` since its last seal, and when the first of
    /// them was committed.
    unsealed: u64,
    unsealed_since: Option<std::time::Instant>,
    /// When the last seal failed, if the one after it has not succeeded yet.
    seal_failed_at: Option<std::time::Instant>,
    /// Whether sealed entries may wait to be counted for stats (`log::count_chunk`) or ranged
    /// by hour for time windows (`log::range_chunk`), and when a chunk was last counted.
    counts_behind: bool,
    ranges_behind: bool,
    counted_at: Option<std::time::Instant>,
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
    // A larger page cache keeps the hot index pages of appends in memory (64 MiB, not the 2 MiB
    // default); temporary b-trees stay in memory too.
    connection.pragma_update(None, "cache_size", CACHE_SIZE)?;
    connection.pragma_update(None, "temp_store", "MEMORY")?;
    // Checkpoint every ~32 MiB of WAL rather than 4 MiB: an index page rewritten by many commits
    // is copied back to the database once per checkpoint, not once per 1000 pages of WAL.
    connection.pragma_update(None, "wal_autocheckpoint", 8192)?;
    Ok(connection)
}

/// Brings the schema up to date; returns the version the file had before.
fn migrate(connection: &mut Connection) -> Result<i64, StoreError> {
    let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::SchemaTooNew {
            found: version,
            known,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let started = std::time::Instant::now();
        if version > 0 {
            // Some upgrades rebuild indexes (version 8: seconds per million entries), before the
            // sidecar serves: say so rather than seem to hang.
            tracing::info!(from = index, to = index + 1, "upgrading the store's schema");
        }
        if index + 1 == GENERATION_SCHEMA_VERSION as usize {
            rebuild_generation_indexes(connection, sql, version > 0)?;
        }
        let transaction = connection.transaction()?;
        transaction.execute_batch(sql)?;
        transaction.pragma_update(None, "user_version", (index + 1) as i64)?;
        transaction.commit()?;
        if version > 0 {
            tracing::info!(
                version = index + 1,
                seconds = started.elapsed().as_secs_f64(),
                "upgraded the store's schema"
            );
        }
    }
    Ok(version)
}

/// SQLite's page cache of every connection the store opens, in KiB when negative: 64 MiB.
const CACHE_SIZE: i64 = -65536;

/// The schema version whose high-cardinality indexes lead with the generation
/// (`schema_v8.sql`); [`rows::Table::of_entries`] reads files before it with their own indexes.
pub(crate) const GENERATION_SCHEMA_VERSION: i64 = 8;

/// Rebuilds the indexes of `schema_v8.sql` one per transaction, skipping any already rebuilt, so
/// that an upgrade stopped halfway (a restart, a full disk) keeps what it did and the next start
/// goes on from there; the migration's own transaction then has nothing left to do but record
/// the version. The sort behind each index goes to temporary files, not memory (a sort of tens of
/// millions of keys held in memory would need gigabytes), with a 16 MiB page cache.
///
/// The file's statements are `CREATE INDEX IF NOT EXISTS`, one a line, so the migration's
/// transaction that follows changes nothing more.
fn rebuild_generation_indexes(
    connection: &mut Connection,
    sql: &str,
    announce: bool,
) -> Result<(), StoreError> {
    let creates: Vec<(&str, &str)> = sql
        .lines()
        .filter_map(|line| {
            let name = line
                .strip_prefix("CREATE INDEX IF NOT EXISTS ")?
                .split_whitespace()
                .next()?;
            Some((name, line))
        })
        .collect();
    connection.pragma_update(None, "cache_size", -16384)?;
    let result = (|| -> Result<(), StoreError> {
        for (name, create) in creates {
            let started = std::time::Instant::now();
            // The check and the rebuild in one write transaction: a second sidecar opening the
            // file meanwhile waits, then finds the index rebuilt and leaves it.
            let rebuild = |connection: &mut Connection| -> rusqlite::Result<bool> {
                let transaction =
                    connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let rebuilt: bool = transaction.query_row(
                    "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'index' \
                     AND name = ?1 AND sql LIKE '%(seq >> 20)%'",
                    [name],
                    |row| row.get(0),
                )?;
                if !rebuilt {
                    transaction.execute_batch(&format!("DROP INDEX IF EXISTS {name}; {create}"))?;
                }
                transaction.commit()?;
                Ok(!rebuilt)
            };
            connection.pragma_update(None, "temp_store", "FILE")?;
            let rebuilt = match rebuild(connection) {
                Ok(rebuilt) => rebuilt,
                Err(error) => {
                    // No writable temporary directory (a read-only root file system without
                    // SQLITE_TMPDIR): sort in memory instead, which a small file can afford.
                    tracing::warn!(index = name, %error, "rebuilding an index with its sort in temporary files failed; trying again in memory (set SQLITE_TMPDIR to a writable directory for large files)");
                    connection.pragma_update(None, "temp_store", "MEMORY")?;
                    rebuild(connection)?
                }
            };
            if !rebuilt {
                continue;
            }
            // Each index's pages pass through the WAL once; copy them back before the next.
            connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            if announce {
                tracing::info!(
                    index = name,
                    seconds = started.elapsed().as_secs_f64(),
                    "rebuilt an index to lead with the generation (schema version 8)"
                );
            }
        }
        Ok(())
    })();
    // The connection's own settings back, the rebuild's error (if any) kept over theirs.
    let restored = connection
        .pragma_update(None, "temp_store", "MEMORY")
        .and_then(|()| connection.pragma_update(None, "cache_size", CACHE_SIZE));
    result.and(restored.map_err(StoreError::from))
}

/// Loads the frontier of the stored tree, building the tree first for entries that predate it
/// when the file was just migrated from a schema without one. Entries beyond the tree any other
/// time were written behind auditgate's back: the store then refuses appends (the message says
/// why) rather than sign them into the log.
fn load_tree(
    connection: &mut Connection,
    version_before: i64,
) -> Result<Result<Frontier, String>, StoreError> {
    let size = self::log::tree_size(connection)?;
    let last_entry = self::log::max_entry_seq(connection)?;
    let mut frontier = match Frontier::load(&SqliteNodes(connection), size) {
        Ok(frontier) => frontier,
        Err(error) => {
            return Ok(Err(format!(
                "the stored Merkle tree is damaged ({error}); run `auditgate verify`"
            )))
        }
    };
    if last_entry > size {
        if version_before >= TREE_SCHEMA_VERSION {
            return Ok(Err(format!(
                "entries {}..={last_entry} are not in the Merkle tree: the database was changed \
                 outside auditgate; run `auditgate verify`",
                size + 1
            )));
        }
        let transaction = connection.transaction()?;
        let mut building = frontier.clone();
        let added = self::log::backfill(&transaction, &mut building)?;
        transaction.commit()?;
        frontier = building;
        tracing::info!(
            entries = added,
            "built the Merkle tree for entries written before schema version 2"
        );
    }
    Ok(Ok(frontier))
}

/// Creates the database file readable and writable by its owner only (0600), unless it exists.
/// SQLite gives the `-wal` and `-shm` files it creates beside it the database file's mode, so the
/// whole log stays private to the user the sidecar runs as. An existing file keeps its mode: an
/// operator who opened it to a group chose that.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    ///
    /// A damaged tree does not stop the open (so the log can still be queried and verified);
    /// [`Store::tree`] and every append then fail with the reason.
    pub fn open(path: &Path, sync: SyncMode) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|error| StoreError::Open {
                    path: path.display().to_string(),
                    message: format!("cannot create directory {}: {error}", parent.display()),
                })?;
            }
        }
        create_private(path).map_err(|error| StoreError::Open {
            path: path.display().to_string(),
            message: format!("cannot create the database file: {error}"),
        })?;
        let mut writer = open_connection(path, sync)?;
        let version_before = migrate(&mut writer)?;
        rows::register_functions(&writer)?;
        let (frontier, damaged) = match load_tree(&mut writer, version_before)? {
            Ok(frontier) => (frontier, None),
            Err(reason) => {
                tracing::error!(store = %path.display(), %reason, "the log cannot be appended to");
                (Frontier::new(), Some(reason))
            }
        };
        let next_seq = frontier.size() + 1;
        let unsealed = self::log::recent_rows(&writer)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer: Mutex::new(WriterSide {
                connection: writer,
                frontier,
                damaged,
                unsealed,
                unsealed_since: (unsealed > 0).then(std::time::Instant::now),
                seal_failed_at: None,
                counts_behind: true,
                ranges_behind: true,
                counted_at: None,
            }),
            readers: ReaderPool::new(READER_POOL),
            next_seq: AtomicU64::new(next_seq),
            database_file: FileIdentity::of(path).ok(),
            wal_file: FileIdentity::of(&wal_path(path)).ok(),
            wal_rescued: AtomicBool::new(false),
            read_only: None,
        })
    }

    /// Opens an existing log for reading only (`query`, `export`): no file is created, migrated
    /// or changed, and a path that holds no log is an error that says so. Appends, heads and
    /// intents fail; listings, counts, proofs and the latest head work.
    pub fn open_read_only(path: &Path) -> Result<SqliteStore, StoreError> {
        let (source, connection) = ReadOnlySource::open(path)?;
        let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::SchemaTooNew {
                found: version,
                known,
            });
        }
        rows::register_functions(&connection)?;
        // A file of schema version 1 has entries but no tree yet; it is listed all the same.
        let tree_size = if version >= TREE_SCHEMA_VERSION {
            self::log::tree_size(&connection)?
        } else {
            0
        };
        let size = tree_size.max(self::log::max_entry_seq(&connection)?);
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer: Mutex::new(WriterSide {
                connection,
                frontier: Frontier::new(),
                damaged: Some(format!("{} is open read-only", path.display())),
                unsealed: 0,
                unsealed_since: None,
                seal_failed_at: None,
                counts_behind: false,
                ranges_behind: false,
                counted_at: None,
            }),
            readers: ReaderPool::new(READER_POOL),
            next_seq: AtomicU64::new(size + 1),
            database_file: None,
            wal_file: None,
            wal_rescued: AtomicBool::new(false),
            read_only: Some(source),
        })
    }

    /// For a store opened by [`Self::open_read_only`]: fails when the file changed under a read
    /// that could not lock it (see [`ReadOnlySource::check_unchanged`]).
    pub fn check_read_consistent(&self) -> Result<(), StoreError> {
        match &self.read_only {
            Some(source) => source.check_unchanged(),
            None => Ok(()),
        }
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
        connection.connection.busy_timeout(timeout)?;
        Ok(())
    }

    /// Runs `work` with a reader connection from the pool.
    pub fn with_reader<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let connection = match (self.readers.take()?, &self.read_only) {
            (Some(connection), _) => connection,
            (None, Some(source)) => {
                let connection = source.connect()?;
                rows::register_functions(&connection)?;
                connection
            }
            (None, None) => {
                let connection = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                connection.busy_timeout(std::time::Duration::from_secs(5))?;
                rows::register_functions(&connection)?;
                connection
            }
        };
        let result = work(&connection);
        self.readers.give_back(connection);
        result
    }

    fn lock_writer(&self) -> Result<MutexGuard<'_, WriterSide>, StoreError> {
        self.writer
            .lock()
            .map_err(|_| StoreError::Other("writer connection poisoned".into()))
    }

    /// Runs `work` in an IMMEDIATE transaction on the writer connection with a copy of the
    /// frontier brought up to date with the file, and keeps the copy only if the commit succeeds.
    fn write<T>(
        &self,
        work: impl FnOnce(&Connection, &mut Frontier) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut side = self.lock_writer()?;
        let WriterSide {
            connection,
            frontier,
            damaged,
            unsealed,
            unsealed_since,
            ..
        } = &mut *side;
        if let Some(reason) = damaged {
            return Err(StoreError::Other(reason.clone()));
        }
        self.check_files(connection)?;
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut working = current_frontier(&transaction, frontier)?;
        let result = work(&transaction, &mut working)?;
        transaction.commit()?;
        *unsealed += working.size().saturating_sub(frontier.size());
        if *unsealed > 0 && unsealed_since.is_none() {
            *unsealed_since = Some(std::time::Instant::now());
        }
        *frontier = working;
        self.next_seq.store(frontier.size() + 1, Ordering::Release);
        // A file removed during the commit: the batch may be in a file nobody will read. Reporting
        // the failure sends it to the spill file; a re-import skips it if it did reach the
        // database.
        self.check_files(connection)?;
        Ok(result)
    }
}

impl SqliteStore {
    /// Seals when enough rows wait in `recent` (or the oldest has waited long enough), or always
    /// when `all`: moves them into `entries` in one transaction of its own, after the commit that
    /// made them durable. A failed seal loses nothing (the rows stay in `recent`, where every
    /// read finds them) and is retried after the next append, so it is logged, not returned.
    fn seal(&self, all: bool) {
        let Ok(mut side) = self.lock_writer() else {
            return;
        };
        self.count_sealed_entries(&mut side);
        let due = side.unsealed >= SEAL_ROWS
            || side
                .unsealed_since
                .is_some_and(|since| since.elapsed() >= SEAL_AGE);
        // `all` (a checkpoint) looks at the table itself: another process (`auditgate prune`)
        // may have appended rows this one never counted.
        if !(due || all) || side.damaged.is_some() {
            return;
        }
        if side
            .seal_failed_at
            .is_some_and(|failed| failed.elapsed() < SEAL_RETRY)
        {
            return;
        }
        let result = self.maintain(&mut side.connection, |transaction| {
            let sealed = self::log::seal(transaction, SEAL_MAX)?;
            Ok((self::log::recent_rows(transaction)?, sealed))
        });
        match result {
            Ok((left, sealed)) => {
                side.counts_behind = !sealed.counted;
                side.ranges_behind = !sealed.ranged;
                side.unsealed = left;
                side.unsealed_since = (left > 0).then(std::time::Instant::now);
                side.seal_failed_at = None;
            }
            Err(error) => {
                // Not retried at every append: a seal that fails (a full disk, a row put in its
                // way by hand) would otherwise repeat a large move on every commit.
                side.seal_failed_at = Some(std::time::Instant::now());
                tracing::warn!(store = %self.path.display(), %error, retry_in_seconds = SEAL_RETRY.as_secs(), "sealing recent entries failed; they stay readable and will be sealed later");
            }
        }
    }
}

/// How often at most the writer counts a chunk of entries sealed but not counted yet for stats
/// (a file just upgraded to schema version 6): a chunk holds it up for a few tenths of a second,
/// so most of its time stays with appends until the file is counted (ten million entries: about
/// ten minutes, during which stats group rows as before).
const COUNT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl SqliteStore {
    /// Runs the writer's upkeep (a seal, a chunk of counting) in an IMMEDIATE transaction of its
    /// own and commits it; never into a file that is no longer the configured one (see `write`).
    fn maintain<T>(
        &self,
        connection: &mut Connection,
        work: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.check_files(connection)?;
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = work(&transaction)?;
        transaction.commit()?;
        Ok(value)
    }

    /// Counts a chunk of the sealed entries the stats counts do not hold yet, and ranges a chunk
    /// of those the hour ranges do not, at most once per [`COUNT_INTERVAL`], in a transaction of
    /// its own. Until every sealed entry is counted, stats group rows as before, and until every
    /// one is ranged, time windows are read through their index; a failure is logged and tried
    /// again later.
    fn count_sealed_entries(&self, side: &mut WriterSide) {
        if !(side.counts_behind || side.ranges_behind) || side.damaged.is_some() {
            return;
        }
        if side
            .counted_at
            .is_some_and(|at| at.elapsed() < COUNT_INTERVAL)
        {
            return;
        }
        side.counted_at = Some(std::time::Instant::now());
        let (counts, ranges) = (side.counts_behind, side.ranges_behind);
        match self.maintain(&mut side.connection, |transaction| {
            let counted = !counts || self::log::count_chunk(transaction)?;
            let ranged = !ranges || self::log::range_chunk(transaction)?;
            Ok((counted, ranged))
        }) {
            Ok((counted, ranged)) => {
                side.counts_behind = !counted;
                side.ranges_behind = !ranged;
            }
            Err(error) => {
                tracing::warn!(store = %self.path.display(), %error, "counting sealed entries for stats and time windows failed; stats group rows and time windows read their index until it succeeds");
            }
        }
    }
}

/// The frontier of the tree as stored now: `known` when nobody else appended, reloaded (O(log n)
/// reads) when another process did.
fn current_frontier(connection: &Connection, known: &Frontier) -> Result<Frontier, StoreError> {
    let stored = self::log::tree_size(connection)?;
    if stored == known.size() {
        Ok(known.clone())
    } else {
        Ok(Frontier::load(&SqliteNodes(connection), stored)?)
    }
}

impl LogReader for SqliteStore {
    fn keeps_node_level(&self, level: u32) -> bool {
        self::log::keeps_level(level)
    }

    fn keeps_counts(&self) -> bool {
        true
    }

    fn count_problems(&self, walked: &CountTally) -> Result<Option<Vec<String>>, StoreError> {
        self.with_reader(|connection| counts::count_problems(connection, walked))
    }

    fn tree_size(&self) -> Result<u64, StoreError> {
        self.with_reader(self::log::tree_size)
    }

    fn max_entry_seq(&self) -> Result<u64, StoreError> {
        self.with_reader(self::log::max_entry_seq)
    }

    fn scan_log(&self, first_seq: u64, max: usize) -> Result<LogPage, StoreError> {
        self.with_reader(|connection| self::log::scan_log(connection, first_seq, max, false))
    }

    fn scan_log_stored(&self, first_seq: u64, max: usize) -> Result<LogPage, StoreError> {
        self.with_reader(|connection| self::log::scan_log(connection, first_seq, max, true))
    }

    fn stored_form(&self, entry: &AuditEntry) -> Option<StoredRow> {
        Some(rows::stored_row_of(entry))
    }

    fn pruned_by(&self, record_seq: u64) -> Result<Vec<u64>, StoreError> {
        self.with_reader(|connection| self::log::pruned_by(connection, record_seq))
    }

    fn root_at(&self, size: u64) -> Result<Hash, StoreError> {
        self.with_reader(|connection| Ok(merkle::root_at(&SqliteNodes(connection), size)?))
    }

    fn node_range(
        &self,
        level: u32,
        first_index: u64,
        count: usize,
    ) -> Result<Vec<Hash>, StoreError> {
        self.with_reader(|connection| self::log::node_range(connection, level, first_index, count))
    }

    fn heads_after(&self, after_id: u64, limit: u32) -> Result<Vec<StoredHead>, StoreError> {
        self.with_reader(|connection| self::log::heads_after(connection, after_id, limit))
    }

    fn cosignatures(
        &self,
        origin: &str,
        size: u64,
        root_hash: &Hash,
    ) -> Result<Vec<StoredCosignature>, StoreError> {
        self.with_reader(|connection| self::log::cosignatures(connection, origin, size, root_hash))
    }
}

impl Store for SqliteStore {
    fn append(&self, entries: &mut [AuditEntry]) -> Result<(), StoreError> {
        let result = self.write(|transaction, frontier| {
            self::log::insert_entries(transaction, frontier, entries)
        });
        if result.is_err() {
            for entry in entries.iter_mut() {
                entry.seq = 0;
            }
        } else {
            self.seal(false);
        }
        result
    }

    fn append_completing(
        &self,
        entries: &mut [AuditEntry],
        completed_intents: &[String],
    ) -> Result<(), StoreError> {
        let result = self.write(|transaction, frontier| {
            self::log::insert_entries(transaction, frontier, entries)?;
            let mut delete = transaction.prepare_cached("DELETE FROM pending WHERE id = ?1")?;
            for id in completed_intents {
                delete.execute(params![id])?;
            }
            Ok(())
        });
        if result.is_err() {
            for entry in entries.iter_mut() {
                entry.seq = 0;
            }
        } else {
            self.seal(false);
        }
        result
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        let side = self.lock_writer()?;
        if let Some(reason) = &side.damaged {
            return Err(StoreError::Other(reason.clone()));
        }
        // BEGIN IMMEDIATE takes the write lock: it fails when the file is locked or read-only.
        side.connection
            .execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?;
        self.check_files(&side.connection)
    }

    fn check_in_place(&self) -> Result<(), StoreError> {
        if let Some(expected) = self.database_file {
            if FileIdentity::of(&self.path).ok() != Some(expected) {
                return Err(StoreError::Other(format!(
                    "the database file {} was removed or replaced while in use; restart auditgate",
                    self.path.display()
                )));
            }
        }
        if let Some(expected) = self.wal_file {
            let wal = wal_path(&self.path);
            if FileIdentity::of(&wal).ok() != Some(expected) {
                return Err(StoreError::Other(format!(
                    "the WAL file {} was removed or replaced while in use; restart auditgate",
                    wal.display()
                )));
            }
        }
        Ok(())
    }

    fn size(&self) -> Result<u64, StoreError> {
        Ok(self.next_seq.load(Ordering::Acquire) - 1)
    }

    fn newest_position(&self) -> Result<Option<Cursor>, StoreError> {
        // One log per file, numbered from 1 and append-only: its size is its last position.
        let size = self.size()?;
        Ok((size > 0).then(|| Cursor::after_seq(size)))
    }

    fn list(&self, filter: &Filter, page: &PageRequest) -> Result<Page, StoreError> {
        for cursor in [page.cursor, page.through].into_iter().flatten() {
            if cursor.kind() != CursorKind::Seq {
                return Err(StoreError::Cursor);
            }
        }
        self.with_reader(|connection| {
            // One snapshot for both tables of the log.
            let snapshot = connection.unchecked_transaction()?;
            Ok(rows::list(&snapshot, filter, page)?)
        })
    }

    fn list_offset(
        &self,
        filter: &Filter,
        offset: u64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.with_reader(|connection| {
            // One snapshot for both tables of the log.
            let snapshot = connection.unchecked_transaction()?;
            Ok(rows::list_offset(&snapshot, filter, offset, limit)?)
        })
    }

    fn count(&self, filter: &Filter) -> Result<u64, StoreError> {
        self.with_reader(|connection| {
            // One snapshot for both tables of the log.
            let snapshot = connection.unchecked_transaction()?;
            Ok(rows::count(&snapshot, filter)?)
        })
    }

    fn get(&self, id: &str) -> Result<Option<AuditEntry>, StoreError> {
        self.with_reader(|connection| {
            // One snapshot for both tables of the log.
            let snapshot = connection.unchecked_transaction()?;
            Ok(rows::get(&snapshot, id)?)
        })
    }

    fn stats(&self, filter: &Filter, by: StatsBy, limit: u32) -> Result<Vec<Bucket>, StoreError> {
        self.with_reader(|connection| {
            // One snapshot for both tables of the log.
            let snapshot = connection.unchecked_transaction()?;
            Ok(rows::stats(&snapshot, filter, by, limit)?)
        })
    }

    fn tree(&self) -> Result<TreeState, StoreError> {
        let mut side = self.lock_writer()?;
        if let Some(reason) = &side.damaged {
            return Err(StoreError::Other(reason.clone()));
        }
        let current = current_frontier(&side.connection, &side.frontier)?;
        side.frontier = current;
        self.next_seq
            .store(side.frontier.size() + 1, Ordering::Release);
        Ok(TreeState {
            size: side.frontier.size(),
            root: side.frontier.root(),
        })
    }

    fn leaf_hash(&self, seq: u64) -> Result<Option<Hash>, StoreError> {
        self.with_reader(|connection| self::log::leaf_hash(connection, seq))
    }

    fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        let index = crate::store::leaf_index(seq, size)?;
        self.with_reader(|connection| {
            let nodes = SqliteNodes(connection);
            Ok(merkle::inclusion_proof(&nodes, index, size)?)
        })
    }

    fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, StoreError> {
        self.with_reader(|connection| {
            let nodes = SqliteNodes(connection);
            Ok(merkle::consistency_proof(&nodes, from, to)?)
        })
    }

    fn save_head(&self, head: &SignedTreeHead) -> Result<(), StoreError> {
        let side = self.lock_writer()?;
        self::log::save_head(&side.connection, head)
    }

    fn latest_head(&self) -> Result<Option<SignedTreeHead>, StoreError> {
        self.with_reader(self::log::latest_head)
    }

    fn save_cosignature(&self, cosignature: &StoredCosignature) -> Result<(), StoreError> {
        let side = self.lock_writer()?;
        self::log::save_cosignature(&side.connection, cosignature)
    }

    fn witness_size(&self, origin: &str, witness_vkey: &str) -> Result<Option<u64>, StoreError> {
        self.with_reader(|connection| self::log::witness_size(connection, origin, witness_vkey))
    }

    fn pruned_record(&self, seq: u64) -> Result<Option<u64>, StoreError> {
        self.with_reader(|connection| self::log::pruned_record(connection, seq))
    }

    fn prune(
        &self,
        plan: &PrunePlan,
        record: AuditEntry,
        max_entries: usize,
    ) -> Result<Option<PruneOutcome>, StoreError> {
        self.write(|transaction, frontier| {
            self::log::prune(transaction, frontier, plan, record, max_entries)
        })
    }

    fn checkpoint(&self, patience: std::time::Duration) -> Result<bool, StoreError> {
        if self.read_only.is_some() {
            return Ok(true);
        }
        // A quiet log's last entries are sealed here rather than wait for the next append.
        self.seal(true);
        let side = self.lock_writer()?;
        let connection = &side.connection;
        // The configured busy timeout is restored afterwards: appends keep theirs.
        let previous: i64 =
            connection.pragma_query_value(None, "busy_timeout", |row| row.get(0))?;
        connection.busy_timeout(patience)?;
        let result = connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            row.get::<_, i64>(0)
        });
        connection.busy_timeout(std::time::Duration::from_millis(
            u64::try_from(previous).unwrap_or(0),
        ))?;
        Ok(result? == 0)
    }

    fn record_intents(&self, intents: &[AuditEntry]) -> Result<(), StoreError> {
        let mut side = self.lock_writer()?;
        self.check_files(&side.connection)?;
        let transaction = side.connection.transaction()?;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT OR REPLACE INTO pending (id, created_at, entry) VALUES (?1, ?2, ?3)",
            )?;
            for intent in intents {
                let json = serde_json::to_string(intent)
                    .map_err(|error| StoreError::Other(error.to_string()))?;
                insert.execute(params![
                    intent.id,
                    crate::entry::format_timestamp(&intent.created_at),
                    json
                ])?;
            }
        }
        transaction.commit()?;
        // An intent in a removed file is not durable: the request must not be forwarded.
        self.check_files(&side.connection)
    }

    fn clear_intents(&self, ids: &[String]) -> Result<(), StoreError> {
        let mut side = self.lock_writer()?;
        let transaction = side.connection.transaction()?;
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
        let side = self.lock_writer()?;
        let connection = &side.connection;
        connection.execute(
            "DELETE FROM pending WHERE id IN (SELECT id FROM entries UNION ALL SELECT id FROM recent)",
            [],
        )?;
        let mut statement =
            connection.prepare("SELECT id, entry FROM pending ORDER BY created_at, id")?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(crate::store::intents_from_rows("", rows))
    }

    fn existing_ids(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let side = self.lock_writer()?;
        let connection = &side.connection;
        let mut sealed = connection.prepare_cached("SELECT 1 FROM entries WHERE id = ?1")?;
        let mut recent = connection.prepare_cached("SELECT 1 FROM recent WHERE id = ?1")?;
        let mut found = Vec::new();
        for id in ids {
            // `recent` first: a seal by another process between the two looks moves an id from
            // `recent` to `entries`, never back, so this order cannot miss it.
            if recent.exists(params![id])? || sealed.exists(params![id])? {
                found.push(id.clone());
            }
        }
        Ok(found)
    }
}

/// A database file opened read-only for `auditgate verify`: no migration, no repair, nothing
/// written, so the evidence is read exactly as found.
pub struct SqliteLogReader {
    connection: Connection,
    source: ReadOnlySource,
    /// More connections to the same file, opened with the first
    /// ([`SqliteLogReader::with_page_readers`]): each lent to a thread of `verify`'s walk.
    page_connections: Mutex<Vec<Connection>>,
}

impl SqliteLogReader {
    pub fn open(path: &Path) -> Result<SqliteLogReader, StoreError> {
        let open_error = |message: String| StoreError::Open {
            path: path.display().to_string(),
            message,
        };
        let (source, connection) = ReadOnlySource::open(path)?;
        let version: i64 = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|error| open_error(error.to_string()))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::SchemaTooNew {
                found: version,
                known,
            });
        }
        if version < TREE_SCHEMA_VERSION {
            return Err(open_error(format!(
                "schema version {version} has no Merkle tree (not an auditgate log, or one that \
                 was never opened by a version that keeps the tree)"
            )));
        }
        Ok(SqliteLogReader {
            connection,
            source,
            page_connections: Mutex::new(Vec::new()),
        })
    }

    /// The reader with `count` more connections to the file, opened now, right after the
    /// first, so that every thread of a walk reads the file the reader opened (a path renamed
    /// or replaced later is not reopened).
    pub fn with_page_readers(self, count: usize) -> Result<SqliteLogReader, StoreError> {
        let connections = (0..count)
            .map(|_| self.source.connect())
            .collect::<Result<Vec<_>, _>>()?;
        *self
            .page_connections
            .lock()
            .map_err(|_| StoreError::Other("the page connections' lock is poisoned".into()))? =
            connections;
        Ok(self)
    }

    /// Fails when the file changed while it was read without a lock (see
    /// [`ReadOnlySource::check_unchanged`]).
    pub fn check_unchanged(&self) -> Result<(), StoreError> {
        self.source.check_unchanged()
    }
}

/// One of [`SqliteLogReader`]'s page connections, lent to a thread of `verify`'s walk and given
/// back when dropped.
struct SqlitePageReader<'a> {
    connection: Option<Connection>,
    home: &'a Mutex<Vec<Connection>>,
}

impl PageReader for SqlitePageReader<'_> {
    fn scan_log_stored(&self, first_seq: u64, max: usize) -> Result<LogPage, StoreError> {
        let connection = self
            .connection
            .as_ref()
            .ok_or_else(|| StoreError::Other("a page connection was given back".into()))?;
        self::log::scan_log(connection, first_seq, max, true)
    }
}

impl Drop for SqlitePageReader<'_> {
    fn drop(&mut self) {
        if let (Some(connection), Ok(mut home)) = (self.connection.take(), self.home.lock()) {
            home.push(connection);
        }
    }
}

impl LogReader for SqliteLogReader {
    fn keeps_node_level(&self, level: u32) -> bool {
        self::log::keeps_level(level)
    }

    fn page_readers(&self, count: usize) -> Result<Vec<Box<dyn PageReader + '_>>, StoreError> {
        let mut idle = self
            .page_connections
            .lock()
            .map_err(|_| StoreError::Other("the page connections' lock is poisoned".into()))?;
        let lent = idle.len().min(count);
        Ok(idle
            .drain(..lent)
            .map(|connection| {
                Box::new(SqlitePageReader {
                    connection: Some(connection),
                    home: &self.page_connections,
                }) as Box<dyn PageReader + '_>
            })
            .collect())
    }

    fn keeps_counts(&self) -> bool {
        true
    }

    fn count_problems(&self, walked: &CountTally) -> Result<Option<Vec<String>>, StoreError> {
        counts::count_problems(&self.connection, walked)
    }

    fn tree_size(&self) -> Result<u64, StoreError> {
        self::log::tree_size(&self.connection)
    }

    fn max_entry_seq(&self) -> Result<u64, StoreError> {
        self::log::max_entry_seq(&self.connection)
    }

    fn scan_log(&self, first_seq: u64, max: usize) -> Result<LogPage, StoreError> {
        self::log::scan_log(&self.connection, first_seq, max, false)
    }

    fn scan_log_stored(&self, first_seq: u64, max: usize) -> Result<LogPage, StoreError> {
        self::log::scan_log(&self.connection, first_seq, max, true)
    }

    fn stored_form(&self, entry: &AuditEntry) -> Option<StoredRow> {
        Some(rows::stored_row_of(entry))
    }

    fn pruned_by(&self, record_seq: u64) -> Result<Vec<u64>, StoreError> {
        self::log::pruned_by(&self.connection, record_seq)
    }

    fn root_at(&self, size: u64) -> Result<Hash, StoreError> {
        Ok(merkle::root_at(&SqliteNodes(&self.connection), size)?)
    }

    fn node_range(
        &self,
        level: u32,
        first_index: u64,
        count: usize,
    ) -> Result<Vec<Hash>, StoreError> {
        self::log::node_range(&self.connection, level, first_index, count)
    }

    fn heads_after(&self, after_id: u64, limit: u32) -> Result<Vec<StoredHead>, StoreError> {
        self::log::heads_after(&self.connection, after_id, limit)
    }

    fn cosignatures(
        &self,
        origin: &str,
        size: u64,
        root_hash: &Hash,
    ) -> Result<Vec<StoredCosignature>, StoreError> {
        self::log::cosignatures(&self.connection, origin, size, root_hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_get_consecutive_sequence_numbers_across_reopen() {
        let (dir, path) = temp_db("sqlite");
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
                Ok(connection.query_row(
                    "SELECT (SELECT count(*) FROM entries) + (SELECT count(*) FROM recent)",
                    [],
                    |row| row.get(0),
                )?)
            })
            .expect("reads");
        assert_eq!(count, 3);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_removed_database_file_refuses_writes() {
        let (dir, path) = temp_db("sqlite");
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
        let (dir, path) = temp_db("sqlite");
        let store = SqliteStore::open(&path, SyncMode::Normal).expect("opens");
        append_numbered(&store, "in.wal", 3);
        // The database file alone, as a crash would leave it once the WAL is gone.
        let count_without_wal = |label: &str| -> Option<i64> {
            let copy = dir.join(format!("{label}.db"));
            std::fs::copy(&path, &copy).expect("copies");
            let connection = Connection::open(&copy).expect("opens copy");
            connection
                .query_row(
                    "SELECT (SELECT count(*) FROM entries) + (SELECT count(*) FROM recent)",
                    [],
                    |row| row.get(0),
                )
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

    fn table_rows(store: &SqliteStore, table: &str) -> i64 {
        store
            .with_reader(|connection| {
                Ok(
                    connection.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
                        row.get(0)
                    })?,
                )
            })
            .expect("counts")
    }

    #[test]
    fn appends_are_sealed_in_batches_and_every_read_sees_both_tables() {
        let (dir, path) = temp_db("seal");
        let store = SqliteStore::open(&path, SyncMode::Normal).expect("opens");
        let batches = SEAL_ROWS as usize / 100 + 3;
        let total = batches * 100;
        let mut appended = Vec::new();
        for batch in 0..batches {
            appended.extend(append_numbered(&store, &format!("b{batch}"), 100));
        }
        let sealed = table_rows(&store, "entries");
        let recent = table_rows(&store, "recent");
        assert_eq!(sealed + recent, total as i64);
        // Whichever came first, the row count or the age, a seal ran and left less than a
        // seal's worth waiting.
        assert!(sealed > 0, "a seal ran");
        assert!(recent > 0 && recent < SEAL_ROWS as i64, "{recent} unsealed");
        // Every read sees every entry exactly once, whichever table holds it.
        assert_eq!(
            store.count(&Filter::default()).expect("count"),
            total as u64
        );
        let newest = store
            .list(&Filter::default(), &PageRequest::default())
            .expect("lists");
        assert_eq!(newest.entries[0].seq, total as u64);
        let oldest = &appended[0];
        assert_eq!(store.get(&oldest.id).expect("get").expect("found").seq, 1);
        let last = appended.last().expect("appended");
        assert_eq!(
            store.get(&last.id).expect("get").expect("found").seq,
            total as u64
        );
        let page = store.scan_log(1, total + 10).expect("scans");
        assert_eq!(page.slots.len(), total);
        assert!(page
            .slots
            .iter()
            .all(|slot| matches!(slot.entry, Some(Ok(_)))));
        // A quiet log is sealed by the periodic checkpoint.
        assert!(store
            .checkpoint(std::time::Duration::from_secs(5))
            .expect("checkpoint"));
        assert_eq!(table_rows(&store, "recent"), 0);
        assert_eq!(table_rows(&store, "entries"), total as i64);
        // An id already sealed is refused, as the single table's constraint refused it.
        let size = store.size().expect("size");
        let mut again = vec![oldest.clone()];
        let error = store.append(&mut again).expect_err("duplicate id");
        assert!(error.to_string().contains("already in the log"), "{error}");
        // The newest sealed id too: ids above the largest sealed one are not looked up, and this
        // one is that largest.
        let mut again = vec![last.clone()];
        let error = store.append(&mut again).expect_err("duplicate newest id");
        assert!(error.to_string().contains("already in the log"), "{error}");
        assert_eq!(store.size().expect("size"), size);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_position_kept_in_both_tables_is_reported() {
        let (dir, path) = temp_db("twice");
        let store = SqliteStore::open(&path, SyncMode::Normal).expect("opens");
        append_numbered(&store, "x", 5);
        assert!(store
            .checkpoint(std::time::Duration::from_secs(5))
            .expect("checkpoint"));
        {
            // A row copied by hand back into `recent`, under another id.
            let connection = Connection::open(&path).expect("opens");
            connection
                .execute_batch(&format!(
                    "INSERT INTO recent ({}) SELECT {} FROM entries WHERE seq = 3",
                    rows::ENTRY_COLUMNS,
                    rows::ENTRY_COLUMNS.replacen("id,", "id || 'x',", 1)
                ))
                .expect("copies");
        }
        let page = store.scan_log(1, 10).expect("scans");
        let slot = &page.slots[2];
        match &slot.entry {
            Some(Err(reason)) => assert!(reason.contains("two rows"), "{reason}"),
            other => panic!("position 3 read as {other:?}"),
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_failed_batch_appends_nothing() {
        let (dir, path) = temp_db("sqlite");
        let store = SqliteStore::open(&path, SyncMode::Normal).expect("opens");
        let mut first = vec![AuditEntry::new("t", "first")];
        store.append(&mut first).expect("appends");
        let before = store.tree().expect("tree");
        let duplicate = AuditEntry::new("t", "dup");
        let mut batch = vec![duplicate.clone(), duplicate];
        assert!(store.append(&mut batch).is_err());
        assert_eq!(store.size().expect("size"), 1);
        assert_eq!(store.tree().expect("tree"), before, "the tree did not move");
        let mut batch = vec![AuditEntry::new("t", "ok")];
        store.append(&mut batch).expect("appends");
        assert_eq!(batch[0].seq, 2);
        let leaves = [first[0].clone(), batch[0].clone()].map(|entry| leaf(&entry));
        assert_eq!(
            store.tree().expect("tree").root,
            merkle::root_at(&MemoryNodes::from_leaves(&leaves), 2).expect("root"),
            "the rolled-back batch left no node behind"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    use crate::log::merkle::{leaf_hash, MemoryNodes};
    use crate::verify::check::LogCheck;
    use rand::{Rng, SeedableRng};

    fn leaf(entry: &AuditEntry) -> Hash {
        leaf_hash(&entry.canonical_bytes())
    }

    /// Appends `count` entries with the actions `{prefix}.0`, `{prefix}.1`, ... in one batch.
    fn append_numbered(store: &SqliteStore, prefix: &str, count: usize) -> Vec<AuditEntry> {
        let mut batch: Vec<AuditEntry> = (0..count)
            .map(|index| AuditEntry::new("t", format!("{prefix}.{index}")))
            .collect();
        store.append(&mut batch).expect("appends");
        batch
    }

    fn temp_db(label: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("auditgate-{label}-{}", ulid::Ulid::new()));
        let db = dir.join("audit.db");
        (dir, db)
    }

    #[test]
    fn the_tree_follows_every_append_and_survives_reopen() {
        let (dir, db) = temp_db("tree");
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut leaves = Vec::new();
        for round in 0..3 {
            let store = SqliteStore::open(&db, SyncMode::Normal).expect("opens");
            for _ in 0..6 {
                let count = rng.gen_range(1..40);
                let batch = append_numbered(&store, &format!("round{round}"), count);
                leaves.extend(batch.iter().map(leaf));
                let expected = MemoryNodes::from_leaves(&leaves);
                let tree = store.tree().expect("tree");
                assert_eq!(tree.size, leaves.len() as u64);
                assert_eq!(
                    tree.root,
                    merkle::root_at(&expected, tree.size).expect("root")
                );
                assert_eq!(store.root_at(tree.size).expect("stored root"), tree.root);
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn proofs_from_sqlite_match_the_in_memory_tree() {
        let (dir, db) = temp_db("proofs");
        let store = SqliteStore::open(&db, SyncMode::Normal).expect("opens");
        // Past 1,024 entries: levels 1–7 and 9–10 are recomputed from the kept levels 0 and 8.
        let mut batch = append_numbered(&store, "e", 700);
        batch.extend(append_numbered(&store, "f", 400));
        let leaves: Vec<Hash> = batch.iter().map(leaf).collect();
        let memory = MemoryNodes::from_leaves(&leaves);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..200 {
            let size = rng.gen_range(1..=1100u64);
            let seq = rng.gen_range(1..=size);
            let root = merkle::root_at(&memory, size).expect("root");
            let path = store.inclusion_proof(seq, size).expect("proof");
            assert_eq!(
                path,
                merkle::inclusion_proof(&memory, seq - 1, size).expect("memory")
            );
            let leaf = store.leaf_hash(seq).expect("leaf").expect("stored");
            assert!(merkle::verify_inclusion(&leaf, seq - 1, size, &path, &root));
            let from = rng.gen_range(0..=size);
            let proof = store.consistency_proof(from, size).expect("consistency");
            let from_root = merkle::root_at(&memory, from).expect("root");
            assert!(merkle::verify_consistency(
                from, size, &from_root, &root, &proof
            ));
        }
        let levels: Vec<(u32, i64)> = store
            .with_reader(|connection| {
                let mut select = connection
                    .prepare("SELECT level, count(*) FROM tree_nodes GROUP BY level ORDER BY 1")?;
                let rows = select.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .expect("levels");
        assert_eq!(
            levels,
            vec![(0, 1100), (8, 4)],
            "only the tile levels are kept"
        );
        assert!(store.inclusion_proof(1101, 1100).is_err());
        assert!(store.inclusion_proof(0, 1100).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn canonical_form_survives_the_store_round_trip() {
        let (dir, db) = temp_db("roundtrip");
        let store = SqliteStore::open(&db, SyncMode::Normal).expect("opens");
        let mut entry = AuditEntry::new("t", "odd.values");
        entry.created_at += chrono::Duration::nanoseconds(123);
        entry.actor_email = Some("zoë@example.com".into());
        entry.path = Some("/a\u{0}b\n\"c\"".into());
        entry.duration_us = Some(u64::MAX / 4);
        entry.status = Some(599);
        for (key, value) in [
            ("float", serde_json::json!(0.1 + 0.2)),
            ("tiny", serde_json::json!(5e-324)),
            ("big", serde_json::json!(1.7976931348623157e308)),
            ("u64", serde_json::json!(u64::MAX)),
            ("i64", serde_json::json!(i64::MIN)),
            (
                "nested",
                serde_json::json!({"b": [1.5, {"z": null, "a": "\u{1F600}"}]}),
            ),
        ] {
            entry.metadata.insert(key.into(), value);
        }
        let mut batch = vec![entry];
        store.append(&mut batch).expect("appends");
        let page = store.scan_log(1, 10).expect("scan");
        let slot = &page.slots[0];
        let read = slot.entry.clone().expect("row").expect("readable");
        assert_eq!(
            String::from_utf8(read.canonical_bytes()).expect("utf-8"),
            String::from_utf8(batch[0].canonical_bytes()).expect("utf-8")
        );
        assert_eq!(slot.leaf, Some(leaf(&batch[0])));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn another_process_appending_is_picked_up() {
        let (dir, db) = temp_db("two-writers");
        let sidecar = SqliteStore::open(&db, SyncMode::Normal).expect("opens");
        let cli = SqliteStore::open(&db, SyncMode::Normal).expect("opens again");
        let mut all = Vec::new();
        for (store, name) in [(&sidecar, "a"), (&cli, "b"), (&cli, "c"), (&sidecar, "d")] {
            let mut batch = vec![AuditEntry::new("t", name), AuditEntry::new("t", name)];
            store.append(&mut batch).expect("appends");
            all.extend(batch);
        }
        let seqs: Vec<u64> = all.iter().map(|entry| entry.seq).collect();
        assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
        let leaves: Vec<Hash> = all.iter().map(leaf).collect();
        let expected = merkle::root_at(&MemoryNodes::from_leaves(&leaves), 8).expect("root");
        assert_eq!(sidecar.tree().expect("tree").root, expected);
        assert_eq!(cli.tree().expect("tree").root, expected);
        let mut check = LogCheck::new(Vec::new());
        let report = check.finish(&sidecar).expect("verifies");
        assert!(report.ok(), "{report:?}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The `LogReader` methods a test wrapper hands straight to its `store`.
    macro_rules! delegate_log_reader {
        () => {
            fn tree_size(&self) -> Result<u64, StoreError> {
                self.store.tree_size()
            }
            fn max_entry_seq(&self) -> Result<u64, StoreError> {
                self.store.max_entry_seq()
            }
            fn scan_log(&self, first_seq: u64, max: usize) -> Result<LogPage, StoreError> {
                self.store.scan_log(first_seq, max)
            }
            fn stored_form(&self, entry: &AuditEntry) -> Option<StoredRow> {
                self.store.stored_form(entry)
            }
            fn pruned_by(&self, record_seq: u64) -> Result<Vec<u64>, StoreError> {
                self.store.pruned_by(record_seq)
            }
            fn root_at(&self, size: u64) -> Result<Hash, StoreError> {
                self.store.root_at(size)
            }
            fn node_range(
                &self,
                level: u32,
                first: u64,
                count: usize,
            ) -> Result<Vec<Hash>, StoreError> {
                self.store.node_range(level, first, count)
            }
            fn keeps_node_level(&self, level: u32) -> bool {
                self.store.keeps_node_level(level)
            }
            fn heads_after(
                &self,
                after_id: u64,
                limit: u32,
            ) -> Result<Vec<StoredHead>, StoreError> {
                self.store.heads_after(after_id, limit)
            }
            fn cosignatures(
                &self,
                origin: &str,
                size: u64,
                root_hash: &Hash,
            ) -> Result<Vec<StoredCosignature>, StoreError> {
                self.store.cosignatures(origin, size, root_hash)
            }
            fn keeps_counts(&self) -> bool {
                self.store.keeps_counts()
            }
        };
    }

    /// A store that changes between `verify`'s walk and its comparison of the stats counts, as a
    /// live sidecar's does: it seals the rows the walk read unsealed (counting them), appends
    /// more, and prunes rows the walk counted.
    struct ChangingStore<'a> {
        store: &'a SqliteStore,
        now: chrono::DateTime<chrono::Utc>,
    }

    impl LogReader for ChangingStore<'_> {
        delegate_log_reader!();
        fn scan_log_stored(&self, first_seq: u64, max: usize) -> Result<LogPage, StoreError> {
            self.store.scan_log_stored(first_seq, max)
        }
        fn count_problems(&self, walked: &CountTally) -> Result<Option<Vec<String>>, StoreError> {
            assert!(self
                .store
                .checkpoint(std::time::Duration::from_secs(5))
                .expect("seals"));
            let mut more = vec![
                AuditEntry::new("t", "user.x"),
                AuditEntry::new("t", "auth.x"),
            ];
            self.store.append(&mut more).expect("appends");
            let plan = PrunePlan {
                default_cutoff: None,
                rules: vec![("auth.".into(), self.now - chrono::Duration::days(10))],
            };
            let record = crate::store::retention::prune_record(
                "t",
                &plan,
                &crate::store::retention::PrunedBy::Retention,
            );
            assert!(self
                .store
                .prune(&plan, record, 100)
                .expect("prunes")
                .is_some());
            self.store.count_problems(walked)
        }
    }

    /// A store whose walk reads its pages on threads: each page reader reads through the store's
    /// own connections, records which pages it read, and may return one page cut short (as when
    /// the log changes under the walk).
    struct PagesOnThreads<'a> {
        store: &'a SqliteStore,
        reads: std::sync::Mutex<Vec<(usize, u64)>>,
        short_at: Option<u64>,
        fail_at: Option<u64>,
    }

    struct StorePages<'a> {
        store: &'a SqliteStore,
        index: usize,
        reads: &'a std::sync::Mutex<Vec<(usize, u64)>>,
        short_at: Option<u64>,
        fail_at: Option<u64>,
    }

    impl PageReader for StorePages<'_> {
        fn scan_log_stored(&self, first_seq: u64, max: usize) -> Result<LogPage, StoreError> {
            self.reads
                .lock()
                .expect("reads")
                .push((self.index, first_seq));
            if self.fail_at == Some(first_seq) {
                return Err(StoreError::Other(format!("page {first_seq} unreadable")));
            }
            let max = if self.short_at == Some(first_seq) {
                max / 2
            } else {
                max
            };
            self.store.scan_log_stored(first_seq, max)
        }
    }

    impl LogReader for PagesOnThreads<'_> {
        delegate_log_reader!();
        fn page_readers(&self, count: usize) -> Result<Vec<Box<dyn PageReader + '_>>, StoreError> {
            Ok((0..count)
                .map(|index| {
                    Box::new(StorePages {
                        store: self.store,
                        index,
                        reads: &self.reads,
                        short_at: self.short_at,
                        fail_at: self.fail_at,
                    }) as Box<dyn PageReader>
                })
                .collect())
        }
        fn scan_log_stored(&self, first_seq: u64, max: usize) -> Result<LogPage, StoreError> {
            self.reads
                .lock()
                .expect("reads")
                .push((usize::MAX, first_seq));
            self.store.scan_log_stored(first_seq, max)
        }
        fn count_problems(&self, walked: &CountTally) -> Result<Option<Vec<String>>, StoreError> {
            self.store.count_problems(walked)
        }
    }

    #[test]
    fn a_walk_on_threads_reports_what_the_walk_on_one_does() {
        const PAGE: u64 = 4096;
        let (dir, db) = temp_db("walk-threads");
        let store = SqliteStore::open(&db, SyncMode::Normal).expect("opens");
        let now = chrono::Utc::now();
        let mut batch: Vec<AuditEntry> = (0..5 * PAGE + 100)
            .map(|index| {
                let mut entry =
                    AuditEntry::new("t", if index % 3 == 0 { "auth.x" } else { "user.x" });
                entry.created_at = now - chrono::Duration::seconds(100_000 - index as i64);
                entry.actor_id = Some(format!("u{}", index % 11));
                entry.resource_id = Some(format!("r{index}"));
                entry
            })
            .collect();
        store.append(&mut batch).expect("appends");
        assert!(store
            .checkpoint(std::time::Duration::from_secs(5))
            .expect("seals"));
        let walk = |threads: usize, short_at: Option<u64>| {
            let reader = PagesOnThreads {
                store: &store,
                reads: Default::default(),
                short_at,
                fail_at: None,
            };
            let report = LogCheck::new(Vec::new())
                .with_page_threads(threads)
                .finish(&reader)
                .expect("verifies");
            let mut reads = reader.reads.into_inner().expect("reads");
            reads.sort_by_key(|(_, first)| *first);
            (report, reads)
        };
        let described = |report: &crate::verify::check::VerifyReport| {
            report
                .problems
                .iter()
                .map(|problem| format!("{:?} {}", problem.seq, problem.message))
                .collect::<Vec<_>>()
        };

        let (intact, reads) = walk(2, None);
        assert!(intact.ok(), "{intact:?}");
        assert_eq!(intact.entries, 5 * PAGE + 100);
        // Pages 0, 2, 4 on the first reader, 1, 3, 5 on the second; nothing read on one thread.
        let expected: Vec<(usize, u64)> = (0..6)
            .map(|page| ((page % 2) as usize, page * PAGE + 1))
            .collect();
        assert_eq!(reads, expected);

        // Edits on pages the two readers read: each found, at its own position, in log order,
        // exactly as the walk on one thread reports them, with two, three or four readers.
        Connection::open(&db)
            .expect("opens")
            .execute_batch(&format!(
                "UPDATE entries SET action = 'user.read' WHERE seq = 5;
                 DELETE FROM entries WHERE seq = {};
                 UPDATE entries SET resource_id = 'elsewhere' WHERE seq = {};
                 UPDATE entries SET actor_id = 'u99' WHERE seq = {};",
                PAGE + 104,
                2 * PAGE + 7,
                5 * PAGE + 50
            ))
            .expect("edits");
        let (one, reads) = walk(1, None);
        assert!(reads.iter().all(|(reader, _)| *reader == usize::MAX));
        let one_text = described(&one);
        assert!(!one.ok());
        let positions: Vec<Option<u64>> = one.problems.iter().map(|problem| problem.seq).collect();
        for seq in [5, PAGE + 104, 2 * PAGE + 7, 5 * PAGE + 50] {
            assert!(positions.contains(&Some(seq)), "{seq}: {one_text:?}");
        }
        for threads in [2, 3, 4] {
            let (report, reads) = walk(threads, None);
            assert_eq!(described(&report), one_text, "{threads} threads");
            assert_eq!(
                (report.entries, report.size, report.problem_count),
                (one.entries, one.size, one.problem_count)
            );
            let turns: Vec<(usize, u64)> = (0..6)
                .map(|page| ((page % threads as u64) as usize, page * PAGE + 1))
                .collect();
            assert_eq!(reads, turns, "{threads} threads");
        }

        // A page cut short (the log changed under the walk): the threads stop there and the walk
        // goes on on one thread from the last position checked, reporting the same.
        let (report, reads) = walk(2, Some(2 * PAGE + 1));
        assert_eq!(described(&report), one_text);
        assert_eq!(report.entries, one.entries);
        assert!(reads.contains(&(usize::MAX, 2 * PAGE + 1)), "{reads:?}");

        // A page a thread cannot read fails the walk, as on one thread; nothing waits forever.
        for threads in [1, 2, 3] {
            let reader = PagesOnThreads {
                store: &store,
                reads: Default::default(),
                short_at: None,
                fail_at: Some(3 * PAGE + 1),
            };
            let failed = LogCheck::new(Vec::new())
                .with_page_threads(threads)
                .finish(&reader);
            let error = failed.err().map(|error| error.to_string());
            if threads == 1 {
                // On one thread the store's own reader reads, which has no failing page.
                assert_eq!(error, None);
            } else {
                assert!(
                    error
                        .as_deref()
                        .is_some_and(|error| error.contains("page 12289 unreadable")),
                    "{threads}: {error:?}"
                );
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn counts_that_move_while_verify_walks_are_not_reported_but_a_changed_count_is() {
        let (dir, db) = temp_db("counts-walk");
        let store = SqliteStore::open(&db, SyncMode::Normal).expect("opens");
        let now = chrono::Utc::now();
        let mut old: Vec<AuditEntry> = (0..40)
            .map(|index| {
                let mut entry =
                    AuditEntry::new("t", if index % 2 == 0 { "auth.x" } else { "user.x" });
                entry.created_at =
                    now - chrono::Duration::days(20) + chrono::Duration::hours(index);
                entry.actor_id = Some(format!("u{}", index % 3));
                entry
            })
            .collect();
        store.append(&mut old).expect("appends");
        assert!(store
            .checkpoint(std::time::Duration::from_secs(5))
            .expect("seals"));
        // Unsealed when the walk reads them.
        let mut recent = vec![
            AuditEntry::new("t", "user.x"),
            AuditEntry::new("t", "user.y"),
        ];
        store.append(&mut recent).expect("appends");
        assert_eq!(store.with_reader(log::recent_rows).expect("recent"), 2);
        let changing = ChangingStore { store: &store, now };
        let report = LogCheck::new(Vec::new())
            .finish(&changing)
            .expect("verifies");
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.entries, 42);

        // The same walk finds a count changed by hand.
        Connection::open(&db)
            .expect("opens")
            .execute_batch("UPDATE entry_counts SET n = n + 1 WHERE action = 'user.x'")
            .expect("edits");
        let report = LogCheck::new(Vec::new()).finish(&store).expect("verifies");
        assert!(!report.ok());
        assert!(
            report.problems[0]
                .message
                .contains("entries of action \"user.x\""),
            "{report:?}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn prune_keeps_the_tree_and_records_itself() {
        use crate::log::pruned::{PruneClaim, PRUNED_ACTION};
        let (dir, db) = temp_db("prune");
        let store = SqliteStore::open(&db, SyncMode::Normal).expect("opens");
        let now = chrono::Utc::now();
        let mut batch: Vec<AuditEntry> = (0..10)
            .map(|index| {
                let mut entry =
                    AuditEntry::new("t", if index % 2 == 0 { "auth.x" } else { "user.x" });
                entry.created_at = now - chrono::Duration::days(100 - index);
                entry
            })
            .collect();
        store.append(&mut batch).expect("appends");
        let before = store.tree().expect("tree");
        // auth.* older than 93 days: entries 1, 3, 5, 7 (created 100, 98, 96, 94 days ago).
        let plan = PrunePlan {
            default_cutoff: None,
            rules: vec![("auth.".into(), now - chrono::Duration::days(93))],
        };
        let record = crate::store::retention::prune_record(
            "t",
            &plan,
            &crate::store::retention::PrunedBy::Retention,
        );
        let outcome = store
            .prune(&plan, record, 3)
            .expect("prunes")
            .expect("something");
        assert_eq!(
            (outcome.first_seq, outcome.last_seq, outcome.count),
            (1, 5, 3)
        );
        assert_eq!(outcome.record_seq, 11);
        let outcome = store
            .prune(
                &plan,
                crate::store::retention::prune_record(
                    "t",
                    &plan,
                    &crate::store::retention::PrunedBy::Retention,
                ),
                100,
            )
            .expect("prunes")
            .expect("the rest");
        assert_eq!(
            (outcome.first_seq, outcome.count, outcome.record_seq),
            (7, 1, 12)
        );
        assert!(store
            .prune(
                &plan,
                crate::store::retention::prune_record(
                    "t",
                    &plan,
                    &crate::store::retention::PrunedBy::Retention
                ),
                100
            )
            .expect("runs")
            .is_none());
        assert_eq!(store.size().expect("size"), 12);
        assert!(store.get("1").expect("get").is_none());
        assert_eq!(store.pruned_record(3).expect("mark"), Some(11));
        assert_eq!(store.pruned_record(2).expect("mark"), None);
        assert_eq!(store.leaf_hash(1).expect("leaf"), Some(leaf(&batch[0])));
        assert_eq!(store.root_at(10).expect("root"), before.root);
        let record = store.get("11").expect("get").expect("record");
        assert_eq!(record.action, PRUNED_ACTION);
        assert_eq!(
            PruneClaim::from_entry(&record).expect("claim"),
            PruneClaim::for_seqs(&[1, 3, 5]).expect("claim")
        );
        assert_eq!(store.pruned_by(12).expect("marks"), vec![7]);
        let report = LogCheck::new(Vec::new()).finish(&store).expect("verifies");
        assert!(report.ok(), "{report:?}");
        assert_eq!((report.entries, report.pruned, report.size), (8, 4, 12));
        // The stats counts lost the pruned entries with their rows.
        assert_eq!(store.count(&Filter::default()).expect("count"), 8);
        let actions = store
            .stats(&Filter::default(), StatsBy::Action, 10)
            .expect("stats");
        let actions: Vec<(&str, u64)> = actions
            .iter()
            .map(|bucket| (bucket.key.as_str(), bucket.count))
            .collect();
        assert_eq!(actions, [("user.x", 5), (PRUNED_ACTION, 2), ("auth.x", 1)]);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A seal that fails changes nothing (the rows stay in `recent`, the stats counts do not
    /// count them, stats and counts still see every entry), is not tried again at the next
    /// append or checkpoint but after `SEAL_RETRY`, and then seals and counts them.
    #[test]
    fn a_failed_seal_changes_nothing_and_is_retried_later() {
        use std::sync::atomic::AtomicUsize;
        let (dir, db) = temp_db("seal-fails");
        let store = SqliteStore::open(&db, SyncMode::Normal).expect("opens");
        append_numbered(&store, "sealed", 3);
        store.seal(true);
        let attempts = std::sync::Arc::new(AtomicUsize::new(0));
        {
            let side = store.lock_writer().expect("writer");
            let seen = attempts.clone();
            side.connection
                .create_scalar_function(
                    "seal_attempt",
                    0,
                    rusqlite::functions::FunctionFlags::SQLITE_UTF8,
                    move |_| Ok(seen.fetch_add(1, Ordering::SeqCst) as i64),
                )
                .expect("function");
            // A row in the seal's way, as a full disk or a hand-made row would be.
            side.connection
                .execute_batch(
                    "CREATE TEMP TRIGGER refuse_seal BEFORE INSERT ON main.entries BEGIN \
                     SELECT seal_attempt(); SELECT RAISE(ABORT, 'no room'); END;",
                )
                .expect("trigger");
        }
        append_numbered(&store, "waiting", 4);
        let counted = |table: &str| -> i64 {
            store
                .with_reader(|connection| {
                    Ok(connection.query_row(
                        &format!("SELECT coalesce(sum(n), 0) FROM {table}"),
                        [],
                        |row| row.get(0),
                    )?)
                })
                .expect("counts")
        };
        let by_action = || -> Vec<(String, u64)> {
            store
                .stats(&Filter::default(), StatsBy::Action, 100)
                .expect("stats")
                .into_iter()
                .map(|bucket| (bucket.key, bucket.count))
                .collect()
        };
        store.seal(true);
        assert_eq!(attempts.load(Ordering::SeqCst), 1, "tried once");
        assert_eq!(
            self::log::recent_rows(&store.lock_writer().expect("writer").connection).expect("rows"),
            4
        );
        for table in ["entry_counts", "actor_counts", "actor_day_counts"] {
            assert_eq!(counted(table), 3, "{table} counts the sealed entries only");
        }
        assert_eq!(store.count(&Filter::default()).expect("count"), 7);
        assert_eq!(by_action().len(), 7);
        // Not again at the next append or checkpoint.
        append_numbered(&store, "more", 1);
        store.seal(true);
        assert_eq!(attempts.load(Ordering::SeqCst), 1, "backed off");
        // Once the retry is due and the way is clear, the rows are sealed and counted.
        {
            let mut side = store.lock_writer().expect("writer");
            side.connection
                .execute_batch("DROP TRIGGER temp.refuse_seal")
                .expect("drop");
            side.seal_failed_at = Some(std::time::Instant::now() - SEAL_RETRY);
        }
        store.seal(true);
        assert_eq!(
            self::log::recent_rows(&store.lock_writer().expect("writer").connection).expect("rows"),
            0
        );
        for table in ["entry_counts", "actor_counts", "actor_day_counts"] {
            assert_eq!(counted(table), 8, "{table}");
        }
        assert_eq!(store.count(&Filter::default()).expect("count"), 8);
        assert_eq!(by_action().len(), 8);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_version_1_file_gets_its_tree_when_migrated() {
        let (dir, db) = temp_db("migrate");
        std::fs::create_dir_all(&dir).expect("dir");
        let mut entries: Vec<AuditEntry> = (1..=5)
            .map(|seq| AuditEntry::new("t", format!("old.{seq}")))
            .collect();
        {
            // Rows as a version 1 store wrote them: the same entries table, no tree tables.
            let connection = Connection::open(&db).expect("open");
            connection.execute_batch(MIGRATIONS[0]).expect("v1");
            connection.execute_batch(MIGRATIONS[1]).expect("v2");
            connection.execute_batch(MIGRATIONS[3]).expect("v4");
            connection.execute_batch(MIGRATIONS[5]).expect("v6");
            connection.execute_batch(MIGRATIONS[6]).expect("v7");
            let mut frontier = Frontier::new();
            self::log::insert_entries(&connection, &mut frontier, &mut entries).expect("rows");
            self::log::seal(&connection, u64::MAX).expect("sealed");
            connection
                .execute_batch(&format!(
                    "DROP TABLE tree_nodes; DROP TABLE tree_heads; DROP TABLE pruned_entries; \
                     DROP TABLE recent; {DROP_COUNTS}"
                ))
                .expect("back to v1");
            connection
                .pragma_update(None, "user_version", 1)
                .expect("version");
        }
        let store = SqliteStore::open(&db, SyncMode::Normal).expect("migrates");
        let leaves: Vec<Hash> = entries.iter().map(leaf).collect();
        assert_eq!(
            store.tree().expect("tree").root,
            merkle::root_at(&MemoryNodes::from_leaves(&leaves), 5).expect("root")
        );
        let mut batch = vec![AuditEntry::new("t", "new")];
        store.append(&mut batch).expect("appends");
        assert_eq!(batch[0].seq, 6);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn rows_added_behind_its_back_stop_appends_but_not_reads() {
        let (dir, db) = temp_db("foreign");
        {
            let store = SqliteStore::open(&db, SyncMode::Normal).expect("opens");
            let mut batch = vec![AuditEntry::new("t", "a")];
            store.append(&mut batch).expect("appends");
        }
        {
            let connection = Connection::open(&db).expect("open");
            connection
                .execute(
                    "INSERT INTO entries (seq, id, log_id, created_at, action, outcome) \
                     VALUES (2, 'X', 't', '2026-01-01T00:00:00.000000Z', 'forged', 'success')",
                    [],
                )
                .expect("insert");
        }
        let store = SqliteStore::open(&db, SyncMode::Normal).expect("still opens");
        let error = store.tree().expect_err("cannot extend");
        assert!(
            error.to_string().contains("not in the Merkle tree"),
            "{error}"
        );
        assert!(store.append(&mut [AuditEntry::new("t", "b")]).is_err());
        assert!(store.check_writable().is_err());
        assert!(store.get("2").expect("reads").is_some());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The upgrade to schema version 8 rebuilds each high-cardinality index in a transaction of
    /// its own and skips one already rebuilt, so a start stopped halfway goes on from where it
    /// stopped; an index missing from the file (a hand edit) is created.
    #[test]
    fn an_upgrade_to_the_generation_led_indexes_stopped_halfway_goes_on() {
        let (dir, db) = temp_db("generations");
        {
            let store = SqliteStore::open(&db, SyncMode::Normal).expect("opens");
            let mut batch: Vec<AuditEntry> = (0..40)
                .map(|index| {
                    let mut entry = AuditEntry::new("t", format!("step.{index}"));
                    entry.actor_id = Some(format!("u{}", index % 4));
                    entry.ip = Some(format!("10.0.0.{}", index % 5));
                    entry
                })
                .collect();
            store.append(&mut batch).expect("appends");
            store
                .checkpoint(std::time::Duration::from_secs(5))
                .expect("sealed");
        }
        let generation_led = |db: &Path| -> Vec<String> {
            let connection = Connection::open(db).expect("open");
            let mut statement = connection
                .prepare(
                    "SELECT name FROM sqlite_schema WHERE type = 'index' \
                     AND sql LIKE '%(seq >> 20)%' ORDER BY name",
                )
                .expect("prepare");
            let names = statement
                .query_map([], |row| row.get(0))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("names");
            names
        };
        {
            // Stopped after two of five: the resource index and the address's back to schema 1,
            // the resource id's gone.
            let connection = Connection::open(&db).expect("open");
            connection
                .execute_batch(
                    "DROP INDEX entries_resource; \
                     CREATE INDEX entries_resource ON entries (resource_type, resource_id); \
                     DROP INDEX entries_ip; CREATE INDEX entries_ip ON entries (ip); \
                     DROP INDEX entries_resource_id;",
                )
                .expect("halfway");
            connection
                .pragma_update(None, "user_version", 7)
                .expect("version");
        }
        assert_eq!(
            generation_led(&db),
            ["entries_actor_email", "entries_actor_id"]
        );
        let store = SqliteStore::open(&db, SyncMode::Normal).expect("upgrades");
        assert_eq!(
            generation_led(&db),
            [
                "entries_actor_email",
                "entries_actor_id",
                "entries_ip",
                "entries_resource",
                "entries_resource_id"
            ]
        );
        let version: i64 = store
            .with_reader(|connection| {
                Ok(connection.pragma_query_value(None, "user_version", |row| row.get(0))?)
            })
            .expect("version");
        assert_eq!(version, GENERATION_SCHEMA_VERSION);
        let by_actor = Filter {
            actor: Some("u1".into()),
            ..Filter::default()
        };
        assert_eq!(store.count(&by_actor).expect("count"), 10);
        let by_address = Filter {
            ip: Some(crate::store::query::IpFilter::Exact([10, 0, 0, 3].into())),
            actor: Some("u3".into()),
            ..Filter::default()
        };
        let page = store
            .list(&by_address, &PageRequest::default())
            .expect("lists");
        assert_eq!(
            page.entries
                .iter()
                .map(|entry| entry.seq)
                .collect::<Vec<_>>(),
            [24, 4]
        );
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// What schema versions 6 and 7 added (`schema_v6.sql`, `schema_v7.sql`), for taking a file
    /// back to an earlier one.
    const DROP_COUNTS: &str =
        "DROP TRIGGER entries_uncounted; DROP TABLE entry_counts; DROP TABLE actor_counts; \
         DROP TABLE actor_day_counts; DROP TABLE counted_through; DROP TABLE hour_seqs; \
         DROP TABLE ranged_through;";

    /// A store made before cosignatures were kept (schema version 2) still opens read-only
    /// with none, and opened by a sidecar it gets the table and keeps them.
    #[test]
    fn a_version_2_file_gets_the_cosignatures_table_when_opened() {
        let (dir, db) = temp_db("cosignatures");
        let cosignature = StoredCosignature {
            origin: "orders".into(),
            size: 3,
            root_hash: [7; 32],
            witness_vkey: "w+00000000+BA==".into(),
            timestamp: 10,
            line: "\u{2014} w AAAA".into(),
        };
        {
            let store = SqliteStore::open(&db, SyncMode::Normal).expect("opens");
            append_numbered(&store, "old", 3);
        }
        {
            // The file as version 2 left it: no cosignatures table.
            let connection = Connection::open(&db).expect("open");
            self::log::seal(&connection, u64::MAX).expect("sealed");
            connection
                .execute_batch(&format!(
                    "DROP TABLE witness_cosignatures; DROP TABLE recent; {DROP_COUNTS}"
                ))
                .expect("back to v2");
            connection
                .pragma_update(None, "user_version", 2)
                .expect("version");
        }
        let reader = SqliteLogReader::open(&db).expect("reads a version 2 file");
        assert!(reader
            .cosignatures("orders", 3, &[7; 32])
            .expect("none")
            .is_empty());
        drop(reader);
        let read_only = SqliteStore::open_read_only(&db).expect("read-only");
        assert_eq!(
            read_only
                .witness_size("orders", "w+00000000+BA==")
                .expect("none"),
            None
        );
        drop(read_only);

        let store = SqliteStore::open(&db, SyncMode::Normal).expect("migrates");
        let version: i64 = store
            .with_reader(|connection| {
                Ok(connection.pragma_query_value(None, "user_version", |row| row.get(0))?)
            })
            .expect("version");
        assert_eq!(version, MIGRATIONS.len() as i64);
        store.save_cosignature(&cosignature).expect("saves");
        // An older cosignature of the same checkpoint does not replace a newer one.
        store
            .save_cosignature(&StoredCosignature {
                timestamp: 5,
                line: "older".into(),
                ..cosignature.clone()
            })
            .expect("saves");
        assert_eq!(
            store.cosignatures("orders", 3, &[7; 32]).expect("reads"),
            vec![cosignature.clone()]
        );
        assert!(store
            .cosignatures("other-origin", 3, &[7; 32])
            .expect("reads")
            .is_empty());
        assert!(store
            .cosignatures("orders", 3, &[8; 32])
            .expect("reads")
            .is_empty());
        assert_eq!(
            store
                .witness_size("orders", "w+00000000+BA==")
                .expect("reads"),
            Some(3)
        );
        drop(store);
        let reader = SqliteLogReader::open(&db).expect("reads");
        assert_eq!(
            reader.cosignatures("orders", 3, &[7; 32]).expect("reads"),
            vec![cosignature]
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
