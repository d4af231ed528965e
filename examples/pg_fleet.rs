//! A fleet of sidecars writing into one PostgreSQL server: N writer processes, each appending
//! realistic entries under its own log through the real writer (group commit, the log's row
//! lock, its Merkle tree), all at once; then the database's bytes per entry and the admin
//! filters' latencies across the fleet.
//!
//! ```text
//! eval "$(scripts/postgres-test-server --durable start)"       # a throwaway server, fsync on
//! cargo run --release --example pg_fleet -- 8 250000           # 8 sidecars, 250,000 entries each
//! scripts/postgres-test-server destroy "$AUDITGATE_TEST_POSTGRES_DIR"
//! ```
//!
//! The server comes from `AUDITGATE_TEST_POSTGRES_URL`; the bench makes a database of its own
//! there and drops it at the end (`AUDITGATE_BENCH_KEEP=1` keeps it and prints its name).
//! `AUDITGATE_BENCH_NO_FILTER_INDEXES=1` drops the filters' secondary indexes before the appends,
//! to measure what maintaining them costs (queries are then slow; that is not a setting).
//! Each writer process makes its entries before the start signal, so the figure is the
//! database's and the writer's (hashing, group commit), not the entry generator's. The server
//! and the writers share this machine's cores: the figure is a floor for a fleet whose
//! sidecars run elsewhere.

mod bench_support;

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditgate::store::postgres::{tls::PostgresTls, Access, PostgresOptions, PostgresStore};
use auditgate::store::query::{Filter, PageRequest};
use auditgate::store::{StatsBy, Store};
use auditgate::writer::Writer;
use chrono::{Duration as TimeDelta, Utc};
use postgres::NoTls;
use rand::rngs::StdRng;
use rand::SeedableRng;

#[path = "bench_support/generate.rs"]
mod generate;

const RUNS: usize = 20;

fn open(config: &postgres::Config, log_id: &str, access: Access) -> anyhow::Result<PostgresStore> {
    Ok(PostgresStore::open(PostgresOptions {
        config: config.clone(),
        log_id: log_id.to_string(),
        access,
        pool_size: 2,
        // Plain text, as the other PostgreSQL figures in BENCHMARKS.md were measured.
        tls: PostgresTls::disabled(),
    })?)
}

/// One sidecar: makes its entries, says `ready`, waits for a line on stdin, appends them all
/// through the writer and prints `done <entries> <seconds> <CPU seconds meanwhile>`.
fn writer_process(database: &str, log_id: &str, count: usize, seed: u64) -> anyhow::Result<()> {
    let config: postgres::Config = database.parse()?;
    let store: Arc<dyn Store> = Arc::new(open(&config, log_id, Access::Write { exclusive: true })?);
    let mut rng = StdRng::seed_from_u64(seed);
    let start = Utc::now() - TimeDelta::days(90);
    let entries: Vec<_> = (0..count)
        .map(|index| {
            let mut entry = generate::entry(&mut rng, index, count, start);
            entry.log_id = log_id.to_string();
            entry.request_id = Some(format!("{log_id}-{index}"));
            entry
        })
        .collect();
    let writer = Writer::start(store.clone(), bench_support::writer_options())?;
    let handle = writer.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!("ready");
    std::io::stdout().flush()?;
    let mut go = String::new();
    std::io::stdin().read_line(&mut go)?;
    let cpu_before = cpu_seconds("self").unwrap_or(0.0);
    let started = Instant::now();
    let flushed = runtime.block_on(async {
        for entry in entries {
            handle.reserve().await;
            handle.push(entry);
        }
        handle.flushed(Duration::from_secs(3600)).await
    });
    let elapsed = started.elapsed();
    writer.shutdown();
    anyhow::ensure!(flushed, "{log_id}: the writer did not flush");
    anyhow::ensure!(
        handle.stats().entries_lost.get() == 0,
        "{log_id}: entries lost"
    );
    anyhow::ensure!(store.size()? == count as u64, "{log_id}: wrong log size");
    println!(
        "done {count} {} {}",
        elapsed.as_secs_f64(),
        cpu_seconds("self").unwrap_or(0.0) - cpu_before
    );
    std::io::stdout().flush()?;
    // The store's connections (and so their server processes, whose CPU the coordinator reads)
    // stay until the coordinator says the run is measured.
    let mut measured = String::new();
    std::io::stdin().read_line(&mut measured)?;
    drop(store);
    Ok(())
}

/// User plus system CPU seconds of a process so far (every thread), from `/proc/PID/stat`; the
/// kernel counts them in ticks of 1/100 s on Linux's usual configuration.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: fields are counted after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / 100.0)
}

/// CPU seconds of the PostgreSQL server so far (the postmaster and every process it started),
/// when `AUDITGATE_TEST_POSTGRES_DIR` names its directory; `None` otherwise.
fn server_cpu_seconds() -> Option<f64> {
    let dir = std::env::var("AUDITGATE_TEST_POSTGRES_DIR").ok()?;
    let pid_file = std::fs::read_to_string(format!("{dir}/data/postmaster.pid")).ok()?;
    let postmaster = pid_file.lines().next()?.trim().to_string();
    let mut total = cpu_seconds(&postmaster)?;
    for process in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = process.file_name().to_string_lossy().to_string();
        if !name.bytes().all(|byte| byte.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{name}/stat")) else {
            continue;
        };
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if parent == Some(postmaster.as_str()) {
            total += cpu_seconds(&name).unwrap_or(0.0);
        }
    }
    Some(total)
}

fn latency(work: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<(Duration, Duration)> {
    bench_support::p50_p95(RUNS, work)
}

fn coordinator(sidecars: usize, each: usize) -> anyhow::Result<()> {
    let server_url = std::env::var("AUDITGATE_TEST_POSTGRES_URL").map_err(|_| {
        anyhow::anyhow!("set AUDITGATE_TEST_POSTGRES_URL (scripts/postgres-test-server start)")
    })?;
    let server: postgres::Config = server_url.parse()?;
    let name = format!(
        "auditgate_fleet_{}",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    server
        .connect(NoTls)?
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))?;
    let mut config = server.clone();
    config.dbname(&name);
    let database_url = {
        let (host, port) = match (server.get_hosts().first(), server.get_ports().first()) {
            (Some(postgres::config::Host::Tcp(host)), Some(port)) => (host.clone(), *port),
            _ => anyhow::bail!("the server URL must name a TCP host and port"),
        };
        let user = server.get_user().unwrap_or("postgres");
        format!("postgres://{user}@{host}:{port}/{name}")
    };
    println!("auditgate PostgreSQL fleet bench: {sidecars} sidecars x {each} entries, one server");
    let outcome = run(&config, &database_url, sidecars, each);
    if std::env::var_os("AUDITGATE_BENCH_KEEP").is_some() {
        println!("  database kept: {name}");
    } else if let Ok(mut admin) = server.connect(NoTls) {
        let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
    }
    outcome
}

fn run(
    config: &postgres::Config,
    database_url: &str,
    sidecars: usize,
    each: usize,
) -> anyhow::Result<()> {
    // One open migrates the schema, so the writers start on a current database.
    drop(open(config, "fleet-0", Access::Write { exclusive: false })?);
    if std::env::var_os("AUDITGATE_BENCH_NO_FILTER_INDEXES").is_some() {
        // What index maintenance costs: the appends without the filters' secondary indexes
        // (the keys that guard against duplicates stay). Not a configuration auditgate offers.
        let mut admin = config.connect(NoTls)?;
        for index in [
            "entries_gid",
            "entries_log_gid",
            "entries_id",
            "entries_created_at",
            "entries_action",
            "entries_actor_id",
            "entries_actor_email",
            "entries_resource",
            "entries_resource_id",
            "entries_outcome",
            "entries_status",
            "entries_ip",
            "entries_ip_net",
            "entries_request_id",
        ] {
            admin.batch_execute(&format!("DROP INDEX {index}"))?;
        }
        println!("  (without the filters' secondary indexes: a measure of their cost)");
    }
    let program = std::env::current_exe()?;
    let mut children = Vec::new();
    for index in 0..sidecars {
        let mut child = Command::new(&program)
            .args([
                "--writer",
                database_url,
                &format!("fleet-{index}"),
                &each.to_string(),
                &(index as u64 + 1).to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        children.push((child, BufReader::new(stdout)));
    }
    for (_, stdout) in &mut children {
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        anyhow::ensure!(line.trim() == "ready", "a writer failed to start: {line:?}");
    }
    let server_before = server_cpu_seconds();
    let started = Instant::now();
    for (child, _) in &mut children {
        if let Some(stdin) = child.stdin.as_mut() {
            writeln!(stdin, "go")?;
        }
    }
    let mut rates = Vec::new();
    let mut writers_cpu = 0.0;
    let mut lines = Vec::new();
    for (_, stdout) in &mut children {
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        lines.push(line);
    }
    let elapsed = started.elapsed();
    // Read while every writer's server process is still there: one that has exited takes its
    // CPU time with it.
    let server_cpu = server_cpu_seconds()
        .zip(server_before)
        .map(|(after, before)| after - before);
    for ((mut child, _), line) in children.into_iter().zip(lines) {
        if let Some(stdin) = child.stdin.as_mut() {
            writeln!(stdin, "measured")?;
        }
        let status = child.wait()?;
        anyhow::ensure!(status.success(), "a writer failed: {status}");
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [done, count, seconds, cpu] = fields.as_slice() else {
            anyhow::bail!("a writer said {line:?}");
        };
        anyhow::ensure!(*done == "done", "a writer said {line:?}");
        rates.push(count.parse::<f64>()? / seconds.parse::<f64>()?);
        writers_cpu += cpu.parse::<f64>()?;
    }
    let total = (sidecars * each) as f64;
    println!(
        "  appends together: {:>9.0} entries/s ({} entries in {elapsed:.2?})",
        total / elapsed.as_secs_f64(),
        sidecars * each
    );
    let rates_text: Vec<String> = rates.iter().map(|rate| format!("{rate:.0}")).collect();
    println!("  per writer:       {} entries/s", rates_text.join(", "));
    // Where the CPU went while appending: the writer processes' and the server's.
    let micros = |seconds: f64| seconds * 1e6 / total;
    match server_cpu {
        Some(server) => println!(
            "  CPU per entry:    writers {:.1} µs, server {:.1} µs",
            micros(writers_cpu),
            micros(server)
        ),
        None => println!(
            "  CPU per entry:    writers {:.1} µs; server not measured \
             (set AUDITGATE_TEST_POSTGRES_DIR)",
            micros(writers_cpu)
        ),
    }

    let mut admin = config.connect(NoTls)?;
    // A long-running database has planner statistics (autovacuum); right after a bulk load it
    // may not yet.
    admin.batch_execute("ANALYZE")?;
    let mut size = |relation: &str| -> anyhow::Result<i64> {
        Ok(admin
            .query_one(
                // Every table of the partition tree (entries: per log, per month; the partitioned
                // ones hold no rows), or the table itself when it is not partitioned.
                "SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::bigint FROM \
                 (SELECT relid FROM pg_partition_tree($1::text::regclass) \
                  UNION SELECT $1::text::regclass) AS tables",
                &[&relation],
            )?
            .try_get(0)?)
    };
    let entries_bytes = size("entries")?;
    let nodes_bytes = size("tree_nodes")?;
    let database_bytes: i64 = admin
        .query_one("SELECT pg_database_size(current_database())", &[])?
        .try_get(0)?;
    println!(
        "  bytes per entry:  entries {:.0} + tree_nodes {:.0} = {:.0} (whole database {:.0})",
        entries_bytes as f64 / total,
        nodes_bytes as f64 / total,
        (entries_bytes + nodes_bytes) as f64 / total,
        database_bytes as f64 / total
    );

    let reader = open(config, "fleet-0", Access::Read)?;
    println!("  admin filters across the fleet, p50 / p95 over {RUNS} runs:");
    for (label, filter) in
        bench_support::sample_filters(Utc::now() - TimeDelta::days(45), "fleet-3")?
    {
        let mut found = 0;
        let (p50, p95) = latency(|| {
            found = reader.list(&filter, &PageRequest::default())?.entries.len();
            Ok(())
        })?;
        println!("    first page, {label:<20} {p50:>9.2?} / {p95:>9.2?}  ({found} entries)");
    }
    for (label, filter) in [
        ("count, everything", Filter::default()),
        (
            "count, action prefix",
            Filter {
                action_prefix: Some("user.".into()),
                ..Filter::default()
            },
        ),
    ] {
        let mut counted = 0;
        let (p50, p95) = latency(|| {
            counted = reader.count(&filter)?;
            Ok(())
        })?;
        println!("    {label:<32} {p50:>9.2?} / {p95:>9.2?}  ({counted})");
    }
    let (p50, p95) = latency(|| {
        reader.stats(&Filter::default(), StatsBy::Action, 20)?;
        Ok(())
    })?;
    println!("    {:<32} {p50:>9.2?} / {p95:>9.2?}", "stats by action");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--writer") {
        let [_, database, log_id, count, seed] = args.as_slice() else {
            anyhow::bail!("usage: pg_fleet --writer DATABASE_URL LOG_ID COUNT SEED");
        };
        return writer_process(database, log_id, count.parse()?, seed.parse()?);
    }
    let sidecars: usize = match args.first() {
        Some(text) => text.parse()?,
        None => 8,
    };
    let each: usize = match args.get(1) {
        Some(text) => text.parse()?,
        None => 100_000,
    };
    anyhow::ensure!(
        sidecars > 0 && each > 0,
        "usage: pg_fleet [SIDECARS] [ENTRIES_EACH]"
    );
    coordinator(sidecars, each)
}
