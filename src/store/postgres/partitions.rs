//! Time partitions of `entries` (schema version 3, `schema_v3.sql`): one partition per log, and
//! under it one per month of entry ids, so that retention drops a month that is wholly due with
//! one `DROP TABLE` instead of deleting its rows one by one.
//!
//! Partitions are made outside any append transaction (making one locks its parent), and always
//! with a short lock timeout, so that a long read holding the table never stalls the writer or
//! queues every other session behind the DDL. A log's own partition, with its `kept` and default
//! partitions, is made when a writer opens the log. Month partitions are made ahead (this month
//! and the next) and on demand, before an append whose ids fall in a month that has none. When a
//! month's partition cannot be made (the lock timed out), the append still goes in: its rows land
//! in the log's default partition, and making the month's partition later moves them into it in
//! the same transaction (the default partition must hold no row of a partition being attached).
//! An append therefore never fails, nor loses an entry, because a partition is missing.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use postgres::error::SqlState;
use postgres::{Client, GenericClient};
use sha2::{Digest, Sha256};

use super::rows::{param_refs, Param};
use super::tree::{self, LogDb};
use crate::entry::AuditEntry;
use crate::log::merkle::Frontier;
use crate::log::pruned::{seqs_digest, PruneClaim, PRUNED_ACTION};
use crate::store::retention::PrunePlan;
use crate::store::{PruneOutcome, StoreError};

/// The schema version that partitions `entries`; its migration also moves the rows over.
pub const PARTITIONED_VERSION: usize = 3;

/// How long partition DDL waits for a table lock before giving up (and trying again later).
const LOCK_TIMEOUT: &str = "2s";

/// How long a writer keeps trying to make its log's partition at open.
const LOG_PATIENCE: Duration = Duration::from_secs(30);

/// After a month's partition could not be made, how long its entries go to the default
/// partition before the writer tries again.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Positions read per query when a month's prune hashes them for its record's claim.
const SEQ_PAGE: i64 = 50_000;

/// Crockford's base 32, in which ULIDs are written; its ASCII order is its numeric order.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Every column of `entries`, for moving rows between partitions.
fn all_columns() -> String {
    format!("gid, {}, kept", tree::COPY_ENTRY_COLUMNS)
}

/// A calendar month (UTC): the time range of one partition of a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    year: i32,
    month: u32,
}

impl Month {
    pub fn of_time(time: DateTime<Utc>) -> Month {
        Month {
            year: time.year(),
            month: time.month(),
        }
    }

    /// The month of a ULID's time; `None` for an id that is not a ULID in its canonical
    /// (upper-case) form, which belongs to the default partition.
    pub fn of_id(id: &str) -> Option<Month> {
        let millis = ulid_millis(id)?;
        let time = DateTime::<Utc>::from_timestamp_millis(i64::try_from(millis).ok()?)?;
        Some(Month::of_time(time))
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn start(self) -> Option<DateTime<Utc>> {
        Some(
            NaiveDate::from_ymd_opt(self.year, self.month, 1)?
                .and_hms_opt(0, 0, 0)?
                .and_utc(),
        )
    }

    /// The first instant after the month.
    pub fn end(self) -> Option<DateTime<Utc>> {
        self.next().start()
    }

    /// The partition bound of the month's start: the ULID text of its first millisecond, which
    /// sorts before every ULID of the month and after every earlier one. `None` before 1970 or
    /// past what ten base-32 digits hold.
    fn bound(self) -> Option<String> {
        let millis = u64::try_from(self.start()?.timestamp_millis()).ok()?;
        if millis >= 1 << 50 {
            return None;
        }
        let mut text: String = (0..10)
            .map(|digit| char::from(ALPHABET[((millis >> (45 - 5 * digit)) & 31) as usize]))
            .collect();
        text.push_str("0000000000000000");
        Some(text)
    }

    /// `2026-01`, for messages.
    pub fn label(self) -> String {
        format!("{:04}-{:02}", self.year, self.month)
    }
}

/// The millisecond time of a canonical ULID: 26 upper-case Crockford digits, the first at most
/// `7` (48 bits of time).
fn ulid_millis(id: &str) -> Option<u64> {
    let bytes = id.as_bytes();
    if bytes.len() != 26 || bytes[0] > b'7' {
        return None;
    }
    let mut millis = 0u64;
    for (position, byte) in bytes.iter().enumerate() {
        let value = ALPHABET.iter().position(|digit| digit == byte)? as u64;
        if position < 10 {
            millis = (millis << 5) | value;
        }
    }
    Some(millis)
}

/// The table names of one log's partitions: `entries_<log>_<hash>` (the log id's letters and
/// digits, then 12 hex digits of its SHA-256, so two log ids never share a name), and under it
/// `_m202601` per month, `_kept` for `audit.pruned` records, `_odd` for ids that sort after
/// every ULID, and `_other` for the default.
#[derive(Debug, Clone)]
pub struct Names {
    log: String,
}

impl Names {
    pub fn new(log_id: &str) -> Names {
        let slug: String = log_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(20)
            .collect();
        let digest = Sha256::digest(format!("auditgate entries of {log_id}").as_bytes());
        let hash: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        Names {
            log: format!("entries_{slug}_{hash}"),
        }
    }

    pub fn log(&self) -> &str {
        &self.log
    }

    pub fn kept(&self) -> String {
        format!("{}_kept", self.log)
    }

    pub fn other(&self) -> String {
        format!("{}_other", self.log)
    }

    /// Ids that sort after every ULID (a ULID's first character is at most `7`): events posted
    /// with an idempotency key (`evt_…`) and other ids an app chose. Kept out of the default
    /// partition, whose rows attaching a month must scan and move: it then holds only entries
    /// of months not made yet.
    pub fn odd(&self) -> String {
        format!("{}_odd", self.log)
    }

    pub fn month(&self, month: Month) -> String {
        format!("{}_m{:04}{:02}", self.log, month.year, month.month)
    }

    /// The month of one of this log's month partitions, from its name.
    fn month_of(&self, table: &str) -> Option<Month> {
        let digits = table.strip_prefix(&self.log)?.strip_prefix("_m")?;
        if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (year, month) = digits.split_at(digits.len() - 2);
        let month = Month {
            year: year.parse().ok()?,
            month: month.parse().ok()?,
        };
        (1..=12).contains(&month.month).then_some(month)
    }
}

/// Whether a table of that name exists.
fn exists(client: &mut impl GenericClient, table: &str) -> Result<bool, StoreError> {
    let row = client.query_one("SELECT to_regclass($1::text) IS NOT NULL", &[&table])?;
    Ok(row.try_get(0)?)
}

/// Whether DDL that failed with this error may succeed if tried again: a lock not had in time,
/// a deadlock, or another session making the same table at the same moment.
fn retryable(error: &StoreError) -> bool {
    let StoreError::Postgres(error) = error else {
        return false;
    };
    error.code().is_some_and(|code| {
        [
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::UNIQUE_VIOLATION,
            SqlState::DUPLICATE_TABLE,
        ]
        .contains(code)
    })
}

/// Whether an append may have failed because no partition of `entries` takes its log's rows
/// (the log's partition was dropped behind auditgate's back). PostgreSQL reports that as a check
/// violation; the message, which would tell it apart from another one, is in the server's
/// language (`lc_messages`), so every check violation counts: making a partition that exists is a
/// lookup, and the append is retried once.
pub fn is_missing_partition(error: &StoreError) -> bool {
    matches!(error, StoreError::Postgres(error) if error.code() == Some(&SqlState::CHECK_VIOLATION))
}

/// Makes the log's partition (with its `kept` and default partitions) unless it exists. Waits
/// out a busy table for a while, then fails: a writer cannot append to a log without it.
pub fn ensure_log(client: &mut Client, log_id: &str) -> Result<(), StoreError> {
    let names = Names::new(log_id);
    if exists(client, names.log())? {
        return Ok(());
    }
    let deadline = Instant::now() + LOG_PATIENCE;
    loop {
        let attempt = (|| -> Result<(), StoreError> {
            let mut transaction = client.transaction()?;
            transaction.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))?;
            make_log(&mut transaction, log_id, &names)?;
            transaction.commit()?;
            Ok(())
        })();
        match attempt {
            Ok(()) => return Ok(()),
            // Another writer of the same log made and attached it meanwhile.
            Err(_) if exists(client, names.log())? => return Ok(()),
            Err(error) if retryable(&error) && Instant::now() < deadline => {
                tracing::warn!(log = %log_id, %error, "making the log's partition; trying again");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(error) => {
                return Err(StoreError::Other(format!(
                    "cannot make the partition of log `{log_id}` in `entries`: {error}"
                )))
            }
        }
    }
}

fn make_log(
    client: &mut impl GenericClient,
    log_id: &str,
    names: &Names,
) -> Result<(), StoreError> {
    // A partition bound is a literal, never a parameter: the server quotes it.
    let literal: String = client
        .query_one("SELECT quote_literal($1::text)", &[&log_id])?
        .try_get(0)?;
    let log = names.log();
    // Made apart, then attached: `CREATE TABLE … PARTITION OF entries` would lock `entries`
    // against every other log's appends while it waits, where `ATTACH PARTITION` takes a lock
    // that appends do not conflict with (PostgreSQL 12 and later).
    client.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS \"{log}\" \
             (LIKE entries INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (kept, id); \
         CREATE TABLE IF NOT EXISTS \"{kept}\" PARTITION OF \"{log}\" \
             FOR VALUES FROM (1, MINVALUE) TO (1, MAXVALUE); \
         CREATE TABLE IF NOT EXISTS \"{odd}\" PARTITION OF \"{log}\" \
             FOR VALUES FROM (0, '8') TO (0, MAXVALUE); \
         CREATE TABLE IF NOT EXISTS \"{other}\" PARTITION OF \"{log}\" DEFAULT; \
         ALTER TABLE entries ATTACH PARTITION \"{log}\" FOR VALUES IN ({literal});",
        kept = names.kept(),
        odd = names.odd(),
        other = names.other(),
    ))?;
    Ok(())
}

/// Makes the log's partition for `month` unless it exists, moving into it any rows of that month
/// the default partition took meanwhile. Fails (the caller tries again later) when a lock is not
/// had within [`LOCK_TIMEOUT`].
pub fn ensure_month(client: &mut Client, log_id: &str, month: Month) -> Result<(), StoreError> {
    let names = Names::new(log_id);
    if exists(client, &names.month(month))? {
        return Ok(());
    }
    let attempt = (|| -> Result<(), StoreError> {
        let mut transaction = client.transaction()?;
        transaction.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))?;
        make_month(&mut transaction, &names, month)?;
        transaction.commit()?;
        Ok(())
    })();
    match attempt {
        // Another process made it first (its create won: the error is then a duplicate table, a
        // duplicate key in the catalog, or a lock timeout while it held the table).
        Err(_) if exists(client, &names.month(month))? => Ok(()),
        other => other,
    }
}

/// The month partition, made as a plain table, filled with the default partition's rows of its
/// range (deleted there), then attached: attaching checks that the default partition holds no
/// row of the new range, which the move guarantees.
fn make_month(
    client: &mut impl GenericClient,
    names: &Names,
    month: Month,
) -> Result<(), StoreError> {
    let (Some(low), Some(high)) = (month.bound(), month.next().bound()) else {
        return Err(StoreError::Other(format!(
            "month {} is outside the time of ULIDs",
            month.label()
        )));
    };
    let table = names.month(month);
    let (log, other, columns) = (names.log(), names.other(), all_columns());
    let range = format!("kept = 0 AND id >= '{low}' AND id < '{high}'");
    // The default partition is locked against writes first, and the move is one statement: an
    // append committing into it between a copy and a delete would otherwise be deleted uncopied.
    client.batch_execute(&format!(
        "LOCK TABLE \"{other}\" IN EXCLUSIVE MODE; \
         CREATE TABLE \"{table}\" (LIKE entries INCLUDING DEFAULTS INCLUDING CONSTRAINTS); \
         WITH moved AS (DELETE FROM \"{other}\" WHERE {range} RETURNING {columns}) \
             INSERT INTO \"{table}\" ({columns}) SELECT {columns} FROM moved; \
         ALTER TABLE \"{log}\" ATTACH PARTITION \"{table}\" \
             FOR VALUES FROM (0, '{low}') TO (0, '{high}');"
    ))?;
    Ok(())
}

/// The months that have a partition of the log, oldest first.
pub fn months(client: &mut impl GenericClient, log_id: &str) -> Result<Vec<Month>, StoreError> {
    let names = Names::new(log_id);
    let rows = client.query(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = to_regclass($1::text)",
        &[&names.log()],
    )?;
    let mut months = Vec::with_capacity(rows.len());
    for row in &rows {
        let table: String = row.try_get(0)?;
        months.extend(names.month_of(&table));
    }
    months.sort_unstable();
    Ok(months)
}

/// The months an append of `entries` writes into, with this month and the next, so that the
/// next month's partition exists before its first entry arrives.
pub fn wanted(entries: &[AuditEntry], now: DateTime<Utc>) -> BTreeSet<Month> {
    let current = Month::of_time(now);
    let mut months = BTreeSet::from([current, current.next()]);
    let mut last: Option<(&str, Month)> = None;
    for entry in entries {
        // Ids of one batch mostly share their time prefix; decode each prefix once.
        let prefix = entry.id.get(..10).unwrap_or("");
        if last.is_some_and(|(seen, _)| seen == prefix) && entry.id.len() == 26 {
            continue;
        }
        if let Some(month) = Month::of_id(&entry.id) {
            months.insert(month);
            last = Some((prefix, month));
        }
    }
    months
}

/// What a writer knows of its log's month partitions: those it made or found, and those it
/// could not make lately (tried again after [`RETRY_AFTER`]). A partition a prune elsewhere
/// dropped may still be listed: an append into it then lands in the default partition, which
/// loses nothing.
#[derive(Debug, Default)]
pub struct Known {
    made: HashSet<Month>,
    failed: HashMap<Month, Instant>,
}

impl Known {
    pub fn missing(&self, wanted: &BTreeSet<Month>, now: Instant) -> Vec<Month> {
        wanted
            .iter()
            .copied()
            .filter(|month| !self.made.contains(month))
            .filter(|month| self.failed.get(month).is_none_or(|&retry| now >= retry))
            .collect()
    }

    pub fn made(&mut self, month: Month) {
        self.failed.remove(&month);
        self.made.insert(month);
    }

    pub fn failed(&mut self, month: Month, now: Instant) {
        self.failed.insert(month, now + RETRY_AFTER);
    }

    pub fn forget(&mut self, month: Month) {
        self.made.remove(&month);
    }
}

/// What [`prune_month`] did.
#[derive(Debug)]
pub enum MonthPrune {
    /// Some row of the month is not due (or the partition is gone): nothing changed.
    NotDue,
    /// The partition was empty and is dropped; no entry was pruned, so no record.
    Emptied,
    /// Every row was due: marked, recorded and dropped with the partition.
    Pruned(PruneOutcome),
}

/// The SQL condition "this row is due under `plan`", with its parameters: the union of the
/// plan's classes, as the row-by-row prune selects them, never an `audit.pruned` record. `None`
/// when the plan prunes nothing.
fn due_condition(plan: &PrunePlan) -> Option<(String, Vec<Param>)> {
    let classes = plan.classes();
    if classes.is_empty() {
        return None;
    }
    let mut values: Vec<Param> = vec![Box::new(PRUNED_ACTION.to_string())];
    let mut arms = Vec::with_capacity(classes.len());
    for class in &classes {
        values.push(Box::new(class.cutoff));
        let mut arm = format!("(created_at < ${}", values.len());
        if let Some(prefix) = &class.prefix {
            tree::push_prefix(&mut arm, &mut values, prefix, false);
        }
        for excluded in &class.excluded {
            tree::push_prefix(&mut arm, &mut values, excluded, true);
        }
        arm.push(')');
        arms.push(arm);
    }
    Some((
        format!("(action <> $1 AND ({}))", arms.join(" OR ")),
        values,
    ))
}

/// Prunes a whole month of the log inside the caller's transaction, which holds the log's row
/// lock: when every row of the month's partition is due under `plan`, marks every position in
/// `pruned_entries` (as the row-by-row prune does: what `verify`, tiles and the proof endpoint
/// read), appends `record` claiming them, and drops the partition. The drop waits at most
/// [`LOCK_TIMEOUT`] for readers of the log; on a timeout the error rolls the whole transaction
/// back, marks and record with it.
pub fn prune_month<C: GenericClient>(
    db: &mut LogDb<'_, C>,
    frontier: &mut Frontier,
    plan: &PrunePlan,
    mut record: AuditEntry,
    month: Month,
) -> Result<MonthPrune, StoreError> {
    let table = Names::new(db.log_id).month(month);
    if !exists(db.client, &table)? {
        return Ok(MonthPrune::NotDue);
    }
    let Some((due, values)) = due_condition(plan) else {
        return Ok(MonthPrune::NotDue);
    };
    let kept: bool = db
        .client
        .query_one(
            &format!("SELECT EXISTS (SELECT 1 FROM \"{table}\" WHERE NOT {due})"),
            &param_refs(&values),
        )?
        .try_get(0)?;
    if kept {
        return Ok(MonthPrune::NotDue);
    }
    // The claim's positions, read in pages in order and hashed as they come: a month of a busy
    // log holds more positions than are worth holding in memory at once.
    let mut positions = Positions {
        db,
        table: &table,
        after: 0,
        page: Vec::new().into_iter(),
        done: false,
        error: None,
        first: None,
        last: 0,
        count: 0,
    };
    let seqs_sha256 = seqs_digest(&mut positions);
    if let Some(error) = positions.error.take() {
        return Err(error);
    }
    let (first, last, count) = (positions.first, positions.last, positions.count);
    let Some(first_seq) = first else {
        drop_month(db.client, &table)?;
        return Ok(MonthPrune::Emptied);
    };
    let record_seq = frontier.size() + 1;
    let marked = db.client.execute(
        &format!(
            "INSERT INTO pruned_entries (log_id, seq, prune_seq) \
             SELECT log_id, seq, $1 FROM \"{table}\""
        ),
        &[&tree::sql_int(record_seq)],
    )?;
    if marked != count {
        return Err(StoreError::Other(format!(
            "month {} of the log changed during its prune ({count} positions read, {marked} marked)",
            month.label()
        )));
    }
    let claim = PruneClaim {
        first_seq,
        last_seq: last,
        count,
        seqs_sha256,
    };
    claim.write_metadata(&mut record.metadata);
    tree::insert_entries(db, frontier, std::slice::from_mut(&mut record))?;
    drop_month(db.client, &table)?;
    Ok(MonthPrune::Pruned(PruneOutcome {
        record_seq,
        first_seq,
        last_seq: last,
        count,
    }))
}

fn drop_month(client: &mut impl GenericClient, table: &str) -> Result<(), StoreError> {
    client.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; DROP TABLE \"{table}\""
    ))?;
    Ok(())
}

/// The positions of a month partition in ascending order, fetched a page at a time; the first
/// error ends the iteration and is kept for the caller.
struct Positions<'d, 'a, 't, C: GenericClient> {
    db: &'d mut LogDb<'a, C>,
    table: &'t str,
    after: i64,
    page: std::vec::IntoIter<i64>,
    done: bool,
    error: Option<StoreError>,
    first: Option<u64>,
    last: u64,
    count: u64,
}

impl<C: GenericClient> Positions<'_, '_, '_, C> {
    fn fetch(&mut self) -> Result<Vec<i64>, StoreError> {
        let log_id = self.db.log_id.to_string();
        let rows = self.db.client.query(
            &format!(
                "SELECT seq FROM \"{}\" WHERE log_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                self.table
            ),
            &[&log_id, &self.after, &SEQ_PAGE],
        )?;
        rows.iter()
            .map(|row| Ok(row.try_get::<_, i64>(0)?))
            .collect()
    }
}

impl<C: GenericClient> Iterator for Positions<'_, '_, '_, C> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        loop {
            if let Some(seq) = self.page.next() {
                self.after = seq;
                let seq = u64::try_from(seq).unwrap_or(0);
                self.first.get_or_insert(seq);
                self.last = seq;
                self.count += 1;
                return Some(seq);
            }
            if self.done {
                return None;
            }
            match self.fetch() {
                Ok(page) => {
                    self.done = (page.len() as i64) < SEQ_PAGE;
                    self.page = page.into_iter();
                }
                Err(error) => {
                    self.error = Some(error);
                    self.done = true;
                    return None;
                }
            }
        }
    }
}

/// The version 3 migration's second half, in its transaction: a partition for every log the
/// version 2 table holds and for every month its ids fall in, then every row copied over with its
/// `gid` (in `gid` order), and the old table dropped.
pub fn move_v2_entries(client: &mut impl GenericClient) -> Result<(), StoreError> {
    client.batch_execute(
        "INSERT INTO logs (log_id) SELECT DISTINCT log_id FROM entries_v2 \
         ON CONFLICT (log_id) DO NOTHING",
    )?;
    let logs: Vec<String> = client
        .query("SELECT log_id FROM logs ORDER BY log_id", &[])?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    for log_id in &logs {
        let names = Names::new(log_id);
        make_log(client, log_id, &names)?;
        // The months of the log's ids, found by skipping from one month to the next along the
        // version 2 key (log_id, id): one index probe per month with entries, however many
        // entries it holds. ULIDs start with `0`..`7`.
        let mut low = "0".to_string();
        loop {
            let row = client.query_one(
                "SELECT min(id) FROM entries_v2 WHERE log_id = $1 AND id >= $2 AND id < '8'",
                &[log_id, &low],
            )?;
            let Some(id) = row.try_get::<_, Option<String>>(0)? else {
                break;
            };
            match Month::of_id(&id).and_then(|month| Some((month, month.next().bound()?))) {
                Some((month, next)) => {
                    make_month(client, &names, month)?;
                    low = next;
                }
                // Not a ULID: it stays in the default partition; look past it.
                None => low = format!("{id}\u{1}"),
            }
        }
    }
    let columns = all_columns();
    let copied = tree::COPY_ENTRY_COLUMNS;
    client.batch_execute(&format!(
        "INSERT INTO entries ({columns}) SELECT gid, {copied}, \
             CASE WHEN action = '{PRUNED_ACTION}' THEN 1 ELSE 0 END FROM entries_v2 ORDER BY gid; \
         DROP TABLE entries_v2;"
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(year: i32, month: u32, day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(year, month, day, 0, 0, 0)
            .single()
            .expect("valid")
    }

    #[test]
    fn a_month_bound_sorts_between_the_ulids_of_the_months_it_separates() {
        let month = Month::of_time(at(2026, 3, 10));
        let bound = month.bound().expect("bound");
        let next = month.next().bound().expect("bound");
        let start = month.start().expect("start").timestamp_millis() as u64;
        let first = ulid::Ulid::from_parts(start, 0).to_string();
        let last_before = ulid::Ulid::from_parts(start - 1, u128::MAX).to_string();
        let last = ulid::Ulid::from_parts(start + 31 * 86_400_000 - 1, u128::MAX).to_string();
        assert_eq!(first, bound);
        assert!(last_before < bound);
        assert!(last < next, "{last} {next}");
        assert_eq!(Month::of_id(&first), Some(month));
        assert_eq!(
            Month::of_id(&last_before),
            Some(Month::of_time(at(2026, 2, 1)))
        );
        assert_eq!(
            month.next(),
            Month::of_time(at(2026, 4, 1)),
            "March is followed by April"
        );
        assert_eq!(
            Month::of_time(at(2026, 12, 5)).next(),
            Month::of_time(at(2027, 1, 5))
        );
    }

    #[test]
    fn only_canonical_ulids_have_a_month() {
        let id = ulid::Ulid::new().to_string();
        assert!(Month::of_id(&id).is_some());
        assert_eq!(Month::of_id(&id.to_lowercase()), None);
        assert_eq!(Month::of_id("not-a-ulid"), None);
        assert_eq!(Month::of_id("8ZZZZZZZZZZZZZZZZZZZZZZZZZ"), None);
        assert_eq!(Month::of_id("01ARZ3NDEKTSV4RRFFQ69G5FAI"), None);
    }

    #[test]
    fn names_are_short_distinct_and_round_trip_their_month() {
        let long = "web-".repeat(40);
        let names = Names::new(&long);
        let month = Month::of_time(at(2026, 1, 1));
        assert!(names.month(month).len() <= 63);
        assert_eq!(names.month_of(&names.month(month)), Some(month));
        assert_eq!(names.month_of(&names.kept()), None);
        assert_ne!(Names::new("web-1").log(), Names::new("web_1").log());
        assert!(Names::new("Web-1").log().starts_with("entries_web_1_"));
    }

    #[test]
    fn a_batch_wants_its_months_and_the_next_one() {
        let now = at(2026, 5, 20);
        let mut old = AuditEntry::new("web-1", "x");
        old.id = ulid::Ulid::from_parts(at(1999, 12, 31).timestamp_millis() as u64, 7).to_string();
        let mut odd = AuditEntry::new("web-1", "y");
        odd.id = "custom-id".into();
        let wanted = wanted(&[old, odd], now);
        let expected = BTreeSet::from([
            Month::of_time(at(1999, 12, 1)),
            Month::of_time(now),
            Month::of_time(now).next(),
        ]);
        assert_eq!(wanted, expected);
    }
}
