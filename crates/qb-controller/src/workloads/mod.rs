//! Workload health: the pods of every cluster, watched through the tunnel by the replica that
//! runs the engine (one watch per cluster, resumed from its last resource version when the API
//! server ends it, listed afresh when that version is gone), and its nodes and control-plane
//! leases, read every [`POLL_EVERY`]. What they say and the alerts they call for (crash-looping,
//! OOM-killed and long-Pending pods, nodes not Ready, components without a leader) are in
//! [`health`].

pub mod health;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qb_api::{ClusterId, ClusterState, NodeId, TenantId};
use qb_store::{Store, WantedAlert};
use time::OffsetDateTime;

use crate::agents::Agents;
use crate::proxy::KubeProxy;
use crate::proxy::upstream::ClusterUpstream;
pub use health::{ControlPlane, PodHealth};

/// How often the clusters to watch are looked for.
const SUPERVISE_EVERY: Duration = Duration::from_secs(5);
/// The pause before a failed watch is tried again.
const RETRY: Duration = Duration::from_secs(5);
/// How long the API server keeps one watch open.
const WATCH_SECONDS: u32 = 240;
/// How often each cluster's nodes and leases are read.
const POLL_EVERY: Duration = Duration::from_secs(15);
/// Where the scheduler's and the controller manager's leader leases are.
pub const LEASES_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";

/// One cluster as last seen.
struct ClusterWatch {
    tenant: TenantId,
    name: String,
    pods: HashMap<String, PodHealth>,
    /// Whether the pods were listed yet (since this replica began to lead).
    listed: bool,
    /// Its nodes and leases, once read.
    control: Option<ControlPlane>,
}

/// Every watched cluster's pods, nodes and leaders.
#[derive(Default)]
pub struct Workloads {
    clusters: Mutex<HashMap<ClusterId, ClusterWatch>>,
}

impl Workloads {
    /// The alerts the pods, nodes and leaders of `tenant`'s clusters call for at `now`.
    pub fn wanted(&self, tenant: TenantId, now: OffsetDateTime) -> Vec<WantedAlert> {
        let clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<WantedAlert> = Vec::new();
        for (id, c) in clusters.iter().filter(|(_, c)| c.tenant == tenant) {
            out.extend(c.pods.values().filter_map(|p| p.alert(&c.name, now)));
            if let Some(control) = &c.control {
                out.extend(control.alerts(&id.to_string(), &c.name));
            }
        }
        out.sort_by(|a, b| a.object_name.cmp(&b.object_name));
        out
    }

    /// The names of `tenant`'s watched clusters whose pods, nodes or leases were not read yet:
    /// what they call for is not known, so their alerts stay as they are.
    pub fn unlisted(&self, tenant: TenantId) -> Vec<String> {
        let clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        clusters
            .values()
            .filter(|c| c.tenant == tenant && !(c.listed && c.control.is_some()))
            .map(|c| c.name.clone())
            .collect()
    }

    fn with_pods(&self, cluster: ClusterId, change: impl FnOnce(&mut HashMap<String, PodHealth>)) {
        let mut clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clusters.get_mut(&cluster) {
            change(&mut c.pods);
        }
    }

    fn listed(&self, cluster: ClusterId, pods: HashMap<String, PodHealth>) {
        let mut clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clusters.get_mut(&cluster) {
            c.pods = pods;
            c.listed = true;
        }
    }

    fn polled(&self, cluster: ClusterId, control: ControlPlane) {
        let mut clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clusters.get_mut(&cluster) {
            c.control = Some(control);
        }
    }
}

/// Keeps one watch per installed cluster of every tenant, until aborted (when this replica
/// stops leading).
pub async fn run(store: Store, agents: Arc<Agents>, workloads: Arc<Workloads>) {
    let proxy = Arc::new(KubeProxy::new(store.clone(), agents));
    // Dropped (and so every watch aborted) when this task is aborted.
    let mut watches = Watches::default();
    loop {
        match installed_clusters(&store).await {
            Ok(installed) => {
                watches.0.retain(|id, w| {
                    let keep = installed.iter().any(|(_, c, _)| c == id) && !w.is_finished();
                    if !keep {
                        w.abort();
                    }
                    keep
                });
                workloads
                    .clusters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|id, _| installed.iter().any(|(_, c, _)| c == id));
                for (tenant, id, name) in installed {
                    watches.0.entry(id).or_insert_with(|| {
                        workloads
                            .clusters
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(id)
                            .or_insert_with(|| ClusterWatch {
                                tenant,
                                name: name.clone(),
                                pods: HashMap::new(),
                                listed: false,
                                control: None,
                            });
                        tokio::spawn(watch_cluster(
                            proxy.clone(),
                            workloads.clone(),
                            tenant,
                            id,
                            name,
                        ))
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the clusters whose pods to watch");
            }
        }
        tokio::time::sleep(SUPERVISE_EVERY).await;
    }
}

/// The watch task of each cluster, aborted when dropped.
#[derive(Default)]
struct Watches(HashMap<ClusterId, tokio::task::JoinHandle<()>>);

impl Drop for Watches {
    fn drop(&mut self) {
        for w in self.0.values() {
            w.abort();
        }
    }
}

/// The clusters to watch, every one with nodes, also while it installs or grows (so a pod's
/// alert does not resolve and fire again around a change): (tenant, id, name).
async fn installed_clusters(
    store: &Store,
) -> Result<Vec<(TenantId, ClusterId, String)>, qb_store::StoreError> {
    let mut out = Vec::new();
    for tenant in store.tenants_with_objects().await? {
        for c in crate::alerts::all_clusters(store, tenant).await? {
            if c.state != ClusterState::Empty {
                out.push((tenant, c.id, c.name.to_string()));
            }
        }
    }
    Ok(out)
}

/// Watches one cluster's pods and polls its nodes and leases, for as long as it runs.
async fn watch_cluster(
    proxy: Arc<KubeProxy>,
    workloads: Arc<Workloads>,
    tenant: TenantId,
    id: ClusterId,
    name: String,
) {
    tokio::join!(
        watch_pods(&proxy, &workloads, tenant, id, &name),
        poll_control_plane(&proxy, &workloads, tenant, id, &name),
    );
}

/// The connections to cluster `id` and the master to ask (why not, in words, when there is
/// none).
pub(crate) async fn master_of(
    proxy: &KubeProxy,
    tenant: TenantId,
    id: ClusterId,
) -> Result<(Arc<ClusterUpstream>, NodeId), String> {
    let upstream = proxy
        .upstream_of(tenant, id)
        .await
        .map_err(|e| e.describe())?;
    let master = *upstream
        .masters()
        .await
        .map_err(|e| e.to_string())?
        .first()
        .ok_or("the cluster has no master")?;
    Ok((upstream, master))
}

/// Reads the nodes and the `kube-system` leases of one cluster every [`POLL_EVERY`].
async fn poll_control_plane(
    proxy: &KubeProxy,
    workloads: &Workloads,
    tenant: TenantId,
    id: ClusterId,
    name: &str,
) {
    let mut warned = false;
    let mut answered = false;
    loop {
        let result: Result<ControlPlane, String> = async {
            let (upstream, master) = master_of(proxy, tenant, id).await?;
            let (nodes, leases) = tokio::try_join!(
                upstream.get(master, "/api/v1/nodes"),
                upstream.get(master, LEASES_PATH),
            )
            .map_err(|e| e.to_string())?;
            Ok(ControlPlane::from_lists(
                &nodes,
                &leases,
                OffsetDateTime::now_utc(),
            ))
        }
        .await;
        match result {
            Ok(control) => {
                workloads.polled(id, control);
                answered = true;
                if warned {
                    tracing::info!(cluster = %name, "reading the cluster's nodes and leases again");
                    warned = false;
                }
            }
            Err(e) if answered && !warned => {
                tracing::warn!(cluster = %name, error = %e, "cannot read the cluster's nodes and leases; trying again");
                warned = true;
            }
            Err(e) => {
                tracing::debug!(cluster = %name, error = %e, "cannot read the cluster's nodes and leases")
            }
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Lists and watches the pods of one cluster for as long as it runs.
async fn watch_pods(
    proxy: &KubeProxy,
    workloads: &Workloads,
    tenant: TenantId,
    id: ClusterId,
    name: &str,
) {
    // The resource version to resume from; `None`: list afresh.
    let mut version: Option<String> = None;
    let mut warned = false;
    // Before its first answer (a cluster still installing), failures are expected.
    let mut answered = false;
    loop {
        let result: Result<(), String> = async {
            let (upstream, master) = master_of(proxy, tenant, id).await?;
            let resume = match &version {
                Some(v) => v.clone(),
                None => {
                    let list = upstream
                        .get(master, "/api/v1/pods")
                        .await
                        .map_err(|e| e.to_string())?;
                    let pods: HashMap<String, PodHealth> = list["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(PodHealth::from_object)
                        .map(|p| (p.uid.clone(), p))
                        .collect();
                    tracing::debug!(cluster = %name, pods = pods.len(), "listed the cluster's pods");
                    answered = true;
                    workloads.listed(id, pods);
                    list["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                }
            };
            version = Some(resume.clone());
            let path = format!(
                "/api/v1/pods?watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={resume}"
            );
            upstream
                .watch(master, &path, |event| {
                    let object = &event["object"];
                    match event["type"].as_str() {
                        Some("ADDED" | "MODIFIED") => {
                            if let Some(pod) = PodHealth::from_object(object) {
                                workloads.with_pods(id, |all| {
                                    all.insert(pod.uid.clone(), pod);
                                });
                            }
                        }
                        Some("DELETED") => {
                            if let Some(uid) = object["metadata"]["uid"].as_str() {
                                workloads.with_pods(id, |all| {
                                    all.remove(uid);
                                });
                            }
                        }
                        // 410 Gone: the version is too old to resume from; list afresh.
                        Some("ERROR") => {
                            version = None;
                            return;
                        }
                        _ => {}
                    }
                    if let Some(v) = object["metadata"]["resourceVersion"].as_str()
                        && version.is_some()
                    {
                        version = Some(v.to_owned());
                    }
                })
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(()) => {
                if warned {
                    tracing::info!(cluster = %name, "watching the cluster's pods again");
                    warned = false;
                }
            }
            Err(e) => {
                if answered && !warned {
                    tracing::warn!(cluster = %name, error = %e, "cannot watch the cluster's pods; trying again every few seconds");
                    warned = true;
                } else if !answered {
                    tracing::debug!(cluster = %name, error = %e, "cannot watch the cluster's pods yet");
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
