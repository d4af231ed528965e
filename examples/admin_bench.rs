//! Admin API benchmark: query latency per filter, export throughput and the export's peak memory,
//! over a SQLite store seeded with N realistic entries (default 1,000,000).
//!
//! ```text
//! cargo run --release --example admin_bench -- [N]
//! ```
//!
//! Every measurement goes through the real admin router (`router(state).oneshot(...)`): parameter
//! parsing, authentication, the store's reader pool, JSON encoding and, for exports, the streamed
//! body consumed chunk by chunk, exactly as the admin listener serves it minus the socket. The
//! admin API's own `audit.query` entries are written to the same store meanwhile, as in
//! production.
//!
//! Peak memory is the process's VmHWM (peak resident set) during each export, reset before it
//! through `/proc/self/clear_refs`, shown as is and minus the resident set just before (what one
//! export adds). Flat memory means neither grows with N. The idle figure already holds heap the
//! allocator kept from seeding and SQLite's page caches, which an export may reuse.
//!
//! Environment: `ADMIN_BENCH_DB=PATH` keeps the store there (seeded when new, reused as it is
//! otherwise); `ADMIN_BENCH_RUNS=N` runs per query; `ADMIN_BENCH_EXPORTS=0` measures the queries
//! only; `ADMIN_BENCH_QUERIES=0` the exports only (on a store larger than the page cache, the
//! queries' warm-up runs read from disk for minutes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use auditgate::admin::auth::Authenticator;
use auditgate::admin::config::{AdminToken, Scope};
use auditgate::admin::{router, AdminState};
use auditgate::entry::AuditEntry;
use auditgate::log::head::{LogSigner, TreeHead};
use auditgate::metrics::Metrics;
use auditgate::store::config::SyncMode;
use auditgate::store::query::Cursor;
use auditgate::store::sqlite::SqliteStore;
use auditgate::store::{LogReader, Store};
use auditgate::writer::{Writer, WriterOptions};
use axum::body::Body;
use chrono::{Duration as TimeDelta, Utc};
use futures_util::StreamExt;
use http::Request;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

#[path = "bench_support/generate.rs"]
mod generate;

use generate::{entry, pick_user};

const TOKEN: &str = "agt_bench";
const SEED_BATCH: usize = 20_000;
/// Runs per query; `ADMIN_BENCH_RUNS` sets another number (fewer for the largest stores, where
/// a free-text query that matches nothing reads every row).
const RUNS: usize = 40;

fn seed(store: &SqliteStore, count: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(42);
    let start = Utc::now() - TimeDelta::days(90);
    let mut index = 0;
    let (mut last_mark, mut last_index) = (started, 0);
    while index < count {
        let take = SEED_BATCH.min(count - index);
        let mut batch: Vec<AuditEntry> = (index..index + take)
            .map(|i| entry(&mut rng, i, count, start))
            .collect();
        store.append(&mut batch)?;
        index += take;
        // One line per million: the writer's rate as the log grows (goal: flat).
        if index % 1_000_000 == 0 || index == count {
            let now = Instant::now();
            let since = now.duration_since(last_mark).as_secs_f64();
            eprintln!(
                "seeded {index}: {:.0} entries/s over the last {}",
                (index - last_index) as f64 / since.max(1e-9),
                index - last_index
            );
            (last_mark, last_index) = (now, index);
        }
    }
    Ok(started.elapsed())
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|line| line.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resets VmHWM to the current resident set (Linux 4.0+).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

struct Bench {
    app: axum::Router,
}

impl Bench {
    /// One GET through the router, body read to the end; returns the time and the body bytes.
    async fn get(&self, uri: &str) -> anyhow::Result<(Duration, usize, u16)> {
        let started = Instant::now();
        let request = Request::builder()
            .uri(uri)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::empty())?;
        let response = self.app.clone().oneshot(request).await?;
        let status = response.status().as_u16();
        let mut stream = response.into_body().into_data_stream();
        let mut bytes = 0;
        while let Some(chunk) = stream.next().await {
            bytes += chunk?.len();
        }
        Ok((started.elapsed(), bytes, status))
    }
}

fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * percent).div_ceil(100).max(1) - 1;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(duration: Duration) -> String {
    format!("{:.2}", duration.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut count: usize = match std::env::args().nth(1) {
        Some(text) => text.replace('_', "").parse()?,
        None => 1_000_000,
    };
    // ADMIN_BENCH_DB=PATH measures a store seeded before (kept, not deleted) instead of seeding
    // a new one: at ten million entries and more the seeding is most of the run. A PATH with no
    // entries yet is seeded with N and kept.
    let reused = std::env::var_os("ADMIN_BENCH_DB").map(std::path::PathBuf::from);
    let dir = match &reused {
        Some(path) => path
            .parent()
            .map(|dir| dir.to_path_buf())
            .unwrap_or_default(),
        None => std::env::temp_dir().join(format!("auditgate-admin-bench-{}", ulid::Ulid::new())),
    };
    let db = reused.clone().unwrap_or_else(|| dir.join("audit.db"));
    let opening = Instant::now();
    let store = Arc::new(SqliteStore::open(&db, SyncMode::Normal)?);
    // A store of an earlier schema version is migrated by this open.
    eprintln!(
        "opened {} in {:.1} s",
        db.display(),
        opening.elapsed().as_secs_f64()
    );
    let seeded_in = if reused.is_some() && store.size()? > 0 {
        count = store.size()? as usize;
        eprintln!("measuring {count} entries already in {} ...", db.display());
        Duration::ZERO
    } else {
        eprintln!("seeding {count} entries into {} ...", db.display());
        seed(&store, count)?
    };
    // The proof endpoints prove against the latest signed head, as a sidecar signs them.
    let tree = store.tree()?;
    let head = TreeHead::new("bench", tree.size, tree.root, Utc::now())?;
    store.save_head(&LogSigner::generate().sign(head)?)?;
    let file_size = |path: &std::path::Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let file_mib = (file_size(&db) + file_size(&dir.join("audit.db-wal"))) as f64 / 1048576.0;
    eprintln!(
        "seeded in {:.1} s ({file_mib:.0} MiB)",
        seeded_in.as_secs_f64()
    );

    let writer = Writer::start(
        store.clone(),
        WriterOptions {
            capacity: 10_000,
            batch_size: 256,
            linger: Duration::from_millis(2),
            spill_path: None,
            journal: None,
        },
    )?;
    let token = AdminToken {
        name: "bench".into(),
        sha256: Sha256::digest(TOKEN.as_bytes()).into(),
        scopes: vec![Scope::Read, Scope::Export],
    };
    let bench = Bench {
        app: router(AdminState {
            store: store.clone(),
            writer: writer.handle(),
            metrics: Arc::new(Metrics::default()),
            auth: Arc::new(Authenticator::new(&[token])),
            log_id: Arc::from("bench"),
            log: Arc::new(auditgate::admin::log_api::LogApiState::new(None, None)),
            ingest_keys: Arc::default(),
        }),
    };

    let now = Utc::now();
    let day_ago = (now - TimeDelta::days(1)).to_rfc3339();
    let month_ago = (now - TimeDelta::days(30)).to_rfc3339();
    let week_ago = (now - TimeDelta::days(7)).to_rfc3339();
    let month_ago_next_day = (now - TimeDelta::days(29)).to_rfc3339();
    let middle = Cursor::after_seq((count / 2) as u64 + 1).encode();
    let mut rng = StdRng::seed_from_u64(7);

    // Entries anywhere in the log, for the proof endpoints (an inclusion proof of an entry at the
    // size of the tree now, and consistency proofs from random earlier sizes to the seeded size).
    let runs: usize = match std::env::var("ADMIN_BENCH_RUNS") {
        Ok(text) => text.parse()?,
        Err(_) => RUNS,
    };
    let proof_ids: Vec<String> = (0..runs)
        .map(|_| {
            let seq = rng.gen_range(1..=count as u64);
            let page = store.scan_log(seq, 1)?;
            match page.slots.into_iter().next().and_then(|slot| slot.entry) {
                Some(Ok(entry)) => Ok(entry.id),
                _ => anyhow::bail!("position {seq} has no readable entry"),
            }
        })
        .collect::<anyhow::Result<_>>()?;
    let proof_froms: Vec<u64> = (0..runs).map(|_| rng.gen_range(1..count as u64)).collect();

    // (label, kind, one URI per run)
    type Case = (&'static str, &'static str, Vec<String>);
    let mut cases: Vec<Case> = Vec::new();
    let mut case =
        |label: &'static str, kind: &'static str, make: &mut dyn FnMut(usize) -> String| {
            cases.push((label, kind, (0..runs).map(&mut *make).collect()));
        };
    let encode =
        |text: &str| -> String { form_urlencoded::byte_serialize(text.as_bytes()).collect() };
    case("newest page (no filter)", "indexed", &mut |_| {
        "/api/v1/entries".into()
    });
    case("deep page (cursor at N/2)", "indexed", &mut |_| {
        format!("/api/v1/entries?cursor={middle}")
    });
    let actors: Vec<usize> = (0..runs).map(|_| pick_user(&mut rng)).collect();
    case("actor = id", "indexed", &mut |run| {
        format!("/api/v1/entries?actor=u{}", actors[run])
    });
    case("actor = email", "indexed", &mut |run| {
        format!(
            "/api/v1/entries?actor={}",
            encode(&format!("user{}@example.com", actors[run]))
        )
    });
    case("action (rare)", "indexed", &mut |_| {
        "/api/v1/entries?action=user.deleted".into()
    });
    case("action (common)", "indexed", &mut |_| {
        "/api/v1/entries?action=post.created".into()
    });
    case("action_prefix", "indexed", &mut |_| {
        "/api/v1/entries?action_prefix=user.".into()
    });
    case("resource type + id", "indexed", &mut |run| {
        format!(
            "/api/v1/entries?resource_type=user&resource_id={}",
            actors[run]
        )
    });
    case("resource type", "indexed", &mut |_| {
        "/api/v1/entries?resource_type=workspace".into()
    });
    case("resource id", "indexed", &mut |run| {
        format!("/api/v1/entries?resource_id={}", actors[run])
    });
    case("outcome = error", "indexed", &mut |_| {
        "/api/v1/entries?outcome=error".into()
    });
    case("status = 404", "indexed", &mut |_| {
        "/api/v1/entries?status=404".into()
    });
    case("status = 5xx", "indexed", &mut |_| {
        "/api/v1/entries?status=5xx".into()
    });
    case("ip exact", "indexed", &mut |run| {
        format!(
            "/api/v1/entries?ip={}",
            encode(&format!(
                "192.168.{}.{}",
                actors[run] % 20,
                actors[run] % 250
            ))
        )
    });
    case("ip CIDR /16", "indexed", &mut |_| {
        "/api/v1/entries?ip=10.3.0.0/16".into()
    });
    case("since 24h", "indexed", &mut |_| {
        format!("/api/v1/entries?since={}", encode(&day_ago))
    });
    case("one day, 30 days ago", "indexed", &mut |_| {
        format!(
            "/api/v1/entries?since={}&until={}",
            encode(&month_ago),
            encode(&month_ago_next_day)
        )
    });
    case("actor + action", "indexed", &mut |run| {
        format!("/api/v1/entries?actor=u{}&action=auth.login", actors[run])
    });
    case("action + count=true", "indexed", &mut |_| {
        "/api/v1/entries?action=user.role_changed&count=true".into()
    });
    case("q (matches recent)", "free text", &mut |run| {
        format!("/api/v1/entries?q=user{}%40", actors[run])
    });
    case("q (matches nothing)", "free text", &mut |_| {
        "/api/v1/entries?q=no-such-thing".into()
    });
    case("stats by day, 30d", "stats", &mut |_| {
        format!("/api/v1/stats?by=day&since={}", encode(&month_ago))
    });
    case("stats by action, all", "stats", &mut |_| {
        "/api/v1/stats?by=action".into()
    });
    // What the viewer asks for on every load besides the activity chart: the top actors.
    case("stats by actor, all", "stats", &mut |_| {
        "/api/v1/stats?by=actor&limit=8".into()
    });
    case("stats by actor, 7d", "stats", &mut |_| {
        format!("/api/v1/stats?by=actor&limit=8&since={}", encode(&week_ago))
    });
    case("stats by hour, 24h", "stats", &mut |_| {
        format!("/api/v1/stats?by=hour&since={}", encode(&day_ago))
    });
    case("inclusion proof, any entry", "proof", &mut |run| {
        format!("/api/v1/entries/{}/proof", proof_ids[run])
    });
    case("consistency proof, any size", "proof", &mut |run| {
        format!(
            "/api/v1/log/consistency?from={}&to={count}",
            proof_froms[run]
        )
    });
    case("audit-log page 1", "reference", &mut |_| {
        "/api/audit-log?page=1".into()
    });
    case("audit-log page 1, action~user", "reference", &mut |_| {
        "/api/audit-log?page=1&action=user".into()
    });

    println!("## Admin API over {count} entries\n");
    println!("| query | kind | p50 ms | p95 ms | max ms | body bytes (median) |");
    println!("|---|---|---:|---:|---:|---:|");
    let queries = std::env::var("ADMIN_BENCH_QUERIES").as_deref() != Ok("0");
    for (label, kind, uris) in cases.iter().filter(|_| queries) {
        // Warm the page cache and the statement cache first.
        for uri in uris.iter().take(3) {
            bench.get(uri).await?;
        }
        let mut times = Vec::with_capacity(uris.len());
        let mut sizes = Vec::with_capacity(uris.len());
        for uri in uris {
            let (time, bytes, status) = bench.get(uri).await?;
            anyhow::ensure!(status == 200, "{uri} answered {status}");
            times.push(time);
            sizes.push(bytes);
        }
        times.sort();
        sizes.sort();
        println!(
            "| {label} | {kind} | {} | {} | {} | {} |",
            ms(percentile(&times, 50)),
            ms(percentile(&times, 95)),
            ms(*times.last().unwrap_or(&Duration::ZERO)),
            sizes[sizes.len() / 2]
        );
    }

    println!(
        "\n| export | rows | MiB | seconds | rows/s | RSS before (MiB) | peak RSS (MiB) | peak above before (MiB) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let peak_resettable = reset_peak();
    // ADMIN_BENCH_EXPORTS=0 measures the queries only.
    let formats: &[&str] = match std::env::var("ADMIN_BENCH_EXPORTS").as_deref() {
        Ok("0") => &[],
        _ => &["csv", "ndjson", "json"],
    };
    for format in formats {
        let idle = proc_status_kib("VmRSS:").unwrap_or(0);
        reset_peak();
        let (time, bytes, status) = bench
            .get(&format!("/api/v1/export?format={format}"))
            .await?;
        anyhow::ensure!(status == 200, "export answered {status}");
        let peak = proc_status_kib("VmHWM:").unwrap_or(0);
        let rows = count as f64;
        println!(
            "| {format} | {count} | {:.0} | {:.2} | {:.0} | {:.1} | {:.1} | {:.1} |",
            bytes as f64 / 1048576.0,
            time.as_secs_f64(),
            rows / time.as_secs_f64(),
            idle as f64 / 1024.0,
            peak as f64 / 1024.0,
            peak.saturating_sub(idle) as f64 / 1024.0
        );
    }
    if !peak_resettable {
        println!("\n(/proc/self/clear_refs was not writable: peaks include the seeding.)");
    }
    if reused.is_none() {
        println!(
            "\nSeeding: {:.1} s ({:.0} entries/s), database {file_mib:.0} MiB.",
            seeded_in.as_secs_f64(),
            count as f64 / seeded_in.as_secs_f64()
        );
    }

    let handle = writer.handle();
    handle.flushed(Duration::from_secs(30)).await;
    drop(bench);
    tokio::task::spawn_blocking(move || writer.shutdown()).await?;
    drop(store);
    if reused.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
