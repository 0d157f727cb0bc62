-- Spreads the schema over a Citus cluster (distributed PostgreSQL). Run it once on the
-- coordinator, after a server's first start there has applied the migrations, with every
-- server stopped (servers learn at start whether events is distributed, and the write and
-- read paths differ; the check below refuses to run while one is connected):
--     psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f storage/sql/citus.sql
-- Every node needs Citus first (docs/scaling.md). Later migrations'
-- ALTER TABLEs are propagated by Citus.
--
-- Every table the migrations create is named below, distributed or reference, or as one
-- that stays on the coordinator; tests/unit/test_citus_sql.py fails when a migration adds a
-- table that is not. tests/integration/citus/ runs the server on a real coordinator and two
-- workers set up this way.
CREATE EXTENSION IF NOT EXISTS citus;  -- needs citus in shared_preload_libraries

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_stat_activity
               WHERE datname = current_database() AND application_name = 'aggregator'
                 AND pid <> pg_backend_pid()) THEN
        RAISE EXCEPTION 'aggregator servers are connected to this database'
            USING HINT = 'Stop every server, run citus.sql, then start them again.';
    END IF;
END
$$;

-- Events are spread by event_id: the primary key (topic, event_id) contains it, so the
-- INSERT ... ON CONFLICT (topic, event_id) that decides ACCEPTED/DUPLICATE stays one shard's
-- unique check. The server writes through the coordinator with the queries named *_citus
-- in queries.sql: rows carry the coordinator's transaction id (events.tx), never a
-- worker's. ListEvents for a topic reads every shard (merged on the coordinator).
-- The epoch trigger (migration 0004) would fire on the workers' shards, where events_epoch
-- is not: dropped here, so servers see it missing and do not answer re-sends from memory
-- (storage/recent.py), which is the safe side.
DROP TRIGGER IF EXISTS events_epoch_bump ON events;
SELECT create_distributed_table('events', 'event_id');

-- Counters are small and updated in every flush transaction: a copy on every node.
SELECT create_reference_table('topic_stats');

-- The batch ledger is looked up by batch_id, which its primary key contains. Its advisory
-- lock (taken in settle_batch, awaited by a retry) is the coordinator's, which holds while
-- every server connects to the coordinator.
SELECT create_distributed_table('batch_ledger', 'batch_id');

-- The gap-free delivery order (migration 0003) on Citus: rows are ordered by the
-- coordinator's transaction id and settled by its horizon, but a two-phase commit makes a
-- transaction's rows visible on each worker only after the coordinator's commit, worker by
-- worker. So each flush transaction records here, on the coordinator, how many events it
-- stored per topic; a reader delivers a transaction's rows only once it counts all of
-- them (storage/database.py, _read_after_citus). Records of transactions complete on every
-- worker are pruned by later flushes (settle_batch_citus).
CREATE TABLE topic_commits (
    topic  text    NOT NULL,
    tx     xid8    NOT NULL,
    events integer NOT NULL,
    PRIMARY KEY (topic, tx)
);
CREATE INDEX topic_commits_tx_idx ON topic_commits (tx);

-- Stays on the coordinator: schema_migrations (read and written by the server at start only), events_epoch (read once per flush transaction and moved only by the trigger dropped above), topic_commits (written and read in the coordinator's own transactions), request_ledger (claimed and read in the flush transactions, which run on the coordinator)
