//! Verification: recompute the log from what is stored and compare it with what was signed.
//!
//! [`LogCheck`] walks the log position by position, in pages read through a [`LogReader`], and
//! checks, for every position:
//! - the entry's canonical form hashes to the stored leaf (an edited, moved or swapped row does
//!   not), or the position is marked as pruned by an `audit.pruned` entry whose claim (range,
//!   count and digest of the pruned positions) matches the marks exactly; a position with neither
//!   a matching entry nor a valid mark is reported as deleted;
//! - every stored tree node the leaf completes equals the hash recomputed from the leaves below
//!   it (so a proof served from the stored nodes is a proof of the leaves);
//! - every signed head whose size is reached has the root recomputed from the leaves, and (given
//!   keys) a valid signature; heads are also checked for rollback (a later head never has a
//!   smaller size) and for covering more entries than the log holds (a cut or restored log).
//!
//! Recomputing each head's root from the same leaves is stronger than checking consistency
//! proofs between consecutive heads: two heads whose roots are both roots of prefixes of one leaf
//! sequence are consistent by construction, and any head that is not is named.
//!
//! The walk keeps O(log n) hashes plus a list of runs of unconfirmed positions (pruned or
//! damaged), so a million entries verify in bounded memory; and it can stop and resume, which is
//! how `GET /api/v1/verify` checks only what was appended since its last call.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use chrono::{DateTime, SecondsFormat, Utc};

use crate::entry::{format_timestamp, CountFields};
use crate::log::head::{LogVerifier, SignedTreeHead};
use crate::log::merkle::{leaf_hash, to_hex, Frontier, Hash, NodeReader};
use crate::log::pruned::{PruneClaim, PRUNED_ACTION};
use crate::store::count_tally::{CountTally, KeyHasher, RowKey};
use crate::store::{LogPage, LogReader, LogSlot, PageReader, StoreError};

/// Positions read per page.
const PAGE: usize = 4096;
/// Pages shorter than this are hashed on the walking thread.
const SMALL_PAGE: usize = 256;
/// Walks shorter than this many full pages stay on one thread, where threads would gain little.
const MIN_PAGES_ON_THREADS: u64 = 4;
/// Threads reading pages at most, whatever the machine's cores.
const MAX_PAGE_THREADS: usize = 4;
/// Problems kept in a report; more are counted but not listed.
const MAX_PROBLEMS: usize = 100;
/// Positions with a problem remembered to explain a later mismatching root; the first ones are
/// what matter, so a log changed everywhere does not grow this without bound.
const MAX_BAD_POSITIONS: usize = 10_000;

/// Rows of a page read again decoded, because their stored values did not hash to their leaves;
/// read once, from the first such row of the page to the last.
#[derive(Default)]
struct Decoded {
    slots: std::collections::VecDeque<LogSlot>,
}

impl Decoded {
    /// Position `slot.seq` decoded, reading the rows up to `last` when it was not read yet. The
    /// leaf stays the page's (leaves never change); the row and its prune mark are the new
    /// read's, which sees at least what the page saw.
    fn take<R: LogReader + ?Sized>(
        &mut self,
        reader: &R,
        slot: &LogSlot,
        last: u64,
    ) -> Result<LogSlot, StoreError> {
        let seq = slot.seq;
        while self.slots.front().is_some_and(|read| read.seq < seq) {
            self.slots.pop_front();
        }
        if self.slots.front().is_none_or(|read| read.seq != seq) {
            let count = usize::try_from(last.saturating_sub(seq) + 1).unwrap_or(usize::MAX);
            self.slots = reader.scan_log(seq, count)?.slots.into();
        }
        Ok(match self.slots.pop_front() {
            Some(read) if read.seq == seq => LogSlot {
                seq,
                leaf: slot.leaf,
                entry: read.entry,
                pruned_by: read.pruned_by,
                stored: None,
            },
            _ => LogSlot {
                seq,
                leaf: slot.leaf,
                entry: None,
                pruned_by: slot.pruned_by,
                stored: None,
            },
        })
    }
}

/// Threads reading pages by default: the machine's cores, at most [`MAX_PAGE_THREADS`]. The
/// checking thread comes on top; it is light beside them (a tenth of the walk's time).
pub fn default_page_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| cores.get().min(MAX_PAGE_THREADS))
}

/// Whether a position holds nothing at all: no row, no leaf, no prune mark.
fn is_empty_slot(slot: &LogSlot) -> bool {
    slot.leaf.is_none() && slot.entry.is_none() && slot.stored.is_none() && slot.pruned_by.is_none()
}

/// A page of the log with the leaf hash recomputed from each readable entry, slot by slot.
struct HashedPage {
    page: LogPage,
    recomputed: Vec<Option<Hash>>,
    /// Each row's keys for the stats counts' tally, when the walk keeps one.
    counted: Vec<RowKey>,
}

impl HashedPage {
    fn new(page: LogPage, counts: Option<&KeyHasher>) -> HashedPage {
        let mut bytes = Vec::with_capacity(1024);
        let mut counted = Vec::new();
        let recomputed = page
            .slots
            .iter()
            .map(|slot| match (&slot.stored, &slot.entry) {
                (Some(row), _) => {
                    let (canonical, fields) = row.canonical_bytes_and_count_fields(&mut bytes);
                    if let Some((hasher, fields)) = counts.zip(fields) {
                        counted.extend(count_key(hasher, fields));
                    }
                    canonical.then(|| leaf_hash(&bytes))
                }
                (None, Some(Ok(entry))) => {
                    if let Some(hasher) = counts {
                        let time = format_timestamp(&entry.created_at);
                        let fields = (
                            time.as_str(),
                            entry.action.as_str(),
                            entry.outcome.as_str(),
                            entry.actor_email.as_deref(),
                            entry.actor_id.as_deref(),
                        );
                        counted.extend(count_key(hasher, fields));
                    }
                    Some(leaf_hash(&entry.canonical_bytes()))
                }
                _ => None,
            })
            .collect();
        HashedPage {
            page,
            recomputed,
            counted,
        }
    }
}

/// What a row adds to the stats counts' tally. Every row the store holds counts, whether or not
/// it verifies: the counts were made from the rows, not from the leaves.
fn count_key(hasher: &KeyHasher, fields: CountFields<'_>) -> Option<RowKey> {
    let (created_at, action, outcome, email, id) = fields;
    hasher.row(
        created_at.as_bytes(),
        action.as_bytes(),
        outcome.as_bytes(),
        email.map(str::as_bytes),
        id.map(str::as_bytes),
    )
}

/// Where a head came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadOrigin {
    /// The store's table of heads, by id.
    Store(u64),
    /// A published heads file, by line number.
    File(u64),
    /// The head line of an export.
    Export,
}

/// A signed head to check, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadToCheck {
    pub head: SignedTreeHead,
    pub origin: HeadOrigin,
}

impl HeadToCheck {
    fn describe(&self) -> String {
        let place = match &self.origin {
            HeadOrigin::Store(id) => format!("stored head #{id}"),
            HeadOrigin::File(line) => format!("heads file line {line}"),
            HeadOrigin::Export => "the export's head".to_string(),
        };
        format!(
            "{place} (size {}, {})",
            self.head.head.size,
            self.head
                .head
                .timestamp
                .to_rfc3339_opts(SecondsFormat::Millis, true)
        )
    }
}

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The first entry the problem concerns, when it concerns entries.
    pub seq: Option<u64>,
    pub message: String,
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Positions checked: the size of the log (tree or entries, whichever is longer).
    pub size: u64,
    /// Entries whose content matched their leaf.
    pub entries: u64,
    /// Positions accepted as pruned.
    pub pruned: u64,
    /// Signed heads whose root was checked.
    pub heads: u64,
    /// Whether head signatures were checked (only with a public key).
    pub signatures_checked: bool,
    /// The most problematic first: lowest sequence number first, then problems with none.
    pub problems: Vec<Problem>,
    /// Problems found, including any not listed.
    pub problem_count: u64,
    pub checked_at: DateTime<Utc>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problem_count == 0
    }

    /// The lowest sequence number any problem names.
    pub fn first_bad_seq(&self) -> Option<u64> {
        self.problems.iter().filter_map(|problem| problem.seq).min()
    }

    /// The problem to show first: the one at the first bad sequence number, else the first.
    pub fn first_problem(&self) -> Option<&Problem> {
        self.problems.first()
    }
}

/// Runs of positions, appended in increasing order, that no entry confirmed (pruned, missing,
/// changed): the suspects when a node or a root covering them does not match.
#[derive(Debug, Clone, Default)]
struct Runs(Vec<(u64, u64)>);

impl Runs {
    fn push(&mut self, seq: u64) {
        match self.0.last_mut() {
            Some((_, end)) if *end + 1 == seq => *end = seq,
            _ => self.0.push((seq, seq)),
        }
    }

    /// The first position in `first..=last`.
    fn first_in(&self, first: u64, last: u64) -> Option<u64> {
        let index = self.0.partition_point(|(_, end)| *end < first);
        let (start, _) = *self.0.get(index)?;
        let seq = start.max(first);
        (seq <= last).then_some(seq)
    }
}

/// The resumable state of one verification.
#[derive(Debug, Clone)]
pub struct LogCheck {
    keys: Vec<LogVerifier>,
    /// The tree rebuilt from the stored leaves checked so far.
    frontier: Frontier,
    /// Heads whose size is not reached yet, by size.
    pending_heads: BTreeMap<u64, Vec<HeadToCheck>>,
    /// The largest size among heads seen, and the head it came from (rollback check).
    largest_head: Option<(u64, DateTime<Utc>)>,
    /// The size of the last head whose root matched.
    last_good_head: u64,
    /// Prune records referenced by marks already passed: record seq -> first marked position.
    pending_records: BTreeMap<u64, u64>,
    unconfirmed: Runs,
    /// Positions a problem was reported at: the first suspects when a root does not match.
    bad: BTreeSet<u64>,
    entries: u64,
    pruned: u64,
    heads: u64,
    problems: Vec<Problem>,
    problem_count: u64,
    /// Messages already reported, so a resumed check does not repeat itself.
    reported: HashSet<String>,
    /// Set when the walk met a whole page of empty positions: the log's end was pushed far out
    /// by a stray row, and walking on would take forever for nothing.
    halted: bool,
    /// The rows' keys for the store's stats counts, tallied by a walk of the whole log
    /// ([`LogCheck::finish`] from the start) over a store that keeps such counts.
    tally: Option<CountTally>,
    /// Threads reading and hashing pages at once, where the store offers page readers
    /// ([`LogCheck::with_page_threads`]); below 2, the walk reads on one thread.
    page_threads: usize,
}

impl LogCheck {
    /// A check from the start of the log. With no `keys`, signatures are not checked (roots
    /// still are).
    pub fn new(keys: Vec<LogVerifier>) -> LogCheck {
        LogCheck {
            keys,
            frontier: Frontier::new(),
            pending_heads: BTreeMap::new(),
            largest_head: None,
            last_good_head: 0,
            pending_records: BTreeMap::new(),
            unconfirmed: Runs::default(),
            bad: BTreeSet::new(),
            entries: 0,
            pruned: 0,
            heads: 0,
            problems: Vec::new(),
            problem_count: 0,
            reported: HashSet::new(),
            halted: false,
            tally: None,
            page_threads: default_page_threads(),
        }
    }

    /// The check reading and hashing pages on `threads` threads at once where the store allows
    /// it (by default, the machine's cores, at most four); 0 or 1 reads on one thread.
    pub fn with_page_threads(mut self, threads: usize) -> LogCheck {
        self.page_threads = threads;
        self
    }

    /// Positions checked so far.
    pub fn position(&self) -> u64 {
        self.frontier.size()
    }

    fn problem(&mut self, seq: Option<u64>, message: String) {
        if !self.reported.insert(message.clone()) {
            return;
        }
        if let Some(seq) = seq {
            if self.bad.len() < MAX_BAD_POSITIONS {
                self.bad.insert(seq);
            }
        }
        self.problem_count += 1;
        self.problems.push(Problem { seq, message });
        // Lowest sequence number first; problems about no entry after those about entries.
        self.problems
            .sort_by_key(|problem| (problem.seq.is_none(), problem.seq));
        self.problems.truncate(MAX_PROBLEMS);
    }

    /// Adds heads to check: signatures now, roots when the walk reaches their size (or now,
    /// from the stored nodes already checked, for a size already passed).
    pub fn add_heads<R: LogReader + ?Sized>(
        &mut self,
        reader: &R,
        mut heads: Vec<HeadToCheck>,
    ) -> Result<(), StoreError> {
        heads.sort_by_key(|head| (head.head.head.timestamp, head.head.head.size));
        for head in heads {
            self.check_signature(&head);
            let size = head.head.head.size;
            let timestamp = head.head.head.timestamp;
            if let Some((largest, at)) = self.largest_head {
                if size < largest && timestamp >= at {
                    self.problem(
                        Some(size.saturating_add(1)),
                        format!(
                            "{} is smaller than the head of size {largest} signed before it: \
                             the log was rolled back",
                            head.describe()
                        ),
                    );
                }
            }
            if self.largest_head.is_none_or(|(largest, _)| size > largest) {
                self.largest_head = Some((size, timestamp));
            }
            if size <= self.position() {
                let root = reader.root_at(size)?;
                self.check_root(&head, &root);
            } else {
                self.pending_heads.entry(size).or_default().push(head);
            }
        }
        Ok(())
    }

    fn check_signature(&mut self, head: &HeadToCheck) {
        if self.keys.is_empty() {
            return;
        }
        let mut last_error = None;
        for key in &self.keys {
            match key.verify(&head.head) {
                Ok(()) => return,
                Err(error) => last_error = Some(error),
            }
        }
        let reason = last_error
            .map(|error| error.to_string())
            .unwrap_or_default();
        self.problem(
            None,
            format!(
                "{} is not validly signed: {reason} (forged or altered)",
                head.describe()
            ),
        );
    }

    fn check_root(&mut self, head: &HeadToCheck, root: &[u8; 32]) {
        self.heads += 1;
        let size = head.head.head.size;
        if *root == head.head.head.root_hash {
            self.last_good_head = self.last_good_head.max(size);
            return;
        }
        // Somewhere after the last head that matched: a position already found bad explains it
        // best, then the first position no entry confirmed, else the first after that head.
        let from = self.last_good_head.min(size) + 1;
        let suspect = self
            .bad
            .range(from..=size)
            .next()
            .copied()
            .or_else(|| self.unconfirmed.first_in(from, size))
            .unwrap_or(from);
        self.problem(
            Some(suspect),
            format!(
                "{} does not match the log: the root of the first {size} entries is {}, the \
                 head says {} (entries {from}..={size} were changed, or the head was)",
                head.describe(),
                to_hex(root),
                to_hex(&head.head.head.root_hash)
            ),
        );
    }

    /// Walks the log up to position `until` (or its end, if sooner).
    ///
    /// A walk of more than a few pages over a store that offers page readers
    /// ([`LogReader::page_readers`]) reads and hashes its pages on several threads, each page on
    /// the thread of its turn ([`LogCheck::advance_on_threads`]); otherwise, and from wherever
    /// that stops, one thread reads while another hashes.
    pub fn advance<R: LogReader + ?Sized>(
        &mut self,
        reader: &R,
        until: u64,
    ) -> Result<(), StoreError> {
        let next = self.position() + 1;
        let pages = until.saturating_sub(next).saturating_add(1) / PAGE as u64;
        if self.page_threads >= 2 && pages >= MIN_PAGES_ON_THREADS && !self.halted {
            // Threads only make the walk faster: a store that cannot lend page readers now is
            // walked on one thread.
            match reader.page_readers(self.page_threads) {
                Ok(readers) if readers.len() >= 2 => {
                    self.advance_on_threads(reader, readers, until)?
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "verify reads on one thread: no page readers");
                }
            }
        }
        self.advance_on_one_thread(reader, until)
    }

    /// Reads the pages from the walk's position to `until` on one thread per page reader, in
    /// turns (reader `i` reads pages `i`, `i + n`, `i + 2n`, ...), each thread hashing the pages
    /// it read; this thread checks them in log order as they come. Nothing but the reading and
    /// hashing moves: each page is read in a snapshot of its own, as on one thread, and checked
    /// as there. Stops where a page is not the full range asked for (the log ended or changed
    /// under the walk), leaving the rest to the walk on one thread, which reads on from the last
    /// position checked.
    fn advance_on_threads<R: LogReader + ?Sized>(
        &mut self,
        reader: &R,
        readers: Vec<Box<dyn PageReader + '_>>,
        until: u64,
    ) -> Result<(), StoreError> {
        let counts = self.tally.as_ref().map(|tally| tally.hasher().clone());
        let start = self.position() + 1;
        let threads = readers.len() as u64;
        let range = |page: u64| -> Option<(u64, usize)> {
            let first = page
                .checked_mul(PAGE as u64)
                .and_then(|offset| start.checked_add(offset))
                .filter(|first| *first <= until)?;
            Some((first, (until - first + 1).min(PAGE as u64) as usize))
        };
        std::thread::scope(|scope| {
            let mut turns = Vec::with_capacity(readers.len());
            for (index, pages) in readers.into_iter().enumerate() {
                let (to_check, hashed) = sync_channel::<Result<HashedPage, StoreError>>(1);
                let counts = counts.clone();
                scope.spawn(move || {
                    let mut page = index as u64;
                    while let Some((first, want)) = range(page) {
                        let read = pages
                            .scan_log_stored(first, want)
                            .map(|read| HashedPage::new(read, counts.as_ref()));
                        let failed = read.is_err();
                        if to_check.send(read).is_err() || failed {
                            break;
                        }
                        page += threads;
                    }
                });
                turns.push(hashed);
            }
            let mut page = 0u64;
            while let Some((first, want)) = range(page) {
                if self.halted {
                    break;
                }
                let hashed = turns[(page % threads) as usize].recv().map_err(|_| {
                    StoreError::Other("a thread reading the log's pages failed".into())
                })??;
                let slots = &hashed.page.slots;
                if slots.len() != want || slots.first().map(|slot| slot.seq) != Some(first) {
                    break;
                }
                if want == PAGE && slots.iter().all(is_empty_slot) {
                    self.report_empty_page(first, until);
                    break;
                }
                self.check_page(reader, &hashed)?;
                page += 1;
            }
            // Dropping the receivers ends the threads at their next page; the scope waits.
            drop(turns);
            Ok(())
        })
    }

    /// Walks to `until` on this thread, with one more hashing the pages it read: while this
    /// thread reads the next page from the store, the other computes the leaf hashes of the page
    /// just read (canonical form and SHA-256, about a third of the walk's time).
    fn advance_on_one_thread<R: LogReader + ?Sized>(
        &mut self,
        reader: &R,
        until: u64,
    ) -> Result<(), StoreError> {
        std::thread::scope(|scope| {
            // One hashing thread for the whole walk, started at the first full page; a page
            // travels to it and back through channels one page deep.
            let mut hasher: Option<(SyncSender<LogPage>, Receiver<HashedPage>)> = None;
            let counts = self.tally.as_ref().map(|tally| tally.hasher().clone());
            let mut in_flight = false;
            let mut next = self.position() + 1;
            loop {
                let read = if next <= until && !self.halted {
                    let want = (until - next + 1).min(PAGE as u64) as usize;
                    Some(reader.scan_log_stored(next, want)?)
                } else {
                    None
                };
                if in_flight {
                    in_flight = false;
                    let hashed = hasher
                        .as_ref()
                        .and_then(|(_, hashed)| hashed.recv().ok())
                        .ok_or_else(|| {
                            StoreError::Other("the thread hashing the log's entries failed".into())
                        })?;
                    self.check_page(reader, &hashed)?;
                }
                let Some(page) = read else { break };
                if page.slots.is_empty() || self.halted {
                    break;
                }
                if page.slots.len() == PAGE && page.slots.iter().all(is_empty_slot) {
                    self.report_empty_page(next, until);
                    break;
                }
                next = page.slots.last().map_or(next, |slot| slot.seq + 1);
                // A few positions (the admin API's incremental check) are hashed here rather than
                // on a thread of their own.
                if page.slots.len() < SMALL_PAGE && hasher.is_none() {
                    self.check_page(reader, &HashedPage::new(page, counts.as_ref()))?;
                    continue;
                }
                let (pages, _) = hasher.get_or_insert_with(|| {
                    let (pages, to_hash) = sync_channel::<LogPage>(1);
                    let (to_check, hashed) = sync_channel::<HashedPage>(1);
                    let counts = counts.clone();
                    scope.spawn(move || {
                        for page in to_hash {
                            if to_check
                                .send(HashedPage::new(page, counts.as_ref()))
                                .is_err()
                            {
                                break;
                            }
                        }
                    });
                    (pages, hashed)
                });
                pages.send(page).map_err(|_| {
                    StoreError::Other("the thread hashing the log's entries failed".into())
                })?;
                in_flight = true;
            }
            // Dropping the sender ends the hashing thread; the scope waits for it.
            drop(hasher);
            Ok(())
        })
    }

    /// A whole page of empty positions from `first` on: the log's end was pushed far out by a
    /// stray row or node, and the walk stops.
    fn report_empty_page(&mut self, first: u64, until: u64) {
        self.problem(
            Some(first),
            format!(
                "positions {first}..={until} are empty: a row or tree node far beyond the log \
                 was inserted (the walk stops here)"
            ),
        );
        self.halted = true;
    }

    /// Checks a page's positions in order; they must continue where the walk stands.
    fn check_page<R: LogReader + ?Sized>(
        &mut self,
        reader: &R,
        hashed: &HashedPage,
    ) -> Result<(), StoreError> {
        let HashedPage {
            page,
            recomputed,
            counted,
        } = hashed;
        if let Some(tally) = self.tally.as_mut() {
            tally.add_all(counted);
        }
        let mut decoded = Decoded::default();
        // In position order, as the slots.
        let mut findings = page.findings.iter().peekable();
        for (slot, recomputed) in page.slots.iter().zip(recomputed.iter().copied()) {
            if self.halted {
                break;
            }
            if slot.seq != self.position() + 1 {
                return Err(StoreError::Other(format!(
                    "the store returned position {} where {} was expected",
                    slot.seq,
                    self.position() + 1
                )));
            }
            // Stored values that hash to the leaf are the bytes hashed at commit, so the row is
            // that entry (and not a prune record, which comes decoded). Any other outcome is
            // decided from the decoded row, read again: a row in a form the store does not write
            // (a timestamp with an offset, say) may still be intact.
            if slot.stored.is_some() && (recomputed.is_none() || recomputed != slot.leaf) {
                let last = Self::last_to_decode(hashed, slot.seq);
                let row = decoded.take(reader, slot, last)?;
                let recomputed = match &row.entry {
                    Some(Ok(entry)) => Some(leaf_hash(&entry.canonical_bytes())),
                    _ => None,
                };
                self.check_slot(reader, &row, recomputed, &page.nodes)?;
                // The decoded entry is the one committed, but the row does not hold the values
                // the store writes for it: it was rewritten into another form of the same entry
                // (a timestamp with an offset, metadata spelt otherwise), which filters comparing
                // the stored text, such as a time window, may no longer find.
                if let Some(Ok(entry)) = &row.entry {
                    let intact = recomputed.is_some() && recomputed == slot.leaf;
                    let written = reader.stored_form(entry);
                    if intact && written.is_some() && written != slot.stored {
                        self.problem(
                            Some(slot.seq),
                            format!(
                                "entry {} was rewritten: its row decodes to the entry its leaf \
                                 hashes, but does not hold the values auditgate writes for it (a \
                                 time with an offset, metadata spelt otherwise), so filters that \
                                 compare the stored text, such as a time window, may miss it",
                                slot.seq
                            ),
                        );
                    }
                }
            } else {
                self.check_slot(reader, slot, recomputed, &page.nodes)?;
            }
            while let Some((seq, message)) = findings.next_if(|(seq, _)| *seq <= slot.seq) {
                if *seq == slot.seq {
                    self.problem(Some(*seq), message.clone());
                } else if *seq == 0 {
                    // About no position of the log (a row below its first).
                    self.problem(None, message.clone());
                }
            }
        }
        Ok(())
    }

    /// The last position of the page, from `seq` on, whose stored values do not hash to its
    /// leaf: one read decodes the rows from `seq` to it, not one read per row.
    fn last_to_decode(hashed: &HashedPage, seq: u64) -> u64 {
        hashed
            .page
            .slots
            .iter()
            .zip(hashed.recomputed.iter())
            .rev()
            .find(|(slot, recomputed)| {
                slot.stored.is_some() && (recomputed.is_none() || **recomputed != slot.leaf)
            })
            .map_or(seq, |(slot, _)| slot.seq.max(seq))
    }

    fn check_slot<R: LogReader + ?Sized>(
        &mut self,
        reader: &R,
        slot: &LogSlot,
        recomputed: Option<Hash>,
        nodes: &impl NodeReader,
    ) -> Result<(), StoreError> {
        let seq = slot.seq;
        let leaf = match (slot.leaf, recomputed) {
            (Some(stored), _) => stored,
            (None, Some(recomputed)) => {
                self.problem(
                    Some(seq),
                    format!(
                        "entry {seq} is not in the Merkle tree: it was added outside auditgate, \
                         or the tree was cut short"
                    ),
                );
                recomputed
            }
            (None, None) => {
                self.problem(
                    Some(seq),
                    format!("position {seq} has neither an entry nor a leaf hash"),
                );
                [0; 32]
            }
        };
        // A row of stored values that reaches this point hashes to its leaf; its entry is not
        // decoded (and is not a prune record).
        let row = match (&slot.stored, &slot.entry) {
            (Some(_), _) => Some(Ok(None)),
            (None, Some(Ok(entry))) => Some(Ok(Some(entry))),
            (None, Some(Err(reason))) => Some(Err(reason)),
            (None, None) => None,
        };
        let confirmed = match (row, slot.pruned_by) {
            (Some(Ok(entry)), pruned_by) => {
                let matches = recomputed == Some(leaf);
                if !matches && slot.leaf.is_some() {
                    self.problem(
                        Some(seq),
                        format!(
                            "entry {seq} was changed: its content no longer hashes to its leaf \
                             (an edited field, or rows moved or swapped)"
                        ),
                    );
                }
                if pruned_by.is_some() {
                    self.problem(
                        Some(seq),
                        format!("entry {seq} is marked as pruned but its row is present"),
                    );
                }
                let record = entry.filter(|entry| matches && entry.action == PRUNED_ACTION);
                if let Some(entry) = record {
                    self.check_prune_record(reader, seq, entry)?;
                } else if let Some(first_marked) = self.pending_records.remove(&seq) {
                    self.problem(
                        Some(first_marked),
                        format!(
                            "entry {first_marked} is marked as pruned by entry {seq}, which is \
                             not a prune record"
                        ),
                    );
                }
                if matches {
                    self.entries += 1;
                }
                matches && pruned_by.is_none()
            }
            (Some(Err(reason)), _) => {
                self.problem(
                    Some(seq),
                    format!("entry {seq} cannot be read ({reason}): the row was changed"),
                );
                false
            }
            (None, Some(record)) => {
                if record <= seq {
                    self.problem(
                        Some(seq),
                        format!(
                            "entry {seq} is marked as pruned by entry {record}, which comes \
                             before it"
                        ),
                    );
                } else {
                    self.pending_records.entry(record).or_insert(seq);
                }
                self.pruned += 1;
                false
            }
            (None, None) => {
                // A position without a leaf was reported above already.
                if slot.leaf.is_some() {
                    self.problem(
                        Some(seq),
                        format!("entry {seq} is missing: its row was deleted"),
                    );
                }
                false
            }
        };
        if !confirmed {
            self.unconfirmed.push(seq);
        }

        let completed = self.frontier.append(leaf);
        // Levels the store recomputes rather than keeps have no stored hash to compare; the
        // kept level above them covers the same leaves.
        let kept = completed
            .into_iter()
            .skip(1)
            .filter(|(level, ..)| reader.keeps_node_level(*level));
        for (level, index, hash) in kept {
            let first = (index << level) + 1;
            let last = (index + 1) << level;
            let problem = match nodes.node(level, index) {
                Ok(stored) if stored == hash => None,
                Ok(_) => Some("does not match the hashes below it"),
                Err(_) => Some("is missing"),
            };
            if let Some(what) = problem {
                let suspect = self
                    .bad
                    .range(first..=last)
                    .next()
                    .copied()
                    .or_else(|| self.unconfirmed.first_in(first, last))
                    .unwrap_or(first);
                self.problem(
                    Some(suspect),
                    format!(
                        "the tree node over entries {first}..={last} (level {level}) {what}: a \
                         stored hash was changed"
                    ),
                );
            }
        }

        let size = self.position();
        if let Some(heads) = self.pending_heads.remove(&size) {
            let root = self.frontier.root();
            for head in heads {
                self.check_root(&head, &root);
            }
        }
        Ok(())
    }

    fn check_prune_record<R: LogReader + ?Sized>(
        &mut self,
        reader: &R,
        seq: u64,
        entry: &crate::entry::AuditEntry,
    ) -> Result<(), StoreError> {
        self.pending_records.remove(&seq);
        let marked = reader.pruned_by(seq)?;
        match PruneClaim::from_entry(entry) {
            Ok(claim) if claim.matches(&marked) => {}
            Ok(claim) => {
                // A mark outside the claimed range is the likeliest forgery; inside it, the
                // digest cannot say which one.
                let suspect = marked
                    .iter()
                    .copied()
                    .find(|marked| *marked < claim.first_seq || *marked > claim.last_seq)
                    .or_else(|| marked.first().copied())
                    .unwrap_or(claim.first_seq)
                    .min(seq);
                self.problem(
                    Some(suspect),
                    format!(
                        "prune record {seq} pruned {} entries in {}..={}, but {} positions are \
                         marked as pruned by it: rows were deleted and passed off as pruned, or \
                         marks were changed",
                        claim.count,
                        claim.first_seq,
                        claim.last_seq,
                        marked.len()
                    ),
                );
            }
            Err(reason) => self.problem(
                Some(seq),
                format!("prune record {seq} is malformed: {reason}"),
            ),
        }
        Ok(())
    }

    /// Walks to the end of the log and reports. Heads beyond the end, and marks naming prune
    /// records that do not exist, are reported here: only at the end is it certain that the log
    /// will not reach them.
    pub fn finish<R: LogReader + ?Sized>(
        &mut self,
        reader: &R,
    ) -> Result<VerifyReport, StoreError> {
        let end = reader.tree_size()?.max(reader.max_entry_seq()?);
        self.tally_counts(reader);
        self.advance(reader, end)?;
        self.report_beyond_end();
        self.check_counts(reader)?;
        Ok(self.report())
    }

    /// From here on, tallies the rows the walk reads for the store's stats counts, when the
    /// store keeps them and the walk is at the start of the log (only a walk of every row can be
    /// compared with counts of every row); [`LogCheck::check_counts`] compares them.
    pub fn tally_counts<R: LogReader + ?Sized>(&mut self, reader: &R) {
        if self.position() == 0 && reader.keeps_counts() {
            self.tally = Some(CountTally::new());
        }
    }

    /// Compares the rows tallied since [`LogCheck::tally_counts`] with the store's stats counts,
    /// once, after a walk to the end of the log; then stops tallying. Counts that cannot be read
    /// are an error (the file could not be read), unless the walk already found the log changed:
    /// then they are one more finding, so that they do not hide the walk's.
    pub fn check_counts<R: LogReader + ?Sized>(&mut self, reader: &R) -> Result<(), StoreError> {
        let Some(tally) = self.tally.take().filter(|_| !self.halted) else {
            return Ok(());
        };
        match reader.count_problems(&tally) {
            Ok(problems) => {
                for message in problems.unwrap_or_default() {
                    self.problem(None, message);
                }
            }
            Err(error) if self.problem_count > 0 => self.problem(
                None,
                format!("the stats counts could not be read to check them: {error}"),
            ),
            Err(error) => return Err(error),
        }
        Ok(())
    }

    fn report_beyond_end(&mut self) {
        let size = self.position();
        let beyond: Vec<HeadToCheck> = self
            .pending_heads
            .range(size + 1..)
            .flat_map(|(_, heads)| heads.iter().cloned())
            .collect();
        for head in beyond {
            self.problem(
                Some(size + 1),
                format!(
                    "{} covers {} entries but the log has only {size}: entries {}..={} were \
                     removed, or the database was restored from an older copy",
                    head.describe(),
                    head.head.head.size,
                    size + 1,
                    head.head.head.size
                ),
            );
        }
        let records: Vec<(u64, u64)> = self
            .pending_records
            .range(size + 1..)
            .map(|(record, first)| (*record, *first))
            .collect();
        for (record, first) in records {
            self.problem(
                Some(first),
                format!(
                    "entry {first} is marked as pruned by entry {record}, which does not exist"
                ),
            );
        }
    }

    /// The report as of now. A resumed check (the admin API's) reports this after each
    /// advance; heads and prune records it has not reached yet are still pending, not wrong.
    pub fn report(&self) -> VerifyReport {
        VerifyReport {
            size: self.position(),
            entries: self.entries,
            pruned: self.pruned,
            heads: self.heads,
            signatures_checked: !self.keys.is_empty(),
            problems: self.problems.clone(),
            problem_count: self.problem_count,
            checked_at: Utc::now(),
        }
    }
}

/// Checks heads against a list of heads that should contain them all: every stored head must
/// be in the published file, since each head is written to the file before it is stored. One
/// that is not means the file lost lines (truncated), or publishing to it failed.
pub fn missing_from_published(stored: &[HeadToCheck], published: &[HeadToCheck]) -> Vec<Problem> {
    let key = |head: &HeadToCheck| (head.head.head.signing_bytes(), head.head.signature);
    let published: HashSet<(Vec<u8>, [u8; 64])> = published.iter().map(key).collect();
    stored
        .iter()
        .filter(|head| !published.contains(&key(head)))
        .map(|head| Problem {
            seq: None,
            message: format!(
                "{} is not in the heads file: the file was truncated or edited (or publishing \
                 to it failed)",
                head.describe()
            ),
        })
        .collect()
}

/// Checks that the log still contains the newest heads it published (`latest`: the heads of the
/// largest size in a heads file, from `place`). A log smaller than such a head, or whose tree at
/// that size has another root, is not the log that was published: a database restored from an
/// older copy, or replaced. Signing on from it would publish a second head for a size already
/// published, with another root (a fork), so the sidecar refuses to start on it. Costs one root
/// computation (O(log n) node reads) per head.
pub fn behind_published<R: LogReader + ?Sized>(
    reader: &R,
    latest: &[HeadToCheck],
    place: &str,
) -> Result<Vec<Problem>, StoreError> {
    let size = reader.tree_size()?;
    let mut problems = Vec::new();
    for head in latest {
        let published = head.head.head.size;
        if published > size {
            problems.push(Problem {
                seq: Some(size + 1),
                message: format!(
                    "{place}: {} was published, but the store holds only {size} entries: the \
                     store was rolled back (restored from an older copy); entries {}..={published} \
                     are missing",
                    head.describe(),
                    size + 1,
                ),
            });
        } else if reader.root_at(published)? != head.head.head.root_hash {
            problems.push(Problem {
                seq: None,
                message: format!(
                    "{place}: {} was published, but the store's {size} entries give another \
                     root at size {published}: the store is not the log that was published \
                     (rolled back to another copy, or forked)",
                    head.describe(),
                ),
            });
        }
    }
    Ok(problems)
}

impl LogCheck {
    /// Records problems found outside the walk (heads file checks).
    pub fn add_problems(&mut self, problems: Vec<Problem>) {
        for problem in problems {
            self.problem(problem.seq, problem.message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_find_the_first_position_in_a_range() {
        let mut runs = Runs::default();
        for seq in [3, 4, 5, 9, 12, 13] {
            runs.push(seq);
        }
        assert_eq!(runs.0, vec![(3, 5), (9, 9), (12, 13)]);
        assert_eq!(runs.first_in(1, 2), None);
        assert_eq!(runs.first_in(1, 3), Some(3));
        assert_eq!(runs.first_in(4, 20), Some(4));
        assert_eq!(runs.first_in(6, 8), None);
        assert_eq!(runs.first_in(6, 10), Some(9));
        assert_eq!(runs.first_in(14, 99), None);
    }
}
