//! `auditgate prune`: apply the retention policy now, or show what it would delete.

use chrono::Utc;

use crate::store::retention::{count_due, prune_all, PruneMode, PrunePlan, PrunedBy};

pub fn run_prune(
    config: &crate::config::Config,
    older_than: Option<&str>,
    mode: PruneMode,
) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context as _;
    let older_than = match older_than
        .map(crate::base::units::parse_duration)
        .transpose()
    {
        Ok(age) => age,
        Err(message) => {
            eprintln!("auditgate prune: --older-than: {message}");
            return Ok(std::process::ExitCode::from(64));
        }
    };
    let plan = PrunePlan::new(&config.retention, older_than, Utc::now());
    if plan.is_empty() {
        eprintln!(
            "auditgate prune: nothing to do: set [retention] max_age or rules in the config, or \
             pass --older-than"
        );
        return Ok(std::process::ExitCode::from(64));
    }
    // Not exclusive: the sidecar that owns the log may be running, and appends serialize.
    let store = crate::store::open(&config.store, &config.log_id, false)
        .with_context(|| format!("cannot open {}", crate::store::describe(&config.store)))?;
    if mode != PruneMode::Confirmed {
        let due = count_due(store.as_ref(), &plan, &config.log_id)?;
        if mode == PruneMode::DryRun || due == 0 {
            println!(
                "{due} entr{} due for pruning{}",
                if due == 1 { "y is" } else { "ies are" },
                if mode == PruneMode::DryRun {
                    " (dry run: nothing was changed)"
                } else {
                    ""
                }
            );
            return Ok(std::process::ExitCode::SUCCESS);
        }
        eprintln!(
            "auditgate prune: this would delete {due} entr{} (their leaf hashes stay); run again \
             with --yes to prune, or --dry-run to only count",
            if due == 1 { "y" } else { "ies" }
        );
        return Ok(std::process::ExitCode::from(64));
    }
    let summary = prune_all(
        store.as_ref(),
        &plan,
        &config.log_id,
        &PrunedBy::cli(),
        &|| true,
    )?;
    if summary.prunes.is_empty() {
        println!("nothing was due for pruning");
    }
    for prune in &summary.prunes {
        println!(
            "pruned {} entries between {} and {}; recorded as entry {}",
            prune.count, prune.first_seq, prune.last_seq, prune.record_seq
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `auditgate prune`: loads the configuration and prunes as the flags say.
pub fn prune(args: &crate::commands::cli::PruneArgs) -> anyhow::Result<std::process::ExitCode> {
    let config = match super::load_config(&args.config) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let mode = if args.dry_run {
        PruneMode::DryRun
    } else if args.yes {
        PruneMode::Confirmed
    } else {
        PruneMode::Ask
    };
    run_prune(&config, args.older_than.as_deref(), mode)
}
