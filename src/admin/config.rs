//! `[admin]`: the admin listener's address, its tokens and their scopes.

use std::net::SocketAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::base::ConfigError;
use crate::net::{parse_addr, parse_networks};

/// `[admin]`: the admin API and viewer listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Address to listen on; defaults to 127.0.0.1:9090, never the proxy's.
    pub listen: Option<String>,
    /// Admin bearer tokens, stored as SHA-256 hashes.
    #[serde(default)]
    pub tokens: Vec<TokenFile>,
    /// Reverse proxies in front of the admin listener (CIDRs or addresses) that terminate TLS:
    /// when one of them says the scheme is https (`X-Forwarded-Proto` or `Forwarded: proto=`),
    /// the viewer's session cookie is marked `Secure`.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// One `[[admin.tokens]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    /// Who holds the token; recorded as the actor of their queries.
    pub name: String,
    /// Lowercase hex SHA-256 of the token (`auditgate token` prints both).
    pub sha256: String,
    /// What the token may do: read, export, write.
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Export,
    Write,
}

impl Scope {
    /// The scope a config (or `auditgate token --scopes`) names: read, export or write.
    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "read" => Some(Scope::Read),
            "export" => Some(Scope::Export),
            "write" => Some(Scope::Write),
            _ => None,
        }
    }

    /// The scope's name as written in the config and the OpenAPI document.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Export => "export",
            Scope::Write => "write",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AdminToken {
    pub name: String,
    pub sha256: [u8; 32],
    pub scopes: Vec<Scope>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub tokens: Vec<AdminToken>,
    /// TLS-terminating proxies whose word on the scheme is believed.
    pub trusted_proxies: Vec<IpNet>,
}

pub(crate) fn validate_admin(
    file: &AdminFile,
    errors: &mut Vec<ConfigError>,
) -> Option<AdminConfig> {
    let listen = parse_addr(
        "admin.listen",
        file.listen.as_deref().unwrap_or("127.0.0.1:9090"),
        errors,
    );
    let mut tokens = Vec::new();
    for (index, token) in file.tokens.iter().enumerate() {
        let location = format!("admin.tokens #{} ({:?})", index + 1, token.name);
        let mut sha256 = [0u8; 32];
        if hex::decode_to_slice(token.sha256.trim(), &mut sha256).is_err() {
            errors.push(ConfigError::new(
                &format!("{location}.sha256"),
                "must be 64 hex digits (the hash `auditgate token` prints, never the token itself)",
            ));
        }
        let mut scopes = Vec::new();
        for scope in &token.scopes {
            match Scope::parse(scope) {
                Some(scope) => scopes.push(scope),
                None => errors.push(ConfigError::new(
                    &format!("{location}.scopes"),
                    format!("`{scope}` is not one of read, export, write"),
                )),
            }
        }
        if token.scopes.is_empty() {
            errors.push(ConfigError::new(
                &format!("{location}.scopes"),
                "a token needs at least one scope",
            ));
        }
        tokens.push(AdminToken {
            name: token.name.clone(),
            sha256,
            scopes,
        });
    }
    let trusted_proxies = parse_networks("admin.trusted_proxies", &file.trusted_proxies, errors);
    Some(AdminConfig {
        listen: listen?,
        tokens,
        trusted_proxies,
    })
}
