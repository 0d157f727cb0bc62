-- Events, keyed by (topic, event_id): the primary key is the idempotency guarantee.
CREATE TABLE events (
    topic       text        NOT NULL CHECK (char_length(topic) BETWEEN 1 AND 255),
    event_id    text        NOT NULL CHECK (char_length(event_id) BETWEEN 1 AND 255),
    ts          timestamptz NOT NULL,
    -- timestamptz keeps microseconds; the sub-microsecond rest of the event's
    -- nanosecond timestamp is kept here so events read back exactly as sent.
    ts_nanos    smallint    NOT NULL DEFAULT 0 CHECK (ts_nanos BETWEEN 0 AND 999),
    source      text        NOT NULL DEFAULT '' CHECK (char_length(source) <= 255),
    payload     jsonb       NOT NULL,
    seq         bigint      GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME events_seq),
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, event_id)
);

-- Serves ListEvents: one topic in storage order, keyset-paged.
CREATE INDEX events_topic_seq_idx ON events (topic, seq);

-- Counters per topic, updated in the same transaction as the events they count.
-- Each row is one shard of a topic's counters: concurrent flush transactions
-- update different shards, so they never wait on each other's row locks.
-- topic '' holds events rejected for a missing or invalid topic (totals only).
CREATE TABLE topic_stats (
    topic      text     NOT NULL,
    shard      smallint NOT NULL,
    received   bigint   NOT NULL DEFAULT 0,
    accepted   bigint   NOT NULL DEFAULT 0,
    duplicates bigint   NOT NULL DEFAULT 0,
    rejected   bigint   NOT NULL DEFAULT 0,
    conflicts  bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, shard)
);
