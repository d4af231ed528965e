//! `auditgate tiles --out DIR`: the log as C2SP tlog tiles in a directory, the same files the
//! admin listener serves under `/tlog/`, for a static host or a bucket to serve.
//!
//! The tiles are those of the latest signed head, and `DIR/checkpoint` is that head as a
//! checkpoint signed with the log's key, written last: a reader who fetches the checkpoint
//! first finds every tile it needs. Only a stored head that verifies under the key is written
//! (as at `/api/v1/log/checkpoint`), so a database edited without the key cannot make this
//! command sign a root the log never signed. Each file is written beside its place and renamed
//! over it, so a mirror being served never shows half a tile; files whose content is already
//! right are left alone, so a re-run over an older copy rewrites only the right edge (and any
//! bundle whose entries were pruned since). A pruned entry is marked in its bundle with the
//! `audit.pruned` entry that recorded the prune, which a reader checks against that record; so
//! when a prune recorded after the latest signed head removed entries inside its tree, nothing
//! is written until a head covers the record.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};

use crate::commands::cli::TilesArgs;
use crate::commands::store_location::{locate, LocateError};
use crate::commands::EXIT_USAGE;
use crate::export::tiles::{read_tile, unsigned_prune};
use crate::log::head::LogSigner;
use crate::log::tiles::{tiles_of_tree, TileKind};
use crate::store::Store;

/// What a run wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TilesSummary {
    pub size: u64,
    pub hash_tiles: u64,
    pub bundles: u64,
    /// Files whose content changed or that were new.
    pub written: u64,
}

pub fn run_tiles(args: &TilesArgs) -> anyhow::Result<ExitCode> {
    let located = match locate(args.store.db.as_deref(), args.store.config.as_deref()) {
        Ok(located) => located,
        Err(LocateError::Config(errors)) => {
            eprint!("{errors}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let signer = match (&args.key, &located.config_signer) {
        (Some(path), _) => std::sync::Arc::new(
            LogSigner::load(path).with_context(|| format!("cannot load {}", path.display()))?,
        ),
        (None, Some(signer)) => signer.clone(),
        (None, None) => {
            eprintln!(
                "auditgate tiles: the checkpoint needs the log's signing key: give --key KEY, or \
                 --config with a [log] signing_key"
            );
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let log_id = args.log_id.clone().or(located.config_log_id.clone());
    if located.location.is_postgres() && log_id.is_none() {
        eprintln!(
            "auditgate tiles: --log-id is required with a PostgreSQL database: each sidecar's \
             log has its own tiles"
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let opened = located
        .location
        .open_for_reading(log_id.as_deref().unwrap_or_default())
        .with_context(|| format!("cannot open {}", located.location.describe()))?;
    let origin = args.origin.clone().or(located.config_origin.clone());
    let summary = write_tiles(opened.store.as_ref(), &signer, origin.as_deref(), &args.out)?;
    opened.check_consistent()?;
    crate::commands::cli::print_stdout(&format!(
        "wrote the tiles of tree size {} to {}: {} hash tiles, {} entry bundles, {} files \
         new or changed, and the checkpoint\n",
        summary.size,
        args.out.display(),
        summary.hash_tiles,
        summary.bundles,
        summary.written,
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the tiles of the latest signed head and its checkpoint under `out`. `origin` defaults
/// to the head's log id (as `[log] origin` does).
pub fn write_tiles(
    store: &dyn Store,
    signer: &LogSigner,
    origin: Option<&str>,
    out: &Path,
) -> anyhow::Result<TilesSummary> {
    let Some(head) = store.latest_head()? else {
        bail!("the log has no signed tree head yet: a sidecar with [log] signing_key signs one");
    };
    signer.public_key().verify(&head).with_context(|| {
        format!(
            "the latest stored head (size {}) does not verify under this key; no checkpoint is \
             signed for it (auditgate verify says more)",
            head.head.size
        )
    })?;
    // Refused before any file is written, so a mirror being served stays as it was.
    if let Some(prune) = unsigned_prune(store, head.head.size)? {
        bail!("{prune}; run again once it is signed");
    }
    let origin = origin.unwrap_or(&head.head.log_id);
    // With the witnesses' cosignatures the store holds for it, as /tlog/checkpoint serves it.
    let checkpoint =
        crate::store::cosigned_checkpoint(store, &signer.sign_checkpoint(origin, &head.head)?)?;
    let mut summary = TilesSummary {
        size: head.head.size,
        ..TilesSummary::default()
    };
    for tile in tiles_of_tree(head.head.size) {
        let bytes = read_tile(store, &tile).with_context(|| format!("cannot read {tile}"))?;
        match tile.kind {
            TileKind::Hashes { .. } => summary.hash_tiles += 1,
            TileKind::Entries => summary.bundles += 1,
        }
        if write_if_changed(&out.join(tile.path()), &bytes)? {
            summary.written += 1;
        }
    }
    write_if_changed(&out.join("checkpoint"), checkpoint.as_bytes())?;
    Ok(summary)
}

/// Writes `bytes` to `path` through a temporary file renamed over it, unless the file already
/// holds exactly them; whether it wrote.
fn write_if_changed(path: &Path, bytes: &[u8]) -> anyhow::Result<bool> {
    if std::fs::read(path).is_ok_and(|existing| existing == bytes) {
        return Ok(false);
    }
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot make the directory {}", parent.display()))?;
    let mut temporary = PathBuf::from(path);
    temporary.as_mut_os_string().push(".tmp");
    std::fs::write(&temporary, bytes)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(true)
}
