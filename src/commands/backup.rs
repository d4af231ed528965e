//! `auditgate backup`: a consistent copy of a SQLite store, also while a sidecar writes to it.
//!
//! The copy is made with SQLite's online backup API in one step, inside one read transaction of
//! a read-only connection: in WAL mode that is a snapshot of the log at one commit, and the
//! sidecar's appends go on meanwhile (they land in the WAL, after the snapshot). The copy is
//! written under a temporary name, switched to a rollback journal (so it is one self-contained
//! file), checked, made durable and only then renamed into place: a backup file is whole or
//! absent. A PostgreSQL store is backed up with `pg_dump`; the command prints how.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::store::sqlite::readonly::ReadOnlySource;
use crate::store::StoreError;

/// How long a step of the backup may keep meeting a busy or locked source before giving up.
const BUSY_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0} exists; pass --force to replace it")]
    Exists(String),
    #[error("the backup cannot be the store itself ({0})")]
    SameFile(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("the copy failed its integrity check: {0}")]
    Damaged(String),
    #[error("the store stayed busy for {0:?}; try again")]
    Busy(std::time::Duration),
}

/// What a finished backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    pub entries: u64,
    pub tree_size: u64,
    /// The size of the newest signed head in the copy, if it has one.
    pub latest_head: Option<u64>,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |error| BackupError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// The temporary name a backup is written under before it is complete.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_os_string();
    name.push(".partial");
    PathBuf::from(name)
}

/// Copies the log at `source` into a new file `out` (replaced only with `force`).
pub fn backup_sqlite(source: &Path, out: &Path, force: bool) -> Result<BackupSummary, BackupError> {
    if out.exists() {
        if same_file(source, out) {
            return Err(BackupError::SameFile(out.display().to_string()));
        }
        if !force {
            return Err(BackupError::Exists(out.display().to_string()));
        }
    }
    let (source_files, from) = ReadOnlySource::open(source)?;
    let partial = partial_path(out);
    // A partial file of an earlier, interrupted run is never a backup.
    match std::fs::remove_file(&partial) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error(&partial)(error)),
    }
    let result = copy_into(&from, &partial).and_then(|summary| {
        source_files.check_unchanged()?;
        Ok(summary)
    });
    drop(from);
    let summary = match result {
        Ok(summary) => summary,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
    };
    std::fs::rename(&partial, out).map_err(io_error(out))?;
    sync_parent(out);
    Ok(summary)
}

fn copy_into(from: &Connection, partial: &Path) -> Result<BackupSummary, BackupError> {
    create_private(partial)?;
    let mut to = Connection::open_with_flags(
        partial,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    {
        let backup = Backup::new(from, &mut to)?;
        let started = std::time::Instant::now();
        loop {
            // All pages in one step: one read transaction, so one consistent snapshot. Steps of
            // a few pages would restart whenever the sidecar commits in between.
            match backup.step(-1)? {
                StepResult::Done => break,
                StepResult::More => continue,
                StepResult::Busy | StepResult::Locked => {
                    if started.elapsed() > BUSY_LIMIT {
                        return Err(BackupError::Busy(BUSY_LIMIT));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                // The enum is non-exhaustive; anything new is treated as "not done yet".
                _ => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }
    // The copied header still says WAL; a rollback journal makes the backup one file that can be
    // copied, checksummed and read without side files. The sidecar switches it back to WAL when
    // it opens a restored copy.
    let mode: String = to.query_row("PRAGMA journal_mode = DELETE", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(BackupError::Damaged(format!(
            "cannot switch the copy to a rollback journal (it is {mode})"
        )));
    }
    let check: String = to.query_row("PRAGMA quick_check", [], |row| row.get(0))?;
    if check != "ok" {
        return Err(BackupError::Damaged(check));
    }
    let summary = summarize(&to)?;
    to.close()
        .map_err(|(_, error)| BackupError::Sqlite(error))?;
    std::fs::File::open(partial)
        .and_then(|file| file.sync_all())
        .map_err(io_error(partial))?;
    Ok(summary)
}

fn summarize(connection: &Connection) -> Result<BackupSummary, BackupError> {
    // Entries not sealed yet are in `recent` (schema version 4 and later).
    let has_recent = connection
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'recent'")?
        .exists([])?;
    let sql = if has_recent {
        "SELECT (SELECT count(*) FROM entries) + (SELECT count(*) FROM recent)"
    } else {
        "SELECT count(*) FROM entries"
    };
    let entries: i64 = connection.query_row(sql, [], |row| row.get(0))?;
    let tree_size = crate::store::sqlite::log::tree_size(connection).unwrap_or(0);
    let latest_head = crate::store::sqlite::log::latest_head(connection)
        .ok()
        .flatten()
        .map(|head| head.head.size);
    Ok(BackupSummary {
        entries: u64::try_from(entries).unwrap_or(0),
        tree_size,
        latest_head,
    })
}

/// Creates the file readable by its owner only: a backup holds every entry of the log.
fn create_private(path: &Path) -> Result<(), BackupError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path).map(drop).map_err(io_error(path))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Makes the rename durable; a failure only weakens durability after a power cut, so it is not
/// an error.
fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if let Ok(directory) = std::fs::File::open(parent) {
        let _ = directory.sync_all();
    }
}

/// `auditgate backup`; returns the exit code: 0 with a complete copy at `--out`, 1 without one
/// (an error, or a PostgreSQL store, for which the pg_dump to run is printed), 64 for an invalid
/// configuration.
pub fn run_backup(args: &crate::commands::cli::BackupArgs) -> std::process::ExitCode {
    use crate::commands::store_location::{locate, LocateError, StoreLocation};
    use std::process::ExitCode;
    let located = match locate(args.store.db.as_deref(), args.store.config.as_deref()) {
        Ok(located) => located,
        Err(LocateError::Config(errors)) => {
            eprint!("{errors}");
            return ExitCode::from(64);
        }
    };
    let source = match &located.location {
        StoreLocation::Sqlite(path) => path,
        postgres => {
            let _ = crate::commands::cli::print_stdout(&postgres_instructions(
                &postgres.describe(),
                &args.out,
                located.config_log_id.as_deref(),
            ));
            eprintln!(
                "auditgate backup: nothing was written: a PostgreSQL store is backed up with \
                 pg_dump (above)"
            );
            return ExitCode::FAILURE;
        }
    };
    match backup_sqlite(source, &args.out, args.force) {
        Ok(summary) => {
            let _ = crate::commands::cli::print_stdout(&format!(
                "{}: {} entries, tree size {}, {} (a consistent copy of {})\nCheck it with: \
                 auditgate verify --db {}\n",
                args.out.display(),
                summary.entries,
                summary.tree_size,
                match summary.latest_head {
                    Some(size) => format!("newest signed head at size {size}"),
                    None => "no signed head".to_string(),
                },
                source.display(),
                args.out.display()
            ));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("auditgate backup: {error}");
            ExitCode::FAILURE
        }
    }
}

/// What to run to back up a PostgreSQL store into `out`, and how to check the result.
pub fn postgres_instructions(target: &str, out: &Path, log_id: Option<&str>) -> String {
    let tables = [
        "auditgate_schema",
        "logs",
        "entries",
        "tree_nodes",
        "tree_heads",
        "pruned_entries",
        "pending",
    ];
    let mut text = String::new();
    let _ = writeln!(
        text,
        "A PostgreSQL store is backed up with pg_dump, which reads one consistent snapshot while \
         the sidecars keep writing:"
    );
    let _ = writeln!(text);
    let table_args: Vec<String> = tables.iter().map(|table| format!("-t {table}")).collect();
    let _ = writeln!(
        text,
        "  pg_dump --format=custom {} -f {} \"{target}\"",
        table_args.join(" "),
        out.display()
    );
    let _ = writeln!(text);
    let _ = writeln!(
        text,
        "Restore into an empty database and check each sidecar's log there before relying on it:"
    );
    let _ = writeln!(text);
    let _ = writeln!(
        text,
        "  pg_restore --no-owner -d \"postgres://USER@HOST/RESTORED\" {}",
        out.display()
    );
    let _ = writeln!(
        text,
        "  auditgate verify --db \"postgres://USER@HOST/RESTORED\" --log-id {} --heads heads.ndjson --key log.key.pub",
        log_id.unwrap_or("LOG_ID")
    );
    let _ = writeln!(text);
    let _ = writeln!(
        text,
        "verify exits 0 when every entry, tree node and stored head of that log checks out. With \
         --heads it also lists the published heads the copy is missing: the entries written after \
         the dump, which a restore gives up."
    );
    text
}
