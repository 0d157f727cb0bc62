-- One row per committed flush transaction: the batch's identity and what the transaction
-- decided. When the connection drops at COMMIT, the retry reads this to learn whether the
-- transaction committed and, if it did, answers with exactly these statuses and counts
-- instead of writing the events again (they would come back DUPLICATE and count twice).
-- Rows live only while their batch can still be retried: each flush transaction deletes
-- the rows of batches its worker has answered (storage/ledger.py).
-- Distributable on Citus by batch_id (the primary key contains it).
CREATE TABLE batch_ledger (
    batch_id     uuid        NOT NULL,
    -- the lowest event index (in the batch) this transaction decided; -1 when it only
    -- counted events rejected before the batch
    first_idx    integer     NOT NULL,
    -- the indexes decided, when not simply first_idx .. first_idx + length(statuses) - 1
    idxs         integer[],
    statuses     bytea       NOT NULL,  -- one storage.Status value per decided event
    reasons      jsonb       NOT NULL,  -- {"index": "reason"} for REJECTED and CONFLICT
    counts       jsonb       NOT NULL,  -- {"topic": [accepted, duplicates, rejected, conflicts]}
    committed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, first_idx)
);
