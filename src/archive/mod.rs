//! The object-storage archive (`[[archive]]`): committed entries shipped to S3-compatible
//! buckets, in order and exactly once, as gzipped NDJSON objects per time window that verify on
//! their own ([`object`] has the layout and content; `auditgate verify-archive` in [`check`]).
//!
//! Each archive has a shipper task of its own. It reads committed entries from the store by
//! `seq` — only those a signed head already covers, so every line carries its proof — cuts them
//! into objects (a window of `window`, aligned to UTC midnight, or `max_entries`, whichever
//! comes first), and uploads them one at a time, oldest first. The proxy and the writer never
//! wait on it: it only reads the store, on the blocking pool.
//!
//! **Exactly once, in order.** The resume point is derived from the bucket itself, never from a
//! local file: at start (and after a reload) the shipper lists the log's newest day folder and
//! goes on after the highest `last_seq` found there, so a lost or stale state file can cause
//! neither a gap nor a repeat. Object dates never go backwards (an object's date is its first
//! entry's UTC day, or the previous object's if that is later), so the newest day folder always
//! holds the newest object. An object's range and bytes are fixed once built and uploaded again
//! unchanged after a failure, so a retry overwrites the same key with the same content instead of
//! cutting a second, overlapping object.
//!
//! **An unreachable bucket never blocks auditing and never loses a window.** A failed request
//! is counted (`auditgate_archive_failures_total`) and retried with backoff (up to 30 s); the
//! entries wait in the store, and `auditgate_archive_lag_entries` / `_lag_seconds` show how far
//! behind the bucket is. At a clean stop the shipper gets until a deadline to ship what the final
//! head covers; what it cannot ship then is shipped after the next start.
//!
//! Entries pruned by retention before they were shipped cannot be archived (their content is
//! gone): the shipper logs them and goes on, and `verify-archive` reports the gap they leave.
//! Keep `[retention] max_age` well above any outage the bucket may have.

pub mod check;
pub mod config;
pub mod object;
pub mod s3;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::archive::config::ArchiveConfig;
use crate::archive::object::{
    build_object, log_folder, parse_object_key, BuiltObject, ObjectContext,
};
use crate::archive::s3::{S3Client, S3Error};
use crate::entry::AuditEntry;
use crate::log::head::LogSigner;
use crate::metrics::{ArchiveSlot, Metrics};
use crate::store::{Store, StoreError};

/// How often a shipper looks for newly covered entries when it has nothing to do.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// The first wait after a failure; each later one is twice the one before, up to the most.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MOST_BACKOFF: Duration = Duration::from_secs(30);
/// How long after its window ends an object waits for the window's last entries to commit and
/// be covered by a signed head.
const WINDOW_GRACE: Duration = Duration::from_secs(2);

/// What every shipper of the sidecar shares.
#[derive(Clone)]
pub struct ArchiveContext {
    pub store: Arc<dyn Store>,
    pub signer: Arc<LogSigner>,
    pub log_id: String,
    /// The log's checkpoint origin.
    pub origin: String,
    pub metrics: Arc<Metrics>,
}

/// The running shippers.
pub struct Archives {
    shippers: Vec<Shipper>,
}

struct Shipper {
    name: String,
    stop: watch::Sender<Stop>,
    task: JoinHandle<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Running,
    /// Ship everything the newest head covers, window or not, until the deadline.
    Flush(Instant),
    Now,
}

impl Archives {
    /// Starts one shipper per archive.
    pub fn start(configs: &[ArchiveConfig], context: &ArchiveContext) -> Archives {
        let shippers = configs
            .iter()
            .map(|config| {
                let (stop, stopped) = watch::channel(Stop::Running);
                let slot = context.metrics.archives.slot(&config.name);
                let task = tokio::spawn(run(config.clone(), context.clone(), slot, stopped));
                Shipper {
                    name: config.name.clone(),
                    stop,
                    task,
                }
            })
            .collect();
        Archives { shippers }
    }

    /// Stops every shipper at once (a reload); what they had not shipped is shipped by the
    /// shippers that replace them, which resume from the buckets.
    pub async fn stop(self) {
        for shipper in &self.shippers {
            let _ = shipper.stop.send(Stop::Now);
        }
        for shipper in self.shippers {
            shipper.task.abort();
            let _ = shipper.task.await;
        }
    }

    /// At a clean stop, after the final head: ships what it covers, giving up at `deadline`.
    pub async fn shutdown(self, deadline: Duration) {
        let until = Instant::now() + deadline;
        for shipper in &self.shippers {
            let _ = shipper.stop.send(Stop::Flush(until));
        }
        for mut shipper in self.shippers {
            if tokio::time::timeout_at(until + Duration::from_secs(1), &mut shipper.task)
                .await
                .is_err()
            {
                tracing::warn!(archive = %shipper.name, "the archive could not ship every entry before the shutdown deadline; the rest is shipped after the next start");
                shipper.task.abort();
            }
        }
    }
}

/// One shipper's state between steps.
struct ShipperState {
    config: ArchiveConfig,
    context: ArchiveContext,
    client: Option<S3Client>,
    slot: Arc<ArchiveSlot>,
    /// The first entry not in the bucket; `None` until read from the bucket.
    next_seq: Option<u64>,
    /// The date folder of the newest object in the bucket.
    last_date: Option<NaiveDate>,
    /// An object built and not yet uploaded.
    pending: Option<(BuiltObject, NaiveDate)>,
}

#[derive(Debug, thiserror::Error)]
enum ShipError {
    #[error("{0}")]
    Bucket(#[from] S3Error),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Build(#[from] crate::archive::object::BuildError),
    #[error("{0}")]
    Other(String),
}

enum Step {
    /// An object was uploaded; there may be more to do at once.
    Shipped,
    /// Nothing is due yet.
    Idle,
}

async fn run(
    config: ArchiveConfig,
    context: ArchiveContext,
    slot: Arc<ArchiveSlot>,
    mut stopped: watch::Receiver<Stop>,
) {
    let name = config.name.clone();
    let mut state = ShipperState {
        config,
        context,
        client: None,
        slot,
        next_seq: None,
        last_date: None,
        pending: None,
    };
    let mut backoff = FIRST_BACKOFF;
    loop {
        let stop = *stopped.borrow();
        let flushing = match stop {
            Stop::Now => return,
            Stop::Flush(deadline) => {
                if Instant::now() >= deadline {
                    return;
                }
                true
            }
            Stop::Running => false,
        };
        let wait = match state.step(flushing).await {
            Ok(Step::Shipped) => {
                state.slot.failing.store(false, Ordering::Relaxed);
                backoff = FIRST_BACKOFF;
                state.measure_lag().await;
                continue;
            }
            Ok(Step::Idle) => {
                state.slot.failing.store(false, Ordering::Relaxed);
                backoff = FIRST_BACKOFF;
                state.measure_lag().await;
                if flushing {
                    return;
                }
                POLL_INTERVAL
            }
            Err(error) => {
                state.slot.failures.inc();
                state.slot.failing.store(true, Ordering::Relaxed);
                tracing::warn!(archive = %name, %error, retry_in_ms = backoff.as_millis() as u64, "cannot ship to the archive; the entries wait in the store and are retried");
                state.measure_lag().await;
                let wait = backoff;
                backoff = (backoff * 2).min(MOST_BACKOFF);
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = stopped.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

impl ShipperState {
    fn client(&mut self) -> Result<&S3Client, ShipError> {
        if self.client.is_none() {
            self.client = Some(S3Client::new(&self.config.bucket)?);
        }
        self.client
            .as_ref()
            .ok_or_else(|| ShipError::Other("no bucket client".into()))
    }

    async fn step(&mut self, closing: bool) -> Result<Step, ShipError> {
        let next_seq = match self.next_seq {
            Some(next_seq) => next_seq,
            None => {
                let (next_seq, last_date) = self.resume().await?;
                tracing::info!(archive = %self.config.name, next_seq, "archive resumes after the newest object in the bucket");
                self.next_seq = Some(next_seq);
                self.last_date = last_date;
                next_seq
            }
        };
        if self.pending.is_none() {
            match self.cut(next_seq, closing).await? {
                Cut::Nothing => return Ok(Step::Idle),
                Cut::Skip { to, pruned } => {
                    tracing::warn!(archive = %self.config.name, first = next_seq, last = to - 1, pruned, "entries were pruned before they were archived; the archive has a gap there");
                    self.next_seq = Some(to);
                    return Ok(Step::Shipped);
                }
                Cut::Object(object, date) => self.pending = Some((*object, date)),
            }
        }
        let Some((object, date)) = self.pending.clone() else {
            return Ok(Step::Idle);
        };
        let lock = self.config.object_lock;
        let client = self.client()?.clone();
        // The OCSF copy first: the verifiable object is what marks the range as shipped.
        if let Some((key, body)) = &object.ocsf {
            client
                .put_object(key, body.clone(), "application/x-ndjson", lock.as_ref())
                .await?;
        }
        client
            .put_object(
                &object.key,
                object.body.clone(),
                "application/x-ndjson",
                lock.as_ref(),
            )
            .await?;
        tracing::debug!(archive = %self.config.name, key = %object.key, entries = object.entries, "archive object uploaded");
        self.slot.objects.inc();
        self.slot.entries.add(object.entries);
        self.next_seq = Some(object.last_seq + 1);
        self.last_date = Some(date);
        self.pending = None;
        Ok(Step::Shipped)
    }

    /// The first entry not in the bucket and the newest object's date: after the highest
    /// `last_seq` of the newest day folder that holds an object of this log.
    async fn resume(&mut self) -> Result<(u64, Option<NaiveDate>), ShipError> {
        let folder = log_folder(&self.config.bucket.prefix, &self.context.log_id);
        let client = self.client()?.clone();
        let numbered = |prefixes: Vec<String>, digits: usize| {
            let mut found: Vec<(u32, String)> = prefixes
                .into_iter()
                .filter_map(|prefix| {
                    let part = prefix.trim_end_matches('/').rsplit('/').next()?.to_string();
                    (part.len() == digits && part.bytes().all(|byte| byte.is_ascii_digit()))
                        .then(|| Some((part.parse().ok()?, prefix)))
                        .flatten()
                })
                .collect();
            found.sort();
            found.reverse();
            found
        };
        let years = client.list(&folder, Some("/")).await?.prefixes;
        for (year, year_prefix) in numbered(years, 4) {
            let months = client.list(&year_prefix, Some("/")).await?.prefixes;
            for (month, month_prefix) in numbered(months, 2) {
                let days = client.list(&month_prefix, Some("/")).await?.prefixes;
                for (day, day_prefix) in numbered(days, 2) {
                    let keys = client.list(&day_prefix, None).await?.keys;
                    let newest = keys
                        .iter()
                        .filter_map(|key| parse_object_key(key))
                        .filter(|name| name.folder == folder && name.log_id == self.context.log_id)
                        .map(|name| name.last_seq)
                        .max();
                    if let Some(last_seq) = newest {
                        let date = NaiveDate::from_ymd_opt(year as i32, month, day);
                        return Ok((last_seq + 1, date));
                    }
                }
            }
        }
        Ok((1, None))
    }

    /// The next object, if one is due: the entries from `next_seq` that the newest signed head
    /// covers, up to the end of the first entry's window or `max_entries`.
    async fn cut(&self, next_seq: u64, closing: bool) -> Result<Cut, ShipError> {
        let store = self.context.store.clone();
        let signer = self.context.signer.clone();
        let window = self.config.window;
        let max_entries = self.config.max_entries;
        let prefix = self.config.bucket.prefix.clone();
        let log_id = self.context.log_id.clone();
        let origin = self.context.origin.clone();
        let ocsf = self.config.ocsf;
        let last_date = self.last_date;
        tokio::task::spawn_blocking(move || -> Result<Cut, ShipError> {
            let Some(head) = store.latest_head()? else {
                return Ok(Cut::Nothing);
            };
            // Only a head the running key signed goes into an object: write access to the
            // database must not buy a signed checkpoint over another root.
            signer.public_key().verify(&head).map_err(|error| {
                ShipError::Other(format!(
                    "the newest stored head is not signed by the log's key ({error}); nothing \
                     is archived until a valid head is stored"
                ))
            })?;
            let covered = head.head.size;
            if covered < next_seq {
                return Ok(Cut::Nothing);
            }
            let want = (covered - next_seq + 1).min(max_entries as u64) as usize;
            let page = store.scan_log(next_seq, want)?;
            let mut entries: Vec<AuditEntry> = Vec::new();
            let mut ended_by_gap = false;
            let mut pruned = 0;
            for (offset, slot) in page.slots.into_iter().enumerate() {
                if slot.seq != next_seq + offset as u64 {
                    return Err(ShipError::Other(format!(
                        "the store returned position {} where {} was expected",
                        slot.seq,
                        next_seq + offset as u64
                    )));
                }
                match slot.entry {
                    Some(Ok(entry)) => {
                        if pruned > 0 {
                            break;
                        }
                        entries.push(entry);
                    }
                    Some(Err(reason)) => {
                        return Err(ShipError::Other(format!(
                            "entry {} cannot be read ({reason}); run `auditgate verify`",
                            slot.seq
                        )))
                    }
                    None if slot.pruned_by.is_some() => {
                        if !entries.is_empty() {
                            ended_by_gap = true;
                            break;
                        }
                        pruned += 1;
                    }
                    None => {
                        return Err(ShipError::Other(format!(
                            "position {} has no entry and is not marked as pruned; run \
                             `auditgate verify`",
                            slot.seq
                        )))
                    }
                }
            }
            if entries.is_empty() {
                return Ok(if pruned > 0 {
                    Cut::Skip {
                        to: next_seq + pruned,
                        pruned,
                    }
                } else {
                    Cut::Nothing
                });
            }
            let Some(first_created) = entries.first().map(|entry| entry.created_at) else {
                return Ok(Cut::Nothing);
            };
            let first_window = window_index(first_created, window);
            let in_window = entries
                .iter()
                .take_while(|entry| window_index(entry.created_at, window) <= first_window)
                .count();
            let read = entries.len();
            entries.truncate(in_window);
            let window_end = window_start(first_window + 1, window);
            let window_over = Utc::now()
                >= window_end + chrono::Duration::from_std(WINDOW_GRACE).unwrap_or_default();
            let closed = closing
                || in_window < read
                || in_window >= max_entries
                || ended_by_gap
                || window_over;
            if !closed {
                return Ok(Cut::Nothing);
            }
            let date = first_created
                .date_naive()
                .max(last_date.unwrap_or(NaiveDate::MIN));
            let dated = date_time(date).unwrap_or(first_created);
            let context = ObjectContext {
                prefix: &prefix,
                log_id: &log_id,
                signer: &signer,
                origin: &origin,
                ocsf,
            };
            let mut object = build_object(store.as_ref(), &entries, &head, &context)?;
            // The key's date never goes backwards (see the module doc).
            if dated.date_naive() != first_created.date_naive() {
                object = rename_to_date(object, &prefix, &log_id, dated);
            }
            Ok(Cut::Object(Box::new(object), date))
        })
        .await
        .map_err(|error| ShipError::Other(format!("the archive task failed: {error}")))?
    }

    /// Updates the lag gauges: entries committed but not shipped, and the age of the oldest.
    async fn measure_lag(&self) {
        let Some(next_seq) = self.next_seq else {
            return;
        };
        let store = self.context.store.clone();
        let measured = tokio::task::spawn_blocking(move || -> Result<(u64, u64), StoreError> {
            let size = store.tree()?.size;
            if size < next_seq {
                return Ok((0, 0));
            }
            let oldest = store
                .scan_log(next_seq, 1)?
                .slots
                .into_iter()
                .next()
                .and_then(|slot| slot.entry)
                .and_then(Result::ok)
                .map(|entry| entry.created_at);
            let age = oldest.map_or(0, |created| {
                (Utc::now() - created).num_milliseconds().max(0) as u64
            });
            Ok((size - next_seq + 1, age))
        })
        .await;
        if let Ok(Ok((entries, age))) = measured {
            self.slot.lag_entries.store(entries, Ordering::Relaxed);
            self.slot.lag_ms.store(age, Ordering::Relaxed);
        }
    }
}

enum Cut {
    Nothing,
    /// Positions pruned before they were shipped: go on after them.
    Skip {
        to: u64,
        pruned: u64,
    },
    Object(Box<BuiltObject>, NaiveDate),
}

/// Which window (counted from the epoch, aligned to UTC midnight) `time` falls in.
fn window_index(time: DateTime<Utc>, window: Duration) -> i64 {
    time.timestamp().div_euclid(window.as_secs().max(1) as i64)
}

fn window_start(index: i64, window: Duration) -> DateTime<Utc> {
    DateTime::from_timestamp(index.saturating_mul(window.as_secs().max(1) as i64), 0)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn date_time(date: NaiveDate) -> Option<DateTime<Utc>> {
    Some(date.and_hms_opt(0, 0, 0)?.and_utc())
}

/// The same object under the key of another date folder.
fn rename_to_date(
    mut object: BuiltObject,
    prefix: &str,
    log_id: &str,
    date: DateTime<Utc>,
) -> BuiltObject {
    use crate::archive::object::{object_key, NDJSON_SUFFIX, OCSF_SUFFIX};
    object.key = object_key(
        prefix,
        log_id,
        date,
        object.first_seq,
        object.last_seq,
        NDJSON_SUFFIX,
    );
    if let Some((key, _)) = object.ocsf.as_mut() {
        *key = object_key(
            prefix,
            log_id,
            date,
            object.first_seq,
            object.last_seq,
            OCSF_SUFFIX,
        );
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_to_utc_midnight() {
        let hour = Duration::from_secs(3600);
        let time = DateTime::parse_from_rfc3339("2026-03-07T13:45:10Z")
            .expect("time")
            .with_timezone(&Utc);
        let index = window_index(time, hour);
        assert_eq!(
            window_start(index, hour).to_rfc3339(),
            "2026-03-07T13:00:00+00:00"
        );
        assert_eq!(
            window_start(index + 1, hour).to_rfc3339(),
            "2026-03-07T14:00:00+00:00"
        );
        let day = Duration::from_secs(86_400);
        assert_eq!(
            window_start(window_index(time, day), day).to_rfc3339(),
            "2026-03-07T00:00:00+00:00"
        );
    }
}
