//! The long-running commands' glue: serve until a signal, reload on SIGHUP, describe a config,
//! make admin tokens.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::config::{Config, Durability, UnmatchedRecord};
use crate::rules::RuleKind;
use crate::server::Sidecar;

/// Serves until SIGTERM or SIGINT, reloading rules and actor sources on SIGHUP.
pub async fn run_until_signal(config: Config, path: PathBuf) -> anyhow::Result<()> {
    let sidecar = Sidecar::start(config, Some(path.clone())).await?;
    wait_for_stop(&sidecar, &path).await;
    sidecar.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn wait_for_stop(sidecar: &Sidecar, path: &Path) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt), Ok(mut hangup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping");
        return;
    };
    loop {
        tokio::select! {
            _ = terminate.recv() => { tracing::info!("SIGTERM: draining"); return; }
            _ = interrupt.recv() => { tracing::info!("SIGINT: draining"); return; }
            _ = hangup.recv() => reload(sidecar, path),
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_stop(_sidecar: &Sidecar, _path: &Path) {
    let _ = tokio::signal::ctrl_c().await;
}

/// Re-reads the config file and swaps in its rules and actor sources. An invalid file keeps the
/// running config and logs every error. Listeners and the store are not changed by a reload.
pub fn reload(sidecar: &Sidecar, path: &Path) {
    match Config::load(path) {
        Ok(config) => {
            let rules = config.policy.rules.rules().len();
            sidecar.state.replace_policy(config.policy);
            tracing::info!(file = %path.display(), rules, "configuration reloaded");
        }
        Err(errors) => {
            for error in &errors.errors {
                tracing::error!(file = %errors.file, %error, "reload refused; the running configuration stays");
            }
        }
    }
}

/// A human summary of a valid config, for `auditgate check`.
pub fn describe(path: &Path, config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: valid", path.display());
    let _ = writeln!(
        out,
        "  proxy {} -> {}   admin {}   store {} ({})",
        config.proxy.listen,
        config.proxy.upstream,
        config.admin.listen,
        config.store.path.display(),
        match config.store.durability {
            Durability::AfterResponse => "after-response",
            Durability::WriteAhead => "write-ahead",
        }
    );
    let rules = config.policy.rules.rules();
    let _ = writeln!(
        out,
        "  {} rule{}:",
        rules.len(),
        if rules.len() == 1 { "" } else { "s" }
    );
    for (index, rule) in rules.iter().enumerate() {
        let what = match &rule.kind {
            RuleKind::Skip => "skip".to_string(),
            RuleKind::Record(_) => "record".to_string(),
        };
        let _ = writeln!(
            out,
            "    {:>3}. {:<28} {:<7} {}",
            index + 1,
            rule.name,
            what,
            rule.route().unwrap_or("(any path)")
        );
    }
    let unmatched = match config.policy.rules.unmatched {
        UnmatchedRecord::None => "not recorded",
        UnmatchedRecord::Mutations => "mutations recorded as http.<method>",
        UnmatchedRecord::All => "all recorded as http.<method>",
    };
    let _ = writeln!(out, "  unmatched traffic: {unmatched}");
    out
}

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
