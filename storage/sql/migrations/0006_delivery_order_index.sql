-- Serves reading every topic at once (HTTP GET /events without a topic): all events in
-- delivery order, keyset-paged. Rows arrive in growing transaction ids, so inserts land at
-- the index's right edge.
CREATE INDEX events_tx_seq_idx ON events (tx, seq);
