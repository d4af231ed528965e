//! The `auditgate` binary: parse the command line, load config, run.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

use auditgate::commands::cli::{Cli, Command};
use auditgate::config::Config;

/// EX_USAGE: the configuration or the command line is invalid.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // `--help` and `--version` are answers, not errors. Every usage error exits 64, not
            // clap's 2, which `verify` uses for "could not read".
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Err(message) = init_logging() {
        eprintln!("auditgate: {message}");
        return ExitCode::from(EXIT_USAGE);
    }
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("auditgate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr. The level comes from `AUDITGATE_LOG`, else `RUST_LOG`, else `info`; the form
/// from `AUDITGATE_LOG_FORMAT` (`text`, the default, or `json`: one object a line with the
/// event's fields at the top level, as Vector, Loki and Elastic expect).
fn init_logging() -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let mut filter = None;
    for variable in ["AUDITGATE_LOG", "RUST_LOG"] {
        if let Ok(directives) = std::env::var(variable) {
            filter = Some(EnvFilter::try_new(&directives).map_err(|error| {
                format!("{variable}=`{directives}` is not a log filter like `info` or `auditgate=debug`: {error}")
            })?);
            break;
        }
    }
    let filter = filter.unwrap_or_else(|| EnvFilter::new("info"));
    let json = match std::env::var("AUDITGATE_LOG_FORMAT").as_deref() {
        Err(_) | Ok("text") => false,
        Ok("json") => true,
        Ok(other) => {
            return Err(format!(
                "AUDITGATE_LOG_FORMAT=`{other}` is not one of text, json"
            ))
        }
    };
    // Colours only for a person at a terminal; log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.init();
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(None)
}

fn runtime_with(worker_threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = worker_threads {
        builder.worker_threads(threads);
    }
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        eprint!("{errors}");
        ExitCode::from(EXIT_USAGE)
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config: path } => {
            let config = match load_config(&path) {
                Ok(config) => config,
                Err(code) => return Ok(code),
            };
            runtime_with(config.proxy.worker_threads)?
                .block_on(auditgate::commands::run::run_until_signal(config, path))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            auditgate::commands::demo::prepare_environment();
            runtime()?.block_on(auditgate::commands::demo::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            config,
            files,
            coverage,
        } => {
            let mut paths: Vec<_> = config.into_iter().chain(files).collect();
            if paths.is_empty() {
                // Like `run`: the file `AUDITGATE_CONFIG` names, or auditgate.toml here.
                paths.push(
                    std::env::var_os("AUDITGATE_CONFIG")
                        .map(std::path::PathBuf::from)
                        .unwrap_or_else(|| "auditgate.toml".into()),
                );
            }
            let mut valid = true;
            for path in &paths {
                match Config::load(path) {
                    Ok(config) => {
                        auditgate::commands::cli::print_stdout(
                            &auditgate::commands::run::describe(path, &config),
                        )?;
                        let text = std::fs::read_to_string(path).unwrap_or_default();
                        for warning in auditgate::commands::check::warnings(&text, &config) {
                            eprintln!("{}: warning: {warning}", path.display());
                        }
                        if let Some(spec) = &coverage {
                            let report =
                                auditgate::commands::openapi_rules::run_coverage(spec, &config);
                            match report {
                                Ok(report) => auditgate::commands::cli::print_stdout(&report)?,
                                Err(error) => {
                                    eprintln!("auditgate check --coverage: {error}");
                                    return Ok(ExitCode::from(EXIT_USAGE));
                                }
                            }
                        }
                    }
                    Err(errors) => {
                        valid = false;
                        eprint!("{errors}");
                    }
                }
            }
            Ok(if valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_USAGE)
            })
        }
        Command::Rules(auditgate::commands::cli::RulesCommand::FromOpenapi(args)) => {
            match auditgate::commands::openapi_rules::run_from_openapi(&args) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(error) => {
                    eprintln!("auditgate rules from-openapi: {error}");
                    Ok(ExitCode::from(EXIT_USAGE))
                }
            }
        }
        Command::Explain(args) => {
            let config = match load_config(&args.config) {
                Ok(config) => config,
                Err(code) => return Ok(code),
            };
            // Key sets named by URL are fetched once, so tokens are checked as the sidecar
            // would check them.
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(config.policy.actors.load_keys_once());
            match auditgate::commands::explain::explain(&config, &args) {
                Ok(explanation) => {
                    auditgate::commands::cli::print_stdout(&format!(
                        "{}\n",
                        serde_json::to_string_pretty(&explanation)?
                    ))?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(message) => {
                    eprintln!("auditgate explain: {message}");
                    Ok(ExitCode::from(EXIT_USAGE))
                }
            }
        }
        Command::Query(args) => auditgate::commands::run::query(&args),
        Command::Export(args) => auditgate::commands::run::export(&args),
        Command::Keygen { out, origin } => {
            let origin = origin.unwrap_or_else(auditgate::log::config::default_log_id);
            let (signer, vkey) = auditgate::log::checkpoint::write_new_key_files(&out, &origin)?;
            let public = auditgate::log::head::public_key_path(&out);
            let vkey_path = auditgate::log::checkpoint::verifier_key_path(&out);
            auditgate::commands::cli::print_stdout(&format!(
                "private key:  {} (keep it secret)\npublic key:   {}\nverifier key: {}\nkey id:       \
                 {}\n\nCheckpoints verify with this verifier key (vkey):\n\n{vkey}\n\nSign tree heads \
                 with it:\n\n[log]\nsigning_key = {:?}\norigin = {:?}\npublish_heads = \
                 [\"file:data/heads.ndjson\"]\n",
                out.display(),
                public.display(),
                vkey_path.display(),
                signer.key_id(),
                out.display().to_string(),
                origin,
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(args) => Ok(ExitCode::from(auditgate::commands::verify::run_verify(
            &args,
        ))),
        Command::VerifyExport(args) => Ok(ExitCode::from(
            auditgate::commands::verify::run_verify_export(&args),
        )),
        Command::VerifyArchive(args) => Ok(ExitCode::from(
            auditgate::commands::verify_archive::run_verify_archive(&args),
        )),
        Command::Backup(args) => Ok(auditgate::commands::backup::run_backup(&args)),
        Command::Prune(args) => {
            let config = match load_config(&args.config) {
                Ok(config) => config,
                Err(code) => return Ok(code),
            };
            let mode = if args.dry_run {
                auditgate::store::retention::PruneMode::DryRun
            } else if args.yes {
                auditgate::store::retention::PruneMode::Confirmed
            } else {
                auditgate::store::retention::PruneMode::Ask
            };
            auditgate::commands::prune::run_prune(&config, args.older_than.as_deref(), mode)
        }
        Command::Health { url, timeout } => {
            let timeout = match auditgate::base::units::parse_duration(&timeout) {
                Ok(timeout) => timeout,
                Err(message) => {
                    eprintln!("auditgate health: --timeout: {message}");
                    return Ok(ExitCode::from(EXIT_USAGE));
                }
            };
            match auditgate::commands::run::health_check(&url, timeout) {
                Ok(status) if (200..300).contains(&status) => Ok(ExitCode::SUCCESS),
                Ok(status) => {
                    eprintln!("auditgate health: {url} answered {status}");
                    Ok(ExitCode::FAILURE)
                }
                Err(message) => {
                    eprintln!("auditgate health: {message}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Token { name, scopes } => {
            let scopes: Vec<String> = scopes
                .split(',')
                .map(|scope| scope.trim().to_string())
                .filter(|scope| !scope.is_empty())
                .collect();
            // The same scopes `check` accepts, so the printed snippet is a valid config.
            let unknown: Vec<&String> = scopes
                .iter()
                .filter(|scope| auditgate::admin::config::Scope::parse(scope).is_none())
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
                return Ok(ExitCode::from(EXIT_USAGE));
            }
            let token = auditgate::commands::run::new_token();
            auditgate::commands::cli::print_stdout(&format!(
                "token:  {}\nsha256: {}\n\nGive the token to its holder; put only the hash in the \
                 config:\n\n[[admin.tokens]]\nname = {name:?}\nsha256 = \"{}\"\nscopes = {scopes:?}\n",
                token.token, token.sha256, token.sha256
            ))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
