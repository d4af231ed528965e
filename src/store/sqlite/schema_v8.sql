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
-- The generation width is part of these definitions and of the queries (`rows::GENERATION_SHIFT`):
-- changing it is a new migration.
DROP INDEX entries_actor_id;
DROP INDEX entries_actor_email;
DROP INDEX entries_resource;
DROP INDEX entries_resource_id;
DROP INDEX entries_ip;
CREATE INDEX entries_actor_id    ON entries ((seq >> 20), actor_id);
CREATE INDEX entries_actor_email ON entries ((seq >> 20), actor_email);
CREATE INDEX entries_resource    ON entries ((seq >> 20), resource_type, resource_id);
CREATE INDEX entries_resource_id ON entries ((seq >> 20), resource_id);
CREATE INDEX entries_ip          ON entries ((seq >> 20), ip);
