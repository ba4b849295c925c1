//! `/metrics`: the caller's tenant in Prometheus's text exposition format, for a Prometheus
//! server to scrape with an API token (`authorization: Bearer ...`). Per node: whether its agent
//! is online and its host's last figures; per cluster: its state and size, and the requests
//! through the Kubernetes API proxy; how long agents take to answer what the controller pushes.
//!
//! Host figures come from the agents this replica holds: with several replicas, scrape each.
//! The format is four line shapes, so it is written here rather than through a metrics
//! registry, whose gauges would have to be copied from the store on every scrape anyway.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use qb_api::{Cluster, ClusterState, Node, NodeState, Role};

use crate::agents::metrics::ROUND_TRIP_BUCKETS;
use crate::auth::Caller;
use crate::{ApiError, AppState};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn metrics(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let tenant = caller.tenant();
    let mut nodes = crate::alerts::all_nodes(&app.store, tenant).await?;
    for node in &mut nodes {
        app.agents.overlay(node);
    }
    let clusters = crate::alerts::all_clusters(&app.store, tenant).await?;
    let latest: HashMap<_, _> = app
        .agents
        .metrics()
        .all_latest()
        .into_iter()
        .filter(|(t, _, _)| *t == tenant)
        .map(|(_, node, sample)| (node, sample))
        .collect();
    let mut text = exposition(&nodes, &clusters, &latest);
    let firing = app
        .store
        .list_alerts(tenant, Some(qb_api::AlertState::Firing), u32::MAX)
        .await?;
    alert_series(&mut text, &firing);
    controller_series(&mut text, &app, &clusters, tenant);
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text))
}

/// How many alerts fire, per rule and severity (silenced ones apart).
fn alert_series(text: &mut String, firing: &[qb_api::Alert]) {
    let mut out = Exposition::default();
    out.family(
        "qb_alerts_firing",
        "Alerts firing now, by rule and severity; silenced or not.",
    );
    for rule in qb_api::AlertRule::ALL {
        for severity in [
            qb_api::AlertSeverity::Warning,
            qb_api::AlertSeverity::Critical,
        ] {
            for silenced in [false, true] {
                let n = firing
                    .iter()
                    .filter(|a| a.rule == rule && a.severity == severity && a.silenced == silenced)
                    .count();
                let labels = [
                    ("rule", rule.as_str().to_owned()),
                    ("severity", severity.as_str().to_owned()),
                    ("silenced", silenced.to_string()),
                ];
                out.sample("qb_alerts_firing", &labels, n as f64);
            }
        }
    }
    text.push_str(&out.text);
}

/// What this replica did for the tenant: requests through its Kubernetes API proxy, and how
/// long its agents took to answer what it pushed.
fn controller_series(
    text: &mut String,
    app: &AppState,
    clusters: &[Cluster],
    tenant: qb_api::TenantId,
) {
    let mut out = Exposition::default();
    out.head(
        "qb_proxy_requests_total",
        "Requests through this replica's Kubernetes API proxy: answered by an API server (whatever the status) or failed.",
        "counter",
    );
    for c in clusters {
        let (answered, failed) = app.kube_proxy.requests(c.id);
        for (outcome, n) in [("answered", answered), ("failed", failed)] {
            let labels = [
                ("cluster", c.name.to_string()),
                ("outcome", outcome.to_owned()),
            ];
            out.sample("qb_proxy_requests_total", &labels, n as f64);
        }
    }
    let name = "qb_agent_round_trip_seconds";
    out.head(
        name,
        "From an instruction pushed to an agent held by this replica to its answer.",
        "histogram",
    );
    let h = app.agents.metrics().round_trips(tenant);
    for (bound, n) in ROUND_TRIP_BUCKETS.iter().zip(h.buckets) {
        out.sample(
            &format!("{name}_bucket"),
            &[("le", bound.to_string())],
            n as f64,
        );
    }
    out.sample(
        &format!("{name}_bucket"),
        &[("le", "+Inf".to_owned())],
        h.count as f64,
    );
    out.sample(&format!("{name}_sum"), &[], h.sum_seconds);
    out.sample(&format!("{name}_count"), &[], h.count as f64);
    text.push_str(&out.text);
}

/// The text of one scrape.
fn exposition(
    nodes: &[Node],
    clusters: &[Cluster],
    latest: &HashMap<qb_api::NodeId, qb_api::MetricsSample>,
) -> String {
    let mut out = Exposition::default();
    let node_labels = |n: &Node| {
        vec![
            ("node", n.name.to_string()),
            (
                "cluster",
                n.cluster
                    .as_ref()
                    .map(|c| c.name.to_string())
                    .unwrap_or_default(),
            ),
        ]
    };

    out.family(
        "qb_node_online",
        "Whether the node's agent is connected and heartbeating.",
    );
    for n in nodes.iter().filter(|n| n.state != NodeState::Pending) {
        let online = n.agent.as_ref().is_some_and(|a| a.online);
        out.sample(
            "qb_node_online",
            &node_labels(n),
            f64::from(u8::from(online)),
        );
    }
    out.family(
        "qb_node_state",
        "The node's state: 1 for the state it is in.",
    );
    for n in nodes {
        let mut labels = node_labels(n);
        labels.push(("state", n.state.as_str().to_owned()));
        out.sample("qb_node_state", &labels, 1.0);
    }
    type Figure = (
        &'static str,
        &'static str,
        fn(&qb_api::MetricsSample) -> f64,
    );
    let figures: [Figure; 9] = [
        (
            "qb_node_cpu_percent",
            "Busy share of all CPUs over the last heartbeat interval, 0-100.",
            |s| s.cpu_percent,
        ),
        ("qb_node_load1", "Load average over 1 minute.", |s| s.load1),
        ("qb_node_load5", "Load average over 5 minutes.", |s| s.load5),
        ("qb_node_load15", "Load average over 15 minutes.", |s| {
            s.load15
        }),
        ("qb_node_memory_total_bytes", "Memory of the host.", |s| {
            s.memory_total_bytes as f64
        }),
        (
            "qb_node_memory_available_bytes",
            "Memory available for new work.",
            |s| s.memory_available_bytes as f64,
        ),
        (
            "qb_node_disk_total_bytes",
            "Size of the file system of the agent's state.",
            |s| s.disk_total_bytes as f64,
        ),
        (
            "qb_node_disk_available_bytes",
            "Space left on the file system of the agent's state.",
            |s| s.disk_available_bytes as f64,
        ),
        (
            "qb_node_uptime_seconds",
            "Time since the host booted.",
            |s| s.uptime_seconds as f64,
        ),
    ];
    for (name, help, value) in figures {
        out.family(name, help);
        for n in nodes {
            if let Some(sample) = latest.get(&n.id) {
                out.sample(name, &node_labels(n), value(sample));
            }
        }
    }
    type EtcdFigure = (&'static str, &'static str, fn(&qb_api::EtcdSample) -> f64);
    let etcd: [EtcdFigure; 4] = [
        (
            "qb_etcd_has_leader",
            "Whether the node's etcd member knows a leader.",
            |e| f64::from(u8::from(e.has_leader)),
        ),
        (
            "qb_etcd_is_leader",
            "Whether the node's etcd member is the leader.",
            |e| f64::from(u8::from(e.is_leader)),
        ),
        (
            "qb_etcd_db_size_bytes",
            "Size of the etcd member's database file.",
            |e| e.db_size_bytes as f64,
        ),
        (
            "qb_etcd_leader_changes",
            "Leader changes the etcd member has seen since it started.",
            |e| e.leader_changes as f64,
        ),
    ];
    for (name, help, value) in etcd {
        out.family(name, help);
        for n in nodes {
            if let Some(e) = latest.get(&n.id).and_then(|s| s.etcd.as_ref()) {
                out.sample(name, &node_labels(n), value(e));
            }
        }
    }

    out.family(
        "qb_cluster_state",
        "The cluster's state: 1 for the state it is in.",
    );
    for c in clusters {
        let labels = [
            ("cluster", c.name.to_string()),
            ("state", c.state.as_str().to_owned()),
        ];
        out.sample("qb_cluster_state", &labels, 1.0);
    }
    out.family(
        "qb_cluster_ready",
        "Whether every node runs its plan and every component is healthy.",
    );
    for c in clusters {
        let ready = c.state == ClusterState::Ready;
        out.sample(
            "qb_cluster_ready",
            &[("cluster", c.name.to_string())],
            f64::from(u8::from(ready)),
        );
    }
    out.family(
        "qb_cluster_nodes",
        "Nodes attached to the cluster or detaching from it.",
    );
    for c in clusters {
        out.sample(
            "qb_cluster_nodes",
            &[("cluster", c.name.to_string())],
            f64::from(c.node_count),
        );
    }
    out.text
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// A gauge's help and type lines.
    fn family(&mut self, name: &str, help: &str) {
        self.head(name, help, "gauge");
    }

    fn head(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, String)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// A label value as the format quotes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_families_typed() {
        let mut out = Exposition::default();
        out.family("qb_x", "An example.");
        out.sample(
            "qb_x",
            &[("a", "q\"b\\c\nd".to_owned()), ("b", String::new())],
            1.5,
        );
        out.sample("qb_x", &[], 0.0);
        assert_eq!(
            out.text,
            "# HELP qb_x An example.\n# TYPE qb_x gauge\nqb_x{a=\"q\\\"b\\\\c\\nd\",b=\"\"} 1.5\nqb_x 0\n"
        );
    }
}
