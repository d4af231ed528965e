//! The write-ahead intent journal of a SQLite store: append-only segment files beside the
//! database (`<db>.intents.<n>`), written by the request's own task, so a write-ahead request
//! waits for one `write` (and, with `sync = "full"`, a share of one `fdatasync`) instead of a hop
//! to the writer thread and a SQLite commit.
//!
//! Every record is `length (u32 LE) · CRC-32 of the payload (u32 LE) · payload`, the payload a
//! kind byte and its body: an intent (the entry's JSON), a withdrawal (an intent id whose exchange
//! turned out to record nothing) or a probe (readiness checks; nothing). A record cut short by a
//! crash fails its length or checksum and ends the segment's reading: it is never misread.
//!
//! An intent is resolved once its entry, which carries the intent's id, is committed to the log;
//! nothing is deleted per intent. A segment is sealed at [`DEFAULT_SEGMENT_BYTES`] and removed as
//! soon as every intent in it is resolved or withdrawn, so the journal holds at most the segments
//! that still have a request in flight. At start, [`read_intents`] gives back every intent of
//! every segment; the writer's recovery records those whose id is not in the log, then removes
//! the segments ([`remove_segments`]).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::entry::AuditEntry;
use crate::store::config::SyncMode;

/// Bytes after which a segment is sealed and a new one started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

/// Free bytes a journal write leaves on its file system at least: below that, the disk is full
/// for the purposes of write-ahead (the entry completing the intent must still be committed), and
/// the intent is refused rather than written into the last allocated page of the file.
pub const FREE_SPACE_RESERVE: u64 = 64 * 1024;

/// How often at most a segment's free space and link count are read: once per this interval
/// rather than around every record (an `fstatvfs` and an `fstat` per write-ahead request were
/// two of its five system calls), and again as soon as the records written since the last check
/// would pass [`CHECK_BYTES`]. A disk filled or a segment removed is seen within this time; the
/// records written meanwhile stay inside [`FREE_SPACE_RESERVE`], and a removal in that window is
/// the same race as a removal just after a checked record. Probes (`/readyz`) always check, and
/// after a failed check or write every record is checked until one passes.
pub const CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);

/// The most bytes of records written between two checks of the free space: a quarter of
/// [`FREE_SPACE_RESERVE`], so a few large intents (long paths) cannot use up the reserve unchecked.
const CHECK_BYTES: u64 = FREE_SPACE_RESERVE / 4;

/// The longest record read back; anything longer is a damaged length, not a record.
const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;

const KIND_PROBE: u8 = 0;
const KIND_INTENT: u8 = 1;
const KIND_WITHDRAWN: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot write the intent journal {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot sync the intent journal: {0}")]
    Sync(String),
    #[error("cannot read the intent journal {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the intent journal file {path} was removed while in use")]
    Removed { path: String },
    #[error("cannot encode an intent: {0}")]
    Encode(String),
}

/// Where the journal lives and how durably it writes.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// The segments' common prefix: `<db>.intents`; segment `n` is `<db>.intents.<n>`.
    pub base: PathBuf,
    /// `normal`: each record reaches the OS before the request goes on (survives a killed
    /// process); `full`: it is also `fdatasync`ed, one sync shared by every request waiting.
    pub sync: SyncMode,
    pub segment_bytes: u64,
    /// How often at most the free space and link count are read ([`CHECK_INTERVAL`]).
    pub check_interval: std::time::Duration,
}

impl JournalOptions {
    pub fn new(base: PathBuf, sync: SyncMode) -> JournalOptions {
        JournalOptions {
            base,
            sync,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            check_interval: CHECK_INTERVAL,
        }
    }
}

/// The journal a running writer appends to.
pub struct IntentJournal {
    options: JournalOptions,
    state: Mutex<State>,
    sync: Mutex<SyncState>,
    synced: tokio::sync::Notify,
    /// Set while the last write failed (for /readyz), cleared by the next one that succeeds.
    failing: AtomicBool,
}

struct State {
    current: Option<Segment>,
    next_number: u64,
    /// Sealed segments that still hold unresolved intents, by number.
    sealed: BTreeMap<u64, Sealed>,
    /// Every unresolved intent and the segment it is in.
    pending: HashMap<String, u64>,
    /// Records appended so far: the ticket a `full` sync covers up to.
    written: u64,
    /// Sealed files whose last records may not be synced yet (`full` only).
    unsynced: Vec<Arc<File>>,
}

struct Segment {
    number: u64,
    path: PathBuf,
    file: Arc<File>,
    length: u64,
    pending: usize,
    /// A write failed and could not be cut back: nothing more goes into this file.
    broken: bool,
    /// When the file system's free space and the file's link count were last read and found
    /// fine ([`CHECK_INTERVAL`]).
    checked_at: Option<std::time::Instant>,
    /// Bytes of the records written since that check ([`CHECK_BYTES`]).
    unchecked_bytes: u64,
}

struct Sealed {
    path: PathBuf,
    pending: usize,
}

#[derive(Default)]
struct SyncState {
    /// Every record with a ticket up to here is synced.
    synced: u64,
    /// Records up to here were in a sync that failed: never reported durable.
    failed_through: u64,
    failure: String,
    leading: bool,
}

/// The path of segment `number`.
fn segment_path(base: &Path, number: u64) -> PathBuf {
    let mut name = base
        .file_name()
        .map(|name| name.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{number}"));
    base.with_file_name(name)
}

/// The segments that exist, oldest first.
pub fn segments(base: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let directory = match base.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let prefix = format!(
        "{}.",
        base.file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let listing = match std::fs::read_dir(&directory) {
        Ok(listing) => listing,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(JournalError::Read {
                path: directory.display().to_string(),
                source,
            })
        }
    };
    let mut found = Vec::new();
    for item in listing {
        let item = item.map_err(|source| JournalError::Read {
            path: directory.display().to_string(),
            source,
        })?;
        let name = item.file_name().to_string_lossy().into_owned();
        let Some(number) = name
            .strip_prefix(&prefix)
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((number, item.path()));
    }
    found.sort();
    Ok(found)
}

/// What the segments on disk hold.
#[derive(Debug, Default)]
pub struct JournalContents {
    /// Intents in the order they were written, withdrawn ones left out.
    pub intents: Vec<AuditEntry>,
    /// The segment files read, to remove once their intents are resolved.
    pub segments: Vec<PathBuf>,
    /// The highest segment number found (0 when none).
    pub last_number: u64,
}

/// Reads every segment. A record that is cut short or fails its checksum ends its segment's
/// reading (a crash mid-write leaves exactly that at a segment's end).
pub fn read_intents(base: &Path) -> Result<JournalContents, JournalError> {
    let mut contents = JournalContents::default();
    let mut withdrawn = std::collections::HashSet::new();
    let mut intents = Vec::new();
    for (number, path) in segments(base)? {
        contents.last_number = contents.last_number.max(number);
        // A segment removed between the listing and now had nothing unresolved left.
        let Some(bytes) = read_file(&path)? else {
            continue;
        };
        let mut offset = 0;
        while offset < bytes.len() {
            let Some((payload, next)) = decode(&bytes, offset) else {
                tracing::warn!(
                    file = %path.display(),
                    offset,
                    ignored_bytes = bytes.len() - offset,
                    "the intent journal ends in a torn record (a crash mid-write); it is ignored"
                );
                break;
            };
            offset = next;
            match payload.split_first() {
                Some((&KIND_INTENT, json)) => match serde_json::from_slice::<AuditEntry>(json) {
                    Ok(entry) => intents.push(entry),
                    Err(error) => {
                        tracing::error!(file = %path.display(), %error, "an intent in the journal could not be read")
                    }
                },
                Some((&KIND_WITHDRAWN, id)) => {
                    withdrawn.insert(String::from_utf8_lossy(id).into_owned());
                }
                _ => {}
            }
        }
        contents.segments.push(path);
    }
    let mut seen = std::collections::HashSet::new();
    contents.intents = intents
        .into_iter()
        .filter(|intent| !withdrawn.contains(&intent.id) && seen.insert(intent.id.clone()))
        .collect();
    Ok(contents)
}

fn read_file(path: &Path) -> Result<Option<Vec<u8>>, JournalError> {
    let mut bytes = Vec::new();
    // A directory or an unreadable file is an error: the journal cannot be trusted whole, so
    // recovery stops rather than guess.
    match File::open(path).and_then(|mut file| file.read_to_end(&mut bytes)) {
        Ok(_) => Ok(Some(bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(JournalError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Removes segment files whose intents are all resolved.
pub fn remove_segments(paths: &[PathBuf]) -> Result<(), JournalError> {
    for path in paths {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(JournalError::Write {
                    path: path.display().to_string(),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// One record's bytes.
fn encode(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(9 + body.len());
    let length = (body.len() + 1) as u32;
    let mut crc = flate2::Crc::new();
    crc.update(&[kind]);
    crc.update(body);
    record.extend_from_slice(&length.to_le_bytes());
    record.extend_from_slice(&crc.sum().to_le_bytes());
    record.push(kind);
    record.extend_from_slice(body);
    record
}

/// The payload of the record at `offset` and where the next one starts; `None` for a record that
/// is cut short or does not match its checksum.
fn decode(bytes: &[u8], offset: usize) -> Option<(&[u8], usize)> {
    let header = bytes.get(offset..offset.checked_add(8)?)?;
    let length = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let expected = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if length == 0 || length > MAX_RECORD_BYTES {
        return None;
    }
    let end = offset.checked_add(8)?.checked_add(length)?;
    let payload = bytes.get(offset + 8..end)?;
    let mut crc = flate2::Crc::new();
    crc.update(payload);
    (crc.sum() == expected).then_some((payload, end))
}

/// Clears the leader mark even when the leading request is dropped mid-sync (its client left),
/// so the requests behind it elect another leader instead of waiting forever.
struct Leading<'a>(&'a IntentJournal);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if let Ok(mut sync) = self.0.sync.lock() {
            sync.leading = false;
        }
        self.0.synced.notify_waiters();
    }
}

impl IntentJournal {
    /// A journal that starts a new segment after `first_number - 1` at its first write (nothing is
    /// created until a write-ahead request or a probe needs it).
    pub fn new(options: JournalOptions, first_number: u64) -> IntentJournal {
        IntentJournal {
            options,
            state: Mutex::new(State {
                current: None,
                next_number: first_number.max(1),
                sealed: BTreeMap::new(),
                pending: HashMap::new(),
                written: 0,
                unsynced: Vec::new(),
            }),
            sync: Mutex::new(SyncState::default()),
            synced: tokio::sync::Notify::new(),
            failing: AtomicBool::new(false),
        }
    }

    /// Whether the last write failed.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    fn lock_state(&self) -> Result<MutexGuard<'_, State>, JournalError> {
        self.state
            .lock()
            .map_err(|_| JournalError::Sync("the intent journal's lock was poisoned".into()))
    }

    /// Makes an intent durable: resolves once it is in the journal as durably as the store's
    /// sync mode asks, or with the reason it is not.
    pub async fn record(&self, intent: &AuditEntry) -> Result<(), JournalError> {
        let json =
            serde_json::to_vec(intent).map_err(|error| JournalError::Encode(error.to_string()))?;
        let ticket = self.append(KIND_INTENT, &json, Some(&intent.id))?;
        if self.options.sync == SyncMode::Normal {
            return Ok(());
        }
        match self.synced_through(ticket).await {
            Ok(()) => Ok(()),
            Err(error) => {
                // Not durable, so the request is refused; its refusal is recorded under the same
                // id, which resolves the intent should it have reached the disk after all.
                self.resolve(std::slice::from_ref(&intent.id));
                self.failing.store(true, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    /// Marks intents withdrawn (their exchange records nothing): a withdrawal record, so a crash
    /// does not bring them back as `unknown` entries, then resolved.
    pub fn withdraw(&self, ids: &[String]) {
        for id in ids {
            if let Err(error) = self.append(KIND_WITHDRAWN, id.as_bytes(), None) {
                tracing::warn!(%error, intent = %id, "cannot record a withdrawn write-ahead intent; it will be recorded as unknown if auditgate stops before the journal is rotated");
            }
        }
        self.resolve(ids);
    }

    /// Writes a record with no content, so readiness reflects whether the journal can be
    /// written now (after a full disk has room again, without waiting for a request).
    pub fn probe(&self) -> Result<(), JournalError> {
        self.append(KIND_PROBE, &[], None).map(|_| ())
    }

    /// Intents whose entries are now in the log. Segments left with nothing unresolved and no
    /// longer written to are removed.
    pub fn resolve(&self, ids: &[String]) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let mut emptied = Vec::new();
        for id in ids {
            let Some(number) = state.pending.remove(id) else {
                continue;
            };
            match state.current.as_mut() {
                Some(current) if current.number == number => {
                    current.pending = current.pending.saturating_sub(1)
                }
                _ => {
                    if let Some(sealed) = state.sealed.get_mut(&number) {
                        sealed.pending = sealed.pending.saturating_sub(1);
                        if sealed.pending == 0 {
                            emptied.push(number);
                        }
                    }
                }
            }
        }
        for number in emptied {
            if let Some(sealed) = state.sealed.remove(&number) {
                remove_resolved(&sealed.path);
            }
        }
    }

    /// Unresolved intents (for tests and metrics).
    pub fn pending(&self) -> usize {
        self.state
            .lock()
            .map(|state| state.pending.len())
            .unwrap_or(0)
    }

    /// Appends one record under the lock, starting a new segment first when the current one is
    /// full or broken; returns the record's ticket.
    fn append(&self, kind: u8, body: &[u8], intent: Option<&String>) -> Result<u64, JournalError> {
        let record = encode(kind, body);
        let mut state = self.lock_state()?;
        let result = self.append_locked(&mut state, &record, kind == KIND_PROBE);
        match &result {
            Ok(_) => {
                if let Some(id) = intent {
                    if let Some(current) = state.current.as_mut() {
                        current.pending += 1;
                        let number = current.number;
                        state.pending.insert(id.clone(), number);
                    }
                }
                self.failing.store(false, Ordering::Relaxed);
            }
            Err(_) => self.failing.store(true, Ordering::Relaxed),
        }
        result
    }

    /// Writes one record into the current segment (opening one first if needed). `always_check`
    /// reads the free space and link count whatever [`CHECK_INTERVAL`] says.
    fn append_locked(
        &self,
        state: &mut State,
        record: &[u8],
        always_check: bool,
    ) -> Result<u64, JournalError> {
        let rotate = state
            .current
            .as_ref()
            .is_some_and(|current| current.broken || current.length >= self.options.segment_bytes);
        if rotate {
            self.seal(state);
        }
        if state.current.is_none() {
            state.current = Some(self.open_segment(state.next_number)?);
            state.next_number += 1;
        }
        let Some(current) = state.current.as_mut() else {
            return Err(JournalError::Sync("no journal segment".into()));
        };
        let now = std::time::Instant::now();
        let check = always_check
            || current.unchecked_bytes + record.len() as u64 > CHECK_BYTES
            || current
                .checked_at
                .is_none_or(|at| now.duration_since(at) >= self.options.check_interval);
        if check {
            // Until a check passes, every record is checked (a full disk found by a probe or a
            // failed write is not forgotten by the next request).
            current.checked_at = None;
            if let Some(free) = free_bytes(&current.file) {
                if free < FREE_SPACE_RESERVE + record.len() as u64 {
                    return Err(JournalError::Write {
                        path: current.path.display().to_string(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::StorageFull,
                            format!("{free} bytes free on its file system"),
                        ),
                    });
                }
            }
        }
        let written = (&*current.file).write_all(record);
        let outcome = written.and_then(|()| {
            if check {
                current.file.metadata().map(|metadata| removed(&metadata))
            } else {
                Ok(false)
            }
        });
        match outcome {
            Ok(gone) => {
                current.length += record.len() as u64;
                if gone {
                    // Records in a file nobody will read are not durable.
                    current.broken = true;
                    return Err(JournalError::Removed {
                        path: current.path.display().to_string(),
                    });
                }
                if check {
                    current.checked_at = Some(now);
                    current.unchecked_bytes = 0;
                } else {
                    current.unchecked_bytes += record.len() as u64;
                }
                state.written += 1;
                Ok(state.written)
            }
            Err(source) => {
                current.checked_at = None;
                // Cut a partial record back off, so the file never holds a torn record followed
                // by good ones; when even that fails, the file is closed to further writes.
                if current.file.set_len(current.length).is_err() {
                    current.broken = true;
                }
                Err(JournalError::Write {
                    path: current.path.display().to_string(),
                    source,
                })
            }
        }
    }

    /// Seals the current segment: removed at once when it holds nothing unresolved, else kept
    /// until it does not.
    fn seal(&self, state: &mut State) {
        let Some(current) = state.current.take() else {
            return;
        };
        if self.options.sync == SyncMode::Full {
            state.unsynced.push(current.file.clone());
        }
        if current.pending == 0 {
            remove_resolved(&current.path);
        } else {
            state.sealed.insert(
                current.number,
                Sealed {
                    path: current.path,
                    pending: current.pending,
                },
            );
        }
    }

    fn open_segment(&self, number: u64) -> Result<Segment, JournalError> {
        let path = segment_path(&self.options.base, number);
        let mut options = std::fs::OpenOptions::new();
        // A file already at the new segment's path is not ours: never append to it.
        options.append(true).create_new(true);
        // Intents are entries: private to the sidecar's user, like the database.
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(&path).map_err(|source| JournalError::Write {
            path: path.display().to_string(),
            source,
        })?;
        if self.options.sync == SyncMode::Full {
            // The new file's name must survive a power cut too.
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent)
                    .and_then(|directory| directory.sync_all())
                    .map_err(|source| JournalError::Write {
                        path: parent.display().to_string(),
                        source,
                    })?;
            }
        }
        Ok(Segment {
            number,
            path,
            file: Arc::new(file),
            length: 0,
            checked_at: None,
            unchecked_bytes: 0,
            pending: 0,
            broken: false,
        })
    }

    /// Waits until the record with `ticket` is synced: the first waiter syncs everything written
    /// so far while the others wait for it, so concurrent requests share one `fdatasync`.
    async fn synced_through(&self, ticket: u64) -> Result<(), JournalError> {
        loop {
            let notified = self.synced.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let lead = {
                let mut sync = self.sync.lock().map_err(|_| {
                    JournalError::Sync("the journal's sync lock was poisoned".into())
                })?;
                // A record in a failed sync is never reported durable, even if a later sync
                // succeeded: after a failed fdatasync the kernel may have dropped its pages.
                if ticket <= sync.failed_through {
                    return Err(JournalError::Sync(sync.failure.clone()));
                }
                if ticket <= sync.synced {
                    return Ok(());
                }
                let lead = !sync.leading;
                sync.leading = true;
                lead
            };
            if !lead {
                notified.await;
                continue;
            }
            let leading = Leading(self);
            let (target, files) = {
                let mut state = self.lock_state()?;
                let mut files = std::mem::take(&mut state.unsynced);
                if let Some(current) = &state.current {
                    files.push(current.file.clone());
                }
                (state.written, files)
            };
            let result = tokio::task::spawn_blocking(move || {
                files.iter().try_for_each(|file| file.sync_data())
            })
            .await;
            {
                let mut sync = self.sync.lock().map_err(|_| {
                    JournalError::Sync("the journal's sync lock was poisoned".into())
                })?;
                match result {
                    Ok(Ok(())) => sync.synced = sync.synced.max(target),
                    Ok(Err(error)) => {
                        sync.failed_through = sync.failed_through.max(target);
                        sync.failure = error.to_string();
                    }
                    Err(error) => {
                        sync.failed_through = sync.failed_through.max(target);
                        sync.failure = error.to_string();
                    }
                }
            }
            drop(leading);
        }
    }
}

/// Bytes free to unprivileged writers on the file's file system; `None` when unknown.
#[cfg(unix)]
fn free_bytes(file: &File) -> Option<u64> {
    let stats = rustix::fs::fstatvfs(file).ok()?;
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

#[cfg(not(unix))]
fn free_bytes(_file: &File) -> Option<u64> {
    None
}

#[cfg(unix)]
fn removed(metadata: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    metadata.nlink() == 0
}

#[cfg(not(unix))]
fn removed(_metadata: &std::fs::Metadata) -> bool {
    false
}

fn remove_resolved(path: &Path) {
    if let Err(error) = std::fs::remove_file(path) {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(%error, file = %path.display(), "cannot remove a resolved intent journal segment; it is read and removed at the next start");
        }
    }
}
