//! Nodes and their lifecycle in the pool.

use qb_api::{LabelChange, Labels, Node, NodeFacts, NodeId, NodeName, NodeState, Page, TenantId};
use serde_json::json;

use crate::events::NewEvent;
use crate::{Actor, Key, Result, Store, StoreError, WriteTx, is_unique_violation, now_ms, rows};

/// A node as registration creates it: `pending`, in no cluster.
#[derive(Clone, Debug)]
pub struct NewNode {
    pub name: NodeName,
    pub facts: NodeFacts,
    pub labels: Labels,
}

/// Which nodes to list.
#[derive(Clone, Debug, Default)]
pub struct NodeFilter {
    pub state: Option<NodeState>,
    /// Only nodes of the cluster with this id.
    pub cluster: Option<qb_api::ClusterId>,
}

pub(crate) const NODE_SELECT: &str =
    "SELECT n.*, c.name AS cluster_name FROM nodes n LEFT JOIN clusters c ON c.id = n.cluster_id";

impl Store {
    /// Records a newly registered host as a `pending` node.
    pub async fn insert_node(&self, tenant: TenantId, new: NewNode, actor: &Actor) -> Result<Node> {
        let id = NodeId::new();
        let now = now_ms();
        let mut w = self.write(tenant).await?;
        sqlx::query(
            "INSERT INTO nodes (id, tenant_id, name, state, cluster_id, facts, labels, created_at, updated_at) \
             VALUES ($1, $2, $3, 'pending', NULL, $4, $5, $6, $6)",
        )
        .bind(id.to_string())
        .bind(tenant.to_string())
        .bind(new.name.as_str())
        .bind(to_json(&new.facts))
        .bind(to_json(&new.labels))
        .bind(now)
        .execute(&mut *w.tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::NameTaken { kind: "node", name: new.name.to_string() }
            } else {
                e.into()
            }
        })?;
        w.event(
            tenant,
            actor,
            NewEvent {
                action: "node.registered",
                object_kind: "node",
                object_id: id.to_string(),
                object_name: new.name.as_str(),
                detail: json!({ "hostname": new.facts.hostname }),
            },
        )
        .await?;
        w.commit_node(tenant, id).await
    }

    pub async fn list_nodes(
        &self,
        tenant: TenantId,
        filter: &NodeFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<Node>> {
        let rows = sqlx::query(&format!(
            "{NODE_SELECT} WHERE n.tenant_id = $1 AND n.id > $2 AND ($3 = '' OR n.state = $3) \
             AND ($4 = '' OR n.cluster_id = $4) ORDER BY n.id LIMIT $5"
        ))
        .bind(tenant.to_string())
        .bind(after.unwrap_or(""))
        .bind(filter.state.map(NodeState::as_str).unwrap_or(""))
        .bind(filter.cluster.map(|c| c.to_string()).unwrap_or_default())
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(rows::node).collect::<Result<Vec<_>>>()?;
        Ok(crate::page(items, limit, |n| n.id.to_string()))
    }

    pub async fn get_node(&self, tenant: TenantId, key: &Key<NodeId>) -> Result<Node> {
        let row = crate::fetch_keyed(&self.pool, tenant, key).await?;
        rows::node(&row)
    }

    pub async fn label_node(
        &self,
        tenant: TenantId,
        key: &Key<NodeId>,
        change: &LabelChange,
        actor: &Actor,
    ) -> Result<Node> {
        let mut w = self.write(tenant).await?;
        let mut node = w.node(tenant, key).await?;
        let before = node.labels.clone();
        for k in &change.remove {
            node.labels.remove(k);
        }
        node.labels
            .extend(change.set.iter().map(|(k, v)| (k.clone(), v.clone())));
        let address = |labels: &qb_api::Labels| {
            labels
                .iter()
                .find(|(k, _)| k.as_str() == qb_api::ADDRESS_LABEL)
                .map(|(_, v)| v.clone())
        };
        if let Some(cluster) = &node.cluster
            && address(&before) != address(&node.labels)
        {
            return Err(StoreError::NodeInCluster {
                node: node.name.to_string(),
                cluster: cluster.name.to_string(),
                action: "given another address",
            });
        }
        sqlx::query("UPDATE nodes SET labels = $1, updated_at = $2 WHERE id = $3")
            .bind(to_json(&node.labels))
            .bind(now_ms())
            .bind(node.id.to_string())
            .execute(&mut *w.tx)
            .await?;
        let detail = json!({ "set": change.set, "remove": change.remove });
        w.commit_node_event(tenant, actor, "node.labeled", &node, detail)
            .await
    }

    /// Moves a `pending` node into the pool.
    pub async fn authorize_node(
        &self,
        tenant: TenantId,
        key: &Key<NodeId>,
        actor: &Actor,
    ) -> Result<Node> {
        let mut w = self.write(tenant).await?;
        let node = w.node(tenant, key).await?;
        if node.state != NodeState::Pending {
            return Err(StoreError::invalid_state(&node, "authorized"));
        }
        w.set_node_state(&node, NodeState::Authorized, None).await?;
        w.commit_node_event(tenant, actor, "node.authorized", &node, json!({}))
            .await
    }

    /// Revokes a node's identity. A node in a cluster must leave it first (detach wipes it
    /// and keeps etcd's quorum; a revoked host could not be wiped).
    pub async fn deauthorize_node(
        &self,
        tenant: TenantId,
        key: &Key<NodeId>,
        actor: &Actor,
    ) -> Result<Node> {
        let mut w = self.write(tenant).await?;
        let node = w.node(tenant, key).await?;
        if node.state == NodeState::Deauthorized {
            return Err(StoreError::invalid_state(&node, "deauthorized"));
        }
        if let Some(cluster) = &node.cluster {
            return Err(StoreError::NodeInCluster {
                node: node.name.to_string(),
                cluster: cluster.name.to_string(),
                action: "deauthorized",
            });
        }
        w.set_node_state(&node, NodeState::Deauthorized, None)
            .await?;
        // No certificate of this node is accepted any more, not even after it registers again.
        sqlx::query("UPDATE nodes SET cert_serial = NULL, prev_cert_serial = NULL WHERE id = $1")
            .bind(node.id.to_string())
            .execute(&mut *w.tx)
            .await?;
        let detail = json!({ "previous_state": node.state, "left_cluster": node.cluster.as_ref().map(|c| &c.name) });
        w.commit_node_event(tenant, actor, "node.deauthorized", &node, detail)
            .await
    }

    /// Forgets a `pending` or `deauthorized` node.
    pub async fn delete_node(
        &self,
        tenant: TenantId,
        key: &Key<NodeId>,
        actor: &Actor,
    ) -> Result<()> {
        let mut w = self.write(tenant).await?;
        let node = w.node(tenant, key).await?;
        if !matches!(node.state, NodeState::Pending | NodeState::Deauthorized) {
            return Err(StoreError::invalid_state(&node, "deleted"));
        }
        sqlx::query("DELETE FROM node_metrics WHERE node_id = $1")
            .bind(node.id.to_string())
            .execute(&mut *w.tx)
            .await?;
        sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(node.id.to_string())
            .execute(&mut *w.tx)
            .await?;
        w.commit_with_event(tenant, actor, node_event("node.deleted", &node, json!({})))
            .await
    }

    /// Returns a `detaching` node to the pool once its components are gone.
    pub async fn finish_detach(&self, tenant: TenantId, id: NodeId, actor: &Actor) -> Result<Node> {
        let mut w = self.write(tenant).await?;
        let node = w.node(tenant, &Key::Id(id)).await?;
        if node.state != NodeState::Detaching {
            return Err(StoreError::invalid_state(&node, "returned to the pool"));
        }
        w.set_node_state(&node, NodeState::Authorized, None).await?;
        w.forget_cluster_part(node.id).await?;
        let detail = json!({ "cluster": node.cluster.as_ref().map(|c| &c.name) });
        w.commit_node_event(tenant, actor, "node.detached", &node, detail)
            .await
    }
}

impl WriteTx {
    /// Forgets a node's role, etcd membership, cluster certificates, pod subnet, address and
    /// drain when it leaves a cluster. Its plan generation stays: agents refuse older plans.
    pub(crate) async fn forget_cluster_part(&mut self, node: NodeId) -> Result<()> {
        sqlx::query(
            "UPDATE nodes SET role = NULL, etcd = NULL, certs = NULL, pod_subnet = NULL, \
             address = NULL, detach_force = 0, drain_started_at = NULL, drained = 0 WHERE id = $1",
        )
        .bind(node.to_string())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    pub(crate) async fn node(&mut self, tenant: TenantId, key: &Key<NodeId>) -> Result<Node> {
        let row = crate::fetch_keyed(&mut *self.tx, tenant, key).await?;
        rows::node(&row)
    }

    /// Records that the controller did `action` to `node`, and commits.
    pub(crate) async fn commit_by_controller(
        self,
        tenant: TenantId,
        action: &str,
        node: &Node,
        detail: serde_json::Value,
    ) -> Result<()> {
        let event = node_event(action, node, detail);
        self.commit_with_event(tenant, &Actor::controller(), event)
            .await
    }

    /// Commits, and returns the node as the change left it.
    async fn commit_node(mut self, tenant: TenantId, id: NodeId) -> Result<Node> {
        let node = self.node(tenant, &Key::Id(id)).await?;
        self.commit().await?;
        Ok(node)
    }

    /// Records that `actor` did `action` to `node`, commits, and returns the node as the change
    /// left it.
    async fn commit_node_event(
        mut self,
        tenant: TenantId,
        actor: &Actor,
        action: &str,
        node: &Node,
        detail: serde_json::Value,
    ) -> Result<Node> {
        self.event(tenant, actor, node_event(action, node, detail))
            .await?;
        self.commit_node(tenant, node.id).await
    }

    /// Sets a node's state and cluster, but only if its state is still what `node` says: a
    /// second guard, under the tenant lock, against moving a node twice.
    pub(crate) async fn set_node_state(
        &mut self,
        node: &Node,
        state: NodeState,
        cluster: Option<qb_api::ClusterId>,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE nodes SET state = $1, cluster_id = $2, updated_at = $3 WHERE id = $4 AND state = $5",
        )
        .bind(state.as_str())
        .bind(cluster.map(|c| c.to_string()))
        .bind(now_ms())
        .bind(node.id.to_string())
        .bind(node.state.as_str())
        .execute(&mut *self.tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::changed_meanwhile(node, "moved"));
        }
        Ok(())
    }
}

impl crate::Keyed for NodeId {
    const KIND: &'static str = "node";
    const SELECT: &'static str = NODE_SELECT;
    const ALIAS: &'static str = "n";
}

pub(crate) fn node_event<'a>(
    action: &'a str,
    node: &'a Node,
    detail: serde_json::Value,
) -> NewEvent<'a> {
    NewEvent {
        action,
        object_kind: "node",
        object_id: node.id.to_string(),
        object_name: node.name.as_str(),
        detail,
    }
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("API types always serialize to JSON")
}
