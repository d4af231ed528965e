-- auditgate SQLite schema, version 8: the high-cardinality indexes lead with the entry's
-- generation.
--
-- A seal moves a batch of entries into `entries` in seq order. The indexes on columns with few
-- values (action, outcome, status) and on columns that grow with seq (created_at, the ULID) take
-- those rows at the end of each value's range: a handful of pages. The five indexes on columns
-- with many values (actor id, actor email, resource, resource id, address) took each row at a
-- random place of the whole index instead, so once they outgrew the page cache every sealed entry
-- read and rewrote one page of each: the writer fell from ~33k entries/s at one million entries
-- to ~7k at 32 million.
--
-- Each of these five indexes now leads with `seq >> 20`, the entry's generation (1,048,576
-- positions each). A seal only inserts into the newest generation's part of each index, which is
-- as small at 50 million entries as at one. A filter reads one short range per generation, newest
-- first: `(seq >> 20) IN (generations, newest first)` with the value, and SQLite walks the
-- generations in order, so the rows still come out in seq order and a page stops early. The
-- index names are unchanged, so the same SQL runs on a file of any version (on an earlier index
-- the generation term is a plain filter).
--
-- The generation width is part of these definitions and of the queries (`rows::GENERATION`,
-- `rows::GENERATIONS`): changing it is a new migration. A file of an earlier version read in place
-- (read commands) keeps its one-column indexes and is queried as before (`rows::Table::of_entries`).
--
-- Each index is rebuilt in a transaction of its own by `rebuild_generation_indexes`
-- (`sqlite/mod.rs`), which reads the statements below (one a line): it drops the index of that
-- name and creates it as written here, skipping one already rebuilt, so an upgrade stopped halfway
-- goes on where it stopped. The sort goes to temporary files (SQLITE_TMPDIR, TMPDIR, /var/tmp or
-- /tmp must be writable) with a 16 MiB page cache; the WAL grows by one index at a time.
CREATE INDEX IF NOT EXISTS entries_actor_id    ON entries ((seq >> 20), actor_id);
CREATE INDEX IF NOT EXISTS entries_actor_email ON entries ((seq >> 20), actor_email);
CREATE INDEX IF NOT EXISTS entries_resource    ON entries ((seq >> 20), resource_type, resource_id);
CREATE INDEX IF NOT EXISTS entries_resource_id ON entries ((seq >> 20), resource_id);
CREATE INDEX IF NOT EXISTS entries_ip          ON entries ((seq >> 20), ip);
