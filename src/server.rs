//! Wiring: store, writer, head signer, retention, proxy listener and admin listener, started
//! together and stopped in order (stop accepting, drain in-flight requests, stop pruning, flush
//! the writer, sign the shutdown head).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::admin::auth::Authenticator;
use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::{self, ProxyState};
use crate::retention::RetentionTask;
use crate::signer::HeadSigner;
use crate::store::Store;
use crate::writer::{Writer, WriterHandle, WriterOptions};

/// Most header lines a request may carry; more is answered 431.
pub const MAX_REQUEST_HEADERS: usize = 256;

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
    signer: Option<HeadSigner>,
    retention: Option<RetentionTask>,
    checkpoint_task: JoinHandle<()>,
}

/// How long the final checkpoint at a clean stop waits for readers to finish.
const SHUTDOWN_CHECKPOINT_PATIENCE: Duration = Duration::from_secs(5);

/// How long a scheduled checkpoint waits for readers: it holds the writer connection meanwhile,
/// so it gives way quickly and tries again at the next interval.
const SCHEDULED_CHECKPOINT_PATIENCE: Duration = Duration::from_millis(50);

/// Copies the SQLite WAL into the database file every `interval` (see [`Store::checkpoint`]),
/// so the WAL stays small and the database file is never far behind the log.
async fn checkpoint_periodically(
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

impl Sidecar {
    /// Opens the store and binds both listeners. Returns once the sidecar is serving.
    pub async fn start(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<Sidecar> {
        let store_config = config.store.clone();
        let store_log_id = config.log_id.clone();
        let store_name = crate::store::describe(&config.store);
        let store: Arc<dyn Store> = tokio::task::spawn_blocking(move || {
            crate::store::open(&store_config, &store_log_id, true)
        })
        .await
        .context("store open task failed")?
        .with_context(|| format!("cannot open the store {store_name}"))?;
        // A log whose tree cannot be extended must not take entries it could never prove.
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
        // Before any traffic: spilled entries go back into the store, and write-ahead requests a
        // crash interrupted are recorded with outcome unknown.
        let spill_path = config.store.spill_path();
        let recovery_store = store.clone();
        let recovery_spill = spill_path.clone();
        let stream = match config.stream.clone() {
            Some(stream_config) => Some(
                crate::stream::NdjsonStream::open(stream_config)
                    .context("cannot open the NDJSON stream ([stream] ndjson)")?,
            ),
            None => None,
        };
        let (reimported, recovered, stream) = tokio::task::spawn_blocking(move || {
            let mut stream = stream;
            let counts = crate::writer::recover_into(
                recovery_store.as_ref(),
                Some(&recovery_spill),
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
            },
        )
        .context("cannot start the writer thread")?;
        if let Some(stream) = stream {
            writer.handle().attach_stream(stream);
        }
        writer
            .handle()
            .stats()
            .entries_reimported
            .add(reimported as u64);
        writer
            .handle()
            .stats()
            .intents_recovered
            .add(recovered as u64);
        let signer = match &config.log.signer {
            Some(key) => Some(HeadSigner::start(
                store.clone(),
                key.clone(),
                config.log_id.clone(),
                config.log.clone(),
                writer.handle(),
            )),
            None => {
                tracing::warn!(
                    size = tree.size,
                    "no [log] signing_key: the Merkle tree is kept, but no tree head is signed or \
                     published, so tampering is only detectable by comparing with an earlier \
                     copy; make a key with `auditgate keygen --out PATH`"
                );
                None
            }
        };
        let retention = RetentionTask::start(
            store.clone(),
            config.retention.clone(),
            config.log_id.clone(),
        );
        let log_api = Arc::new(admin::log_api::LogApiState::new(
            config.log.signer.as_ref().map(|key| key.public_key()),
            signer.as_ref().map(HeadSigner::stats),
        ));
        let metrics = Arc::new(Metrics::default());
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
            .wait_for_keys(crate::actor::JWKS_START_WAIT)
            .await;
        let proxy_listener = TcpListener::bind(config.proxy.listen)
            .await
            .with_context(|| format!("cannot listen on {} (proxy.listen)", config.proxy.listen))?;
        let admin_listener = TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin.listen)", config.admin.listen))?;
        let proxy_addr = proxy_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let proxy_task = tokio::spawn(serve_proxy(
            proxy_listener,
            state.clone(),
            shutdown_rx.clone(),
        ));
        let router = admin::router(AdminState {
            store: store.clone(),
            writer: writer.handle(),
            metrics,
            auth: Arc::new(Authenticator::new(&config.admin.tokens)),
            log_id: Arc::from(config.log_id.as_str()),
            log: log_api,
            ingest_keys: Arc::default(),
        });
        let checkpoint_task = tokio::spawn(checkpoint_periodically(
            store.clone(),
            config.store.checkpoint_interval,
            shutdown_rx.clone(),
        ));
        let mut admin_shutdown = shutdown_rx;
        let admin_task = tokio::spawn(async move {
            // Connect info gives the admin API's own entries the caller's address.
            let served = axum::serve(
                admin_listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = admin_shutdown.wait_for(|stop| *stop).await;
            })
            .await;
            if let Err(error) = served {
                tracing::error!(%error, "admin listener failed");
            }
        });
        tracing::info!(proxy = %proxy_addr, admin = %admin_addr, upstream = %config.proxy.upstream, store = %crate::store::describe(&config.store), log = %config.log_id, "auditgate is serving");
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
            signer,
            retention,
            checkpoint_task,
        })
    }

    pub fn writer(&self) -> WriterHandle {
        self.writer.handle()
    }

    /// The head signer's counters, `None` without a signing key. They outlive [`Self::shutdown`],
    /// so a caller can see what the shutdown head's publishing did.
    pub fn signer_stats(&self) -> Option<Arc<crate::signer::SignerStats>> {
        self.signer.as_ref().map(HeadSigner::stats)
    }

    /// Stops accepting, lets in-flight requests finish (within a grace period), and writes every
    /// queued entry before returning.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.proxy_task.await;
        let _ = self.admin_task.await;
        if let Some(retention) = self.retention {
            retention.shutdown().await;
        }
        let writer = self.writer;
        let _ = tokio::task::spawn_blocking(move || writer.shutdown()).await;
        // After the writer: the shutdown head covers every entry.
        if let Some(signer) = self.signer {
            signer.shutdown().await;
        }
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

async fn serve_proxy(
    listener: TcpListener,
    state: Arc<ProxyState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_read_timeout)
        .keep_alive(true)
        // Hostile heads are refused early with 431 and the connection closed: at most 256 header
        // lines, and the head (with any pipelined bytes) buffered to 256 KiB at most, so a
        // client cannot make a connection hold more.
        .max_headers(MAX_REQUEST_HEADERS)
        .max_buf_size(256 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(256 * 1024);
    if !state.config.http2 {
        builder = builder.http1_only();
    }
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(state.config.max_connections));
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let connection_state = state.clone();
        let service =
            service_fn(move |request| proxy::handle(connection_state.clone(), peer, request));
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, error = %error, "client connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(state.config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some requests were still running after the shutdown grace period");
    }
}
