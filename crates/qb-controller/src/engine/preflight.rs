//! Preflight across a cluster's nodes: every node checks itself and listens on the ports its
//! role needs; then every node probes every other node on those ports, all at once. The
//! result is a matrix of who reaches whom on which port, and a list of problems that name
//! hosts and ports.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use qb_agent_proto::preflight::{
    LocalReport, PreflightCheck, PreflightProbe, ProbeTarget, Requirements,
};
use qb_agent_proto::{Instruction, Outcome};
use qb_api::{
    ClusterRef, MeshProbe, NodeCheck, NodeId, NodeName, NodeRole, PortSpec, PreflightReport,
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
    pub ports: Vec<PortSpec>,
}

/// The nodes of a preflight and their ports, by the roles placement gives them.
pub fn targets(
    input: &ClusterInput,
    nodes: &[&EngineNode],
    placement: &Placement,
    addresses: &BTreeMap<NodeId, IpAddr>,
) -> Vec<Target> {
    nodes
        .iter()
        .map(|n| Target {
            node: n.node.id,
            name: n.node.name.clone(),
            address: addresses[&n.node.id],
            ports: qb_plan::render::required_ports(
                input,
                placement.role(n.node.id).unwrap_or(NodeRole::Worker),
            ),
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
        let check = PreflightCheck {
            session,
            listen: t.ports.clone(),
            hold_ms: HOLD.as_millis() as u64,
            requirements: requirements(),
        };
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
            targets: ready
                .iter()
                .filter(|to| to.node != from.node)
                .map(|to| ProbeTarget {
                    node: to.node,
                    address: to.address,
                    ports: to.ports.clone(),
                    held: held
                        .get(&to.node)
                        .map(|h| {
                            h.iter()
                                .filter(|p| p.protocol == qb_api::Protocol::Tcp)
                                .copied()
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect(),
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
