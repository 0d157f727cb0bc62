-- A flush that predicts its outcome (every event new, or every event stored before with the
-- same content; every named request claimed by it: storage/writer.py) sends its INSERT,
-- its counters and its commit in one round trip. The INSERT (insert_sent) calls this with
-- how many rows it predicted inserted and ids claimed, how many were, and how many rows
-- were found stored with other content (never predicted): a wrong prediction raises,
-- which aborts the transaction before anything it counted can commit, and the flush
-- writes the batch again, waiting for the INSERT's answer this time.
CREATE FUNCTION flush_as_predicted(predicted integer, happened bigint, differing bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF predicted IS DISTINCT FROM happened OR differing <> 0 THEN
        RAISE EXCEPTION 'flush predicted % rows inserted and ids claimed; % happened, '
                        'and % rows differ from those stored', predicted, happened, differing
            USING ERRCODE = 'P0001';
    END IF;
    RETURN true;
END
$$;
