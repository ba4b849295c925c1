//! What a cluster's API objects say of its health, and the alerts they call for: pods (read
//! into [`PodHealth`]), nodes' `Ready` condition and the control plane's leases. Pure: objects
//! and the time in, health and alerts out.

use qb_api::{
    AlertRule, AlertSeverity, ClusterHealth, ContainerExit, ContainerStatus, KubeNodeHealth,
    LeaderHealth, PodCounts, PodStatus,
};
use qb_store::WantedAlert;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How recent a container's last exit keeps a pod crash-looping, or OOM-killed.
pub const CRASH_WINDOW: time::Duration = time::Duration::minutes(5);
/// How long a pod may stay Pending before it alerts.
pub const PENDING_FOR: time::Duration = time::Duration::minutes(5);
/// How long a Kubernetes node may be not Ready before it alerts.
pub const NOT_READY_FOR: time::Duration = time::Duration::minutes(1);
/// How long past its lease's end a component may go without a leader before it alerts. Also
/// absorbs some skew between the controller's clock and the masters'.
pub const LEADERLESS_FOR: time::Duration = time::Duration::minutes(1);
/// The control-plane components that elect a leader through a lease in `kube-system`.
pub const LEADER_COMPONENTS: [&str; 2] = ["kube-scheduler", "kube-controller-manager"];

fn time(v: &Value) -> Option<OffsetDateTime> {
    v.as_str()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
}

/// `once`, `twice`, `3 times`, ...
fn times(n: u32) -> String {
    match n {
        1 => "once".to_owned(),
        2 => "twice".to_owned(),
        n => format!("{n} times"),
    }
}

/// `1 minute`, `6 minutes`, ...
fn minutes(n: i64) -> String {
    if n == 1 {
        "1 minute".to_owned()
    } else {
        format!("{n} minutes")
    }
}

fn text(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

/// A pod as the rules need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodHealth {
    pub uid: String,
    pub status: PodStatus,
}

impl PodHealth {
    /// From a Pod object as the API server sends it; `None` when it is not one.
    pub fn from_object(pod: &Value) -> Option<Self> {
        let meta = &pod["metadata"];
        let status = &pod["status"];
        let init = status["initContainerStatuses"].as_array().into_iter();
        let main = status["containerStatuses"].as_array().into_iter();
        let containers = init
            .flatten()
            .map(|c| (c, true))
            .chain(main.flatten().map(|c| (c, false)))
            .map(|(c, is_init)| {
                let last = &c["lastState"]["terminated"];
                // A finished init container is not "ready", but it is done right.
                let done = is_init && c["state"]["terminated"]["exitCode"].as_i64() == Some(0);
                ContainerStatus {
                    name: c["name"].as_str().unwrap_or_default().to_owned(),
                    ready: c["ready"].as_bool().unwrap_or(false) || done,
                    restarts: c["restartCount"]
                        .as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(0),
                    waiting: text(&c["state"]["waiting"]["reason"]),
                    last_exit: time(&last["finishedAt"]).map(|at| ContainerExit {
                        reason: text(&last["reason"]).unwrap_or_else(|| "Error".to_owned()),
                        exit_code: last["exitCode"]
                            .as_i64()
                            .and_then(|c| i32::try_from(c).ok())
                            .unwrap_or(0),
                        at,
                    }),
                }
            })
            .collect();
        Some(Self {
            uid: meta["uid"].as_str()?.to_owned(),
            status: PodStatus {
                namespace: meta["namespace"].as_str()?.to_owned(),
                name: meta["name"].as_str()?.to_owned(),
                node: text(&pod["spec"]["nodeName"]),
                phase: text(&status["phase"]).unwrap_or_else(|| "Unknown".to_owned()),
                created_at: time(&meta["creationTimestamp"])?,
                containers,
            },
        })
    }

    /// The alert this pod of cluster `cluster` calls for at `now`, if any:
    /// - `pod_crash_looping`: a container waiting in `CrashLoopBackOff`, or restarted twice
    ///   or more with its last exit under [`CRASH_WINDOW`] ago (the brief runs between crashes
    ///   do not resolve the alert and fire it again);
    /// - `pod_oom_killed`: otherwise, a container OOM-killed under [`CRASH_WINDOW`] ago;
    /// - `pod_pending`: a pod Pending for [`PENDING_FOR`].
    pub fn alert(&self, cluster: &str, now: OffsetDateTime) -> Option<WantedAlert> {
        let pod = &self.status;
        let object = format!("{cluster}/{}/{}", pod.namespace, pod.name);
        let recent = |c: &ContainerStatus| {
            c.last_exit
                .as_ref()
                .is_some_and(|e| now - e.at < CRASH_WINDOW)
        };
        let alert = |rule, summary| WantedAlert {
            rule,
            severity: AlertSeverity::Warning,
            object_kind: "pod",
            object_id: self.uid.clone(),
            object_name: object.clone(),
            summary,
        };
        let crashing = pod.containers.iter().find(|c| {
            c.waiting.as_deref() == Some("CrashLoopBackOff") || (c.restarts >= 2 && recent(c))
        });
        if let Some(c) = crashing {
            let exit = c.last_exit.as_ref().map_or_else(String::new, |e| {
                format!(", last exit {} (code {})", e.reason, e.exit_code)
            });
            return Some(alert(
                AlertRule::PodCrashLooping,
                format!(
                    "container {} of pod {}/{} in cluster {cluster} is crash-looping: restarted {}{exit}",
                    c.name,
                    pod.namespace,
                    pod.name,
                    times(c.restarts)
                ),
            ));
        }
        let oom = pod.containers.iter().find(|c| {
            recent(c)
                && c.last_exit
                    .as_ref()
                    .is_some_and(|e| e.reason == "OOMKilled")
        });
        if let Some(c) = oom {
            return Some(alert(
                AlertRule::PodOomKilled,
                format!(
                    "container {} of pod {}/{} in cluster {cluster} ran out of memory and was killed (restarted {})",
                    c.name,
                    pod.namespace,
                    pod.name,
                    times(c.restarts)
                ),
            ));
        }
        if pod.phase == "Pending" && now - pod.created_at >= PENDING_FOR {
            return Some(alert(
                AlertRule::PodPending,
                format!(
                    "pod {}/{} in cluster {cluster} has been Pending for {}",
                    pod.namespace,
                    pod.name,
                    minutes((now - pod.created_at).whole_minutes())
                ),
            ));
        }
        None
    }
}

/// A Node object's `Ready` condition; `None` when it is not a node.
fn node_from_object(node: &Value) -> Option<KubeNodeHealth> {
    let ready = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready");
    Some(KubeNodeHealth {
        name: node["metadata"]["name"].as_str()?.to_owned(),
        ready: ready.is_some_and(|c| c["status"] == "True"),
        reason: ready.and_then(|c| text(&c["reason"])),
        message: ready.and_then(|c| text(&c["message"])),
        since: ready.and_then(|c| time(&c["lastTransitionTime"])),
        kubelet_version: text(&node["status"]["nodeInfo"]["kubeletVersion"]),
    })
}

/// The leader of `component` as its lease (if any) tells at `now`, and when the lease ends
/// (`None`: never taken).
fn leader_from_lease(
    component: &str,
    lease: Option<&Value>,
    now: OffsetDateTime,
) -> (LeaderHealth, Option<OffsetDateTime>) {
    let spec = lease.map(|l| &l["spec"]);
    let renewed_at = spec.and_then(|s| time(&s["renewTime"]));
    let seconds = spec
        .and_then(|s| s["leaseDurationSeconds"].as_i64())
        .unwrap_or(15);
    let ends = renewed_at.map(|r| r + time::Duration::seconds(seconds));
    let leader = LeaderHealth {
        component: component.to_owned(),
        holder: spec.and_then(|s| text(&s["holderIdentity"])),
        renewed_at,
        current: ends.is_some_and(|e| now <= e),
    };
    (leader, ends)
}

/// What the rules know of one cluster's nodes and leaders, last read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPlane {
    /// When the lists were read: the rules judge them as of then, so that lists that could
    /// not be read again do not age into alerts.
    pub read_at: OffsetDateTime,
    pub nodes: Vec<KubeNodeHealth>,
    /// Each component and when its lease ends (`None`: never taken).
    pub leases: Vec<(LeaderHealth, Option<OffsetDateTime>)>,
}

impl ControlPlane {
    /// From the cluster's node list and its `kube-system` lease list, read at `now`.
    pub fn from_lists(nodes: &Value, leases: &Value, now: OffsetDateTime) -> Self {
        let leases: Vec<&Value> = leases["items"].as_array().into_iter().flatten().collect();
        Self {
            read_at: now,
            nodes: nodes["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(node_from_object)
                .collect(),
            leases: LEADER_COMPONENTS
                .iter()
                .map(|component| {
                    let lease = leases
                        .iter()
                        .copied()
                        .find(|l| l["metadata"]["name"] == *component);
                    leader_from_lease(component, lease, now)
                })
                .collect(),
        }
    }

    /// `node_not_ready`: each node not Ready for [`NOT_READY_FOR`]; `no_leader`: each
    /// component whose lease ended [`LEADERLESS_FOR`] ago or more.
    pub fn alerts(&self, cluster_id: &str, cluster: &str) -> Vec<WantedAlert> {
        let now = self.read_at;
        let mut out = Vec::new();
        for n in &self.nodes {
            if n.ready || n.since.is_none_or(|s| now - s < NOT_READY_FOR) {
                continue;
            }
            let why = n
                .message
                .as_deref()
                .or(n.reason.as_deref())
                .map_or_else(String::new, |m| format!(": {m}"));
            out.push(WantedAlert {
                rule: AlertRule::NodeNotReady,
                severity: AlertSeverity::Warning,
                object_kind: "kube_node",
                object_id: format!("{cluster_id}/{}", n.name),
                object_name: format!("{cluster}/{}", n.name),
                summary: format!(
                    "Kubernetes node {} of cluster {cluster} has not been Ready for {}{why}",
                    n.name,
                    minutes(n.since.map_or(0, |s| (now - s).whole_minutes()))
                ),
            });
        }
        for (leader, ends) in &self.leases {
            let Some(ends) = ends else { continue };
            if now - *ends < LEADERLESS_FOR {
                continue;
            }
            out.push(WantedAlert {
                rule: AlertRule::NoLeader,
                severity: AlertSeverity::Critical,
                object_kind: "component",
                object_id: format!("{cluster_id}/{}", leader.component),
                object_name: format!("{cluster}/{}", leader.component),
                summary: format!(
                    "{} of cluster {cluster} has had no leader for {} (its lease, last held by {}, ended at {})",
                    leader.component,
                    minutes((now - *ends).whole_minutes().max(1)),
                    leader.holder.as_deref().unwrap_or("no one"),
                    ends.format(&Rfc3339).unwrap_or_default()
                ),
            });
        }
        out
    }
}

/// A cluster's health from its node, lease and pod lists, read at `now`.
pub fn cluster_health(
    cluster: &str,
    nodes: &Value,
    leases: &Value,
    pods: &Value,
    now: OffsetDateTime,
) -> ClusterHealth {
    let control = ControlPlane::from_lists(nodes, leases, now);
    let mut counts = PodCounts::default();
    let mut attention = Vec::new();
    for pod in pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(PodHealth::from_object)
    {
        let pod = pod.status;
        counts.total += 1;
        match pod.phase.as_str() {
            "Running" => counts.running += 1,
            "Pending" => counts.pending += 1,
            "Succeeded" => counts.succeeded += 1,
            "Failed" => counts.failed += 1,
            _ => {}
        }
        if pod.needs_attention() {
            attention.push(pod);
        }
    }
    attention.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    attention.truncate(ClusterHealth::MAX_PODS);
    let mut nodes = control.nodes;
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    ClusterHealth {
        cluster: cluster.to_owned(),
        checked_at: now,
        nodes,
        leaders: control.leases.into_iter().map(|(l, _)| l).collect(),
        pods: counts,
        attention,
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
    fn pods_alert_while_crash_looping_oom_killed_or_long_pending_and_not_otherwise() {
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
        assert_eq!(
            running_between.alert("web", now).map(|a| a.rule),
            Some(AlertRule::PodCrashLooping)
        );
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
        // OOM-killed once, lately: its own alert, until five minutes have passed.
        let oom = |finished: &str| {
            pod(
                "Running",
                "2026-12-06T09:00:00Z",
                json!([{"name": "app", "restartCount": 1, "ready": true,
                        "state": {"running": {}},
                        "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                                                     "finishedAt": finished}}}]),
            )
        };
        let alert = oom("2026-12-06T09:59:00Z")
            .alert("web", now)
            .expect("oom-killed");
        assert_eq!(alert.rule, AlertRule::PodOomKilled);
        assert_eq!(
            alert.summary,
            "container app of pod default/web-1 in cluster web ran out of memory and was killed (restarted once)"
        );
        assert_eq!(oom("2026-12-06T09:54:00Z").alert("web", now), None);
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

    fn node(name: &str, ready: &str, since: &str) -> Value {
        json!({"metadata": {"name": name},
               "status": {"nodeInfo": {"kubeletVersion": "v1.20.2"},
                          "conditions": [
                              {"type": "MemoryPressure", "status": "False"},
                              {"type": "Ready", "status": ready, "reason": "KubeletNotReady",
                               "message": "PLEG is not healthy", "lastTransitionTime": since}]}})
    }

    fn lease(name: &str, renewed: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "kube-system"},
               "spec": {"holderIdentity": "host-0_1f2e", "leaseDurationSeconds": 15,
                        "renewTime": renewed}})
    }

    #[test]
    fn nodes_not_ready_for_a_minute_and_leases_ended_a_minute_ago_alert() {
        let nodes = json!({"items": [
            node("host-0", "True", "2026-12-06T09:00:00Z"),
            node("host-1", "Unknown", "2026-12-06T09:58:30Z"),
            node("host-2", "False", "2026-12-06T09:59:30Z"),
        ]});
        let leases = json!({"items": [
            lease("kube-scheduler", "2026-12-06T09:58:44Z"),
            lease("kube-controller-manager", "2026-12-06T09:59:58Z"),
            lease("something-else", "2026-12-01T00:00:00Z"),
        ]});
        let now = at("2026-12-06T10:00:00Z");
        let control = ControlPlane::from_lists(&nodes, &leases, now);
        assert_eq!(
            control
                .nodes
                .iter()
                .map(|n| (n.name.as_str(), n.ready))
                .collect::<Vec<_>>(),
            [("host-0", true), ("host-1", false), ("host-2", false)]
        );
        let current: Vec<(&str, bool)> = control
            .leases
            .iter()
            .map(|(l, _)| (l.component.as_str(), l.current))
            .collect();
        assert_eq!(
            current,
            [("kube-scheduler", false), ("kube-controller-manager", true)]
        );
        let alerts = control.alerts("c1", "web");
        let got: Vec<(AlertRule, &str, &str)> = alerts
            .iter()
            .map(|a| (a.rule, a.object_kind, a.object_name.as_str()))
            .collect();
        // host-2 is not Ready for only 30 s; the scheduler's lease ended 61 s ago.
        assert_eq!(
            got,
            [
                (AlertRule::NodeNotReady, "kube_node", "web/host-1"),
                (AlertRule::NoLeader, "component", "web/kube-scheduler"),
            ]
        );
        assert_eq!(
            alerts[0].summary,
            "Kubernetes node host-1 of cluster web has not been Ready for 1 minute: PLEG is not healthy"
        );
        assert_eq!(
            alerts[1].summary,
            "kube-scheduler of cluster web has had no leader for 1 minute (its lease, last held by host-0_1f2e, ended at 2026-12-06T09:58:59Z)"
        );
        assert_eq!(alerts[1].severity, AlertSeverity::Critical);
        // Lists read long ago are judged as of when they were read, not as of now.
        let read_earlier = ControlPlane::from_lists(&nodes, &leases, at("2026-12-06T09:59:00Z"));
        assert_eq!(read_earlier.alerts("c1", "web"), []);
        // A lease never taken (a cluster still starting) is no alert.
        let none = ControlPlane::from_lists(&nodes, &json!({"items": []}), now);
        assert!(
            none.leases
                .iter()
                .all(|(l, ends)| l.holder.is_none() && ends.is_none())
        );
        assert!(
            none.alerts("c1", "web")
                .iter()
                .all(|a| a.rule != AlertRule::NoLeader)
        );
    }

    #[test]
    fn cluster_health_counts_pods_and_lists_those_that_need_attention() {
        let pod = |name: &str, phase: &str, containers: Value, init: Value| {
            json!({"metadata": {"namespace": "default", "name": name, "uid": name,
                                "creationTimestamp": "2026-12-06T09:00:00Z"},
                   "spec": {"nodeName": "host-1"},
                   "status": {"phase": phase, "containerStatuses": containers,
                              "initContainerStatuses": init}})
        };
        let fine =
            json!([{"name": "app", "ready": true, "restartCount": 0, "state": {"running": {}}}]);
        let pods = json!({"items": [
            pod("ok", "Running", fine.clone(),
                json!([{"name": "init", "ready": false, "restartCount": 0,
                        "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}])),
            pod("restarted", "Running",
                json!([{"name": "app", "ready": true, "restartCount": 3, "state": {"running": {}},
                        "lastState": {"terminated": {"reason": "Error", "exitCode": 2,
                                                     "finishedAt": "2026-12-06T09:30:00Z"}}}]),
                json!([])),
            pod("pulling", "Pending",
                json!([{"name": "app", "ready": false, "restartCount": 0,
                        "state": {"waiting": {"reason": "ImagePullBackOff"}}}]),
                json!([])),
            pod("done", "Succeeded", json!([]), json!([])),
            pod("gone", "Failed", json!([]), json!([])),
        ]});
        let now = at("2026-12-06T10:00:00Z");
        let health = cluster_health(
            "web",
            &json!({"items": [node("host-1", "True", "2026-12-06T09:00:00Z")]}),
            &json!({"items": [lease("kube-scheduler", "2026-12-06T09:59:55Z")]}),
            &pods,
            now,
        );
        assert_eq!(
            health.pods,
            PodCounts {
                total: 5,
                running: 2,
                pending: 1,
                succeeded: 1,
                failed: 1
            }
        );
        let names: Vec<&str> = health.attention.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["gone", "pulling", "restarted"]);
        let restarted = &health.attention[2];
        assert_eq!(restarted.restarts(), 3);
        assert_eq!(
            restarted.containers[0]
                .last_exit
                .as_ref()
                .map(|e| (e.reason.as_str(), e.exit_code)),
            Some(("Error", 2))
        );
        assert_eq!(
            health.attention[1].containers[0].waiting.as_deref(),
            Some("ImagePullBackOff")
        );
        assert_eq!(
            health
                .leaders
                .iter()
                .map(|l| (l.component.as_str(), l.current, l.holder.is_some()))
                .collect::<Vec<_>>(),
            [
                ("kube-scheduler", true, true),
                ("kube-controller-manager", false, false)
            ]
        );
        assert_eq!(health.nodes[0].kubelet_version.as_deref(), Some("v1.20.2"));
    }
}
