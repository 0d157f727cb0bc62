-- Gap-free delivery order (Subscribe, ListEvents): each row records the id of the
-- transaction that wrote it. Readers deliver rows in (tx, seq) order and only those
-- whose tx is below the oldest transaction still running (pg_snapshot_xmin), so no row
-- can ever commit behind a position already handed out (PgQ's rule).
-- Rows stored before this migration all committed long ago: tx 0 puts them first, in
-- seq order, without rewriting the table; new rows take their transaction's id.
ALTER TABLE events ADD COLUMN tx xid8 NOT NULL DEFAULT '0';
ALTER TABLE events ALTER COLUMN tx SET DEFAULT pg_current_xact_id();

-- Serves ListEvents and Subscribe: one topic in delivery order, keyset-paged.
DROP INDEX events_topic_seq_idx;
CREATE INDEX events_topic_tx_seq_idx ON events (topic, tx, seq);
