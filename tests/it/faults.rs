//! Faults under the store: a full disk, and the database or its WAL deleted while running.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use auditgate::config::Config;
use auditgate::server::Sidecar;

use crate::support::{
    config_text, eventually, metric_count, read_entries, write_config, HttpClient, Process,
    TempDir, Upstream,
};

const RULES: &str = r#"
[[rule]]
name = "delete user"
method = "DELETE"
path = "/api/users/{id}"
action = "user.deleted"
resource = { type = "user", id = "{id}" }
write_ahead = true

[[rule]]
name = "note"
method = "POST"
path = "/notes/{id}"
action = "note.created"
resource = { type = "note", id = "{id}" }
"#;

/// Set to `1` (scripts/test does, when it runs as root) to make the full-disk test fail instead of
/// skip when it cannot mount its tmpfs.
const REQUIRE_TMPFS: &str = "AUDITGATE_REQUIRE_TMPFS";

/// A small tmpfs mounted for one test and unmounted when dropped, even when the test fails.
struct Tmpfs {
    path: PathBuf,
    /// The mount point, removed (after the unmount in `drop`) like every test directory.
    _mount_point: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as mount(8) takes it), or says why it cannot.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let mount_point = TempDir::new("tmpfs");
        let path = mount_point.0.clone();
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .output();
        match mounted {
            Ok(output) if output.status.success() => Ok(Tmpfs {
                path,
                _mount_point: mount_point,
            }),
            Ok(output) => Err(String::from_utf8_lossy(&output.stderr).trim().to_string()),
            Err(error) => Err(format!("cannot run mount: {error}")),
        }
    }

    /// Writes a file until the file system is full; returns its path.
    fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).expect("create filler");
        let chunk = vec![0u8; 16 * 1024];
        // Bounded: a 2 MiB file system is full long before this.
        for _ in 0..10_000 {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        // The last partial page too.
        for _ in 0..4096 {
            if file.write_all(&[0u8]).is_err() {
                break;
            }
        }
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            // Something still holds a file open: detach it now, it goes when released.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

#[tokio::test]
async fn a_full_disk_fails_write_ahead_closed_loses_nothing_and_recovers_by_itself() {
    let disk = match Tmpfs::mount("2m") {
        Ok(disk) => disk,
        Err(reason) => {
            // Mounting needs root. Where the test must run (scripts/test as root, as in CI),
            // failing to mount fails the test rather than skipping it unseen.
            assert!(
                std::env::var(REQUIRE_TMPFS).as_deref() != Ok("1"),
                "{REQUIRE_TMPFS}=1 but a tmpfs cannot be mounted: {reason}"
            );
            eprintln!("skipped: cannot mount a tmpfs here ({reason}); {REQUIRE_TMPFS}=1 makes this a failure");
            return;
        }
    };
    let upstream = Upstream::start().await;
    let db = disk.path.join("audit.db");
    let text = config_text(upstream.addr, &db, "", RULES);
    let config = Config::parse(&text, &disk.path).expect("valid config");
    let sidecar = Sidecar::start(config, None).await.expect("starts");
    let client = HttpClient::new();
    let proxy = |path: &str| format!("http://{}{path}", sidecar.proxy_addr);
    let admin = |path: &str| format!("http://{}{path}", sidecar.admin_addr);

    let reply = client
        .send("DELETE", &proxy("/api/users/before"), &[], "")
        .await;
    assert_eq!(reply.status, 200);
    assert!(sidecar.writer().flushed(Duration::from_secs(5)).await);

    let filler = disk.fill();
    let forwarded_before = upstream.count();

    // Write-ahead requests are refused, each at once, and never reach the app.
    for id in ["full-1", "full-2", "full-3"] {
        // The bound only keeps a held request from hanging the test; how fast the refusal comes
        // is for the benchmarks.
        let reply = tokio::time::timeout(
            Duration::from_secs(30),
            client.send("DELETE", &proxy(&format!("/api/users/{id}")), &[], ""),
        )
        .await
        .expect("a write-ahead request on a full disk is answered, not held");
        assert_eq!(reply.status, 503, "{id}: {}", reply.text());
    }
    assert_eq!(
        upstream.count(),
        forwarded_before,
        "nothing refused was forwarded"
    );

    // An after-response request is forwarded; its entry waits for space (or the spill file).
    let reply = client.send("POST", &proxy("/notes/during"), &[], "").await;
    assert_eq!(reply.status, 200);
    assert_eq!(upstream.count(), forwarded_before + 1);
    assert_eq!(client.get(&admin("/readyz")).await.status, 503);
    let metrics = client.get(&admin("/metrics")).await.text();
    assert_eq!(
        metric_count(&metrics, "auditgate_entries_lost_total"),
        Some(0)
    );
    assert_eq!(
        metric_count(&metrics, "auditgate_fail_closed_total"),
        Some(3)
    );

    // Space returns: the service recovers by itself, and every entry arrives.
    std::fs::remove_file(&filler).expect("free the disk");
    let recovered = eventually(Duration::from_secs(15), async || {
        client.get(&admin("/readyz")).await.status == 200
            && sidecar.writer().depth() == 0
            && sidecar.writer().flushed(Duration::from_millis(10)).await
    })
    .await;
    assert!(
        recovered,
        "the sidecar did not recover after space returned"
    );
    let reply = client
        .send("DELETE", &proxy("/api/users/after"), &[], "")
        .await;
    assert_eq!(reply.status, 200, "write-ahead works again");
    assert!(sidecar.writer().flushed(Duration::from_secs(5)).await);
    let metrics = client.get(&admin("/metrics")).await.text();
    assert_eq!(
        metric_count(&metrics, "auditgate_entries_lost_total"),
        Some(0)
    );
    sidecar.shutdown().await;

    // Every entry is stored once: the refused attempts as 503s, the note as forwarded.
    let spill = disk.path.join("audit.db.spill.ndjson");
    let spilled = std::fs::read_to_string(&spill).unwrap_or_default();
    assert!(
        spilled
            .lines()
            .all(|line| serde_json::from_str::<serde_json::Value>(line).is_ok()),
        "a torn line in the spill file: {spilled:?}"
    );
    let mut stored: Vec<(String, Option<u16>)> = read_entries(&db)
        .iter()
        .map(|entry| (entry.resource_id.clone().unwrap_or_default(), entry.status))
        .collect();
    // Spilled entries (if any) are re-imported at the next start; count them as stored.
    for line in spilled.lines() {
        let entry: auditgate::entry::AuditEntry = serde_json::from_str(line).expect("entry");
        stored.push((entry.resource_id.unwrap_or_default(), entry.status));
    }
    stored.sort();
    stored.dedup();
    let mut expected = vec![
        ("after".to_string(), Some(200)),
        ("before".to_string(), Some(200)),
        ("during".to_string(), Some(200)),
        ("full-1".to_string(), Some(503)),
        ("full-2".to_string(), Some(503)),
        ("full-3".to_string(), Some(503)),
    ];
    expected.sort();
    assert_eq!(stored, expected);
}

// ---------------------------------------------------------------------------------------------
// Files deleted under the running binary
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_deleted_database_is_detected_and_nothing_is_written_into_it() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("deleted-db");
    let config = write_config(&dir.0, upstream.addr, "", RULES);
    let db = dir.0.join("audit.db");
    let process = Process::start(&config);
    let client = HttpClient::new();
    let proxy = |path: &str| format!("http://{}{path}", process.proxy);
    let admin = |path: &str| format!("http://{}{path}", process.admin);
    assert_eq!(
        client
            .send("POST", &proxy("/notes/1"), &[], "")
            .await
            .status,
        200
    );
    assert_eq!(client.get(&admin("/readyz")).await.status, 200);

    std::fs::remove_file(&db).expect("delete the database");
    let reply = client.get(&admin("/readyz")).await;
    assert_eq!(reply.status, 503);
    // The reason (it names files) goes to the log, which is checked next; the probe says only
    // that the store cannot take writes, or, when the writer tried a write first (a head, a
    // heartbeat), that its last write failed.
    let text = reply.text();
    assert!(
        text.contains("cannot take writes") || text.contains("last write to the store failed"),
        "{text}"
    );
    assert!(!text.contains("audit.db"), "the probe names files: {text}");
    assert!(
        eventually(Duration::from_secs(5), async || process.logged("ERROR")
            && process.logged("audit.db was removed while in use"))
        .await,
        "no alarm in the log"
    );

    // Write-ahead fails closed; an after-response entry goes to the spill file, not into the
    // deleted database.
    let before = upstream.count();
    let reply = client.send("DELETE", &proxy("/api/users/7"), &[], "").await;
    assert_eq!(reply.status, 503);
    assert_eq!(upstream.count(), before);
    assert_eq!(
        client
            .send("POST", &proxy("/notes/2"), &[], "")
            .await
            .status,
        200
    );
    let spill = dir.0.join("audit.db.spill.ndjson");
    assert!(
        eventually(Duration::from_secs(10), async || std::fs::read_to_string(
            &spill
        )
        .is_ok_and(
            |text| text.contains("\"resource_id\":\"2\"") || text.contains("\"resourceId\":\"2\"")
        ))
        .await,
        "the entry was not spilled"
    );
    let metrics = client.get(&admin("/metrics")).await.text();
    assert_eq!(
        metric_count(&metrics, "auditgate_entries_lost_total"),
        Some(0)
    );
    process.stop();

    // A restart starts a new database and re-imports what was spilled.
    let process = Process::start(&config);
    process.stop();
    let stored: Vec<(String, Option<u16>)> = read_entries(&db)
        .iter()
        .map(|entry| (entry.resource_id.clone().unwrap_or_default(), entry.status))
        .collect();
    assert!(stored.contains(&("2".to_string(), Some(200))), "{stored:?}");
    assert!(stored.contains(&("7".to_string(), Some(503))), "{stored:?}");
}

#[tokio::test]
async fn a_deleted_wal_is_detected_and_what_it_held_survives_a_crash() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("deleted-wal");
    let config = write_config(&dir.0, upstream.addr, "", RULES);
    let db = dir.0.join("audit.db");
    let process = Process::start(&config);
    let client = HttpClient::new();
    let proxy = |path: &str| format!("http://{}{path}", process.proxy);
    let admin = |path: &str| format!("http://{}{path}", process.admin);
    for id in 1..=5 {
        let reply = client
            .send("POST", &proxy(&format!("/notes/{id}")), &[], "")
            .await;
        assert_eq!(reply.status, 200);
    }
    let wal = dir.0.join("audit.db-wal");
    assert!(
        eventually(Duration::from_secs(5), async || read_entries(&db).len()
            == 5)
        .await,
        "entries not stored"
    );

    std::fs::remove_file(&wal).expect("delete the WAL");
    let reply = client.get(&admin("/readyz")).await;
    assert_eq!(reply.status, 503);
    assert!(
        reply.text().contains("cannot take writes"),
        "{}",
        reply.text()
    );
    assert!(
        eventually(Duration::from_secs(5), async || process.logged("ERROR")
            && process.logged("the WAL file was removed while in use"))
        .await,
        "no alarm in the log"
    );
    let reply = client.send("DELETE", &proxy("/api/users/7"), &[], "").await;
    assert_eq!(reply.status, 503, "write-ahead fails closed");

    // A crash now (no clean close to checkpoint the WAL): the five entries must survive.
    drop(process);
    let process = Process::start(&config);
    let metrics = client
        .get(&format!("http://{}/metrics", process.admin))
        .await
        .text();
    assert_eq!(
        metric_count(&metrics, "auditgate_entries_lost_total"),
        Some(0)
    );
    assert_eq!(
        client
            .get(&format!("http://{}/readyz", process.admin))
            .await
            .status,
        200
    );
    process.stop();
    let stored: Vec<String> = read_entries(&db)
        .iter()
        .filter_map(|entry| entry.resource_id.clone())
        .collect();
    for id in 1..=5 {
        assert!(
            stored.contains(&id.to_string()),
            "note {id} lost: {stored:?}"
        );
    }
}
