//! Clusters, and moving nodes between the pool and clusters.

use std::collections::BTreeMap;

use qb_api::{
    AddonStatus, AttachTarget, BundleManifest, Cidr, Cluster, ClusterDetail, ClusterId, ClusterRef,
    ClusterState, CreateCluster, InvalidValue, KubernetesVersion, MasterCount, Name, Node, NodeId,
    NodeMove, NodeName, NodeRole, NodeState, Page, TenantId, UpdateCluster,
};
use serde_json::json;
use sqlx::Row as _;

use crate::events::NewEvent;
use crate::nodes::{NODE_SELECT, node_event, to_json};
use crate::{Actor, Key, Result, Store, StoreError, WriteTx, is_unique_violation, now_ms, rows};

/// A cluster's specification, checked: defaults filled in, ranges disjoint, roles consistent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    pub name: Name,
    pub kubernetes_version: KubernetesVersion,
    pub pod_cidr: Cidr,
    pub service_cidr: Cidr,
    pub masters: MasterCount,
    pub roles: BTreeMap<NodeName, NodeRole>,
    pub taint_masters: bool,
}

/// Why a cluster request cannot be accepted, before anything is stored.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("pod CIDR {pod} and service CIDR {service} overlap")]
    CidrOverlap { pod: Cidr, service: Cidr },
    #[error("{0}")]
    Invalid(String),
}

impl TryFrom<CreateCluster> for ClusterSpec {
    type Error = SpecError;

    fn try_from(req: CreateCluster) -> Result<Self, SpecError> {
        let default_cidr = |s: &str| s.parse::<Cidr>().expect("default CIDRs are valid");
        let pod_cidr = req
            .pod_cidr
            .unwrap_or_else(|| default_cidr(CreateCluster::DEFAULT_POD_CIDR));
        let service_cidr = req
            .service_cidr
            .unwrap_or_else(|| default_cidr(CreateCluster::DEFAULT_SERVICE_CIDR));
        if pod_cidr.overlaps(&service_cidr) {
            return Err(SpecError::CidrOverlap {
                pod: pod_cidr,
                service: service_cidr,
            });
        }
        if pod_cidr.net().addr().is_ipv4() != service_cidr.net().addr().is_ipv4() {
            return Err(SpecError::Invalid(
                "pod and service CIDRs must be of the same IP family".to_owned(),
            ));
        }
        let named_masters = req
            .roles
            .values()
            .filter(|r| **r == NodeRole::Master)
            .count();
        match req.masters {
            MasterCount::Count(n) if named_masters > usize::from(n) => {
                return Err(SpecError::Invalid(format!(
                    "roles name {named_masters} masters but the cluster has {n}"
                )));
            }
            _ => {}
        }
        if req.roles.len() > 64 {
            return Err(SpecError::Invalid(
                "roles may name at most 64 nodes".to_owned(),
            ));
        }
        Ok(Self {
            name: req.name,
            kubernetes_version: req
                .kubernetes_version
                .unwrap_or_else(KubernetesVersion::default_version),
            pod_cidr,
            service_cidr,
            masters: req.masters,
            roles: req.roles,
            taint_masters: req.taint_masters,
        })
    }
}

/// Refuses a snapshot schedule out of bounds (before anything else of a change is made).
pub fn check_snapshot_schedule(change: &UpdateCluster) -> Result<()> {
    if change
        .snapshot_interval_minutes
        .is_some_and(|m| m > MAX_SNAPSHOT_INTERVAL)
    {
        return Err(StoreError::Invalid(InvalidValue(format!(
            "snapshot_interval_minutes must be at most {MAX_SNAPSHOT_INTERVAL} (a week), or 0 for no scheduled snapshots"
        ))));
    }
    if change
        .snapshot_retention
        .is_some_and(|n| !(1..=MAX_SNAPSHOT_RETENTION).contains(&n))
    {
        return Err(StoreError::Invalid(InvalidValue(format!(
            "snapshot_retention must be from 1 to {MAX_SNAPSHOT_RETENTION}"
        ))));
    }
    Ok(())
}

/// The longest time between scheduled snapshots, in minutes: a week.
pub const MAX_SNAPSHOT_INTERVAL: u32 = 7 * 24 * 60;
/// The most scheduled snapshots a cluster keeps.
pub const MAX_SNAPSHOT_RETENTION: u32 = 1000;

const CLUSTER_SELECT: &str = "SELECT c.*, \
     (SELECT COUNT(*) FROM nodes n WHERE n.cluster_id = c.id) AS node_count FROM clusters c";

impl Store {
    /// Creates an empty cluster.
    pub async fn create_cluster(
        &self,
        tenant: TenantId,
        spec: &ClusterSpec,
        actor: &Actor,
    ) -> Result<Cluster> {
        let id = ClusterId::new();
        let now = now_ms();
        let mut w = self.write(tenant).await?;
        sqlx::query(
            "INSERT INTO clusters (id, tenant_id, name, kubernetes_version, pod_cidr, service_cidr, masters, roles, taint_masters, created_at, state_changed_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(id.to_string())
        .bind(tenant.to_string())
        .bind(spec.name.as_str())
        .bind(spec.kubernetes_version.as_str())
        .bind(spec.pod_cidr.to_string())
        .bind(spec.service_cidr.to_string())
        .bind(spec.masters.to_string())
        .bind(to_json(&spec.roles))
        .bind(i64::from(spec.taint_masters))
        .bind(now)
        .bind(now)
        .execute(&mut *w.tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::NameTaken { kind: "cluster", name: spec.name.to_string() }
            } else {
                e.into()
            }
        })?;
        let cluster = w.cluster(tenant, &Key::Id(id)).await?;
        w.commit_with_event(
            tenant,
            actor,
            cluster_event(
                "cluster.created",
                &cluster,
                json!({
                    "kubernetes_version": cluster.kubernetes_version,
                    "pod_cidr": cluster.pod_cidr,
                    "service_cidr": cluster.service_cidr,
                    "masters": cluster.masters,
                    "roles": cluster.roles,
                    "taint_masters": cluster.taint_masters,
                }),
            ),
        )
        .await?;
        Ok(cluster)
    }

    /// Moves a cluster to another Kubernetes version, whose bundle must be imported; `check`
    /// says whether the move from the current bundle (if it is imported) to the new one is
    /// allowed, and why not. The engine rolls the new version out. Asking for the version the
    /// cluster has changes nothing.
    pub async fn upgrade_cluster(
        &self,
        tenant: TenantId,
        key: &Key<ClusterId>,
        to: &KubernetesVersion,
        check: impl FnOnce(Option<&BundleManifest>, &BundleManifest) -> std::result::Result<(), String>,
        actor: &Actor,
    ) -> Result<Cluster> {
        let mut w = self.write(tenant).await?;
        let cluster = w.cluster(tenant, key).await?;
        let from = cluster.kubernetes_version.clone();
        if from == *to {
            return Ok(cluster);
        }
        let Some(target) = crate::engine::bundle_manifest(&mut w.tx, tenant, to).await? else {
            return Err(StoreError::UpgradeRefused(format!(
                "no release bundle for Kubernetes {to} is imported; import one with `qb bundle import`"
            )));
        };
        // One upgrade at a time: nodes still given an older version would skip one.
        let behind: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM nodes WHERE cluster_id = $1 AND state = 'attached' \
             AND plan_version IS NOT NULL AND plan_version <> $2 ORDER BY name",
        )
        .bind(cluster.id.to_string())
        .bind(from.as_str())
        .fetch_all(&mut *w.tx)
        .await?;
        if !behind.is_empty() {
            return Err(StoreError::UpgradeRefused(format!(
                "cluster {} is still moving to {from}: {} {} not given it yet; upgrade again once every node runs it (`qb cluster show`)",
                cluster.name,
                behind.join(", "),
                if behind.len() == 1 { "was" } else { "were" }
            )));
        }
        let current = crate::engine::bundle_manifest(&mut w.tx, tenant, &from).await?;
        check(current.as_ref(), &target).map_err(StoreError::UpgradeRefused)?;
        sqlx::query("UPDATE clusters SET kubernetes_version = $1 WHERE id = $2 AND tenant_id = $3")
            .bind(to.as_str())
            .bind(cluster.id.to_string())
            .bind(tenant.to_string())
            .execute(&mut *w.tx)
            .await?;
        w.no_longer_ready(tenant, &cluster, &format!("upgrading to {to}"))
            .await?;
        let cluster = w.cluster(tenant, &Key::Id(cluster.id)).await?;
        w.commit_with_event(
            tenant,
            actor,
            cluster_event(
                "cluster.upgraded",
                &cluster,
                json!({ "from": from, "to": to }),
            ),
        )
        .await?;
        Ok(cluster)
    }

    /// Changes the settings of a cluster that need no other bundle (all of `change` but its
    /// version): whether its masters are tainted, whether its rollout is paused, its snapshot
    /// schedule. What is `None` stays as it is; asking for what
    /// the cluster has changes (and records) nothing.
    pub async fn change_cluster_settings(
        &self,
        tenant: TenantId,
        key: &Key<ClusterId>,
        change: &UpdateCluster,
        actor: &Actor,
    ) -> Result<Cluster> {
        check_snapshot_schedule(change)?;
        let mut w = self.write(tenant).await?;
        let cluster = w.cluster(tenant, key).await?;
        let mut changed = serde_json::Map::new();
        let flag = |b: Option<bool>| b.map(i64::from);
        let number = |n: Option<u32>| n.map(i64::from);
        for (column, want, has) in [
            (
                "taint_masters",
                flag(change.taint_masters),
                i64::from(cluster.taint_masters),
            ),
            (
                "rollout_paused",
                flag(change.rollout_paused),
                i64::from(cluster.rollout_paused),
            ),
            (
                "snapshot_interval_minutes",
                number(change.snapshot_interval_minutes),
                i64::from(cluster.snapshot_interval_minutes),
            ),
            (
                "snapshot_retention",
                number(change.snapshot_retention),
                i64::from(cluster.snapshot_retention),
            ),
        ] {
            let Some(want) = want.filter(|want| *want != has) else {
                continue;
            };
            // `column` is one of the names above, never input.
            sqlx::query(&format!(
                "UPDATE clusters SET {column} = $1 WHERE id = $2 AND tenant_id = $3"
            ))
            .bind(want)
            .bind(cluster.id.to_string())
            .bind(tenant.to_string())
            .execute(&mut *w.tx)
            .await?;
            let shown = match column {
                "taint_masters" | "rollout_paused" => (want != 0).into(),
                _ => want.into(),
            };
            changed.insert(column.to_owned(), shown);
        }
        if changed.is_empty() {
            return Ok(cluster);
        }
        let cluster = w.cluster(tenant, &Key::Id(cluster.id)).await?;
        w.commit_with_event(
            tenant,
            actor,
            cluster_event("cluster.changed", &cluster, changed.into()),
        )
        .await?;
        Ok(cluster)
    }

    /// Records the cluster's add-ons as last checked, only when something other than the time
    /// of the check changed (a check every few seconds writes nothing while all is well).
    /// Returns whether it wrote.
    pub async fn set_cluster_addons(
        &self,
        tenant: TenantId,
        cluster: ClusterId,
        addons: &[AddonStatus],
    ) -> Result<bool> {
        let stored: Option<Option<String>> =
            sqlx::query_scalar("SELECT addons FROM clusters WHERE id = $1 AND tenant_id = $2")
                .bind(cluster.to_string())
                .bind(tenant.to_string())
                .fetch_optional(&self.pool)
                .await?;
        let Some(stored) = stored else {
            return Err(StoreError::NotFound {
                kind: "cluster",
                key: cluster.to_string(),
            });
        };
        let stored: Vec<AddonStatus> = match stored {
            Some(text) => rows::json("cluster add-ons", &text)?,
            None => Vec::new(),
        };
        let same = stored.len() == addons.len()
            && stored.iter().zip(addons).all(|(a, b)| {
                (&a.name, &a.version, a.health, &a.message)
                    == (&b.name, &b.version, b.health, &b.message)
            });
        if same {
            return Ok(false);
        }
        sqlx::query("UPDATE clusters SET addons = $1 WHERE id = $2 AND tenant_id = $3")
            .bind(to_json(&addons))
            .bind(cluster.to_string())
            .bind(tenant.to_string())
            .execute(&self.pool)
            .await?;
        Ok(true)
    }

    pub async fn list_clusters(
        &self,
        tenant: TenantId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<Cluster>> {
        let sql =
            format!("{CLUSTER_SELECT} WHERE c.tenant_id = $1 AND c.id > $2 ORDER BY c.id LIMIT $3");
        self.fetch_page(&sql, tenant, after, limit, rows::cluster, |c| {
            c.id.to_string()
        })
        .await
    }

    pub async fn get_cluster(
        &self,
        tenant: TenantId,
        key: &Key<ClusterId>,
    ) -> Result<ClusterDetail> {
        let row = crate::fetch_keyed(&self.pool, tenant, key).await?;
        let cluster = rows::cluster(&row)?;
        let addons: Option<String> = row.try_get("addons")?;
        let addons = match addons {
            Some(text) => rows::json("cluster add-ons", &text)?,
            None => Vec::new(),
        };
        let nodes = sqlx::query(&format!(
            "{NODE_SELECT} WHERE n.cluster_id = $1 ORDER BY n.name"
        ))
        .bind(cluster.id.to_string())
        .fetch_all(&self.pool)
        .await?;
        let nodes = nodes.iter().map(rows::node).collect::<Result<Vec<_>>>()?;
        Ok(ClusterDetail {
            cluster,
            nodes,
            addons,
        })
    }

    /// Deletes a cluster. One that still has nodes is refused unless `force`, which returns its
    /// nodes to the pool in the same transaction.
    pub async fn delete_cluster(
        &self,
        tenant: TenantId,
        key: &Key<ClusterId>,
        force: bool,
        actor: &Actor,
    ) -> Result<Vec<Node>> {
        let mut w = self.write(tenant).await?;
        let cluster = w.cluster(tenant, key).await?;
        let members = w.cluster_nodes(cluster.id).await?;
        if !members.is_empty() && !force {
            return Err(StoreError::ClusterNotEmpty {
                cluster: cluster.name.to_string(),
                nodes: cluster.node_count,
            });
        }
        for node in &members {
            w.set_node_state(node, NodeState::Authorized, None).await?;
            // The engine sends pool nodes that still run a cluster's plan a plan that wipes it.
            w.forget_cluster_part(node.id).await?;
            let detail = json!({ "cluster": cluster.name, "reason": "cluster deleted" });
            w.event(tenant, actor, node_event("node.detached", node, detail))
                .await?;
        }
        sqlx::query("DELETE FROM preflights WHERE cluster_id = $1")
            .bind(cluster.id.to_string())
            .execute(&mut *w.tx)
            .await?;
        // Its snapshots go with it (their chunks by cascade): there is nothing to restore
        // them into.
        sqlx::query("DELETE FROM etcd_snapshots WHERE cluster_id = $1")
            .bind(cluster.id.to_string())
            .execute(&mut *w.tx)
            .await?;
        sqlx::query("DELETE FROM clusters WHERE id = $1")
            .bind(cluster.id.to_string())
            .execute(&mut *w.tx)
            .await?;
        let names: Vec<&NodeName> = members.iter().map(|n| &n.name).collect();
        w.event(
            tenant,
            actor,
            cluster_event(
                "cluster.deleted",
                &cluster,
                json!({ "force": force, "returned_to_pool": names }),
            ),
        )
        .await?;
        let returned = w.reload(tenant, &members).await?;
        w.commit().await?;
        Ok(returned)
    }

    /// Moves nodes from the pool into a cluster: all of them or none.
    pub async fn attach(
        &self,
        tenant: TenantId,
        key: &Key<ClusterId>,
        target: &AttachTarget,
        actor: &Actor,
    ) -> Result<NodeMove> {
        let mut w = self.write(tenant).await?;
        let cluster = w.cluster(tenant, key).await?;
        let chosen: Vec<Node> = match target {
            AttachTarget::Named(names) => {
                let mut chosen = Vec::with_capacity(names.len());
                for name in names {
                    let node = w.node(tenant, &Key::Name(name.to_string())).await?;
                    if node.state != NodeState::Authorized {
                        let action = if node.cluster.as_ref().is_some_and(|c| c.id == cluster.id) {
                            "attached again"
                        } else {
                            "attached (only authorized nodes in the pool can be)"
                        };
                        return Err(StoreError::invalid_state(&node, action));
                    }
                    chosen.push(node);
                }
                chosen
            }
            AttachTarget::FromPool { count, selector } => {
                let rows = sqlx::query(&format!(
                    "{NODE_SELECT} WHERE n.tenant_id = $1 AND n.state = 'authorized' ORDER BY n.name"
                ))
                .bind(tenant.to_string())
                .fetch_all(&mut *w.tx)
                .await?;
                let pool = rows.iter().map(rows::node).collect::<Result<Vec<_>>>()?;
                let matching: Vec<Node> = pool
                    .into_iter()
                    .filter(|n| selector.as_ref().is_none_or(|s| s.matches(&n.labels)))
                    .collect();
                if matching.len() < *count as usize {
                    return Err(StoreError::PoolExhausted {
                        wanted: *count,
                        available: u32::try_from(matching.len()).unwrap_or(u32::MAX),
                        selector: selector.is_some(),
                    });
                }
                matching.into_iter().take(*count as usize).collect()
            }
        };
        if cluster.state == ClusterState::Empty {
            // Its first nodes: it shows as `pending` from now on.
            sqlx::query("UPDATE clusters SET state_changed_at = $1 WHERE id = $2")
                .bind(now_ms())
                .bind(cluster.id.to_string())
                .execute(&mut *w.tx)
                .await?;
        }
        let message = format!("attaching {}", names_of(&chosen));
        w.no_longer_ready(tenant, &cluster, &message).await?;
        for node in &chosen {
            w.set_node_state(node, NodeState::Attached, Some(cluster.id))
                .await?;
            w.event(
                tenant,
                actor,
                node_event("node.attached", node, json!({ "cluster": cluster.name })),
            )
            .await?;
        }
        w.commit_move(tenant, actor, "cluster.nodes_attached", cluster, &chosen)
            .await
    }

    /// Starts returning named nodes of a cluster to the pool: they become `detaching` until their
    /// components are removed. All of them or none. `force`: the engine does not wait for the
    /// wipe of a host whose agent is offline (it wipes itself when it comes back).
    pub async fn detach(
        &self,
        tenant: TenantId,
        key: &Key<ClusterId>,
        names: &[NodeName],
        force: bool,
        actor: &Actor,
    ) -> Result<NodeMove> {
        let mut w = self.write(tenant).await?;
        let cluster = w.cluster(tenant, key).await?;
        let mut chosen = Vec::with_capacity(names.len());
        for name in names {
            let node = w.node(tenant, &Key::Name(name.to_string())).await?;
            if node.cluster.as_ref().is_none_or(|c| c.id != cluster.id) {
                return Err(StoreError::NodeNotInCluster {
                    node: node.name.to_string(),
                    cluster: cluster.name.to_string(),
                });
            }
            if node.state != NodeState::Attached {
                return Err(StoreError::invalid_state(&node, "detached"));
            }
            chosen.push(node);
        }
        let message = format!("detaching {}", names_of(&chosen));
        w.no_longer_ready(tenant, &cluster, &message).await?;
        for node in &chosen {
            w.set_node_state(node, NodeState::Detaching, Some(cluster.id))
                .await?;
            sqlx::query(
                "UPDATE nodes SET detach_force = $1, drain_started_at = NULL, drained = 0 \
                 WHERE id = $2",
            )
            .bind(i64::from(force))
            .bind(node.id.to_string())
            .execute(&mut *w.tx)
            .await?;
            w.event(
                tenant,
                actor,
                node_event(
                    "node.detaching",
                    node,
                    json!({ "cluster": cluster.name, "force": force }),
                ),
            )
            .await?;
        }
        w.commit_move(tenant, actor, "cluster.nodes_detached", cluster, &chosen)
            .await
    }
}

impl WriteTx {
    pub(crate) async fn cluster(
        &mut self,
        tenant: TenantId,
        key: &Key<ClusterId>,
    ) -> Result<Cluster> {
        let row = crate::fetch_keyed(&mut *self.tx, tenant, key).await?;
        rows::cluster(&row)
    }

    async fn cluster_nodes(&mut self, cluster: ClusterId) -> Result<Vec<Node>> {
        let rows = sqlx::query(&format!(
            "{NODE_SELECT} WHERE n.cluster_id = $1 ORDER BY n.name"
        ))
        .bind(cluster.to_string())
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(rows::node).collect()
    }

    async fn reload(&mut self, tenant: TenantId, nodes: &[Node]) -> Result<Vec<Node>> {
        let mut out = Vec::with_capacity(nodes.len());
        for node in nodes {
            out.push(self.node(tenant, &Key::<NodeId>::Id(node.id)).await?);
        }
        Ok(out)
    }

    /// A ready cluster is ready no longer once the user changed it (nodes on their way in or
    /// out, a new version): said with the change itself, so that no crash before the engine's
    /// next pass leaves it shown ready.
    async fn no_longer_ready(
        &mut self,
        tenant: TenantId,
        cluster: &Cluster,
        message: &str,
    ) -> Result<()> {
        if cluster.state == ClusterState::Ready {
            self.set_cluster_state(tenant, cluster, ClusterState::Installing, Some(message))
                .await?;
        }
        Ok(())
    }

    /// Records that `nodes` moved into or out of `cluster` (`action`) and commits; returns them
    /// as the move left them.
    async fn commit_move(
        mut self,
        tenant: TenantId,
        actor: &Actor,
        action: &str,
        cluster: Cluster,
        nodes: &[Node],
    ) -> Result<NodeMove> {
        let names: Vec<&NodeName> = nodes.iter().map(|n| &n.name).collect();
        let detail = json!({ "nodes": names });
        self.event(tenant, actor, cluster_event(action, &cluster, detail))
            .await?;
        let moved = self.reload(tenant, nodes).await?;
        self.commit().await?;
        Ok(NodeMove {
            cluster: ClusterRef {
                id: cluster.id,
                name: cluster.name,
            },
            nodes: moved,
        })
    }
}

/// The nodes' names, for a message.
fn names_of(nodes: &[Node]) -> String {
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    names.join(", ")
}

impl crate::Keyed for ClusterId {
    const KIND: &'static str = "cluster";
    const SELECT: &'static str = CLUSTER_SELECT;
    const ALIAS: &'static str = "c";
}

pub(crate) fn cluster_event<'a>(
    action: &'a str,
    cluster: &'a Cluster,
    detail: serde_json::Value,
) -> NewEvent<'a> {
    NewEvent {
        action,
        object_kind: "cluster",
        object_id: cluster.id.to_string(),
        object_name: cluster.name.as_str(),
        detail,
    }
}
