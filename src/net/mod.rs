//! The one TLS client configuration, shared by every outbound connection (JWKS URLs, head
//! targets, PostgreSQL), and the HTTP/1.1 connections built on it.

use std::net::SocketAddr;
use std::path::Path;

use ipnet::IpNet;

use crate::base::ConfigError;

pub mod http1;
pub mod tls;

pub(crate) fn parse_addr(
    location: &str,
    text: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<SocketAddr> {
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            errors.push(ConfigError::new(
                location,
                format!("`{text}` is not an address like 127.0.0.1:8080 or [::]:8080"),
            ));
            None
        }
    }
}

/// Parses trusted proxy entries: CIDRs or single addresses.
pub fn parse_networks(
    location: &str,
    items: &[String],
    errors: &mut Vec<ConfigError>,
) -> Vec<IpNet> {
    let mut networks = Vec::new();
    for item in items {
        if let Ok(network) = item.parse::<IpNet>() {
            networks.push(network);
        } else if let Ok(addr) = item.parse::<std::net::IpAddr>() {
            networks.push(IpNet::from(addr));
        } else {
            errors.push(ConfigError::new(
                location,
                format!("`{item}` is not a CIDR like 10.0.0.0/8 or an address"),
            ));
        }
    }
    networks
}

/// The TLS client for an https:// URL of the config (fully verified, HTTP/1.1), trusting
/// `ca_file` or the system's CAs. A failure is a config error at `ca_location` when a CA file was
/// given (it is the file's fault), else at `url_location`.
pub(crate) fn https_client(
    ca_file: Option<&Path>,
    ca_location: &str,
    url_location: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<std::sync::Arc<rustls::ClientConfig>> {
    match crate::net::tls::client_config(
        ca_file,
        crate::net::tls::Verification::Full,
        &[b"http/1.1"],
    ) {
        Ok(tls) => Some(tls),
        Err(error) => {
            let location = if ca_file.is_some() {
                ca_location
            } else {
                url_location
            };
            errors.push(ConfigError::new(location, error.to_string()));
            None
        }
    }
}
