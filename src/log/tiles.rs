//! The log as tlog tiles (c2sp.org/tlog-tiles): the tree's hashes and the entries cut into
//! fixed, mostly immutable pieces that any static host can serve and any tlog client can check.
//!
//! Tiles have height 8. The tile at level `L` and index `N` holds the hashes of tree level
//! `8 L` with indices `N * 256 .. N * 256 + 256`: each is the root of a complete subtree of
//! `256^L` leaves, so every tile hash is a node the store already keeps (see
//! [`crate::log::merkle`]), and a tile is one range read, never a recomputation. The rightmost
//! tile of a level is partial (`.p/W`, 1 to 255 hashes) until it fills.
//!
//! The entry bundle `tile/entries/N` holds the entries at leaf indices `N * 256 ..` (sequence
//! numbers one more), each as a big-endian `u16` length and the entry's canonical bytes
//! ([`crate::entry::AuditEntry::canonical_bytes`]): the very bytes whose `SHA-256(0x00 || bytes)`
//! is the leaf in the level-0 tile, so a bundle is checked against its tile without auditgate.
//!
//! Two kinds of position carry a mark instead of the entry: a small JSON object that says why
//! the entry is not there, in one fixed spelling (no spaces, the number in decimal without
//! leading zeros), which no entry can equal: the canonical form writes every field, in key
//! order, so it always begins `{"action":`.
//!
//! - `{"prunedBy":S}`: the entry was removed by retention, in the prune recorded by the
//!   `audit.pruned` entry at sequence number `S` ([`crate::log::pruned`]). Its leaf hash stays in
//!   the tile, so every root and proof still holds, and the mark can be judged from the tiles
//!   alone: `S` must be an `audit.pruned` entry served in the bundles (hashing to its leaf), its
//!   `firstSeq..=lastSeq` must hold the position, and the positions marked with `S` must be
//!   exactly its `count` and `seqsSha256`. A row deleted and marked as pruned by hand fails that,
//!   as it fails `auditgate verify`. `S` always comes after the positions it pruned, possibly in
//!   a later bundle, and after a prune it may lie past the latest signed head until the next one
//!   is signed (within `sign_interval`); a reader judges marks once it has read every bundle of
//!   a checkpoint that covers `S`, and refuses a mark it cannot judge.
//! - `{"oversizedBytes":N}`: the entry's canonical bytes are `N` (more than 65,535) long, more
//!   than a bundle can hold. The entry is still in the log, with its inclusion proof, through
//!   the admin API (`/api/v1/entries/{seq}/proof`); auditgate never refuses or shortens an entry
//!   to fit a bundle. This mark cannot be checked from the tiles (nothing short of the bytes
//!   proves them), so a reader reports such positions for a look through the admin API; it is a
//!   mark rather than a zero-length entry so that every position of a bundle says what it is,
//!   and a zero-length entry (which hashes to no entry's leaf) is simply wrong.
//!
//! Both are auditgate's choice where the tlog-tiles spec leaves room: its pruning section only
//! withholds a whole prefix of the log, and says nothing of single entries removed inside it.
//! A generic tlog client sees a mark as an entry that does not hash to its leaf; it can still
//! check every tile, root and proof. A position whose row is missing without a prune mark, or
//! unreadable, is tampering: no bundle is made for it (the reader reports the error), rather
//! than passing it off as pruned.
//!
//! This file is the format: paths, the tiles of a tree, splitting tiles and bundles.
//! [`crate::export::tiles`] reads them from a store.

use std::fmt;

use super::merkle::Hash;

/// Hashes in a full tile, and entries in a full bundle.
pub const TILE_WIDTH: u64 = 256;
/// Tree levels one tile spans.
pub const TILE_HEIGHT: u32 = 8;
/// The longest entry a bundle can hold (its length is a `u16`).
pub const MAX_BUNDLE_ENTRY: usize = u16::MAX as usize;

/// A tile path that is not one the spec allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a tile path: {0}")]
pub struct BadTilePath(&'static str);

/// What a tile holds: tree hashes of one tile level, or entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TileKind {
    Hashes { level: u8 },
    Entries,
}

/// One tile or entry bundle: its kind, its index in its level and how many hashes or entries it
/// holds (256 for a full one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tile {
    pub kind: TileKind,
    pub index: u64,
    pub width: u16,
}

impl Tile {
    pub fn is_full(&self) -> bool {
        u64::from(self.width) == TILE_WIDTH
    }

    /// The tree level of the hashes in a hash tile (level 0 for a bundle's leaves).
    pub fn tree_level(&self) -> u32 {
        match self.kind {
            TileKind::Hashes { level } => u32::from(level) * TILE_HEIGHT,
            TileKind::Entries => 0,
        }
    }

    /// Index (at [`Tile::tree_level`]) of the first hash or entry, `None` past `u64`.
    pub fn first(&self) -> Option<u64> {
        self.index.checked_mul(TILE_WIDTH)
    }

    /// Parses the part of a tile URL after `tile/`: `<L>/<N>[.p/<W>]` or
    /// `entries/<N>[.p/<W>]`, accepting only the one spelling the spec allows for each tile (no
    /// leading zeros, no `x000` element in front, `W` from 1 to 255).
    pub fn parse(path: &str) -> Result<Tile, BadTilePath> {
        let mut parts: Vec<&str> = path.split('/').collect();
        if parts.len() < 2 {
            return Err(BadTilePath("too few path elements"));
        }
        let kind = match parts[0] {
            "entries" => TileKind::Entries,
            level => TileKind::Hashes {
                level: parse_decimal(level)
                    .filter(|level| *level <= 63)
                    .and_then(|level| u8::try_from(level).ok())
                    .ok_or(BadTilePath("the level is not a number from 0 to 63"))?,
            },
        };
        let mut width = TILE_WIDTH as u16;
        let count = parts.len();
        if count >= 3 && parts[count - 2].ends_with(".p") {
            width = parse_decimal(parts[count - 1])
                .filter(|width| (1..TILE_WIDTH).contains(width))
                .and_then(|width| u16::try_from(width).ok())
                .ok_or(BadTilePath(
                    "the partial width is not a number from 1 to 255",
                ))?;
            parts.pop();
            let last = parts.len() - 1;
            parts[last] = parts[last].trim_end_matches(".p");
        }
        let elements = &parts[1..];
        if elements.len() > 7 {
            return Err(BadTilePath("the index has too many elements"));
        }
        let mut index: u64 = 0;
        for (position, element) in elements.iter().enumerate() {
            let last = position + 1 == elements.len();
            let digits = if last {
                *element
            } else {
                element
                    .strip_prefix('x')
                    .ok_or(BadTilePath("an index element lacks its `x`"))?
            };
            if digits.len() != 3 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
                return Err(BadTilePath("an index element is not three decimal digits"));
            }
            if position == 0 && !last && digits == "000" {
                return Err(BadTilePath("the index has a leading x000"));
            }
            let group: u64 = digits
                .parse()
                .map_err(|_| BadTilePath("an index element is not a number"))?;
            index = index
                .checked_mul(1000)
                .and_then(|index| index.checked_add(group))
                .ok_or(BadTilePath("the index is too large"))?;
        }
        Ok(Tile { kind, index, width })
    }

    /// The tile's path, `tile/...`, relative to a log's prefix.
    pub fn path(&self) -> String {
        let mut text = String::from("tile/");
        match self.kind {
            TileKind::Hashes { level } => text.push_str(&level.to_string()),
            TileKind::Entries => text.push_str("entries"),
        }
        let mut groups = vec![self.index % 1000];
        let mut rest = self.index / 1000;
        while rest > 0 {
            groups.push(rest % 1000);
            rest /= 1000;
        }
        for (position, group) in groups.iter().rev().enumerate() {
            let last = position + 1 == groups.len();
            text.push_str(if last { "/" } else { "/x" });
            text.push_str(&format!("{group:03}"));
        }
        if !self.is_full() {
            text.push_str(&format!(".p/{}", self.width));
        }
        text
    }
}

impl fmt::Display for Tile {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.path())
    }
}

/// A decimal number without leading zeros (`0` itself allowed).
fn parse_decimal(text: &str) -> Option<u64> {
    let canonical = text == "0" || (!text.is_empty() && !text.starts_with('0'));
    (canonical && text.bytes().all(|byte| byte.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// Every hash tile and entry bundle of the tree of `size` leaves: the full ones and the
/// partial one at the right edge of each level, as the spec lists them (a tree of 70,000 leaves
/// has 273 full and one partial level-0 tile, one full and one partial level-1 tile, one
/// partial level-2 tile, and as many bundles as level-0 tiles).
pub fn tiles_of_tree(size: u64) -> Vec<Tile> {
    let mut tiles = Vec::new();
    let mut hashes_at_level = size;
    let mut level: u8 = 0;
    while hashes_at_level > 0 {
        let kinds: &[TileKind] = if level == 0 {
            &[TileKind::Hashes { level: 0 }, TileKind::Entries]
        } else {
            &[TileKind::Hashes { level }]
        };
        for kind in kinds {
            for index in 0..hashes_at_level / TILE_WIDTH {
                tiles.push(Tile {
                    kind: *kind,
                    index,
                    width: TILE_WIDTH as u16,
                });
            }
            let partial = hashes_at_level % TILE_WIDTH;
            if partial > 0 {
                tiles.push(Tile {
                    kind: *kind,
                    index: hashes_at_level / TILE_WIDTH,
                    width: partial as u16,
                });
            }
        }
        hashes_at_level /= TILE_WIDTH;
        level += 1;
    }
    tiles
}

/// What a bundle holds at a position whose entry it does not serve (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleMark {
    /// Removed by retention in the prune recorded by the `audit.pruned` entry `record`.
    Pruned { record: u64 },
    /// The canonical bytes are `length` long, more than [`MAX_BUNDLE_ENTRY`].
    Oversized { length: u64 },
}

const PRUNED_MARK: &str = "{\"prunedBy\":";
const OVERSIZED_MARK: &str = "{\"oversizedBytes\":";

impl BundleMark {
    /// The mark's one spelling in a bundle.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            BundleMark::Pruned { record } => format!("{PRUNED_MARK}{record}}}"),
            BundleMark::Oversized { length } => format!("{OVERSIZED_MARK}{length}}}"),
        }
        .into_bytes()
    }

    /// The mark these bytes spell exactly, or `None` (an entry, or anything else). An
    /// oversized mark whose length would fit a bundle is not one.
    pub fn parse(bytes: &[u8]) -> Option<BundleMark> {
        let text = std::str::from_utf8(bytes).ok()?.strip_suffix('}')?;
        if let Some(number) = text.strip_prefix(PRUNED_MARK) {
            return parse_decimal(number).map(|record| BundleMark::Pruned { record });
        }
        let length = parse_decimal(text.strip_prefix(OVERSIZED_MARK)?)?;
        (length > MAX_BUNDLE_ENTRY as u64).then_some(BundleMark::Oversized { length })
    }
}

/// Splits a bundle into its entries (marks included, see [`BundleMark`]);
/// `None` when the bytes are not a sequence of length-prefixed entries.
pub fn split_bundle(mut bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let mut entries = Vec::new();
    while !bytes.is_empty() {
        let (length, rest) = bytes.split_first_chunk::<2>()?;
        let length = usize::from(u16::from_be_bytes(*length));
        if rest.len() < length {
            return None;
        }
        let (entry, rest) = rest.split_at(length);
        entries.push(entry);
        bytes = rest;
    }
    Some(entries)
}

/// The hashes in a hash tile's bytes; `None` when the length is not a whole number of hashes.
pub fn split_hash_tile(bytes: &[u8]) -> Option<Vec<Hash>> {
    if bytes.len() % 32 != 0 {
        return None;
    }
    bytes
        .chunks_exact(32)
        .map(|chunk| <Hash>::try_from(chunk).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tile(kind: TileKind, index: u64, width: u16) -> Tile {
        Tile { kind, index, width }
    }

    #[test]
    fn paths_are_written_and_read_as_the_spec_spells_them() {
        let level0 = TileKind::Hashes { level: 0 };
        for (tile, path) in [
            (tile(level0, 0, 256), "tile/0/000"),
            (tile(level0, 1_234_067, 256), "tile/0/x001/x234/067"),
            (
                tile(TileKind::Hashes { level: 2 }, 1000, 17),
                "tile/2/x001/000.p/17",
            ),
            (tile(TileKind::Entries, 5, 1), "tile/entries/005.p/1"),
            (
                tile(TileKind::Entries, u64::MAX, 256),
                "tile/entries/x018/x446/x744/x073/x709/x551/615",
            ),
        ] {
            assert_eq!(tile.path(), path);
            let parsed = Tile::parse(path.strip_prefix("tile/").expect("prefix")).expect(path);
            assert_eq!(parsed, tile, "{path}");
        }
    }

    #[test]
    fn every_other_spelling_is_refused() {
        for path in [
            "",
            "0",
            "00/000",
            "01/000",
            "64/000",
            "-1/000",
            "0/0",
            "0/0000",
            "0/x000/001",
            "0/001/002",
            "0/y001/002",
            "0/x1/002",
            "0/000.p/0",
            "0/000.p/256",
            "0/000.p/07",
            "0/000.p/",
            "0/000.p",
            "0/000/",
            "entries/000.p/300",
            "entries/x018/x446/x744/x073/x709/x551/616",
            "entries/x001/x001/x001/x001/x001/x001/x001/001",
            "data/000",
            "0/+01",
        ] {
            assert!(Tile::parse(path).is_err(), "{path:?} was accepted");
        }
    }

    #[test]
    fn a_tree_has_the_tiles_the_spec_lists() {
        let tiles = tiles_of_tree(70_000);
        let count = |kind: TileKind, full: bool| {
            tiles
                .iter()
                .filter(|tile| tile.kind == kind && tile.is_full() == full)
                .count()
        };
        assert_eq!(count(TileKind::Hashes { level: 0 }, true), 273);
        assert_eq!(count(TileKind::Hashes { level: 0 }, false), 1);
        assert_eq!(count(TileKind::Entries, true), 273);
        assert_eq!(count(TileKind::Hashes { level: 1 }, true), 1);
        assert!(tiles.contains(&tile(TileKind::Hashes { level: 0 }, 273, 112)));
        assert!(tiles.contains(&tile(TileKind::Hashes { level: 1 }, 1, 17)));
        assert!(tiles.contains(&tile(TileKind::Hashes { level: 2 }, 0, 1)));
        assert_eq!(tiles.len(), 273 * 2 + 2 + 2 + 1);
        // A tree of 256 leaves: one full level-0 tile and a level-1 tile of width 1.
        assert_eq!(
            tiles_of_tree(256),
            vec![
                tile(TileKind::Hashes { level: 0 }, 0, 256),
                tile(TileKind::Entries, 0, 256),
                tile(TileKind::Hashes { level: 1 }, 0, 1),
            ]
        );
        assert!(tiles_of_tree(0).is_empty());
    }

    #[test]
    fn marks_have_one_spelling_and_no_entry_is_one() {
        for mark in [
            BundleMark::Pruned { record: 301 },
            BundleMark::Pruned { record: u64::MAX },
            BundleMark::Oversized { length: 70_000 },
        ] {
            assert_eq!(BundleMark::parse(&mark.to_bytes()), Some(mark));
        }
        assert_eq!(
            BundleMark::Pruned { record: 42 }.to_bytes(),
            b"{\"prunedBy\":42}"
        );
        for other in [
            &b""[..],
            b"{\"prunedBy\":042}",
            b"{\"prunedBy\": 42}",
            b"{\"prunedBy\":42} ",
            b"{\"prunedBy\":-1}",
            b"{\"prunedBy\":\"42\"}",
            b"{\"prunedBy\":18446744073709551616}",
            b"{\"prunedBy\":42,\"x\":1}",
            b"{\"oversizedBytes\":65535}",
            b"{\"oversizedBytes\":}",
        ] {
            assert_eq!(BundleMark::parse(other), None, "{other:?}");
        }
        // Every field of the canonical form is written, in key order, so an entry always starts
        // with its action, whatever its metadata holds.
        let mut entry = crate::entry::AuditEntry::new("log", "audit.pruned");
        entry.metadata.insert("prunedBy".into(), 7.into());
        let bytes = entry.canonical_bytes();
        assert!(bytes.starts_with(b"{\"action\":"), "{bytes:?}");
        assert_eq!(BundleMark::parse(&bytes), None);
    }

    #[test]
    fn bundles_split_back_into_their_entries() {
        let bundle = [0, 2, b'h', b'i', 0, 0, 0, 1, b'x'];
        assert_eq!(
            split_bundle(&bundle),
            Some(vec![&b"hi"[..], &b""[..], &b"x"[..]])
        );
        assert_eq!(split_bundle(&bundle[..3]), None);
        assert_eq!(split_bundle(&[0]), None);
        assert_eq!(split_hash_tile(&[0; 33]), None);
        assert_eq!(split_hash_tile(&[7; 64]), Some(vec![[7; 32], [7; 32]]));
    }
}
