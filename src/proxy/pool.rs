//! The proxy's own pool of HTTP/1.1 connections to the app.
//!
//! A request takes a ready connection from the pool (the one returned last, so the fewest
//! connections stay warm), is sent on it, and the connection goes back when the response body
//! has ended: hyper's `client::conn::http1` sender, one task per connection that drives it, and a
//! mutex-guarded stack of idle senders. Compared with hyper-util's pooled client this costs no
//! pool-key lookup, no connect future raced against the checkout and no task spawned per request
//! to wait for the connection to be ready again.
//!
//! What is kept from that client: the connect timeout (shared between the addresses a name
//! resolves to), TCP_NODELAY, idle connections closed after `idle_timeout`, at most
//! [`MAX_IDLE`] idle connections, upgrades (WebSocket), a Host header for requests without one,
//! and a request that a reused connection closed before it was written sent again on another.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, Uri};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Most idle connections kept; more are closed when their response ends.
pub(super) const MAX_IDLE: usize = 1024;

/// Why a request did not get a response head from the app.
#[derive(Debug, thiserror::Error)]
pub(super) enum UpstreamError {
    /// No connection could be opened.
    #[error("cannot connect to the app: {0}")]
    Connect(String),
    /// The connection failed while the request was sent or the response head read (this
    /// includes the client's request body breaking on the way).
    #[error("the app's connection failed")]
    Send(#[source] hyper::Error),
}

/// Connections to the app, shared by every request.
/// Generic over the request body so that the pool need not know the proxy's body types.
pub(super) struct Pool<B> {
    shared: Arc<Shared<B>>,
}

struct Shared<B> {
    /// `host:port` as configured, resolved on each connect (a name may move).
    address: String,
    /// The Host header of a request that has none: the app's authority, without port 80.
    host: HeaderValue,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Idle senders, the most recently returned last.
    idle: Mutex<Vec<Idle<B>>>,
    /// Whether the task that closes connections idle past `idle_timeout` runs.
    sweeper_started: AtomicBool,
}

struct Idle<B> {
    sender: SendRequest<B>,
    since: Instant,
}

/// A connection in use by one request, returned to the pool by [`Lease::release`] once the
/// response body has ended; dropped otherwise, which closes it.
pub(super) struct Lease<B> {
    sender: SendRequest<B>,
    pool: Weak<Shared<B>>,
}

impl<B> Pool<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub(super) fn new(
        authority: &Authority,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Pool<B> {
        let host = match authority.port_u16() {
            Some(80) | None => authority.host(),
            Some(_) => authority.as_str(),
        };
        let host = HeaderValue::from_str(host).unwrap_or_else(|_| HeaderValue::from_static(""));
        Pool {
            shared: Arc::new(Shared {
                address: authority.as_str().to_string(),
                host,
                connect_timeout,
                idle_timeout,
                idle: Mutex::new(Vec::new()),
                sweeper_started: AtomicBool::new(false),
            }),
        }
    }

    /// Sends a request (whose target is the path and query, or the authority of a CONNECT) and
    /// waits for the response head. A reused connection that closed before the request was
    /// written gives the request back, and it goes out on the next one.
    pub(super) async fn send(
        &self,
        mut request: Request<B>,
    ) -> Result<(Response<Incoming>, Lease<B>), UpstreamError> {
        if !request.headers().contains_key(header::HOST) {
            request
                .headers_mut()
                .insert(header::HOST, self.shared.host.clone());
        }
        loop {
            let (mut sender, reused) = match self.shared.checkout() {
                Some(sender) => (sender, true),
                None => (self.shared.connect().await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let lease = Lease {
                        sender,
                        pool: Arc::downgrade(&self.shared),
                    };
                    return Ok((response, lease));
                }
                Err(mut error) => match error.take_message() {
                    // Each retry takes a connection off the pool and a fresh one is never
                    // retried, so this ends.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(UpstreamError::Send(error.into_error())),
                },
            }
        }
    }
}

impl<B> Shared<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle<B>>> {
        // The stack is consistent after any push or pop, so a panic elsewhere leaves it usable.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most recently returned connection that is still ready and not idle for too long;
    /// others met on the way are closed.
    fn checkout(&self) -> Option<SendRequest<B>> {
        let mut idle = self.lock_idle();
        while let Some(entry) = idle.pop() {
            // A sender is ready when it went back; not ready any more means its connection
            // closed (the app closed it, or it broke) since.
            if entry.sender.is_ready() && entry.since.elapsed() < self.idle_timeout {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Opens a connection to the app and starts the task that drives it.
    async fn connect(&self) -> Result<SendRequest<B>, UpstreamError> {
        let stream = self.connect_tcp().await?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| UpstreamError::Connect(error.to_string()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "connection to the app ended with an error");
            }
        });
        sender.ready().await.map_err(UpstreamError::Send)?;
        Ok(sender)
    }

    /// A TCP connection to the first address of the app's name that takes one, each address
    /// given an equal share of the connect timeout.
    async fn connect_tcp(&self) -> Result<TcpStream, UpstreamError> {
        let resolving = tokio::net::lookup_host(self.address.as_str());
        let addresses: Vec<_> = match tokio::time::timeout(self.connect_timeout, resolving).await {
            Ok(Ok(addresses)) => addresses.collect(),
            Ok(Err(error)) => {
                return Err(UpstreamError::Connect(format!(
                    "cannot resolve {}: {error}",
                    self.address
                )))
            }
            Err(_) => {
                return Err(UpstreamError::Connect(format!(
                    "resolving {} took longer than the connect timeout",
                    self.address
                )))
            }
        };
        let share = self.connect_timeout / addresses.len().max(1) as u32;
        let mut last_error = format!("{} resolves to no address", self.address);
        for address in addresses {
            match tokio::time::timeout(share, TcpStream::connect(address)).await {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(error)) => last_error = format!("tcp connect error: {error}"),
                Err(_) => last_error = format!("tcp connect to {address} timed out"),
            }
        }
        Err(UpstreamError::Connect(last_error))
    }

    /// Takes a ready connection back, unless the pool is full.
    fn put(self: &Arc<Shared<B>>, sender: SendRequest<B>) {
        {
            let mut idle = self.lock_idle();
            if idle.len() >= MAX_IDLE {
                return;
            }
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
        if !self.sweeper_started.swap(true, Ordering::Relaxed) {
            self.start_sweeper();
        }
    }

    /// Closes connections idle past `idle_timeout` even when no request comes to find them, as
    /// long as the pool exists.
    fn start_sweeper(self: &Arc<Shared<B>>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Outside the runtime (at shutdown) there is nothing left to sweep for.
            return;
        };
        let pool = Arc::downgrade(self);
        let period = self.idle_timeout.max(Duration::from_millis(100));
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(shared) = pool.upgrade() else {
                    return;
                };
                let timeout = shared.idle_timeout;
                // Closed after the lock is let go: dropping a sender wakes its connection task.
                let closed: Vec<Idle<B>> = {
                    let mut idle = shared.lock_idle();
                    let (keep, close) = std::mem::take(&mut *idle).into_iter().partition(|entry| {
                        entry.sender.is_ready() && entry.since.elapsed() < timeout
                    });
                    *idle = keep;
                    close
                };
                drop(closed);
            }
        });
    }
}

impl<B> Lease<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Returns the connection to the pool: the response body has ended, so it can carry the
    /// next request once hyper has finished with this one (at once, unless the request body is
    /// still being sent; then a small task waits for it).
    pub(super) fn release(mut self) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        if self.sender.is_ready() {
            pool.put(self.sender);
        } else if !self.sender.is_closed() {
            // A body dropped outside the runtime (at shutdown) just closes its connection.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if self.sender.ready().await.is_ok() {
                        pool.put(self.sender);
                    }
                });
            }
        }
    }
}

/// The target the app is sent: the path and query (origin form), or for a CONNECT the app's
/// authority (authority form). An HTTP/1 request's target is in origin form already and is kept
/// as it is; an HTTP/2 request's (or an absolute-form one's) loses its scheme and authority.
pub(super) fn request_target(upstream: &Authority, method: &Method, target: Uri) -> Uri {
    if method == Method::CONNECT {
        let mut parts = http::uri::Parts::default();
        parts.authority = Some(upstream.clone());
        return Uri::from_parts(parts).unwrap_or_default();
    }
    if target.scheme().is_none() && target.authority().is_none() {
        return target;
    }
    match target.path_and_query() {
        Some(path) if path.as_str() != "/" => Uri::from(path.clone()),
        _ => Uri::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_is_sent_origin_form_targets() {
        let app: Authority = "app.internal:8080".parse().expect("authority");
        let target = |method: Method, uri: &str| {
            request_target(&app, &method, uri.parse().expect("uri")).to_string()
        };
        assert_eq!(
            target(Method::GET, "/api/items/7?full=1"),
            "/api/items/7?full=1"
        );
        assert_eq!(target(Method::GET, "/"), "/");
        // An HTTP/2 request (or an absolute-form HTTP/1 one) names the client's authority.
        assert_eq!(target(Method::GET, "http://client.example/a/b?c"), "/a/b?c");
        assert_eq!(target(Method::GET, "http://client.example"), "/");
        assert_eq!(target(Method::OPTIONS, "*"), "*");
        assert_eq!(
            target(Method::CONNECT, "client.example:443"),
            "app.internal:8080"
        );
    }
}
