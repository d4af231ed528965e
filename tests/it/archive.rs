//! The object-storage archive (`[[archive]]`) against a real S3-compatible server: moto's
//! server mode, started by `scripts/s3-test-server`, named by `AUDITGATE_TEST_S3_ENDPOINT`.
//! Without it the tests that need it are skipped, loudly; with `AUDITGATE_REQUIRE_S3=1` (as
//! `scripts/test` sets) a missing server fails them instead.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use auditgate::archive::config::BucketConfig;
use auditgate::archive::object::{parse_object_key, NDJSON_SUFFIX, OCSF_SUFFIX};
use auditgate::archive::s3::S3Client;
use auditgate::log::head::LogSigner;
use rusty_s3::S3Action as _;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::support::{
    eventually, metric_count, read_all_entries, write_config, HttpClient, Process, TempDir,
    Upstream,
};

const ENDPOINT_VARIABLE: &str = "AUDITGATE_TEST_S3_ENDPOINT";

/// The server's endpoint, or `None` after saying that `test` is skipped.
fn s3_endpoint(test: &str) -> Option<String> {
    match std::env::var(ENDPOINT_VARIABLE) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("AUDITGATE_REQUIRE_S3").as_deref() != Ok("1"),
                "{test}: AUDITGATE_REQUIRE_S3=1 but {ENDPOINT_VARIABLE} is not set; start one \
                 with scripts/s3-test-server"
            );
            let _ = writeln!(
                std::io::stderr(),
                "{test}: skipped: no S3 server ({ENDPOINT_VARIABLE} is not set; see \
                 scripts/s3-test-server)"
            );
            None
        }
    }
}

/// A bucket name of its own for each test.
fn bucket_name(label: &str) -> String {
    format!(
        "ag-{label}-{}",
        ulid::Ulid::new().to_string().to_lowercase()
    )
}

/// Creates a bucket, with Object Lock enabled when asked (which turns versioning on).
async fn create_bucket(endpoint: &str, name: &str, object_lock: bool) {
    let bucket = rusty_s3::Bucket::new(
        endpoint.parse().expect("endpoint"),
        rusty_s3::UrlStyle::Path,
        name.to_string(),
        "us-east-1",
    )
    .expect("bucket");
    let credentials = rusty_s3::Credentials::new("test", "test");
    let mut action = bucket.create_bucket(&credentials);
    let mut headers = Vec::new();
    if object_lock {
        action
            .headers_mut()
            .insert("x-amz-bucket-object-lock-enabled", "true");
        headers.push(("x-amz-bucket-object-lock-enabled", "true"));
    }
    // An empty body still says its length: moto refuses a PUT without one.
    headers.push(("content-length", "0"));
    let url = action.sign(Duration::from_secs(600));
    let reply = HttpClient::new()
        .send("PUT", url.as_str(), &headers, Vec::new())
        .await;
    assert_eq!(reply.status, 200, "create bucket: {}", reply.text());
}

/// Our own client for reading the bucket back.
fn client(endpoint: &str, bucket: &str) -> S3Client {
    S3Client::new(&BucketConfig {
        bucket: bucket.to_string(),
        prefix: String::new(),
        endpoint: endpoint.parse().expect("endpoint"),
        region: "us-east-1".into(),
        path_style: true,
        credentials: Some(auditgate::archive::config::Credentials {
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
            session_token: None,
        }),
        timeout: Duration::from_secs(30),
        tls: None,
    })
    .expect("client")
}

/// A TCP relay in front of the S3 server that can be taken down: while down it refuses every
/// connection at once, as an unreachable bucket does.
struct Relay {
    endpoint: String,
    down: Arc<AtomicBool>,
}

impl Relay {
    async fn start(target: &str) -> Relay {
        let target: SocketAddr = target
            .trim_start_matches("http://")
            .parse()
            .expect("an http://host:port endpoint");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let down = Arc::new(AtomicBool::new(false));
        let relay_down = down.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if relay_down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Relay {
            endpoint: format!("http://{address}"),
            down,
        }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

/// The `[log]` keys and `[[archive]]` table of a sidecar that archives to `bucket`.
fn archive_config(key: &Path, endpoint: &str, bucket: &str, extra: &str) -> String {
    format!(
        "signing_key = \"{}\"\nsign_interval = \"100ms\"\n\n[unmatched]\nrecord = \"all\"\n\n\
         [[archive]]\nname = \"main\"\nurl = \"s3://{bucket}/audit\"\nendpoint = \"{endpoint}\"\n\
         access_key_id = \"${{TEST_S3_KEY:-test}}\"\nsecret_access_key = \"test\"\nwindow = \"1d\"\n\
         timeout = \"5s\"\n{extra}\n",
        key.display()
    )
}

/// A directory with a signing key for the log.
fn key_dir(label: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(label);
    let key = dir.0.join("log.key");
    LogSigner::write_new(&key).expect("key");
    (dir, key)
}

/// Every archive object's key under the bucket, in log order.
async fn object_keys(client: &S3Client) -> Vec<String> {
    let mut keys: Vec<String> = client
        .list("audit/", None)
        .await
        .expect("list")
        .keys
        .into_iter()
        .filter(|key| parse_object_key(key).is_some())
        .collect();
    keys.sort_by_key(|key| parse_object_key(key).map(|name| name.first_seq));
    keys
}

fn gunzip(bytes: &[u8]) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .expect("gzip");
    text
}

/// The entry lines of every object, in key order, and the objects' ranges.
async fn archived_lines(client: &S3Client) -> (Vec<Value>, Vec<(u64, u64)>) {
    let mut lines = Vec::new();
    let mut ranges = Vec::new();
    for key in object_keys(client).await {
        let name = parse_object_key(&key).expect("layout");
        ranges.push((name.first_seq, name.last_seq));
        let text = gunzip(&client.get_object(&key).await.expect("get"));
        let mut object_lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("JSON line"))
            .collect();
        let trailer = object_lines.pop().expect("a trailer");
        assert!(trailer["treeHead"].is_object(), "{trailer}");
        assert!(
            trailer["checkpoint"]
                .as_str()
                .is_some_and(|note| note.contains("\n\u{2014} ")),
            "each object carries its checkpoint: {trailer}"
        );
        assert_eq!(trailer["firstSeq"], name.first_seq);
        assert_eq!(trailer["lastSeq"], name.last_seq);
        lines.extend(object_lines);
    }
    (lines, ranges)
}

/// Runs `auditgate verify-archive SOURCE --key PUB` with the test server's keys in the
/// environment; returns (exit code, stdout and stderr).
fn verify_archive(source: &str, key: &Path, endpoint: &str) -> (i32, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(["verify-archive", source, "--key"])
        .arg(auditgate::log::head::public_key_path(key))
        .args(["--endpoint", endpoint])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .expect("runs");
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Copies every key under `audit/` into `dir`, as `aws s3 sync` would.
async fn download(client: &S3Client, dir: &Path) {
    for key in client.list("audit/", None).await.expect("list").keys {
        let path = dir.join(&key);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, client.get_object(&key).await.expect("get")).expect("write");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for item in std::fs::read_dir(from).expect("read dir") {
        let item = item.expect("item");
        let target = to.join(item.file_name());
        if item.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_dir(&item.path(), &target);
        } else {
            std::fs::copy(item.path(), &target).expect("copy");
        }
    }
}

/// The archive object files of a local copy, in log order.
fn local_objects(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for item in std::fs::read_dir(&folder).expect("read dir") {
            let path = item.expect("item").path();
            if path.is_dir() {
                folders.push(path);
            } else if path.to_string_lossy().ends_with(NDJSON_SUFFIX) {
                found.push(path);
            }
        }
    }
    found.sort_by_key(|path| parse_object_key(&path.to_string_lossy()).map(|name| name.first_seq));
    found
}

fn assert_contiguous(ranges: &[(u64, u64)], last: u64) {
    let mut expected = 1;
    for (first, end) in ranges {
        assert_eq!(
            *first, expected,
            "objects {ranges:?} leave a gap or overlap"
        );
        expected = end + 1;
    }
    assert_eq!(
        expected - 1,
        last,
        "objects {ranges:?} end at the log's last entry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_archived_in_order_with_object_lock_and_verify_on_their_own() {
    let Some(endpoint) = s3_endpoint("archive_in_order") else {
        return;
    };
    let bucket = bucket_name("order");
    create_bucket(&endpoint, &bucket, true).await;
    let upstream = Upstream::start().await;
    let (dir, key) = key_dir("archive-order");
    let config = write_config(
        &dir.0,
        upstream.addr,
        "",
        &archive_config(
            &key,
            &endpoint,
            &bucket,
            "max_entries = 4\nobject_lock = { mode = \"compliance\", days = 2 }",
        ),
    );
    let process = Process::start(&config);
    let http = HttpClient::new();
    for index in 0..10 {
        let reply = http
            .send(
                "POST",
                &format!("http://{}/api/items/{index}", process.proxy),
                &[],
                "{}",
            )
            .await;
        assert_eq!(reply.status, 200);
    }
    let s3 = client(&endpoint, &bucket);
    // Full objects of 4 entries ship while the sidecar runs, without waiting for the window.
    assert!(
        eventually(Duration::from_secs(30), async || object_keys(&s3)
            .await
            .len()
            >= 2)
        .await,
        "full objects are shipped while running"
    );
    process.stop();
    let entries = read_all_entries(&dir.0.join("audit.db"));
    let (lines, ranges) = archived_lines(&s3).await;
    // At a clean stop the rest is shipped: the archive holds the whole log, in order, once.
    assert_contiguous(&ranges, entries.len() as u64);
    assert!(ranges.iter().all(|(first, last)| last - first < 4));
    assert_eq!(lines.len(), entries.len());
    for (line, entry) in lines.iter().zip(&entries) {
        let expected = entry.to_api_json();
        let mut archived = line.clone();
        for proof_key in ["leafHash", "leafIndex", "auditPath"] {
            archived.as_object_mut().expect("object").remove(proof_key);
        }
        assert_eq!(archived, expected, "entry {} as archived", entry.seq);
    }
    let keys = object_keys(&s3).await;
    let day = entries[0].created_at.format("%Y/%m/%d").to_string();
    assert_eq!(
        keys[0],
        format!("audit/test/{day}/000000000001-000000000004.ndjson.gz")
    );
    // Object Lock retention is on every object, as configured, as the server reports it.
    for key in &keys {
        let (mode, until) = s3
            .object_retention(key)
            .await
            .expect("head")
            .expect("a retention");
        assert_eq!(mode, "COMPLIANCE", "{key}");
        let until = chrono::DateTime::parse_from_rfc3339(&until).expect("a date");
        let days = (until.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours();
        assert!((46..=48).contains(&days), "{key} retained for {days} hours");
    }

    // The archive verifies on its own, in the bucket and in a local copy.
    let source = format!("s3://{bucket}/audit");
    let (code, report) = verify_archive(&source, &key, &endpoint);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains(": intact"), "{report}");
    assert!(
        report.contains(&format!("up to entry {}", entries.len())),
        "{report}"
    );
    let copy = TempDir::new("archive-copy");
    download(&s3, &copy.0).await;
    let (code, report) = verify_archive(&copy.0.display().to_string(), &key, &endpoint);
    assert_eq!(code, 0, "{report}");

    // A deleted middle object is a gap.
    let gap = TempDir::new("archive-gap");
    copy_dir(&copy.0, &gap.0);
    let objects = local_objects(&gap.0);
    std::fs::remove_file(&objects[1]).expect("delete");
    let (code, report) = verify_archive(&gap.0.display().to_string(), &key, &endpoint);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("entries 5..=8 of log test are in no object")
            && report.contains("an object was deleted"),
        "{report}"
    );

    // A duplicated object (the same object under a second name in the same log).
    let s3_copy_key = {
        let first = &keys[0];
        let other_day = first.replace(&day, "2099/01/01");
        let body = s3.get_object(first).await.expect("get").to_vec();
        s3.put_object(&other_day, body, "application/x-ndjson", None)
            .await
            .expect("put");
        other_day
    };
    let (code, report) = verify_archive(&source, &key, &endpoint);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains(&format!("{s3_copy_key} repeats entries 1..=4"))
            && report.contains("a duplicated or overlapping object"),
        "{report}"
    );

    // An edited line.
    let edited = TempDir::new("archive-edit");
    copy_dir(&copy.0, &edited.0);
    let object = &local_objects(&edited.0)[0];
    let text = gunzip(&std::fs::read(object).expect("read"));
    let changed = text.replacen("\"/api/items/", "\"/api/itemz/", 1);
    assert_ne!(changed, text);
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(changed.as_bytes()).expect("gzip");
    std::fs::write(object, gzip.finish().expect("gzip")).expect("write");
    let (code, report) = verify_archive(&edited.0.display().to_string(), &key, &endpoint);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("was changed: its content no longer hashes to its leaf"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_is_down_loses_nothing_and_a_restart_resumes_without_repeats() {
    let Some(endpoint) = s3_endpoint("archive_outage") else {
        return;
    };
    let bucket = bucket_name("outage");
    create_bucket(&endpoint, &bucket, false).await;
    let relay = Relay::start(&endpoint).await;
    let upstream = Upstream::start().await;
    let (dir, key) = key_dir("archive-outage");
    let config = write_config(
        &dir.0,
        upstream.addr,
        "",
        &archive_config(&key, &relay.endpoint, &bucket, "max_entries = 3"),
    );
    let s3 = client(&endpoint, &bucket);
    let http = HttpClient::new();
    let mut process = Process::start(&config);
    let send = async |process: &Process, count: usize| {
        for index in 0..count {
            let reply = http
                .send(
                    "POST",
                    &format!("http://{}/api/things/{index}", process.proxy),
                    &[],
                    "{}",
                )
                .await;
            assert_eq!(
                reply.status, 200,
                "the proxy answers whatever the bucket does"
            );
        }
    };
    send(&process, 5).await;
    assert!(
        eventually(Duration::from_secs(30), async || !object_keys(&s3)
            .await
            .is_empty())
        .await,
        "objects are shipped"
    );

    // The bucket goes away: the proxy keeps answering, failures and lag show in /metrics.
    relay.set_down(true);
    send(&process, 9).await;
    let metrics_url = format!("http://{}/metrics", process.admin);
    let metrics = async || http.get(&metrics_url).await.text();
    assert!(
        eventually(Duration::from_secs(30), async || {
            let text = metrics().await;
            metric_count(&text, "auditgate_archive_failures_total{archive=\"main\"}")
                .is_some_and(|failures| failures > 0)
                && metric_count(&text, "auditgate_archive_lag_entries{archive=\"main\"}")
                    .is_some_and(|lag| lag >= 9)
                && metric_count(&text, "auditgate_archive_failing{archive=\"main\"}") == Some(1)
        })
        .await,
        "failures and lag are visible: {}",
        metrics().await
    );
    let shipped_while_down = object_keys(&s3).await.len();

    // Killed while the bucket is down: nothing is kept locally, the resume point is the bucket.
    process.signal("KILL");
    let _ = process.wait();
    relay.set_down(false);
    process = Process::start(&config);
    send(&process, 4).await;
    assert!(
        eventually(Duration::from_secs(60), async || {
            object_keys(&s3).await.len() > shipped_while_down + 3
        })
        .await,
        "the entries of the outage are shipped after it"
    );
    // The new process uploaded only what was not in the bucket: resuming from the start would
    // rewrite the same keys, invisible in a listing but not in its upload count.
    let metrics_url = format!("http://{}/metrics", process.admin);
    assert!(
        eventually(Duration::from_secs(30), async || {
            let series = "auditgate_archive_objects_total{archive=\"main\"}";
            let before = metric_count(&http.get(&metrics_url).await.text(), series);
            let keys = object_keys(&s3).await.len();
            let after = metric_count(&http.get(&metrics_url).await.text(), series);
            before == after && after == Some((keys - shipped_while_down) as u64)
        })
        .await,
        "each object after the restart was uploaded once"
    );
    process.stop();
    let entries = read_all_entries(&dir.0.join("audit.db"));
    let (lines, ranges) = archived_lines(&s3).await;
    assert_contiguous(&ranges, entries.len() as u64);
    let seqs: Vec<u64> = lines
        .iter()
        .map(|line| line["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=entries.len() as u64).collect::<Vec<u64>>());
    let (code, report) = verify_archive(&format!("s3://{bucket}/audit"), &key, &endpoint);
    assert_eq!(code, 0, "{report}");
}

#[test]
fn check_lists_every_bad_archive_table_with_its_place() {
    let dir = TempDir::new("archive-check");
    let config = dir.0.join("auditgate.toml");
    std::fs::write(
        &config,
        "[proxy]\nupstream = \"127.0.0.1:3000\"\n\n[[archive]]\nname = \"r2\"\nurl = \"r2://x\"\n\
         object_lock = { mode = \"legal\", days = 0 }\n\n[[archive]]\nurl = \"s3://ok-bucket\"\n\
         window = \"7m\"\n",
    )
    .expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for wanted in [
        "archive #1 (\"r2\"): an archive needs [log] signing_key",
        "archive #1 (\"r2\").url: `r2://x` is not an s3:// URL",
        "archive #1 (\"r2\").object_lock.mode: must be \"compliance\" or \"governance\"",
        "archive #1 (\"r2\").object_lock.days: must be 1 to 36500",
        "archive #2.window: must be whole seconds that divide a day",
    ] {
        assert!(text.contains(wanted), "missing {wanted:?} in:\n{text}");
    }
}

/// A SIGHUP that points the archive at another bucket stops the old shipper and starts a new
/// one, which resumes from its own bucket: the new bucket gets the whole log from entry 1 and
/// verifies on its own, while the proxy goes on answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_archive_to_another_bucket() {
    let Some(endpoint) = s3_endpoint("archive_reload") else {
        return;
    };
    let first = bucket_name("reload-a");
    let second = bucket_name("reload-b");
    create_bucket(&endpoint, &first, false).await;
    create_bucket(&endpoint, &second, false).await;
    let upstream = Upstream::start().await;
    let (dir, key) = key_dir("archive-reload");
    let config = write_config(
        &dir.0,
        upstream.addr,
        "",
        &archive_config(&key, &endpoint, &first, "max_entries = 3"),
    );
    let http = HttpClient::new();
    let process = Process::start(&config);
    let send = async |count: usize, from: usize| {
        for index in from..from + count {
            let reply = http
                .send(
                    "POST",
                    &format!("http://{}/api/things/{index}", process.proxy),
                    &[],
                    "{}",
                )
                .await;
            assert_eq!(reply.status, 200);
        }
    };
    send(4, 0).await;
    let first_client = client(&endpoint, &first);
    assert!(
        eventually(Duration::from_secs(30), async || !object_keys(
            &first_client
        )
        .await
        .is_empty())
        .await,
        "objects are shipped to the first bucket"
    );

    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace(
            &format!("s3://{first}/audit"),
            &format!("s3://{second}/audit"),
        ),
    )
    .expect("write");
    process.signal("HUP");
    send(4, 4).await;
    let second_client = client(&endpoint, &second);
    let db = dir.0.join("audit.db");
    assert!(
        eventually(Duration::from_secs(60), async || {
            let (_, ranges) = archived_lines(&second_client).await;
            let stored = read_all_entries(&db).len() as u64;
            // Entries 1..=9 at least (started, four requests, the reload record, three more
            // requests): three full objects of `max_entries = 3`.
            ranges.first().map(|range| range.0) == Some(1)
                && ranges.last().is_some_and(|range| range.1 >= 9)
                && stored >= 10
        })
        .await,
        "the new bucket gets the log from its first entry"
    );
    process.stop();
    let (_, ranges) = archived_lines(&second_client).await;
    let last = ranges.last().map(|range| range.1).unwrap_or(0);
    assert_contiguous(&ranges, last);
    let (code, report) = verify_archive(&format!("s3://{second}/audit"), &key, &endpoint);
    assert_eq!(code, 0, "{report}");
    assert!(
        read_all_entries(&db)
            .iter()
            .any(|entry| entry.action == "audit.config_reloaded"),
        "the reload is in the log"
    );
}

/// With `format = "ocsf"`, beside each object lies its OCSF copy: one API Activity event per
/// entry of the same range, in the same order, valid against the OCSF schema (checked by the
/// independent validator `scripts/test` installs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ocsf_archive_holds_an_ocsf_copy_of_each_object() {
    let Some(endpoint) = s3_endpoint("archive_ocsf") else {
        return;
    };
    let bucket = bucket_name("ocsf");
    create_bucket(&endpoint, &bucket, false).await;
    let upstream = Upstream::start().await;
    let (dir, key) = key_dir("archive-ocsf");
    let config = write_config(
        &dir.0,
        upstream.addr,
        "",
        &archive_config(
            &key,
            &endpoint,
            &bucket,
            "max_entries = 3\nformat = \"ocsf\"",
        ),
    );
    let process = Process::start(&config);
    let http = HttpClient::new();
    for index in 0..6 {
        let reply = http
            .send(
                "POST",
                &format!("http://{}/api/items/{index}", process.proxy),
                &[],
                "{}",
            )
            .await;
        assert_eq!(reply.status, 200);
    }
    let s3 = client(&endpoint, &bucket);
    let listed = async || -> Vec<String> {
        s3.list("audit/", None)
            .await
            .expect("list")
            .keys
            .into_iter()
            .filter(|key| key.starts_with("audit/"))
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(30), async || {
            listed()
                .await
                .iter()
                .filter(|key| key.ends_with(OCSF_SUFFIX))
                .count()
                >= 2
        })
        .await,
        "OCSF copies are shipped"
    );
    process.stop();
    let keys = listed().await;
    let copies: Vec<&String> = keys
        .iter()
        .filter(|key| key.ends_with(OCSF_SUFFIX))
        .collect();
    let files = TempDir::new("archive-ocsf-files");
    let mut paths = Vec::new();
    for copy in &copies {
        let twin = copy.replace(OCSF_SUFFIX, NDJSON_SUFFIX);
        assert!(keys.contains(&twin), "{copy} has its object {twin}");
        let name = parse_object_key(&twin).expect("layout");
        let events: Vec<Value> = gunzip(&s3.get_object(copy).await.expect("get"))
            .lines()
            .map(|line| serde_json::from_str(line).expect("an OCSF event per line"))
            .collect();
        let sequences: Vec<u64> = events
            .iter()
            .map(|event| event["metadata"]["sequence"].as_u64().expect("sequence"))
            .collect();
        assert_eq!(
            sequences,
            (name.first_seq..=name.last_seq).collect::<Vec<u64>>(),
            "{copy}"
        );
        assert!(events.iter().all(|event| event["class_uid"] == 6003));
        let path = files.0.join(format!("{}.ndjson", name.first_seq));
        std::fs::write(
            &path,
            events
                .iter()
                .map(|event| format!("{event}\n"))
                .collect::<String>(),
        )
        .expect("write");
        paths.push(path);
    }
    let borrowed: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    crate::siem_ocsf::validate_independently(&borrowed);
}
