//! The background writer: entries in, batched group-committed appends out.
//!
//! The proxy hands entries over by pushing onto a shared queue under a short lock; the writer
//! thread is woken only when the queue goes from empty to non-empty (or fills a batch), then
//! lingers for `flush_interval` to gather more, so under load there is one wake-up per batch, not
//! per request. Back-pressure is applied before an audited request is forwarded
//! ([`WriterHandle::reserve`]), never by dropping: pushes themselves always succeed, and the queue
//! can exceed its capacity by at most the number of requests already in flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::entry::AuditEntry;
use crate::store::Store;

/// Counters the writer keeps, read by /metrics and tests.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub entries_written: AtomicU64,
    pub batches: AtomicU64,
    pub store_errors: AtomicU64,
    /// Entries that could not be stored even at shutdown. Must stay 0.
    pub entries_lost: AtomicU64,
    /// Requests that waited for room in the queue.
    pub backpressure_waits: AtomicU64,
}

struct Queue {
    entries: Vec<AuditEntry>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    room: tokio::sync::Notify,
    capacity: usize,
    batch_size: usize,
    linger: Duration,
    stats: WriterStats,
    /// Entries taken off the queue but not yet committed.
    in_flight: AtomicU64,
    /// Signalled after every committed batch, for tasks that follow the log's growth.
    committed: tokio::sync::Notify,
}

/// What the proxy holds: push entries, wait for room.
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
}

impl Writer {
    pub fn start(store: Arc<dyn Store>, options: WriterOptions) -> std::io::Result<Writer> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                entries: Vec::with_capacity(options.batch_size),
                closed: false,
            }),
            wake: Condvar::new(),
            room: tokio::sync::Notify::new(),
            capacity: options.capacity,
            batch_size: options.batch_size,
            linger: options.linger,
            stats: WriterStats::default(),
            in_flight: AtomicU64::new(0),
            committed: tokio::sync::Notify::new(),
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
            self.shared
                .stats
                .backpressure_waits
                .fetch_add(1, Ordering::Relaxed);
            notified.await;
        }
    }

    /// Hands an entry to the writer. Never fails and never blocks on the store.
    pub fn push(&self, entry: AuditEntry) {
        let Ok(mut queue) = self.shared.queue.lock() else {
            self.shared
                .stats
                .entries_lost
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(entry = %entry.id, "writer queue poisoned; entry lost");
            return;
        };
        let was_empty = queue.entries.is_empty();
        queue.entries.push(entry);
        let full_batch = queue.entries.len() == self.shared.batch_size;
        drop(queue);
        if was_empty || full_batch {
            self.shared.wake.notify_one();
        }
    }

    /// Entries waiting to be written.
    pub fn depth(&self) -> usize {
        self.shared
            .queue
            .lock()
            .map(|queue| queue.entries.len())
            .unwrap_or(0)
    }

    pub fn stats(&self) -> &WriterStats {
        &self.shared.stats
    }

    /// Waits until every entry pushed before this call has been written (for tests and shutdown
    /// checks). Gives up after `timeout`.
    pub async fn flushed(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.depth() == 0 && self.in_flight() == 0 {
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

    fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::Acquire)
    }
}

fn run(shared: Arc<Shared>, store: Arc<dyn Store>) {
    loop {
        let (mut batch, closing) = {
            let Ok(mut queue) = shared.queue.lock() else {
                return;
            };
            while queue.entries.is_empty() && !queue.closed {
                queue = match shared.wake.wait(queue) {
                    Ok(queue) => queue,
                    Err(_) => return,
                };
            }
            if queue.entries.is_empty() && queue.closed {
                return;
            }
            // Linger to let a batch gather, unless one already has or we are closing.
            if queue.entries.len() < shared.batch_size && !queue.closed {
                queue = match shared.wake.wait_timeout(queue, shared.linger) {
                    Ok((queue, _)) => queue,
                    Err(_) => return,
                };
            }
            let take = queue.entries.len().min(shared.batch_size);
            let rest = queue.entries.split_off(take);
            let batch = std::mem::replace(&mut queue.entries, rest);
            shared
                .in_flight
                .fetch_add(batch.len() as u64, Ordering::AcqRel);
            (batch, queue.closed)
        };
        shared.room.notify_waiters();
        write_with_retry(&shared, store.as_ref(), &mut batch, closing);
        shared
            .in_flight
            .fetch_sub(batch.len() as u64, Ordering::AcqRel);
    }
}

/// Retries a failing batch with backoff. While running it retries forever (back-pressure holds
/// new audited requests); when closing it gives up after a bounded number of tries and counts the
/// loss loudly.
fn write_with_retry(shared: &Shared, store: &dyn Store, batch: &mut [AuditEntry], closing: bool) {
    let mut delay = Duration::from_millis(50);
    let mut attempts = 0u32;
    loop {
        match store.append(batch) {
            Ok(()) => {
                shared
                    .stats
                    .entries_written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                shared.stats.batches.fetch_add(1, Ordering::Relaxed);
                shared.committed.notify_one();
                return;
            }
            Err(error) => {
                attempts += 1;
                shared.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, entries = batch.len(), attempts, "cannot append to the store; retrying");
                let closing_now = closing
                    || shared
                        .queue
                        .lock()
                        .map(|queue| queue.closed)
                        .unwrap_or(true);
                if closing_now && attempts >= 20 {
                    shared
                        .stats
                        .entries_lost
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    for entry in batch.iter() {
                        tracing::error!(entry = %entry.id, action = %entry.action, "entry lost at shutdown: the store never accepted it");
                    }
                    return;
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SyncMode;
    use crate::store::sqlite::SqliteStore;

    #[tokio::test]
    async fn every_pushed_entry_is_written_in_batches() {
        let dir = std::env::temp_dir().join(format!("auditgate-writer-{}", ulid::Ulid::new()));
        let store =
            Arc::new(SqliteStore::open(&dir.join("audit.db"), SyncMode::Normal).expect("opens"));
        let writer = Writer::start(
            store.clone(),
            WriterOptions {
                capacity: 100,
                batch_size: 64,
                linger: Duration::from_millis(2),
            },
        )
        .expect("starts");
        let handle = writer.handle();
        for index in 0..1000 {
            handle.reserve().await;
            handle.push(AuditEntry::new("t", format!("bulk.{index}")));
        }
        writer.shutdown();
        assert_eq!(store.size().expect("size"), 1000);
        assert_eq!(handle.stats().entries_written.load(Ordering::Relaxed), 1000);
        assert!(handle.stats().batches.load(Ordering::Relaxed) < 1000);
        assert_eq!(handle.stats().entries_lost.load(Ordering::Relaxed), 0);
        let _ = std::fs::remove_dir_all(dir);
    }
}
