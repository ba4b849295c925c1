//! etcd membership, one change per pass: the first masters form etcd together; a later master
//! joins as a learner and is promoted once etcd says it caught up; a member leaves only when
//! the members that stay, and are healthy, still make a quorum.
//!
//! The controller never dials a host: every etcd operation goes through the agent of a
//! voting member, against its local etcd.

use std::collections::BTreeMap;
use std::net::IpAddr;

use qb_agent_proto::etcd::{EtcdMember, EtcdOp};
use qb_api::{NodeId, NodeRole};
use qb_plan::placement::Placement;
use qb_plan::render::{EtcdBootstrap, InitialClusterState, etcd_peer_url};
use qb_store::{EngineCluster, EngineNode};

use super::{Engine, EngineError, decide};

pub use qb_plan::membership::Membership;

async fn set_engine(
    engine: &Engine,
    ec: &EngineCluster,
    n: &EngineNode,
    role: Option<NodeRole>,
    membership: Option<&Membership>,
) -> Result<(), qb_store::StoreError> {
    engine
        .store
        .set_node_engine(
            ec.tenant,
            n.node.id,
            ec.cluster.id,
            role,
            membership,
            n.certs.as_ref(),
        )
        .await
}

/// Whether a node's etcd is up and healthy, as its agent reports.
fn etcd_healthy(engine: &Engine, n: &EngineNode) -> bool {
    engine.agents.online(n.node.id) && n.reports_healthy("etcd")
}

/// What a membership step did.
pub enum Step {
    /// Membership is what placement wants.
    Settled,
    /// The store changed: render plans from fresh state on the next pass.
    Changed(String),
    /// Waiting for something (a learner to catch up, a member to be healthy); plans may be
    /// rendered meanwhile (a learner's node must run etcd to catch up).
    Waiting(String),
}

/// The next membership change, if one is due: [`super::decide::membership`] chooses it from
/// the store's view; this does it through a voting member's agent.
pub async fn step(
    engine: &Engine,
    ec: &EngineCluster,
    staying: &[&EngineNode],
    placement: &Placement,
    addresses: &BTreeMap<NodeId, IpAddr>,
) -> Result<Step, EngineError> {
    // Workers are placed at once: nothing to change in etcd.
    for n in staying {
        if n.node.role.is_none() && placement.role(n.node.id) == Some(NodeRole::Worker) {
            set_engine(engine, ec, n, Some(NodeRole::Worker), None).await?;
        }
    }
    let members: Vec<(&EngineNode, Membership)> = staying
        .iter()
        .filter_map(|n| n.etcd.clone().map(|m| (*n, m)))
        .collect();
    let views: Vec<decide::MemberView> = staying
        .iter()
        .map(|n| decide::MemberView {
            node: n.node.id,
            placed_master: placement.role(n.node.id) == Some(NodeRole::Master),
            learner: n.etcd.as_ref().map(|m| m.learner),
        })
        .collect();
    let node = |id: NodeId| {
        staying
            .iter()
            .copied()
            .find(|n| n.node.id == id)
            .expect("the decision names a staying node")
    };
    match decide::membership(&views) {
        decide::MembershipChange::Form(masters) => {
            let masters: Vec<&EngineNode> = masters.into_iter().map(node).collect();
            form(engine, ec, &masters, addresses).await
        }
        decide::MembershipChange::Promote(id) => {
            promote(engine, ec, node(id), &members, addresses).await
        }
        decide::MembershipChange::AddLearner(id) => {
            add_learner(engine, ec, node(id), staying, &members, addresses).await
        }
        decide::MembershipChange::Remove(id) => {
            let n = node(id);
            if let Some(waiting) = remove(engine, ec, n, addresses).await? {
                return Ok(Step::Waiting(waiting));
            }
            set_engine(engine, ec, n, Some(NodeRole::Worker), None).await?;
            Ok(Step::Changed(format!(
                "{} is no longer an etcd member",
                n.node.name
            )))
        }
        decide::MembershipChange::Settled => Ok(Step::Settled),
    }
}

/// No etcd yet: the placed masters form it together.
async fn form(
    engine: &Engine,
    ec: &EngineCluster,
    masters: &[&EngineNode],
    addresses: &BTreeMap<NodeId, IpAddr>,
) -> Result<Step, EngineError> {
    let initial: Vec<(String, IpAddr)> = masters
        .iter()
        .map(|n| (n.node.name.to_string(), addresses[&n.node.id]))
        .collect();
    let bootstrap = Membership {
        bootstrap: EtcdBootstrap {
            initial_cluster: initial,
            state: InitialClusterState::New,
        },
        learner: false,
        member_id: None,
    };
    for n in masters {
        set_engine(engine, ec, n, Some(NodeRole::Master), Some(&bootstrap)).await?;
    }
    let names: Vec<&str> = masters.iter().map(|n| n.node.name.as_str()).collect();
    Ok(Step::Changed(format!(
        "forming etcd with {}",
        names.join(", ")
    )))
}

/// A learner is promoted once etcd says it caught up.
async fn promote(
    engine: &Engine,
    ec: &EngineCluster,
    n: &EngineNode,
    members: &[(&EngineNode, Membership)],
    addresses: &BTreeMap<NodeId, IpAddr>,
) -> Result<Step, EngineError> {
    let m = n.etcd.as_ref().expect("a learner has a membership");
    let Some(via) = voter_via(engine, members, n.node.id) else {
        return Ok(Step::Waiting(
            "waiting for a healthy etcd member".to_owned(),
        ));
    };
    let list = match engine.etcd(via, EtcdOp::List).await {
        Ok(list) => list,
        Err(e) => return Ok(Step::Waiting(format!("listing etcd members: {e}"))),
    };
    let peer = etcd_peer_url(addresses[&n.node.id]);
    let Some(member) = find(&list, &peer) else {
        // Lost (e.g. removed by hand): forget it; the next pass adds it again.
        set_engine(engine, ec, n, n.node.role, None).await?;
        return Ok(Step::Changed(format!(
            "{}'s etcd learner disappeared",
            n.node.name
        )));
    };
    // Still a learner in etcd: promote it. A voter already: an earlier pass promoted it but
    // did not get to record it.
    let promote_now = member.is_learner;
    if promote_now && let Err(e) = engine.etcd(via, EtcdOp::Promote { id: member.id }).await {
        return Ok(Step::Waiting(format!(
            "waiting to promote {}'s etcd learner: {e}",
            n.node.name
        )));
    }
    if promote_now {
        crate::crash::point("engine.etcd.promoted");
    }
    let voter = Membership {
        learner: false,
        ..m.clone()
    };
    set_engine(engine, ec, n, n.node.role, Some(&voter)).await?;
    if !promote_now {
        return Ok(Step::Changed(format!(
            "{} is a voting etcd member",
            n.node.name
        )));
    }
    tracing::info!(node = %n.node.name, "promoted etcd learner");
    Ok(Step::Changed(format!(
        "promoted {}'s etcd member",
        n.node.name
    )))
}

/// A placed master without a member joins as a learner.
async fn add_learner(
    engine: &Engine,
    ec: &EngineCluster,
    n: &EngineNode,
    staying: &[&EngineNode],
    members: &[(&EngineNode, Membership)],
    addresses: &BTreeMap<NodeId, IpAddr>,
) -> Result<Step, EngineError> {
    let Some(via) = voter_via(engine, members, n.node.id) else {
        return Ok(Step::Waiting(
            "waiting for a healthy etcd member to add a learner".to_owned(),
        ));
    };
    let peer = etcd_peer_url(addresses[&n.node.id]);
    let mut list = match engine.etcd(via, EtcdOp::List).await {
        Ok(list) => list,
        Err(e) => return Ok(Step::Waiting(format!("listing etcd members: {e}"))),
    };
    // Added by an earlier pass that did not get to record it: adopt it.
    if find(&list, &peer).is_none() {
        list = match engine
            .etcd(
                via,
                EtcdOp::AddLearner {
                    peer_url: peer.clone(),
                },
            )
            .await
        {
            Ok(list) => list,
            Err(e) => {
                return Ok(Step::Waiting(format!(
                    "adding {} to etcd: {e}",
                    n.node.name
                )));
            }
        };
        crate::crash::point("engine.etcd.learner_added");
    }
    let Some(member) = find(&list, &peer) else {
        return Ok(Step::Waiting(format!(
            "etcd did not list {}'s new member",
            n.node.name
        )));
    };
    let by_peer: BTreeMap<String, String> = staying
        .iter()
        .map(|m| {
            (
                etcd_peer_url(addresses[&m.node.id]),
                m.node.name.to_string(),
            )
        })
        .collect();
    let initial: Vec<(String, IpAddr)> = list
        .iter()
        .filter_map(|m| {
            let url = m.peer_urls.first()?;
            let name = by_peer.get(url)?;
            let address = staying
                .iter()
                .find(|s| s.node.name.as_str() == name)
                .map(|s| addresses[&s.node.id])?;
            Some((name.clone(), address))
        })
        .collect();
    let membership = Membership {
        bootstrap: EtcdBootstrap {
            initial_cluster: initial,
            state: InitialClusterState::Existing,
        },
        learner: member.is_learner,
        member_id: Some(member.id),
    };
    set_engine(engine, ec, n, Some(NodeRole::Master), Some(&membership)).await?;
    tracing::info!(node = %n.node.name, id = member.id, "added etcd learner");
    Ok(Step::Changed(format!(
        "added {} to etcd as a learner",
        n.node.name
    )))
}

/// Removes a leaving node's etcd member. `Some(reason)` while it has to wait.
pub async fn remove_leaving(
    engine: &Engine,
    ec: &EngineCluster,
    n: &EngineNode,
) -> Result<Option<String>, EngineError> {
    let addresses: BTreeMap<NodeId, IpAddr> = ec
        .nodes
        .iter()
        .filter_map(|m| Some((m.node.id, m.node.address?)))
        .collect();
    if let Some(waiting) = remove(engine, ec, n, &addresses).await? {
        return Ok(Some(waiting));
    }
    set_engine(engine, ec, n, n.node.role, None).await?;
    Ok(None)
}

/// Removes `n`'s member from etcd if the healthy members that stay keep a quorum.
async fn remove(
    engine: &Engine,
    ec: &EngineCluster,
    n: &EngineNode,
    addresses: &BTreeMap<NodeId, IpAddr>,
) -> Result<Option<String>, EngineError> {
    let members: Vec<(&EngineNode, Membership)> = ec
        .nodes
        .iter()
        .filter_map(|m| m.etcd.clone().map(|ms| (m, ms)))
        .collect();
    let others: Vec<&(&EngineNode, Membership)> = members
        .iter()
        .filter(|(m, _)| m.node.id != n.node.id)
        .collect();
    if others.is_empty() {
        // The last member: etcd goes with it.
        return Ok(None);
    }
    let Some(via) = voter_via(engine, &members, n.node.id) else {
        return Ok(Some(format!(
            "waiting for a healthy etcd member to remove {}'s",
            n.node.name
        )));
    };
    let list = match engine.etcd(via, EtcdOp::List).await {
        Ok(list) => list,
        Err(e) => return Ok(Some(format!("listing etcd members: {e}"))),
    };
    let recorded = n.etcd.as_ref().and_then(|m| m.member_id);
    let member = list.iter().find(|m| {
        addresses
            .get(&n.node.id)
            .is_some_and(|a| m.peer_urls.contains(&etcd_peer_url(*a)))
            || Some(m.id) == recorded
            || m.name == n.node.name.as_str()
    });
    let Some(member) = member else {
        return Ok(None);
    };
    let voters_after = list
        .iter()
        .filter(|m| !m.is_learner && m.id != member.id)
        .count();
    let healthy_after = healthy_voters(engine, &others);
    let quorum = majority(voters_after);
    if healthy_after < quorum {
        return Ok(Some(format!(
            "not removing {}'s etcd member yet: {healthy_after} healthy voting member(s) would remain, quorum needs {quorum}",
            n.node.name
        )));
    }
    match engine.etcd(via, EtcdOp::Remove { id: member.id }).await {
        Ok(_) => {
            tracing::info!(node = %n.node.name, id = member.id, "removed etcd member");
            crate::crash::point("engine.etcd.member_removed");
            Ok(None)
        }
        Err(e) => Ok(Some(format!("removing {}'s etcd member: {e}", n.node.name))),
    }
}

/// A healthy voting member other than `not`, to carry an etcd operation.
fn voter_via(
    engine: &Engine,
    members: &[(&EngineNode, Membership)],
    not: NodeId,
) -> Option<NodeId> {
    members
        .iter()
        .find(|(n, m)| n.node.id != not && !m.learner && etcd_healthy(engine, n))
        .map(|(n, _)| n.node.id)
}

/// How many of `members` vote and have a healthy etcd.
fn healthy_voters(engine: &Engine, members: &[&(&EngineNode, Membership)]) -> usize {
    members
        .iter()
        .filter(|(n, m)| !m.learner && etcd_healthy(engine, n))
        .count()
}

/// etcd's quorum among `voters`: more than half of them.
fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

fn find<'a>(list: &'a [EtcdMember], peer_url: &str) -> Option<&'a EtcdMember> {
    list.iter()
        .find(|m| m.peer_urls.iter().any(|u| u == peer_url))
}

/// Whether detaching `leaving` from the cluster keeps etcd safe: the healthy voting members
/// that stay must make a quorum of the members that stay, and at least one master must stay
/// unless every node leaves. `Err(reason)` when not.
pub fn detach_is_safe(
    engine: &Engine,
    ec: &EngineCluster,
    leaving: &[NodeId],
) -> Result<(), String> {
    let in_cluster = super::staying_nodes(ec);
    let members: Vec<(&EngineNode, Membership)> = in_cluster
        .iter()
        .filter_map(|n| n.etcd.clone().map(|m| (*n, m)))
        .collect();
    if members.is_empty() {
        return Ok(());
    }
    let all_leave = in_cluster.iter().all(|n| leaving.contains(&n.node.id));
    if all_leave {
        return Ok(());
    }
    let staying: Vec<&(&EngineNode, Membership)> = members
        .iter()
        .filter(|(n, _)| !leaving.contains(&n.node.id))
        .collect();
    if staying.is_empty() {
        return Err(
            "it would remove every etcd member while other nodes stay in the cluster".to_owned(),
        );
    }
    let voters_after = staying.iter().filter(|(_, m)| !m.learner).count();
    let healthy = healthy_voters(engine, &staying);
    let quorum = majority(voters_after);
    if healthy < quorum {
        return Err(format!(
            "only {healthy} healthy voting etcd member(s) would remain of {voters_after}; quorum needs {quorum}"
        ));
    }
    Ok(())
}
