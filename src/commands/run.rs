//! The long-running commands' glue: serve until a signal, reload on SIGHUP, describe a config,
//! make admin tokens.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::base::units::format_duration as human_duration;
use crate::config::Config;
use crate::export::{ExportEncoder, ExportFormat, ExportReader};
use crate::policy::rules::file::UnmatchedRecord;
use crate::policy::rules::RuleKind;
use crate::server::Sidecar;
use crate::store::config::Durability;
use crate::store::query::{parse_filter_and_page, Filter, PageRequest};

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
        crate::store::describe(&config.store),
        match config.store.durability {
            Durability::AfterResponse => "after-response",
            Durability::WriteAhead => "write-ahead",
        }
    );
    if let Some(database) = &config.store.postgres {
        let _ = writeln!(out, "  store TLS: {}", database.tls.describe());
    }
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
            "    {:>3}. {:<28} {:<7} {:<12} {:<32} status {}",
            index + 1,
            rule.name,
            what,
            rule.methods_label(),
            rule.route().unwrap_or("(any path)"),
            rule.status
        );
    }
    for (index, source) in config.policy.actors.describe().iter().enumerate() {
        let _ = writeln!(out, "  actor #{}: {source}", index + 1);
    }
    let _ = writeln!(out, "  redaction: {}", config.policy.redact.describe());
    let unmatched = match config.policy.rules.unmatched {
        UnmatchedRecord::None => "not recorded",
        UnmatchedRecord::Mutations => "mutations recorded as http.<method>",
        UnmatchedRecord::All => "all recorded as http.<method>",
    };
    let _ = writeln!(out, "  unmatched traffic: {unmatched}");
    let _ = writeln!(out, "  {}", describe_log(config));
    out
}

/// One line on tree heads and retention, for `auditgate check`.
fn describe_log(config: &Config) -> String {
    let heads = match &config.log.signer {
        Some(signer) => {
            let targets: Vec<String> = config
                .log
                .publish_heads
                .iter()
                .map(ToString::to_string)
                .collect();
            format!(
                "tree heads signed (key {}) every {} entries or {}, published to {}",
                signer.key_id(),
                config.log.sign_every,
                human_duration(config.log.sign_interval),
                if targets.is_empty() {
                    "the store only".to_string()
                } else {
                    targets.join(", ")
                }
            )
        }
        None => "tree heads NOT signed (no [log] signing_key)".to_string(),
    };
    let retention = match (config.retention.max_age, config.retention.rules.len()) {
        (None, 0) => "entries kept forever".to_string(),
        (Some(age), rules) => format!(
            "entries pruned after {} ({rules} prefix rules)",
            human_duration(age)
        ),
        (None, rules) => format!("entries pruned by {rules} prefix rules only"),
    };
    format!("{heads}; {retention}")
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

/// The filter parameters of `query`/`export`, in the admin API's names, so both share one parser.
pub fn filter_params(args: &crate::commands::cli::FilterArgs) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut add = |name: &str, value: &Option<String>| {
        if let Some(value) = value {
            params.push((name.to_string(), value.clone()));
        }
    };
    add("actor", &args.actor);
    add("action", &args.action);
    add("action_prefix", &args.action_prefix);
    add("resource_type", &args.resource_type);
    add("resource_id", &args.resource_id);
    add("outcome", &args.outcome);
    add("status", &args.status);
    add("ip", &args.ip);
    add("since", &args.since);
    add("until", &args.until);
    add("q", &args.q);
    add("log_id", &args.log_id);
    for prefix in &args.exclude_action_prefix {
        params.push(("exclude_action_prefix".to_string(), prefix.clone()));
    }
    params
}

/// Locates and opens, read-only, the store of a read command (`--db` or `--config`). `Err` is
/// the exit code after the reason was printed: 64 for an invalid configuration, 1 for a store
/// that cannot be read (missing, not a log, unreachable).
pub fn open_read_store(
    command: &str,
    args: &crate::commands::cli::StoreArgs,
    log_id: Option<&str>,
) -> Result<crate::commands::store_location::ReadStore, std::process::ExitCode> {
    open_read_store_and_key(command, args, log_id).map(|(store, _)| store)
}

/// [`open_read_store`], with the configuration's signing key when `--config` names one.
pub fn open_read_store_and_key(
    command: &str,
    args: &crate::commands::cli::StoreArgs,
    log_id: Option<&str>,
) -> Result<
    (
        crate::commands::store_location::ReadStore,
        Option<std::sync::Arc<crate::log::head::LogSigner>>,
    ),
    std::process::ExitCode,
> {
    use crate::commands::store_location::{locate, LocateError};
    let located = locate(args.db.as_deref(), args.config.as_deref()).map_err(|error| {
        match error {
            LocateError::Config(errors) => eprint!("{errors}"),
        }
        std::process::ExitCode::from(64)
    })?;
    let log_id = log_id
        .map(str::to_string)
        .or(located.config_log_id)
        .unwrap_or_default();
    let signer = located.config_signer;
    located
        .location
        .open_for_reading(&log_id)
        .map(|store| (store, signer))
        .map_err(|error| {
            eprintln!("auditgate {command}: {error}");
            std::process::ExitCode::FAILURE
        })
}

/// `auditgate query`.
pub fn query(args: &crate::commands::cli::QueryArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut params = filter_params(&args.filters);
    params.push(("limit".to_string(), args.limit.to_string()));
    if args.asc {
        params.push(("order".to_string(), "asc".to_string()));
    }
    let (filter, page) = match parse_cli_filters("query", &params) {
        Ok(parsed) => parsed,
        Err(code) => return Ok(code),
    };
    let format = args.format.as_str();
    if format != "json" && format != "table" {
        eprintln!("auditgate query: --format must be json or table");
        return Ok(std::process::ExitCode::from(64));
    }
    let opened = match open_read_store("query", &args.store, args.filters.log_id.as_deref()) {
        Ok(opened) => opened,
        Err(code) => return Ok(code),
    };
    let result = opened.store.list(&filter, &page)?;
    opened.check_consistent()?;
    let mut out = String::new();
    if format == "json" {
        for entry in &result.entries {
            let _ = writeln!(out, "{}", entry.to_api_json());
        }
    } else {
        let _ = writeln!(
            out,
            "{:>6}  {:<24}  {:<26}  {:<24}  {:<18}  {:<8}  {:>6}  IP",
            "SEQ", "TIME (UTC)", "ACTOR", "ACTION", "RESOURCE", "OUTCOME", "STATUS"
        );
        for entry in &result.entries {
            let actor = entry
                .actor_email
                .clone()
                .or_else(|| entry.actor_id.clone())
                .unwrap_or_else(|| "-".to_string());
            let resource = match (&entry.resource_type, &entry.resource_id) {
                (Some(kind), Some(id)) => format!("{kind}/{id}"),
                (Some(kind), None) => kind.clone(),
                (None, Some(id)) => id.clone(),
                (None, None) => "-".to_string(),
            };
            let _ = writeln!(
                out,
                "{:>6}  {:<24}  {:<26}  {:<24}  {:<18}  {:<8}  {:>6}  {}",
                entry.seq,
                entry.created_at.format("%Y-%m-%d %H:%M:%S%.3f"),
                printable(&actor, 26),
                printable(&entry.action, 24),
                printable(&resource, 18),
                entry.outcome.as_str(),
                entry
                    .status
                    .map(|status| status.to_string())
                    .unwrap_or_else(|| "-".to_string()),
                entry.ip.as_deref().unwrap_or("-"),
            );
        }
        let _ = writeln!(
            out,
            "({} entr{})",
            result.entries.len(),
            if result.entries.len() == 1 {
                "y"
            } else {
                "ies"
            }
        );
    }
    crate::commands::cli::print_stdout(&out)?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Shortens and neutralizes a value for a terminal table: control characters (ANSI escapes, CR,
/// LF) are shown escaped so a hostile value cannot rewrite the screen.
fn printable(text: &str, width: usize) -> String {
    let escaped: String = text.chars().flat_map(char::escape_default).collect();
    let shown: String = if text.chars().any(char::is_control) {
        escaped
    } else {
        text.to_string()
    };
    if shown.chars().count() > width {
        let cut: String = shown.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        shown
    }
}

/// Parses CLI filters with the admin API's parser; on error prints each as `--flag: message`
/// and gives the usage exit code.
fn parse_cli_filters(
    command: &str,
    params: &[(String, String)],
) -> Result<(Filter, PageRequest), std::process::ExitCode> {
    parse_filter_and_page(params, chrono::Utc::now(), &[]).map_err(|errors| {
        for error in errors {
            eprintln!(
                "auditgate {command}: --{}: {}",
                error.param.replace('_', "-"),
                error.message
            );
        }
        std::process::ExitCode::from(64)
    })
}

/// `auditgate export`: the entries matching the filters, streamed chunk by chunk to standard
/// output or a file. A file is written under a temporary name and renamed when complete, so an
/// auditor never picks up half an export.
pub fn export(args: &crate::commands::cli::ExportArgs) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let mut params = filter_params(&args.filters);
    if args.asc {
        params.push(("order".to_string(), "asc".to_string()));
    }
    let (filter, page) = match parse_cli_filters("export", &params) {
        Ok(parsed) => parsed,
        Err(code) => return Ok(code),
    };
    let format: ExportFormat = match args.format.parse() {
        Ok(format) => format,
        Err(error) => {
            eprintln!("auditgate export: --format: {error}");
            return Ok(std::process::ExitCode::from(64));
        }
    };
    if args.proofs && format != ExportFormat::Ndjson {
        eprintln!(
            "auditgate export: --proofs: only with --format ndjson (each line carries its \
             entry's proof)"
        );
        return Ok(std::process::ExitCode::from(64));
    }
    let (opened, signer) =
        match open_read_store_and_key("export", &args.store, args.filters.log_id.as_deref()) {
            Ok(opened) => opened,
            Err(code) => return Ok(code),
        };
    let store = opened.store.as_ref();
    let head = if args.proofs {
        match store.latest_head()? {
            Some(head) => Some(head),
            None => {
                eprintln!(
                    "auditgate export: --proofs: the log has no signed tree head yet (a [log] \
                     signing_key signs one within sign_interval of the first entries)"
                );
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
    } else {
        None
    };
    let write = |out: &mut dyn std::io::Write| -> std::io::Result<u64> {
        match &head {
            // With the log's key (from --config) the manifest is signed, so lines removed
            // from the file cannot be hidden by recomputing its count and digest.
            Some(head) => match &signer {
                Some(signer) => crate::export::proofs::write_signed_export_with_proofs(
                    store,
                    &filter,
                    head,
                    signer.clone(),
                    out,
                ),
                None => crate::export::proofs::write_export_with_proofs(store, &filter, head, out),
            }
            .map_err(|error| match error {
                crate::export::proofs::ProofError::Io(error) => error,
                other => std::io::Error::other(other),
            }),
            None => write_export(store, filter.clone(), page.order, format, out),
        }
    };
    match &args.output {
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let written = write(&mut out).and_then(|rows| out.flush().map(|()| rows));
            match written {
                Ok(_) => {}
                // `auditgate export ... | head` is a normal way to look at an export.
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(error) => return Err(error).context("export failed"),
            }
            opened.check_consistent()?;
        }
        Some(path) => {
            let partial = partial_path(path);
            let file = std::fs::File::create(&partial)
                .with_context(|| format!("cannot create {}", partial.display()))?;
            let mut out = std::io::BufWriter::new(file);
            let written = write(&mut out).and_then(|rows| {
                out.into_inner()
                    .map_err(|error| error.into_error())?
                    .sync_all()?;
                Ok(rows)
            });
            let written = written.and_then(|rows| {
                opened.check_consistent().map_err(std::io::Error::other)?;
                Ok(rows)
            });
            let rows = match written {
                Ok(rows) => rows,
                Err(error) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(error).with_context(|| format!("cannot write {}", path.display()));
                }
            };
            std::fs::rename(&partial, path)
                .with_context(|| format!("cannot move the export to {}", path.display()))?;
            eprintln!(
                "auditgate export: {rows} entr{} written to {}{}",
                if rows == 1 { "y" } else { "ies" },
                path.display(),
                match &head {
                    Some(head) => format!(
                        ", with proofs against the signed head at size {}",
                        head.head.size
                    ),
                    None => String::new(),
                }
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// Streams an export into `out`, one store chunk at a time; the number of entries written.
pub fn write_export(
    store: &dyn crate::store::Store,
    filter: Filter,
    order: crate::store::query::Order,
    format: ExportFormat,
    out: &mut dyn std::io::Write,
) -> std::io::Result<u64> {
    let mut reader =
        ExportReader::start(store, filter, order, None).map_err(std::io::Error::other)?;
    let mut encoder = ExportEncoder::new(format);
    out.write_all(&encoder.begin())?;
    let mut rows = 0u64;
    while let Some(entries) = reader.next_chunk(store).map_err(std::io::Error::other)? {
        rows += entries.len() as u64;
        out.write_all(&encoder.encode(&entries).map_err(std::io::Error::other)?)?;
    }
    out.write_all(&encoder.finish())?;
    Ok(rows)
}

/// `auditgate health`: one plain HTTP/1.1 GET (the admin listener speaks plain HTTP on
/// loopback), so a container image needs no curl for its HEALTHCHECK. `Ok(status)` is the
/// answer's status code.
pub fn health_check(url: &str, timeout: std::time::Duration) -> Result<u16, String> {
    use std::io::{Read as _, Write as _};
    use std::net::ToSocketAddrs as _;
    let uri: http::Uri = url
        .parse()
        .map_err(|error| format!("{url:?} is not a URL ({error})"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs (the admin listener has no TLS)".into());
    }
    let host = uri.host().ok_or("the URL names no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    let address = (host, port)
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {host}: {error}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)
        .map_err(|error| format!("cannot connect to {address}: {error}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|error| error.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: auditgate-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|error| format!("cannot send the request: {error}"))?;
    // The status line is all that is needed: "HTTP/1.1 200 OK".
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        match stream.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(count) => read += count,
            Err(error) => return Err(format!("no answer: {error}")),
        }
    }
    let line = std::str::from_utf8(&head[..read]).unwrap_or_default();
    line.strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| "the answer is not HTTP".to_string())
}
