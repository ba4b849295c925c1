//! `qb cluster health`: a cluster's nodes, leaders and the pods that need attention.

use qb_api::{ClusterHealth, PodStatus};
use time::OffsetDateTime;

use super::{age, table};

pub fn cluster_health(h: &ClusterHealth, now: OffsetDateTime) -> String {
    let mut out = String::from("NODES\n");
    out.push_str(&table(
        &["NAME", "READY", "SINCE", "KUBELET", "REASON"],
        h.nodes.iter().map(|n| {
            vec![
                n.name.clone(),
                if n.ready { "yes" } else { "no" }.to_owned(),
                n.since.map_or_else(|| "-".to_owned(), |s| age(s, now)),
                n.kubelet_version.clone().unwrap_or_else(|| "-".to_owned()),
                if n.ready {
                    String::new()
                } else {
                    n.message
                        .clone()
                        .or_else(|| n.reason.clone())
                        .unwrap_or_default()
                },
            ]
        }),
    ));
    out.push_str("\nLEADERS\n");
    out.push_str(&table(
        &["COMPONENT", "LEADER", "RENEWED", "HOLDER"],
        h.leaders.iter().map(|l| {
            vec![
                l.component.clone(),
                if l.current { "yes" } else { "NONE" }.to_owned(),
                l.renewed_at
                    .map_or_else(|| "never".to_owned(), |r| format!("{} ago", age(r, now))),
                l.holder.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        }),
    ));
    let c = &h.pods;
    out.push_str(&format!(
        "\nPODS: {} ({} running, {} pending, {} succeeded, {} failed)\n",
        c.total, c.running, c.pending, c.succeeded, c.failed
    ));
    if h.attention.is_empty() {
        out.push_str("No pod needs attention.\n");
    } else {
        out.push_str(&table(
            &["NAMESPACE", "POD", "NODE", "PHASE", "RESTARTS", "WHY"],
            h.attention.iter().map(|p| {
                vec![
                    p.namespace.clone(),
                    p.name.clone(),
                    p.node.clone().unwrap_or_else(|| "-".to_owned()),
                    p.phase.clone(),
                    p.restarts().to_string(),
                    why(p, now),
                ]
            }),
        ));
    }
    out
}

/// What is wrong with a pod's containers, e.g. `app: CrashLoopBackOff, last exit OOMKilled
/// (137) 2m ago`.
fn why(p: &PodStatus, now: OffsetDateTime) -> String {
    let parts: Vec<String> = p
        .containers
        .iter()
        .filter(|c| c.restarts > 0 || c.waiting.is_some() || !c.ready)
        .map(|c| {
            let mut s = format!("{}: ", c.name);
            let mut said = Vec::new();
            if let Some(w) = &c.waiting {
                said.push(w.clone());
            } else if !c.ready {
                said.push("not ready".to_owned());
            }
            if let Some(e) = &c.last_exit {
                said.push(format!(
                    "last exit {} ({}) {} ago",
                    e.reason,
                    e.exit_code,
                    age(e.at, now)
                ));
            }
            s.push_str(&said.join(", "));
            s
        })
        .collect();
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use qb_api::{
        ContainerExit, ContainerStatus, KubeNodeHealth, LeaderHealth, PodCounts, PodStatus,
    };
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-12-06 10:00 UTC);

    #[test]
    fn nodes_leaders_and_the_pods_that_need_attention() {
        let node = |name: &str, ready: bool| KubeNodeHealth {
            name: name.to_owned(),
            ready,
            reason: Some("KubeletNotReady".to_owned()),
            message: (!ready).then(|| "PLEG is not healthy".to_owned()),
            since: Some(NOW - time::Duration::minutes(3)),
            kubelet_version: Some("v1.20.2".to_owned()),
        };
        let leader = |component: &str, current: bool| LeaderHealth {
            component: component.to_owned(),
            holder: Some("host-0_6f1c".to_owned()),
            renewed_at: Some(NOW - time::Duration::seconds(if current { 2 } else { 90 })),
            current,
        };
        let health = ClusterHealth {
            cluster: "web".to_owned(),
            checked_at: NOW,
            nodes: vec![node("host-0", true), node("host-1", false)],
            leaders: vec![
                leader("kube-scheduler", true),
                leader("kube-controller-manager", false),
            ],
            pods: PodCounts {
                total: 12,
                running: 10,
                pending: 1,
                succeeded: 0,
                failed: 1,
            },
            attention: vec![PodStatus {
                namespace: "default".to_owned(),
                name: "api-7d9f".to_owned(),
                node: Some("host-1".to_owned()),
                phase: "Running".to_owned(),
                created_at: NOW - time::Duration::hours(1),
                containers: vec![ContainerStatus {
                    name: "app".to_owned(),
                    ready: false,
                    restarts: 4,
                    waiting: Some("CrashLoopBackOff".to_owned()),
                    last_exit: Some(ContainerExit {
                        reason: "OOMKilled".to_owned(),
                        exit_code: 137,
                        at: NOW - time::Duration::minutes(2),
                    }),
                }],
            }],
        };
        assert_eq!(
            cluster_health(&health, NOW),
            "NODES\n\
             NAME     READY   SINCE   KUBELET   REASON\n\
             host-0   yes     3m      v1.20.2\n\
             host-1   no      3m      v1.20.2   PLEG is not healthy\n\
             \n\
             LEADERS\n\
             COMPONENT                 LEADER   RENEWED   HOLDER\n\
             kube-scheduler            yes      2s ago    host-0_6f1c\n\
             kube-controller-manager   NONE     1m ago    host-0_6f1c\n\
             \n\
             PODS: 12 (10 running, 1 pending, 0 succeeded, 1 failed)\n\
             NAMESPACE   POD        NODE     PHASE     RESTARTS   WHY\n\
             default     api-7d9f   host-1   Running   4          app: CrashLoopBackOff, last exit OOMKilled (137) 2m ago\n"
        );
        let quiet = ClusterHealth {
            attention: vec![],
            ..health
        };
        assert!(cluster_health(&quiet, NOW).ends_with("No pod needs attention.\n"));
    }
}
