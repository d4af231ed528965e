//! The store suite: the same assertions against a SQLite file and a PostgreSQL database, so
//! both stores mean the same thing by every call. PostgreSQL runs when
//! `AUDITGATE_TEST_POSTGRES_URL` is set (`scripts/postgres-test-server`); otherwise its half is
//! skipped with a notice on stderr. A few tests at the end are about sharing one PostgreSQL
//! database between logs, which a SQLite file never does.

use std::collections::BTreeMap;
use std::sync::Arc;

use auditgate::entry::{AuditEntry, Outcome};
use auditgate::export::ExportReader;
use auditgate::log::merkle::{self, leaf_hash, Hash, MemoryNodes};
use auditgate::store::config::SyncMode;
use auditgate::store::postgres::{Access, PostgresOptions, PostgresStore};
use auditgate::store::query::{Cursor, Filter, IpFilter, Order, PageRequest, StatusFilter};
use auditgate::store::retention::{prune_record, PrunePlan, PrunedBy};
use auditgate::store::sqlite::SqliteStore;
use auditgate::store::{Bucket, StatsBy, Store, StoreError};
use auditgate::verify::check::LogCheck;
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;

use crate::pg::{self, TestDatabase};
use crate::support::{filter_matches, TempDir};

/// One backend under test.
enum Backend {
    Sqlite(TempDir),
    Postgres(Box<TestDatabase>),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The store of `log_id`: for SQLite the one file (a file is one log), for PostgreSQL that
    /// log in the shared database.
    fn open(&self, log_id: &str) -> Arc<dyn Store> {
        match self {
            Backend::Sqlite(dir) => Arc::new(
                SqliteStore::open(&dir.0.join("audit.db"), SyncMode::Normal).expect("opens"),
            ),
            Backend::Postgres(database) => Arc::new(self::open_postgres(database, log_id, true)),
        }
    }
}

fn open_postgres(database: &TestDatabase, log_id: &str, exclusive: bool) -> PostgresStore {
    PostgresStore::open(PostgresOptions {
        config: database.config.clone(),
        log_id: log_id.to_string(),
        access: Access::Write { exclusive },
        pool_size: 2,
        tls: pg::default_tls(),
    })
    .expect("opens")
}

/// Runs `test` against SQLite, then PostgreSQL when a server is configured.
fn each_backend(test_name: &str, test: impl Fn(&Backend)) {
    test(&Backend::Sqlite(TempDir::new(test_name)));
    if let Some(url) = pg::server_url(test_name) {
        test(&Backend::Postgres(Box::new(TestDatabase::create(
            &url, test_name,
        ))));
    }
}

fn leaf(entry: &AuditEntry) -> Hash {
    leaf_hash(&entry.canonical_bytes())
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
        .single()
        .expect("valid time")
}

/// Every entry matching `filter`, newest first, through pages of `limit`.
fn list_all(store: &dyn Store, filter: &Filter, limit: u32, order: Order) -> Vec<AuditEntry> {
    let mut all = Vec::new();
    let mut cursor: Option<Cursor> = None;
    for _ in 0..10_000 {
        let page = store
            .list(
                filter,
                &PageRequest {
                    limit,
                    cursor,
                    order,
                    ..PageRequest::default()
                },
            )
            .expect("lists");
        assert!(page.entries.len() <= limit as usize);
        all.extend(page.entries);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return all,
        }
    }
    panic!("paging did not end");
}

fn verify(store: &dyn Store) -> auditgate::verify::check::VerifyReport {
    let report = LogCheck::new(Vec::new())
        .finish(store)
        .expect("verification runs");
    assert!(report.ok(), "{report:?}");
    report
}

#[test]
fn appends_number_the_log_and_grow_its_tree_across_reopen() {
    each_backend("appends", |backend| {
        let mut leaves = Vec::new();
        for round in 0..3 {
            let store = backend.open("log-a");
            for batch_size in [1usize, 7, 33, 2] {
                let mut batch: Vec<AuditEntry> = (0..batch_size)
                    .map(|index| AuditEntry::new("log-a", format!("round{round}.{index}")))
                    .collect();
                store.append(&mut batch).expect("appends");
                for (offset, entry) in batch.iter().enumerate() {
                    assert_eq!(entry.seq, leaves.len() as u64 + offset as u64 + 1);
                }
                leaves.extend(batch.iter().map(leaf));
                let tree = store.tree().expect("tree");
                let memory = MemoryNodes::from_leaves(&leaves);
                assert_eq!(tree.size, leaves.len() as u64, "{}", backend.name());
                assert_eq!(
                    tree.root,
                    merkle::root_at(&memory, tree.size).expect("root")
                );
                assert_eq!(store.root_at(tree.size).expect("stored root"), tree.root);
                assert_eq!(store.size().expect("size"), tree.size);
            }
        }
        let store = backend.open("log-a");
        let memory = MemoryNodes::from_leaves(&leaves);
        let size = leaves.len() as u64;
        let root = merkle::root_at(&memory, size).expect("root");
        for seq in [1, 2, 17, size] {
            let path = store.inclusion_proof(seq, size).expect("proof");
            let stored_leaf = store.leaf_hash(seq).expect("leaf").expect("stored");
            assert!(merkle::verify_inclusion(
                &stored_leaf,
                seq - 1,
                size,
                &path,
                &root
            ));
        }
        for from in [0, 1, 40, size] {
            let proof = store.consistency_proof(from, size).expect("consistency");
            let from_root = merkle::root_at(&memory, from).expect("root");
            assert!(merkle::verify_consistency(
                from, size, &from_root, &root, &proof
            ));
        }
        assert!(store.inclusion_proof(size + 1, size).is_err());
        let report = verify(store.as_ref());
        assert_eq!(report.entries, size);
    });
}

#[test]
fn a_failed_batch_leaves_nothing_behind() {
    each_backend("failed-batch", |backend| {
        let store = backend.open("log-a");
        store
            .append(&mut [AuditEntry::new("log-a", "first")])
            .expect("appends");
        let before = store.tree().expect("tree");
        let duplicate = AuditEntry::new("log-a", "dup");
        let mut batch = vec![duplicate.clone(), duplicate];
        assert!(store.append(&mut batch).is_err(), "{}", backend.name());
        assert!(batch.iter().all(|entry| entry.seq == 0), "seqs are reset");
        assert_eq!(store.tree().expect("tree"), before);
        let mut next = [AuditEntry::new("log-a", "second")];
        store.append(&mut next).expect("appends after a failure");
        assert_eq!(next[0].seq, 2);
        verify(store.as_ref());
    });
}

#[test]
fn odd_values_survive_the_round_trip_and_still_verify() {
    each_backend("odd-values", |backend| {
        let store = backend.open("log-a");
        let mut entry = AuditEntry::new("log-a", "odd\u{0}action");
        entry.created_at += Duration::nanoseconds(123);
        entry.actor_email = Some("zoë@example.com".into());
        entry.path = Some("/a\u{0}b\n\"c\"".into());
        entry.duration_us = Some(u64::MAX / 4);
        entry.status = Some(599);
        entry.ip = Some("2001:db8::1".into());
        for (key, value) in [
            ("float", json!(0.1 + 0.2)),
            ("tiny", json!(5e-324)),
            ("big", json!(1.797_693_134_862_315_7e308)),
            ("u64", json!(u64::MAX)),
            ("i64", json!(i64::MIN)),
            ("nul", json!("a\u{0}b")),
            ("nested", json!({"b": [1.5, {"z": null, "a": "\u{1F600}"}]})),
        ] {
            entry.metadata.insert(key.into(), value);
        }
        let plain = AuditEntry::new("log-a", "plain");
        let mut batch = vec![entry, plain];
        store.append(&mut batch).expect("appends");
        for stored in &batch {
            let read = store.get(&stored.id).expect("get").expect("found");
            assert_eq!(
                String::from_utf8(read.canonical_bytes()).expect("utf-8"),
                String::from_utf8(stored.canonical_bytes()).expect("utf-8"),
                "{}",
                backend.name()
            );
        }
        let page = store.scan_log(1, 10).expect("scan");
        assert_eq!(page.slots.len(), 2);
        assert_eq!(page.slots[0].leaf, Some(leaf(&batch[0])));
        let listed = list_all(store.as_ref(), &Filter::default(), 10, Order::Asc);
        assert_eq!(listed[0].path, batch[0].path);
        verify(store.as_ref());
    });
}

/// A varied log: actors, actions, resources, statuses, addresses and times.
fn seed(store: &dyn Store, log_id: &str, count: usize) -> Vec<AuditEntry> {
    let actions = [
        "user.deleted",
        "user.created",
        "post.created",
        "auth.login_failed",
        "User.Renamed",
        // auditgate's own kind of entry, and an app action that only looks like one.
        "audit.query",
        "auditor.note",
    ];
    let mut all = Vec::new();
    let mut batch = Vec::new();
    for index in 0..count {
        let mut entry = AuditEntry::new(log_id, actions[index % actions.len()]);
        entry.created_at = start() + Duration::minutes(index as i64 * 7);
        entry.actor_id = (index % 4 != 0).then(|| format!("u{}", index % 5));
        entry.actor_email = (index % 3 == 0).then(|| format!("user{}@example.com", index % 5));
        entry.resource_type = Some(if index % 2 == 0 { "user" } else { "post" }.into());
        entry.resource_id = Some(format!("{}", index % 11));
        entry.status = Some([200u16, 201, 204, 401, 403, 404, 500][index % 7]);
        entry.outcome = Outcome::from_status(entry.status.unwrap_or(200));
        entry.ip = Some(
            [
                "10.0.0.1",
                "10.1.2.3",
                "192.168.1.20",
                "2001:db8::7",
                "2001:db8:1::9",
                "172.16.5.5",
            ][index % 6]
                .into(),
        );
        entry.path = Some(format!("/api/things/{index}/Details"));
        batch.push(entry);
        if batch.len() == 25 {
            store.append(&mut batch).expect("appends");
            all.append(&mut batch);
        }
    }
    store.append(&mut batch).expect("appends");
    all.append(&mut batch);
    all
}

fn filters() -> Vec<Filter> {
    let network = |text: &str| Some(IpFilter::Network(text.parse().expect("network")));
    vec![
        Filter::default(),
        Filter {
            actor: Some("u1".into()),
            ..Filter::default()
        },
        Filter {
            actor: Some("user3@example.com".into()),
            ..Filter::default()
        },
        Filter {
            action: Some("user.deleted".into()),
            ..Filter::default()
        },
        Filter {
            action_prefix: Some("user.".into()),
            ..Filter::default()
        },
        Filter {
            action_prefix: Some("U".into()),
            ..Filter::default()
        },
        Filter {
            action_contains: Some("USER".into()),
            ..Filter::default()
        },
        Filter {
            exclude_action_prefixes: vec!["audit.".into()],
            ..Filter::default()
        },
        Filter {
            exclude_action_prefixes: vec!["audit.".into(), "user.".into(), "U".into()],
            ..Filter::default()
        },
        Filter {
            action_prefix: Some("u".into()),
            exclude_action_prefixes: vec!["user.d".into()],
            ..Filter::default()
        },
        Filter {
            actor: Some("u2".into()),
            exclude_action_prefixes: vec!["audit.".into()],
            since: Some(start() + Duration::hours(3)),
            ..Filter::default()
        },
        Filter {
            exclude_action_prefixes: vec!["\u{10FFFF}".into(), "post.".into()],
            ..Filter::default()
        },
        Filter {
            resource_type: Some("post".into()),
            ..Filter::default()
        },
        Filter {
            resource_type: Some("user".into()),
            resource_id: Some("4".into()),
            ..Filter::default()
        },
        Filter {
            resource_id: Some("7".into()),
            ..Filter::default()
        },
        Filter {
            outcome: Some(Outcome::Failure),
            ..Filter::default()
        },
        Filter {
            status: Some(StatusFilter::Class(4)),
            ..Filter::default()
        },
        Filter {
            status: Some(StatusFilter::Exact(204)),
            ..Filter::default()
        },
        Filter {
            ip: Some(IpFilter::Exact("10.1.2.3".parse().expect("ip"))),
            ..Filter::default()
        },
        Filter {
            ip: network("10.0.0.0/8"),
            ..Filter::default()
        },
        Filter {
            ip: network("10.0.0.0/12"),
            ..Filter::default()
        },
        Filter {
            ip: network("2001:db8::/32"),
            ..Filter::default()
        },
        Filter {
            ip: network("2001:db8::/48"),
            ..Filter::default()
        },
        Filter {
            since: Some(start() + Duration::hours(3)),
            until: Some(start() + Duration::hours(9)),
            ..Filter::default()
        },
        Filter {
            q: Some("DETAILS".into()),
            ..Filter::default()
        },
        Filter {
            q: Some("things/1".into()),
            ..Filter::default()
        },
        Filter {
            q: Some("100%".into()),
            ..Filter::default()
        },
        // Letters in other case around a run of non-letters (the PostgreSQL prefilter).
        Filter {
            q: Some("S/12/d".into()),
            ..Filter::default()
        },
        Filter {
            actor: Some("u2".into()),
            status: Some(StatusFilter::Class(2)),
            ..Filter::default()
        },
        Filter {
            log_id: Some("log-a".into()),
            ..Filter::default()
        },
        Filter {
            log_id: Some("elsewhere".into()),
            ..Filter::default()
        },
    ]
}

#[test]
fn every_filter_matches_the_oracle_through_every_page() {
    each_backend("filters", |backend| {
        let store = backend.open("log-a");
        let entries = seed(store.as_ref(), "log-a", 230);
        for filter in filters() {
            let mut expected: Vec<u64> = entries
                .iter()
                .filter(|entry| filter_matches(&filter, entry))
                .map(|entry| entry.seq)
                .collect();
            expected.reverse();
            let got: Vec<u64> = list_all(store.as_ref(), &filter, 17, Order::Desc)
                .iter()
                .map(|entry| entry.seq)
                .collect();
            assert_eq!(got, expected, "{} {filter:?}", backend.name());
            let ascending: Vec<u64> = list_all(store.as_ref(), &filter, 50, Order::Asc)
                .iter()
                .map(|entry| entry.seq)
                .collect();
            expected.reverse();
            assert_eq!(ascending, expected, "{} asc {filter:?}", backend.name());
            assert_eq!(
                store.count(&filter).expect("count"),
                expected.len() as u64,
                "{} count {filter:?}",
                backend.name()
            );
        }
        // Page numbers, newest first (the reference endpoint).
        let page = store
            .list_offset(&Filter::default(), 10, 5)
            .expect("offset page");
        let seqs: Vec<u64> = page.iter().map(|entry| entry.seq).collect();
        assert_eq!(seqs, vec![220, 219, 218, 217, 216]);
        // One entry by id and by sequence number.
        let by_id = store.get(&entries[41].id).expect("get").expect("found");
        assert_eq!(by_id, entries[41]);
        assert_eq!(store.get("42").expect("get"), Some(entries[41].clone()));
        assert_eq!(store.get("9999").expect("get"), None);
        assert_eq!(store.get("no-such-id").expect("get"), None);
    });
}

#[test]
fn stats_count_and_order_buckets_alike() {
    each_backend("stats", |backend| {
        let store = backend.open("log-a");
        let entries = seed(store.as_ref(), "log-a", 150);
        let count_by = |key: &dyn Fn(&AuditEntry) -> String| {
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            for entry in &entries {
                *counts.entry(key(entry)).or_default() += 1;
            }
            counts
        };
        let ranked = |counts: BTreeMap<String, u64>, limit: usize| {
            let mut buckets: Vec<(String, u64)> = counts.into_iter().collect();
            buckets.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            buckets.truncate(limit);
            buckets
        };
        let got = |by: StatsBy, limit: u32| -> Vec<(String, u64)> {
            store
                .stats(&Filter::default(), by, limit)
                .expect("stats")
                .into_iter()
                .map(|bucket| (bucket.key, bucket.count))
                .collect()
        };
        assert_eq!(
            got(StatsBy::Action, 10),
            ranked(count_by(&|entry| entry.action.clone()), 10),
            "{}",
            backend.name()
        );
        assert_eq!(
            got(StatsBy::Actor, 3),
            ranked(
                count_by(&|entry| entry
                    .actor_email
                    .clone()
                    .or_else(|| entry.actor_id.clone())
                    .unwrap_or_else(|| "(anonymous)".into())),
                3
            )
        );
        assert_eq!(
            got(StatsBy::Outcome, 10),
            ranked(count_by(&|entry| entry.outcome.as_str().to_string()), 10)
        );
        let days: Vec<(String, u64)> =
            count_by(&|entry| entry.created_at.format("%Y-%m-%d").to_string())
                .into_iter()
                .collect();
        assert_eq!(got(StatsBy::Day, 100), days);
        let hours: Vec<(String, u64)> =
            count_by(&|entry| entry.created_at.format("%Y-%m-%dT%H").to_string())
                .into_iter()
                .collect();
        assert_eq!(
            got(StatsBy::Hour, 5),
            hours[hours.len() - 5..].to_vec(),
            "the latest hours"
        );
        // Hiding auditgate's own entries takes them out of every grouping and of the total,
        // and nothing else: `auditor.note` is an app action.
        let hidden = Filter {
            exclude_action_prefixes: vec!["audit.".into()],
            ..Filter::default()
        };
        let kept: Vec<&AuditEntry> = entries
            .iter()
            .filter(|entry| !entry.action.starts_with("audit."))
            .collect();
        assert!(kept.len() < entries.len());
        let kept_by = |key: &dyn Fn(&AuditEntry) -> String| {
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            for entry in &kept {
                *counts.entry(key(entry)).or_default() += 1;
            }
            counts
        };
        let got_hidden = |by: StatsBy, limit: u32| -> Vec<(String, u64)> {
            store
                .stats(&hidden, by, limit)
                .expect("stats")
                .into_iter()
                .map(|bucket| (bucket.key, bucket.count))
                .collect()
        };
        let actions = got_hidden(StatsBy::Action, 10);
        assert_eq!(
            actions,
            ranked(kept_by(&|entry| entry.action.clone()), 10),
            "{}",
            backend.name()
        );
        assert!(actions.iter().any(|(key, _)| key == "auditor.note"));
        assert!(!actions.iter().any(|(key, _)| key.starts_with("audit.")));
        let kept_days: Vec<(String, u64)> =
            kept_by(&|entry| entry.created_at.format("%Y-%m-%d").to_string())
                .into_iter()
                .collect();
        assert_eq!(got_hidden(StatsBy::Day, 100), kept_days);
        assert_eq!(store.count(&hidden).expect("count"), kept.len() as u64);
    });
}

#[test]
fn exports_are_a_snapshot_and_foreign_cursors_are_refused() {
    each_backend("snapshot", |backend| {
        let store = backend.open("log-a");
        seed(store.as_ref(), "log-a", 1500);
        for order in [Order::Asc, Order::Desc] {
            let at_start = store.count(&Filter::default()).expect("count") as usize;
            let mut reader = ExportReader::start(store.as_ref(), Filter::default(), order, None)
                .expect("starts");
            let first = reader
                .next_chunk(store.as_ref())
                .expect("reads")
                .expect("a chunk");
            assert_eq!(first.len(), 1000);
            let marker = format!("later.{}", order.as_str());
            let mut later: Vec<AuditEntry> = (0..300)
                .map(|_| AuditEntry::new("log-a", marker.clone()))
                .collect();
            store.append(&mut later).expect("appends");
            let mut rest = 0;
            while let Some(chunk) = reader.next_chunk(store.as_ref()).expect("reads") {
                assert!(chunk.iter().all(|entry| entry.action != marker));
                rest += chunk.len();
            }
            assert_eq!(first.len() + rest, at_start, "{} {order:?}", backend.name());
        }
        let foreign = match backend {
            Backend::Sqlite(_) => Cursor::after_global(5),
            Backend::Postgres(_) => Cursor::after_seq(5),
        };
        let refused = store.list(
            &Filter::default(),
            &PageRequest {
                cursor: Some(foreign),
                ..PageRequest::default()
            },
        );
        assert!(
            matches!(refused, Err(StoreError::Cursor)),
            "{}",
            backend.name()
        );
    });
}

#[test]
fn intents_heads_and_prunes_behave_alike() {
    use auditgate::log::head::{LogSigner, TreeHead};
    each_backend("lifecycle", |backend| {
        let store = backend.open("log-a");
        // Write-ahead intents: recorded, found unfinished, cleared once their entry is in.
        let finished = AuditEntry::new("log-a", "finished");
        let abandoned = AuditEntry::new("log-a", "abandoned");
        store
            .record_intents(&[finished.clone(), abandoned.clone()])
            .expect("records");
        store
            .record_intents(std::slice::from_ref(&finished))
            .expect("records again");
        store.append(&mut [finished.clone()]).expect("appends");
        let unfinished = store.unfinished_intents().expect("reads");
        assert_eq!(unfinished.len(), 1, "{}", backend.name());
        assert_eq!(unfinished[0].id, abandoned.id);
        assert_eq!(
            store
                .existing_ids(&[finished.id.clone(), abandoned.id.clone()])
                .expect("ids"),
            vec![finished.id.clone()]
        );
        store
            .clear_intents(std::slice::from_ref(&abandoned.id))
            .expect("clears");
        assert!(store.unfinished_intents().expect("reads").is_empty());

        // Signed heads: stored in order, read back verbatim.
        let signer = LogSigner::generate();
        let tree = store.tree().expect("tree");
        let first = signer
            .sign(TreeHead::new("log-a", tree.size, tree.root, Utc::now()).expect("head"))
            .expect("signs");
        store.save_head(&first).expect("saves");
        let mut more = [AuditEntry::new("log-a", "more")];
        store.append(&mut more).expect("appends");
        let tree = store.tree().expect("tree");
        let second = signer
            .sign(TreeHead::new("log-a", tree.size, tree.root, Utc::now()).expect("head"))
            .expect("signs");
        store.save_head(&second).expect("saves");
        assert_eq!(store.latest_head().expect("latest"), Some(second.clone()));
        let all = store.heads_after(0, 10).expect("heads");
        assert_eq!(all.len(), 2);
        assert_eq!((&all[0].head, &all[1].head), (&first, &second));
        assert!(store.heads_after(all[1].id, 10).expect("heads").is_empty());

        // Retention: old auth entries pruned, leaves kept, the prune itself an entry.
        let now = Utc::now();
        let mut old: Vec<AuditEntry> = (0..6)
            .map(|index| {
                let mut entry =
                    AuditEntry::new("log-a", if index % 2 == 0 { "auth.x" } else { "user.x" });
                entry.created_at = now - Duration::days(100 - index);
                entry
            })
            .collect();
        store.append(&mut old).expect("appends");
        let before = store.tree().expect("tree");
        let plan = PrunePlan {
            default_cutoff: None,
            rules: vec![("auth.".into(), now - Duration::days(50))],
        };
        let outcome = store
            .prune(
                &plan,
                prune_record("log-a", &plan, &PrunedBy::Retention),
                100,
            )
            .expect("prunes")
            .expect("something was due");
        assert_eq!(outcome.count, 3, "{}", backend.name());
        assert_eq!(outcome.record_seq, before.size + 1);
        let pruned_seq = old[0].seq;
        assert!(store.get(&old[0].id).expect("get").is_none());
        assert_eq!(
            store.pruned_record(pruned_seq).expect("mark"),
            Some(outcome.record_seq)
        );
        assert_eq!(store.pruned_by(outcome.record_seq).expect("marks").len(), 3);
        assert_eq!(
            store.leaf_hash(pruned_seq).expect("leaf"),
            Some(leaf(&old[0]))
        );
        assert_eq!(store.root_at(before.size).expect("root"), before.root);
        assert!(store
            .prune(
                &plan,
                prune_record("log-a", &plan, &PrunedBy::Retention),
                100
            )
            .expect("runs")
            .is_none());
        let report = verify(store.as_ref());
        assert_eq!(report.pruned, 3);
    });
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL only: one database, many logs.
// ---------------------------------------------------------------------------------------------

#[test]
fn logs_share_one_database_and_each_verifies_alone() {
    let Some(url) = pg::server_url("logs_share_one_database") else {
        return;
    };
    let database = TestDatabase::create(&url, "shared");
    let a = open_postgres(&database, "log-a", true);
    let b = open_postgres(&database, "log-b", true);
    let mut all = Vec::new();
    for round in 0..5 {
        for (store, log) in [(&a, "log-a"), (&b, "log-b")] {
            let mut batch: Vec<AuditEntry> = (0..(3 + round))
                .map(|index| {
                    let mut entry = AuditEntry::new(log, format!("{log}.{index}"));
                    entry.actor_id = Some(format!("u{}", index % 2));
                    entry
                })
                .collect();
            store.append(&mut batch).expect("appends");
            all.extend(batch);
        }
    }
    // Each log numbers its own entries from 1.
    assert_eq!(a.size().expect("size"), 25);
    assert_eq!(b.size().expect("size"), 25);
    // Either store lists both logs, newest first in the order entries reached the database.
    for store in [&a, &b] {
        let listed = list_all(store, &Filter::default(), 7, Order::Desc);
        let ids: Vec<&str> = listed.iter().map(|entry| entry.id.as_str()).collect();
        let expected: Vec<&str> = all.iter().rev().map(|entry| entry.id.as_str()).collect();
        assert_eq!(ids, expected);
        assert_eq!(store.count(&Filter::default()).expect("count"), 50);
    }
    let only_b = Filter {
        log_id: Some("log-b".into()),
        actor: Some("u1".into()),
        ..Filter::default()
    };
    let listed = list_all(&a, &only_b, 4, Order::Asc);
    assert!(listed
        .iter()
        .all(|entry| entry.log_id == "log-b" && entry.actor_id.as_deref() == Some("u1")));
    assert_eq!(
        listed.len(),
        all.iter()
            .filter(|entry| filter_matches(&only_b, entry))
            .count()
    );
    // Sequence numbers name positions in the store's own log.
    assert_eq!(
        a.get("1").expect("get").map(|entry| entry.log_id),
        Some("log-a".into())
    );
    assert_eq!(
        b.get("1").expect("get").map(|entry| entry.log_id),
        Some("log-b".into())
    );
    // Each log's tree covers its own entries only, and verifies.
    let report = verify(&a);
    assert_eq!(report.entries, 25);
    verify(&b);
    let a_leaves: Vec<Hash> = all
        .iter()
        .filter(|entry| entry.log_id == "log-a")
        .map(leaf)
        .collect();
    assert_eq!(
        a.tree().expect("tree").root,
        merkle::root_at(&MemoryNodes::from_leaves(&a_leaves), 25).expect("root")
    );
    assert_eq!(a.log_scope(), Some("log-a"));
}

#[test]
fn a_second_writer_of_the_same_log_is_refused_but_a_tool_beside_it_is_not() {
    let Some(url) = pg::server_url("same_log_twice") else {
        return;
    };
    let database = TestDatabase::create(&url, "twice");
    let sidecar = open_postgres(&database, "web-1", true);
    sidecar
        .append(&mut [AuditEntry::new("web-1", "one")])
        .expect("appends");
    let refused = PostgresStore::open(PostgresOptions {
        config: database.config.clone(),
        log_id: "web-1".into(),
        access: Access::Write { exclusive: true },
        pool_size: 1,
        tls: pg::default_tls(),
    });
    match refused {
        Err(StoreError::LogInUse { log_id }) => assert_eq!(log_id, "web-1"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a second sidecar on the same log was allowed"),
    }
    // `auditgate prune` beside the sidecar: appends to the same log; the sidecar picks them up.
    let tool = open_postgres(&database, "web-1", false);
    tool.append(&mut [AuditEntry::new("web-1", "from-the-tool")])
        .expect("the tool appends");
    let mut next = [AuditEntry::new("web-1", "three")];
    sidecar.append(&mut next).expect("appends");
    assert_eq!(next[0].seq, 3);
    verify(&sidecar);
    // Another log is free.
    open_postgres(&database, "web-2", true);
    // Once the sidecar is gone, its log may be opened again (a restart).
    drop(sidecar);
    open_postgres(&database, "web-1", true);
}

#[test]
fn reads_only_need_the_schema_and_never_create_it() {
    let Some(url) = pg::server_url("read_only") else {
        return;
    };
    let database = TestDatabase::create(&url, "readonly");
    let options = |access| PostgresOptions {
        config: database.config.clone(),
        log_id: "web-1".into(),
        access,
        pool_size: 1,
        tls: pg::default_tls(),
    };
    let error = PostgresStore::open(options(Access::Read))
        .err()
        .expect("no schema yet");
    assert!(error.to_string().contains("no auditgate schema"), "{error}");
    let writer = PostgresStore::open(options(Access::Write { exclusive: true })).expect("opens");
    writer
        .append(&mut [AuditEntry::new("web-1", "one")])
        .expect("appends");
    let reader = PostgresStore::open(options(Access::Read)).expect("opens to read");
    assert_eq!(reader.count(&Filter::default()).expect("count"), 1);
    assert!(reader
        .append(&mut [AuditEntry::new("web-1", "no")])
        .is_err());
    verify(&reader);
    // A newer schema than this auditgate knows is refused, not misread.
    database
        .client()
        .batch_execute("UPDATE auditgate_schema SET version = 99")
        .expect("bump");
    let error = PostgresStore::open(options(Access::Read))
        .err()
        .expect("too new");
    assert!(
        matches!(error, StoreError::SchemaTooNew { found: 99, .. }),
        "{error}"
    );
}

/// Store files written by earlier releases, each the demo's log as `auditgate demo --no-wait` left
/// it: `tests/fixtures/store-v3` (482 entries, 3 signed heads; before the sealed commit path) and
/// `tests/fixtures/store-v4` (490 entries; before the tree kept its tile levels only, so it holds
/// every level's nodes). Each is read in place by the read commands, then upgraded by the first
/// sidecar that opens it, appended to and verified intact, old entries and new alike.
#[test]
fn a_store_written_by_the_previous_release_is_read_upgraded_and_verified() {
    upgrade_and_verify("store-v3", 3, 482);
}

#[test]
fn a_store_written_with_every_tree_level_is_read_upgraded_and_verified() {
    upgrade_and_verify("store-v4", 4, 490);
}

/// `tests/fixtures/store-v5` (490 entries): before stats kept per-hour counts; the upgrade
/// counts what is there, and stats then answer what grouping the rows answered.
#[test]
fn a_store_written_before_the_stats_counts_is_read_upgraded_and_verified() {
    upgrade_and_verify("store-v5", 5, 490);
}

/// `tests/fixtures/store-v6` (477 entries): counted for stats, before each hour's seq range was
/// kept; the sidecar ranges the file's entries after the upgrade, and keeps the counts.
#[test]
fn a_store_written_before_the_hours_seq_ranges_is_read_upgraded_and_verified() {
    upgrade_and_verify("store-v6", 6, 477);
}

/// `tests/fixtures/store-v7` (schema 7, written by the release before the generation-led
/// indexes): the upgrade rebuilds the five high-cardinality indexes to lead with the generation,
/// and every filter answers as before.
#[test]
fn a_store_written_before_the_generation_led_indexes_is_read_upgraded_and_verified() {
    upgrade_and_verify("store-v7", 7, 480);
}

fn upgrade_and_verify(fixture: &str, written_as: i64, entries: u64) {
    use crate::support::{auditgate_report, path_arg};
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    let dir = TempDir::new("upgrade");
    for name in ["audit.db", "heads.ndjson", "log.key.pub"] {
        std::fs::copy(fixture.join(name), dir.0.join(name)).expect("copies the fixture");
    }
    let db = dir.0.join("audit.db");
    let key = dir.0.join("log.key.pub");
    let heads = dir.0.join("heads.ndjson");
    let version = |db: &std::path::Path| -> i64 {
        rusqlite::Connection::open(db)
            .expect("opens")
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("version")
    };
    assert_eq!(version(&db), written_as, "the fixture's schema version");
    let verify = || {
        auditgate_report(&[
            "verify",
            "--db",
            path_arg(&db),
            "--heads",
            path_arg(&heads),
            "--key",
            path_arg(&key),
        ])
    };

    // Read commands read it as it is, and change nothing.
    let (code, report) = verify();
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains("intact") && report.contains(&format!("checked {entries} positions")),
        "{report}"
    );
    let read_only = SqliteStore::open_read_only(&db).expect("reads an earlier version's file");
    assert_eq!(read_only.count(&Filter::default()).expect("count"), entries);
    let oldest = read_only
        .list(
            &Filter::default(),
            &PageRequest {
                order: Order::Asc,
                limit: 1,
                ..PageRequest::default()
            },
        )
        .expect("lists")
        .entries
        .remove(0);
    assert_eq!(oldest.seq, 1);
    // What stats say of the file as it was: counted by grouping its rows.
    let stats_of = |store: &SqliteStore| -> Vec<Vec<Bucket>> {
        let newest = store
            .list(
                &Filter::default(),
                &PageRequest {
                    order: Order::Desc,
                    limit: 1,
                    ..PageRequest::default()
                },
            )
            .expect("lists")
            .entries
            .remove(0)
            .created_at;
        let windows = [
            Filter::default(),
            Filter {
                since: Some(newest - Duration::minutes(36 * 60 + 17)),
                ..Filter::default()
            },
            Filter {
                since: Some(newest - Duration::minutes(5 * 24 * 60 + 13)),
                until: Some(newest - Duration::minutes(90)),
                outcome: Some(Outcome::Success),
                ..Filter::default()
            },
        ];
        let mut all = Vec::new();
        for filter in &windows {
            for by in [
                StatsBy::Action,
                StatsBy::Actor,
                StatsBy::Day,
                StatsBy::Hour,
                StatsBy::Outcome,
            ] {
                all.push(store.stats(filter, by, 1000).expect("stats"));
            }
        }
        all
    };
    // Pages of past time windows, read through each hour's seq range once the file has them.
    let pages_of = |store: &SqliteStore| -> Vec<Vec<u64>> {
        let mut all = Vec::new();
        for hours_back in [2, 20, 50, 100] {
            let newest = store
                .list(&Filter::default(), &PageRequest::default())
                .expect("lists")
                .entries[0]
                .created_at;
            let filter = Filter {
                since: Some(newest - Duration::hours(hours_back + 1)),
                until: Some(newest - Duration::hours(hours_back)),
                ..Filter::default()
            };
            for order in [Order::Desc, Order::Asc] {
                let page = store
                    .list(
                        &filter,
                        &PageRequest {
                            order,
                            limit: 5,
                            ..PageRequest::default()
                        },
                    )
                    .expect("lists");
                all.push(page.entries.iter().map(|entry| entry.seq).collect());
            }
        }
        all
    };
    // Every page and the count of each actor, resource and address among the newest entries:
    // the filters the generation-led indexes answer.
    let filtered_of = |store: &SqliteStore| -> Vec<(Vec<u64>, u64)> {
        let newest = store
            .list(
                &Filter::default(),
                &PageRequest {
                    limit: 40,
                    ..PageRequest::default()
                },
            )
            .expect("lists")
            .entries;
        let mut filters = Vec::new();
        for entry in &newest {
            for actor in [&entry.actor_id, &entry.actor_email].into_iter().flatten() {
                filters.push(Filter {
                    actor: Some(actor.clone()),
                    ..Filter::default()
                });
            }
            if let Some(id) = &entry.resource_id {
                filters.push(Filter {
                    resource_type: entry.resource_type.clone(),
                    resource_id: Some(id.clone()),
                    ..Filter::default()
                });
                filters.push(Filter {
                    resource_id: Some(id.clone()),
                    ..Filter::default()
                });
            }
            if let Some(ip) = entry.ip.as_deref().and_then(|ip| ip.parse().ok()) {
                filters.push(Filter {
                    ip: Some(IpFilter::Exact(ip)),
                    action: Some(entry.action.clone()),
                    ..Filter::default()
                });
            }
        }
        assert!(filters.len() >= 40, "{} filters", filters.len());
        let mut all = Vec::new();
        for filter in &filters {
            for order in [Order::Desc, Order::Asc] {
                let mut seqs = Vec::new();
                let mut cursor = None;
                loop {
                    let page = store
                        .list(
                            filter,
                            &PageRequest {
                                order,
                                limit: 7,
                                cursor,
                                ..PageRequest::default()
                            },
                        )
                        .expect("lists");
                    seqs.extend(page.entries.iter().map(|entry| entry.seq));
                    cursor = page.next_cursor;
                    if cursor.is_none() {
                        break;
                    }
                }
                assert!(!seqs.is_empty(), "{filter:?} finds its own entry");
                all.push((seqs, store.count(filter).expect("count")));
            }
        }
        all
    };
    let pages_before = pages_of(&read_only);
    let filtered_before = filtered_of(&read_only);
    let stats_before = stats_of(&read_only);
    for (n, buckets) in stats_before.iter().enumerate() {
        assert!(!buckets.is_empty(), "case {n}");
    }
    drop(read_only);
    assert_eq!(version(&db), written_as, "a read command migrates nothing");

    // A sidecar's open upgrades it; old and new entries read, count and verify as one log.
    let store = SqliteStore::open(&db, SyncMode::Normal).expect("upgrades");
    assert_eq!(store.size().expect("size"), entries);
    assert_eq!(stats_of(&store), stats_before, "stats after the upgrade");
    // The sidecar counts the file's entries for stats after it opens it (a chunk at each seal or
    // checkpoint); the stats it then answers from the counts are the same.
    let counted = |db: &std::path::Path| -> i64 {
        rusqlite::Connection::open(db)
            .expect("opens")
            .query_row("SELECT seq FROM counted_through", [], |row| row.get(0))
            .expect("counted through")
    };
    // A file counted before (version 6) keeps its counts; the hour ranges of version 7 are made
    // the same way, by the sidecar after the start.
    let ranged = |db: &std::path::Path| -> i64 {
        rusqlite::Connection::open(db)
            .expect("opens")
            .query_row("SELECT seq FROM ranged_through", [], |row| row.get(0))
            .expect("ranged through")
    };
    let counted_before = if written_as >= 6 { entries as i64 } else { 0 };
    assert_eq!(
        counted(&db),
        counted_before,
        "the migration counts nothing itself"
    );
    let ranged_before = if written_as >= 7 { entries as i64 } else { 0 };
    assert_eq!(
        ranged(&db),
        ranged_before,
        "the migration ranges nothing itself"
    );
    // The five high-cardinality indexes lead with the generation (schema version 8).
    let generation_led: i64 = rusqlite::Connection::open(&db)
        .expect("opens")
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'entries' \
             AND sql LIKE '%(seq >> 20)%'",
            [],
            |row| row.get(0),
        )
        .expect("indexes");
    assert_eq!(generation_led, 5, "generation-led indexes");
    store
        .checkpoint(std::time::Duration::from_secs(5))
        .expect("checkpoint");
    assert_eq!(counted(&db), entries as i64, "every entry counted");
    assert_eq!(ranged(&db), entries as i64, "every entry ranged");
    assert_eq!(stats_of(&store), stats_before, "stats from the counts");
    // Every entry lies within its hour's range.
    let outside: i64 = rusqlite::Connection::open(&db)
        .expect("opens")
        .query_row(
            "SELECT count(*) FROM entries LEFT JOIN hour_seqs \
             ON hour = substr(created_at, 1, 13) \
             WHERE hour IS NULL OR seq < first_seq OR seq > last_seq",
            [],
            |row| row.get(0),
        )
        .expect("ranges");
    assert_eq!(outside, 0, "entries outside their hour's range");
    assert_eq!(pages_of(&store), pages_before, "pages of past windows");
    assert_eq!(
        filtered_of(&store),
        filtered_before,
        "pages of actors, resources and addresses"
    );
    let mut batch: Vec<AuditEntry> = (0..3)
        .map(|n| AuditEntry::new("demo", format!("after.upgrade.{n}")))
        .collect();
    store.append(&mut batch).expect("appends");
    assert_eq!(batch[2].seq, entries + 3);
    assert_eq!(store.count(&Filter::default()).expect("count"), entries + 3);
    let by_prefix = Filter {
        action_prefix: Some("after.upgrade.".into()),
        ..Filter::default()
    };
    assert_eq!(store.count(&by_prefix).expect("count"), 3);
    assert_eq!(
        store.get(&oldest.id).expect("get").expect("old entry").seq,
        1
    );
    drop(store);
    assert_eq!(version(&db), 8);
    let (code, report) = verify();
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains(&format!(
            "checked {0} positions: {0} entries matched",
            entries + 3
        )),
        "{report}"
    );
}

#[test]
fn a_batch_with_one_refused_row_at_its_end_appends_nothing() {
    let Some(url) = pg::server_url("refused_row_at_the_end") else {
        return;
    };
    let database = TestDatabase::create(&url, "refused_row");
    let store = open_postgres(&database, "web-1", true);
    let mut first = [AuditEntry::new("web-1", "first")];
    store.append(&mut first).expect("appends");
    let before = store.tree().expect("tree");
    // A batch large enough to reach the database in many pieces, whose last entry repeats an id
    // already stored: the database refuses that row only after taking the others.
    let mut batch: Vec<AuditEntry> = (0..2000)
        .map(|index| {
            let mut entry = AuditEntry::new("web-1", format!("bulk.{index}"));
            entry.path = Some(format!("/api/items/{index}/{}", "x".repeat(200)));
            entry.ip = Some(format!("10.0.{}.{}", index / 250, index % 250));
            entry
        })
        .collect();
    let ids: Vec<String> = batch.iter().map(|entry| entry.id.clone()).collect();
    let mut repeat = first[0].clone();
    repeat.seq = 0;
    batch.push(repeat);
    assert!(store.append(&mut batch).is_err());
    assert!(batch.iter().all(|entry| entry.seq == 0), "seqs are reset");
    assert_eq!(store.tree().expect("tree"), before);
    assert_eq!(store.count(&Filter::default()).expect("count"), 1);
    assert!(store.existing_ids(&ids).expect("ids").is_empty());
    let nodes: i64 = database
        .client()
        .query_one("SELECT count(*) FROM tree_nodes WHERE level = 0", &[])
        .expect("count nodes")
        .get(0);
    assert_eq!(nodes, 1, "no leaf of the refused batch is stored");
    // The same entries without the repeated one go in whole, numbered after the first.
    batch.pop();
    store.append(&mut batch).expect("appends");
    assert_eq!(batch[0].seq, 2);
    assert_eq!(batch[1999].seq, 2001);
    let report = verify(&store);
    assert_eq!(report.entries, 2001);
}

#[test]
fn sidecars_appending_at_once_keep_their_logs_apart_and_whole() {
    let Some(url) = pg::server_url("sidecars_at_once") else {
        return;
    };
    let database = TestDatabase::create(&url, "at_once");
    const SIDECARS: usize = 8;
    const BATCHES: usize = 10;
    const BATCH: usize = 50;
    let appended: Vec<Vec<AuditEntry>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..SIDECARS)
            .map(|sidecar| {
                let database = &database;
                scope.spawn(move || {
                    let log = format!("web-{sidecar}");
                    let store = open_postgres(database, &log, true);
                    let mut all = Vec::new();
                    for round in 0..BATCHES {
                        let mut batch: Vec<AuditEntry> = (0..BATCH)
                            .map(|index| {
                                let mut entry = AuditEntry::new(&log, "post.created");
                                entry.actor_id = Some(format!("u{}", (round + index) % 7));
                                entry.ip = Some(format!("10.{sidecar}.{round}.{index}"));
                                entry
                            })
                            .collect();
                        store.append(&mut batch).expect("appends");
                        all.extend(batch);
                    }
                    all
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a sidecar thread"))
            .collect()
    });
    let reader = open_postgres(&database, "web-0", false);
    assert_eq!(
        reader.count(&Filter::default()).expect("count"),
        (SIDECARS * BATCHES * BATCH) as u64
    );
    for (sidecar, entries) in appended.iter().enumerate() {
        let log = format!("web-{sidecar}");
        // Each log is numbered 1..=n without a gap, in the order its sidecar appended.
        let seqs: Vec<u64> = entries.iter().map(|entry| entry.seq).collect();
        let expected: Vec<u64> = (1..=(BATCHES * BATCH) as u64).collect();
        assert_eq!(seqs, expected, "{log}");
        let store = open_postgres(&database, &log, false);
        let only = Filter {
            log_id: Some(log.clone()),
            ..Filter::default()
        };
        let listed = list_all(&store, &only, 97, Order::Asc);
        let ids: Vec<&str> = listed.iter().map(|entry| entry.id.as_str()).collect();
        let expected: Vec<&str> = entries.iter().map(|entry| entry.id.as_str()).collect();
        assert_eq!(ids, expected, "{log} lists in its own order");
        let report = verify(&store);
        assert_eq!(report.entries, (BATCHES * BATCH) as u64);
        let leaves: Vec<Hash> = entries.iter().map(leaf).collect();
        assert_eq!(
            store.tree().expect("tree").root,
            merkle::root_at(&MemoryNodes::from_leaves(&leaves), leaves.len() as u64).expect("root"),
            "{log}"
        );
    }
}
