-- Shared by SQLite and PostgreSQL: plain SQL both accept.
-- A node's pod subnet in its cluster: the index of its /24 (or /64) in the cluster's pod CIDR.
-- Given once, when the engine first plans the node, and kept until the node leaves the cluster,
-- so pods never change subnet while other nodes come and go.
ALTER TABLE nodes ADD COLUMN pod_subnet INTEGER;
CREATE UNIQUE INDEX nodes_pod_subnet_per_cluster ON nodes (cluster_id, pod_subnet);
