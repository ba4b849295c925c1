-- Shared by SQLite and PostgreSQL: plain SQL both accept.
-- The address a node's cluster reaches it at: chosen once, when the engine first plans the
-- node in a cluster, and kept until the node leaves it (a host's bridges and pods come and go;
-- the node's address must not follow them).
ALTER TABLE nodes ADD COLUMN address TEXT;
-- A detach asked with --force: the engine does not wait for an unreachable host's wipe.
ALTER TABLE nodes ADD COLUMN detach_force INTEGER NOT NULL DEFAULT 0;
-- 1: masters carry the node-role.kubernetes.io/master:NoSchedule taint (workloads stay off them).
ALTER TABLE clusters ADD COLUMN taint_masters INTEGER NOT NULL DEFAULT 0;
