//! The `auditgate` binary: parse the command line, load config, run.

use std::process::ExitCode;

use clap::Parser;

use auditgate::commands::cli::Cli;
use auditgate::commands::EXIT_USAGE;

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
    match auditgate::commands::dispatch(cli.command) {
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
