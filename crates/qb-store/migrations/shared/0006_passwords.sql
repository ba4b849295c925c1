-- Shared by SQLite and PostgreSQL: plain SQL both accept.
-- A user's password for the web UI, as an Argon2id PHC string; none until one is set.
ALTER TABLE users ADD COLUMN password_hash TEXT;
