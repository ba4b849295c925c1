-- Shared by SQLite and PostgreSQL: plain SQL both accept.
-- Bootstrap tokens let an agent register a host into a tenant. Only their hash is kept.
CREATE TABLE bootstrap_tokens (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    secret_hash TEXT NOT NULL UNIQUE,
    description TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    max_uses BIGINT NOT NULL CHECK (max_uses > 0),
    uses BIGINT NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= max_uses),
    revoked_at BIGINT
);
CREATE INDEX bootstrap_tokens_by_tenant ON bootstrap_tokens (tenant_id, id);

-- What the agent told us about itself, and the certificates we issued it. A node certificate is
-- accepted only while its serial is the current or the previous one (renewal overlap).
ALTER TABLE nodes ADD COLUMN machine_id TEXT;
ALTER TABLE nodes ADD COLUMN agent_version TEXT;
ALTER TABLE nodes ADD COLUMN cert_serial TEXT;
ALTER TABLE nodes ADD COLUMN prev_cert_serial TEXT;
ALTER TABLE nodes ADD COLUMN last_seen_at BIGINT;
CREATE UNIQUE INDEX nodes_by_machine_id ON nodes (tenant_id, machine_id);

-- Controller-wide secrets shared by all replicas (the internal CA).
CREATE TABLE controller_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
