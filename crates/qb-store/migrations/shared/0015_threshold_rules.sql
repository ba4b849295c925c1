-- Shared by SQLite and PostgreSQL: plain SQL both accept.
-- A tenant's own alert rules: a host figure above a threshold for some minutes in a row.
CREATE TABLE threshold_rules (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    metric TEXT NOT NULL CHECK (metric IN ('cpu', 'memory', 'disk', 'load')),
    above DOUBLE PRECISION NOT NULL,
    for_minutes BIGINT NOT NULL CHECK (for_minutes BETWEEN 1 AND 60),
    severity TEXT NOT NULL CHECK (severity IN ('warning', 'critical')),
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);
