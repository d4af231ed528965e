//! The log side of the PostgreSQL store: appends with their tree nodes, signed heads, prune
//! marks and the reads verification needs, all scoped to one log. The PostgreSQL twin of
//! `sqlite_log.rs`.
//!
//! Functions take a [`LogDb`]: a client or transaction, its statement cache and the log id, so
//! the writer, the reader pool and `auditgate verify`'s read-only connection share them.

use std::cell::RefCell;

use chrono::{DateTime, Utc};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::{GenericClient, Row};

use super::rows::{self, param_refs, Param};
use super::StatementCache;
use crate::entry::AuditEntry;
use crate::log::head::SignedTreeHead;
use crate::log::merkle::{leaf_hash, Frontier, Hash, MerkleError, NodeReader};
use crate::log::pruned::PRUNED_ACTION;
use crate::store::log_page::PageBuilder;
use crate::store::query::prefix_upper_bound;
use crate::store::retention::{PrunePlan, PruneStep};
use crate::store::{LogPage, PruneOutcome, StoreError, StoredCosignature, StoredHead};

/// One log's view of a connection (or transaction).
pub struct LogDb<'a, C: GenericClient> {
    pub client: &'a mut C,
    pub statements: &'a mut StatementCache,
    pub log_id: &'a str,
}

impl<C: GenericClient> LogDb<'_, C> {
    /// Runs a query through the statement cache.
    pub(super) fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let statement = self.statements.get(self.client, sql)?;
        Ok(self.client.query(&statement, params)?)
    }

    /// Runs a statement through the statement cache; the number of rows it changed.
    pub(super) fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let statement = self.statements.get(self.client, sql)?;
        Ok(self.client.execute(&statement, params)?)
    }
}

pub(super) fn sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// [`NodeReader`] over one log's `tree_nodes`. The merkle functions ask for one node at a time
/// through `&self`, hence the cell.
pub struct PgNodes<'d, 'a, C: GenericClient>(pub RefCell<&'d mut LogDb<'a, C>>);

impl<'d, 'a, C: GenericClient> PgNodes<'d, 'a, C> {
    pub fn new(db: &'d mut LogDb<'a, C>) -> Self {
        PgNodes(RefCell::new(db))
    }
}

impl<C: GenericClient> NodeReader for PgNodes<'_, '_, C> {
    fn node(&self, level: u32, index: u64) -> Result<Hash, MerkleError> {
        let storage = |error: StoreError| MerkleError::Storage(error.to_string());
        let index_sql =
            i64::try_from(index).map_err(|_| MerkleError::MissingNode { level, index })?;
        let level_sql =
            i32::try_from(level).map_err(|_| MerkleError::MissingNode { level, index })?;
        let mut db = self
            .0
            .try_borrow_mut()
            .map_err(|_| MerkleError::Storage("tree node reader re-entered".into()))?;
        let log_id = db.log_id.to_string();
        let rows = db
            .query(
                "SELECT hash FROM tree_nodes WHERE log_id = $1 AND level = $2 AND idx = $3",
                &[&log_id, &level_sql, &index_sql],
            )
            .map_err(storage)?;
        let row = rows
            .first()
            .ok_or(MerkleError::MissingNode { level, index })?;
        let blob: Vec<u8> = row
            .try_get(0)
            .map_err(|error| MerkleError::Storage(error.to_string()))?;
        <Hash>::try_from(blob.as_slice()).map_err(|_| {
            MerkleError::Storage(format!(
                "tree node at level {level} index {index} is not 32 bytes"
            ))
        })
    }
}

/// Number of leaves: the last stored leaf's index plus one.
pub fn tree_size<C: GenericClient>(db: &mut LogDb<'_, C>) -> Result<u64, StoreError> {
    let log_id = db.log_id.to_string();
    let rows = db.query(
        "SELECT max(idx) FROM tree_nodes WHERE log_id = $1 AND level = 0",
        &[&log_id],
    )?;
    let last: Option<i64> = match rows.first() {
        Some(row) => row.try_get(0)?,
        None => None,
    };
    Ok(last
        .and_then(|last| u64::try_from(last).ok())
        .map_or(0, |last| last.saturating_add(1)))
}

/// Up to `count` consecutive nodes of `level` from `first` on, stopping at the first gap.
pub fn node_range<C: GenericClient>(
    db: &mut LogDb<'_, C>,
    level: u32,
    first: u64,
    count: usize,
) -> Result<Vec<Hash>, StoreError> {
    let (Ok(level_sql), Ok(first_sql), Some(last)) = (
        i32::try_from(level),
        i64::try_from(first),
        (count as u64)
            .checked_sub(1)
            .and_then(|span| first.checked_add(span)),
    ) else {
        return Ok(Vec::new());
    };
    let log_id = db.log_id.to_string();
    let rows = db.query(
        "SELECT idx, hash FROM tree_nodes WHERE log_id = $1 AND level = $2 \
         AND idx BETWEEN $3 AND $4 ORDER BY idx",
        &[&log_id, &level_sql, &first_sql, &sql_int(last)],
    )?;
    let mut hashes = Vec::with_capacity(rows.len());
    for row in rows {
        let index: i64 = row.try_get(0)?;
        if index != first_sql.saturating_add(hashes.len() as i64) {
            break;
        }
        let blob: Vec<u8> = row.try_get(1)?;
        hashes.push(<Hash>::try_from(blob.as_slice()).map_err(|_| {
            StoreError::Other(format!(
                "tree node at level {level} index {index} is not 32 bytes"
            ))
        })?);
    }
    Ok(hashes)
}

pub fn max_entry_seq<C: GenericClient>(db: &mut LogDb<'_, C>) -> Result<u64, StoreError> {
    let log_id = db.log_id.to_string();
    let rows = db.query("SELECT max(seq) FROM entries WHERE log_id = $1", &[&log_id])?;
    let last: Option<i64> = match rows.first() {
        Some(row) => row.try_get(0)?,
        None => None,
    };
    Ok(last.map_or(0, |last| last.max(0) as u64))
}

/// The columns an append copies into `entries`, in the order of [`ENTRY_TYPES`] and
/// [`entry_values`], but for `kept` (schema version 3), which follows them; `gid` is left to its
/// default. These are also every column of the version 2 table but `gid`.
pub(super) const COPY_ENTRY_COLUMNS: &str =
    "seq, id, log_id, created_at, actor_id, actor_email, actor_name, \
     actor_source, actor_verified, tenant, action, resource_type, resource_id, outcome, status, \
     method, path, route, rule, ip, user_agent, request_id, duration_us, error, metadata, ip_net, \
     verbatim";

/// The column types of [`COPY_ENTRY_COLUMNS`], as the schema declares them: binary COPY sends
/// each value in its column's own wire format, so these must match the table exactly.
const ENTRY_TYPES: [Type; 28] = [
    Type::INT8,        // seq
    Type::TEXT,        // id
    Type::TEXT,        // log_id
    Type::TIMESTAMPTZ, // created_at
    Type::TEXT,        // actor_id
    Type::TEXT,        // actor_email
    Type::TEXT,        // actor_name
    Type::TEXT,        // actor_source
    Type::BOOL,        // actor_verified
    Type::TEXT,        // tenant
    Type::TEXT,        // action
    Type::TEXT,        // resource_type
    Type::TEXT,        // resource_id
    Type::TEXT,        // outcome
    Type::INT4,        // status
    Type::TEXT,        // method
    Type::TEXT,        // path
    Type::TEXT,        // route
    Type::TEXT,        // rule
    Type::TEXT,        // ip
    Type::TEXT,        // user_agent
    Type::TEXT,        // request_id
    Type::INT8,        // duration_us
    Type::TEXT,        // error
    Type::TEXT,        // metadata
    Type::INET,        // ip_net
    Type::TEXT,        // verbatim
    Type::INT2,        // kept
];

/// The column types of a `tree_nodes` row: log_id, level, idx, hash.
const NODE_TYPES: [Type; 4] = [Type::TEXT, Type::INT4, Type::INT8, Type::BYTEA];

/// Whether any text of the entry holds a NUL character, which PostgreSQL text cannot store.
fn has_nul(entry: &AuditEntry) -> bool {
    let optional = [
        &entry.actor_id,
        &entry.actor_email,
        &entry.actor_name,
        &entry.actor_source,
        &entry.tenant,
        &entry.resource_type,
        &entry.resource_id,
        &entry.method,
        &entry.path,
        &entry.route,
        &entry.rule,
        &entry.ip,
        &entry.user_agent,
        &entry.request_id,
        &entry.error,
    ];
    entry.id.contains('\0')
        || entry.log_id.contains('\0')
        || entry.action.contains('\0')
        || optional
            .iter()
            .any(|value| value.as_deref().is_some_and(|text| text.contains('\0')))
}

/// The values of one entry row, in [`COPY_ENTRY_COLUMNS`] order.
fn entry_values(entry: &AuditEntry) -> Result<Vec<Param>, StoreError> {
    let verbatim = if has_nul(entry) {
        Some(serde_json::to_string(entry).map_err(|error| StoreError::Other(error.to_string()))?)
    } else {
        None
    };
    let text = |value: &str| -> String { value.replace('\0', "\u{FFFD}") };
    let optional = |value: &Option<String>| -> Option<String> { value.as_deref().map(text) };
    let metadata = serde_json::to_string(&entry.metadata).unwrap_or_else(|_| "{}".to_string());
    let params: Vec<Param> = vec![
        Box::new(sql_int(entry.seq)),
        Box::new(text(&entry.id)),
        Box::new(text(&entry.log_id)),
        Box::new(entry.created_at),
        Box::new(optional(&entry.actor_id)),
        Box::new(optional(&entry.actor_email)),
        Box::new(optional(&entry.actor_name)),
        Box::new(optional(&entry.actor_source)),
        Box::new(entry.actor_verified),
        Box::new(optional(&entry.tenant)),
        Box::new(text(&entry.action)),
        Box::new(optional(&entry.resource_type)),
        Box::new(optional(&entry.resource_id)),
        Box::new(entry.outcome.as_str().to_string()),
        Box::new(entry.status.map(i32::from)),
        Box::new(optional(&entry.method)),
        Box::new(optional(&entry.path)),
        Box::new(optional(&entry.route)),
        Box::new(optional(&entry.rule)),
        Box::new(optional(&entry.ip)),
        Box::new(optional(&entry.user_agent)),
        Box::new(optional(&entry.request_id)),
        // Stored as the u64's bits so that every value round-trips exactly (the canonical form
        // hashes the u64).
        Box::new(entry.duration_us.map(|us| us as i64)),
        Box::new(optional(&entry.error)),
        Box::new(metadata),
        Box::new(rows::ip_addr(entry.ip.as_deref())),
        Box::new(verbatim),
        // `audit.pruned` records go to the log's partition of kept rows, never to a month that
        // retention may drop whole.
        Box::new(i16::from(entry.action == PRUNED_ACTION)),
    ];
    debug_assert_eq!(params.len(), ENTRY_TYPES.len());
    Ok(params)
}

/// Appends entries inside the caller's transaction: gives each the next sequence number of the
/// log, hashes its canonical form into `frontier`, and copies the rows and the tree nodes they
/// completed in with two binary `COPY`s (a round trip per few kilobytes, not per row or per
/// statement). The caller commits, and keeps `frontier` only if the commit succeeds; a row the
/// database refuses (a duplicate id) fails its `COPY`, which aborts the transaction, so a batch
/// is stored whole or not at all.
pub fn insert_entries<C: GenericClient>(
    db: &mut LogDb<'_, C>,
    frontier: &mut Frontier,
    entries: &mut [AuditEntry],
) -> Result<(), StoreError> {
    let mut entry_rows: Vec<Vec<Param>> = Vec::with_capacity(entries.len());
    let mut nodes: Vec<(u32, u64, Hash)> = Vec::with_capacity(entries.len() * 2);
    for entry in entries.iter_mut() {
        entry.seq = frontier.size() + 1;
        entry_rows.push(entry_values(entry)?);
        nodes.extend(frontier.append(leaf_hash(&entry.canonical_bytes())));
    }
    if entry_rows.is_empty() {
        return Ok(());
    }
    let sink = db.client.copy_in(&format!(
        "COPY entries ({COPY_ENTRY_COLUMNS}, kept) FROM STDIN (FORMAT binary)"
    ))?;
    let mut copy = BinaryCopyInWriter::new(sink, &ENTRY_TYPES);
    for row in &entry_rows {
        copy.write(&param_refs(row))?;
    }
    copy.finish()?;
    insert_nodes(db, &nodes)
}

/// Copies tree nodes of the log into `tree_nodes`.
fn insert_nodes<C: GenericClient>(
    db: &mut LogDb<'_, C>,
    nodes: &[(u32, u64, Hash)],
) -> Result<(), StoreError> {
    if nodes.is_empty() {
        return Ok(());
    }
    let log_id = db.log_id.to_string();
    let sink = db
        .client
        .copy_in("COPY tree_nodes (log_id, level, idx, hash) FROM STDIN (FORMAT binary)")?;
    let mut copy = BinaryCopyInWriter::new(sink, &NODE_TYPES);
    for (level, index, hash) in nodes {
        let level = i32::try_from(*level).unwrap_or(i32::MAX);
        let index = sql_int(*index);
        let hash: &[u8] = hash;
        copy.write(&[&log_id, &level, &index, &hash])?;
    }
    copy.finish()?;
    Ok(())
}

pub fn leaf_hash_at<C: GenericClient>(
    db: &mut LogDb<'_, C>,
    seq: u64,
) -> Result<Option<Hash>, StoreError> {
    if seq == 0 {
        return Ok(None);
    }
    match PgNodes::new(db).node(0, seq - 1) {
        Ok(hash) => Ok(Some(hash)),
        Err(MerkleError::MissingNode { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

pub fn save_head<C: GenericClient>(
    db: &mut LogDb<'_, C>,
    head: &SignedTreeHead,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(head)
        .map_err(|error| StoreError::Other(format!("cannot encode a tree head: {error}")))?;
    let log_id = db.log_id.to_string();
    db.execute(
        "INSERT INTO tree_heads (log_id, size, root_hash, timestamp, head_json) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &log_id,
            &sql_int(head.head.size),
            &head.head.root_hash.to_vec(),
            &head.head.timestamp,
            &json,
        ],
    )?;
    Ok(())
}

fn parse_head(row: &Row) -> Result<StoredHead, StoreError> {
    let id: i64 = row.try_get(0)?;
    let json: String = row.try_get(1)?;
    let head = serde_json::from_str(&json).map_err(|error| {
        StoreError::Other(format!("stored tree head #{id} is damaged: {error}"))
    })?;
    Ok(StoredHead {
        id: id.max(0) as u64,
        head,
    })
}

pub fn latest_head<C: GenericClient>(
    db: &mut LogDb<'_, C>,
) -> Result<Option<SignedTreeHead>, StoreError> {
    let log_id = db.log_id.to_string();
    let rows = db.query(
        "SELECT id, head_json FROM tree_heads WHERE log_id = $1 ORDER BY id DESC LIMIT 1",
        &[&log_id],
    )?;
    rows.first()
        .map(|row| parse_head(row).map(|stored| stored.head))
        .transpose()
}

pub fn heads_after<C: GenericClient>(
    db: &mut LogDb<'_, C>,
    after_id: u64,
    limit: u32,
) -> Result<Vec<StoredHead>, StoreError> {
    let log_id = db.log_id.to_string();
    let rows = db.query(
        "SELECT id, head_json FROM tree_heads WHERE log_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        &[&log_id, &sql_int(after_id), &i64::from(limit)],
    )?;
    rows.iter().map(parse_head).collect()
}

pub fn pruned_record<C: GenericClient>(
    db: &mut LogDb<'_, C>,
    seq: u64,
) -> Result<Option<u64>, StoreError> {
    let log_id = db.log_id.to_string();
    let rows = db.query(
        "SELECT prune_seq FROM pruned_entries WHERE log_id = $1 AND seq = $2",
        &[&log_id, &sql_int(seq)],
    )?;
    match rows.first() {
        Some(row) => Ok(Some(row.try_get::<_, i64>(0)?.max(0) as u64)),
        None => Ok(None),
    }
}

pub fn pruned_by<C: GenericClient>(
    db: &mut LogDb<'_, C>,
    record_seq: u64,
) -> Result<Vec<u64>, StoreError> {
    let log_id = db.log_id.to_string();
    let rows = db.query(
        "SELECT seq FROM pruned_entries WHERE log_id = $1 AND prune_seq = $2 ORDER BY seq",
        &[&log_id, &sql_int(record_seq)],
    )?;
    rows.iter()
        .map(|row| Ok(row.try_get::<_, i64>(0)?.max(0) as u64))
        .collect()
}

/// Reads positions `first..` (at most `max`) of the log. The caller runs it in one REPEATABLE
/// READ transaction, so the page is a consistent snapshot even while the writer appends.
pub fn scan_log<C: GenericClient>(
    db: &mut LogDb<'_, C>,
    first: u64,
    max: usize,
) -> Result<LogPage, StoreError> {
    let end = tree_size(db)?.max(max_entry_seq(db)?);
    let Some(mut page) = PageBuilder::new(first, max, end) else {
        return Ok(LogPage::default());
    };
    let log_id = db.log_id.to_string();
    let (low, high) = (sql_int(page.first()), sql_int(page.last()));
    let leaves = db.query(
        "SELECT idx, hash FROM tree_nodes WHERE log_id = $1 AND level = 0 AND idx BETWEEN $2 AND $3",
        &[&log_id, &(low - 1), &(high - 1)],
    )?;
    for row in &leaves {
        page.leaf(row.try_get(0)?, row.try_get(1)?);
    }
    let entries = db.query(
        &format!(
            "SELECT {} FROM entries WHERE log_id = $1 AND seq BETWEEN $2 AND $3",
            rows::ENTRY_COLUMNS
        ),
        &[&log_id, &low, &high],
    )?;
    for row in &entries {
        page.entry(
            row.try_get(0)?,
            rows::entry_from_row(row).map(|(entry, _)| entry),
        );
    }
    let marks = db.query(
        "SELECT seq, prune_seq FROM pruned_entries WHERE log_id = $1 AND seq BETWEEN $2 AND $3",
        &[&log_id, &low, &high],
    )?;
    for row in &marks {
        page.pruned_by(row.try_get(0)?, row.try_get(1)?);
    }
    for (level, low, high) in page.node_ranges() {
        let level_sql = i32::try_from(level).unwrap_or(i32::MAX);
        let rows = db.query(
            "SELECT idx, hash FROM tree_nodes WHERE log_id = $1 AND level = $2 AND idx BETWEEN $3 AND $4",
            &[&log_id, &level_sql, &sql_int(low), &sql_int(high)],
        )?;
        for row in &rows {
            page.node(level, row.try_get(0)?, row.try_get(1)?);
        }
    }
    Ok(page.finish())
}

/// Deletes up to `max` of the log's entries the plan selects and marks their positions, then
/// appends `record` with its claim, all inside the caller's transaction.
pub fn prune<C: GenericClient>(
    db: &mut LogDb<'_, C>,
    frontier: &mut Frontier,
    plan: &PrunePlan,
    mut record: AuditEntry,
    max: usize,
) -> Result<Option<PruneOutcome>, StoreError> {
    let seqs = select_prunable(db, plan, max)?;
    let Some(step) = PruneStep::new(seqs, frontier.size()) else {
        return Ok(None);
    };
    let log_id = db.log_id.to_string();
    let seq_values: Vec<i64> = step.seqs.iter().map(|seq| sql_int(*seq)).collect();
    db.execute(
        "DELETE FROM entries WHERE log_id = $1 AND seq = ANY($2)",
        &[&log_id, &seq_values],
    )?;
    db.execute(
        "INSERT INTO pruned_entries (log_id, seq, prune_seq) \
         SELECT $1, marked, $3 FROM unnest($2::bigint[]) AS marked",
        &[&log_id, &seq_values, &sql_int(step.record_seq)],
    )?;
    let outcome = step.claim(&mut record);
    insert_entries(db, frontier, &mut [record])?;
    Ok(Some(outcome))
}

/// Up to `max` sequence numbers of the log's entries due for pruning, class by class.
fn select_prunable<C: GenericClient>(
    db: &mut LogDb<'_, C>,
    plan: &PrunePlan,
    max: usize,
) -> Result<Vec<u64>, StoreError> {
    let mut seqs = Vec::new();
    for class in plan.classes() {
        if seqs.len() >= max {
            break;
        }
        let mut values: Vec<Param> = vec![
            Box::new(db.log_id.to_string()),
            Box::new(class.cutoff),
            Box::new(PRUNED_ACTION.to_string()),
        ];
        let mut sql = String::from(
            "SELECT seq FROM entries WHERE log_id = $1 AND created_at < $2 AND action <> $3",
        );
        if let Some(prefix) = &class.prefix {
            push_prefix(&mut sql, &mut values, prefix, false);
        }
        for excluded in &class.excluded {
            push_prefix(&mut sql, &mut values, excluded, true);
        }
        values.push(Box::new(sql_int((max - seqs.len()) as u64)));
        sql.push_str(&format!(" LIMIT ${}", values.len()));
        let rows = db.query(&sql, &param_refs(&values))?;
        for row in &rows {
            seqs.push(row.try_get::<_, i64>(0)?.max(0) as u64);
        }
    }
    Ok(seqs)
}

/// `AND action` in (or, negated, not in) the range of strings starting with `prefix`.
pub(super) fn push_prefix(sql: &mut String, values: &mut Vec<Param>, prefix: &str, negated: bool) {
    let not = if negated { "NOT " } else { "" };
    values.push(Box::new(prefix.to_string()));
    let low = values.len();
    match prefix_upper_bound(prefix) {
        Some(upper) => {
            values.push(Box::new(upper));
            sql.push_str(&format!(
                " AND {not}(action >= ${low} AND action < ${})",
                values.len()
            ));
        }
        None => sql.push_str(&format!(" AND {not}(action >= ${low})")),
    }
}

/// Write-ahead intents of the log: stored (replacing any of the same id).
pub fn record_intents<C: GenericClient>(
    db: &mut LogDb<'_, C>,
    intents: &[AuditEntry],
) -> Result<(), StoreError> {
    let log_id = db.log_id.to_string();
    for intent in intents {
        let json =
            serde_json::to_string(intent).map_err(|error| StoreError::Other(error.to_string()))?;
        let created_at: DateTime<Utc> = intent.created_at;
        db.execute(
            "INSERT INTO pending (log_id, id, created_at, entry) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (log_id, id) DO UPDATE SET created_at = EXCLUDED.created_at, \
             entry = EXCLUDED.entry",
            &[&log_id, &intent.id, &created_at, &json],
        )?;
    }
    Ok(())
}

/// Whether the database has the cosignatures table (schema version 2): a database opened for
/// reading is not migrated, and an older one simply holds no cosignatures.
fn has_cosignatures<C: GenericClient>(db: &mut LogDb<'_, C>) -> Result<bool, StoreError> {
    let rows = db.query(
        "SELECT to_regclass('witness_cosignatures') IS NOT NULL",
        &[],
    )?;
    Ok(match rows.first() {
        Some(row) => row.try_get(0)?,
        None => false,
    })
}

pub fn save_cosignature<C: GenericClient>(
    db: &mut LogDb<'_, C>,
    cosignature: &StoredCosignature,
) -> Result<(), StoreError> {
    let log_id = db.log_id.to_string();
    db.execute(
        "INSERT INTO witness_cosignatures \
         (log_id, origin, size, root_hash, witness_vkey, timestamp, line) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (log_id, size, root_hash, origin, witness_vkey) DO UPDATE \
         SET timestamp = excluded.timestamp, line = excluded.line \
         WHERE excluded.timestamp > witness_cosignatures.timestamp",
        &[
            &log_id,
            &cosignature.origin,
            &sql_int(cosignature.size),
            &cosignature.root_hash.to_vec(),
            &cosignature.witness_vkey,
            &sql_int(cosignature.timestamp),
            &cosignature.line,
        ],
    )?;
    Ok(())
}

pub fn cosignatures<C: GenericClient>(
    db: &mut LogDb<'_, C>,
    origin: &str,
    size: u64,
    root_hash: &Hash,
) -> Result<Vec<StoredCosignature>, StoreError> {
    if !has_cosignatures(db)? {
        return Ok(Vec::new());
    }
    let log_id = db.log_id.to_string();
    let rows = db.query(
        "SELECT witness_vkey, timestamp, line FROM witness_cosignatures \
         WHERE log_id = $1 AND size = $2 AND root_hash = $3 AND origin = $4 \
         ORDER BY witness_vkey",
        &[&log_id, &sql_int(size), &root_hash.to_vec(), &origin],
    )?;
    rows.iter()
        .map(|row| {
            let timestamp: i64 = row.try_get(1)?;
            Ok(StoredCosignature {
                origin: origin.to_string(),
                size,
                root_hash: *root_hash,
                witness_vkey: row.try_get(0)?,
                timestamp: timestamp.max(0) as u64,
                line: row.try_get(2)?,
            })
        })
        .collect()
}

pub fn witness_size<C: GenericClient>(
    db: &mut LogDb<'_, C>,
    origin: &str,
    witness_vkey: &str,
) -> Result<Option<u64>, StoreError> {
    if !has_cosignatures(db)? {
        return Ok(None);
    }
    let log_id = db.log_id.to_string();
    let rows = db.query(
        "SELECT MAX(size) FROM witness_cosignatures \
         WHERE log_id = $1 AND witness_vkey = $2 AND origin = $3",
        &[&log_id, &witness_vkey, &origin],
    )?;
    let size: Option<i64> = match rows.first() {
        Some(row) => row.try_get(0)?,
        None => None,
    };
    Ok(size.map(|size| size.max(0) as u64))
}
