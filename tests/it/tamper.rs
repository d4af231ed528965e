//! Tamper evidence end to end: real SQLite files written by the real store, changed behind its
//! back with rusqlite, and checked by the code `auditgate verify` runs (plus the binary itself
//! for exit codes); a real sidecar signing and publishing heads; the log endpoints.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use auditgate::config::Config;

use auditgate::entry::{AuditEntry, Outcome};
use auditgate::log::head::{public_key_path, LogSigner, LogVerifier, SignedTreeHead, TreeHead};
use auditgate::log::merkle::{self, from_hex};
use auditgate::server::Sidecar;
use auditgate::store::config::SyncMode;
use auditgate::store::query::{Filter, Order, PageRequest};
use auditgate::store::retention::{prune_all, PrunePlan, PrunedBy};
use auditgate::store::sqlite::SqliteStore;
use auditgate::store::Store;
use auditgate::verify::check::VerifyReport;
use auditgate::verify::{verify_database, verify_database_on, verify_export};
use rusqlite::Connection;
use serde_json::Value;

use crate::support::{self, HttpClient, TempDir, TestSidecar, Upstream};

/// A log on disk: the database, a published heads file and the key pair that signed it.
struct Fixture {
    dir: TempDir,
    db: PathBuf,
    heads: PathBuf,
    key: PathBuf,
    signer: LogSigner,
    /// Entries appended so far.
    size: u64,
}

impl Fixture {
    /// `count` entries, a head signed (and published, then stored, as the sidecar does) after
    /// every `head_every` of them.
    fn new(count: u64, head_every: u64) -> Fixture {
        let dir = TempDir::new("tamper");
        let key = dir.0.join("log.key");
        let signer = LogSigner::write_new(&key).expect("key");
        let mut fixture = Fixture {
            db: dir.0.join("audit.db"),
            heads: dir.0.join("heads.ndjson"),
            key: public_key_path(&key),
            signer,
            dir,
            size: 0,
        };
        fixture.extend(count, head_every, chrono::Duration::zero());
        fixture
    }

    /// Appends `count` more entries created `age` ago, signing heads as it goes.
    fn extend(&mut self, count: u64, head_every: u64, age: chrono::Duration) {
        let store = SqliteStore::open(&self.db, SyncMode::Normal).expect("store");
        let mut left = count;
        while left > 0 {
            let take = left.min(head_every);
            let mut batch: Vec<AuditEntry> = (0..take)
                .map(|offset| sample_entry(self.size + offset + 1, age))
                .collect();
            store.append(&mut batch).expect("append");
            self.size += take;
            left -= take;
            self.sign(&store);
        }
        // At rest, as a stopped sidecar leaves its log: every entry sealed into `entries`, which
        // is where the edits below reach them (a test further down edits an unsealed one).
        assert!(store
            .checkpoint(std::time::Duration::from_secs(5))
            .expect("checkpoint"));
    }

    /// `old` entries 120 days old, then `new` of now, then a retention prune of everything older
    /// than 90 days (the old ones, and an `audit.pruned` record) and a head signed over it.
    fn pruned(old: u64, new: u64) -> Fixture {
        let mut fixture = Fixture::new(0, 10);
        fixture.extend(old, 10, chrono::Duration::days(120));
        fixture.extend(new, 10, chrono::Duration::zero());
        let store = SqliteStore::open(&fixture.db, SyncMode::Normal).expect("store");
        let plan = PrunePlan {
            default_cutoff: Some(chrono::Utc::now() - chrono::Duration::days(90)),
            rules: Vec::new(),
        };
        let summary = prune_all(&store, &plan, "tamper-test", &PrunedBy::Retention, &|| true)
            .expect("prunes");
        assert_eq!(summary.entries(), old);
        fixture.size += 1;
        fixture.sign(&store);
        fixture
    }

    fn sign(&self, store: &SqliteStore) -> SignedTreeHead {
        let tree = store.tree().expect("tree");
        let head =
            TreeHead::new("tamper-test", tree.size, tree.root, chrono::Utc::now()).expect("head");
        let signed = self.signer.sign(head).expect("sign");
        let line = serde_json::to_string(&signed).expect("json");
        auditgate::signer::append_lines(&self.heads, &[line].into()).expect("publish");
        store.save_head(&signed).expect("store head");
        signed
    }

    fn public_key(&self) -> LogVerifier {
        LogVerifier::load(&self.key).expect("public key")
    }

    fn verify(&self) -> VerifyReport {
        verify_database(&self.db, Some(&self.heads), &[self.public_key()]).expect("readable")
    }

    fn verify_without_heads_file(&self) -> VerifyReport {
        verify_database(&self.db, None, &[self.public_key()]).expect("readable")
    }

    /// Moves the rows of `entries` that `condition` selects into `recent`, the unsealed table.
    fn move_to_recent(&self, condition: &str) {
        let columns = auditgate::store::sqlite::rows::ENTRY_COLUMNS;
        self.sql(&format!(
            "INSERT INTO recent ({columns}) SELECT {columns} FROM entries WHERE {condition};
             DELETE FROM entries WHERE {condition};"
        ));
    }

    fn sql(&self, statements: &str) {
        let connection = Connection::open(&self.db).expect("open");
        connection.execute_batch(statements).expect("tamper");
    }

    fn binary(&self, args: &[&str]) -> (i32, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_auditgate"))
            .args(args)
            .env("AUDITGATE_LOG", "error")
            .output()
            .expect("runs");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    }
}

fn sample_entry(seq: u64, age: chrono::Duration) -> AuditEntry {
    let action = if seq % 3 == 0 {
        "auth.login_failed"
    } else {
        "user.updated"
    };
    let mut entry = AuditEntry::new("tamper-test", action);
    entry.created_at = chrono::Utc::now() - age;
    entry.actor_id = Some(format!("user-{}", seq % 7));
    entry.actor_email = Some(format!("user{}@example.com", seq % 7));
    entry.outcome = Outcome::Success;
    entry.status = Some(200);
    entry.method = Some("PATCH".into());
    entry.path = Some(format!("/api/users/{seq}"));
    entry.ip = Some("10.0.0.7".into());
    entry.duration_us = Some(1234 + seq);
    entry
        .metadata
        .insert("ratio".into(), serde_json::json!(seq as f64 / 7.0));
    entry
}

fn problem_text(report: &VerifyReport) -> String {
    report
        .problems
        .iter()
        .map(|problem| format!("[{:?}] {}", problem.seq, problem.message))
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_tampered(report: &VerifyReport, first_bad: Option<u64>, needle: &str) {
    let text = problem_text(report);
    assert!(!report.ok(), "expected tampering to be found");
    assert_eq!(report.first_bad_seq(), first_bad, "{text}");
    assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
}

#[test]
fn an_untouched_log_verifies() {
    let fixture = Fixture::new(100, 10);
    let report = fixture.verify();
    assert!(report.ok(), "{}", problem_text(&report));
    assert_eq!((report.size, report.entries, report.heads), (100, 100, 10));
    assert!(report.signatures_checked);
}

#[test]
fn editing_one_field_of_one_row_is_found() {
    let fixture = Fixture::new(100, 10);
    fixture.sql("UPDATE entries SET actor_id = 'someone-else' WHERE seq = 37");
    assert_tampered(&fixture.verify(), Some(37), "entry 37 was changed");
    // The same edit is found without any head: the leaf hash alone gives it away.
    fixture.sql("DELETE FROM tree_heads");
    assert_tampered(
        &verify_database(&fixture.db, None, &[]).expect("readable"),
        Some(37),
        "entry 37 was changed",
    );
}

/// Each hour's range of positions (`hour_seqs`) bounds the walk of a listing of a time window; a
/// range narrowed by hand would hide entries from such listings while every row stays as it was
/// committed, so `verify` checks every sealed entry against its hour's range.
#[test]
fn an_hour_range_narrowed_to_hide_entries_from_time_windows_is_found() {
    let fixture = Fixture::new(100, 10);
    assert!(fixture.verify().ok());
    fixture.sql(
        "UPDATE hour_seqs SET last_seq = 36 \
         WHERE hour = (SELECT substr(created_at, 1, 13) FROM entries WHERE seq = 37)",
    );
    assert_tampered(
        &fixture.verify(),
        Some(37),
        "position 37 lies outside the positions",
    );
    fixture.sql("DELETE FROM hour_seqs");
    assert_tampered(
        &fixture.verify(),
        Some(1),
        "hour_seqs has no positions for hour",
    );
}

/// Stats and the viewer's charts add up counts kept per hour beside the entries, not the rows.
/// A count changed by hand would show an auditor activity the log does not hold while every
/// entry still verifies, so `verify` compares the counts with the rows it walks. Each edit below
/// is made to a fresh log that verifies intact.
#[test]
fn stats_counts_changed_by_hand_are_found() {
    let fresh = || {
        let mut fixture = Fixture::new(60, 10);
        fixture.extend(40, 10, chrono::Duration::days(3));
        let report = fixture.verify();
        assert!(report.ok(), "{}", problem_text(&report));
        let oldest: String = Connection::open(&fixture.db)
            .expect("open")
            .query_row("SELECT min(hour) FROM entry_counts", [], |row| row.get(0))
            .expect("an hour");
        (fixture, oldest)
    };
    let cases: Vec<(&str, String)> = vec![
        // A count raised.
        (
            "UPDATE entry_counts SET n = n + 5 WHERE hour = '{oldest}' AND action = 'user.updated'",
            "entries of action \"user.updated\" with outcome \"success\", and the entries hold"
                .into(),
        ),
        // One entry moved from one actor to another: every total is the same.
        (
            "UPDATE actor_counts SET n = n - 1 WHERE hour = '{oldest}' AND actor = 'user1@example.com';
             UPDATE actor_counts SET n = n + 1 WHERE hour = '{oldest}' AND actor = 'user2@example.com';",
            "entries of actor \"user1@example.com\", and the entries hold".into(),
        ),
        // A day's count made up.
        (
            "INSERT INTO actor_day_counts (day, actor, n) \
             SELECT min(day), 'someone@example.com', 3 FROM actor_day_counts",
            "hold 3 entries of actor \"someone@example.com\", and the entries hold 0".into(),
        ),
        // An hour with no entry at all.
        (
            "INSERT INTO entry_counts (hour, action, outcome, n) \
             VALUES ('2020-01-01T00', 'user.deleted', 'success', 7)",
            "the stats counts of hour \"2020-01-01T00\" hold 7 entries of action \"user.deleted\""
                .into(),
        ),
        // A count that is not a number, and one of zero (a pruned actor's key put back).
        (
            "UPDATE actor_counts SET n = 'many' WHERE hour = '{oldest}' AND actor = 'user3@example.com'",
            "actor_counts holds \"many\" as the count of".into(),
        ),
        (
            "INSERT INTO actor_day_counts (day, actor, n) \
             SELECT min(day), 'gone@example.com', 0 FROM actor_day_counts",
            "actor_day_counts holds the number 0 as the count of".into(),
        ),
        // A key stored as a blob: stats compare keys as text and never read it.
        (
            "UPDATE entry_counts SET hour = CAST(hour AS BLOB) WHERE hour = '{oldest}'",
            "entry_counts holds a count whose key is not text (a blob of 13 bytes".into(),
        ),
        // A key that is text but not UTF-8, which a lookup by its text would not find.
        (
            "INSERT INTO entry_counts (hour, action, outcome, n) \
             VALUES ('{oldest}', CAST(x'75736572FF' AS TEXT), 'success', 1000)",
            "entry_counts holds a count whose key is not UTF-8 text".into(),
        ),
        // Counts so large that a wrapping total would come back round to the true one.
        (
            "INSERT INTO entry_counts (hour, action, outcome, n) VALUES
               ('{oldest}', 'a.1', 'success', 4611686018427387904),
               ('{oldest}', 'a.2', 'success', 4611686018427387904),
               ('{oldest}', 'a.3', 'success', 4611686018427387904),
               ('{oldest}', 'a.4', 'success', 4611686018427387904)",
            "hold 4611686018427387904 entries of action \"a.1\"".into(),
        ),
    ];
    for (edit, needle) in cases {
        let (fixture, oldest) = fresh();
        fixture.sql(&edit.replace("{oldest}", &oldest));
        assert_tampered(&fixture.verify(), None, &needle);
    }

    // Counts that already hold the entries not yet sealed (which a seal would count again).
    let (fixture, _) = fresh();
    let store = SqliteStore::open(&fixture.db, SyncMode::Normal).expect("store");
    let mut unsealed: Vec<AuditEntry> = (0..3)
        .map(|offset| sample_entry(200 + offset, chrono::Duration::zero()))
        .collect();
    store.append(&mut unsealed).expect("append");
    drop(store);
    let report = fixture.verify();
    assert!(
        report.ok(),
        "unsealed entries alone: {}",
        problem_text(&report)
    );
    fixture.sql(
        "INSERT INTO entry_counts (hour, action, outcome, n) \
           SELECT substr(created_at, 1, 13), action, outcome, count(*) FROM recent WHERE true GROUP BY 1, 2, 3 \
           ON CONFLICT (hour, action, outcome) DO UPDATE SET n = n + excluded.n;
         INSERT INTO actor_counts (hour, actor, n) \
           SELECT substr(created_at, 1, 13), actor_email, count(*) FROM recent WHERE true GROUP BY 1, 2 \
           ON CONFLICT (hour, actor) DO UPDATE SET n = n + excluded.n;
         INSERT INTO actor_day_counts (day, actor, n) \
           SELECT substr(created_at, 1, 10), actor_email, count(*) FROM recent WHERE true GROUP BY 1, 2 \
           ON CONFLICT (day, actor) DO UPDATE SET n = n + excluded.n;",
    );
    assert_tampered(&fixture.verify(), None, "and the entries hold");

    // A count table that cannot be read is reported, and does not hide what the walk found.
    let (fixture, _) = fresh();
    fixture.sql(
        "UPDATE entries SET actor_id = 'someone-else' WHERE seq = 37; DROP TABLE actor_day_counts;",
    );
    let report = fixture.verify();
    assert_tampered(&report, Some(37), "entry 37 was changed");
    assert_tampered(
        &report,
        Some(37),
        "the stats counts could not be read to check them",
    );
    // With nothing else wrong, counts that cannot be read make the file unreadable (exit 2),
    // not tampered.
    let (fixture, _) = fresh();
    fixture.sql("DROP TABLE actor_day_counts;");
    assert!(verify_database(&fixture.db, Some(&fixture.heads), &[fixture.public_key()]).is_err());
}

/// The log starts at position 1: a row inserted below it would be listed by queries that reach
/// it, while no leaf covers it.
#[test]
fn a_row_below_the_first_position_is_found() {
    let fixture = Fixture::new(20, 10);
    fixture.sql(
        "CREATE TEMP TABLE forged AS SELECT * FROM entries WHERE seq = 5;
         UPDATE forged SET seq = 0, id = 'forged-entry';
         INSERT INTO entries SELECT * FROM forged;",
    );
    // Reported at no position: entry 1 is intact.
    assert_tampered(
        &fixture.verify(),
        None,
        "a row of entries at position 0, below the log's first position",
    );
}

/// `verify` hashes most rows from their columns as stored, without decoding them; an edit of any
/// column must still be found, and so must a row rewritten into an equivalent form of the same
/// entry (it decodes to the entry its leaf hashes), which a time filter comparing the stored text
/// could miss: a timestamp two hours later with a `+02:00` offset is the same instant.
#[test]
fn an_edit_of_any_column_is_found_and_so_is_a_row_rewritten_in_an_equivalent_form() {
    let fixture = Fixture::new(100, 10);
    let connection = Connection::open(&fixture.db).expect("open");
    let stored: String = connection
        .query_row("SELECT created_at FROM entries WHERE seq = 5", [], |row| {
            row.get(0)
        })
        .expect("time");
    let instant = chrono::DateTime::parse_from_rfc3339(&stored).expect("stored time");
    let offset = chrono::FixedOffset::east_opt(2 * 3600).expect("offset");
    let shifted = instant
        .with_timezone(&offset)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
    assert!(shifted.ends_with("+02:00") && shifted > stored, "{shifted}");
    connection
        .execute(
            "UPDATE entries SET created_at = ?1 WHERE seq = 5",
            [&shifted],
        )
        .expect("rewrite");
    drop(connection);
    fixture.sql(
        "UPDATE entries SET metadata = ' ' || replace(metadata, ':', ' : ') || ' ' WHERE seq = 6;",
    );
    let report = fixture.verify();
    let text = problem_text(&report);
    // The two rows, and the stats counts of entry 5's hour (by action, by actor), and of its day
    // (by actor) when the offset's text names another day (a run between 22:00 and 24:00 UTC):
    // a count keyed by the stored time no longer finds the row under its hour.
    let day_moved = shifted[..10] != stored[..10];
    assert_eq!(report.problem_count, 4 + u64::from(day_moved), "{text}");
    assert!(text.contains("the stats counts of hour"), "{text}");
    assert!(text.contains("entry 5 was rewritten"), "{text}");
    assert!(text.contains("entry 6 was rewritten"), "{text}");
    // Each decodes to its committed entry: it counts as matching its leaf.
    assert_eq!(report.entries, 100);
    // The entry really moved out of its hour for a time filter.
    let store = SqliteStore::open_read_only(&fixture.db).expect("store");
    let oldest_first = PageRequest {
        order: Order::Asc,
        ..PageRequest::default()
    };
    let page = store.list(&Filter::default(), &oldest_first).expect("list");
    let fifth = page
        .entries
        .iter()
        .find(|entry| entry.seq == 5)
        .expect("entry 5");
    let hour = Filter {
        since: Some(fifth.created_at - chrono::Duration::minutes(30)),
        until: Some(fifth.created_at + chrono::Duration::minutes(30)),
        ..Filter::default()
    };
    let found = store.list(&hour, &oldest_first).expect("list");
    assert!(
        found.entries.iter().all(|entry| entry.seq != 5),
        "a time filter found it"
    );

    let edits = [
        "id = id || 'x'",
        "log_id = 'other-log'",
        "created_at = '2020-01-01T00:00:00.000000Z'",
        "actor_id = actor_id || 'x'",
        "actor_email = NULL",
        "actor_name = 'someone'",
        "actor_source = 'jwt'",
        "actor_verified = 1",
        "tenant = 'acme'",
        "action = 'user.read'",
        "resource_type = 'user'",
        "resource_id = '7'",
        "outcome = 'failure'",
        "status = 201",
        "method = 'GET'",
        "path = path || '/'",
        "route = '/api/users/{id}'",
        "rule = 'users'",
        "ip = '10.0.0.8'",
        "user_agent = 'curl'",
        "request_id = 'r-1'",
        "duration_us = duration_us + 1",
        "error = 'boom'",
        "metadata = '{\"ratio\":1}'",
    ];
    for (index, edit) in edits.iter().enumerate() {
        let fixture = Fixture::new(20, 10);
        let seq = 3 + index as u64 % 15;
        fixture.sql(&format!("UPDATE entries SET {edit} WHERE seq = {seq}"));
        let report = fixture.verify_without_heads_file();
        assert!(!report.ok(), "the edit {edit} was not found");
        assert_eq!(
            report.first_bad_seq(),
            Some(seq),
            "{edit}: {}",
            problem_text(&report)
        );
    }
}

/// A log reader that counts the positions `verify` reads again decoded, or (`decoding`) reads
/// every row decoded, as `verify` did before it hashed rows from their stored values.
struct CountingReader {
    inner: auditgate::store::sqlite::SqliteLogReader,
    decoding: bool,
    reread: std::cell::Cell<u64>,
    /// Reads of decoded rows.
    reads: std::cell::Cell<u64>,
    /// Rows handed over as stored values rather than decoded.
    stored: std::cell::Cell<u64>,
}

impl CountingReader {
    fn open(db: &Path, decoding: bool) -> CountingReader {
        CountingReader {
            inner: auditgate::store::sqlite::SqliteLogReader::open(db).expect("reader"),
            decoding,
            reread: std::cell::Cell::new(0),
            reads: std::cell::Cell::new(0),
            stored: std::cell::Cell::new(0),
        }
    }

    fn verify(&self) -> VerifyReport {
        auditgate::verify::verify_log(self, None, &[]).expect("readable")
    }
}

impl auditgate::store::LogReader for CountingReader {
    fn tree_size(&self) -> Result<u64, auditgate::store::StoreError> {
        self.inner.tree_size()
    }
    fn max_entry_seq(&self) -> Result<u64, auditgate::store::StoreError> {
        self.inner.max_entry_seq()
    }
    fn scan_log(
        &self,
        first_seq: u64,
        max: usize,
    ) -> Result<auditgate::store::LogPage, auditgate::store::StoreError> {
        self.reread.set(self.reread.get() + max as u64);
        self.reads.set(self.reads.get() + 1);
        self.inner.scan_log(first_seq, max)
    }
    fn scan_log_stored(
        &self,
        first_seq: u64,
        max: usize,
    ) -> Result<auditgate::store::LogPage, auditgate::store::StoreError> {
        if self.decoding {
            return self.inner.scan_log(first_seq, max);
        }
        let page = self.inner.scan_log_stored(first_seq, max)?;
        let stored = page.slots.iter().filter(|slot| slot.stored.is_some());
        self.stored.set(self.stored.get() + stored.count() as u64);
        Ok(page)
    }
    fn stored_form(&self, entry: &AuditEntry) -> Option<auditgate::entry::StoredRow> {
        self.inner.stored_form(entry)
    }
    fn pruned_by(&self, record_seq: u64) -> Result<Vec<u64>, auditgate::store::StoreError> {
        self.inner.pruned_by(record_seq)
    }
    fn root_at(&self, size: u64) -> Result<merkle::Hash, auditgate::store::StoreError> {
        self.inner.root_at(size)
    }
    fn node_range(
        &self,
        level: u32,
        first_index: u64,
        count: usize,
    ) -> Result<Vec<merkle::Hash>, auditgate::store::StoreError> {
        self.inner.node_range(level, first_index, count)
    }
    fn keeps_node_level(&self, level: u32) -> bool {
        self.inner.keeps_node_level(level)
    }
    fn heads_after(
        &self,
        after_id: u64,
        limit: u32,
    ) -> Result<Vec<auditgate::store::StoredHead>, auditgate::store::StoreError> {
        self.inner.heads_after(after_id, limit)
    }
    fn cosignatures(
        &self,
        origin: &str,
        size: u64,
        root_hash: &merkle::Hash,
    ) -> Result<Vec<auditgate::store::StoredCosignature>, auditgate::store::StoreError> {
        self.inner.cosignatures(origin, size, root_hash)
    }
}

/// What two verifications found, apart from when they ran.
fn findings(report: &VerifyReport) -> (u64, u64, u64, u64, String) {
    (
        report.size,
        report.entries,
        report.pruned,
        report.problem_count,
        problem_text(report),
    )
}

/// Every row the store writes is hashed from its stored values, none decoded again; a row that
/// was edited, or stored in any other form, gets exactly the verdict decoding it gives.
#[test]
fn verify_decodes_only_rows_not_as_stored_and_its_verdicts_are_those_of_decoding() {
    // A prune record among them, which always comes decoded, and a last stretch unsealed.
    let fixture = Fixture::pruned(5, 60);
    fixture.move_to_recent("seq > 55");

    // Every row holds exactly the values the store says it writes for its entry (what a row
    // that falls back to decoding is compared with).
    let connection = Connection::open(&fixture.db).expect("open");
    let columns = auditgate::store::sqlite::rows::ENTRY_COLUMNS;
    let mut statement = connection
        .prepare(&format!(
            "SELECT {columns} FROM entries UNION ALL SELECT {columns} FROM recent"
        ))
        .expect("prepare");
    let mut rows = statement.query([]).expect("query");
    let mut compared = 0;
    while let Some(row) = rows.next().expect("row") {
        let entry = auditgate::store::sqlite::rows::entry_from_row(row).expect("decodes");
        let written = auditgate::store::sqlite::rows::stored_row_of(&entry);
        let stored = auditgate::store::sqlite::rows::stored_row(row);
        if entry.action != "audit.pruned" {
            assert_eq!(stored, Some(written), "entry {}", entry.seq);
            compared += 1;
        }
    }
    assert_eq!(compared, 60);
    drop(rows);
    drop(statement);
    drop(connection);

    let untouched = CountingReader::open(&fixture.db, false);
    let report = untouched.verify();
    assert!(report.ok(), "{}", problem_text(&report));
    assert_eq!((report.entries, report.pruned), (61, 5));
    assert_eq!(
        untouched.reread.get(),
        0,
        "a row as the store writes it was decoded"
    );
    assert_eq!(
        untouched.stored.get(),
        60,
        "every entry but the prune record as stored"
    );

    let edits = [
        "actor_id = 'someone-else'",
        "actor_id = x'757365722d31'",
        "actor_id = CAST(x'ff' AS TEXT)",
        "actor_id = 'user-1' || char(0)",
        "status = 200.5",
        "status = '200'",
        "status = 'two hundred'",
        "duration_us = -5",
        "actor_verified = 2",
        "created_at = replace(created_at, 'Z', '+00:00')",
        "created_at = replace(created_at, 'T', ' ')",
        "created_at = '+10000-01-01T00:00:00.000000Z'",
        "metadata = ' ' || metadata",
        "metadata = metadata || ',\"method\":\"GET\"'",
        "metadata = '[' || metadata || ']'",
        "metadata = replace(metadata, '\"ratio\"', '\"\\u0072atio\"')",
        "metadata = replace(metadata, '{', '{\"ratio\":0,')",
        "metadata = '{\"deep\":' || replace(printf('%.130c', '['), ' ', '[') || '1' || replace(printf('%.130c', ']'), ' ', ']') || '}'",
        "action = 'audit.pruned'",
    ];
    for (index, edit) in edits.iter().enumerate() {
        let fixture = Fixture::new(30, 10);
        let seq = 2 + index as u64;
        fixture.sql(&format!("UPDATE entries SET {edit} WHERE seq = {seq}"));
        let stored = CountingReader::open(&fixture.db, false);
        let decoding = CountingReader::open(&fixture.db, true);
        let (fast, slow) = (stored.verify(), decoding.verify());
        // Decoding's findings, and where decoding found the entry intact, the one thing it
        // cannot see: a row rewritten into another form of the same entry.
        if slow.ok() && edit != &"status = '200'" {
            assert_eq!(fast.problem_count, 1, "{edit}: {}", problem_text(&fast));
            assert!(
                problem_text(&fast).contains(&format!("entry {seq} was rewritten")),
                "{edit}: {}",
                problem_text(&fast)
            );
            assert_eq!(
                (fast.size, fast.entries, fast.pruned),
                (slow.size, slow.entries, slow.pruned)
            );
        } else {
            assert_eq!(findings(&fast), findings(&slow), "{edit}");
        }
        assert!(
            stored.reread.get() <= 1,
            "{edit}: {} positions read again",
            stored.reread.get()
        );
    }
    // Metadata nested 110 deep is written by a store and decodes, but is decoded rather than
    // hashed from its stored values: it is intact, not rewritten.
    let mut fixture = Fixture::new(10, 10);
    let store = SqliteStore::open(&fixture.db, SyncMode::Normal).expect("store");
    let mut deep = sample_entry(11, chrono::Duration::zero());
    let mut nested = serde_json::json!(1);
    for _ in 0..110 {
        nested = serde_json::json!([nested]);
    }
    deep.metadata.insert("deep".into(), nested);
    store.append(&mut [deep]).expect("append");
    fixture.size += 1;
    fixture.sign(&store);
    drop(store);
    let reader = CountingReader::open(&fixture.db, false);
    let report = reader.verify();
    assert!(report.ok(), "{}", problem_text(&report));
    assert_eq!((report.entries, reader.reread.get()), (11, 1));

    // Entries no store writes but an append takes (a timestamp past year 9999, metadata nested
    // deeper than decoding reads) do not decode: as stored values they would hash to their
    // leaves, yet they get decoding's verdict.
    let mut fixture = Fixture::new(10, 10);
    let store = SqliteStore::open(&fixture.db, SyncMode::Normal).expect("store");
    let mut far = sample_entry(11, chrono::Duration::zero());
    far.created_at = chrono::DateTime::parse_from_rfc3339("9999-12-31T23:59:59Z")
        .expect("time")
        .with_timezone(&chrono::Utc)
        + chrono::Duration::days(2);
    let mut deep = sample_entry(12, chrono::Duration::zero());
    let mut nested = serde_json::json!(1);
    for _ in 0..130 {
        nested = serde_json::json!([nested]);
    }
    deep.metadata.insert("deep".into(), nested);
    store.append(&mut [far, deep]).expect("append");
    fixture.size += 2;
    fixture.sign(&store);
    drop(store);
    let stored = CountingReader::open(&fixture.db, false);
    let decoding = CountingReader::open(&fixture.db, true);
    let (fast, slow) = (stored.verify(), decoding.verify());
    assert!(!slow.ok(), "decoding reads them");
    assert_eq!(findings(&fast), findings(&slow));

    // A row rewritten into an equivalent form is decoded (and reported); a value SQLite stores
    // as it was ('200' in an integer column is 200) is no rewrite at all.
    let fixture = Fixture::new(30, 10);
    fixture.sql(
        "UPDATE entries SET created_at = replace(created_at, 'Z', '+00:00') WHERE seq = 4;
         UPDATE entries SET status = '200' WHERE seq = 5;",
    );
    let reader = CountingReader::open(&fixture.db, false);
    let report = reader.verify();
    assert_eq!(report.problem_count, 1, "{}", problem_text(&report));
    assert_tampered(&report, Some(4), "entry 4 was rewritten");
    assert_eq!(
        reader.reread.get(),
        1,
        "only the timestamp's row is decoded"
    );

    // Many such rows in a page are decoded in one read, from the first to the last.
    fixture.sql(
        "UPDATE entries SET created_at = replace(created_at, 'Z', '+00:00') WHERE seq BETWEEN 10 AND 20;
         UPDATE entries SET actor_id = 'someone-else' WHERE seq = 15;",
    );
    let reader = CountingReader::open(&fixture.db, false);
    let report = reader.verify();
    assert_tampered(&report, Some(4), "entry 15 was changed");
    let text = problem_text(&report);
    assert_eq!(report.problem_count, 12, "{text}");
    assert_eq!(text.matches("was rewritten").count(), 11, "{text}");
    assert_eq!((reader.reads.get(), reader.reread.get()), (1, 17));
}

#[test]
fn an_edit_with_every_hash_recomputed_is_found_by_the_signed_heads() {
    let fixture = Fixture::new(100, 10);
    fixture.sql("UPDATE entries SET resource_id = 'other' WHERE seq = 37");
    // The forger rebuilds the whole tree from the edited rows, so every leaf and node agrees.
    let entries = crate::support::read_entries(&fixture.db);
    let leaves: Vec<_> = entries
        .iter()
        .map(|entry| merkle::leaf_hash(&entry.canonical_bytes()))
        .collect();
    let connection = Connection::open(&fixture.db).expect("open");
    connection
        .execute("DELETE FROM tree_nodes", [])
        .expect("clear");
    let mut frontier = merkle::Frontier::new();
    for leaf in leaves {
        for (level, index, hash) in frontier.append(leaf) {
            connection
                .execute(
                    "INSERT INTO tree_nodes (level, idx, hash) VALUES (?1, ?2, ?3)",
                    rusqlite::params![level, index as i64, &hash[..]],
                )
                .expect("insert");
        }
    }
    drop(connection);
    // Only the signed heads remember the old root: the edit is within the ten entries after the
    // last head that still matches.
    assert_tampered(&fixture.verify(), Some(31), "entries 31..=40 were changed");
}

#[test]
fn editing_an_unsealed_row_is_found() {
    let fixture = Fixture::new(100, 10);
    // The newest entries as they are between seals: in `recent`, not yet in `entries`.
    fixture.move_to_recent("seq > 90");
    let report = fixture.verify();
    assert!(report.ok(), "{}", problem_text(&report));
    assert_eq!(report.entries, 100);
    fixture.sql("UPDATE recent SET actor_id = 'someone-else' WHERE seq = 95");
    assert_tampered(&fixture.verify(), Some(95), "changed");
    // The same row kept in both tables is no way to hide the edit either.
    let columns = auditgate::store::sqlite::rows::ENTRY_COLUMNS;
    fixture.sql(&format!(
        "UPDATE recent SET actor_id = 'user-4' WHERE seq = 95;
         INSERT INTO entries ({columns}) SELECT {} FROM recent WHERE seq = 95;",
        columns.replacen("id,", "id || '-copy',", 1)
    ));
    // Positions 91..=95 of `recent` now lie below a sealed one, and 95 is in both tables.
    let report = fixture.verify();
    assert_tampered(&report, Some(91), "moved between the tables by hand");
    assert!(
        problem_text(&report).contains("two rows"),
        "{}",
        problem_text(&report)
    );
}

#[test]
fn a_row_moved_between_the_tables_is_found_and_listed_once_in_place() {
    let fixture = Fixture::new(2500, 500);
    // An old entry moved into `recent`, where only the newest unsealed ones belong: its content
    // and leaf are untouched, so only its place gives it away.
    fixture.move_to_recent("seq = 5");
    assert_tampered(
        &fixture.verify(),
        Some(5),
        "moved between the tables by hand",
    );
    // Listings (and so exports) still show every entry once, in order, both ways.
    let store = SqliteStore::open_read_only(&fixture.db).expect("opens");
    for order in [Order::Asc, Order::Desc] {
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .list(
                    &Filter::default(),
                    &PageRequest {
                        limit: 1000,
                        cursor,
                        order,
                        ..PageRequest::default()
                    },
                )
                .expect("lists");
            seen.extend(page.entries.iter().map(|entry| entry.seq));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let mut expected: Vec<u64> = (1..=2500).collect();
        if order == Order::Desc {
            expected.reverse();
        }
        assert_eq!(seen, expected, "{order:?}");
    }
}

#[test]
fn deleting_a_middle_row_is_found() {
    let fixture = Fixture::new(100, 10);
    fixture.sql("DELETE FROM entries WHERE seq = 50");
    assert_tampered(&fixture.verify(), Some(50), "entry 50 is missing");
}

#[test]
fn edits_on_every_page_of_a_long_log_are_found_in_order() {
    // Verify reads the log 4,096 positions at a time and hashes one page while reading the next:
    // an edit on each of three pages must be reported at its own position, in log order.
    let fixture = Fixture::new(10_000, 2_500);
    let untouched = fixture.verify();
    assert!(untouched.ok(), "{}", problem_text(&untouched));
    assert_eq!(untouched.entries, 10_000);
    fixture.sql(
        "UPDATE entries SET resource_id = 'elsewhere' WHERE seq = 4097;
         DELETE FROM entries WHERE seq = 9000;
         UPDATE entries SET action = 'user.read' WHERE seq = 12;",
    );
    let report = fixture.verify();
    assert_tampered(&report, Some(12), "entry 12 was changed");
    let text = problem_text(&report);
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("expected {needle:?} in:\n{text}"))
    };
    assert!(at("entry 12 was changed") < at("entry 4097 was changed"));
    assert!(at("entry 4097 was changed") < at("entry 9000 is missing"));
    assert_eq!(report.entries, 9_997, "{text}");
}

#[test]
fn swapping_two_rows_is_found() {
    let fixture = Fixture::new(100, 10);
    fixture.sql(
        "UPDATE entries SET seq = -1 WHERE seq = 20;
         UPDATE entries SET seq = 20 WHERE seq = 30;
         UPDATE entries SET seq = 30 WHERE seq = -1;",
    );
    let report = fixture.verify();
    assert_tampered(&report, Some(20), "entry 20 was changed");
    assert!(problem_text(&report).contains("entry 30 was changed"));
}

#[test]
fn deleting_the_tail_is_found() {
    let fixture = Fixture::new(100, 10);
    fixture.sql("DELETE FROM entries WHERE seq > 90");
    assert_tampered(&fixture.verify(), Some(91), "entry 91 is missing");
}

#[test]
fn cutting_the_tail_with_its_hashes_and_heads_is_found_by_the_heads_file() {
    let fixture = Fixture::new(100, 10);
    // A careful cut: the rows, every tree node over them and the stored heads that covered them.
    fixture.sql(
        "DELETE FROM entries WHERE seq > 90;
         DELETE FROM tree_nodes WHERE (idx + 1) * (1 << level) > 90;
         DELETE FROM tree_heads WHERE size > 90;",
    );
    let alone = fixture.verify_without_heads_file();
    assert!(
        alone.ok(),
        "the database is consistent with itself: {}",
        problem_text(&alone)
    );
    assert_eq!(alone.size, 90);
    assert_tampered(
        &fixture.verify(),
        Some(91),
        "covers 100 entries but the log has only 90",
    );
}

#[test]
fn restoring_an_older_copy_of_the_database_is_found_by_the_heads_file() {
    let mut fixture = Fixture::new(60, 10);
    let copy = fixture.dir.0.join("audit.db.bak");
    std::fs::copy(&fixture.db, &copy).expect("backup");
    fixture.extend(40, 10, chrono::Duration::zero());
    std::fs::copy(&copy, &fixture.db).expect("restore");
    let alone = fixture.verify_without_heads_file();
    assert!(alone.ok(), "{}", problem_text(&alone));
    assert_tampered(&fixture.verify(), Some(61), "restored from an older copy");
}

#[test]
fn a_forged_head_is_found() {
    let fixture = Fixture::new(50, 10);
    // Another key signs a head that does match the log: only the signature gives it away.
    let forger = LogSigner::generate();
    let store = SqliteStore::open(&fixture.db, SyncMode::Normal).expect("store");
    let tree = store.tree().expect("tree");
    let forged = forger
        .sign(TreeHead::new("tamper-test", tree.size, tree.root, chrono::Utc::now()).expect("head"))
        .expect("sign");
    store.save_head(&forged).expect("insert");
    drop(store);
    let without_key = verify_database(&fixture.db, None, &[]).expect("readable");
    assert!(without_key.ok(), "{}", problem_text(&without_key));
    assert_tampered(
        &fixture.verify_without_heads_file(),
        None,
        "is not validly signed",
    );

    // A real head with its size changed: bad signature, and a root that is not that size's.
    let fixture = Fixture::new(50, 10);
    let connection = Connection::open(&fixture.db).expect("open");
    let json: String = connection
        .query_row("SELECT head_json FROM tree_heads WHERE id = 2", [], |row| {
            row.get(0)
        })
        .expect("head");
    let mut head: Value = serde_json::from_str(&json).expect("json");
    head["size"] = Value::from(15);
    connection
        .execute(
            "UPDATE tree_heads SET head_json = ?1 WHERE id = 2",
            [head.to_string()],
        )
        .expect("forge");
    drop(connection);
    let report = fixture.verify_without_heads_file();
    assert_tampered(&report, Some(11), "bad signature");
    assert!(problem_text(&report).contains("does not match the log"));
}

#[test]
fn a_truncated_heads_file_is_found() {
    let fixture = Fixture::new(50, 10);
    let text = std::fs::read_to_string(&fixture.heads).expect("heads");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5);
    std::fs::write(&fixture.heads, lines[..3].join("\n") + "\n").expect("truncate");
    assert_tampered(&fixture.verify(), None, "is not in the heads file");

    // Cut in the middle of a line.
    std::fs::write(&fixture.heads, &text[..text.len() - 40]).expect("cut");
    assert_tampered(
        &fixture.verify(),
        None,
        "heads file line 5 is not a signed tree head",
    );
}

#[test]
fn a_pruned_log_still_verifies_and_its_kept_hashes_are_still_checked() {
    let fixture = Fixture::pruned(300, 20);
    let report = fixture.verify();
    assert!(report.ok(), "{}", problem_text(&report));
    assert_eq!((report.pruned, report.entries, report.size), (300, 21, 321));
    let remaining: i64 = Connection::open(&fixture.db)
        .expect("open")
        .query_row("SELECT count(*) FROM entries", [], |row| row.get(0))
        .expect("count");
    assert_eq!(remaining, 21, "the rows are really gone");

    // A kept leaf hash of a pruned entry, changed: its payload is gone, but the stored node of
    // the tile above it (level 8, entries 1..=256) and every head still commit to the original.
    fixture.sql(
        "CREATE TABLE kept_aside AS SELECT hash FROM tree_nodes WHERE level = 0 AND idx = 12;
         UPDATE tree_nodes SET hash = zeroblob(32) WHERE level = 0 AND idx = 12",
    );
    let report = fixture.verify();
    assert_tampered(
        &report,
        Some(11),
        "tree node over entries 1..=256 (level 8)",
    );
    assert!(
        problem_text(&report).contains("entries 11..=20 were changed, or the head was"),
        "{}",
        problem_text(&report)
    );
    // Beyond the last complete tile no node is stored: the heads alone commit to the leaf.
    fixture.sql(
        "UPDATE tree_nodes SET hash = (SELECT hash FROM kept_aside) WHERE level = 0 AND idx = 12;
         DROP TABLE kept_aside;
         UPDATE tree_nodes SET hash = zeroblob(32) WHERE level = 0 AND idx = 280",
    );
    let report = fixture.verify();
    assert_tampered(
        &report,
        Some(281),
        "entries 281..=290 were changed, or the head was",
    );
}

#[test]
fn a_deleted_row_passed_off_as_pruned_is_found() {
    let mut fixture = Fixture::new(0, 10);
    fixture.extend(20, 10, chrono::Duration::days(120));
    fixture.extend(20, 10, chrono::Duration::zero());
    let store = SqliteStore::open(&fixture.db, SyncMode::Normal).expect("store");
    let plan = PrunePlan {
        default_cutoff: Some(chrono::Utc::now() - chrono::Duration::days(90)),
        rules: Vec::new(),
    };
    prune_all(&store, &plan, "tamper-test", &PrunedBy::Retention, &|| true).expect("prunes");
    drop(store);
    assert!(fixture.verify().ok());
    fixture.sql(
        "DELETE FROM entries WHERE seq = 30;
         INSERT INTO pruned_entries (seq, prune_seq) VALUES (30, 41);",
    );
    assert_tampered(&fixture.verify(), Some(30), "but 21 positions are marked");
}

#[test]
fn the_binary_exits_0_intact_1_tampered_2_unreadable() {
    let fixture = Fixture::new(30, 10);
    let db = fixture.db.display().to_string();
    let heads = fixture.heads.display().to_string();
    let key = fixture.key.display().to_string();
    let (code, output) = fixture.binary(&["verify", "--db", &db, "--heads", &heads, "--key", &key]);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("intact"), "{output}");

    fixture.sql("UPDATE entries SET path = '/elsewhere' WHERE seq = 17");
    let (code, output) = fixture.binary(&["verify", "--db", &db, "--heads", &heads, "--key", &key]);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("first bad entry: 17"), "{output}");
    let (code, output) = fixture.binary(&["verify", "--db", &db, "--json"]);
    assert_eq!(code, 1, "{output}");
    let json: Value = serde_json::from_str(output.lines().next().unwrap_or("")).expect("json");
    assert_eq!(json["firstBadSeq"], 17);
    assert_eq!(json["ok"], false);

    let missing = fixture.dir.0.join("nope.db").display().to_string();
    let (code, output) = fixture.binary(&["verify", "--db", &missing]);
    assert_eq!(code, 2, "{output}");
    let garbage = fixture.dir.0.join("garbage.db");
    std::fs::write(&garbage, "this is not a database").expect("write");
    let (code, output) = fixture.binary(&["verify", "--db", &garbage.display().to_string()]);
    assert_eq!(code, 2, "{output}");
    let (code, output) = fixture.binary(&["verify", "--db", &db, "--key", &missing]);
    assert_eq!(code, 2, "{output}");
}

#[test]
fn an_export_with_proofs_verifies_offline_and_edits_to_it_do_not() {
    let fixture = Fixture::new(45, 10);
    let store = SqliteStore::open(&fixture.db, SyncMode::Normal).expect("store");
    let head = store.latest_head().expect("read").expect("head");
    let filter = Filter {
        action: Some("auth.login_failed".into()),
        ..Filter::default()
    };
    let export = fixture.dir.0.join("export.ndjson");
    let mut out = Vec::new();
    let written =
        auditgate::export::proofs::write_export_with_proofs(&store, &filter, &head, &mut out)
            .expect("export");
    assert_eq!(written, 15);
    std::fs::write(&export, &out).expect("write");
    let key = fixture.public_key();
    let report = verify_export(&export, std::slice::from_ref(&key)).expect("readable");
    assert!(report.ok(), "{}", problem_text(&report));
    assert_eq!(report.entries, 15);

    let (code, output) = fixture.binary(&[
        "verify-export",
        &export.display().to_string(),
        "--key",
        &fixture.key.display().to_string(),
    ]);
    assert_eq!(code, 0, "{output}");

    let text = String::from_utf8(out).expect("utf-8");
    let edited = text.replacen("\"actorId\":\"user-3\"", "\"actorId\":\"user-4\"", 1);
    assert_ne!(edited, text);
    std::fs::write(&export, &edited).expect("write");
    let report = verify_export(&export, std::slice::from_ref(&key)).expect("readable");
    assert_tampered(&report, Some(3), "entry 3 was changed");

    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(4);
    std::fs::write(&export, lines.join("\n") + "\n").expect("write");
    let report = verify_export(&export, std::slice::from_ref(&key)).expect("readable");
    assert_tampered(&report, None, "says it holds 15 entries but has 14");

    std::fs::write(&export, &text).expect("write");
    let other = LogSigner::generate().public_key();
    let report = verify_export(&export, &[other]).expect("readable");
    assert_tampered(&report, None, "the export's head is not validly signed");
}

// ---------------------------------------------------------------------------------------------
// A real sidecar signing and publishing heads.
// ---------------------------------------------------------------------------------------------

const RULES: &str = r#"
[unmatched]
record = "all"
"#;

/// A sidecar with a signing key and a heads file; `log_extra` and `rest` add to `[log]` and after.
async fn signing_sidecar(
    upstream: &Upstream,
    log_extra: &str,
    rest: &str,
) -> (TestSidecar, PathBuf, PathBuf) {
    signing_sidecar_with_urls(upstream, &[], log_extra, rest).await
}

/// [`signing_sidecar`] that also publishes to `urls`.
async fn signing_sidecar_with_urls(
    upstream: &Upstream,
    urls: &[String],
    log_extra: &str,
    rest: &str,
) -> (TestSidecar, PathBuf, PathBuf) {
    let dir = TempDir::new("signing");
    let key = dir.0.join("log.key");
    LogSigner::write_new(&key).expect("key");
    let heads = dir.0.join("heads.ndjson");
    let text = signing_config_text(upstream, &dir.0, urls, log_extra, rest);
    let public = public_key_path(&key);
    (TestSidecar::start_in(dir, |_| text).await, heads, public)
}

/// The config of [`signing_sidecar_with_urls`] for a sidecar whose files are in `dir`
/// (`audit.db`, `log.key`, `heads.ndjson`).
fn signing_config_text(
    upstream: &Upstream,
    dir: &Path,
    urls: &[String],
    log_extra: &str,
    rest: &str,
) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n{}\n\
         [store]\npath = \"{}\"\nflush_interval = \"1ms\"\n\n[log]\nlog_id = \"test\"\n\
         signing_key = \"{}\"\npublish_heads = [\"file:{}\"{}]\n{log_extra}\n\n{RULES}\n{rest}\n",
        upstream.addr,
        crate::support::TEST_TOKEN_CONFIG,
        dir.join("audit.db").display(),
        dir.join("log.key").display(),
        dir.join("heads.ndjson").display(),
        urls.iter().map(|url| format!(", \"{url}\"")).collect::<String>(),
    )
}

fn parse_config(text: &str, dir: &Path) -> Config {
    match Config::parse(text, dir) {
        Ok(config) => config,
        Err(errors) => panic!("test config invalid: {errors:?}\n{text}"),
    }
}

fn read_heads(path: &Path) -> Vec<SignedTreeHead> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Polls the heads file until `done` holds (bounded: 10 s).
async fn wait_heads(path: &Path, done: impl Fn(&[SignedTreeHead]) -> bool) -> Vec<SignedTreeHead> {
    let mut heads = Vec::new();
    let arrived = support::eventually(Duration::from_secs(10), async || {
        heads = read_heads(path);
        done(&heads)
    })
    .await;
    assert!(arrived, "heads file never got there: {heads:#?}");
    heads
}

#[tokio::test]
async fn a_sidecar_publishes_heads_heartbeats_and_a_shutdown_head() {
    let upstream = Upstream::start().await;
    let (mut sidecar, heads_file, key) = signing_sidecar(
        &upstream,
        "sign_every = 5\nsign_interval = \"100ms\"\nheartbeat_interval = \"200ms\"",
        "",
    )
    .await;
    let client = HttpClient::new();
    for index in 0..12 {
        let reply = client
            .send("POST", &sidecar.url(&format!("/things/{index}")), &[], "{}")
            .await;
        assert_eq!(reply.status, 200);
    }
    sidecar.wait_entries(12).await;
    // Heads every 5 entries or 100 ms: one soon covers the run's audit.started and all 12.
    wait_heads(&heads_file, |heads| {
        heads.iter().any(|head| head.head.size == 13)
    })
    .await;
    // Nothing happens: heartbeats keep coming, same size, later times.
    let heads = wait_heads(&heads_file, |heads| {
        heads.iter().filter(|head| head.head.size == 13).count() >= 3
    })
    .await;
    let quiet: Vec<_> = heads.iter().filter(|head| head.head.size == 13).collect();
    assert!(quiet
        .windows(2)
        .all(|pair| pair[0].head.timestamp < pair[1].head.timestamp));
    let verifier = LogVerifier::load(&key).expect("key");
    for head in &heads {
        verifier
            .verify(head)
            .expect("every published head is validly signed");
    }

    // The log endpoints, over the real admin socket.
    let admin = |path: &str| format!("http://{}{path}", sidecar.admin);
    let head: Value = client.get_admin(&admin("/api/v1/log/head")).await.json();
    assert_eq!(head["size"], 13);
    assert_eq!(head["logId"], "test");
    let proof = client.get_admin(&admin("/api/v1/entries/3/proof")).await;
    assert_eq!(proof.status, 200, "{}", proof.text());
    let proof = proof.json();
    let leaf = from_hex(proof["leafHash"].as_str().expect("hex")).expect("hash");
    let path: Vec<_> = proof["auditPath"]
        .as_array()
        .expect("path")
        .iter()
        .map(|hash| from_hex(hash.as_str().expect("hex")).expect("hash"))
        .collect();
    let root = from_hex(proof["head"]["rootHash"].as_str().expect("hex")).expect("hash");
    assert_eq!(proof["leafIndex"], 2);
    assert!(merkle::verify_inclusion(&leaf, 2, 13, &path, &root));
    sidecar.entries().await;
    let entries = crate::support::read_all_entries(&sidecar.db);
    assert_eq!(
        leaf,
        merkle::leaf_hash(&entries[2].canonical_bytes()),
        "the proof is of the stored entry"
    );
    let consistency: Value = client
        .get_admin(&admin("/api/v1/log/consistency?from=5&to=13"))
        .await
        .json();
    let proof: Vec<_> = consistency["proof"]
        .as_array()
        .expect("proof")
        .iter()
        .map(|hash| from_hex(hash.as_str().expect("hex")).expect("hash"))
        .collect();
    let from_root = from_hex(consistency["fromRoot"].as_str().expect("hex")).expect("hash");
    assert!(merkle::verify_consistency(5, 13, &from_root, &root, &proof));
    assert_eq!(
        client
            .get_admin(&admin("/api/v1/log/consistency?from=9&to=99"))
            .await
            .status,
        400
    );
    let public: Value = client.get_admin(&admin("/api/v1/log/key")).await.json();
    assert_eq!(public["keyId"], verifier.key_id());
    assert_eq!(
        client
            .get_admin(&admin("/api/v1/entries/999/proof"))
            .await
            .status,
        404
    );
    let verify: Value = client.get_admin(&admin("/api/v1/verify")).await.json();
    assert_eq!(verify["ok"], true, "{verify}");
    assert_eq!(verify["size"], 13);
    assert_eq!(verify["firstBadSeq"], Value::Null);

    // Tampering behind the running sidecar's back shows in a full check.
    Connection::open(&sidecar.db)
        .expect("open")
        // Whichever table holds it: sealed, or still in `recent`.
        .execute_batch(
            "UPDATE entries SET status = 201 WHERE seq = 4; UPDATE recent SET status = 201 WHERE seq = 4;",
        )
        .expect("tamper");
    let verify: Value = client
        .get_admin(&admin("/api/v1/verify?full=true"))
        .await
        .json();
    assert_eq!(verify["ok"], false, "{verify}");
    assert_eq!(verify["firstBadSeq"], 4);
    assert!(verify["problem"]
        .as_str()
        .unwrap_or("")
        .contains("entry 4 was changed"));
    Connection::open(&sidecar.db)
        .expect("open")
        // Whichever table holds it: sealed, or still in `recent`.
        .execute_batch(
            "UPDATE entries SET status = 200 WHERE seq = 4; UPDATE recent SET status = 200 WHERE seq = 4;",
        )
        .expect("undo");

    // So does a stats count made up behind its back, and the full check after the count is
    // removed again is intact (the counts of the live sidecar's own seals match their rows).
    let count_edit = |sql: &str| {
        Connection::open(&sidecar.db)
            .expect("open")
            .execute_batch(sql)
            .expect("edits the counts");
    };
    count_edit(
        "INSERT INTO entry_counts (hour, action, outcome, n) \
         VALUES ('2020-01-01T00', 'user.deleted', 'success', 7)",
    );
    let verify: Value = client
        .get_admin(&admin("/api/v1/verify?full=true"))
        .await
        .json();
    assert_eq!(verify["ok"], false, "{verify}");
    assert!(
        verify.to_string().contains("hold 7 entries of action"),
        "{verify}"
    );
    count_edit("DELETE FROM entry_counts WHERE hour = '2020-01-01T00'");
    let verify: Value = client
        .get_admin(&admin("/api/v1/verify?full=true"))
        .await
        .json();
    assert_eq!(verify["ok"], true, "{verify}");

    // Three more entries, then shutdown: the last head covers them all and the run's
    // audit.stopped.
    for index in 0..3 {
        client
            .send("DELETE", &sidecar.url(&format!("/things/{index}")), &[], "")
            .await;
    }
    sidecar.wait_entries(15).await;
    let before_stop = read_heads(&heads_file).len();
    sidecar.stop().await;
    let heads = read_heads(&heads_file);
    assert!(heads.len() > before_stop, "a shutdown head was published");
    assert_eq!(heads.last().map(|head| head.head.size), Some(17));
    let report = verify_database(&sidecar.db, Some(&heads_file), &[verifier]).expect("readable");
    assert!(report.ok(), "{}", problem_text(&report));
    assert_eq!(report.heads as usize, heads.len());
}

#[tokio::test]
async fn the_sidecar_prunes_in_the_background_and_the_log_still_verifies() {
    let upstream = Upstream::start().await;
    let (mut sidecar, heads_file, key) = signing_sidecar(
        &upstream,
        "sign_interval = \"100ms\"",
        "[retention]\nmax_age = \"2s\"\nprune_interval = \"100ms\"\n",
    )
    .await;
    let client = HttpClient::new();
    for index in 0..4 {
        client
            .send("PUT", &sidecar.url(&format!("/docs/{index}")), &[], "{}")
            .await;
    }
    // The leaf hashes of the run's audit.started and the four entries, computed here from the
    // entries as first stored (RFC 9162: SHA-256 of 0x00 and the entry's canonical bytes).
    sidecar.wait_entries(4).await;
    let originals = crate::support::read_all_entries(&sidecar.db);
    assert!(
        originals.len() == 5 && originals.iter().all(|entry| entry.action != "audit.pruned"),
        "pruned before the test could read the entries: {originals:#?}"
    );
    assert_eq!(originals[0].action, auditgate::server::lifecycle::STARTED);
    let original_leaves: Vec<[u8; 32]> = originals
        .iter()
        .map(|entry| oracle_hash(&[&[0x00], &entry.canonical_bytes()]))
        .collect();
    // After two seconds the five entries are due; prune records replace them (one, or more if
    // they fell due across two runs).
    let mut entries = Vec::new();
    let all_pruned = crate::support::eventually(Duration::from_secs(20), async || {
        entries = sidecar.entries().await;
        entries.iter().all(|entry| entry.action == "audit.pruned") && !entries.is_empty()
    })
    .await;
    assert!(all_pruned, "{entries:#?}");
    let pruned: u64 = entries
        .iter()
        .map(|record| record.metadata["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(pruned, 5, "{entries:#?}");
    assert_eq!(entries[0].seq, 6);
    assert_eq!(entries[0].metadata["firstSeq"], 1);
    let size = entries.last().map(|entry| entry.seq).unwrap_or(0);
    let admin = |path: &str| format!("http://{}{path}", sidecar.admin);
    wait_heads(&heads_file, |heads| {
        heads.iter().any(|head| head.head.size == size)
    })
    .await;
    let verifier = LogVerifier::load(&key).expect("key");
    let published: Vec<Value> = read_heads(&heads_file)
        .iter()
        .map(|head| serde_json::to_value(head).expect("head JSON"))
        .collect();
    // Each pruned entry's proof: its original leaf hash, included in a head that was signed
    // and published, by a check written here and not the product's.
    for (seq, original_leaf) in (1..=5u64).zip(&original_leaves) {
        let proof = client
            .get_admin(&admin(&format!("/api/v1/entries/{seq}/proof")))
            .await;
        assert_eq!(proof.status, 200, "{}", proof.text());
        let proof = proof.json();
        assert_eq!(proof["pruned"], true);
        // The prune record whose range holds the entry (the entries may fall due across runs).
        let record = entries
            .iter()
            .find(|record| {
                record.metadata["firstSeq"]
                    .as_u64()
                    .is_some_and(|first| first <= seq)
                    && record.metadata["lastSeq"]
                        .as_u64()
                        .is_some_and(|last| last >= seq)
            })
            .map(|record| record.seq);
        assert_eq!(proof["prunedBy"].as_u64(), record, "entry {seq}");
        let leaf = hex_hash(&proof["leafHash"]);
        assert_eq!(
            &leaf, original_leaf,
            "entry {seq}: the kept leaf hash is the original's"
        );
        let path: Vec<[u8; 32]> = proof["auditPath"]
            .as_array()
            .expect("auditPath")
            .iter()
            .map(hex_hash)
            .collect();
        let tree_size = proof["treeSize"].as_u64().expect("treeSize");
        assert_eq!(proof["head"]["size"].as_u64(), Some(tree_size));
        let root = oracle_root_from_inclusion(seq - 1, tree_size, leaf, &path)
            .unwrap_or_else(|| panic!("entry {seq}: a malformed proof {proof}"));
        assert_eq!(
            root,
            hex_hash(&proof["head"]["rootHash"]),
            "entry {seq}: the proof does not lead to the head's root"
        );
        assert!(
            published.contains(&proof["head"]),
            "entry {seq}: the head is not one that was published: {}",
            proof["head"]
        );
        let head: SignedTreeHead = serde_json::from_value(proof["head"].clone()).expect("head");
        verifier
            .verify(&head)
            .expect("the head's signature verifies");
    }
    let verify: Value = client.get_admin(&admin("/api/v1/verify")).await.json();
    assert_eq!(verify["ok"], true, "{verify}");
    sidecar.stop().await;
    let report = verify_database(&sidecar.db, Some(&heads_file), &[verifier]).expect("readable");
    assert!(report.ok(), "{}", problem_text(&report));
    assert_eq!(report.pruned, 5);
}

/// SHA-256 over the parts, one after the other.
fn oracle_hash(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn hex_hash(value: &Value) -> [u8; 32] {
    let bytes = hex::decode(value.as_str().expect("a hex string")).expect("hex");
    bytes.try_into().expect("32 bytes")
}

/// The root an inclusion proof leads to, by the algorithm of RFC 9162 section 2.1.3.2, written
/// here apart from the product's: `None` when the proof does not fit the index and size.
fn oracle_root_from_inclusion(
    index: u64,
    size: u64,
    leaf: [u8; 32],
    path: &[[u8; 32]],
) -> Option<[u8; 32]> {
    if index >= size {
        return None;
    }
    let (mut fnode, mut snode, mut root) = (index, size - 1, leaf);
    for sibling in path {
        if snode == 0 {
            return None;
        }
        if fnode & 1 == 1 || fnode == snode {
            root = oracle_hash(&[&[0x01], sibling, &root]);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            root = oracle_hash(&[&[0x01], &root, sibling]);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    (snode == 0).then_some(root)
}

#[test]
fn prune_from_the_command_line_records_itself() {
    let mut fixture = Fixture::new(0, 10);
    fixture.extend(10, 10, chrono::Duration::days(10));
    fixture.extend(5, 10, chrono::Duration::zero());
    let config = fixture.dir.0.join("auditgate.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nupstream = \"127.0.0.1:3000\"\n[store]\npath = \"{}\"\n[log]\nlog_id = \"tamper-test\"\n",
            fixture.db.display()
        ),
    )
    .expect("config");
    let config = config.display().to_string();
    let (code, output) = fixture.binary(&["prune", "--config", &config]);
    assert_eq!(code, 64, "no retention configured: {output}");
    // Counting changes nothing; deleting needs --yes.
    let (code, output) = fixture.binary(&[
        "prune",
        "--config",
        &config,
        "--older-than",
        "7d",
        "--dry-run",
    ]);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("10 entries are due for pruning (dry run: nothing was changed)"),
        "{output}"
    );
    let (code, output) = fixture.binary(&["prune", "--config", &config, "--older-than", "7d"]);
    assert_eq!(code, 64, "{output}");
    assert!(output.contains("would delete 10 entries"), "{output}");
    assert!(output.contains("--yes"), "{output}");
    assert_eq!(
        support::read_entries(&fixture.db).len(),
        15,
        "nothing was pruned without --yes"
    );
    let (code, output) =
        fixture.binary(&["prune", "--config", &config, "--older-than", "7d", "--yes"]);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("pruned 10 entries between 1 and 10; recorded as entry 16"),
        "{output}"
    );
    // The record names the operating-system user who ran the command.
    let record = support::read_entries(&fixture.db)
        .into_iter()
        .find(|entry| entry.action == "audit.pruned")
        .expect("an audit.pruned record");
    assert_eq!(record.actor_source.as_deref(), Some("cli"));
    assert_eq!(
        record.actor_id.as_deref(),
        Some(auditgate::base::os_user().as_str())
    );
    assert_ne!(record.actor_id.as_deref(), Some("cli"));
    // Nothing left to prune: no --yes needed for a no-op.
    let (code, output) = fixture.binary(&["prune", "--config", &config, "--older-than", "7d"]);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("0 entries are due for pruning"), "{output}");
    let store = SqliteStore::open(&fixture.db, SyncMode::Normal).expect("store");
    fixture.sign(&store);
    drop(store);
    let report = fixture.verify();
    assert!(report.ok(), "{}", problem_text(&report));
    assert_eq!(report.pruned, 10);
}

/// A stand-in for an operator's head collector: records POSTed bodies, refusing the first
/// `refuse` requests (and the next ones asked for with [`Collector::refuse_next`]) with 503; over
/// https when given a TLS acceptor.
struct Collector {
    addr: std::net::SocketAddr,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    refused: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Requests still to refuse.
    to_refuse: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Connections accepted (TLS handshakes attempted, for an https collector).
    connections: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Collector {
    async fn start(refuse: u64) -> Collector {
        Collector::start_with(refuse, None).await
    }

    async fn start_with(refuse: u64, tls: Option<tokio_rustls::TlsAcceptor>) -> Collector {
        use http_body_util::BodyExt;
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let to_refuse = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(refuse));
        let (task_bodies, task_refused, task_connections, task_to_refuse) = (
            bodies.clone(),
            refused.clone(),
            connections.clone(),
            to_refuse.clone(),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                task_connections.fetch_add(1, Ordering::SeqCst);
                let bodies = task_bodies.clone();
                let refused = task_refused.clone();
                let to_refuse = task_to_refuse.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let bodies = bodies.clone();
                            let refused = refused.clone();
                            let to_refuse = to_refuse.clone();
                            async move {
                                let body = request
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|body| body.to_bytes())
                                    .unwrap_or_default();
                                let refuse = to_refuse
                                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                                        left.checked_sub(1)
                                    })
                                    .is_ok();
                                let status = if refuse {
                                    refused.fetch_add(1, Ordering::SeqCst);
                                    503
                                } else {
                                    if let Ok(mut bodies) = bodies.lock() {
                                        bodies.push(String::from_utf8_lossy(&body).into_owned());
                                    }
                                    204
                                };
                                http::Response::builder()
                                    .status(status)
                                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                            }
                        },
                    );
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Collector {
            addr,
            bodies,
            refused,
            to_refuse,
            connections,
        }
    }

    /// Refuses the next `count` requests.
    fn refuse_next(&self, count: u64) {
        self.to_refuse
            .store(count, std::sync::atomic::Ordering::SeqCst);
    }

    fn heads(&self) -> Vec<SignedTreeHead> {
        self.bodies
            .lock()
            .map(|bodies| {
                bodies
                    .iter()
                    .filter_map(|body| serde_json::from_str(body).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[tokio::test]
async fn heads_are_posted_to_a_url_and_a_refused_one_is_retried_with_the_next() {
    let upstream = Upstream::start().await;
    let collector = Collector::start(1).await;
    let (mut sidecar, heads_file, _key) = signing_sidecar_with_urls(
        &upstream,
        &[format!("http://{}/heads", collector.addr)],
        "sign_interval = \"50ms\"",
        "",
    )
    .await;
    let client = HttpClient::new();
    client.send("POST", &sidecar.url("/a"), &[], "{}").await;
    sidecar.wait_entries(1).await;
    // The head of the first request (after the run's audit.started) must exist before the
    // second request, so that a later head carries the refused POST's head again.
    wait_heads(&heads_file, |heads| {
        heads.iter().any(|head| head.head.size == 2)
    })
    .await;
    client.send("POST", &sidecar.url("/b"), &[], "{}").await;
    sidecar.wait_entries(2).await;
    sidecar.stop().await;
    let file = read_heads(&heads_file);
    let posted = collector.heads();
    assert_eq!(
        collector.refused.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the first POST was refused"
    );
    // Every head reached the URL, the refused one included, in order.
    assert_eq!(posted, file, "the URL saw exactly the heads the file has");
    // The shutdown head: two requests between the run's audit.started and audit.stopped.
    assert_eq!(posted.last().map(|head| head.head.size), Some(4));
}

#[tokio::test]
async fn a_refused_shutdown_head_is_retried_before_the_sidecar_stops() {
    use std::sync::atomic::Ordering;
    let upstream = Upstream::start().await;
    let collector = Collector::start(0).await;
    // No head is due between the one at start and the one at shutdown.
    let (mut sidecar, heads_file, _key) = signing_sidecar_with_urls(
        &upstream,
        &[format!("http://{}/heads", collector.addr)],
        "sign_interval = \"1h\"",
        "",
    )
    .await;
    assert!(
        crate::support::eventually(Duration::from_secs(10), async || {
            !collector.heads().is_empty()
        })
        .await,
        "the head at start reached the URL"
    );
    let client = HttpClient::new();
    client.send("POST", &sidecar.url("/a"), &[], "{}").await;
    sidecar.wait_entries(1).await;
    // The collector is briefly down when the shutdown head comes.
    collector.refuse_next(1);
    let stats = sidecar
        .sidecar
        .as_ref()
        .and_then(|running| running.signer_stats())
        .expect("a signer");
    sidecar.stop().await;
    assert_eq!(
        collector.refused.load(Ordering::SeqCst),
        1,
        "the shutdown head's first POST was refused"
    );
    let file = read_heads(&heads_file);
    // The request between the run's audit.started and audit.stopped.
    assert_eq!(file.last().map(|head| head.head.size), Some(3));
    assert_eq!(
        collector.heads(),
        file,
        "the URL got every head the file has, the shutdown head included"
    );
    assert_eq!(stats.publish_failures.get(), 1);
    assert_eq!(stats.publish_dropped.get(), 0);
}

#[tokio::test]
async fn a_collector_down_at_shutdown_costs_a_bounded_wait_and_is_reported() {
    use std::sync::atomic::Ordering;
    let upstream = Upstream::start().await;
    // Refuses every POST (503 at once) ...
    let refusing = Collector::start(u64::MAX).await;
    // ... and accepts connections but never answers: each attempt runs into publish_timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let holder = held.clone();
    let accepting = tokio::spawn(async move {
        while let Ok((stream, _)) = silent.accept().await {
            if let Ok(mut streams) = holder.lock() {
                streams.push(stream);
            }
        }
    });
    let (mut sidecar, heads_file, _key) = signing_sidecar_with_urls(
        &upstream,
        &[
            format!("http://{}/heads", refusing.addr),
            format!("http://{silent_addr}/heads"),
        ],
        "sign_interval = \"1h\"\npublish_timeout = \"300ms\"",
        "",
    )
    .await;
    let client = HttpClient::new();
    client.send("POST", &sidecar.url("/a"), &[], "{}").await;
    sidecar.wait_entries(1).await;
    // The head at start is signed (a stop before its first tick would skip it).
    wait_heads(&heads_file, |heads| !heads.is_empty()).await;
    let stats = sidecar
        .sidecar
        .as_ref()
        .and_then(|running| running.signer_stats())
        .expect("a signer");
    // The budget is twice publish_timeout plus a second (1.6 s), and a backstop of half a
    // second after it. The bound here only tells a bounded wait from an unbounded one (the
    // silent collector never answers); the counters below say what the budget did.
    tokio::time::timeout(Duration::from_secs(60), sidecar.stop())
        .await
        .expect("shutdown waits a bounded time for a collector that never answers");
    accepting.abort();
    let file = read_heads(&heads_file);
    assert!(
        file.len() >= 2,
        "the start and shutdown heads are in the file"
    );
    assert!(refusing.heads().is_empty());
    assert!(
        refusing.refused.load(Ordering::SeqCst) > file.len() as u64,
        "the shutdown head was tried again: {} POSTs",
        refusing.refused.load(Ordering::SeqCst)
    );
    // Every head is given up on for each of the two URLs, and said so.
    assert_eq!(stats.publish_dropped.get(), 2 * file.len() as u64);
    assert!(stats.publish_failures.get() >= 2 * file.len() as u64);
    assert_eq!(
        stats.heads_published.get(),
        file.len() as u64,
        "the file only"
    );
}

#[tokio::test]
async fn heads_are_posted_over_https_to_a_server_the_ca_file_trusts_and_no_other() {
    let certificates = TempDir::new("heads-https");
    let (ca, acceptor) = crate::support::https_identity(&certificates.0);
    let upstream = Upstream::start().await;
    let collector = Collector::start_with(1, Some(acceptor.clone())).await;
    let url = format!("https://127.0.0.1:{}/heads", collector.addr.port());
    let (mut sidecar, heads_file, _key) = signing_sidecar_with_urls(
        &upstream,
        std::slice::from_ref(&url),
        &format!(
            "sign_interval = \"50ms\"\npublish_ca_file = \"{}\"",
            ca.display()
        ),
        "",
    )
    .await;
    let client = HttpClient::new();
    client.send("POST", &sidecar.url("/a"), &[], "{}").await;
    sidecar.wait_entries(1).await;
    client.send("POST", &sidecar.url("/b"), &[], "{}").await;
    sidecar.wait_entries(2).await;
    sidecar.stop().await;
    let file = read_heads(&heads_file);
    assert_eq!(
        collector.refused.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the first POST was refused"
    );
    // Over https too, every head arrives, the refused one included, in order.
    assert_eq!(
        collector.heads(),
        file,
        "the URL saw exactly the heads the file has"
    );
    // The shutdown head: two requests between the run's audit.started and audit.stopped.
    assert_eq!(file.last().map(|head| head.head.size), Some(4));

    // Without the CA file the collector's certificate is not trusted (the system's CAs did not
    // sign it): nothing is delivered, each head counts as a failed delivery and is tried again
    // with the next, and the file target is unaffected.
    let untrusted = Collector::start_with(0, Some(acceptor)).await;
    let url = format!("https://127.0.0.1:{}/heads", untrusted.addr.port());
    let (mut sidecar, heads_file, _key) = signing_sidecar_with_urls(
        &upstream,
        std::slice::from_ref(&url),
        "sign_interval = \"50ms\"",
        "",
    )
    .await;
    client.send("POST", &sidecar.url("/a"), &[], "{}").await;
    sidecar.wait_entries(1).await;
    client.send("POST", &sidecar.url("/b"), &[], "{}").await;
    sidecar.wait_entries(2).await;
    let metrics_url = format!("http://{}/metrics", sidecar.admin);
    let mut metrics = String::new();
    let mut more = 0;
    assert!(
        crate::support::eventually(Duration::from_secs(10), async || {
            metrics = client.get(&metrics_url).await.text();
            let failed = support::metric_count(&metrics, "auditgate_head_publish_failures_total")
                .is_some_and(|failures| failures >= 2);
            // A loaded machine can commit both requests before the signer's next tick, so that
            // one head covers them: another request makes the log grow, and the next head.
            if !failed {
                more += 1;
                client
                    .send("POST", &sidecar.url(&format!("/more/{more}")), &[], "{}")
                    .await;
            }
            failed
        })
        .await,
        "{metrics}"
    );
    sidecar.stop().await;
    assert!(
        untrusted.heads().is_empty(),
        "an untrusted server got heads"
    );
    assert!(
        untrusted
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2,
        "every head tried the URL again"
    );
    assert!(
        read_heads(&heads_file).len() >= 2,
        "the file still has every head"
    );
}

#[tokio::test]
async fn a_sidecar_will_not_extend_a_log_changed_behind_its_back() {
    let upstream = Upstream::start().await;
    let fixture = Fixture::new(5, 5);
    fixture.sql(
        "INSERT INTO entries (seq, id, log_id, created_at, action, outcome) \
         VALUES (6, 'X', 't', '2026-01-01T00:00:00.000000Z', 'forged', 'success')",
    );
    let text = crate::support::config_text(upstream.addr, &fixture.db, "", "");
    let config = Config::parse(&text, &fixture.dir.0).expect("config");
    let error = match Sidecar::start(config, None).await {
        Ok(_) => panic!("started on a log it cannot extend"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("entries 6..=6 are not in the Merkle tree"),
        "{error}"
    );
}

#[test]
fn a_stray_row_far_beyond_the_log_does_not_stall_verify() {
    let fixture = Fixture::new(20, 10);
    fixture
        .sql("INSERT INTO tree_nodes (level, idx, hash) VALUES (0, 1000000000000, zeroblob(32))");
    // A walk towards position 10^12 would not end: verify on a thread, with a bound that only
    // tells "stopped" from "still walking".
    let (db, heads, key) = (
        fixture.db.clone(),
        fixture.heads.clone(),
        fixture.public_key(),
    );
    // On one thread and on several (the walk reads whole pages of empty positions either way).
    for threads in [1, 3] {
        let (db, heads, key) = (db.clone(), heads.clone(), key.clone());
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender
                .send(verify_database_on(&db, Some(&heads), &[key], threads).expect("readable"));
        });
        let report = receiver
            .recv_timeout(Duration::from_secs(120))
            .expect("verify stops at the gap instead of walking to the stray row");
        assert_tampered(
            &report,
            Some(21),
            "position 21 has neither an entry nor a leaf hash",
        );
        assert!(report.size < 10_000, "the walk stopped: {}", report.size);
    }
}

#[test]
fn a_walk_on_several_threads_reports_what_the_walk_on_one_does() {
    // Six pages of 4,096 positions, heads signed along the way, a retention prune (the pruned
    // positions, their record and its claim checked across pages), then edits on pages that
    // different threads read: `auditgate verify` on one thread and on two, three and four must
    // report the same, problem for problem.
    let mut fixture = Fixture::new(0, 10);
    fixture.extend(9_000, 3_000, chrono::Duration::days(120));
    fixture.extend(12_000, 3_000, chrono::Duration::zero());
    let store = SqliteStore::open(&fixture.db, SyncMode::Normal).expect("store");
    let plan = PrunePlan {
        default_cutoff: Some(chrono::Utc::now() - chrono::Duration::days(90)),
        rules: Vec::new(),
    };
    let summary =
        prune_all(&store, &plan, "tamper-test", &PrunedBy::Retention, &|| true).expect("prunes");
    assert_eq!(summary.entries(), 9_000);
    fixture.size += 1;
    fixture.sign(&store);
    fixture.extend(100, 100, chrono::Duration::zero());
    drop(store);
    let verify = |threads: usize| {
        verify_database_on(
            &fixture.db,
            Some(&fixture.heads),
            &[fixture.public_key()],
            threads,
        )
        .expect("readable")
    };
    for threads in [1, 2, 4] {
        let report = verify(threads);
        assert!(report.ok(), "{threads}: {}", problem_text(&report));
        assert_eq!((report.entries, report.pruned), (12_101, 9_000));
    }
    fixture.sql(
        "UPDATE entries SET action = 'user.read' WHERE seq = 9050;
         DELETE FROM entries WHERE seq = 13000;
         UPDATE entries SET resource_id = 'elsewhere' WHERE seq = 17000;
         DELETE FROM entries WHERE seq = 21050;",
    );
    let one = verify(1);
    let text = problem_text(&one);
    assert_tampered(&one, Some(9050), "entry 9050 was changed");
    for needle in [
        "entry 13000 is missing",
        "entry 17000 was changed",
        "entry 21050 is missing",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    for threads in [2, 3, 4] {
        let report = verify(threads);
        assert_eq!(problem_text(&report), text, "{threads} threads");
        assert_eq!(
            (report.size, report.entries, report.pruned, report.heads),
            (one.size, one.entries, one.pruned, one.heads),
            "{threads} threads"
        );
    }
}

/// Copies a stopped sidecar's database (with any WAL) to `to`, or back from it.
fn copy_database(from: &Path, to: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let source = PathBuf::from(format!("{}{suffix}", from.display()));
        let target = PathBuf::from(format!("{}{suffix}", to.display()));
        let _ = std::fs::remove_file(&target);
        if source.exists() {
            std::fs::copy(&source, &target).expect("copy database");
        }
    }
}

/// Sends `count` requests through a sidecar and waits for their entries and a head covering them.
async fn traffic(sidecar: &TestSidecar, heads: &Path, count: usize) {
    let before = sidecar.entries().await.len();
    for index in 0..count {
        HttpClient::new()
            .get(&sidecar.url(&format!("/traffic/{index}")))
            .await;
    }
    sidecar.wait_entries(before + count).await;
    // The tree holds the sidecar's own records too.
    let size = crate::support::read_all_entries(&sidecar.db).len() as u64;
    wait_heads(heads, |heads| {
        heads.iter().any(|head| head.head.size >= size)
    })
    .await;
}

/// Every size in a heads file has one root: the published log was never forked.
fn assert_never_forked(heads: &[SignedTreeHead]) {
    let mut roots = std::collections::BTreeMap::new();
    for head in heads {
        let root = roots.entry(head.head.size).or_insert(head.head.root_hash);
        assert_eq!(
            *root, head.head.root_hash,
            "two heads of size {} with different roots",
            head.head.size
        );
    }
}

#[tokio::test]
async fn a_database_restored_from_an_older_copy_is_refused_at_start() {
    let upstream = Upstream::start().await;
    let (mut sidecar, heads, key) =
        signing_sidecar(&upstream, "sign_every = 2\nsign_interval = \"50ms\"", "").await;
    let dir = sidecar.dir.0.clone();
    let text = signing_config_text(
        &upstream,
        &dir,
        &[],
        "sign_every = 2\nsign_interval = \"50ms\"",
        "",
    );
    traffic(&sidecar, &heads, 4).await;
    sidecar.stop().await;
    let older = dir.join("older.db");
    copy_database(&sidecar.db, &older);

    // The log goes on past the copy.
    sidecar.restart(&text).await;
    traffic(&sidecar, &heads, 4).await;
    sidecar.stop().await;
    let published = read_heads(&heads);
    let newest = published
        .iter()
        .map(|head| head.head.size)
        .max()
        .expect("heads");
    // Two runs of four requests, each with its audit.started and audit.stopped.
    assert_eq!(newest, 12, "{published:#?}");

    // The older copy is put back: the sidecar refuses it, and names the file and both sizes.
    copy_database(&older, &sidecar.db);
    let restored = read_entries_count(&sidecar.db);
    assert_eq!(
        restored, 6,
        "the first run: four requests, its start and its stop"
    );
    assert!(restored < newest, "{restored} < {newest}");
    let error = match Sidecar::start(parse_config(&text, &dir), None).await {
        Ok(_) => panic!("started on a store behind its published heads"),
        Err(error) => format!("{error:#}"),
    };
    for needle in [
        heads.display().to_string(),
        format!("(size {newest},"),
        format!("the store holds only {restored} entries"),
        "rolled back".to_string(),
    ] {
        assert!(error.contains(&needle), "{needle:?} not in: {error}");
    }
    assert_eq!(read_heads(&heads), published, "no head was written");

    // The binary exits non-zero with the same message, and `verify` calls the store tampered.
    let config_path = dir.join("auditgate.toml");
    std::fs::write(&config_path, &text).expect("config");
    let output = Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(["run", "--config"])
        .arg(&config_path)
        .env("AUDITGATE_LOG", "error")
        .output()
        .expect("runs");
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains("rolled back") && said.contains(&heads.display().to_string()),
        "{said}"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(["verify", "--db"])
        .arg(&sidecar.db)
        .arg("--heads")
        .arg(&heads)
        .arg("--key")
        .arg(&key)
        .output()
        .expect("runs");
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(
        said.contains("TAMPERED") && said.contains("restored from an older copy"),
        "{said}"
    );

    // The same size with other entries: another root for a size already published.
    {
        let store = SqliteStore::open(&sidecar.db, SyncMode::Normal).expect("store");
        let mut batch: Vec<AuditEntry> = (restored + 1..=newest)
            .map(|seq| sample_entry(seq, chrono::Duration::zero()))
            .collect();
        store.append(&mut batch).expect("append");
    }
    let error = match Sidecar::start(parse_config(&text, &dir), None).await {
        Ok(_) => panic!("started on a store that forks its published heads"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains(&format!("give another root at size {newest}")),
        "{error}"
    );
    assert_eq!(read_heads(&heads), published, "no head was written");
    assert_never_forked(&read_heads(&heads));
}

/// How many entries the store holds, the sidecar's own records included: the size of its tree.
fn read_entries_count(db: &Path) -> u64 {
    crate::support::read_all_entries(db).len() as u64
}

#[tokio::test]
async fn fresh_stores_and_stores_ahead_of_their_heads_file_start() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("fresh");
    LogSigner::write_new(&dir.0.join("log.key")).expect("key");
    let heads = dir.0.join("heads.ndjson");
    std::fs::write(&heads, "").expect("empty heads file");
    let text = signing_config_text(
        &upstream,
        &dir.0,
        &[],
        "sign_every = 2\nsign_interval = \"50ms\"",
        "",
    );
    // A fresh store with an empty heads file starts.
    let mut sidecar = TestSidecar::start_in(dir, |_| text.clone()).await;
    traffic(&sidecar, &heads, 4).await;
    sidecar.stop().await;
    // The heads file lost its newer lines (the store is ahead of it): still the same log.
    let published = std::fs::read_to_string(&heads).expect("heads");
    let first: String = published
        .lines()
        .take(1)
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&heads, first).expect("cut");
    // A store ahead of its heads file starts.
    sidecar.restart(&text).await;
    sidecar.stop().await;
    assert_never_forked(&read_heads(&heads));
}

#[tokio::test]
async fn the_verify_endpoint_reports_a_store_behind_its_published_heads() {
    let upstream = Upstream::start().await;
    let (sidecar, heads, _) =
        signing_sidecar(&upstream, "sign_every = 2\nsign_interval = \"50ms\"", "").await;
    traffic(&sidecar, &heads, 2).await;
    let client = HttpClient::new();
    let url = format!("http://{}/api/v1/verify", sidecar.admin);
    let report = client.get_admin(&url).await.json();
    assert_eq!(report["ok"], true, "{report}");
    // A head of this log, validly signed, that the store does not reach: what the heads file
    // holds after the store under a running sidecar was swapped for an older copy.
    let size = sidecar.entries().await.len() as u64;
    let signer = LogSigner::load(&sidecar.dir.0.join("log.key")).expect("key");
    let ahead = signer
        .sign(TreeHead::new("test", size + 50, [7; 32], chrono::Utc::now()).expect("head"))
        .expect("sign");
    auditgate::signer::append_lines(
        &heads,
        &[serde_json::to_string(&ahead).expect("json")].into(),
    )
    .expect("append");
    for mode in ["", "?full=true"] {
        let report = client.get_admin(&format!("{url}{mode}")).await.json();
        assert_eq!(report["ok"], false, "{mode}: {report}");
        let text = report["problems"].to_string();
        assert!(
            text.contains("rolled back") && text.contains(&format!("(size {},", size + 50)),
            "{mode}: {text}"
        );
    }
}

/// Writes `lines` as an export file and verifies it with `key`; panics unless every needle is
/// in the problems (or, with no needles, unless it is intact).
fn verify_lines(path: &Path, lines: &[String], key: &LogVerifier, needles: &[&str]) {
    std::fs::write(path, lines.join("\n") + "\n").expect("write export");
    let report = verify_export(path, std::slice::from_ref(key)).expect("readable");
    let text = problem_text(&report);
    if needles.is_empty() {
        assert!(report.ok(), "{text}");
    } else {
        assert!(!report.ok(), "expected {needles:?}, the export verified");
        for needle in needles {
            assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
        }
    }
}

#[test]
fn an_export_with_proofs_holds_exactly_its_lines() {
    let fixture = Fixture::new(45, 10);
    let store = SqliteStore::open(&fixture.db, SyncMode::Normal).expect("store");
    let head = store.latest_head().expect("read").expect("head");
    let signer = std::sync::Arc::new(LogSigner::load(&fixture.dir.0.join("log.key")).expect("key"));
    let export = |filter: &Filter| -> Vec<String> {
        let mut out = Vec::new();
        auditgate::export::proofs::write_signed_export_with_proofs(
            &store,
            filter,
            &head,
            signer.clone(),
            &mut out,
        )
        .expect("export");
        String::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(str::to_string)
            .collect()
    };
    let failed = Filter {
        action: Some("auth.login_failed".into()),
        ..Filter::default()
    };
    let lines = export(&failed);
    assert_eq!(lines.len(), 16, "15 entries and the trailer");
    let trailer: Value = serde_json::from_str(&lines[15]).expect("trailer");
    assert_eq!(
        (
            trailer["entries"].as_u64(),
            trailer["firstSeq"].as_u64(),
            trailer["lastSeq"].as_u64()
        ),
        (Some(15), Some(3), Some(45))
    );
    assert!(trailer["signature"].is_string(), "{trailer}");
    let key = fixture.public_key();
    let path = fixture.dir.0.join("export.ndjson");
    verify_lines(&path, &lines, &key, &[]);
    let (code, output) = fixture.binary(&[
        "verify-export",
        &path.display().to_string(),
        "--key",
        &fixture.key.display().to_string(),
    ]);
    assert_eq!(code, 0, "{output}");

    // A middle line deleted.
    let mut deleted = lines.clone();
    deleted.remove(7);
    verify_lines(
        &path,
        &deleted,
        &key,
        &["says it holds 15 entries but has 14", "manifest digest"],
    );
    // A line repeated.
    let mut repeated = lines.clone();
    repeated.insert(5, lines[4].clone());
    verify_lines(&path, &repeated, &key, &["line 6: entry 15 appears twice"]);
    let (code, output) = fixture.binary(&[
        "verify-export",
        &path.display().to_string(),
        "--key",
        &fixture.key.display().to_string(),
    ]);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("appears twice"), "{output}");
    // Two lines swapped.
    let mut swapped = lines.clone();
    swapped.swap(2, 3);
    verify_lines(
        &path,
        &swapped,
        &key,
        &["line 4: entry 9 comes after entry 12: lines were reordered"],
    );
    // A line that is not an entry.
    let mut unknown = lines.clone();
    unknown.insert(3, r#"{"note":"added by hand"}"#.to_string());
    verify_lines(
        &path,
        &unknown,
        &key,
        &["line 4: not an entry of this export"],
    );
    // The tail cut: the trailer is gone.
    verify_lines(&path, &lines[..12], &key, &["the export was cut short"]);
    // The last entries cut, the trailer kept.
    let mut cut = lines[..13].to_vec();
    cut.push(lines[15].clone());
    verify_lines(
        &path,
        &cut,
        &key,
        &[
            "says it holds 15 entries but has 13",
            "says entries 3..=45, but its lines hold entries 3..=39",
        ],
    );

    // A real entry of the log, with a valid proof, added in its place and the manifest fixed up
    // to match: only the manifest's signature gives it away.
    let everything = export(&Filter::default());
    let extra = everything[3].clone(); // seq 4, not a failed login
    let mut added: Vec<String> = lines[..1].to_vec();
    added.push(extra);
    added.extend(lines[1..15].iter().cloned());
    let mut digest = <sha2::Sha256 as sha2::Digest>::new();
    for line in &added {
        let entry: Value = serde_json::from_str(line).expect("entry");
        sha2::Digest::update(
            &mut digest,
            entry["seq"].as_u64().expect("seq").to_be_bytes(),
        );
        sha2::Digest::update(
            &mut digest,
            from_hex(entry["leafHash"].as_str().expect("leaf")).expect("hex"),
        );
    }
    let mut forged = trailer.clone();
    forged["entries"] = Value::from(16);
    forged["digest"] = Value::from(merkle::to_hex(&sha2::Digest::finalize(digest).into()));
    added.push(forged.to_string());
    verify_lines(
        &path,
        &added,
        &key,
        &["manifest (count, seq range, digest) is not validly signed"],
    );
    let text = problem_text(&verify_export(&path, std::slice::from_ref(&key)).expect("readable"));
    assert!(
        !text.contains("manifest digest") && !text.contains("says it holds"),
        "the forged count and digest match the lines; only the signature may object:\n{text}"
    );
}
