-- Shared by SQLite and PostgreSQL: plain SQL both accept.
-- The Kubernetes version (bundle) a node's newest plan renders; NULL for a wipe or a plan
-- published before versions were recorded. A cluster's upgrade has reached a node when it is
-- the cluster's version and the node applied that plan.
ALTER TABLE nodes ADD COLUMN plan_version TEXT;
-- Hash of what in that plan restarts services when it changes (the services and the files
-- and artifacts they read); NULL when not recorded. A change that leaves it as it was (routes,
-- the API balancer's upstreams) restarts nothing, so it needs no rolling.
ALTER TABLE nodes ADD COLUMN plan_restart_hash TEXT;
