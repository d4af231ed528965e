//! PostgreSQL time partitions (schema version 3): each log's entries in month partitions by id,
//! made ahead and on demand; a wholly due month dropped by retention with its marks and record;
//! a version 2 database copied over and still verifying. Skipped without a PostgreSQL server
//! (`scripts/postgres-test-server`).

use auditgate::entry::AuditEntry;
use auditgate::log::merkle::{self, leaf_hash, Frontier, Hash};
use auditgate::log::pruned::{PruneClaim, PRUNED_ACTION};
use auditgate::store::postgres::partitions::{Month, Names};
use auditgate::store::postgres::{Access, PostgresOptions, PostgresStore};
use auditgate::store::query::{Cursor, Filter, Order, PageRequest};
use auditgate::store::retention::{prune_all, prune_record, PrunePlan, PrunedBy};
use auditgate::store::{LogReader, Store};
use auditgate::verify::check::{LogCheck, VerifyReport};
use chrono::{DateTime, Duration, TimeZone, Utc};

use crate::pg::{self, TestDatabase};

fn open(database: &TestDatabase, log_id: &str) -> PostgresStore {
    PostgresStore::open(PostgresOptions {
        config: database.config.clone(),
        log_id: log_id.to_string(),
        access: Access::Write { exclusive: true },
        pool_size: 2,
        tls: pg::default_tls(),
    })
    .expect("opens")
}

fn time(year: i32, month: u32, day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(year, month, day, hour, 0, 0)
        .single()
        .expect("valid time")
}

/// An entry of `log_id` made at `at`, with the ULID of that time.
fn entry_at(log_id: &str, action: &str, at: DateTime<Utc>, random: u128) -> AuditEntry {
    let mut entry = AuditEntry::new(log_id, action);
    entry.created_at = at;
    entry.id = ulid::Ulid::from_parts(at.timestamp_millis() as u64, random).to_string();
    entry
}

fn leaf(entry: &AuditEntry) -> Hash {
    leaf_hash(&entry.canonical_bytes())
}

fn verify(store: &dyn Store) -> VerifyReport {
    let report = LogCheck::new(Vec::new())
        .finish(store)
        .expect("verification runs");
    assert!(report.ok(), "{report:?}");
    report
}

/// Every entry matching `filter`, oldest first.
fn list_all(store: &dyn Store, filter: &Filter) -> Vec<AuditEntry> {
    let mut all = Vec::new();
    let mut cursor: Option<Cursor> = None;
    for _ in 0..1000 {
        let page = store
            .list(
                filter,
                &PageRequest {
                    limit: 3,
                    cursor,
                    order: Order::Asc,
                    ..PageRequest::default()
                },
            )
            .expect("lists");
        all.extend(page.entries);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return all,
        }
    }
    panic!("paging did not end");
}

/// The partition table a stored entry is in.
fn partition_of(client: &mut postgres::Client, log_id: &str, id: &str) -> String {
    client
        .query_one(
            "SELECT tableoid::regclass::text FROM entries WHERE log_id = $1 AND id = $2",
            &[&log_id, &id],
        )
        .expect("the entry is stored")
        .get(0)
}

fn table_exists(client: &mut postgres::Client, table: &str) -> bool {
    client
        .query_one("SELECT to_regclass($1::text) IS NOT NULL", &[&table])
        .expect("looks up")
        .get(0)
}

/// The partitions under a log's partition, by the catalog.
fn partitions(client: &mut postgres::Client, log_id: &str) -> Vec<String> {
    let mut tables: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = to_regclass($1::text)",
            &[&Names::new(log_id).log()],
        )
        .expect("reads the catalog")
        .iter()
        .map(|row| row.get(0))
        .collect();
    tables.sort();
    tables
}

#[test]
fn appends_land_in_their_month_odd_ids_in_the_default_and_all_list_in_order() {
    let Some(url) = pg::server_url("pg_partitions_appends") else {
        return;
    };
    let database = TestDatabase::create(&url, "partition_appends");
    let store = open(&database, "web-1");
    let names = Names::new("web-1");
    let mut client = database.client();
    let now = Utc::now();
    // Made ahead at open: this month and the next.
    for month in [Month::of_time(now), Month::of_time(now).next()] {
        assert!(
            table_exists(&mut client, &names.month(month)),
            "{} is made ahead",
            month.label()
        );
    }

    let last_of_december = time(2025, 12, 31, 23) + Duration::milliseconds(3_599_999);
    let first_of_january = time(2026, 1, 1, 0);
    let mut lowercase = AuditEntry::new("web-1", "odd.lowercase");
    lowercase.id = lowercase.id.to_lowercase();
    let mut custom = AuditEntry::new("web-1", "odd.custom");
    custom.id = "order-42".into();
    let mut batch = vec![
        entry_at("web-1", "now", now, 1),
        entry_at("web-1", "far.past", time(1971, 3, 5, 12), 2),
        entry_at("web-1", "far.future", time(3000, 6, 1, 0), 3),
        entry_at("web-1", "december.last", last_of_december, u128::MAX),
        entry_at("web-1", "january.first", first_of_january, 0),
        custom,
        lowercase,
    ];
    store.append(&mut batch).expect("appends");
    assert_eq!(partition_of(&mut client, "web-1", "order-42"), names.odd());
    for entry in &batch {
        let expected = match Month::of_id(&entry.id) {
            Some(month) => names.month(month),
            // Ids that sort after every ULID (a ULID starts with 0–7) have their own partition;
            // the default one keeps only what fits no other.
            None if entry.id.as_str() >= "8" => names.odd(),
            None => names.other(),
        };
        assert_eq!(
            partition_of(&mut client, "web-1", &entry.id),
            expected,
            "{}",
            entry.action
        );
        let found = store.get(&entry.id).expect("get").expect("found by id");
        assert_eq!(found.seq, entry.seq);
    }
    assert_eq!(
        partition_of(&mut client, "web-1", &batch[3].id),
        names.month(Month::of_time(time(2025, 12, 1, 0)))
    );
    assert_eq!(
        partition_of(&mut client, "web-1", &batch[4].id),
        names.month(Month::of_time(time(2026, 1, 1, 0)))
    );
    // Listed in the order they were appended, whatever their partitions.
    let listed: Vec<String> = list_all(&store, &Filter::default())
        .into_iter()
        .map(|entry| entry.id)
        .collect();
    let appended: Vec<String> = batch.iter().map(|entry| entry.id.clone()).collect();
    assert_eq!(listed, appended);

    // A retried entry is refused wherever it lives, and its batch with it.
    for repeated in [&batch[5], &batch[1], &batch[0]] {
        let mut again = vec![AuditEntry::new("web-1", "fresh"), repeated.clone()];
        let refused = store
            .append(&mut again)
            .expect_err("a repeated id is refused");
        assert!(
            refused.to_string().contains("duplicate key"),
            "{} refused for another reason: {refused}",
            repeated.action
        );
    }
    assert_eq!(store.count(&Filter::default()).expect("count"), 7);
    let report = verify(&store);
    assert_eq!(report.entries, 7);
}

#[test]
fn a_month_whose_partition_could_not_be_made_goes_to_the_default_and_moves_out_later() {
    let Some(url) = pg::server_url("pg_partitions_busy") else {
        return;
    };
    let database = TestDatabase::create(&url, "partition_busy");
    let names = Names::new("web-1");
    let may = Month::of_time(time(1980, 5, 1, 0));
    let mut first = [entry_at("web-1", "may.first", time(1980, 5, 3, 0), 1)];
    {
        let store = open(&database, "web-1");
        // A reader of the log's default partition, its transaction left open: attaching a
        // partition needs that table to itself, so the month's partition cannot be made now.
        let mut reader = database.client();
        let mut reading = reader.transaction().expect("begins");
        reading
            .batch_execute(&format!(
                "LOCK TABLE \"{}\" IN ACCESS SHARE MODE",
                names.other()
            ))
            .expect("locks");
        store
            .append(&mut first)
            .expect("appends without the month's partition");
        reading.rollback().expect("ends");
        let mut client = database.client();
        assert!(!table_exists(&mut client, &names.month(may)));
        assert_eq!(
            partition_of(&mut client, "web-1", &first[0].id),
            names.other()
        );
        verify(&store);
    }
    // The next writer makes May's partition for a new May entry, taking the first one out of
    // the default partition into it.
    let store = open(&database, "web-1");
    let mut second = [entry_at("web-1", "may.second", time(1980, 5, 20, 0), 2)];
    store.append(&mut second).expect("appends");
    let mut client = database.client();
    for entry in [&first[0], &second[0]] {
        assert_eq!(
            partition_of(&mut client, "web-1", &entry.id),
            names.month(may),
            "{}",
            entry.action
        );
    }
    let in_default: i64 = client
        .query_one(&format!("SELECT count(*) FROM \"{}\"", names.other()), &[])
        .expect("counts")
        .get(0);
    assert_eq!(in_default, 0);
    assert_eq!(store.count(&Filter::default()).expect("count"), 2);
    // The moved entry is still unique: appending it again is refused.
    let mut again = [first[0].clone()];
    let refused = store
        .append(&mut again)
        .expect_err("a repeated id is refused");
    assert!(refused.to_string().contains("duplicate key"), "{refused}");
    let report = verify(&store);
    assert_eq!(report.entries, 2);
}

#[test]
fn retention_drops_a_wholly_due_month_and_prunes_a_partly_due_one_row_by_row() {
    let Some(url) = pg::server_url("pg_partitions_prune") else {
        return;
    };
    let database = TestDatabase::create(&url, "partition_prune");
    let store = open(&database, "web-1");
    let names = Names::new("web-1");
    let now = Utc::now();
    let january = Month::of_time(time(2024, 1, 1, 0));
    let february = Month::of_time(time(2024, 2, 1, 0));
    let mut old_custom = AuditEntry::new("web-1", "http.get");
    old_custom.id = "legacy-1".into();
    old_custom.created_at = time(2024, 1, 20, 0);
    let mut batch = vec![
        entry_at("web-1", "http.get", time(2024, 1, 5, 1), 1),
        entry_at("web-1", "http.post", time(2024, 1, 9, 2), 2),
        entry_at("web-1", "keep.note", time(2024, 2, 3, 0), 3),
        entry_at("web-1", "http.get", time(2024, 1, 30, 3), 4),
        entry_at("web-1", "http.get", time(2024, 2, 7, 4), 5),
        old_custom,
        entry_at("web-1", "http.get", time(2024, 2, 9, 5), 6),
        entry_at("web-1", "http.get", now, 7),
        entry_at("web-1", "keep.note", now, 8),
    ];
    store.append(&mut batch).expect("appends");
    let before = store.tree().expect("tree");
    let mut client = database.client();
    assert!(table_exists(&mut client, &names.month(january)));
    assert!(table_exists(&mut client, &names.month(february)));

    // Everything older than 30 days goes, but `keep.` actions are kept ten years: January is
    // wholly due, February holds a kept entry.
    let plan = PrunePlan {
        default_cutoff: Some(now - Duration::days(30)),
        rules: vec![("keep.".into(), now - Duration::days(3650))],
    };
    let summary =
        prune_all(&store, &plan, "web-1", &PrunedBy::Retention, &|| true).expect("prunes");
    assert_eq!(summary.prunes.len(), 2, "{summary:?}");
    let (whole, rows) = (&summary.prunes[0], &summary.prunes[1]);
    let january_seqs = [batch[0].seq, batch[1].seq, batch[3].seq];
    assert_eq!(
        (whole.count, whole.first_seq, whole.last_seq),
        (3, january_seqs[0], january_seqs[2])
    );
    assert_eq!(whole.record_seq, before.size + 1);
    assert_eq!(rows.count, 3, "February's two due rows and the legacy id");
    assert_eq!(rows.record_seq, before.size + 2);

    // January's partition is gone; February's stays with its kept entry; both records are in
    // the log's partition of kept rows.
    let tables = partitions(&mut client, "web-1");
    assert!(
        !tables.contains(&names.month(january)),
        "January dropped: {tables:?}"
    );
    assert!(!table_exists(&mut client, &names.month(january)));
    assert!(tables.contains(&names.month(february)), "{tables:?}");
    let in_february: Vec<String> = client
        .query(
            &format!("SELECT action FROM \"{}\"", names.month(february)),
            &[],
        )
        .expect("reads")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(in_february, vec!["keep.note".to_string()]);
    let records: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM \"{}\" WHERE action = $1",
                names.kept()
            ),
            &[&PRUNED_ACTION],
        )
        .expect("counts")
        .get(0);
    assert_eq!(records, 2);

    // What a user sees: the due entries gone, their positions marked by the record that
    // removed them, every leaf kept.
    assert_eq!(store.count(&Filter::default()).expect("count"), 5);
    for seq in january_seqs {
        assert_eq!(
            store.pruned_record(seq).expect("mark"),
            Some(whole.record_seq)
        );
    }
    assert_eq!(
        store.pruned_by(whole.record_seq).expect("marks"),
        january_seqs.to_vec()
    );
    assert!(store.get(&batch[0].id).expect("get").is_none());
    assert_eq!(
        store.leaf_hash(batch[0].seq).expect("leaf"),
        Some(leaf(&batch[0]))
    );
    let record = store
        .get(&whole.record_seq.to_string())
        .expect("get")
        .expect("the record");
    let claim = PruneClaim::from_entry(&record).expect("a claim");
    assert_eq!(
        claim,
        PruneClaim::for_seqs(&january_seqs).expect("claim of January")
    );
    let report = verify(&store);
    assert_eq!(report.pruned, 6);
    assert_eq!(report.entries, 5);

    // Proofs still verify, for kept and pruned positions alike, and the log only grew.
    let after = store.tree().expect("tree");
    assert_eq!(store.root_at(before.size).expect("root"), before.root);
    for entry in [&batch[2], &batch[7], &batch[0]] {
        let proof = store
            .inclusion_proof(entry.seq, after.size)
            .expect("inclusion proof");
        assert!(
            merkle::verify_inclusion(&leaf(entry), entry.seq - 1, after.size, &proof, &after.root),
            "{}",
            entry.seq
        );
    }
    let proof = store
        .consistency_proof(before.size, after.size)
        .expect("consistency proof");
    assert!(merkle::verify_consistency(
        before.size,
        after.size,
        &before.root,
        &after.root,
        &proof
    ));

    // Nothing more is due; a later entry of the dropped month still goes in (its partition is
    // made again) and verifies.
    assert!(
        prune_all(&store, &plan, "web-1", &PrunedBy::Retention, &|| true)
            .expect("prunes")
            .prunes
            .is_empty()
    );
    let mut late = [entry_at("web-1", "http.get", time(2024, 1, 15, 0), 9)];
    store.append(&mut late).expect("appends");
    assert_eq!(
        store.get(&late[0].id).expect("get").map(|e| e.seq),
        Some(late[0].seq)
    );
    assert_eq!(
        partition_of(&mut client, "web-1", &late[0].id),
        names.month(january)
    );
    verify(&store);
}

/// A database written by the release before partitions (schema version 2), made here with that
/// release's SQL and rows as it wrote them, is copied into the partitions by the first writer
/// that opens it, verifies intact, and takes appends.
/// `DROP TABLE` is not MVCC-safe: a page of the log whose snapshot predates a month's drop would
/// find neither the month's rows nor the marks written with the drop, and `verify` would call the
/// entries deleted. A page read while a drop holds the log's partition waits for it, then sees
/// the marks.
#[test]
fn a_page_read_while_a_month_is_dropped_sees_the_marks_of_the_drop() {
    let Some(url) = pg::server_url("pg_partitions_drop_race") else {
        return;
    };
    let database = TestDatabase::create(&url, "partition_drop_race");
    let store = std::sync::Arc::new(open(&database, "web-1"));
    let names = Names::new("web-1");
    let january = Month::of_time(time(2024, 1, 1, 0));
    let mut batch = vec![
        entry_at("web-1", "http.get", time(2024, 1, 5, 1), 1),
        entry_at("web-1", "http.get", time(2024, 1, 9, 2), 2),
        entry_at("web-1", "http.get", Utc::now(), 3),
    ];
    store.append(&mut batch).expect("appends");

    // A prune's drop in progress: the log's partition locked, the marks written, the month's
    // partition about to go.
    let mut pruning = database.client();
    let mut drop = pruning.transaction().expect("begins");
    drop.batch_execute(&format!(
        "LOCK TABLE \"{}\" IN ACCESS EXCLUSIVE MODE; \
         INSERT INTO pruned_entries (log_id, seq, prune_seq) VALUES ('web-1', 1, 4), ('web-1', 2, 4);",
        names.log()
    ))
    .expect("locks and marks");
    let reader = {
        let store = store.clone();
        std::thread::spawn(move || store.scan_log(1, 10).expect("reads a page"))
    };
    let mut watching = database.client();
    let waiting = crate::support::eventually_blocking(std::time::Duration::from_secs(10), || {
        watching
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE relation = to_regclass($1::text) AND NOT granted",
                &[&names.log()],
            )
            .map(|row| row.get::<_, i64>(0) > 0)
            .unwrap_or(false)
    });
    assert!(waiting, "the page's read waits for the drop");
    drop.batch_execute(&format!("DROP TABLE \"{}\"", names.month(january)))
        .expect("drops the month");
    drop.commit().expect("commits");

    let page = reader.join().expect("the reader ends");
    let marks: Vec<(u64, bool, Option<u64>)> = page
        .slots
        .iter()
        .map(|slot| (slot.seq, slot.entry.is_some(), slot.pruned_by))
        .collect();
    assert_eq!(
        marks,
        vec![(1, false, Some(4)), (2, false, Some(4)), (3, true, None)],
        "the month's positions read as pruned, not as deleted"
    );
}

#[test]
fn a_version_2_database_is_moved_into_partitions_and_verifies() {
    let Some(url) = pg::server_url("pg_partitions_v2") else {
        return;
    };
    let database = TestDatabase::create(&url, "partition_v2");
    let mut client = database.at_schema_version(2, &["web-1", "web-2"]);

    // Two logs, interleaved; web-1 spans January and March 2024 (nothing in February), holds an
    // id that is not a ULID, and had one entry pruned the version 2 way.
    let mut logs: Vec<(&str, Frontier, Vec<AuditEntry>)> = vec![
        ("web-1", Frontier::new(), Vec::new()),
        ("web-2", Frontier::new(), Vec::new()),
    ];
    let mut legacy = AuditEntry::new("web-1", "legacy.import");
    legacy.id = "legacy-7".into();
    legacy.created_at = time(2024, 3, 2, 0);
    let planned: Vec<(usize, AuditEntry)> = vec![
        (0, entry_at("web-1", "http.get", time(2024, 1, 4, 0), 1)),
        (1, entry_at("web-2", "http.get", time(2024, 1, 5, 0), 2)),
        (0, entry_at("web-1", "http.post", time(2024, 3, 1, 0), 3)),
        (0, legacy),
        (1, entry_at("web-2", "http.put", time(2024, 3, 9, 0), 4)),
        (0, entry_at("web-1", "http.get", time(2024, 3, 10, 0), 5)),
    ];
    fn insert(
        client: &mut postgres::Client,
        logs: &mut [(&str, Frontier, Vec<AuditEntry>)],
        index: usize,
        mut entry: AuditEntry,
    ) {
        let (_, frontier, entries) = &mut logs[index];
        entry.seq = frontier.size() + 1;
        client
            .execute(
                "INSERT INTO entries (log_id, seq, id, created_at, actor_id, actor_source, \
                 actor_verified, action, resource_type, resource_id, outcome, metadata) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                &[
                    &entry.log_id,
                    &(entry.seq as i64),
                    &entry.id,
                    &entry.created_at,
                    &entry.actor_id,
                    &entry.actor_source,
                    &entry.actor_verified,
                    &entry.action,
                    &entry.resource_type,
                    &entry.resource_id,
                    &entry.outcome.as_str(),
                    &serde_json::to_string(&entry.metadata).expect("json"),
                ],
            )
            .expect("inserts a version 2 row");
        for (level, idx, hash) in frontier.append(leaf(&entry)) {
            client
                .execute(
                    "INSERT INTO tree_nodes (log_id, level, idx, hash) VALUES ($1, $2, $3, $4)",
                    &[
                        &entry.log_id,
                        &(level as i32),
                        &(idx as i64),
                        &hash.to_vec(),
                    ],
                )
                .expect("inserts a node");
        }
        entries.push(entry);
    }
    for (index, entry) in planned {
        insert(&mut client, &mut logs, index, entry);
    }
    // The version 2 prune of web-1's first entry: row deleted, position marked, record appended.
    let plan = PrunePlan {
        default_cutoff: Some(time(2024, 2, 1, 0)),
        rules: Vec::new(),
    };
    let mut record = prune_record("web-1", &plan, &PrunedBy::Retention);
    record.created_at = time(2024, 3, 11, 0);
    record.id = ulid::Ulid::from_parts(record.created_at.timestamp_millis() as u64, 6).to_string();
    PruneClaim::for_seqs(&[1])
        .expect("claim")
        .write_metadata(&mut record.metadata);
    let record_seq = logs[0].1.size() + 1;
    client
        .batch_execute(&format!(
            "DELETE FROM entries WHERE log_id = 'web-1' AND seq = 1; \
             INSERT INTO pruned_entries (log_id, seq, prune_seq) VALUES ('web-1', 1, {record_seq});"
        ))
        .expect("prunes");
    insert(&mut client, &mut logs, 0, record);
    let old_order: Vec<String> = client
        .query("SELECT id FROM entries ORDER BY gid", &[])
        .expect("reads")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(old_order.len(), 6);

    // The first writer migrates.
    let store = open(&database, "web-1");
    let version: i32 = client
        .query_one("SELECT version FROM auditgate_schema", &[])
        .expect("reads")
        .get(0);
    assert_eq!(version, 3);
    assert!(!table_exists(&mut client, "entries_v2"));
    // A partition for each month with entries: web-1's January entry was pruned, so it has
    // March only; web-2 has January and March; neither has February.
    let names = Names::new("web-1");
    let [january, february, march] = [1, 2, 3].map(|month| Month::of_time(time(2024, month, 1, 0)));
    for (log_id, with, without) in [
        ("web-1", vec![march], vec![january, february]),
        ("web-2", vec![january, march], vec![february]),
    ] {
        let log_names = Names::new(log_id);
        let tables = partitions(&mut client, log_id);
        for month in with {
            assert!(
                tables.contains(&log_names.month(month)),
                "{log_id}: {tables:?}"
            );
        }
        for month in without {
            assert!(
                !tables.contains(&log_names.month(month)),
                "{log_id}: {tables:?}"
            );
        }
    }
    assert_eq!(
        partition_of(&mut client, "web-2", &logs[1].2[0].id),
        Names::new("web-2").month(january)
    );
    assert_eq!(partition_of(&mut client, "web-1", "legacy-7"), names.odd());
    assert_eq!(
        partition_of(&mut client, "web-1", &logs[0].2[4].id),
        names.kept(),
        "the prune record is kept"
    );
    // Every row, in its old order (gid kept), under both logs.
    let listed: Vec<String> = list_all(&store, &Filter::default())
        .into_iter()
        .map(|entry| entry.id)
        .collect();
    assert_eq!(listed, old_order);
    let report = verify(&store);
    assert_eq!((report.entries, report.pruned), (4, 1));
    {
        let web2 = open(&database, "web-2");
        assert_eq!(verify(&web2).entries, 2);
        let web2_leaves: Vec<Hash> = logs[1].2.iter().map(leaf).collect();
        assert_eq!(
            web2.tree().expect("tree").root,
            merkle::root_at(&merkle::MemoryNodes::from_leaves(&web2_leaves), 2).expect("root")
        );
    }

    // Appends continue the log, after every old row in listing order.
    let mut more = [
        AuditEntry::new("web-1", "after.upgrade"),
        entry_at("web-1", "after.upgrade.old", time(2024, 2, 14, 0), 9),
    ];
    store.append(&mut more).expect("appends");
    assert_eq!((more[0].seq, more[1].seq), (6, 7));
    assert_eq!(
        partition_of(&mut client, "web-1", &more[1].id),
        names.month(Month::of_time(time(2024, 2, 1, 0)))
    );
    let listed: Vec<String> = list_all(&store, &Filter::default())
        .into_iter()
        .map(|entry| entry.id)
        .collect();
    assert_eq!(listed.len(), 8);
    assert_eq!(&listed[..6], &old_order[..]);
    let report = verify(&store);
    assert_eq!((report.entries, report.pruned), (6, 1));
    // Reopening finds the schema current and changes nothing.
    drop(store);
    let store = open(&database, "web-1");
    assert_eq!(store.size().expect("size"), 7);
    verify(&store);
}

/// A log's partition dropped behind auditgate's back is made again by the next append, which
/// then succeeds: PostgreSQL reports the missing partition as a check violation, whatever the
/// language of its messages, and the store retries once after making it.
#[test]
fn an_append_after_the_logs_partition_was_dropped_makes_it_again() {
    let Some(url) = pg::server_url("pg_partitions_dropped_log") else {
        return;
    };
    let database = TestDatabase::create(&url, "partition_dropped_log");
    let store = open(&database, "web-1");
    let names = Names::new("web-1");
    let mut client = database.client();
    store
        .append(&mut [AuditEntry::new("web-1", "before.drop")])
        .expect("appends");
    client
        .batch_execute(&format!(
            "ALTER TABLE entries DETACH PARTITION \"{0}\"; DROP TABLE \"{0}\"",
            names.log()
        ))
        .expect("drops the log's partition");
    assert!(!table_exists(&mut client, names.log()));
    let mut batch = [AuditEntry::new("web-1", "after.drop")];
    store.append(&mut batch).expect("appends after the drop");
    assert_eq!(batch[0].seq, 2);
    assert!(table_exists(&mut client, names.log()), "made again");
    let after = Filter {
        action: Some("after.drop".into()),
        ..Filter::default()
    };
    assert_eq!(list_all(&store, &after).len(), 1);
}
