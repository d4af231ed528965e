//! The log as C2SP tlog tiles (`/tlog/` on the admin listener, `auditgate tiles --out DIR`),
//! checked with implementations auditgate did not write: the `tlog_tiles` crate (a port of Go's
//! sumdb/tlog) and the `signed_note` crate, and Go's golang.org/x/mod/sumdb/tlog itself through
//! `scripts/c2sp-verify tiles` when it is installed or required. Each must accept the log as
//! written and refuse an edited entry, a cut tail and a tile that disagrees with the checkpoint.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use auditgate::entry::{AuditEntry, Outcome};
use auditgate::log::head::{LogSigner, SignedTreeHead, TreeHead};
use auditgate::store::config::SyncMode;
use auditgate::store::retention::{prune_all, PrunePlan, PrunedBy};
use auditgate::store::sqlite::SqliteStore;
use auditgate::store::Store;
use signed_note::{Note, StandardVerifier, VerifierList};
use tlog_tiles::{HashReader as _, TileHashReader};

use crate::support::{config_text, eventually, HttpClient, Process, TempDir, TEST_TOKEN};

const LOG_ID: &str = "tiles-test";
const ORIGIN: &str = "audit.example.com/tiles";
/// Entries old enough to be pruned, at the start of the log.
const PRUNED: u64 = 100;
/// The log's size at its last head: two full level-0 tiles and a partial one.
const SIZE: u64 = 700;
/// The size of the earlier checkpoint the consistency proofs start from.
const OLD_SIZE: u64 = 300;

/// A log on disk written by the real store: `PRUNED` entries removed by retention, one entry too
/// long for a bundle, heads signed at `OLD_SIZE` and at `SIZE`.
struct Log {
    dir: TempDir,
    db: PathBuf,
    key: PathBuf,
    vkey_file: PathBuf,
    vkey: String,
    old_checkpoint_file: PathBuf,
    old_checkpoint: String,
    /// The sequence number of the entry too long for a bundle.
    oversized_seq: u64,
}

fn entry(seq: u64, age: chrono::Duration) -> AuditEntry {
    let mut entry = AuditEntry::new(LOG_ID, "user.updated");
    entry.created_at = chrono::Utc::now() - age;
    entry.actor_id = Some(format!("user-{}", seq % 7));
    entry.outcome = Outcome::Success;
    entry.status = Some(200);
    entry.method = Some("PATCH".into());
    entry.path = Some(format!("/api/users/{seq}"));
    entry
}

fn append(store: &SqliteStore, count: u64, age: chrono::Duration) {
    let first = store.tree().expect("tree").size + 1;
    let mut batch: Vec<AuditEntry> = (first..first + count).map(|seq| entry(seq, age)).collect();
    store.append(&mut batch).expect("append");
}

fn sign(store: &SqliteStore, signer: &LogSigner) -> SignedTreeHead {
    let tree = store.tree().expect("tree");
    let head = TreeHead::new(LOG_ID, tree.size, tree.root, chrono::Utc::now()).expect("head");
    let signed = signer.sign(head).expect("sign");
    store.save_head(&signed).expect("store head");
    signed
}

impl Log {
    fn new(label: &str) -> Log {
        let dir = TempDir::new(label);
        let db = dir.0.join("audit.db");
        let key = dir.0.join("log.key");
        let signer = LogSigner::write_new(&key).expect("key");
        let vkey = signer.verifier_key(ORIGIN).expect("vkey").to_string();
        let vkey_file = dir.0.join("log.vkey");
        std::fs::write(&vkey_file, format!("{vkey}\n")).expect("vkey file");
        let store = SqliteStore::open(&db, SyncMode::Normal).expect("store");
        append(&store, PRUNED, chrono::Duration::days(120));
        let mut oversized = entry(PRUNED + 1, chrono::Duration::zero());
        oversized
            .metadata
            .insert("note".into(), "x".repeat(70_000).into());
        store
            .append(std::slice::from_mut(&mut oversized))
            .expect("append");
        append(&store, OLD_SIZE - PRUNED - 1, chrono::Duration::zero());
        let old_head = sign(&store, &signer);
        let old_checkpoint = signer
            .sign_checkpoint(ORIGIN, &old_head.head)
            .expect("checkpoint");
        let old_checkpoint_file = dir.0.join("old.checkpoint");
        std::fs::write(&old_checkpoint_file, &old_checkpoint).expect("old checkpoint");
        let plan = PrunePlan {
            default_cutoff: Some(chrono::Utc::now() - chrono::Duration::days(90)),
            rules: Vec::new(),
        };
        let pruned =
            prune_all(&store, &plan, LOG_ID, &PrunedBy::Retention, &|| true).expect("prunes");
        assert_eq!(pruned.entries(), PRUNED);
        let size = store.tree().expect("tree").size;
        append(&store, SIZE - size, chrono::Duration::zero());
        assert_eq!(sign(&store, &signer).head.size, SIZE);
        Log {
            db,
            key,
            vkey_file,
            vkey,
            old_checkpoint_file,
            old_checkpoint,
            oversized_seq: oversized.seq,
            dir,
        }
    }
}

/// What the `tlog_tiles` crate found in a log.
#[derive(Debug, PartialEq, Eq)]
struct Checked {
    size: u64,
    /// Entries that hash to their leaves.
    entries: u64,
    /// Zero-length (pruned or oversized) positions.
    withheld: Vec<u64>,
    /// Inclusion proofs proved and checked (one per entry).
    inclusion: u64,
}

/// Reads tiles through `fetch` (a C2SP path in, the bytes out) for the `tlog_tiles` crate.
struct Fetched<F>(F);

impl<F: Fn(&str) -> Option<Vec<u8>>> tlog_tiles::TileReader for Fetched<F> {
    fn height(&self) -> u8 {
        8
    }

    fn read_tiles(&self, tiles: &[tlog_tiles::Tile]) -> Result<Vec<Vec<u8>>, tlog_tiles::Error> {
        tiles
            .iter()
            .map(|tile| {
                // The crate writes the Go checksum database's paths, with the height in them.
                let path = tile.path().replacen("tile/8/", "tile/", 1);
                (self.0)(&path).ok_or(tlog_tiles::Error::InvalidTile)
            })
            .collect()
    }

    fn save_tiles(&self, _tiles: &[tlog_tiles::Tile], _data: &[Vec<u8>]) {}
}

/// Verifies a signed checkpoint with the `signed_note` crate and parses it with `tlog_tiles`.
fn open_checkpoint(vkey: &str, note: &[u8]) -> Result<tlog_tiles::Checkpoint, String> {
    let verifier = StandardVerifier::new(vkey).map_err(|error| error.to_string())?;
    let parsed = Note::from_bytes(note).map_err(|error| error.to_string())?;
    parsed
        .verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|error| error.to_string())?;
    tlog_tiles::Checkpoint::from_bytes(parsed.text()).map_err(|error| error.to_string())
}

/// Checks a whole log with the `tlog_tiles` crate: the checkpoint's signature, the root from the
/// tiles, every entry against its leaf, every entry's inclusion proof, and consistency with
/// `old` (an earlier checkpoint).
fn check_with_tlog_tiles(
    vkey: &str,
    fetch: impl Fn(&str) -> Option<Vec<u8>>,
    old: &str,
) -> Result<Checked, String> {
    let checkpoint = open_checkpoint(vkey, &fetch("checkpoint").ok_or("no checkpoint")?)?;
    assert_eq!(checkpoint.origin(), ORIGIN);
    let (size, root) = (checkpoint.size(), *checkpoint.hash());
    let reader = Fetched(&fetch);
    let hashes = TileHashReader::new(size, root, &reader);
    let recomputed = tlog_tiles::tree_hash(size, &hashes).map_err(|error| error.to_string())?;
    if recomputed != root {
        return Err("the tiles fold to another root".into());
    }
    let tree = rebuild_tree(&fetch, size, root)?;
    let memory = Memory(&tree);
    let mut checked = Checked {
        size,
        entries: 0,
        withheld: Vec::new(),
        inclusion: 0,
    };
    for start in (0..size).step_by(256) {
        let width = (size - start).min(256);
        let path = tlog_tiles::Tile::new(8, 0, start / 256, width as u32, true)
            .path()
            .replacen("tile/8/data/", "tile/entries/", 1);
        let bundle = fetch(&path).ok_or(format!("no {path}"))?;
        let entries = split_bundle(&bundle).ok_or(format!("{path} is not a bundle"))?;
        if entries.len() as u64 != width {
            return Err(format!(
                "{path} holds {} entries, not {width}",
                entries.len()
            ));
        }
        let indexes: Vec<u64> = (start..start + width)
            .map(|index| tlog_tiles::stored_hash_index(0, index))
            .collect();
        let leaves = memory
            .read_hashes(&indexes)
            .map_err(|error| error.to_string())?;
        for (offset, (entry, leaf)) in entries.iter().zip(&leaves).enumerate() {
            let index = start + offset as u64;
            if entry.is_empty() {
                checked.withheld.push(index + 1);
            } else if tlog_tiles::record_hash(entry) != *leaf {
                return Err(format!("entry {} does not hash to its leaf", index + 1));
            } else {
                checked.entries += 1;
            }
            let proof = tlog_tiles::prove_record(size, index, &hashes)
                .map_err(|error| error.to_string())?;
            tlog_tiles::check_record(&proof, size, root, index, *leaf)
                .map_err(|error| format!("inclusion of {index}: {error}"))?;
            checked.inclusion += 1;
        }
    }
    let old = open_checkpoint(vkey, old.as_bytes())?;
    let proof = tlog_tiles::prove_tree(size, old.size(), &hashes).map_err(|e| e.to_string())?;
    tlog_tiles::check_tree(&proof, size, root, old.size(), *old.hash())
        .map_err(|error| format!("consistency: {error}"))?;
    Ok(checked)
}

/// Stored hashes in the crate's order, held in memory.
struct Memory<'a>(&'a [tlog_tiles::Hash]);

impl tlog_tiles::HashReader for Memory<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog_tiles::Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|index| {
                self.0
                    .get(*index as usize)
                    .copied()
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

/// Rebuilds the tree from the leaves of every level-0 tile, checks its root against the
/// checkpoint's and every hash of every higher tile against it. (The crate's `TileHashReader`
/// alone authenticates only as many tiles as its tree-hash plan has subtrees, as the Go code it
/// was ported from does, so a forged full tile read later can pass it.)
fn rebuild_tree(
    fetch: &impl Fn(&str) -> Option<Vec<u8>>,
    size: u64,
    root: tlog_tiles::Hash,
) -> Result<Vec<tlog_tiles::Hash>, String> {
    let tile_of = |level: u8, index: u64, hashes: u64| {
        let width = (hashes - index * 256).min(256) as u32;
        let path = tlog_tiles::Tile::new(8, level, index, width, false)
            .path()
            .replacen("tile/8/", "tile/", 1);
        let bytes = fetch(&path).ok_or(format!("no {path}"))?;
        if bytes.len() != width as usize * 32 {
            return Err(format!("{path} is {} bytes", bytes.len()));
        }
        Ok((path, bytes))
    };
    let mut stored: Vec<tlog_tiles::Hash> = Vec::new();
    for index in 0..size.div_ceil(256) {
        let (_, bytes) = tile_of(0, index, size)?;
        for (offset, leaf) in bytes.chunks_exact(32).enumerate() {
            let leaf = tlog_tiles::Hash(leaf.try_into().expect("32 bytes"));
            let more = tlog_tiles::stored_hashes_for_record_hash(
                index * 256 + offset as u64,
                leaf,
                &Memory(&stored),
            )
            .map_err(|error| error.to_string())?;
            stored.extend(more);
        }
    }
    if size > 0 && tlog_tiles::tree_hash(size, &Memory(&stored)).map_err(|e| e.to_string())? != root
    {
        return Err("the leaves of the level-0 tiles fold to another root".into());
    }
    for level in 1u8..8 {
        let hashes = size >> (8 * u32::from(level));
        for index in 0..hashes.div_ceil(256) {
            let (path, bytes) = tile_of(level, index, hashes)?;
            for (offset, hash) in bytes.chunks_exact(32).enumerate() {
                let at = tlog_tiles::stored_hash_index(8 * level, index * 256 + offset as u64);
                if stored[at as usize].0 != hash {
                    return Err(format!("{path} disagrees with the checkpoint"));
                }
            }
        }
    }
    Ok(stored)
}

/// The entries of a bundle (written here, not taken from auditgate).
fn split_bundle(mut bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let mut entries = Vec::new();
    while !bytes.is_empty() {
        let length = usize::from(u16::from_be_bytes([bytes[0], *bytes.get(1)?]));
        let entry = bytes.get(2..2 + length)?;
        entries.push(entry);
        bytes = &bytes[2 + length..];
    }
    Some(entries)
}

/// Runs `scripts/c2sp-verify tiles` (Go's golang.org/x/mod/sumdb/tlog) on a source when
/// `AUDITGATE_REQUIRE_C2SP_VERIFIER=1` or the verifier is built; `None` when skipped, else
/// whether it accepted and what it said.
fn go_verifies(vkey_file: &Path, source: &str, old: &Path, token: bool) -> Option<(bool, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let required = std::env::var("AUDITGATE_REQUIRE_C2SP_VERIFIER").as_deref() == Ok("1");
    if !required && !root.join("target/c2sp-go/c2sp-verify").exists() {
        eprintln!(
            "skipping the Go tiles verifier: set AUDITGATE_REQUIRE_C2SP_VERIFIER=1 (or run \
             scripts/c2sp-verify --install) to check our tiles with it"
        );
        return None;
    }
    let mut command = Command::new(root.join("scripts/c2sp-verify"));
    command.arg("tiles").arg(vkey_file).arg(source).arg(old);
    if token {
        command.env("AUDITGATE_TOKEN", TEST_TOKEN);
    } else {
        command.env_remove("AUDITGATE_TOKEN");
    }
    let output = command.output().expect("scripts/c2sp-verify runs");
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

fn auditgate(args: &[&str]) -> (i32, String) {
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

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for item in std::fs::read_dir(from).expect("read dir") {
        let item = item.expect("dir entry");
        let target = to.join(item.file_name());
        if item.file_type().expect("type").is_dir() {
            copy_dir(&item.path(), &target);
        } else {
            std::fs::copy(item.path(), target).expect("copy");
        }
    }
}

fn read_dir_file(dir: &Path) -> impl Fn(&str) -> Option<Vec<u8>> + '_ {
    move |path| std::fs::read(dir.join(path)).ok()
}

/// The expected zero-length positions: the pruned entries and the oversized one.
fn withheld(log: &Log) -> Vec<u64> {
    (1..=PRUNED).chain([log.oversized_seq]).collect()
}

/// A sidecar serves the tiles of its log under /tlog/ to a read token: the checkpoint verifies,
/// the root folds from the tiles, every entry hashes to its leaf, every inclusion proof and the
/// consistency proof from an earlier checkpoint check out with the `tlog_tiles` crate and with
/// Go's sumdb/tlog; full tiles are immutable; strangers and paths the spec does not allow get
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_serves_tiles_that_independent_verifiers_accept() {
    let upstream = crate::support::Upstream::start().await;
    let log = Log::new("tiles-served");
    let config = log.dir.0.join("auditgate.toml");
    let text = config_text(upstream.addr, &log.db, "", "").replace(
        "[log]\nlog_id = \"test\"\n",
        &format!(
            "[log]\nlog_id = \"{LOG_ID}\"\norigin = \"{ORIGIN}\"\nsigning_key = \"{}\"\n\
             sign_interval = \"50ms\"\n",
            log.key.display()
        ),
    );
    std::fs::write(&config, text).expect("config");
    let process = Process::start(&config);
    let client = HttpClient::new();
    let url = |path: &str| format!("http://{}/tlog/{path}", process.admin);

    // The sidecar's own start entry is signed soon after it starts.
    let signed = eventually(Duration::from_secs(15), async || {
        let reply = client.get_admin(&url("checkpoint")).await;
        reply.status == 200
            && open_checkpoint(&log.vkey, &reply.body).is_ok_and(|c| c.size() > SIZE)
    })
    .await;
    assert!(signed, "no checkpoint past the fixture's head was served");

    assert_eq!(client.get(&url("checkpoint")).await.status, 401);
    assert_eq!(client.get(&url("tile/0/000")).await.status, 401);
    let full = client.get_admin(&url("tile/0/000")).await;
    assert_eq!(full.status, 200);
    assert_eq!(full.body.len(), 256 * 32);
    let header = |reply: &crate::support::Reply, name: http::HeaderName| {
        reply
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        header(&full, http::header::CONTENT_TYPE),
        "application/octet-stream"
    );
    assert_eq!(
        header(&full, http::header::CACHE_CONTROL),
        "private, max-age=31536000, immutable"
    );
    let bundle = client.get_admin(&url("tile/entries/001")).await;
    assert_eq!(bundle.status, 200);
    assert_eq!(
        header(&bundle, http::header::CACHE_CONTROL),
        "private, max-age=3600"
    );
    let partial = client.get_admin(&url("tile/0/002.p/5")).await;
    assert_eq!(partial.status, 200);
    assert_eq!(partial.body.len(), 5 * 32);
    // A partial tile is the prefix of every wider one.
    let wider = client.get_admin(&url("tile/0/002.p/100")).await;
    assert_eq!(wider.status, 200);
    assert_eq!(partial.body[..], wider.body[..5 * 32]);
    for (path, why) in [
        ("tile/0/x000/000", "a non-canonical index"),
        ("tile/0/000.p/0", "a zero width"),
        ("tile/0/000.p/256", "a width over 255"),
        ("tile/00/000", "a level with a leading zero"),
        ("tile/0/999", "a tile past the tree"),
        ("tile/3/000", "a level the tree does not reach"),
        ("tile/entries/999.p/3", "a bundle past the tree"),
        ("tile/data/000", "the checksum database's spelling"),
    ] {
        assert_eq!(
            client.get_admin(&url(path)).await.status,
            404,
            "{path}: {why}"
        );
    }

    let admin = process.admin;
    let handle = tokio::runtime::Handle::current();
    let vkey = log.vkey.clone();
    let old = log.old_checkpoint.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let client = HttpClient::new();
        let fetch = |path: &str| {
            let reply = handle.block_on(client.get_admin(&format!("http://{admin}/tlog/{path}")));
            (reply.status == 200).then(|| reply.body.to_vec())
        };
        check_with_tlog_tiles(&vkey, fetch, &old)
    })
    .await
    .expect("joins")
    .expect("the tlog_tiles crate accepts the served log");
    assert!(checked.size > SIZE);
    assert_eq!(checked.withheld, withheld(&log));
    assert_eq!(
        checked.entries + checked.withheld.len() as u64,
        checked.size
    );
    assert_eq!(checked.inclusion, checked.size);

    let source = format!("http://{}/tlog", process.admin);
    if let Some((ok, report)) = go_verifies(&log.vkey_file, &source, &log.old_checkpoint_file, true)
    {
        assert!(ok, "Go's sumdb/tlog refused the served log:\n{report}");
        assert!(report.contains(&format!("ok {ORIGIN} ")), "{report}");
        assert!(report.contains("101 withheld"), "{report}");
        assert!(
            report.contains(&format!("extends size {OLD_SIZE}")),
            "{report}"
        );
        let (ok, report) =
            go_verifies(&log.vkey_file, &source, &log.old_checkpoint_file, false).expect("ran");
        assert!(!ok && report.contains("401"), "{report}");
    }
    process.stop();
}

/// `[log] public_tiles = true` serves /tlog/ without a token, marked public for caches, and
/// nothing else of the admin API opens up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_tiles_need_no_token_and_open_nothing_else() {
    let upstream = crate::support::Upstream::start().await;
    let log = Log::new("tiles-public");
    let config = log.dir.0.join("auditgate.toml");
    let text = config_text(upstream.addr, &log.db, "", "").replace(
        "[log]\nlog_id = \"test\"\n",
        &format!(
            "[log]\nlog_id = \"{LOG_ID}\"\norigin = \"{ORIGIN}\"\nsigning_key = \"{}\"\n\
             public_tiles = true\n",
            log.key.display()
        ),
    );
    std::fs::write(&config, text).expect("config");
    let process = Process::start(&config);
    let client = HttpClient::new();
    let url = |path: &str| format!("http://{}{path}", process.admin);
    let checkpoint = client.get(&url("/tlog/checkpoint")).await;
    assert_eq!(checkpoint.status, 200);
    open_checkpoint(&log.vkey, &checkpoint.body).expect("verifies");
    let tile = client.get(&url("/tlog/tile/0/000")).await;
    assert_eq!(tile.status, 200);
    assert_eq!(
        tile.headers
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok()),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(client.get(&url("/api/v1/entries")).await.status, 401);
    assert_eq!(client.get(&url("/api/v1/log/checkpoint")).await.status, 401);
    process.stop();
}

/// `auditgate tiles --out DIR` writes the same tree as files; both independent verifiers accept
/// the directory, a re-run changes nothing, and each refuses an edited entry, a cut tail and a
/// tile that disagrees with the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiles_out_writes_a_mirror_that_verifies_and_tampering_is_refused() {
    let log = Log::new("tiles-out");
    let out = log.dir.0.join("mirror");
    let args = [
        "tiles",
        "--db",
        path_arg(&log.db),
        "--key",
        path_arg(&log.key),
        "--origin",
        ORIGIN,
        "--out",
        path_arg(&out),
    ];
    let (code, report) = auditgate(&args);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains(&format!("tree size {SIZE}")), "{report}");
    let checked = check_with_tlog_tiles(&log.vkey, read_dir_file(&out), &log.old_checkpoint)
        .expect("the tlog_tiles crate accepts the directory");
    assert_eq!(checked.size, SIZE);
    assert_eq!(checked.withheld, withheld(&log));
    let (code, report) = auditgate(&args);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains(" 0 files new or changed"), "{report}");
    if let Some((ok, report)) = go_verifies(
        &log.vkey_file,
        path_arg(&out),
        &log.old_checkpoint_file,
        false,
    ) {
        assert!(ok, "Go's sumdb/tlog refused the directory:\n{report}");
        assert!(
            report.contains("entries: 599 hash to their leaves"),
            "{report}"
        );
    }

    // Without a key there is no checkpoint to write.
    let (code, report) = auditgate(&[
        "tiles",
        "--db",
        path_arg(&log.db),
        "--out",
        path_arg(&log.dir.0.join("nokey")),
    ]);
    assert_eq!(code, 64, "{report}");

    let tampered = |name: &str, change: &dyn Fn(&Path)| -> PathBuf {
        let copy = log.dir.0.join(name);
        copy_dir(&out, &copy);
        change(&copy);
        copy
    };
    // An entry edited in its bundle (same length, one letter): it no longer hashes to its leaf.
    let edited = tampered("edited", &|dir| {
        let path = dir.join("tile/entries/001");
        let bytes = std::fs::read(&path).expect("bundle");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let at = text.find("PATCH").expect("an entry's method");
        let mut changed = bytes.clone();
        changed[at] = b'P' + 1;
        std::fs::write(&path, changed).expect("write");
    });
    // The tail cut: the last bundle loses its last entry.
    let cut = tampered("cut", &|dir| {
        let path = dir.join("tile/entries/002.p/188");
        let bytes = std::fs::read(&path).expect("bundle");
        let entries = split_bundle(&bytes).expect("bundle");
        let keep: usize = entries[..entries.len() - 1]
            .iter()
            .map(|entry| entry.len() + 2)
            .sum();
        std::fs::write(&path, &bytes[..keep]).expect("write");
    });
    // A level-0 tile that disagrees with the checkpoint: one leaf hash changed.
    let forged = tampered("forged", &|dir| {
        let path = dir.join("tile/0/001");
        let mut bytes = std::fs::read(&path).expect("tile");
        bytes[40] ^= 1;
        std::fs::write(&path, bytes).expect("write");
    });
    for (dir, crate_says, go_says) in [
        (
            &edited,
            "entry 257 does not hash to its leaf",
            "does not hash to its leaf",
        ),
        (&cut, "holds 187 entries, not 188", "holds 187 entries"),
        (
            &forged,
            "the leaves of the level-0 tiles fold to another root",
            "the leaves of the level-0 tiles fold to root",
        ),
    ] {
        let error = check_with_tlog_tiles(&log.vkey, read_dir_file(dir), &log.old_checkpoint)
            .expect_err("the tlog_tiles crate accepted a tampered mirror");
        assert!(error.contains(crate_says), "{}: {error}", dir.display());
        if let Some((ok, report)) = go_verifies(
            &log.vkey_file,
            path_arg(dir),
            &log.old_checkpoint_file,
            false,
        ) {
            assert!(!ok, "Go accepted {}:\n{report}", dir.display());
            assert!(report.contains(go_says), "{}: {report}", dir.display());
        }
    }
}
