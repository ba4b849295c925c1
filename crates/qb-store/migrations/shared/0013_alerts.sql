-- Shared by SQLite and PostgreSQL: plain SQL both accept.
-- Alerts: one row per occurrence of a rule on an object, firing until resolved; at most one
-- firing per rule and object.
CREATE TABLE alerts (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    rule TEXT NOT NULL,
    severity TEXT NOT NULL CHECK (severity IN ('warning', 'critical')),
    state TEXT NOT NULL CHECK (state IN ('firing', 'resolved')),
    object_kind TEXT NOT NULL,
    object_id TEXT NOT NULL,
    object_name TEXT NOT NULL,
    summary TEXT NOT NULL,
    fired_at BIGINT NOT NULL,
    resolved_at BIGINT,
    -- 0 or 1 (sqlx's Any driver reads no SQLite booleans).
    silenced BIGINT NOT NULL CHECK (silenced IN (0, 1)),
    CHECK ((state = 'resolved') = (resolved_at IS NOT NULL))
);
CREATE UNIQUE INDEX alerts_one_firing ON alerts (tenant_id, rule, object_id) WHERE state = 'firing';
CREATE INDEX alerts_by_tenant ON alerts (tenant_id, fired_at);

-- Silences: alerts they cover still fire and resolve, marked silenced.
CREATE TABLE silences (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    rule TEXT,
    object_name TEXT,
    comment TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    ends_at BIGINT NOT NULL
);
CREATE INDEX silences_by_tenant ON silences (tenant_id, ends_at);
