//! Offline proofs of single entries in the C2SP tlog-proof form: served by
//! `GET /api/v1/entries/{id}/tlog-proof` of a real sidecar and written by
//! `auditgate export --bundle`, checked by `auditgate verify-proof` and by code auditgate did not
//! write: the `signed_note` and `tlog_tiles` crates, and Go's golang.org/x/mod/sumdb/note and
//! sumdb/tlog through `scripts/c2sp-verify proof` when it is installed or required. Each must
//! accept the proof as served and refuse an edited entry, a wrong index, a dropped or edited
//! proof hash, a checkpoint of another tree and a signature by another key.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use auditgate::log::checkpoint::write_new_key_files;
use auditgate::log::head::{LogSigner, TreeHead};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use signed_note::{Note, StandardVerifier, VerifierList};

use crate::support::auditgate_report as auditgate;
use crate::support::path_arg;
use crate::support::{
    config_text, eventually, read_all_entries, HttpClient, TempDir, TestSidecar, Upstream,
};

const ORIGIN: &str = "audit.example.com/proofs";

/// What the independent check found in a proof: the entry's bytes, its index, the tree size.
#[derive(Debug)]
struct Independent {
    extra: Vec<u8>,
    index: u64,
    size: u64,
}

/// Checks a tlog proof with the `signed_note` and `tlog_tiles` crates, reading the text by hand
/// from the spec (c2sp.org/tlog-proof): the checkpoint signed by `vkey` with the key's name as
/// its origin, and `tlog_tiles::check_record` from `record_hash(extra)` at `index` to its root.
fn independent_check(vkey: &str, text: &str) -> Result<Independent, String> {
    let (head, note) = text
        .split_once("\n\n")
        .ok_or("no empty line before the checkpoint")?;
    let mut lines = head.split('\n');
    if lines.next() != Some("c2sp.org/tlog-proof@v1") {
        return Err("not a tlog proof".into());
    }
    let mut line = lines.next().ok_or("no index line")?;
    let mut extra = None;
    if let Some(encoded) = line.strip_prefix("extra ") {
        extra = Some(BASE64.decode(encoded).map_err(|error| error.to_string())?);
        line = lines.next().ok_or("no index line")?;
    }
    let index: u64 = line
        .strip_prefix("index ")
        .ok_or("no index line")?
        .parse()
        .map_err(|_| "bad index")?;
    let proof = lines
        .map(|line| {
            let bytes = BASE64.decode(line).map_err(|error| error.to_string())?;
            Ok(tlog_tiles::Hash(
                bytes.try_into().map_err(|_| "a hash is not 32 bytes")?,
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let verifier = StandardVerifier::new(vkey).map_err(|error| error.to_string())?;
    let name = signed_note::Verifier::name(&verifier).to_string();
    let parsed = Note::from_bytes(note.as_bytes()).map_err(|error| error.to_string())?;
    parsed
        .verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|error| error.to_string())?;
    let checkpoint = tlog_tiles::Checkpoint::from_bytes(parsed.text())
        .map_err(|_| "the note is not a checkpoint".to_string())?;
    if checkpoint.origin() != name {
        return Err(format!("origin {} is not {name}", checkpoint.origin()));
    }
    let extra = extra.ok_or("no extra data to hash")?;
    tlog_tiles::check_record(
        &proof,
        checkpoint.size(),
        *checkpoint.hash(),
        index,
        tlog_tiles::record_hash(&extra),
    )
    .map_err(|error| error.to_string())?;
    Ok(Independent {
        extra,
        index,
        size: checkpoint.size(),
    })
}

/// Runs `scripts/c2sp-verify proof` (Go's sumdb/note and sumdb/tlog) on a proof file when
/// `AUDITGATE_REQUIRE_C2SP_VERIFIER=1` or the verifier is built; `None` when skipped, else
/// whether it accepted and what it said.
fn go_verifies(vkey_file: &Path, proof_file: &Path) -> Option<(bool, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let required = std::env::var("AUDITGATE_REQUIRE_C2SP_VERIFIER").as_deref() == Ok("1");
    if !required && !root.join("target/c2sp-go/c2sp-verify").exists() {
        eprintln!(
            "skipping the Go proof verifier: set AUDITGATE_REQUIRE_C2SP_VERIFIER=1 (or run \
             scripts/c2sp-verify --install) to check our proofs with it"
        );
        return None;
    }
    let output = Command::new(root.join("scripts/c2sp-verify"))
        .arg("proof")
        .arg(vkey_file)
        .arg(proof_file)
        .output()
        .expect("scripts/c2sp-verify runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        matches!(output.status.code(), Some(0 | 1)),
        "the Go verifier could not run: {report}"
    );
    Some((output.status.success(), report))
}

/// A sidecar recording every request, signing heads with a fresh key under [`ORIGIN`] every
/// `sign_interval`. Returns it with the key's path and its `.vkey` file.
async fn signing_sidecar(upstream: &Upstream, sign_interval: &str) -> (TestSidecar, PathBuf) {
    let dir = TempDir::new("tlog-proof");
    let key = dir.0.join("log.key");
    write_new_key_files(&key, ORIGIN).expect("key files");
    let log = format!(
        "[log]\nlog_id = \"orders\"\nsigning_key = \"{}\"\norigin = \"{ORIGIN}\"\n\
         sign_interval = \"{sign_interval}\"\n",
        key.display()
    );
    let sidecar = TestSidecar::start_in(dir, |db| {
        config_text(upstream.addr, db, "", "[unmatched]\nrecord = \"all\"\n")
            .replace("[log]\nlog_id = \"test\"\n", &log)
    })
    .await;
    (sidecar, key)
}

/// The tampered variants of a proof, each named.
fn tampered(text: &str, log_key: &LogSigner, other_key: &LogSigner) -> Vec<(&'static str, String)> {
    let lines: Vec<&str> = text.split('\n').collect();
    let extra_line = lines[1];
    let index_line = lines[2];
    let first_hash = lines[3];
    assert!(extra_line.starts_with("extra ") && index_line.starts_with("index "));
    assert_eq!(BASE64.decode(first_hash).map(|b| b.len()), Ok(32));
    let entry_json =
        String::from_utf8(BASE64.decode(&extra_line[6..]).expect("base64")).expect("utf-8");
    let edited_entry = entry_json.replacen("\"status\":200", "\"status\":204", 1);
    assert_ne!(edited_entry, entry_json, "the entry has a status to edit");
    let index: u64 = index_line[6..].parse().expect("index");
    let mut flipped = BASE64.decode(first_hash).expect("hash");
    flipped[0] ^= 1;

    let (body, note) = text.split_once("\n\n").expect("a checkpoint");
    let note_lines: Vec<&str> = note.split('\n').collect();
    let size: u64 = note_lines[1].parse().expect("size");
    let root: [u8; 32] = BASE64
        .decode(note_lines[2])
        .expect("root")
        .try_into()
        .expect("32 bytes");
    let head = TreeHead::new("orders", size, root, chrono::Utc::now()).expect("head");
    let by_other_key = other_key.sign_checkpoint(ORIGIN, &head).expect("signs");
    // A checkpoint the log's own key signed, of another tree: the proof does not lead to it.
    let mut other_root = root;
    other_root[0] ^= 1;
    let other_tree =
        TreeHead::new("orders", size + 1, other_root, chrono::Utc::now()).expect("head");
    let other_checkpoint = log_key.sign_checkpoint(ORIGIN, &other_tree).expect("signs");
    // The signed size edited in place.
    let edited_size = note.replacen(&format!("\n{size}\n"), &format!("\n{}\n", size + 1), 1);
    vec![
        (
            "edited entry",
            text.replacen(
                extra_line,
                &format!("extra {}", BASE64.encode(&edited_entry)),
                1,
            ),
        ),
        (
            "wrong index",
            text.replacen(index_line, &format!("index {}", index + 1), 1),
        ),
        (
            "dropped proof hash",
            text.replacen(&format!("{first_hash}\n"), "", 1),
        ),
        (
            "edited proof hash",
            text.replacen(first_hash, &BASE64.encode(&flipped), 1),
        ),
        (
            "checkpoint of another tree",
            format!("{body}\n\n{other_checkpoint}"),
        ),
        ("edited checkpoint size", format!("{body}\n\n{edited_size}")),
        (
            "signature by another key",
            format!("{body}\n\n{by_other_key}"),
        ),
    ]
}

/// A proof served by a running sidecar verifies with `auditgate verify-proof`, with the
/// `signed_note` and `tlog_tiles` crates and with Go's sumdb packages, carries the stored entry
/// byte for byte, and every tampered variant is refused by all three; the download is named
/// after the entry, and reading it is itself audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_proof_from_the_api_verifies_offline_and_tampering_is_caught() {
    let upstream = Upstream::start().await;
    let (sidecar, key) = signing_sidecar(&upstream, "50ms").await;
    let client = HttpClient::new();
    for index in 0..5 {
        let reply = client
            .send("POST", &sidecar.url(&format!("/things/{index}")), &[], "{}")
            .await;
        assert_eq!(reply.status, 200);
    }
    let stored = sidecar
        .wait_entry(|entry| entry.path.as_deref() == Some("/things/2"))
        .await;
    let admin = format!("http://{}/api/v1/entries", sidecar.admin);

    let mut served = None;
    let covered = eventually(Duration::from_secs(15), async || {
        let reply = client
            .get_admin(&format!("{admin}/{}/tlog-proof", stored.seq))
            .await;
        let ok = reply.status == 200;
        served = Some(reply);
        ok
    })
    .await;
    let reply = served.expect("asked at least once");
    assert!(
        covered,
        "no proof was served: {} {}",
        reply.status,
        reply.text()
    );
    assert_eq!(
        reply
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        Some(&b"text/plain; charset=utf-8"[..])
    );
    assert_eq!(
        reply
            .headers
            .get(http::header::CONTENT_DISPOSITION)
            .map(|v| v.as_bytes()),
        Some(format!("attachment; filename=\"entry-{}.tlog-proof\"", stored.seq).as_bytes())
    );
    let text = reply.text();
    // By id, the same proof (the head may have moved on meanwhile, so only the entry is compared).
    let by_id = client
        .get_admin(&format!("{admin}/{}/tlog-proof", stored.id))
        .await;
    assert_eq!(by_id.status, 200, "{}", by_id.text());
    assert_eq!(
        by_id.text().lines().take(3).collect::<Vec<_>>(),
        text.lines().take(3).collect::<Vec<_>>()
    );

    let vkey_file = PathBuf::from(format!("{}.vkey", key.display()));
    let vkey = std::fs::read_to_string(&vkey_file).expect("vkey");
    let vkey = vkey.trim_end();
    let found = independent_check(vkey, &text).expect("the independent check accepts it");
    assert_eq!(found.index, stored.seq - 1);
    assert!(found.size >= stored.seq);
    let in_store = read_all_entries(&sidecar.db)
        .into_iter()
        .find(|entry| entry.seq == stored.seq)
        .expect("stored");
    assert_eq!(found.extra, in_store.canonical_bytes());

    let dir = &sidecar.dir.0;
    let file = dir.join(format!("entry-{}.tlog-proof", stored.seq));
    std::fs::write(&file, &text).expect("write");
    let (code, out) = auditgate(&[
        "verify-proof",
        path_arg(&file),
        "--vkey",
        path_arg(&vkey_file),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            ": ok seq {} action http.post in {ORIGIN} at size {}",
            stored.seq, found.size
        )),
        "{out}"
    );
    if let Some((accepted, report)) = go_verifies(&vkey_file, &file) {
        assert!(accepted, "Go refused our proof: {report}");
        assert!(
            report.contains(&format!("ok {ORIGIN} {} {}", found.size, found.index)),
            "{report}"
        );
    }

    let other_key = LogSigner::generate();
    let mut files = vec![file.clone()];
    let log_key = LogSigner::load(&key).expect("the log's key");
    for (what, bad) in tampered(&text, &log_key, &other_key) {
        assert_ne!(bad, text, "{what}: the proof was changed");
        assert!(
            independent_check(vkey, &bad).is_err(),
            "the independent check accepted a proof with an {what}"
        );
        let bad_file = dir.join(format!("{}.tlog-proof", what.replace(' ', "-")));
        std::fs::write(&bad_file, &bad).expect("write");
        let (code, out) = auditgate(&[
            "verify-proof",
            path_arg(&bad_file),
            "--vkey",
            path_arg(&vkey_file),
        ]);
        assert_eq!(
            code, 1,
            "verify-proof accepted a proof with an {what}: {out}"
        );
        assert!(out.contains(": INVALID: "), "{what}: {out}");
        if let Some((accepted, report)) = go_verifies(&vkey_file, &bad_file) {
            assert!(!accepted, "Go accepted a proof with an {what}: {report}");
        }
        files.push(bad_file);
    }
    // Several files at once: one line each, and any invalid one makes the exit code 1.
    let mut args = vec!["verify-proof"];
    args.extend(files.iter().map(|file| path_arg(file)));
    args.extend(["--vkey", path_arg(&vkey_file)]);
    let (code, out) = auditgate(&args);
    assert_eq!(code, 1, "{out}");
    assert_eq!(out.lines().count(), files.len(), "{out}");
    assert_eq!(out.matches(": ok seq ").count(), 1, "{out}");
    // A file that is not a proof, or missing, cannot be checked: exit 2.
    let not_a_proof = dir.join("not-a-proof.tlog-proof");
    std::fs::write(&not_a_proof, "hello\n").expect("write");
    for unreadable in [not_a_proof, dir.join("missing.tlog-proof")] {
        let (code, out) = auditgate(&[
            "verify-proof",
            path_arg(&file),
            path_arg(&unreadable),
            "--vkey",
            path_arg(&vkey_file),
        ]);
        assert_eq!(code, 2, "{out}");
        assert!(out.contains(": cannot check: "), "{out}");
    }

    // An unknown entry is 404; reading a proof is audited as a read of the entry.
    let missing = client
        .get_admin(&format!("{admin}/999999/tlog-proof"))
        .await;
    assert_eq!(missing.status, 404, "{}", missing.text());
    let audited = sidecar
        .wait_entry(|entry| {
            entry.action == "audit.query"
                && entry.status == Some(200)
                && entry.path.as_deref()
                    == Some(&format!("/api/v1/entries/{}/tlog-proof", stored.seq))
        })
        .await;
    assert_eq!(audited.actor_id.as_deref(), Some("tests"));
    assert_eq!(audited.resource_id, Some(stored.seq.to_string()));
}

/// Before a signed head covers an entry, and on a sidecar without a signing key, the proof is
/// refused with 409 and a reason, not an empty or unverifiable file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_no_checkpoint_can_back_is_refused_with_the_reason() {
    let upstream = Upstream::start().await;
    let client = HttpClient::new();
    let (sidecar, _key) = signing_sidecar(&upstream, "1h").await;
    // The head signed at start can cover the first request when its entry is committed before
    // the signer's first tick (a loaded machine): then the next request's entry is the one no
    // head covers (the next head is an hour away).
    let mut entry = None;
    for attempt in 0..3 {
        let path = format!("/things/late-{attempt}");
        client.send("POST", &sidecar.url(&path), &[], "{}").await;
        let written = sidecar
            .wait_entry(|entry| entry.path.as_deref() == Some(path.as_str()))
            .await;
        let head = client
            .get_admin(&format!("http://{}/api/v1/log/head", sidecar.admin))
            .await;
        let covered = head.status == 200 && head.json()["size"].as_u64() >= Some(written.seq);
        entry = Some(written);
        if !covered {
            break;
        }
    }
    let entry = entry.expect("an entry");
    let reply = client
        .get_admin(&format!(
            "http://{}/api/v1/entries/{}/tlog-proof",
            sidecar.admin, entry.seq
        ))
        .await;
    assert_eq!(reply.status, 409, "{}", reply.text());
    let reason = reply.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("signed tree head"), "{reason}");

    let unsigned = TestSidecar::start(upstream.addr, "[unmatched]\nrecord = \"all\"\n").await;
    client
        .send("POST", &unsigned.url("/things/unsigned"), &[], "{}")
        .await;
    let entry = unsigned
        .wait_entry(|entry| entry.path.as_deref() == Some("/things/unsigned"))
        .await;
    let reply = client
        .get_admin(&format!(
            "http://{}/api/v1/entries/{}/tlog-proof",
            unsigned.admin, entry.seq
        ))
        .await;
    assert_eq!(reply.status, 409, "{}", reply.text());
    assert!(
        reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .contains("signing_key"),
        "{}",
        reply.text()
    );
}

/// `auditgate export --bundle DIR` writes what an auditor takes away: the export with proofs
/// (verify-export accepts it), one tlog proof per entry of it (verify-proof, the independent
/// crates and Go accept each), the checkpoint and the verifier key; it never writes into an
/// existing directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_bundle_holds_a_proof_per_entry_that_verifies_offline() {
    let upstream = Upstream::start().await;
    let (mut sidecar, key) = signing_sidecar(&upstream, "50ms").await;
    let client = HttpClient::new();
    for index in 0..6 {
        client
            .send("POST", &sidecar.url(&format!("/things/{index}")), &[], "{}")
            .await;
    }
    sidecar.wait_entries(6).await;
    // Stopping signs a last head covering everything written.
    sidecar.stop().await;

    let bundle = sidecar.dir.0.join("bundle");
    let db = path_arg(&sidecar.db).to_string();
    let (code, out) = auditgate(&[
        "export",
        "--db",
        &db,
        "--bundle",
        path_arg(&bundle),
        "--key",
        path_arg(&key),
        "--origin",
        ORIGIN,
        "--action-prefix",
        "http.",
    ]);
    assert_eq!(code, 0, "{out}");
    let entries = std::fs::read_to_string(bundle.join("entries.ndjson")).expect("entries.ndjson");
    let lines: Vec<serde_json::Value> = entries
        .lines()
        .map(|line| serde_json::from_str(line).expect("json"))
        .collect();
    let seqs: Vec<u64> = lines
        .iter()
        .filter_map(|line| line["seq"].as_u64())
        .collect();
    assert_eq!(seqs.len(), 6, "{entries}");
    assert!(lines.last().expect("a trailer").get("treeHead").is_some());
    let mut proof_names: Vec<String> = std::fs::read_dir(bundle.join("proofs"))
        .expect("proofs/")
        .map(|file| {
            file.expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    proof_names.sort_unstable();
    let mut expected: Vec<String> = seqs.iter().map(|seq| format!("{seq}.tlog-proof")).collect();
    expected.sort_unstable();
    assert_eq!(proof_names, expected);

    let vkey_file = bundle.join("log.vkey");
    let vkey = std::fs::read_to_string(&vkey_file).expect("log.vkey");
    assert_eq!(
        vkey,
        std::fs::read_to_string(format!("{}.vkey", key.display())).expect("keygen's vkey")
    );
    let checkpoint = std::fs::read_to_string(bundle.join("checkpoint")).expect("checkpoint");
    let (code, out) = auditgate(&[
        "verify-export",
        path_arg(&bundle.join("entries.ndjson")),
        "--key",
        &format!("{}.pub", key.display()),
    ]);
    assert_eq!(code, 0, "{out}");

    let mut args = vec!["verify-proof".to_string()];
    for name in &proof_names {
        let file = bundle.join("proofs").join(name);
        let text = std::fs::read_to_string(&file).expect("proof");
        assert!(
            text.ends_with(&checkpoint),
            "every proof carries the bundle's checkpoint"
        );
        let found = independent_check(vkey.trim_end(), &text).expect("independent check");
        assert_eq!(
            found.index + 1,
            name.trim_end_matches(".tlog-proof")
                .parse::<u64>()
                .expect("seq")
        );
        if let Some((accepted, report)) = go_verifies(&vkey_file, &file) {
            assert!(accepted, "Go refused {name}: {report}");
        }
        args.push(path_arg(&file).to_string());
    }
    args.extend(["--vkey".to_string(), path_arg(&vkey_file).to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out) = auditgate(&args);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches(": ok seq ").count(), 6, "{out}");
    assert!(out.contains("action http.post"), "{out}");

    // The directory exists now: a second export refuses it rather than mixing two bundles.
    let (code, out) = auditgate(&[
        "export",
        "--db",
        &db,
        "--bundle",
        path_arg(&bundle),
        "--key",
        path_arg(&key),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("already exists"), "{out}");
    // Without a key to sign the checkpoint, no bundle.
    let (code, out) = auditgate(&[
        "export",
        "--db",
        &db,
        "--bundle",
        path_arg(&sidecar.dir.0.join("unsigned")),
    ]);
    assert_eq!(code, 64, "{out}");
    assert!(!sidecar.dir.0.join("unsigned").exists());
}

/// An entry removed by retention has no content left for a tlog proof to carry: the API answers
/// 410 Gone and says so (its leaf is still proved by `/proof`), while an entry kept beside it
/// still gets its proof.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pruned_entry_has_no_tlog_proof_and_says_why() {
    use auditgate::store::retention::{prune_all, PrunePlan, PrunedBy};
    let upstream = Upstream::start().await;
    let (sidecar, _key) = signing_sidecar(&upstream, "50ms").await;
    let client = HttpClient::new();
    client
        .send("POST", &sidecar.url("/things/old"), &[], "{}")
        .await;
    let old = sidecar
        .wait_entry(|entry| entry.path.as_deref() == Some("/things/old"))
        .await;
    // Retention as `auditgate prune` runs it beside a sidecar: everything so far is due.
    let store = auditgate::store::sqlite::SqliteStore::open(
        &sidecar.db,
        auditgate::store::config::SyncMode::Normal,
    )
    .expect("store");
    let plan = PrunePlan {
        default_cutoff: Some(chrono::Utc::now() + chrono::Duration::seconds(1)),
        rules: Vec::new(),
    };
    let pruned =
        prune_all(&store, &plan, "orders", &PrunedBy::Retention, &|| true).expect("prunes");
    assert!(pruned.entries() >= 1);
    drop(store);
    client
        .send("POST", &sidecar.url("/things/kept"), &[], "{}")
        .await;
    let kept = sidecar
        .wait_entry(|entry| entry.path.as_deref() == Some("/things/kept"))
        .await;

    let proof_of = |seq: u64| format!("http://{}/api/v1/entries/{seq}/tlog-proof", sidecar.admin);
    let mut reply = client.get_admin(&proof_of(old.seq)).await;
    assert_eq!(reply.status, 410, "{}", reply.text());
    assert!(
        reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .contains("pruned"),
        "{}",
        reply.text()
    );
    let leaf_url = format!("http://{}/api/v1/entries/{}/proof", sidecar.admin, old.seq);
    let mut leaf = client.get_admin(&leaf_url).await;
    let proved = eventually(Duration::from_secs(10), async || {
        leaf = client.get_admin(&leaf_url).await;
        leaf.status == 200
    })
    .await;
    assert!(proved, "{} {}", leaf.status, leaf.text());
    let proved = eventually(Duration::from_secs(10), async || {
        reply = client.get_admin(&proof_of(kept.seq)).await;
        reply.status == 200
    })
    .await;
    assert!(proved, "{} {}", reply.status, reply.text());
    assert!(reply.text().starts_with("c2sp.org/tlog-proof@v1\n"));
}
