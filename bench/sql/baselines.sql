-- The write paths `python -m bench --baselines` compares the server against, run by
-- bench/sql_paths.py against the same database (never by the server).

-- name: naive_insert
-- What typical implementations do: one statement per event, autocommit.
INSERT INTO events (topic, event_id, ts, ts_nanos, source, payload)
VALUES (%s, %s, %s, %s, %s, %s::jsonb)
ON CONFLICT (topic, event_id) DO NOTHING

-- name: create_raw_copy_table
-- events-shaped, without the primary key or index: what COPY alone costs.
CREATE TABLE IF NOT EXISTS bench_raw_copy (
    topic text NOT NULL, event_id text NOT NULL, ts timestamptz NOT NULL,
    ts_nanos smallint NOT NULL, source text NOT NULL, payload jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
)

-- name: copy_raw
COPY bench_raw_copy (topic, event_id, ts, ts_nanos, source, payload) FROM STDIN (FORMAT BINARY)

-- name: drop_raw_copy_table
DROP TABLE IF EXISTS bench_raw_copy

-- name: create_bare_tables
-- The design's bare path writes into fresh events-shaped tables: one as the schema is
-- now, one without the delivery-order column (tx) and with the former (topic, seq)
-- index, so that the cost of gap-free order is measured on its own.
DROP TABLE IF EXISTS bench_bare, bench_bare_unordered;
CREATE TABLE bench_bare (LIKE events INCLUDING ALL);
CREATE TABLE bench_bare_unordered (LIKE events INCLUDING ALL);
ALTER TABLE bench_bare_unordered DROP COLUMN tx;
CREATE INDEX ON bench_bare_unordered (topic, seq);

-- name: drop_bare_tables
DROP TABLE IF EXISTS bench_bare, bench_bare_unordered

-- name: create_bare_staging
CREATE TEMP TABLE IF NOT EXISTS bare_staging (
    topic text, event_id text, ts timestamptz, ts_nanos smallint, source text, payload text
) ON COMMIT DELETE ROWS

-- name: copy_bare_staging
COPY bare_staging (topic, event_id, ts, ts_nanos, source, payload) FROM STDIN (FORMAT BINARY)

-- name: insert_bare
-- Key order only so that the two connections cannot deadlock on shared keys.
INSERT INTO bench_bare (topic, event_id, ts, ts_nanos, source, payload)
SELECT topic, event_id, ts, ts_nanos, source, payload::jsonb FROM bare_staging
ORDER BY topic, event_id
ON CONFLICT (topic, event_id) DO NOTHING
RETURNING topic, event_id

-- name: insert_bare_unordered
INSERT INTO bench_bare_unordered (topic, event_id, ts, ts_nanos, source, payload)
SELECT topic, event_id, ts, ts_nanos, source, payload::jsonb FROM bare_staging
ORDER BY topic, event_id
ON CONFLICT (topic, event_id) DO NOTHING
RETURNING topic, event_id
