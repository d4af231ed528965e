//! `verify`'s check of the stats counts (`schema_v6.sql`) against the rows of `entries`.
//!
//! The walk hands over its per-hour [`CountTally`] of every row it read, sealed or not. This
//! reads the three count tables in one snapshot and sums them the same way, adds the snapshot's
//! unsealed rows (which the walk read and the counts never hold), and recounts from the sealed
//! rows, in that same snapshot, each hour or day whose sums differ, so that only a disagreement
//! between the counts and the rows as they are now is reported (rows sealed, counted or pruned
//! while the walk ran move the sums too). A count row no seal writes (a key that is not UTF-8
//! text, a count that is not a whole number of at least one) is reported as it is met. Counts cover the sealed entries up to `counted_through`; a file whose counts do
//! not yet reach every sealed entry (being counted after an upgrade) is not checked, and stats do
//! not read its counts either.

use std::collections::{BTreeMap, HashMap, HashSet};

use rusqlite::types::ValueRef;
use rusqlite::Connection;

use super::log::counts_through;
use super::rows::{self, ACTOR_KEY, DAY, HOUR, RECENT};
use crate::store::count_tally::{CountTally, KeyHasher, Tally, DAY_KEY, HOUR_KEY};
use crate::store::StoreError;

/// Most disagreements described; the rest are counted in one line. Every disagreeing period is
/// recounted, whatever their number: only a confirmed disagreement is reported.
const MAX_DESCRIBED: usize = 50;
/// Most malformed count rows described; the rest are counted in one line.
const MAX_MALFORMED: usize = 5;

/// The count tables' sums for one hour: `entry_counts` and `actor_counts` each give a row total.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counted {
    actions: Tally,
    actors: Tally,
}

impl Counted {
    /// Whether both tables hold exactly the keys of the rows `walked` tallies.
    fn agrees_with(&self, walked: &Tally) -> bool {
        self.actions.rows == walked.rows
            && self.actions.actions == walked.actions
            && self.actors.rows == walked.rows
            && self.actors.actors == walked.actors
    }
}

/// Count rows no seal writes (a key that is not UTF-8 text, a count that is not a whole number
/// of at least one).
#[derive(Debug, Default)]
struct Malformed {
    described: Vec<String>,
    total: u64,
}

impl Malformed {
    fn add(&mut self, describe: impl FnOnce() -> String) {
        self.total += 1;
        if self.described.len() < MAX_MALFORMED {
            self.described.push(describe());
        }
    }

    fn into_problems(self) -> Vec<String> {
        let mut problems = self.described;
        let more = self.total - problems.len() as u64;
        if more > 0 {
            problems.push(format!(
                "and {more} more rows of the stats counts that no seal writes"
            ));
        }
        problems
    }
}

/// A value as the count tables' text, escaped for a terminal (a key is whatever was audited).
fn shown(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Text(text) => format!("{:?}", String::from_utf8_lossy(text)),
        ValueRef::Blob(bytes) => format!("a blob of {} bytes", bytes.len()),
        ValueRef::Integer(n) => format!("the number {n}"),
        ValueRef::Real(n) => format!("the number {n}"),
        ValueRef::Null => "NULL".to_string(),
    }
}

/// The disagreements between the counts and the rows the walk tallied, each confirmed by a
/// recount; `None` when the file keeps no counts, or they do not yet cover every sealed entry.
pub fn count_problems(
    connection: &Connection,
    walked: &CountTally,
) -> Result<Option<Vec<String>>, StoreError> {
    if !rows::has_table(connection, "counted_through")? {
        return Ok(None);
    }
    let transaction = connection.unchecked_transaction()?;
    if !rows::mark_covers_sealed(&transaction, "counted_through")? {
        return Ok(None);
    }
    let through = counts_through(&transaction)?;
    let hasher = walked.hasher();
    let mut malformed = Malformed::default();
    let entry_hours = sum_table(
        &transaction,
        "entry_counts",
        "SELECT hour, action, outcome, n FROM entry_counts ORDER BY hour",
        &|action, outcome| (hasher.action(action, outcome), 0),
        &mut malformed,
    )?;
    let actor_hours = sum_table(
        &transaction,
        "actor_counts",
        "SELECT hour, actor, '', n FROM actor_counts ORDER BY hour",
        &|actor, _| (0, hasher.actor(actor)),
        &mut malformed,
    )?;
    let mut days = sum_table(
        &transaction,
        "actor_day_counts",
        "SELECT day, actor, '', n FROM actor_day_counts ORDER BY day",
        &|actor, _| (0, hasher.actor(actor)),
        &mut malformed,
    )?;
    let mut hours: HashMap<String, Counted> = HashMap::new();
    for (hour, actions) in entry_hours {
        hours.entry(hour).or_default().actions = actions;
    }
    for (hour, actors) in actor_hours {
        hours.entry(hour).or_default().actors = actors;
    }
    add_unsealed(&transaction, hasher, &mut hours, &mut days)?;

    // Hours and days whose sums differ from the walk's, in time order.
    let mut disagreeing_hours: Vec<String> = hours
        .iter()
        .filter(|(hour, counted)| {
            let walked = <[u8; HOUR_KEY]>::try_from(hour.as_bytes())
                .ok()
                .and_then(|hour| walked.hours().get(&hour).copied())
                .unwrap_or_default();
            !counted.agrees_with(&walked)
        })
        .map(|(hour, _)| hour.clone())
        .chain(
            walked
                .hours()
                .keys()
                .map(|hour| String::from_utf8_lossy(hour).into_owned())
                .filter(|hour| !hours.contains_key(hour)),
        )
        .collect();
    disagreeing_hours.sort();
    let walked_days = walked.days();
    let mut disagreeing_days: Vec<String> = days
        .iter()
        .filter(|(day, counted)| {
            let walked = <[u8; DAY_KEY]>::try_from(day.as_bytes())
                .ok()
                .and_then(|day| walked_days.get(&day).copied())
                .unwrap_or_default();
            counted.rows != walked.rows || counted.actors != walked.actors
        })
        .map(|(day, _)| day.clone())
        .chain(
            walked_days
                .keys()
                .map(|day| String::from_utf8_lossy(day).into_owned())
                .filter(|day| !days.contains_key(day)),
        )
        .collect();
    disagreeing_days.sort();

    let mut problems = malformed.into_problems();
    let periods = disagreeing_hours
        .iter()
        .map(|hour| (Period::Hour, hour))
        .chain(disagreeing_days.iter().map(|day| (Period::Day, day)));
    let mut confirmed = 0usize;
    for (period, key) in periods {
        for problem in recount_period(&transaction, through, period, key)? {
            confirmed += 1;
            if confirmed <= MAX_DESCRIBED {
                problems.push(problem);
            }
        }
    }
    if confirmed > MAX_DESCRIBED {
        problems.push(format!(
            "and {} more hours or days whose stats counts disagree with the entries",
            confirmed - MAX_DESCRIBED
        ));
    }
    Ok(Some(problems))
}

/// A count table's sums per period, from rows `(period, key, key, n)` in period order (the
/// table's key order, so no sort): consecutive rows of one period are summed before the period
/// is stored, and keys are hashed from the values as stored, without a copy. A row stats cannot
/// read as the seal writes it is not summed but described in `malformed`; row totals saturate
/// rather than wrap, so huge counts cannot add up to the walk's.
fn sum_table(
    connection: &Connection,
    table: &str,
    sql: &str,
    hash: &KeyHashes<'_>,
    malformed: &mut Malformed,
) -> Result<HashMap<String, Tally>, StoreError> {
    let mut sums: HashMap<String, Tally> = HashMap::new();
    let mut current: Option<(String, Tally)> = None;
    let mut select = connection.prepare(sql)?;
    let mut rows = select.query([])?;
    while let Some(row) = rows.next()? {
        let values = [row.get_ref(0)?, row.get_ref(1)?, row.get_ref(2)?];
        let count = row.get_ref(3)?;
        let (ValueRef::Text(period), ValueRef::Text(first), ValueRef::Text(second)) =
            (values[0], values[1], values[2])
        else {
            malformed.add(|| {
                let keys: Vec<String> = values.iter().map(|value| shown(*value)).collect();
                format!(
                    "{table} holds a count whose key is not text ({}), which no seal writes: \
                     stats do not match the log (the counts were changed)",
                    keys.join(", ")
                )
            });
            continue;
        };
        // A key is looked up again as text; one that is not UTF-8 would not be found.
        if [period, first, second]
            .iter()
            .any(|text| std::str::from_utf8(text).is_err())
        {
            malformed.add(|| {
                let keys: Vec<String> = values.iter().map(|value| shown(*value)).collect();
                format!(
                    "{table} holds a count whose key is not UTF-8 text ({}), which no seal \
                     writes: stats do not match the log (the counts were changed)",
                    keys.join(", ")
                )
            });
            continue;
        }
        let n = match count {
            ValueRef::Integer(n) if n >= 1 => n as u64,
            other => {
                malformed.add(|| {
                    format!(
                        "{table} holds {} as the count of {:?} {:?} {:?}, not a whole number of at \
                         least one as a seal writes: stats do not match the log (the counts were \
                         changed)",
                        shown(other),
                        String::from_utf8_lossy(period),
                        String::from_utf8_lossy(first),
                        String::from_utf8_lossy(second)
                    )
                });
                continue;
            }
        };
        if current
            .as_ref()
            .is_none_or(|(key, _)| key.as_bytes() != period)
        {
            if let Some((key, tally)) = current.take() {
                sums.insert(key, tally);
            }
            let key = String::from_utf8_lossy(period).into_owned();
            let tally = sums.remove(&key).unwrap_or_default();
            current = Some((key, tally));
        }
        if let Some((_, tally)) = current.as_mut() {
            let (actions, actors) = hash(first, second);
            tally.add(n, actions, actors);
        }
    }
    if let Some((key, tally)) = current {
        sums.insert(key, tally);
    }
    Ok(sums)
}

/// Adds the rows of `recent` (not sealed, so never counted) to the counts' side, hashed as the
/// walk hashes them: the walk read them, so counts that already held them would otherwise match.
fn add_unsealed(
    connection: &Connection,
    hasher: &KeyHasher,
    hours: &mut HashMap<String, Counted>,
    days: &mut HashMap<String, Tally>,
) -> Result<(), StoreError> {
    let mut select = connection.prepare(&format!(
        "SELECT created_at, action, outcome, actor_email, actor_id FROM {RECENT}"
    ))?;
    let mut rows = select.query([])?;
    let text = |value: ValueRef<'_>| match value {
        ValueRef::Text(text) => Some(text.to_vec()),
        _ => None,
    };
    while let Some(row) = rows.next()? {
        let (Some(created_at), Some(action), Some(outcome)) = (
            text(row.get_ref(0)?),
            text(row.get_ref(1)?),
            text(row.get_ref(2)?),
        ) else {
            continue;
        };
        let (email, id) = (text(row.get_ref(3)?), text(row.get_ref(4)?));
        let Some(key) = hasher.row(
            &created_at,
            &action,
            &outcome,
            email.as_deref(),
            id.as_deref(),
        ) else {
            continue;
        };
        let hour = String::from_utf8_lossy(&key.hour).into_owned();
        let day = hour[..DAY_KEY].to_string();
        let counted = hours.entry(hour).or_default();
        counted.actions.add(1, key.actions, 0);
        counted.actors.add(1, 0, key.actors);
        days.entry(day).or_default().add(1, 0, key.actors);
    }
    Ok(())
}

/// How a count table's two key columns hash: `(actions, actors)` as [`Tally::add`] takes them.
type KeyHashes<'a> = dyn Fn(&[u8], &[u8]) -> (u64, u64) + 'a;

#[derive(Debug, Clone, Copy)]
enum Period {
    Hour,
    Day,
}

/// What differs between one hour's (or day's) counts and its sealed rows up to `through`, read
/// in the caller's snapshot: for an hour, by action and outcome and by actor; for a day, by
/// actor.
fn recount_period(
    connection: &Connection,
    through: i64,
    period: Period,
    key: &str,
) -> Result<Vec<String>, StoreError> {
    // (the rows' grouping, its width, the table, its key columns, what a difference breaks)
    let tables: &[(&str, usize, &str, &str, &str)] = match period {
        Period::Hour => &[
            (
                "action, outcome",
                2,
                "entry_counts",
                "action, outcome",
                "stats and the viewer's charts do not match the log",
            ),
            (
                ACTOR_KEY,
                1,
                "actor_counts",
                "actor",
                "stats by actor do not match the log",
            ),
        ],
        Period::Day => &[(
            ACTOR_KEY,
            1,
            "actor_day_counts",
            "actor",
            "stats by actor do not match the log",
        )],
    };
    let (expression, column) = match period {
        Period::Hour => (HOUR, "hour"),
        Period::Day => (DAY, "day"),
    };
    let mut problems = Vec::new();
    for &(group, width, table, columns, consequence) in tables {
        let held = recount(connection, through, expression, key, group, width)?;
        let counted = stored(connection, table, column, columns, width, key)?;
        if let Some((keys, says, held)) = first_difference(&counted, &held) {
            let what = match keys.as_slice() {
                [action, outcome] => format!("action {action:?} with outcome {outcome:?}"),
                keys => format!("actor {:?}", keys.concat()),
            };
            problems.push(format!(
                "the stats counts of {column} {key:?} hold {says} entries of {what}, and the \
                 entries hold {held}: {consequence} (the counts, or the entries, were changed)"
            ));
        }
    }
    Ok(problems)
}

/// The sealed rows of one period (`key`, the first characters of `created_at` that
/// `expression` cuts) up to `through`, counted per `group` (one or two SQL expressions).
fn recount(
    connection: &Connection,
    through: i64,
    expression: &str,
    key: &str,
    group: &str,
    width: usize,
) -> Result<BTreeMap<Vec<String>, u64>, StoreError> {
    // `created_at` between the key and the key followed by the highest character reads only
    // the period's rows through the time index; the period expression then keeps exactly
    // those the counts would count. A row below position 1 is no entry of the log.
    let upper = format!("{key}\u{10FFFF}");
    let mut select = connection.prepare_cached(&format!(
        "SELECT {group}, count(*) FROM entries \
         WHERE created_at >= ?1 AND created_at < ?2 AND {expression} = ?1 \
         AND seq BETWEEN 1 AND ?3 GROUP BY {group}"
    ))?;
    let counts = keyed_counts(select.query(rusqlite::params![key, upper, through])?, width)?;
    Ok(counts)
}

/// Rows of `width` key columns and a count, as keys → count (keys equal as text add up).
fn keyed_counts(
    mut rows: rusqlite::Rows<'_>,
    width: usize,
) -> Result<BTreeMap<Vec<String>, u64>, StoreError> {
    let mut counts = BTreeMap::new();
    while let Some(row) = rows.next()? {
        let keys = (0..width)
            .map(|index| Ok(lossy_text(row.get_ref(index)?)))
            .collect::<rusqlite::Result<Vec<String>>>()?;
        let n: i64 = row.get(width)?;
        *counts.entry(keys).or_insert(0) += n.max(0) as u64;
    }
    Ok(counts)
}

/// A table's well-formed rows for one period (text keys, as stats read them; the others were
/// reported as malformed), as keys → count.
fn stored(
    connection: &Connection,
    table: &str,
    column: &str,
    columns: &str,
    width: usize,
    key: &str,
) -> Result<BTreeMap<Vec<String>, u64>, StoreError> {
    let typed: Vec<String> = columns
        .split(',')
        .map(|name| format!("typeof({}) = 'text'", name.trim()))
        .collect();
    let mut select = connection.prepare_cached(&format!(
        "SELECT {columns}, n FROM {table} WHERE {column} = ?1 AND {} \
         AND typeof(n) = 'integer' AND n >= 1",
        typed.join(" AND ")
    ))?;
    let counts = keyed_counts(select.query([key])?, width)?;
    Ok(counts)
}

fn lossy_text(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Text(text) | ValueRef::Blob(text) => String::from_utf8_lossy(text).into_owned(),
        ValueRef::Integer(n) => n.to_string(),
        ValueRef::Real(n) => n.to_string(),
        ValueRef::Null => String::new(),
    }
}

/// The first keys whose count differs from the recount: `(keys, counted, held)`.
fn first_difference(
    counted: &BTreeMap<Vec<String>, u64>,
    recounted: &BTreeMap<Vec<String>, u64>,
) -> Option<(Vec<String>, u64, u64)> {
    let keys: HashSet<&Vec<String>> = counted.keys().chain(recounted.keys()).collect();
    let mut keys: Vec<&Vec<String>> = keys.into_iter().collect();
    keys.sort();
    keys.into_iter().find_map(|keys| {
        let says = counted.get(keys).copied().unwrap_or(0);
        let held = recounted.get(keys).copied().unwrap_or(0);
        (says != held).then(|| (keys.clone(), says, held))
    })
}
