//! Process counters, rendered in the Prometheus text format at `/metrics` on the admin listener.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
    /// Fetches and freshness of JWT key sets fetched from a `jwks_url`.
    pub jwks: JwksMetrics,
    /// Shipping to each `[[archive]]` bucket.
    pub archives: ArchiveMetrics,
    /// Proxied exchanges by method, status class and whether a rule matched, with the time each
    /// took to its response head and the time the app took to answer.
    pub exchanges: ExchangeMetrics,
    /// What each `[[otlp]]` output sent, failed to send and still has to send.
    pub otlp: OtlpMetrics,
    /// Configuration reloads (SIGHUP) that took effect.
    pub reloads_ok: Counter,
    /// Configuration reloads refused (the running configuration stayed).
    pub reloads_failed: Counter,
    /// SHA-256 of the configuration file in force, for `auditgate_config_info`.
    pub config_sha256: Mutex<String>,
    /// Mutations (not GET, HEAD, OPTIONS, TRACE) that no rule took and only the generic
    /// `[unmatched]` fallback recorded: the traffic a rule should be written for.
    pub unmatched_mutations: Counter,
    /// The route learner when `[discover]` is on (set once at start). It lives here because the
    /// proxy feeds it and the admin listener reads it, as with the counters.
    pub routes: std::sync::OnceLock<Arc<crate::discover::RouteLearner>>,
}

impl Metrics {
    /// Records the hash of the configuration now in force.
    pub fn set_config_sha256(&self, sha256: &str) {
        match self.config_sha256.lock() {
            Ok(mut current) => *current = sha256.to_string(),
            Err(poisoned) => *poisoned.into_inner() = sha256.to_string(),
        }
    }

    fn config_sha256(&self) -> String {
        match self.config_sha256.lock() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// The methods that get a label of their own; any other is counted as `other`, so a client
/// cannot grow the number of series by inventing methods.
const METHOD_LABELS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "other",
];
/// Status classes; index 0 is "no status" (the client left before the app answered).
const CLASS_LABELS: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Per-exchange counters and latency histograms of the proxy path. Every label comes from a
/// fixed list, never from the request as sent.
#[derive(Debug)]
pub struct ExchangeMetrics {
    /// `[method][class][matched]`.
    counts: Vec<Counter>,
    /// From the request head to the response head.
    pub duration: Histogram,
    /// From forwarding the request to the app's response head.
    pub upstream_duration: Histogram,
}

impl Default for ExchangeMetrics {
    fn default() -> Self {
        ExchangeMetrics {
            counts: (0..METHOD_LABELS.len() * CLASS_LABELS.len() * 2)
                .map(|_| Counter::default())
                .collect(),
            duration: Histogram::new(SECONDS_BOUNDS),
            upstream_duration: Histogram::new(SECONDS_BOUNDS),
        }
    }
}

impl ExchangeMetrics {
    /// Counts one finished exchange. `status` is `None` when no response head was sent.
    pub fn record(&self, method: &http::Method, status: Option<u16>, matched: bool) {
        let method = METHOD_LABELS
            .iter()
            .position(|label| *label == method.as_str())
            .unwrap_or(METHOD_LABELS.len() - 1);
        let class = match status {
            Some(status @ 100..=599) => usize::from(status / 100),
            _ => 0,
        };
        self.counts[(method * CLASS_LABELS.len() + class) * 2 + usize::from(matched)].inc();
    }

    fn write(&self, out: &mut String) {
        let name = "auditgate_proxied_requests_total";
        write_family(
            out,
            name,
            "counter",
            "Proxied exchanges answered, by method, status class and whether a rule matched.",
        );
        for (method_index, method) in METHOD_LABELS.iter().enumerate() {
            for (class_index, class) in CLASS_LABELS.iter().enumerate() {
                for matched in [false, true] {
                    let index = (method_index * CLASS_LABELS.len() + class_index) * 2
                        + usize::from(matched);
                    let value = self.counts[index].get();
                    // Series that never happened are left out, so the page stays short.
                    if value > 0 {
                        let _ = writeln!(
                            out,
                            "{name}{{method=\"{method}\",class=\"{class}\",matched=\"{matched}\"}} {value}"
                        );
                    }
                }
            }
        }
        self.duration.write(
            out,
            "auditgate_request_duration_seconds",
            "Time of proxied exchanges from the request head to the response head.",
        );
        self.upstream_duration.write(
            out,
            "auditgate_upstream_duration_seconds",
            "Time the app took to answer with a response head.",
        );
    }
}

/// The health of every JWT key set fetched from a URL (`jwks_url`), one slot per `[[actor]]`
/// position and URL host. The labels come from the configuration, never from requests, so the
/// number of series is bounded by the sources ever configured in this process.
///
/// A slot outlives reloads, so its counters only ever grow; its freshness gauges are shown only
/// while a configured source uses it, so a source removed by a reload does not keep an alert on
/// stale keys firing.
#[derive(Debug, Default)]
pub struct JwksMetrics {
    slots: SlotRegistry<JwksSourceStats>,
}

/// The counters of one `jwks_url` source.
#[derive(Debug)]
pub struct JwksSourceStats {
    /// The `[[actor]]` position, from 1 (as in config errors: `actor #1`).
    actor: usize,
    /// The URL's host.
    host: String,
    /// Fetches that installed a key set.
    pub fetches_ok: Counter,
    /// Fetches that failed (no answer, an error status, no usable key); the last good set stays.
    pub fetches_failed: Counter,
    /// When the key set in use was fetched, in milliseconds since the Unix epoch; 0 for none.
    loaded_at_ms: AtomicU64,
}

impl JwksSourceStats {
    /// Records that the key set in use was fetched at `fetched_at`.
    pub fn set_loaded_at(&self, fetched_at: std::time::SystemTime) {
        let millis = fetched_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        self.loaded_at_ms.store(millis.max(1), Ordering::Relaxed);
    }
}

/// A key set's hold on its slot; dropping it (the key set was replaced by a reload) hides the
/// slot's freshness gauges unless another key set uses it.
pub type JwksSourceHandle = SlotHandle<JwksSourceStats>;

impl JwksMetrics {
    /// The slot of the source at `[[actor]]` position `actor` (from 1) fetching from `host`,
    /// made on first use.
    pub fn source(&self, actor: usize, host: &str) -> JwksSourceHandle {
        self.slots.hold(
            |slot| slot.actor == actor && slot.host == host,
            || JwksSourceStats {
                actor,
                host: host.to_string(),
                fetches_ok: Counter::default(),
                fetches_failed: Counter::default(),
                loaded_at_ms: AtomicU64::new(0),
            },
        )
    }

    /// Appends the JWKS metrics; nothing when no `jwks_url` was ever configured.
    pub fn write(&self, out: &mut String) {
        let slots = self.slots.all();
        if slots.is_empty() {
            return;
        }
        let labels = |slot: &JwksSourceStats| {
            format!(
                "actor=\"{}\",host=\"{}\"",
                slot.actor,
                escape_label(&slot.host)
            )
        };
        let fetches = "auditgate_jwks_fetches_total";
        write_family(
            out,
            fetches,
            "counter",
            "Fetches of a jwks_url key set, by result (a failed one keeps the last good set).",
        );
        for slot in &slots {
            for (result, counter) in [("ok", &slot.fetches_ok), ("failed", &slot.fetches_failed)] {
                let labels = format!("{},result=\"{result}\"", labels(slot));
                write_series(out, fetches, &labels, counter.get());
            }
        }
        let in_use: Vec<&Arc<Slot<JwksSourceStats>>> =
            slots.iter().filter(|slot| slot.in_use()).collect();
        let loaded = "auditgate_jwks_keys_loaded";
        write_family(
            out,
            loaded,
            "gauge",
            "1 while a jwks_url source has a key set; 0 while its tokens are recorded unverified for want of one.",
        );
        for slot in &in_use {
            let is_loaded = slot.loaded_at_ms.load(Ordering::Relaxed) > 0;
            write_series(out, loaded, &labels(slot), u8::from(is_loaded));
        }
        let age = "auditgate_jwks_keys_age_seconds";
        write_family(
            out,
            age,
            "gauge",
            "Seconds since the key set in use was fetched (absent while none is loaded). Alert when it exceeds a few jwks_refresh intervals.",
        );
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        for slot in &in_use {
            let loaded_at = slot.loaded_at_ms.load(Ordering::Relaxed);
            if loaded_at == 0 {
                continue;
            }
            let seconds = now_ms.saturating_sub(loaded_at) as f64 / 1000.0;
            write_series(out, age, &labels(slot), format_args!("{seconds:.3}"));
        }
    }
}

/// Slots that outlive reloads, one per source or output the configuration ever named, each
/// counting the running parts that hold it. Counters in a slot only ever grow; gauges about
/// freshness or lag are shown only while a part holds the slot, so a source removed by a reload
/// does not keep an alert firing.
#[derive(Debug)]
struct SlotRegistry<T> {
    slots: Mutex<Vec<Arc<Slot<T>>>>,
}

impl<T> Default for SlotRegistry<T> {
    fn default() -> Self {
        SlotRegistry {
            slots: Mutex::new(Vec::new()),
        }
    }
}

/// The stats of one slot and how many running parts hold it.
#[derive(Debug)]
struct Slot<T> {
    stats: T,
    holders: AtomicUsize,
}

impl<T> Slot<T> {
    /// Whether a running part holds the slot.
    fn in_use(&self) -> bool {
        self.holders.load(Ordering::Relaxed) > 0
    }
}

impl<T> std::ops::Deref for Slot<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.stats
    }
}

/// A running part's hold on its slot; dropping it hides the slot's gauges unless another part
/// holds it.
#[derive(Debug)]
pub struct SlotHandle<T>(Arc<Slot<T>>);

impl<T> std::ops::Deref for SlotHandle<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0.stats
    }
}

impl<T> Drop for SlotHandle<T> {
    fn drop(&mut self) {
        self.0.holders.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T> SlotRegistry<T> {
    /// A hold on the slot `is_it` picks, made with `make` on first use.
    fn hold(&self, is_it: impl Fn(&T) -> bool, make: impl FnOnce() -> T) -> SlotHandle<T> {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = match slots.iter().find(|slot| is_it(&slot.stats)) {
            Some(slot) => slot.clone(),
            None => {
                let slot = Arc::new(Slot {
                    stats: make(),
                    holders: AtomicUsize::new(0),
                });
                slots.push(slot.clone());
                slot
            }
        };
        slot.holders.fetch_add(1, Ordering::Relaxed);
        SlotHandle(slot)
    }

    /// Every slot ever made, in the order they were made.
    fn all(&self) -> Vec<Arc<Slot<T>>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Appends the HELP and TYPE lines of the metric family `name`.
fn write_family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Appends one series of the family `name`: `name{labels} value`.
fn write_series(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{name}{{{labels}}} {value}");
}

/// A label value in the Prometheus text format: backslash, quote and newline escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole `/metrics` page.
pub fn render(
    metrics: &Metrics,
    writer: &crate::metrics::WriterStats,
    queue_depth: usize,
) -> String {
    let mut out = String::new();
    let counters: [(&str, &str, u64); 21] = [
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
        (
            "auditgate_unmatched_mutations_total",
            "Mutations no rule took, recorded only by the generic [unmatched] fallback.",
            metrics.unmatched_mutations.get(),
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
    metrics.jwks.write(&mut out);
    metrics.otlp.write(&mut out);
    metrics.exchanges.write(&mut out);
    metrics.archives.write(&mut out);
    if let Some(routes) = metrics.routes.get() {
        let (templates, unlearned) = routes.counts();
        write_metric(
            &mut out,
            "auditgate_discover_templates",
            "gauge",
            "Route templates learned from traffic ([discover]).",
            templates as u64,
        );
        write_metric(
            &mut out,
            "auditgate_discover_unlearned_total",
            "counter",
            "Exchanges not learned because the cap on route templates was reached.",
            unlearned,
        );
    }
    write_metric(
        &mut out,
        "auditgate_config_reloads_total{result=\"ok\"}",
        "counter",
        "Configuration reloads, by whether they took effect.",
        metrics.reloads_ok.get(),
    );
    let _ = writeln!(
        out,
        "auditgate_config_reloads_total{{result=\"failed\"}} {}",
        metrics.reloads_failed.get()
    );
    let _ = writeln!(
        out,
        "# HELP auditgate_build_info The running build; always 1.\n# TYPE auditgate_build_info gauge\nauditgate_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(
        out,
        "# HELP auditgate_config_info The configuration in force (SHA-256 of its file); always 1.\n# TYPE auditgate_config_info gauge\nauditgate_config_info{{sha256=\"{}\"}} 1",
        escape_label(&metrics.config_sha256())
    );
    process::write(&mut out);
    out
}

/// Appends one metric in the Prometheus text format. `name` may carry labels (`x{a="b"}`); the
/// HELP and TYPE lines name the metric without them.
pub fn write_metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let family = name.split('{').next().unwrap_or(name);
    write_family(out, family, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// Counters of the object-storage archives, one slot per archive name; a slot outlives reloads,
/// so counters carry on when a reload restarts an archive's shipper.
#[derive(Debug, Default)]
pub struct ArchiveMetrics {
    slots: Mutex<Vec<Arc<ArchiveSlot>>>,
}

/// One archive's counters and gauges.
#[derive(Debug, Default)]
pub struct ArchiveSlot {
    pub name: String,
    /// Objects uploaded (not counting OCSF copies).
    pub objects: Counter,
    /// Entries in the objects uploaded.
    pub entries: Counter,
    /// Requests to the bucket that failed (each retried; nothing is skipped).
    pub failures: Counter,
    /// Committed entries not yet in the bucket.
    pub lag_entries: AtomicU64,
    /// Age of the oldest entry not yet in the bucket, in milliseconds (0 when none waits).
    pub lag_ms: AtomicU64,
    /// 1 while the last request to the bucket failed.
    pub failing: AtomicBool,
}

impl ArchiveMetrics {
    /// The slot of the archive `name`, made on first use.
    pub fn slot(&self, name: &str) -> Arc<ArchiveSlot> {
        let mut slots = match self.slots.lock() {
            Ok(slots) => slots,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(slot) = slots.iter().find(|slot| slot.name == name) {
            return slot.clone();
        }
        let slot = Arc::new(ArchiveSlot {
            name: name.to_string(),
            ..ArchiveSlot::default()
        });
        slots.push(slot.clone());
        slot
    }

    fn write(&self, out: &mut String) {
        let slots: Vec<Arc<ArchiveSlot>> = match self.slots.lock() {
            Ok(slots) => slots.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if slots.is_empty() {
            return;
        }
        type Read = fn(&ArchiveSlot) -> String;
        let families: [(&str, &str, &str, Read); 6] = [
            (
                "auditgate_archive_objects_total",
                "counter",
                "Objects uploaded to the archive bucket.",
                |slot| slot.objects.get().to_string(),
            ),
            (
                "auditgate_archive_entries_total",
                "counter",
                "Entries in the objects uploaded to the archive bucket.",
                |slot| slot.entries.get().to_string(),
            ),
            (
                "auditgate_archive_failures_total",
                "counter",
                "Requests to the archive bucket that failed (each retried; nothing is skipped).",
                |slot| slot.failures.get().to_string(),
            ),
            (
                "auditgate_archive_lag_entries",
                "gauge",
                "Committed entries not yet in the archive bucket.",
                |slot| slot.lag_entries.load(Ordering::Relaxed).to_string(),
            ),
            (
                "auditgate_archive_lag_seconds",
                "gauge",
                "Age of the oldest entry not yet in the archive bucket (0 when none waits).",
                |slot| format!("{:.3}", slot.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0),
            ),
            (
                "auditgate_archive_failing",
                "gauge",
                "1 while the last request to the archive bucket failed.",
                |slot| u64::from(slot.failing.load(Ordering::Relaxed)).to_string(),
            ),
        ];
        for (family, kind, help, read) in families {
            write_family(out, family, kind, help);
            for slot in &slots {
                let labels = format!("archive=\"{}\"", escape_label(&slot.name));
                write_series(out, family, &labels, read(slot));
            }
        }
    }
}

/// Why a submission to a witness failed: the `reason` label of
/// `auditgate_witness_failures_total`, a fixed set so the series are bounded.
pub const WITNESS_FAILURE_REASONS: [&str; 9] = [
    // No answer: refused connection, TLS failure, timeout.
    "unreachable",
    // 400: the request was malformed.
    "bad_request",
    // 403: the witness does not trust the log's key, or its signature failed.
    "forbidden",
    // 404: the witness does not know the log's origin.
    "unknown_log",
    // 409 that could not be resolved: the witness holds a size the log cannot prove from.
    "conflict",
    // 422: the consistency proof or the root did not check out.
    "inconsistent",
    // 200 without a cosignature that verifies under the configured key.
    "bad_cosignature",
    // Any other answer.
    "http_error",
    // The sidecar could not make the proof or store the cosignature.
    "local_error",
];

/// Counters of the witnesses (`[[log.witnesses]]`), one slot per witness name; the slots live in
/// the signer's counters, which outlive reloads.
#[derive(Debug, Default)]
pub struct WitnessMetrics {
    slots: Mutex<Vec<Arc<WitnessSlot>>>,
}

/// One witness's counters and gauges.
#[derive(Debug, Default)]
pub struct WitnessSlot {
    pub name: String,
    /// Checkpoints the witness cosigned whose cosignature verified and was stored.
    pub cosigned: Counter,
    /// Failed submissions, by the index of their reason in [`WITNESS_FAILURE_REASONS`].
    failures: [Counter; WITNESS_FAILURE_REASONS.len()],
    /// The size of the last checkpoint the witness cosigned.
    pub cosigned_size: AtomicU64,
    /// 1 while the last submission failed.
    pub failing: AtomicBool,
}

impl WitnessSlot {
    /// Counts a failure; a reason outside [`WITNESS_FAILURE_REASONS`] counts as `http_error`.
    pub fn failed(&self, reason: &str) {
        let position = |wanted: &str| {
            WITNESS_FAILURE_REASONS
                .iter()
                .position(|known| *known == wanted)
        };
        let index = position(reason)
            .or_else(|| position("http_error"))
            .unwrap_or(0);
        self.failures[index].inc();
        self.failing.store(true, Ordering::Relaxed);
    }

    /// Failures counted for `reason`.
    pub fn failures(&self, reason: &str) -> u64 {
        WITNESS_FAILURE_REASONS
            .iter()
            .position(|known| *known == reason)
            .map_or(0, |index| self.failures[index].get())
    }

    /// Counts a cosigned checkpoint of `size`.
    pub fn cosigned(&self, size: u64) {
        self.cosigned.inc();
        self.cosigned_size.store(size, Ordering::Relaxed);
        self.failing.store(false, Ordering::Relaxed);
    }
}

impl WitnessMetrics {
    /// The slot of the witness `name`, made on first use.
    pub fn slot(&self, name: &str) -> Arc<WitnessSlot> {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slot) = slots.iter().find(|slot| slot.name == name) {
            return slot.clone();
        }
        let slot = Arc::new(WitnessSlot {
            name: name.to_string(),
            ..WitnessSlot::default()
        });
        slots.push(slot.clone());
        slot
    }

    /// Appends the witness families to `/metrics`; nothing when no witness is configured.
    pub fn write(&self, out: &mut String) {
        let slots: Vec<Arc<WitnessSlot>> = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if slots.is_empty() {
            return;
        }
        let label = |slot: &WitnessSlot| format!("witness=\"{}\"", escape_label(&slot.name));
        write_family(
            out,
            "auditgate_witness_cosignatures_total",
            "counter",
            "Checkpoints the witness cosigned, with a cosignature that verified and was stored.",
        );
        for slot in &slots {
            write_series(
                out,
                "auditgate_witness_cosignatures_total",
                &label(slot),
                slot.cosigned.get(),
            );
        }
        write_family(
            out,
            "auditgate_witness_failures_total",
            "counter",
            "Submissions of a checkpoint to the witness that failed, by reason (each retried \
             with the next head).",
        );
        for slot in &slots {
            for (index, reason) in WITNESS_FAILURE_REASONS.iter().enumerate() {
                write_series(
                    out,
                    "auditgate_witness_failures_total",
                    &format!("{},reason=\"{reason}\"", label(slot)),
                    slot.failures[index].get(),
                );
            }
        }
        write_family(
            out,
            "auditgate_witness_cosigned_size",
            "gauge",
            "Tree size of the last checkpoint the witness cosigned.",
        );
        for slot in &slots {
            write_series(
                out,
                "auditgate_witness_cosigned_size",
                &label(slot),
                slot.cosigned_size.load(Ordering::Relaxed),
            );
        }
        write_family(
            out,
            "auditgate_witness_failing",
            "gauge",
            "1 while the last submission to the witness failed.",
        );
        for slot in &slots {
            write_series(
                out,
                "auditgate_witness_failing",
                &label(slot),
                u8::from(slot.failing.load(Ordering::Relaxed)),
            );
        }
    }
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
        write_family(out, name, "histogram", help);
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

/// The standard `process_*` metrics of Prometheus client libraries (resident memory, open file
/// descriptors, CPU time, start time), read from `/proc/self` where the system has it.
mod process {
    use std::fmt::Write;

    /// Appends what the system tells; nothing where `/proc` is missing.
    pub fn write(out: &mut String) {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return;
        };
        // The command name (field 2) is in parentheses and may contain spaces: fields are
        // counted after its closing parenthesis, from field 3 (state).
        let Some(after_name) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            return;
        };
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |number: usize| -> Option<f64> { fields.get(number - 3)?.parse().ok() };
        let ticks = clock_ticks_per_second();
        let page_size = 4096.0;
        if let (Some(user), Some(system)) = (field(14), field(15)) {
            gauge(
                out,
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                (user + system) / ticks,
            );
        }
        if let Some(rss_pages) = field(24) {
            gauge(
                out,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                rss_pages * page_size,
            );
        }
        if let Some(virtual_bytes) = field(23) {
            gauge(
                out,
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                virtual_bytes,
            );
        }
        if let (Some(start_ticks), Some(boot)) = (field(22), boot_time()) {
            gauge(
                out,
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch in seconds.",
                boot + start_ticks / ticks,
            );
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                out,
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                entries.count() as f64,
            );
        }
        if let Some(limit) = max_fds() {
            gauge(
                out,
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                limit,
            );
        }
    }

    fn gauge(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
        super::write_family(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }

    /// `USER_HZ`, which is 100 on every Linux architecture the kernel exports to user space.
    fn clock_ticks_per_second() -> f64 {
        100.0
    }

    /// The system's boot time, from the `btime` line of `/proc/stat`.
    fn boot_time() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines()
            .find_map(|line| line.strip_prefix("btime "))
            .and_then(|value| value.trim().parse().ok())
    }

    /// The soft limit on open files, from `/proc/self/limits`.
    fn max_fds() -> Option<f64> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits
            .lines()
            .find(|line| line.starts_with("Max open files"))?;
        line["Max open files".len()..]
            .split_whitespace()
            .next()
            .and_then(|soft| soft.parse().ok())
    }
}

/// The progress of every `[[otlp]]` output, one slot per (name, endpoint). Labels come from the
/// configuration, never from requests. A slot outlives reloads, so its counters only grow; its
/// lag gauges are shown only while a configured output uses it, so a removed output does not keep
/// an alert firing.
#[derive(Debug, Default)]
pub struct OtlpMetrics {
    slots: SlotRegistry<OtlpOutputStats>,
}

/// The counters of one OTLP output.
#[derive(Debug)]
pub struct OtlpOutputStats {
    name: String,
    endpoint: String,
    /// Entries the collector acknowledged.
    pub sent: Counter,
    /// Requests that failed and are retried: no answer, a timeout, 408, 429 or 5xx.
    pub failed_unavailable: Counter,
    /// Requests the collector refused for good (any other 4xx, or a redirect).
    pub failed_rejected: Counter,
    /// Entries passed over on purpose: refused for good with `on_rejected = "skip"`.
    pub skipped_rejected: Counter,
    /// Entries that could not be sent because they were gone or unreadable in the store (pruned
    /// before they were sent, or a row that no longer parses).
    pub skipped_unreadable: Counter,
    /// Records the collector acknowledged but reported dropping (OTLP partial success).
    pub dropped_by_collector: Counter,
    /// Committed entries not yet acknowledged.
    lag_entries: AtomicU64,
    /// When the oldest entry not yet acknowledged was made, in milliseconds since the Unix epoch;
    /// 0 while nothing waits.
    oldest_unsent_ms: AtomicU64,
}

impl OtlpOutputStats {
    /// Records how far behind the log the output is: `entries` waiting, the oldest made at
    /// `oldest` (`None` when nothing waits).
    pub fn set_lag(&self, entries: u64, oldest: Option<chrono::DateTime<chrono::Utc>>) {
        self.lag_entries.store(entries, Ordering::Relaxed);
        let millis = oldest.map_or(0, |time| time.timestamp_millis().max(1) as u64);
        self.oldest_unsent_ms.store(millis, Ordering::Relaxed);
    }

    /// Entries waiting, as last seen.
    pub fn lag_entries(&self) -> u64 {
        self.lag_entries.load(Ordering::Relaxed)
    }
}

/// An output's hold on its slot; dropping it (the output stopped) hides the slot's lag gauges
/// unless another output uses it.
pub type OtlpOutputHandle = SlotHandle<OtlpOutputStats>;

impl OtlpMetrics {
    /// The slot of the output `name` sending to `endpoint`, made on first use.
    pub fn output(&self, name: &str, endpoint: &str) -> OtlpOutputHandle {
        self.slots.hold(
            |slot| slot.name == name && slot.endpoint == endpoint,
            || OtlpOutputStats {
                name: name.to_string(),
                endpoint: endpoint.to_string(),
                sent: Counter::default(),
                failed_unavailable: Counter::default(),
                failed_rejected: Counter::default(),
                skipped_rejected: Counter::default(),
                skipped_unreadable: Counter::default(),
                dropped_by_collector: Counter::default(),
                lag_entries: AtomicU64::new(0),
                oldest_unsent_ms: AtomicU64::new(0),
            },
        )
    }

    /// Appends the OTLP metrics; nothing when no `[[otlp]]` output was ever configured.
    pub fn write(&self, out: &mut String) {
        let slots = self.slots.all();
        if slots.is_empty() {
            return;
        }
        let labels = |slot: &OtlpOutputStats| {
            format!(
                "name=\"{}\",endpoint=\"{}\"",
                escape_label(&slot.name),
                escape_label(&slot.endpoint)
            )
        };
        // Each counter family: its name, help, and the counters of a slot by the label that
        // tells them apart (none where a slot has one counter).
        type Counters =
            for<'slot> fn(&'slot OtlpOutputStats) -> Vec<(&'static str, &'slot Counter)>;
        let counters: [(&str, &str, Counters); 4] = [
            (
                "auditgate_otlp_sent_total",
                "Entries an [[otlp]] collector acknowledged.",
                |slot| vec![("", &slot.sent)],
            ),
            (
                "auditgate_otlp_failed_total",
                "OTLP requests that failed, by reason: unavailable (retried with back-off) or rejected (refused for good; held or skipped per on_rejected).",
                |slot| {
                    vec![
                        ("reason=\"unavailable\"", &slot.failed_unavailable),
                        ("reason=\"rejected\"", &slot.failed_rejected),
                    ]
                },
            ),
            (
                "auditgate_otlp_skipped_total",
                "Entries an [[otlp]] output did not deliver, by reason: rejected (on_rejected = skip) or unreadable (pruned or unparsable in the store before it was sent). Alarm on anything but 0.",
                |slot| {
                    vec![
                        ("reason=\"rejected\"", &slot.skipped_rejected),
                        ("reason=\"unreadable\"", &slot.skipped_unreadable),
                    ]
                },
            ),
            (
                "auditgate_otlp_dropped_by_collector_total",
                "Records a collector acknowledged but reported dropping (OTLP partial success).",
                |slot| vec![("", &slot.dropped_by_collector)],
            ),
        ];
        for (family, help, read) in counters {
            write_family(out, family, "counter", help);
            for slot in &slots {
                for (label, counter) in read(slot) {
                    let labels = match label {
                        "" => labels(slot),
                        label => format!("{},{label}", labels(slot)),
                    };
                    write_series(out, family, &labels, counter.get());
                }
            }
        }
        let in_use: Vec<&Arc<Slot<OtlpOutputStats>>> =
            slots.iter().filter(|slot| slot.in_use()).collect();
        let lag_entries = "auditgate_otlp_lag_entries";
        write_family(
            out,
            lag_entries,
            "gauge",
            "Committed entries an [[otlp]] collector has not acknowledged yet.",
        );
        for slot in &in_use {
            write_series(out, lag_entries, &labels(slot), slot.lag_entries());
        }
        let lag_seconds = "auditgate_otlp_lag_seconds";
        write_family(
            out,
            lag_seconds,
            "gauge",
            "Age of the oldest committed entry an [[otlp]] collector has not acknowledged; 0 when it has them all.",
        );
        let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
        for slot in &in_use {
            let oldest = slot.oldest_unsent_ms.load(Ordering::Relaxed);
            let lag = if oldest == 0 {
                0.0
            } else {
                now_ms.saturating_sub(oldest) as f64 / 1000.0
            };
            write_series(out, lag_seconds, &labels(slot), format_args!("{lag:.3}"));
        }
    }
}

/// Counters the writer keeps, read by /metrics and tests.
#[derive(Debug)]
pub struct WriterStats {
    pub entries_written: Counter,
    pub batches: Counter,
    pub store_errors: Counter,
    /// Entries that could not be stored even at shutdown. Must stay 0.
    pub entries_lost: Counter,
    /// Requests that waited for room in the queue.
    pub backpressure_waits: Counter,
    /// Entries written to the spill file because the store refused them.
    pub entries_spilled: Counter,
    /// Spilled entries imported back into the store at start.
    pub entries_reimported: Counter,
    /// Write-ahead intents made durable.
    pub intents_written: Counter,
    /// Write-ahead intents the store could not take (each answered with an error).
    pub intent_errors: Counter,
    /// Entries finished with outcome `unknown` at start from intents a crash left behind.
    pub intents_recovered: Counter,
    /// Entries per group commit.
    pub commit_size: Histogram,
    /// Seconds per group commit.
    pub commit_seconds: Histogram,
    /// Set while the last attempt to write failed (for /readyz).
    pub failing: AtomicBool,
    /// Lines written to the NDJSON stream (`[stream]`).
    pub stream_lines: Counter,
    /// Stream writes that failed (the entries are in the store; the stream missed them).
    pub stream_errors: Counter,
}

impl Default for WriterStats {
    fn default() -> Self {
        WriterStats {
            entries_written: Counter::default(),
            batches: Counter::default(),
            store_errors: Counter::default(),
            entries_lost: Counter::default(),
            backpressure_waits: Counter::default(),
            entries_spilled: Counter::default(),
            entries_reimported: Counter::default(),
            intents_written: Counter::default(),
            intent_errors: Counter::default(),
            intents_recovered: Counter::default(),
            commit_size: Histogram::new(SIZE_BOUNDS),
            commit_seconds: Histogram::new(SECONDS_BOUNDS),
            failing: AtomicBool::new(false),
            stream_lines: Counter::default(),
            stream_errors: Counter::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_series_are_labelled_and_gauges_follow_the_sources_in_use() {
        let jwks = JwksMetrics::default();
        let mut out = String::new();
        jwks.write(&mut out);
        assert_eq!(out, "", "no jwks_url, no series");

        let first = jwks.source(2, "idp.example");
        first.fetches_failed.inc();
        let mut out = String::new();
        jwks.write(&mut out);
        assert!(out.contains(
            "auditgate_jwks_fetches_total{actor=\"2\",host=\"idp.example\",result=\"failed\"} 1\n"
        ));
        assert!(out.contains("auditgate_jwks_keys_loaded{actor=\"2\",host=\"idp.example\"} 0\n"));
        assert!(!out.contains("auditgate_jwks_keys_age_seconds{"), "{out}");

        // A reload: the same source takes the same slot, so the counters carry on.
        let second = jwks.source(2, "idp.example");
        drop(first);
        second.fetches_ok.inc();
        second.set_loaded_at(std::time::SystemTime::now() - std::time::Duration::from_secs(90));
        let mut out = String::new();
        jwks.write(&mut out);
        assert!(out.contains("result=\"failed\"} 1\n"), "{out}");
        assert!(out.contains("result=\"ok\"} 1\n"), "{out}");
        let age: f64 = out
            .lines()
            .find_map(|line| {
                line.strip_prefix(
                    "auditgate_jwks_keys_age_seconds{actor=\"2\",host=\"idp.example\"} ",
                )
            })
            .and_then(|value| value.parse().ok())
            .expect("an age");
        assert!((90.0..100.0).contains(&age), "{age}");

        // A reload that removes the source: counters stay, gauges go.
        drop(second);
        let mut out = String::new();
        jwks.write(&mut out);
        assert!(out.contains("result=\"ok\"} 1\n"), "{out}");
        assert!(!out.contains("auditgate_jwks_keys_loaded{"), "{out}");
        assert!(!out.contains("auditgate_jwks_keys_age_seconds{"), "{out}");
        assert_eq!(escape_label("a\"b\\c"), "a\\\"b\\\\c");
    }

    /// The value of one exact series on a page, parsed, so `_total 1` never passes for 10.
    fn value(page: &str, series: &str) -> Option<f64> {
        page.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    }

    #[test]
    fn exchanges_are_counted_by_fixed_labels_and_the_process_is_described() {
        let metrics = Metrics::default();
        metrics
            .exchanges
            .record(&http::Method::GET, Some(200), true);
        metrics
            .exchanges
            .record(&http::Method::GET, Some(204), true);
        metrics
            .exchanges
            .record(&http::Method::DELETE, Some(404), false);
        metrics.exchanges.record(
            &http::Method::from_bytes(b"BREW").expect("an extension method"),
            None,
            false,
        );
        metrics.exchanges.duration.observe(0.003);
        metrics.reloads_failed.inc();
        metrics.set_config_sha256("abc123");
        let writer = crate::metrics::WriterStats::default();
        let page = render(&metrics, &writer, 0);
        let series = |labels: &str| {
            value(
                &page,
                &format!("auditgate_proxied_requests_total{{{labels}}}"),
            )
        };
        assert_eq!(
            series("method=\"GET\",class=\"2xx\",matched=\"true\""),
            Some(2.0)
        );
        assert_eq!(
            series("method=\"DELETE\",class=\"4xx\",matched=\"false\""),
            Some(1.0)
        );
        assert_eq!(
            series("method=\"other\",class=\"none\",matched=\"false\""),
            Some(1.0)
        );
        assert!(
            !page.contains("BREW"),
            "a method as sent never becomes a label"
        );
        assert_eq!(
            value(&page, "auditgate_request_duration_seconds_count"),
            Some(1.0)
        );
        assert_eq!(
            value(
                &page,
                "auditgate_request_duration_seconds_bucket{le=\"0.005\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&page, "auditgate_config_reloads_total{result=\"failed\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&page, "auditgate_config_reloads_total{result=\"ok\"}"),
            Some(0.0)
        );
        assert_eq!(
            value(
                &page,
                &format!(
                    "auditgate_build_info{{version=\"{}\"}}",
                    env!("CARGO_PKG_VERSION")
                )
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&page, "auditgate_config_info{sha256=\"abc123\"}"),
            Some(1.0)
        );
        assert_eq!(
            page.matches("# TYPE auditgate_config_reloads_total counter")
                .count(),
            1
        );
        if std::path::Path::new("/proc/self/stat").exists() {
            let rss = value(&page, "process_resident_memory_bytes").expect("rss");
            assert!(
                rss > 1_000_000.0,
                "a test process holds more than 1 MB: {rss}"
            );
            assert!(value(&page, "process_open_fds").expect("fds") >= 3.0);
            assert!(value(&page, "process_cpu_seconds_total").is_some());
            let started = value(&page, "process_start_time_seconds").expect("start");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|since| since.as_secs_f64())
                .unwrap_or_default();
            assert!(
                started <= now + 1.0 && started > now - 86_400.0 * 30.0,
                "{started} vs {now}"
            );
        }
    }
}
