//! OpenTelemetry logs over OTLP/HTTP (`[[otlp]]`): every committed entry, as a log record, to
//! each configured collector.
//!
//! Each output is a task of its own that reads the log from the store by sequence number,
//! never the writer's queue: the proxy and the writer do not know it exists, so a slow, failing
//! or absent collector cannot slow or stop either of them. The task sends up to `batch_size`
//! committed entries per request (protobuf, gzip; [`encode`]), and once the collector has
//! acknowledged them it moves its cursor past them ([`cursor`], a file beside the store). An
//! entry is therefore sent until a collector has taken it, across failures and restarts: the
//! store is the spill. The cursor is written after the acknowledgement, so a crash between
//! the two, or an acknowledgement lost on the way back, sends that batch again (each record
//! carries `auditgate.entry.id` for a collector that drops repeats).
//!
//! A failed request is retried with a doubling back-off from 500ms up to `max_backoff` (or
//! the collector's `Retry-After`, within the same cap). A collector that refuses a batch for its
//! content (400, 413, 422) gets halves of it until the one entry it refuses is found; that
//! entry is then held and retried (`on_rejected = "hold"`, the default) or logged, counted and
//! passed over (`"skip"`). Any other refusal (401, 403, 404, ...) is about the request, not the
//! entries, so nothing is skipped: the output waits at `max_backoff` until the collector or the
//! configuration is fixed (a reload picks up new headers at once).

pub mod client;
pub mod config;
pub mod cursor;
pub mod encode;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::entry::AuditEntry;
use crate::log::merkle::Hash;
use crate::metrics::OtlpOutputHandle;
use crate::store::{LogSlot, Store, StoreError};
use crate::writer::otlp::client::{Answer, Client};
use crate::writer::otlp::config::{OnRejected, OtlpConfig, FIRST_BACKOFF};
use crate::writer::otlp::cursor::Cursor;
use crate::writer::otlp::encode::ResourceInfo;

/// How a running output is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Running,
    /// Stop at the next step (a reload replaces the output). A request already sent is waited
    /// for, so its acknowledgement moves the cursor.
    Now,
    /// Send what is committed, until caught up, a failure, or the deadline (a clean shutdown,
    /// after the writer's last commit).
    Drain {
        deadline: Instant,
    },
}

/// A running `[[otlp]]` output.
pub struct OtlpExporter {
    name: String,
    stop: watch::Sender<Stop>,
    task: JoinHandle<()>,
}

impl OtlpExporter {
    /// Starts the output's task. `cursor_path` is where it keeps its position
    /// ([`cursor::cursor_path`]).
    pub fn start(
        store: Arc<dyn Store>,
        config: OtlpConfig,
        log_id: String,
        cursor_path: PathBuf,
        stats: OtlpOutputHandle,
    ) -> OtlpExporter {
        let (stop, stopped) = watch::channel(Stop::Running);
        let name = config.name.clone();
        let output = Output {
            resource: ResourceInfo {
                service_name: config.service_name.clone(),
                log_id: log_id.clone(),
                host_name: encode::host_name(),
                extra: config.resource.clone(),
            },
            endpoint: config.endpoint_label(),
            client: Client::new(config.clone()),
            config,
            store,
            log_id,
            cursor_path,
            stats,
            stopped,
        };
        OtlpExporter {
            name,
            stop,
            task: tokio::spawn(output.run()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops the output without waiting for the collector beyond a request already sent.
    pub async fn stop(self) {
        let _ = self.stop.send(Stop::Now);
        let _ = self.task.await;
    }

    /// Sends what the log holds (the writer has made its last commit), stopping when caught up,
    /// at the first failure, or at `deadline`; what is left goes at the next start.
    pub async fn drain(self, deadline: Instant) {
        let _ = self.stop.send(Stop::Drain { deadline });
        let _ = self.task.await;
    }
}

/// One output's task and what it works with.
struct Output {
    config: OtlpConfig,
    resource: ResourceInfo,
    endpoint: String,
    client: Client,
    store: Arc<dyn Store>,
    log_id: String,
    cursor_path: PathBuf,
    stats: OtlpOutputHandle,
    stopped: watch::Receiver<Stop>,
}

/// What one round of the loop did.
enum Round {
    /// Entries were acknowledged or passed over; go on at once.
    Progress,
    /// Nothing to send.
    CaughtUp,
    /// The round failed; wait this long before the next.
    Wait(Duration),
}

impl Output {
    async fn run(mut self) {
        let Some(mut acknowledged) = self.starting_position().await else {
            return;
        };
        tracing::info!(output = %self.config.name, endpoint = %self.endpoint, after_seq = acknowledged, "OTLP output started");
        let mut backoff = FIRST_BACKOFF;
        // Halved while the collector refuses a batch's content, to find the entry it refuses.
        let mut limit = self.config.batch_size;
        loop {
            let stop = *self.stopped.borrow();
            let draining = match stop {
                Stop::Now => break,
                Stop::Drain { deadline } if Instant::now() >= deadline => break,
                Stop::Drain { .. } => true,
                Stop::Running => false,
            };
            let round = self.round(&mut acknowledged, &mut limit, &mut backoff);
            let round = match stop {
                // A drain never outlasts its deadline, whatever the collector does; a request cut
                // short leaves the cursor where it was.
                Stop::Drain { deadline } => {
                    match tokio::time::timeout_at(deadline.into(), round).await {
                        Ok(round) => round,
                        Err(_) => break,
                    }
                }
                _ => round.await,
            };
            let wait = match round {
                Round::Progress => continue,
                Round::CaughtUp if draining => break,
                Round::CaughtUp => self.config.interval,
                // At shutdown a failure ends the drain: the cursor keeps the rest for next time.
                Round::Wait(_) if draining => break,
                Round::Wait(wait) => wait,
            };
            if !self.pause(wait).await {
                break;
            }
        }
    }

    /// Sleeps `wait`, or less when asked to stop; whether to go on.
    async fn pause(&mut self, wait: Duration) -> bool {
        let stopped = self.stopped.wait_for(|stop| *stop != Stop::Running);
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            // A drain after a pause goes on (one more round); a stop ends the output.
            result = stopped => matches!(result.as_deref(), Ok(Stop::Drain { .. })),
        }
    }

    /// Where to start: after the cursor when it belongs to this log, else from the first entry
    /// (or, for a new output with `backfill = false`, after the entries already there). `None`
    /// when stopped before the store answered.
    async fn starting_position(&mut self) -> Option<u64> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.read_position().await {
                Ok(position) => return Some(position),
                Err(error) => {
                    tracing::warn!(output = %self.config.name, %error, "OTLP output cannot read its position in the log; retrying");
                }
            }
            if !self.pause(backoff).await || *self.stopped.borrow() != Stop::Running {
                return None;
            }
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    async fn read_position(&self) -> Result<u64, StoreError> {
        let saved = match cursor::read(&self.cursor_path) {
            Ok(saved) => saved,
            Err(error) => {
                // Starting over may resend entries; trusting nothing never skips one.
                tracing::error!(output = %self.config.name, %error, "OTLP cursor unreadable; sending from the first entry of the log");
                return Ok(0);
            }
        };
        let Some(saved) = saved else {
            if self.config.backfill {
                return Ok(0);
            }
            let store = self.store.clone();
            let (size, leaf) = blocking(move || {
                let size = store.tree_size()?;
                let leaf = if size > 0 {
                    store.leaf_hash(size)?
                } else {
                    None
                };
                Ok((size, leaf))
            })
            .await?;
            self.save(size, leaf).await;
            return Ok(size);
        };
        if saved.log_id != self.log_id {
            tracing::warn!(output = %self.config.name, cursor_log = %saved.log_id, log = %self.log_id, "the OTLP cursor belongs to another log; sending from the first entry");
            return Ok(0);
        }
        if saved.seq == 0 {
            return Ok(0);
        }
        let store = self.store.clone();
        let seq = saved.seq;
        let leaf = blocking(move || store.leaf_hash(seq)).await?;
        if leaf.map(hex::encode) == saved.leaf {
            Ok(saved.seq)
        } else {
            tracing::warn!(output = %self.config.name, seq = saved.seq, "the entry the OTLP cursor points at is not in this log (a store restored or replaced); sending from the first entry");
            Ok(0)
        }
    }

    /// One batch: read what follows `acknowledged`, send it, move the cursor.
    async fn round(
        &mut self,
        acknowledged: &mut u64,
        limit: &mut usize,
        backoff: &mut Duration,
    ) -> Round {
        let store = self.store.clone();
        let first = *acknowledged + 1;
        let max = *limit;
        let read = blocking(move || {
            let size = store.tree_size()?;
            if size < first {
                return Ok((size, Vec::new()));
            }
            Ok((size, store.scan_log(first, max)?.slots))
        })
        .await;
        let (size, slots) = match read {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(output = %self.config.name, %error, "OTLP output cannot read the log; retrying");
                return Round::Wait(self.config.interval);
            }
        };
        // Only what the tree covers is committed.
        let slots: Vec<LogSlot> = slots.into_iter().filter(|slot| slot.seq <= size).collect();
        let Some(last) = slots.last() else {
            self.stats.set_lag(size.saturating_sub(*acknowledged), None);
            return Round::CaughtUp;
        };
        let (last_seq, last_leaf) = (last.seq, last.leaf);
        let mut entries: Vec<&AuditEntry> = Vec::with_capacity(slots.len());
        for slot in &slots {
            match &slot.entry {
                Some(Ok(entry)) => entries.push(entry),
                Some(Err(reason)) => {
                    self.stats.skipped_unreadable.inc();
                    tracing::error!(output = %self.config.name, seq = slot.seq, %reason, "an entry in the store cannot be read; it is not sent (auditgate verify names what is wrong)");
                }
                None => {
                    self.stats.skipped_unreadable.inc();
                    tracing::warn!(output = %self.config.name, seq = slot.seq, pruned_by = ?slot.pruned_by, "an entry was pruned before it was sent; it is not sent");
                }
            }
        }
        self.stats.set_lag(
            size.saturating_sub(*acknowledged),
            entries.first().map(|entry| entry.created_at),
        );
        if entries.is_empty() {
            self.advance(acknowledged, last_seq, last_leaf, size).await;
            return Round::Progress;
        }
        let body = match encode::gzip(&encode::export_request(&self.resource, &entries)) {
            Ok(body) => Bytes::from(body),
            Err(error) => {
                tracing::error!(output = %self.config.name, %error, "cannot compress an OTLP request; retrying");
                return Round::Wait(self.config.max_backoff);
            }
        };
        let count = entries.len() as u64;
        let (first_seq, first_id) = (entries[0].seq, entries[0].id.clone());
        match self.client.send(body).await {
            Answer::Accepted {
                rejected_records,
                message,
            } => {
                if rejected_records > 0 {
                    self.stats.dropped_by_collector.add(rejected_records as u64);
                    tracing::warn!(output = %self.config.name, endpoint = %self.endpoint, first_seq, last_seq, rejected_records, %message, "the OTLP collector took the batch but dropped some records");
                }
                self.stats.sent.add(count);
                self.advance(acknowledged, last_seq, last_leaf, size).await;
                *backoff = FIRST_BACKOFF;
                *limit = self.config.batch_size;
                Round::Progress
            }
            Answer::Unavailable {
                reason,
                retry_after,
            } => {
                self.stats.failed_unavailable.inc();
                let wait = retry_after
                    .unwrap_or(*backoff)
                    .max(*backoff)
                    .min(self.config.max_backoff);
                tracing::warn!(output = %self.config.name, endpoint = %self.endpoint, %reason, waiting = size.saturating_sub(*acknowledged), retry_in = ?wait, "OTLP collector unavailable; the entries wait in the store");
                *backoff = (*backoff * 2).min(self.config.max_backoff);
                Round::Wait(wait)
            }
            Answer::Rejected {
                status,
                content,
                message,
            } => {
                self.stats.failed_rejected.inc();
                if content && entries.len() > 1 {
                    *limit = (entries.len() / 2).max(1);
                    tracing::warn!(output = %self.config.name, endpoint = %self.endpoint, status, %message, first_seq, last_seq, "the OTLP collector refused a batch; sending it in halves to find the entry it refuses");
                    return Round::Progress;
                }
                if content && self.config.on_rejected == OnRejected::Skip {
                    self.stats.skipped_rejected.inc();
                    tracing::error!(output = %self.config.name, endpoint = %self.endpoint, status, %message, seq = first_seq, id = %first_id, "the OTLP collector refuses this entry; skipped (on_rejected = \"skip\"); it stays in the store");
                    self.advance(acknowledged, last_seq, last_leaf, size).await;
                    *limit = self.config.batch_size;
                    return Round::Progress;
                }
                tracing::error!(output = %self.config.name, endpoint = %self.endpoint, status, %message, first_seq, last_seq, retry_in = ?self.config.max_backoff, "the OTLP collector refuses the request; nothing is skipped, the entries wait in the store until it takes them (fix the collector or the [[otlp]] table and reload)");
                Round::Wait(self.config.max_backoff)
            }
        }
    }

    /// Moves past `seq` and saves the cursor. A cursor that cannot be saved is logged: the
    /// entries were delivered, and at worst are sent again after a restart.
    async fn advance(&self, acknowledged: &mut u64, seq: u64, leaf: Option<Hash>, size: u64) {
        *acknowledged = seq;
        self.stats.set_lag(size.saturating_sub(seq), None);
        self.save(seq, leaf).await;
    }

    async fn save(&self, seq: u64, leaf: Option<Hash>) {
        let saved = Cursor {
            log_id: self.log_id.clone(),
            endpoint: self.endpoint.clone(),
            seq,
            leaf: leaf.map(hex::encode),
        };
        let path = self.cursor_path.clone();
        // An fsync can take a while; it is not for the async workers to wait on.
        let written = tokio::task::spawn_blocking(move || cursor::write(&path, &saved))
            .await
            .unwrap_or_else(|error| Err(std::io::Error::other(error)));
        if let Err(error) = written {
            tracing::error!(output = %self.config.name, path = %self.cursor_path.display(), %error, "cannot save the OTLP cursor; delivered entries may be sent again after a restart");
        }
    }
}

/// Runs a store call off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| StoreError::Other(format!("store task failed: {error}")))?
}
