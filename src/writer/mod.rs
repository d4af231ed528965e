//! The background writer: entries in, batched group-committed appends out.
//!
//! The proxy hands entries over by pushing onto a shared queue under a short lock; the writer
//! thread is woken only when the queue goes from empty to non-empty (or fills a batch), then
//! lingers for `flush_interval` to gather more, so under load there is one wake-up per batch, not
//! per request. Back-pressure is applied before an audited request is forwarded
//! ([`WriterHandle::reserve`]), never by dropping: pushes themselves always succeed, and the queue
//! can exceed its capacity by at most the number of requests already in flight.
//!
//! Write-ahead intents ([`WriterHandle::write_ahead`]) of a SQLite store go to the intent
//! journal ([`journal`]) straight from the request's task: no hop to this thread, no SQLite
//! commit. An intent is resolved when its entry (which carries the intent's id) is committed; the
//! journal's segments are removed once everything in them is resolved. A store without a journal
//! (PostgreSQL, whose sidecar disk may not outlive it) records intents in its own table through
//! the same queue as entries, never lingered on: the writer commits every intent waiting at once
//! (group commit) and answers each request as soon as its intent is durable. Either way an intent
//! that cannot be made durable is answered with the error at once (the proxy then fails closed);
//! it is not retried while the client waits.
//!
//! A batch of entries the store refuses is retried with backoff; after a few failures it is
//! spilled to an append-only NDJSON file beside the database, fsynced, and re-imported at the next
//! start. Nothing is dropped silently: the only loss path (store and spill file both failing at
//! shutdown) is counted in `entries_lost` and logged entry by entry.

pub mod journal;
pub mod otlp;
pub mod stream;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::entry::{AuditEntry, Outcome};
use crate::metrics::WriterStats;
use crate::store::{Store, StoreError};
use crate::writer::journal::{IntentJournal, JournalOptions};
use crate::writer::stream::NdjsonStream;

enum Job {
    /// A final entry; `clears_intent` when it completes a write-ahead intent.
    Entry {
        entry: AuditEntry,
        clears_intent: bool,
    },
    /// A write-ahead intent and the request waiting for it.
    Intent {
        entry: AuditEntry,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// A write-ahead intent whose exchange turned out to record nothing.
    Withdraw { id: String },
    /// Entries whose sender waits until they are stored (the ingest API).
    Durable {
        entries: Vec<AuditEntry>,
        done: oneshot::Sender<Result<(), String>>,
    },
}

struct Queue {
    /// Oldest first; a deque, so that taking a batch off the front costs the batch, not the
    /// backlog behind it (a backlog is when the writer can least afford it).
    jobs: std::collections::VecDeque<Job>,
    /// Queued jobs someone waits on (intents and durable pushes): the writer does not linger
    /// while there are any.
    intents_waiting: usize,
    /// Queued intents alone, which a retry delay serves at once (`wait_serving_intents`).
    intents_queued: usize,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    room: tokio::sync::Notify,
    capacity: usize,
    batch_size: usize,
    linger: Duration,
    spill_path: Option<PathBuf>,
    stats: WriterStats,
    /// Jobs taken off the queue but not yet committed.
    in_flight: AtomicU64,
    /// Signalled after every committed batch, for tasks that follow the log's growth.
    committed: tokio::sync::Notify,
    /// Where committed entries are copied as NDJSON, if anywhere (only the writer thread writes).
    stream: Mutex<Option<NdjsonStream>>,
    /// Where write-ahead intents go, when the store has a journal (SQLite).
    journal: Option<IntentJournal>,
    /// The store, for the checks a write-ahead request makes before its intent is journaled.
    store: Arc<dyn Store>,
    /// When the store's files were last found in place, in microseconds since `epoch` (0:
    /// never): write-ahead requests check at most once per [`PLACE_CHECK_INTERVAL`].
    place_checked: AtomicU64,
    epoch: std::time::Instant,
}

/// How often at most write-ahead requests check that the store's files are still in place (two
/// `stat` calls each time). A file removed within this interval lets the requests of that
/// interval through, as a removal just after a check always could; their entries then fail to
/// commit and go to the spill file like every entry the store refuses.
const PLACE_CHECK_INTERVAL: Duration = Duration::from_millis(1);

/// What the proxy holds: push entries, wait for room, wait for write-ahead intents.
#[derive(Clone)]
pub struct WriterHandle {
    shared: Arc<Shared>,
}

/// The writer thread and its handle.
pub struct Writer {
    handle: WriterHandle,
    thread: Option<JoinHandle<()>>,
}

pub struct WriterOptions {
    pub capacity: usize,
    pub batch_size: usize,
    pub linger: Duration,
    /// Where refused batches go; `None` keeps retrying in memory.
    pub spill_path: Option<PathBuf>,
    /// The intent journal; `None` records write-ahead intents in the store's own table.
    pub journal: Option<JournalOptions>,
}

impl Default for WriterOptions {
    /// The `[store]` defaults, with no spill file.
    fn default() -> Self {
        WriterOptions {
            capacity: crate::store::config::DEFAULT_QUEUE_CAPACITY,
            batch_size: crate::store::config::DEFAULT_BATCH_SIZE,
            linger: crate::store::config::DEFAULT_FLUSH_INTERVAL,
            spill_path: None,
            journal: None,
        }
    }
}

impl Writer {
    pub fn start(store: Arc<dyn Store>, options: WriterOptions) -> std::io::Result<Writer> {
        let journal = options.journal.map(|journal| {
            // Numbering goes on above any segment recovery could not remove, so a new segment
            // never lands on an old one.
            let last = journal::segments(&journal.base)
                .ok()
                .and_then(|found| found.last().map(|(number, _)| *number))
                .unwrap_or(0);
            IntentJournal::new(journal, last + 1)
        });
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: std::collections::VecDeque::with_capacity(options.batch_size),
                intents_waiting: 0,
                intents_queued: 0,
                closed: false,
            }),
            wake: Condvar::new(),
            room: tokio::sync::Notify::new(),
            capacity: options.capacity,
            batch_size: options.batch_size,
            linger: options.linger,
            spill_path: options.spill_path,
            stats: WriterStats::default(),
            in_flight: AtomicU64::new(0),
            committed: tokio::sync::Notify::new(),
            stream: Mutex::new(None),
            journal,
            store: store.clone(),
            place_checked: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("auditgate-writer".into())
            .spawn(move || run(thread_shared, store))?;
        Ok(Writer {
            handle: WriterHandle { shared },
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// Stops taking entries, writes everything queued, and waits for the thread to finish.
    pub fn shutdown(mut self) {
        self.close_and_join();
    }

    fn close_and_join(&mut self) {
        if let Ok(mut queue) = self.handle.shared.queue.lock() {
            queue.closed = true;
        }
        self.handle.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.close_and_join();
    }
}

impl WriterHandle {
    /// Waits until the queue has room. Called before an audited request is forwarded, so a slow
    /// store slows clients down instead of losing entries.
    pub async fn reserve(&self) {
        loop {
            let notified = self.shared.room.notified();
            if self.depth() < self.shared.capacity {
                return;
            }
            self.shared.stats.backpressure_waits.inc();
            notified.await;
        }
    }

    /// Hands a final entry to the writer. Never fails and never blocks on the store.
    pub fn push(&self, entry: AuditEntry) {
        self.push_job(Job::Entry {
            entry,
            clears_intent: false,
        });
    }

    /// Hands over the final entry of a write-ahead exchange; its intent is cleared once the entry
    /// is in the log.
    pub fn push_completing(&self, entry: AuditEntry) {
        self.push_job(Job::Entry {
            entry,
            clears_intent: true,
        });
    }

    /// Appends entries and resolves once they are stored (committed, or spilled to the spill
    /// file, which is imported at the next start), or with the reason they could not be.
    pub async fn push_durable(&self, entries: Vec<AuditEntry>) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.push_job(Job::Durable { entries, done });
        match wait.await {
            Ok(result) => result,
            Err(_) => Err("the writer stopped".to_string()),
        }
    }

    /// Removes the intent of an exchange that ended up recording nothing.
    pub fn withdraw_intent(&self, id: String) {
        match &self.shared.journal {
            Some(journal) => journal.withdraw(&[id]),
            None => self.push_job(Job::Withdraw { id }),
        }
    }

    /// Makes an intent durable before its request is forwarded. Resolves when the intent is in
    /// the journal (or the store's intents table) as durably as the store's sync mode asks, or
    /// with the reason it could not be.
    pub async fn write_ahead(&self, intent: AuditEntry) -> Result<(), String> {
        if let Some(journal) = &self.shared.journal {
            let result = self.journal_intent(journal, &intent).await;
            match &result {
                Ok(()) => self.shared.stats.intents_written.inc(),
                Err(error) => {
                    self.shared.stats.intent_errors.inc();
                    tracing::error!(%error, "cannot record a write-ahead intent; the request is answered 503 unless configured to forward");
                }
            }
            return result;
        }
        let (done, wait) = oneshot::channel();
        self.push_job(Job::Intent {
            entry: intent,
            done,
        });
        match wait.await {
            Ok(result) => result,
            Err(_) => Err("the writer stopped".to_string()),
        }
    }

    /// The journal's side of [`Self::write_ahead`]. A store known to be failing (its last write
    /// failed, or its file is no longer at its path) refuses write-ahead requests as it did when
    /// intents went into it: the journal alone would let them through while their entries pile
    /// up outside the log.
    async fn journal_intent(
        &self,
        journal: &IntentJournal,
        intent: &AuditEntry,
    ) -> Result<(), String> {
        if self.shared.stats.failing.load(Ordering::Relaxed) {
            return Err("the last write to the store failed".to_string());
        }
        let shared = &self.shared;
        let now = u64::try_from(shared.epoch.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let last = shared.place_checked.load(Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) >= PLACE_CHECK_INTERVAL.as_micros() as u64 {
            shared
                .store
                .check_in_place()
                .map_err(|error| error.to_string())?;
            shared.place_checked.store(now, Ordering::Relaxed);
        }
        journal
            .record(intent)
            .await
            .map_err(|error| error.to_string())
    }

    /// Whether write-ahead intents can be journaled now (for /readyz): writes a record with no
    /// content. `Ok` when the store has no journal.
    pub fn check_journal(&self) -> Result<(), String> {
        match &self.shared.journal {
            Some(journal) => journal.probe().map_err(|error| error.to_string()),
            None => Ok(()),
        }
    }

    /// Write-ahead intents in the journal whose entry is not committed yet.
    pub fn pending_intents(&self) -> usize {
        self.shared
            .journal
            .as_ref()
            .map(IntentJournal::pending)
            .unwrap_or(0)
    }

    fn push_job(&self, job: Job) {
        let Ok(mut queue) = self.shared.queue.lock() else {
            self.shared.stats.entries_lost.inc();
            tracing::error!("writer queue poisoned; entry lost");
            return;
        };
        let was_idle = queue.jobs.is_empty() || queue.intents_waiting == 0;
        // Someone waits on intents and durable pushes: neither is lingered on.
        let is_intent = matches!(job, Job::Intent { .. } | Job::Durable { .. });
        if is_intent {
            queue.intents_waiting += 1;
        }
        if matches!(job, Job::Intent { .. }) {
            queue.intents_queued += 1;
        }
        let was_empty = queue.jobs.is_empty();
        queue.jobs.push_back(job);
        let full_batch = queue.jobs.len() == self.shared.batch_size;
        drop(queue);
        // An intent cuts the writer's linger short: a request is waiting on it.
        if was_empty || full_batch || (is_intent && was_idle) {
            self.shared.wake.notify_one();
        }
    }

    /// Entries waiting to be written.
    pub fn depth(&self) -> usize {
        self.shared
            .queue
            .lock()
            .map(|queue| queue.jobs.len())
            .unwrap_or(0)
    }

    pub fn stats(&self) -> &WriterStats {
        &self.shared.stats
    }

    /// Copies every entry committed from now on to `stream` (the SIEM stream), written by the
    /// writer thread right after each commit.
    pub fn attach_stream(&self, stream: NdjsonStream) {
        self.replace_stream(Some(stream));
    }

    /// Swaps the stream (a reload); `None` stops streaming. Entries committed from now on go to
    /// the new one.
    pub fn replace_stream(&self, stream: Option<NdjsonStream>) {
        match self.shared.stream.lock() {
            Ok(mut slot) => *slot = stream,
            Err(poisoned) => *poisoned.into_inner() = stream,
        }
    }

    /// Waits until every entry pushed before this call has been written (for tests and the demo).
    /// Gives up after `timeout`.
    pub async fn flushed(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.depth() == 0 && self.shared.in_flight.load(Ordering::Acquire) == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        false
    }

    /// Resolves once a batch has been committed since the last call returned (one waiter: the
    /// head signer, which counts entries towards `sign_every`).
    pub async fn committed(&self) {
        self.shared.committed.notified().await
    }
}

fn run(shared: Arc<Shared>, store: Arc<dyn Store>) {
    // `recover` imported any spill file before the writer started; one that exists now could
    // not be imported, so keep trying.
    let mut spill = SpillState {
        pending: shared.spill_path.as_ref().is_some_and(|path| path.exists()),
        next_probe: Instant::now(),
    };
    loop {
        let (jobs, closing) = {
            let Ok(mut queue) = shared.queue.lock() else {
                return;
            };
            while queue.jobs.is_empty() && !queue.closed {
                if !spill.pending {
                    queue = match shared.wake.wait(queue) {
                        Ok(queue) => queue,
                        Err(_) => return,
                    };
                    continue;
                }
                // Entries wait in the spill file: wake up in time to offer them to the store
                // again, even if no new entry comes.
                let wait = spill.next_probe.saturating_duration_since(Instant::now());
                if wait.is_zero() {
                    break;
                }
                queue = match shared.wake.wait_timeout(queue, wait) {
                    Ok((queue, _)) => queue,
                    Err(_) => return,
                };
            }
            if queue.jobs.is_empty() {
                let closed = queue.closed;
                drop(queue);
                if spill.pending {
                    drain_spill(&shared, store.as_ref(), &mut spill);
                }
                if closed {
                    return;
                }
                continue;
            }
            // Linger to let a batch gather, unless one already has, a request waits on an
            // intent, or we are closing.
            if queue.jobs.len() < shared.batch_size && queue.intents_waiting == 0 && !queue.closed {
                queue = match shared.wake.wait_timeout(queue, shared.linger) {
                    Ok((queue, _)) => queue,
                    Err(_) => return,
                };
            }
            let take = queue.jobs.len().min(shared.batch_size);
            let jobs: Vec<Job> = queue.jobs.drain(..take).collect();
            let intents_taken = jobs
                .iter()
                .filter(|job| matches!(job, Job::Intent { .. }))
                .count();
            let waiting_taken = intents_taken
                + jobs
                    .iter()
                    .filter(|job| matches!(job, Job::Durable { .. }))
                    .count();
            queue.intents_waiting = queue.intents_waiting.saturating_sub(waiting_taken);
            queue.intents_queued = queue.intents_queued.saturating_sub(intents_taken);
            shared
                .in_flight
                .fetch_add(jobs.len() as u64, Ordering::AcqRel);
            (jobs, queue.closed)
        };
        shared.room.notify_waiters();
        let count = jobs.len() as u64;
        write_jobs(&shared, store.as_ref(), jobs, closing, &mut spill);
        shared.in_flight.fetch_sub(count, Ordering::AcqRel);
    }
}

/// The writer thread's knowledge of its spill file.
struct SpillState {
    /// The file may hold entries the store has not taken back yet.
    pending: bool,
    /// While `pending`, batches go straight to the file until this moment; then the store is
    /// offered the file again (and the batch).
    next_probe: Instant,
}

/// Copies committed entries to the stream, if one is attached. A failure is counted and logged;
/// the entries are in the store whatever happens here.
fn publish(shared: &Shared, entries: &[AuditEntry]) {
    let Ok(mut slot) = shared.stream.lock() else {
        return;
    };
    let Some(stream) = slot.as_mut() else {
        return;
    };
    match stream.write_entries(entries) {
        Ok(()) => shared.stats.stream_lines.add(entries.len() as u64),
        Err(error) => {
            shared.stats.stream_errors.inc();
            tracing::error!(%error, entries = entries.len(), "cannot write entries to the NDJSON stream; they are in the store");
        }
    }
}

/// How often the store is offered the spill file back while it keeps refusing it.
const SPILL_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Offers the spill file back to the store; on success the file is gone and the writer leaves
/// spill mode, otherwise it tries again after [`SPILL_PROBE_INTERVAL`].
fn drain_spill(shared: &Shared, store: &dyn Store, spill: &mut SpillState) {
    let Some(path) = &shared.spill_path else {
        spill.pending = false;
        return;
    };
    match reimport_spill(store, path) {
        Ok(Reimported { entries, present }) => {
            spill.pending = false;
            shared
                .stats
                .entries_reimported
                .add((entries.len() + present) as u64);
            shared.stats.failing.store(false, Ordering::Relaxed);
            if !entries.is_empty() {
                tracing::info!(
                    entries = entries.len(),
                    file = %path.display(),
                    "the store is back: spilled entries re-sent"
                );
                publish(shared, &entries);
                // Completed write-ahead exchanges among them no longer need their intents.
                let ids: Vec<String> = entries.iter().map(|entry| entry.id.clone()).collect();
                if let Some(journal) = &shared.journal {
                    journal.resolve(&ids);
                } else if let Err(error) = store.clear_intents(&ids) {
                    tracing::warn!(%error, "cannot clear the intents of re-sent entries; they are cleared at the next start");
                }
                shared.committed.notify_one();
            }
        }
        Err(error) => {
            spill.next_probe = Instant::now() + SPILL_PROBE_INTERVAL;
            tracing::debug!(%error, "the store still refuses the spilled entries");
        }
    }
}

fn write_jobs(
    shared: &Shared,
    store: &dyn Store,
    jobs: Vec<Job>,
    closing: bool,
    spill: &mut SpillState,
) {
    let mut intents = Vec::new();
    let mut waiting = Vec::new();
    let mut entries = Vec::new();
    let mut completing = Vec::new();
    let mut durable_waiting = Vec::new();
    for job in jobs {
        match job {
            Job::Intent { entry, done } => {
                intents.push(entry);
                waiting.push(done);
            }
            Job::Entry {
                entry,
                clears_intent,
            } => {
                if clears_intent {
                    completing.push(entry.id.clone());
                }
                entries.push(entry);
            }
            Job::Withdraw { id } => completing.push(id),
            Job::Durable {
                entries: batch,
                done,
            } => {
                entries.extend(batch);
                durable_waiting.push(done);
            }
        }
    }
    if !intents.is_empty() {
        record_intents(shared, store, &intents, waiting);
    }
    if !entries.is_empty() {
        // Intents completed by entries of this batch go in the same transaction as the entries.
        let in_batch: std::collections::HashSet<&str> =
            entries.iter().map(|entry| entry.id.as_str()).collect();
        let (with_entries, withdrawn): (Vec<String>, Vec<String>) = completing
            .into_iter()
            .partition(|id| in_batch.contains(id.as_str()));
        completing = withdrawn;
        // With a journal nothing is deleted: the committed entry is the intent's resolution.
        let in_table: &[String] = if shared.journal.is_some() {
            &[]
        } else {
            &with_entries
        };
        let written = write_with_retry(shared, store, &mut entries, in_table, closing, spill);
        if let (Some(journal), Written::Committed) = (&shared.journal, written) {
            journal.resolve(&with_entries);
        }
        for done in durable_waiting {
            let _ = done.send(if written == Written::Lost {
                Err("the store could not take the entries".to_string())
            } else {
                Ok(())
            });
        }
    }
    if let Some(journal) = &shared.journal {
        // Withdrawals that came through the queue (none do while the journal takes them
        // directly) are resolved the same way.
        if !completing.is_empty() {
            journal.withdraw(&completing);
        }
    } else if !completing.is_empty() {
        if let Err(error) = store.clear_intents(&completing) {
            // Harmless for completed ones: at the next start, intents whose entry is in the log
            // are cleared. A withdrawn one would come back as an `unknown` entry: say so.
            tracing::warn!(%error, "cannot clear write-ahead intents; any withdrawn ones will be recorded as unknown at the next start");
        }
    }
}

/// Records a group of write-ahead intents in one commit and answers every request waiting on it.
fn record_intents(
    shared: &Shared,
    store: &dyn Store,
    intents: &[AuditEntry],
    waiting: Vec<oneshot::Sender<Result<(), String>>>,
) {
    let started = Instant::now();
    let result = store
        .record_intents(intents)
        .map_err(|error| error.to_string());
    shared
        .stats
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(()) => {
            shared.stats.intents_written.add(intents.len() as u64);
            shared.stats.failing.store(false, Ordering::Relaxed);
        }
        Err(error) => {
            shared.stats.intent_errors.add(intents.len() as u64);
            shared.stats.failing.store(true, Ordering::Relaxed);
            tracing::error!(%error, intents = intents.len(), "cannot record write-ahead intents; those requests are answered 503 unless configured to forward");
        }
    }
    for done in waiting {
        let _ = done.send(result.clone());
    }
}

/// Sleeps out a retry delay without leaving write-ahead requests waiting behind the batch being
/// retried: intents that arrive meanwhile are tried at once and answered, stored or refused, so
/// while the store cannot write (a full disk) each write-ahead request gets its 503 now rather
/// than when space returns.
fn wait_serving_intents(shared: &Shared, store: &dyn Store, delay: Duration) {
    let deadline = Instant::now() + delay;
    loop {
        let taken = {
            let Ok(mut queue) = shared.queue.lock() else {
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                return;
            };
            // Only intents are served here; durable pushes wait for the retried batch, so they
            // must not keep this loop from sleeping.
            if queue.intents_queued == 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return;
                }
                // push_job wakes the writer when an intent arrives to an idle queue.
                queue = match shared.wake.wait_timeout(queue, left) {
                    Ok((queue, _)) => queue,
                    Err(_) => return,
                };
            }
            let jobs = std::mem::take(&mut queue.jobs);
            let (intents, rest): (Vec<Job>, Vec<Job>) = jobs
                .into_iter()
                .partition(|job| matches!(job, Job::Intent { .. }));
            // What is left waiting on the writer: the durable pushes among the rest.
            queue.intents_waiting = rest
                .iter()
                .filter(|job| matches!(job, Job::Durable { .. }))
                .count();
            queue.intents_queued = 0;
            queue.jobs = rest.into();
            shared
                .in_flight
                .fetch_add(intents.len() as u64, Ordering::AcqRel);
            intents
        };
        if !taken.is_empty() {
            shared.room.notify_waiters();
            let count = taken.len() as u64;
            let mut intents = Vec::with_capacity(taken.len());
            let mut waiting = Vec::with_capacity(taken.len());
            for job in taken {
                if let Job::Intent { entry, done } = job {
                    intents.push(entry);
                    waiting.push(done);
                }
            }
            record_intents(shared, store, &intents, waiting);
            shared.in_flight.fetch_sub(count, Ordering::AcqRel);
        }
        if Instant::now() >= deadline {
            return;
        }
    }
}

/// How many failed attempts before a batch goes to the spill file.
const ATTEMPTS_BEFORE_SPILL: u32 = 3;
/// How many failed attempts at shutdown before a batch counts as lost (when it cannot be spilled).
const ATTEMPTS_AT_SHUTDOWN: u32 = 10;

/// What became of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// In the log.
    Committed,
    /// In the spill file, for the store to take back later.
    Spilled,
    /// Neither (at shutdown only), counted in `entries_lost`.
    Lost,
}

/// Appends a batch, retrying with backoff, until it is committed or spilled. While running it retries until the store or the spill
/// file takes the batch (back-pressure holds new audited requests meanwhile); at shutdown it
/// gives up after a bounded number of tries and counts the loss loudly.
///
/// Once a batch was spilled, later batches go straight to the spill file (the store is known to
/// be failing) until the next probe; the first batch the store takes again brings the spill file
/// back with it, so entries reach the store as soon as it returns, not at the next start.
fn write_with_retry(
    shared: &Shared,
    store: &dyn Store,
    batch: &mut [AuditEntry],
    completed_intents: &[String],
    closing: bool,
    spill_state: &mut SpillState,
) -> Written {
    if spill_state.pending && Instant::now() < spill_state.next_probe {
        if let Some(path) = &shared.spill_path {
            match spill(path, batch) {
                Ok(()) => {
                    shared.stats.entries_spilled.add(batch.len() as u64);
                    return Written::Spilled;
                }
                Err(error) => {
                    tracing::error!(%error, file = %path.display(), "cannot spill entries; trying the store")
                }
            }
        }
    }
    let mut delay = Duration::from_millis(50);
    let mut attempts = 0u32;
    loop {
        let started = Instant::now();
        match store.append_completing(batch, completed_intents) {
            Ok(()) => {
                shared
                    .stats
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                shared.stats.commit_size.observe(batch.len() as f64);
                shared.stats.entries_written.add(batch.len() as u64);
                shared.stats.batches.inc();
                shared.stats.failing.store(false, Ordering::Relaxed);
                shared.committed.notify_one();
                publish(shared, batch);
                if spill_state.pending {
                    drain_spill(shared, store, spill_state);
                }
                return Written::Committed;
            }
            Err(error) => {
                attempts += 1;
                shared.stats.store_errors.inc();
                shared.stats.failing.store(true, Ordering::Relaxed);
                tracing::error!(%error, entries = batch.len(), attempts, "cannot append to the store; retrying");
                if attempts >= ATTEMPTS_BEFORE_SPILL {
                    if let Some(path) = &shared.spill_path {
                        match spill(path, batch) {
                            Ok(()) => {
                                shared.stats.entries_spilled.add(batch.len() as u64);
                                spill_state.pending = true;
                                spill_state.next_probe = Instant::now() + SPILL_PROBE_INTERVAL;
                                tracing::warn!(entries = batch.len(), file = %path.display(), "entries spilled to disk; they are re-sent when the store takes writes again");
                                return Written::Spilled;
                            }
                            Err(spill_error) => {
                                tracing::error!(error = %spill_error, file = %path.display(), "cannot spill entries either; still retrying")
                            }
                        }
                    }
                }
                let closing_now = closing
                    || shared
                        .queue
                        .lock()
                        .map(|queue| queue.closed)
                        .unwrap_or(true);
                if closing_now && attempts >= ATTEMPTS_AT_SHUTDOWN {
                    shared.stats.entries_lost.add(batch.len() as u64);
                    for entry in batch.iter() {
                        tracing::error!(entry = %entry.id, request_id = entry.request_id.as_deref().unwrap_or(""), client_request_id = entry.metadata.get("_clientRequestId").and_then(serde_json::Value::as_str).unwrap_or(""), action = %entry.action, "entry lost at shutdown: neither the store nor the spill file accepted it");
                    }
                    return Written::Lost;
                }
                wait_serving_intents(shared, store, delay);
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Appends entries to the spill file, one JSON object per line, and syncs it. A write that fails
/// part way (a full disk) is cut back off, so the file never holds a torn line or half a batch
/// that is also still being retried.
fn spill(path: &Path, batch: &[AuditEntry]) -> std::io::Result<()> {
    let mut text = Vec::new();
    for entry in batch {
        serde_json::to_writer(&mut text, entry)?;
        text.push(b'\n');
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    // Spilled entries are the log's own content: private to the sidecar's user, like the
    // database.
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    let length = file.metadata()?.len();
    let written = file.write_all(&text).and_then(|()| file.sync_data());
    if written.is_err() {
        let _ = file.set_len(length);
    }
    written
}

/// Spilled entries read back per append.
const REIMPORT_CHUNK: usize = 1000;

/// What a spill file gave back to the store.
struct Reimported {
    /// The entries appended now.
    entries: Vec<AuditEntry>,
    /// Entries of the file found in the log already: appended by an earlier attempt that failed
    /// part way, or by a commit that succeeded although the store reported an error (a
    /// connection lost while the commit was acknowledged). Taken back too, just not twice.
    present: usize,
}

/// Appends the entries of a spill file that are not in the log yet, a chunk at a time, then
/// removes the file. Safe to repeat after a failure part way: entries already appended are
/// recognised by id and skipped.
fn reimport_spill(store: &dyn Store, path: &Path) -> Result<Reimported, StoreError> {
    use std::io::BufRead as _;
    let file = std::fs::File::open(path).map_err(|error| {
        StoreError::Other(format!(
            "cannot read the spill file {}: {error}",
            path.display()
        ))
    })?;
    let mut appended = Vec::new();
    let mut present_count = 0;
    let mut chunk = Vec::with_capacity(REIMPORT_CHUNK);
    let mut lines = std::io::BufReader::new(file).lines().enumerate();
    loop {
        let next = lines.next();
        if let Some((number, line)) = &next {
            let line = line.as_ref().map_err(|error| {
                StoreError::Other(format!(
                    "cannot read the spill file {}: {error}",
                    path.display()
                ))
            })?;
            if !line.trim().is_empty() {
                match serde_json::from_str::<AuditEntry>(line) {
                    Ok(mut entry) => {
                        entry.seq = 0;
                        chunk.push(entry);
                    }
                    // A torn last line (a crash mid-write) is the only way a line can be broken.
                    Err(error) => {
                        tracing::error!(line = number + 1, %error, file = %path.display(), "unreadable line in the spill file")
                    }
                }
            }
        }
        if chunk.len() >= REIMPORT_CHUNK || (next.is_none() && !chunk.is_empty()) {
            let ids: Vec<String> = chunk.iter().map(|entry| entry.id.clone()).collect();
            let present = store.existing_ids(&ids)?;
            chunk.retain(|entry| !present.contains(&entry.id));
            present_count += ids.len() - chunk.len();
            if !chunk.is_empty() {
                store.append(&mut chunk)?;
            }
            appended.append(&mut chunk);
        }
        if next.is_none() {
            break;
        }
    }
    std::fs::remove_file(path).map_err(|error| {
        StoreError::Other(format!(
            "cannot remove the spill file {}: {error}",
            path.display()
        ))
    })?;
    Ok(Reimported {
        entries: appended,
        present: present_count,
    })
}

/// Brings the store up to date at start, before traffic: imports spilled entries (skipping any
/// already in the log), and finishes the write-ahead intents a crash left behind as entries with
/// outcome `unknown`. Returns (re-imported, recovered).
pub fn recover(
    store: &dyn Store,
    spill_path: Option<&Path>,
    stats: Option<&WriterStats>,
) -> Result<(usize, usize), StoreError> {
    recover_into(store, spill_path, None, stats, &mut |_| {})
}

/// [`recover`], also reading the intent journal at `journal` (the segments' base path), and
/// handing every entry it appends to `committed` (the SIEM stream, which must see these entries
/// too).
///
/// Intents come from the store's table (a PostgreSQL store, or a SQLite file written by a release
/// before the journal) and from the journal; each whose id is not in the log becomes an entry.
/// The journal's segments are removed only after those entries are committed, so a crash part
/// way leaves them to be read again, and the ids now in the log keep them from being recorded
/// twice.
pub fn recover_into(
    store: &dyn Store,
    spill_path: Option<&Path>,
    journal: Option<&Path>,
    stats: Option<&WriterStats>,
    committed: &mut dyn FnMut(&[AuditEntry]),
) -> Result<(usize, usize), StoreError> {
    let (mut reimported, mut taken_back) = (0, 0);
    if let Some(path) = spill_path.filter(|path| path.exists()) {
        let Reimported { entries, present } = reimport_spill(store, path)?;
        committed(&entries);
        reimported = entries.len();
        taken_back = entries.len() + present;
        if reimported > 0 {
            tracing::info!(entries = reimported, "re-imported spilled entries");
        }
    }
    let mut intents = store.unfinished_intents()?;
    let from_table: Vec<String> = intents.iter().map(|intent| intent.id.clone()).collect();
    let journaled = match journal {
        Some(base) => {
            journal::read_intents(base).map_err(|error| StoreError::Other(error.to_string()))?
        }
        None => journal::JournalContents::default(),
    };
    if !journaled.intents.is_empty() {
        let mut known: std::collections::HashSet<String> = from_table.iter().cloned().collect();
        for chunk in journaled.intents.chunks(1000) {
            let ids: Vec<String> = chunk.iter().map(|intent| intent.id.clone()).collect();
            known.extend(store.existing_ids(&ids)?);
            intents.extend(
                chunk
                    .iter()
                    .filter(|intent| known.insert(intent.id.clone()))
                    .cloned(),
            );
        }
    }
    for intent in &mut intents {
        intent.seq = 0;
        intent.outcome = Outcome::Unknown;
        intent.status = None;
        intent.error = Some("auditgate stopped before the response was seen".to_string());
    }
    let recovered = intents.len();
    for chunk in intents.chunks_mut(1000) {
        store.append(chunk)?;
        committed(chunk);
    }
    if !from_table.is_empty() {
        store.clear_intents(&from_table)?;
    }
    journal::remove_segments(&journaled.segments)
        .map_err(|error| StoreError::Other(error.to_string()))?;
    if recovered > 0 {
        tracing::warn!(
            entries = recovered,
            "write-ahead requests whose response was never seen were recorded with outcome unknown"
        );
    }
    if let Some(stats) = stats {
        stats.entries_reimported.add(taken_back as u64);
        stats.intents_recovered.add(recovered as u64);
    }
    Ok((reimported, recovered))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::config::SyncMode;
    use crate::store::sqlite::SqliteStore;

    fn temp_store(label: &str) -> (PathBuf, Arc<SqliteStore>) {
        let dir =
            std::env::temp_dir().join(format!("auditgate-writer-{label}-{}", ulid::Ulid::new()));
        let store =
            Arc::new(SqliteStore::open(&dir.join("audit.db"), SyncMode::Normal).expect("opens"));
        (dir, store)
    }

    fn options(spill_path: Option<PathBuf>) -> WriterOptions {
        WriterOptions {
            capacity: 100,
            batch_size: 64,
            linger: Duration::from_millis(2),
            spill_path,
            journal: None,
        }
    }

    #[tokio::test]
    async fn every_pushed_entry_is_written_in_batches() {
        let (dir, store) = temp_store("batches");
        let writer = Writer::start(store.clone(), options(None)).expect("starts");
        let handle = writer.handle();
        for index in 0..1000 {
            handle.reserve().await;
            handle.push(AuditEntry::new("t", format!("bulk.{index}")));
        }
        writer.shutdown();
        assert_eq!(store.size().expect("size"), 1000);
        assert_eq!(handle.stats().entries_written.get(), 1000);
        assert!(handle.stats().batches.get() < 1000);
        assert_eq!(handle.stats().entries_lost.get(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn intents_are_durable_before_the_answer_and_recovered_after_a_crash() {
        let (dir, store) = temp_store("intents");
        let writer = Writer::start(store.clone(), options(None)).expect("starts");
        let handle = writer.handle();
        let finished = AuditEntry::new("t", "finished");
        let abandoned = AuditEntry::new("t", "abandoned");
        handle.write_ahead(finished.clone()).await.expect("durable");
        handle
            .write_ahead(abandoned.clone())
            .await
            .expect("durable");
        // Only the first exchange completes; the process "crashes" before the second does.
        let mut done = finished.clone();
        done.outcome = Outcome::Success;
        done.status = Some(200);
        handle.push_completing(done);
        writer.shutdown();
        assert_eq!(store.size().expect("size"), 1);

        let (reimported, recovered) = recover(store.as_ref(), None, None).expect("recovers");
        assert_eq!((reimported, recovered), (0, 1));
        let entry = store.get(&abandoned.id).expect("reads").expect("recorded");
        assert_eq!(entry.outcome, Outcome::Unknown);
        assert_eq!(entry.action, "abandoned");
        assert!(store.unfinished_intents().expect("reads").is_empty());
        // Recovery is idempotent.
        assert_eq!(
            recover(store.as_ref(), None, None).expect("recovers"),
            (0, 0)
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn write_ahead_is_answered_while_a_batch_is_being_retried() {
        let (dir, store) = temp_store("retrying");
        store
            .set_busy_timeout(Duration::from_millis(10))
            .expect("sets");
        // Another connection holding the write lock: every write fails until it goes.
        let lock = rusqlite::Connection::open(dir.join("audit.db")).expect("opens");
        lock.execute_batch("BEGIN IMMEDIATE").expect("locks");
        let writer = Writer::start(store.clone(), options(None)).expect("starts");
        let handle = writer.handle();
        handle.push(AuditEntry::new("t", "stuck"));
        while handle.stats().store_errors.get() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The writer is now retrying that batch, and keeps retrying until the lock goes, which
        // is only after the intent's answer: an intent queued behind the batch would never be
        // answered here. The bound only keeps that failure from hanging the test.
        let answer = tokio::time::timeout(
            Duration::from_secs(60),
            handle.write_ahead(AuditEntry::new("t", "intent")),
        )
        .await
        .expect("answered while the batch is retried");
        assert!(answer.is_err(), "the store cannot take it");
        assert_eq!(
            handle.stats().entries_written.get(),
            0,
            "the batch was still being retried when the intent was answered"
        );
        lock.execute_batch("ROLLBACK").expect("unlocks");
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            handle.write_ahead(AuditEntry::new("t", "intent.after")),
        )
        .await
        .expect("answered");
        assert_eq!(answer, Ok(()));
        writer.shutdown();
        assert_eq!(
            store.size().expect("size"),
            1,
            "the retried entry is written"
        );
        assert_eq!(handle.stats().entries_lost.get(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn spilled_entries_are_reimported_once() {
        let (dir, store) = temp_store("spill");
        let spill_path = dir.join("audit.db.spill.ndjson");
        let already = AuditEntry::new("t", "already.stored");
        store.append(&mut [already.clone()]).expect("appends");
        let fresh = AuditEntry::new("t", "spilled");
        spill(&spill_path, &[already, fresh.clone()]).expect("spills");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&spill_path)
                .expect("spill file")
                .permissions()
                .mode();
            assert_eq!(
                mode & 0o777,
                0o600,
                "the spill file holds entries: {mode:o}"
            );
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&spill_path)
            .and_then(|mut file| file.write_all(b"{\"torn"))
            .expect("torn line");
        let stats = WriterStats::default();
        let (reimported, _) =
            recover(store.as_ref(), Some(&spill_path), Some(&stats)).expect("recovers");
        assert_eq!(reimported, 1, "appended once");
        assert_eq!(
            stats.entries_reimported.get(),
            2,
            "both spilled entries are counted as taken back, the one already stored too"
        );
        assert_eq!(store.size().expect("size"), 2);
        assert!(store.get(&fresh.id).expect("reads").is_some());
        assert!(!spill_path.exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    fn journal_options(dir: &Path, sync: SyncMode, segment_bytes: u64) -> JournalOptions {
        JournalOptions {
            base: dir.join("audit.db.intents"),
            sync,
            segment_bytes,
            check_interval: journal::CHECK_INTERVAL,
        }
    }

    /// The path of the journal's newest segment.
    fn newest_segment(base: &Path) -> PathBuf {
        journal::segments(base)
            .expect("lists")
            .pop()
            .expect("a segment")
            .1
    }

    fn journal_bytes(dir: &Path) -> (usize, u64) {
        let found = journal::segments(&dir.join("audit.db.intents")).expect("lists");
        let bytes = found
            .iter()
            .map(|(_, path)| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
            .sum();
        (found.len(), bytes)
    }

    /// The checks write-ahead makes before forwarding run at most once per interval, not around
    /// every intent; a journal segment or a database file removed is still refused once the
    /// interval has passed (the wait below is that interval, not a guess at some other work).
    #[tokio::test]
    async fn a_removed_journal_segment_or_database_refuses_write_ahead_within_the_interval() {
        let (dir, store) = temp_store("journal-removed");
        let mut options = options(None);
        options.journal = Some(journal_options(&dir, SyncMode::Normal, 1 << 20));
        let writer = Writer::start(store.clone(), options).expect("starts");
        let handle = writer.handle();
        handle
            .write_ahead(AuditEntry::new("t", "first"))
            .await
            .expect("journaled");
        let segment = newest_segment(&dir.join("audit.db.intents"));
        std::fs::remove_file(&segment).expect("removes the segment");
        std::thread::sleep(journal::CHECK_INTERVAL + Duration::from_millis(1));
        let error = handle
            .write_ahead(AuditEntry::new("t", "into a removed segment"))
            .await
            .expect_err("a removed segment is not durable");
        assert!(error.contains("removed"), "{error}");
        // The next intent goes into a new segment.
        handle
            .write_ahead(AuditEntry::new("t", "after"))
            .await
            .expect("journaled into a new segment");
        assert_eq!(
            journal_bytes(&dir).0,
            1,
            "a new segment, the removed one gone"
        );

        std::fs::remove_file(dir.join("audit.db")).expect("removes the database");
        std::thread::sleep(PLACE_CHECK_INTERVAL + Duration::from_millis(1));
        let error = handle
            .write_ahead(AuditEntry::new("t", "into a removed database"))
            .await
            .expect_err("refused");
        assert!(error.contains("removed or replaced"), "{error}");
        writer.shutdown();
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Within the interval, records are not checked until their bytes would pass the budget: an
    /// interval longer than the test makes the budget alone decide.
    #[tokio::test]
    async fn intents_past_the_unchecked_byte_budget_are_checked_within_the_interval() {
        let (dir, store) = temp_store("journal-budget");
        let mut options = options(None);
        let mut journal = journal_options(&dir, SyncMode::Normal, 1 << 20);
        journal.check_interval = Duration::from_secs(3600);
        options.journal = Some(journal);
        let writer = Writer::start(store.clone(), options).expect("starts");
        let handle = writer.handle();
        handle
            .write_ahead(AuditEntry::new("t", "checked"))
            .await
            .expect("journaled");
        let segment = newest_segment(&dir.join("audit.db.intents"));
        std::fs::remove_file(&segment).expect("removes the segment");
        // Small, within the interval and the budget: not checked (the window the checks allow).
        handle
            .write_ahead(AuditEntry::new("t", "unchecked"))
            .await
            .expect("not checked yet");
        let mut long = AuditEntry::new("t", "past the budget");
        long.path = Some(format!("/{}", "p".repeat(20_000)));
        let error = handle.write_ahead(long).await.expect_err("checked at once");
        assert!(error.contains("removed"), "{error}");
        writer.shutdown();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn journaled_intents_are_recovered_once_and_a_torn_last_record_is_ignored() {
        let (dir, store) = temp_store("journal-torn");
        let base = dir.join("audit.db.intents");
        let mut options = options(None);
        options.journal = Some(journal_options(&dir, SyncMode::Normal, 1 << 20));
        let writer = Writer::start(store.clone(), options).expect("starts");
        let handle = writer.handle();
        let finished = AuditEntry::new("t", "finished");
        let abandoned = AuditEntry::new("t", "abandoned");
        let withdrawn = AuditEntry::new("t", "withdrawn");
        for intent in [&finished, &abandoned, &withdrawn] {
            handle.write_ahead(intent.clone()).await.expect("journaled");
        }
        assert_eq!(
            store.unfinished_intents().expect("reads").len(),
            0,
            "nothing in the table"
        );
        let mut done = finished.clone();
        done.outcome = Outcome::Success;
        handle.push_completing(done);
        handle.withdraw_intent(withdrawn.id.clone());
        writer.shutdown();
        assert_eq!(store.size().expect("size"), 1);
        // A crash mid-write leaves part of a record at the end: a whole intent's header and JSON
        // cut short, then one whose bytes are all there but zeroed (a file extended by the crash).
        let torn = newest_segment(&base);
        let cut = AuditEntry::new("t", "torn");
        let mut record = Vec::new();
        let json = serde_json::to_vec(&cut).expect("json");
        record.extend_from_slice(&((json.len() + 1) as u32).to_le_bytes());
        record.extend_from_slice(&0u32.to_le_bytes());
        record.push(1);
        record.extend_from_slice(&json[..json.len() / 2]);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&torn)
            .expect("opens");
        file.write_all(&record).expect("writes");
        drop(file);

        let (_, recovered) =
            recover_into(store.as_ref(), None, Some(&base), None, &mut |_| {}).expect("recovers");
        assert_eq!(recovered, 1, "the abandoned intent only");
        let entry = store.get(&abandoned.id).expect("reads").expect("recorded");
        assert_eq!(entry.outcome, Outcome::Unknown);
        assert_eq!(entry.action, "abandoned");
        assert_eq!(
            entry.error.as_deref(),
            Some("auditgate stopped before the response was seen")
        );
        assert!(
            store.get(&cut.id).expect("reads").is_none(),
            "the torn record is not misread"
        );
        assert!(
            store.get(&withdrawn.id).expect("reads").is_none(),
            "withdrawn stays withdrawn"
        );
        assert_eq!(store.size().expect("size"), 2);
        assert_eq!(journal_bytes(&dir).0, 0, "resolved segments are removed");
        // Idempotent.
        assert_eq!(
            recover_into(store.as_ref(), None, Some(&base), None, &mut |_| {}).expect("recovers"),
            (0, 0)
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_record_that_fails_its_checksum_ends_the_segment() {
        let (dir, store) = temp_store("journal-checksum");
        let base = dir.join("audit.db.intents");
        let journal = IntentJournal::new(journal_options(&dir, SyncMode::Normal, 1 << 20), 1);
        let kept = AuditEntry::new("t", "kept");
        let damaged = AuditEntry::new("t", "damaged");
        journal.record(&kept).await.expect("journaled");
        journal.record(&damaged).await.expect("journaled");
        drop(journal);
        // Flip one byte inside the second record's JSON: its length is intact, its checksum not.
        let path = newest_segment(&base);
        let mut bytes = std::fs::read(&path).expect("reads");
        let at = bytes.len() - 10;
        bytes[at] ^= 0x20;
        std::fs::write(&path, &bytes).expect("writes");
        let contents = journal::read_intents(&base).expect("reads");
        let actions: Vec<&str> = contents.intents.iter().map(|i| i.action.as_str()).collect();
        assert_eq!(actions, ["kept"]);
        let _ = (store, std::fs::remove_dir_all(dir));
    }

    #[tokio::test]
    async fn an_intent_committed_before_a_crash_is_not_recovered_twice() {
        let (dir, store) = temp_store("journal-committed");
        let base = dir.join("audit.db.intents");
        let journal = IntentJournal::new(journal_options(&dir, SyncMode::Normal, 1 << 20), 1);
        let intent = AuditEntry::new("t", "committed");
        journal.record(&intent).await.expect("journaled");
        // The entry commits; the crash comes before the journal learns of it.
        let mut entry = intent.clone();
        entry.outcome = Outcome::Success;
        store.append(&mut [entry]).expect("appends");
        drop(journal);
        assert_eq!(journal_bytes(&dir).0, 1, "the segment outlived the crash");
        let (_, recovered) =
            recover_into(store.as_ref(), None, Some(&base), None, &mut |_| {}).expect("recovers");
        assert_eq!(recovered, 0);
        assert_eq!(store.size().expect("size"), 1, "one entry, not two");
        assert_eq!(
            store
                .get(&intent.id)
                .expect("reads")
                .expect("stored")
                .outcome,
            Outcome::Success
        );
        assert_eq!(journal_bytes(&dir).0, 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn an_intent_row_of_an_earlier_release_is_recovered_and_the_table_stays_empty() {
        let (dir, store) = temp_store("journal-legacy");
        let base = dir.join("audit.db.intents");
        // What the release before the journal left: an intent row whose request never finished.
        let legacy = AuditEntry::new("t", "legacy");
        store
            .record_intents(std::slice::from_ref(&legacy))
            .expect("records");
        drop(store);
        let store =
            Arc::new(SqliteStore::open(&dir.join("audit.db"), SyncMode::Normal).expect("reopens"));
        let (_, recovered) =
            recover_into(store.as_ref(), None, Some(&base), None, &mut |_| {}).expect("recovers");
        assert_eq!(recovered, 1);
        let entry = store.get(&legacy.id).expect("reads").expect("recorded");
        assert_eq!(
            (entry.action.as_str(), entry.outcome),
            ("legacy", Outcome::Unknown)
        );
        assert!(store.unfinished_intents().expect("reads").is_empty());
        // New intents go to the journal, never to the table.
        let mut options = options(None);
        options.journal = Some(journal_options(&dir, SyncMode::Normal, 1 << 20));
        let writer = Writer::start(store.clone(), options).expect("starts");
        writer
            .handle()
            .write_ahead(AuditEntry::new("t", "new"))
            .await
            .expect("journaled");
        let rows: i64 = rusqlite::Connection::open(dir.join("audit.db"))
            .and_then(|c| c.query_row("SELECT count(*) FROM pending", [], |row| row.get(0)))
            .expect("counts");
        assert_eq!(rows, 0);
        assert_eq!(writer.handle().pending_intents(), 1);
        writer.shutdown();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_journal_stays_bounded_under_sustained_write_ahead_load() {
        let (dir, store) = temp_store("journal-bounded");
        let segment_bytes = 16 * 1024;
        let mut options = options(None);
        options.capacity = 10_000;
        options.journal = Some(journal_options(&dir, SyncMode::Full, segment_bytes));
        let writer = Writer::start(store.clone(), options).expect("starts");
        let handle = writer.handle();
        let mut largest = 0u64;
        let mut tasks = tokio::task::JoinSet::new();
        // Sixteen clients, never all idle at once: there is nearly always an unresolved intent,
        // so only rotation (not "truncate when nothing is pending") keeps the journal small. Each
        // waits for the writer to catch up before its next request, as a request's client waits
        // for its answer: at most one intent a client is unresolved, whatever the machine's
        // speed, so the journal's size is bounded by rotation alone and not by timing.
        for client in 0..16 {
            let handle = handle.clone();
            tasks.spawn(async move {
                for index in 0..150 {
                    let intent = AuditEntry::new("t", format!("load.{client}.{index}"));
                    handle.write_ahead(intent.clone()).await.expect("journaled");
                    let mut entry = intent;
                    entry.outcome = Outcome::Success;
                    handle.push_completing(entry);
                    assert!(handle.flushed(Duration::from_secs(30)).await);
                }
            });
        }
        while !tasks.is_empty() {
            largest = largest.max(journal_bytes(&dir).1);
            if tokio::time::timeout(Duration::from_millis(5), tasks.join_next())
                .await
                .is_ok_and(|joined| joined.is_some_and(|result| result.is_err()))
            {
                panic!("a client failed");
            }
        }
        assert!(handle.flushed(Duration::from_secs(30)).await);
        assert_eq!(store.size().expect("size"), 2400);
        let (segments, bytes) = journal_bytes(&dir);
        let written = handle.stats().intents_written.get();
        assert_eq!(written, 2400);
        // 2400 intents of a few hundred bytes each: far beyond a few segments unless resolved
        // segments are removed as the load goes on.
        assert!(segments <= 1, "{segments} segments left");
        assert!(bytes <= segment_bytes + 4096, "{bytes} bytes left");
        assert!(
            largest <= 8 * segment_bytes,
            "the journal reached {largest} bytes under load"
        );
        assert_eq!(handle.pending_intents(), 0);
        writer.shutdown();
        let _ = std::fs::remove_dir_all(dir);
    }
}
