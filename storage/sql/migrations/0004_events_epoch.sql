-- What lets a server answer a re-send from memory (storage/recent.py): a number that
-- changes in the same transaction as anything that removes or rewrites stored events.
-- A server trusts what it remembers only while the epoch it reads in its own flush
-- transaction is the one it remembered under. Inserts do not touch it.
CREATE TABLE events_epoch (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch     bigint  NOT NULL
);
INSERT INTO events_epoch (epoch) VALUES (0);

CREATE FUNCTION events_epoch_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE events_epoch SET epoch = epoch + 1;
    RETURN NULL;
END
$$;

-- Statement level: fires once per UPDATE, DELETE or TRUNCATE of events, even one that
-- touches no row (a harmless extra bump).
CREATE TRIGGER events_epoch_bump AFTER UPDATE OR DELETE OR TRUNCATE ON events
FOR EACH STATEMENT EXECUTE FUNCTION events_epoch_bump();
