//! The PostgreSQL store: one database shared by a fleet of sidecars, each writing its own log.
//!
//! Every sidecar appends under its own `log_id` and keeps its own Merkle tree and signed heads in
//! the shared tables (`schema_v1.sql`), so each log verifies on its own; reads (listings, counts,
//! stats, exports) cover every log unless the filter names one. What is scoped to this store's
//! log: appends, the tree and its proofs, heads, prunes and write-ahead intents.
//! Since schema version 3 `entries` is partitioned per log and per month of entry id
//! ([`partitions`]), so that retention drops a wholly due month instead of deleting its rows.
//!
//! Like [`super::sqlite::SqliteStore`], one connection writes (under a mutex, with the tree's
//! right edge) and readers take connections from a small pool; calls block, so the writer thread
//! and the admin API's blocking pool call it, never an async worker. An append locks the log's
//! row in `logs` (`SELECT ... FOR UPDATE`) and re-reads the stored tree size first, so two
//! processes appending to one log (a sidecar and `auditgate prune`) serialize instead of
//! colliding. A sidecar also holds a session advisory lock on its log for its whole life, so a
//! second sidecar configured with the same `log_id` is refused with a clear error instead of
//! interleaving two streams of entries into one log.
//!
//! A lost connection is not fatal: the next call reconnects (re-taking the advisory lock), and
//! until the database is back every call fails fast, which the writer turns into retries and the
//! spill file. TLS follows the connection string's `sslmode` and `sslrootcert` as libpq reads
//! them ([`ssl`]).

pub mod config;
pub mod partitions;
pub mod rows;
pub mod tls;
pub mod tree;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use postgres::{Client, GenericClient, Statement};
use sha2::{Digest, Sha256};

use super::query::{Cursor, CursorKind, Filter, PageRequest};
use super::{Bucket, Page, StatsBy};
use super::{
    LogPage, LogReader, PruneOutcome, Store, StoreError, StoredCosignature, StoredHead, TreeState,
};
use crate::entry::AuditEntry;
use crate::log::head::SignedTreeHead;
use crate::log::merkle::{self, Frontier, Hash};
use crate::store::pool::ReaderPool;
use crate::store::retention::PrunePlan;

/// Migrations, applied in order; `auditgate_schema.version` records how many ran. Version 3
/// ([`partitions::PARTITIONED_VERSION`]) also moves the rows over in code.
const MIGRATIONS: &[&str] = &[
    include_str!("schema_v1.sql"),
    include_str!("schema_v2.sql"),
    include_str!("schema_v3.sql"),
];

/// How long a sidecar waits at open for its log's lock before concluding another sidecar holds it.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// Prepared statements kept per connection; past this the cache starts over (filters combine
/// into many shapes, but a deployment uses few).
const STATEMENT_CACHE: usize = 256;

/// How a store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A process that appends: migrate the schema, register the log, and, when `exclusive`,
    /// hold the log's advisory lock for the life of the store (a sidecar; `auditgate prune` runs
    /// beside one and so does not).
    Write { exclusive: bool },
    /// Reads only (`auditgate query`, `export`, `verify`): nothing is created or changed, and a
    /// database without the schema is an error.
    Read,
}

/// Everything needed to open a [`PostgresStore`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Host, port, user, database, password, timeouts.
    pub config: postgres::Config,
    /// The log this store appends to and proves.
    pub log_id: String,
    pub access: Access,
    /// Idle reader connections kept.
    pub pool_size: usize,
    /// `sslmode` and the TLS client configuration it needs.
    pub tls: tls::PostgresTls,
}

/// A connection and its prepared statements.
pub struct Connection {
    client: Client,
    statements: StatementCache,
}

impl Connection {
    fn open(options: &PostgresOptions) -> Result<Connection, StoreError> {
        let config = &options.config;
        let client = tls::connect(config, &options.tls).map_err(|error| StoreError::Open {
            path: describe_target(config),
            message: error_message(&error),
        })?;
        Ok(Connection {
            client,
            statements: StatementCache::default(),
        })
    }

    /// The client and the statement cache, borrowed apart so that a transaction on the client
    /// can still use the cache.
    pub fn parts(&mut self) -> (&mut Client, &mut StatementCache) {
        (&mut self.client, &mut self.statements)
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// The prepared statements of one connection, by SQL text. A statement prepared on a connection
/// is valid in any transaction on it.
#[derive(Default)]
pub struct StatementCache(HashMap<String, Statement>);

impl StatementCache {
    /// The statement for `sql`, prepared on `client` the first time.
    pub fn get(
        &mut self,
        client: &mut impl GenericClient,
        sql: &str,
    ) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.0.get(sql) {
            return Ok(statement.clone());
        }
        if self.0.len() >= STATEMENT_CACHE {
            self.0.clear();
        }
        let statement = client.prepare(sql)?;
        self.0.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

/// What went wrong, in full: the driver's own text of a server error is just "db error", with the
/// server's message one level down.
pub fn error_message(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

/// `host:port/dbname` of a connection config, for messages: never the user or password.
pub fn describe_target(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "(no host)".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let dbname = config.get_dbname().unwrap_or("(default database)");
    format!("postgres://{host}:{port}/{dbname}")
}

/// The advisory lock key of a log: the first 8 bytes of a SHA-256 over its id, so any process
/// that knows the id computes the same key and no two ids realistically share one.
pub fn log_lock_key(log_id: &str) -> i64 {
    let digest = Sha256::digest(format!("auditgate log {log_id}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// Brings the schema up to date. Safe when several sidecars start at once against an empty
/// database: the version row is locked for the whole migration, so one migrates and the others
/// then find the schema current.
fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let client = &mut connection.client;
    // Concurrent CREATE TABLE IF NOT EXISTS can still collide in the catalog; the loser retries
    // and then sees the table.
    let mut attempts = 0;
    loop {
        let created = client.batch_execute(
            "CREATE TABLE IF NOT EXISTS auditgate_schema (id INTEGER PRIMARY KEY, version INTEGER NOT NULL); \
             INSERT INTO auditgate_schema (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;",
        );
        match created {
            Ok(()) => break,
            Err(_) if attempts < 3 => attempts += 1,
            Err(error) => return Err(error.into()),
        }
    }
    let known = MIGRATIONS.len() as i64;
    let mut transaction = client.transaction()?;
    let version: i32 = transaction
        .query_one(
            "SELECT version FROM auditgate_schema WHERE id = 1 FOR UPDATE",
            &[],
        )?
        .try_get(0)?;
    let version = i64::from(version);
    if version > known {
        return Err(StoreError::SchemaTooNew {
            found: version,
            known,
        });
    }
    for (index, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        transaction.batch_execute(sql)?;
        if index + 1 == partitions::PARTITIONED_VERSION {
            partitions::move_v2_entries(&mut transaction)?;
        }
    }
    if version < known {
        transaction.execute(
            "UPDATE auditgate_schema SET version = $1 WHERE id = 1",
            &[&(known as i32)],
        )?;
    }
    transaction.commit()?;
    Ok(())
}

/// The schema version of a database opened for reading only; an error when it has none or one
/// this auditgate does not know.
fn check_schema(connection: &mut Connection, target: &str) -> Result<(), StoreError> {
    let rows = connection
        .client
        .query("SELECT version FROM auditgate_schema WHERE id = 1", &[])
        .map_err(|error| StoreError::Open {
            path: target.to_string(),
            message: format!("no auditgate schema in this database ({error})"),
        })?;
    let version: i32 = match rows.first() {
        Some(row) => row.try_get(0)?,
        None => 0,
    };
    let known = MIGRATIONS.len() as i64;
    if i64::from(version) > known {
        return Err(StoreError::SchemaTooNew {
            found: i64::from(version),
            known,
        });
    }
    if version < 1 {
        return Err(StoreError::Open {
            path: target.to_string(),
            message: "no auditgate schema in this database".into(),
        });
    }
    Ok(())
}

/// Takes the log's session advisory lock on `connection`, or says who holds it.
fn take_log_lock(connection: &mut Connection, log_id: &str) -> Result<(), StoreError> {
    let row = connection
        .client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&log_lock_key(log_id)])?;
    let taken: bool = row.try_get(0)?;
    if taken {
        Ok(())
    } else {
        Err(StoreError::LogInUse {
            log_id: log_id.to_string(),
        })
    }
}

/// What only the writer touches: its connection and the tree's right edge.
struct WriterSide {
    connection: Option<Connection>,
    frontier: Frontier,
    /// Why the stored tree cannot be extended, when it cannot (found at open).
    damaged: Option<String>,
}

pub struct PostgresStore {
    options: PostgresOptions,
    target: String,
    writer: Mutex<WriterSide>,
    readers: ReaderPool<Connection>,
    next_seq: AtomicU64,
    /// The month partitions of the log this writer made or found.
    months: Mutex<partitions::Known>,
    /// The months a prune found not wholly due, with the plan it judged them by: the next chunk
    /// of the same prune does not scan them again.
    not_due: Mutex<Option<(PrunePlan, BTreeSet<partitions::Month>)>>,
}

impl PostgresStore {
    /// Connects, brings the schema up to date and loads the log's tree (for [`Access::Write`]);
    /// checks the schema only (for [`Access::Read`]).
    pub fn open(options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        let target = describe_target(&options.config);
        let mut connection = Connection::open(&options)?;
        match options.access {
            Access::Write { exclusive } => {
                migrate(&mut connection)?;
                connection.client.execute(
                    "INSERT INTO logs (log_id) VALUES ($1) ON CONFLICT (log_id) DO NOTHING",
                    &[&options.log_id],
                )?;
                partitions::ensure_log(&mut connection.client, &options.log_id)?;
                if exclusive {
                    // A sidecar restarted at once may find its previous process's session still
                    // ending on the server (it holds the lock until then): wait a little before
                    // deciding that another sidecar has the log.
                    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
                    loop {
                        match take_log_lock(&mut connection, &options.log_id) {
                            Err(StoreError::LogInUse { .. })
                                if std::time::Instant::now() < deadline =>
                            {
                                std::thread::sleep(std::time::Duration::from_millis(100));
                            }
                            taken => break taken?,
                        }
                    }
                }
            }
            Access::Read => check_schema(&mut connection, &target)?,
        }
        let (frontier, damaged) = {
            let (client, statements) = connection.parts();
            let mut db = tree::LogDb {
                client,
                statements,
                log_id: &options.log_id,
            };
            load_tree(&mut db)?
        };
        if let Some(reason) = &damaged {
            tracing::error!(store = %target, log = %options.log_id, %reason, "the log cannot be appended to");
        }
        let next_seq = frontier.size() + 1;
        let store = PostgresStore {
            target,
            writer: Mutex::new(WriterSide {
                connection: Some(connection),
                frontier,
                damaged,
            }),
            readers: ReaderPool::new(options.pool_size),
            next_seq: AtomicU64::new(next_seq),
            options,
            months: Mutex::new(partitions::Known::default()),
            not_due: Mutex::new(None),
        };
        // This month's partition and the next, made ahead of the entries that need them.
        store.make_months(&[]);
        Ok(store)
    }

    /// Makes the month partitions an append of `entries` needs and the next month's, outside
    /// the append's transaction. Never fails: a month whose partition cannot be made now (a
    /// busy table) takes its entries into the log's default partition, and is tried again later.
    fn make_months(&self, entries: &[AuditEntry]) {
        if self.options.access == Access::Read {
            return;
        }
        let wanted = partitions::wanted(entries, chrono::Utc::now());
        let missing = match self.months.lock() {
            Ok(known) => known.missing(&wanted, Instant::now()),
            Err(_) => return,
        };
        if missing.is_empty() {
            return;
        }
        let result = self.on_writer(|_, connection, options| {
            for month in &missing {
                let made = partitions::ensure_month(&mut connection.client, &options.log_id, *month);
                let Ok(mut known) = self.months.lock() else {
                    break;
                };
                match made {
                    Ok(()) => known.made(*month),
                    Err(error) => {
                        tracing::warn!(store = %self.target, log = %options.log_id, month = %month.label(), %error,
                            "cannot make the month's partition now; its entries go to the log's default partition");
                        known.failed(*month, Instant::now());
                    }
                }
            }
            Ok(())
        });
        if let Err(error) = result {
            tracing::warn!(store = %self.target, %error, "cannot make month partitions now");
        }
    }

    /// Drops the months of the log that `plan` finds wholly due, one at a time, each with its
    /// marks and `audit.pruned` record: the first one that held entries is returned; `None` when
    /// no month is wholly due (the row-by-row prune takes what is left).
    fn prune_months(
        &self,
        plan: &PrunePlan,
        record: &AuditEntry,
    ) -> Result<Option<PruneOutcome>, StoreError> {
        // A month can only be wholly due once it has ended before the latest cutoff; the count
        // inside `prune_month` decides (ids and `created_at` are set apart, and a class may hold
        // no row of the month).
        let Some(latest) = plan.classes().iter().map(|class| class.cutoff).max() else {
            return Ok(None);
        };
        let months = self.with_log(|db| partitions::months(db.client, db.log_id))?;
        for month in months {
            if month.end().is_none_or(|end| end > latest) {
                break;
            }
            let judged = self
                .not_due
                .lock()
                .map_err(|_| StoreError::Other("prune state poisoned".into()))?
                .as_ref()
                .is_some_and(|(judged, months)| judged == plan && months.contains(&month));
            if judged {
                continue;
            }
            let result = self.write(|db, frontier| {
                partitions::prune_month(db, frontier, plan, record.clone(), month)
            });
            let outcome = match result {
                Ok(partitions::MonthPrune::Pruned(outcome)) => Some(outcome),
                Ok(partitions::MonthPrune::Emptied) => None,
                Ok(partitions::MonthPrune::NotDue) => {
                    self.judged_not_due(plan, month)?;
                    continue;
                }
                // A drop that could not have its locks in time, or lost a deadlock against a
                // reader, rolled back whole (marks and record with it): the month is pruned row
                // by row instead.
                Err(StoreError::Postgres(error))
                    if [
                        postgres::error::SqlState::LOCK_NOT_AVAILABLE,
                        postgres::error::SqlState::T_R_DEADLOCK_DETECTED,
                    ]
                    .iter()
                    .any(|code| error.code() == Some(code)) =>
                {
                    tracing::warn!(store = %self.target, month = %month.label(), error = %error_message(&error),
                        "the month's partition is busy; pruning its entries one by one instead");
                    self.judged_not_due(plan, month)?;
                    continue;
                }
                Err(error) => return Err(error),
            };
            if let Ok(mut known) = self.months.lock() {
                known.forget(month);
            }
            if outcome.is_some() {
                return Ok(outcome);
            }
        }
        Ok(None)
    }

    fn judged_not_due(&self, plan: &PrunePlan, month: partitions::Month) -> Result<(), StoreError> {
        let mut not_due = self
            .not_due
            .lock()
            .map_err(|_| StoreError::Other("prune state poisoned".into()))?;
        match not_due.as_mut() {
            Some((judged, months)) if judged == plan => {
                months.insert(month);
            }
            _ => *not_due = Some((plan.clone(), BTreeSet::from([month]))),
        }
        Ok(())
    }

    pub fn log_id(&self) -> &str {
        &self.options.log_id
    }

    /// `postgres://host:port/db`, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Runs `work` with a reader connection from the pool (a new one when the pool is empty;
    /// a broken one is dropped instead of returned). A pooled connection only learns that the
    /// server went away when it is next used, so a call that fails on a pooled connection that
    /// turns out closed is run once more on a fresh one: the first query after a database
    /// restart succeeds instead of failing.
    pub fn with_reader<T>(
        &self,
        work: impl Fn(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let (mut connection, from_pool) = match self.readers.take()? {
            Some(connection) if !connection.is_closed() => (connection, true),
            _ => (Connection::open(&self.options)?, false),
        };
        let mut result = work(&mut connection);
        if result.is_err() && from_pool && connection.is_closed() {
            connection = Connection::open(&self.options)?;
            result = work(&mut connection);
        }
        if !connection.is_closed() {
            self.readers.give_back(connection);
        }
        result
    }

    /// Runs `work` with this log's view of a pooled reader connection.
    fn with_log<T>(
        &self,
        work: impl Fn(&mut tree::LogDb<'_, Client>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_reader(|connection| {
            let (client, statements) = connection.parts();
            let mut db = tree::LogDb {
                client,
                statements,
                log_id: &self.options.log_id,
            };
            work(&mut db)
        })
    }

    fn lock_writer(&self) -> Result<MutexGuard<'_, WriterSide>, StoreError> {
        self.writer
            .lock()
            .map_err(|_| StoreError::Other("writer connection poisoned".into()))
    }

    /// The writer's connection, reconnecting (and re-taking the log's lock) when it was lost.
    fn writer_connection<'s>(
        &self,
        side: &'s mut WriterSide,
    ) -> Result<&'s mut Connection, StoreError> {
        if side.connection.as_ref().is_none_or(Connection::is_closed) {
            side.connection = None;
            let mut connection = Connection::open(&self.options)?;
            if self.options.access == (Access::Write { exclusive: true }) {
                take_log_lock(&mut connection, &self.options.log_id)?;
            }
            tracing::info!(store = %self.target, "reconnected to the database");
            side.connection = Some(connection);
        }
        side.connection
            .as_mut()
            .ok_or_else(|| StoreError::Other("no database connection".into()))
    }

    /// Runs `work` in a transaction on the writer connection that holds the log's row lock, with
    /// a copy of the frontier brought up to date with the database, and keeps the copy only if
    /// the commit succeeds.
    fn write<T>(
        &self,
        mut work: impl FnMut(
            &mut tree::LogDb<'_, postgres::Transaction<'_>>,
            &mut Frontier,
        ) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.on_writer(|frontier, connection, options| {
            let known = frontier.clone();
            let (client, statements) = connection.parts();
            let mut transaction = client.transaction()?;
            let (result, working) = {
                let mut db = tree::LogDb {
                    client: &mut transaction,
                    statements,
                    log_id: &options.log_id,
                };
                db_lock_log(&mut db)?;
                let mut working = current_frontier(&mut db, &known)?;
                let result = work(&mut db, &mut working)?;
                (result, working)
            };
            transaction.commit()?;
            *frontier = working;
            Ok(result)
        })
    }

    /// Runs `work` in a transaction on the writer connection, outside the log's lock (intents,
    /// heads).
    fn with_writer<T>(
        &self,
        mut work: impl FnMut(&mut tree::LogDb<'_, postgres::Transaction<'_>>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.on_writer(|_, connection, options| {
            let (client, statements) = connection.parts();
            let mut transaction = client.transaction()?;
            let result = {
                let mut db = tree::LogDb {
                    client: &mut transaction,
                    statements,
                    log_id: &options.log_id,
                };
                work(&mut db)?
            };
            transaction.commit()?;
            Ok(result)
        })
    }

    /// Runs `work` on the writer connection with the frontier. A connection that turns out to
    /// have been lost (a database restart) gets one fresh attempt, so the first write after the
    /// database returns does not fail; a retried append cannot duplicate entries, since
    /// `(log_id, id)` is unique.
    fn on_writer<T>(
        &self,
        mut work: impl FnMut(&mut Frontier, &mut Connection, &PostgresOptions) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.options.access == Access::Read {
            return Err(StoreError::Other(
                "the store was opened for reading only".into(),
            ));
        }
        let mut side = self.lock_writer()?;
        if let Some(reason) = &side.damaged {
            return Err(StoreError::Other(reason.clone()));
        }
        let mut retried = false;
        loop {
            let mut frontier = side.frontier.clone();
            let connection = self.writer_connection(&mut side)?;
            let result = work(&mut frontier, connection, &self.options);
            let lost = connection.is_closed();
            match result {
                Ok(value) => {
                    self.next_seq.store(frontier.size() + 1, Ordering::Release);
                    side.frontier = frontier;
                    return Ok(value);
                }
                Err(_) if lost && !retried => retried = true,
                Err(error) => return Err(error),
            }
        }
    }
}

/// Locks the log's row for the rest of the transaction: one append per log at a time.
fn db_lock_log<C: GenericClient>(db: &mut tree::LogDb<'_, C>) -> Result<(), StoreError> {
    let log_id = db.log_id.to_string();
    let rows = db.query(
        "SELECT log_id FROM logs WHERE log_id = $1 FOR UPDATE",
        &[&log_id],
    )?;
    if rows.is_empty() {
        // The row is made at open; one missing was deleted behind auditgate's back.
        db.execute(
            "INSERT INTO logs (log_id) VALUES ($1) ON CONFLICT (log_id) DO NOTHING",
            &[&log_id],
        )?;
    }
    Ok(())
}

/// The frontier of the log as stored now: `known` when nobody else appended, reloaded when
/// another process did.
fn current_frontier<C: GenericClient>(
    db: &mut tree::LogDb<'_, C>,
    known: &Frontier,
) -> Result<Frontier, StoreError> {
    let stored = tree::tree_size(db)?;
    if stored == known.size() {
        Ok(known.clone())
    } else {
        Ok(Frontier::load(&tree::PgNodes::new(db), stored)?)
    }
}

/// The frontier of the stored tree, or why it cannot be extended (damage, or entries beyond
/// it written behind auditgate's back).
fn load_tree<C: GenericClient>(
    db: &mut tree::LogDb<'_, C>,
) -> Result<(Frontier, Option<String>), StoreError> {
    let size = tree::tree_size(db)?;
    let last_entry = tree::max_entry_seq(db)?;
    let frontier = match Frontier::load(&tree::PgNodes::new(db), size) {
        Ok(frontier) => frontier,
        Err(error) => {
            return Ok((
                Frontier::new(),
                Some(format!(
                    "the stored Merkle tree is damaged ({error}); run `auditgate verify`"
                )),
            ))
        }
    };
    if last_entry > size {
        return Ok((
            Frontier::new(),
            Some(format!(
                "entries {}..={last_entry} are not in the Merkle tree: the database was changed \
                 outside auditgate; run `auditgate verify`",
                size + 1
            )),
        ));
    }
    Ok((frontier, None))
}

impl Drop for PostgresStore {
    /// Each client of the `postgres` crate owns a small runtime, which must not be dropped on an
    /// async worker thread (tokio panics). The store may be dropped anywhere (a test's async
    /// body, the server's shutdown), so its connections are closed on a thread of their own.
    fn drop(&mut self) {
        let mut connections = Vec::new();
        if let Ok(side) = self.writer.get_mut() {
            connections.extend(side.connection.take());
        }
        connections.append(&mut self.readers.drain());
        if connections.is_empty() {
            return;
        }
        let closing = std::thread::Builder::new()
            .name("auditgate-pg-close".into())
            .spawn(move || {
                // Release the log's lock now rather than when the server notices the closed
                // socket, so the log can be opened again at once (a restart).
                for connection in &mut connections {
                    let _ = connection
                        .client
                        .batch_execute("SELECT pg_advisory_unlock_all()");
                }
                drop(connections)
            });
        if let Ok(closing) = closing {
            let _ = closing.join();
        }
    }
}

impl LogReader for PostgresStore {
    fn tree_size(&self) -> Result<u64, StoreError> {
        self.with_log(tree::tree_size)
    }

    fn max_entry_seq(&self) -> Result<u64, StoreError> {
        self.with_log(tree::max_entry_seq)
    }

    fn scan_log(&self, first_seq: u64, max: usize) -> Result<LogPage, StoreError> {
        self.with_reader(|connection| {
            let (client, statements) = connection.parts();
            let mut transaction = client
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            // A whole-month prune drops a partition, which is not MVCC-safe: a snapshot taken
            // before the drop commits would then find neither the month's rows nor their marks,
            // and `verify` would report entries missing. A share lock on the log's partition,
            // taken before the snapshot (a lock takes none), waits out a drop in progress and
            // keeps the next one from starting until the page is read. A log without a partition
            // yet has nothing to drop; the savepoint lets the page be read without the lock.
            let log_table = partitions::Names::new(&self.options.log_id);
            transaction.batch_execute("SAVEPOINT scan_lock")?;
            let lock = format!("LOCK TABLE \"{}\" IN ACCESS SHARE MODE", log_table.log());
            match transaction.batch_execute(&lock) {
                Ok(()) => transaction.batch_execute("RELEASE SAVEPOINT scan_lock")?,
                Err(error) if error.code() == Some(&postgres::error::SqlState::UNDEFINED_TABLE) => {
                    transaction.batch_execute("ROLLBACK TO SAVEPOINT scan_lock")?
                }
                Err(error) => return Err(error.into()),
            }
            let page = {
                let mut db = tree::LogDb {
                    client: &mut transaction,
                    statements,
                    log_id: &self.options.log_id,
                };
                tree::scan_log(&mut db, first_seq, max)?
            };
            transaction.commit()?;
            Ok(page)
        })
    }

    fn pruned_by(&self, record_seq: u64) -> Result<Vec<u64>, StoreError> {
        self.with_log(|db| tree::pruned_by(db, record_seq))
    }

    fn root_at(&self, size: u64) -> Result<Hash, StoreError> {
        self.with_log(|db| Ok(merkle::root_at(&tree::PgNodes::new(db), size)?))
    }

    fn node_range(
        &self,
        level: u32,
        first_index: u64,
        count: usize,
    ) -> Result<Vec<Hash>, StoreError> {
        self.with_log(|db| tree::node_range(db, level, first_index, count))
    }

    fn heads_after(&self, after_id: u64, limit: u32) -> Result<Vec<StoredHead>, StoreError> {
        self.with_log(|db| tree::heads_after(db, after_id, limit))
    }

    fn cosignatures(
        &self,
        origin: &str,
        size: u64,
        root_hash: &Hash,
    ) -> Result<Vec<StoredCosignature>, StoreError> {
        self.with_log(|db| tree::cosignatures(db, origin, size, root_hash))
    }
}

/// The `gid` kind is the only cursor this store hands out; refuse the others early.
fn check_cursors(page: &PageRequest) -> Result<(), StoreError> {
    for cursor in [page.cursor, page.through].into_iter().flatten() {
        if cursor.kind() != CursorKind::Global {
            return Err(StoreError::Cursor);
        }
    }
    Ok(())
}

impl Store for PostgresStore {
    fn append(&self, entries: &mut [AuditEntry]) -> Result<(), StoreError> {
        self.make_months(entries);
        let mut result = self.write(|db, frontier| tree::insert_entries(db, frontier, entries));
        if result.as_ref().is_err_and(partitions::is_missing_partition) {
            // The log's partition was dropped behind auditgate's back: make it again and retry,
            // rather than refuse entries.
            self.on_writer(|_, connection, options| {
                partitions::ensure_log(&mut connection.client, &options.log_id)
            })?;
            result = self.write(|db, frontier| tree::insert_entries(db, frontier, entries));
        }
        if result.is_err() {
            for entry in entries.iter_mut() {
                entry.seq = 0;
            }
        }
        result
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        // The same locks an append takes, then nothing: fails when the database is unreachable,
        // read-only (a standby), or the log is damaged or held by another sidecar.
        self.write(|_, _| Ok(()))
    }

    fn size(&self) -> Result<u64, StoreError> {
        Ok(self.next_seq.load(Ordering::Acquire) - 1)
    }

    fn newest_position(&self) -> Result<Option<Cursor>, StoreError> {
        self.with_reader(|connection| {
            let (client, statements) = connection.parts();
            let statement = statements.get(client, "SELECT max(gid) FROM entries")?;
            let newest: Option<i64> = match client.query(&statement, &[])?.first() {
                Some(row) => row.try_get(0)?,
                None => None,
            };
            Ok(newest
                .and_then(|gid| u64::try_from(gid).ok())
                .map(Cursor::after_global))
        })
    }

    fn log_scope(&self) -> Option<&str> {
        Some(&self.options.log_id)
    }

    fn list(&self, filter: &Filter, page: &PageRequest) -> Result<Page, StoreError> {
        check_cursors(page)?;
        self.with_log(|db| rows::list(db.client, db.statements, filter, page))
    }

    fn list_offset(
        &self,
        filter: &Filter,
        offset: u64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.with_log(|db| rows::list_offset(db.client, db.statements, filter, offset, limit))
    }

    fn count(&self, filter: &Filter) -> Result<u64, StoreError> {
        self.with_log(|db| rows::count(db.client, db.statements, filter))
    }

    fn get(&self, id: &str) -> Result<Option<AuditEntry>, StoreError> {
        self.with_log(|db| rows::get(db.client, db.statements, &self.options.log_id, id))
    }

    fn stats(&self, filter: &Filter, by: StatsBy, limit: u32) -> Result<Vec<Bucket>, StoreError> {
        self.with_log(|db| rows::stats(db.client, db.statements, filter, by, limit))
    }

    fn record_intents(&self, intents: &[AuditEntry]) -> Result<(), StoreError> {
        self.with_writer(|db| tree::record_intents(db, intents))
    }

    fn clear_intents(&self, ids: &[String]) -> Result<(), StoreError> {
        let ids = ids.to_vec();
        self.with_writer(|db| {
            let log_id = db.log_id.to_string();
            db.execute(
                "DELETE FROM pending WHERE log_id = $1 AND id = ANY($2)",
                &[&log_id, &ids],
            )?;
            Ok(())
        })
    }

    fn unfinished_intents(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = self.with_writer(|db| {
            let log_id = db.log_id.to_string();
            db.execute(
                "DELETE FROM pending WHERE log_id = $1 AND id IN \
                 (SELECT id FROM entries WHERE log_id = $1)",
                &[&log_id],
            )?;
            let rows = db.query(
                "SELECT id, entry FROM pending WHERE log_id = $1 ORDER BY created_at, id",
                &[&log_id],
            )?;
            rows.iter()
                .map(|row| Ok((row.try_get::<_, String>(0)?, row.try_get::<_, String>(1)?)))
                .collect::<Result<Vec<_>, StoreError>>()
        })?;
        Ok(crate::store::intents_from_rows(&self.options.log_id, rows))
    }

    fn existing_ids(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let ids = ids.to_vec();
        self.with_log(|db| {
            let log_id = db.log_id.to_string();
            let rows = db.query(
                "SELECT id FROM entries WHERE log_id = $1 AND id = ANY($2)",
                &[&log_id, &ids],
            )?;
            rows.iter()
                .map(|row| Ok(row.try_get::<_, String>(0)?))
                .collect()
        })
    }

    fn tree(&self) -> Result<TreeState, StoreError> {
        let mut side = self.lock_writer()?;
        if let Some(reason) = &side.damaged {
            return Err(StoreError::Other(reason.clone()));
        }
        let known = side.frontier.clone();
        let connection = self.writer_connection(&mut side)?;
        let (client, statements) = connection.parts();
        let mut db = tree::LogDb {
            client,
            statements,
            log_id: &self.options.log_id,
        };
        let current = current_frontier(&mut db, &known)?;
        self.next_seq.store(current.size() + 1, Ordering::Release);
        let state = TreeState {
            size: current.size(),
            root: current.root(),
        };
        side.frontier = current;
        Ok(state)
    }

    fn leaf_hash(&self, seq: u64) -> Result<Option<Hash>, StoreError> {
        self.with_log(|db| tree::leaf_hash_at(db, seq))
    }

    fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        let index = crate::store::leaf_index(seq, size)?;
        self.with_log(|db| {
            let nodes = tree::PgNodes::new(db);
            Ok(merkle::inclusion_proof(&nodes, index, size)?)
        })
    }

    fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, StoreError> {
        self.with_log(|db| {
            let nodes = tree::PgNodes::new(db);
            Ok(merkle::consistency_proof(&nodes, from, to)?)
        })
    }

    fn save_head(&self, head: &SignedTreeHead) -> Result<(), StoreError> {
        self.with_writer(|db| tree::save_head(db, head))
    }

    fn latest_head(&self) -> Result<Option<SignedTreeHead>, StoreError> {
        self.with_log(tree::latest_head)
    }

    fn save_cosignature(&self, cosignature: &StoredCosignature) -> Result<(), StoreError> {
        self.with_writer(|db| tree::save_cosignature(db, cosignature))
    }

    fn witness_size(&self, origin: &str, witness_vkey: &str) -> Result<Option<u64>, StoreError> {
        self.with_log(|db| tree::witness_size(db, origin, witness_vkey))
    }

    fn pruned_record(&self, seq: u64) -> Result<Option<u64>, StoreError> {
        self.with_log(|db| tree::pruned_record(db, seq))
    }

    fn prune(
        &self,
        plan: &PrunePlan,
        record: AuditEntry,
        max_entries: usize,
    ) -> Result<Option<PruneOutcome>, StoreError> {
        if let Some(outcome) = self.prune_months(plan, &record)? {
            return Ok(Some(outcome));
        }
        self.write(|db, frontier| tree::prune(db, frontier, plan, record.clone(), max_entries))
    }
}

/// Whether a `--db` argument names a PostgreSQL database rather than a SQLite file.
pub fn is_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// Opens the PostgreSQL database of a configuration (`--config`) for reading: its host, user,
/// password (from `password_env`) and TLS settings, and nothing is created or changed.
pub fn open_config_for_reading(
    database: &crate::store::postgres::config::PostgresConfig,
    log_id: &str,
) -> Result<PostgresStore, StoreError> {
    open_cli_reader(database.connection.clone(), log_id, database.tls.clone())
}

/// Opens a PostgreSQL database named on the command line for reading (`auditgate query`,
/// `export`, `verify`): `log_id` is the log whose tree is read. The password comes from the URL
/// or, as with libpq, from `PGPASSWORD`.
pub fn open_for_reading(url: &str, log_id: &str) -> Result<PostgresStore, StoreError> {
    let here = std::env::current_dir().unwrap_or_default();
    let invalid = |message: String| StoreError::Open {
        path: "the database URL".into(),
        message,
    };
    let tls::ParsedUrl { mut config, tls } = tls::parse_url(url, &here).map_err(invalid)?;
    let tls = tls.map_err(|problems| invalid(problems.join("; ")))?;
    if config.get_password().is_none() {
        if let Ok(password) = std::env::var("PGPASSWORD") {
            config.password(password);
        }
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    open_cli_reader(config, log_id, tls)
}

/// The read-only store of a command-line tool: one connection, named `auditgate-cli` in the
/// server's activity view.
fn open_cli_reader(
    mut config: postgres::Config,
    log_id: &str,
    tls: tls::PostgresTls,
) -> Result<PostgresStore, StoreError> {
    config.application_name("auditgate-cli");
    PostgresStore::open(PostgresOptions {
        config,
        log_id: log_id.to_string(),
        access: Access::Read,
        pool_size: 1,
        tls,
    })
}
