//! The app's side of the proxy: the upstream request's headers (hop-by-hop headers removed in
//! both directions, forwarding headers rebuilt from what the proxy believed), and how an upstream
//! failure is described. The connections themselves are `pool.rs`'s.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request;

use crate::identity::client_ip::{self, ClientAddr};
use crate::policy::Policy;

use super::pool::UpstreamError;

/// Hop-by-hop headers (RFC 9110 section 7.6.1), removed in both directions.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(super) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-client-request-id");

/// Removes from the upstream request what must not reach the app: hop-by-hop headers (except a
/// WebSocket's Upgrade), identity and forwarding headers the client had no standing to send, and
/// method overrides that are not honoured. A request with no Host gets its target's authority.
pub(super) fn strip_request_headers(
    parts: &mut request::Parts,
    policy: &Policy,
    upgrade: bool,
    peer_trusted: bool,
) {
    if !parts.headers.contains_key(header::HOST) {
        if let Some(authority) = parts.uri.authority() {
            if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(header::HOST, value);
            }
        }
    }
    remove_hop_by_hop(&mut parts.headers, upgrade);
    // Identity headers an untrusted client set itself, where a header actor asks for it; the
    // exchange has already seen and noted them.
    policy
        .actors
        .strip_untrusted_headers(&mut parts.headers, peer_trusted);
    // Other spellings of forwarding headers (`X_Forwarded_For`), which some apps read as the
    // dashed ones the proxy rebuilds from what it believed.
    client_ip::remove_other_forwarding_spellings(&mut parts.headers);
    // Override headers that are not honoured never reach the app: it could act on a method the
    // log did not follow.
    policy.canonical.method_override.strip(&mut parts.headers);
    if upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Adds the forwarding headers: the client chain and protocol as believed, auditgate's request id,
/// and the client's own request id under its own name.
pub(super) fn add_forwarding_headers(
    headers: &mut HeaderMap,
    client_addr: &ClientAddr,
    peer_trusted: bool,
    request_id: &HeaderValue,
    client_request_id: Option<HeaderValue>,
) {
    // Written once into the buffer the header value keeps (no string per address, no copy).
    let mut forwarded_for = String::with_capacity(client_addr.believed_chain.len() * 17);
    for (index, address) in client_addr.believed_chain.iter().enumerate() {
        if index > 0 {
            forwarded_for.push_str(", ");
        }
        let _ = write!(forwarded_for, "{address}");
    }
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(forwarded_for)) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    // A Forwarded header is rebuilt the same way: only believed elements reach the app.
    if let Some(forwarded) = &client_addr.forwarded {
        match HeaderValue::from_str(forwarded) {
            Ok(value) => {
                headers.insert(header::FORWARDED, value);
            }
            Err(_) => {
                headers.remove(header::FORWARDED);
            }
        }
    }
    let keep_proto = peer_trusted && headers.contains_key(&X_FORWARDED_PROTO);
    if !keep_proto {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    // The client's own X-Request-Id stays available to the app under its own name (and only
    // the client's: a client-sent X-Client-Request-Id without one is dropped, so the header
    // always means the same thing).
    match client_request_id {
        Some(id) => {
            headers.insert(X_CLIENT_REQUEST_ID.clone(), id);
        }
        None => {
            headers.remove(&X_CLIENT_REQUEST_ID);
        }
    }
}

pub(super) fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most requests carry none of these: one pass over the names (compared, not hashed) finds
    // that out for less than a lookup per hop-by-hop name.
    let any = headers
        .keys()
        .any(|name| name == header::UPGRADE || HOP_BY_HOP.contains(name));
    if !any {
        return;
    }
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(&name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// An upstream failure with its causes, for the entry's `error` and the log.
pub(super) fn describe_upstream_error(error: &UpstreamError) -> String {
    use std::error::Error as _;
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub(super) fn humanize(duration: Duration) -> String {
    if duration.as_millis() % 1000 == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("x-app", HeaderValue::from_static("kept"));
        remove_hop_by_hop(&mut headers, false);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-app"));
    }

    #[test]
    fn a_lone_upgrade_header_goes_unless_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("x-app", HeaderValue::from_static("kept"));
        let mut upgrading = headers.clone();
        remove_hop_by_hop(&mut headers, false);
        assert!(!headers.contains_key(header::UPGRADE));
        assert!(headers.contains_key("x-app"));
        remove_hop_by_hop(&mut upgrading, true);
        assert!(upgrading.contains_key(header::UPGRADE));
    }
}
