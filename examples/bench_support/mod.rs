//! What the store benchmarks share.

use std::time::Duration;

use auditgate::store::query::{Filter, IpFilter, StatusFilter};
use auditgate::writer::WriterOptions;
use chrono::{DateTime, TimeDelta, Utc};

/// The writer's settings for a benchmark: the product's defaults, or the batch size
/// `AUDITGATE_BENCH_BATCH` names, to see how commit size matters.
pub fn writer_options() -> WriterOptions {
    match std::env::var("AUDITGATE_BENCH_BATCH").map(|text| text.parse()) {
        Ok(Ok(batch_size)) => WriterOptions {
            batch_size,
            ..WriterOptions::default()
        },
        _ => WriterOptions::default(),
    }
}

/// The value at `fraction` (0.5 for the median) of durations sorted ascending.
#[allow(dead_code)] // not every benchmark that shares this module reports percentiles
pub fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// p50 and p95 of `runs` timed calls of `work`.
#[allow(dead_code)] // used by the PostgreSQL benchmarks only
pub fn p50_p95(
    runs: usize,
    mut work: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(Duration, Duration)> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = std::time::Instant::now();
        work()?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.95)))
}

/// The admin filters the PostgreSQL benchmarks time, one per kind of plan: `middle` places the
/// one-hour window, `log_id` names the log of the last one.
#[allow(dead_code)] // used by the PostgreSQL benchmarks only
pub fn sample_filters(
    middle: DateTime<Utc>,
    log_id: &str,
) -> anyhow::Result<Vec<(&'static str, Filter)>> {
    let with = |set: &dyn Fn(&mut Filter)| {
        let mut filter = Filter::default();
        set(&mut filter);
        filter
    };
    Ok(vec![
        ("newest page", Filter::default()),
        ("action", with(&|f| f.action = Some("user.deleted".into()))),
        (
            "action prefix",
            with(&|f| f.action_prefix = Some("user.".into())),
        ),
        (
            "actor (id or email)",
            with(&|f| f.actor = Some("user42@example.com".into())),
        ),
        (
            "resource",
            with(&|f| {
                f.resource_type = Some("post".into());
                f.resource_id = Some("4242".into());
            }),
        ),
        (
            "status class 4xx",
            with(&|f| f.status = Some(StatusFilter::Class(4))),
        ),
        (
            "ip network /16",
            Filter {
                ip: Some(IpFilter::Network("10.2.0.0/16".parse()?)),
                ..Filter::default()
            },
        ),
        (
            "one hour window",
            with(&|f| {
                f.since = Some(middle);
                f.until = Some(middle + TimeDelta::hours(1));
            }),
        ),
        ("free text q", with(&|f| f.q = Some("posts/4242".into()))),
        ("one log", with(&|f| f.log_id = Some(log_id.to_string()))),
    ])
}
