//! Agent upgrades, driven: every tenant whose upgrade runs has its hosts moved to the build,
//! one host first (the canary), then `batch_size` at a time, each told with a signed
//! [`Instruction::UpgradeAgent`]. A host's agent stages the build and restarts into it on
//! trial (see `qb_agent::builds`); the host has upgraded once its agent is back running the
//! build. One that goes back (its trial failed), or is not back in time, stops the upgrade.
//! Offline hosts upgrade when they return; the upgrade is done once every host runs the build.
//!
//! What to do is decided by [`decide`], a pure function of the stored upgrade and the nodes;
//! [`run`] (on the replica that runs the engine) does it every few seconds. Everything it goes
//! by is in the store, so a restarted or failed-over controller carries on where it was; an
//! instruction that may have been lost is sent again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qb_agent_proto::{AgentBuild, Instruction, Outcome, Sha256Hex};
use qb_api::{
    AgentUpgrade, AgentUpgradeNode, AgentUpgradeNodeState, AgentUpgradeState, Node, NodeId,
    TenantId,
};
use qb_store::{Actor, StoredAgentUpgrade, UpgradingNode, UpgradingState};
use time::OffsetDateTime;

use crate::engine::Engine;

/// How often running upgrades are looked at.
const STEP: Duration = Duration::from_secs(2);
/// How long a host may take to download and stage the build before it counts as failed.
pub const STAGE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long past its trial a staged host may take to be seen back (its agent reconnects
/// with backoff).
pub const BACK_GRACE: Duration = Duration::from_secs(60);
/// How soon an instruction to a host that has not staged the build yet is sent again.
const RESEND: Duration = Duration::from_secs(30);
/// How long after it was told (or staged the build) a host must be back on the build before it
/// counts as upgraded: its new agent passes its trial once it held the channel 10 s.
pub const SOAK: Duration = Duration::from_secs(15);
/// The message of a host that staged the build and restarts into it.
const ON_TRIAL: &str = "on trial";

/// What one look at an upgrade decided.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Hosts to tell to upgrade (again, for those already upgrading).
    pub tell: Vec<NodeId>,
    /// Hosts whose part changed: what it is now.
    pub record: Vec<(NodeId, UpgradingState, Option<String>)>,
    /// Hosts told that went away before they staged the build: they wait like any offline
    /// host, and are told again once back.
    pub forget: Vec<NodeId>,
    /// The upgrade's new state, and why.
    pub verdict: Option<(AgentUpgradeState, Option<String>)>,
}

/// Whether the node's agent runs `build`.
fn runs(node: &Node, build: &str) -> bool {
    node.agent
        .as_ref()
        .and_then(|a| a.build.as_deref())
        .is_some_and(|b| b == build)
}

fn online(node: &Node) -> bool {
    node.agent.as_ref().is_some_and(|a| a.online)
}

/// How long the node's agent has been offline at `now` (zero while online).
fn away(node: &Node, now: OffsetDateTime) -> Duration {
    match &node.agent {
        Some(agent) if agent.online => Duration::ZERO,
        Some(agent) => agent
            .last_seen_at
            .map_or(Duration::MAX, |seen| (now - seen).unsigned_abs()),
        None => Duration::MAX,
    }
}

/// Whether the node's agent can upgrade itself (it speaks protocol 3 or later).
fn can_upgrade(node: &Node) -> bool {
    node.agent
        .as_ref()
        .and_then(|a| a.protocol)
        .is_some_and(|p| p >= 3)
}

/// The next step of a running upgrade, from the hosts as they are (`nodes`, their agents'
/// liveness laid over) at `now`.
pub fn decide(upgrade: &StoredAgentUpgrade, nodes: &[Node], now: OffsetDateTime) -> Decision {
    let mut decision = Decision::default();
    let rows: HashMap<NodeId, &UpgradingNode> =
        upgrade.nodes.iter().map(|n| (n.node_id, n)).collect();
    let trial = Duration::from_secs(u64::from(upgrade.trial_seconds));
    let mut failed = Vec::new();
    let mut in_flight = 0;
    let mut canary_passed = false;
    let mut candidates = Vec::new();
    let mut behind = 0;
    for node in nodes {
        let on_build = runs(node, &upgrade.build);
        match rows.get(&node.id) {
            Some(row) if row.state == UpgradingState::Failed => {
                failed.push((node, row.message.clone().unwrap_or_default()));
            }
            Some(row) if row.state == UpgradingState::Upgraded => {
                if online(node) && !on_build {
                    let why = "went back to another build after it had upgraded".to_owned();
                    decision
                        .record
                        .push((node.id, UpgradingState::Failed, Some(why.clone())));
                    failed.push((node, why));
                } else {
                    canary_passed = true;
                }
            }
            Some(row) => {
                if online(node) && on_build && now - row.since >= SOAK {
                    decision
                        .record
                        .push((node.id, UpgradingState::Upgraded, None));
                    canary_passed = true;
                    continue;
                }
                let staged = row.message.as_deref() == Some(ON_TRIAL);
                // Gone before it staged: it may be right back; if not, it waits like any
                // offline host.
                if !staged && !online(node) {
                    if away(node, now) > BACK_GRACE {
                        decision.forget.push(node.id);
                        behind += 1;
                    } else {
                        in_flight += 1;
                    }
                    continue;
                }
                let allowed = if staged {
                    trial + BACK_GRACE
                } else {
                    STAGE_TIMEOUT
                };
                if now - row.since > allowed {
                    let why = if staged {
                        format!("its new agent was not back within {} s", allowed.as_secs())
                    } else {
                        format!("it did not stage the build within {} s", allowed.as_secs())
                    };
                    decision
                        .record
                        .push((node.id, UpgradingState::Failed, Some(why.clone())));
                    failed.push((node, why));
                    continue;
                }
                in_flight += 1;
                if online(node) && !staged {
                    decision.tell.push(node.id);
                }
            }
            None if on_build => {}
            None if online(node) && can_upgrade(node) => candidates.push(node),
            None => behind += 1,
        }
    }
    if let Some((node, why)) = failed.first() {
        let message = format!(
            "{} failed: {why}; the upgrade stopped (start it again once the build is fixed)",
            node.name
        );
        decision.verdict = Some((AgentUpgradeState::Stopped, Some(message)));
        decision.tell.clear();
        return decision;
    }
    let limit = if canary_passed {
        upgrade.batch_size as usize
    } else {
        1
    };
    let starting: Vec<NodeId> = candidates
        .iter()
        .take(limit.saturating_sub(in_flight))
        .map(|n| n.id)
        .collect();
    for id in &starting {
        decision.record.push((*id, UpgradingState::Upgrading, None));
    }
    decision.tell.extend(starting);
    if in_flight == 0 && candidates.is_empty() && behind == 0 {
        decision.verdict = Some((AgentUpgradeState::Done, None));
    }
    decision
}

/// What the upgrade looks like to its operator: every host's part.
pub fn status(upgrade: &StoredAgentUpgrade, nodes: &[Node]) -> AgentUpgrade {
    let rows: HashMap<NodeId, &UpgradingNode> =
        upgrade.nodes.iter().map(|n| (n.node_id, n)).collect();
    let nodes = nodes
        .iter()
        .map(|node| {
            let row = rows.get(&node.id);
            let (state, message) = match row.map(|r| r.state) {
                Some(UpgradingState::Failed) => (
                    AgentUpgradeNodeState::Failed,
                    row.and_then(|r| r.message.clone()),
                ),
                Some(UpgradingState::Upgrading) => (
                    AgentUpgradeNodeState::Upgrading,
                    row.and_then(|r| r.message.clone()),
                ),
                _ if runs(node, &upgrade.build) => (AgentUpgradeNodeState::Upgraded, None),
                _ if !online(node) => (AgentUpgradeNodeState::Offline, None),
                _ if !can_upgrade(node) => (
                    AgentUpgradeNodeState::NeedsPackage,
                    Some(
                        "its agent cannot upgrade itself (protocol 2 or older): upgrade its package"
                            .to_owned(),
                    ),
                ),
                _ => (AgentUpgradeNodeState::Waiting, None),
            };
            AgentUpgradeNode {
                node_id: node.id,
                name: node.name.clone(),
                state,
                build: node.agent.as_ref().and_then(|a| a.build.clone()),
                message,
            }
        })
        .collect();
    AgentUpgrade {
        build: upgrade.build.clone(),
        version: upgrade.version.clone(),
        state: upgrade.state,
        message: upgrade.message.clone(),
        batch_size: upgrade.batch_size,
        trial_seconds: upgrade.trial_seconds,
        started_at: upgrade.started_at,
        nodes,
    }
}

/// Drives every running upgrade, for as long as this replica runs the engine.
pub async fn run(engine: Arc<Engine>) {
    // When each host was last told, by this process.
    let told: Arc<std::sync::Mutex<HashMap<NodeId, Instant>>> = Arc::default();
    loop {
        match engine.store.running_agent_upgrades().await {
            Ok(tenants) => {
                for tenant in tenants {
                    if let Err(e) = step(&engine, tenant, &told).await {
                        tracing::warn!(%tenant, error = %e, "agent upgrade step failed");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list running agent upgrades"),
        }
        tokio::time::sleep(STEP).await;
    }
}

async fn step(
    engine: &Arc<Engine>,
    tenant: TenantId,
    told: &Arc<std::sync::Mutex<HashMap<NodeId, Instant>>>,
) -> anyhow::Result<()> {
    let store = &engine.store;
    let Some(upgrade) = store.agent_upgrade(tenant).await? else {
        return Ok(());
    };
    if upgrade.state != AgentUpgradeState::Running {
        return Ok(());
    }
    let mut nodes = store.upgradable_nodes(tenant).await?;
    engine.agents.overlay_all(&mut nodes).await;
    let now = OffsetDateTime::now_utc();
    let decision = decide(&upgrade, &nodes, now);
    for (node, state, message) in &decision.record {
        store
            .set_upgrading_node(
                tenant,
                *node,
                &upgrade.build,
                *state,
                message.as_deref(),
                now,
            )
            .await?;
        if *state == UpgradingState::Upgraded {
            tracing::info!(%tenant, node_id = %node, build = upgrade.build, "a host's agent upgraded");
        }
    }
    for node in &decision.forget {
        store
            .forget_upgrading_node(tenant, *node, &upgrade.build)
            .await?;
        tracing::info!(%tenant, node_id = %node, "a host told to upgrade went away before it staged the build; it is told again once back");
    }
    if let Some((state, message)) = &decision.verdict {
        tracing::info!(%tenant, state = state.as_str(), message, "agent upgrade");
        store
            .set_agent_upgrade_state(
                tenant,
                &[AgentUpgradeState::Running],
                *state,
                message.as_deref(),
                &Actor::controller(),
            )
            .await?;
    }
    let build = AgentBuild {
        sha256: Sha256Hex::try_from(upgrade.build.clone())?,
        size: upgrade.size,
        version: upgrade.version.clone(),
        trial_seconds: upgrade.trial_seconds,
    };
    let offer = engine.sign_agent_build(&build)?;
    for node in decision.tell {
        {
            let mut told = told.lock().unwrap_or_else(|p| p.into_inner());
            if told.get(&node).is_some_and(|at| at.elapsed() < RESEND) {
                continue;
            }
            told.insert(node, Instant::now());
        }
        let (engine, offer, build) = (engine.clone(), offer.clone(), upgrade.build.clone());
        tokio::spawn(async move {
            let asked = engine
                .agents
                .request(node, |_| Instruction::UpgradeAgent(offer), STAGE_TIMEOUT)
                .await;
            let (state, message) = match asked {
                Ok(Outcome::Done) => (UpgradingState::Upgrading, ON_TRIAL.to_owned()),
                Ok(Outcome::Failed { error }) => (UpgradingState::Failed, error),
                Ok(other) => (
                    UpgradingState::Failed,
                    format!("the agent answered {other:?}"),
                ),
                // It may have answered and restarted at once; its hello says.
                Err(e) => {
                    tracing::info!(node_id = %node, error = %e, "no answer to the agent upgrade");
                    return;
                }
            };
            let now = OffsetDateTime::now_utc();
            if let Err(e) = engine
                .store
                .upgrading_node_answered(tenant, node, &build, state, &message, now)
                .await
            {
                tracing::warn!(node_id = %node, error = %e, "could not record a host's upgrade");
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use qb_api::{NodeFacts, NodeState};

    use super::*;

    const NEW: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const OLD: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    /// A node whose agent runs `build`, speaks `protocol`, online or not.
    fn node(name: &str, build: &str, protocol: u32, online: bool) -> Node {
        serde_json::from_value(serde_json::json!({
            "id": NodeId::new(),
            "name": name,
            "state": NodeState::Authorized,
            "cluster": null,
            "facts": NodeFacts::default(),
            "labels": {},
            "agent": {
                "version": "0.1.0",
                "build": build,
                "protocol": protocol,
                "online": online,
                "last_seen_at": null,
            },
            "role": null,
            "created_at": "2024-05-01T12:00:00Z",
            "updated_at": "2024-05-01T12:00:00Z",
        }))
        .expect("a node")
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn upgrade(batch_size: u32, rows: Vec<UpgradingNode>) -> StoredAgentUpgrade {
        StoredAgentUpgrade {
            build: NEW.to_owned(),
            size: 1,
            version: "0.1.0".to_owned(),
            batch_size,
            trial_seconds: 60,
            state: AgentUpgradeState::Running,
            message: None,
            started_at: now(),
            nodes: rows,
        }
    }

    fn row(node: &Node, state: UpgradingState, ago: i64, message: Option<&str>) -> UpgradingNode {
        UpgradingNode {
            node_id: node.id,
            state,
            since: now() - time::Duration::seconds(ago),
            message: message.map(str::to_owned),
        }
    }

    fn names(nodes: &[Node], ids: &[NodeId]) -> Vec<String> {
        ids.iter()
            .map(|id| {
                let node = nodes.iter().find(|n| n.id == *id).expect("a node");
                node.name.to_string()
            })
            .collect()
    }

    #[test]
    fn one_host_goes_first_then_batches_once_it_is_back_on_the_build() {
        let nodes: Vec<Node> = (0..5)
            .map(|i| node(&format!("h{i}"), OLD, 3, true))
            .collect();
        let first = decide(&upgrade(2, vec![]), &nodes, now());
        assert_eq!(names(&nodes, &first.tell), ["h0"]);
        assert_eq!(first.verdict, None);
        // The canary on trial: nobody else starts, and it is not told again.
        let rows = vec![row(&nodes[0], UpgradingState::Upgrading, 5, Some(ON_TRIAL))];
        let waiting = decide(&upgrade(2, rows.clone()), &nodes, now());
        assert_eq!(waiting, Decision::default());
        // Back on the build: once it has been for a while, it upgraded, and a batch of two
        // starts.
        let mut back = nodes.clone();
        back[0] = node("h0", NEW, 3, true);
        back[0].id = nodes[0].id;
        let soaking = decide(&upgrade(2, rows), &back, now());
        assert_eq!(soaking, Decision::default());
        let rows = vec![row(
            &nodes[0],
            UpgradingState::Upgrading,
            20,
            Some(ON_TRIAL),
        )];
        let next = decide(&upgrade(2, rows), &back, now());
        assert_eq!(
            next.record.first(),
            Some(&(back[0].id, UpgradingState::Upgraded, None))
        );
        assert_eq!(names(&back, &next.tell), ["h1", "h2"]);
    }

    #[test]
    fn a_host_that_went_back_or_was_not_back_in_time_stops_the_upgrade() {
        let nodes: Vec<Node> = (0..3)
            .map(|i| node(&format!("h{i}"), OLD, 3, true))
            .collect();
        let rolled_back = vec![row(
            &nodes[0],
            UpgradingState::Failed,
            1,
            Some("it exited (exit status: 1)"),
        )];
        let stopped = decide(&upgrade(2, rolled_back), &nodes, now());
        let (state, message) = stopped.verdict.expect("a verdict");
        assert_eq!(state, AgentUpgradeState::Stopped);
        assert!(
            message
                .as_deref()
                .unwrap()
                .starts_with("h0 failed: it exited"),
            "{message:?}"
        );
        assert!(stopped.tell.is_empty());
        // On trial past its deadline (60 s and the grace), and not back.
        let late = vec![row(
            &nodes[0],
            UpgradingState::Upgrading,
            121,
            Some(ON_TRIAL),
        )];
        let stopped = decide(&upgrade(2, late), &nodes, now());
        assert_eq!(stopped.record[0].1, UpgradingState::Failed);
        assert_eq!(stopped.verdict.unwrap().0, AgentUpgradeState::Stopped);
        // Still downloading after the same time is fine, and is asked again.
        let staging = vec![row(&nodes[0], UpgradingState::Upgrading, 121, None)];
        let going = decide(&upgrade(2, staging), &nodes, now());
        assert_eq!(
            (going.verdict, names(&nodes, &going.tell)),
            (None, vec!["h0".to_owned()])
        );
    }

    #[test]
    fn offline_hosts_and_old_agents_wait_and_the_upgrade_is_done_once_all_run_the_build() {
        let nodes = vec![
            node("h0", NEW, 3, true),
            node("h1", OLD, 3, false),
            node("h2", OLD, 2, true),
        ];
        let rows = vec![row(&nodes[0], UpgradingState::Upgraded, 30, None)];
        let waiting = decide(&upgrade(2, rows.clone()), &nodes, now());
        assert_eq!((waiting.tell.len(), waiting.verdict), (0, None));
        let shown = status(&upgrade(2, rows.clone()), &nodes);
        let states: Vec<AgentUpgradeNodeState> = shown.nodes.iter().map(|n| n.state).collect();
        assert_eq!(
            states,
            [
                AgentUpgradeNodeState::Upgraded,
                AgentUpgradeNodeState::Offline,
                AgentUpgradeNodeState::NeedsPackage
            ]
        );
        // h1 is back, h2's package was upgraded: both start, then the upgrade is done.
        let mut later = vec![
            nodes[0].clone(),
            node("h1", OLD, 3, true),
            node("h2", OLD, 3, true),
        ];
        later[1].id = nodes[1].id;
        later[2].id = nodes[2].id;
        assert_eq!(
            names(
                &later,
                &decide(&upgrade(2, rows.clone()), &later, now()).tell
            ),
            ["h1", "h2"]
        );
        let done = vec![
            node("h0", NEW, 3, true),
            node("h1", NEW, 3, true),
            node("h2", NEW, 3, false),
        ];
        let verdict = decide(&upgrade(2, vec![]), &done, now()).verdict;
        assert_eq!(verdict, Some((AgentUpgradeState::Done, None)));
    }

    #[test]
    fn a_host_gone_before_it_staged_waits_and_is_told_again_once_back() {
        let mut nodes = vec![node("h0", OLD, 3, false), node("h1", OLD, 3, true)];
        nodes[0].agent.as_mut().unwrap().last_seen_at = Some(now() - time::Duration::seconds(30));
        // Told 700 s ago (longer than staging may take), offline for 30 s: it waits.
        let rows = vec![row(&nodes[0], UpgradingState::Upgrading, 700, None)];
        let waiting = decide(&upgrade(2, rows.clone()), &nodes, now());
        assert_eq!(waiting, Decision::default());
        // Away longer than the grace: forgotten, and the upgrade goes on without it.
        nodes[0].agent.as_mut().unwrap().last_seen_at = Some(now() - time::Duration::seconds(61));
        let away = decide(&upgrade(2, rows.clone()), &nodes, now());
        assert_eq!(names(&nodes, &away.forget), ["h0"]);
        assert_eq!(names(&nodes, &away.tell), ["h1"]);
        assert_eq!(away.verdict, None);
        // On trial, it is not forgotten: its new agent had to be back in time.
        let on_trial = vec![row(
            &nodes[0],
            UpgradingState::Upgrading,
            121,
            Some(ON_TRIAL),
        )];
        let late = decide(&upgrade(2, on_trial), &nodes, now());
        assert!(late.forget.is_empty());
        assert_eq!(late.verdict.unwrap().0, AgentUpgradeState::Stopped);
    }

    #[test]
    fn a_host_seen_on_another_build_after_it_upgraded_counts_as_failed() {
        let nodes = vec![node("h0", OLD, 3, true), node("h1", OLD, 3, true)];
        let rows = vec![row(&nodes[0], UpgradingState::Upgraded, 30, None)];
        let decision = decide(&upgrade(2, rows), &nodes, now());
        assert_eq!(decision.record[0].1, UpgradingState::Failed);
        assert_eq!(decision.verdict.unwrap().0, AgentUpgradeState::Stopped);
    }
}
