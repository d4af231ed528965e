//! The store: where entries are appended and from where they are queried.
//!
//! [`Store`] is the one interface the writer and the admin API use; `sqlite.rs` is the embedded
//! default and `postgres/` the database a fleet of sidecars shares ([`open`] picks one from the
//! config). Calls are blocking: the writer runs on its own thread and the admin API calls the
//! store through `spawn_blocking`, so the proxy's async workers never wait on a database.
//!
//! Every store keeps the log's Merkle tree beside its entries (see [`crate::log`]): `append`
//! hashes each entry after giving it its sequence number and stores the tree nodes the append
//! completed in the same transaction, so the tree and the entries can never disagree except by
//! tampering. [`LogReader`] is the read side verification needs; it is a separate trait so that
//! `auditgate verify` can read a database file without opening it for writing.

pub mod config;
pub mod count_tally;
mod log_page;
mod pool;
pub mod postgres;
pub mod query;
pub mod retention;
pub mod sqlite;

use crate::entry::{AuditEntry, StoredRow};
use crate::log::head::SignedTreeHead;
use crate::log::merkle::{Hash, MemoryNodes, MerkleError};
use crate::store::retention::PrunePlan;
pub use query::{Bucket, Page, StatsBy};
use query::{Cursor, Filter, PageRequest};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {}", postgres::error_message(.0))]
    Postgres(#[from] ::postgres::Error),
    /// A paging cursor from another kind of store (or another version): refused, not misread.
    #[error("{}", query::CursorError)]
    Cursor,
    #[error("log `{log_id}` is already being written by another auditgate on this database; give every sidecar its own [log] log_id")]
    LogInUse { log_id: String },
    #[error("cannot open the store at {path}: {message}")]
    Open { path: String, message: String },
    /// A read command pointed at a file that holds no log (missing, empty, or a bare copy).
    #[error("no audit log at {path}: {message}")]
    NoLog { path: String, message: String },
    #[error("store schema version {found} is newer than this auditgate knows ({known}); upgrade auditgate")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("merkle tree: {0}")]
    Tree(#[from] MerkleError),
    #[error("{0}")]
    Other(String),
}

/// The tree as the store holds it now: its size and root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeState {
    pub size: u64,
    pub root: Hash,
}

/// A signed head as stored, with its position in the order heads were made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHead {
    /// 1-based, increasing in the order the heads were stored.
    pub id: u64,
    pub head: SignedTreeHead,
}

/// A witness's cosignature of one of the log's checkpoints, as stored beside its head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCosignature {
    /// The checkpoint's origin, size and root: what was cosigned.
    pub origin: String,
    pub size: u64,
    pub root_hash: Hash,
    /// The witness's verifier key (`name+keyid+key`), which verified the cosignature.
    pub witness_vkey: String,
    /// The cosignature's timestamp (POSIX seconds).
    pub timestamp: u64,
    /// The note signature line, without its newline.
    pub line: String,
}

/// One position of the log as stored, read back for verification. A sound position has a leaf
/// and exactly one of an entry or a prune mark.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSlot {
    pub seq: u64,
    /// The stored leaf hash (the level-0 tree node), if any.
    pub leaf: Option<Hash>,
    /// The entry row, if there is one; `Err` says why the row is not a readable entry.
    pub entry: Option<Result<AuditEntry, String>>,
    /// The sequence number of the `audit.pruned` entry that pruned this position, if it was.
    pub pruned_by: Option<u64>,
    /// Instead of `entry`, from [`LogReader::scan_log_stored`]: the row's values as stored, to
    /// be hashed from [`StoredRow::canonical_bytes`] without decoding the entry. A reader that
    /// finds they do not hash to the leaf reads the position again with [`LogReader::scan_log`]
    /// and decides from the decoded entry.
    pub stored: Option<StoredRow>,
}

/// Consecutive positions of the log and the stored tree nodes their leaves complete.
#[derive(Debug, Clone, Default)]
pub struct LogPage {
    /// Positions `first..first + slots.len()`, in order; empty past the end of the log.
    pub slots: Vec<LogSlot>,
    /// Every stored node above level 0 that one of these leaves completes (node `(level, i)`
    /// is completed by leaf `((i + 1) << level) - 1`), so a verifier can compare each node it
    /// recomputes with the stored one without a query per node.
    pub nodes: MemoryNodes,
    /// What the store found wrong at a position besides its row, in position order (SQLite: a
    /// sealed entry outside its hour's range, which listings of time windows would not show);
    /// position 0 for a finding about no position of the log (SQLite: a row below position 1).
    pub findings: Vec<(u64, String)>,
}

/// What one prune removed; the `audit.pruned` entry recording it was appended in the same
/// transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneOutcome {
    /// The `audit.pruned` entry's sequence number.
    pub record_seq: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: u64,
}

/// Another way into a log's pages ([`LogReader::page_readers`]), sent to a thread of its own.
pub trait PageReader: Send {
    /// As [`LogReader::scan_log_stored`]; each page is read in a snapshot of its own, as there.
    fn scan_log_stored(&self, first_seq: u64, max: usize) -> Result<LogPage, StoreError>;
}

/// The read side of a log that verification needs. Everything here is a plain read: it never
/// repairs or rebuilds, so it can be pointed at a damaged or tampered database.
pub trait LogReader {
    /// Number of leaves in the stored tree (the last stored leaf's index plus one).
    fn tree_size(&self) -> Result<u64, StoreError>;

    /// The highest `seq` of any entry row, whether or not the tree covers it.
    fn max_entry_seq(&self) -> Result<u64, StoreError>;

    /// Up to `max` consecutive positions starting at `first_seq`, never past
    /// `max(tree_size, max_entry_seq)`.
    fn scan_log(&self, first_seq: u64, max: usize) -> Result<LogPage, StoreError>;

    /// As [`LogReader::scan_log`], but a row may come as its values copied, in
    /// `LogSlot::stored`, rather than decoded (`verify`'s walk, which only hashes most of them,
    /// on other threads than the one checking). Rows of `audit.pruned` entries, whose claims the
    /// walk checks, still come as entries. By default, `scan_log`.
    fn scan_log_stored(&self, first_seq: u64, max: usize) -> Result<LogPage, StoreError> {
        self.scan_log(first_seq, max)
    }

    /// The values an untouched row of `entry` holds in this store, in `StoredRow`'s order; `None`
    /// for a store that never hands rows over as stored values. `verify` compares them with a
    /// row that decodes to its entry but whose stored values do not hash to its leaf: such a
    /// row was rewritten into another form of the same entry.
    fn stored_form(&self, entry: &AuditEntry) -> Option<StoredRow> {
        let _ = entry;
        None
    }

    /// Up to `count` more ways into this log's pages, each to be used on a thread of its own,
    /// so that `verify`'s walk reads and hashes several pages at once (SQLite: another read-only
    /// connection to the same file each). None by default: the walk then reads on one thread.
    fn page_readers(&self, count: usize) -> Result<Vec<Box<dyn PageReader + '_>>, StoreError> {
        let _ = count;
        Ok(Vec::new())
    }

    /// The sequence numbers of the positions marked as pruned by the `audit.pruned` entry at
    /// `record_seq`, ascending.
    fn pruned_by(&self, record_seq: u64) -> Result<Vec<u64>, StoreError>;

    /// RFC 9162 root of the first `size` leaves, folded from stored nodes.
    fn root_at(&self, size: u64) -> Result<Hash, StoreError>;

    /// Up to `count` consecutive stored tree nodes of `level` from `first_index` on, in index
    /// order, ending before the first index that is not stored (the tlog tiles are read this
    /// way: one query per tile).
    fn node_range(
        &self,
        level: u32,
        first_index: u64,
        count: usize,
    ) -> Result<Vec<Hash>, StoreError>;

    /// Whether the store keeps the tree nodes of `level` (every level unless it says otherwise).
    /// A level it does not keep is recomputed when read, so `verify` has no stored hash of it
    /// to compare.
    fn keeps_node_level(&self, level: u32) -> bool {
        let _ = level;
        true
    }

    /// Whether the store keeps counts of its entries for stats, which `verify`'s walk then
    /// tallies the rows for ([`LogReader::count_problems`]).
    fn keeps_counts(&self) -> bool {
        false
    }

    /// The disagreements between the store's stats counts and the rows `walked` tallies (the
    /// whole log, walked just before), each confirmed by recounting the rows; `None` when the
    /// store keeps no counts or they do not cover every sealed entry yet (not checked).
    fn count_problems(
        &self,
        walked: &count_tally::CountTally,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let _ = walked;
        Ok(None)
    }

    /// Stored heads with an id above `after_id`, oldest first, at most `limit`. A stored head
    /// that no longer parses is an error naming its id.
    fn heads_after(&self, after_id: u64, limit: u32) -> Result<Vec<StoredHead>, StoreError>;

    /// The stored witness cosignatures of the checkpoint (`origin`, `size`, `root_hash`), one
    /// per witness key; none in a store made before cosignatures were kept.
    fn cosignatures(
        &self,
        origin: &str,
        size: u64,
        root_hash: &Hash,
    ) -> Result<Vec<StoredCosignature>, StoreError>;
}

/// An append-only log of entries.
pub trait Store: LogReader + Send + Sync + 'static {
    /// Appends the entries in one transaction, giving each the next sequence number in order,
    /// hashing each into the log's Merkle tree and storing the tree nodes that completes.
    /// Either all are appended or none is.
    fn append(&self, entries: &mut [AuditEntry]) -> Result<(), StoreError>;

    /// Whether the store can take writes now (for /readyz).
    fn check_writable(&self) -> Result<(), StoreError>;

    /// A cheap check, made by write-ahead requests before forwarding (at most once a millisecond,
    /// see the writer), that the store's files are still the ones it writes (a SQLite file or WAL removed or replaced under it fails).
    /// Takes no lock and touches no database.
    fn check_in_place(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Number of entries in the log.
    fn size(&self) -> Result<u64, StoreError>;

    /// The listing position of the newest entry in the store (of any log it holds), or `None`
    /// when it is empty: where an export's snapshot ends ([`PageRequest::through`]).
    fn newest_position(&self) -> Result<Option<Cursor>, StoreError>;

    /// The log this store appends to, proves and prunes when it holds several (PostgreSQL):
    /// listings cover every log, but proofs, heads and verification only this one. `None` for a
    /// store of one log (a SQLite file), whose tree covers every entry in it.
    fn log_scope(&self) -> Option<&str> {
        None
    }

    /// One page of entries matching the filter, by keyset. A cursor of another kind of store is
    /// [`StoreError::Cursor`].
    fn list(&self, filter: &Filter, page: &PageRequest) -> Result<Page, StoreError>;

    /// A page by number, newest first (the reference-compatible endpoint's paging).
    fn list_offset(
        &self,
        filter: &Filter,
        offset: u64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError>;

    /// How many entries match the filter.
    fn count(&self, filter: &Filter) -> Result<u64, StoreError>;

    /// One entry by id (or by decimal sequence number).
    fn get(&self, id: &str) -> Result<Option<AuditEntry>, StoreError>;

    /// Counts grouped by action, actor, outcome, day or hour.
    fn stats(&self, filter: &Filter, by: StatsBy, limit: u32) -> Result<Vec<Bucket>, StoreError>;

    /// Durably records write-ahead intents (entries of requests not yet forwarded), in one
    /// transaction.
    fn record_intents(&self, intents: &[AuditEntry]) -> Result<(), StoreError>;

    /// Removes the intents of entries that have been appended.
    fn clear_intents(&self, ids: &[String]) -> Result<(), StoreError>;

    /// Appends entries and removes the intents they complete, in one transaction where the store
    /// can (one commit per group instead of two).
    fn append_completing(
        &self,
        entries: &mut [AuditEntry],
        completed_intents: &[String],
    ) -> Result<(), StoreError> {
        self.append(entries)?;
        if !completed_intents.is_empty() {
            self.clear_intents(completed_intents)?;
        }
        Ok(())
    }

    /// The intents whose final entry never arrived (a crash between forwarding and completion),
    /// oldest first. Intents whose entry is in the log are cleared, not returned.
    fn unfinished_intents(&self) -> Result<Vec<AuditEntry>, StoreError>;

    /// Which of these entry ids are already in the log (for re-imports that must not duplicate).
    fn existing_ids(&self, ids: &[String]) -> Result<Vec<String>, StoreError>;
    /// The tree's size and root now, from the writer's view (entries committed by another
    /// process on the same database are picked up first).
    fn tree(&self) -> Result<TreeState, StoreError>;

    /// The stored leaf hash of the entry at `seq`, also after it was pruned.
    fn leaf_hash(&self, seq: u64) -> Result<Option<Hash>, StoreError>;

    /// RFC 9162 audit path of the entry at `seq` in the tree of `size` leaves.
    fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>, StoreError>;

    /// RFC 9162 consistency proof from the tree of `from` leaves to the tree of `to` leaves.
    fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, StoreError>;

    /// Keeps a signed tree head.
    fn save_head(&self, head: &SignedTreeHead) -> Result<(), StoreError>;

    /// The most recently stored signed head.
    fn latest_head(&self) -> Result<Option<SignedTreeHead>, StoreError>;

    /// Keeps a witness's verified cosignature; one already stored for the same checkpoint and
    /// witness key is replaced only by a later one.
    fn save_cosignature(&self, cosignature: &StoredCosignature) -> Result<(), StoreError>;

    /// The largest checkpoint size of `origin` the witness (by its verifier key) has cosigned,
    /// as far as this store knows: where the next submission to it starts.
    fn witness_size(&self, origin: &str, witness_vkey: &str) -> Result<Option<u64>, StoreError>;

    /// The `audit.pruned` entry that pruned the entry at `seq`, if it was pruned.
    fn pruned_record(&self, seq: u64) -> Result<Option<u64>, StoreError>;

    /// Deletes the entries `plan` selects, at most `max_entries` of them, keeping their leaf
    /// hashes and marking their positions as pruned, and appends `record` (an `audit.pruned`
    /// entry, whose metadata this fills in) in the same transaction. `None` when nothing was
    /// due, in which case nothing is appended.
    fn prune(
        &self,
        plan: &PrunePlan,
        record: AuditEntry,
        max_entries: usize,
    ) -> Result<Option<PruneOutcome>, StoreError>;

    /// Copies a SQLite write-ahead log into the database file and empties it, so that the file
    /// alone holds every committed entry (a clean stop, and a schedule while running). Waits at
    /// most `patience` for readers to finish; `Ok(false)` when they did not (nothing is lost:
    /// the WAL stays and the next checkpoint tries again). Other stores have nothing to do.
    fn checkpoint(&self, _patience: std::time::Duration) -> Result<bool, StoreError> {
        Ok(true)
    }
}

/// The log's signed checkpoint `note` with the stored witness cosignatures of the same
/// checkpoint appended as further signature lines: what `/tlog/checkpoint` serves, and what any
/// file that embeds the checkpoint should carry. Each stored line is checked again against the
/// witness key stored with it over this note's text, so a row edited in the database is left
/// out rather than served as a signature that would make verifiers reject the note. The note
/// still verifies under the log's key: verifiers ignore signatures by keys they do not know.
pub fn cosigned_checkpoint<R: LogReader + ?Sized>(
    reader: &R,
    note: &str,
) -> Result<String, StoreError> {
    use crate::log::witness::{append_cosignature_lines, note_text, WitnessKey};
    let text = note_text(note).map_err(|error| StoreError::Other(error.to_string()))?;
    let checkpoint = crate::log::checkpoint::Checkpoint::parse_text(text)
        .map_err(|error| StoreError::Other(error.to_string()))?;
    let stored = reader.cosignatures(&checkpoint.origin, checkpoint.size, &checkpoint.root_hash)?;
    let lines: Vec<String> = stored
        .into_iter()
        .filter(|cosignature| {
            let verified = WitnessKey::parse(&cosignature.witness_vkey)
                .ok()
                .and_then(|key| key.verify_line(&cosignature.line, text).ok().flatten());
            if verified.is_none() {
                tracing::warn!(
                    witness = %cosignature.witness_vkey,
                    size = cosignature.size,
                    "a stored witness cosignature does not verify; not serving it"
                );
            }
            verified.is_some()
        })
        .map(|cosignature| cosignature.line)
        .collect();
    Ok(append_cosignature_lines(note, &lines))
}

/// The leaf index of the entry at `seq` (sequence numbers start at 1, leaf indexes at 0), for a
/// proof in the tree of `size` leaves.
pub(crate) fn leaf_index(seq: u64, size: u64) -> Result<u64, StoreError> {
    Ok(seq
        .checked_sub(1)
        .ok_or(MerkleError::IndexOutOfRange { index: 0, size })?)
}

/// The write-ahead intents a store holds, as `(id, JSON)` rows oldest first, read back as
/// entries. An intent that no longer parses keeps its id at least: it becomes an entry of the
/// log `log_id` with the action `unknown` and the reason, so its request is still recorded.
pub(crate) fn intents_from_rows(log_id: &str, rows: Vec<(String, String)>) -> Vec<AuditEntry> {
    rows.into_iter()
        .map(|(id, json)| {
            serde_json::from_str::<AuditEntry>(&json).unwrap_or_else(|error| {
                tracing::error!(%id, %error, "unreadable write-ahead intent");
                let mut entry = AuditEntry::new(log_id, "unknown");
                entry.id = id;
                entry.error = Some(format!("the write-ahead intent could not be read: {error}"));
                entry
            })
        })
        .collect()
}

/// Opens the store the configuration names: the SQLite file, or the log `log_id` in the shared
/// PostgreSQL database. `exclusive` (a sidecar) holds the PostgreSQL log's lock for the store's
/// life, so a second sidecar with the same `log_id` is refused; tools that run beside a sidecar
/// (`auditgate prune`) pass false.
pub fn open(
    config: &crate::store::config::StoreConfig,
    log_id: &str,
    exclusive: bool,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    match &config.postgres {
        Some(database) => {
            let store = postgres::PostgresStore::open(postgres::PostgresOptions {
                config: database.connection.clone(),
                log_id: log_id.to_string(),
                access: postgres::Access::Write {
                    exclusive: exclusive && database.lock_log,
                },
                pool_size: database.pool_size,
                tls: database.tls.clone(),
            })?;
            Ok(std::sync::Arc::new(store))
        }
        None => {
            let store = sqlite::SqliteStore::open(&config.path, config.sync)?;
            store.set_busy_timeout(config.busy_timeout)?;
            Ok(std::sync::Arc::new(store))
        }
    }
}

/// Where a store lives, for messages: the SQLite file, or `postgres://host:port/db` (never a
/// user or password).
pub fn describe(config: &crate::store::config::StoreConfig) -> String {
    match &config.postgres {
        Some(database) => postgres::describe_target(&database.connection),
        None => config.path.display().to_string(),
    }
}
