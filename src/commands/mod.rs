//! The subcommands of the `auditgate` binary, one module each; [`cli`] defines the command line
//! and [`dispatch`] runs the one it names.

pub mod backup;
pub mod check;
pub mod cli;
pub mod demo;
pub mod explain;
pub mod export;
pub mod health;
pub mod keygen;
pub mod openapi_rules;
pub mod prune;
pub mod query;
pub mod run;
pub mod store_location;
pub mod suggest;
pub mod tiles;
pub mod token;
pub mod verify;
pub mod verify_archive;
pub mod verify_proof;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::config::Config;
use cli::{Command, RulesCommand};

/// EX_USAGE: the configuration or the command line is invalid.
pub const EXIT_USAGE: u8 = 64;

/// Runs the command; an `Err` is an unexpected failure (exit 1), a usage problem is an exit code.
pub fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => run::serve(&config),
        Command::Demo(args) => {
            runtime(None)?.block_on(demo::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            config,
            files,
            coverage,
        } => check::check_files(config.into_iter().chain(files).collect(), coverage),
        Command::Rules(RulesCommand::FromOpenapi(args)) => {
            match openapi_rules::run_from_openapi(&args) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(error) => {
                    eprintln!("auditgate rules from-openapi: {error}");
                    Ok(ExitCode::from(EXIT_USAGE))
                }
            }
        }
        Command::Rules(RulesCommand::Suggest(args)) => match suggest::run(&args) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(error) => {
                eprintln!("auditgate rules suggest: {error:#}");
                Ok(ExitCode::from(EXIT_USAGE))
            }
        },
        Command::Explain(args) => explain::print(&args),
        Command::Query(args) => query::query(&args),
        Command::Export(args) => export::export(&args),
        Command::Keygen { out, origin } => keygen::keygen(&out, origin),
        Command::Verify(args) => Ok(ExitCode::from(verify::run_verify(&args))),
        Command::VerifyExport(args) => Ok(ExitCode::from(verify::run_verify_export(&args))),
        Command::VerifyProof(args) => Ok(ExitCode::from(verify_proof::run_verify_proof(&args))),
        Command::VerifyArchive(args) => {
            Ok(ExitCode::from(verify_archive::run_verify_archive(&args)))
        }
        Command::Backup(args) => Ok(backup::run_backup(&args)),
        Command::Prune(args) => prune::prune(&args),
        Command::Tiles(args) => tiles::run_tiles(&args),
        Command::Health { url, timeout } => health::health(&url, &timeout),
        Command::Token { name, scopes } => token::token(&name, &scopes),
    }
}

/// The async runtime for a command, with `worker_threads` workers (default: one per core).
pub(crate) fn runtime(worker_threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = worker_threads {
        builder.worker_threads(threads);
    }
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Loads a configuration file; every error is printed and the exit code is EX_USAGE.
pub(crate) fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        eprint!("{errors}");
        ExitCode::from(EXIT_USAGE)
    })
}
