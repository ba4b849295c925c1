//! Preflight across a cluster's nodes: every node checks itself and listens on the ports its
//! role needs; then every node probes every other node on those ports, all at once. The
//! result is a matrix of who reaches whom on which port, and a list of problems that name
//! hosts and ports. A node new to the cluster also checks that the ports only it uses (its
//! components' loopback endpoints, say) are free; no other node probes those.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use qb_agent_proto::preflight::{
    LocalPort, LocalReport, PreflightCheck, PreflightProbe, ProbeTarget, Requirements,
};
use qb_agent_proto::{Instruction, Outcome};
use qb_api::{
    ClusterRef, MeshProbe, Node, NodeCheck, NodeId, NodeName, NodeRole, PortSpec, PreflightReport,
    Severity,
};
use qb_plan::placement::Placement;
use qb_plan::render::ClusterInput;
use qb_store::EngineNode;

use crate::agents::Agents;

/// How long listeners stay open: long enough for every node to probe.
const HOLD: Duration = Duration::from_secs(10);
/// How long one probe waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long an agent has to answer a phase.
const PHASE_TIMEOUT: Duration = Duration::from_secs(8);

/// A node taking part, with the ports its role needs.
#[derive(Clone, Debug)]
pub struct Target {
    pub node: NodeId,
    pub name: NodeName,
    pub address: IpAddr,
    /// Ports the other nodes reach: bound, then probed by every other node.
    pub ports: Vec<PortSpec>,
    /// Ports only the node uses: checked free on the node, never probed.
    pub local: Vec<LocalPort>,
}

/// The nodes of a preflight and their ports, by the roles placement gives them. Only nodes that
/// never ran in the cluster (no role yet) check their local ports: on the others, the cluster's
/// own components hold them, and the agent could not tell (the API balancer is the agent's own,
/// and a plan's services do not list every port they bind, such as the kubelet's 10248).
pub fn targets(
    input: &ClusterInput,
    nodes: &[&EngineNode],
    placement: &Placement,
    addresses: &BTreeMap<NodeId, IpAddr>,
) -> Vec<Target> {
    nodes
        .iter()
        .map(|n| target(input, &n.node, placement, addresses[&n.node.id]))
        .collect()
}

/// One node of [`targets`].
fn target(input: &ClusterInput, node: &Node, placement: &Placement, address: IpAddr) -> Target {
    let role = placement.role(node.id).unwrap_or(NodeRole::Worker);
    Target {
        node: node.id,
        name: node.name.clone(),
        address,
        ports: qb_plan::render::required_ports(input, role),
        local: if node.role.is_none() {
            qb_plan::render::local_ports(input, role)
        } else {
            Vec::new()
        },
    }
}

/// Phase 1's instruction to `target`: listen on its ports, check its local ports.
fn check_request(target: &Target, session: u64) -> PreflightCheck {
    PreflightCheck {
        session,
        listen: target.ports.clone(),
        local: target.local.clone(),
        hold_ms: HOLD.as_millis() as u64,
        requirements: requirements(),
    }
}

/// Phase 2's targets of `from`: every other ready node on the ports it listens on for the mesh
/// (never its local ones); `held` are the ports each node's own services hold.
fn probe_targets(
    from: NodeId,
    ready: &[&Target],
    held: &BTreeMap<NodeId, Vec<PortSpec>>,
) -> Vec<ProbeTarget> {
    ready
        .iter()
        .filter(|to| to.node != from)
        .map(|to| ProbeTarget {
            node: to.node,
            address: to.address,
            ports: to.ports.clone(),
            held: held
                .get(&to.node)
                .map(|h| {
                    h.iter()
                        .filter(|p| p.protocol == qb_api::Protocol::Tcp && to.ports.contains(p))
                        .copied()
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// What hosts must have.
fn requirements() -> Requirements {
    Requirements {
        min_memory_bytes: 1 << 30,
        min_cpus: 1,
        controller_time_ms: i64::try_from(
            time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000,
        )
        .unwrap_or_default(),
        max_clock_offset_ms: 2_000,
        min_kernel: (4, 15),
        kernel_modules: vec!["overlay".to_owned(), "br_netfilter".to_owned()],
    }
}

/// Runs both phases and assembles the report.
pub async fn run(agents: &Agents, cluster: ClusterRef, targets: &[Target]) -> PreflightReport {
    let started_at = time::OffsetDateTime::now_utc();
    let started = Instant::now();
    let session = rand::random::<u64>() >> 11;
    let mut problems = Vec::new();
    let mut checks = Vec::new();

    // Phase 1: local checks, listeners up.
    let locals = join_all(targets.iter().map(|t| {
        let check = check_request(t, session);
        agents.request(
            t.node,
            move |_| Instruction::Preflight(check),
            PHASE_TIMEOUT,
        )
    }))
    .await;
    let mut held: BTreeMap<NodeId, Vec<PortSpec>> = BTreeMap::new();
    let mut ready = Vec::new();
    for (t, local) in targets.iter().zip(locals) {
        match local {
            Ok(Outcome::Preflight { report }) => {
                let LocalReport {
                    checks: results,
                    held_by_service,
                    ..
                } = report;
                for check in results {
                    if !check.ok && check.severity == Severity::Error {
                        problems.push(format!("{}: {}: {}", t.name, check.name, check.detail));
                    }
                    checks.push(NodeCheck {
                        node: t.node,
                        node_name: t.name.clone(),
                        check,
                    });
                }
                held.insert(t.node, held_by_service);
                ready.push(t);
            }
            Ok(Outcome::Failed { error }) => {
                problems.push(format!("{}: preflight failed: {error}", t.name))
            }
            Ok(other) => problems.push(format!("{}: unexpected answer {other:?}", t.name)),
            Err(e) => problems.push(format!("{}: {e}", t.name)),
        }
    }

    // Phase 2: everyone probes everyone else.
    let probes = join_all(ready.iter().map(|from| {
        let probe = PreflightProbe {
            session,
            targets: probe_targets(from.node, &ready, &held),
            timeout_ms: PROBE_TIMEOUT.as_millis() as u64,
        };
        agents.request(from.node, move |_| Instruction::Probe(probe), PHASE_TIMEOUT)
    }))
    .await;
    let names: BTreeMap<NodeId, &NodeName> = targets.iter().map(|t| (t.node, &t.name)).collect();
    let mut mesh = Vec::new();
    for (from, result) in ready.iter().zip(probes) {
        let results = match result {
            Ok(Outcome::Probes { results }) => results,
            Ok(Outcome::Failed { error }) => {
                problems.push(format!("{}: probing failed: {error}", from.name));
                continue;
            }
            Ok(other) => {
                problems.push(format!("{}: unexpected answer {other:?}", from.name));
                continue;
            }
            Err(e) => {
                problems.push(format!("{}: {e}", from.name));
                continue;
            }
        };
        for r in results {
            let Some(to) = names.get(&r.to) else { continue };
            let ok = r.ok;
            if !ok {
                problems.push(format!(
                    "{} cannot reach {} on {}: {}",
                    from.name,
                    to,
                    r.port,
                    r.error.as_deref().unwrap_or("failed")
                ));
            }
            mesh.push(MeshProbe {
                from: from.name.clone(),
                to: (*to).clone(),
                port: r.port.port,
                protocol: r.port.protocol,
                ok,
                latency_us: r.latency_us,
                error: if ok { None } else { r.error },
            });
        }
    }
    mesh.sort_by(|a, b| {
        (&a.from, &a.to, a.port, a.protocol).cmp(&(&b.from, &b.to, b.port, b.protocol))
    });
    PreflightReport {
        id: uuid::Uuid::now_v7(),
        cluster,
        started_at,
        duration_ms: started.elapsed().as_millis() as u64,
        passed: problems.is_empty(),
        problems,
        checks,
        mesh,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use qb_api::{BundleArtifact, BundleManifest, KNOWN_ARTIFACTS, NodeFacts, NodeState};

    use super::*;

    fn tcp(port: u16) -> PortSpec {
        PortSpec::tcp(port)
    }

    fn udp(port: u16) -> PortSpec {
        PortSpec::udp(port)
    }

    fn loopback(port: u16) -> LocalPort {
        LocalPort {
            port: tcp(port),
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// A cluster whose bundle ships every component.
    fn input() -> ClusterInput {
        let version: qb_api::KubernetesVersion = "1.20.2".parse().expect("a version");
        ClusterInput {
            id: qb_api::ClusterId::new(),
            name: "demo".to_owned(),
            version: version.clone(),
            pod_cidr: "10.244.0.0/16".parse().expect("a CIDR"),
            service_cidr: "10.96.0.0/12".parse().expect("a CIDR"),
            bundle: BundleManifest {
                kubernetes_version: version,
                artifacts: KNOWN_ARTIFACTS
                    .iter()
                    .map(|name| BundleArtifact {
                        name: (*name).to_owned(),
                        version: "1.0.0".to_owned(),
                        sha256: "0".repeat(64),
                        size: 1,
                        file: None,
                    })
                    .collect(),
            },
        }
    }

    /// An attached node, placed in its cluster already when `role` is set. (From JSON: the
    /// fields a preflight does not read keep their defaults.)
    fn node(name: &str, role: Option<NodeRole>) -> Node {
        serde_json::from_value(serde_json::json!({
            "id": NodeId::new(),
            "name": name,
            "state": NodeState::Attached,
            "cluster": null,
            "facts": NodeFacts::default(),
            "labels": {},
            "agent": null,
            "role": role,
            "created_at": "2024-05-01T12:00:00Z",
            "updated_at": "2024-05-01T12:00:00Z",
        }))
        .expect("a node")
    }

    fn target_with(n: u8, ports: Vec<PortSpec>, local: Vec<LocalPort>) -> Target {
        Target {
            node: NodeId::new(),
            name: format!("n{n}").parse().expect("a node name"),
            address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)),
            ports,
            local,
        }
    }

    #[test]
    fn only_nodes_new_to_the_cluster_check_their_local_ports() {
        let input = input();
        let running = node("m1", Some(NodeRole::Master));
        let new_master = node("m2", None);
        let new_worker = node("w1", None);
        let placement = Placement {
            masters: vec![running.id, new_master.id],
            workers: vec![new_worker.id],
        };
        let targets: Vec<Target> = [&running, &new_master, &new_worker]
            .into_iter()
            .zip(1..)
            .map(|(n, i)| {
                let address = IpAddr::V4(Ipv4Addr::new(10, 0, 0, i));
                target(&input, n, &placement, address)
            })
            .collect();

        let [running, new_master, new_worker] = &targets[..] else {
            panic!("three targets: {targets:?}")
        };
        // Its own components hold them.
        assert!(running.local.is_empty(), "{running:?}");
        let render = |role| qb_plan::render::local_ports(&input, role);
        assert_eq!(new_master.local, render(NodeRole::Master));
        assert_eq!(new_worker.local, render(NodeRole::Worker));
        assert!(
            new_worker.local.contains(&loopback(10248)),
            "{new_worker:?}"
        );
        assert!(
            new_master.local.contains(&loopback(10259)),
            "{new_master:?}"
        );
        // Every node still listens for the mesh.
        for (t, role) in targets
            .iter()
            .zip([NodeRole::Master, NodeRole::Master, NodeRole::Worker])
        {
            assert_eq!(t.ports, qb_plan::render::required_ports(&input, role));
        }
    }

    #[test]
    fn local_ports_are_sent_to_their_node_but_never_probed() {
        let a = target_with(1, vec![udp(8472), tcp(10250)], vec![loopback(10248)]);
        let b = target_with(2, vec![udp(8472), tcp(10250)], vec![loopback(6444)]);

        let check = check_request(&a, 7);
        assert_eq!(check.session, 7);
        assert_eq!(check.listen, a.ports);
        assert_eq!(check.local, a.local);

        // a's own services hold a mesh port and a local one.
        let held = BTreeMap::from([(a.node, vec![tcp(10250), tcp(10248), udp(8472)])]);
        let from_b = probe_targets(b.node, &[&a, &b], &held);
        assert_eq!(from_b.len(), 1, "b does not probe itself: {from_b:?}");
        assert_eq!(from_b[0].node, a.node);
        assert_eq!(from_b[0].address, a.address);
        assert_eq!(from_b[0].ports, a.ports);
        assert_eq!(
            from_b[0].held,
            [tcp(10250)],
            "held TCP ports it probes only"
        );
        let from_a = probe_targets(a.node, &[&a, &b], &held);
        assert_eq!(from_a.len(), 1);
        assert_eq!(from_a[0].ports, b.ports);
        assert!(from_a[0].held.is_empty());
        for probed in from_a.iter().chain(&from_b) {
            assert!(
                probed
                    .ports
                    .iter()
                    .all(|p| p.port != 10248 && p.port != 6444),
                "a local port is probed: {probed:?}"
            );
        }
    }
}
