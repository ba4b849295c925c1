-- Shared by SQLite and PostgreSQL: plain SQL both accept.
-- When a cluster entered its state (ms since the epoch), so that one busy for long stands out.
-- Existing clusters: their last recorded state change, else their creation.
ALTER TABLE clusters ADD COLUMN state_changed_at BIGINT;
UPDATE clusters SET state_changed_at = COALESCE(
    (SELECT MAX(e.at) FROM events e
     WHERE e.object_kind = 'cluster' AND e.object_id = clusters.id
       AND e.action = 'cluster.state_changed'),
    created_at);
