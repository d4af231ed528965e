//! The steps of [`super::Sidecar::start`] before any listener opens: the store opened and
//! checked, spilled entries and interrupted write-ahead requests recovered, the writer and the
//! head signer started.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::admin::log_api::LogApiState;
use crate::config::Config;
use crate::log::head::LogVerifier;
use crate::signer::{HeadSigner, SignerStats};
use crate::store::{Store, TreeState};
use crate::writer::journal::JournalOptions;
use crate::writer::stream::NdjsonStream;
use crate::writer::{Writer, WriterOptions};

/// Opens the store and checks that its log can be extended: a log whose tree cannot be extended
/// must not take entries it could never prove.
pub(super) async fn open_store(config: &Config) -> anyhow::Result<(Arc<dyn Store>, TreeState)> {
    let store_config = config.store.clone();
    let log_id = config.log_id.clone();
    let name = crate::store::describe(&config.store);
    let store: Arc<dyn Store> =
        tokio::task::spawn_blocking(move || crate::store::open(&store_config, &log_id, true))
            .await
            .context("store open task failed")?
            .with_context(|| format!("cannot open the store {name}"))?;
    let tree_store = store.clone();
    let tree = tokio::task::spawn_blocking(move || tree_store.tree())
        .await
        .context("store check task failed")?
        .with_context(|| {
            format!(
                "the log in {} cannot be appended to",
                crate::store::describe(&config.store)
            )
        })?;
    Ok((store, tree))
}

/// The keys that verify this log's heads: the running signing key's public half.
fn verifier_keys(config: &Config) -> Vec<LogVerifier> {
    config
        .log
        .signer
        .iter()
        .map(|signer| signer.public_key())
        .collect()
}

/// Refuses a store behind a head it already published (a database restored from an older
/// copy): it would sign a second head, with another root, for a size already published, a fork
/// of the log. Checked before recovery appends anything.
pub(super) async fn refuse_if_behind_published(
    config: &Config,
    store: &Arc<dyn Store>,
) -> anyhow::Result<()> {
    let check_store = store.clone();
    let files = config.log.heads_files();
    let keys = verifier_keys(config);
    let log_id = config.log_id.clone();
    let behind = tokio::task::spawn_blocking(move || {
        let mut problems = Vec::new();
        for path in files {
            let place = path.display().to_string();
            let mut published = crate::verify::PublishedHeads::new(path, &log_id, keys.clone());
            let (latest, _) = published.refresh()?;
            problems.extend(crate::verify::check::behind_published(
                check_store.as_ref(),
                latest,
                &place,
            )?);
        }
        Ok::<_, crate::verify::VerifyError>(problems)
    })
    .await
    .context("published heads check task failed")?
    .context("cannot read the published heads")?;
    if behind.is_empty() {
        return Ok(());
    }
    let problems: Vec<String> = behind.into_iter().map(|problem| problem.message).collect();
    anyhow::bail!(
        "refusing to start on {}: {}. Signing on would publish a second head for a size already \
         published (a fork). Put the newest copy of the database back, or move the database and \
         the heads file aside to start a new log",
        crate::store::describe(&config.store),
        problems.join("; ")
    )
}

/// Before any traffic: spilled entries go back into the store and write-ahead requests a crash
/// interrupted are recorded with outcome unknown (both copied to the NDJSON stream, if any);
/// then the writer starts, with the stream attached.
pub(super) async fn start_writer(
    config: &Config,
    store: &Arc<dyn Store>,
) -> anyhow::Result<Writer> {
    let spill_path = config.store.spill_path();
    let recovery_store = store.clone();
    let recovery_spill = spill_path.clone();
    let journal = config.store.intent_journal_path();
    let recovery_journal = journal.clone();
    let stream = match config.stream.clone() {
        Some(stream_config) => Some(
            NdjsonStream::open(stream_config)
                .context("cannot open the NDJSON stream ([stream] ndjson)")?,
        ),
        None => None,
    };
    let (reimported, recovered, stream) = tokio::task::spawn_blocking(move || {
        let mut stream = stream;
        let counts = crate::writer::recover_into(
            recovery_store.as_ref(),
            Some(&recovery_spill),
            recovery_journal.as_deref(),
            None,
            &mut |entries| {
                if let Some(stream) = stream.as_mut() {
                    if let Err(error) = stream.write_entries(entries) {
                        tracing::error!(%error, "cannot write recovered entries to the NDJSON stream");
                    }
                }
            },
        )?;
        Ok::<_, crate::store::StoreError>((counts.0, counts.1, stream))
    })
    .await
    .context("recovery task failed")?
    .context("cannot recover spilled entries and write-ahead intents")?;
    let writer = Writer::start(
        store.clone(),
        WriterOptions {
            capacity: config.store.queue_capacity,
            batch_size: config.store.batch_size,
            linger: config.store.flush_interval,
            spill_path: Some(spill_path),
            journal: journal.map(|base| JournalOptions::new(base, config.store.sync)),
        },
    )
    .context("cannot start the writer thread")?;
    if let Some(stream) = stream {
        writer.handle().attach_stream(stream);
    }
    let handle = writer.handle();
    handle.stats().entries_reimported.add(reimported as u64);
    handle.stats().intents_recovered.add(recovered as u64);
    Ok(writer)
}

/// The head signer, when `[log] signing_key` names a key; without one the tree is still kept,
/// and a warning says what is lost.
pub(super) fn start_signer(
    config: &Config,
    store: &Arc<dyn Store>,
    writer: &Writer,
    tree_size: u64,
) -> Option<HeadSigner> {
    let Some(key) = &config.log.signer else {
        tracing::warn!(
            size = tree_size,
            "no [log] signing_key: the Merkle tree is kept, but no tree head is signed or \
             published, so tampering is only detectable by comparing with an earlier copy; make \
             a key with `auditgate keygen --out PATH`"
        );
        return None;
    };
    Some(HeadSigner::start(
        store.clone(),
        key.clone(),
        config.log_id.clone(),
        config.log.clone(),
        writer.handle(),
    ))
}

/// What the admin API's log endpoints serve: the running key, the signer's counters, the heads
/// published to files, and the checkpoint origin.
pub(super) fn log_api(config: &Config, signer: Option<Arc<SignerStats>>) -> Arc<LogApiState> {
    Arc::new(
        LogApiState::new(
            config.log.signer.as_ref().map(|key| key.public_key()),
            signer,
        )
        .with_heads_files(
            &config.log.heads_files(),
            &config.log_id,
            verifier_keys(config),
        )
        .with_signer(config.log.signer.clone())
        .with_checkpoint_origin(config.log.checkpoint_origin(&config.log_id))
        .with_public_tiles(config.log.public_tiles),
    )
}

/// How long a scheduled checkpoint waits for readers: it holds the writer connection meanwhile,
/// so it gives way quickly and tries again at the next interval.
const SCHEDULED_CHECKPOINT_PATIENCE: Duration = Duration::from_millis(50);

/// Copies the SQLite WAL into the database file every `interval` (see [`Store::checkpoint`]),
/// so the WAL stays small and the database file is never far behind the log.
pub(super) async fn checkpoint_periodically(
    store: Arc<dyn Store>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.checkpoint(SCHEDULED_CHECKPOINT_PATIENCE))
            .await
        {
            Ok(Ok(true)) => tracing::debug!("WAL checkpointed"),
            Ok(Ok(false)) => {
                tracing::debug!("WAL checkpoint gave way to readers; retrying at the next interval")
            }
            Ok(Err(error)) => tracing::warn!(%error, "WAL checkpoint failed"),
            Err(error) => tracing::warn!(%error, "WAL checkpoint task failed"),
        }
    }
}

/// Route learning (`[discover]`), when on: the learner starts from what the file kept (a file
/// that cannot be read is moved aside, never lost, and learning starts afresh) and is handed to
/// the proxy and the admin listener through `metrics`.
pub(super) fn start_route_learning(
    config: &Config,
    metrics: &crate::metrics::Metrics,
) -> Option<Arc<crate::discover::RouteLearner>> {
    use crate::discover::{Learned, RouteLearner};
    let discover = &config.discover;
    if !discover.enabled {
        return None;
    }
    let learner = if discover.file.exists() {
        match Learned::read(&discover.file) {
            Ok(learned) => RouteLearner::from_learned(learned),
            Err(error) => {
                let mut aside = discover.file.as_os_str().to_owned();
                aside.push(".unreadable");
                let moved = std::fs::rename(&discover.file, &aside);
                tracing::warn!(%error, moved_to = %std::path::Path::new(&aside).display(), moved_ok = moved.is_ok(), "the learned routes file cannot be read; learning starts afresh");
                RouteLearner::new()
            }
        }
    } else {
        RouteLearner::new()
    };
    let learner = Arc::new(learner);
    let _ = metrics.routes.set(learner.clone());
    tracing::info!(file = %discover.file.display(), "learning routes from traffic ([discover])");
    Some(learner)
}

/// Saves what was learned every `interval` until shutdown (the final save is the shutdown's,
/// after the last request).
pub(super) async fn save_routes_periodically(
    learner: Arc<crate::discover::RouteLearner>,
    file: std::path::PathBuf,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        save_routes(learner.clone(), file.clone()).await;
    }
}

/// Writes the learned routes to their file; a failure is logged and retried at the next save.
pub(super) async fn save_routes(
    learner: Arc<crate::discover::RouteLearner>,
    file: std::path::PathBuf,
) {
    let saved = tokio::task::spawn_blocking(move || learner.learned().write(&file)).await;
    match saved {
        Ok(Ok(())) => tracing::debug!("learned routes saved"),
        Ok(Err(error)) => tracing::warn!(%error, "cannot save the learned routes"),
        Err(error) => tracing::warn!(%error, "learned routes save task failed"),
    }
}
