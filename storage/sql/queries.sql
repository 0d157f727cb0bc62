-- Named queries; storage/queries.py loads each block by the name after "-- name:".

-- name: create_staging
-- One per connection, emptied by every commit.
CREATE TEMP TABLE IF NOT EXISTS staging (
    idx      integer     NOT NULL,
    is_first boolean     NOT NULL,
    topic    text        NOT NULL,
    event_id text        NOT NULL,
    ts       timestamptz NOT NULL,
    ts_nanos smallint    NOT NULL,
    source   text        NOT NULL,
    payload  text        NOT NULL
) ON COMMIT DELETE ROWS

-- name: copy_staging
COPY staging (idx, is_first, topic, event_id, ts, ts_nanos, source, payload)
FROM STDIN (FORMAT BINARY)

-- name: insert_from_staging
-- seq is drawn in arrival order (idx), rows are inserted in a fixed key order so two
-- batches with overlapping keys cannot deadlock. A key already stored is settled here too:
-- ON CONFLICT DO UPDATE always sees the committed row (also one a concurrent transaction
-- committed while this statement waited for it) and locks it; only when its content
-- differs is it "updated" (received_at set to itself: nothing changes) and returned, so
-- a first copy not returned is a DUPLICATE without a second look. Returned rows tell an
-- insert (tx is this transaction's) from a CONFLICT.
INSERT INTO events AS e (topic, event_id, ts, ts_nanos, source, payload, seq)
OVERRIDING SYSTEM VALUE
SELECT topic, event_id, ts, ts_nanos, source, payload::jsonb, seq
FROM (
    SELECT arrived.*, nextval('events_seq') AS seq
    FROM (SELECT * FROM staging WHERE is_first ORDER BY idx) AS arrived
) AS numbered
ORDER BY topic, event_id
ON CONFLICT (topic, event_id) DO UPDATE SET received_at = e.received_at
WHERE (e.ts, e.ts_nanos, e.source, e.payload)
      IS DISTINCT FROM (excluded.ts, excluded.ts_nanos, excluded.source, excluded.payload)
RETURNING topic, event_id, tx = pg_current_xact_id()

-- name: insert_sent
-- insert_from_staging for a small batch (storage/writer.py, SENT_ROWS), with the claim of
-- its named requests (claim_requests) in the same statement: one round trip, in one
-- pipeline with the BEGIN. Rows with a topic: the INSERT's, as insert_from_staging's;
-- without: the ids claimed.
WITH
-- include: sent_rows
SELECT NULL, request_id, NULL FROM claimed
UNION ALL
SELECT topic, event_id, new FROM stored

-- name: sent_rows
-- The claim and the INSERT of insert_sent and insert_predicted. The rows are sent in the
-- statement as one JSON array of [idx, topic, event_id, seconds, microseconds, ts_nanos,
-- source, payload, request id or null]; a named request's rows are inserted only if this
-- statement claimed it. The timestamp is rebuilt from integers: to_timestamp of whole
-- seconds is exact, and so is adding microseconds. The statuses of each named request are
-- recorded with its claim when they are known before the INSERT (insert_predicted), else
-- none are (settle_batch records them).
claimed AS (
    INSERT INTO request_ledger (request_id, fingerprint, statuses)
    SELECT u.id, u.fingerprint, u.statuses
    FROM unnest(%(ids)s::text[], %(fingerprints)s::bytea[], %(claim_statuses)s::bytea[])
         AS u(id, fingerprint, statuses)
    ORDER BY u.id
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id
), stored AS (
    INSERT INTO events AS e (topic, event_id, ts, ts_nanos, source, payload, seq)
    OVERRIDING SYSTEM VALUE
    SELECT topic, event_id, ts, ts_nanos, source, payload::jsonb, seq
    FROM (
        SELECT arrived.*, nextval('events_seq') AS seq
        FROM (
            SELECT (r->>0)::int AS idx, r->>1 AS topic, r->>2 AS event_id,
                   to_timestamp((r->>3)::bigint)
                       + (r->>4)::bigint * interval '1 microsecond' AS ts,
                   (r->>5)::int2 AS ts_nanos, r->>6 AS source, r->>7 AS payload
            FROM jsonb_array_elements(%(rows)s) AS r
            WHERE r->>8 IS NULL OR r->>8 IN (SELECT request_id FROM claimed)
            ORDER BY 1
        ) AS arrived
    ) AS numbered
    ORDER BY topic, event_id
    ON CONFLICT (topic, event_id) DO UPDATE SET received_at = e.received_at
    WHERE (e.ts, e.ts_nanos, e.source, e.payload)
          IS DISTINCT FROM (excluded.ts, excluded.ts_nanos, excluded.source, excluded.payload)
    RETURNING topic, event_id, tx = pg_current_xact_id() AS new
)

-- name: compare_with_sent
-- compare_with_stored for a batch written by insert_sent: the events compared are sent,
-- in its form.
SELECT s.idx, e.ts = s.ts AND e.ts_nanos = s.ts_nanos, e.source = s.source,
       e.payload = s.payload::jsonb
FROM (
    SELECT (r->>0)::int AS idx, r->>1 AS topic, r->>2 AS event_id,
           to_timestamp((r->>3)::bigint) + (r->>4)::bigint * interval '1 microsecond' AS ts,
           (r->>5)::int2 AS ts_nanos, r->>6 AS source, r->>7 AS payload
    FROM jsonb_array_elements(%(rows)s) AS r
) AS s
JOIN events e ON e.topic = s.topic AND e.event_id = s.event_id

-- name: compare_with_stored
-- Which fields differ, for CONFLICTs and for later copies of a key in the batch. Each
-- key here was inserted or locked by this transaction's INSERT (or is a remembered one),
-- so its row is visible.
SELECT s.idx, e.ts = s.ts AND e.ts_nanos = s.ts_nanos, e.source = s.source,
       e.payload = s.payload::jsonb
FROM unnest(%(idx)s::int[]) AS pending(idx)
JOIN staging s ON s.idx = pending.idx  -- a hash join; `idx = ANY(array)` scans per row
JOIN events e ON e.topic = s.topic AND e.event_id = s.event_id

-- name: settle_batch
-- What a flush transaction writes after its INSERT, as one statement sent with the COMMIT
-- in one pipeline: one psycopg execute instead of three (each cost the flushing process
-- ~70 µs of CPU, a tenth of a small flush's). Every part may be empty. Data-modifying
-- CTEs run once and to completion whether or not the query reads them.
--   counted: per-topic counters (a row per topic and backend shard); none for empty arrays.
--   forgotten, recorded: the batch ledger (storage/ledger.py): the batches this worker
--   has answered are deleted, this transaction's decisions recorded; no row when batch_id
--   is NULL. The advisory lock (keyed by the batch) is held until this transaction ends,
--   so a retry that takes it too waits for a COMMIT still in flight before reading it.
--   answered: the statuses decided for the named requests this transaction claimed
--   (storage/requests.py), written to their rows as an upsert: its conflict check finds
--   each row through the primary key whatever the table's statistics say. (An UPDATE …
--   FROM join is planned from them: a plan cached while the ledger was small scans all
--   of it, and each flush then costs more with every request kept.)
--   The SELECT: delivered at commit (never for a rollback) to every server's listener.
WITH
-- include: settled
SELECT pg_notify('aggregator_events', topic) FROM unnest(%(notify)s::text[]) AS topic

-- name: settled
-- The data-modifying CTEs of settle_batch (and of settle_batch_citus, insert_predicted).
counted AS (
    INSERT INTO topic_stats AS t
        (topic, shard, received, accepted, duplicates, rejected, conflicts)
    SELECT u.topic, mod(pg_backend_pid(), 16),
           u.accepted + u.duplicates + u.rejected + u.conflicts,
           u.accepted, u.duplicates, u.rejected, u.conflicts
    FROM unnest(%(topic)s::text[], %(accepted)s::bigint[], %(duplicates)s::bigint[],
                %(rejected)s::bigint[], %(conflicts)s::bigint[])
         AS u(topic, accepted, duplicates, rejected, conflicts)
    ORDER BY u.topic
    ON CONFLICT (topic, shard) DO UPDATE SET
        received   = t.received + excluded.received,
        accepted   = t.accepted + excluded.accepted,
        duplicates = t.duplicates + excluded.duplicates,
        rejected   = t.rejected + excluded.rejected,
        conflicts  = t.conflicts + excluded.conflicts
), forgotten AS (
    DELETE FROM batch_ledger WHERE batch_id = ANY(%(finished)s::uuid[])
), recorded AS (
    INSERT INTO batch_ledger (batch_id, first_idx, idxs, statuses, reasons, counts)
    SELECT %(batch_id)s, %(first_idx)s, %(idxs)s, %(statuses)s, %(reasons)s, %(counts)s
    FROM (SELECT pg_advisory_xact_lock(%(lock)s)) AS held
    WHERE %(batch_id)s::uuid IS NOT NULL
), answered AS (
    INSERT INTO request_ledger AS r (request_id, fingerprint, statuses, reasons)
    SELECT u.id, u.fingerprint, u.statuses, u.reasons
    FROM unnest(%(request_ids)s::text[], %(request_fingerprints)s::bytea[],
                %(request_statuses)s::bytea[], %(request_reasons)s::jsonb[])
         AS u(id, fingerprint, statuses, reasons)
    ORDER BY u.id
    ON CONFLICT (request_id) DO UPDATE SET statuses = excluded.statuses,
                                           reasons = excluded.reasons
)

-- name: insert_predicted
-- A small batch whose outcome the flush predicted (storage/writer.py: every event new, or
-- every one stored before with the same content; every named request claimed here): the
-- claim and the INSERT of insert_sent with the requests' statuses, and settle_batch's
-- counters, ledger and notifications, in one statement sent without a BEGIN, so that it
-- commits on its own. flush_as_predicted raises unless the INSERT inserted and claimed
-- exactly the rows and ids predicted and found no row stored with other content, which
-- fails the whole statement. The rows are locked
-- first, the counters last, as in every other flush: the SELECT below reads the claim
-- and the INSERT to their end, and the CTEs it does not read run after it.
WITH
-- include: sent_rows
,
-- include: settled
SELECT 1
WHERE NOT flush_as_predicted(%(predicted_rows)s, %(predicted_claims)s,
                             (SELECT count(*) FROM stored WHERE new),
                             (SELECT count(*) FROM claimed),
                             (SELECT count(*) FROM stored WHERE NOT new))
UNION ALL
SELECT 1 FROM unnest(%(notify)s::text[]) AS topic
WHERE pg_notify('aggregator_events', topic) IS NULL

-- name: read_after
-- One topic in delivery order after a position, for ListEvents and Subscribe. Only rows
-- written by transactions older than every transaction still running are settled: none
-- can commit behind them any more. Unsettled rows come back too (settled = false), so a
-- reader knows something is waiting; it delivers only the settled ones, which come first.
SELECT topic, event_id, ts, ts_nanos, source, payload::text, seq, received_at,
       tx::text::bigint, tx < horizon.xmin AS settled
FROM events, (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) AS horizon
WHERE topic = %(topic)s
  AND (tx, seq) > (%(after_tx)s::text::xid8, %(after_seq)s::bigint)
  AND (%(start_ts)s::timestamptz IS NULL OR (ts, ts_nanos) >= (%(start_ts)s, %(start_nanos)s))
  AND (%(end_ts)s::timestamptz IS NULL OR (ts, ts_nanos) < (%(end_ts)s, %(end_nanos)s))
ORDER BY tx, seq
LIMIT %(limit)s

-- name: read_all_after
-- read_after for every topic at once (events_tx_seq_idx).
SELECT topic, event_id, ts, ts_nanos, source, payload::text, seq, received_at,
       tx::text::bigint, tx < horizon.xmin AS settled
FROM events, (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) AS horizon
WHERE (tx, seq) > (%(after_tx)s::text::xid8, %(after_seq)s::bigint)
  AND (%(start_ts)s::timestamptz IS NULL OR (ts, ts_nanos) >= (%(start_ts)s, %(start_nanos)s))
  AND (%(end_ts)s::timestamptz IS NULL OR (ts, ts_nanos) < (%(end_ts)s, %(end_nanos)s))
ORDER BY tx, seq
LIMIT %(limit)s

-- name: settled_horizon
-- Every transaction with an id below this one has finished: the position "now".
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint

-- name: stats_totals
SELECT coalesce(sum(received), 0)::bigint, coalesce(sum(accepted), 0)::bigint,
       coalesce(sum(duplicates), 0)::bigint, coalesce(sum(rejected), 0)::bigint,
       coalesce(sum(conflicts), 0)::bigint
FROM topic_stats

-- name: topic_stats_page
-- Per-topic counters in topic order after %(after)s; one topic only when %(topic)s is set.
SELECT topic, sum(received)::bigint, sum(accepted)::bigint, sum(duplicates)::bigint,
       sum(rejected)::bigint, sum(conflicts)::bigint
FROM topic_stats
WHERE topic > %(after)s AND (%(topic)s::text IS NULL OR topic = %(topic)s)
GROUP BY topic
ORDER BY topic
LIMIT %(limit)s

-- name: stats_topic_count
-- How many topics have counters (each topic has a row per counter shard).
SELECT count(DISTINCT topic) FROM topic_stats

-- name: topics_with_events
-- Which of %(topic)s hold at least one stored event.
SELECT t FROM unnest(%(topic)s::text[]) AS t
WHERE EXISTS (SELECT 1 FROM events e WHERE e.topic = t)

-- name: probe_write
-- Whether the database can write: a temporary table's file is extended by a page and the
-- transaction's commit record goes to the WAL (health, once a write has failed).
CREATE TEMP TABLE IF NOT EXISTS write_probe (b bytea) ON COMMIT DELETE ROWS;
INSERT INTO write_probe SELECT decode(repeat('00', 9000), 'hex')

-- name: ping
SELECT 1

-- name: citus_installed
SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL

-- name: events_distributed
-- Only where citus_installed: a row when storage/sql/citus.sql has spread events.
SELECT 1 FROM pg_catalog.pg_dist_partition WHERE logicalrelid = to_regclass('events')

-- name: server_requirements
SELECT current_setting('server_encoding'), current_setting('server_version_num')::int,
       current_database()

-- Batch ledger (storage/ledger.py).

-- name: set_lock_timeout
SELECT set_config('lock_timeout', %(timeout)s, true)

-- name: await_batch
-- Waits (bounded by lock_timeout) for any transaction of this batch still committing.
SELECT pg_advisory_xact_lock(%(lock)s)

-- name: read_batch
SELECT first_idx, idxs, statuses, reasons, counts
FROM batch_ledger
WHERE batch_id = %(batch_id)s

-- name: claim_requests
-- Request ledger (storage/requests.py): claim this transaction's named requests, in id
-- order (two batches claiming the same ids never deadlock). A claim committed by another
-- transaction keeps its row; one still in flight makes this INSERT wait for its end.
-- Returns the ids claimed here.
INSERT INTO request_ledger (request_id, fingerprint)
SELECT u.id, u.fingerprint
FROM unnest(%(ids)s::text[], %(fingerprints)s::bytea[]) AS u(id, fingerprint)
ORDER BY u.id
ON CONFLICT (request_id) DO NOTHING
RETURNING request_id

-- name: read_requests
-- What was recorded for named requests claimed before.
SELECT request_id, fingerprint, statuses, reasons
FROM request_ledger
WHERE request_id = ANY(%(ids)s::text[])

-- name: sweep_requests
DELETE FROM request_ledger WHERE committed_at < now() - make_interval(secs => %(older_than)s)

-- name: sweep_ledger
-- Rows left by a server that died before forgetting them; no retry lives this long.
DELETE FROM batch_ledger WHERE committed_at < now() - make_interval(secs => %(older_than)s)

-- name: events_epoch
-- Read first in a flush transaction that answers re-sends from memory (storage/recent.py),
-- with whether the trigger that moves the epoch is there and enabled (citus.sql drops it).
SELECT e.epoch, coalesce(t.tgenabled IN ('O', 'A'), false)
FROM events_epoch e
LEFT JOIN pg_trigger t ON t.tgrelid = 'events'::regclass AND t.tgname = 'events_epoch_bump'

-- Citus (storage/sql/citus.sql has spread the schema over a coordinator and workers). The
-- server connects to the coordinator; these replace the queries above whose single-node
-- form compares values that exist per node (transaction ids, snapshots) or that Citus
-- refuses. Transaction ids and snapshots below are always the coordinator's.

-- name: flush_tx_citus
-- The flush transaction's id on the coordinator, read first: it orders the rows this
-- transaction stores (events.tx) and holds the coordinator's horizon back until it ends.
SELECT pg_current_xact_id()::text::bigint

-- name: insert_from_staging_citus
-- insert_from_staging with tx set from the coordinator's id (%(tx)s) rather than by the
-- column's default, and returned as a value: RETURNING runs on the worker that holds the
-- row, where pg_current_xact_id() is that worker's own transaction, and Citus sends no
-- parameters there. The writer tells an insert (tx = its own) from a CONFLICT.
INSERT INTO events AS e (topic, event_id, ts, ts_nanos, source, payload, seq, tx)
OVERRIDING SYSTEM VALUE
SELECT topic, event_id, ts, ts_nanos, source, payload::jsonb, seq, %(tx)s::text::xid8
FROM (
    SELECT arrived.*, nextval('events_seq') AS seq
    FROM (SELECT * FROM staging WHERE is_first ORDER BY idx) AS arrived
) AS numbered
ORDER BY topic, event_id
ON CONFLICT (topic, event_id) DO UPDATE SET received_at = e.received_at
WHERE (e.ts, e.ts_nanos, e.source, e.payload)
      IS DISTINCT FROM (excluded.ts, excluded.ts_nanos, excluded.source, excluded.payload)
RETURNING topic, event_id, tx::text::bigint

-- name: settle_batch_citus
-- settle_batch plus the coordinator's record of what this transaction stored per topic
-- (topic_commits, a table on the coordinator; see read_commits_citus). A 2PC commit
-- makes the rows visible on each worker only after the coordinator's own commit, one
-- worker after the other; a reader counts a transaction's rows against this record and
-- delivers none of them (nor anything after) until all are there.
--   pruned: records of transactions whose every worker has committed, which readers no
--   longer need. Citus logs each prepared part in pg_dist_transaction, in the
--   coordinator's transaction (its xmin), and deletes the entry only once the worker
--   holds it no longer prepared (2PC recovery, citus.recover_2pc_interval); so below the
--   oldest such entry, and below the coordinator's horizon, every transaction is complete.
--   age() is taken from this transaction's id: the entry's 64-bit id is ours minus its
--   age. One flush prunes at a time (the others skip rather than wait on its row locks).
WITH
-- include: settled
, logged AS (
    INSERT INTO topic_commits (topic, tx, events)
    SELECT u.topic, %(tx)s::text::xid8, u.accepted
    FROM unnest(%(topic)s::text[], %(accepted)s::bigint[]) AS u(topic, accepted)
    WHERE u.accepted > 0
), pruned AS (
    DELETE FROM topic_commits
    WHERE tx < (SELECT least(pg_snapshot_xmin(pg_current_snapshot()),
                             greatest(%(tx)s::bigint - coalesce(max(age(d.xmin)), 0), 0)
                             ::text::xid8)
                FROM pg_dist_transaction AS d)
      AND (SELECT pg_try_advisory_xact_lock(%(prune_lock)s))
)
SELECT pg_notify('aggregator_events', topic) FROM unnest(%(notify)s::text[]) AS topic

-- name: topic_has_events_citus
-- topics_with_events for one topic (Citus refuses its correlated subquery): any shard's
-- first row answers.
SELECT topic FROM events WHERE topic = %(topic)s LIMIT 1

-- name: read_commits_citus
-- Step 1 of read_after on Citus, on the coordinator alone: its horizon (every coordinator
-- transaction below it has ended; those that committed have their topic_commits rows
-- here), and the first %(commits)s transactions from the cursor's on that stored events of
-- the topic, with how many. A transaction with no row here and an id below the horizon
-- stored nothing of the topic, or its record was pruned because it is complete.
SELECT h.xmin::text::bigint, c.tx::text::bigint, c.events
FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) AS h
LEFT JOIN LATERAL (
    SELECT tx, events FROM topic_commits
    WHERE topic = %(topic)s AND tx >= %(after_tx)s::text::xid8 AND tx < h.xmin
    ORDER BY tx
    LIMIT %(commits)s
) AS c ON true
ORDER BY c.tx

-- name: count_commits_citus
-- Step 2, on the workers, after step 1: how many rows of each of those transactions are
-- visible now. Once all of a transaction's rows are, they stay visible.
SELECT tx::text::bigint, count(*)
FROM events
WHERE topic = %(topic)s AND tx = ANY(%(txs)s::text[]::xid8[])
GROUP BY tx

-- name: read_after_citus
-- Step 3, after step 2: read_after with the settled bound decided by steps 1 and 2
-- (%(settled_below)s: every row below it is visible and none can still appear there).
SELECT topic, event_id, ts, ts_nanos, source, payload::text, seq, received_at,
       tx::text::bigint, tx < %(settled_below)s::text::xid8 AS settled
FROM events
WHERE topic = %(topic)s
  AND (tx, seq) > (%(after_tx)s::text::xid8, %(after_seq)s::bigint)
  AND (%(start_ts)s::timestamptz IS NULL OR (ts, ts_nanos) >= (%(start_ts)s, %(start_nanos)s))
  AND (%(end_ts)s::timestamptz IS NULL OR (ts, ts_nanos) < (%(end_ts)s, %(end_nanos)s))
ORDER BY tx, seq
LIMIT %(limit)s

-- name: read_commits_all_citus
-- read_commits_citus for every topic at once: each transaction with all the events it
-- stored, whatever their topics.
SELECT h.xmin::text::bigint, c.tx::text::bigint, c.events
FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) AS h
LEFT JOIN LATERAL (
    SELECT tx, sum(events)::bigint AS events FROM topic_commits
    WHERE tx >= %(after_tx)s::text::xid8 AND tx < h.xmin
    GROUP BY tx
    ORDER BY tx
    LIMIT %(commits)s
) AS c ON true
ORDER BY c.tx

-- name: count_commits_all_citus
-- count_commits_citus for every topic at once.
SELECT tx::text::bigint, count(*)
FROM events
WHERE tx = ANY(%(txs)s::text[]::xid8[])
GROUP BY tx

-- name: read_all_after_citus
-- read_after_citus for every topic at once.
SELECT topic, event_id, ts, ts_nanos, source, payload::text, seq, received_at,
       tx::text::bigint, tx < %(settled_below)s::text::xid8 AS settled
FROM events
WHERE (tx, seq) > (%(after_tx)s::text::xid8, %(after_seq)s::bigint)
  AND (%(start_ts)s::timestamptz IS NULL OR (ts, ts_nanos) >= (%(start_ts)s, %(start_nanos)s))
  AND (%(end_ts)s::timestamptz IS NULL OR (ts, ts_nanos) < (%(end_ts)s, %(end_nanos)s))
ORDER BY tx, seq
LIMIT %(limit)s
