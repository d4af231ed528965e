-- auditgate SQLite schema, version 1.
-- Entries form an append-only log: `seq` is the 1-based position in the log and never changes.
-- Timestamps are UTC text in one fixed-width form (YYYY-MM-DDTHH:MM:SS.ffffffZ) so that text order
-- is time order and the file stays readable with the sqlite3 shell.
CREATE TABLE entries (
    seq            INTEGER PRIMARY KEY,            -- position in the log, 1-based
    id             TEXT    NOT NULL UNIQUE,        -- ULID
    log_id         TEXT    NOT NULL,
    created_at     TEXT    NOT NULL,               -- when the request arrived
    actor_id       TEXT,
    actor_email    TEXT,
    actor_name     TEXT,
    actor_source   TEXT,                           -- jwt | basic | header | api_key | body | rule | app
    actor_verified INTEGER NOT NULL DEFAULT 0,
    tenant         TEXT,
    action         TEXT    NOT NULL,
    resource_type  TEXT,
    resource_id    TEXT,
    outcome        TEXT    NOT NULL,               -- success | failure | error | unknown
    status         INTEGER,
    method         TEXT,
    path           TEXT,
    route          TEXT,
    rule           TEXT,
    ip             TEXT,
    user_agent     TEXT,
    request_id     TEXT,
    duration_us    INTEGER,
    error          TEXT,
    metadata       TEXT    NOT NULL DEFAULT '{}'   -- JSON object
);
CREATE INDEX entries_created_at    ON entries (created_at);
CREATE INDEX entries_action        ON entries (action);
CREATE INDEX entries_actor_id      ON entries (actor_id);
CREATE INDEX entries_actor_email   ON entries (actor_email);
CREATE INDEX entries_resource      ON entries (resource_type, resource_id);
CREATE INDEX entries_resource_id   ON entries (resource_id);
CREATE INDEX entries_outcome       ON entries (outcome);
CREATE INDEX entries_status        ON entries (status);
CREATE INDEX entries_ip            ON entries (ip);

-- Write-ahead intents: an audited request's entry as known before forwarding. The row is removed
-- once the final entry is appended; rows left at start (a crash in between) become entries with
-- outcome `unknown`.
CREATE TABLE pending (
    id         TEXT PRIMARY KEY,                   -- the final entry's id
    created_at TEXT NOT NULL,
    entry      TEXT NOT NULL                       -- the entry as JSON (API form)
);
