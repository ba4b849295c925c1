//! The engine's decisions, apart from its actions: what a cluster's state is, whether its nodes
//! must pass preflight (again), etcd's next membership change, a leaving node's next step. Each takes what the store and
//! the agents say, and the time, and returns a verdict, with no I/O, so tables of cases test
//! them; the cluster's executor does what they say.

use std::net::IpAddr;

use qb_agent_proto::kube::KubeNode;
use qb_api::{ClusterState, NodeId, NodePlan, PlanState, PreflightReport, StepState};
use qb_store::{Drain, EngineNode};

/// A failed preflight stands this long before it is run again: the cluster shows it as
/// `blocked` meanwhile.
pub const PREFLIGHT_RETRY: time::Duration = time::Duration::seconds(30);

/// A staying node as the state decision sees it.
#[derive(Clone, Debug)]
pub struct NodeView<'a> {
    pub name: &'a str,
    /// Its agent holds a channel to the controller.
    pub online: bool,
    /// The cluster address the host no longer has (an operator must give it back).
    pub lost_address: Option<IpAddr>,
    pub plan: Option<&'a NodePlan>,
}

impl<'a> NodeView<'a> {
    pub fn of(n: &'a EngineNode, online: bool) -> Self {
        let facts = &n.node.facts.addresses;
        Self {
            name: n.node.name.as_str(),
            online,
            lost_address: n
                .node
                .address
                .filter(|a| !facts.is_empty() && !facts.contains(a)),
            // A wipe (of a cluster it left) is no plan of this one: a node attached again
            // waits for its plan, even while the wipe stands applied.
            plan: n.node.plan.as_ref().filter(|_| !n.wipe_published()),
        }
    }
}

/// The cluster's state from its staying nodes' reports: `ready` when every node applied its
/// newest plan and is healthy; `degraded` when an installed cluster only has problems (an
/// offline agent, a sick service, a Node not Ready); else `installing`, saying what it waits
/// for — problems first. `was_installed`: the cluster was `ready` or `degraded`. `waiting_on`:
/// what the engine itself waits for (nodes leaving, etcd changes). `kube_nodes`: the Nodes as
/// the API server lists them, when the bundle runs kubelets and the API answered.
pub fn cluster_state(
    was_installed: bool,
    nodes: &[NodeView<'_>],
    waiting_on: &[String],
    kube_nodes: Option<&[KubeNode]>,
) -> (ClusterState, Option<String>) {
    let mut behind = Vec::new();
    let mut unhealthy = Vec::new();
    for n in nodes {
        let name = n.name;
        if !n.online {
            unhealthy.push(format!("{name}: agent offline"));
            continue;
        }
        if let Some(address) = n.lost_address {
            unhealthy.push(format!(
                "{name}: the host no longer has its cluster address {address}"
            ));
        }
        let Some(plan) = n.plan else {
            behind.push(format!("{name}: no plan yet"));
            continue;
        };
        match &plan.report {
            Some(r) if r.generation == plan.generation && r.state == PlanState::Applied => {
                let sick: Vec<&str> = r
                    .services
                    .iter()
                    .filter(|s| !s.healthy)
                    .map(|s| s.name.as_str())
                    .collect();
                if !sick.is_empty() {
                    unhealthy.push(format!("{name}: {} unhealthy", sick.join(", ")));
                }
                let runs_kubelet = r.services.iter().any(|s| s.name == "kubelet");
                if runs_kubelet {
                    match kube_nodes.map(|nodes| nodes.iter().find(|k| k.name == name)) {
                        None => unhealthy.push(format!("{name}: no API server answers")),
                        Some(None) => behind.push(format!("{name}: Node not registered")),
                        Some(Some(k)) if !k.ready => {
                            unhealthy.push(format!("{name}: Node not Ready"));
                        }
                        Some(Some(_)) => {}
                    }
                }
            }
            Some(r) if r.generation == plan.generation => {
                let step = r
                    .steps
                    .iter()
                    .find(|s| s.state != StepState::Done)
                    .map(|s| match &s.message {
                        Some(m) => format!("{} {:?}: {m}", s.name, s.state),
                        None => format!("{} {:?}", s.name, s.state),
                    })
                    .unwrap_or_else(|| format!("{:?}", r.state));
                behind.push(format!("{name}: {step}"));
            }
            _ => behind.push(format!("{name}: applying plan {}", plan.generation)),
        }
    }
    // Problems first (an offline agent, a sick service), then progress: the message shows
    // only the first few items.
    let mut all: Vec<String> = unhealthy.clone();
    all.extend(waiting_on.iter().cloned());
    all.extend(behind.iter().cloned());
    if all.is_empty() {
        (ClusterState::Ready, None)
    } else if behind.is_empty() && waiting_on.is_empty() && was_installed {
        (ClusterState::Degraded, Some(summarize(&unhealthy)))
    } else {
        (ClusterState::Installing, Some(summarize(&all)))
    }
}

/// What to do about preflight before nodes new to the cluster get plans.
#[derive(Debug, PartialEq, Eq)]
pub enum Preflight {
    /// The newest run covered exactly these nodes and passed: go on.
    Passed,
    /// Show this state and message, and look again later.
    Hold(ClusterState, String),
    /// Run it now.
    Run,
}

/// Decides from the newest run (its report and the nodes it covered), the staying nodes and
/// which of them have no agent online: a run that covered exactly these nodes stands (a failed
/// one for [`PREFLIGHT_RETRY`]); else it runs again once every agent is online.
pub fn preflight(
    latest: Option<(&PreflightReport, &[NodeId])>,
    nodes: &[NodeId],
    offline: &[&str],
    now: time::OffsetDateTime,
) -> Preflight {
    let mut ids = nodes.to_vec();
    ids.sort();
    if let Some((report, covered)) = latest {
        let mut covered = covered.to_vec();
        covered.sort();
        if covered == ids {
            if report.passed {
                return Preflight::Passed;
            }
            if now - report.started_at < PREFLIGHT_RETRY {
                return failed(report);
            }
        }
    }
    if !offline.is_empty() {
        return Preflight::Hold(
            ClusterState::Preflight,
            format!(
                "waiting for the agents of {} to connect",
                offline.join(", ")
            ),
        );
    }
    Preflight::Run
}

/// A run that just finished: go on, or hold the cluster `blocked` with its problems.
pub fn preflight_ran(report: &PreflightReport) -> Preflight {
    if report.passed {
        Preflight::Passed
    } else {
        failed(report)
    }
}

fn failed(report: &PreflightReport) -> Preflight {
    Preflight::Hold(
        ClusterState::Blocked,
        format!("preflight failed: {}", summarize(&report.problems)),
    )
}

/// A leaving node's agent applied its newest plan (the wipe), or never reported a plan at all
/// (nothing was installed).
pub fn wiped(plan: Option<&NodePlan>) -> bool {
    match plan.and_then(|p| p.report.as_ref().map(|r| (p.generation, r))) {
        Some((generation, report)) => {
            report.generation >= generation && report.state == PlanState::Applied
        }
        None => true,
    }
}

/// A leaving node as the leave decision sees it.
#[derive(Clone, Debug)]
pub struct LeavingView<'a> {
    /// Detached with `--force`: no drain, and an unreachable host's wipe is not waited for.
    pub force: bool,
    /// Nothing (more) to drain: drained or given up on, or the cluster runs no API server.
    pub drained: bool,
    /// Still an etcd member (or learner).
    pub member: bool,
    pub plan: Option<&'a NodePlan>,
    /// The plan last published is the wipe.
    pub wipe_published: bool,
    pub online: bool,
}

/// The next step of a node leaving its cluster.
#[derive(Debug, PartialEq, Eq)]
pub enum Leave {
    /// Cordon and drain it through a master.
    Drain,
    /// Remove its etcd member (never below quorum; see [`super::membership`]).
    RemoveMember,
    /// Publish the plan that wipes it.
    PublishWipe,
    /// Wait for its agent to apply the wipe.
    AwaitWipe,
    /// Delete its Kubernetes Node and return it to the pool.
    Finish,
}

/// In order: drain (unless forced or nothing to drain), the etcd member out, the wipe, then
/// back to the pool. `--force` skips the drain and, for an unreachable host, the wait for its
/// wipe (it gets the wipe when it is back); never the member's removal. A node that never got
/// a plan has nothing to wipe.
pub fn leave(n: &LeavingView<'_>) -> Leave {
    if !n.force && !n.drained {
        Leave::Drain
    } else if n.member {
        Leave::RemoveMember
    } else if n.plan.is_some() && !n.wipe_published {
        Leave::PublishWipe
    } else if !wiped(n.plan) && !forced_off(n) {
        Leave::AwaitWipe
    } else {
        Leave::Finish
    }
}

/// A staying node as the membership decision sees it.
#[derive(Clone, Debug)]
pub struct MemberView {
    pub node: NodeId,
    /// Placement wants it a master.
    pub placed_master: bool,
    /// Its etcd membership: `None` for none, else whether it is still a learner.
    pub learner: Option<bool>,
}

/// The next change of etcd's membership, one per pass.
#[derive(Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// No member yet: these placed masters form etcd together.
    Form(Vec<NodeId>),
    /// Promote this learner once it caught up.
    Promote(NodeId),
    /// This placed master joins as a learner.
    AddLearner(NodeId),
    /// Placement no longer wants this member: remove it (never below quorum), then demote it.
    Remove(NodeId),
    /// Membership is what placement wants.
    Settled,
}

/// In order: form etcd from the placed masters; finish a learner before anything else; add a
/// placed master that has no member; remove a member placement no longer wants. One change at
/// a time, so quorum is never at stake in two changes at once.
pub fn membership(nodes: &[MemberView]) -> MembershipChange {
    if nodes.iter().all(|n| n.learner.is_none()) {
        let masters = nodes.iter().filter(|n| n.placed_master).map(|n| n.node);
        return MembershipChange::Form(masters.collect());
    }
    if let Some(n) = nodes.iter().find(|n| n.learner == Some(true)) {
        MembershipChange::Promote(n.node)
    } else if let Some(n) = nodes
        .iter()
        .find(|n| n.placed_master && n.learner.is_none())
    {
        MembershipChange::AddLearner(n.node)
    } else if let Some(n) = nodes
        .iter()
        .find(|n| !n.placed_master && n.learner.is_some())
    {
        MembershipChange::Remove(n.node)
    } else {
        MembershipChange::Settled
    }
}

/// Forced out while its host cannot be reached: its wipe waits for it to come back.
fn forced_off(n: &LeavingView<'_>) -> bool {
    n.force && !n.online
}

/// How a node's plan, as rendered now, differs from the one published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    None,
    /// Nothing that restarts a service (routes, the API balancer's upstreams).
    Quiet,
    /// A service, or a file or binary one reads: it restarts.
    Restarts,
}

/// A staying node as the rollout of changed plans sees it.
#[derive(Clone, Debug)]
pub struct RolloutNode<'a> {
    pub id: NodeId,
    pub name: &'a str,
    /// Its plan runs etcd and the control plane.
    pub master: bool,
    pub change: Change,
    /// It was given a plan of this cluster before (a node new to the cluster was not).
    pub planned: bool,
    pub online: bool,
    /// Its agent's last report: its newest plan applied.
    pub applied: bool,
    /// Applied, and every service healthy.
    pub healthy: bool,
    /// Its agent last reported a plan applied, perhaps an older one: it runs the cluster.
    pub installed: bool,
    /// How far its drain went: a worker is drained before a change restarts it, and
    /// uncordoned once it runs the change healthy.
    pub drain: Drain,
}

impl<'a> RolloutNode<'a> {
    pub fn of(n: &'a EngineNode, master: bool, change: Change, online: bool) -> Self {
        let plan = n.node.plan.as_ref();
        let report = plan.and_then(|p| p.report.as_ref());
        let installed = report.is_some_and(|r| r.state == PlanState::Applied);
        let applied =
            installed && plan.is_some_and(|p| report.is_some_and(|r| r.generation == p.generation));
        Self {
            id: n.node.id,
            name: n.node.name.as_str(),
            master,
            change,
            planned: plan.is_some() && !n.wipe_published(),
            online,
            applied,
            healthy: applied
                && report.is_some_and(|r| r.services.iter().all(|s| s.running && s.healthy)),
            installed,
            drain: n.drain,
        }
    }
}

/// How a cluster's rollout goes (see [`rollout`]).
#[derive(Clone, Copy, Debug)]
pub struct RolloutRules {
    /// Workers changed at once.
    pub worker_batch: usize,
    /// Workers are drained before they change (a master's agent can uncordon them after).
    pub drain_workers: bool,
    /// The operator paused the rollout.
    pub paused: bool,
    /// The engine just began running: an agent offline may only not be back yet.
    pub settling: bool,
}

/// Which changed plans to publish now, which workers to drain first or put back in service,
/// and what the rest wait for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    pub publish: Vec<NodeId>,
    /// Cordon and drain (or go on draining): their plans follow once drained.
    pub drain: Vec<NodeId>,
    /// Drained for a change they now run healthy: schedulable again.
    pub uncordon: Vec<NodeId>,
    pub waiting: Option<String>,
}

/// How a change that restarts services reaches nodes that run the cluster: one master at a
/// time, each only while every other master is online and healthy (so etcd never loses a
/// member it needs for quorum, and an API server always answers), then workers, `worker_batch`
/// at a time, each cordoned and drained first (its pods move, as their disruption budgets
/// allow) and uncordoned once it runs the change healthy; the next batch goes once the one
/// before is back in service. Goes at once: a change that
/// restarts nothing, a node new to the cluster, every node of a cluster none of whose masters
/// ever ran (being formed), and a worker that is offline or sick (taking it adds nothing to
/// what is down). While `settling` (the engine just began running), an offline agent may only
/// not be back yet: nodes that run the cluster wait. A failed gate holds the rest, saying why.
/// Without `drain_workers` (no master's agent could uncordon them), workers go undrained.
/// While `paused`, no node is given the change (workers done with it are still uncordoned).
/// Called once per pass: the next node goes once the store shows the last one healthy again.
pub fn rollout(nodes: &[RolloutNode<'_>], rules: RolloutRules) -> Rollout {
    let RolloutRules {
        worker_batch,
        drain_workers,
        paused,
        settling,
    } = rules;
    let mut out = Rollout::default();
    let ready = |n: &RolloutNode| n.online && n.healthy;
    let serving = nodes.iter().any(|n| n.master && n.installed);
    let rolled = |n: &&RolloutNode| n.change == Change::Restarts && n.planned && serving;
    for n in nodes
        .iter()
        .filter(|n| n.change != Change::None && !rolled(n))
    {
        out.publish.push(n.id);
    }
    // Workers drained for a change they now run healthy: back in service, whatever else goes.
    let back = |n: &&RolloutNode| {
        !n.master && n.drain != Drain::NotStarted && ready(n) && n.change == Change::None
    };
    out.uncordon = nodes.iter().filter(back).map(|n| n.id).collect();
    if !nodes.iter().any(|n| rolled(&n)) {
        return out;
    }
    let away: Vec<&str> = nodes
        .iter()
        .filter(|n| n.planned && !n.online)
        .map(|n| n.name)
        .collect();
    if settling && !away.is_empty() {
        out.waiting = Some(format!(
            "rolling out: waiting for the agents of {} to connect to the controller, which just started",
            away.join(", ")
        ));
        return out;
    }
    if paused {
        let left: Vec<String> = nodes
            .iter()
            .filter(|n| rolled(n))
            .map(|n| n.name.to_owned())
            .collect();
        let mut names = left.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        if left.len() > 5 {
            names.push_str(&format!(" and {} more", left.len() - 5));
        }
        out.waiting = Some(format!(
            "rolling out: paused; {names} {} for it to resume",
            if left.len() == 1 { "waits" } else { "wait" }
        ));
        return out;
    }
    // Masters first; a sick one first of all (it may need exactly this change).
    let mut masters: Vec<&RolloutNode> = nodes.iter().filter(|n| n.master && rolled(n)).collect();
    masters.sort_by_key(|n| (ready(n), n.name));
    if let Some(next) = masters.first() {
        let held: Vec<&str> = nodes
            .iter()
            .filter(|n| n.master && n.id != next.id && !ready(n))
            .map(|n| n.name)
            .collect();
        if held.is_empty() {
            out.publish.push(next.id);
            out.waiting = Some(format!(
                "rolling out to {}: masters one at a time, {} left after it",
                next.name,
                masters.len() - 1
            ));
        } else {
            out.waiting = Some(format!(
                "rolling out: {} waits until {} {} healthy (masters change one at a time)",
                next.name,
                held.join(", "),
                if held.len() == 1 { "is" } else { "are" }
            ));
        }
        return out;
    }
    // Workers once every master is back.
    let masters_away: Vec<&str> = nodes
        .iter()
        .filter(|n| n.master && !ready(n))
        .map(|n| n.name)
        .collect();
    if !masters_away.is_empty() {
        out.waiting = Some(format!(
            "rolling out: workers wait until {} {} healthy",
            masters_away.join(", "),
            if masters_away.len() == 1 { "is" } else { "are" }
        ));
        return out;
    }
    // Workers in flight: draining, or given a plan they do not run healthy yet.
    let mut busy: Vec<&str> = Vec::new();
    for n in nodes.iter().filter(|n| !n.master) {
        let drained = n.drain != Drain::NotStarted;
        if rolled(&n) {
            if drained && ready(n) {
                busy.push(n.name);
            }
        } else if !back(&n) && n.planned && n.online && (!n.applied || drained) {
            busy.push(n.name);
        }
    }
    let mut room = worker_batch.max(1).saturating_sub(busy.len());
    let (mut draining, mut left) = (Vec::new(), 0);
    for n in nodes.iter().filter(|n| !n.master && rolled(n)) {
        match n.drain {
            // Offline or sick (nothing more to lose), or drained: its plan.
            _ if !ready(n) => out.publish.push(n.id),
            Drain::Done => out.publish.push(n.id),
            Drain::Since(_) => {
                draining.push(n.name);
                out.drain.push(n.id);
            }
            Drain::NotStarted if room == 0 => left += 1,
            Drain::NotStarted if drain_workers => {
                room -= 1;
                draining.push(n.name);
                out.drain.push(n.id);
            }
            Drain::NotStarted => {
                room -= 1;
                busy.push(n.name);
                out.publish.push(n.id);
            }
        }
    }
    if !draining.is_empty() {
        out.waiting = Some(format!(
            "rolling out to workers: draining {}, {left} left after {}",
            draining.join(", "),
            if draining.len() == 1 { "it" } else { "them" }
        ));
    } else if left > 0 {
        out.waiting = Some(format!(
            "rolling out to workers, {left} left: waiting until {} {} back in service",
            busy.join(", "),
            if busy.len() == 1 { "is" } else { "are" },
        ));
    }
    out
}

/// The first few items, and how many more: state messages stay short.
pub fn summarize(items: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if items.len() > SHOWN {
        text.push_str(&format!("; and {} more", items.len() - SHOWN));
    }
    text
}

#[cfg(test)]
mod tests {
    use qb_api::{PlanReport, ServiceReport, StepReport};

    use super::*;

    /// A node for the rollout: name, master, due, planned, online, healthy.
    fn rolling(
        name: &'static str,
        master: bool,
        due: bool,
        planned: bool,
        online: bool,
        healthy: bool,
    ) -> RolloutNode<'static> {
        RolloutNode {
            id: NodeId::new(),
            name,
            master,
            change: if due { Change::Restarts } else { Change::None },
            planned,
            online,
            applied: healthy,
            healthy,
            installed: planned,
            drain: Drain::NotStarted,
        }
    }

    impl RolloutNode<'static> {
        fn with(mut self, change: impl FnOnce(&mut Self)) -> Self {
            change(&mut self);
            self
        }
    }

    fn rules(
        worker_batch: usize,
        drain_workers: bool,
        paused: bool,
        settling: bool,
    ) -> RolloutRules {
        RolloutRules {
            worker_batch,
            drain_workers,
            paused,
            settling,
        }
    }

    /// What happens, the nodes, the worker batch; who gets a plan (and who is drained or
    /// uncordoned: `drain w1`, `uncordon w1`), what the rest wait for.
    type RolloutCase = (
        &'static str,
        Vec<RolloutNode<'static>>,
        usize,
        Vec<&'static str>,
        Option<&'static str>,
    );

    fn names<'a>(nodes: &[RolloutNode<'a>], ids: &[NodeId]) -> Vec<&'a str> {
        ids.iter()
            .map(|id| nodes.iter().find(|n| n.id == *id).unwrap().name)
            .collect()
    }

    #[test]
    fn agents_not_back_after_a_start_hold_the_rollout_then_count_as_offline() {
        const M: bool = true;
        let nodes = vec![
            rolling("m1", M, true, true, false, true),
            rolling("m2", M, true, true, false, true),
            rolling("m3", M, true, true, false, true),
            rolling("w9", false, true, false, false, false),
        ];
        let settling = rollout(&nodes, rules(1, true, false, true));
        assert_eq!(names(&nodes, &settling.publish), ["w9"]);
        assert_eq!(
            settling.waiting.as_deref(),
            Some(
                "rolling out: waiting for the agents of m1, m2, m3 to connect to the controller, which just started"
            )
        );
        let later = rollout(&nodes, rules(1, true, false, false));
        assert_eq!(names(&nodes, &later.publish), ["w9"]);
        assert_eq!(
            later.waiting.as_deref(),
            Some("rolling out: m1 waits until m2, m3 are healthy (masters change one at a time)")
        );
    }

    #[test]
    fn changes_reach_one_master_at_a_time_then_workers_in_batches() {
        const M: bool = true;
        const W: bool = false;
        #[rustfmt::skip]
        let cases: Vec<RolloutCase> = vec![
            ("a new cluster gets every plan at once",
             vec![rolling("m1", M, true, false, true, false), rolling("m2", M, true, false, true, false),
                  rolling("w1", W, true, false, true, false)],
             1, vec!["m1", "m2", "w1"], None),
            ("the first master of three goes alone",
             vec![rolling("m1", M, true, true, true, true), rolling("m2", M, true, true, true, true),
                  rolling("m3", M, true, true, true, true), rolling("w1", W, true, true, true, true)],
             1, vec!["m1"], Some("rolling out to m1: masters one at a time, 2 left after it")),
            ("the next waits until the last is healthy again",
             vec![rolling("m1", M, false, true, true, false), rolling("m2", M, true, true, true, true),
                  rolling("m3", M, true, true, true, true), rolling("w1", W, true, true, true, true)],
             1, vec![], Some("rolling out: m2 waits until m1 is healthy (masters change one at a time)")),
            ("then the next",
             vec![rolling("m1", M, false, true, true, true), rolling("m2", M, true, true, true, true),
                  rolling("m3", M, true, true, true, true)],
             1, vec!["m2"], Some("rolling out to m2: masters one at a time, 1 left after it")),
            ("an offline master gets its plan (it applies it when back) ...",
             vec![rolling("m1", M, true, true, true, true), rolling("m2", M, true, true, false, false),
                  rolling("m3", M, true, true, true, true)],
             1, vec!["m2"], Some("rolling out to m2: masters one at a time, 2 left after it")),
            ("... and holds the others (etcd would lose its quorum)",
             vec![rolling("m1", M, true, true, true, true), rolling("m2", M, false, true, false, false),
                  rolling("m3", M, true, true, true, true)],
             1, vec![], Some("rolling out: m1 waits until m2 is healthy (masters change one at a time)")),
            ("a sick master goes first while the others are healthy",
             vec![rolling("m1", M, true, true, true, true), rolling("m2", M, true, true, true, false),
                  rolling("m3", M, true, true, true, true)],
             1, vec!["m2"], Some("rolling out to m2: masters one at a time, 2 left after it")),
            ("a node new to the cluster does not wait for the rollout",
             vec![rolling("m1", M, true, true, true, true), rolling("m2", M, true, true, true, false),
                  rolling("m3", M, true, true, true, true), rolling("w9", W, true, false, true, false)],
             1, vec!["w9", "m2"], Some("rolling out to m2: masters one at a time, 2 left after it")),
            ("workers wait for the masters",
             vec![rolling("m1", M, true, true, true, true), rolling("w1", W, true, true, true, true)],
             1, vec!["m1"], Some("rolling out to m1: masters one at a time, 0 left after it")),
            ("workers in batches",
             vec![rolling("m1", M, false, true, true, true), rolling("w1", W, true, true, true, true),
                  rolling("w2", W, true, true, true, true), rolling("w3", W, true, true, true, true)],
             2, vec!["drain w1", "drain w2"], Some("rolling out to workers: draining w1, w2, 1 left after them")),
            ("workers in batches, undrained when no master's agent could uncordon them",
             vec![rolling("m1", M, false, true, true, true), rolling("w1", W, true, true, true, true),
                  rolling("w2", W, true, true, true, true), rolling("w3", W, true, true, true, true)],
             2, vec!["w1", "w2"], Some("rolling out to workers, 1 left: waiting until w1, w2 are back in service")),
            ("a drained worker gets its plan, and holds the next batch",
             vec![rolling("m1", M, false, true, true, true),
                  rolling("w1", W, true, true, true, true).with(|n| n.drain = Drain::Done),
                  rolling("w2", W, true, true, true, true)],
             1, vec!["w1"], Some("rolling out to workers, 1 left: waiting until w1 is back in service")),
            ("a drain under way goes on (after a restart too), and counts in the batch",
             vec![rolling("m1", M, false, true, true, true),
                  rolling("w1", W, true, true, true, true).with(|n| n.drain = Drain::Since(time::OffsetDateTime::UNIX_EPOCH)),
                  rolling("w2", W, true, true, true, true)],
             1, vec!["drain w1"], Some("rolling out to workers: draining w1, 1 left after it")),
            ("a drained worker running the change healthy is uncordoned, and the next one drained",
             vec![rolling("m1", M, false, true, true, true),
                  rolling("w1", W, false, true, true, true).with(|n| n.drain = Drain::Done),
                  rolling("w2", W, true, true, true, true)],
             1, vec!["drain w2", "uncordon w1"], Some("rolling out to workers: draining w2, 0 left after it")),
            ("a drained worker sick after the change stays cordoned and holds the rest",
             vec![rolling("m1", M, false, true, true, true),
                  rolling("w1", W, false, true, true, false).with(|n| { n.drain = Drain::Done; n.applied = true; }),
                  rolling("w2", W, true, true, true, true)],
             1, vec![], Some("rolling out to workers, 1 left: waiting until w1 is back in service")),
            ("a worker changing holds the next batch; an offline one gets its plan",
             vec![rolling("m1", M, false, true, true, true), rolling("w1", W, false, true, true, false),
                  rolling("w2", W, true, true, true, true), rolling("w3", W, true, true, false, false)],
             1, vec!["w3"], Some("rolling out to workers, 1 left: waiting until w1 is back in service")),
            ("a cluster being formed (no master ever ran) gets every plan at once",
             vec![rolling("m1", M, true, true, true, false).with(|n| n.installed = false),
                  rolling("w1", W, true, true, true, false).with(|n| n.installed = false)],
             1, vec!["m1", "w1"], None),
            ("the only master changing: workers wait for it",
             vec![rolling("m1", M, false, true, true, false), rolling("w1", W, true, true, true, true)],
             1, vec![], Some("rolling out: workers wait until m1 is healthy")),
            ("a change that restarts nothing goes everywhere at once, past any gate",
             vec![rolling("m1", M, true, true, true, true).with(|n| n.change = Change::Quiet),
                  rolling("m2", M, true, true, false, false).with(|n| n.change = Change::Quiet),
                  rolling("w1", W, true, true, true, true).with(|n| n.change = Change::Quiet)],
             1, vec!["m1", "m2", "w1"], None),
            ("a sick worker that applied its plan holds no one",
             vec![rolling("m1", M, false, true, true, true),
                  rolling("w1", W, false, true, true, false).with(|n| n.applied = true),
                  rolling("w2", W, true, true, true, true), rolling("w3", W, true, true, true, true)],
             1, vec!["drain w2"], Some("rolling out to workers: draining w2, 1 left after it")),
            ("paused: nobody else changes; a worker done with it is uncordoned",
             vec![rolling("m1", M, false, true, true, true), rolling("m2", M, true, true, true, true),
                  rolling("w1", W, false, true, true, true).with(|n| n.drain = Drain::Done),
                  rolling("w2", W, true, true, true, true), rolling("w9", W, true, false, true, false)],
             1, vec!["w9", "uncordon w1"], Some("rolling out: paused; m2, w2 wait for it to resume")),
            ("the last worker back in service is uncordoned",
             vec![rolling("m1", M, false, true, true, true),
                  rolling("w1", W, false, true, true, true).with(|n| n.drain = Drain::Done)],
             1, vec!["uncordon w1"], None),
            ("nothing due",
             vec![rolling("m1", M, false, true, true, true), rolling("w1", W, false, true, true, true)],
             1, vec![], None),
        ];
        for (what, nodes, batch, actions, waiting) in cases {
            let got = rollout(
                &nodes,
                rules(
                    batch,
                    !what.contains("undrained"),
                    what.contains("paused"),
                    false,
                ),
            );
            let done: Vec<String> = names(&nodes, &got.publish)
                .into_iter()
                .map(str::to_owned)
                .chain(
                    names(&nodes, &got.drain)
                        .iter()
                        .map(|n| format!("drain {n}")),
                )
                .chain(
                    names(&nodes, &got.uncordon)
                        .iter()
                        .map(|n| format!("uncordon {n}")),
                )
                .collect();
            assert_eq!(done, actions, "{what}");
            assert_eq!(got.waiting.as_deref(), waiting, "{what}");
        }
    }

    /// What happens, whether the cluster was installed, its nodes, what the engine waits on,
    /// the Nodes the API lists; the state and message expected.
    type StateCase<'a> = (
        &'a str,
        bool,
        Vec<NodeView<'a>>,
        &'a [String],
        Option<&'a [KubeNode]>,
        ClusterState,
        Option<&'a str>,
    );
    /// What happens, the newest run and whom it covered, the agents offline; the verdict.
    type PreflightCase<'a> = (
        &'a str,
        Option<(&'a PreflightReport, &'a [NodeId])>,
        &'a [&'a str],
        Preflight,
    );

    /// A plan of generation 2 and a report: of `generation`, in `state`, with `services`
    /// (name, healthy).
    fn plan(generation: u64, state: PlanState, services: &[(&str, bool)]) -> NodePlan {
        NodePlan {
            generation: 2,
            kubernetes_version: None,
            report: Some(PlanReport {
                generation,
                state,
                steps: vec![StepReport {
                    name: "service:etcd".to_owned(),
                    state: if state == PlanState::Applied {
                        StepState::Done
                    } else {
                        StepState::Running
                    },
                    message: None,
                }],
                services: services
                    .iter()
                    .map(|(name, healthy)| ServiceReport {
                        name: (*name).to_owned(),
                        running: true,
                        healthy: *healthy,
                        restarts: 0,
                        pid: None,
                        last_exit: None,
                    })
                    .collect(),
            }),
        }
    }

    fn kube(name: &str, ready: bool) -> KubeNode {
        KubeNode {
            name: name.to_owned(),
            ready,
            unschedulable: false,
            kubelet_version: "v1.20.2".to_owned(),
            role_labels: Vec::new(),
            master_taint: false,
        }
    }

    #[test]
    fn the_cluster_state_follows_the_nodes_reports() {
        let applied = plan(2, PlanState::Applied, &[("etcd", true)]);
        let sick = plan(2, PlanState::Applied, &[("etcd", false)]);
        let older = plan(1, PlanState::Applied, &[("etcd", true)]);
        let running = plan(2, PlanState::Applying, &[]);
        let kubelet = plan(2, PlanState::Applied, &[("kubelet", true)]);
        let node = |name, online, plan| NodeView {
            name,
            online,
            lost_address: None,
            plan,
        };
        let ready_kube = [kube("a", true)];
        let unready_kube = [kube("a", false)];
        let lost = NodeView {
            lost_address: Some("10.0.0.9".parse().unwrap()),
            ..node("a", true, Some(&applied))
        };
        let waiting = ["removing b's etcd member".to_owned()];
        #[rustfmt::skip]
        let cases: Vec<StateCase> = vec![
            ("all applied and healthy", false,
             vec![node("a", true, Some(&applied)), node("b", true, Some(&applied))], &[], None,
             ClusterState::Ready, None),
            ("a plan not reported yet", false,
             vec![node("a", true, Some(&older))], &[], None,
             ClusterState::Installing, Some("a: applying plan 2")),
            ("a step under way", false,
             vec![node("a", true, Some(&running))], &[], None,
             ClusterState::Installing, Some("a: service:etcd Running")),
            ("no plan yet", false,
             vec![node("a", true, None)], &[], None,
             ClusterState::Installing, Some("a: no plan yet")),
            ("installed, a service sick", true,
             vec![node("a", true, Some(&sick))], &[], None,
             ClusterState::Degraded, Some("a: etcd unhealthy")),
            ("installing, a service sick: problems first", false,
             vec![node("b", true, None), node("a", true, Some(&sick))], &[], None,
             ClusterState::Installing, Some("a: etcd unhealthy; b: no plan yet")),
            ("installed, an agent offline", true,
             vec![node("a", false, Some(&applied))], &[], None,
             ClusterState::Degraded, Some("a: agent offline")),
            ("installed, the engine waits on a change", true,
             vec![node("a", true, Some(&applied))], &waiting, None,
             ClusterState::Installing, Some("removing b's etcd member")),
            ("installed, the address gone", true,
             vec![lost], &[], None,
             ClusterState::Degraded, Some("a: the host no longer has its cluster address 10.0.0.9")),
            ("a kubelet and no API server", true,
             vec![node("a", true, Some(&kubelet))], &[], None,
             ClusterState::Degraded, Some("a: no API server answers")),
            ("a kubelet whose Node is not registered", true,
             vec![node("a", true, Some(&kubelet))], &[], Some(&[]),
             ClusterState::Installing, Some("a: Node not registered")),
            ("a kubelet whose Node is not Ready", true,
             vec![node("a", true, Some(&kubelet))], &[], Some(&unready_kube),
             ClusterState::Degraded, Some("a: Node not Ready")),
            ("a kubelet whose Node is Ready", true,
             vec![node("a", true, Some(&kubelet))], &[], Some(&ready_kube),
             ClusterState::Ready, None),
        ];
        for (case, was_installed, nodes, waiting_on, kube_nodes, state, message) in cases {
            assert_eq!(
                cluster_state(was_installed, &nodes, waiting_on, kube_nodes),
                (state, message.map(str::to_owned)),
                "{case}"
            );
        }
    }

    #[test]
    fn preflight_runs_when_its_last_run_does_not_cover_the_nodes_or_failed_a_while_ago() {
        let now = time::OffsetDateTime::now_utc();
        let (a, b) = (NodeId::new(), NodeId::new());
        let report = |passed, age: time::Duration| PreflightReport {
            id: uuid::Uuid::nil(),
            cluster: qb_api::ClusterRef {
                id: qb_api::ClusterId::new(),
                name: "c".parse().unwrap(),
            },
            started_at: now - age,
            duration_ms: 10,
            passed,
            problems: if passed {
                Vec::new()
            } else {
                vec!["a cannot reach b on 2379/tcp".to_owned()]
            },
            checks: Vec::new(),
            mesh: Vec::new(),
        };
        let passed = report(true, time::Duration::hours(1));
        let failed_now = report(false, time::Duration::seconds(5));
        let failed_long_ago = report(false, time::Duration::minutes(5));
        let blocked = Preflight::Hold(
            ClusterState::Blocked,
            "preflight failed: a cannot reach b on 2379/tcp".to_owned(),
        );
        let both = [b, a];
        let just_a = [a];
        #[rustfmt::skip]
        let cases: Vec<PreflightCase> = vec![
            ("never ran", None, &[], Preflight::Run),
            ("never ran, an agent offline", None, &["b"],
             Preflight::Hold(ClusterState::Preflight, "waiting for the agents of b to connect".to_owned())),
            ("passed for these nodes, in any order", Some((&passed, &both)), &[], Preflight::Passed),
            ("passed for these nodes, an agent offline since", Some((&passed, &both)), &["b"], Preflight::Passed),
            ("passed for fewer nodes", Some((&passed, &just_a)), &[], Preflight::Run),
            ("failed a moment ago", Some((&failed_now, &both)), &[], blocked),
            ("failed a while ago", Some((&failed_long_ago, &both)), &[], Preflight::Run),
        ];
        for (case, latest, offline, expected) in cases {
            assert_eq!(preflight(latest, &[a, b], offline, now), expected, "{case}");
        }
        assert_eq!(preflight_ran(&passed), Preflight::Passed);
    }

    #[test]
    fn a_node_is_wiped_once_its_agent_applied_its_newest_plan() {
        assert!(wiped(None), "no plan: nothing installed");
        let no_report = NodePlan {
            generation: 3,
            kubernetes_version: None,
            report: None,
        };
        assert!(wiped(Some(&no_report)), "never reported: nothing installed");
        assert!(wiped(Some(&plan(2, PlanState::Applied, &[]))));
        assert!(!wiped(Some(&plan(1, PlanState::Applied, &[]))));
        assert!(!wiped(Some(&plan(2, PlanState::Failed, &[]))));
    }

    #[test]
    fn a_leaving_node_is_drained_loses_its_member_is_wiped_then_goes() {
        let wiping = plan(1, PlanState::Applied, &[("etcd", true)]);
        let wiped_plan = plan(2, PlanState::Applied, &[]);
        let base = LeavingView {
            force: false,
            drained: false,
            member: true,
            plan: Some(&wiping),
            wipe_published: false,
            online: true,
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, LeavingView, Leave)> = vec![
            ("first, the drain", base.clone(), Leave::Drain),
            ("forced: no drain, the member all the same",
             LeavingView { force: true, ..base.clone() }, Leave::RemoveMember),
            ("drained: the member", LeavingView { drained: true, ..base.clone() }, Leave::RemoveMember),
            ("no member: the wipe",
             LeavingView { drained: true, member: false, ..base.clone() }, Leave::PublishWipe),
            ("the wipe sent: its agent applies it",
             LeavingView { drained: true, member: false, wipe_published: true, ..base.clone() },
             Leave::AwaitWipe),
            ("wiped: gone",
             LeavingView { drained: true, member: false, wipe_published: true, plan: Some(&wiped_plan), ..base.clone() },
             Leave::Finish),
            ("forced and unreachable: gone without waiting for the wipe",
             LeavingView { force: true, member: false, wipe_published: true, online: false, ..base.clone() },
             Leave::Finish),
            ("forced but reachable: waits for its wipe",
             LeavingView { force: true, member: false, wipe_published: true, ..base.clone() },
             Leave::AwaitWipe),
            ("unreachable but not forced: waits",
             LeavingView { drained: true, member: false, wipe_published: true, online: false, ..base.clone() },
             Leave::AwaitWipe),
            ("never planned: nothing to wipe",
             LeavingView { drained: true, member: false, plan: None, ..base.clone() }, Leave::Finish),
        ];
        for (case, view, expected) in cases {
            assert_eq!(leave(&view), expected, "{case}");
        }
    }

    #[test]
    fn membership_changes_one_at_a_time_in_order() {
        let ids: Vec<NodeId> = (0..4).map(|_| NodeId::new()).collect();
        let view = |i: usize, placed_master: bool, learner: Option<bool>| MemberView {
            node: ids[i],
            placed_master,
            learner,
        };
        use MembershipChange::*;
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<MemberView>, MembershipChange)> = vec![
            ("no member: the placed masters form etcd",
             vec![view(0, true, None), view(1, false, None), view(2, true, None)],
             Form(vec![ids[0], ids[2]])),
            ("settled",
             vec![view(0, true, Some(false)), view(1, false, None)], Settled),
            ("a learner is promoted before anything else",
             vec![view(0, true, Some(false)), view(1, true, None), view(2, true, Some(true)), view(3, false, Some(false))],
             Promote(ids[2])),
            ("a placed master without a member joins",
             vec![view(0, true, Some(false)), view(1, true, None), view(3, false, Some(false))],
             AddLearner(ids[1])),
            ("then a member placement no longer wants leaves",
             vec![view(0, true, Some(false)), view(1, true, Some(false)), view(3, false, Some(false))],
             Remove(ids[3])),
        ];
        for (case, nodes, expected) in cases {
            assert_eq!(membership(&nodes), expected, "{case}");
        }
    }

    #[test]
    fn summaries_show_five_items_and_count_the_rest() {
        let items: Vec<String> = (1..=7).map(|i| i.to_string()).collect();
        assert_eq!(summarize(&items), "1; 2; 3; 4; 5; and 2 more");
        assert_eq!(summarize(&items[..2]), "1; 2");
    }
    /// A node attached again holds the wipe of the cluster it left, applied: that is no plan
    /// of this cluster, so the cluster is not ready before the node's own plan is.
    #[test]
    fn a_node_whose_newest_plan_is_a_wipe_has_no_plan_of_the_cluster_yet() {
        let engine_node = |plan_hash: &str| EngineNode {
            node: serde_json::from_value(serde_json::json!({
                "id": NodeId::new(),
                "name": "again",
                "state": "attached",
                "cluster": null,
                "facts": qb_api::NodeFacts::default(),
                "labels": {},
                "agent": null,
                "role": "master",
                "plan": plan(2, PlanState::Applied, &[]),
                "created_at": "2024-05-01T12:00:00Z",
                "updated_at": "2024-05-01T12:00:00Z",
            }))
            .expect("a node"),
            etcd: None,
            certs: None,
            plan_hash: Some(plan_hash.to_owned()),
            plan_restart_hash: None,
            pod_subnet: None,
            detach_force: false,
            drain: qb_store::Drain::NotStarted,
        };
        let wiped = engine_node(qb_store::WIPE_PLAN_HASH);
        let (state, message) = cluster_state(true, &[NodeView::of(&wiped, true)], &[], None);
        assert_eq!(state, ClusterState::Installing);
        assert_eq!(message.as_deref(), Some("again: no plan yet"));
        let planned = engine_node("0123abcd");
        let (state, _) = cluster_state(true, &[NodeView::of(&planned, true)], &[], None);
        assert_eq!(state, ClusterState::Ready);
    }
}
