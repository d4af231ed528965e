//! Retention: deleting entries past their maximum age while keeping the log verifiable.
//!
//! A prune deletes entry rows but keeps their leaf hashes in the tree, so every signed head,
//! inclusion proof and consistency proof stays valid, and `auditgate verify` still checks the
//! whole tree. Each prune appends an `audit.pruned` entry (see [`crate::log::pruned`]) in the same
//! transaction as the deletion, so the log itself says what was removed, when and by which rule.
//!
//! Which entries go: those created before the cutoff (`now - max_age`) of the rule whose
//! `action_prefix` is the longest one their action starts with, or `[retention] max_age` when no
//! rule matches (no `max_age`: kept). `audit.pruned` entries are never pruned.
//!
//! Pruned entries are gone from listings and exports. Their positions are still in the tree: the
//! proof endpoint answers for them by sequence number (marked `"pruned": true`), and looking one
//! up by sequence number says it was pruned and by which record instead of "not found".

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use serde::Deserialize;

use crate::base::units::{duration_or, parse_duration};
use crate::base::ConfigError;
use crate::entry::{format_timestamp, AuditEntry, Outcome};
use crate::log::pruned::{PruneClaim, PRUNED_ACTION};
use crate::store::{PruneOutcome, Store, StoreError};

/// Most entries deleted in one transaction, so that a first prune of a large log never holds the
/// write lock for long: the writer's group commits slip in between chunks.
pub const PRUNE_CHUNK: usize = 20_000;

/// A prune about to happen, as both backends carry it out: the positions to delete (ascending,
/// each once) and the position its `audit.pruned` record takes, the next one in the log.
#[derive(Debug)]
pub(crate) struct PruneStep {
    pub seqs: Vec<u64>,
    pub record_seq: u64,
    claim: PruneClaim,
}

impl PruneStep {
    /// The prune of the `selected` positions of a log of `log_size` entries; `None` when
    /// nothing was selected, so nothing is deleted and no record appended.
    pub(crate) fn new(mut selected: Vec<u64>, log_size: u64) -> Option<PruneStep> {
        selected.sort_unstable();
        selected.dedup();
        let claim = PruneClaim::for_seqs(&selected)?;
        Some(PruneStep {
            seqs: selected,
            record_seq: log_size + 1,
            claim,
        })
    }

    /// Writes the claim into the record's metadata, and gives what the prune reports once the
    /// record is appended.
    pub(crate) fn claim(&self, record: &mut AuditEntry) -> PruneOutcome {
        self.claim.write_metadata(&mut record.metadata);
        PruneOutcome {
            record_seq: self.record_seq,
            first_seq: self.claim.first_seq,
            last_seq: self.claim.last_seq,
            count: self.claim.count,
        }
    }
}

/// One class of entries a prune selects: created before `cutoff`, with an action that starts
/// with `prefix` (any action when `None`) and with none of the `excluded` prefixes, which belong
/// to more specific rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneClass {
    pub prefix: Option<String>,
    pub excluded: Vec<String>,
    pub cutoff: DateTime<Utc>,
}

/// The cutoffs of one prune, fixed when it starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PrunePlan {
    /// Cutoff for actions no rule names; `None` keeps them.
    pub default_cutoff: Option<DateTime<Utc>>,
    /// `(action prefix, cutoff)`; the longest matching prefix applies.
    pub rules: Vec<(String, DateTime<Utc>)>,
}

impl PrunePlan {
    /// The plan for `config` at `now`. `older_than` replaces `[retention] max_age` (the CLI's
    /// `--older-than`); the per-prefix rules still apply.
    pub fn new(
        config: &RetentionConfig,
        older_than: Option<Duration>,
        now: DateTime<Utc>,
    ) -> PrunePlan {
        let cutoff = |age: Duration| {
            chrono::Duration::from_std(age)
                .ok()
                .and_then(|age| now.checked_sub_signed(age))
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
        };
        PrunePlan {
            default_cutoff: older_than.or(config.max_age).map(cutoff),
            rules: config
                .rules
                .iter()
                .map(|rule| (rule.action_prefix.clone(), cutoff(rule.max_age)))
                .collect(),
        }
    }

    /// Whether the plan can prune anything at all.
    pub fn is_empty(&self) -> bool {
        self.default_cutoff.is_none() && self.rules.is_empty()
    }

    /// The cutoff that applies to an action, `None` when it is kept whatever its age.
    pub fn cutoff_for(&self, action: &str) -> Option<DateTime<Utc>> {
        if action == PRUNED_ACTION {
            return None;
        }
        self.rules
            .iter()
            .filter(|(prefix, _)| action.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, cutoff)| *cutoff)
            .or(self.default_cutoff)
    }

    /// The classes a store selects candidates by: one per rule, and the default. Every entry
    /// belongs to exactly one class, the one [`Self::cutoff_for`] would pick.
    pub fn classes(&self) -> Vec<PruneClass> {
        let mut classes = Vec::new();
        for (prefix, cutoff) in &self.rules {
            let excluded = self
                .rules
                .iter()
                .filter(|(other, _)| other.len() > prefix.len() && other.starts_with(prefix))
                .map(|(other, _)| other.clone())
                .collect();
            classes.push(PruneClass {
                prefix: Some(prefix.clone()),
                excluded,
                cutoff: *cutoff,
            });
        }
        if let Some(cutoff) = self.default_cutoff {
            classes.push(PruneClass {
                prefix: None,
                excluded: self
                    .rules
                    .iter()
                    .map(|(prefix, _)| prefix.clone())
                    .collect(),
                cutoff,
            });
        }
        classes
    }

    /// The plan's part of the record's metadata: `cutoff` and `rules`.
    pub fn write_metadata(&self, metadata: &mut Map<String, Value>) {
        metadata.insert(
            "cutoff".into(),
            self.default_cutoff
                .map(|cutoff| Value::from(format_timestamp(&cutoff)))
                .unwrap_or(Value::Null),
        );
        let rules = self
            .rules
            .iter()
            .map(|(prefix, cutoff)| {
                serde_json::json!({"actionPrefix": prefix, "cutoff": format_timestamp(cutoff)})
            })
            .collect();
        metadata.insert("rules".into(), Value::Array(rules));
    }
}

/// Who asked for a prune, for its `audit.pruned` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrunedBy {
    /// The sidecar's background retention task.
    Retention,
    /// `auditgate prune`, run by this operating-system user.
    Cli { user: String },
}

impl PrunedBy {
    /// `auditgate prune` run by the current operating-system user.
    pub fn cli() -> PrunedBy {
        PrunedBy::Cli {
            user: crate::base::os_user(),
        }
    }
}

/// A blank `audit.pruned` record for a prune by `by`; the store fills in what was pruned. A CLI
/// prune names the operating-system user who ran it as the actor (source `cli`), so an auditor
/// sees who removed entries, not just that a command did.
pub fn prune_record(log_id: &str, plan: &PrunePlan, by: &PrunedBy) -> AuditEntry {
    let mut record = AuditEntry::new(log_id, PRUNED_ACTION);
    let (actor, source) = match by {
        PrunedBy::Retention => ("retention", "auditgate"),
        PrunedBy::Cli { user } => (user.as_str(), "cli"),
    };
    record.actor_id = Some(actor.to_string());
    record.actor_source = Some(source.to_string());
    record.actor_verified = true;
    record.resource_type = Some("log".to_string());
    record.resource_id = Some(log_id.to_string());
    record.outcome = Outcome::Success;
    plan.write_metadata(&mut record.metadata);
    record
}

/// What [`prune_all`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneSummary {
    /// One per transaction, in order.
    pub prunes: Vec<PruneOutcome>,
}

impl PruneSummary {
    pub fn entries(&self) -> u64 {
        self.prunes.iter().map(|prune| prune.count).sum()
    }
}

/// Prunes everything `plan` selects, chunk by chunk, each chunk with its own `audit.pruned`
/// record. `keep_going` is asked between chunks, so a shutdown does not wait for a long prune.
pub fn prune_all(
    store: &dyn Store,
    plan: &PrunePlan,
    log_id: &str,
    by: &PrunedBy,
    keep_going: &dyn Fn() -> bool,
) -> Result<PruneSummary, StoreError> {
    let mut summary = PruneSummary::default();
    if plan.is_empty() {
        return Ok(summary);
    }
    while keep_going() {
        match store.prune(plan, prune_record(log_id, plan, by), PRUNE_CHUNK)? {
            Some(outcome) => {
                tracing::info!(
                    record = outcome.record_seq,
                    first = outcome.first_seq,
                    last = outcome.last_seq,
                    count = outcome.count,
                    "pruned entries past their retention"
                );
                summary.prunes.push(outcome);
            }
            None => break,
        }
    }
    Ok(summary)
}

/// The background retention task: prunes every `prune_interval` until told to stop.
pub struct RetentionTask {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RetentionTask {
    /// Starts the task if the configuration prunes anything; `None` otherwise.
    pub fn start(
        store: Arc<dyn Store>,
        config: RetentionConfig,
        log_id: String,
    ) -> Option<RetentionTask> {
        if config.max_age.is_none() && config.rules.is_empty() {
            return None;
        }
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(config.prune_interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stopped.wait_for(|stop| *stop) => return,
                }
                let plan = PrunePlan::new(&config, None, Utc::now());
                let store = store.clone();
                let log_id = log_id.clone();
                let watch = stopped.clone();
                let result = tokio::task::spawn_blocking(move || {
                    prune_all(
                        store.as_ref(),
                        &plan,
                        &log_id,
                        &PrunedBy::Retention,
                        &|| !*watch.borrow(),
                    )
                })
                .await;
                match result {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => {
                        tracing::error!(%error, "retention prune failed; retrying at the next interval")
                    }
                    Err(error) => tracing::error!(%error, "retention prune task failed"),
                }
            }
        });
        Some(RetentionTask { stop, task })
    }

    /// Stops between chunks and waits for the task to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// `auditgate prune`: prunes now with the config's retention (or `--older-than`), through the
/// same store code as the background task. Runs beside a live sidecar: appends take SQLite's
/// write lock and both sides re-read the tree's size before extending it.
/// How many entries `plan` would prune now, with the filters the store's prune selects by.
pub fn count_due(store: &dyn Store, plan: &PrunePlan, log_id: &str) -> Result<u64, StoreError> {
    let mut due = 0;
    for class in plan.classes() {
        let mut excluded = class.excluded.clone();
        excluded.push(PRUNED_ACTION.to_string());
        due += store.count(&crate::store::query::Filter {
            action_prefix: class.prefix.clone(),
            exclude_action_prefixes: excluded,
            until: Some(class.cutoff),
            log_id: Some(log_id.to_string()),
            ..Default::default()
        })?;
    }
    Ok(due)
}

/// What `auditgate prune` was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneMode {
    /// Say how many entries would go, change nothing.
    DryRun,
    /// Prune only when nothing is due (a safe no-op); otherwise ask for `--yes`.
    Ask,
    /// Prune (`--yes`).
    Confirmed,
}

/// `[retention]`: how long entries are kept.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    /// Entries older than this are pruned: the row is deleted, its leaf hash kept. Absent: kept
    /// forever (unless a rule says otherwise).
    pub max_age: Option<String>,
    /// How often the background task prunes (default "1h").
    pub prune_interval: Option<String>,
    /// Overrides by action prefix; the longest matching prefix wins.
    #[serde(default)]
    pub rules: Vec<RetentionRuleFile>,
}

/// One `[[retention.rules]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRuleFile {
    /// Actions starting with this (case-sensitive), e.g. "auth.".
    pub action_prefix: String,
    /// Maximum age of those entries, e.g. "30d".
    pub max_age: String,
}

/// One retention override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRule {
    pub action_prefix: String,
    pub max_age: Duration,
}

/// How long entries are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// `None`: kept forever unless a rule applies.
    pub max_age: Option<Duration>,
    pub prune_interval: Duration,
    pub rules: Vec<RetentionRule>,
}

pub(crate) fn validate_retention(
    file: &RetentionFile,
    errors: &mut Vec<ConfigError>,
) -> RetentionConfig {
    let max_age = file
        .max_age
        .as_deref()
        .and_then(|text| match parse_duration(text) {
            Ok(age) if !age.is_zero() => Some(age),
            Ok(_) => {
                errors.push(ConfigError::new(
                    "retention.max_age",
                    "must be longer than 0",
                ));
                None
            }
            Err(message) => {
                errors.push(ConfigError::new("retention.max_age", message));
                None
            }
        });
    let prune_interval = duration_or(
        "retention.prune_interval",
        file.prune_interval.as_deref(),
        Duration::from_secs(3600),
        errors,
    );
    if prune_interval.is_zero() {
        errors.push(ConfigError::new(
            "retention.prune_interval",
            "must be longer than 0",
        ));
    }
    let mut rules: Vec<RetentionRule> = Vec::new();
    for (index, rule) in file.rules.iter().enumerate() {
        let location = format!("retention.rules #{} ({:?})", index + 1, rule.action_prefix);
        if rule.action_prefix.is_empty() {
            errors.push(ConfigError::new(
                &format!("{location}.action_prefix"),
                "must not be empty (use retention.max_age for every action)",
            ));
            continue;
        }
        if rules
            .iter()
            .any(|other| other.action_prefix == rule.action_prefix)
        {
            errors.push(ConfigError::new(
                &format!("{location}.action_prefix"),
                "names the same prefix as an earlier rule",
            ));
            continue;
        }
        match parse_duration(&rule.max_age) {
            Ok(age) if !age.is_zero() => rules.push(RetentionRule {
                action_prefix: rule.action_prefix.clone(),
                max_age: age,
            }),
            Ok(_) => errors.push(ConfigError::new(
                &format!("{location}.max_age"),
                "must be longer than 0",
            )),
            Err(message) => errors.push(ConfigError::new(&format!("{location}.max_age"), message)),
        }
    }
    RetentionConfig {
        max_age,
        prune_interval,
        rules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::retention::RetentionRule;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0)
            .single()
            .expect("date")
    }

    fn config() -> RetentionConfig {
        RetentionConfig {
            max_age: Some(Duration::from_secs(400 * 86_400)),
            prune_interval: Duration::from_secs(3600),
            rules: vec![
                RetentionRule {
                    action_prefix: "auth.".into(),
                    max_age: Duration::from_secs(30 * 86_400),
                },
                RetentionRule {
                    action_prefix: "auth.admin.".into(),
                    max_age: Duration::from_secs(800 * 86_400),
                },
            ],
        }
    }

    #[test]
    fn the_longest_prefix_decides_and_prune_records_are_kept() {
        let plan = PrunePlan::new(&config(), None, now());
        let days = |days: i64| now() - chrono::Duration::days(days);
        assert_eq!(plan.cutoff_for("user.deleted"), Some(days(400)));
        assert_eq!(plan.cutoff_for("auth.login_failed"), Some(days(30)));
        assert_eq!(plan.cutoff_for("auth.admin.login"), Some(days(800)));
        assert_eq!(plan.cutoff_for(PRUNED_ACTION), None);
        let cli = PrunePlan::new(&config(), Some(Duration::from_secs(86_400)), now());
        assert_eq!(cli.cutoff_for("user.deleted"), Some(days(1)));
        assert_eq!(cli.cutoff_for("auth.x"), Some(days(30)));
    }

    #[test]
    fn classes_partition_the_actions() {
        let plan = PrunePlan::new(&config(), None, now());
        let classes = plan.classes();
        assert_eq!(classes.len(), 3);
        assert_eq!(classes[0].prefix.as_deref(), Some("auth."));
        assert_eq!(classes[0].excluded, vec!["auth.admin.".to_string()]);
        assert!(classes[1].excluded.is_empty());
        assert_eq!(classes[2].prefix, None);
        assert_eq!(classes[2].excluded.len(), 2);
        let without_default = PrunePlan {
            default_cutoff: None,
            ..plan
        };
        assert_eq!(without_default.classes().len(), 2);
    }

    #[test]
    fn record_carries_the_plan() {
        let plan = PrunePlan::new(&config(), None, now());
        let record = prune_record(
            "orders",
            &plan,
            &PrunedBy::Cli {
                user: "alice".into(),
            },
        );
        assert_eq!(record.action, PRUNED_ACTION);
        assert_eq!(record.actor_id.as_deref(), Some("alice"));
        assert_eq!(record.actor_source.as_deref(), Some("cli"));
        assert_eq!(record.metadata["cutoff"], "2025-04-27T00:00:00.000000Z");
        assert_eq!(record.metadata["rules"][0]["actionPrefix"], "auth.");
    }
}
