//! Witnesses (C2SP tlog-witness, tlog-cosignature) against a real sidecar: a test witness written
//! from the spec, which checks every submitted checkpoint with the independent `signed_note`
//! crate and every consistency proof with the independent `tlog_tiles` crate, keeps its latest
//! size atomically, refuses as the spec says, and cosigns with an Ed25519 cosignature/v1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _};
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};
use signed_note::{Note, StandardVerifier, VerifierList};

use crate::support::{auditgate, path_arg};
use crate::support::{
    config_text, eventually, metric_count, HttpClient, TempDir, TestSidecar, Upstream,
};

const ORIGIN: &str = "audit.example.com/orders";
const WITNESS_NAME: &str = "witness.test/w1";

/// The cosignature/v1 key ID, from the spec: SHA-256(name || "\n" || 0x04 || key)[:4].
fn cosigner_key_id(name: &str, key: &[u8; 32]) -> u32 {
    let digest = Sha256::digest([name.as_bytes(), b"\n", &[0x04], key].concat());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The spec's signed message: the header line, the time line, the checkpoint's note text.
fn cosigned_message(text: &[u8], timestamp: u64) -> Vec<u8> {
    [
        format!("cosignature/v1\ntime {timestamp}\n").as_bytes(),
        text,
    ]
    .concat()
}

/// An Ed25519 cosignature/v1 signer for the `signed_note` crate's notes, written from the spec:
/// the signature is the 8-byte big-endian timestamp and the Ed25519 signature of the message.
struct CosignatureSigner {
    name: String,
    key: SigningKey,
    timestamp: u64,
}

impl signed_note::Signer for CosignatureSigner {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        cosigner_key_id(&self.name, self.key.verifying_key().as_bytes())
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, ed25519_dalek::SignatureError> {
        let signature = self.key.sign(&cosigned_message(msg, self.timestamp));
        Ok([&self.timestamp.to_be_bytes()[..], &signature.to_bytes()].concat())
    }
}

/// The matching verifier, so the `signed_note` crate checks cosigned checkpoints.
struct CosignatureVerifier {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl signed_note::Verifier for CosignatureVerifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        cosigner_key_id(&self.name, self.key.as_bytes())
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        if sig.len() != 72 {
            return false;
        }
        let timestamp = u64::from_be_bytes(sig[..8].try_into().unwrap_or_default());
        let Ok(signature) = ed25519_dalek::Signature::from_slice(&sig[8..]) else {
            return false;
        };
        timestamp != 0
            && self
                .key
                .verify(&cosigned_message(msg, timestamp), &signature)
                .is_ok()
    }
}

/// What the test witness holds and saw.
#[derive(Debug, Default)]
struct WitnessState {
    /// The latest cosigned checkpoint of the log: size and root (size 0: none).
    size: u64,
    root: [u8; 32],
    /// Every checkpoint cosigned, in order.
    cosigned: Vec<(u64, [u8; 32])>,
    /// Every request: (old size sent, status answered).
    requests: Vec<(u64, u16)>,
}

struct TestWitness {
    addr: SocketAddr,
    state: Arc<Mutex<WitnessState>>,
    key: SigningKey,
}

impl TestWitness {
    /// A witness that trusts `log_vkey` for [`ORIGIN`].
    async fn start(log_vkey: &str, seed: u8) -> TestWitness {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(WitnessState::default()));
        let key = SigningKey::from_bytes(&[seed; 32]);
        let shared = (state.clone(), key.clone(), log_vkey.to_string());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let (state, key, log_vkey) = shared.clone();
                            async move {
                                let path = request.uri().path().to_string();
                                let body = request
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|body| body.to_bytes())
                                    .unwrap_or_default();
                                let (status, content_type, answer) = if path == "/w1/add-checkpoint"
                                {
                                    add_checkpoint(&state, &key, &log_vkey, &body)
                                } else {
                                    (404, "text/plain", String::new())
                                };
                                http::Response::builder()
                                    .status(status)
                                    .header("content-type", content_type)
                                    .body(Full::new(Bytes::from(answer)))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestWitness { addr, state, key }
    }

    fn vkey(&self) -> String {
        let public = self.key.verifying_key();
        format!(
            "{WITNESS_NAME}+{:08x}+{}",
            cosigner_key_id(WITNESS_NAME, public.as_bytes()),
            BASE64.encode([&[0x04][..], public.as_bytes()].concat())
        )
    }

    /// The `[[log.witnesses]]` table of this witness.
    fn config(&self) -> String {
        format!(
            "[[log.witnesses]]\nurl = \"http://{}/w1\"\nvkey = \"{}\"\ntimeout = \"2s\"\n",
            self.addr,
            self.vkey()
        )
    }

    fn with_state<T>(&self, read: impl FnOnce(&mut WitnessState) -> T) -> T {
        read(&mut self.state.lock().expect("witness state"))
    }

    fn verifier(&self) -> CosignatureVerifier {
        CosignatureVerifier {
            name: WITNESS_NAME.into(),
            key: self.key.verifying_key(),
        }
    }
}

/// The add-checkpoint endpoint as tlog-witness specifies it. The check of the old size and the
/// update of the latest checkpoint happen under one lock, so they are atomic.
fn add_checkpoint(
    state: &Mutex<WitnessState>,
    key: &SigningKey,
    log_vkey: &str,
    body: &[u8],
) -> (u16, &'static str, String) {
    let Ok(mut state) = state.lock() else {
        return (500, "text/plain", String::new());
    };
    let (status, content_type, answer, old) = check_and_cosign(&mut state, key, log_vkey, body);
    state.requests.push((old, status));
    (status, content_type, answer)
}

fn check_and_cosign(
    state: &mut WitnessState,
    key: &SigningKey,
    log_vkey: &str,
    body: &[u8],
) -> (u16, &'static str, String, u64) {
    let refuse = |status: u16, old: u64| (status, "text/plain", String::new(), old);
    let Ok(body) = std::str::from_utf8(body) else {
        return refuse(400, 0);
    };
    // The old size line, the proof lines, an empty line, the checkpoint.
    let Some((head, note)) = body.split_once("\n\n") else {
        return refuse(400, 0);
    };
    let mut lines = head.split('\n');
    let Some(old) = lines
        .next()
        .and_then(|line| line.strip_prefix("old "))
        .and_then(|size| size.parse::<u64>().ok())
    else {
        return refuse(400, 0);
    };
    let proof: Option<Vec<tlog_tiles::Hash>> = lines
        .map(|line| {
            BASE64
                .decode(line)
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .map(tlog_tiles::Hash)
        })
        .collect();
    let Some(proof) = proof.filter(|proof| proof.len() <= 63) else {
        return refuse(400, old);
    };
    let Ok(parsed) = Note::from_bytes(note.as_bytes()) else {
        return refuse(400, old);
    };
    let Ok(checkpoint) = tlog_tiles::Checkpoint::from_bytes(parsed.text()) else {
        return refuse(400, old);
    };
    if checkpoint.origin() != ORIGIN {
        return refuse(404, old);
    }
    let Ok(log_key) = StandardVerifier::new(log_vkey) else {
        return refuse(500, old);
    };
    if parsed
        .verify(&VerifierList::new(vec![Box::new(log_key)]))
        .is_err()
    {
        return refuse(403, old);
    }
    let size = checkpoint.size();
    let root = checkpoint.hash().0;
    if old > size {
        return refuse(400, old);
    }
    if old != state.size {
        return (409, "text/x.tlog.size", format!("{}\n", state.size), old);
    }
    if size == 0 && root != <[u8; 32]>::from(Sha256::digest(b"")) {
        return refuse(422, old);
    }
    let consistent = if old == 0 {
        proof.is_empty()
    } else if old == size {
        proof.is_empty() && root == state.root
    } else {
        tlog_tiles::check_tree(
            &proof,
            size,
            tlog_tiles::Hash(root),
            old,
            tlog_tiles::Hash(state.root),
        )
        .is_ok()
    };
    if !consistent {
        return refuse(422, old);
    }
    state.size = size;
    state.root = root;
    state.cosigned.push((size, root));
    let timestamp = chrono::Utc::now().timestamp().max(1) as u64;
    let signer = CosignatureSigner {
        name: WITNESS_NAME.into(),
        key: key.clone(),
        timestamp,
    };
    let Ok(mut cosigned) = Note::new(parsed.text(), &[]) else {
        return refuse(500, old);
    };
    if cosigned.add_sigs(&[&signer]).is_err() {
        return refuse(500, old);
    }
    // The note's bytes are its text, an empty line and the signature lines: answer those lines.
    let bytes = cosigned.to_bytes();
    let lines = String::from_utf8_lossy(&bytes[parsed.text().len() + 1..]).into_owned();
    (200, "text/plain", lines, old)
}

/// A key for the log (with its `.vkey` beside it) in `dir`.
fn log_key(dir: &Path) -> String {
    let (_, vkey) = auditgate::log::checkpoint::write_new_key_files(&dir.join("log.key"), ORIGIN)
        .expect("key files");
    vkey.to_string()
}

/// A sidecar recording everything, signing a head per entry, asking `witnesses`.
async fn sidecar(dir: TempDir, upstream: SocketAddr, witnesses: &str) -> TestSidecar {
    let witnesses = witnesses.to_string();
    TestSidecar::start_in(dir, move |db| {
        config_text(
            upstream,
            db,
            "",
            &format!("[unmatched]\nrecord = \"all\"\n\n{witnesses}"),
        )
        .replace(
            "[log]\nlog_id = \"test\"\n",
            &format!(
                "[log]\nlog_id = \"test\"\nsigning_key = \"log.key\"\norigin = \"{ORIGIN}\"\n\
                 sign_every = 1\nsign_interval = \"50ms\"\n"
            ),
        )
    })
    .await
}

async fn traffic(sidecar: &TestSidecar, client: &HttpClient, count: usize) {
    for index in 0..count {
        let reply = client
            .send("POST", &sidecar.url(&format!("/orders/{index}")), &[], "x")
            .await;
        assert_eq!(reply.status, 200);
    }
}

async fn metrics(sidecar: &TestSidecar, client: &HttpClient) -> String {
    client
        .get_admin(&format!("http://{}/metrics", sidecar.admin))
        .await
        .text()
}

fn series(name: &str, reason: Option<&str>) -> String {
    match reason {
        Some(reason) => format!("{name}{{witness=\"{WITNESS_NAME}\",reason=\"{reason}\"}}"),
        None => format!("{name}{{witness=\"{WITNESS_NAME}\"}}"),
    }
}

/// The checkpoint at /tlog/checkpoint and the witness cosignature lines in it.
async fn served_checkpoint(sidecar: &TestSidecar, client: &HttpClient) -> (String, usize) {
    let note = client
        .get_admin(&format!("http://{}/tlog/checkpoint", sidecar.admin))
        .await
        .text();
    let cosignatures = note
        .lines()
        .filter(|line| line.starts_with(&format!("\u{2014} {WITNESS_NAME} ")))
        .count();
    (note, cosignatures)
}

/// After traffic, the witness has cosigned the log's checkpoints (each submission checked by
/// the independent crates, proofs from a non-zero old size among them), the sidecar stored its
/// cosignatures, and /tlog/checkpoint serves the latest checkpoint with them: the `signed_note`
/// crate verifies both the log's signature and the witness's cosignature on the served note.
#[tokio::test]
async fn cosignatures_are_stored_and_served_with_the_checkpoint() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("witness-cosigned");
    let log_vkey = log_key(&dir.0);
    let witness = TestWitness::start(&log_vkey, 1).await;
    let mut sidecar = sidecar(dir, upstream.addr, &witness.config()).await;
    let client = HttpClient::new();
    // Two rounds, so a later checkpoint is submitted with a proof from an earlier one.
    traffic(&sidecar, &client, 2).await;
    let first = eventually(Duration::from_secs(10), async || {
        witness.with_state(|state| state.size >= 3)
    })
    .await;
    assert!(
        first,
        "{:?}",
        witness.with_state(|state| state.requests.clone())
    );
    traffic(&sidecar, &client, 3).await;
    sidecar.wait_entries(5).await;

    let mut served = String::new();
    let cosigned = eventually(Duration::from_secs(10), async || {
        let (note, count) = served_checkpoint(&sidecar, &client).await;
        let witness_size = witness.with_state(|state| state.size);
        let size: u64 = note
            .lines()
            .nth(1)
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        served = note;
        count == 1 && size >= 6 && witness_size == size
    })
    .await;
    assert!(cosigned, "no cosigned checkpoint was served: {served}");

    let log = StandardVerifier::new(&log_vkey).expect("log vkey");
    let parsed = Note::from_bytes(served.as_bytes()).expect("a note");
    let (verified, unverified) = parsed
        .verify(&VerifierList::new(vec![
            Box::new(log),
            Box::new(witness.verifier()),
        ]))
        .expect("the log's signature and the witness's cosignature verify");
    assert_eq!(verified.len(), 2, "{served}");
    assert!(unverified.is_empty());
    // The note still verifies for a client that knows only the log's key.
    let log_only = VerifierList::new(vec![Box::new(
        StandardVerifier::new(&log_vkey).expect("log vkey"),
    )]);
    assert!(parsed.verify(&log_only).is_ok());

    let requests = witness.with_state(|state| state.requests.clone());
    assert!(
        requests
            .iter()
            .any(|(old, status)| *old > 0 && *status == 200),
        "a consistency proof from an earlier size was accepted: {requests:?}"
    );
    assert!(
        requests.iter().all(|(_, status)| *status == 200),
        "the witness refused nothing: {requests:?}"
    );
    let text = metrics(&sidecar, &client).await;
    assert!(metric_count(&text, &series("auditgate_witness_cosignatures_total", None)) >= Some(1));
    assert!(metric_count(&text, &series("auditgate_witness_cosigned_size", None)) >= Some(6));
    assert_eq!(
        metric_count(
            &text,
            &series("auditgate_witness_failures_total", Some("conflict"))
        ),
        Some(0)
    );

    // The API's checkpoint is the same note.
    let api = client
        .get_admin(&format!("http://{}/api/v1/log/checkpoint", sidecar.admin))
        .await
        .text();
    assert!(api.contains(&format!("\u{2014} {WITNESS_NAME} ")), "{api}");
    sidecar.stop().await;
}

/// A witness that accepts connections and never answers: every request is still forwarded and
/// recorded, heads are still signed, the failures are counted as `unreachable`, and the
/// checkpoint is served without a cosignature.
#[tokio::test]
async fn a_witness_that_never_answers_does_not_hold_up_auditing() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("witness-silent");
    let log_vkey = log_key(&dir.0);
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let witness_vkey = TestWitness::start(&log_vkey, 2).await.vkey();
    let config = format!(
        "[[log.witnesses]]\nurl = \"http://{silent_addr}/w1\"\nvkey = \"{witness_vkey}\"\n\
         timeout = \"200ms\"\n"
    );
    let mut sidecar = sidecar(dir, upstream.addr, &config).await;
    let client = HttpClient::new();
    let unreachable = async |at_least: u64| {
        let text = metrics(&sidecar, &client).await;
        metric_count(
            &text,
            &series("auditgate_witness_failures_total", Some("unreachable")),
        ) >= Some(at_least)
    };
    // Two rounds: the head after the first failure is submitted (and fails) again.
    traffic(&sidecar, &client, 10).await;
    assert!(
        eventually(Duration::from_secs(10), async || unreachable(1).await).await,
        "{}",
        metrics(&sidecar, &client).await
    );
    traffic(&sidecar, &client, 10).await;
    let entries = sidecar.wait_entries(20).await;
    assert_eq!(
        entries
            .iter()
            .filter(|entry| entry.action.starts_with("http."))
            .count(),
        20
    );
    // Heads are signed as the log grows; on a loaded machine the twenty requests can be committed
    // in fewer batches than heads wanted, so the log is made to grow until they are signed.
    let counted = eventually(Duration::from_secs(20), async || {
        let text = metrics(&sidecar, &client).await;
        let signed = metric_count(
            &text,
            &series("auditgate_witness_failures_total", Some("unreachable")),
        ) >= Some(2)
            && metric_count(&text, "auditgate_heads_signed_total") >= Some(5)
            && metric_count(&text, &series("auditgate_witness_failing", None)) == Some(1);
        if !signed {
            traffic(&sidecar, &client, 1).await;
        }
        signed
    })
    .await;
    assert!(counted, "{}", metrics(&sidecar, &client).await);
    let (note, cosignatures) = served_checkpoint(&sidecar, &client).await;
    assert_eq!(cosignatures, 0, "{note}");
    assert!(note.starts_with(&format!("{ORIGIN}\n")), "{note}");
    sidecar.stop().await;
}

/// Whether an ERROR line names the witness, its URL, the reason and `needle` (a status or size).
fn logged_refusal(url: &str, reason: &str, needle: &str) -> bool {
    crate::support::error_lines().iter().any(|line| {
        let fields = &line["fields"];
        fields["witness"] == WITNESS_NAME
            && fields["url"] == url
            && fields["reason"] == reason
            && fields["error"]
                .as_str()
                .is_some_and(|error| error.contains(needle))
    })
}

/// A witness that does not trust the log's key answers 403: nothing is cosigned, the failure is
/// counted as `forbidden`, and an error names the witness, its URL and the status.
#[tokio::test]
async fn a_witness_that_refuses_is_logged_and_counted() {
    crate::support::error_log();
    let upstream = Upstream::start().await;
    let dir = TempDir::new("witness-forbidden");
    log_key(&dir.0);
    let other_log = TempDir::new("witness-other-log");
    let witness = TestWitness::start(&log_key(&other_log.0), 7).await;
    let mut sidecar = sidecar(dir, upstream.addr, &witness.config()).await;
    let client = HttpClient::new();
    traffic(&sidecar, &client, 2).await;
    let counted = eventually(Duration::from_secs(10), async || {
        let text = metrics(&sidecar, &client).await;
        metric_count(
            &text,
            &series("auditgate_witness_failures_total", Some("forbidden")),
        ) >= Some(1)
    })
    .await;
    assert!(counted, "{}", metrics(&sidecar, &client).await);
    let url = format!("http://{}/w1/add-checkpoint", witness.addr);
    assert!(
        logged_refusal(&url, "forbidden", "403"),
        "no error names the witness and the status: {:?}",
        crate::support::error_lines()
    );
    assert!(witness.with_state(|state| state.cosigned.is_empty()));
    let (note, cosignatures) = served_checkpoint(&sidecar, &client).await;
    assert_eq!(cosignatures, 0, "{note}");
    sidecar.stop().await;
}

/// A witness that already cosigned a larger tree of this origin (what a log rolled back, or a
/// fork, looks like to it) answers 409 with its size, which the log cannot prove from: the
/// sidecar refuses to pretend, counts a `conflict` and serves no cosignature; the witness's
/// state is untouched.
#[tokio::test]
async fn a_witness_holding_a_larger_tree_raises_the_alarm() {
    crate::support::error_log();
    let upstream = Upstream::start().await;
    let dir = TempDir::new("witness-ahead");
    let log_vkey = log_key(&dir.0);
    let witness = TestWitness::start(&log_vkey, 3).await;
    witness.with_state(|state| {
        state.size = 1_000_000;
        state.root = [9; 32];
    });
    let mut sidecar = sidecar(dir, upstream.addr, &witness.config()).await;
    let client = HttpClient::new();
    traffic(&sidecar, &client, 3).await;
    let alarmed = eventually(Duration::from_secs(10), async || {
        let text = metrics(&sidecar, &client).await;
        metric_count(
            &text,
            &series("auditgate_witness_failures_total", Some("conflict")),
        ) >= Some(1)
            && metric_count(&text, &series("auditgate_witness_failing", None)) == Some(1)
    })
    .await;
    assert!(alarmed, "{}", metrics(&sidecar, &client).await);
    let text = metrics(&sidecar, &client).await;
    assert_eq!(
        metric_count(&text, &series("auditgate_witness_cosignatures_total", None)),
        Some(0)
    );
    let (note, cosignatures) = served_checkpoint(&sidecar, &client).await;
    assert_eq!(cosignatures, 0, "{note}");
    let url = format!("http://{}/w1/add-checkpoint", witness.addr);
    assert!(
        logged_refusal(&url, "conflict", "1000000"),
        "no error names the witness and its size: {:?}",
        crate::support::error_lines()
    );
    let (size, requests) = witness.with_state(|state| (state.size, state.requests.clone()));
    assert_eq!(size, 1_000_000);
    assert!(
        requests.iter().all(|(_, status)| *status == 409),
        "{requests:?}"
    );
    sidecar.stop().await;
}

/// A witness reset to an older checkpoint of the log (restored from a backup, say) answers 409
/// with that size; the sidecar proves consistency from it and is cosigned on its retry.
#[tokio::test]
async fn a_409_from_a_witness_reset_to_an_older_size_is_resolved() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("witness-reset");
    let log_vkey = log_key(&dir.0);
    let witness = TestWitness::start(&log_vkey, 4).await;
    let mut sidecar = sidecar(dir, upstream.addr, &witness.config()).await;
    let client = HttpClient::new();
    // Two rounds, so the witness cosigns an earlier checkpoint with entries and a later one.
    traffic(&sidecar, &client, 2).await;
    let first = eventually(Duration::from_secs(10), async || {
        witness.with_state(|state| state.size >= 3)
    })
    .await;
    assert!(
        first,
        "{:?}",
        witness.with_state(|state| state.requests.clone())
    );
    let earlier = witness.with_state(|state| (state.size, state.root));
    traffic(&sidecar, &client, 3).await;
    let grew = eventually(Duration::from_secs(10), async || {
        witness.with_state(|state| state.size >= 6)
    })
    .await;
    assert!(
        grew,
        "{:?}",
        witness.with_state(|state| state.requests.clone())
    );
    // Back to the earlier checkpoint (smaller than what the sidecar believes it holds).
    let (reset_size, believed) = witness.with_state(|state| {
        let believed = state.size;
        (state.size, state.root) = earlier;
        state.requests.clear();
        (earlier.0, believed)
    });
    assert!(reset_size < believed);
    traffic(&sidecar, &client, 3).await;
    let resolved = eventually(Duration::from_secs(10), async || {
        witness.with_state(|state| {
            state.size > believed
                && state
                    .requests
                    .iter()
                    .any(|(old, status)| *old == believed && *status == 409)
                && state
                    .requests
                    .iter()
                    .any(|(old, status)| *old == reset_size && *status == 200)
        })
    })
    .await;
    assert!(
        resolved,
        "reset to {reset_size} from {believed}: {:?}",
        witness.with_state(|state| state.requests.clone())
    );
    let text = metrics(&sidecar, &client).await;
    assert_eq!(
        metric_count(
            &text,
            &series("auditgate_witness_failures_total", Some("conflict"))
        ),
        Some(0)
    );
    sidecar.stop().await;
}

fn write_vkey(dir: &Path, name: &str, vkey: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{vkey}\n")).expect("write vkey");
    path
}

/// `auditgate verify --witness` passes when the latest head carries a stored cosignature by the
/// witness (the shutdown head included), and fails with exit 1 and a message naming the
/// witness when it does not: another witness's key, or more witnesses required than cosigned.
#[tokio::test]
async fn verify_checks_a_witness_policy_on_the_latest_head() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("witness-verify");
    let log_vkey = log_key(&dir.0);
    let witness = TestWitness::start(&log_vkey, 5).await;
    let stranger = TestWitness::start(&log_vkey, 6).await;
    let mut sidecar = sidecar(dir, upstream.addr, &witness.config()).await;
    let client = HttpClient::new();
    traffic(&sidecar, &client, 3).await;
    sidecar.wait_entries(3).await;
    sidecar.stop().await;
    let dir = sidecar.dir.0.clone();
    let db = dir.join("audit.db");
    let witness_file = write_vkey(&dir, "w1.vkey", &witness.vkey());
    let stranger_file = write_vkey(&dir, "stranger.vkey", &stranger.vkey());
    let public_key = dir.join("log.key.pub");

    let base = [
        "verify",
        "--db",
        path_arg(&db),
        "--key",
        path_arg(&public_key),
    ];
    let passed = auditgate(
        &[
            &base[..],
            &[
                "--origin",
                ORIGIN,
                "--witness",
                path_arg(&witness_file),
                "--witnesses-required",
                "1",
            ],
        ]
        .concat(),
    );
    let report = String::from_utf8_lossy(&passed.stdout).into_owned();
    assert_eq!(
        passed.status.code(),
        Some(0),
        "{report}{}",
        String::from_utf8_lossy(&passed.stderr)
    );
    assert!(report.contains("intact"), "{report}");
    assert!(
        report.contains(&format!(
            "is cosigned by 1 of the 1 witnesses given, 1 required; cosigned by {WITNESS_NAME}"
        )),
        "{report}"
    );
    // The shutdown head (the latest) was cosigned too.
    let final_size = witness.with_state(|state| state.size);
    assert!(report.contains(&format!("(size {final_size})")), "{report}");

    let failed = auditgate(
        &[
            &base[..],
            &["--origin", ORIGIN, "--witness", path_arg(&stranger_file)],
        ]
        .concat(),
    );
    let report = String::from_utf8_lossy(&failed.stdout).into_owned();
    assert_eq!(failed.status.code(), Some(1), "{report}");
    assert!(
        report.contains("witnesses: NOT MET")
            && report.contains(&format!("no valid cosignature by {WITNESS_NAME}")),
        "{report}"
    );
    let failed = auditgate(
        &[
            &base[..],
            &[
                "--origin",
                ORIGIN,
                "--witness",
                path_arg(&witness_file),
                "--witness",
                path_arg(&stranger_file),
                "--json",
            ],
        ]
        .concat(),
    );
    assert_eq!(failed.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&failed.stdout).expect("a JSON report");
    assert_eq!(json["ok"], true, "the log itself is intact: {json}");
    assert_eq!(json["witnesses"]["met"], false, "{json}");
    assert_eq!(json["witnesses"]["required"], 2);
    assert_eq!(json["witnesses"]["cosignedBy"][0], WITNESS_NAME);

    let usage = auditgate(&[&base[..], &["--witnesses-required", "1"]].concat());
    assert_eq!(usage.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&usage.stderr).contains("--witnesses-required needs witness keys")
    );
}

/// A PostgreSQL database made before cosignatures were kept (schema version 1, no table) is
/// read with none, and a sidecar's open migrates it: the table is there and keeps them.
#[test]
fn a_postgres_database_from_before_gets_the_cosignatures_table() {
    use auditgate::store::postgres::{Access, PostgresOptions, PostgresStore};
    use auditgate::store::{LogReader as _, Store as _, StoredCosignature};
    let Some(url) = crate::pg::server_url("witness_migration") else {
        return;
    };
    let database = crate::pg::TestDatabase::create(&url, "witnessmigration");
    let options = |access| PostgresOptions {
        config: database.config.clone(),
        log_id: "web-1".into(),
        access,
        pool_size: 1,
        tls: crate::pg::default_tls(),
    };
    // A version 1 database, made with that version's SQL (the current schema has moved on past
    // version 2, so rolling a new database back is no longer a version 1 database).
    drop(database.at_schema_version(1, &["web-1"]));
    let reader = PostgresStore::open(options(Access::Read)).expect("reads version 1");
    assert!(reader
        .cosignatures(ORIGIN, 1, &[7; 32])
        .expect("none")
        .is_empty());
    drop(reader);
    let store = PostgresStore::open(options(Access::Write { exclusive: true })).expect("migrates");
    let cosignature = StoredCosignature {
        origin: ORIGIN.into(),
        size: 1,
        root_hash: [7; 32],
        witness_vkey: "w+00000000+BA==".into(),
        timestamp: 10,
        line: "\u{2014} w AAAA".into(),
    };
    store.save_cosignature(&cosignature).expect("saves");
    assert_eq!(
        store.cosignatures(ORIGIN, 1, &[7; 32]).expect("reads"),
        vec![cosignature]
    );
    assert_eq!(
        store
            .witness_size(ORIGIN, "w+00000000+BA==")
            .expect("reads"),
        Some(1)
    );
    let version: i32 = database
        .client()
        .query_one("SELECT version FROM auditgate_schema WHERE id = 1", &[])
        .expect("version")
        .get(0);
    assert_eq!(version, 3, "migrated to the current schema");
}

/// An entry's tlog proof carries the witnesses' cosignatures of its checkpoint, from the API
/// and in an export bundle, and `verify-proof --witness` checks them offline: a proof cosigned
/// by the given witness passes, one checked against a witness that never cosigned it fails, and
/// so does one whose cosignature line was edited.
#[tokio::test]
async fn entry_proofs_carry_the_cosignatures_and_verify_proof_checks_them() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("witness-proofs");
    let log_vkey = log_key(&dir.0);
    let witness = TestWitness::start(&log_vkey, 7).await;
    let stranger = TestWitness::start(&log_vkey, 8).await;
    let mut sidecar = sidecar(dir, upstream.addr, &witness.config()).await;
    let client = HttpClient::new();
    traffic(&sidecar, &client, 3).await;
    sidecar.wait_entries(3).await;

    let cosignature = format!("\u{2014} {WITNESS_NAME} ");
    let url = format!("http://{}/api/v1/entries/2/tlog-proof", sidecar.admin);
    let mut proof = String::new();
    let cosigned = eventually(Duration::from_secs(10), async || {
        let reply = client.get_admin(&url).await;
        proof = reply.text();
        reply.status == 200 && proof.contains(&cosignature)
    })
    .await;
    assert!(cosigned, "the proof carries no cosignature: {proof}");
    let dir = sidecar.dir.0.clone();
    let proof_file = dir.join("entry-2.tlog-proof");
    std::fs::write(&proof_file, &proof).expect("proof written");
    let log_vkey_file = dir.join("log.key.vkey");
    let witness_file = write_vkey(&dir, "w1.vkey", &witness.vkey());
    let stranger_file = write_vkey(&dir, "stranger.vkey", &stranger.vkey());

    let check = |file: &Path, witnesses: &[&Path], required: Option<&str>| {
        let mut args = vec![
            "verify-proof",
            path_arg(file),
            "--vkey",
            path_arg(&log_vkey_file),
        ];
        for witness in witnesses {
            args.extend(["--witness", path_arg(witness)]);
        }
        if let Some(required) = required {
            args.extend(["--witnesses-required", required]);
        }
        let output = auditgate(&args);
        (
            output.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };
    let (code, out) = check(&proof_file, &[&witness_file], None);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("ok seq 2") && out.contains("cosigned by 1 of 1 witnesses (witness.test/w1)"),
        "{out}"
    );
    let (code, out) = check(&proof_file, &[&stranger_file], None);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("INVALID") && out.contains("no valid cosignature by witness.test/w1"),
        "{out}"
    );
    // One of two suffices when one is required; both are required by default.
    let (code, out) = check(&proof_file, &[&witness_file, &stranger_file], Some("1"));
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = check(&proof_file, &[&witness_file, &stranger_file], None);
    assert_eq!(code, Some(1), "{out}");

    // A cosignature line edited in the file (its signature's last bytes changed) is refused.
    let edited: String = proof
        .lines()
        .map(|line| {
            if line.starts_with(&cosignature) {
                let (head, tail) = line.split_at(line.len() - 6);
                let flipped = if tail.starts_with('A') { "B" } else { "A" };
                format!("{head}{flipped}{}\n", &tail[1..])
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert_ne!(edited, proof);
    let edited_file = dir.join("edited.tlog-proof");
    std::fs::write(&edited_file, &edited).expect("edited proof written");
    let (code, out) = check(&edited_file, &[&witness_file], None);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("witness witness.test/w1"), "{out}");
    // Without a witness policy the log's own signature still verifies it.
    let (code, out) = check(&edited_file, &[], None);
    assert_eq!(code, Some(0), "{out}");

    // An export bundle's checkpoint and proofs carry the cosignature of the shutdown head.
    sidecar.stop().await;
    let bundle = dir.join("bundle");
    let output = auditgate(&[
        "export",
        "--db",
        path_arg(&dir.join("audit.db")),
        "--bundle",
        path_arg(&bundle),
        "--key",
        path_arg(&dir.join("log.key")),
        "--origin",
        ORIGIN,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let checkpoint = std::fs::read_to_string(bundle.join("checkpoint")).expect("checkpoint");
    assert!(checkpoint.contains(&cosignature), "{checkpoint}");
    let (code, out) = check(&bundle.join("proofs/2.tlog-proof"), &[&witness_file], None);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("cosigned by 1 of 1 witnesses"), "{out}");
}
