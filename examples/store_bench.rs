//! Appends/s through the real writer (entries hashed into the Merkle tree in the writer's
//! transaction) and the time `auditgate verify` takes over the result.
//!
//! ```text
//! cargo run --release --example store_bench            # 1,000,000 entries
//! cargo run --release --example store_bench -- 100000  # fewer
//! AUDITGATE_BENCH_BATCH=1024 cargo run --release --example store_bench -- 200000  # other commit size
//! ```
//!
//! The database goes to a new temporary directory, removed at the end (pass a directory as the
//! second argument to keep it there instead).

mod bench_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use auditgate::entry::{AuditEntry, Outcome};
use auditgate::log::head::{LogSigner, TreeHead};
use auditgate::log::merkle::leaf_hash;
use auditgate::store::config::SyncMode;
use auditgate::store::sqlite::SqliteStore;
use auditgate::store::Store;
use auditgate::writer::Writer;

fn entry(index: u64) -> AuditEntry {
    let mut entry = AuditEntry::new(
        "bench",
        if index % 5 == 0 {
            "user.deleted"
        } else {
            "post.created"
        },
    );
    entry.actor_id = Some(format!("user-{}", index % 1000));
    entry.actor_email = Some(format!("user{}@example.com", index % 1000));
    entry.actor_source = Some("jwt".into());
    entry.actor_verified = true;
    entry.resource_type = Some("post".into());
    entry.resource_id = Some(index.to_string());
    entry.outcome = Outcome::Success;
    entry.status = Some(201);
    entry.method = Some("POST".into());
    entry.path = Some("/api/posts".into());
    entry.route = Some("/api/posts".into());
    entry.rule = Some("create post".into());
    // Keys as varied as production's: 1000 users, a new resource per entry, ~60k client addresses.
    entry.ip = Some(format!("10.{}.{}.{}", index % 13, index % 251, index % 241));
    entry.user_agent = Some("Mozilla/5.0 (X11; Linux x86_64) bench/1.0".into());
    entry.request_id = Some(format!("req-{index}"));
    entry.duration_us = Some(1500 + index % 700);
    entry.metadata.insert(
        "title".into(),
        serde_json::json!(format!("post number {index}")),
    );
    entry
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let count: u64 = match args.next() {
        Some(text) => text.parse()?,
        None => 1_000_000,
    };
    let keep = args.next().map(std::path::PathBuf::from);
    let dir = keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("auditgate-bench-{}", ulid::Ulid::new()))
    });
    let db = dir.join("audit.db");
    println!(
        "auditgate store bench: {count} entries into {}",
        db.display()
    );

    // Hashing alone, for scale: canonical form + SHA-256 per entry.
    let sample: Vec<AuditEntry> = (0..10_000).map(entry).collect();
    let started = Instant::now();
    for entry in &sample {
        std::hint::black_box(leaf_hash(&entry.canonical_bytes()));
    }
    let per_entry = started.elapsed() / sample.len() as u32;
    println!("  hashing alone:  {per_entry:?} per entry (canonical form + SHA-256)");

    let store = Arc::new(SqliteStore::open(&db, SyncMode::Normal)?);
    let writer = Writer::start(store.clone(), bench_support::writer_options())?;
    let handle = writer.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    // How the rate changes as the log grows: entries committed per second over each tenth.
    let step = (count / 10).max(1);
    let mut slice = (Instant::now(), 0u64);
    runtime.block_on(async {
        for index in 0..count {
            handle.reserve().await;
            handle.push(entry(index));
            if (index + 1) % step == 0 {
                let written = handle.stats().entries_written.get();
                let seconds = slice.0.elapsed().as_secs_f64();
                if written > slice.1 && seconds > 0.0 {
                    println!(
                        "  at {written:>10} entries: {:>8.0} entries/s over the last {}",
                        (written - slice.1) as f64 / seconds,
                        written - slice.1
                    );
                }
                slice = (Instant::now(), written);
            }
        }
        handle.flushed(Duration::from_secs(3600)).await
    });
    let elapsed = started.elapsed();
    writer.shutdown();
    let tree = store.tree()?;
    anyhow::ensure!(tree.size == count, "stored {} of {count}", tree.size);
    println!(
        "  appends:        {:.0} entries/s ({count} in {elapsed:.2?}, {} batches; writer hashes each entry and stores its tree nodes)",
        count as f64 / elapsed.as_secs_f64(),
        handle.stats().batches.get()
    );

    // One signed head, as the sidecar would have made, so verify also checks a root.
    let signer = LogSigner::generate();
    let head = signer.sign(TreeHead::new(
        "bench",
        tree.size,
        tree.root,
        chrono::Utc::now(),
    )?)?;
    store.save_head(&head)?;
    drop(store);

    let started = Instant::now();
    let report = auditgate::verify::verify_database(&db, None, &[signer.public_key()])?;
    let elapsed = started.elapsed();
    anyhow::ensure!(report.ok(), "verify found problems: {:?}", report.problems);
    println!(
        "  verify:         {elapsed:.2?} for {} entries ({:.0} entries/s)",
        report.size,
        report.size as f64 / elapsed.as_secs_f64()
    );
    // The file with its indexes and tree nodes, and a WAL if one is left.
    let size_of = |path: &std::path::Path| std::fs::metadata(path).map_or(0, |meta| meta.len());
    let bytes = size_of(&db) + size_of(&dir.join("audit.db-wal"));
    println!(
        "  database:       {:.1} MiB ({:.0} bytes per entry, indexes included)",
        bytes as f64 / (1024.0 * 1024.0),
        bytes as f64 / count.max(1) as f64
    );
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
