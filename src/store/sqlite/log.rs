//! The log side of the SQLite store: tree nodes, signed heads and prune marks (`schema_v2.sql`).
//!
//! Free functions over a [`Connection`] (or a transaction, which derefs to one), so that the
//! writer, the reader pool and the read-only connection of `auditgate verify` share them.

use rusqlite::{params, Connection, OptionalExtension};

use super::rows::{self, ACTOR_KEY, DAY, ENTRY_COLUMNS, HOUR, RECENT};
use crate::entry::{format_timestamp, AuditEntry};
use crate::log::head::SignedTreeHead;
use crate::log::merkle::{subtree_root, Frontier, Hash, MerkleError, NodeReader};
use crate::log::pruned::PRUNED_ACTION;
use crate::log::tiles::TILE_HEIGHT;
use crate::store::log_page::PageBuilder;
use crate::store::retention::{PrunePlan, PruneStep};
use crate::store::{LogPage, PruneOutcome, StoreError, StoredCosignature, StoredHead};

/// Whether `tree_nodes` keeps the nodes of `level`: the leaves and every eighth level, the levels
/// whose hashes the log's tiles publish (schema version 5). The seven levels between two kept
/// ones are recomputed from at most 128 nodes of the kept level below when a proof or a root
/// needs them. This halves the tree's rows (one node per entry instead of two) and the B-tree
/// inserts of a commit. A file written before version 5 also holds nodes of the other levels;
/// they are left in place and never read.
pub fn keeps_level(level: u32) -> bool {
    level % TILE_HEIGHT == 0
}

/// [`NodeReader`] over the `tree_nodes` table of one connection.
pub struct SqliteNodes<'c>(pub &'c Connection);

impl NodeReader for SqliteNodes<'_> {
    fn node(&self, level: u32, index: u64) -> Result<Hash, MerkleError> {
        let storage = |error: rusqlite::Error| MerkleError::Storage(error.to_string());
        let missing = MerkleError::MissingNode { level, index };
        if !keeps_level(level) {
            let kept = level - level % TILE_HEIGHT;
            let span = 1u64 << (level - kept);
            let first = index.checked_mul(span).ok_or_else(|| missing.clone())?;
            let below = node_range(self.0, kept, first, span as usize)
                .map_err(|error| MerkleError::Storage(error.to_string()))?;
            if below.len() as u64 != span {
                return Err(MerkleError::MissingNode {
                    level: kept,
                    index: first + below.len() as u64,
                });
            }
            return Ok(subtree_root(below));
        }
        let Ok(index_sql) = i64::try_from(index) else {
            return Err(missing);
        };
        let blob: Option<Vec<u8>> = self
            .0
            .prepare_cached("SELECT hash FROM tree_nodes WHERE level = ?1 AND idx = ?2")
            .map_err(storage)?
            .query_row(params![level, index_sql], |row| row.get(0))
            .optional()
            .map_err(storage)?;
        let blob = blob.ok_or(missing)?;
        <Hash>::try_from(blob.as_slice()).map_err(|_| {
            MerkleError::Storage(format!(
                "tree node at level {level} index {index} is not 32 bytes"
            ))
        })
    }
}

/// Number of leaves: the last stored leaf's index plus one (an O(log n) seek on the primary key).
pub fn tree_size(connection: &Connection) -> Result<u64, StoreError> {
    let last: Option<i64> = connection
        .prepare_cached("SELECT max(idx) FROM tree_nodes WHERE level = 0")?
        .query_row([], |row| row.get(0))?;
    // A negative index can only be tampering; it leaves no leaf to count.
    Ok(last
        .and_then(|last| u64::try_from(last).ok())
        .map_or(0, |last| last.saturating_add(1)))
}

/// Up to `count` consecutive nodes of `level` from `first` on, stopping at the first gap.
pub fn node_range(
    connection: &Connection,
    level: u32,
    first: u64,
    count: usize,
) -> Result<Vec<Hash>, StoreError> {
    let (Ok(first_sql), Some(last)) = (
        i64::try_from(first),
        (count as u64)
            .checked_sub(1)
            .and_then(|span| first.checked_add(span)),
    ) else {
        return Ok(Vec::new());
    };
    let last_sql = i64::try_from(last).unwrap_or(i64::MAX);
    let mut select = connection.prepare_cached(
        "SELECT idx, hash FROM tree_nodes WHERE level = ?1 AND idx BETWEEN ?2 AND ?3 ORDER BY idx",
    )?;
    let mut rows = select.query(params![level, first_sql, last_sql])?;
    let mut hashes = Vec::with_capacity(count.min(256));
    while let Some(row) = rows.next()? {
        let index: i64 = row.get(0)?;
        if index != first_sql.saturating_add(hashes.len() as i64) {
            break;
        }
        let blob: Vec<u8> = row.get(1)?;
        hashes.push(<Hash>::try_from(blob.as_slice()).map_err(|_| {
            StoreError::Other(format!(
                "tree node at level {level} index {index} is not 32 bytes"
            ))
        })?);
    }
    Ok(hashes)
}

pub fn max_entry_seq(connection: &Connection) -> Result<u64, StoreError> {
    let last: Option<i64> = connection
        .prepare_cached(&format!(
            "SELECT max(last) FROM (SELECT max(seq) AS last FROM entries \
             UNION ALL SELECT max(seq) FROM {RECENT})"
        ))?
        .query_row([], |row| row.get(0))?;
    Ok(last.map_or(0, |last| last.max(0) as u64))
}

/// How many rows wait in [`RECENT`] to be sealed.
pub fn recent_rows(connection: &Connection) -> Result<u64, StoreError> {
    let rows: i64 = connection
        .prepare_cached(&format!("SELECT count(*) FROM {RECENT}"))?
        .query_row([], |row| row.get(0))?;
    Ok(rows.max(0) as u64)
}

/// What [`seal`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    /// How many rows moved.
    pub moved: u64,
    /// Whether every sealed entry is counted for stats, before the seal and after it (a seal
    /// counts its rows only then; otherwise [`count_chunk`] counts them with the others).
    pub counted: bool,
    /// Whether every sealed entry lies within its hour's seq range, before the seal and after it
    /// (likewise; [`range_chunk`] ranges them otherwise).
    pub ranged: bool,
}

/// Moves up to `max` of the oldest rows of [`RECENT`] into `entries`, inside the caller's
/// transaction, in `seq` order, and counts them for stats. This is where the secondary indexes
/// are written: once per batch of thousands of entries rather than in every commit, so index
/// pages are written back once per batch.
pub fn seal(connection: &Connection, max: u64) -> Result<Sealed, StoreError> {
    let counted = covers_sealed(connection, "counted_through")?;
    let ranged = covers_sealed(connection, "ranged_through")?;
    let through: Option<i64> = connection
        .prepare_cached(&format!(
            "SELECT max(seq) FROM (SELECT seq FROM {RECENT} ORDER BY seq LIMIT ?1)"
        ))?
        .query_row([i64::try_from(max).unwrap_or(i64::MAX)], |row| row.get(0))?;
    let Some(through) = through else {
        return Ok(Sealed {
            moved: 0,
            counted,
            ranged,
        });
    };
    if counted {
        add_counts(connection, RECENT, 0, through)?;
        set_mark(connection, "counted_through", through)?;
    }
    if ranged {
        widen_ranges(connection, RECENT, 0, through)?;
        set_mark(connection, "ranged_through", through)?;
    }
    let moved = connection
        .prepare_cached(&format!(
            "INSERT INTO entries ({ENTRY_COLUMNS}) SELECT {ENTRY_COLUMNS} FROM {RECENT} \
             WHERE seq <= ?1 ORDER BY seq"
        ))?
        .execute([through])?;
    connection
        .prepare_cached(&format!("DELETE FROM {RECENT} WHERE seq <= ?1"))?
        .execute([through])?;
    Ok(Sealed {
        moved: moved as u64,
        counted,
        ranged,
    })
}

/// The most rows [`count_chunk`] counts at a time. A chunk of 100,000 took 1–1.5 s on a 10M-entry
/// file here with queries running beside it; the writer it runs on waits that long, so chunks are
/// kept to a fifth of that.
pub const COUNT_CHUNK_ROWS: i64 = 20_000;

/// Every sealed entry up to this seq is in the stats counts (`schema_v6.sql`).
pub fn counts_through(connection: &Connection) -> Result<i64, StoreError> {
    mark(connection, "counted_through")
}

/// The seq a one-row mark table holds (`counted_through`, `ranged_through`).
fn mark(connection: &Connection, table: &str) -> Result<i64, StoreError> {
    Ok(connection
        .prepare_cached(&format!("SELECT seq FROM {table}"))?
        .query_row([], |row| row.get(0))?)
}

fn set_mark(connection: &Connection, table: &str, seq: i64) -> Result<(), StoreError> {
    connection
        .prepare_cached(&format!("UPDATE {table} SET seq = ?1"))?
        .execute([seq])?;
    Ok(())
}

/// The last sealed position (0 for none).
fn max_sealed_seq(connection: &Connection) -> Result<i64, StoreError> {
    Ok(connection
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM entries")?
        .query_row([], |row| row.get(0))?)
}

/// Whether the mark table `mark` (`counted_through`, `ranged_through`) reaches every sealed
/// entry.
fn covers_sealed(connection: &Connection, mark_table: &str) -> Result<bool, StoreError> {
    Ok(mark(connection, mark_table)? >= max_sealed_seq(connection)?)
}

/// Counts up to [`COUNT_CHUNK_ROWS`] sealed entries not counted yet (a file upgraded to schema
/// version 6, or entries sealed by a process that does not keep the counts), inside the
/// caller's transaction. `true` once every sealed entry is counted.
pub fn count_chunk(connection: &Connection) -> Result<bool, StoreError> {
    chunk(connection, "counted_through", COUNT_CHUNK_ROWS, add_counts)
}

/// Adds up to `rows` sealed entries past the mark `mark_table` to the structure `add` keeps
/// beside `entries` (the counts, the hour ranges), then moves the mark past them. `true` once
/// the mark reaches every sealed entry.
fn chunk(
    connection: &Connection,
    mark_table: &str,
    rows: i64,
    add: fn(&Connection, &str, i64, i64) -> Result<(), StoreError>,
) -> Result<bool, StoreError> {
    let done = mark(connection, mark_table)?;
    let sealed = max_sealed_seq(connection)?;
    if done >= sealed {
        return Ok(true);
    }
    let through = chunk_end(connection, done, rows)?;
    add(connection, "entries", done, through)?;
    set_mark(connection, mark_table, through)?;
    Ok(through >= sealed)
}

/// The last seq of the next `rows` sealed entries after `after` (the caller knows there is one).
fn chunk_end(connection: &Connection, after: i64, rows: i64) -> Result<i64, StoreError> {
    Ok(connection
        .prepare_cached(
            "SELECT max(seq) FROM (SELECT seq FROM entries WHERE seq > ?1 ORDER BY seq LIMIT ?2)",
        )?
        .query_row([after, rows], |row| row.get(0))?)
}

/// The most sealed entries [`range_chunk`] reads at a time: two columns of each row, grouped by
/// hour.
pub const RANGE_CHUNK_ROWS: i64 = 50_000;

/// Every sealed entry up to this seq lies within its hour's range in `hour_seqs`
/// (`schema_v7.sql`).
pub fn ranged_through(connection: &Connection) -> Result<i64, StoreError> {
    mark(connection, "ranged_through")
}

/// Widens the hour ranges over up to [`RANGE_CHUNK_ROWS`] sealed entries past `ranged_through`
/// (a file just upgraded to schema version 7, or entries sealed by a process that does not keep
/// the ranges), inside the caller's transaction. `true` once every sealed entry is ranged.
pub fn range_chunk(connection: &Connection) -> Result<bool, StoreError> {
    chunk(connection, "ranged_through", RANGE_CHUNK_ROWS, widen_ranges)
}

/// Widens each hour's seq range (`schema_v7.sql`) to take in the rows of `table` with seq in
/// `(after, through]`. Widening twice by the same rows changes nothing.
fn widen_ranges(
    connection: &Connection,
    table: &str,
    after: i64,
    through: i64,
) -> Result<(), StoreError> {
    connection
        .prepare_cached(&format!(
            "INSERT INTO hour_seqs (hour, first_seq, last_seq) \
             SELECT {HOUR}, min(seq), max(seq) FROM {table} WHERE seq > ?1 AND seq <= ?2 \
             GROUP BY 1 ORDER BY 1 \
             ON CONFLICT (hour) DO UPDATE SET first_seq = min(first_seq, excluded.first_seq), \
             last_seq = max(last_seq, excluded.last_seq)"
        ))?
        .execute([after, through])?;
    Ok(())
}

/// Adds the rows of `table` with seq in `(after, through]` to the counts stats read
/// (`schema_v6.sql`). The rows are read once and grouped here, then each group is added with
/// one upsert: three `INSERT … SELECT … GROUP BY` would read and sort the rows three times (it
/// cost the writer 12–14%; this, nothing measurable).
fn add_counts(
    connection: &Connection,
    table: &str,
    after: i64,
    through: i64,
) -> Result<(), StoreError> {
    use std::collections::HashMap;
    let mut by_action: HashMap<(String, String, String), i64> = HashMap::new();
    let mut by_actor_hour: HashMap<(String, String), i64> = HashMap::new();
    let mut by_actor_day: HashMap<(String, String), i64> = HashMap::new();
    {
        // The keys are computed by SQLite, as the prune trigger computes them.
        let mut select = connection.prepare_cached(&format!(
            "SELECT {HOUR}, {DAY}, action, outcome, {ACTOR_KEY} FROM {table} \
             WHERE seq > ?1 AND seq <= ?2"
        ))?;
        let mut rows = select.query([after, through])?;
        while let Some(row) = rows.next()? {
            let hour: String = row.get(0)?;
            let day: String = row.get(1)?;
            let actor: String = row.get(4)?;
            *by_action
                .entry((hour.clone(), row.get(2)?, row.get(3)?))
                .or_default() += 1;
            *by_actor_day.entry((day, actor.clone())).or_default() += 1;
            *by_actor_hour.entry((hour, actor)).or_default() += 1;
        }
    }
    let mut add = connection.prepare_cached(
        "INSERT INTO entry_counts (hour, action, outcome, n) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (hour, action, outcome) DO UPDATE SET n = n + excluded.n",
    )?;
    for ((hour, action, outcome), n) in &by_action {
        add.execute(params![hour, action, outcome, n])?;
    }
    for (table, period, counts) in [
        ("actor_counts", "hour", &by_actor_hour),
        ("actor_day_counts", "day", &by_actor_day),
    ] {
        let mut add = connection.prepare_cached(&format!(
            "INSERT INTO {table} ({period}, actor, n) VALUES (?1, ?2, ?3) \
             ON CONFLICT ({period}, actor) DO UPDATE SET n = n + excluded.n"
        ))?;
        for ((key, actor), n) in counts {
            add.execute(params![key, actor, n])?;
        }
    }
    Ok(())
}

/// Inserts the nodes an append completed, of the levels the table keeps ([`keeps_level`]).
fn insert_nodes(connection: &Connection, nodes: &[(u32, u64, Hash)]) -> Result<(), StoreError> {
    let mut insert = connection
        .prepare_cached("INSERT INTO tree_nodes (level, idx, hash) VALUES (?1, ?2, ?3)")?;
    for (level, index, hash) in nodes.iter().filter(|(level, ..)| keeps_level(*level)) {
        insert.execute(params![level, *index as i64, &hash[..]])?;
    }
    Ok(())
}

/// Appends entries inside the caller's transaction: gives each the next sequence number, inserts
/// the row, hashes its canonical form into `frontier` and inserts the nodes that completed. The
/// caller commits, and keeps `frontier` only if the commit succeeds.
pub fn insert_entries(
    connection: &Connection,
    frontier: &mut Frontier,
    entries: &mut [AuditEntry],
) -> Result<(), StoreError> {
    let mut insert = connection.prepare_cached(&format!(
        "INSERT INTO {RECENT} ({ENTRY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, \
         ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)",
    ))?;
    // `recent` keeps its own ids unique; an id already sealed into `entries` is refused here, as
    // the single table's UNIQUE constraint refused it before. Ids are ULIDs, which grow with
    // time: an id above the largest sealed one (one look at the end of the id index per batch;
    // SQLite compares text byte by byte, as `str` does) cannot be sealed, and only an id at or
    // below it is looked up.
    let largest_sealed: Option<String> = connection
        .prepare_cached("SELECT max(id) FROM entries")?
        .query_row([], |row| row.get(0))?;
    let mut sealed = connection.prepare_cached("SELECT 1 FROM entries WHERE id = ?1")?;
    for entry in entries.iter_mut() {
        let may_be_sealed = largest_sealed
            .as_deref()
            .is_some_and(|largest| entry.id.as_str() <= largest);
        if may_be_sealed && sealed.exists([&entry.id])? {
            return Err(StoreError::Other(format!(
                "an entry with id {} is already in the log",
                entry.id
            )));
        }
        entry.seq = frontier.size() + 1;
        let metadata = serde_json::to_string(&entry.metadata).unwrap_or_else(|_| "{}".to_string());
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
        let completed = frontier.append(crate::log::merkle::leaf_hash(&entry.canonical_bytes()));
        insert_nodes(connection, &completed)?;
    }
    Ok(())
}

/// Builds the tree for entries that predate it (a database migrated from schema version 1),
/// inside the caller's transaction. The entries must be exactly `frontier.size() + 1 ..`, with
/// no gap: a missing row cannot be given a leaf.
pub fn backfill(connection: &Connection, frontier: &mut Frontier) -> Result<u64, StoreError> {
    let mut select = connection.prepare(&format!(
        "SELECT {ENTRY_COLUMNS} FROM entries WHERE seq > ?1 ORDER BY seq"
    ))?;
    let mut rows = select.query([frontier.size() as i64])?;
    let mut added = 0;
    while let Some(row) = rows.next()? {
        let entry = rows::entry_from_row(row)?;
        if entry.seq != frontier.size() + 1 {
            return Err(StoreError::Other(format!(
                "cannot build the Merkle tree: entry {} is missing",
                frontier.size() + 1
            )));
        }
        let completed = frontier.append(crate::log::merkle::leaf_hash(&entry.canonical_bytes()));
        insert_nodes(connection, &completed)?;
        added += 1;
    }
    Ok(added)
}

pub fn leaf_hash(connection: &Connection, seq: u64) -> Result<Option<Hash>, StoreError> {
    if seq == 0 {
        return Ok(None);
    }
    match SqliteNodes(connection).node(0, seq - 1) {
        Ok(hash) => Ok(Some(hash)),
        Err(MerkleError::MissingNode { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

pub fn save_head(connection: &Connection, head: &SignedTreeHead) -> Result<(), StoreError> {
    let json = serde_json::to_string(head)
        .map_err(|error| StoreError::Other(format!("cannot encode a tree head: {error}")))?;
    connection
        .prepare_cached(
            "INSERT INTO tree_heads (size, root_hash, timestamp, head_json) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            head.head.size as i64,
            &head.head.root_hash[..],
            head.head
                .timestamp
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            json,
        ])?;
    Ok(())
}

fn parse_head(id: i64, json: &str) -> Result<StoredHead, StoreError> {
    let head = serde_json::from_str(json).map_err(|error| {
        StoreError::Other(format!("stored tree head #{id} is damaged: {error}"))
    })?;
    Ok(StoredHead {
        id: id.max(0) as u64,
        head,
    })
}

pub fn latest_head(connection: &Connection) -> Result<Option<SignedTreeHead>, StoreError> {
    let row: Option<(i64, String)> = connection
        .prepare_cached("SELECT id, head_json FROM tree_heads ORDER BY id DESC LIMIT 1")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    row.map(|(id, json)| parse_head(id, &json).map(|stored| stored.head))
        .transpose()
}

pub fn heads_after(
    connection: &Connection,
    after_id: u64,
    limit: u32,
) -> Result<Vec<StoredHead>, StoreError> {
    let mut select = connection.prepare_cached(
        "SELECT id, head_json FROM tree_heads WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let rows = select.query_map(
        params![i64::try_from(after_id).unwrap_or(i64::MAX), limit],
        |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)),
    )?;
    let mut heads = Vec::new();
    for row in rows {
        let (id, json) = row?;
        heads.push(parse_head(id, &json)?);
    }
    Ok(heads)
}

pub fn pruned_record(connection: &Connection, seq: u64) -> Result<Option<u64>, StoreError> {
    let record: Option<i64> = connection
        .prepare_cached("SELECT prune_seq FROM pruned_entries WHERE seq = ?1")?
        .query_row([i64::try_from(seq).unwrap_or(i64::MAX)], |row| row.get(0))
        .optional()?;
    Ok(record.map(|record| record.max(0) as u64))
}

pub fn pruned_by(connection: &Connection, record_seq: u64) -> Result<Vec<u64>, StoreError> {
    let mut select = connection
        .prepare_cached("SELECT seq FROM pruned_entries WHERE prune_seq = ?1 ORDER BY seq")?;
    let rows = select.query_map([i64::try_from(record_seq).unwrap_or(i64::MAX)], |row| {
        row.get::<_, i64>(0)
    })?;
    let mut seqs = Vec::new();
    for seq in rows {
        seqs.push(seq?.max(0) as u64);
    }
    Ok(seqs)
}

/// Reads positions `first..` (at most `max`) in one read transaction, so the page is one
/// consistent snapshot even while the writer appends. With `stored`, a row comes as its values
/// copied ([`rows::stored_row`], `LogReader::scan_log_stored`) rather than decoded.
pub fn scan_log(
    connection: &Connection,
    first: u64,
    max: usize,
    stored: bool,
) -> Result<LogPage, StoreError> {
    let transaction = connection.unchecked_transaction()?;
    let end = tree_size(&transaction)?.max(max_entry_seq(&transaction)?);
    let Some(mut page) = PageBuilder::new(first, max, end) else {
        return Ok(LogPage::default());
    };
    let (first, last) = (page.first() as i64, page.last() as i64);
    {
        let mut leaves = transaction.prepare_cached(
            "SELECT idx, hash FROM tree_nodes WHERE level = 0 AND idx BETWEEN ?1 AND ?2",
        )?;
        let mut rows = leaves.query(params![first - 1, last - 1])?;
        while let Some(row) = rows.next()? {
            page.leaf(row.get(0)?, &row.get::<_, Vec<u8>>(1)?);
        }
    }
    {
        // Every unsealed position lies above every sealed one (the store seals a prefix of
        // `recent`); a row of `recent` at or below the last sealed position was moved there by
        // hand, and listings would otherwise read it out of place.
        let last_sealed: i64 = transaction
            .prepare_cached("SELECT coalesce(max(seq), 0) FROM entries")?
            .query_row([], |row| row.get(0))?;
        let mut ranges = HourRanges::load(&transaction)?;
        if first == 1 {
            // The log starts at position 1; a row below it is listed by every query that
            // reaches it, yet no leaf covers it.
            for table in ["entries", RECENT] {
                let below: Option<i64> = transaction
                    .prepare_cached(&format!("SELECT max(seq) FROM {table} WHERE seq < 1"))?
                    .query_row([], |row| row.get(0))?;
                if let Some(seq) = below {
                    page.finding(
                        0,
                        format!(
                            "a row of {table} at position {seq}, below the log's first \
                             position: listings show it, but it is no entry of the log (inserted \
                             by hand)"
                        ),
                    );
                }
            }
        }
        for table in ["entries", RECENT] {
            let mut entries = transaction.prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM {table} WHERE seq BETWEEN ?1 AND ?2"
            ))?;
            let mut rows = entries.query(params![first, last])?;
            while let Some(row) = rows.next()? {
                let seq: i64 = row.get(0)?;
                if let Some(ranges) = ranges.as_mut().filter(|_| table == "entries") {
                    if let Some(outside) = ranges.outside(&transaction, seq, row)? {
                        page.finding(seq, outside);
                    }
                }
                let entry = if table == RECENT && seq <= last_sealed {
                    Err(format!(
                        "position {seq} is among the unsealed entries, below sealed position \
                         {last_sealed}: moved between the tables by hand"
                    ))
                } else {
                    if stored {
                        if let Some(values) = rows::stored_row(row) {
                            page.stored(seq, values);
                            continue;
                        }
                    }
                    rows::entry_from_row(row).map_err(|error| error.to_string())
                };
                page.entry(seq, entry);
            }
        }
    }
    {
        let mut marks = transaction.prepare_cached(
            "SELECT seq, prune_seq FROM pruned_entries WHERE seq BETWEEN ?1 AND ?2",
        )?;
        let mut rows = marks.query(params![first, last])?;
        while let Some(row) = rows.next()? {
            page.pruned_by(row.get(0)?, row.get(1)?);
        }
    }
    {
        let mut select = transaction.prepare_cached(
            "SELECT idx, hash FROM tree_nodes WHERE level = ?1 AND idx BETWEEN ?2 AND ?3",
        )?;
        let kept = page.node_ranges().into_iter();
        for (level, low, high) in kept.filter(|(level, ..)| keeps_level(*level)) {
            let mut rows = select.query(params![level, low as i64, high as i64])?;
            while let Some(row) = rows.next()? {
                page.node(level, row.get(0)?, &row.get::<_, Vec<u8>>(1)?);
            }
        }
    }
    Ok(page.finish())
}

/// The hour ranges (`schema_v7.sql`) as `verify`'s walk checks them: a sealed entry up to
/// `ranged_through` outside its hour's range is hidden from listings of time windows that take
/// in its hour, although its row is untouched, so its position is reported. Each hour's range is
/// read once per page.
struct HourRanges {
    through: i64,
    hours: std::collections::HashMap<Vec<u8>, Option<(i64, i64)>>,
    /// Hours with a position already reported on this page: one finding per hour and page, so
    /// a table emptied by hand costs a finding per hour, not one per entry.
    reported: std::collections::HashSet<Vec<u8>>,
}

impl HourRanges {
    /// `None` for a file without ranges, or none kept yet.
    fn load(connection: &Connection) -> Result<Option<HourRanges>, StoreError> {
        if !rows::has_table(connection, "ranged_through")? {
            return Ok(None);
        }
        let through = ranged_through(connection)?;
        Ok((through > 0).then(|| HourRanges {
            through,
            hours: std::collections::HashMap::new(),
            reported: std::collections::HashSet::new(),
        }))
    }

    /// What is wrong with the row at `seq` of `entries`, if it lies outside its hour's range.
    /// Only a time in the stored form is checked: a row holding another form was rewritten or
    /// changed by hand, which the walk reports as such (no release writes one).
    fn outside(
        &mut self,
        connection: &Connection,
        seq: i64,
        row: &rusqlite::Row<'_>,
    ) -> Result<Option<String>, StoreError> {
        if seq > self.through {
            return Ok(None);
        }
        let rusqlite::types::ValueRef::Text(time) = row.get_ref(3)? else {
            return Ok(None);
        };
        if !crate::entry::is_stored_timestamp(time) {
            return Ok(None);
        }
        let hour = &time[..13];
        let range = match self.hours.get(hour) {
            Some(range) => *range,
            None => {
                let range = connection
                    .prepare_cached("SELECT first_seq, last_seq FROM hour_seqs WHERE hour = ?1")?
                    .query_row([String::from_utf8_lossy(hour)], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                    .optional()?;
                self.hours.insert(hour.to_vec(), range);
                range
            }
        };
        if range.is_some_and(|(first, last)| first <= seq && seq <= last)
            || !self.reported.insert(hour.to_vec())
        {
            return Ok(None);
        }
        let hour = String::from_utf8_lossy(hour);
        Ok(Some(match range {
            Some((first, last)) => format!(
                "position {seq} lies outside the positions {first}..{last} that hour_seqs \
                 records for its hour {hour}: listings of time windows would not show it (the \
                 first such position of that hour in this part of the log)"
            ),
            None => format!(
                "hour_seqs has no positions for hour {hour} of position {seq}: listings of time \
                 windows would not show it"
            ),
        }))
    }
}

/// Deletes up to `max` entries the plan selects and marks their positions, then appends
/// `record` with its claim, all inside the caller's transaction. `None` when nothing is due.
pub fn prune(
    connection: &Connection,
    frontier: &mut Frontier,
    plan: &PrunePlan,
    mut record: AuditEntry,
    max: usize,
) -> Result<Option<PruneOutcome>, StoreError> {
    // Every entry is sealed first, so the prunable ones are found through the indexes of one
    // table (a prune is rare; this costs one batch move).
    seal(connection, u64::MAX)?;
    let seqs = select_prunable(connection, plan, max)?;
    let Some(step) = PruneStep::new(seqs, frontier.size()) else {
        return Ok(None);
    };
    {
        let mut delete = connection.prepare_cached("DELETE FROM entries WHERE seq = ?1")?;
        let mut mark = connection
            .prepare_cached("INSERT INTO pruned_entries (seq, prune_seq) VALUES (?1, ?2)")?;
        for seq in &step.seqs {
            delete.execute([*seq as i64])?;
            mark.execute([*seq as i64, step.record_seq as i64])?;
        }
    }
    let outcome = step.claim(&mut record);
    insert_entries(connection, frontier, &mut [record])?;
    Ok(Some(outcome))
}

/// Up to `max` sequence numbers of entries due for pruning, class by class; each class's query
/// is a range on an index (action, or created_at for the default class).
fn select_prunable(
    connection: &Connection,
    plan: &PrunePlan,
    max: usize,
) -> Result<Vec<u64>, StoreError> {
    use rusqlite::types::Value;
    let mut seqs = Vec::new();
    for class in plan.classes() {
        if seqs.len() >= max {
            break;
        }
        let mut sql = String::from("SELECT seq FROM entries WHERE created_at < ? AND action != ?");
        let mut values = vec![
            Value::Text(format_timestamp(&class.cutoff)),
            Value::Text(PRUNED_ACTION.to_string()),
        ];
        if let Some(prefix) = &class.prefix {
            push_prefix(&mut sql, &mut values, prefix, false);
        }
        for excluded in &class.excluded {
            push_prefix(&mut sql, &mut values, excluded, true);
        }
        sql.push_str(" LIMIT ?");
        values.push(Value::Integer((max - seqs.len()) as i64));
        let mut select = connection.prepare_cached(&sql)?;
        let rows = select.query_map(rusqlite::params_from_iter(values), |row| {
            row.get::<_, i64>(0)
        })?;
        for seq in rows {
            seqs.push(seq?.max(0) as u64);
        }
    }
    Ok(seqs)
}

/// `AND action` in (or, negated, not in) the range of strings starting with `prefix`.
fn push_prefix(
    sql: &mut String,
    values: &mut Vec<rusqlite::types::Value>,
    prefix: &str,
    negated: bool,
) {
    use rusqlite::types::Value;
    let not = if negated { "NOT " } else { "" };
    match crate::store::query::prefix_upper_bound(prefix) {
        Some(upper) => {
            sql.push_str(&format!(" AND {not}(action >= ? AND action < ?)"));
            values.push(Value::Text(prefix.to_string()));
            values.push(Value::Text(upper));
        }
        None => {
            sql.push_str(&format!(" AND {not}(action >= ?)"));
            values.push(Value::Text(prefix.to_string()));
        }
    }
}

/// Whether the file has the cosignatures table (schema version 3): a store opened read-only
/// is not migrated, and an older one simply holds no cosignatures.
fn has_cosignatures(connection: &Connection) -> Result<bool, StoreError> {
    Ok(rows::has_table(connection, "witness_cosignatures")?)
}

pub fn save_cosignature(
    connection: &Connection,
    cosignature: &StoredCosignature,
) -> Result<(), StoreError> {
    connection
        .prepare_cached(
            "INSERT INTO witness_cosignatures \
             (origin, size, root_hash, witness_vkey, timestamp, line) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (size, root_hash, origin, witness_vkey) DO UPDATE \
             SET timestamp = excluded.timestamp, line = excluded.line \
             WHERE excluded.timestamp > witness_cosignatures.timestamp",
        )?
        .execute(params![
            cosignature.origin,
            i64::try_from(cosignature.size).unwrap_or(i64::MAX),
            &cosignature.root_hash[..],
            cosignature.witness_vkey,
            i64::try_from(cosignature.timestamp).unwrap_or(i64::MAX),
            cosignature.line,
        ])?;
    Ok(())
}

pub fn cosignatures(
    connection: &Connection,
    origin: &str,
    size: u64,
    root_hash: &Hash,
) -> Result<Vec<StoredCosignature>, StoreError> {
    if !has_cosignatures(connection)? {
        return Ok(Vec::new());
    }
    let mut select = connection.prepare_cached(
        "SELECT witness_vkey, timestamp, line FROM witness_cosignatures \
         WHERE size = ?1 AND root_hash = ?2 AND origin = ?3 ORDER BY witness_vkey",
    )?;
    let rows = select.query_map(
        params![
            i64::try_from(size).unwrap_or(i64::MAX),
            &root_hash[..],
            origin
        ],
        |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
            ))
        },
    )?;
    let mut found = Vec::new();
    for row in rows {
        let (witness_vkey, timestamp, line) = row?;
        found.push(StoredCosignature {
            origin: origin.to_string(),
            size,
            root_hash: *root_hash,
            witness_vkey,
            timestamp: timestamp.max(0) as u64,
            line,
        });
    }
    Ok(found)
}

pub fn witness_size(
    connection: &Connection,
    origin: &str,
    witness_vkey: &str,
) -> Result<Option<u64>, StoreError> {
    if !has_cosignatures(connection)? {
        return Ok(None);
    }
    let size: Option<i64> = connection
        .prepare_cached(
            "SELECT MAX(size) FROM witness_cosignatures WHERE witness_vkey = ?1 AND origin = ?2",
        )?
        .query_row(params![witness_vkey, origin], |row| row.get(0))?;
    Ok(size.map(|size| size.max(0) as u64))
}
