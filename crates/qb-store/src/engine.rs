//! What the cluster engine keeps: release bundles, each cluster's state and PKI, each node's
//! role, etcd membership, certificates and plan, and preflight results.
//!
//! The engine's state reads back as qb-plan's types (`ClusterPki`, `NodeCerts`, `Membership`;
//! their `Debug` redacts private keys); a row that does not parse is an error, never taken for a
//! missing value. None of it appears in API types.

use std::collections::BTreeMap;

use qb_api::{
    Bundle, BundleManifest, ClusterId, ClusterState, KubernetesVersion, Node, NodeId, NodeRole,
    NodeState, PlanReport, PreflightReport, TenantId,
};
use qb_plan::membership::Membership;
use qb_plan::pki::{ClusterPki, NodeCerts};
use serde_json::json;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::clusters::cluster_event;
use crate::events::NewEvent;
use crate::nodes::{NODE_SELECT, node_event, to_json};
use crate::{Actor, Key, Result, Store, StoreError, now_ms, rows, to_ms};

/// The `plan_hash` of a plan that wipes a node (no cluster).
pub const WIPE_PLAN_HASH: &str = "wipe";

/// A cluster as the engine sees it: its nodes (attached and detaching) with their engine state.
#[derive(Clone, Debug)]
pub struct EngineCluster {
    pub tenant: TenantId,
    pub cluster: qb_api::Cluster,
    /// The cluster's certificate authorities, once generated.
    pub pki: Option<ClusterPki>,
    pub nodes: Vec<EngineNode>,
}

#[derive(Clone, Debug)]
pub struct EngineNode {
    pub node: Node,
    /// The node's etcd membership, while it is (or becomes) a member.
    pub etcd: Option<Membership>,
    /// The node's certificates and their keys.
    pub certs: Option<NodeCerts>,
    /// Hash of the node's current plan without its generation, to tell whether it changed.
    pub plan_hash: Option<String>,
    /// Hash of what in that plan restarts services (see [`PlanHashes`]).
    pub plan_restart_hash: Option<String>,
    /// The index of the node's pod subnet in the cluster's pod CIDR, once given.
    pub pod_subnet: Option<u32>,
    /// Detached with `--force`: an unreachable host's wipe is not waited for.
    pub detach_force: bool,
    /// The node's drain, as far as it went: a leaving node's, or a worker's before a change
    /// restarts it.
    pub drain: Drain,
}

impl EngineNode {
    /// Its agent last reported `service` of its plan running and healthy.
    pub fn reports_healthy(&self, service: &str) -> bool {
        self.node.plan.as_ref().is_some_and(|p| {
            p.report.as_ref().is_some_and(|r| {
                r.services
                    .iter()
                    .any(|s| s.name == service && s.running && s.healthy)
            })
        })
    }

    /// Its newest plan is a wipe (of the cluster it leaves, or left): no plan of a cluster.
    pub fn wipe_published(&self) -> bool {
        self.plan_hash.as_deref() == Some(WIPE_PLAN_HASH)
    }
}

/// A plan's hashes as the engine keeps them: of the whole plan without its generation (whether
/// it changed), and of what restarts services when it changes (`None` for a wipe).
#[derive(Clone, Copy, Debug)]
pub struct PlanHashes<'a> {
    pub plan: &'a str,
    pub restart: Option<&'a str>,
}

/// How far a node's drain went (it leaves, or a change that restarts its services reaches
/// it); kept in the store so that a restarted or failed-over controller resumes it rather than
/// starting over, and puts a worker drained for a change back in service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    NotStarted,
    /// The first attempt began then; the engine gives up some time after it.
    Since(time::OffsetDateTime),
    /// Drained, or given up on.
    Done,
}

impl Store {
    /// Imports a release bundle. Importing the same bundle again changes nothing; a different
    /// bundle for a version that exists is refused (bundles are immutable).
    pub async fn import_bundle(
        &self,
        tenant: TenantId,
        manifest: &BundleManifest,
        actor: &Actor,
    ) -> Result<(Bundle, bool)> {
        manifest.validate()?;
        let mut stored = manifest.clone();
        for a in &mut stored.artifacts {
            a.file = None;
        }
        let version = stored.kubernetes_version.to_string();
        let mut w = self.write(tenant).await?;
        let existing = sqlx::query(
            "SELECT manifest, imported_at FROM bundles WHERE tenant_id = $1 AND kubernetes_version = $2",
        )
        .bind(tenant.to_string())
        .bind(&version)
        .fetch_optional(&mut *w.tx)
        .await?;
        if let Some(row) = existing {
            let bundle = bundle_row(&row)?;
            return if bundle.manifest == stored {
                Ok((bundle, false))
            } else {
                Err(StoreError::BundleConflict { version })
            };
        }
        let now = now_ms();
        sqlx::query(
            "INSERT INTO bundles (tenant_id, kubernetes_version, manifest, imported_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(tenant.to_string())
        .bind(&version)
        .bind(to_json(&stored))
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
        for a in &stored.artifacts {
            sqlx::query(
                "INSERT INTO bundle_artifacts (tenant_id, kubernetes_version, name, sha256, size) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(tenant.to_string())
            .bind(&version)
            .bind(&a.name)
            .bind(&a.sha256)
            .bind(i64::try_from(a.size).unwrap_or(i64::MAX))
            .execute(&mut *w.tx)
            .await?;
        }
        let names: Vec<String> = stored
            .artifacts
            .iter()
            .map(|a| format!("{} {}", a.name, a.version))
            .collect();
        w.commit_with_event(
            tenant,
            actor,
            NewEvent {
                action: "bundle.imported",
                object_kind: "bundle",
                object_id: version.clone(),
                object_name: &version,
                detail: json!({ "artifacts": names }),
            },
        )
        .await?;
        Ok((
            Bundle {
                manifest: stored,
                imported_at: crate::from_ms(now),
            },
            true,
        ))
    }

    pub async fn list_bundles(&self, tenant: TenantId) -> Result<Vec<Bundle>> {
        let rows = sqlx::query(
            "SELECT manifest, imported_at FROM bundles WHERE tenant_id = $1 ORDER BY kubernetes_version",
        )
        .bind(tenant.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(bundle_row).collect()
    }

    pub async fn get_bundle(
        &self,
        tenant: TenantId,
        version: &KubernetesVersion,
    ) -> Result<Bundle> {
        let row = sqlx::query(
            "SELECT manifest, imported_at FROM bundles WHERE tenant_id = $1 AND kubernetes_version = $2",
        )
        .bind(tenant.to_string())
        .bind(version.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::not_found("bundle", version))?;
        bundle_row(&row)
    }

    /// Whether `tenant` may download the artifact with this SHA-256: a bundle of theirs ships
    /// it, or their agent upgrade is to it (the agent binary).
    pub async fn tenant_has_artifact(&self, tenant: TenantId, sha256: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 AS one FROM bundle_artifacts WHERE tenant_id = $1 AND sha256 = $2 \
             UNION ALL SELECT 1 AS one FROM agent_upgrades WHERE tenant_id = $1 AND build = $2",
        )
        .bind(tenant.to_string())
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Every cluster the engine has to look at: those with nodes, and those not yet `empty`.
    pub async fn engine_clusters(&self) -> Result<Vec<(TenantId, ClusterId)>> {
        let rows = sqlx::query(
            "SELECT c.tenant_id, c.id FROM clusters c WHERE c.state <> 'empty' \
             OR EXISTS (SELECT 1 FROM nodes n WHERE n.cluster_id = c.id) ORDER BY c.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows::with_tenant(&rows, |row| {
            crate::parse_id("cluster id", &row.try_get::<String, _>("id")?)
        })
    }

    /// A cluster with its nodes and their engine state.
    pub async fn engine_cluster(
        &self,
        tenant: TenantId,
        cluster: ClusterId,
    ) -> Result<EngineCluster> {
        let mut conn = self.pool.acquire().await?;
        let row = crate::fetch_keyed(&mut *conn, tenant, &Key::Id(cluster)).await?;
        let cluster = rows::cluster(&row)?;
        let pki = self.sealed_json(
            &row,
            ("clusters", "pki", &cluster.id.to_string()),
            "cluster PKI",
        )?;
        let node_rows = sqlx::query(&format!(
            "{NODE_SELECT} WHERE n.tenant_id = $1 AND n.cluster_id = $2 ORDER BY n.name"
        ))
        .bind(tenant.to_string())
        .bind(cluster.id.to_string())
        .fetch_all(&mut *conn)
        .await?;
        let nodes = node_rows
            .iter()
            .map(|row| {
                Ok(EngineNode {
                    node: rows::node(row)?,
                    etcd: json_column(row, "etcd", "etcd membership")?,
                    certs: self.sealed_json(
                        row,
                        ("nodes", "certs", &row.try_get::<String, _>("id")?),
                        "node certificates",
                    )?,
                    plan_hash: row.try_get("plan_hash")?,
                    plan_restart_hash: row.try_get("plan_restart_hash")?,
                    pod_subnet: row
                        .try_get::<Option<i64>, _>("pod_subnet")?
                        .and_then(|i| u32::try_from(i).ok()),
                    detach_force: row.try_get::<i64, _>("detach_force")? != 0,
                    drain: match (
                        row.try_get::<i64, _>("drained")? != 0,
                        row.try_get::<Option<i64>, _>("drain_started_at")?,
                    ) {
                        (true, _) => Drain::Done,
                        (false, Some(ms)) => Drain::Since(crate::from_ms(ms)),
                        (false, None) => Drain::NotStarted,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(EngineCluster {
            tenant,
            cluster,
            pki,
            nodes,
        })
    }

    /// Stores a cluster's PKI the first time; returns the PKI that is stored (another replica's
    /// if it got there first).
    pub async fn init_cluster_pki(
        &self,
        tenant: TenantId,
        cluster: ClusterId,
        pki: &ClusterPki,
    ) -> Result<ClusterPki> {
        let mut w = self.write(tenant).await?;
        sqlx::query(
            "UPDATE clusters SET pki = $1 WHERE tenant_id = $2 AND id = $3 AND pki IS NULL",
        )
        .bind(self.seal("clusters", "pki", &cluster.to_string(), &to_json(pki)))
        .bind(tenant.to_string())
        .bind(cluster.to_string())
        .execute(&mut *w.tx)
        .await?;
        let stored = sqlx::query("SELECT pki FROM clusters WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.to_string())
            .bind(cluster.to_string())
            .fetch_optional(&mut *w.tx)
            .await?
            .map(|row| {
                self.sealed_json(
                    &row,
                    ("clusters", "pki", &cluster.to_string()),
                    "cluster PKI",
                )
            })
            .transpose()?
            .flatten();
        w.commit().await?;
        stored.ok_or_else(|| StoreError::not_found("cluster", cluster))
    }

    /// Records the cluster's state and message. A change of state (not of the message alone)
    /// also records an event and restarts `state_since`. Returns whether anything changed.
    pub async fn set_cluster_state(
        &self,
        tenant: TenantId,
        cluster: ClusterId,
        state: ClusterState,
        message: Option<&str>,
    ) -> Result<bool> {
        let mut w = self.write(tenant).await?;
        let current = w.cluster(tenant, &Key::Id(cluster)).await?;
        if !w
            .set_cluster_state(tenant, &current, state, message)
            .await?
        {
            return Ok(false);
        }
        w.commit().await?;
        Ok(true)
    }

    /// Gives each node of `cluster` without a pod subnet the lowest free index, below `limit`
    /// (the number of subnets the pod CIDR holds). Nodes that keep theirs keep them; leaving
    /// nodes hold theirs until they are gone. Returns every node's index; a node is missing
    /// when no index was free.
    pub async fn assign_pod_subnets(
        &self,
        tenant: TenantId,
        cluster: ClusterId,
        limit: u32,
    ) -> Result<BTreeMap<NodeId, u32>> {
        let mut w = self.write(tenant).await?;
        let rows = sqlx::query(
            "SELECT id, pod_subnet FROM nodes WHERE tenant_id = $1 AND cluster_id = $2 ORDER BY name",
        )
        .bind(tenant.to_string())
        .bind(cluster.to_string())
        .fetch_all(&mut *w.tx)
        .await?;
        let mut given = BTreeMap::new();
        let mut without = Vec::new();
        for row in &rows {
            let id: String = row.try_get("id")?;
            let id: NodeId = rows::parse("node id", &id)?;
            match row.try_get::<Option<i64>, _>("pod_subnet")? {
                Some(index) => {
                    given.insert(id, u32::try_from(index).unwrap_or(u32::MAX));
                }
                None => without.push(id),
            }
        }
        let taken: std::collections::BTreeSet<u32> = given.values().copied().collect();
        let mut free = (0..limit).filter(|i| !taken.contains(i));
        for id in without {
            let Some(index) = free.next() else { break };
            sqlx::query("UPDATE nodes SET pod_subnet = $1 WHERE id = $2")
                .bind(i64::from(index))
                .bind(id.to_string())
                .execute(&mut *w.tx)
                .await?;
            given.insert(id, index);
        }
        w.commit().await?;
        Ok(given)
    }

    /// Records the address `cluster` reaches a node at, unless it has one already; returns the
    /// address it has.
    pub async fn set_node_address(
        &self,
        tenant: TenantId,
        node: NodeId,
        cluster: ClusterId,
        address: std::net::IpAddr,
    ) -> Result<std::net::IpAddr> {
        let mut w = self.write(tenant).await?;
        let current = w.node(tenant, &Key::Id(node)).await?;
        in_cluster(&current, cluster)?;
        if let Some(existing) = current.address {
            return Ok(existing);
        }
        sqlx::query("UPDATE nodes SET address = $1 WHERE id = $2")
            .bind(address.to_string())
            .bind(node.to_string())
            .execute(&mut *w.tx)
            .await?;
        let detail =
            json!({ "address": address, "cluster": current.cluster.as_ref().map(|c| &c.name) });
        w.commit_by_controller(tenant, "node.address_chosen", &current, detail)
            .await?;
        Ok(address)
    }

    /// Records that a leaving node's drain began now, unless it began before; returns when it
    /// began.
    pub async fn start_drain(
        &self,
        tenant: TenantId,
        node: NodeId,
    ) -> Result<time::OffsetDateTime> {
        let mut w = self.write(tenant).await?;
        let current = w.node(tenant, &Key::Id(node)).await?;
        let started: Option<i64> =
            sqlx::query_scalar("SELECT drain_started_at FROM nodes WHERE id = $1")
                .bind(node.to_string())
                .fetch_one(&mut *w.tx)
                .await?;
        if let Some(ms) = started {
            return Ok(crate::from_ms(ms));
        }
        let now = now_ms();
        sqlx::query("UPDATE nodes SET drain_started_at = $1 WHERE id = $2")
            .bind(now)
            .bind(node.to_string())
            .execute(&mut *w.tx)
            .await?;
        let cluster = current.cluster.as_ref().map(|c| &c.name);
        let detail = json!({ "cluster": cluster });
        w.commit_by_controller(tenant, "node.draining", &current, detail)
            .await?;
        Ok(crate::from_ms(now))
    }

    /// Records that a node is drained, or (`gave_up`) that the engine stopped trying.
    pub async fn finish_drain(&self, tenant: TenantId, node: NodeId, gave_up: bool) -> Result<()> {
        let mut w = self.write(tenant).await?;
        let current = w.node(tenant, &Key::Id(node)).await?;
        sqlx::query("UPDATE nodes SET drained = 1 WHERE id = $1")
            .bind(node.to_string())
            .execute(&mut *w.tx)
            .await?;
        let cluster = current.cluster.as_ref().map(|c| &c.name);
        let detail = json!({ "cluster": cluster, "gave_up": gave_up });
        w.commit_by_controller(tenant, "node.drained", &current, detail)
            .await
    }

    /// Records that a node drained for a change takes pods again (it was uncordoned).
    pub async fn uncordoned(&self, tenant: TenantId, node: NodeId) -> Result<()> {
        let mut w = self.write(tenant).await?;
        let current = w.node(tenant, &Key::Id(node)).await?;
        sqlx::query("UPDATE nodes SET drain_started_at = NULL, drained = 0 WHERE id = $1")
            .bind(node.to_string())
            .execute(&mut *w.tx)
            .await?;
        let cluster = current.cluster.as_ref().map(|c| &c.name);
        let detail = json!({ "cluster": cluster });
        w.commit_by_controller(tenant, "node.uncordoned", &current, detail)
            .await
    }

    /// Sets a node's role, etcd membership and certificates, while it is in `cluster`.
    pub async fn set_node_engine(
        &self,
        tenant: TenantId,
        node: NodeId,
        cluster: ClusterId,
        role: Option<NodeRole>,
        etcd: Option<&Membership>,
        certs: Option<&NodeCerts>,
    ) -> Result<()> {
        let mut w = self.write(tenant).await?;
        let current = w.node(tenant, &Key::Id(node)).await?;
        in_cluster(&current, cluster)?;
        sqlx::query("UPDATE nodes SET role = $1, etcd = $2, certs = $3 WHERE id = $4")
            .bind(role.map(role_str))
            .bind(etcd.map(to_json))
            .bind(certs.map(|c| self.seal("nodes", "certs", &node.to_string(), &to_json(c))))
            .bind(node.to_string())
            .execute(&mut *w.tx)
            .await?;
        if current.role != role {
            w.event(
                tenant,
                &Actor::controller(),
                node_event(
                    "node.role_changed",
                    &current,
                    json!({ "from": current.role, "to": role }),
                ),
            )
            .await?;
        }
        w.commit().await
    }

    /// Publishes a new plan for a node: the generation grows by one, `sign` turns it into the
    /// stored signed plan. Refused unless the node is still where the engine thinks: in
    /// `cluster`, or (`None`) in no cluster.
    pub async fn publish_plan(
        &self,
        tenant: TenantId,
        node: NodeId,
        cluster: Option<ClusterId>,
        hashes: PlanHashes<'_>,
        version: Option<&KubernetesVersion>,
        sign: impl FnOnce(u64) -> std::result::Result<String, String>,
    ) -> Result<u64> {
        let PlanHashes {
            plan: plan_hash,
            restart: restart_hash,
        } = hashes;
        let mut w = self.write(tenant).await?;
        let current = w.node(tenant, &Key::Id(node)).await?;
        if current.cluster.as_ref().map(|c| c.id) != cluster {
            return Err(StoreError::InvalidNodeState {
                node: current.name.to_string(),
                state: "moved by another request",
                action: "given a plan",
            });
        }
        let generation = current.plan.as_ref().map_or(0, |p| p.generation) + 1;
        let signed = sign(generation).map_err(|e| StoreError::Invalid(qb_api::InvalidValue(e)))?;
        let done = sqlx::query(
            "UPDATE nodes SET plan_generation = $1, plan = $2, plan_hash = $3, plan_version = $6, plan_restart_hash = $7 WHERE id = $4 AND plan_generation = $5",
        )
        .bind(i64::try_from(generation).unwrap_or(i64::MAX))
        .bind(self.seal("nodes", "plan", &node.to_string(), &signed))
        .bind(plan_hash)
        .bind(node.to_string())
        .bind(i64::try_from(generation - 1).unwrap_or(i64::MAX))
        .bind(version.map(KubernetesVersion::as_str))
        .bind(restart_hash)
        .execute(&mut *w.tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::changed_meanwhile(&current, "given a plan"));
        }
        let leaving = current.state == NodeState::Detaching;
        let detail = json!({ "generation": generation, "leaving": leaving, "version": version });
        w.commit_by_controller(tenant, "node.plan_published", &current, detail)
            .await?;
        Ok(generation)
    }

    /// Records that a node's published plan (still `plan_hash`) runs `version` too: a new
    /// version of its cluster that leaves its plan as it was.
    pub async fn set_plan_version(
        &self,
        tenant: TenantId,
        node: NodeId,
        plan_hash: &str,
        version: &KubernetesVersion,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE nodes SET plan_version = $1 WHERE tenant_id = $2 AND id = $3 AND plan_hash = $4",
        )
        .bind(version.as_str())
        .bind(tenant.to_string())
        .bind(node.to_string())
        .bind(plan_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Nodes in no cluster whose last plan was not a wipe (their cluster was deleted while
    /// they ran it): the engine sends them one.
    pub async fn unwiped_pool_nodes(&self) -> Result<Vec<(TenantId, Node)>> {
        let rows = sqlx::query(&format!(
            "{NODE_SELECT} WHERE n.cluster_id IS NULL AND n.state = 'authorized' \
             AND n.plan IS NOT NULL AND n.plan_hash <> $1 ORDER BY n.id"
        ))
        .bind(WIPE_PLAN_HASH)
        .fetch_all(&self.pool)
        .await?;
        rows::with_tenant(&rows, rows::node)
    }

    /// The node's current signed plan and its generation, for its agent.
    pub async fn node_plan(&self, tenant: TenantId, node: NodeId) -> Result<Option<(u64, String)>> {
        let row =
            sqlx::query("SELECT plan_generation, plan FROM nodes WHERE tenant_id = $1 AND id = $2")
                .bind(tenant.to_string())
                .bind(node.to_string())
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| StoreError::not_found("node", node))?;
        let generation: i64 = row.try_get("plan_generation")?;
        let plan: Option<String> = row.try_get("plan")?;
        let plan = plan
            .map(|p| self.unseal("node plan", ("nodes", "plan", &node.to_string()), &p))
            .transpose()?;
        Ok(plan.map(|p| (u64::try_from(generation).unwrap_or_default(), p)))
    }

    /// Records what the node's agent last reported about its plan. No event: reports are
    /// progress, not changes.
    pub async fn record_plan_report(
        &self,
        tenant: TenantId,
        node: NodeId,
        report: &PlanReport,
    ) -> Result<()> {
        let mut w = self.write(tenant).await?;
        sqlx::query("UPDATE nodes SET plan_report = $1 WHERE tenant_id = $2 AND id = $3")
            .bind(to_json(report))
            .bind(tenant.to_string())
            .bind(node.to_string())
            .execute(&mut *w.tx)
            .await?;
        w.commit().await
    }

    /// Stores a preflight run of `nodes`; an event says whether it passed.
    pub async fn save_preflight(
        &self,
        tenant: TenantId,
        report: &PreflightReport,
        nodes: &[NodeId],
    ) -> Result<()> {
        let mut w = self.write(tenant).await?;
        let cluster = w.cluster(tenant, &Key::Id(report.cluster.id)).await?;
        sqlx::query(
            "INSERT INTO preflights (id, tenant_id, cluster_id, at, passed, nodes, report) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(report.id.to_string())
        .bind(tenant.to_string())
        .bind(cluster.id.to_string())
        .bind(now_ms())
        .bind(i64::from(report.passed))
        .bind(to_json(&nodes))
        .bind(to_json(report))
        .execute(&mut *w.tx)
        .await?;
        let action = if report.passed {
            "cluster.preflight_passed"
        } else {
            "cluster.preflight_failed"
        };
        let problems: Vec<&String> = report.problems.iter().take(20).collect();
        let detail = json!({
            "preflight": report.id,
            "duration_ms": report.duration_ms,
            "problems": problems
        });
        let event = cluster_event(action, &cluster, detail);
        w.commit_with_event(tenant, &Actor::controller(), event)
            .await
    }

    /// The newest preflight run of a cluster, with the nodes it covered.
    pub async fn latest_preflight(
        &self,
        tenant: TenantId,
        cluster: ClusterId,
    ) -> Result<Option<(PreflightReport, Vec<NodeId>)>> {
        let row = sqlx::query(
            "SELECT report, nodes FROM preflights WHERE tenant_id = $1 AND cluster_id = $2 ORDER BY at DESC, id DESC LIMIT 1",
        )
        .bind(tenant.to_string())
        .bind(cluster.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok((
                rows::json("preflight report", &row.try_get::<String, _>("report")?)?,
                rows::json("preflight nodes", &row.try_get::<String, _>("nodes")?)?,
            ))
        })
        .transpose()
    }
}

/// Refuses engine bookkeeping for a node that has left `cluster` meanwhile.
fn in_cluster(node: &Node, cluster: ClusterId) -> Result<()> {
    if node.cluster.as_ref().map(|c| c.id) != Some(cluster) {
        return Err(StoreError::NodeNotInCluster {
            node: node.name.to_string(),
            cluster: cluster.to_string(),
        });
    }
    Ok(())
}

fn role_str(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Master => "master",
        NodeRole::Worker => "worker",
    }
}

/// The manifest of the tenant's bundle for `version`, read in a transaction.
pub(crate) async fn bundle_manifest(
    tx: &mut sqlx::AnyConnection,
    tenant: TenantId,
    version: &KubernetesVersion,
) -> Result<Option<BundleManifest>> {
    let row = sqlx::query(
        "SELECT manifest, imported_at FROM bundles WHERE tenant_id = $1 AND kubernetes_version = $2",
    )
    .bind(tenant.to_string())
    .bind(version.to_string())
    .fetch_optional(tx)
    .await?;
    Ok(row
        .as_ref()
        .map(bundle_row)
        .transpose()?
        .map(|b| b.manifest))
}

fn bundle_row(row: &sqlx::any::AnyRow) -> Result<Bundle> {
    Ok(Bundle {
        manifest: rows::json("bundle manifest", &row.try_get::<String, _>("manifest")?)?,
        imported_at: crate::from_ms(row.try_get("imported_at")?),
    })
}

/// A JSON column read into its type; `None` when it is NULL, an error naming `what` when it
/// does not parse (never skipped: the engine must not take a corrupt row for a missing one).
impl Store {
    /// A sealed JSON column of the row at `place` (table, column, id), opened and read.
    fn sealed_json<T: serde::de::DeserializeOwned>(
        &self,
        row: &AnyRow,
        place: (&str, &str, &str),
        what: &'static str,
    ) -> Result<Option<T>> {
        row.try_get::<Option<String>, _>(place.1)?
            .map(|sealed| rows::json(what, &self.unseal(what, place, &sealed)?))
            .transpose()
    }
}

fn json_column<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    column: &str,
    what: &'static str,
) -> Result<Option<T>> {
    row.try_get::<Option<String>, _>(column)?
        .map(|text| rows::json(what, &text))
        .transpose()
}

impl crate::WriteTx {
    /// [`Store::set_cluster_state`] within this transaction, `current` as read in it.
    pub(crate) async fn set_cluster_state(
        &mut self,
        tenant: TenantId,
        current: &qb_api::Cluster,
        state: ClusterState,
        message: Option<&str>,
    ) -> Result<bool> {
        let stored_state = match current.state {
            ClusterState::Pending => ClusterState::Empty,
            s => s,
        };
        if stored_state == state && current.state_message.as_deref() == message {
            return Ok(false);
        }
        let state_changed_at = if stored_state == state {
            to_ms(current.state_since)
        } else {
            now_ms()
        };
        sqlx::query(
            "UPDATE clusters SET state = $1, state_message = $2, state_changed_at = $3 \
             WHERE tenant_id = $4 AND id = $5",
        )
        .bind(state.as_str())
        .bind(message)
        .bind(state_changed_at)
        .bind(tenant.to_string())
        .bind(current.id.to_string())
        .execute(&mut *self.tx)
        .await?;
        if stored_state != state {
            self.event(
                tenant,
                &Actor::controller(),
                cluster_event(
                    "cluster.state_changed",
                    current,
                    json!({ "from": current.state, "to": state, "message": message }),
                ),
            )
            .await?;
        }
        Ok(true)
    }
}
