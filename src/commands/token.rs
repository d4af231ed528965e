//! `auditgate token`: a new admin token and the SHA-256 the config stores.

use std::process::ExitCode;

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::admin::config::Scope;

/// A new admin token and the hash the config stores.
pub struct NewToken {
    pub token: String,
    pub sha256: String,
}

pub fn new_token() -> NewToken {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token = format!("agt_{}", hex::encode(bytes));
    let sha256 = hex::encode(Sha256::digest(token.as_bytes()));
    NewToken { token, sha256 }
}

/// `auditgate token`: prints a new token for `name` with `scopes` (comma-separated) and the
/// config snippet holding its hash.
pub fn token(name: &str, scopes: &str) -> anyhow::Result<ExitCode> {
    let scopes: Vec<String> = scopes
        .split(',')
        .map(|scope| scope.trim().to_string())
        .filter(|scope| !scope.is_empty())
        .collect();
    // The same scopes `check` accepts, so the printed snippet is a valid config.
    let unknown: Vec<&String> = scopes
        .iter()
        .filter(|scope| Scope::parse(scope).is_none())
        .collect();
    if !unknown.is_empty() || scopes.is_empty() {
        eprintln!(
            "auditgate token: --scopes: {} (scopes are read, export, write)",
            if scopes.is_empty() {
                "a token needs at least one scope".to_string()
            } else {
                format!("{unknown:?} not known")
            }
        );
        return Ok(ExitCode::from(super::EXIT_USAGE));
    }
    let token = new_token();
    crate::commands::cli::print_stdout(&format!(
        "token:  {}\nsha256: {}\n\nGive the token to its holder; put only the hash in the \
         config:\n\n[[admin.tokens]]\nname = {name:?}\nsha256 = \"{}\"\nscopes = {scopes:?}\n",
        token.token, token.sha256, token.sha256
    ))?;
    Ok(ExitCode::SUCCESS)
}
