-- Shared by SQLite and PostgreSQL: plain SQL both accept.
-- The bootstrap token a node last registered with: a host whose registration was stored but
-- never answered (the controller died in between) may ask again with the same token, used up
-- by that very registration, until its agent first connects.
ALTER TABLE nodes ADD COLUMN bootstrap_token_id TEXT;
