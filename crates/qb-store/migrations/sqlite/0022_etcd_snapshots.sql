-- etcd snapshots of clusters, taken by a master's agent. Their bytes are kept in chunks, each
-- sealed (AES-256-GCM) under the snapshot's own data key, which is sealed like every other
-- secret (under the key file's key, bound to its row).
CREATE TABLE etcd_snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    cluster_id TEXT NOT NULL REFERENCES clusters (id),
    state TEXT NOT NULL CHECK (state IN ('requested', 'taking', 'done', 'failed')),
    trigger_kind TEXT NOT NULL CHECK (trigger_kind IN ('scheduled', 'manual')),
    kubernetes_version TEXT NOT NULL,
    node_id TEXT,
    node_name TEXT,
    size BIGINT,
    sha256 TEXT,
    revision BIGINT,
    error TEXT,
    data_key TEXT,
    -- The upload that stores its bytes now (while taking) or stored them (done): chunks of
    -- any other are leftovers of an upload that broke off or was overtaken.
    attempt BIGINT,
    chunks BIGINT,
    requested_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);
CREATE INDEX etcd_snapshots_cluster ON etcd_snapshots (cluster_id, id);
-- One snapshot of a cluster at a time.
CREATE UNIQUE INDEX etcd_snapshots_one_at_a_time ON etcd_snapshots (cluster_id)
    WHERE state IN ('requested', 'taking');

CREATE TABLE etcd_snapshot_chunks (
    snapshot_id BIGINT NOT NULL REFERENCES etcd_snapshots (id) ON DELETE CASCADE,
    attempt BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (snapshot_id, attempt, seq)
);
