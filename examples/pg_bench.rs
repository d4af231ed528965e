//! PostgreSQL against SQLite: appends/s through the real writer (group commit, tree nodes in
//! the same transaction) and query latency over the result, per filter.
//!
//! ```text
//! eval "$(scripts/postgres-test-server --durable start)"       # a throwaway server, fsync on
//! cargo run --release --example pg_bench                       # 1,000,000 entries
//! cargo run --release --example pg_bench -- 100000             # fewer
//! AUDITGATE_BENCH_ANALYZE=1 cargo run --release --example pg_bench   # with planner statistics
//! scripts/postgres-test-server destroy "$AUDITGATE_TEST_POSTGRES_DIR"
//! ```
//!
//! The server comes from `AUDITGATE_TEST_POSTGRES_URL`; the bench makes a database of its own
//! there and drops it at the end. The SQLite file goes to a temporary directory.

mod bench_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use auditgate::entry::{AuditEntry, Outcome};
use auditgate::store::config::SyncMode;
use auditgate::store::postgres::{Access, PostgresOptions, PostgresStore};
use auditgate::store::query::{Filter, PageRequest};
use auditgate::store::sqlite::SqliteStore;
use auditgate::store::Store;
use auditgate::writer::Writer;
use chrono::{Duration as TimeDelta, Utc};
use postgres::NoTls;

const ACTIONS: [&str; 6] = [
    "post.created",
    "post.updated",
    "user.deleted",
    "user.role_changed",
    "auth.login_failed",
    "invoice.paid",
];

fn entry(log_id: &str, index: u64, start: chrono::DateTime<Utc>) -> AuditEntry {
    let mut entry = AuditEntry::new(log_id, ACTIONS[(index % 6) as usize]);
    entry.created_at = start + TimeDelta::milliseconds(index as i64 * 50);
    entry.actor_id = Some(format!("user-{}", index % 1000));
    entry.actor_email = Some(format!("user{}@example.com", index % 1000));
    entry.actor_source = Some("jwt".into());
    entry.actor_verified = true;
    entry.resource_type = Some(if index % 2 == 0 { "post" } else { "user" }.into());
    entry.resource_id = Some((index % 50_000).to_string());
    entry.status = Some([201u16, 200, 204, 403, 401, 500][(index % 6) as usize]);
    entry.outcome = Outcome::from_status(entry.status.unwrap_or(200));
    entry.method = Some("POST".into());
    entry.path = Some(format!("/api/posts/{}", index % 50_000));
    entry.route = Some("/api/posts/{id}".into());
    entry.rule = Some("create post".into());
    entry.ip = Some(format!(
        "10.{}.{}.{}",
        index % 4,
        (index / 4) % 256,
        index % 250
    ));
    entry.user_agent = Some("Mozilla/5.0 (X11; Linux x86_64) bench/1.0".into());
    entry.request_id = Some(format!("req-{index}"));
    entry.duration_us = Some(1500 + index % 700);
    entry
        .metadata
        .insert("title".into(), serde_json::json!(format!("post {index}")));
    entry
}

/// Appends `count` entries through the real writer; entries/s.
fn fill(
    store: Arc<dyn Store>,
    log_id: &str,
    count: u64,
    start: chrono::DateTime<Utc>,
) -> anyhow::Result<f64> {
    let writer = Writer::start(store.clone(), bench_support::writer_options())?;
    let handle = writer.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    runtime.block_on(async {
        for index in 0..count {
            handle.reserve().await;
            handle.push(entry(log_id, index, start));
        }
        handle.flushed(Duration::from_secs(3600)).await
    });
    let elapsed = started.elapsed();
    writer.shutdown();
    anyhow::ensure!(handle.stats().entries_lost.get() == 0, "entries lost");
    Ok(count as f64 / elapsed.as_secs_f64())
}

/// p50 and p95 of the first page (50 entries, newest first) for `filter`.
fn page_latency(
    store: &dyn Store,
    filter: &Filter,
    rounds: usize,
) -> anyhow::Result<(Duration, Duration, usize)> {
    let mut found = 0;
    let (p50, p95) = bench_support::p50_p95(rounds, || {
        found = store.list(filter, &PageRequest::default())?.entries.len();
        Ok(())
    })?;
    Ok((p50, p95, found))
}

fn main() -> anyhow::Result<()> {
    let count: u64 = match std::env::args().nth(1) {
        Some(text) => text.parse()?,
        None => 1_000_000,
    };
    let server_url = std::env::var("AUDITGATE_TEST_POSTGRES_URL").map_err(|_| {
        anyhow::anyhow!("set AUDITGATE_TEST_POSTGRES_URL (scripts/postgres-test-server start)")
    })?;
    let server: postgres::Config = server_url.parse()?;
    let name = format!(
        "auditgate_bench_{}",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    server
        .connect(NoTls)?
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))?;
    let mut config = server.clone();
    config.dbname(&name);
    let dir = std::env::temp_dir().join(format!("auditgate-pg-bench-{}", ulid::Ulid::new()));
    let start = Utc::now() - TimeDelta::days(30);
    println!("auditgate PostgreSQL bench: {count} entries per store");

    let outcome = (|| -> anyhow::Result<()> {
        let postgres: Arc<dyn Store> = Arc::new(PostgresStore::open(PostgresOptions {
            config: config.clone(),
            log_id: "bench-1".into(),
            access: Access::Write { exclusive: true },
            pool_size: 2,
            // Plain text, as the figures in BENCHMARKS.md were measured.
            tls: auditgate::store::postgres::tls::PostgresTls::disabled(),
        })?);
        let sqlite: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.join("audit.db"), SyncMode::Normal)?);
        let pg_rate = fill(postgres.clone(), "bench-1", count, start)?;
        println!("  appends, PostgreSQL: {pg_rate:>9.0} entries/s (one sidecar, group commit)");
        let sqlite_rate = fill(sqlite.clone(), "bench-1", count, start)?;
        println!("  appends, SQLite:     {sqlite_rate:>9.0} entries/s");
        // Right after a bulk load the table has no planner statistics unless autovacuum got to
        // it; a long-running database has them. AUDITGATE_BENCH_ANALYZE=1 measures that case.
        if std::env::var_os("AUDITGATE_BENCH_ANALYZE").is_some() {
            config.connect(NoTls)?.batch_execute("ANALYZE entries")?;
            println!("  (PostgreSQL statistics gathered with ANALYZE before the queries)");
        }

        let middle = start + TimeDelta::milliseconds(count as i64 * 25);
        let filters = bench_support::sample_filters(middle, "bench-1")?;
        println!("  first page of 50, p50 / p95 over 20 runs:");
        println!("    {:<22} {:>20} {:>20}", "filter", "PostgreSQL", "SQLite");
        for (label, filter) in &filters {
            let (pg50, pg95, pg_found) = page_latency(postgres.as_ref(), filter, 20)?;
            let (sq50, sq95, sq_found) = page_latency(sqlite.as_ref(), filter, 20)?;
            anyhow::ensure!(
                pg_found == sq_found,
                "{label}: {pg_found} vs {sq_found} entries"
            );
            println!(
                "    {label:<22} {:>9.2?} / {:>8.2?} {:>9.2?} / {:>8.2?}",
                pg50, pg95, sq50, sq95
            );
        }
        let started = Instant::now();
        let pg_count = postgres.count(&Filter {
            action_prefix: Some("user.".into()),
            ..Filter::default()
        })?;
        let pg_elapsed = started.elapsed();
        let started = Instant::now();
        let sq_count = sqlite.count(&Filter {
            action_prefix: Some("user.".into()),
            ..Filter::default()
        })?;
        let sq_elapsed = started.elapsed();
        anyhow::ensure!(pg_count == sq_count, "counts differ");
        println!("  count(action_prefix=user.): PostgreSQL {pg_elapsed:.2?}, SQLite {sq_elapsed:.2?} ({pg_count} entries)");
        let started = Instant::now();
        let report = auditgate::verify::verify_log(postgres.as_ref(), None, &[])?;
        anyhow::ensure!(report.ok(), "verify found problems");
        println!(
            "  verify, PostgreSQL:  {:.2?} for {} entries",
            started.elapsed(),
            report.size
        );
        Ok(())
    })();

    let _ = std::fs::remove_dir_all(&dir);
    // The stores are dropped by now; drop the database with anything left connected.
    if let Ok(mut admin) = server.connect(NoTls) {
        let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
    }
    outcome
}
