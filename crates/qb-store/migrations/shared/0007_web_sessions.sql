-- Shared by SQLite and PostgreSQL: plain SQL both accept.
-- 1 for the token of a web UI session (opened by logging in), 0 for an API token: changing a
-- user's password ends their sessions, not their API tokens.
ALTER TABLE tokens ADD COLUMN web_session INTEGER NOT NULL DEFAULT 0;
