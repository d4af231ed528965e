//! `verify`'s check of the stats counts (`schema_v6.sql`) against the rows of `entries`.
//!
//! The walk hands over its per-hour [`CountTally`]; this reads the three count tables in one
//! snapshot, sums them the same way, and recounts from the rows each hour or day whose sums
//! differ, in that same snapshot, so that only a disagreement between the counts and the rows
//! as they are now is reported (rows sealed, counted or pruned while the walk ran also move the
//! sums). Counts cover the sealed entries up to `counted_through`; a file whose counts do not yet
//! reach every sealed entry (being counted after an upgrade) is not checked, and stats do not
//! read its counts either.

use std::collections::{BTreeMap, HashMap};

use rusqlite::types::ValueRef;
use rusqlite::Connection;

use super::log::counts_through;
use super::rows::{self, ACTOR_KEY, DAY, HOUR};
use crate::store::count_tally::{CountTally, Tally, DAY_KEY, HOUR_KEY};
use crate::store::StoreError;

/// Most disagreements described; past it, the hours and days are counted in one line.
const MAX_DESCRIBED: usize = 20;

/// The count tables' sums for one hour: `entry_counts` and `actor_counts` each give a row total.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counted {
    actions: Tally,
    actors: Tally,
}

impl Counted {
    /// What the rows' tally would be if both tables agreed with it.
    fn agrees_with(&self, walked: &Tally) -> bool {
        self.actions.rows == walked.rows
            && self.actions.actions == walked.actions
            && self.actors.rows == walked.rows
            && self.actors.actors == walked.actors
    }
}

/// A count as stored: an integer, or (edited by hand) anything else, which no sum can equal.
fn stored_count(value: ValueRef<'_>) -> Option<u64> {
    match value {
        ValueRef::Integer(n) => u64::try_from(n).ok(),
        _ => None,
    }
}

/// Text as stored (a count key edited into another type reads as its SQL text).
fn text(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Text(text) | ValueRef::Blob(text) => String::from_utf8_lossy(text).into_owned(),
        ValueRef::Integer(n) => n.to_string(),
        ValueRef::Real(n) => n.to_string(),
        ValueRef::Null => String::new(),
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
    // A count that is not a positive integer cannot be summed; it marks its hour (or day) as
    // disagreeing, and the recount says how.
    let (entry_hours, mut unreadable_hours) = sum_table(
        &transaction,
        "SELECT hour, action, outcome, n FROM entry_counts ORDER BY hour",
        &|action, outcome| (hasher.action(action, outcome), 0),
    )?;
    let (actor_hours, unreadable) = sum_table(
        &transaction,
        "SELECT hour, actor, '', n FROM actor_counts ORDER BY hour",
        &|actor, _| (0, hasher.actor(actor)),
    )?;
    unreadable_hours.extend(unreadable);
    let (days, unreadable_days) = sum_table(
        &transaction,
        "SELECT day, actor, '', n FROM actor_day_counts ORDER BY day",
        &|actor, _| (0, hasher.actor(actor)),
    )?;
    let mut hours: HashMap<String, Counted> = HashMap::new();
    for (hour, actions) in entry_hours {
        hours.entry(hour).or_default().actions = actions;
    }
    for (hour, actors) in actor_hours {
        hours.entry(hour).or_default().actors = actors;
    }

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
        .chain(unreadable_hours)
        .collect();
    disagreeing_hours.sort();
    disagreeing_hours.dedup();
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
        .chain(unreadable_days)
        .collect();
    disagreeing_days.sort();
    disagreeing_days.dedup();

    let mut problems = Vec::new();
    for hour in &disagreeing_hours {
        if let Some(problem) = recount_hour(&transaction, through, hour)? {
            problems.push(problem);
        }
    }
    for day in &disagreeing_days {
        if let Some(problem) = recount_day(&transaction, through, day)? {
            problems.push(problem);
        }
    }
    if problems.len() > MAX_DESCRIBED {
        let more = problems.len() - MAX_DESCRIBED;
        problems.truncate(MAX_DESCRIBED);
        problems.push(format!(
            "and {more} more hours or days whose stats counts disagree with the entries"
        ));
    }
    Ok(Some(problems))
}

/// A count table's sums per period, from rows `(period, key, key, n)` in period order (the
/// table's key order, so no sort): consecutive rows of one period are summed before the period
/// is stored, and keys are hashed from the values as stored, without a copy. Also the periods
/// holding a count that is not a positive integer.
#[allow(clippy::type_complexity)]
fn sum_table(
    connection: &Connection,
    sql: &str,
    hash: &dyn Fn(&[u8], &[u8]) -> (u64, u64),
) -> Result<(HashMap<String, Tally>, Vec<String>), StoreError> {
    let mut sums: HashMap<String, Tally> = HashMap::new();
    let mut unreadable = Vec::new();
    let mut current: Option<(String, Tally)> = None;
    let mut select = connection.prepare(sql)?;
    let mut rows = select.query([])?;
    while let Some(row) = rows.next()? {
        let period = row.get_ref(0)?;
        if current
            .as_ref()
            .is_none_or(|(key, _)| !same_text(period, key))
        {
            if let Some((key, tally)) = current.take() {
                sums.insert(key, tally);
            }
            let key = text(period);
            let tally = sums.remove(&key).unwrap_or_default();
            current = Some((key, tally));
        }
        let Some((key, tally)) = current.as_mut() else {
            continue;
        };
        let (actions, actors) = with_bytes(row.get_ref(1)?, |first| {
            with_bytes(row.get_ref(2)?, |second| Ok(hash(first, second)))
        })?;
        match stored_count(row.get_ref(3)?) {
            Some(n) => tally.add(n, actions, actors),
            None => unreadable.push(key.clone()),
        }
    }
    if let Some((key, tally)) = current {
        sums.insert(key, tally);
    }
    Ok((sums, unreadable))
}

/// Whether a stored value reads as `text` (as [`text`] would turn it into).
fn same_text(value: ValueRef<'_>, text: &str) -> bool {
    match value {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => bytes == text.as_bytes(),
        other => self::text(other) == text,
    }
}

/// `f` over a stored value's bytes as [`text`] reads them, copied only when not text.
fn with_bytes<T>(
    value: ValueRef<'_>,
    f: impl FnOnce(&[u8]) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    match value {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => f(bytes),
        other => f(text(other).as_bytes()),
    }
}

/// The rows' keys of one hour or day (a `key` of that many characters of `created_at`), counted
/// from `entries` up to `through`, grouped by `group` (SQL over one row).
fn recount(
    connection: &Connection,
    through: i64,
    period: &str,
    key: &str,
    group: &str,
) -> Result<BTreeMap<String, u64>, StoreError> {
    // `created_at` between the key and the key followed by the highest character reads only
    // the period's rows through the time index; the period expression then keeps exactly
    // those the counts would count.
    let upper = format!("{key}\u{10FFFF}");
    let mut select = connection.prepare_cached(&format!(
        "SELECT {group}, count(*) FROM entries \
         WHERE created_at >= ?1 AND created_at < ?2 AND {period} = ?1 AND seq <= ?3 \
         GROUP BY 1"
    ))?;
    let mut rows = select.query(rusqlite::params![key, upper, through])?;
    let mut counts = BTreeMap::new();
    while let Some(row) = rows.next()? {
        let n: i64 = row.get(1)?;
        counts.insert(text(row.get_ref(0)?), n.max(0) as u64);
    }
    Ok(counts)
}

/// A count table's rows for one period, as key → count (an unreadable count as `None`).
fn stored(
    connection: &Connection,
    sql: &str,
    key: &str,
) -> Result<BTreeMap<String, Option<u64>>, StoreError> {
    let mut select = connection.prepare_cached(sql)?;
    let mut rows = select.query([key])?;
    let mut counts = BTreeMap::new();
    while let Some(row) = rows.next()? {
        counts.insert(text(row.get_ref(0)?), stored_count(row.get_ref(1)?));
    }
    Ok(counts)
}

/// The first key whose stored count differs from the recount, described.
fn first_difference(
    stored: &BTreeMap<String, Option<u64>>,
    recounted: &BTreeMap<String, u64>,
) -> Option<(String, String, u64)> {
    let keys = stored.keys().chain(recounted.keys());
    let mut keys: Vec<&String> = keys.collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().find_map(|key| {
        let held = recounted.get(key).copied().unwrap_or(0);
        let says = match stored.get(key) {
            None => Some(0),
            Some(count) => *count,
        };
        (says != Some(held)).then(|| {
            let says = says.map_or_else(
                || "a value that is not a count".to_string(),
                |n| n.to_string(),
            );
            (key.clone(), says, held)
        })
    })
}

fn recount_hour(
    connection: &Connection,
    through: i64,
    hour: &str,
) -> Result<Option<String>, StoreError> {
    let name = hour;
    // The pair as one key, the action and the outcome apart by a byte no action holds.
    let actions = recount(
        connection,
        through,
        HOUR,
        hour,
        "action || char(0) || outcome",
    )?;
    let counted = stored(
        connection,
        "SELECT action || char(0) || outcome, n FROM entry_counts WHERE hour = ?1",
        hour,
    )?;
    if let Some((key, says, held)) = first_difference(&counted, &actions) {
        let (action, outcome) = key.split_once('\0').unwrap_or((&key, ""));
        return Ok(Some(format!(
            "the stats counts of hour {name} say {says} entries of action {action} with outcome \
             {outcome}, and the entries hold {held}: stats and the viewer's charts do not match \
             the log (the counts, or the entries, were changed)"
        )));
    }
    let actors = recount(connection, through, HOUR, hour, ACTOR_KEY)?;
    let counted = stored(
        connection,
        "SELECT actor, n FROM actor_counts WHERE hour = ?1",
        hour,
    )?;
    Ok(
        first_difference(&counted, &actors).map(|(actor, says, held)| {
            format!(
                "the stats counts of hour {name} say {says} entries by actor {actor}, and the \
             entries hold {held}: stats by actor do not match the log (the counts, or the \
             entries, were changed)"
            )
        }),
    )
}

fn recount_day(
    connection: &Connection,
    through: i64,
    day: &str,
) -> Result<Option<String>, StoreError> {
    let actors = recount(connection, through, DAY, day, ACTOR_KEY)?;
    let counted = stored(
        connection,
        "SELECT actor, n FROM actor_day_counts WHERE day = ?1",
        day,
    )?;
    Ok(
        first_difference(&counted, &actors).map(|(actor, says, held)| {
            format!(
            "the stats counts of day {day} say {says} entries by actor {actor}, and the entries \
             hold {held}: stats by actor do not match the log (the counts, or the entries, were \
             changed)"
        )
        }),
    )
}
