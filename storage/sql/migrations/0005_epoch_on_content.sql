-- The flush classifies re-sends in its INSERT (ON CONFLICT DO UPDATE SET received_at …
-- WHERE the content differs), which fires statement-level UPDATE triggers. The epoch
-- (migration 0004) only has to move when stored content changes: fire on those columns.
DROP TRIGGER events_epoch_bump ON events;
CREATE TRIGGER events_epoch_bump
AFTER UPDATE OF topic, event_id, ts, ts_nanos, source, payload OR DELETE OR TRUNCATE ON events
FOR EACH STATEMENT EXECUTE FUNCTION events_epoch_bump();
