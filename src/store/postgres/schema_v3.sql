-- auditgate PostgreSQL schema, version 3: `entries` partitioned by log, then by time.
--
-- Retention drops a whole month of a log (one `DROP TABLE`) instead of deleting its rows one by
-- one, while `tree_nodes`, `pruned_entries` and `tree_heads` stay whole, so every hash a proof
-- needs stays. The tree (partitions.rs makes the partitions):
--
--   entries                                   PARTITION BY LIST (log_id)
--     entries_<log>_<hash>                    one per log, PARTITION BY RANGE (kept, id)
--       entries_<log>_<hash>_m202601          (0, first ULID of 2026-01) .. (0, of 2026-02)
--       entries_<log>_<hash>_kept             (1, MINVALUE) .. (1, MAXVALUE): audit.pruned
--       entries_<log>_<hash>_odd              (0, '8') .. (0, MAXVALUE): ids after every ULID
--       entries_<log>_<hash>_other            DEFAULT: ids in no month made yet, other non-ULIDs
--
-- The time key is the id, not `created_at`: a unique key of a partitioned table must contain
-- the partition key, and `UNIQUE (log_id, id, kept)` is what makes a retried batch fail instead
-- of duplicating. Entry ids are ULIDs, whose text order is their time order, so a month is the
-- id range from the ULID of its first millisecond to the next month's. `audit.pruned` records
-- are never pruned; `kept` (1 for them, checked below) keeps them out of the month partitions,
-- which can then become wholly due. `(log_id, seq)` is a plain index: its uniqueness is
-- `tree_nodes`' primary key, written in the same transaction under the log's row lock.
--
-- PostgreSQL has no identity column on a partitioned table before version 17, so `gid` takes
-- its default from a sequence. The rows of the version 2 table are copied over by the migration
-- (gid kept, in gid order) and the old table dropped.

ALTER TABLE entries RENAME TO entries_v2;
-- The new table's indexes take these names. The copy reads the old table by its keys, for the
-- months each log's ids fall in, and in gid order, so those stay (the gid index renamed).
ALTER INDEX entries_gid RENAME TO entries_v2_gid;
DROP INDEX entries_log_gid, entries_id, entries_created_at, entries_action, entries_actor_id,
    entries_actor_email, entries_resource, entries_resource_id, entries_outcome, entries_status,
    entries_ip, entries_ip_net, entries_request_id;

CREATE SEQUENCE entries_gid_sequence AS BIGINT;

CREATE TABLE entries (
    gid            BIGINT      NOT NULL DEFAULT nextval('entries_gid_sequence'),
    log_id         TEXT        COLLATE "C" NOT NULL,
    seq            BIGINT      NOT NULL,
    id             TEXT        COLLATE "C" NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    actor_id       TEXT        COLLATE "C",
    actor_email    TEXT        COLLATE "C",
    actor_name     TEXT        COLLATE "C",
    actor_source   TEXT        COLLATE "C",
    actor_verified BOOLEAN     NOT NULL DEFAULT FALSE,
    tenant         TEXT        COLLATE "C",
    action         TEXT        COLLATE "C" NOT NULL,
    resource_type  TEXT        COLLATE "C",
    resource_id    TEXT        COLLATE "C",
    outcome        TEXT        COLLATE "C" NOT NULL,
    status         INTEGER,
    method         TEXT        COLLATE "C",
    path           TEXT        COLLATE "C",
    route          TEXT        COLLATE "C",
    rule           TEXT        COLLATE "C",
    ip             TEXT        COLLATE "C",
    user_agent     TEXT        COLLATE "C",
    request_id     TEXT        COLLATE "C",
    duration_us    BIGINT,
    error          TEXT,
    metadata       TEXT        NOT NULL DEFAULT '{}',
    ip_net         INET,
    verbatim       TEXT,
    -- 1 for `audit.pruned` records, which are never pruned; 0 for every other entry.
    -- The default keeps a sidecar of the previous release appending while the fleet upgrades.
    kept           SMALLINT    NOT NULL DEFAULT 0,
    CONSTRAINT entries_kept CHECK (kept = CASE WHEN action = 'audit.pruned' THEN 1 ELSE 0 END),
    CONSTRAINT entries_log_id_kept UNIQUE (log_id, id, kept)
) PARTITION BY LIST (log_id);
ALTER SEQUENCE entries_gid_sequence OWNED BY entries.gid;
SELECT setval('entries_gid_sequence', COALESCE((SELECT max(gid) FROM entries_v2), 0) + 1, false);

CREATE INDEX entries_log_seq     ON entries (log_id, seq);
CREATE INDEX entries_gid         ON entries (gid);
CREATE INDEX entries_log_gid     ON entries (log_id, gid);
CREATE INDEX entries_id          ON entries (id);
CREATE INDEX entries_created_at  ON entries (created_at, gid);
CREATE INDEX entries_action      ON entries (action, gid);
CREATE INDEX entries_actor_id    ON entries (actor_id, gid);
CREATE INDEX entries_actor_email ON entries (actor_email, gid);
CREATE INDEX entries_resource    ON entries (resource_type, resource_id, gid);
CREATE INDEX entries_resource_id ON entries (resource_id, gid);
CREATE INDEX entries_outcome     ON entries (outcome, gid);
CREATE INDEX entries_status      ON entries (status, gid);
CREATE INDEX entries_ip          ON entries (ip, gid);
CREATE INDEX entries_ip_net      ON entries (ip_net);
CREATE INDEX entries_request_id  ON entries (request_id);
