-- Shared by SQLite and PostgreSQL: plain SQL both accept.
-- Notification channels: where a tenant's alerts go. A webhook's secret signs its bodies, so it
-- is kept as given (it cannot be hashed) and never returned after creation.
CREATE TABLE notification_channels (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('webhook', 'email')),
    target TEXT NOT NULL,
    secret TEXT,
    min_severity TEXT NOT NULL CHECK (min_severity IN ('warning', 'critical')),
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

-- Deliveries: one row per alert change and channel, written in the transaction that fires or
-- resolves the alert (so none is lost or sent twice by a crash between the two), then sent
-- and retried by the replica that runs the engine.
CREATE TABLE notification_deliveries (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    channel_id TEXT NOT NULL REFERENCES notification_channels (id),
    alert_id TEXT NOT NULL REFERENCES alerts (id),
    transition TEXT NOT NULL CHECK (transition IN ('firing', 'resolved')),
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts BIGINT NOT NULL,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    next_attempt_at BIGINT,
    delivered_at BIGINT,
    CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL))
);
CREATE INDEX notification_deliveries_due ON notification_deliveries (status, next_attempt_at);
CREATE INDEX notification_deliveries_by_tenant ON notification_deliveries (tenant_id, created_at);
