//! Workload health: the pods of every cluster, watched through the tunnel by the
//! replica that runs the engine (one watch per cluster, resumed from its last resource version
//! when the API server ends it, listed afresh when that version is gone), and the alerts they
//! call for:
//!
//! - `pod_crash_looping`: a container waiting in `CrashLoopBackOff`, or restarted twice or
//!   more with its last exit under [`CRASH_WINDOW`] ago (the brief runs between crashes do not
//!   resolve the alert and fire it again);
//! - `pod_pending`: a pod Pending for [`PENDING_FOR`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qb_api::{AlertRule, AlertSeverity, ClusterId, ClusterState, TenantId};
use qb_store::{Store, WantedAlert};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::agents::Agents;
use crate::proxy::KubeProxy;

/// How recent a container's last exit keeps a pod crash-looping.
pub const CRASH_WINDOW: time::Duration = time::Duration::minutes(5);
/// How long a pod may stay Pending before it alerts.
pub const PENDING_FOR: time::Duration = time::Duration::minutes(5);
/// How often the clusters to watch are looked for.
const SUPERVISE_EVERY: Duration = Duration::from_secs(5);
/// The pause before a failed watch is tried again.
const RETRY: Duration = Duration::from_secs(5);
/// How long the API server keeps one watch open.
const WATCH_SECONDS: u32 = 240;

/// One container's restarts and why it last stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerHealth {
    pub name: String,
    pub restarts: u32,
    /// Why it waits, e.g. `CrashLoopBackOff`.
    pub waiting: Option<String>,
    /// Why it last stopped (`Error`, `OOMKilled`, ...), its exit code and when.
    pub last_exit: Option<(String, i32, OffsetDateTime)>,
}

/// What the alert rules need of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodHealth {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: Option<String>,
    pub phase: String,
    pub created: OffsetDateTime,
    pub containers: Vec<ContainerHealth>,
}

impl PodHealth {
    /// From a Pod object as the API server sends it; `None` when it is not one.
    pub fn from_object(pod: &Value) -> Option<Self> {
        let meta = &pod["metadata"];
        let time = |v: &Value| {
            v.as_str()
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        };
        let statuses = pod["status"]["initContainerStatuses"]
            .as_array()
            .into_iter()
            .chain(pod["status"]["containerStatuses"].as_array())
            .flatten();
        Some(Self {
            namespace: meta["namespace"].as_str()?.to_owned(),
            name: meta["name"].as_str()?.to_owned(),
            uid: meta["uid"].as_str()?.to_owned(),
            node: pod["spec"]["nodeName"].as_str().map(str::to_owned),
            phase: pod["status"]["phase"]
                .as_str()
                .unwrap_or("Unknown")
                .to_owned(),
            created: time(&meta["creationTimestamp"])?,
            containers: statuses
                .map(|c| {
                    let last = &c["lastState"]["terminated"];
                    ContainerHealth {
                        name: c["name"].as_str().unwrap_or_default().to_owned(),
                        restarts: c["restartCount"]
                            .as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .unwrap_or(0),
                        waiting: c["state"]["waiting"]["reason"].as_str().map(str::to_owned),
                        last_exit: time(&last["finishedAt"]).map(|at| {
                            (
                                last["reason"].as_str().unwrap_or("Error").to_owned(),
                                last["exitCode"]
                                    .as_i64()
                                    .and_then(|c| i32::try_from(c).ok())
                                    .unwrap_or(0),
                                at,
                            )
                        }),
                    }
                })
                .collect(),
        })
    }

    /// The alert this pod of cluster `cluster` calls for at `now`, if any.
    pub fn alert(&self, cluster: &str, now: OffsetDateTime) -> Option<WantedAlert> {
        let object = format!("{cluster}/{}/{}", self.namespace, self.name);
        let crashing = self.containers.iter().find(|c| {
            c.waiting.as_deref() == Some("CrashLoopBackOff")
                || (c.restarts >= 2
                    && c.last_exit
                        .as_ref()
                        .is_some_and(|(_, _, at)| now - *at < CRASH_WINDOW))
        });
        if let Some(c) = crashing {
            let exit = c
                .last_exit
                .as_ref()
                .map_or_else(String::new, |(reason, code, _)| {
                    format!(", last exit {reason} (code {code})")
                });
            return Some(WantedAlert {
                rule: AlertRule::PodCrashLooping,
                severity: AlertSeverity::Warning,
                object_kind: "pod",
                object_id: self.uid.clone(),
                object_name: object,
                summary: format!(
                    "container {} of pod {}/{} in cluster {cluster} is crash-looping: restarted {} times{exit}",
                    c.name, self.namespace, self.name, c.restarts
                ),
            });
        }
        if self.phase == "Pending" && now - self.created >= PENDING_FOR {
            return Some(WantedAlert {
                rule: AlertRule::PodPending,
                severity: AlertSeverity::Warning,
                object_kind: "pod",
                object_id: self.uid.clone(),
                object_name: object,
                summary: format!(
                    "pod {}/{} in cluster {cluster} has been Pending for {} minutes",
                    self.namespace,
                    self.name,
                    (now - self.created).whole_minutes()
                ),
            });
        }
        None
    }
}

/// The pods of one cluster as last seen.
struct ClusterPods {
    tenant: TenantId,
    name: String,
    pods: HashMap<String, PodHealth>,
    /// Whether the pods were listed yet (since this replica began to lead).
    listed: bool,
}

/// Every watched cluster's pods.
#[derive(Default)]
pub struct Workloads {
    clusters: Mutex<HashMap<ClusterId, ClusterPods>>,
}

impl Workloads {
    /// The alerts the pods of `tenant`'s clusters call for at `now`.
    pub fn wanted(&self, tenant: TenantId, now: OffsetDateTime) -> Vec<WantedAlert> {
        let clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<WantedAlert> = clusters
            .values()
            .filter(|c| c.tenant == tenant)
            .flat_map(|c| c.pods.values().filter_map(|p| p.alert(&c.name, now)))
            .collect();
        out.sort_by(|a, b| a.object_name.cmp(&b.object_name));
        out
    }

    /// The names of `tenant`'s watched clusters whose pods were not listed yet: what their
    /// pods call for is not known, so their alerts stay as they are.
    pub fn unlisted(&self, tenant: TenantId) -> Vec<String> {
        let clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        clusters
            .values()
            .filter(|c| c.tenant == tenant && !c.listed)
            .map(|c| c.name.clone())
            .collect()
    }

    /// The pods of `cluster` as last seen, by namespace and name.
    pub fn pods(&self, cluster: ClusterId) -> Vec<PodHealth> {
        let clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        let mut pods: Vec<PodHealth> = clusters
            .get(&cluster)
            .map(|c| c.pods.values().cloned().collect())
            .unwrap_or_default();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        pods
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
                            .or_insert_with(|| ClusterPods {
                                tenant,
                                name: name.clone(),
                                pods: HashMap::new(),
                                listed: false,
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

/// Lists and watches the pods of one cluster for as long as it runs.
async fn watch_cluster(
    proxy: Arc<KubeProxy>,
    workloads: Arc<Workloads>,
    tenant: TenantId,
    id: ClusterId,
    name: String,
) {
    // The resource version to resume from; `None`: list afresh.
    let mut version: Option<String> = None;
    let mut warned = false;
    // Before its first answer (a cluster still installing), failures are expected.
    let mut answered = false;
    loop {
        let result: Result<(), String> = async {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(phase: &str, created: &str, containers: Value) -> PodHealth {
        PodHealth::from_object(&json!({
            "metadata": {"namespace": "default", "name": "web-1", "uid": "u1",
                         "creationTimestamp": created, "resourceVersion": "7"},
            "spec": {"nodeName": "host-1"},
            "status": {"phase": phase, "containerStatuses": containers},
        }))
        .expect("a pod")
    }

    fn at(t: &str) -> OffsetDateTime {
        OffsetDateTime::parse(t, &Rfc3339).unwrap()
    }

    #[test]
    fn pods_alert_while_crash_looping_or_long_pending_and_not_otherwise() {
        let now = at("2026-12-06T10:00:00Z");
        let looping = pod(
            "Running",
            "2026-12-06T09:00:00Z",
            json!([{"name": "app", "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                                                 "finishedAt": "2026-12-06T09:59:30Z"}}}]),
        );
        let alert = looping.alert("web", now).expect("crash-looping");
        assert_eq!(
            (alert.rule, alert.object_kind, alert.object_name.as_str()),
            (AlertRule::PodCrashLooping, "pod", "web/default/web-1")
        );
        assert_eq!(
            alert.summary,
            "container app of pod default/web-1 in cluster web is crash-looping: restarted 4 times, last exit OOMKilled (code 137)"
        );
        // Between two crashes it runs for a moment: still crash-looping.
        let running_between = pod(
            "Running",
            "2026-12-06T09:00:00Z",
            json!([{"name": "app", "restartCount": 5, "state": {"running": {}},
                    "lastState": {"terminated": {"reason": "Error", "exitCode": 1,
                                                 "finishedAt": "2026-12-06T09:58:00Z"}}}]),
        );
        assert!(running_between.alert("web", now).is_some());
        // Long stable since its last crash, or crashed once: fine.
        let stable = pod(
            "Running",
            "2026-12-06T09:00:00Z",
            json!([{"name": "app", "restartCount": 5, "state": {"running": {}},
                    "lastState": {"terminated": {"reason": "Error", "exitCode": 1,
                                                 "finishedAt": "2026-12-06T09:50:00Z"}}}]),
        );
        assert_eq!(stable.alert("web", now), None);
        let once = pod(
            "Running",
            "2026-12-06T09:00:00Z",
            json!([{"name": "app", "restartCount": 1, "state": {"running": {}},
                    "lastState": {"terminated": {"reason": "Error", "exitCode": 1,
                                                 "finishedAt": "2026-12-06T09:59:50Z"}}}]),
        );
        assert_eq!(once.alert("web", now), None);
        // Pending: after five minutes, not before.
        let pending = pod("Pending", "2026-12-06T09:54:00Z", json!([]));
        let alert = pending.alert("web", now).expect("pending");
        assert_eq!(alert.rule, AlertRule::PodPending);
        assert!(
            alert.summary.ends_with("has been Pending for 6 minutes"),
            "{}",
            alert.summary
        );
        let young = pod("Pending", "2026-12-06T09:57:00Z", json!([]));
        assert_eq!(young.alert("web", now), None);
        // Not a pod.
        assert_eq!(PodHealth::from_object(&json!({"kind": "Status"})), None);
    }
}
