-- Named requests (PublishRequest.request_id, HTTP Idempotency-Key): the transaction that
-- writes a named request first claims its id here, then records the statuses it decided,
-- committed with its events. A resend of the id (its answer was lost) waits for that
-- transaction if it is still committing, then gets those statuses back and counts nothing
-- again. `fingerprint` tells a resend from another request under the same id. Rows older
-- than the server's --request-retention are deleted (storage/requests.py).
-- Distributable on Citus by request_id (the primary key).
CREATE TABLE request_ledger (
    request_id   text        PRIMARY KEY,
    fingerprint  bytea       NOT NULL,
    statuses     bytea,               -- one storage.Status value per event written
    reasons      jsonb,               -- {"index": "reason"} for CONFLICT (and refused rows)
    committed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX request_ledger_committed_at_idx ON request_ledger (committed_at);
