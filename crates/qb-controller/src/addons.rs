//! Each installed cluster's add-ons ([`qb_plan::addons`]): applied with server-side apply
//! through a master, as the controller's administrator, and again every [`RECHECK`], so that
//! whatever drifted or was deleted comes back; each add-on's health is its Deployment's. What
//! was found is recorded on the cluster (only when it changed) for the API, CLI and UI.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qb_api::{AddonHealth, AddonStatus, ClusterId, TenantId};
use qb_plan::addons::Addon;
use qb_plan::render::ClusterInput;
use qb_store::{Store, StoreError};
use serde_json::Value;
use time::OffsetDateTime;

use crate::agents::Agents;
use crate::proxy::KubeProxy;
use crate::proxy::upstream::ClusterUpstream;

/// How often each cluster's add-ons are applied and checked.
pub const RECHECK: Duration = Duration::from_secs(5);
/// How long applying and checking a cluster's add-ons may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);
/// The field manager of everything qb applies for add-ons.
const FIELD_MANAGER: &str = "qb-addons";

pub struct AddonManager {
    proxy: KubeProxy,
    checked: Mutex<HashMap<ClusterId, Instant>>,
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
        {
            let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
            if checked
                .get(&cluster.id)
                .is_some_and(|at| at.elapsed() < RECHECK)
            {
                return Ok(());
            }
            checked.insert(cluster.id, Instant::now());
        }
        // Bounded: the check runs in the cluster's executor, and an API server that accepts
        // connections but never answers must not hold the cluster's other work.
        let statuses = match tokio::time::timeout(CHECK_TIMEOUT, self.check(tenant, cluster)).await
        {
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

    async fn check(&self, tenant: TenantId, cluster: &ClusterInput) -> Vec<AddonStatus> {
        let rendered = qb_plan::addons::render(cluster);
        let upstream = match self.proxy.upstream_of(tenant, cluster.id).await {
            Ok(upstream) => Ok(upstream),
            Err(e) => Err(e.describe()),
        };
        let mut statuses = Vec::new();
        for addon in rendered {
            let status = match (addon, &upstream) {
                (Err(unavailable), _) => status(
                    unavailable.name,
                    None,
                    AddonHealth::Unavailable,
                    Some(unavailable.reason),
                ),
                (Ok(addon), Err(e)) => {
                    status(addon.name, None, AddonHealth::Failing, Some(e.clone()))
                }
                (Ok(addon), Ok(upstream)) => apply_and_check(upstream, &addon).await,
            };
            statuses.push(status);
        }
        statuses
    }
}

/// Applies `addon` through the first master that takes it, then reads its Deployment.
async fn apply_and_check(upstream: &ClusterUpstream, addon: &Addon) -> AddonStatus {
    let failing = |message: String| status(addon.name, None, AddonHealth::Failing, Some(message));
    let masters = match upstream.masters().await {
        Ok(masters) => masters,
        Err(e) => return failing(e.to_string()),
    };
    let objects: Vec<(String, Value)> = addon
        .objects
        .iter()
        .map(|o| (o.path.clone(), o.manifest.clone()))
        .collect();
    let mut last = String::new();
    for master in masters {
        if let Err(e) = upstream.apply(master, &objects, FIELD_MANAGER).await {
            last = format!("applying {}: {e}", addon.name);
            continue;
        }
        upstream.answered(master);
        let (namespace, name) = &addon.deployment;
        let path = format!("/apis/apps/v1/namespaces/{namespace}/deployments/{name}");
        return match upstream.get(master, &path).await {
            Ok(deployment) => {
                let (health, message) = deployment_health(&deployment);
                status(addon.name, Some(addon.version.clone()), health, message)
            }
            Err(e) => status(
                addon.name,
                Some(addon.version.clone()),
                AddonHealth::Failing,
                Some(format!("reading its Deployment: {e}")),
            ),
        };
    }
    failing(last)
}

/// Ready when the Deployment's controller saw its latest spec and every replica it wants is
/// updated and ready; else how far it is.
fn deployment_health(d: &Value) -> (AddonHealth, Option<String>) {
    let number = |v: &Value| v.as_u64().unwrap_or(0);
    let want = d["spec"]["replicas"].as_u64().unwrap_or(1);
    let status = &d["status"];
    let observed = number(&status["observedGeneration"]) >= number(&d["metadata"]["generation"]);
    let ready = number(&status["readyReplicas"]);
    let updated = number(&status["updatedReplicas"]);
    if observed && ready >= want && updated >= want {
        (AddonHealth::Ready, None)
    } else {
        (
            AddonHealth::Progressing,
            Some(format!(
                "{ready} of {want} replicas ready, {updated} of {want} updated"
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
    fn a_deployment_is_ready_when_every_replica_of_its_latest_spec_is() {
        let d = |generation: u64, observed: u64, ready: u64, updated: u64| {
            serde_json::json!({
                "metadata": {"generation": generation},
                "spec": {"replicas": 2},
                "status": {"observedGeneration": observed, "readyReplicas": ready, "updatedReplicas": updated},
            })
        };
        assert_eq!(
            deployment_health(&d(3, 3, 2, 2)),
            (AddonHealth::Ready, None)
        );
        for (deployment, message) in [
            (d(3, 3, 1, 2), "1 of 2 replicas ready, 2 of 2 updated"),
            (d(4, 3, 2, 2), "2 of 2 replicas ready, 2 of 2 updated"),
            (d(3, 3, 2, 1), "2 of 2 replicas ready, 1 of 2 updated"),
            (
                serde_json::json!({"spec": {"replicas": 2}}),
                "0 of 2 replicas ready, 0 of 2 updated",
            ),
        ] {
            assert_eq!(
                deployment_health(&deployment),
                (AddonHealth::Progressing, Some(message.to_owned())),
                "{deployment}"
            );
        }
    }
}
