//! The alert rules: what is wrong with each tenant's hosts and clusters, found every few
//! seconds by the replica that runs the cluster engine and synced to the store (which fires
//! what is new and resolves what is over).
//!
//! - `host_offline`: a node in the pool or in a cluster whose agent has been silent for three
//!   heartbeats (critical in a cluster, a warning in the pool);
//! - `disk_full`: a host's agent state file system over 90 % full in its last minute point;
//! - `cluster_unhealthy`: a cluster degraded or blocked;
//! - `component_down`: a service of a node's applied plan not running or failing its probe,
//!   while its agent is online (critical for etcd and kube-apiserver);
//! - `etcd_no_quorum`: half or more of an installed cluster's etcd members unhealthy;
//! - `host_threshold`: a host figure above one of the tenant's thresholds for its minutes;
//! - `cert_expiring`: a cluster's CA or a node's component certificate expiring within 14 days
//!   (read every 10 minutes);
//! - `pod_crash_looping`, `pod_oom_killed`, `pod_pending`, `node_not_ready`, `no_leader`: see
//!   [`crate::workloads::health`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use qb_api::{
    AlertRule, AlertSeverity, Cluster, ClusterState, Node, NodeId, NodeState, PageParams,
    PlanState, ThresholdRule,
};
use qb_store::{MetricLows, NodeFilter, Store, WantedAlert};
use time::OffsetDateTime;

use crate::agents::Agents;
use crate::workloads::Workloads;

/// How often the rules are evaluated.
pub const EVALUATE_EVERY: Duration = Duration::from_secs(5);
/// The shortest pause between two evaluations.
const MIN_GAP: Duration = Duration::from_secs(1);
/// How long after an agent's grace ends its liveness is looked at.
const OFFLINE_SLACK: Duration = Duration::from_millis(20);
/// The share of a disk in use above which a host alerts.
pub const DISK_FULL: f64 = 0.9;
/// How old a metrics point may be to count for `disk_full`.
const DISK_FRESH: time::Duration = time::Duration::minutes(5);

/// The alerts the rules find true for one tenant's `nodes` and `clusters`; `online` tells a
/// node's agent's liveness, `disks` each host's latest disk use (used, total bytes).
pub fn wanted(
    nodes: &[Node],
    clusters: &[Cluster],
    online: impl Fn(NodeId) -> bool,
    disks: &HashMap<NodeId, (u64, u64)>,
) -> Vec<WantedAlert> {
    let mut out = Vec::new();
    for n in nodes {
        let watched = matches!(
            n.state,
            NodeState::Authorized | NodeState::Attached | NodeState::Detaching
        );
        if watched && n.agent.is_some() && !online(n.id) {
            let (severity, place) = match &n.cluster {
                Some(c) => (AlertSeverity::Critical, format!("in cluster {}", c.name)),
                None => (AlertSeverity::Warning, "in the pool".to_owned()),
            };
            let since = n
                .agent
                .as_ref()
                .and_then(|a| a.last_seen_at)
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map_or_else(String::new, |t| format!(", last heard from at {t}"));
            out.push(WantedAlert {
                rule: AlertRule::HostOffline,
                severity,
                object_kind: "node",
                object_id: n.id.to_string(),
                object_name: n.name.to_string(),
                summary: format!("the agent of {} ({place}) is offline{since}", n.name),
            });
        }
        if let Some(&(used, total)) = disks.get(&n.id)
            && total > 0
            && used as f64 / total as f64 > DISK_FULL
        {
            out.push(WantedAlert {
                rule: AlertRule::DiskFull,
                severity: AlertSeverity::Warning,
                object_kind: "node",
                object_id: n.id.to_string(),
                object_name: n.name.to_string(),
                summary: format!(
                    "the disk of {}'s agent state is {:.0} % full ({used} of {total} bytes)",
                    n.name,
                    100.0 * used as f64 / total as f64
                ),
            });
        }
    }
    out.extend(components(nodes, clusters, &online));
    for c in clusters {
        if matches!(c.state, ClusterState::Degraded | ClusterState::Blocked) {
            let why = c
                .state_message
                .as_deref()
                .map_or_else(String::new, |m| format!(": {m}"));
            out.push(WantedAlert {
                rule: AlertRule::ClusterUnhealthy,
                severity: AlertSeverity::Critical,
                object_kind: "cluster",
                object_id: c.id.to_string(),
                object_name: c.name.to_string(),
                summary: format!("cluster {} is {}{why}", c.name, c.state.as_str()),
            });
        }
    }
    out
}

/// `component_down`: each service of an applied plan that fails on a node whose agent is
/// online; `etcd_no_quorum`: each installed cluster with half or more of its etcd members
/// unhealthy (an offline member counts as unhealthy).
fn components(
    nodes: &[Node],
    clusters: &[Cluster],
    online: &impl Fn(NodeId) -> bool,
) -> Vec<WantedAlert> {
    let mut out = Vec::new();
    let report = |n: &Node| n.plan.as_ref().and_then(|p| p.report.clone());
    for n in nodes
        .iter()
        .filter(|n| n.state == NodeState::Attached && online(n.id))
    {
        let Some(report) = report(n).filter(|r| r.state == PlanState::Applied) else {
            continue;
        };
        let place = n
            .cluster
            .as_ref()
            .map_or_else(String::new, |c| format!(" (cluster {})", c.name));
        for s in report.services.iter().filter(|s| !s.healthy) {
            let what = if s.running {
                "fails its health check".to_owned()
            } else {
                match &s.last_exit {
                    Some(exit) => format!("is not running (last {exit})"),
                    None => "is not running".to_owned(),
                }
            };
            out.push(WantedAlert {
                rule: AlertRule::ComponentDown,
                severity: if CRITICAL_SERVICES.contains(&s.name.as_str()) {
                    AlertSeverity::Critical
                } else {
                    AlertSeverity::Warning
                },
                object_kind: "service",
                object_id: format!("{}/{}", n.id, s.name),
                object_name: format!("{}/{}", n.name, s.name),
                summary: format!("{} on {}{place} {what}", s.name, n.name),
            });
        }
    }
    for c in clusters
        .iter()
        .filter(|c| matches!(c.state, ClusterState::Ready | ClusterState::Degraded))
    {
        let members: Vec<(&Node, bool)> = nodes
            .iter()
            .filter(|n| n.cluster.as_ref().is_some_and(|x| x.id == c.id))
            .filter_map(|n| {
                let etcd = report(n)?.services.into_iter().find(|s| s.name == "etcd")?;
                Some((n, etcd.healthy && online(n.id)))
            })
            .collect();
        let healthy = members.iter().filter(|(_, ok)| *ok).count();
        if !members.is_empty() && healthy * 2 <= members.len() {
            let sick: Vec<&str> = members
                .iter()
                .filter(|(_, ok)| !ok)
                .map(|(n, _)| n.name.as_str())
                .collect();
            out.push(WantedAlert {
                rule: AlertRule::EtcdNoQuorum,
                severity: AlertSeverity::Critical,
                object_kind: "cluster",
                object_id: c.id.to_string(),
                object_name: c.name.to_string(),
                summary: format!(
                    "etcd of cluster {} has no quorum: {healthy} of {} members healthy (unhealthy: {})",
                    c.name,
                    members.len(),
                    sick.join(", ")
                ),
            });
        }
    }
    out
}

/// `host_threshold`: each host whose figure stayed above one of the tenant's thresholds for
/// the rule's minutes; `lows` holds each host's lowest figures over each window the rules use
/// (by its length in minutes).
fn thresholds(
    rules: &[ThresholdRule],
    nodes: &[Node],
    lows: &HashMap<u32, HashMap<NodeId, MetricLows>>,
) -> Vec<WantedAlert> {
    let mut out = Vec::new();
    for rule in rules {
        let Some(window) = lows.get(&rule.for_minutes) else {
            continue;
        };
        for n in nodes {
            let Some(low) = window.get(&n.id) else {
                continue;
            };
            let lowest = low.of(rule.metric);
            if low.minutes >= rule.for_minutes && lowest > rule.above {
                let unit = rule.metric.unit();
                out.push(WantedAlert {
                    rule: AlertRule::HostThreshold,
                    severity: rule.severity,
                    object_kind: "node",
                    object_id: format!("{}/{}", rule.id, n.id),
                    object_name: n.name.to_string(),
                    summary: format!(
                        "{} of {} above {}{unit} for {} minutes (rule {}; lowest {:.1}{unit})",
                        rule.metric.as_str(),
                        n.name,
                        rule.above,
                        rule.for_minutes,
                        rule.name,
                        lowest
                    ),
                });
            }
        }
    }
    out
}

/// How soon before its expiry a certificate alerts ...
pub const CERT_WARNING: time::Duration = time::Duration::days(14);
/// ... and when it is critical.
const CERT_CRITICAL: time::Duration = time::Duration::days(3);
/// How often a tenant's certificates are read again: their dates change only when they are
/// renewed.
const CERT_SCAN_EVERY: Duration = Duration::from_secs(600);

/// `cert_expiring`: one alert for `cluster` when any of its certificates (what each is, when
/// it expires) expires within [`CERT_WARNING`] of `now`, naming the first.
fn expiring(
    cluster: &Cluster,
    certs: &[(String, OffsetDateTime)],
    now: OffsetDateTime,
) -> Option<WantedAlert> {
    let mut soon: Vec<&(String, OffsetDateTime)> = certs
        .iter()
        .filter(|(_, at)| *at - now < CERT_WARNING)
        .collect();
    soon.sort_by_key(|(_, at)| *at);
    let (what, at) = soon.first()?;
    let left = *at - now;
    let when = if left.is_negative() {
        "expired".to_owned()
    } else {
        format!("expires in {} days", left.whole_days())
    };
    let date = at.date();
    let more = match soon.len() {
        1 => String::new(),
        n => format!("; {} certificates in all expire within 14 days", n),
    };
    Some(WantedAlert {
        rule: AlertRule::CertExpiring,
        severity: if left < CERT_CRITICAL {
            AlertSeverity::Critical
        } else {
            AlertSeverity::Warning
        },
        object_kind: "cluster",
        object_id: cluster.id.to_string(),
        object_name: cluster.name.to_string(),
        summary: format!(
            "the {what} of cluster {} {when} ({date}){more}",
            cluster.name
        ),
    })
}

/// Each tenant's clusters' certificate expiry alerts, read again every [`CERT_SCAN_EVERY`].
#[derive(Default)]
pub struct CertScan {
    found: std::sync::Mutex<HashMap<qb_api::TenantId, (std::time::Instant, Vec<WantedAlert>)>>,
}

impl CertScan {
    async fn alerts(
        &self,
        store: &Store,
        tenant: qb_api::TenantId,
        clusters: &[Cluster],
        now: OffsetDateTime,
    ) -> Result<Vec<WantedAlert>, qb_store::StoreError> {
        if let Some((at, alerts)) = self.lock().get(&tenant)
            && at.elapsed() < CERT_SCAN_EVERY
        {
            return Ok(alerts.clone());
        }
        let mut alerts = Vec::new();
        for c in clusters {
            let cluster = match store.engine_cluster(tenant, c.id).await {
                Ok(cluster) => cluster,
                // Deleted meanwhile.
                Err(qb_store::StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            let mut certs = Vec::new();
            if let Some(pki) = &cluster.pki {
                for (what, ca) in [
                    ("cluster CA", &pki.ca),
                    ("etcd CA", &pki.etcd_ca),
                    ("front-proxy CA", &pki.front_proxy_ca),
                ] {
                    certs.extend(ca.not_after().map(|at| (what.to_owned(), at)));
                }
            }
            for n in &cluster.nodes {
                for (purpose, cert) in n.certs.iter().flat_map(|c| &c.certs) {
                    let what = serde_json::to_value(purpose)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    certs.extend(
                        cert.not_after()
                            .map(|at| (format!("{what} certificate of {}", n.node.name), at)),
                    );
                }
            }
            alerts.extend(expiring(c, &certs, now));
        }
        self.lock()
            .insert(tenant, (std::time::Instant::now(), alerts.clone()));
        Ok(alerts)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<qb_api::TenantId, (std::time::Instant, Vec<WantedAlert>)>>
    {
        self.found.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Services without which a cluster's control plane stops: critical when down.
const CRITICAL_SERVICES: &[&str] = &["etcd", "kube-apiserver"];

/// Evaluates the rules for every tenant every [`EVALUATE_EVERY`], and as soon as an agent
/// goes silent for too long (so a host's offline alert fires when its grace ends, not up to
/// [`EVALUATE_EVERY`] later), until aborted.
pub async fn run(store: Store, agents: Arc<Agents>, workloads: Arc<Workloads>) {
    let certs = CertScan::default();
    loop {
        let last = tokio::time::Instant::now();
        let next = last + EVALUATE_EVERY;
        // A rack going dark puts many deadlines close together: at most one look a second.
        let deadline = agents
            .next_offline()
            .map(|at| tokio::time::Instant::from_std(at) + OFFLINE_SLACK)
            .map_or(next, |at| at.clamp(last + MIN_GAP, next));
        tokio::time::sleep_until(deadline).await;
        if let Err(e) = evaluate(&store, &agents, &workloads, &certs).await {
            tracing::warn!(error = %e, "could not evaluate the alert rules; trying again shortly");
        }
    }
}

/// Evaluates every rule for every tenant once, and syncs what they find.
pub async fn evaluate(
    store: &Store,
    agents: &Agents,
    workloads: &Workloads,
    certs: &CertScan,
) -> Result<(), qb_store::StoreError> {
    for tenant in store.tenants_with_objects().await? {
        let mut nodes = all_nodes(store, tenant).await?;
        // The agents' live state: the store's last-seen time is the one at their last
        // disconnect.
        for n in &mut nodes {
            agents.overlay(n);
        }
        let clusters = all_clusters(store, tenant).await?;
        let now = OffsetDateTime::now_utc();
        let disks = store.recent_disk_use(tenant, now - DISK_FRESH).await?;
        let mut wanted = wanted(&nodes, &clusters, |n| agents.online(n), &disks);
        let rules = store.list_threshold_rules(tenant).await?;
        let mut lows = HashMap::new();
        for minutes in rules.iter().map(|r| r.for_minutes) {
            if let std::collections::hash_map::Entry::Vacant(e) = lows.entry(minutes) {
                // One minute more: the current minute may not be written yet.
                let since = now - time::Duration::minutes(i64::from(minutes) + 1);
                e.insert(store.metric_lows(tenant, since).await?);
            }
        }
        wanted.extend(thresholds(&rules, &nodes, &lows));
        wanted.extend(certs.alerts(store, tenant, &clusters, now).await?);
        // A node whose host is offline is not Ready either: `host_offline` says so.
        wanted.extend(workloads.wanted(tenant, now).into_iter().filter(|a| {
            a.rule != AlertRule::NodeNotReady
                || !nodes.iter().any(|n| {
                    !agents.online(n.id)
                        && n.cluster
                            .as_ref()
                            .is_some_and(|c| a.object_name == format!("{}/{}", c.name, n.name))
                })
        }));
        // Clusters not read yet (this replica just began to lead): what their pods, nodes and
        // leaders fired stays firing, rather than resolving and firing again once read.
        let unlisted = workloads.unlisted(tenant);
        if !unlisted.is_empty() {
            let firing = store
                .list_alerts(tenant, Some(qb_api::AlertState::Firing), u32::MAX)
                .await?;
            wanted.extend(carried_over(&firing, &unlisted));
        }
        let changes = store.sync_alerts(tenant, &wanted, now).await?;
        for a in &changes.fired {
            tracing::info!(tenant_id = %tenant, rule = a.rule.as_str(), object = %a.object_name, silenced = a.silenced, "alert fired: {}", a.summary);
        }
        for a in &changes.resolved {
            tracing::info!(tenant_id = %tenant, rule = a.rule.as_str(), object = %a.object_name, "alert resolved: {}", a.summary);
        }
    }
    Ok(())
}

/// The firing workload alerts of the clusters named `unlisted`, wanted as they are.
fn carried_over(firing: &[qb_api::Alert], unlisted: &[String]) -> Vec<WantedAlert> {
    firing
        .iter()
        .filter_map(|a| {
            let kind = match a.rule {
                AlertRule::PodCrashLooping | AlertRule::PodOomKilled | AlertRule::PodPending => {
                    "pod"
                }
                AlertRule::NodeNotReady => "kube_node",
                AlertRule::NoLeader => "component",
                _ => return None,
            };
            let of_unlisted = unlisted
                .iter()
                .any(|c| a.object_name.starts_with(&format!("{c}/")));
            of_unlisted.then_some((a, kind))
        })
        .map(|(a, kind)| WantedAlert {
            rule: a.rule,
            severity: a.severity,
            object_kind: kind,
            object_id: a.object_id.clone(),
            object_name: a.object_name.clone(),
            summary: a.summary.clone(),
        })
        .collect()
}

/// Every node of the tenant.
pub(crate) async fn all_nodes(
    store: &Store,
    tenant: qb_api::TenantId,
) -> Result<Vec<Node>, qb_store::StoreError> {
    every_page(|after| async move {
        let filter = NodeFilter::default();
        store
            .list_nodes(tenant, &filter, after.as_deref(), PageParams::MAX_LIMIT)
            .await
    })
    .await
}

/// Every cluster of the tenant.
pub(crate) async fn all_clusters(
    store: &Store,
    tenant: qb_api::TenantId,
) -> Result<Vec<Cluster>, qb_store::StoreError> {
    every_page(|after| async move {
        store
            .list_clusters(tenant, after.as_deref(), PageParams::MAX_LIMIT)
            .await
    })
    .await
}

/// The items of every page `page` returns, following each page's cursor to the last.
async fn every_page<T, F, Fut>(mut page: F) -> Result<Vec<T>, qb_store::StoreError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<qb_api::Page<T>, qb_store::StoreError>>,
{
    let mut items = Vec::new();
    let mut after = None;
    loop {
        let next = page(after).await?;
        items.extend(next.items);
        match next.next {
            Some(cursor) => after = Some(cursor),
            None => return Ok(items),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(name: &str, state: &str, cluster: Option<&str>, agent: bool) -> Node {
        let id = NodeId::new();
        serde_json::from_value(json!({
            "id": id, "name": name, "state": state,
            "cluster": cluster.map(|c| json!({"id": qb_api::ClusterId::new(), "name": c})),
            "facts": {"hostname": name, "os": "Debian", "kernel": "6.1", "arch": "x86_64",
                      "cpus": 2, "memory_bytes": 1, "addresses": []},
            "labels": {},
            "agent": agent.then(|| json!({"version": "0.1.0", "online": false,
                                         "last_seen_at": "2026-12-05T10:00:00Z"})),
            "created_at": "2026-12-05T09:00:00Z", "updated_at": "2026-12-05T09:00:00Z",
        }))
        .expect("a node")
    }

    fn cluster(name: &str, state: &str, message: Option<&str>) -> Cluster {
        serde_json::from_value(json!({
            "id": qb_api::ClusterId::new(), "name": name, "kubernetes_version": "1.20.2",
            "pod_cidr": "10.244.0.0/16", "service_cidr": "10.96.0.0/12", "masters": "auto",
            "roles": {}, "state": state, "state_message": message,
            "state_since": "2026-12-05T09:00:00Z", "node_count": 1,
            "created_at": "2026-12-05T09:00:00Z",
        }))
        .expect("a cluster")
    }

    /// An attached node of `cluster` whose plan report says `state` with `services` (name,
    /// running, healthy).
    fn with_services(
        name: &str,
        cluster: &Cluster,
        state: &str,
        services: &[(&str, bool, bool)],
    ) -> Node {
        let mut n = node(name, "attached", Some(cluster.name.as_str()), true);
        n.cluster.as_mut().unwrap().id = cluster.id;
        let services: Vec<serde_json::Value> = services
            .iter()
            .map(|(s, running, healthy)| {
                json!({"name": s, "running": running, "healthy": healthy,
                "restarts": 0, "last_exit": (!running).then_some("exit status 1")})
            })
            .collect();
        n.plan = serde_json::from_value(json!({"generation": 1, "report": {
            "generation": 1, "state": state, "steps": [], "services": services}}))
        .expect("a plan");
        n
    }

    #[test]
    fn failed_components_alert_and_etcd_without_quorum_too() {
        let web = cluster("web", "degraded", None);
        let nodes = [
            with_services(
                "m1",
                &web,
                "applied",
                &[("etcd", true, true), ("kube-apiserver", true, false)],
            ),
            with_services(
                "m2",
                &web,
                "applied",
                &[("etcd", false, false), ("kubelet", true, true)],
            ),
            with_services("m3", &web, "applied", &[("etcd", true, true)]),
            // Still installing: nothing is down yet.
            with_services("w1", &web, "applying", &[("kubelet", false, false)]),
            // Offline: its own alert, not its services'.
            with_services("w2", &web, "applied", &[("kubelet", true, false)]),
        ];
        let online = |id: NodeId| nodes[4].id != id;
        let got: Vec<(AlertRule, AlertSeverity, String)> =
            components(&nodes, std::slice::from_ref(&web), &online)
                .into_iter()
                .map(|a| (a.rule, a.severity, a.object_name))
                .collect();
        use AlertRule::*;
        use AlertSeverity::*;
        assert_eq!(
            got,
            [
                (ComponentDown, Critical, "m1/kube-apiserver".to_owned()),
                (ComponentDown, Critical, "m2/etcd".to_owned()),
            ]
        );
        let summaries: Vec<String> = components(&nodes, std::slice::from_ref(&web), &online)
            .into_iter()
            .map(|a| a.summary)
            .collect();
        assert_eq!(
            summaries[0],
            "kube-apiserver on m1 (cluster web) fails its health check"
        );
        assert_eq!(
            summaries[1],
            "etcd on m2 (cluster web) is not running (last exit status 1)"
        );
        // Two of three etcd members down, or one offline and one failing: no quorum.
        let down = [
            with_services("m1", &web, "applied", &[("etcd", true, true)]),
            with_services("m2", &web, "applied", &[("etcd", true, false)]),
            with_services("m3", &web, "applied", &[("etcd", true, true)]),
        ];
        let m3 = down[2].id;
        let no_quorum = components(&down, std::slice::from_ref(&web), &|id| id != m3);
        let alert = no_quorum
            .iter()
            .find(|a| a.rule == EtcdNoQuorum)
            .expect("no quorum");
        assert_eq!(
            alert.summary,
            "etcd of cluster web has no quorum: 1 of 3 members healthy (unhealthy: m2, m3)"
        );
        let quorum = components(&down, std::slice::from_ref(&web), &|_| true);
        assert!(quorum.iter().all(|a| a.rule != EtcdNoQuorum), "{quorum:?}");
    }

    #[test]
    fn certificates_alert_two_weeks_before_they_expire() {
        let web = cluster("web", "ready", None);
        let now = OffsetDateTime::parse(
            "2026-12-06T10:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let days = |d: i64| now + time::Duration::days(d);
        let fine = [
            ("cluster CA".to_owned(), days(3000)),
            ("kubelet certificate of n1".to_owned(), days(200)),
        ];
        assert_eq!(expiring(&web, &fine, now), None);
        let soon = [
            ("cluster CA".to_owned(), days(3000)),
            ("kubelet certificate of n1".to_owned(), days(10)),
            ("etcd_server certificate of n2".to_owned(), days(12)),
        ];
        let alert = expiring(&web, &soon, now).expect("an alert");
        assert_eq!(
            (alert.rule, alert.severity),
            (AlertRule::CertExpiring, AlertSeverity::Warning)
        );
        assert_eq!(
            alert.summary,
            "the kubelet certificate of n1 of cluster web expires in 10 days (2026-12-16); 2 certificates in all expire within 14 days"
        );
        let expired = [("etcd CA".to_owned(), days(-1))];
        let alert = expiring(&web, &expired, now).expect("an alert");
        assert_eq!(alert.severity, AlertSeverity::Critical);
        assert_eq!(
            alert.summary,
            "the etcd CA of cluster web expired (2026-12-05)"
        );
        // What the store holds is read: a certificate's expiry.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["n1".to_owned()]).unwrap();
        params.not_after = days(10);
        let cert = params.self_signed(&key).unwrap();
        let held = qb_plan::pki::KeyCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        assert_eq!(held.not_after(), Some(days(10)));
    }

    #[test]
    fn threshold_rules_fire_for_hosts_above_them_long_enough() {
        let nodes = [
            node("busy", "attached", Some("web"), true),
            node("brief", "attached", Some("web"), true),
            node("calm", "authorized", None, true),
        ];
        let rule: ThresholdRule = serde_json::from_value(json!({
            "id": "r1", "name": "hot", "metric": "cpu", "above": 90.0, "for_minutes": 5,
            "severity": "critical", "created_by": "user:op", "created_at": "2026-12-06T10:00:00Z",
        }))
        .expect("a rule");
        let low = |minutes, cpu| MetricLows {
            minutes,
            cpu_percent: cpu,
            memory_percent: 10.0,
            disk_percent: 10.0,
            load1: 0.1,
        };
        let lows = HashMap::from([(
            5,
            HashMap::from([
                (nodes[0].id, low(6, 93.5)),
                // Above, but reported for fewer minutes than the rule asks.
                (nodes[1].id, low(3, 99.0)),
                (nodes[2].id, low(6, 40.0)),
            ]),
        )]);
        let got = thresholds(std::slice::from_ref(&rule), &nodes, &lows);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (got[0].rule, got[0].severity, got[0].object_name.as_str()),
            (AlertRule::HostThreshold, AlertSeverity::Critical, "busy")
        );
        assert_eq!(got[0].object_id, format!("r1/{}", nodes[0].id));
        assert_eq!(
            got[0].summary,
            "cpu of busy above 90 % for 5 minutes (rule hot; lowest 93.5 %)"
        );
    }

    #[test]
    fn each_rule_fires_for_what_it_watches_and_nothing_else() {
        let nodes = [
            node("in-cluster", "attached", Some("web"), true),
            node("in-pool", "authorized", None, true),
            node("pending", "pending", None, true),
            node("never-registered", "authorized", None, false),
            node("online", "attached", Some("web"), true),
            node("full", "authorized", None, true),
        ];
        let online = |id: NodeId| [&nodes[4], &nodes[5]].iter().any(|n| n.id == id);
        let disks = HashMap::from([
            (nodes[4].id, (89, 100)),
            (nodes[5].id, (95, 100)),
            (nodes[0].id, (10, 0)),
        ]);
        let clusters = [
            cluster("web", "degraded", Some("host-1 is offline")),
            cluster("db", "blocked", None),
            cluster("ok", "ready", None),
            cluster("new", "installing", None),
        ];
        let got: Vec<(AlertRule, AlertSeverity, String)> =
            wanted(&nodes, &clusters, online, &disks)
                .into_iter()
                .map(|a| (a.rule, a.severity, a.object_name))
                .collect();
        use AlertRule::*;
        use AlertSeverity::*;
        assert_eq!(
            got,
            [
                (HostOffline, Critical, "in-cluster".to_owned()),
                (HostOffline, Warning, "in-pool".to_owned()),
                (DiskFull, Warning, "full".to_owned()),
                (ClusterUnhealthy, Critical, "web".to_owned()),
                (ClusterUnhealthy, Critical, "db".to_owned()),
            ]
        );
        let summaries: Vec<String> = wanted(&nodes, &clusters, online, &disks)
            .into_iter()
            .map(|a| a.summary)
            .collect();
        assert_eq!(
            summaries[0],
            "the agent of in-cluster (in cluster web) is offline, last heard from at 2026-12-05T10:00:00Z"
        );
        assert_eq!(
            summaries[2],
            "the disk of full's agent state is 95 % full (95 of 100 bytes)"
        );
        assert_eq!(summaries[3], "cluster web is degraded: host-1 is offline");
    }
}
