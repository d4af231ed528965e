//! `auditgate rules suggest`: draft rules from the routes the sidecar learned from traffic
//! (`[discover]`), rendered as `rules from-openapi` renders an API document's operations.
//!
//! A route and method is drafted when no rule covered it as last seen and, with `--config`,
//! the configuration's own rule matcher still gives it to no rule on its sample path (so
//! running it again after appending the drafts drafts nothing).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::commands::cli::SuggestArgs;
use crate::commands::openapi_rules::{coverage, Coverage};
use crate::config::Config;
use crate::discover::config::learned_path_beside;
use crate::discover::{Learned, MethodStats, Route, RouteLearner};
use crate::policy::draft::{learned_operation, order_and_disambiguate, render_rules, Operation};

const MUTATIONS: [&str; 4] = ["POST", "PUT", "PATCH", "DELETE"];

pub fn run(args: &SuggestArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Some(Config::load(path).map_err(|errors| anyhow::anyhow!("{errors}"))?),
        None => None,
    };
    let file: PathBuf = match (&config, &args.db, &args.routes) {
        (Some(config), _, _) => config.discover.file.clone(),
        (None, Some(db), _) => learned_path_beside(db),
        (None, None, Some(routes)) => routes.clone(),
        (None, None, None) => anyhow::bail!(
            "say where the learned routes are: --config FILE, --db FILE or --routes FILE"
        ),
    };
    if !file.exists() {
        anyhow::bail!(
            "no learned routes at {}: set `[discover] enabled = true`, run the sidecar in front \
             of the app for a while, then ask again",
            file.display()
        );
    }
    // Through the learner, so a hand-edited file is held to the same templates and caps.
    let learned = RouteLearner::from_learned(Learned::read(&file)?).learned();
    let (text, drafted) = suggest(
        &learned,
        config.as_ref(),
        args.reads,
        &file.display().to_string(),
    );
    match &args.output {
        Some(path) => std::fs::write(path, &text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => crate::commands::cli::print_stdout(&text)?,
    }
    eprintln!(
        "{drafted} rule(s) drafted from {} learned route(s)",
        learned.routes.len()
    );
    Ok(())
}

/// The draft TOML and how many rules it holds.
pub fn suggest(
    learned: &Learned,
    config: Option<&Config>,
    reads: bool,
    source: &str,
) -> (String, usize) {
    let mut operations: Vec<(Operation, String)> = Vec::new();
    let mut left_out = Vec::new();
    for route in &learned.routes {
        for stats in &route.methods {
            let wanted =
                MUTATIONS.contains(&stats.method.as_str()) || (reads && stats.method == "GET");
            if !wanted || stats.covered.by_rule() {
                continue;
            }
            if let Err(why) = crate::request::route::compile_route(&route.template) {
                left_out.push(format!("{} {}: {why}", stats.method, route.template));
                continue;
            }
            let sample = route.sample.as_deref().unwrap_or(&route.template);
            let operation = learned_operation(&stats.method, &route.template, sample);
            operations.push((operation, seen_comment(route, stats)));
        }
    }
    // Routes a rule of the configuration now takes (one added since) are not drafted again.
    if let Some(config) = config {
        let only: Vec<Operation> = operations.iter().map(|(op, _)| op.clone()).collect();
        let uncovered: Vec<bool> = coverage(config, &only)
            .into_iter()
            .map(|(_, verdict)| {
                matches!(verdict, Coverage::GenericFallback | Coverage::NotRecorded)
            })
            .collect();
        let mut keep = uncovered.into_iter();
        operations.retain(|_| keep.next().unwrap_or(false));
    }
    let comments: std::collections::HashMap<(String, String), String> = operations
        .iter()
        .map(|(op, comment)| ((op.method.clone(), op.template.clone()), comment.clone()))
        .collect();
    let mut operations: Vec<Operation> = operations.into_iter().map(|(op, _)| op).collect();
    order_and_disambiguate(&mut operations);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Rules for the routes learned from traffic, written by `auditgate rules suggest` from {}.",
        crate::policy::draft::one_line(source)
    );
    let _ = writeln!(
        out,
        "# {} learned route(s); {} drafted below for what no rule covers. Ids in paths became \
         {{id}} parameters.",
        learned.routes.len(),
        operations.len()
    );
    let _ = writeln!(
        out,
        "# Rules are ordered most specific path first (the first match wins). Review the actions \
         and resources, then append this to your config."
    );
    if learned.unlearned > 0 {
        let _ = writeln!(
            out,
            "# {} exchange(s) were not learned: the cap of {} route templates was reached.",
            learned.unlearned,
            crate::discover::MAX_TEMPLATES
        );
    }
    for note in &left_out {
        let _ = writeln!(out, "# Left out: {}", crate::policy::draft::one_line(note));
    }
    let drafted = operations.len();
    out.push_str(&render_rules(&operations, &|operation| {
        comments
            .get(&(operation.method.clone(), operation.template.clone()))
            .cloned()
            .unwrap_or_default()
    }));
    (out, drafted)
}

/// `: seen 12 times (2xx 10, 4xx 2), recorded only by the generic fallback`.
fn seen_comment(route: &Route, stats: &MethodStats) -> String {
    let classes: Vec<String> = stats
        .status_classes
        .iter()
        .enumerate()
        .filter(|(_, count)| **count > 0)
        .map(|(index, count)| format!("{}xx {count}", index + 1))
        .collect();
    let how = if stats.fallback_count > 0 {
        "recorded only by the generic fallback"
    } else {
        "not recorded"
    };
    let sample = route
        .sample
        .as_deref()
        .map(|sample| format!(", e.g. {sample}"))
        .unwrap_or_default();
    crate::policy::draft::one_line(&format!(
        ": seen {} time(s) ({}), {how}{sample}",
        stats.count,
        classes.join(", ")
    ))
}
