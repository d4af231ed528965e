//! Day-two operations through the real binary: backups and restores, read commands that never
//! change a file, offline verification, configuration the ops way, exit codes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::support::{auditgate, path_arg};
use crate::support::{eventually, write_config, HttpClient, Process, TempDir, Upstream};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The rules of every sidecar here: every request recorded (`[unmatched] record = "all"`), and
/// deletions of users by name.
const RULES: &str = "[unmatched]\nrecord = \"all\"\n[[rule]]\nname = \"delete user\"\nmethod = \"DELETE\"\npath = \"/api/users/{id}\"\naction = \"user.deleted\"\nresource = { type = \"user\", id = \"{id}\" }\n";

fn verify(db: &Path) -> (i32, String) {
    let output = auditgate(&["verify", "--db", path_arg(db)]);
    (
        output.status.code().unwrap_or(-1),
        format!("{}{}", text(&output.stdout), text(&output.stderr)),
    )
}

/// What a file is: its bytes and modification time, or `None` when it does not exist.
fn snapshot(path: &Path) -> Option<(Vec<u8>, SystemTime)> {
    let bytes = std::fs::read(path).ok()?;
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    Some((bytes, modified))
}

fn side_files(db: &Path) -> Vec<PathBuf> {
    ["-wal", "-shm", "-journal"]
        .iter()
        .map(|suffix| {
            let mut name = db.as_os_str().to_os_string();
            name.push(suffix);
            PathBuf::from(name)
        })
        .filter(|path| path.exists())
        .collect()
}

async fn send_deletes(client: &HttpClient, proxy: SocketAddr, ids: std::ops::Range<u32>) {
    for id in ids {
        let request_id = format!("req-{id}");
        let reply = client
            .send(
                "DELETE",
                &format!("http://{proxy}/api/users/{id}"),
                &[("x-request-id", &request_id)],
                "",
            )
            .await;
        assert_eq!(reply.status, 200);
    }
}

/// A clean stop checkpoints the WAL: the database file alone, copied as most people copy files,
/// holds the whole log and verifies intact against the published heads. (Before, a sidecar that
/// signed heads and served the admin API left the whole log in `audit.db-wal`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_clean_stop_a_plain_copy_of_the_database_file_is_the_whole_log() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("clean-stop-copy");
    let key = dir.0.join("log.key");
    let keygen = auditgate(&["keygen", "--out", path_arg(&key)]);
    assert!(keygen.status.success(), "{}", text(&keygen.stderr));
    let heads = dir.0.join("heads.ndjson");
    let config = write_config(&dir.0, upstream.addr, "", RULES);
    let signed = std::fs::read_to_string(&config).expect("read").replace(
        "[log]\n",
        &format!(
            "[log]\nsigning_key = \"{}\"\npublish_heads = [\"file:{}\"]\n",
            key.display(),
            heads.display()
        ),
    );
    std::fs::write(&config, signed).expect("write");
    let process = Process::start(&config);
    let client = HttpClient::new();
    send_deletes(&client, process.proxy, 0..40).await;
    let listed = client
        .get_admin(&format!("http://{}/api/v1/entries?limit=5", process.admin))
        .await;
    assert_eq!(listed.status, 200);
    process.signal("TERM");
    let status = tokio::task::spawn_blocking(move || process.wait())
        .await
        .expect("wait");
    assert!(status.success(), "{status:?}");

    let copies = TempDir::new("clean-stop-copy-target");
    let copy = copies.0.join("copy.db");
    std::fs::copy(dir.0.join("audit.db"), &copy).expect("copy");
    let mut public = key.as_os_str().to_os_string();
    public.push(".pub");
    let output = auditgate(&[
        "verify",
        "--db",
        path_arg(&copy),
        "--heads",
        path_arg(&heads),
        "--key",
        public.to_str().expect("utf-8"),
    ]);
    let report = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert!(report.contains("intact"), "{report}");
    let ids = client_request_ids(&copy);
    let expected: BTreeSet<String> = (0..40).map(|id| format!("req-{id}")).collect();
    assert_eq!(ids, expected, "every entry is in the copied file");
}

/// While running, the WAL is checkpointed on a schedule: the database file catches up with the
/// log without a stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_sidecar_checkpoints_its_wal_on_a_schedule() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("scheduled-checkpoint");
    let config = write_config(
        &dir.0,
        upstream.addr,
        "checkpoint_interval = \"100ms\"",
        RULES,
    );
    let process = Process::start(&config);
    let client = HttpClient::new();
    send_deletes(&client, process.proxy, 0..25).await;
    let db = dir.0.join("audit.db");
    let copies = TempDir::new("scheduled-checkpoint-target");
    let copy = copies.0.join("copy.db");
    let expected: BTreeSet<String> = (0..25).map(|id| format!("req-{id}")).collect();
    let caught_up = eventually(Duration::from_secs(10), async || {
        // The WAL is emptied by a TRUNCATE checkpoint; the file alone then holds the entries.
        if std::fs::copy(&db, &copy).is_err() {
            return false;
        }
        let output = auditgate(&[
            "query",
            "--db",
            path_arg(&copy),
            "--format",
            "json",
            "--limit",
            "1000",
            "--action",
            "user.deleted",
        ]);
        let count = text(&output.stdout).lines().count();
        output.status.success() && count == expected.len()
    })
    .await;
    assert!(caught_up, "the database file never caught up with the log");
    assert_eq!(client_request_ids(&copy), expected);
    process.stop();
}

/// `auditgate backup` under load: a real sidecar keeps answering requests from a bounded loop
/// while the copy is made; the copy verifies intact and holds every entry that was acknowledged
/// (answered and committed) before the backup started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_verifies_and_holds_every_acknowledged_entry() {
    const MAX_REQUESTS: u64 = 50_000;
    let upstream = Upstream::start().await;
    let dir = TempDir::new("backup-load");
    let config = write_config(&dir.0, upstream.addr, "", RULES);
    let process = Process::start(&config);
    let proxy = process.proxy;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for worker in 0..4u64 {
        let (stop, sent, answered) = (stop.clone(), sent.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            let client = HttpClient::new();
            let mut index = 0u64;
            while !stop.load(Ordering::Acquire)
                && sent.fetch_add(1, Ordering::AcqRel) < MAX_REQUESTS
            {
                let request_id = format!("load-{worker}-{index}");
                index += 1;
                let status = client
                    .try_send(
                        "DELETE",
                        &format!("http://{proxy}/api/users/{index}"),
                        &[("x-request-id", &request_id)],
                    )
                    .await;
                if status == Some(200) {
                    answered.lock().expect("lock").push(request_id);
                }
            }
        }));
    }
    // Let the log grow, then take the answered requests so far and wait until every one of them
    // is committed (the admin API lists it): those are the acknowledged entries.
    let grown = eventually(Duration::from_secs(30), async || {
        answered.lock().expect("lock").len() >= 1500
    })
    .await;
    assert!(grown, "the load loop did not get going");
    let acknowledged: BTreeSet<String> = answered.lock().expect("lock").iter().cloned().collect();
    let client = HttpClient::new();
    let admin = process.admin;
    let committed = eventually(Duration::from_secs(20), async || {
        let reply = client
            .get_admin(&format!(
                "http://{admin}/api/v1/export?format=ndjson&action=user.deleted"
            ))
            .await;
        let stored: BTreeSet<String> = reply
            .text()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter_map(|entry| {
                entry["metadata"]["_clientRequestId"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        acknowledged.is_subset(&stored)
    })
    .await;
    assert!(committed, "answered requests were not committed");

    let copies = TempDir::new("backup-load-target");
    let copy = copies.0.join("backup.db");
    let config_arg = config.clone();
    let copy_arg = copy.clone();
    let sent_before = sent.load(Ordering::Acquire);
    let output = tokio::task::spawn_blocking(move || {
        auditgate(&[
            "backup",
            "--config",
            path_arg(&config_arg),
            "--out",
            path_arg(&copy_arg),
        ])
    })
    .await
    .expect("backup task");
    let sent_after = sent.load(Ordering::Acquire);
    stop.store(true, Ordering::Release);
    for task in tasks {
        task.await.expect("load task");
    }
    assert!(
        output.status.success(),
        "{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    assert!(
        sent_after > sent_before && sent_after < MAX_REQUESTS,
        "the load ran during the backup ({sent_before} -> {sent_after})"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&copy).expect("copy").permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the backup is private to its owner: {mode:o}"
        );
    }
    assert!(side_files(&copy).is_empty(), "the backup is one file");

    let (code, report) = verify(&copy);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("intact"), "{report}");
    let in_copy = client_request_ids(&copy);
    let missing: Vec<&String> = acknowledged.difference(&in_copy).collect();
    assert!(
        missing.is_empty(),
        "acknowledged entries missing from the backup: {missing:?}"
    );

    // The live store is still whole, and has more than the copy.
    process.stop();
    let (code, report) = verify(&dir.0.join("audit.db"));
    assert_eq!(code, 0, "{report}");
}

/// The X-Request-Id each `user.deleted` entry of a database was sent with (auditgate keeps it apart
/// from its own id), exported with `auditgate export` (read-only).
fn client_request_ids(db: &Path) -> BTreeSet<String> {
    let output = auditgate(&[
        "export",
        "--db",
        path_arg(db),
        "--format",
        "ndjson",
        "--action",
        "user.deleted",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    text(&output.stdout)
        .lines()
        .map(|line| {
            let entry: Value = serde_json::from_str(line).expect("entry JSON");
            // The X-Request-Id the test sent, which auditgate keeps apart from its own id.
            entry["metadata"]["_clientRequestId"]
                .as_str()
                .expect("the client's request id")
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_refuses_to_overwrite_a_file_unless_forced() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("backup-force");
    let config = write_config(&dir.0, upstream.addr, "", RULES);
    let process = Process::start(&config);
    send_deletes(&HttpClient::new(), process.proxy, 0..3).await;
    process.stop();
    let db = dir.0.join("audit.db");
    let out = dir.0.join("existing.db");
    std::fs::write(&out, b"precious").expect("write");
    let refused = auditgate(&["backup", "--db", path_arg(&db), "--out", path_arg(&out)]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("--force"),
        "{}",
        text(&refused.stderr)
    );
    assert_eq!(std::fs::read(&out).expect("read"), b"precious");

    let onto_itself = auditgate(&[
        "backup",
        "--db",
        path_arg(&db),
        "--out",
        path_arg(&db),
        "--force",
    ]);
    assert_eq!(onto_itself.status.code(), Some(1));
    assert_eq!(verify(&db).0, 0, "the store is untouched");

    let forced = auditgate(&[
        "backup",
        "--db",
        path_arg(&db),
        "--out",
        path_arg(&out),
        "--force",
    ]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    // The three requests with the run's audit.started and audit.stopped.
    assert!(
        text(&forced.stdout).contains("5 entries, tree size 5"),
        "{}",
        text(&forced.stdout)
    );
    assert_eq!(client_request_ids(&out).len(), 3);
}

/// Read commands never create or change a file: a missing path, an empty file and a bare copy of
/// a running store's file (its entries still in the WAL) are errors that say so.
#[test]
fn read_commands_on_a_missing_or_empty_store_fail_and_change_nothing() {
    let dir = TempDir::new("read-only-commands");
    let missing = dir.0.join("missing.db");
    let empty = dir.0.join("empty.db");
    std::fs::write(&empty, b"").expect("write");
    // A store whose schema sits in its WAL, copied without the WAL: what `cp audit.db` of a
    // running sidecar gives.
    let live = dir.0.join("live.db");
    let bare_copy = dir.0.join("bare-copy.db");
    {
        let connection = rusqlite::Connection::open(&live).expect("open");
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .expect("wal");
        connection
            .pragma_update(None, "wal_autocheckpoint", 0)
            .expect("no checkpoint");
        connection
            .execute_batch(
                "CREATE TABLE entries (seq INTEGER PRIMARY KEY); PRAGMA user_version = 2;",
            )
            .expect("schema");
        std::fs::copy(&live, &bare_copy).expect("copy");
    }

    let missing_arg = path_arg(&missing);
    let never = dir.0.join("never.db");
    for (args, code) in [
        (vec!["query", "--db", missing_arg], 1),
        (vec!["export", "--db", missing_arg, "--format", "csv"], 1),
        (vec!["verify", "--db", missing_arg], 2),
        (
            vec!["backup", "--db", missing_arg, "--out", path_arg(&never)],
            1,
        ),
    ] {
        let output = auditgate(&args);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(
            stderr.contains("no audit log") && stderr.contains("no such file"),
            "{args:?}: {stderr}"
        );
        assert!(!missing.exists(), "{args:?} created the file");
        assert!(
            side_files(&missing).is_empty(),
            "{args:?} created side files"
        );
    }
    assert!(!never.exists());

    for db in [&empty, &bare_copy] {
        let before = snapshot(db);
        let db_arg = path_arg(db);
        for (args, code) in [
            (vec!["query", "--db", db_arg], 1),
            (vec!["export", "--db", db_arg, "--format", "ndjson"], 1),
            (vec!["verify", "--db", db_arg], 2),
        ] {
            let output = auditgate(&args);
            let stderr = text(&output.stderr);
            assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
            assert!(stderr.contains("no audit log"), "{args:?}: {stderr}");
            assert!(stderr.contains("auditgate backup"), "{args:?}: {stderr}");
            assert!(!text(&output.stdout).contains("entries"), "{args:?}");
            assert_eq!(snapshot(db), before, "{args:?} changed {}", db.display());
            assert!(side_files(db).is_empty(), "{args:?} created side files");
        }
    }

    // A -wal file beside a file with no log in it is named: it may be where the entries are.
    let mut wal = bare_copy.as_os_str().to_os_string();
    wal.push("-wal");
    std::fs::write(&wal, b"").expect("write");
    let output = auditgate(&["query", "--db", path_arg(&bare_copy)]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bare-copy.db-wal"), "{stderr}");
}

/// On a stopped store, the read commands read it without creating its -wal and -shm files or
/// touching the database file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_commands_leave_a_stopped_store_exactly_as_it_was() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("read-only-stopped");
    let config = write_config(&dir.0, upstream.addr, "", RULES);
    let process = Process::start(&config);
    send_deletes(&HttpClient::new(), process.proxy, 0..5).await;
    process.stop();
    let db = dir.0.join("audit.db");
    for side in side_files(&db) {
        std::fs::remove_file(side).expect("remove the emptied WAL");
    }
    let before = snapshot(&db);
    let backup = dir.0.join("copy.db");
    let db_arg = path_arg(&db);
    for args in [
        vec!["query", "--db", db_arg],
        vec!["export", "--db", db_arg, "--format", "csv"],
        vec!["verify", "--db", db_arg],
        vec!["backup", "--db", db_arg, "--out", path_arg(&backup)],
    ] {
        let output = auditgate(&args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            text(&output.stderr)
        );
        assert_eq!(snapshot(&db), before, "{args:?} changed the database");
        assert!(side_files(&db).is_empty(), "{args:?} created side files");
    }
    assert_eq!(client_request_ids(&db).len(), 5);
}

// ---------------------------------------------------------------------------------------------
// Offline verification: exports with proofs from the CLI and the admin API.
// ---------------------------------------------------------------------------------------------

/// A stopped store with 20 `user.deleted` entries and signed heads, and the key's public half.
async fn signed_store(label: &str) -> (TempDir, PathBuf, PathBuf) {
    let upstream = Upstream::start().await;
    let dir = TempDir::new(label);
    let key = dir.0.join("log.key");
    auditgate::log::head::LogSigner::write_new(&key).expect("key");
    let config = write_config(&dir.0, upstream.addr, "", RULES);
    let signed = std::fs::read_to_string(&config).expect("read").replace(
        "[log]\n",
        &format!(
            "[log]\nsigning_key = \"{}\"\nsign_every = 5\n",
            key.display()
        ),
    );
    std::fs::write(&config, signed).expect("write");
    let process = Process::start(&config);
    send_deletes(&HttpClient::new(), process.proxy, 0..20).await;
    process.stop();
    let db = dir.0.join("audit.db");
    (dir, db, auditgate::log::head::public_key_path(&key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_export_with_proofs_verifies_offline_and_a_plain_export_is_not_called_tampered() {
    let (dir, db, public) = signed_store("export-proofs").await;
    let db_arg = path_arg(&db);
    let proofs = dir.0.join("proofs.ndjson");
    let output = auditgate(&[
        "export",
        "--db",
        db_arg,
        "--format",
        "ndjson",
        "--proofs",
        "-o",
        path_arg(&proofs),
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("with proofs"),
        "{}",
        text(&output.stderr)
    );
    let exported = std::fs::read_to_string(&proofs).expect("read");
    let deleted = exported
        .lines()
        .filter(|line| line.contains("\"user.deleted\""))
        .count();
    assert_eq!(deleted, 20, "the shutdown head covers every entry");
    let verified = auditgate(&[
        "verify-export",
        path_arg(&proofs),
        "--key",
        path_arg(&public),
    ]);
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{}{}",
        text(&verified.stdout),
        text(&verified.stderr)
    );
    assert!(text(&verified.stdout).contains("intact"));
    let last_line = |file: &std::path::Path| -> serde_json::Value {
        let text = std::fs::read_to_string(file).expect("read");
        serde_json::from_str(text.lines().last().expect("a last line")).expect("json")
    };
    assert!(
        last_line(&proofs).get("signature").is_none(),
        "no key without --config"
    );
    // With --config the log's key signs the manifest.
    let signed = dir.0.join("signed.ndjson");
    let output = auditgate(&[
        "export",
        "--config",
        path_arg(&dir.0.join("auditgate.toml")),
        "--format",
        "ndjson",
        "--proofs",
        "-o",
        path_arg(&signed),
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(last_line(&signed)["signature"].is_string());
    let verified = auditgate(&[
        "verify-export",
        path_arg(&signed),
        "--key",
        path_arg(&public),
    ]);
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{}",
        text(&verified.stdout)
    );

    // A cut-off head line is tampering, not a missing proof.
    let cut: Vec<&str> = exported.lines().collect();
    let cut_file = dir.0.join("cut.ndjson");
    std::fs::write(&cut_file, cut[..cut.len() - 1].join("\n") + "\n").expect("write");
    let verified = auditgate(&[
        "verify-export",
        path_arg(&cut_file),
        "--key",
        path_arg(&public),
    ]);
    assert_eq!(
        verified.status.code(),
        Some(1),
        "{}",
        text(&verified.stdout)
    );

    // Exports without proofs: "no proofs", exit 2, never a false TAMPERED.
    for format in ["ndjson", "json", "csv"] {
        let plain = dir.0.join(format!("plain.{format}"));
        let output = auditgate(&[
            "export",
            "--db",
            db_arg,
            "--format",
            format,
            "-o",
            path_arg(&plain),
        ]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let verified = auditgate(&[
            "verify-export",
            path_arg(&plain),
            "--key",
            path_arg(&public),
        ]);
        let stderr = text(&verified.stderr);
        assert_eq!(verified.status.code(), Some(2), "{format}: {stderr}");
        assert!(
            stderr.contains("this export carries no proofs"),
            "{format}: {stderr}"
        );
        assert!(!text(&verified.stdout).contains("TAMPERED"), "{format}");
    }

    // Proofs are NDJSON only; a store without a signed head has none to give.
    let refused = auditgate(&["export", "--db", db_arg, "--format", "csv", "--proofs"]);
    assert_eq!(refused.status.code(), Some(64), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("--proofs"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_exports_with_proofs_that_verify_offline() {
    use crate::support::TestSidecar;
    let upstream = Upstream::start().await;
    let keys = TempDir::new("api-proofs-key");
    let key = keys.0.join("log.key");
    auditgate::log::head::LogSigner::write_new(&key).expect("key");
    let sidecar = TestSidecar::start(
        upstream.addr,
        &format!(
            "signing_key = \"{}\"\nsign_every = 10\nsign_interval = \"100ms\"\n[unmatched]\nrecord = \"all\"\n",
            key.display()
        ),
    )
    .await;
    let client = HttpClient::new();
    for id in 0..30 {
        client.get(&sidecar.url(&format!("/items/{id}"))).await;
    }
    sidecar.wait_entries(30).await;
    let admin = |path: &str| format!("http://{}{path}", sidecar.admin);
    let covered = eventually(Duration::from_secs(10), async || {
        let head = client.get_admin(&admin("/api/v1/log/head")).await.json();
        // Entry 1 is `audit.started`: the 30 requests are entries 2..=31.
        head["size"].as_u64().is_some_and(|size| size >= 31)
    })
    .await;
    assert!(covered, "no head covers the entries");

    let reply = client
        .get_admin(&admin(
            "/api/v1/export?format=ndjson&proofs=true&action_prefix=http.",
        ))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.headers["content-type"].to_str().expect("ascii"),
        "application/x-ndjson"
    );
    let body = reply.text();
    assert_eq!(body.lines().count(), 31, "30 entries and the head: {body}");
    // The sidecar holds the log's key, so the manifest (count, range, digest) is signed.
    let trailer: serde_json::Value =
        serde_json::from_str(body.lines().last().expect("a last line")).expect("json");
    assert!(trailer["signature"].is_string(), "{trailer}");
    let file = keys.0.join("api.ndjson");
    std::fs::write(&file, &body).expect("write");
    let public = auditgate::log::head::public_key_path(&key);
    let verified = auditgate(&["verify-export", path_arg(&file), "--key", path_arg(&public)]);
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{}{}",
        text(&verified.stdout),
        text(&verified.stderr)
    );

    // The plain API export is refused by verify-export as proofless, not as tampered.
    let plain = client
        .get_admin(&admin("/api/v1/export?format=ndjson&action_prefix=http."))
        .await;
    std::fs::write(&file, plain.text()).expect("write");
    let verified = auditgate(&["verify-export", path_arg(&file), "--key", path_arg(&public)]);
    assert_eq!(verified.status.code(), Some(2));
    assert!(text(&verified.stderr).contains("this export carries no proofs"));

    // Parameters that cannot go with proofs are named.
    for query in [
        "format=csv&proofs=true",
        "format=ndjson&proofs=true&order=desc",
        "format=ndjson&proofs=maybe",
    ] {
        let reply = client
            .get_admin(&admin(&format!("/api/v1/export?{query}")))
            .await;
        assert_eq!(reply.status, 400, "{query}: {}", reply.text());
        let param = reply.json()["param"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            param == "proofs" || param == "order",
            "{query}: {}",
            reply.text()
        );
    }

    // The export was recorded, complete, with its row count.
    let exports = client
        .get_admin(&admin("/api/v1/entries?action=audit.export&limit=10"))
        .await
        .json();
    let recorded = exports["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|entry| entry["metadata"]["rows"] == 30)
        .cloned()
        .unwrap_or_default();
    assert_eq!(recorded["metadata"]["complete"], true, "{exports}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_with_proofs_needs_a_signed_head() {
    use crate::support::TestSidecar;
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(upstream.addr, "").await;
    let reply = HttpClient::new()
        .get_admin(&format!(
            "http://{}/api/v1/export?format=ndjson&proofs=true",
            sidecar.admin
        ))
        .await;
    assert_eq!(reply.status, 409, "{}", reply.text());
    assert!(
        reply.text().contains("signed tree head"),
        "{}",
        reply.text()
    );
}

// ---------------------------------------------------------------------------------------------
// Configuration the ops way, and the command line's contract.
// ---------------------------------------------------------------------------------------------

/// Runs the binary in `dir` with `env` set (and `AUDITGATE_CONFIG` unset).
fn auditgate_in(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_auditgate"));
    command
        .args(args)
        .current_dir(dir)
        .env("AUDITGATE_LOG", "warn")
        .env_remove("AUDITGATE_CONFIG");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("runs")
}

const ENV_CONFIG: &str = r#"
[proxy]
listen = "${AG_TEST_PROXY_LISTEN:-127.0.0.1:0}"
upstream = "${AG_TEST_UPSTREAM}"
[admin]
listen = "127.0.0.1:0"
[store]
path = "${AG_TEST_DATA}/audit.db"
[[rule]]
name = "order paid"
method = "POST"
# A `$` that starts no reference is left alone: the regex keeps its anchor.
path_regex = "^/orders/(?P<id>[0-9]+)/pay$"
headers = { x-note = "$${literal}" }
action = "order.paid"
"#;

#[test]
fn config_values_take_environment_variables_and_name_the_missing_ones() {
    let dir = TempDir::new("config-env");
    std::fs::write(dir.0.join("auditgate.toml"), ENV_CONFIG).expect("write");
    let data = dir.0.join("data");
    let env = [
        ("AG_TEST_UPSTREAM", "127.0.0.1:3999"),
        ("AG_TEST_DATA", data.to_str().expect("utf-8")),
    ];
    let output = auditgate_in(&dir.0, &env, &["check"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.contains("127.0.0.1:0 -> 127.0.0.1:3999"), "{stdout}");
    assert!(
        stdout.contains(&format!("{}/audit.db", data.display())),
        "{stdout}"
    );
    assert!(stdout.contains("^/orders/(?P<id>[0-9]+)/pay$"), "{stdout}");

    // The literal `${literal}` header condition is what the rule demands.
    let explain = |note: &str| {
        let header = format!("X-Note: {note}");
        let output = auditgate_in(
            &dir.0,
            &env,
            &["explain", "POST", "/orders/7/pay", "-H", &header],
        );
        assert!(output.status.success(), "{}", text(&output.stderr));
        let explained: Value = serde_json::from_slice(&output.stdout).expect("json");
        explained["entry"]["action"].as_str().map(str::to_string)
    };
    assert_eq!(explain("${literal}").as_deref(), Some("order.paid"));
    assert_ne!(explain("literal").as_deref(), Some("order.paid"));

    // Unset variables are errors naming the variable and the key, listed with every other error.
    let broken = ENV_CONFIG.replace("[admin]\n", "[admin]\nbogus = 1\n");
    std::fs::write(dir.0.join("auditgate.toml"), broken).expect("write");
    let output = auditgate_in(&dir.0, &[], &["check"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("proxy.upstream: environment variable `AG_TEST_UPSTREAM` is not set"),
        "{stderr}"
    );
    assert!(
        stderr.contains("store.path: environment variable `AG_TEST_DATA` is not set"),
        "{stderr}"
    );
    assert!(stderr.contains("bogus"), "{stderr}");
    assert!(
        !stderr.contains("AG_TEST_PROXY_LISTEN"),
        "a default covers it: {stderr}"
    );
}

#[test]
fn check_defaults_to_auditgate_toml_lists_methods_and_status_and_warns() {
    let dir = TempDir::new("check-warnings");
    let config = format!(
        r#"
[proxy]
upstream = "127.0.0.1:3000"
[admin]
[[admin.tokens]]
name = "ops"
sha256 = "{zeros}"
scopes = ["read"]
[redact]
fields = ["password"]
mode = "hmac"
hmac_key_env = "AG_TEST_REDACT_KEY"
[[rule]]
name = "user changes"
method = ["PUT", "DELETE"]
path = "/api/users/{{id}}"
action = "user.changed"
[[rule]]
name = "delete user"
method = "DELETE"
path = "/api/users/{{id}}"
status = "2xx"
action = "user.deleted"
[[rule]]
name = "express style"
path = "/posts/:id"
action = "post.touched"
[[rule]]
name = "glob style"
path = "/items/*"
action = "item.touched"
[[rule]]
name = "created"
method = "POST"
path = "/api/posts"
status = [201]
action = "post.created"
resource = {{ type = "post", id = "response.body/id" }}
"#,
        zeros = "0".repeat(64)
    );
    std::fs::write(dir.0.join("auditgate.toml"), config).expect("write");
    let env = [("AG_TEST_REDACT_KEY", "replace-with-32-random-bytes-of-hex")];
    let output = auditgate_in(&dir.0, &env, &["check"]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(
        output.status.code(),
        Some(0),
        "warnings do not fail: {stdout}{stderr}"
    );
    assert!(stdout.contains("auditgate.toml: valid"), "{stdout}");
    let listed = |name: &str| {
        stdout
            .lines()
            .find(|line| line.contains(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(listed("user changes").contains("PUT,DELETE"), "{stdout}");
    assert!(listed("user changes").contains("status any"), "{stdout}");
    assert!(listed("delete user").contains("status 2xx"), "{stdout}");
    assert!(listed("created").contains("status 201"), "{stdout}");
    for expected in [
        "admin.tokens #1 (\"ops\").sha256: all zeros is a placeholder",
        "redact.hmac_key_env: environment variable `AG_TEST_REDACT_KEY` holds a placeholder",
        "rule #2 (\"delete user\"): can never match: rule #1 (\"user changes\") comes first",
        "rule #3 (\"express style\").path: `:id` in `/posts/:id` is matched literally",
        "rule #4 (\"glob style\").path: `*` in `/items/*` is matched literally",
        "rule #5 (\"created\").resource.id: `response.body/id` looks like a value source",
        "did you mean `response.body:/id`?",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert_eq!(stderr.matches("warning:").count(), 6, "{stderr}");

    // No file named and none in the directory: the error names auditgate.toml.
    let empty = TempDir::new("check-no-file");
    let output = auditgate_in(&empty.0, &[], &["check"]);
    assert_eq!(output.status.code(), Some(64));
    assert!(
        text(&output.stderr).contains("auditgate.toml"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn usage_errors_exit_64_never_2_and_help_lists_the_exit_codes() {
    for args in [
        vec!["no-such-command"],
        vec!["verify", "--no-such-flag"],
        vec!["query", "--db", "a.db", "--config", "b.toml"],
        vec!["backup", "--db", "a.db"],
        vec!["verify-export"],
    ] {
        let output = auditgate(&args);
        assert_eq!(
            output.status.code(),
            Some(64),
            "{args:?}: {}",
            text(&output.stderr)
        );
    }
    let help = auditgate(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let help = text(&help.stdout);
    for line in ["Exit codes:", "  0 ", "  1 ", "  2 ", "  64 "] {
        assert!(help.contains(line), "{help}");
    }
    assert_eq!(auditgate(&["--version"]).status.code(), Some(0));
}

#[test]
fn token_refuses_a_scope_that_check_would_refuse() {
    let refused = auditgate(&["token", "--scopes", "read,admin"]);
    assert_eq!(refused.status.code(), Some(64));
    assert!(
        text(&refused.stderr).contains("admin"),
        "{}",
        text(&refused.stderr)
    );
    assert!(refused.stdout.is_empty(), "no token is printed");
    let empty = auditgate(&["token", "--scopes", " , "]);
    assert_eq!(empty.status.code(), Some(64));

    // What it prints for good scopes is a config `check` accepts.
    let made = auditgate(&[
        "token",
        "--name",
        "auditor",
        "--scopes",
        "read,export,write",
    ]);
    assert!(made.status.success());
    let snippet: String = text(&made.stdout)
        .lines()
        .skip_while(|line| !line.starts_with("[[admin.tokens]]"))
        .map(|line| format!("{line}\n"))
        .collect();
    let dir = TempDir::new("token-scopes");
    let config = dir.0.join("auditgate.toml");
    std::fs::write(
        &config,
        format!("[proxy]\nupstream = \"127.0.0.1:3000\"\n[admin]\n{snippet}"),
    )
    .expect("write");
    let checked = auditgate(&["check", "--config", path_arg(&config)]);
    assert!(checked.status.success(), "{}", text(&checked.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_commands_take_the_store_from_a_config_file() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("read-from-config");
    let config = write_config(&dir.0, upstream.addr, "", RULES);
    let process = Process::start(&config);
    send_deletes(&HttpClient::new(), process.proxy, 0..4).await;
    process.stop();
    let config_arg = path_arg(&config);
    let query = auditgate(&[
        "query",
        "--config",
        config_arg,
        "--action",
        "user.deleted",
        "--format",
        "json",
    ]);
    assert!(query.status.success(), "{}", text(&query.stderr));
    assert_eq!(text(&query.stdout).lines().count(), 4);
    let export = auditgate(&[
        "export",
        "--config",
        config_arg,
        "--format",
        "csv",
        "--action",
        "user.deleted",
    ]);
    assert!(export.status.success(), "{}", text(&export.stderr));
    assert_eq!(text(&export.stdout).lines().count(), 5, "header and 4 rows");
    let verify = auditgate(&["verify", "-c", config_arg]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify.stderr));
    // An invalid config is a usage error for every read command.
    std::fs::write(&config, "[proxy]\n").expect("write");
    for command in ["query", "verify", "export"] {
        let mut args = vec![command, "--config", config_arg];
        if command == "export" {
            args.extend(["--format", "csv"]);
        }
        let output = auditgate(&args);
        assert_eq!(
            output.status.code(),
            Some(64),
            "{command}: {}",
            text(&output.stderr)
        );
    }
}

/// `auditgate query | head -1` and friends: a reader that goes away is not a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_quietly() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("closed-stdout");
    let config = write_config(&dir.0, upstream.addr, "", RULES);
    let process = Process::start(&config);
    send_deletes(&HttpClient::new(), process.proxy, 0..30).await;
    process.stop();
    let db = dir.0.join("audit.db");
    let db_arg = path_arg(&db);
    for (args, code) in [
        (vec!["query", "--db", db_arg], 0),
        (vec!["query", "--db", db_arg, "--format", "json"], 0),
        (vec!["export", "--db", db_arg, "--format", "csv"], 0),
        (vec!["verify", "--db", db_arg], 0),
        (vec!["check", "--config", path_arg(&config)], 0),
        (vec!["token"], 0),
        (vec!["--help"], 0),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_auditgate"))
            .args(&args)
            .env("AUDITGATE_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        // The reader is gone before the first byte is written.
        drop(child.stdout.take());
        let output = child.wait_with_output().expect("wait");
        let stderr = text(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
    }
}
