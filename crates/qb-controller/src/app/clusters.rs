//! Clusters: creating and deleting them, moving nodes in and out (a detach that would cost etcd
//! its quorum is refused unless forced), and preflight.

use qb_api::{
    AttachTarget, Cluster, ClusterDetail, ClusterHealth, ClusterId, DeletedCluster, NodeMove,
    NodeName, Page, PageParams, PreflightReport, ProblemCode, UpdateCluster,
};
use qb_store::{ClusterSpec, Key, StoreError};

use super::AppState;
use crate::ApiError;
use crate::auth::Caller;

impl AppState {
    pub async fn list_clusters(
        &self,
        caller: &Caller,
        page: &PageParams,
    ) -> Result<Page<Cluster>, ApiError> {
        Ok(self
            .store
            .list_clusters(caller.tenant(), page.after.as_deref(), page.limit()?)
            .await?)
    }

    pub async fn create_cluster(
        &self,
        caller: &Caller,
        spec: &ClusterSpec,
    ) -> Result<Cluster, StoreError> {
        self.store
            .create_cluster(caller.tenant(), spec, &caller.actor())
            .await
    }

    /// A cluster and its nodes, with their agents' live state.
    pub async fn get_cluster(
        &self,
        caller: &Caller,
        cluster: &Key<ClusterId>,
    ) -> Result<ClusterDetail, StoreError> {
        let mut detail = self.store.get_cluster(caller.tenant(), cluster).await?;
        detail.nodes = self.live_all(detail.nodes).await;
        Ok(detail)
    }

    /// The cluster's health as its API tells it now: its nodes' readiness, its control plane's
    /// leaders and the pods that need attention, read through a master's agent.
    pub async fn cluster_health(
        &self,
        caller: &Caller,
        cluster: &Key<ClusterId>,
    ) -> Result<ClusterHealth, ApiError> {
        let detail = self.store.get_cluster(caller.tenant(), cluster).await?;
        let name = detail.cluster.name.to_string();
        let unavailable = |why: String| {
            ApiError::new(
                ProblemCode::ClusterApiUnavailable,
                format!("cannot read the API of cluster {name}: {why}"),
            )
        };
        let (upstream, master) =
            crate::workloads::master_of(&self.kube_proxy, caller.tenant(), detail.cluster.id)
                .await
                .map_err(unavailable)?;
        let (nodes, leases, pods) = tokio::try_join!(
            upstream.get(master, "/api/v1/nodes"),
            upstream.get(master, crate::workloads::LEASES_PATH),
            upstream.get(master, "/api/v1/pods"),
        )
        .map_err(|e| unavailable(e.to_string()))?;
        Ok(crate::workloads::health::cluster_health(
            &name,
            &nodes,
            &leases,
            &pods,
            time::OffsetDateTime::now_utc(),
        ))
    }

    /// Deletes a cluster; with `force` even one with nodes, which return to the pool.
    pub async fn delete_cluster(
        &self,
        caller: &Caller,
        cluster: &Key<ClusterId>,
        force: bool,
    ) -> Result<DeletedCluster, StoreError> {
        let returned = self
            .store
            .delete_cluster(caller.tenant(), cluster, force, &caller.actor())
            .await?;
        Ok(DeletedCluster {
            returned_to_pool: returned,
        })
    }

    /// Changes a cluster's version and settings, and wakes the engine to roll the change out.
    /// The version goes first: when it is refused, nothing changed.
    pub async fn update_cluster(
        &self,
        caller: &Caller,
        cluster: &Key<ClusterId>,
        change: &UpdateCluster,
    ) -> Result<Cluster, StoreError> {
        // Nothing is changed when any part is refused: the version is checked as it is made.
        qb_store::check_snapshot_schedule(change)?;
        let mut updated = None;
        if let Some(version) = &change.kubernetes_version {
            let cluster = self
                .store
                .upgrade_cluster(
                    caller.tenant(),
                    cluster,
                    version,
                    |from, to| from.map_or(Ok(()), |from| qb_api::check_upgrade(from, to)),
                    &caller.actor(),
                )
                .await?;
            updated = Some(cluster);
        }
        let settings = UpdateCluster {
            kubernetes_version: None,
            ..change.clone()
        };
        if settings != UpdateCluster::default() {
            let key = updated
                .as_ref()
                .map_or_else(|| cluster.clone(), |c: &Cluster| Key::Id(c.id));
            let changed = self
                .store
                .change_cluster_settings(caller.tenant(), &key, &settings, &caller.actor())
                .await?;
            updated = Some(changed);
        }
        self.engine.wake.notify_one();
        match updated {
            Some(cluster) => Ok(cluster),
            None => Ok(self
                .store
                .get_cluster(caller.tenant(), cluster)
                .await?
                .cluster),
        }
    }

    /// Attaches the target's nodes, all or nothing, and wakes the engine to build them in.
    pub async fn attach(
        &self,
        caller: &Caller,
        cluster: &Key<ClusterId>,
        target: &AttachTarget,
    ) -> Result<NodeMove, StoreError> {
        let mut moved = self
            .store
            .attach(caller.tenant(), cluster, target, &caller.actor())
            .await?;
        self.engine.wake.notify_one();
        moved.nodes = self.live_all(moved.nodes).await;
        Ok(moved)
    }

    /// Starts detaching named nodes and wakes the engine to take them out. Unless `force`d, a
    /// detach that would leave etcd without quorum or without members is refused first.
    pub async fn detach(
        &self,
        caller: &Caller,
        cluster: &Key<ClusterId>,
        nodes: &[NodeName],
        force: bool,
    ) -> Result<NodeMove, ApiError> {
        if !force {
            self.refuse_detach_without_quorum(caller, cluster, nodes)
                .await?;
        }
        let mut moved = self
            .store
            .detach(caller.tenant(), cluster, nodes, force, &caller.actor())
            .await?;
        self.engine.wake.notify_one();
        moved.nodes = self.live_all(moved.nodes).await;
        Ok(moved)
    }

    async fn refuse_detach_without_quorum(
        &self,
        caller: &Caller,
        cluster: &Key<ClusterId>,
        names: &[NodeName],
    ) -> Result<(), ApiError> {
        let detail = self.store.get_cluster(caller.tenant(), cluster).await?;
        let ec = self
            .store
            .engine_cluster(caller.tenant(), detail.cluster.id)
            .await?;
        let leaving: Vec<qb_api::NodeId> = ec
            .nodes
            .iter()
            .filter(|n| names.contains(&n.node.name))
            .map(|n| n.node.id)
            .collect();
        crate::engine::membership::detach_is_safe(&self.engine, &ec, &leaving).map_err(|reason| {
            let names: Vec<&str> = names.iter().map(NodeName::as_str).collect();
            ApiError::new(
                ProblemCode::QuorumAtRisk,
                format!(
                    "detaching {} from {} is refused: {reason}; nothing was changed (repeat with force to detach anyway)",
                    names.join(", "),
                    detail.cluster.name
                ),
            )
        })
    }

    /// The cluster's newest preflight run; `None` when it never had one.
    pub async fn latest_preflight(
        &self,
        caller: &Caller,
        cluster: &Key<ClusterId>,
    ) -> Result<Option<PreflightReport>, StoreError> {
        let detail = self.store.get_cluster(caller.tenant(), cluster).await?;
        let latest = self
            .store
            .latest_preflight(caller.tenant(), detail.cluster.id)
            .await?;
        Ok(latest.map(|(report, _)| report))
    }

    /// Runs preflight across the cluster's nodes now; a cluster without nodes has nothing to
    /// check.
    pub async fn run_preflight(
        &self,
        caller: &Caller,
        cluster: &Key<ClusterId>,
    ) -> Result<PreflightReport, ApiError> {
        let detail = self.store.get_cluster(caller.tenant(), cluster).await?;
        if detail.nodes.is_empty() {
            return Err(ApiError::new(
                ProblemCode::ClusterHasNoNodes,
                format!("cluster {} has no nodes to check", detail.cluster.name),
            ));
        }
        Ok(self
            .engine
            .preflight_now(caller.tenant(), detail.cluster.id)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use qb_api::{ClusterState, NodeState};

    use super::*;
    use crate::app::fixture::Fixture;

    /// A bundle of `version` with this etcd, imported.
    async fn import(f: &Fixture, version: &str, etcd: &str) {
        let manifest: qb_api::BundleManifest = serde_json::from_value(serde_json::json!({
            "kubernetes_version": version,
            "artifacts": [{ "name": "etcd", "version": etcd, "sha256": "ab".repeat(32), "size": 3 }],
        }))
        .unwrap();
        f.store
            .import_bundle(f.tenant, &manifest, &qb_store::Actor::controller())
            .await
            .unwrap();
    }

    /// The node gets a plan of `version`, as the engine would give it.
    async fn give(f: &Fixture, node: qb_api::NodeId, cluster: ClusterId, version: &str) {
        let hashes = qb_store::PlanHashes {
            plan: version,
            restart: None,
        };
        let version: qb_api::KubernetesVersion = version.parse().unwrap();
        f.store
            .publish_plan(
                f.tenant,
                node,
                Some(cluster),
                hashes,
                Some(&version),
                |_| Ok("{}".to_owned()),
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_cluster_moves_only_to_an_imported_version_up_and_says_why_not() {
        let f = Fixture::new().await;
        let prod = Key::Name(f.cluster("prod").await.name.to_string());
        import(&f, "1.20.2", "3.4.23").await;
        import(&f, "1.20.1", "3.4.23").await;
        import(&f, "1.20.2+qb.1", "3.5.1").await;
        let to = |v: &str| UpdateCluster {
            kubernetes_version: Some(v.parse().unwrap()),
            ..UpdateCluster::default()
        };
        let refusals = [
            (
                "1.21.0",
                "no release bundle for Kubernetes 1.21.0 is imported; import one with `qb bundle import`",
            ),
            (
                "1.20.1",
                "Kubernetes cannot go down from 1.20.2 to 1.20.1; only up",
            ),
        ];
        for (version, why) in refusals {
            let refused = f
                .app
                .update_cluster(&f.operator, &prod, &to(version))
                .await
                .unwrap_err();
            assert!(
                matches!(&refused, StoreError::UpgradeRefused(m) if m == why),
                "{version}: {refused}"
            );
        }
        // A node that runs 1.20.2.
        let name = f.pending_node("n1").await;
        let node = f
            .app
            .authorize_node(&f.operator, &Key::Name(name.to_string()))
            .await
            .unwrap();
        let target = AttachTarget::Named(vec![name]);
        let cluster = f.app.attach(&f.operator, &prod, &target).await.unwrap();
        give(&f, node.id, cluster.cluster.id, "1.20.2").await;
        f.store
            .set_cluster_state(f.tenant, cluster.cluster.id, ClusterState::Ready, None)
            .await
            .unwrap();
        let upgraded = f
            .app
            .update_cluster(&f.operator, &prod, &to("1.20.2+qb.1"))
            .await
            .unwrap();
        assert_eq!(upgraded.kubernetes_version.as_str(), "1.20.2+qb.1");
        // Ready no longer from the upgrade on, not from the engine's next pass.
        assert_eq!(
            (upgraded.state, upgraded.state_message.as_deref()),
            (ClusterState::Installing, Some("upgrading to 1.20.2+qb.1"))
        );
        // The next upgrade waits until every node was given this one.
        import(&f, "1.20.3+qb.1", "3.5.1").await;
        let refused = f
            .app
            .update_cluster(&f.operator, &prod, &to("1.20.3+qb.1"))
            .await
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "cluster prod is still moving to 1.20.2+qb.1: n1 was not given it yet; upgrade again once every node runs it (`qb cluster show`)"
        );
        give(&f, node.id, cluster.cluster.id, "1.20.2+qb.1").await;
        // etcd 3.5 cannot go back to 3.4.
        let refused = f
            .app
            .update_cluster(&f.operator, &prod, &to("1.20.2"))
            .await
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "etcd cannot go down from 3.5.1 (in 1.20.2+qb.1) to 3.4.23 (in 1.20.2)"
        );
        // The same version again changes nothing; nothing at all is no change either.
        for change in [to("1.20.2+qb.1"), UpdateCluster::default()] {
            let same = f.app.update_cluster(&f.operator, &prod, &change).await;
            assert_eq!(same.unwrap().kubernetes_version.as_str(), "1.20.2+qb.1");
        }
        let filter = qb_store::EventFilter {
            action_prefix: Some("cluster.upgraded".to_owned()),
            ..Default::default()
        };
        let events = f
            .store
            .list_events(f.tenant, &filter, None, 10)
            .await
            .unwrap();
        let details: Vec<_> = events.items.iter().map(|e| e.detail.clone()).collect();
        assert_eq!(
            details,
            [serde_json::json!({ "from": "1.20.2", "to": "1.20.2+qb.1" })]
        );
        assert_eq!(events.items[0].actor, "user:op");
    }

    #[tokio::test]
    async fn settings_change_with_or_without_a_version_and_a_refused_version_changes_none() {
        let f = Fixture::new().await;
        let prod = Key::Name(f.cluster("prod").await.name.to_string());
        let settings = |taint, paused| UpdateCluster {
            taint_masters: taint,
            rollout_paused: paused,
            ..UpdateCluster::default()
        };
        let changed = f
            .app
            .update_cluster(&f.operator, &prod, &settings(Some(true), Some(true)))
            .await
            .unwrap();
        assert!(changed.taint_masters && changed.rollout_paused);
        // The same again, or one left out, changes nothing.
        let same = f
            .app
            .update_cluster(&f.operator, &prod, &settings(Some(true), None))
            .await
            .unwrap();
        assert!(same.taint_masters && same.rollout_paused);
        // A refused version takes the settings asked with it down too.
        let refused = UpdateCluster {
            kubernetes_version: Some("1.21.0".parse().unwrap()),
            ..settings(Some(false), Some(false))
        };
        f.app
            .update_cluster(&f.operator, &prod, &refused)
            .await
            .unwrap_err();
        let resumed = f
            .app
            .update_cluster(&f.operator, &prod, &settings(None, Some(false)))
            .await
            .unwrap();
        assert!(resumed.taint_masters && !resumed.rollout_paused);
        let filter = qb_store::EventFilter {
            action_prefix: Some("cluster.changed".to_owned()),
            ..Default::default()
        };
        let events = f
            .store
            .list_events(f.tenant, &filter, None, 10)
            .await
            .unwrap();
        let details: Vec<_> = events.items.iter().map(|e| e.detail.clone()).collect();
        assert_eq!(
            details,
            [
                serde_json::json!({ "taint_masters": true, "rollout_paused": true }),
                serde_json::json!({ "rollout_paused": false }),
            ]
        );
    }

    #[tokio::test]
    async fn nodes_move_in_and_out_of_a_cluster_and_preflight_needs_some() {
        let f = Fixture::new().await;
        let prod = Key::Name(f.cluster("prod").await.name.to_string());
        let refused = f.app.run_preflight(&f.operator, &prod).await.unwrap_err();
        assert_eq!(refused.0.code, ProblemCode::ClusterHasNoNodes);
        assert_eq!(refused.0.detail, "cluster prod has no nodes to check");
        assert_eq!(
            f.app.latest_preflight(&f.operator, &prod).await.unwrap(),
            None
        );

        let name = f.pending_node("n1").await;
        f.app
            .authorize_node(&f.operator, &Key::Name(name.to_string()))
            .await
            .unwrap();
        let moved = f
            .app
            .attach(&f.operator, &prod, &AttachTarget::Named(vec![name.clone()]))
            .await
            .unwrap();
        assert_eq!(moved.nodes[0].state, NodeState::Attached);
        let detail = f.app.get_cluster(&f.operator, &prod).await.unwrap();
        assert_eq!(detail.nodes.len(), 1);

        let moved = f
            .app
            .detach(&f.operator, &prod, std::slice::from_ref(&name), false)
            .await
            .unwrap();
        assert_eq!(moved.nodes[0].state, NodeState::Detaching);
        let refused = f
            .app
            .delete_cluster(&f.operator, &prod, false)
            .await
            .unwrap_err();
        assert!(
            matches!(refused, StoreError::ClusterNotEmpty { .. }),
            "{refused}"
        );
        let deleted = f
            .app
            .delete_cluster(&f.operator, &prod, true)
            .await
            .unwrap();
        assert_eq!(deleted.returned_to_pool.len(), 1);
    }
}
