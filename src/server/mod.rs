//! Wiring: store, writer, head signer, retention, proxy listener and admin listener, started
//! together and stopped in order (stop accepting, drain in-flight requests, stop pruning, flush
//! the writer, sign the shutdown head).

pub mod lifecycle;
mod listen;
mod startup;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::auth::Authenticator;
use crate::admin::AdminState;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::ProxyState;
use crate::signer::HeadSigner;
use crate::store::retention::RetentionTask;
use crate::store::Store;
use crate::writer::otlp::OtlpExporter;
use crate::writer::{Writer, WriterHandle};

pub use listen::MAX_REQUEST_HEADERS;

/// A running sidecar.
pub struct Sidecar {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: Arc<ProxyState>,
    pub store: Arc<dyn Store>,
    pub config_path: Option<PathBuf>,
    shutdown: watch::Sender<bool>,
    proxy_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    writer: Writer,
    auth: Arc<Authenticator>,
    log_id: String,
    signer_stats: Option<Arc<crate::signer::SignerStats>>,
    /// What every archive shipper shares; `None` without a signing key (no archive can run).
    archive_context: Option<crate::archive::ArchiveContext>,
    /// What a reload replaces, one reload at a time.
    running: tokio::sync::Mutex<Running>,
    checkpoint_task: JoinHandle<()>,
    /// Route learning (`[discover]`): the learner, its file and the task saving it.
    routes: Option<(Arc<crate::discover::RouteLearner>, PathBuf, JoinHandle<()>)>,
}

/// The parts of a running sidecar that a reload compares or replaces.
struct Running {
    /// The configuration in force (keys that need a restart at their running values).
    table: toml::Table,
    sha256: String,
    log: crate::log::config::LogConfig,
    signer: Option<HeadSigner>,
    retention: Option<RetentionTask>,
    archives: Option<crate::archive::Archives>,
    /// The `[[otlp]]` outputs, each a task reading the store.
    otlp: Vec<OtlpExporter>,
    /// The store's settings at start (where the outputs keep their cursors).
    store: crate::store::config::StoreConfig,
}

/// How long the `[[otlp]]` outputs may go on sending at a clean stop.
const OTLP_SHUTDOWN_PATIENCE: Duration = Duration::from_secs(5);

/// Starts one task per `[[otlp]]` output.
fn start_otlp(
    store: &Arc<dyn Store>,
    outputs: &[crate::writer::otlp::config::OtlpConfig],
    log_id: &str,
    store_config: &crate::store::config::StoreConfig,
    metrics: &Metrics,
) -> Vec<OtlpExporter> {
    outputs
        .iter()
        .map(|output| {
            OtlpExporter::start(
                store.clone(),
                output.clone(),
                log_id.to_string(),
                crate::writer::otlp::cursor::cursor_path(store_config, &output.name),
                metrics.otlp.output(&output.name, &output.endpoint_label()),
            )
        })
        .collect()
}

/// How long the archives may take to ship the last entries at a clean stop.
const ARCHIVE_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// How long the final checkpoint at a clean stop waits for readers to finish.
const SHUTDOWN_CHECKPOINT_PATIENCE: Duration = Duration::from_secs(5);

/// The `[log]` keys a reload applies by restarting the head signer.
const PUBLISHING_KEYS: [&str; 7] = [
    "log.publish_heads",
    "log.witnesses",
    "log.publish_timeout",
    "log.publish_ca_file",
    "log.sign_every",
    "log.sign_interval",
    "log.heartbeat_interval",
];

/// What a reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The file's changes are in force, except `restart_needed`.
    Applied(lifecycle::ConfigChanges),
    /// Nothing changed; every message says why.
    Refused(Vec<String>),
}

impl Sidecar {
    /// Opens the store and binds both listeners. Returns once the sidecar is serving.
    pub async fn start(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<Sidecar> {
        let (store, tree) = startup::open_store(&config).await?;
        startup::refuse_if_behind_published(&config, &store).await?;
        let writer = startup::start_writer(&config, &store).await?;
        let signer = startup::start_signer(&config, &store, &writer, tree.size);
        let retention = RetentionTask::start(
            store.clone(),
            config.retention.clone(),
            config.log_id.clone(),
        );
        let signer_stats = signer.as_ref().map(HeadSigner::stats);
        let metrics = Arc::new(Metrics::default());
        metrics.set_config_sha256(&config.sha256);
        let learner = startup::start_route_learning(&config, &metrics);
        // The shippers only read the store, so they start before traffic like the signer.
        let archive_context =
            config
                .log
                .signer
                .as_ref()
                .map(|signer| crate::archive::ArchiveContext {
                    store: store.clone(),
                    signer: signer.clone(),
                    log_id: config.log_id.clone(),
                    origin: config.log.checkpoint_origin(&config.log_id),
                    metrics: metrics.clone(),
                });
        let archives = archive_context
            .as_ref()
            .filter(|_| !config.archives.is_empty())
            .map(|context| crate::archive::Archives::start(&config.archives, context));
        let otlp = start_otlp(
            &store,
            &config.otlp,
            &config.log_id,
            &config.store,
            &metrics,
        );
        // Queued before the listeners open, so it precedes every request entry of this run.
        writer.handle().push(lifecycle::run_entry(
            &config.log_id,
            lifecycle::STARTED,
            &config.sha256,
        ));
        let state = Arc::new(
            ProxyState::new(
                config.proxy.clone(),
                config.policy.clone(),
                config.log_id.clone(),
                writer.handle(),
                metrics.clone(),
            )
            .map(|state| state.with_durability(&config.store))
            .map_err(anyhow::Error::msg)?,
        );
        // A JWKS URL that answers has its keys in before the first request; one that does not
        // delays the start by at most this, then tokens are recorded unverified until it loads.
        config
            .policy
            .actors
            .wait_for_keys(crate::identity::actor::JWKS_START_WAIT)
            .await;
        let auth = Arc::new(
            Authenticator::new(&config.admin.tokens)
                .with_https_proxies(&config.admin.trusted_proxies),
        );
        let admin_state = AdminState {
            store: store.clone(),
            writer: writer.handle(),
            metrics,
            auth: auth.clone(),
            log_id: Arc::from(config.log_id.as_str()),
            log: startup::log_api(&config, signer_stats.clone()),
            ingest_keys: Arc::default(),
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let listeners = listen::Listeners::bind(&config).await?;
        let (proxy_addr, admin_addr) = (listeners.proxy_addr, listeners.admin_addr);
        let (proxy_task, admin_task) = listeners.serve(state.clone(), admin_state, &shutdown_rx);
        let routes = learner.map(|learner| {
            let task = tokio::spawn(startup::save_routes_periodically(
                learner.clone(),
                config.discover.file.clone(),
                config.discover.save_interval,
                shutdown_rx.clone(),
            ));
            (learner, config.discover.file.clone(), task)
        });
        let checkpoint_task = tokio::spawn(startup::checkpoint_periodically(
            store.clone(),
            config.store.checkpoint_interval,
            shutdown_rx,
        ));
        tracing::info!(version = env!("CARGO_PKG_VERSION"), config_sha256 = %config.sha256, proxy = %proxy_addr, admin = %admin_addr, upstream = %config.proxy.upstream, store = %crate::store::describe(&config.store), log = %config.log_id, "auditgate is serving");
        Ok(Sidecar {
            proxy_addr,
            admin_addr,
            state,
            store,
            config_path,
            shutdown,
            proxy_task,
            admin_task,
            writer,
            auth,
            log_id: config.log_id.clone(),
            signer_stats,
            archive_context,
            running: tokio::sync::Mutex::new(Running {
                table: config.table.0,
                sha256: config.sha256,
                log: config.log,
                signer,
                retention,
                archives,
                otlp,
                store: config.store.clone(),
            }),
            checkpoint_task,
            routes,
        })
    }

    /// Applies a new configuration to the running sidecar, all of it or nothing: rules, actor
    /// sources, redaction and hints, admin tokens (a removed token and its viewer sessions stop
    /// working at once), retention, the NDJSON stream, the archives and head publishing. A changed key that
    /// needs a restart (listeners, the app's address, the store, the log's id and signing key)
    /// keeps its running value and is named in a warning and in the `audit.config_reloaded`
    /// entry, which records every change.
    pub async fn reload(&self, config: Config) -> ReloadOutcome {
        let mut running = self.running.lock().await;
        let changes = lifecycle::diff(&running.table, &config.table.0);
        // What can fail comes first, so a failure leaves everything as it was.
        let stream = if changes.touches("stream") {
            match config
                .stream
                .clone()
                .map(crate::writer::stream::NdjsonStream::open)
                .transpose()
            {
                Ok(stream) => Some(stream),
                Err(error) => {
                    return ReloadOutcome::Refused(vec![format!(
                        "stream.ndjson: cannot open the new stream: {error}"
                    )])
                }
            }
        } else {
            None
        };
        self.state.replace_policy(config.policy.clone());
        let ended = self.auth.replace_tokens(&config.admin.tokens);
        if ended > 0 {
            tracing::info!(
                sessions = ended,
                "viewer sessions of removed admin tokens ended"
            );
        }
        if let Some(stream) = stream {
            self.writer.handle().replace_stream(stream);
        }
        if changes.touches("otlp") {
            // Each output's cursor is kept by its name, so a replaced output goes on where the
            // old one stopped.
            for exporter in running.otlp.drain(..) {
                exporter.stop().await;
            }
            running.otlp = start_otlp(
                &self.store,
                &config.otlp,
                &self.log_id,
                &running.store,
                &self.state.metrics,
            );
        }
        if changes.touches("retention") {
            if let Some(retention) = running.retention.take() {
                retention.shutdown().await;
            }
            running.retention = RetentionTask::start(
                self.store.clone(),
                config.retention.clone(),
                self.log_id.clone(),
            );
        }
        if PUBLISHING_KEYS.iter().any(|key| changes.touches(key)) {
            self.restart_signer(&mut running, &config).await;
        }
        if changes.touches("archive") {
            // The new shippers resume from their buckets, so nothing shipped is shipped twice
            // and nothing unshipped is skipped.
            if let Some(archives) = running.archives.take() {
                archives.stop().await;
            }
            running.archives = self
                .archive_context
                .as_ref()
                .filter(|_| !config.archives.is_empty())
                .map(|context| crate::archive::Archives::start(&config.archives, context));
        }
        for key in changes.restart_needed() {
            tracing::warn!(%key, "changed in the configuration file, but takes effect only after a restart; the running value stays");
        }
        self.state.metrics.set_config_sha256(&config.sha256);
        self.writer.handle().push(lifecycle::reloaded_entry(
            &self.log_id,
            &running.sha256,
            &config.sha256,
            &changes,
        ));
        running.table = lifecycle::in_force(&running.table, &config.table.0, &changes);
        running.sha256 = config.sha256;
        ReloadOutcome::Applied(changes)
    }

    /// Restarts the head signer with the new publishing settings; the key that signs stays the
    /// running one (changing it needs a restart).
    async fn restart_signer(&self, running: &mut Running, config: &Config) {
        // The key that signs stays the running one (changing it needs a restart).
        let mut log = config.log.clone();
        log.signer = running.log.signer.clone();
        log.signing_key_path = running.log.signing_key_path.clone();
        log.origin = running.log.origin.clone();
        if let (Some(signer), Some(key), Some(stats)) = (
            running.signer.take(),
            log.signer.clone(),
            self.signer_stats.clone(),
        ) {
            signer.shutdown().await;
            running.signer = Some(HeadSigner::start_with_stats(
                self.store.clone(),
                key,
                self.log_id.clone(),
                log.clone(),
                self.writer.handle(),
                stats,
            ));
        }
        running.log = log;
    }

    pub fn writer(&self) -> WriterHandle {
        self.writer.handle()
    }

    /// The head signer's counters, `None` without a signing key. They outlive [`Self::shutdown`],
    /// so a caller can see what the shutdown head's publishing did.
    pub fn signer_stats(&self) -> Option<Arc<crate::signer::SignerStats>> {
        self.signer_stats.clone()
    }

    /// Stops accepting, lets in-flight requests finish (within a grace period), and writes every
    /// queued entry before returning.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.proxy_task.await;
        let _ = self.admin_task.await;
        // Every request is answered: the last save covers all the traffic of the run.
        if let Some((learner, file, task)) = self.routes {
            let _ = task.await;
            startup::save_routes(learner, file).await;
        }
        let running = self.running.into_inner();
        if let Some(retention) = running.retention {
            retention.shutdown().await;
        }
        // The listeners are closed and every request is answered, so this follows every entry
        // of the run; the writer's final flush below stores it and the shutdown head covers it.
        self.writer.handle().push(lifecycle::run_entry(
            &self.log_id,
            lifecycle::STOPPED,
            &running.sha256,
        ));
        let writer = self.writer;
        let _ = tokio::task::spawn_blocking(move || writer.shutdown()).await;
        // After the writer: the shutdown head covers every entry.
        if let Some(signer) = running.signer {
            signer.shutdown().await;
        }
        // After the final head: the archives ship what it covers, within a deadline, so a
        // bucket that is down cannot hold up the stop (the rest ships after the next start).
        if let Some(archives) = running.archives {
            archives.shutdown(ARCHIVE_SHUTDOWN_DEADLINE).await;
        }
        // After the writer too, so the outputs send the last entries (audit.stopped) now if
        // their collectors answer; anything left waits in the store for the next start.
        let drains = running.otlp.into_iter().map(|exporter| {
            let deadline = std::time::Instant::now() + OTLP_SHUTDOWN_PATIENCE;
            exporter.drain(deadline)
        });
        futures_util::future::join_all(drains).await;
        // Last: the database file alone then holds every entry and head, so copying it after a
        // clean stop copies the whole log.
        let _ = self.checkpoint_task.await;
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.checkpoint(SHUTDOWN_CHECKPOINT_PATIENCE))
            .await
        {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => tracing::warn!(
                "readers kept the WAL busy at shutdown: part of the log stays in the -wal file \
                 beside the database until the next start"
            ),
            Ok(Err(error)) => tracing::warn!(%error, "final WAL checkpoint failed"),
            Err(error) => tracing::warn!(%error, "final WAL checkpoint task failed"),
        }
        tracing::info!("auditgate stopped; every queued entry was written");
    }
}
