//! Reading the log back for verification, the part both backends share: which positions a page
//! covers, which stored nodes its leaves complete, and where each row read goes. The backends
//! only run their queries and hand the rows to a [`PageBuilder`].

use crate::entry::{AuditEntry, StoredRow};
use crate::log::merkle::{Hash, MemoryNodes};
use crate::store::{LogPage, LogSlot};

/// A page of positions `first..=last` being filled from the rows a backend reads.
#[derive(Debug)]
pub(crate) struct PageBuilder {
    first: u64,
    last: u64,
    slots: Vec<LogSlot>,
    nodes: MemoryNodes,
    findings: Vec<(u64, String)>,
}

/// A stored hash as read: one of the wrong length can never match a recomputed hash, and keeping
/// it as all-ones rather than dropping it reports "changed" instead of "missing".
pub(crate) fn stored_hash(blob: &[u8]) -> Hash {
    <Hash>::try_from(blob).unwrap_or([0xff; 32])
}

impl PageBuilder {
    /// The page of at most `max` positions from `first` of a log whose rows end at `end` (the
    /// larger of the tree size and the highest entry seq); `None` when that is no position.
    pub(crate) fn new(first: u64, max: usize, end: u64) -> Option<PageBuilder> {
        let first = first.max(1);
        if first > end || max == 0 {
            return None;
        }
        let last = end.min(first.saturating_add(max as u64 - 1));
        let slots = (first..=last)
            .map(|seq| LogSlot {
                seq,
                leaf: None,
                entry: None,
                pruned_by: None,
                stored: None,
            })
            .collect();
        Some(PageBuilder {
            first,
            last,
            slots,
            nodes: MemoryNodes::new(),
            findings: Vec::new(),
        })
    }

    /// The first position of the page.
    pub(crate) fn first(&self) -> u64 {
        self.first
    }

    /// The last position of the page.
    pub(crate) fn last(&self) -> u64 {
        self.last
    }

    /// The slot of position `seq`, when the page covers it; rows outside it are ignored.
    fn slot(&mut self, seq: i64) -> Option<&mut LogSlot> {
        let seq = u64::try_from(seq).ok()?;
        if seq < self.first || seq > self.last {
            return None;
        }
        self.slots.get_mut((seq - self.first) as usize)
    }

    /// A stored leaf (the level-0 node at `index`, the leaf of position `index + 1`).
    pub(crate) fn leaf(&mut self, index: i64, blob: &[u8]) {
        if let Some(slot) = index.checked_add(1).and_then(|seq| self.slot(seq)) {
            slot.leaf = Some(stored_hash(blob));
        }
    }

    /// The entry row at `seq`, or why it is not a readable entry.
    pub(crate) fn entry(&mut self, seq: i64, entry: Result<AuditEntry, String>) {
        if let Some(slot) = self.slot(seq) {
            // A backend keeps a position in one row; two rows for one position (a row copied by
            // hand into a second table) make neither of them the entry.
            slot.entry = Some(match (&slot.entry, &slot.stored) {
                (None, None) => entry,
                _ => Err(format!("position {seq} is stored in two rows")),
            });
            slot.stored = None;
        }
    }

    /// The entry row at `seq` as its values copied.
    pub(crate) fn stored(&mut self, seq: i64, row: StoredRow) {
        if let Some(slot) = self.slot(seq) {
            if slot.entry.is_none() && slot.stored.is_none() {
                slot.stored = Some(row);
            } else {
                slot.stored = None;
                slot.entry = Some(Err(format!("position {seq} is stored in two rows")));
            }
        }
    }

    /// The prune mark at `seq`: pruned by the `audit.pruned` entry at `record`.
    pub(crate) fn pruned_by(&mut self, seq: i64, record: i64) {
        if let Some(slot) = self.slot(seq) {
            slot.pruned_by = Some(record.max(0) as u64);
        }
    }

    /// The stored nodes above level 0 that this page's leaves complete, as
    /// `(level, lowest index, highest index)`. Node `(level, i)` is completed by leaf
    /// `((i + 1) << level) - 1`; the page's leaves are `first - 1 ..= last - 1`, so it completes
    /// `i + 1` in `[ceil(first / 2^level), last / 2^level]`.
    pub(crate) fn node_ranges(&self) -> Vec<(u32, u64, u64)> {
        let mut ranges = Vec::new();
        for level in 1..64u32 {
            let high = self.last >> level;
            if high == 0 {
                break;
            }
            let low = self.first.div_ceil(1 << level);
            if low <= high {
                ranges.push((level, low - 1, high - 1));
            }
        }
        ranges
    }

    /// A stored node above level 0.
    pub(crate) fn node(&mut self, level: u32, index: i64, blob: &[u8]) {
        self.nodes
            .insert(level, index.max(0) as u64, stored_hash(blob));
    }

    /// A problem at `seq` besides its row ([`LogPage::findings`]).
    pub(crate) fn finding(&mut self, seq: i64, message: String) {
        self.findings.push((seq.max(0) as u64, message));
    }

    pub(crate) fn finish(mut self) -> LogPage {
        self.findings.sort_by_key(|(seq, _)| *seq);
        LogPage {
            slots: self.slots,
            nodes: self.nodes,
            findings: self.findings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_covers_the_positions_asked_for_up_to_the_end_of_the_log() {
        assert!(PageBuilder::new(5, 10, 4).is_none(), "past the end");
        assert!(PageBuilder::new(1, 0, 4).is_none(), "no room");
        let page = PageBuilder::new(0, 10, 4).expect("positions");
        assert_eq!((page.first(), page.last()), (1, 4), "from 1, to the end");
        let page = PageBuilder::new(3, 2, 100).expect("positions");
        assert_eq!((page.first(), page.last()), (3, 4), "at most max");
    }

    #[test]
    fn rows_land_in_their_slots_and_rows_outside_the_page_are_ignored() {
        let mut page = PageBuilder::new(2, 2, 10).expect("positions");
        page.leaf(1, &[7; 32]);
        page.leaf(0, &[9; 32]);
        page.leaf(2, &[1; 3]);
        page.entry(3, Err("unreadable".into()));
        page.entry(-1, Err("ignored".into()));
        page.pruned_by(2, 5);
        page.pruned_by(4, 5);
        let page = page.finish();
        assert_eq!(page.slots.len(), 2);
        assert_eq!(page.slots[0].seq, 2);
        assert_eq!(page.slots[0].leaf, Some([7; 32]));
        assert_eq!(
            page.slots[1].leaf,
            Some([0xff; 32]),
            "a short hash reads as changed"
        );
        assert_eq!(page.slots[0].entry, None);
        assert_eq!(page.slots[1].entry, Some(Err("unreadable".into())));
        assert_eq!(page.slots[0].pruned_by, Some(5));
        assert_eq!(page.slots[1].pruned_by, None);
    }

    #[test]
    fn node_ranges_are_the_nodes_the_page_leaves_complete() {
        // Leaves 2..=5 (positions 3..=6) complete node (1, 1) with leaf 3, (1, 2) with leaf 5,
        // and (2, 0) with leaf 3.
        let page = PageBuilder::new(3, 4, 100).expect("positions");
        assert_eq!(page.node_ranges(), vec![(1, 1, 2), (2, 0, 0)]);
        // Position 1 alone completes nothing above level 0.
        let page = PageBuilder::new(1, 1, 100).expect("positions");
        assert!(page.node_ranges().is_empty());
    }
}
