-- A flush that predicts its outcome (every event new, or every event stored before with the
-- same content; every named request claimed by it: storage/writer.py) writes its batch,
-- counters and ledger records in one statement that commits on its own
-- (insert_predicted), which calls this with what was predicted and what its INSERT did:
-- a wrong prediction raises, which fails the statement before anything of it can commit,
-- and the flush writes the batch again, waiting for the INSERT's answer this time.
CREATE FUNCTION flush_as_predicted(
    inserted integer, claimed integer,
    inserted_now bigint, claimed_now bigint, differing bigint
) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF inserted <> inserted_now OR claimed <> claimed_now OR differing <> 0 THEN
        RAISE EXCEPTION 'flush predicted % rows inserted and % ids claimed; % and % were, '
                        'and % rows are stored with other content',
                        inserted, claimed, inserted_now, claimed_now, differing
            USING ERRCODE = 'P0001';
    END IF;
    RETURN true;
END
$$;
