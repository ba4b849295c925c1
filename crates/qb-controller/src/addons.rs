//! Each installed cluster's add-ons ([`qb_plan::addons`]): applied with server-side apply
//! through a master, as the controller's administrator, and again every [`RECHECK`], so that
//! whatever drifted or was deleted comes back; each add-on's health is its workload's (a
//! Deployment or a DaemonSet). Every [`PRUNE_EVERY`], objects labelled as an add-on's that no
//! add-on renders any more (an older version's, a removed add-on's) are deleted. What
//! was found is recorded on the cluster (only when it changed) for the API, CLI and UI.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qb_api::{AddonHealth, AddonStatus, ClusterId, TenantId};
use qb_plan::addons::{Addon, INGRESS_NODE_LABEL, WorkloadKind};
use qb_plan::render::ClusterInput;
use qb_store::{Store, StoreError};
use serde_json::Value;
use time::OffsetDateTime;

use crate::agents::Agents;
use crate::proxy::KubeProxy;
use crate::proxy::upstream::{BoxError, ClusterUpstream, is_not_found};

/// How often each cluster's add-ons are applied and checked.
pub const RECHECK: Duration = Duration::from_secs(5);
/// How often each cluster is searched for add-on objects no add-on wants any more.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long applying and checking a cluster's add-ons may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);
/// The field manager of everything qb applies for add-ons.
const FIELD_MANAGER: &str = "qb-addons";

pub struct AddonManager {
    proxy: KubeProxy,
    checked: Mutex<HashMap<ClusterId, Checked>>,
}

/// When a cluster's add-ons were last applied, and when their strays were last looked for.
#[derive(Clone, Copy)]
struct Checked {
    at: Instant,
    pruned: Option<Instant>,
}

impl AddonManager {
    pub fn new(store: Store, agents: Arc<Agents>) -> Self {
        Self {
            proxy: KubeProxy::new(store, agents),
            checked: Mutex::default(),
        }
    }

    /// Applies and checks the add-ons of `cluster` unless that was done less than [`RECHECK`]
    /// ago; records what it found.
    pub async fn reconcile(
        &self,
        store: &Store,
        tenant: TenantId,
        cluster: &ClusterInput,
    ) -> Result<(), StoreError> {
        let prune = {
            let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
            let last = checked.get(&cluster.id).copied();
            if last.is_some_and(|c| c.at.elapsed() < RECHECK) {
                return Ok(());
            }
            // Forget clusters not seen for a while (deleted, or no longer installed).
            checked.retain(|_, c| c.at.elapsed() < RECHECK * 12);
            let pruned = last.and_then(|c| c.pruned);
            checked.insert(
                cluster.id,
                Checked {
                    at: Instant::now(),
                    pruned,
                },
            );
            pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY)
        };
        // Bounded: the check runs in the cluster's executor, and an API server that accepts
        // connections but never answers must not hold the cluster's other work.
        let statuses =
            match tokio::time::timeout(CHECK_TIMEOUT, self.check(tenant, cluster, prune)).await {
                Ok(statuses) => statuses,
                Err(_) => qb_plan::addons::render(cluster)
                    .into_iter()
                    .map(|addon| {
                        let name = match &addon {
                            Ok(a) => a.name,
                            Err(u) => u.name,
                        };
                        status(
                            name,
                            None,
                            AddonHealth::Failing,
                            Some(format!(
                                "the API server did not answer within {CHECK_TIMEOUT:?}"
                            )),
                        )
                    })
                    .collect(),
            };
        for s in &statuses {
            if s.health == AddonHealth::Failing {
                tracing::warn!(cluster = %cluster.name, addon = %s.name, message = ?s.message, "add-on failing");
            }
        }
        if store
            .set_cluster_addons(tenant, cluster.id, &statuses)
            .await?
        {
            let summary: Vec<String> = statuses
                .iter()
                .map(|s| format!("{} {}", s.name, s.health.as_str()))
                .collect();
            tracing::info!(cluster = %cluster.name, addons = %summary.join(", "), "add-ons changed");
        }
        Ok(())
    }

    async fn check(
        &self,
        tenant: TenantId,
        cluster: &ClusterInput,
        prune: bool,
    ) -> Vec<AddonStatus> {
        let rendered = qb_plan::addons::render(cluster);
        let upstream = match self.proxy.upstream_of(tenant, cluster.id).await {
            Ok(upstream) => Ok(upstream),
            Err(e) => Err(e.describe()),
        };
        let mut statuses = Vec::new();
        let mut applied = Vec::new();
        let mut kept = Vec::new();
        for addon in rendered {
            let status = match (addon, &upstream) {
                (Err(unavailable), _) => {
                    kept.push(unavailable.name);
                    status(
                        unavailable.name,
                        None,
                        AddonHealth::Unavailable,
                        Some(unavailable.reason),
                    )
                }
                (Ok(addon), Err(e)) => {
                    status(addon.name, None, AddonHealth::Failing, Some(e.clone()))
                }
                (Ok(addon), Ok(upstream)) => {
                    let status = apply_and_check(upstream, &addon).await;
                    applied.push(addon);
                    status
                }
            };
            statuses.push(status);
        }
        // Only once every add-on was applied: what one failed to apply may look like a stray.
        let all_applied = statuses
            .iter()
            .all(|s| s.health != AddonHealth::Failing || s.version.is_some());
        if prune
            && all_applied
            && let Ok(upstream) = &upstream
        {
            match delete_strays(upstream, &applied, &kept).await {
                Ok(deleted) => {
                    if !deleted.is_empty() {
                        tracing::info!(cluster = %cluster.name, ?deleted, "deleted add-on objects no add-on wants");
                    }
                    let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(c) = checked.get_mut(&cluster.id) {
                        c.pruned = Some(Instant::now());
                    }
                }
                Err(e) => {
                    tracing::warn!(cluster = %cluster.name, error = %e, "looking for add-on objects no add-on wants failed");
                }
            }
        }
        statuses
    }
}

/// Deletes the objects labelled as an add-on's that none of `applied` renders (except those of
/// the add-ons `kept`); their paths.
async fn delete_strays(
    upstream: &ClusterUpstream,
    applied: &[Addon],
    kept: &[&str],
) -> Result<Vec<String>, BoxError> {
    let master = *upstream
        .masters()
        .await?
        .first()
        .ok_or("the cluster has no master")?;
    let mut deleted = Vec::new();
    for (collection, namespaced) in qb_plan::addons::KINDS {
        let path = format!("{collection}?labelSelector={}", qb_plan::addons::SELECTOR);
        let listed = upstream.get(master, &path).await?;
        for stray in qb_plan::addons::strays(collection, *namespaced, &listed, applied, kept) {
            upstream.delete(master, &stray).await?;
            deleted.push(stray);
        }
    }
    Ok(deleted)
}

/// Applies `addon` through the first master that takes it, then reads its Deployment.
async fn apply_and_check(upstream: &ClusterUpstream, addon: &Addon) -> AddonStatus {
    let failing = |message: String| status(addon.name, None, AddonHealth::Failing, Some(message));
    let masters = match upstream.masters().await {
        Ok(masters) => masters,
        Err(e) => return failing(e.to_string()),
    };
    let mut last = String::new();
    'masters: for master in masters {
        // The user's word on what qb leaves to the user.
        let mut live = HashMap::new();
        for (path, _) in &addon.user_annotations {
            match upstream.get(master, path).await {
                Ok(object) => {
                    live.insert(path.clone(), object);
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    last = format!("reading {path}: {e}");
                    continue 'masters;
                }
            }
        }
        let objects = addon.objects_over(&live);
        if let Err(e) = upstream.apply(master, &objects, FIELD_MANAGER).await {
            last = format!("applying {}: {e}", addon.name);
            continue;
        }
        upstream.answered(master);
        return match upstream.get(master, &addon.workload.path()).await {
            Ok(workload) => {
                let (health, message) = workload_health(addon.workload.kind, &workload);
                status(addon.name, Some(addon.version.clone()), health, message)
            }
            Err(e) => status(
                addon.name,
                Some(addon.version.clone()),
                AddonHealth::Failing,
                Some(format!("reading its {:?}: {e}", addon.workload.kind)),
            ),
        };
    }
    failing(last)
}

/// Ready when the workload's controller saw its latest spec and every replica it wants (each
/// node's pod, for a DaemonSet) is updated and ready; else how far it is.
fn workload_health(kind: WorkloadKind, w: &Value) -> (AddonHealth, Option<String>) {
    let number = |v: &Value| v.as_u64().unwrap_or(0);
    let status = &w["status"];
    let observed = number(&status["observedGeneration"]) >= number(&w["metadata"]["generation"]);
    let (want, ready, updated, of) = match kind {
        WorkloadKind::Deployment => (
            w["spec"]["replicas"].as_u64().unwrap_or(1),
            number(&status["readyReplicas"]),
            number(&status["updatedReplicas"]),
            "replicas",
        ),
        WorkloadKind::DaemonSet => (
            number(&status["desiredNumberScheduled"]),
            number(&status["numberReady"]),
            number(&status["updatedNumberScheduled"]),
            "nodes",
        ),
    };
    if !observed {
        return (
            AddonHealth::Progressing,
            Some("its controller has not seen the latest change yet".to_owned()),
        );
    }
    if ready >= want && updated >= want {
        let none = (kind == WorkloadKind::DaemonSet && want == 0).then(|| {
            format!("no node runs it: every node is labelled {INGRESS_NODE_LABEL}=false or cannot take it")
        });
        (AddonHealth::Ready, none)
    } else {
        (
            AddonHealth::Progressing,
            Some(format!(
                "{ready} of {want} {of} ready, {updated} of {want} updated"
            )),
        )
    }
}

fn status(
    name: &str,
    version: Option<String>,
    health: AddonHealth,
    message: Option<String>,
) -> AddonStatus {
    AddonStatus {
        name: name.to_owned(),
        version,
        health,
        message,
        checked_at: OffsetDateTime::now_utc(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_is_ready_when_every_replica_of_its_latest_spec_is() {
        let d = |generation: u64, observed: u64, ready: u64, updated: u64| {
            serde_json::json!({
                "metadata": {"generation": generation},
                "spec": {"replicas": 2},
                "status": {"observedGeneration": observed, "readyReplicas": ready, "updatedReplicas": updated},
            })
        };
        let deployment = |w: &Value| workload_health(WorkloadKind::Deployment, w);
        assert_eq!(deployment(&d(3, 3, 2, 2)), (AddonHealth::Ready, None));
        for (w, message) in [
            (d(3, 3, 1, 2), "1 of 2 replicas ready, 2 of 2 updated"),
            (
                d(4, 3, 2, 2),
                "its controller has not seen the latest change yet",
            ),
            (d(3, 3, 2, 1), "2 of 2 replicas ready, 1 of 2 updated"),
            (
                serde_json::json!({"spec": {"replicas": 2}}),
                "0 of 2 replicas ready, 0 of 2 updated",
            ),
        ] {
            assert_eq!(
                deployment(&w),
                (AddonHealth::Progressing, Some(message.to_owned())),
                "{w}"
            );
        }

        let ds = |desired: u64, ready: u64, updated: u64| {
            serde_json::json!({
                "metadata": {"generation": 1},
                "status": {"observedGeneration": 1, "desiredNumberScheduled": desired,
                           "numberReady": ready, "updatedNumberScheduled": updated},
            })
        };
        let daemon_set = |w: &Value| workload_health(WorkloadKind::DaemonSet, w);
        assert_eq!(daemon_set(&ds(3, 3, 3)), (AddonHealth::Ready, None));
        assert_eq!(
            daemon_set(&ds(3, 2, 3)),
            (
                AddonHealth::Progressing,
                Some("2 of 3 nodes ready, 3 of 3 updated".to_owned())
            )
        );
        let (health, message) = daemon_set(&ds(0, 0, 0));
        assert_eq!(health, AddonHealth::Ready);
        assert!(message.is_some_and(|m| m.contains("qb.io/ingress=false")));
    }
}
