-- Shared by SQLite and PostgreSQL: plain SQL both accept.
-- Each node's agent as it last said hello: the SHA-256 of its binary (its build) and the
-- protocol it speaks; NULL for agents that did not say (before protocol 3).
ALTER TABLE nodes ADD COLUMN agent_build TEXT;
ALTER TABLE nodes ADD COLUMN agent_protocol BIGINT;

-- A tenant's agent upgrade: its hosts move to one build of the agent, a canary first, then
-- in batches; one per tenant (a new one replaces a finished one).
CREATE TABLE agent_upgrades (
    tenant_id TEXT PRIMARY KEY REFERENCES tenants (id),
    build TEXT NOT NULL,
    size BIGINT NOT NULL,
    version TEXT NOT NULL,
    batch_size BIGINT NOT NULL CHECK (batch_size > 0),
    trial_seconds BIGINT NOT NULL CHECK (trial_seconds > 0),
    state TEXT NOT NULL CHECK (state IN ('running', 'paused', 'stopped', 'done')),
    message TEXT,
    started_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Each host's part in its tenant's agent upgrade.
CREATE TABLE agent_upgrade_nodes (
    tenant_id TEXT NOT NULL REFERENCES agent_upgrades (tenant_id) ON DELETE CASCADE,
    node_id TEXT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    state TEXT NOT NULL CHECK (state IN ('upgrading', 'upgraded', 'failed')),
    since BIGINT NOT NULL,
    message TEXT,
    PRIMARY KEY (tenant_id, node_id)
);
