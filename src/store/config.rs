//! `[store]`: where entries go (a SQLite file or a PostgreSQL database), how durably, and what
//! happens when the store cannot take them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::base::units::duration_or;
use crate::base::{resolve, ConfigError};
use crate::store::postgres::config::{validate_postgres, PostgresConfig, PostgresKeys};

/// Entries that may wait for the writer by default before audited requests wait for room.
pub const DEFAULT_QUEUE_CAPACITY: usize = 65_536;

/// Most entries per group commit by default. Large commits are what make appends cheap: each
/// commit writes every index page its entries touched, so with varied keys (actors, resources,
/// addresses) the cost per entry falls steeply as commits grow (BENCHMARKS.md, "Writer batches").
pub const DEFAULT_BATCH_SIZE: usize = 8192;

/// How long the writer gathers a batch by default. Under load this sets how many entries share a
/// commit; it is also the longest an after-response entry waits in memory before its commit
/// starts.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// How often a running sidecar checkpoints its SQLite WAL by default.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

/// `[store]`: where entries go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// SQLite database file (the default store).
    pub path: Option<String>,
    /// "after-response" (default) or "write-ahead".
    pub durability: Option<String>,
    /// "normal" (survives process crashes) or "full" (fsync each group commit).
    pub sync: Option<String>,
    /// Entries that may wait for the writer before new audited requests wait for room.
    pub queue_capacity: Option<usize>,
    /// Most entries committed in one transaction (default [`DEFAULT_BATCH_SIZE`]).
    pub batch_size: Option<usize>,
    /// How long the writer lingers to gather a batch after the first entry arrives (default
    /// [`DEFAULT_FLUSH_INTERVAL`]). Requests waiting on a write-ahead intent or an event are
    /// never lingered on.
    pub flush_interval: Option<String>,
    /// Write-ahead requests whose entry cannot be made durable: "reject" (503, the default) or
    /// "forward" (counted and logged loudly).
    pub on_store_failure: Option<String>,
    /// How long a write waits for a database lock held by another process before it fails.
    pub busy_timeout: Option<String>,
    /// SQLite: how often the write-ahead log is copied into the database file and emptied
    /// (default "60s"; also done at every clean stop).
    pub checkpoint_interval: Option<String>,
    /// A PostgreSQL database shared by a fleet of sidecars, instead of `path`:
    /// "postgres://USER@HOST:PORT/DBNAME" (or libpq's "host=... user=..." form). Each sidecar
    /// writes its own log (`[log] log_id`) and answers queries over all of them. TLS as in
    /// libpq: `?sslmode=disable|prefer|require|verify-ca|verify-full` (default prefer) and
    /// `sslrootcert=PATH` (a PEM CA file, relative to this file; without it the verify modes
    /// trust the system's CAs). `require` alone checks no certificate: it resists passive
    /// eavesdropping only.
    pub url: Option<String>,
    /// The environment variable that holds the PostgreSQL password, so the file names none
    /// (e.g. one set from a Kubernetes Secret).
    pub password_env: Option<String>,
    /// Where entries the store refuses wait (NDJSON) until it takes them again. Default: beside
    /// the SQLite file, or "data/spill.ndjson" with `url`.
    pub spill_file: Option<String>,
    /// PostgreSQL: idle reader connections kept for the admin API (default 4).
    pub pool_size: Option<usize>,
    /// PostgreSQL: hold an advisory lock on this sidecar's log while running, so a second
    /// sidecar with the same log_id is refused (default true; turn off for databases without
    /// advisory locks, such as CockroachDB).
    pub lock_log: Option<bool>,
    /// PostgreSQL: longest wait for a connection (default "5s").
    pub connect_timeout: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    AfterResponse,
    WriteAhead,
}

/// What a write-ahead request does when its entry cannot be made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFailure {
    /// Answer 503 without forwarding (fail closed).
    Reject,
    /// Forward anyway, counted in `auditgate_forwarded_unrecorded_total` and logged.
    Forward,
}

impl StoreFailure {
    pub fn parse(text: &str) -> Option<StoreFailure> {
        match text {
            "reject" => Some(StoreFailure::Reject),
            "forward" => Some(StoreFailure::Forward),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    Normal,
    Full,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub durability: Durability,
    pub sync: SyncMode,
    pub queue_capacity: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub on_store_failure: StoreFailure,
    pub busy_timeout: Duration,
    /// How often a SQLite store's WAL is checkpointed (TRUNCATE) while running.
    pub checkpoint_interval: Duration,
    /// The shared PostgreSQL database; `None` for the SQLite file at `path`.
    pub postgres: Option<PostgresConfig>,
    /// Where refused entries wait, when not beside the SQLite file.
    pub spill_file: Option<PathBuf>,
}

impl StoreConfig {
    /// The base path of the write-ahead intent journal's segments (`<db>.intents`, segments
    /// `<db>.intents.<n>` beside the database), or `None` for a PostgreSQL store, which keeps
    /// intents in its own table: a fleet's sidecar disk may not outlive the sidecar.
    pub fn intent_journal_path(&self) -> Option<PathBuf> {
        if self.postgres.is_some() {
            return None;
        }
        let mut name = self
            .path
            .file_name()
            .map(|name| name.to_os_string())
            .unwrap_or_default();
        name.push(".intents");
        Some(self.path.with_file_name(name))
    }

    /// Where entries the store refuses are spilled (`spill_file`, or beside the database).
    pub fn spill_path(&self) -> PathBuf {
        if let Some(path) = &self.spill_file {
            return path.clone();
        }
        let mut name = self
            .path
            .file_name()
            .map(|name| name.to_os_string())
            .unwrap_or_default();
        name.push(".spill.ndjson");
        self.path.with_file_name(name)
    }
}

pub(crate) fn validate_store(
    file: &StoreFile,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> Option<StoreConfig> {
    let path = resolve(base, file.path.as_deref().unwrap_or("data/audit.db"));
    let durability = match file.durability.as_deref() {
        None | Some("after-response") => Durability::AfterResponse,
        Some("write-ahead") => Durability::WriteAhead,
        Some(other) => {
            errors.push(ConfigError::new(
                "store.durability",
                format!("`{other}` is not one of after-response, write-ahead"),
            ));
            Durability::AfterResponse
        }
    };
    let sync = match file.sync.as_deref() {
        None | Some("normal") => SyncMode::Normal,
        Some("full") => SyncMode::Full,
        Some(other) => {
            errors.push(ConfigError::new(
                "store.sync",
                format!("`{other}` is not one of normal, full"),
            ));
            SyncMode::Normal
        }
    };
    let queue_capacity = file.queue_capacity.unwrap_or(DEFAULT_QUEUE_CAPACITY);
    if queue_capacity == 0 {
        errors.push(ConfigError::new(
            "store.queue_capacity",
            "must be at least 1",
        ));
    }
    let batch_size = file.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
    if batch_size == 0 {
        errors.push(ConfigError::new("store.batch_size", "must be at least 1"));
    }
    let flush_interval = duration_or(
        "store.flush_interval",
        file.flush_interval.as_deref(),
        DEFAULT_FLUSH_INTERVAL,
        errors,
    );
    let on_store_failure = match file.on_store_failure.as_deref() {
        None => StoreFailure::Reject,
        Some(text) => StoreFailure::parse(text).unwrap_or_else(|| {
            errors.push(ConfigError::new(
                "store.on_store_failure",
                format!("`{text}` is not one of reject, forward"),
            ));
            StoreFailure::Reject
        }),
    };
    let busy_timeout = duration_or(
        "store.busy_timeout",
        file.busy_timeout.as_deref(),
        Duration::from_secs(5),
        errors,
    );
    let checkpoint_interval = crate::base::units::positive_duration_or(
        "store.checkpoint_interval",
        file.checkpoint_interval.as_deref(),
        DEFAULT_CHECKPOINT_INTERVAL,
        errors,
    );
    let postgres = file.url.as_deref().and_then(|url| {
        let keys = PostgresKeys {
            url,
            sqlite_path_given: file.path.is_some(),
            password_env: file.password_env.as_deref(),
            pool_size: file.pool_size,
            lock_log: file.lock_log,
            connect_timeout: file.connect_timeout.as_deref(),
        };
        validate_postgres(keys, base, errors)
    });
    let spill_file = match (&file.spill_file, &postgres) {
        (Some(spill), _) => Some(resolve(base, spill)),
        (None, Some(_)) => Some(base.join("data/spill.ndjson")),
        (None, None) => None,
    };
    if file.url.is_none() {
        for (key, set) in [
            ("store.password_env", file.password_env.is_some()),
            ("store.pool_size", file.pool_size.is_some()),
            ("store.lock_log", file.lock_log.is_some()),
            ("store.connect_timeout", file.connect_timeout.is_some()),
        ] {
            if set {
                errors.push(ConfigError::new(
                    key,
                    "applies to a PostgreSQL store only (set store.url)",
                ));
            }
        }
    }
    Some(StoreConfig {
        path,
        durability,
        sync,
        queue_capacity,
        batch_size,
        flush_interval,
        on_store_failure,
        busy_timeout,
        checkpoint_interval,
        postgres,
        spill_file,
    })
}
