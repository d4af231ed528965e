//! The RFC 9162 section 2.1 Merkle tree (Certificate Transparency v2): hashing, the append
//! frontier, roots and proofs read from stored subtrees, and the two verification algorithms.
//!
//! Positions are 0-based leaf indices (the store's 1-based `seq` minus one). Nodes are named by
//! `(level, index)`: the node at level `l` and index `i` is the root of the complete subtree over
//! leaves `[i << l, (i + 1) << l)`, and level 0 holds the leaf hashes. Only such complete, aligned
//! subtrees are ever stored, because they never change once complete; every other hash the RFC
//! asks for is folded from at most 64 of them at read time.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// A SHA-256 digest: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; 32];

/// Domain separation prefixes from RFC 9162 2.1.1, so that a leaf can never be passed off as an
/// interior node (the second-preimage attack on plain Merkle trees).
const LEAF_PREFIX: u8 = 0x00;
const NODE_PREFIX: u8 = 0x01;

/// The hash of one log entry: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([LEAF_PREFIX]);
    hasher.update(data);
    hasher.finalize().into()
}

/// The hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([NODE_PREFIX]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The root of the tree of size 0: the SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Lowercase hex, the form hashes take in JSON, the API and exports.
pub fn to_hex(hash: &Hash) -> String {
    hex::encode(hash)
}

/// Parses exactly 64 hex digits (either case); anything else is `None`.
pub fn from_hex(text: &str) -> Option<Hash> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text, &mut hash).ok()?;
    Some(hash)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    #[error("leaf index {index} out of range for tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("tree size {first} is larger than tree size {second}")]
    SizesOutOfOrder { first: u64, second: u64 },
    #[error("missing node at level {level} index {index}")]
    MissingNode { level: u32, index: u64 },
    #[error("storage error: {0}")]
    Storage(String),
}

/// Read access to stored hashes of *complete aligned subtrees*: `node(level, index)` is the root
/// of the subtree over leaves `[index << level, (index + 1) << level)`. Level 0 = leaf hashes.
///
/// Implementations return [`MerkleError::MissingNode`] for a node they do not hold and
/// [`MerkleError::Storage`] when the store itself fails.
pub trait NodeReader {
    fn node(&self, level: u32, index: u64) -> Result<Hash, MerkleError>;
}

/// In-memory store of complete subtree nodes, used by tests, by offline verification and as a
/// simple cache. It holds whatever it is given, so it can also hold a sparse set of nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryNodes {
    nodes: HashMap<(u32, u64), Hash>,
}

impl MemoryNodes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every complete subtree node of the tree over `leaves` (leaf hashes, in log order).
    pub fn from_leaves(leaves: &[Hash]) -> Self {
        let mut nodes = MemoryNodes::new();
        let mut level_hashes: Vec<Hash> = leaves.to_vec();
        let mut level = 0u32;
        while !level_hashes.is_empty() {
            for (index, hash) in (0u64..).zip(&level_hashes) {
                nodes.insert(level, index, *hash);
            }
            // An odd node at the end has no sibling yet, so it completes nothing above it.
            level_hashes = level_hashes
                .chunks_exact(2)
                .map(|pair| node_hash(&pair[0], &pair[1]))
                .collect();
            level += 1;
        }
        nodes
    }

    pub fn insert(&mut self, level: u32, index: u64, hash: Hash) {
        self.nodes.insert((level, index), hash);
    }

    /// How many nodes are held.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

impl NodeReader for MemoryNodes {
    fn node(&self, level: u32, index: u64) -> Result<Hash, MerkleError> {
        self.nodes
            .get(&(level, index))
            .copied()
            .ok_or(MerkleError::MissingNode { level, index })
    }
}

/// Lets `memory_nodes.extend(frontier.append(leaf))` store what an append completed.
impl Extend<(u32, u64, Hash)> for MemoryNodes {
    fn extend<I: IntoIterator<Item = (u32, u64, Hash)>>(&mut self, iter: I) {
        for (level, index, hash) in iter {
            self.insert(level, index, hash);
        }
    }
}

/// The right edge of the tree: the roots of the maximal complete subtrees ("peaks") of a tree of
/// `size` leaves, one per set bit of `size`.
///
/// This is all the writer needs to keep in memory to append in O(log n) and to know the current
/// root without reading the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// Peak hashes from left to right, that is from the highest level down.
    peaks: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Rebuild from stored nodes (reads O(log n) nodes).
    pub fn load(reader: &impl NodeReader, size: u64) -> Result<Self, MerkleError> {
        let peaks = read_peaks(reader, 0, size)?;
        Ok(Frontier { size, peaks })
    }

    /// Append one leaf hash; returns every complete-subtree node that became complete, as
    /// `(level, index, hash)`, starting with the leaf itself at level 0. The caller stores these
    /// in the same transaction as the entry, which makes appends O(log n) and keeps the stored
    /// nodes exactly in step with the entries.
    pub fn append(&mut self, leaf: Hash) -> Vec<(u32, u64, Hash)> {
        let position = self.size;
        let mut completed = vec![(0, position, leaf)];
        let mut hash = leaf;
        let mut level = 0u32;
        // Each trailing 1 bit of the old size is a peak of that level waiting for a right
        // sibling; the new leaf supplies it, and the merged subtree climbs one level.
        while level < u64::BITS && (position >> level) & 1 == 1 {
            let Some(left) = self.peaks.pop() else {
                break;
            };
            hash = node_hash(&left, &hash);
            level += 1;
            completed.push((level, position >> level, hash));
        }
        self.peaks.push(hash);
        self.size += 1;
        completed
    }

    /// Root hash of the current tree (RFC 9162 MTH), `empty_root()` for size 0.
    pub fn root(&self) -> Hash {
        fold_peaks(&self.peaks)
    }
}

/// MTH(D[0:size]) computed from stored complete subtrees in O(log n) reads.
pub fn root_at(reader: &impl NodeReader, size: u64) -> Result<Hash, MerkleError> {
    range_hash(reader, 0, size)
}

/// RFC 9162 2.1.3.1 inclusion proof (audit path) of leaf `index` in the tree of `size` leaves.
///
/// Follows the RFC's recursive PATH(m, D[start:end]) from the root down. Every sibling on the way
/// is either a complete subtree (one read) or, at most once, the ragged right part of the tree
/// (one read per set bit of its size), so the proof costs O(log n) reads.
pub fn inclusion_proof(
    reader: &impl NodeReader,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let mut proof = Vec::new();
    let (mut start, mut end) = (0u64, size);
    while end - start > 1 {
        let split = start + largest_power_of_two_below(end - start);
        if index < split {
            proof.push(range_hash(reader, split, end)?);
            end = split;
        } else {
            proof.push(range_hash(reader, start, split)?);
            start = split;
        }
    }
    // The RFC appends the sibling after the sub-path, so the top-level sibling comes last.
    proof.reverse();
    Ok(proof)
}

/// RFC 9162 2.1.4.1 consistency proof between sizes `m <= n`.
///
/// The RFC defines PROOF(m, D_n) for 0 < m < n only. For `m == n` the proof is empty
/// (SUBPROOF(m, D_m, true) = {}), and for `m == 0` it is empty too, because the empty tree is a
/// prefix of every tree; [`verify_consistency`] accepts exactly these empty proofs.
pub fn consistency_proof(
    reader: &impl NodeReader,
    m: u64,
    n: u64,
) -> Result<Vec<Hash>, MerkleError> {
    if m > n {
        return Err(MerkleError::SizesOutOfOrder {
            first: m,
            second: n,
        });
    }
    if m == 0 || m == n {
        return Ok(Vec::new());
    }
    // SUBPROOF(m, D[start:end], b) unrolled: `old_size` is m relative to `start`, and
    // `old_root_is_known` is the RFC's flag b, true while the old tree's root is a node the
    // verifier already has.
    let mut proof = Vec::new();
    let (mut start, mut end) = (0u64, n);
    let mut old_size = m;
    let mut old_root_is_known = true;
    loop {
        let size = end - start;
        if old_size == size {
            if !old_root_is_known {
                proof.push(range_hash(reader, start, end)?);
            }
            break;
        }
        let split = start + largest_power_of_two_below(size);
        if start + old_size <= split {
            proof.push(range_hash(reader, split, end)?);
            end = split;
        } else {
            proof.push(range_hash(reader, start, split)?);
            old_size -= split - start;
            start = split;
            old_root_is_known = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// RFC 9162 2.1.3.2 verification algorithm: does `proof` show that `leaf` is at `index` in the
/// tree of `size` leaves whose root is `root`?
///
/// The proof does not bind `size` on its own: near the left edge, the same path can be valid for
/// several sizes. The size is bound to the root by the signed tree head it comes from.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    // The RFC's fn (the node's index at the current level) and sn (the last index at that level).
    let mut node = index;
    let mut last = size - 1;
    let mut computed = *leaf;
    for sibling in proof {
        if last == 0 {
            return false;
        }
        if node & 1 == 1 || node == last {
            computed = node_hash(sibling, &computed);
            // A right-edge node with no sibling at this level is promoted unchanged.
            while node & 1 == 0 && node != 0 {
                node >>= 1;
                last >>= 1;
            }
        } else {
            computed = node_hash(&computed, sibling);
        }
        node >>= 1;
        last >>= 1;
    }
    last == 0 && computed == *root
}

/// RFC 9162 2.1.4.2 verification algorithm: does `proof` show that the tree of size `m` with root
/// `root_m` is a prefix of the tree of size `n` with root `root_n`?
///
/// The RFC's algorithm covers 0 < m < n. The edge cases are decided as follows, matching
/// [`consistency_proof`]:
/// - `m > n`: rejected.
/// - `m == 0`: the empty tree is a prefix of every tree, so there is nothing to prove: accepted
///   only with an empty proof and `root_m == empty_root()` (and, when `n == 0` too, `root_n`
///   equal to it). `root_n` is otherwise unconstrained: it is bound by its own signed head.
/// - `m == n`: accepted only with an empty proof and `root_m == root_n`.
pub fn verify_consistency(m: u64, n: u64, root_m: &Hash, root_n: &Hash, proof: &[Hash]) -> bool {
    if m > n {
        return false;
    }
    if m == 0 {
        return proof.is_empty() && *root_m == empty_root() && (n > 0 || root_n == root_m);
    }
    if m == n {
        return proof.is_empty() && root_m == root_n;
    }
    // Step 1: an empty path proves nothing.
    let Some((first_in_proof, rest_of_proof)) = proof.split_first() else {
        return false;
    };
    // Step 2: when m is a power of two the old root is itself a node of the new tree, so the
    // proof leaves it out and the verifier puts it first.
    let (start, path) = if m.is_power_of_two() {
        (root_m, proof)
    } else {
        (first_in_proof, rest_of_proof)
    };
    // Steps 3 and 4: the RFC's fn and sn, skipping the levels where the old tree's last node is
    // a right child already covered by the starting node.
    let mut node = m - 1;
    let mut last = n - 1;
    while node & 1 == 1 {
        node >>= 1;
        last >>= 1;
    }
    // Step 5: fr rebuilds the old root, sr the new one.
    let mut old_root = *start;
    let mut new_root = *start;
    // Step 6.
    for hash in path {
        if last == 0 {
            return false;
        }
        if node & 1 == 1 || node == last {
            old_root = node_hash(hash, &old_root);
            new_root = node_hash(hash, &new_root);
            while node & 1 == 0 && node != 0 {
                node >>= 1;
                last >>= 1;
            }
        } else {
            new_root = node_hash(&new_root, hash);
        }
        node >>= 1;
        last >>= 1;
    }
    // Step 7.
    old_root == *root_m && new_root == *root_n && last == 0
}

/// The largest power of two strictly smaller than `n` (RFC 9162's k); `n` must be at least 2.
fn largest_power_of_two_below(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (u64::BITS - 1 - (n - 1).leading_zeros())
}

/// The stored complete subtrees that tile the leaves `[start, end)`, left to right, largest
/// first.
///
/// `start` must be a multiple of the largest power of two not above `end - start`; every range
/// the RFC's recursion visits is, since it only ever splits at a power of two from an aligned
/// start. Under that condition each tile is an aligned subtree, hence a stored node.
fn read_peaks(reader: &impl NodeReader, start: u64, end: u64) -> Result<Vec<Hash>, MerkleError> {
    let mut peaks = Vec::new();
    let mut position = start;
    while position < end {
        let remaining = end - position;
        let level = u64::BITS - 1 - remaining.leading_zeros();
        debug_assert!(position % (1 << level) == 0, "unaligned range");
        peaks.push(reader.node(level, position >> level)?);
        position += 1 << level;
    }
    Ok(peaks)
}

/// MTH of the leaves `[start, end)` under the alignment condition of [`read_peaks`].
fn range_hash(reader: &impl NodeReader, start: u64, end: u64) -> Result<Hash, MerkleError> {
    Ok(fold_peaks(&read_peaks(reader, start, end)?))
}

/// The root of a complete subtree from its `2^k` nodes `k` levels down, left to right (a store
/// that keeps only some levels recomputes the others this way). A count that is not a power of
/// two folds what pairs up; callers pass whole subtrees.
pub fn subtree_root(mut hashes: Vec<Hash>) -> Hash {
    while hashes.len() > 1 {
        hashes = hashes
            .chunks_exact(2)
            .map(|pair| node_hash(&pair[0], &pair[1]))
            .collect();
    }
    hashes.first().copied().unwrap_or_else(empty_root)
}

/// Combines peaks right to left. RFC 9162 splits a ragged tree at its largest power of two, so
/// its root is H(first peak, root of the rest), recursively.
fn fold_peaks(peaks: &[Hash]) -> Hash {
    peaks
        .iter()
        .rev()
        .copied()
        .reduce(|right, left| node_hash(&left, &right))
        .unwrap_or_else(empty_root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::cell::Cell;

    // ---- A reference implementation written straight from the RFC 9162 text, over raw data. ----

    /// k: the largest power of two smaller than n, computed the slow, obvious way.
    fn reference_split(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    /// RFC 9162 2.1.1 MTH.
    fn reference_mth(data: &[Vec<u8>]) -> Hash {
        match data.len() {
            0 => Sha256::digest(b"").into(),
            1 => {
                let mut hasher = Sha256::new();
                hasher.update([0u8]);
                hasher.update(&data[0]);
                hasher.finalize().into()
            }
            n => {
                let k = reference_split(n);
                let mut hasher = Sha256::new();
                hasher.update([1u8]);
                hasher.update(reference_mth(&data[..k]));
                hasher.update(reference_mth(&data[k..]));
                hasher.finalize().into()
            }
        }
    }

    /// RFC 9162 2.1.3.1 PATH(m, D_n).
    fn reference_path(m: usize, data: &[Vec<u8>]) -> Vec<Hash> {
        let n = data.len();
        if n == 1 {
            return Vec::new();
        }
        let k = reference_split(n);
        if m < k {
            let mut path = reference_path(m, &data[..k]);
            path.push(reference_mth(&data[k..]));
            path
        } else {
            let mut path = reference_path(m - k, &data[k..]);
            path.push(reference_mth(&data[..k]));
            path
        }
    }

    /// RFC 9162 2.1.4.1 SUBPROOF(m, D_n, b).
    fn reference_subproof(m: usize, data: &[Vec<u8>], b: bool) -> Vec<Hash> {
        let n = data.len();
        if m == n {
            return if b {
                Vec::new()
            } else {
                vec![reference_mth(data)]
            };
        }
        let k = reference_split(n);
        if m <= k {
            let mut proof = reference_subproof(m, &data[..k], b);
            proof.push(reference_mth(&data[k..]));
            proof
        } else {
            let mut proof = reference_subproof(m - k, &data[k..], false);
            proof.push(reference_mth(&data[..k]));
            proof
        }
    }

    /// RFC 9162 2.1.4.1 PROOF(m, D_n), for 0 < m < n.
    fn reference_proof(m: usize, data: &[Vec<u8>]) -> Vec<Hash> {
        reference_subproof(m, data, true)
    }

    // ---- Helpers. ----

    fn hash(text: &str) -> Hash {
        from_hex(text).unwrap()
    }

    fn entries(count: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| format!("entry {i}").into_bytes())
            .collect()
    }

    /// Random entries of random length, made distinct by a position prefix: with two equal
    /// entries side by side, the proof of one is also a proof of the other (as it should be), and
    /// the wrong-index checks would fail for a reason that is no defect. Real entries are always
    /// distinct, since each carries its own ULID.
    fn random_entries(rng: &mut StdRng, count: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|position| {
                let mut entry = (position as u32).to_be_bytes().to_vec();
                let len = rng.gen_range(0..40);
                entry.extend((0..len).map(|_| rng.gen::<u8>()));
                entry
            })
            .collect()
    }

    #[test]
    fn a_subtree_root_folds_the_nodes_below_it() {
        let mut rng = StdRng::seed_from_u64(5);
        let data = random_entries(&mut rng, 512);
        let nodes = nodes_for(&data);
        for (level, index, below) in [
            (3u32, 5u64, 0u32),
            (7, 1, 0),
            (9, 0, 8),
            (8, 1, 4),
            (1, 7, 0),
        ] {
            let span = 1u64 << (level - below);
            let hashes: Vec<Hash> = (index * span..(index + 1) * span)
                .map(|i| nodes.node(below, i).expect("a node below"))
                .collect();
            let stored = nodes.node(level, index).expect("the node above");
            assert_eq!(subtree_root(hashes), stored);
        }
        assert_eq!(subtree_root(Vec::new()), empty_root());
    }

    fn nodes_for(data: &[Vec<u8>]) -> MemoryNodes {
        let leaves: Vec<Hash> = data.iter().map(|d| leaf_hash(d)).collect();
        MemoryNodes::from_leaves(&leaves)
    }

    /// Counts reads, to show proofs touch O(log n) nodes and never all leaves.
    struct CountingReader<'a> {
        inner: &'a MemoryNodes,
        reads: Cell<usize>,
    }

    impl NodeReader for CountingReader<'_> {
        fn node(&self, level: u32, index: u64) -> Result<Hash, MerkleError> {
            self.reads.set(self.reads.get() + 1);
            self.inner.node(level, index)
        }
    }

    fn levels(size: u64) -> usize {
        (u64::BITS - size.leading_zeros()) as usize
    }

    /// The ways an inclusion proof can be corrupted; none may verify.
    fn assert_inclusion_rejects_corruptions(
        leaf: &Hash,
        index: u64,
        size: u64,
        proof: &[Hash],
        root: &Hash,
    ) {
        let context = format!("index {index} size {size}");
        for i in 0..proof.len() {
            for bit in [0u8, 7] {
                let mut bad = proof.to_vec();
                bad[i][i % 32] ^= 1 << bit;
                assert!(
                    !verify_inclusion(leaf, index, size, &bad, root),
                    "{context}: flipped proof"
                );
            }
        }
        let mut bad_leaf = *leaf;
        bad_leaf[31] ^= 1;
        assert!(
            !verify_inclusion(&bad_leaf, index, size, proof, root),
            "{context}: leaf"
        );
        let mut bad_root = *root;
        bad_root[0] ^= 0x80;
        assert!(
            !verify_inclusion(leaf, index, size, proof, &bad_root),
            "{context}: root"
        );
        for wrong_index in [index.wrapping_sub(1), index + 1, index ^ 2, size, u64::MAX] {
            if wrong_index != index {
                assert!(
                    !verify_inclusion(leaf, wrong_index, size, proof, root),
                    "{context}: wrong index {wrong_index}"
                );
            }
        }
        // Doubling or halving the size always changes the path's shape. Sizes just above or below
        // can legitimately share it (see verify_inclusion's doc), so they are not corruptions.
        for wrong_size in [size * 2, size / 2, 0] {
            if wrong_size != size {
                assert!(
                    !verify_inclusion(leaf, index, wrong_size, proof, root),
                    "{context}: wrong size {wrong_size}"
                );
            }
        }
        if !proof.is_empty() {
            assert!(
                !verify_inclusion(leaf, index, size, &proof[..proof.len() - 1], root),
                "{context}: truncated"
            );
            assert!(
                !verify_inclusion(leaf, index, size, &proof[1..], root),
                "{context}: first element dropped"
            );
        }
        let mut extended = proof.to_vec();
        extended.push([0xab; 32]);
        assert!(
            !verify_inclusion(leaf, index, size, &extended, root),
            "{context}: extended"
        );
        // Duplicating the last element is the extension most likely to be accepted by a verifier
        // that forgets the RFC's `sn == 0` checks.
        if let Some(last) = proof.last() {
            let mut doubled = proof.to_vec();
            doubled.push(*last);
            assert!(
                !verify_inclusion(leaf, index, size, &doubled, root),
                "{context}: last element repeated"
            );
        }
    }

    /// The ways a consistency proof can be corrupted; none may verify.
    fn assert_consistency_rejects_corruptions(
        m: u64,
        n: u64,
        root_m: &Hash,
        root_n: &Hash,
        proof: &[Hash],
    ) {
        let context = format!("m {m} n {n}");
        for i in 0..proof.len() {
            let mut bad = proof.to_vec();
            bad[i][(i * 5) % 32] ^= 0x10;
            assert!(
                !verify_consistency(m, n, root_m, root_n, &bad),
                "{context}: flipped proof element {i}"
            );
        }
        let mut bad_root_m = *root_m;
        bad_root_m[3] ^= 1;
        assert!(
            !verify_consistency(m, n, &bad_root_m, root_n, proof),
            "{context}: root m"
        );
        let mut bad_root_n = *root_n;
        bad_root_n[30] ^= 4;
        assert!(
            !verify_consistency(m, n, root_m, &bad_root_n, proof),
            "{context}: root n"
        );
        if root_m != root_n {
            assert!(
                !verify_consistency(m, n, root_n, root_m, proof),
                "{context}: roots swapped"
            );
        }
        assert!(
            !verify_consistency(n, m, root_m, root_n, proof),
            "{context}: sizes swapped"
        );
        for wrong_m in [m - 1, m + 1] {
            if wrong_m != m && wrong_m <= n {
                assert!(
                    !verify_consistency(wrong_m, n, root_m, root_n, proof),
                    "{context}: wrong m {wrong_m}"
                );
            }
        }
        // As with inclusion, a slightly different n can share the proof's shape; doubling or
        // halving it cannot.
        for wrong_n in [n * 2, n / 2, m] {
            if wrong_n != n {
                assert!(
                    !verify_consistency(m, wrong_n, root_m, root_n, proof),
                    "{context}: wrong n {wrong_n}"
                );
            }
        }
        if !proof.is_empty() {
            assert!(
                !verify_consistency(m, n, root_m, root_n, &proof[..proof.len() - 1]),
                "{context}: truncated"
            );
            assert!(
                !verify_consistency(m, n, root_m, root_n, &proof[1..]),
                "{context}: first element dropped"
            );
        }
        let mut extended = proof.to_vec();
        extended.push([0xcd; 32]);
        assert!(
            !verify_consistency(m, n, root_m, root_n, &extended),
            "{context}: extended"
        );
    }

    /// Checks every proof of one tree against the reference, for the given leaf indices and old
    /// sizes, with the corruptions.
    fn check_tree(data: &[Vec<u8>], indices: &[u64], old_sizes: &[u64]) {
        let size = data.len() as u64;
        let nodes = nodes_for(data);
        let reader = CountingReader {
            inner: &nodes,
            reads: Cell::new(0),
        };
        let root = reference_mth(data);
        assert_eq!(root_at(&reader, size).unwrap(), root, "root of size {size}");
        assert!(reader.reads.get() <= levels(size));

        for &index in indices {
            let leaf = leaf_hash(&data[index as usize]);
            reader.reads.set(0);
            let proof = inclusion_proof(&reader, index, size).unwrap();
            assert!(
                reader.reads.get() <= 2 * levels(size),
                "inclusion proof of {index} in {size} read {} nodes",
                reader.reads.get()
            );
            assert_eq!(
                proof,
                reference_path(index as usize, data),
                "inclusion proof of {index} in {size}"
            );
            assert!(
                verify_inclusion(&leaf, index, size, &proof, &root),
                "inclusion proof of {index} in {size} rejected"
            );
            assert_inclusion_rejects_corruptions(&leaf, index, size, &proof, &root);
        }

        for &m in old_sizes {
            let root_m = reference_mth(&data[..m as usize]);
            reader.reads.set(0);
            let proof = consistency_proof(&reader, m, size).unwrap();
            assert!(
                reader.reads.get() <= 3 * levels(size),
                "consistency proof {m} to {size} read {} nodes",
                reader.reads.get()
            );
            if 0 < m && m < size {
                assert_eq!(
                    proof,
                    reference_proof(m as usize, data),
                    "consistency proof {m} to {size}"
                );
                assert_consistency_rejects_corruptions(m, size, &root_m, &root, &proof);
            } else {
                assert!(proof.is_empty());
            }
            assert!(
                verify_consistency(m, size, &root_m, &root, &proof),
                "consistency proof {m} to {size} rejected"
            );
        }
    }

    // ---- Fixed vectors. ----

    #[test]
    fn empty_root_and_empty_leaf_match_known_values() {
        assert_eq!(
            to_hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            to_hex(&leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        assert_eq!(root_at(&MemoryNodes::new(), 0).unwrap(), empty_root());
        assert_eq!(Frontier::new().root(), empty_root());
    }

    #[test]
    fn node_hash_is_prefixed_and_ordered() {
        let left = leaf_hash(b"l");
        let right = leaf_hash(b"r");
        let mut concatenated = vec![1u8];
        concatenated.extend_from_slice(&left);
        concatenated.extend_from_slice(&right);
        let expected: Hash = Sha256::digest(&concatenated).into();
        assert_eq!(node_hash(&left, &right), expected);
        assert_ne!(node_hash(&left, &right), node_hash(&right, &left));
        // A leaf whose data looks like two child hashes must not collide with the node.
        assert_ne!(leaf_hash(&concatenated[1..]), node_hash(&left, &right));
    }

    #[test]
    fn three_and_seven_leaf_roots_computed_by_hand() {
        let l: Vec<Hash> = (0..7).map(|i| leaf_hash(&[i as u8])).collect();
        let nodes = MemoryNodes::from_leaves(&l);

        // Size 3: k = 2, so MTH = H(H(l0, l1), l2) and not H(l0, H(l1, l2)).
        let three = node_hash(&node_hash(&l[0], &l[1]), &l[2]);
        assert_eq!(root_at(&nodes, 3).unwrap(), three);
        assert_ne!(three, node_hash(&l[0], &node_hash(&l[1], &l[2])));

        // Size 7: k = 4, then the right part [4, 7) splits at 2.
        let left_four = node_hash(&node_hash(&l[0], &l[1]), &node_hash(&l[2], &l[3]));
        let right_three = node_hash(&node_hash(&l[4], &l[5]), &l[6]);
        let seven = node_hash(&left_four, &right_three);
        assert_eq!(root_at(&nodes, 7).unwrap(), seven);

        let mut frontier = Frontier::new();
        for leaf in &l {
            frontier.append(*leaf);
            if frontier.size() == 3 {
                assert_eq!(frontier.root(), three);
            }
        }
        assert_eq!(frontier.root(), seven);
    }

    /// The Certificate Transparency test vectors (RFC 6962 hashing, which RFC 9162 keeps), as
    /// published in transparency-dev/merkle's testonly constants.
    #[test]
    fn certificate_transparency_vectors() {
        let data: Vec<Vec<u8>> = [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|text| hex::decode(text).unwrap())
        .collect();
        let roots = [
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let nodes = nodes_for(&data);
        for (size, root) in roots.iter().enumerate() {
            assert_eq!(to_hex(&root_at(&nodes, size as u64).unwrap()), *root);
        }

        let h23 = "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e";
        let h4567 = "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4";
        let leaf4 = "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b";
        let inclusion_cases = [
            (
                0,
                8,
                vec![
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    h23,
                    h4567,
                ],
            ),
            (
                5,
                8,
                vec![
                    leaf4,
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    roots[4],
                ],
            ),
        ];
        for (index, size, expected) in inclusion_cases {
            let proof = inclusion_proof(&nodes, index, size).unwrap();
            let expected: Vec<Hash> = expected.iter().map(|text| hash(text)).collect();
            assert_eq!(proof, expected);
            let leaf = leaf_hash(&data[index as usize]);
            assert!(verify_inclusion(
                &leaf,
                index,
                size,
                &proof,
                &hash(roots[size as usize])
            ));
        }

        for (m, n, expected) in [(2, 8, vec![h23, h4567]), (2, 5, vec![h23, leaf4])] {
            let proof = consistency_proof(&nodes, m, n).unwrap();
            let expected: Vec<Hash> = expected.iter().map(|text| hash(text)).collect();
            assert_eq!(proof, expected);
            assert!(verify_consistency(
                m,
                n,
                &hash(roots[m as usize]),
                &hash(roots[n as usize]),
                &proof
            ));
        }
    }

    #[test]
    fn hex_helpers_round_trip_and_reject_bad_input() {
        let value = leaf_hash(b"x");
        assert_eq!(from_hex(&to_hex(&value)), Some(value));
        assert_eq!(from_hex(&to_hex(&value).to_uppercase()), Some(value));
        assert_eq!(from_hex(""), None);
        assert_eq!(from_hex(&"0".repeat(63)), None);
        assert_eq!(from_hex(&"0".repeat(66)), None);
        assert_eq!(from_hex(&"g".repeat(64)), None);
    }

    // ---- The frontier. ----

    #[test]
    fn frontier_appends_store_exactly_the_complete_nodes() {
        let data = entries(70);
        let mut nodes = MemoryNodes::new();
        let mut frontier = Frontier::new();
        for size in 0..=70u64 {
            let expected = reference_mth(&data[..size as usize]);
            assert_eq!(frontier.size(), size);
            assert_eq!(frontier.root(), expected, "frontier root at size {size}");
            assert_eq!(
                root_at(&nodes, size).unwrap(),
                expected,
                "stored root at size {size}"
            );
            assert_eq!(
                Frontier::load(&nodes, size).unwrap(),
                frontier,
                "load at {size}"
            );
            if size == 70 {
                break;
            }
            let completed = frontier.append(leaf_hash(&data[size as usize]));
            assert_eq!(completed[0], (0, size, leaf_hash(&data[size as usize])));
            // One node per trailing 1 bit of the old size, plus the leaf.
            assert_eq!(completed.len(), 1 + size.trailing_ones() as usize);
            nodes.extend(completed);
        }
        let leaves: Vec<Hash> = data.iter().map(|d| leaf_hash(d)).collect();
        assert_eq!(nodes, MemoryNodes::from_leaves(&leaves));
    }

    #[test]
    fn frontier_load_reports_missing_nodes() {
        let nodes = MemoryNodes::from_leaves(&[leaf_hash(b"a"), leaf_hash(b"b")]);
        assert_eq!(
            Frontier::load(&nodes, 3),
            Err(MerkleError::MissingNode { level: 0, index: 2 })
        );
        assert_eq!(
            root_at(&MemoryNodes::new(), 6),
            Err(MerkleError::MissingNode { level: 2, index: 0 })
        );
    }

    #[test]
    fn a_loaded_frontier_keeps_appending_correctly() {
        let data = entries(45);
        let nodes = nodes_for(&data[..29]);
        let mut frontier = Frontier::load(&nodes, 29).unwrap();
        for entry in &data[29..] {
            frontier.append(leaf_hash(entry));
        }
        assert_eq!(frontier.root(), reference_mth(&data));
    }

    // ---- Proofs against the reference. ----

    #[test]
    fn every_proof_of_every_small_tree_matches_the_reference() {
        let data = entries(40);
        for size in 1..=40usize {
            let all_indices: Vec<u64> = (0..size as u64).collect();
            let all_old_sizes: Vec<u64> = (0..=size as u64).collect();
            check_tree(&data[..size], &all_indices, &all_old_sizes);
        }
    }

    #[test]
    fn random_trees_match_the_reference() {
        let mut rng = StdRng::seed_from_u64(0x9162);
        for round in 0..64 {
            let size = rng.gen_range(1..=300usize);
            let data = random_entries(&mut rng, size);
            // Every leaf in one tree of eight, a random sample in the rest.
            let mut indices: Vec<u64> = if round % 8 == 0 {
                (0..size as u64).collect()
            } else {
                (0..12).map(|_| rng.gen_range(0..size as u64)).collect()
            };
            indices.extend([0, size as u64 - 1]);
            let mut old_sizes: Vec<u64> = (0..12).map(|_| rng.gen_range(1..=size as u64)).collect();
            old_sizes.extend([0, 1, size as u64]);
            check_tree(&data, &indices, &old_sizes);
        }
    }

    #[test]
    fn powers_of_two_and_their_neighbours() {
        let data = entries(257);
        for exponent in 0..=8u32 {
            let power = 1usize << exponent;
            for size in [power - 1, power, power + 1] {
                if size == 0 {
                    continue;
                }
                let size_u64 = size as u64;
                let indices = [0, size_u64 / 2, size_u64 - 1];
                let old_sizes = [0, 1, size_u64 / 2, size_u64 - 1, size_u64];
                check_tree(&data[..size], &indices, &old_sizes);
            }
        }
    }

    // ---- RFC edge cases. ----

    #[test]
    fn size_one_and_two() {
        let data = entries(2);
        let nodes = nodes_for(&data);
        let leaf0 = leaf_hash(&data[0]);
        let leaf1 = leaf_hash(&data[1]);

        // A single leaf is its own root, with an empty path.
        assert_eq!(root_at(&nodes, 1).unwrap(), leaf0);
        assert_eq!(inclusion_proof(&nodes, 0, 1).unwrap(), Vec::<Hash>::new());
        assert!(verify_inclusion(&leaf0, 0, 1, &[], &leaf0));
        assert!(!verify_inclusion(&leaf0, 0, 1, &[leaf1], &leaf0));

        let root2 = node_hash(&leaf0, &leaf1);
        assert_eq!(inclusion_proof(&nodes, 0, 2).unwrap(), vec![leaf1]);
        assert_eq!(inclusion_proof(&nodes, 1, 2).unwrap(), vec![leaf0]);
        assert!(verify_inclusion(&leaf1, 1, 2, &[leaf0], &root2));

        // m = 1 is a power of two, so the old root is implied and the proof is just l1.
        assert_eq!(consistency_proof(&nodes, 1, 2).unwrap(), vec![leaf1]);
        assert!(verify_consistency(1, 2, &leaf0, &root2, &[leaf1]));
        assert!(!verify_consistency(1, 2, &leaf0, &root2, &[leaf0, leaf1]));
    }

    #[test]
    fn consistency_edge_sizes() {
        let data = entries(9);
        let nodes = nodes_for(&data);
        let root5 = root_at(&nodes, 5).unwrap();
        let root9 = root_at(&nodes, 9).unwrap();
        let empty = empty_root();

        // m == n: nothing to prove; the roots must be equal and the proof empty.
        assert_eq!(consistency_proof(&nodes, 5, 5).unwrap(), Vec::<Hash>::new());
        assert!(verify_consistency(5, 5, &root5, &root5, &[]));
        assert!(!verify_consistency(5, 5, &root5, &root9, &[]));
        assert!(!verify_consistency(5, 5, &root5, &root5, &[root5]));

        // m == 0: the empty tree is a prefix of everything, but only the empty tree's root
        // stands for it, and only an empty proof is accepted.
        assert_eq!(consistency_proof(&nodes, 0, 9).unwrap(), Vec::<Hash>::new());
        assert!(verify_consistency(0, 9, &empty, &root9, &[]));
        assert!(!verify_consistency(0, 9, &root5, &root9, &[]));
        assert!(!verify_consistency(0, 9, &empty, &root9, &[root9]));
        assert!(verify_consistency(0, 0, &empty, &empty, &[]));
        assert!(!verify_consistency(0, 0, &empty, &root5, &[]));

        // m > n is an error to ask for and never verifies.
        assert_eq!(
            consistency_proof(&nodes, 9, 5),
            Err(MerkleError::SizesOutOfOrder {
                first: 9,
                second: 5
            })
        );
        assert!(!verify_consistency(9, 5, &root9, &root5, &[]));

        // 0 < m < n with an empty proof always fails (RFC 9162 2.1.4.2 step 1), even when m is a
        // power of two and the old root alone would fill the path.
        assert!(!verify_consistency(
            4,
            9,
            &root_at(&nodes, 4).unwrap(),
            &root9,
            &[]
        ));
    }

    #[test]
    fn inclusion_proof_rejects_an_index_beyond_the_tree() {
        let nodes = nodes_for(&entries(4));
        assert_eq!(
            inclusion_proof(&nodes, 4, 4),
            Err(MerkleError::IndexOutOfRange { index: 4, size: 4 })
        );
        assert_eq!(
            inclusion_proof(&nodes, 0, 0),
            Err(MerkleError::IndexOutOfRange { index: 0, size: 0 })
        );
        assert!(!verify_inclusion(
            &leaf_hash(b"x"),
            0,
            0,
            &[],
            &empty_root()
        ));
    }

    #[test]
    fn proofs_of_a_huge_tree_read_only_a_few_nodes() {
        // A store of 2^40 identical entries: every node of a level has the same hash, so the
        // reader can compute any node on demand. The test is that the proofs finish, verify and
        // touch O(log n) nodes.
        struct SyntheticReader {
            reads: Cell<usize>,
        }
        impl NodeReader for SyntheticReader {
            fn node(&self, level: u32, _index: u64) -> Result<Hash, MerkleError> {
                self.reads.set(self.reads.get() + 1);
                let mut hash = leaf_hash(b"same entry");
                for _ in 0..level {
                    hash = node_hash(&hash, &hash);
                }
                Ok(hash)
            }
        }
        let reader = SyntheticReader {
            reads: Cell::new(0),
        };
        let size = (1u64 << 40) + 12345;
        let index = (1u64 << 39) + 777;
        let root = root_at(&reader, size).unwrap();
        let proof = inclusion_proof(&reader, index, size).unwrap();
        let leaf = reader.node(0, index).unwrap();
        assert!(verify_inclusion(&leaf, index, size, &proof, &root));
        let old_size = (1u64 << 40) - 3;
        let old_root = root_at(&reader, old_size).unwrap();
        let proof = consistency_proof(&reader, old_size, size).unwrap();
        assert!(verify_consistency(old_size, size, &old_root, &root, &proof));
        assert!(reader.reads.get() < 300, "{} reads", reader.reads.get());
    }

    #[test]
    fn storage_errors_pass_through() {
        struct FailingReader;
        impl NodeReader for FailingReader {
            fn node(&self, _level: u32, _index: u64) -> Result<Hash, MerkleError> {
                Err(MerkleError::Storage("disk on fire".into()))
            }
        }
        assert_eq!(
            inclusion_proof(&FailingReader, 1, 5),
            Err(MerkleError::Storage("disk on fire".into()))
        );
        assert!(consistency_proof(&FailingReader, 3, 5).is_err());
        assert!(root_at(&FailingReader, 5).is_err());
        assert_eq!(
            MerkleError::Storage("disk on fire".into()).to_string(),
            "storage error: disk on fire"
        );
    }
}
