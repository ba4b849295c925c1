-- Shared by SQLite and PostgreSQL: plain SQL both accept.
-- Each node's heartbeats summed by the minute (kept a day) and by the hour (kept 30 days);
-- written by the controller on a timer, never per heartbeat. Rows of a deleted node go with it.
CREATE TABLE node_metrics (
    node_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    resolution_s BIGINT NOT NULL CHECK (resolution_s IN (60, 3600)),
    at BIGINT NOT NULL,
    samples BIGINT NOT NULL CHECK (samples > 0),
    cpu_percent DOUBLE PRECISION NOT NULL,
    cpu_percent_max DOUBLE PRECISION NOT NULL,
    load1 DOUBLE PRECISION NOT NULL,
    memory_used_bytes BIGINT NOT NULL,
    memory_total_bytes BIGINT NOT NULL,
    disk_used_bytes BIGINT NOT NULL,
    disk_total_bytes BIGINT NOT NULL,
    PRIMARY KEY (node_id, resolution_s, at)
);
CREATE INDEX node_metrics_by_age ON node_metrics (resolution_s, at);
