-- The audit trail stays append-only, except that events older than 400 days (the retention)
-- may be deleted: the controller prunes them.
DROP TRIGGER events_no_delete;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
WHEN OLD.at >= CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - 400 * 86400000
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;
