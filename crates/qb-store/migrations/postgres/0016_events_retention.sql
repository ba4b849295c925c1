-- The audit trail stays append-only, except that events older than 400 days (the retention)
-- may be deleted: the controller prunes them.
CREATE FUNCTION events_delete_past_retention() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.at >= (extract(epoch FROM now()) * 1000)::bigint - 400::bigint * 86400000 THEN
        RAISE EXCEPTION 'events are append-only';
    END IF;
    RETURN OLD;
END
$$;
DROP TRIGGER events_append_only ON events;
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_delete_past_retention();
