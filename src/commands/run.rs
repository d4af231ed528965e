//! `auditgate run`: serve until a signal, reloading the configuration on SIGHUP.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::server::Sidecar;

/// Serves until SIGTERM or SIGINT, reloading rules and actor sources on SIGHUP.
pub async fn run_until_signal(config: Config, path: PathBuf) -> anyhow::Result<()> {
    // Signal handlers go in before the listeners open, so a signal that arrives as soon as the
    // sidecar is serving is handled, not fatal.
    let signals = Signals::install()?;
    let sidecar = Sidecar::start(config, Some(path.clone())).await?;
    signals.wait_for_stop(&sidecar, &path).await;
    sidecar.shutdown().await;
    Ok(())
}

#[cfg(unix)]
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use anyhow::Context as _;
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            hangup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
        })
    }

    async fn wait_for_stop(mut self, sidecar: &Sidecar, path: &Path) {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => { tracing::info!("SIGTERM: draining"); return; }
                _ = self.interrupt.recv() => { tracing::info!("SIGINT: draining"); return; }
                _ = self.hangup.recv() => reload(sidecar, path).await,
            }
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals)
    }

    async fn wait_for_stop(self, _sidecar: &Sidecar, _path: &Path) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Re-reads the config file and applies it (see [`Sidecar::reload`]). An invalid file keeps the
/// running configuration and logs every error.
pub async fn reload(sidecar: &Sidecar, path: &Path) {
    let metrics = &sidecar.state.metrics;
    let refused = |errors: Vec<String>| {
        metrics.reloads_failed.inc();
        for error in errors {
            tracing::error!(file = %path.display(), %error, "reload refused; the running configuration stays");
        }
    };
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            refused(errors.errors.iter().map(ToString::to_string).collect());
            return;
        }
    };
    let rules = config.policy.rules.rules().len();
    let sha256 = config.sha256.clone();
    match sidecar.reload(config).await {
        crate::server::ReloadOutcome::Applied(changes) => {
            metrics.reloads_ok.inc();
            tracing::info!(
                file = %path.display(),
                rules,
                config_sha256 = %sha256,
                changed = ?changes.changed,
                restart_needed = ?changes.restart_needed(),
                "configuration reloaded"
            );
        }
        crate::server::ReloadOutcome::Refused(errors) => refused(errors),
    }
}

/// `auditgate run`: loads the configuration and serves until a signal.
pub fn serve(path: &Path) -> anyhow::Result<std::process::ExitCode> {
    let config = match super::load_config(path) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    super::runtime(config.proxy.worker_threads)?
        .block_on(run_until_signal(config, path.to_path_buf()))?;
    Ok(std::process::ExitCode::SUCCESS)
}
