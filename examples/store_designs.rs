//! Store designs side by side: the same generated entries, in the same commit batches, written
//! through each candidate design of an append-first store, then the same queries and a verify
//! pass over each. The figures behind the "Store redesign: designs measured" section of
//! ARCHITECTURE.md.
//!
//! ```text
//! cargo run --release --example store_designs -- [--batch 256] [--sync normal|full] \
//!     [--designs a,b,bz,c] [--dir DIR] N
//! ```
//!
//! The designs (only this benchmark holds the prototypes B, B-z and C; the product's store is A):
//!
//! - **A**, today's store through its real API (`SqliteStore::append`): one row per entry, nine
//!   secondary B-tree indexes and the Merkle node rows maintained inside every commit.
//! - **B**, SQLite as an append-only log: one seq-ordered table of (seq, leaf hash, canonical
//!   entry bytes) and the tree's interior hashes at tile boundaries only (levels 8, 16, ...: one
//!   row per 256 entries). The secondary indexes are built off the commit path by an indexer
//!   thread, every 65 536 entries, into posting-list rows of a second SQLite file (one row per
//!   field, value and pass, holding the pass's sequence numbers delta-encoded); the entries not
//!   yet indexed are held by the indexer in memory and merged into every query.
//! - **B-z**, B with the entries of each commit stored as one deflate-compressed chunk row.
//! - **C**, an LSM engine (fjall 2, lz4 blocks): entries with their leaf hashes under their
//!   big-endian seq in one partition, one key `field, value, 0, seq` per indexed field in another,
//!   tile hashes in a third, all written in the one batch of the commit.
//!
//! Every design commits once per batch at the durability today's store has: with `--sync normal`
//! (the product's default, `synchronous=NORMAL` in WAL mode) a commit reaches the operating
//! system (it survives the process being killed, not a power cut), fjall's batches are flushed to
//! the OS likewise; with `--sync full` every commit is fsynced (`synchronous=FULL`, fjall
//! `PersistMode::SyncData`).
//!
//! Indexed fields, the same in B, B-z and C: actor id, actor email, action, resource type and id,
//! resource id, outcome, status, client address. Time is indexed sparsely (the creation time of
//! every 256th entry), because entries are written in time order.
//!
//! Checks that keep the comparison honest: every design must end with the same Merkle root, the
//! same query results (sequence numbers) and the same counts as the others; the run fails if not.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use auditgate::entry::AuditEntry;
use auditgate::log::head::{LogSigner, TreeHead};
use auditgate::log::merkle::{leaf_hash, Frontier, Hash};
use auditgate::store::config::SyncMode;
use auditgate::store::query::{Filter, PageRequest};
use auditgate::store::sqlite::SqliteStore;
use auditgate::store::Store;
use chrono::{Duration as TimeDelta, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

#[path = "bench_support/generate.rs"]
mod generate;

/// Entries per background index pass in B.
const INDEX_PASS: usize = 65_536;
/// Leaves under one tile: interior hashes are kept at every 8th level only.
const TILE_HEIGHT: u32 = 8;
/// Entries per page, as the admin API's default page.
const PAGE: usize = 50;
/// Timed runs of each query (after three untimed ones).
const RUNS: usize = 40;

/// The indexed fields, as one byte each in index keys.
const ACTOR_ID: u8 = 0;
const ACTOR_EMAIL: u8 = 1;
const ACTION: u8 = 2;
const RESOURCE: u8 = 3;
const RESOURCE_ID: u8 = 4;
const OUTCOME: u8 = 5;
const STATUS: u8 = 6;
const IP: u8 = 7;

/// What the two filtered first pages and the count ask for.
#[derive(Clone, Debug)]
enum Query {
    Actor(String),
    Action(String),
}

impl Query {
    fn key(&self) -> (u8, &[u8]) {
        match self {
            Query::Actor(actor) => (ACTOR_ID, actor.as_bytes()),
            Query::Action(action) => (ACTION, action.as_bytes()),
        }
    }

    fn filter(&self) -> Filter {
        match self {
            Query::Actor(actor) => Filter {
                actor: Some(actor.clone()),
                ..Filter::default()
            },
            Query::Action(action) => Filter {
                action: Some(action.clone()),
                ..Filter::default()
            },
        }
    }
}

/// One candidate store.
trait Design {
    /// Assigns sequence numbers, hashes and commits one batch.
    fn append(&mut self, entries: &mut [AuditEntry]) -> anyhow::Result<()>;
    /// Waits until background work on what was appended has caught up.
    fn settle(&mut self) -> anyhow::Result<()>;
    /// The newest `PAGE` entries matching `query`, newest first.
    fn newest(&mut self, query: &Query) -> anyhow::Result<Vec<AuditEntry>>;
    fn count(&mut self, query: &Query) -> anyhow::Result<u64>;
    fn root(&self) -> anyhow::Result<Hash>;
    /// Reads the whole log back in order, checks every leaf hash and rebuilds the root; returns
    /// the entries read.
    fn verify(self: Box<Self>) -> anyhow::Result<(u64, Hash)>;
}

/// The index keys of one entry.
fn index_keys(entry: &AuditEntry) -> Vec<(u8, Vec<u8>)> {
    let mut keys = Vec::with_capacity(8);
    let mut text = |field: u8, value: Option<&str>| {
        if let Some(value) = value {
            keys.push((field, value.as_bytes().to_vec()));
        }
    };
    text(ACTOR_ID, entry.actor_id.as_deref());
    text(ACTOR_EMAIL, entry.actor_email.as_deref());
    text(ACTION, Some(&entry.action));
    text(RESOURCE_ID, entry.resource_id.as_deref());
    text(OUTCOME, Some(entry.outcome.as_str()));
    text(IP, entry.ip.as_deref());
    if let Some(kind) = &entry.resource_type {
        let mut value = kind.as_bytes().to_vec();
        value.push(0);
        value.extend_from_slice(entry.resource_id.as_deref().unwrap_or("").as_bytes());
        keys.push((RESOURCE, value));
    }
    if let Some(status) = entry.status {
        keys.push((STATUS, status.to_string().into_bytes()));
    }
    keys
}

/// Whether a node the frontier completed is kept: tile roots only.
fn kept_node(level: u32) -> bool {
    level > 0 && level % TILE_HEIGHT == 0
}

fn decode(bytes: &[u8]) -> anyhow::Result<AuditEntry> {
    serde_json::from_slice(bytes).context("stored entry does not decode")
}

fn sqlite_pragmas(connection: &Connection, sync: SyncMode) -> anyhow::Result<()> {
    // The same settings as today's store (src/store/sqlite/mod.rs).
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(
        None,
        "synchronous",
        match sync {
            SyncMode::Normal => "NORMAL",
            SyncMode::Full => "FULL",
        },
    )?;
    connection.pragma_update(None, "cache_size", -65536)?;
    connection.pragma_update(None, "temp_store", "MEMORY")?;
    connection.pragma_update(None, "wal_autocheckpoint", 8192)?;
    Ok(())
}

// ---- A: today's store -------------------------------------------------------------------------

struct Today {
    store: SqliteStore,
    path: PathBuf,
}

impl Design for Today {
    fn append(&mut self, entries: &mut [AuditEntry]) -> anyhow::Result<()> {
        Ok(self.store.append(entries)?)
    }

    fn settle(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    fn newest(&mut self, query: &Query) -> anyhow::Result<Vec<AuditEntry>> {
        let page = PageRequest {
            limit: PAGE as u32,
            ..PageRequest::default()
        };
        Ok(self.store.list(&query.filter(), &page)?.entries)
    }

    fn count(&mut self, query: &Query) -> anyhow::Result<u64> {
        Ok(self.store.count(&query.filter())?)
    }

    fn root(&self) -> anyhow::Result<Hash> {
        Ok(self.store.tree()?.root)
    }

    fn verify(self: Box<Self>) -> anyhow::Result<(u64, Hash)> {
        let Today { store, path } = *self;
        // One signed head, as the sidecar would have made, so verify also checks the root.
        let tree = store.tree()?;
        let signer = LogSigner::generate();
        let head = signer.sign(TreeHead::new("bench", tree.size, tree.root, Utc::now())?)?;
        store.save_head(&head)?;
        drop(store);
        let report = auditgate::verify::verify_database(&path, None, &[signer.public_key()])?;
        ensure!(report.ok(), "verify found problems: {:?}", report.problems);
        ensure!(report.heads == 1, "verify checked no head");
        Ok((report.entries, tree.root))
    }
}

// ---- B and B-z: SQLite as an append-only log, indexes built in passes --------------------------

/// What the indexer holds for entries not yet in the index file: per key, the sequence numbers
/// in ascending order. `sealing` is a pass being written, still answered from memory until its
/// transaction commits.
#[derive(Default)]
struct Tail {
    open: Postings,
    sealing: Option<Arc<Postings>>,
    /// Sequence numbers handed to the indexer and not yet taken into `open`.
    received_through: u64,
}

impl Tail {
    /// Matching sequence numbers in memory, newest first.
    fn matches(&self, key: &(u8, Vec<u8>)) -> Vec<u64> {
        let mut seqs: Vec<u64> = self.open.get(key).cloned().unwrap_or_default();
        if let Some(sealing) = &self.sealing {
            seqs.extend(sealing.get(key).into_iter().flatten().copied());
        }
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        seqs
    }
}

/// Per index key (field, value), its sequence numbers in ascending order.
type Postings = HashMap<(u8, Vec<u8>), Vec<u64>>;

type IndexBatch = Vec<(u64, i64, Vec<(u8, Vec<u8>)>)>;

struct AppendLog {
    writer: Connection,
    log_reader: Connection,
    index_reader: Connection,
    path: PathBuf,
    frontier: Frontier,
    chunked: bool,
    sender: Option<mpsc::SyncSender<IndexBatch>>,
    indexer: Option<JoinHandle<anyhow::Result<()>>>,
    tail: Arc<Mutex<Tail>>,
    /// The last chunk decompressed by a query: (first seq, entries).
    chunk_cache: Option<(u64, Vec<Vec<u8>>)>,
}

impl AppendLog {
    fn open(dir: &Path, sync: SyncMode, chunked: bool) -> anyhow::Result<AppendLog> {
        let path = dir.join("log.db");
        let writer = Connection::open(&path)?;
        sqlite_pragmas(&writer, sync)?;
        writer.execute_batch(if chunked {
            "CREATE TABLE chunks (first_seq INTEGER PRIMARY KEY, leaves BLOB NOT NULL, \
             entries BLOB NOT NULL);"
        } else {
            "CREATE TABLE log (seq INTEGER PRIMARY KEY, leaf BLOB NOT NULL, entry BLOB NOT NULL);"
        })?;
        writer.execute_batch(
            "CREATE TABLE tiles (level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, \
             PRIMARY KEY (level, idx)) WITHOUT ROWID;",
        )?;
        let index_path = dir.join("index.db");
        let index = Connection::open(&index_path)?;
        sqlite_pragmas(&index, SyncMode::Normal)?;
        index.execute_batch(
            "CREATE TABLE postings (field INTEGER NOT NULL, value BLOB NOT NULL, \
               last_seq INTEGER NOT NULL, count INTEGER NOT NULL, seqs BLOB NOT NULL, \
               PRIMARY KEY (field, value, last_seq)) WITHOUT ROWID;
             CREATE TABLE times (first_seq INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL);
             CREATE TABLE indexed (one INTEGER PRIMARY KEY CHECK (one = 1), through_seq INTEGER NOT NULL);
             INSERT INTO indexed VALUES (1, 0);",
        )?;
        let tail = Arc::new(Mutex::new(Tail::default()));
        let (sender, receiver) = mpsc::sync_channel::<IndexBatch>(1024);
        let indexer_tail = tail.clone();
        let indexer = std::thread::spawn(move || index_passes(index, receiver, indexer_tail));
        Ok(AppendLog {
            writer,
            log_reader: Connection::open(&path)?,
            index_reader: Connection::open(&index_path)?,
            path,
            frontier: Frontier::new(),
            chunked,
            sender: Some(sender),
            indexer: Some(indexer),
            tail,
            chunk_cache: None,
        })
    }

    fn entry_bytes(&mut self, seq: u64) -> anyhow::Result<Vec<u8>> {
        if !self.chunked {
            let bytes: Vec<u8> = self
                .log_reader
                .prepare_cached("SELECT entry FROM log WHERE seq = ?1")?
                .query_row(params![seq as i64], |row| row.get(0))?;
            return Ok(bytes);
        }
        if let Some((first, entries)) = &self.chunk_cache {
            if seq >= *first && seq < first + entries.len() as u64 {
                return Ok(entries[(seq - first) as usize].clone());
            }
        }
        let (first, compressed): (i64, Vec<u8>) = self
            .log_reader
            .prepare_cached(
                "SELECT first_seq, entries FROM chunks WHERE first_seq <= ?1 \
                 ORDER BY first_seq DESC LIMIT 1",
            )?
            .query_row(params![seq as i64], |row| Ok((row.get(0)?, row.get(1)?)))?;
        let entries = unpack_chunk(&compressed)?;
        let first = first as u64;
        let bytes = entries
            .get((seq - first) as usize)
            .cloned()
            .context("seq beyond its chunk")?;
        self.chunk_cache = Some((first, entries));
        Ok(bytes)
    }
}

/// Entries of one chunk: each as a little-endian u32 length and its bytes, deflated.
fn pack_chunk(entries: &[Vec<u8>]) -> anyhow::Result<Vec<u8>> {
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    for bytes in entries {
        encoder.write_all(&(bytes.len() as u32).to_le_bytes())?;
        encoder.write_all(bytes)?;
    }
    Ok(encoder.finish()?)
}

fn unpack_chunk(compressed: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut plain = Vec::new();
    flate2::read::DeflateDecoder::new(compressed).read_to_end(&mut plain)?;
    let mut entries = Vec::new();
    let mut rest = plain.as_slice();
    while !rest.is_empty() {
        ensure!(rest.len() >= 4, "truncated chunk");
        let length = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        ensure!(rest.len() >= 4 + length, "truncated chunk");
        entries.push(rest[4..4 + length].to_vec());
        rest = &rest[4 + length..];
    }
    Ok(entries)
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(bytes: &[u8], at: &mut usize) -> anyhow::Result<u64> {
    let mut value = 0u64;
    let mut shift = 0;
    loop {
        let byte = *bytes.get(*at).context("truncated posting list")?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
        shift += 7;
        ensure!(shift < 64, "posting list varint too long");
    }
}

/// The indexer thread of B: takes the keys of committed entries, answers for them from memory,
/// and every `INDEX_PASS` entries writes them as posting lists in one transaction.
fn index_passes(
    mut index: Connection,
    receiver: mpsc::Receiver<IndexBatch>,
    tail: Arc<Mutex<Tail>>,
) -> anyhow::Result<()> {
    let mut pending = 0usize;
    let mut times: Vec<(u64, i64)> = Vec::new();
    let mut through = 0u64;
    for batch in receiver {
        {
            let mut tail = tail.lock().map_err(|_| anyhow::anyhow!("tail poisoned"))?;
            for (seq, created_ms, keys) in batch {
                if seq % 256 == 1 {
                    times.push((seq, created_ms));
                }
                for key in keys {
                    tail.open.entry(key).or_default().push(seq);
                }
                through = seq;
                pending += 1;
            }
            tail.received_through = through;
        }
        if pending < INDEX_PASS {
            continue;
        }
        let sealing = {
            let mut tail = tail.lock().map_err(|_| anyhow::anyhow!("tail poisoned"))?;
            let sealing = Arc::new(std::mem::take(&mut tail.open));
            tail.sealing = Some(sealing.clone());
            sealing
        };
        let mut keys: Vec<_> = sealing.iter().collect();
        keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let transaction = index.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT INTO postings (field, value, last_seq, count, seqs) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for ((field, value), seqs) in keys {
                // Newest first, each as its distance from the one before.
                let last = *seqs.last().context("empty posting list")?;
                let mut encoded = Vec::with_capacity(seqs.len() * 2);
                let mut previous = last;
                for &seq in seqs.iter().rev() {
                    push_varint(&mut encoded, previous - seq);
                    previous = seq;
                }
                insert.execute(params![
                    *field,
                    value,
                    last as i64,
                    seqs.len() as i64,
                    encoded
                ])?;
            }
            let mut time = transaction
                .prepare_cached("INSERT INTO times (first_seq, created_ms) VALUES (?1, ?2)")?;
            for (seq, created_ms) in times.drain(..) {
                time.execute(params![seq as i64, created_ms])?;
            }
            transaction.execute(
                "UPDATE indexed SET through_seq = ?1",
                params![through as i64],
            )?;
        }
        transaction.commit()?;
        pending = 0;
        tail.lock()
            .map_err(|_| anyhow::anyhow!("tail poisoned"))?
            .sealing = None;
    }
    Ok(())
}

impl Design for AppendLog {
    fn append(&mut self, entries: &mut [AuditEntry]) -> anyhow::Result<()> {
        let mut frontier = self.frontier.clone();
        let transaction = self
            .writer
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut keys: IndexBatch = Vec::with_capacity(entries.len());
        let mut chunk_bytes = Vec::new();
        let mut chunk_leaves = Vec::new();
        {
            let mut insert_tile = transaction
                .prepare_cached("INSERT INTO tiles (level, idx, hash) VALUES (?1, ?2, ?3)")?;
            let mut insert_entry = transaction
                .prepare_cached("INSERT INTO log (seq, leaf, entry) VALUES (?1, ?2, ?3)")
                .ok();
            for entry in entries.iter_mut() {
                entry.seq = frontier.size() + 1;
                let bytes = entry.canonical_bytes();
                let leaf = leaf_hash(&bytes);
                for (level, index, hash) in frontier.append(leaf) {
                    if kept_node(level) {
                        insert_tile.execute(params![level, index as i64, &hash[..]])?;
                    }
                }
                if self.chunked {
                    chunk_leaves.extend_from_slice(&leaf);
                    chunk_bytes.push(bytes);
                } else {
                    insert_entry
                        .as_mut()
                        .context("no log table")?
                        .execute(params![entry.seq as i64, &leaf[..], bytes])?;
                }
                keys.push((
                    entry.seq,
                    entry.created_at.timestamp_millis(),
                    index_keys(entry),
                ));
            }
        }
        if self.chunked {
            if let Some(first) = entries.first() {
                transaction.execute(
                    "INSERT INTO chunks (first_seq, leaves, entries) VALUES (?1, ?2, ?3)",
                    params![first.seq as i64, chunk_leaves, pack_chunk(&chunk_bytes)?],
                )?;
            }
        }
        transaction.commit()?;
        self.frontier = frontier;
        // Only committed entries go to the indexer.
        self.sender
            .as_ref()
            .context("indexer stopped")?
            .send(keys)
            .map_err(|_| anyhow::anyhow!("indexer stopped"))?;
        Ok(())
    }

    fn settle(&mut self) -> anyhow::Result<()> {
        let size = self.frontier.size();
        let deadline = Instant::now() + Duration::from_secs(3600);
        loop {
            let through = self
                .tail
                .lock()
                .map_err(|_| anyhow::anyhow!("tail poisoned"))?
                .received_through;
            if through >= size {
                return Ok(());
            }
            if self
                .indexer
                .as_ref()
                .is_none_or(|handle| handle.is_finished())
            {
                bail!("the indexer stopped");
            }
            ensure!(Instant::now() < deadline, "the indexer did not catch up");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn newest(&mut self, query: &Query) -> anyhow::Result<Vec<AuditEntry>> {
        let (field, value) = query.key();
        let key = (field, value.to_vec());
        let mut seqs = self
            .tail
            .lock()
            .map_err(|_| anyhow::anyhow!("tail poisoned"))?
            .matches(&key);
        seqs.truncate(PAGE);
        if seqs.len() < PAGE {
            let mut select = self.index_reader.prepare_cached(
                "SELECT last_seq, seqs FROM postings WHERE field = ?1 AND value = ?2 \
                 ORDER BY last_seq DESC",
            )?;
            let mut rows = select.query(params![field, value])?;
            'rows: while let Some(row) = rows.next()? {
                let last: i64 = row.get(0)?;
                let encoded: Vec<u8> = row.get(1)?;
                let mut at = 0;
                let mut seq = last as u64;
                while at < encoded.len() {
                    seq -= read_varint(&encoded, &mut at)?;
                    seqs.push(seq);
                    if seqs.len() == PAGE {
                        break 'rows;
                    }
                }
            }
        }
        seqs.iter()
            .map(|&seq| decode(&self.entry_bytes(seq)?))
            .collect()
    }

    fn count(&mut self, query: &Query) -> anyhow::Result<u64> {
        let (field, value) = query.key();
        let in_memory = self
            .tail
            .lock()
            .map_err(|_| anyhow::anyhow!("tail poisoned"))?
            .matches(&(field, value.to_vec()))
            .len() as u64;
        let indexed: Option<i64> = self
            .index_reader
            .prepare_cached("SELECT sum(count) FROM postings WHERE field = ?1 AND value = ?2")?
            .query_row(params![field, value], |row| row.get(0))
            .optional()?
            .flatten();
        Ok(in_memory + indexed.unwrap_or(0) as u64)
    }

    fn root(&self) -> anyhow::Result<Hash> {
        Ok(self.frontier.root())
    }

    fn verify(mut self: Box<Self>) -> anyhow::Result<(u64, Hash)> {
        self.sender = None;
        if let Some(indexer) = self.indexer.take() {
            indexer
                .join()
                .map_err(|_| anyhow::anyhow!("the indexer panicked"))??;
        }
        let connection = Connection::open(&self.path)?;
        let mut frontier = Frontier::new();
        let mut check = |seq: u64, leaf: &[u8], bytes: &[u8]| -> anyhow::Result<()> {
            ensure!(seq == frontier.size() + 1, "gap before seq {seq}");
            let hash = leaf_hash(bytes);
            ensure!(
                leaf == hash,
                "leaf hash of seq {seq} does not match its entry"
            );
            frontier.append(hash);
            Ok(())
        };
        if self.chunked {
            let mut select = connection
                .prepare("SELECT first_seq, leaves, entries FROM chunks ORDER BY first_seq")?;
            let mut rows = select.query([])?;
            while let Some(row) = rows.next()? {
                let first: i64 = row.get(0)?;
                let leaves: Vec<u8> = row.get(1)?;
                let entries = unpack_chunk(&row.get::<_, Vec<u8>>(2)?)?;
                ensure!(
                    leaves.len() == entries.len() * 32,
                    "chunk {first}: leaves and entries differ"
                );
                for (offset, bytes) in entries.iter().enumerate() {
                    check(
                        first as u64 + offset as u64,
                        &leaves[offset * 32..offset * 32 + 32],
                        bytes,
                    )?;
                }
            }
        } else {
            let mut select = connection.prepare("SELECT seq, leaf, entry FROM log ORDER BY seq")?;
            let mut rows = select.query([])?;
            while let Some(row) = rows.next()? {
                let seq: i64 = row.get(0)?;
                let leaf = row.get_ref(1)?.as_blob()?;
                let bytes = row.get_ref(2)?.as_blob()?;
                check(seq as u64, leaf, bytes)?;
            }
        }
        Ok((frontier.size(), frontier.root()))
    }
}

// ---- C: an LSM engine, each index a key prefix ------------------------------------------------

struct Lsm {
    keyspace: fjall::Keyspace,
    log: fjall::PartitionHandle,
    index: fjall::PartitionHandle,
    tiles: fjall::PartitionHandle,
    times: fjall::PartitionHandle,
    frontier: Frontier,
    durability: Option<fjall::PersistMode>,
}

impl Lsm {
    fn open(dir: &Path, sync: SyncMode) -> anyhow::Result<Lsm> {
        let keyspace = fjall::Config::new(dir).open()?;
        let options = fjall::PartitionCreateOptions::default;
        Ok(Lsm {
            log: keyspace.open_partition("log", options())?,
            index: keyspace.open_partition("index", options())?,
            tiles: keyspace.open_partition("tiles", options())?,
            times: keyspace.open_partition("times", options())?,
            keyspace,
            frontier: Frontier::new(),
            // By default a batch's journal write reaches the OS before commit returns, as a
            // SQLite commit in WAL mode with synchronous=NORMAL does.
            durability: match sync {
                SyncMode::Normal => None,
                SyncMode::Full => Some(fjall::PersistMode::SyncData),
            },
        })
    }
}

fn index_key(field: u8, value: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(value.len() + 10);
    key.push(field);
    key.extend_from_slice(value);
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn seq_of_key(key: &[u8]) -> anyhow::Result<u64> {
    let tail: [u8; 8] = key
        .get(key.len().saturating_sub(8)..)
        .and_then(|bytes| bytes.try_into().ok())
        .context("index key too short")?;
    Ok(u64::from_be_bytes(tail))
}

impl Design for Lsm {
    fn append(&mut self, entries: &mut [AuditEntry]) -> anyhow::Result<()> {
        let mut frontier = self.frontier.clone();
        let mut batch = self.keyspace.batch().durability(self.durability);
        for entry in entries.iter_mut() {
            entry.seq = frontier.size() + 1;
            let bytes = entry.canonical_bytes();
            let leaf = leaf_hash(&bytes);
            for (level, index, hash) in frontier.append(leaf) {
                if kept_node(level) {
                    let mut key = vec![level as u8];
                    key.extend_from_slice(&index.to_be_bytes());
                    batch.insert(&self.tiles, key, hash.to_vec());
                }
            }
            let mut value = Vec::with_capacity(32 + bytes.len());
            value.extend_from_slice(&leaf);
            value.extend_from_slice(&bytes);
            batch.insert(&self.log, entry.seq.to_be_bytes(), value);
            for (field, key) in index_keys(entry) {
                batch.insert(&self.index, index_key(field, &key, entry.seq), []);
            }
            if entry.seq % 256 == 1 {
                batch.insert(
                    &self.times,
                    entry.seq.to_be_bytes(),
                    entry.created_at.timestamp_millis().to_be_bytes(),
                );
            }
        }
        batch.commit()?;
        self.frontier = frontier;
        Ok(())
    }

    fn settle(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    fn newest(&mut self, query: &Query) -> anyhow::Result<Vec<AuditEntry>> {
        let (field, value) = query.key();
        let mut prefix = vec![field];
        prefix.extend_from_slice(value);
        prefix.push(0);
        let mut entries = Vec::with_capacity(PAGE);
        for item in self.index.prefix(&prefix).rev().take(PAGE) {
            let (key, _) = item?;
            let seq = seq_of_key(&key)?;
            let stored = self
                .log
                .get(seq.to_be_bytes())?
                .with_context(|| format!("index names seq {seq}, which is not in the log"))?;
            entries.push(decode(stored.get(32..).context("short log value")?)?);
        }
        Ok(entries)
    }

    fn count(&mut self, query: &Query) -> anyhow::Result<u64> {
        let (field, value) = query.key();
        let mut prefix = vec![field];
        prefix.extend_from_slice(value);
        prefix.push(0);
        let mut count = 0;
        for item in self.index.prefix(&prefix) {
            item?;
            count += 1;
        }
        Ok(count)
    }

    fn root(&self) -> anyhow::Result<Hash> {
        Ok(self.frontier.root())
    }

    fn verify(self: Box<Self>) -> anyhow::Result<(u64, Hash)> {
        let mut frontier = Frontier::new();
        for item in self.log.iter() {
            let (key, value) = item?;
            let seq = seq_of_key(&key)?;
            ensure!(seq == frontier.size() + 1, "gap before seq {seq}");
            ensure!(value.len() > 32, "short log value at seq {seq}");
            let hash = leaf_hash(&value[32..]);
            ensure!(
                value[..32] == hash,
                "leaf hash of seq {seq} does not match its entry"
            );
            frontier.append(hash);
        }
        Ok((frontier.size(), frontier.root()))
    }
}

// ---- the run ----------------------------------------------------------------------------------

struct Options {
    count: usize,
    batch: usize,
    sync: SyncMode,
    designs: Vec<String>,
    dir: PathBuf,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        count: 1_000_000,
        batch: 256,
        sync: SyncMode::Normal,
        designs: vec!["a".into(), "b".into(), "bz".into(), "c".into()],
        dir: std::env::temp_dir(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--batch" => options.batch = value()?.parse()?,
            "--sync" => {
                options.sync = match value()?.as_str() {
                    "normal" => SyncMode::Normal,
                    "full" => SyncMode::Full,
                    other => bail!("--sync {other}: not one of normal, full"),
                }
            }
            "--designs" => {
                options.designs = value()?.split(',').map(str::to_string).collect();
                for design in &options.designs {
                    ensure!(
                        ["a", "a-lo", "a-none", "b", "bz", "c"].contains(&design.as_str()),
                        "unknown design {design} (a, b, bz, c)"
                    );
                }
            }
            "--dir" => options.dir = PathBuf::from(value()?),
            number => options.count = number.replace('_', "").parse()?,
        }
    }
    ensure!(
        options.batch > 0 && options.count > 0,
        "sizes must be positive"
    );
    Ok(options)
}

fn label(design: &str) -> &'static str {
    match design {
        "a" => "A today",
        "a-lo" => "A without high-cardinality indexes",
        "a-none" => "A without secondary indexes",
        "b" => "B sqlite log",
        "bz" => "B-z sqlite log, deflate",
        _ => "C fjall",
    }
}

fn open_design(design: &str, dir: &Path, sync: SyncMode) -> anyhow::Result<Box<dyn Design>> {
    Ok(match design {
        "a" => {
            let path = dir.join("audit.db");
            Box::new(Today {
                store: SqliteStore::open(&path, sync)?,
                path,
            })
        }
        "a-lo" | "a-none" => {
            // Today's store with some of its secondary indexes dropped: where its commit cost goes.
            let path = dir.join("audit.db");
            let store = SqliteStore::open(&path, sync)?;
            let dropped: &[&str] = if design == "a-lo" {
                &["actor_id", "actor_email", "resource", "resource_id", "ip"]
            } else {
                &[
                    "created_at",
                    "action",
                    "actor_id",
                    "actor_email",
                    "resource",
                    "resource_id",
                    "outcome",
                    "status",
                    "ip",
                ]
            };
            let connection = rusqlite::Connection::open(&path)?;
            for index in dropped {
                connection.execute_batch(&format!("DROP INDEX entries_{index};"))?;
            }
            drop(connection);
            Box::new(Today { store, path })
        }
        "b" => Box::new(AppendLog::open(dir, sync, false)?),
        "bz" => Box::new(AppendLog::open(dir, sync, true)?),
        _ => Box::new(Lsm::open(dir, sync)?),
    })
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return 0;
    };
    listing
        .flatten()
        .map(|item| match item.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&item.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * percent).div_ceil(100).max(1) - 1;
    sorted[rank.min(sorted.len() - 1)]
}

/// p50 / p95 in milliseconds.
fn latency(mut times: Vec<Duration>) -> String {
    times.sort();
    format!(
        "{:.2} / {:.2}",
        percentile(&times, 50).as_secs_f64() * 1000.0,
        percentile(&times, 95).as_secs_f64() * 1000.0
    )
}

struct Outcome {
    bands: Vec<(usize, f64)>,
    overall: f64,
    settle: Duration,
    bytes: u64,
    actor: String,
    rare: String,
    count: String,
    verify: f64,
    peak: f64,
    answers: Vec<Vec<u64>>,
    counted: u64,
    root: Hash,
}

fn run(design: &str, options: &Options, actors: &[String]) -> anyhow::Result<Outcome> {
    let dir = options
        .dir
        .join(format!("auditgate-designs-{design}-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(design, options, actors, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(
    design: &str,
    options: &Options,
    actors: &[String],
    dir: &Path,
) -> anyhow::Result<Outcome> {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let mut store = open_design(design, dir, options.sync)?;
    // The same entries for every design: one seed, a fixed start time, ids from a seeded ULID.
    let mut rng = StdRng::seed_from_u64(42);
    let mut ids = StdRng::seed_from_u64(43);
    let start = Utc
        .timestamp_millis_opt(1_780_000_000_000)
        .single()
        .context("start time")?
        - TimeDelta::days(90);
    let step = (options.count / 10).max(1);
    let mut bands = Vec::new();
    let (mut band_time, mut band_entries, mut total) = (Duration::ZERO, 0usize, Duration::ZERO);
    let mut index = 0;
    let mut next_band = step;
    while index < options.count {
        let take = options.batch.min(options.count - index);
        let mut entries: Vec<AuditEntry> = (index..index + take)
            .map(|i| {
                let mut entry = generate::entry(&mut rng, i, options.count, start);
                entry.id = ulid::Ulid::from_parts(
                    entry.created_at.timestamp_millis() as u64,
                    ids.gen::<u128>(),
                )
                .to_string();
                entry
            })
            .collect();
        let started = Instant::now();
        store.append(&mut entries)?;
        let spent = started.elapsed();
        band_time += spent;
        total += spent;
        band_entries += take;
        index += take;
        if index >= next_band || index == options.count {
            next_band += step;
            bands.push((index, band_entries as f64 / band_time.as_secs_f64()));
            eprintln!(
                "  {}: {index:>10} entries, {:>8.0} entries/s over the last {band_entries}",
                label(design),
                band_entries as f64 / band_time.as_secs_f64()
            );
            (band_time, band_entries) = (Duration::ZERO, 0);
        }
    }
    let started = Instant::now();
    store.settle()?;
    let settle = started.elapsed();
    let bytes = dir_bytes(dir);

    let mut answers = Vec::new();
    let mut timed =
        |store: &mut Box<dyn Design>, make: &dyn Fn(usize) -> Query| -> anyhow::Result<String> {
            for run in 0..3 {
                store.newest(&make(run))?;
            }
            let mut times = Vec::with_capacity(RUNS);
            for run in 0..RUNS {
                let started = Instant::now();
                let page = store.newest(&make(run))?;
                times.push(started.elapsed());
                answers.push(page.iter().map(|entry| entry.seq).collect());
            }
            Ok(latency(times))
        };
    let actor = timed(&mut store, &|run| {
        Query::Actor(actors[run % actors.len()].clone())
    })?;
    let rare = timed(&mut store, &|_| Query::Action("user.deleted".into()))?;
    let counted_query = Query::Action("user.role_changed".into());
    let mut counted = store.count(&counted_query)?;
    let mut times = Vec::new();
    for _ in 0..RUNS / 4 {
        let started = Instant::now();
        counted = store.count(&counted_query)?;
        times.push(started.elapsed());
    }
    let count = latency(times);
    let root = store.root()?;
    let peak = peak_rss_mib();

    let started = Instant::now();
    let (verified, rebuilt) = store.verify()?;
    let verify_time = started.elapsed();
    ensure!(
        verified == options.count as u64,
        "{design}: verify read {verified} of {} entries",
        options.count
    );
    ensure!(rebuilt == root, "{design}: verify rebuilt another root");
    Ok(Outcome {
        overall: options.count as f64 / total.as_secs_f64(),
        bands,
        settle,
        bytes,
        actor,
        rare,
        count,
        verify: verified as f64 / verify_time.as_secs_f64(),
        peak,
        answers,
        counted,
        root,
    })
}

fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    let mut rng = StdRng::seed_from_u64(7);
    let actors: Vec<String> = (0..RUNS)
        .map(|_| format!("u{}", generate::pick_user(&mut rng)))
        .collect();
    eprintln!(
        "store designs: {} entries, batches of {}, sync {:?}, under {}",
        options.count,
        options.batch,
        options.sync,
        options.dir.display()
    );
    let mut outcomes = Vec::new();
    for design in &options.designs {
        let outcome = run(design, &options, &actors)?;
        if let Some((first, first_outcome)) = outcomes.first() {
            let first_outcome: &Outcome = first_outcome;
            ensure!(
                outcome.root == first_outcome.root,
                "{design} and {first} end with different roots"
            );
            ensure!(
                outcome.answers == first_outcome.answers,
                "{design} and {first} answer the queries differently"
            );
            ensure!(
                outcome.counted == first_outcome.counted,
                "{design} counts {} where {first} counts {}",
                outcome.counted,
                first_outcome.counted
            );
        }
        outcomes.push((design.clone(), outcome));
    }

    println!(
        "## Store designs over {} entries (batches of {}, sync {})\n",
        options.count,
        options.batch,
        format!("{:?}", options.sync).to_lowercase()
    );
    let header: Vec<&str> = outcomes.iter().map(|(design, _)| label(design)).collect();
    println!("| measure | {} |", header.join(" | "));
    println!("|---|{}", "---:|".repeat(outcomes.len()));
    let row = |name: String, cell: &dyn Fn(&Outcome) -> String| {
        let cells: Vec<String> = outcomes.iter().map(|(_, outcome)| cell(outcome)).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    if let Some((_, first)) = outcomes.first() {
        for (band, (end, _)) in first.bands.iter().enumerate() {
            let start = if band == 0 {
                0
            } else {
                first.bands[band - 1].0
            };
            row(format!("entries/s, {start}..{end}"), &|outcome| {
                format!("{:.0}", outcome.bands.get(band).map_or(0.0, |band| band.1))
            });
        }
    }
    row("entries/s, whole run".into(), &|outcome| {
        format!("{:.0}", outcome.overall)
    });
    row("last band / first band".into(), &|outcome| match (
        outcome.bands.first(),
        outcome.bands.last(),
    ) {
        (Some(first), Some(last)) => format!("{:.2}", last.1 / first.1),
        _ => "-".into(),
    });
    row(
        "index caught up after the last commit (s)".into(),
        &|outcome| format!("{:.2}", outcome.settle.as_secs_f64()),
    );
    row("bytes per entry on disk (all files)".into(), &|outcome| {
        format!("{:.0}", outcome.bytes as f64 / options.count as f64)
    });
    row("disk (MiB)".into(), &|outcome| {
        format!("{:.0}", outcome.bytes as f64 / 1048576.0)
    });
    row("actor = id, first page, p50 / p95 ms".into(), &|outcome| {
        outcome.actor.clone()
    });
    row(
        "action (rare), first page, p50 / p95 ms".into(),
        &|outcome| outcome.rare.clone(),
    );
    row(
        "count, action = user.role_changed, p50 / p95 ms".into(),
        &|outcome| outcome.count.clone(),
    );
    row("verify entries/s (leaf hashes + root)".into(), &|outcome| {
        format!("{:.0}", outcome.verify)
    });
    row("peak RSS (MiB)".into(), &|outcome| {
        format!("{:.0}", outcome.peak)
    });
    if let Some((_, first)) = outcomes.first() {
        println!(
            "\nEvery design: root {}, the same {} query answers, {} entries counted.",
            auditgate::log::merkle::to_hex(&first.root),
            first.answers.len(),
            first.counted
        );
    }
    Ok(())
}
