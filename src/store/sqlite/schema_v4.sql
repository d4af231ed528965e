-- auditgate SQLite schema, version 4: the append-first commit path.
--
-- Appends go to `recent` alone: the same columns as `entries`, rows in `seq` order, and no
-- secondary index but the id's (ULIDs grow with time, so it is appended at its end too). A commit
-- then costs the same at ten million entries as at ten. The store moves the rows of `recent`
-- into `entries`, whose indexes answer every filter, in large batches after commits ("sealing");
-- every seq in `recent` is larger than every seq in `entries`, and a seq is in one table only.
CREATE TABLE recent (
    seq            INTEGER PRIMARY KEY,
    id             TEXT    NOT NULL UNIQUE,
    log_id         TEXT    NOT NULL,
    created_at     TEXT    NOT NULL,
    actor_id       TEXT,
    actor_email    TEXT,
    actor_name     TEXT,
    actor_source   TEXT,
    actor_verified INTEGER NOT NULL DEFAULT 0,
    tenant         TEXT,
    action         TEXT    NOT NULL,
    resource_type  TEXT,
    resource_id    TEXT,
    outcome        TEXT    NOT NULL,
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
    metadata       TEXT    NOT NULL DEFAULT '{}'
);
