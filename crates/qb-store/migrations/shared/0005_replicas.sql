-- Shared by SQLite and PostgreSQL: plain SQL both accept.
-- Controller replicas sharing the database: where the others reach each one (its agent
-- endpoint, mutual TLS with replica certificates), refreshed every few seconds while it lives.
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    peer_url TEXT NOT NULL,
    seen_at BIGINT NOT NULL
);

-- Which replica holds each connected agent's channel: written when a channel opens or closes,
-- never per heartbeat. A session of a replica that stopped refreshing itself is stale.
CREATE TABLE agent_sessions (
    node_id TEXT PRIMARY KEY,
    replica_id TEXT NOT NULL,
    connected_at BIGINT NOT NULL
);
