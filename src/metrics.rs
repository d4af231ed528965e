//! Process counters, rendered in the Prometheus text format at `/metrics` on the admin listener.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, amount: u64) {
        self.0.fetch_add(amount, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters of the proxy path.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests received on the proxy listener.
    pub requests: Counter,
    /// Entries finished by the proxy and handed to the writer.
    pub entries_produced: Counter,
    /// Requests answered 502/504 because the app could not be reached in time.
    pub upstream_errors: Counter,
    /// Requests refused because the client sent something unusable.
    pub client_errors: Counter,
    /// Write-ahead requests answered 503 because their entry could not be made durable.
    pub fail_closed: Counter,
    /// Write-ahead requests forwarded although their entry could not be made durable
    /// (`on_store_failure = "forward"`).
    pub forwarded_unrecorded: Counter,
}

/// The whole `/metrics` page.
pub fn render(
    metrics: &Metrics,
    writer: &crate::writer::WriterStats,
    queue_depth: usize,
) -> String {
    let mut out = String::new();
    let counters: [(&str, &str, u64); 20] = [
        (
            "auditgate_requests_total",
            "Requests received on the proxy listener.",
            metrics.requests.get(),
        ),
        (
            "auditgate_entries_produced_total",
            "Entries finished by the proxy and handed to the writer.",
            metrics.entries_produced.get(),
        ),
        (
            "auditgate_upstream_errors_total",
            "Requests answered 502/504 because the app could not be reached in time.",
            metrics.upstream_errors.get(),
        ),
        (
            "auditgate_client_errors_total",
            "Requests refused because the client sent something unusable.",
            metrics.client_errors.get(),
        ),
        (
            "auditgate_fail_closed_total",
            "Write-ahead requests answered 503 because their entry could not be made durable.",
            metrics.fail_closed.get(),
        ),
        (
            "auditgate_forwarded_unrecorded_total",
            "Write-ahead requests forwarded without a durable entry (on_store_failure = forward).",
            metrics.forwarded_unrecorded.get(),
        ),
        (
            "auditgate_entries_written_total",
            "Entries committed to the store.",
            writer.entries_written.get(),
        ),
        (
            "auditgate_batches_total",
            "Group commits of entries.",
            writer.batches.get(),
        ),
        (
            "auditgate_store_errors_total",
            "Failed store appends (each retried, then spilled).",
            writer.store_errors.get(),
        ),
        (
            "auditgate_entries_spilled_total",
            "Entries written to the spill file because the store refused them.",
            writer.entries_spilled.get(),
        ),
        (
            "auditgate_entries_reimported_total",
            "Spilled entries taken back by the store (when it takes writes again, or at start), counting those it already held.",
            writer.entries_reimported.get(),
        ),
        (
            "auditgate_stream_lines_total",
            "Committed entries written to the NDJSON stream.",
            writer.stream_lines.get(),
        ),
        (
            "auditgate_stream_errors_total",
            "NDJSON stream writes that failed (the entries are in the store).",
            writer.stream_errors.get(),
        ),
        (
            "auditgate_intents_written_total",
            "Write-ahead intents made durable.",
            writer.intents_written.get(),
        ),
        (
            "auditgate_intent_errors_total",
            "Write-ahead intents the store could not take.",
            writer.intent_errors.get(),
        ),
        (
            "auditgate_intents_recovered_total",
            "Entries recorded with outcome unknown at start from intents a crash left.",
            writer.intents_recovered.get(),
        ),
        (
            "auditgate_entries_lost_total",
            "Entries that could never be stored. Alarm on anything but 0.",
            writer.entries_lost.get(),
        ),
        (
            "auditgate_backpressure_waits_total",
            "Audited requests that waited for room in the writer queue.",
            writer.backpressure_waits.get(),
        ),
        (
            "auditgate_queue_depth",
            "Entries waiting for the writer.",
            queue_depth as u64,
        ),
        (
            "auditgate_store_failing",
            "1 while the last write to the store failed.",
            u64::from(writer.failing.load(Ordering::Relaxed)),
        ),
    ];
    for (name, help, value) in counters {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        write_metric(&mut out, name, kind, help, value);
    }
    writer.commit_size.write(
        &mut out,
        "auditgate_commit_entries",
        "Entries per group commit.",
    );
    writer.commit_seconds.write(
        &mut out,
        "auditgate_commit_seconds",
        "Time per group commit.",
    );
    out
}

/// Appends one metric in the Prometheus text format.
pub fn write_metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

/// A Prometheus histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, plus the +Inf bucket.
    counts: Vec<AtomicU64>,
    /// Sum of observations, in millionths, so it fits an atomic integer.
    sum_micro: AtomicU64,
}

/// Bounds for durations in seconds: 100 µs to 10 s.
pub const SECONDS_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];
/// Bounds for batch sizes.
pub const SIZE_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let index = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        self.sum_micro
            .fetch_add((value * 1_000_000.0) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }

    /// Appends the histogram in the Prometheus text format.
    pub fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micro.load(Ordering::Relaxed) as f64 / 1_000_000.0
        );
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}
