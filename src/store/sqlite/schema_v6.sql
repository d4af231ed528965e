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

INSERT INTO entry_counts (hour, action, outcome, n)
    SELECT substr(created_at, 1, 13), action, outcome, count(*) FROM entries GROUP BY 1, 2, 3;

INSERT INTO actor_counts (hour, actor, n)
    SELECT substr(created_at, 1, 13),
           coalesce(nullif(actor_email, ''), nullif(actor_id, ''), '(anonymous)'),
           count(*)
    FROM entries GROUP BY 1, 2;

INSERT INTO actor_day_counts (day, actor, n)
    SELECT substr(hour, 1, 10), actor, sum(n) FROM actor_counts GROUP BY 1, 2;

CREATE TRIGGER entries_uncounted AFTER DELETE ON entries BEGIN
    UPDATE entry_counts SET n = n - 1
        WHERE hour = substr(OLD.created_at, 1, 13) AND action = OLD.action
          AND outcome = OLD.outcome;
    UPDATE actor_counts SET n = n - 1
        WHERE hour = substr(OLD.created_at, 1, 13)
          AND actor = coalesce(nullif(OLD.actor_email, ''), nullif(OLD.actor_id, ''),
                               '(anonymous)');
    UPDATE actor_day_counts SET n = n - 1
        WHERE day = substr(OLD.created_at, 1, 10)
          AND actor = coalesce(nullif(OLD.actor_email, ''), nullif(OLD.actor_id, ''),
                               '(anonymous)');
END;
