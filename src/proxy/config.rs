//! `[proxy]`: the listener the app's clients connect to, the app behind it, and the limits of
//! each exchange.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::base::units::{duration_or, parse_size};
use crate::base::ConfigError;
use crate::net::{parse_addr, parse_networks};

/// `[proxy]`: the listener the app's clients connect to and the app behind it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFile {
    /// Address to listen on, e.g. "0.0.0.0:8080".
    pub listen: Option<String>,
    /// The app: "host:port" or "http://host:port".
    pub upstream: Option<String>,
    /// Peers whose X-Forwarded-For / Forwarded / identity headers are believed (CIDRs or addresses).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Largest request or response body parsed for `*.body:` values; larger ones stream through
    /// unparsed and the fields are recorded as missing.
    pub max_body_capture: Option<String>,
    /// Longest wait for a client's request head, counted from accept for a connection's first
    /// request (so silent connections cannot hold `max_connections`); also the keep-alive idle
    /// limit.
    pub header_read_timeout: Option<String>,
    /// Longest wait to connect to the app.
    pub connect_timeout: Option<String>,
    /// Longest wait for the app's response head.
    pub upstream_timeout: Option<String>,
    /// How long an idle pooled connection to the app is kept.
    pub idle_timeout: Option<String>,
    /// Accept HTTP/2 (prior knowledge) from clients as well as HTTP/1.1.
    pub http2: Option<bool>,
    /// Most client connections served at once; more wait in the kernel's accept queue.
    pub max_connections: Option<usize>,
    /// At shutdown, how long in-flight requests may take to finish.
    pub shutdown_grace: Option<String>,
    /// Threads serving requests (default: one per CPU core).
    pub worker_threads: Option<usize>,
    /// "strict" (default: RFC 3986 dot-segments removed, slashes merged, unreserved characters
    /// decoded, and that canonical path forwarded) or "none" (the path as sent).
    pub path_normalization: Option<String>,
    /// What `%2F`, `%5C` and a raw `\` in a path become: "reject" (default, 400 and recorded),
    /// "decode" (a path separator) or "keep" (encoded data inside the segment).
    pub escaped_slashes: Option<String>,
    /// What a `;` in a path segment (`/api/users;jsessionid=1/42`) starts: "strip" (default: it
    /// and the rest of its segment are removed from the path matched and forwarded, as servlet
    /// containers route), "reject" (400 and recorded) or "keep" (data inside the segment).
    pub path_parameters: Option<String>,
    /// How route templates match by default: "insensitive" (default) or "sensitive" to case.
    pub route_case: Option<String>,
    /// Whether a trailing slash matters by default: "optional" (default) or "strict".
    pub trailing_slash: Option<String>,
    /// Where a POST's method override is honoured from: header names, "query:NAME",
    /// "form:NAME". Default: the X-HTTP-Method-Override, X-HTTP-Method and X-Method-Override
    /// headers, query:_method and form:_method; [] honours none and strips those headers.
    pub method_override: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// `host:port` of the app.
    pub upstream: String,
    pub trusted_proxies: Vec<IpNet>,
    pub max_body_capture: usize,
    pub header_read_timeout: Duration,
    pub connect_timeout: Duration,
    pub upstream_timeout: Duration,
    pub idle_timeout: Duration,
    pub http2: bool,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    /// `None`: one per core.
    pub worker_threads: Option<usize>,
}

pub(crate) fn validate_proxy(
    file: &ProxyFile,
    errors: &mut Vec<ConfigError>,
) -> Option<ProxyConfig> {
    let listen = parse_addr(
        "proxy.listen",
        file.listen.as_deref().unwrap_or("0.0.0.0:8080"),
        errors,
    );
    let upstream = match file.upstream.as_deref() {
        None => {
            errors.push(ConfigError::new(
                "proxy.upstream",
                "missing: the app's host:port, e.g. 127.0.0.1:3000",
            ));
            None
        }
        Some(text) => match normalize_upstream(text) {
            Ok(upstream) => Some(upstream),
            Err(message) => {
                errors.push(ConfigError::new("proxy.upstream", message));
                None
            }
        },
    };
    let trusted_proxies = parse_networks("proxy.trusted_proxies", &file.trusted_proxies, errors);
    let max_body_capture = match file.max_body_capture.as_deref() {
        None => 64 * 1024,
        Some(text) => match parse_size(text) {
            Ok(size) if size <= 64 * 1024 * 1024 => size as usize,
            Ok(_) => {
                errors.push(ConfigError::new(
                    "proxy.max_body_capture",
                    "must be at most 64MiB",
                ));
                0
            }
            Err(message) => {
                errors.push(ConfigError::new("proxy.max_body_capture", message));
                0
            }
        },
    };
    let header_read_timeout = duration_or(
        "proxy.header_read_timeout",
        file.header_read_timeout.as_deref(),
        Duration::from_secs(30),
        errors,
    );
    let connect_timeout = duration_or(
        "proxy.connect_timeout",
        file.connect_timeout.as_deref(),
        Duration::from_secs(5),
        errors,
    );
    let upstream_timeout = duration_or(
        "proxy.upstream_timeout",
        file.upstream_timeout.as_deref(),
        Duration::from_secs(60),
        errors,
    );
    let idle_timeout = duration_or(
        "proxy.idle_timeout",
        file.idle_timeout.as_deref(),
        Duration::from_secs(90),
        errors,
    );
    let shutdown_grace = duration_or(
        "proxy.shutdown_grace",
        file.shutdown_grace.as_deref(),
        Duration::from_secs(10),
        errors,
    );
    if file
        .worker_threads
        .is_some_and(|threads| threads == 0 || threads > 1024)
    {
        errors.push(ConfigError::new(
            "proxy.worker_threads",
            "must be between 1 and 1024",
        ));
    }
    let max_connections = file.max_connections.unwrap_or(10_000);
    if max_connections == 0 {
        errors.push(ConfigError::new(
            "proxy.max_connections",
            "must be at least 1",
        ));
    }
    Some(ProxyConfig {
        listen: listen?,
        upstream: upstream?,
        trusted_proxies,
        max_body_capture,
        header_read_timeout,
        connect_timeout,
        upstream_timeout,
        idle_timeout,
        http2: file.http2.unwrap_or(true),
        max_connections,
        shutdown_grace,
        worker_threads: file.worker_threads,
    })
}

/// Accepts `host:port` or `http://host:port[/]` and returns `host:port`.
pub(crate) fn normalize_upstream(text: &str) -> Result<String, String> {
    let rest = if let Some(rest) = text.strip_prefix("http://") {
        rest.trim_end_matches('/')
    } else if text.starts_with("https://") {
        return Err(
            "https upstreams are not supported; the app beside the sidecar speaks plain HTTP"
                .to_string(),
        );
    } else {
        text
    };
    let authority: http::uri::Authority = rest
        .parse()
        .map_err(|_| format!("`{text}` is not host:port"))?;
    if authority.port_u16().is_none() {
        return Err(format!("`{text}` needs a port, e.g. 127.0.0.1:3000"));
    }
    if rest.contains('/') || rest.contains('@') {
        return Err(format!(
            "`{text}` must be only host:port (no path or credentials)"
        ));
    }
    Ok(authority.to_string())
}
