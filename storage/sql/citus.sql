-- Spreads the schema over a Citus cluster (distributed PostgreSQL). Run it once on the
-- coordinator, after the server has created the schema there (its first start applies the
-- migrations) and before the load grows:
--     psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f storage/sql/citus.sql
-- Nothing in the write path changes: every key the server writes or looks up contains the
-- distribution column, and later migrations' ALTER TABLEs are propagated by Citus.
--
-- Every table the migrations create is named below, distributed or reference, or as one
-- that stays on the coordinator; tests/test_citus_sql.py fails when a migration adds a table
-- that is not.
CREATE EXTENSION IF NOT EXISTS citus;  -- needs citus in shared_preload_libraries

-- Events are spread by event_id: the primary key (topic, event_id) contains it, so the
-- INSERT ... ON CONFLICT (topic, event_id) that decides ACCEPTED/DUPLICATE stays one shard's
-- unique check. ListEvents for a topic reads every shard (merged on the coordinator).
-- Not yet run on Citus: that INSERT tells new rows from CONFLICTs by `tx =
-- pg_current_xact_id()` in its RETURNING (storage/sql/queries.sql), which holds only where
-- the column's default and the RETURNING run in the same transaction (see events.tx below).
-- The epoch trigger (migration 0004) would fire on the coordinator only, not for rows
-- deleted on a worker: without it, servers see the trigger missing and stop answering
-- re-sends from memory (storage/recent.py), which is the safe side.
DROP TRIGGER IF EXISTS events_epoch_bump ON events;
SELECT create_distributed_table('events', 'event_id');

-- Counters are small and updated in every flush transaction: a copy on every node.
SELECT create_reference_table('topic_stats');

-- The batch ledger is looked up by batch_id, which its primary key contains. Not yet run on
-- Citus: its write is part of one statement of data-modifying CTEs (`settle_batch`: a
-- multi-shard DELETE of answered batches and the counters' reference-table upsert beside
-- the INSERT), which Citus may refuse; its advisory lock is the
-- coordinator's, which holds while every server connects to the coordinator.
SELECT create_distributed_table('batch_ledger', 'batch_id');

-- Not valid on Citus yet: the gap-free delivery order (migration 0003, events.tx). Each
-- worker stamps rows with its own transaction ids and judges them against its own oldest
-- running transaction, so the order holds within a shard but a cursor cannot compare ids
-- from different workers. ListEvents/Subscribe there need a commit-ordered log instead
-- (README, "Reading a topic"); publishing is unaffected.

-- Stays on the coordinator: schema_migrations (read and written by the server at start only), events_epoch (read once per flush transaction and moved only by the trigger dropped above)
