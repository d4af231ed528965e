//! The two listeners: the proxy's accept loop (connection limit, first-head deadline, graceful
//! drain) and the admin API's axum server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::proxy::{self, ProxyState};

/// Most header lines a request may carry; more is answered 431.
pub const MAX_REQUEST_HEADERS: usize = 256;

/// Both listeners, bound (so their addresses are known) but not yet serving.
pub(super) struct Listeners {
    proxy: TcpListener,
    admin: TcpListener,
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

impl Listeners {
    pub(super) async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let proxy = TcpListener::bind(config.proxy.listen)
            .await
            .with_context(|| format!("cannot listen on {} (proxy.listen)", config.proxy.listen))?;
        let admin = TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin.listen)", config.admin.listen))?;
        Ok(Listeners {
            proxy_addr: proxy.local_addr()?,
            admin_addr: admin.local_addr()?,
            proxy,
            admin,
        })
    }

    /// Serves both until `shutdown` turns true; each task ends when its listener has drained.
    pub(super) fn serve(
        self,
        state: Arc<ProxyState>,
        admin_state: AdminState,
        shutdown: &watch::Receiver<bool>,
    ) -> (JoinHandle<()>, JoinHandle<()>) {
        let proxy_task = tokio::spawn(serve_proxy(self.proxy, state, shutdown.clone()));
        let router = admin::router(admin_state);
        let mut admin_shutdown = shutdown.clone();
        let admin_listener = self.admin;
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
        (proxy_task, admin_task)
    }
}

/// The proxy's connection builder: HTTP/1 with header limits, HTTP/2 unless turned off.
fn connection_builder(state: &ProxyState) -> auto::Builder<TokioExecutor> {
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
    builder
}

async fn serve_proxy(
    listener: TcpListener,
    state: Arc<ProxyState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = connection_builder(&state);
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
        match accepted {
            Ok((stream, peer)) => {
                serve_connection(&builder, &graceful, &state, stream, peer, permit);
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(state.config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some requests were still running after the shutdown grace period");
    }
}

/// Serves one accepted connection in its own task, holding `permit` (a connection slot) until
/// it ends.
fn serve_connection(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    state: &Arc<ProxyState>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let connection_state = state.clone();
    // hyper's own header timeout starts only once it reads an HTTP/1 head, and the protocol
    // detection before it (HTTP/1 or HTTP/2) waits for bytes without limit: a connection that
    // never sends its first request would hold a slot forever. So the first head must arrive
    // within `header_read_timeout` of accept; later heads are hyper's to time.
    let first_request = Arc::new(tokio::sync::Notify::new());
    let first_request_seen = first_request.clone();
    let service = service_fn(move |request| {
        first_request_seen.notify_one();
        proxy::handle_counted(connection_state.clone(), peer, request)
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    let connection = graceful.watch(connection.into_owned());
    let first_head_deadline = state.config.header_read_timeout;
    tokio::spawn(async move {
        let mut connection = std::pin::pin!(connection);
        let ended = tokio::select! {
            ended = connection.as_mut() => Some(ended),
            _ = first_request.notified() => None,
            _ = tokio::time::sleep(first_head_deadline) => {
                tracing::debug!(%peer, "no request head within header_read_timeout of accept; connection closed");
                drop(permit);
                return;
            }
        };
        let ended = match ended {
            Some(ended) => ended,
            None => connection.await,
        };
        if let Err(error) = ended {
            tracing::debug!(%peer, error = %error, "client connection ended with an error");
        }
        drop(permit);
    });
}
