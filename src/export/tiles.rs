//! The log's tlog tiles (see [`crate::log::tiles`] for the format) read from a store: a hash
//! tile is one range read of stored tree nodes, an entry bundle one scan of 256 positions. The
//! admin API serves them under `/tlog/`; `auditgate tiles --out DIR` writes them as files.
//! A pruned position is served as the mark naming its prune record, an oversized entry as its
//! length mark ([`crate::log::tiles::BundleMark`]).

use crate::entry::AuditEntry;
use crate::log::pruned::PRUNED_ACTION;
use crate::log::tiles::{BundleMark, Tile, TileKind, MAX_BUNDLE_ENTRY};
use crate::store::{LogReader, LogSlot, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum TileReadError {
    #[error("{0} is not in the tree (the log holds {1} entries)")]
    NotInTree(String, u64),
    #[error("entry {seq} is missing from the store without a prune mark (run auditgate verify)")]
    MissingEntry { seq: u64 },
    #[error("entry {seq} cannot be read from the store: {message}")]
    UnreadableEntry { seq: u64, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The bytes of a hash tile or an entry bundle.
pub fn read_tile(reader: &dyn LogReader, tile: &Tile) -> Result<Vec<u8>, TileReadError> {
    match tile.kind {
        TileKind::Hashes { .. } => read_hash_tile(reader, tile),
        TileKind::Entries => read_entry_bundle(reader, tile),
    }
}

/// The bytes of a hash tile, read from the stored nodes. [`TileReadError::NotInTree`] when the
/// store does not hold every hash the tile names (the tree is smaller, or the path names a
/// level the tree never reaches).
pub fn read_hash_tile(reader: &dyn LogReader, tile: &Tile) -> Result<Vec<u8>, TileReadError> {
    let not_in_tree = |reader: &dyn LogReader| -> Result<TileReadError, TileReadError> {
        Ok(TileReadError::NotInTree(tile.path(), reader.tree_size()?))
    };
    let (Some(first), level) = (tile.first(), tile.tree_level()) else {
        return Err(not_in_tree(reader)?);
    };
    if level >= u64::BITS {
        return Err(not_in_tree(reader)?);
    }
    let width = usize::from(tile.width);
    let hashes = reader.node_range(level, first, width)?;
    if hashes.len() < width {
        return Err(not_in_tree(reader)?);
    }
    Ok(hashes.concat())
}

/// The bytes of an entry bundle, read from the stored entries (one scan of `width` positions).
pub fn read_entry_bundle(reader: &dyn LogReader, tile: &Tile) -> Result<Vec<u8>, TileReadError> {
    let width = u64::from(tile.width);
    let size = reader.tree_size()?;
    let Some(first) = tile
        .first()
        .filter(|first| first.checked_add(width).is_some_and(|end| end <= size))
    else {
        return Err(TileReadError::NotInTree(tile.path(), size));
    };
    let page = reader.scan_log(first + 1, usize::from(tile.width))?;
    if page.slots.len() < usize::from(tile.width) {
        return Err(TileReadError::NotInTree(tile.path(), size));
    }
    let mut bundle = Vec::new();
    for slot in &page.slots {
        append_bundle_entry(&mut bundle, slot)?;
    }
    Ok(bundle)
}

/// Appends one position's length and bytes to a bundle.
fn append_bundle_entry(bundle: &mut Vec<u8>, slot: &LogSlot) -> Result<(), TileReadError> {
    let bytes = match (&slot.entry, slot.pruned_by) {
        (Some(Ok(entry)), _) => bundle_bytes(entry),
        (Some(Err(message)), _) => {
            return Err(TileReadError::UnreadableEntry {
                seq: slot.seq,
                message: message.clone(),
            })
        }
        (None, Some(record)) => BundleMark::Pruned { record }.to_bytes(),
        (None, None) => return Err(TileReadError::MissingEntry { seq: slot.seq }),
    };
    // bundle_bytes and the marks never come near what a u16 can count.
    let length = u16::try_from(bytes.len()).unwrap_or(0);
    bundle.extend_from_slice(&length.to_be_bytes());
    bundle.extend_from_slice(&bytes);
    Ok(())
}

/// The entry's canonical bytes, or its oversized mark when they are too long for a bundle.
fn bundle_bytes(entry: &AuditEntry) -> Vec<u8> {
    let bytes = entry.canonical_bytes();
    if bytes.len() > MAX_BUNDLE_ENTRY {
        tracing::warn!(
            seq = entry.seq,
            bytes = bytes.len(),
            "an entry is longer than a tlog entry bundle can hold; its bundle marks it as not \
             served there (its proof is at /api/v1/entries/{{seq}}/proof)"
        );
        return BundleMark::Oversized {
            length: bytes.len() as u64,
        }
        .to_bytes();
    }
    bytes
}

/// Positions read per scan when looking for prune records past a head.
const PRUNE_SCAN_PAGE: usize = 1024;

/// A prune recorded past a signed head that removed entries inside its tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "entries from {first_seq} on were pruned by entry {record}, which the latest signed head \
     (size {size}) does not cover yet: their bundles' marks cannot be checked until a head \
     covers it (a running sidecar signs one within its sign_interval)"
)]
pub struct UnsignedPrune {
    pub record: u64,
    pub first_seq: u64,
    pub size: u64,
}

/// The first `audit.pruned` entry past the tree of `size` entries that pruned positions inside
/// it, if any: the bundles of that tree mark those positions with a record its checkpoint does
/// not cover, which no reader can check. Only the unsigned tail of the log is read.
pub fn unsigned_prune(
    reader: &dyn LogReader,
    size: u64,
) -> Result<Option<UnsignedPrune>, StoreError> {
    let mut next = size.saturating_add(1);
    loop {
        let page = reader.scan_log(next, PRUNE_SCAN_PAGE)?;
        let Some(last) = page.slots.last() else {
            return Ok(None);
        };
        for slot in &page.slots {
            let is_prune = matches!(&slot.entry, Some(Ok(entry)) if entry.action == PRUNED_ACTION);
            if !is_prune {
                continue;
            }
            if let Some(first_seq) = reader.pruned_by(slot.seq)?.first().copied() {
                if first_seq <= size {
                    return Ok(Some(UnsignedPrune {
                        record: slot.seq,
                        first_seq,
                        size,
                    }));
                }
            }
        }
        match last.seq.checked_add(1) {
            Some(after) => next = after,
            None => return Ok(None),
        }
    }
}
