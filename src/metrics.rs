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
}

/// Appends one metric in the Prometheus text format.
pub fn write_metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}
