//! Checkpoints (C2SP tlog-checkpoint signed notes), checked through the real binary with
//! implementations auditgate did not write: the `signed_note` crate, and Go's reference
//! implementation through `scripts/c2sp-verify` when it is installed or required.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auditgate::log::head::{LogSigner, SignedTreeHead};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::Value;
use signed_note::{Note, StandardVerifier, VerifierList};

use crate::support::{auditgate, path_arg};
use crate::support::{config_text, eventually, HttpClient, Process, TempDir, Upstream};

const ORIGIN: &str = "audit.example.com/orders";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A config for the real binary: every request recorded into `dir/audit.db`, and `log` as the
/// whole `[log]` section.
fn write_config(dir: &Path, upstream: SocketAddr, log: &str) -> PathBuf {
    let text = config_text(
        upstream,
        &dir.join("audit.db"),
        "",
        "[unmatched]\nrecord = \"all\"\n",
    )
    .replace("[log]\nlog_id = \"test\"\n", &format!("[log]\n{log}\n"));
    let path = dir.join("auditgate.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Verifies `note` with the `signed_note` crate against `vkey`, and returns its text.
fn signed_note_opens(vkey: &str, note: &str) -> Result<String, String> {
    let verifier = StandardVerifier::new(vkey).map_err(|error| error.to_string())?;
    let verifiers = VerifierList::new(vec![Box::new(verifier)]);
    let parsed = Note::from_bytes(note.as_bytes()).map_err(|error| error.to_string())?;
    parsed
        .verify(&verifiers)
        .map_err(|error| error.to_string())?;
    Ok(String::from_utf8_lossy(parsed.text()).into_owned())
}

/// The (origin, size, root) of a checkpoint's text.
fn checkpoint_fields(text: &str) -> (String, u64, [u8; 32]) {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "a checkpoint of three lines: {text:?}");
    let root = BASE64.decode(lines[2]).expect("base64 root");
    (
        lines[0].to_string(),
        lines[1].parse().expect("decimal size"),
        root.try_into().expect("32 bytes"),
    )
}

/// The head's JSON, as the admin API serves it.
fn head_fields(head: &Value) -> (u64, [u8; 32]) {
    let root = hex::decode(head["rootHash"].as_str().expect("rootHash")).expect("hex");
    (
        head["size"].as_u64().expect("size"),
        root.try_into().expect("32 bytes"),
    )
}

/// Runs `scripts/c2sp-verify` (Go's golang.org/x/mod/sumdb/note) on each checkpoint when
/// `AUDITGATE_REQUIRE_C2SP_VERIFIER=1` (the script installs Go if needed; any failure fails the
/// test) or when the verifier is already built; otherwise says why it was skipped. `expect_ok`
/// says whether each note must be accepted or refused.
fn go_verifies(vkey_file: &Path, notes: &[(&str, &str, bool)], dir: &Path) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let required = std::env::var("AUDITGATE_REQUIRE_C2SP_VERIFIER").as_deref() == Ok("1");
    let installed = root.join("target/c2sp-go/c2sp-verify").exists();
    if !required && !installed {
        eprintln!(
            "skipping the Go checkpoint verifier: set AUDITGATE_REQUIRE_C2SP_VERIFIER=1 (or run \
             scripts/c2sp-verify --install) to check our checkpoints with it"
        );
        return;
    }
    for (name, note, expect_ok) in notes {
        let file = dir.join(format!("{name}.checkpoint"));
        std::fs::write(&file, note).expect("write checkpoint");
        let output = Command::new(root.join("scripts/c2sp-verify"))
            .arg(vkey_file)
            .arg(&file)
            .output()
            .expect("scripts/c2sp-verify runs");
        let report = format!("{}{}", text(&output.stdout), text(&output.stderr));
        if *expect_ok {
            assert!(
                output.status.success(),
                "Go's note package refused our {name} checkpoint:\n{report}"
            );
            assert!(report.contains(&format!("ok {ORIGIN} ")), "{report}");
        } else {
            assert_eq!(
                output.status.code(),
                Some(1),
                "Go's note package accepted the {name} checkpoint:\n{report}"
            );
        }
    }
}

/// A stand-in for a witness or collector that takes checkpoints: records each POST's
/// content type and body.
struct Collector {
    addr: SocketAddr,
    posts: Arc<Mutex<Vec<(String, String)>>>,
}

impl Collector {
    async fn start() -> Collector {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let posts = Arc::new(Mutex::new(Vec::new()));
        let task_posts = posts.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let posts = task_posts.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let posts = posts.clone();
                            async move {
                                let content_type = request
                                    .headers()
                                    .get(http::header::CONTENT_TYPE)
                                    .and_then(|value| value.to_str().ok())
                                    .unwrap_or_default()
                                    .to_string();
                                let body = request
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|body| body.to_bytes())
                                    .unwrap_or_default();
                                if let Ok(mut posts) = posts.lock() {
                                    posts.push((
                                        content_type,
                                        String::from_utf8_lossy(&body).into_owned(),
                                    ));
                                }
                                http::Response::builder()
                                    .status(204)
                                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector { addr, posts }
    }

    fn posts(&self) -> Vec<(String, String)> {
        self.posts
            .lock()
            .map(|posts| posts.clone())
            .unwrap_or_default()
    }
}

fn read_heads(path: &Path) -> Vec<SignedTreeHead> {
    std::fs::read_to_string(path)
        .expect("heads file")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a head line"))
        .collect()
}

/// `auditgate keygen` writes the verifier key beside the key; a running sidecar serves its
/// latest head as a checkpoint that the `signed_note` crate (and Go's note package) verify with
/// that key, posts checkpoints to a checkpoint target, and a changed size, a changed root or
/// another key's signature is refused by both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_vkey_verifies_the_checkpoints_a_running_sidecar_serves_and_posts() {
    let upstream = Upstream::start().await;
    let collector = Collector::start().await;
    let dir = TempDir::new("checkpoint-served");
    let key = dir.0.join("log.key");
    let keygen = auditgate(&["keygen", "--out", path_arg(&key), "--origin", ORIGIN]);
    assert!(keygen.status.success(), "{}", text(&keygen.stderr));
    let vkey_file = dir.0.join("log.key.vkey");
    let vkey = std::fs::read_to_string(&vkey_file).expect("keygen wrote log.key.vkey");
    let vkey = vkey.trim_end().to_string();
    assert!(vkey.starts_with(&format!("{ORIGIN}+")), "{vkey}");
    assert!(
        text(&keygen.stdout).contains(&vkey),
        "keygen prints the vkey"
    );

    let heads_file = dir.0.join("heads.ndjson");
    let config = write_config(
        &dir.0,
        upstream.addr,
        &format!(
            "log_id = \"orders\"\nsigning_key = \"{}\"\norigin = \"{ORIGIN}\"\n\
             sign_interval = \"50ms\"\npublish_heads = [\"file:{}\", \
             {{ target = \"http://{}/checkpoints\", format = \"checkpoint\" }}]\n",
            key.display(),
            heads_file.display(),
            collector.addr
        ),
    );
    let process = Process::start(&config);
    let client = HttpClient::new();
    for index in 0..5 {
        let reply = client
            .send(
                "POST",
                &format!("http://{}/things/{index}", process.proxy),
                &[],
                "{}",
            )
            .await;
        assert_eq!(reply.status, 200);
    }
    let admin = |path: &str| format!("http://{}{path}", process.admin);

    // The served checkpoint and the served head, once they describe the same (quiet) log.
    let mut served = None;
    let settled = eventually(Duration::from_secs(15), async || {
        let checkpoint = client.get_admin(&admin("/api/v1/log/checkpoint")).await;
        let head = client.get_admin(&admin("/api/v1/log/head")).await;
        if checkpoint.status != 200 || head.status != 200 {
            return false;
        }
        let Ok(opened) = signed_note_opens(&vkey, &checkpoint.text()) else {
            return false;
        };
        let (_, size, root) = checkpoint_fields(&opened);
        let same = (size, root) == head_fields(&head.json()) && size >= 6;
        if same {
            served = Some((checkpoint, head.json()));
        }
        same
    })
    .await;
    assert!(settled, "no checkpoint matching the latest head was served");
    let (checkpoint, head) = served.expect("served");
    assert_eq!(
        checkpoint
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        Some(&b"text/plain; charset=utf-8"[..])
    );
    let note = checkpoint.text();
    let opened = signed_note_opens(&vkey, &note).expect("the signed_note crate verifies it");
    let (origin, size, root) = checkpoint_fields(&opened);
    assert_eq!(origin, ORIGIN);
    assert_eq!((size, root), head_fields(&head));

    let key_reply = client.get_admin(&admin("/api/v1/log/key")).await;
    assert_eq!(key_reply.json()["vkey"], vkey.as_str());
    assert_eq!(key_reply.json()["origin"], ORIGIN);

    // Tampered checkpoints: each is refused by the independent implementation.
    let bad_size = note.replacen(&format!("\n{size}\n"), &format!("\n{}\n", size + 1), 1);
    let mut other_root = root;
    other_root[0] ^= 1;
    let bad_root = note.replacen(&BASE64.encode(root), &BASE64.encode(other_root), 1);
    let head_struct: SignedTreeHead = serde_json::from_value(head.clone()).expect("head");
    let other_key = LogSigner::generate()
        .sign_checkpoint(ORIGIN, &head_struct.head)
        .expect("signs");
    for (what, tampered) in [
        ("size", &bad_size),
        ("root", &bad_root),
        ("key", &other_key),
    ] {
        assert_ne!(tampered, &note, "{what} was changed");
        assert!(
            signed_note_opens(&vkey, tampered).is_err(),
            "a checkpoint with another {what} was accepted"
        );
    }
    go_verifies(
        &vkey_file,
        &[
            ("served", &note, true),
            ("bad-size", &bad_size, false),
            ("bad-root", &bad_root, false),
            ("other-key", &other_key, false),
        ],
        &dir.0,
    );

    process.signal("TERM");
    let status = tokio::task::spawn_blocking(move || process.wait())
        .await
        .expect("wait");
    assert!(status.success(), "{status:?}");

    // The checkpoint target got every head as a checkpoint, in order, the last the shutdown head.
    let posts = collector.posts();
    let file = read_heads(&heads_file);
    assert_eq!(posts.len(), file.len(), "one checkpoint per head");
    for ((content_type, body), head) in posts.iter().zip(&file) {
        assert_eq!(content_type, "text/plain; charset=utf-8");
        let opened = signed_note_opens(&vkey, body).expect("a posted checkpoint verifies");
        let (origin, size, root) = checkpoint_fields(&opened);
        assert_eq!(
            (origin.as_str(), size, root),
            (ORIGIN, head.head.size, head.head.root_hash)
        );
    }
}

/// Heads signed before checkpoints were configured stay as they were: the heads file keeps its
/// lines byte for byte, `auditgate verify` still checks them, the JSON head keeps its shape, and
/// the first checkpoint served afterwards verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_stored_before_checkpoints_stay_readable_and_verifiable() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("checkpoint-compat");
    let key = dir.0.join("log.key");
    LogSigner::write_new(&key).expect("a key as older versions made it, without .vkey");
    let heads_file = dir.0.join("heads.ndjson");
    let plain_log = format!(
        "log_id = \"orders\"\nsigning_key = \"{}\"\nsign_interval = \"50ms\"\n\
         publish_heads = [\"file:{}\"]\n",
        key.display(),
        heads_file.display()
    );
    let config = write_config(&dir.0, upstream.addr, &plain_log);
    let process = Process::start(&config);
    let client = HttpClient::new();
    for index in 0..3 {
        client
            .send(
                "POST",
                &format!("http://{}/things/{index}", process.proxy),
                &[],
                "{}",
            )
            .await;
    }
    process.stop();
    let before = std::fs::read_to_string(&heads_file).expect("heads");
    assert!(before.lines().count() >= 2, "{before}");

    // Restarted with checkpoints: an origin and a checkpoint target.
    let collector = Collector::start().await;
    let checkpoint_log = format!("{plain_log}origin = \"{ORIGIN}\"\n").replace(
        "publish_heads = [",
        &format!(
            "publish_heads = [{{ target = \"http://{}/c\", format = \"checkpoint\" }}, ",
            collector.addr
        ),
    );
    let config = write_config(&dir.0, upstream.addr, &checkpoint_log);
    let process = Process::start(&config);
    let head = client
        .get_admin(&format!("http://{}/api/v1/log/head", process.admin))
        .await;
    assert_eq!(head.status, 200);
    let head_json = head.json();
    let mut fields: Vec<&str> = head_json
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "keyId",
            "logId",
            "rootHash",
            "signature",
            "size",
            "timestamp"
        ]
    );
    let key_reply = client
        .get_admin(&format!("http://{}/api/v1/log/key", process.admin))
        .await;
    let vkey = key_reply.json()["vkey"].as_str().expect("vkey").to_string();
    let checkpoint = client
        .get_admin(&format!("http://{}/api/v1/log/checkpoint", process.admin))
        .await;
    assert_eq!(checkpoint.status, 200, "{}", checkpoint.text());
    signed_note_opens(&vkey, &checkpoint.text()).expect("the checkpoint verifies");
    process.stop();

    let after = std::fs::read_to_string(&heads_file).expect("heads");
    assert!(
        after.starts_with(&before),
        "earlier head lines are unchanged"
    );
    let public = format!("{}.pub", key.display());
    let output = auditgate(&[
        "verify",
        "--db",
        path_arg(&dir.0.join("audit.db")),
        "--heads",
        path_arg(&heads_file),
        "--key",
        &public,
    ]);
    let report = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{report}");
    // Each of the old heads still verifies under the key, and has a checkpoint of its own.
    let signer = LogSigner::load(&key).expect("key");
    let vkey_parsed = auditgate::log::checkpoint::VerifierKey::parse(&vkey).expect("vkey");
    for line in before.lines() {
        let head: SignedTreeHead = serde_json::from_str(line).expect("an old head line");
        signer.public_key().verify(&head).expect("verifies");
        let note = signer.sign_checkpoint(ORIGIN, &head.head).expect("signs");
        let checkpoint = vkey_parsed.verify_checkpoint(&note).expect("verifies");
        assert!(checkpoint.matches_head(&head.head));
    }
}
