-- Shared by SQLite and PostgreSQL: plain SQL both accept.
-- Each cluster's etcd snapshot schedule: minutes between scheduled snapshots (0: none) and
-- how many scheduled ones are kept.
ALTER TABLE clusters ADD COLUMN snapshot_interval_minutes BIGINT NOT NULL DEFAULT 720;
ALTER TABLE clusters ADD COLUMN snapshot_retention BIGINT NOT NULL DEFAULT 5;
