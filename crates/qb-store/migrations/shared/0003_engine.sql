-- Shared by SQLite and PostgreSQL: plain SQL both accept.
-- Release bundles a tenant imported. The artifacts' bytes live in the controller's artifact
-- store, by SHA-256; these rows say which tenant may fetch which.
CREATE TABLE bundles (
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    kubernetes_version TEXT NOT NULL,
    manifest TEXT NOT NULL,
    imported_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, kubernetes_version)
);
CREATE TABLE bundle_artifacts (
    tenant_id TEXT NOT NULL,
    kubernetes_version TEXT NOT NULL,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, kubernetes_version, name),
    FOREIGN KEY (tenant_id, kubernetes_version) REFERENCES bundles (tenant_id, kubernetes_version)
);
CREATE INDEX bundle_artifacts_by_sha256 ON bundle_artifacts (tenant_id, sha256);

-- The cluster engine's view of a cluster: its state, and its PKI (secret; never served).
ALTER TABLE clusters ADD COLUMN state TEXT NOT NULL DEFAULT 'empty';
ALTER TABLE clusters ADD COLUMN state_message TEXT;
ALTER TABLE clusters ADD COLUMN pki TEXT;

-- A node's part in its cluster: role, etcd membership, certificates (secret), and its plan.
-- plan_generation never goes back, whatever cluster the node is in: agents refuse older plans.
ALTER TABLE nodes ADD COLUMN role TEXT;
ALTER TABLE nodes ADD COLUMN etcd TEXT;
ALTER TABLE nodes ADD COLUMN certs TEXT;
ALTER TABLE nodes ADD COLUMN plan_generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN plan_hash TEXT;
ALTER TABLE nodes ADD COLUMN plan TEXT;
ALTER TABLE nodes ADD COLUMN plan_report TEXT;

-- Preflight runs, newest per cluster served by the API.
CREATE TABLE preflights (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    cluster_id TEXT NOT NULL REFERENCES clusters (id),
    at BIGINT NOT NULL,
    passed BIGINT NOT NULL,
    nodes TEXT NOT NULL,
    report TEXT NOT NULL
);
CREATE INDEX preflights_by_cluster ON preflights (cluster_id, at);
