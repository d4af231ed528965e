-- auditgate SQLite schema, version 2: the Merkle tree, signed tree heads and retention.
--
-- The tree is RFC 9162's over the entries in `seq` order (leaf index = seq - 1). Only complete,
-- aligned subtrees are stored: node (level, idx) is the hash over leaves [idx << level,
-- (idx + 1) << level), and level 0 holds the leaf hashes. A node never changes once written, and
-- every node an append completes is inserted in the same transaction as the entry.
CREATE TABLE tree_nodes (
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB    NOT NULL,                        -- 32 bytes of SHA-256
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;

-- Every signed tree head this log made, in the order they were made. `head_json` is the published
-- form, kept verbatim so that a head read back is byte for byte the one that was published.
CREATE TABLE tree_heads (
    id        INTEGER PRIMARY KEY,
    size      INTEGER NOT NULL,
    root_hash BLOB    NOT NULL,
    timestamp TEXT    NOT NULL,                    -- RFC 3339 UTC, milliseconds
    head_json TEXT    NOT NULL
);
CREATE INDEX tree_heads_size ON tree_heads (size);

-- Retention: the entries whose rows were deleted, and the `audit.pruned` entry (its seq) that
-- records each prune. The leaf hashes stay in tree_nodes, so heads and proofs still hold; this
-- table is what tells a pruned position from a deleted one.
CREATE TABLE pruned_entries (
    seq       INTEGER PRIMARY KEY,
    prune_seq INTEGER NOT NULL
);
CREATE INDEX pruned_entries_prune ON pruned_entries (prune_seq, seq);
