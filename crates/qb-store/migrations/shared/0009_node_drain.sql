-- Shared by SQLite and PostgreSQL: plain SQL both accept.
-- A leaving node's drain, kept so that a restarted or failed-over controller resumes it where
-- it was: when its first attempt started (ms since the epoch; the engine gives up draining a
-- while after it), and 1 once it is drained (or given up on).
ALTER TABLE nodes ADD COLUMN drain_started_at BIGINT;
ALTER TABLE nodes ADD COLUMN drained INTEGER NOT NULL DEFAULT 0;
