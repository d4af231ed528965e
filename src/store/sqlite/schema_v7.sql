-- auditgate SQLite schema, version 7: the positions each hour's entries hold.
--
-- A listing of a past time window (one day a month back) read the whole window's `created_at`
-- index range and sorted it by seq to return its newest page: every entry of the day, at any log
-- size. This table keeps, per hour key (`substr(created_at, 1, 13)`, as the counts), the first
-- and last seq of the sealed entries of that hour, so a listing of a window knows the seq range
-- its entries lie in and walks the log there, in seq order, stopping after a page.
--
-- What a listing relies on: every sealed entry's seq lies within its hour's range (the ranges are
-- supersets; a prune leaves them as they were). A seal widens them with the rows it moves, with
-- the counts and under the same condition; `counted_through` says how far both go, and a listing
-- uses the ranges only when every sealed entry is counted.
CREATE TABLE hour_seqs (
    hour      TEXT    NOT NULL PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL
) WITHOUT ROWID;

-- The counts of an earlier file hold no ranges: counted again from the first entry, a chunk at a
-- time by the sidecar after it opens the file (stats group rows meanwhile, as after the upgrade
-- to version 6), and the ranges with them.
DELETE FROM entry_counts;
DELETE FROM actor_counts;
DELETE FROM actor_day_counts;
UPDATE counted_through SET seq = 0;
