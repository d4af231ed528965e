-- auditgate SQLite schema, version 6: counts kept per hour for stats.
--
-- Stats (GET /stats, the viewer's charts) group entries by day, hour, action, outcome or actor.
-- Grouping reads every row of the window, which at ten million entries takes seconds. These
-- tables hold how many sealed entries there are per hour (or day) and key; a stats request of a
-- time window (and an action or outcome for the first table) adds up the whole hours and days of
-- the window from them and groups only the partial hours at its two ends, and `recent`, row by
-- row. Actors are counted per day as well as per hour: an hour has about as many actors as
-- entries on a busy log, a day far fewer per entry.
--
-- `hour` is `substr(created_at, 1, 13)`, `day` `substr(created_at, 1, 10)` and `actor` the key
-- `GET /stats?by=actor` groups by; they must stay the expressions of rows.rs. A seal adds the
-- counts of the rows it moves into `entries`, in the same transaction; the trigger below takes
-- out the rows a prune deletes. Nothing else writes or deletes rows of `entries`.
CREATE TABLE entry_counts (
    hour    TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    outcome TEXT    NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (hour, action, outcome)
) WITHOUT ROWID;

CREATE TABLE actor_counts (
    hour  TEXT    NOT NULL,
    actor TEXT    NOT NULL,
    n     INTEGER NOT NULL,
    PRIMARY KEY (hour, actor)
) WITHOUT ROWID;

CREATE TABLE actor_day_counts (
    day   TEXT    NOT NULL,
    actor TEXT    NOT NULL,
    n     INTEGER NOT NULL,
    PRIMARY KEY (day, actor)
) WITHOUT ROWID;

-- A count narrowed to one action reads that action's hours only.
CREATE INDEX entry_counts_action ON entry_counts (action, hour);

-- Every sealed entry up to this seq is counted, and none after it. The migration counts nothing:
-- a sidecar counts a file's existing entries a chunk at a time after it opens it (stats group rows
-- until the counts are complete), so a large file does not hold up the start. A seal counts its
-- rows only when every sealed entry before them is counted; entries sealed by a process that
-- does not know the counts (an earlier release still running beside this one) lie beyond this
-- seq and are counted by the same chunks.
CREATE TABLE counted_through (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq INTEGER NOT NULL
);
INSERT INTO counted_through (one, seq) VALUES (1, 0);

-- A deleted entry (a prune) leaves the counts if it was counted; a key whose count reaches zero
-- goes, so a pruned actor's email or id does not stay behind in the counts.
CREATE TRIGGER entries_uncounted AFTER DELETE ON entries
WHEN OLD.seq <= (SELECT seq FROM counted_through)
BEGIN
    UPDATE entry_counts SET n = n - 1
        WHERE hour = substr(OLD.created_at, 1, 13) AND action = OLD.action
          AND outcome = OLD.outcome;
    DELETE FROM entry_counts
        WHERE hour = substr(OLD.created_at, 1, 13) AND action = OLD.action
          AND outcome = OLD.outcome AND n <= 0;
    UPDATE actor_counts SET n = n - 1
        WHERE hour = substr(OLD.created_at, 1, 13)
          AND actor = coalesce(nullif(OLD.actor_email, ''), nullif(OLD.actor_id, ''),
                               '(anonymous)');
    DELETE FROM actor_counts
        WHERE hour = substr(OLD.created_at, 1, 13)
          AND actor = coalesce(nullif(OLD.actor_email, ''), nullif(OLD.actor_id, ''),
                               '(anonymous)')
          AND n <= 0;
    UPDATE actor_day_counts SET n = n - 1
        WHERE day = substr(OLD.created_at, 1, 10)
          AND actor = coalesce(nullif(OLD.actor_email, ''), nullif(OLD.actor_id, ''),
                               '(anonymous)');
    DELETE FROM actor_day_counts
        WHERE day = substr(OLD.created_at, 1, 10)
          AND actor = coalesce(nullif(OLD.actor_email, ''), nullif(OLD.actor_id, ''),
                               '(anonymous)')
          AND n <= 0;
END;
