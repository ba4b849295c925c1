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
