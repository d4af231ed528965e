-- auditgate SQLite schema, version 7: the positions each hour's entries hold.
--
-- A listing of a past time window (one day a month back) read the whole window's `created_at`
-- index range and sorted it by seq to return its newest page: every entry of the day, at any log
-- size. This table keeps, per hour key (`substr(created_at, 1, 13)`, as the counts), the first
-- and last seq of the sealed entries of that hour, so a listing of a window knows the seq range
-- its entries lie in and walks the log there, in seq order, stopping after a page.
--
-- What a listing relies on: every sealed entry up to `ranged_through` lies within its hour's
-- range (the ranges are supersets; a prune leaves them as they were), and a listing uses the
-- ranges only when `ranged_through` covers every sealed entry. A seal widens the ranges with the
-- rows it moves, and moves `ranged_through` with them, only when it already covered every sealed
-- entry; entries sealed otherwise (an earlier release still running beside this one) and the
-- entries of an upgraded file are ranged by the sidecar a chunk at a time past `ranged_through`.
-- The migration ranges nothing, so a large file does not hold up the start.
CREATE TABLE hour_seqs (
    hour      TEXT    NOT NULL PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE ranged_through (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq INTEGER NOT NULL
);
INSERT INTO ranged_through (one, seq) VALUES (1, 0);
