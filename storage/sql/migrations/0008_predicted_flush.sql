-- A flush that predicts its outcome (every event new, every named request claimed by it:
-- storage/writer.py) sends its INSERT, its counters and its COMMIT in one round trip. The
-- INSERT (insert_sent) calls this with what was predicted and what happened: a wrong
-- prediction raises, which aborts the transaction before anything it counted can commit,
-- and the flush writes the batch again, waiting for the INSERT's answer this time.
CREATE FUNCTION flush_as_predicted(predicted integer, happened bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF predicted IS DISTINCT FROM happened THEN
        RAISE EXCEPTION 'flush predicted % new rows and claims; % happened', predicted, happened
            USING ERRCODE = 'P0001';
    END IF;
    RETURN true;
END
$$;
