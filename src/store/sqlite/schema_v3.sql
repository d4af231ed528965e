-- auditgate SQLite schema, version 3: witness cosignatures.
--
-- A witness (C2SP tlog-witness) cosigns the log's checkpoint (origin, size, root); each row is
-- one witness key's cosignature of one checkpoint, verified before it was stored. `line` is the
-- note signature line served after the log's own signature.
CREATE TABLE witness_cosignatures (
    origin       TEXT    NOT NULL,
    size         INTEGER NOT NULL,
    root_hash    BLOB    NOT NULL,                 -- 32 bytes
    witness_vkey TEXT    NOT NULL,                 -- name+keyid+base64(0x04 || key)
    timestamp    INTEGER NOT NULL,                 -- POSIX seconds, as the witness signed
    line         TEXT    NOT NULL,
    PRIMARY KEY (size, root_hash, origin, witness_vkey)
) WITHOUT ROWID;
CREATE INDEX witness_cosignatures_witness ON witness_cosignatures (witness_vkey, origin, size);
