-- auditgate PostgreSQL schema, version 2: witness cosignatures.
--
-- A witness (C2SP tlog-witness) cosigns a log's checkpoint (origin, size, root); each row is one
-- witness key's cosignature of one checkpoint of the log `log_id`, verified before it was
-- stored. `line` is the note signature line served after the log's own signature.
CREATE TABLE witness_cosignatures (
    log_id       TEXT   NOT NULL,
    origin       TEXT   NOT NULL,
    size         BIGINT NOT NULL,
    root_hash    BYTEA  NOT NULL,
    witness_vkey TEXT   NOT NULL,
    timestamp    BIGINT NOT NULL,
    line         TEXT   NOT NULL,
    PRIMARY KEY (log_id, size, root_hash, origin, witness_vkey)
);
CREATE INDEX witness_cosignatures_witness ON witness_cosignatures (log_id, witness_vkey, origin, size);
