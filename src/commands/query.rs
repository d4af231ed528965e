//! `auditgate query`: the entries of a store that match the filters, as a table or JSON; and the
//! filter and store-opening helpers `export` shares.

use std::fmt::Write as _;

use crate::store::query::{parse_filter_and_page, Filter, PageRequest};

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
pub(crate) fn parse_cli_filters(
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
