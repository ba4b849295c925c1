-- Shared by SQLite and PostgreSQL: plain SQL both accept.
-- A cluster whose operator paused the rollout of changes that restart services: nodes not
-- given the change yet wait until it is resumed.
ALTER TABLE clusters ADD COLUMN rollout_paused INTEGER NOT NULL DEFAULT 0;
