//! What `verify`'s walk saw of the rows that the stats counts summarise, so that a store keeping
//! such counts (SQLite, `schema_v6.sql`) can tell whether they still agree with its entries.
//!
//! The counts are derived data that stats and the viewer's charts read instead of the rows: a
//! count edited by hand would show an auditor a chart the log does not hold while every entry
//! still verifies. Holding every key the walk meets would take memory in proportion to the log
//! (an hour has about as many actors as entries on a busy log), so the walk keeps, per hour, the
//! number of rows and two fingerprints: the wrapping sum of a keyed hash of each row's
//! `(action, outcome)` and of its actor key. A store computes the same sums from its count
//! tables (a count of `n` adds `n` times the key's hash). With the row totals equal and every
//! count a whole number of at least one (a store reports any other), the sums differ when the
//! multisets of keys differ, but for a chance of about 2⁻⁶⁴: the hash is keyed at random per
//! walk, so nobody editing the tables can choose changes that cancel out. A store then recounts a disagreeing
//! hour or day from its rows, in one snapshot with its counts, and reports only what that
//! recount confirms: rows appended, sealed or pruned while the walk ran move the sums too.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

/// The length of an hour key, `YYYY-MM-DDTHH`, and of a day key, `YYYY-MM-DD`: the first
/// characters of an entry's stored timestamp, as the count tables key them.
pub const HOUR_KEY: usize = 13;
pub const DAY_KEY: usize = 10;

/// An hour's (or a day's) rows as the count tables summarise them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Rows counted (for a day: its hours' rows).
    pub rows: u64,
    /// Sum of `hash(action, outcome)` over the rows.
    pub actions: u64,
    /// Sum of `hash(actor key)` over the rows.
    pub actors: u64,
}

impl Tally {
    /// Adds `n` rows of keys hashing to `actions` and `actors` (`n` may be a count read from a
    /// table). The hash sums wrap; the row total saturates, so counts too large to be true never
    /// add up to a walk's total, and with the totals equal every count is at most the walk's.
    pub fn add(&mut self, n: u64, actions: u64, actors: u64) {
        self.rows = self.rows.saturating_add(n);
        self.actions = self.actions.wrapping_add(actions.wrapping_mul(n));
        self.actors = self.actors.wrapping_add(actors.wrapping_mul(n));
    }
}

/// The keyed hash both sides use; cheap to clone into the thread that hashes a walk's pages.
#[derive(Debug, Clone)]
pub struct KeyHasher(RandomState);

impl KeyHasher {
    /// The hash of an `(action, outcome)` pair.
    pub fn action(&self, action: &[u8], outcome: &[u8]) -> u64 {
        self.0.hash_one((action, outcome))
    }

    /// The hash of an actor key as the count tables hold it.
    pub fn actor(&self, actor: &[u8]) -> u64 {
        self.0.hash_one(actor)
    }

    /// What one row adds to its hour, from the row's values: `None` when its timestamp is not
    /// in the stored form (no release writes such a row, and the walk reports it as changed).
    pub fn row(
        &self,
        created_at: &[u8],
        action: &[u8],
        outcome: &[u8],
        actor_email: Option<&[u8]>,
        actor_id: Option<&[u8]>,
    ) -> Option<RowKey> {
        if !crate::entry::is_stored_timestamp(created_at) {
            return None;
        }
        let hour = <[u8; HOUR_KEY]>::try_from(&created_at[..HOUR_KEY]).ok()?;
        Some(RowKey {
            hour,
            actions: self.action(action, outcome),
            actors: self.actor(actor_key(actor_email, actor_id)),
        })
    }
}

/// The key the actor counts (and `GET /stats?by=actor`) group a row under: its email, else its
/// id, else `(anonymous)`; an empty value counts as none. The SQL `rows::ACTOR_KEY`.
pub fn actor_key<'a>(actor_email: Option<&'a [u8]>, actor_id: Option<&'a [u8]>) -> &'a [u8] {
    actor_email
        .filter(|email| !email.is_empty())
        .or(actor_id.filter(|id| !id.is_empty()))
        .unwrap_or(b"(anonymous)")
}

/// One row's hour and hashes.
#[derive(Debug, Clone, Copy)]
pub struct RowKey {
    pub hour: [u8; HOUR_KEY],
    pub actions: u64,
    pub actors: u64,
}

/// The walk's tallies, per hour.
#[derive(Debug, Clone)]
pub struct CountTally {
    hasher: KeyHasher,
    hours: HashMap<[u8; HOUR_KEY], Tally>,
}

impl Default for CountTally {
    fn default() -> Self {
        CountTally::new()
    }
}

impl CountTally {
    /// An empty tally with a hash keyed at random.
    pub fn new() -> CountTally {
        CountTally {
            hasher: KeyHasher(RandomState::new()),
            hours: HashMap::new(),
        }
    }

    pub fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    /// Adds rows in log order: a run of rows of one hour (nearly every row follows one of its
    /// hour) is summed before it is added, one map lookup per run rather than per row.
    pub fn add_all(&mut self, rows: &[RowKey]) {
        let mut run: Option<([u8; HOUR_KEY], Tally)> = None;
        for row in rows {
            match &mut run {
                Some((hour, tally)) if *hour == row.hour => tally.add(1, row.actions, row.actors),
                _ => {
                    if let Some((hour, tally)) = run.take() {
                        self.merge(hour, &tally);
                    }
                    let mut tally = Tally::default();
                    tally.add(1, row.actions, row.actors);
                    run = Some((row.hour, tally));
                }
            }
        }
        if let Some((hour, tally)) = run {
            self.merge(hour, &tally);
        }
    }

    fn merge(&mut self, hour: [u8; HOUR_KEY], run: &Tally) {
        let sum = self.hours.entry(hour).or_default();
        sum.rows = sum.rows.saturating_add(run.rows);
        sum.actions = sum.actions.wrapping_add(run.actions);
        sum.actors = sum.actors.wrapping_add(run.actors);
    }

    /// Every hour the walk met a row of.
    pub fn hours(&self) -> &HashMap<[u8; HOUR_KEY], Tally> {
        &self.hours
    }

    /// The walk's tallies per day: the sums of its hours'.
    pub fn days(&self) -> HashMap<[u8; DAY_KEY], Tally> {
        let mut days: HashMap<[u8; DAY_KEY], Tally> = HashMap::new();
        for (hour, tally) in &self.hours {
            let mut day = [0u8; DAY_KEY];
            day.copy_from_slice(&hour[..DAY_KEY]);
            let sum = days.entry(day).or_default();
            sum.rows = sum.rows.saturating_add(tally.rows);
            sum.actions = sum.actions.wrapping_add(tally.actions);
            sum.actors = sum.actors.wrapping_add(tally.actors);
        }
        days
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_keys_in_any_grouping_give_the_same_sums_and_others_do_not() {
        let tally = CountTally::new();
        let hasher = tally.hasher();
        let (a, b) = (
            hasher.action(b"user.created", b"success"),
            hasher.action(b"x", b"y"),
        );
        let mut rows = Tally::default();
        for hash in [a, b, a] {
            rows.add(1, hash, 0);
        }
        let mut counted = Tally::default();
        counted.add(2, a, 0);
        counted.add(1, b, 0);
        assert_eq!(rows, counted);
        let mut moved = Tally::default();
        moved.add(1, a, 0);
        moved.add(2, b, 0);
        assert_ne!(rows, moved, "one count moved between two keys");
        // The key is random per tally: two walks do not share sums an editor could aim at.
        assert_ne!(CountTally::new().hasher().actor(b"u1"), hasher.actor(b"u1"));
    }

    #[test]
    fn the_actor_key_is_the_email_then_the_id_then_anonymous() {
        assert_eq!(actor_key(Some(b"a@x"), Some(b"1")), b"a@x");
        assert_eq!(actor_key(Some(b""), Some(b"1")), b"1");
        assert_eq!(actor_key(None, Some(b"")), b"(anonymous)");
        assert_eq!(actor_key(None, None), b"(anonymous)");
    }
}
