//! The log as C2SP tlog tiles (`/tlog/` on the admin listener, `auditgate tiles --out DIR`),
//! checked with implementations auditgate did not write: the `tlog_tiles` crate (a port of Go's
//! sumdb/tlog) and the `signed_note` crate, and Go's golang.org/x/mod/sumdb/tlog itself through
//! `scripts/c2sp-verify tiles` when it is installed or required. Each must accept the log as
//! written and refuse an edited entry, a cut tail and a tile that disagrees with the checkpoint.
//! A pruned entry is a mark naming its `audit.pruned` record in its bundle; both verifiers accept
//! it only when the record is in the log and its claim (range, count, digest of the pruned
//! sequence numbers) matches the marks exactly, so an entry deleted and passed off as pruned, in
//! the database or in a copy of the tiles, is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use auditgate::entry::{AuditEntry, Outcome};
use auditgate::log::head::{LogSigner, SignedTreeHead, TreeHead};
use auditgate::store::config::SyncMode;
use auditgate::store::retention::{prune_all, PrunePlan, PrunedBy};
use auditgate::store::sqlite::SqliteStore;
use auditgate::store::Store;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use signed_note::{Note, StandardVerifier, VerifierList};
use tlog_tiles::{HashReader as _, TileHashReader};

use crate::support::auditgate_report as auditgate;
use crate::support::path_arg;
use crate::support::{config_text, eventually, HttpClient, Process, TempDir, TEST_TOKEN};

const LOG_ID: &str = "tiles-test";
const ORIGIN: &str = "audit.example.com/tiles";
/// Entries old enough to be pruned, at the start of the log.
const PRUNED: u64 = 100;
/// The log's size at its last head: two full level-0 tiles and a partial one.
const SIZE: u64 = 700;
/// The size of the earlier checkpoint the consistency proofs start from.
const OLD_SIZE: u64 = 300;
/// The `audit.pruned` entry of the fixture's prune (of entries `1..=PRUNED`).
const FIRST_PRUNE: u64 = OLD_SIZE + 1;

/// Login entries 40 days old, spread over the second and third bundles (sequence numbers 257..512
/// and 513..768), which a sidecar keeping `auth.` entries for 30 days prunes.
fn old_logins() -> Vec<u64> {
    (500..=560).step_by(4).collect()
}

/// A log on disk written by the real store: `PRUNED` entries removed by retention (recorded at
/// `FIRST_PRUNE`), one entry too long for a bundle, old logins (not pruned yet), heads signed
/// at `OLD_SIZE` and at `SIZE`.
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
        assert_eq!(size, FIRST_PRUNE);
        let logins = old_logins();
        let mut rest: Vec<AuditEntry> = (size + 1..=SIZE)
            .map(|seq| {
                if !logins.contains(&seq) {
                    return entry(seq, chrono::Duration::zero());
                }
                let mut login = entry(seq, chrono::Duration::days(40));
                login.action = "auth.login".into();
                login
            })
            .collect();
        store.append(&mut rest).expect("append");
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
    /// Positions marked as pruned, by the prune record each names (every one checked).
    pruned: BTreeMap<u64, Vec<u64>>,
    /// Positions marked as too long for a bundle.
    oversized: Vec<u64>,
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
        pruned: BTreeMap::new(),
        oversized: Vec::new(),
        inclusion: 0,
    };
    // Prune records met so far and what each claims: judged once every bundle is read, since a
    // record comes after the positions it pruned, often in a later bundle.
    let mut records: BTreeMap<u64, Claim> = BTreeMap::new();
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
            let seq = index + 1;
            if tlog_tiles::record_hash(entry) == *leaf {
                checked.entries += 1;
                if let Some(claim) = prune_claim(entry, seq)? {
                    records.insert(seq, claim);
                }
            } else if let Some(record) = mark(entry, "prunedBy") {
                checked.pruned.entry(record).or_default().push(seq);
            } else if mark(entry, "oversizedBytes").is_some_and(|length| length > 65_535) {
                checked.oversized.push(seq);
            } else {
                return Err(format!("entry {seq} does not hash to its leaf"));
            }
            let proof = tlog_tiles::prove_record(size, index, &hashes)
                .map_err(|error| error.to_string())?;
            tlog_tiles::check_record(&proof, size, root, index, *leaf)
                .map_err(|error| format!("inclusion of {index}: {error}"))?;
            checked.inclusion += 1;
        }
    }
    judge_prunes(&checked.pruned, &records, size)?;
    let old = open_checkpoint(vkey, old.as_bytes())?;
    let proof = tlog_tiles::prove_tree(size, old.size(), &hashes).map_err(|e| e.to_string())?;
    tlog_tiles::check_tree(&proof, size, root, old.size(), *old.hash())
        .map_err(|error| format!("consistency: {error}"))?;
    Ok(checked)
}

/// What an `audit.pruned` entry's metadata claims it pruned.
#[derive(Debug)]
struct Claim {
    first_seq: u64,
    last_seq: u64,
    count: u64,
    seqs_sha256: String,
}

/// The claim of an entry (already checked against its leaf) at `seq`, if it is an
/// `audit.pruned` entry.
fn prune_claim(entry: &[u8], seq: u64) -> Result<Option<Claim>, String> {
    let entry: Value =
        serde_json::from_slice(entry).map_err(|error| format!("entry {seq}: {error}"))?;
    if entry["action"] != "audit.pruned" {
        return Ok(None);
    }
    if entry["seq"] != seq {
        return Err(format!(
            "the prune record at {seq} says it is {}",
            entry["seq"]
        ));
    }
    let metadata = &entry["metadata"];
    let number = |key: &str| {
        metadata[key]
            .as_u64()
            .ok_or(format!("prune record {seq} has no {key}"))
    };
    Ok(Some(Claim {
        first_seq: number("firstSeq")?,
        last_seq: number("lastSeq")?,
        count: number("count")?,
        seqs_sha256: metadata["seqsSha256"]
            .as_str()
            .ok_or(format!("prune record {seq} has no seqsSha256"))?
            .to_string(),
    }))
}

/// The number of a mark `{"<key>":<decimal>}`, spelt exactly so (written here, not taken from
/// auditgate).
fn mark(entry: &[u8], key: &str) -> Option<u64> {
    let number = std::str::from_utf8(entry)
        .ok()?
        .strip_prefix(&format!("{{\"{key}\":"))?
        .strip_suffix('}')?;
    let canonical = number == "0" || !number.starts_with('0');
    (canonical && !number.is_empty() && number.bytes().all(|byte| byte.is_ascii_digit()))
        .then(|| number.parse().ok())
        .flatten()
}

/// Accepts the prune marks only if each names a prune record in the tree, and each record's
/// claim is exactly the positions marked with it: in its range, as many, the same digest.
fn judge_prunes(
    marks: &BTreeMap<u64, Vec<u64>>,
    records: &BTreeMap<u64, Claim>,
    size: u64,
) -> Result<(), String> {
    for (record, marked) in marks {
        if !records.contains_key(record) {
            let first = marked[0];
            return Err(if *record > size {
                format!("entry {first} is pruned by entry {record}, past the checkpoint")
            } else {
                format!("entry {first} is pruned by entry {record}, not an audit.pruned entry")
            });
        }
    }
    for (record, claim) in records {
        let marked = marks.get(record).map(Vec::as_slice).unwrap_or_default();
        if let Some(outside) = marked
            .iter()
            .find(|seq| **seq < claim.first_seq || **seq > claim.last_seq || *seq >= record)
        {
            return Err(format!(
                "entry {outside} is pruned by entry {record}, outside its {}..={}",
                claim.first_seq, claim.last_seq
            ));
        }
        let mut digest = Sha256::new();
        for seq in marked {
            digest.update(seq.to_be_bytes());
        }
        let digest: String = digest
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        if marked.is_empty() || marked.len() as u64 != claim.count || digest != claim.seqs_sha256 {
            return Err(format!(
                "prune record {record} claims {} entries, {} are marked",
                claim.count,
                marked.len()
            ));
        }
    }
    Ok(())
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

/// The positions the fixture's own prune marks.
fn first_prune() -> BTreeMap<u64, Vec<u64>> {
    BTreeMap::from([(FIRST_PRUNE, (1..=PRUNED).collect())])
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
    assert_eq!(checked.pruned, first_prune());
    assert_eq!(checked.oversized, vec![log.oversized_seq]);
    assert_eq!(checked.entries + PRUNED + 1, checked.size);
    assert_eq!(checked.inclusion, checked.size);

    let source = format!("http://{}/tlog", process.admin);
    if let Some((ok, report)) = go_verifies(&log.vkey_file, &source, &log.old_checkpoint_file, true)
    {
        assert!(ok, "Go's sumdb/tlog refused the served log:\n{report}");
        assert!(report.contains(&format!("ok {ORIGIN} ")), "{report}");
        assert!(
            report.contains("100 pruned, 1 too long for a bundle"),
            "{report}"
        );
        assert!(
            report.contains(&format!(
                "pruned by entry {FIRST_PRUNE}: 100 entries in 1..100"
            )),
            "{report}"
        );
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

/// Puts `bytes` in place of entry `seq` in its bundle of a mirror of a tree of `size` entries.
fn replace_entry(dir: &Path, size: u64, seq: u64, bytes: &[u8]) {
    let (bundle, offset) = ((seq - 1) / 256, ((seq - 1) % 256) as usize);
    let width = (size - bundle * 256).min(256);
    let path = dir.join(if width == 256 {
        format!("tile/entries/{bundle:03}")
    } else {
        format!("tile/entries/{bundle:03}.p/{width}")
    });
    let old = std::fs::read(&path).expect("bundle");
    let mut entries: Vec<&[u8]> = split_bundle(&old).expect("bundle");
    entries[offset] = bytes;
    let mut new = Vec::new();
    for entry in entries {
        new.extend_from_slice(&u16::try_from(entry.len()).expect("short").to_be_bytes());
        new.extend_from_slice(entry);
    }
    std::fs::write(path, new).expect("write");
}

fn pruned_mark(record: u64) -> Vec<u8> {
    format!("{{\"prunedBy\":{record}}}").into_bytes()
}

/// Both independent verifiers refuse the mirror in `dir`, each saying what it should.
fn both_refuse(log: &Log, dir: &Path, crate_says: &str, go_says: &str) {
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

/// `auditgate tiles --out DIR` writes the same tree as files; both independent verifiers accept
/// the directory, a re-run changes nothing, and each refuses an edited entry, a cut tail, a
/// tile that disagrees with the checkpoint, and an entry or a prune mark changed in a bundle.
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
    assert_eq!(checked.pruned, first_prune());
    assert_eq!(checked.oversized, vec![log.oversized_seq]);
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
    // Entry 600 deleted from its bundle and passed off as pruned by the log's prune: that
    // record's claim does not hold position 600.
    let dressed = tampered("dressed", &|dir| {
        replace_entry(dir, SIZE, 600, &pruned_mark(FIRST_PRUNE))
    });
    // ... or as pruned by an entry that is no prune record, or one past the checkpoint.
    let misnamed = tampered("misnamed", &|dir| {
        replace_entry(dir, SIZE, 600, &pruned_mark(650))
    });
    let unsigned = tampered("unsigned", &|dir| {
        replace_entry(dir, SIZE, 600, &pruned_mark(5000))
    });
    // A prune mark edited into an oversized one: the record's count no longer adds up.
    let unmarked = tampered("unmarked", &|dir| {
        replace_entry(dir, SIZE, 50, b"{\"oversizedBytes\":70000}")
    });
    // An entry emptied, as bundles marked pruned and oversized entries before: no entry is empty.
    let emptied = tampered("emptied", &|dir| replace_entry(dir, SIZE, 600, b""));
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
        (
            &dressed,
            "entry 600 is pruned by entry 301, outside its 1..=100",
            "entry 600 is marked as pruned by entry 301, whose record claims 1..100",
        ),
        (
            &misnamed,
            "entry 600 is pruned by entry 650, not an audit.pruned entry",
            "entry 600 is marked as pruned by entry 650, which is not an audit.pruned entry",
        ),
        (
            &unsigned,
            "entry 600 is pruned by entry 5000, past the checkpoint",
            "by entry 5000, which this checkpoint (size 700) does not cover yet",
        ),
        (
            &unmarked,
            "prune record 301 claims 100 entries, 99 are marked",
            "prune record 301 claims 100 entries in 1..100, but 99 positions are marked",
        ),
        (
            &emptied,
            "entry 600 does not hash to its leaf",
            "entry 599 (sequence number 600) in tile/entries/002.p/188 does not hash to its leaf",
        ),
    ] {
        both_refuse(&log, dir, crate_says, go_says);
    }
}

/// A row deleted from the database and marked as pruned by hand: `auditgate tiles` serves the
/// mark, and both independent verifiers refuse it from the tiles alone, as `auditgate verify`
/// refuses the database, whether the mark names the log's prune record (whose claim does not
/// hold it) or an entry that is no prune record.
#[test]
fn a_row_deleted_and_marked_as_pruned_by_hand_is_refused() {
    for (name, record, crate_says, go_says) in [
        (
            "hand-pruned",
            FIRST_PRUNE,
            "entry 600 is pruned by entry 301, outside its 1..=100",
            "entry 600 is marked as pruned by entry 301, whose record claims 1..100",
        ),
        (
            "hand-misnamed",
            650,
            "entry 600 is pruned by entry 650, not an audit.pruned entry",
            "entry 600 is marked as pruned by entry 650, which is not an audit.pruned entry",
        ),
    ] {
        let log = Log::new(name);
        let connection = rusqlite::Connection::open(&log.db).expect("open");
        connection
            .execute_batch(&format!(
                "DELETE FROM entries WHERE seq = 600;
                 DELETE FROM recent WHERE seq = 600;
                 INSERT INTO pruned_entries (seq, prune_seq) VALUES (600, {record});"
            ))
            .expect("tamper");
        drop(connection);
        let out = log.dir.0.join("mirror");
        let (code, report) = auditgate(&[
            "tiles",
            "--db",
            path_arg(&log.db),
            "--key",
            path_arg(&log.key),
            "--origin",
            ORIGIN,
            "--out",
            path_arg(&out),
        ]);
        assert_eq!(code, 0, "{report}");
        let bundle = std::fs::read(out.join("tile/entries/002.p/188")).expect("bundle");
        let entries = split_bundle(&bundle).expect("bundle");
        assert_eq!(entries[600 - 513], pruned_mark(record), "{name}");
        both_refuse(&log, &out, crate_says, go_says);
        let (code, report) = auditgate(&["verify", "--db", path_arg(&log.db)]);
        assert_eq!(code, 1, "auditgate verify accepted {name}: {report}");
    }
}

/// A sidecar keeping `auth.` entries for 30 days prunes the old logins spread over two bundles;
/// its `/tlog/` and `auditgate tiles --out` mark each pruned position with the prune that
/// removed it, both independent verifiers accept both and say which prune removed what, and
/// refuse a mark moved to another position of the same prune's range (same range and count,
/// another digest). `tiles --out` refuses to write while a prune past the signed head has
/// removed entries inside its tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_marks_each_pruned_entry_with_its_prune_and_verifiers_check_it() {
    let upstream = crate::support::Upstream::start().await;
    let log = Log::new("tiles-retention");
    let config = log.dir.0.join("auditgate.toml");
    let retention = "[retention]\n[[retention.rules]]\naction_prefix = \"auth.\"\n\
                     max_age = \"30d\"\n";
    let text = config_text(upstream.addr, &log.db, "", retention).replace(
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
    let admin = process.admin;

    // The sidecar prunes at start; wait for its record and a checkpoint that covers it.
    let record = std::sync::Mutex::new(None);
    let covered = eventually(Duration::from_secs(15), async || {
        let listed = client
            .get_admin(&format!(
                "http://{admin}/api/v1/entries?action=audit.pruned&order=desc&limit=1"
            ))
            .await
            .json();
        let Some(seq) = listed["entries"][0]["seq"].as_u64() else {
            return false;
        };
        if seq == FIRST_PRUNE {
            return false;
        }
        *record.lock().expect("lock") = Some(seq);
        let reply = client
            .get_admin(&format!("http://{admin}/tlog/checkpoint"))
            .await;
        open_checkpoint(&log.vkey, &reply.body).is_ok_and(|c| c.size() >= seq)
    })
    .await;
    assert!(covered, "no signed prune of the old logins");
    let record = record.lock().expect("lock").expect("a record");
    assert!(record > SIZE);
    let expected = {
        let mut expected = first_prune();
        expected.insert(record, old_logins());
        expected
    };

    let handle = tokio::runtime::Handle::current();
    let (vkey, old) = (log.vkey.clone(), log.old_checkpoint.clone());
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
    assert_eq!(checked.pruned, expected);
    assert_eq!(checked.oversized, vec![log.oversized_seq]);
    let pruned_lines = [
        format!("pruned by entry {FIRST_PRUNE}: 100 entries in 1..100, as its record claims"),
        format!("pruned by entry {record}: 16 entries in 500..560, as its record claims"),
        "116 pruned, 1 too long for a bundle".to_string(),
    ];
    let source = format!("http://{admin}/tlog");
    if let Some((ok, report)) = go_verifies(&log.vkey_file, &source, &log.old_checkpoint_file, true)
    {
        assert!(ok, "Go's sumdb/tlog refused the served log:\n{report}");
        for line in &pruned_lines {
            assert!(report.contains(line.as_str()), "{line}: {report}");
        }
    }
    process.stop();

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
    let checked = check_with_tlog_tiles(&log.vkey, read_dir_file(&out), &log.old_checkpoint)
        .expect("the tlog_tiles crate accepts the directory");
    assert_eq!(checked.pruned, expected);
    if let Some((ok, report)) = go_verifies(
        &log.vkey_file,
        path_arg(&out),
        &log.old_checkpoint_file,
        false,
    ) {
        assert!(ok, "Go's sumdb/tlog refused the directory:\n{report}");
        for line in &pruned_lines {
            assert!(report.contains(line.as_str()), "{line}: {report}");
        }
    }

    // The mark of login 504 moved to entry 505 (and 504 passed off as oversized): the range and
    // the count of the prune still hold; its digest of the pruned positions does not.
    let moved = log.dir.0.join("moved");
    copy_dir(&out, &moved);
    let size = checked.size;
    replace_entry(&moved, size, 504, b"{\"oversizedBytes\":70000}");
    replace_entry(&moved, size, 505, &pruned_mark(record));
    both_refuse(
        &log,
        &moved,
        &format!("prune record {record} claims 16 entries, 16 are marked"),
        "(count or seqsSha256 differ)",
    );

    // A prune after the last signed head that removes entries inside its tree: the marks would
    // name a record no checkpoint covers yet, so nothing is written.
    let checkpoint = std::fs::read(out.join("checkpoint")).expect("checkpoint");
    let store = SqliteStore::open(&log.db, SyncMode::Normal).expect("store");
    let plan = PrunePlan {
        default_cutoff: Some(chrono::Utc::now() + chrono::Duration::days(1)),
        rules: Vec::new(),
    };
    let late = prune_all(&store, &plan, LOG_ID, &PrunedBy::Retention, &|| true).expect("prunes");
    let late_record = late.prunes[0].record_seq;
    drop(store);
    let (code, report) = auditgate(&args);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains(&format!(
            "pruned by entry {late_record}, which the latest signed head (size {size}) does not \
             cover yet"
        )),
        "{report}"
    );
    assert_eq!(
        std::fs::read(out.join("checkpoint")).expect("checkpoint"),
        checkpoint
    );
    let checked = check_with_tlog_tiles(&log.vkey, read_dir_file(&out), &log.old_checkpoint)
        .expect("the mirror is left as it was, and still verifies");
    assert_eq!(checked.pruned, expected);
}

/// Given an earlier checkpoint, both independent verifiers refuse a mirror that does not extend
/// it: one rolled back to a smaller tree than a checkpoint already seen, and a split view, where
/// a checkpoint of the same size signed by the log's key names another root. Go names each.
#[test]
fn a_rolled_back_or_split_log_is_refused_against_an_earlier_checkpoint() {
    let log = Log::new("tiles-fork");
    let out = log.dir.0.join("mirror");
    let (code, report) = auditgate(&[
        "tiles",
        "--db",
        path_arg(&log.db),
        "--key",
        path_arg(&log.key),
        "--origin",
        ORIGIN,
        "--out",
        path_arg(&out),
    ]);
    assert_eq!(code, 0, "{report}");
    let signer = LogSigner::load(&log.key).expect("key");
    let other_root = [7u8; 32];
    for (label, size, go_says) in [
        (
            "later",
            SIZE + 50,
            format!("rolled back: the checkpoint's size {SIZE} is smaller than the earlier checkpoint's {}", SIZE + 50),
        ),
        (
            "split",
            SIZE,
            format!("split view: two checkpoints of size {SIZE} with different roots"),
        ),
    ] {
        let head = TreeHead::new(LOG_ID, size, other_root, chrono::Utc::now()).expect("head");
        let earlier = signer.sign_checkpoint(ORIGIN, &head).expect("checkpoint");
        let earlier_file = log.dir.0.join(format!("{label}.checkpoint"));
        std::fs::write(&earlier_file, &earlier).expect("earlier checkpoint");
        let error = check_with_tlog_tiles(&log.vkey, read_dir_file(&out), &earlier)
            .expect_err("the tlog_tiles crate accepted a log that does not extend the earlier checkpoint");
        assert!(!error.is_empty());
        if let Some((ok, report)) = go_verifies(&log.vkey_file, path_arg(&out), &earlier_file, false)
        {
            assert!(!ok, "Go accepted the {label} case:\n{report}");
            assert!(report.contains(&go_says), "{label}: {report}");
        }
    }
}
