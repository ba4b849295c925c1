//! The cluster engine: a level-triggered reconciler that turns attached nodes into a cluster
//! and keeps it so. Every pass reads what the store says (nodes, roles, etcd membership, plans,
//! drains, the agents' reports), compares it with what should be, and takes the next step. It
//! keeps no state of its own between passes, so a restarted or failed-over controller carries
//! on where the last one stopped.
//!
//! Each cluster has its own executor: a task that runs that cluster's passes, so a slow drain,
//! a stuck host or a long preflight on one cluster never delays another. The engine's own loop
//! starts and stops executors as clusters come and go, wakes them, and wipes pool nodes that
//! still run a cluster's plan.
//!
//! What to do is decided apart from doing it: [`decide`] holds the cluster's state, the
//! preflight gate, etcd's next membership change and a leaving node's next step as pure
//! functions, tested on tables of cases; this module and [`membership`] do what they say.
//!
//! The Kubernetes API is reached through the agent of a master whose API server is healthy
//! (the controller never dials a host): it cordons and drains, deletes Nodes, lists them.
//!
//! One cluster's pass, in order:
//! 1. nodes leaving (`detaching`): they are cordoned and drained while the API is reachable
//!    (for at most [`DRAIN_TIMEOUT`]), their etcd member is removed (one at a time, never
//!    below quorum), then they get a plan that wipes them; once the agent applied it their
//!    Node is deleted and they return to the pool;
//! 2. the cluster needs an imported bundle for its version (else `blocked`);
//! 3. nodes that never ran in the cluster pass preflight first (else `preflight`/`blocked`);
//! 4. placement says who is a master; etcd membership follows it one change at a time:
//!    the first masters form etcd together, later ones join as learners and are promoted
//!    once caught up;
//! 5. every node's plan is rendered, and published (signed, with a new generation) when it
//!    changed, as [`decide::rollout`] lets it: one master at a time, then workers in batches,
//!    each once the ones before are healthy again; the agent is told at once;
//! 6. the cluster's state follows from the agents' reports and, with an API server, from the
//!    Nodes' `Ready` condition: `installing`, `ready`, `degraded`;
//! 7. an installed cluster's add-ons are applied and checked (see [`crate::addons`]).

pub mod api;
pub mod decide;
mod drains;
mod executors;
pub mod membership;
pub mod preflight;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qb_agent_proto::kube::{KubeNode, KubeOp, KubeRequest};
use qb_agent_proto::plan::{Plan, SignedPlan};
use qb_agent_proto::{ControllerMessage, Instruction, Outcome};
use qb_api::{ClusterState, Node, NodeId, NodeRole, TenantId};
use qb_pki::PlanSigner;
use qb_plan::pki::{ClusterPki, NodeCerts};
use qb_plan::render::{ClusterInput, NodeInput};
use qb_store::{
    Actor, Drain, EngineCluster, EngineNode, PlanHashes, Store, StoreError, WIPE_PLAN_HASH,
};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::agents::Agents;
use crate::artifacts::ArtifactStore;
use executors::Next;

/// How often the engine looks even when nothing woke it.
const RESYNC: Duration = Duration::from_secs(5);
const SIGNER_SECRET: &str = "plan-signer";
/// The plan signer's certificate lifetime; a new one is issued when it runs out.
const SIGNER_LIFETIME: time::Duration = time::Duration::days(3650);
/// How long the engine keeps trying to drain a leaving node (a PodDisruptionBudget may refuse
/// evictions) before it detaches the node anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one drain attempt may take on the master's agent.
const DRAIN_ATTEMPT_SECONDS: u32 = 20;
/// The agent protocol that can uncordon a node: workers are drained for a change only when a
/// master's agent speaks it.
const UNCORDON_PROTOCOL: u32 = 3;

/// What the engine shares with the API and the agent endpoint.
pub struct Engine {
    pub store: Store,
    pub agents: Arc<Agents>,
    pub artifacts: ArtifactStore,
    signer: PlanSigner,
    /// Wakes the engine when there is work (an attach, a detach, an agent's report); it wakes
    /// every cluster's executor in turn.
    pub wake: Arc<Notify>,
    /// One preflight at a time per cluster (the executor's and the API's): each listens on
    /// the same ports of the cluster's nodes.
    preflights: Mutex<HashMap<qb_api::ClusterId, Arc<tokio::sync::Mutex<()>>>>,
    addons: crate::addons::AddonManager,
    /// When this replica's engine began running (see [`Engine::settling`]).
    running_since: Mutex<Option<std::time::Instant>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Plan(String),
}

impl Engine {
    /// The engine, with the plan signer kept in the database for all replicas.
    pub async fn load(
        store: Store,
        agents: Arc<Agents>,
        artifacts: ArtifactStore,
        ca: &qb_pki::CertificateAuthority,
    ) -> anyhow::Result<Self> {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Stored {
            chain_pem: String,
            key_pem: String,
        }
        let value = store
            .controller_secret(SIGNER_SECRET, || {
                let signer = ca.issue_plan_signer(SIGNER_LIFETIME)?;
                Ok(serde_json::to_string(&Stored {
                    chain_pem: signer.chain_pem().to_owned(),
                    key_pem: signer.key_pem().expose().to_owned(),
                })?)
            })
            .await?;
        let stored: Stored = serde_json::from_str(&value)?;
        Ok(Self {
            addons: crate::addons::AddonManager::new(store.clone(), agents.clone()),
            store,
            agents,
            artifacts,
            signer: PlanSigner::from_pem(&stored.chain_pem, &stored.key_pem)?,
            wake: Arc::new(Notify::new()),
            preflights: Mutex::new(HashMap::new()),
            running_since: Mutex::new(None),
        })
    }

    /// One pass over the pool and every cluster with work, one after the other (tests drive
    /// the engine with it; [`Engine::run`] gives each cluster its own task).
    pub async fn pass(&self) -> Result<(), EngineError> {
        self.wipe_pool_nodes().await;
        for (tenant, cluster) in self.store.engine_clusters().await? {
            if let Err(e) = self.reconcile(tenant, cluster).await {
                tracing::warn!(%tenant, cluster_id = %cluster, error = %e, "cluster pass failed");
            }
        }
        Ok(())
    }

    /// Sends a wipe to every pool node still running a cluster's plan.
    async fn wipe_pool_nodes(&self) {
        let nodes = match self.store.unwiped_pool_nodes().await {
            Ok(nodes) => nodes,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the pool's nodes to wipe");
                return;
            }
        };
        for (tenant, node) in nodes {
            if let Err(e) = self.publish_wipe(tenant, &node, None).await {
                tracing::warn!(node_id = %node.id, error = %e, "could not send a wipe plan");
            }
        }
    }

    async fn reconcile(
        &self,
        tenant: TenantId,
        cluster: qb_api::ClusterId,
    ) -> Result<Next, EngineError> {
        let ec = self.store.engine_cluster(tenant, cluster).await?;
        let (leaving, staying): (Vec<&EngineNode>, Vec<&EngineNode>) = ec
            .nodes
            .iter()
            .partition(|n| n.node.state == qb_api::NodeState::Detaching);
        let mut waiting_on = Vec::new();
        for node in &leaving {
            if let Some(why) = self.leave(&ec, node).await? {
                waiting_on.push(why);
            }
        }
        if staying.is_empty() {
            let (state, message) = if leaving.is_empty() {
                (ClusterState::Empty, None)
            } else {
                (ClusterState::Installing, Some(waiting_on.join("; ")))
            };
            self.store
                .set_cluster_state(tenant, cluster, state, message.as_deref())
                .await?;
            return Ok(Next::Wait);
        }
        let Layout {
            input,
            addresses,
            placement,
        } = match self.layout(&ec, &staying).await? {
            Ok(layout) => layout,
            Err(blocked) => return self.block(&ec, &blocked).await,
        };

        // Nodes that never ran here must pass preflight with the rest of the cluster first.
        if staying.iter().any(|n| n.node.role.is_none()) {
            match self
                .preflight_gate(&ec, &staying, &input, &placement, &addresses)
                .await?
            {
                None => {}
                Some((state, message)) => {
                    self.store
                        .set_cluster_state(tenant, cluster, state, Some(&message))
                        .await?;
                    return Ok(Next::Wait);
                }
            }
        }

        // Roles and etcd membership, one change at a time.
        match membership::step(self, &ec, &staying, &placement, &addresses).await? {
            membership::Step::Settled => {}
            membership::Step::Changed(message) => {
                self.store
                    .set_cluster_state(tenant, cluster, ClusterState::Installing, Some(&message))
                    .await?;
                // Render from the changed store on the next pass, at once.
                return Ok(Next::Again);
            }
            membership::Step::Waiting(message) => waiting_on.push(message),
        }

        // Pod subnets: given once per node, kept while it stays.
        let pod_cidr = ec.cluster.pod_cidr;
        let subnets = self
            .store
            .assign_pod_subnets(
                tenant,
                cluster,
                qb_plan::render::pod_subnet_count(&pod_cidr),
            )
            .await?;

        // Plans.
        let ec = self.store.engine_cluster(tenant, cluster).await?;
        let staying = staying_nodes(&ec);
        let pki = self.cluster_pki(&ec).await?;
        let mut inputs = Vec::new();
        for n in &staying {
            let Some(subnet) = subnets
                .get(&n.node.id)
                .and_then(|i| qb_plan::render::pod_subnet(&pod_cidr, *i as usize))
            else {
                let message = format!(
                    "the pod CIDR {pod_cidr} has no subnet left for {} (each node takes a /24, or a /64 for IPv6)",
                    n.node.name
                );
                return self.block(&ec, &message).await;
            };
            inputs.push(node_input(n, addresses[&n.node.id], subnet));
        }
        let mut rendered = Vec::new();
        for (n, node_input) in staying.iter().zip(&inputs) {
            let certs = self.node_certs(&ec, n, &pki, &input, node_input).await?;
            let plan = qb_plan::render::render(&input, &inputs, n.node.id, &pki, &certs)
                .map_err(|e| EngineError::Plan(format!("rendering {}'s plan: {e}", n.node.name)))?;
            let hashes = (plan_hash(&plan), restart_hash(&plan));
            rendered.push((n, plan, hashes));
        }
        // Changed plans reach running nodes one master at a time, then workers in batches.
        let views: Vec<decide::RolloutNode> = rendered
            .iter()
            .map(|(n, _, (hash, restart))| {
                let master = node_input_role(n) == NodeRole::Master;
                let change = if n.plan_hash.as_deref() == Some(hash.as_str()) {
                    decide::Change::None
                } else if n.plan_restart_hash.as_deref() == Some(restart.as_str()) {
                    decide::Change::Quiet
                } else {
                    decide::Change::Restarts
                };
                decide::RolloutNode::of(n, master, change, self.agents.online(n.node.id))
            })
            .collect();
        let workers = views.iter().filter(|v| !v.master).count();
        let drain_workers = self.api_master_speaking(&ec, UNCORDON_PROTOCOL).is_some();
        let rollout = decide::rollout(
            &views,
            decide::RolloutRules {
                worker_batch: worker_batch(workers),
                drain_workers,
                paused: ec.cluster.rollout_paused,
                settling: self.settling(),
            },
        );
        for (n, plan, (hash, restart)) in rendered {
            if rollout.publish.contains(&n.node.id) {
                let hashes = PlanHashes {
                    plan: &hash,
                    restart: Some(&restart),
                };
                self.publish(
                    tenant,
                    &n.node,
                    Some(cluster),
                    plan,
                    hashes,
                    Some(&input.version),
                )
                .await?;
            } else if n.plan_hash.as_deref() == Some(hash.as_str())
                && n.node
                    .plan
                    .as_ref()
                    .and_then(|p| p.kubernetes_version.as_ref())
                    != Some(&input.version)
            {
                // A new version that does not change this node's plan (e.g. only etcd's).
                self.store
                    .set_plan_version(tenant, n.node.id, &hash, &input.version)
                    .await?;
            }
        }
        if let Some(waiting) = rollout.waiting {
            waiting_on.push(waiting);
        }
        // Workers drained before a change, and back in service once they run it healthy.
        for n in &staying {
            if rollout.drain.contains(&n.node.id)
                && let Some(waiting) = self.drain(&ec, n, None).await?
            {
                waiting_on.push(waiting);
            } else if rollout.uncordon.contains(&n.node.id) {
                self.uncordon(&ec, n).await?;
            }
        }

        // State, from the agents' reports and the Nodes.
        let ec = self.store.engine_cluster(tenant, cluster).await?;
        let kube_nodes = match self.api_master(&ec) {
            Some(via) if input.bundle.artifact("kubelet").is_some() => {
                self.kube(via, KubeOp::Nodes).await.ok()
            }
            _ => None,
        };
        if let Some(nodes) = &kube_nodes {
            self.label_roles(&ec, nodes).await;
        }
        let (state, message) = self.observed_state(&ec, &waiting_on, kube_nodes.as_deref());
        self.store
            .set_cluster_state(tenant, cluster, state, message.as_deref())
            .await?;
        // Add-ons, once the cluster has a working API (a Kubernetes bundle).
        if matches!(state, ClusterState::Ready | ClusterState::Degraded) && kube_nodes.is_some() {
            self.addons.reconcile(&self.store, tenant, &input).await?;
        }
        Ok(Next::Wait)
    }

    async fn block(&self, ec: &EngineCluster, message: &str) -> Result<Next, EngineError> {
        self.store
            .set_cluster_state(
                ec.tenant,
                ec.cluster.id,
                ClusterState::Blocked,
                Some(message),
            )
            .await?;
        Ok(Next::Wait)
    }

    /// Runs preflight when [`decide::preflight`] says so. `None` when the nodes may go on;
    /// otherwise the state to show.
    async fn preflight_gate(
        &self,
        ec: &EngineCluster,
        staying: &[&EngineNode],
        input: &ClusterInput,
        placement: &qb_plan::placement::Placement,
        addresses: &BTreeMap<NodeId, IpAddr>,
    ) -> Result<Option<(ClusterState, String)>, EngineError> {
        let ids: Vec<NodeId> = staying.iter().map(|n| n.node.id).collect();
        let offline: Vec<&str> = staying
            .iter()
            .filter(|n| !self.agents.online(n.node.id))
            .map(|n| n.node.name.as_str())
            .collect();
        let latest = self
            .store
            .latest_preflight(ec.tenant, ec.cluster.id)
            .await?;
        let latest = latest.as_ref().map(|(r, covered)| (r, covered.as_slice()));
        let verdict =
            match decide::preflight(latest, &ids, &offline, time::OffsetDateTime::now_utc()) {
                decide::Preflight::Run => {
                    let targets = preflight::targets(input, staying, placement, addresses);
                    decide::preflight_ran(&self.run_preflight(ec, &targets).await?)
                }
                verdict => verdict,
            };
        Ok(match verdict {
            decide::Preflight::Hold(state, message) => Some((state, message)),
            decide::Preflight::Passed | decide::Preflight::Run => None,
        })
    }

    /// Runs preflight over `targets` now and stores the result.
    pub async fn run_preflight(
        &self,
        ec: &EngineCluster,
        targets: &[preflight::Target],
    ) -> Result<qb_api::PreflightReport, EngineError> {
        let cluster_lock = lock(&self.preflights)
            .entry(ec.cluster.id)
            .or_default()
            .clone();
        let _one_at_a_time = cluster_lock.lock().await;
        self.store
            .set_cluster_state(
                ec.tenant,
                ec.cluster.id,
                ClusterState::Preflight,
                Some(&format!("checking {} nodes", targets.len())),
            )
            .await?;
        let cluster = qb_api::ClusterRef {
            id: ec.cluster.id,
            name: ec.cluster.name.clone(),
        };
        let report = preflight::run(&self.agents, cluster, targets).await;
        let ids: Vec<NodeId> = targets.iter().map(|t| t.node).collect();
        self.store.save_preflight(ec.tenant, &report, &ids).await?;
        tracing::info!(
            cluster = %ec.cluster.name,
            passed = report.passed,
            ms = report.duration_ms,
            problems = report.problems.len(),
            "preflight finished"
        );
        Ok(report)
    }

    /// What a cluster's staying nodes amount to: the render input (with the bundle), each
    /// node's address and the placement. `Ok(Err(reason))` when the cluster cannot go on.
    async fn layout(
        &self,
        ec: &EngineCluster,
        staying: &[&EngineNode],
    ) -> Result<Result<Layout, String>, EngineError> {
        let version = &ec.cluster.kubernetes_version;
        let bundle = match self.store.get_bundle(ec.tenant, version).await {
            Ok(bundle) => bundle,
            Err(StoreError::NotFound { .. }) => {
                return Ok(Err(format!(
                    "no release bundle for Kubernetes {version} is imported; import one with `qb bundle import`"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        // A node's address is chosen once, when it is first planned here, and kept.
        let ranges = [ec.cluster.pod_cidr, ec.cluster.service_cidr];
        let mut addresses = BTreeMap::new();
        for n in staying {
            let address = match n.node.address {
                Some(address) => address,
                None => {
                    let chosen = match qb_plan::render::choose_node_address(
                        &n.node.facts,
                        &n.node.labels,
                        &ranges,
                    ) {
                        Ok(address) => address,
                        Err(e) => {
                            return Ok(Err(format!("no address for node {}: {e}", n.node.name)));
                        }
                    };
                    let kept = self
                        .store
                        .set_node_address(ec.tenant, n.node.id, ec.cluster.id, chosen)
                        .await?;
                    tracing::info!(node = %n.node.name, address = %kept, "node address chosen");
                    kept
                }
            };
            addresses.insert(n.node.id, address);
        }
        let candidates: Vec<_> = staying
            .iter()
            .map(|n| qb_plan::placement::Candidate {
                id: n.node.id,
                name: n.node.name.clone(),
                memory_bytes: n.node.facts.memory_bytes,
                labels: n.node.labels.clone(),
                current: n.node.role,
            })
            .collect();
        let placement =
            match qb_plan::placement::place(&candidates, ec.cluster.masters, &ec.cluster.roles) {
                Ok(p) => p,
                Err(e) => return Ok(Err(format!("placement: {e}"))),
            };
        Ok(Ok(Layout {
            input: ClusterInput {
                id: ec.cluster.id,
                name: ec.cluster.name.to_string(),
                version: version.clone(),
                pod_cidr: ec.cluster.pod_cidr,
                service_cidr: ec.cluster.service_cidr,
                bundle: bundle.manifest,
            },
            addresses,
            placement,
        }))
    }

    /// Runs preflight over a cluster's current nodes now, for the API.
    pub async fn preflight_now(
        &self,
        tenant: TenantId,
        cluster: qb_api::ClusterId,
    ) -> Result<qb_api::PreflightReport, EngineError> {
        let ec = self.store.engine_cluster(tenant, cluster).await?;
        let staying = staying_nodes(&ec);
        let Layout {
            input,
            addresses,
            placement,
        } = self
            .layout(&ec, &staying)
            .await?
            .map_err(EngineError::Plan)?;
        let targets = preflight::targets(&input, &staying, &placement, &addresses);
        let report = self.run_preflight(&ec, &targets).await?;
        self.wake.notify_one();
        Ok(report)
    }

    /// A leaving node's next step, as [`decide::leave`] says: drain, etcd member out, a wiping
    /// plan, then back to the pool. Returns what it waits for, if anything.
    async fn leave(
        &self,
        ec: &EngineCluster,
        n: &EngineNode,
    ) -> Result<Option<String>, EngineError> {
        let mut view = decide::LeavingView {
            force: n.detach_force,
            drained: n.drain == Drain::Done || !has_api_server(ec),
            member: n.etcd.is_some(),
            plan: n.node.plan.as_ref(),
            wipe_published: n.wipe_published(),
            online: self.agents.online(n.node.id),
        };
        loop {
            match decide::leave(&view) {
                decide::Leave::Drain => match self.drain(ec, n, Some(DRAIN_TIMEOUT)).await? {
                    Some(waiting) => return Ok(Some(waiting)),
                    None => view.drained = true,
                },
                decide::Leave::RemoveMember => {
                    let waiting = membership::remove_leaving(self, ec, n).await?;
                    return Ok(Some(waiting.unwrap_or_else(|| {
                        format!("removed {}'s etcd member", n.node.name)
                    })));
                }
                decide::Leave::PublishWipe => {
                    self.publish_wipe(ec.tenant, &n.node, Some(ec.cluster.id))
                        .await?;
                    return Ok(Some(format!("wiping {}", n.node.name)));
                }
                decide::Leave::AwaitWipe => {
                    return Ok(Some(format!("waiting for {} to be wiped", n.node.name)));
                }
                decide::Leave::Finish => break,
            }
        }
        if let Some(via) = self.api_master(ec) {
            let op = KubeOp::DeleteNode {
                node: n.node.name.to_string(),
            };
            if let Err(e) = self.kube(via, op).await {
                return Ok(Some(format!(
                    "deleting the Kubernetes Node {}: {e}",
                    n.node.name
                )));
            }
        }
        crate::crash::point("engine.detach.finishing");
        match self
            .store
            .finish_detach(ec.tenant, n.node.id, &Actor::controller())
            .await
        {
            Ok(node) => {
                tracing::info!(node_id = %node.id, node = %node.name, "node returned to the pool");
                Ok(None)
            }
            Err(StoreError::InvalidNodeState { .. } | StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives each registered Node the labels of its role and, on a cluster that taints masters,
    /// masters their taint; a failure is tried again on the next pass.
    async fn label_roles(&self, ec: &EngineCluster, kube_nodes: &[KubeNode]) {
        let Some(via) = self.api_master(ec) else {
            return;
        };
        for n in staying_nodes(ec) {
            let Some(k) = kube_nodes.iter().find(|k| k.name == n.node.name.as_str()) else {
                continue;
            };
            if n.node.role.is_none() {
                continue;
            }
            // A master is one once it runs etcd and the control plane (as its plan renders).
            let master = node_input_role(n) == NodeRole::Master;
            let labels = qb_agent_proto::kube::role_labels(master);
            let taint = master && ec.cluster.taint_masters;
            if k.role_labels
                .iter()
                .map(String::as_str)
                .eq(labels.iter().copied())
                && k.master_taint == taint
            {
                continue;
            }
            let op = KubeOp::SetRole {
                node: n.node.name.to_string(),
                master,
                taint,
            };
            match self.kube(via, op).await {
                Ok(_) => {
                    tracing::info!(node = %n.node.name, master, taint, "labelled the node's role")
                }
                Err(e) => {
                    tracing::warn!(node = %n.node.name, error = %e, "could not label the node's role")
                }
            }
        }
    }

    /// Whether the engine began running so recently (the controller started, or this replica
    /// took the engine over) that an agent it sees offline may just not be back yet.
    fn settling(&self) -> bool {
        lock(&self.running_since).is_some_and(|since| since.elapsed() < self.agents.grace())
    }

    /// A staying master whose agent is online and whose API server is healthy.
    fn api_master(&self, ec: &EngineCluster) -> Option<NodeId> {
        self.api_master_speaking(ec, 1)
    }

    /// As [`Self::api_master`], whose agent speaks at least `protocol` (as it last said).
    fn api_master_speaking(&self, ec: &EngineCluster, protocol: u32) -> Option<NodeId> {
        staying_nodes(ec)
            .into_iter()
            .filter(|n| n.node.role == Some(NodeRole::Master) && self.agents.online(n.node.id))
            .filter(|n| {
                let spoken = n.node.agent.as_ref().and_then(|a| a.protocol);
                spoken.unwrap_or(1) >= protocol
            })
            .find(|n| n.reports_healthy("kube-apiserver"))
            .map(|n| n.node.id)
    }

    /// A Kubernetes operation through `via`'s agent, against its own API server with the
    /// cluster administrator's certificate; the Nodes after it.
    pub(crate) async fn kube(&self, via: NodeId, op: KubeOp) -> Result<Vec<KubeNode>, String> {
        use qb_plan::render::paths;
        let wait = match &op {
            KubeOp::Drain {
                timeout_seconds, ..
            } => Duration::from_secs(u64::from(*timeout_seconds) + 10),
            _ => Duration::from_secs(20),
        };
        let request = KubeRequest {
            endpoint: "https://127.0.0.1:6443".to_owned(),
            ca_file: paths::CA_CERT.to_owned(),
            cert_file: paths::ADMIN_CERT.to_owned(),
            key_file: paths::ADMIN_KEY.to_owned(),
            op,
        };
        match self
            .agents
            .request(via, |_| Instruction::Kube(request), wait)
            .await
        {
            Ok(Outcome::KubeNodes { nodes }) => Ok(nodes),
            Ok(Outcome::Failed { error }) => Err(error),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn publish_wipe(
        &self,
        tenant: TenantId,
        node: &Node,
        cluster: Option<qb_api::ClusterId>,
    ) -> Result<(), EngineError> {
        let plan = Plan {
            node_id: node.id,
            ..Plan::default()
        };
        let hashes = PlanHashes {
            plan: WIPE_PLAN_HASH,
            restart: None,
        };
        self.publish(tenant, node, cluster, plan, hashes, None)
            .await
    }

    /// A build of the agent, offered to agents, signed as plans are.
    pub fn sign_agent_build(
        &self,
        build: &qb_agent_proto::AgentBuild,
    ) -> Result<qb_agent_proto::SignedAgentBuild, EngineError> {
        let text = serde_json::to_string(build).map_err(|e| EngineError::Plan(e.to_string()))?;
        let signature = self
            .signer
            .sign(text.as_bytes())
            .map_err(|e| EngineError::Plan(format!("signing the agent build: {e}")))?;
        Ok(qb_agent_proto::SignedAgentBuild {
            build: text,
            signature,
            signer_pem: self.signer.chain_pem().to_owned(),
        })
    }

    /// Signs and stores a plan with the node's next generation, and tells its agent.
    async fn publish(
        &self,
        tenant: TenantId,
        node: &Node,
        cluster: Option<qb_api::ClusterId>,
        mut plan: Plan,
        hashes: PlanHashes<'_>,
        version: Option<&qb_api::KubernetesVersion>,
    ) -> Result<(), EngineError> {
        let generation = self
            .store
            .publish_plan(tenant, node.id, cluster, hashes, version, |generation| {
                plan.generation = generation;
                let text = serde_json::to_string(&plan).map_err(|e| e.to_string())?;
                let signature = self
                    .signer
                    .sign(text.as_bytes())
                    .map_err(|e| e.to_string())?;
                serde_json::to_string(&SignedPlan {
                    plan: text,
                    signature,
                    signer_pem: self.signer.chain_pem().to_owned(),
                })
                .map_err(|e| e.to_string())
            })
            .await?;
        tracing::info!(node_id = %node.id, node = %node.name, generation, "published a plan");
        crate::crash::point("engine.plan.published");
        self.agents
            .push(node.id, ControllerMessage::PlanAvailable { generation });
        Ok(())
    }

    async fn cluster_pki(&self, ec: &EngineCluster) -> Result<ClusterPki, EngineError> {
        if let Some(pki) = &ec.pki {
            return Ok(pki.clone());
        }
        let pki = ClusterPki::generate(ec.cluster.name.as_str())
            .map_err(|e| EngineError::Plan(format!("generating the cluster PKI: {e}")))?;
        let stored = self
            .store
            .init_cluster_pki(ec.tenant, ec.cluster.id, &pki)
            .await?;
        crate::crash::point("engine.pki.stored");
        Ok(stored)
    }

    async fn node_certs(
        &self,
        ec: &EngineCluster,
        n: &EngineNode,
        pki: &ClusterPki,
        input: &ClusterInput,
        node: &NodeInput,
    ) -> Result<NodeCerts, EngineError> {
        if let Some(certs) = &n.certs
            && qb_plan::pki::node_certs_fit(certs, input, node)
        {
            return Ok(certs.clone());
        }
        let certs = qb_plan::pki::issue_node_certs(pki, input, node).map_err(|e| {
            EngineError::Plan(format!("issuing {}'s certificates: {e}", n.node.name))
        })?;
        self.store
            .set_node_engine(
                ec.tenant,
                n.node.id,
                ec.cluster.id,
                n.node.role,
                n.etcd.as_ref(),
                Some(&certs),
            )
            .await?;
        crate::crash::point("engine.certs.stored");
        Ok(certs)
    }

    /// The cluster's state as the agents report it (see [`decide::cluster_state`]).
    fn observed_state(
        &self,
        ec: &EngineCluster,
        waiting_on: &[String],
        kube_nodes: Option<&[KubeNode]>,
    ) -> (ClusterState, Option<String>) {
        let nodes: Vec<decide::NodeView> = staying_nodes(ec)
            .into_iter()
            .map(|n| decide::NodeView::of(n, self.agents.online(n.node.id)))
            .collect();
        let was_installed = matches!(
            ec.cluster.state,
            ClusterState::Ready | ClusterState::Degraded
        );
        decide::cluster_state(was_installed, &nodes, waiting_on, kube_nodes)
    }

    /// Sends an etcd request through a node's agent and returns the membership after it.
    pub(crate) async fn etcd(
        &self,
        via: NodeId,
        op: qb_agent_proto::etcd::EtcdOp,
    ) -> Result<Vec<qb_agent_proto::etcd::EtcdMember>, String> {
        let request = local_etcd(op);
        match self
            .agents
            .request(via, |_| Instruction::Etcd(request), Duration::from_secs(20))
            .await
        {
            Ok(Outcome::EtcdMembers { members }) => Ok(members),
            Ok(Outcome::Failed { error }) => Err(error),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// `op` on a master's own etcd member, with the client certificate its plan gives the agent.
pub(crate) fn local_etcd(op: qb_agent_proto::etcd::EtcdOp) -> qb_agent_proto::etcd::EtcdRequest {
    use qb_plan::render::paths;
    qb_agent_proto::etcd::EtcdRequest {
        endpoint: "https://127.0.0.1:2379".to_owned(),
        ca_file: paths::ETCD_CA_CERT.to_owned(),
        cert_file: paths::ETCD_HEALTHCHECK_CLIENT_CERT.to_owned(),
        key_file: paths::ETCD_HEALTHCHECK_CLIENT_KEY.to_owned(),
        op,
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What [`Engine::layout`] derives from a cluster.
struct Layout {
    input: ClusterInput,
    addresses: BTreeMap<NodeId, IpAddr>,
    placement: qb_plan::placement::Placement,
}

/// Whether the cluster runs an API server at all: a staying master's plan has one (a cluster of
/// etcd alone has nothing to drain through).
fn has_api_server(ec: &EngineCluster) -> bool {
    staying_nodes(ec).iter().any(|n| {
        n.node.role == Some(NodeRole::Master)
            && n.node.plan.as_ref().is_some_and(|p| {
                p.report
                    .as_ref()
                    .is_some_and(|r| r.services.iter().any(|s| s.name == "kube-apiserver"))
            })
    })
}

/// The nodes that stay in the cluster (attached, not leaving).
pub(super) fn staying_nodes(ec: &EngineCluster) -> Vec<&EngineNode> {
    ec.nodes
        .iter()
        .filter(|n| n.node.state != qb_api::NodeState::Detaching)
        .collect()
}

fn node_input(n: &EngineNode, address: IpAddr, pod_subnet: qb_api::Cidr) -> NodeInput {
    NodeInput {
        id: n.node.id,
        name: n.node.name.clone(),
        address,
        role: node_input_role(n),
        etcd: n.etcd.as_ref().map(|m| m.bootstrap.clone()),
        pod_subnet,
    }
}

/// The role a node's plan renders: a master renders as one once it has an etcd membership.
fn node_input_role(n: &EngineNode) -> NodeRole {
    match (&n.node.role, &n.etcd) {
        (Some(NodeRole::Master), Some(_)) => NodeRole::Master,
        _ => NodeRole::Worker,
    }
}

/// How many workers a change reaches at once: a quarter of them (as a Deployment's default
/// `maxUnavailable`), at least one.
fn worker_batch(workers: usize) -> usize {
    (workers / 4).max(1)
}

/// SHA-256 of what in a plan restarts services when it changes: the services themselves, the
/// files and artifacts they name as inputs, and what the node's cluster and state are. Routes,
/// the API balancer's upstreams and files no service reads change without a restart.
fn restart_hash(plan: &Plan) -> String {
    let inputs: std::collections::BTreeSet<_> =
        plan.services.iter().flat_map(|s| &s.inputs).collect();
    let files: Vec<_> = plan
        .files
        .iter()
        .filter(|f| inputs.contains(&f.path))
        .collect();
    let artifacts: Vec<_> = plan
        .artifacts
        .iter()
        .filter(|a| inputs.contains(&a.path))
        .collect();
    let restarting = (
        plan.cluster_id,
        &plan.services,
        files,
        artifacts,
        &plan.state_dirs,
        &plan.cgroups,
    );
    let json = serde_json::to_vec(&restarting).expect("plans serialize");
    hex::encode(Sha256::digest(json))
}

/// SHA-256 of the plan without its generation: equal plans hash equal.
fn plan_hash(plan: &Plan) -> String {
    let mut plan = plan.clone();
    plan.generation = 0;
    let json = serde_json::to_vec(&plan).expect("plans serialize");
    hex::encode(Sha256::digest(json))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan with one service reading `/etc/qb/a.conf`, one file it does not read, and a route.
    fn plan(read: &str, unread: &str, route_via: &str) -> Plan {
        serde_json::from_value(serde_json::json!({
            "node_id": NodeId::new(),
            "cluster_id": qb_api::ClusterId::new(),
            "generation": 1,
            "artifacts": [],
            "files": [
                {"path": "/etc/qb/a.conf", "content": read, "mode": 0o600},
                {"path": "/etc/qb/b.conf", "content": unread, "mode": 0o600},
            ],
            "services": [{
                "name": "etcd", "command": ["/opt/qb/bin/etcd"], "inputs": ["/etc/qb/a.conf"],
            }],
            "state_dirs": [],
            "routes": [{"destination": "10.244.1.0/24", "via": route_via}],
        }))
        .expect("a plan")
    }

    #[test]
    fn only_what_services_read_restarts_them() {
        let base = plan("a", "b", "10.0.0.2");
        let (hash, restart) = (plan_hash(&base), restart_hash(&base));
        let mut same = base.clone();
        same.generation = 7;
        assert_eq!(
            (plan_hash(&same), restart_hash(&same)),
            (hash.clone(), restart.clone())
        );
        // A route, or a file no service reads: another plan that restarts nothing.
        for quiet in [plan("a", "b", "10.0.0.3"), plan("a", "c", "10.0.0.2")] {
            let quiet = Plan {
                node_id: base.node_id,
                cluster_id: base.cluster_id,
                ..quiet
            };
            assert_ne!(plan_hash(&quiet), hash);
            assert_eq!(restart_hash(&quiet), restart);
        }
        // A file a service reads, or the service itself: a restart.
        let read = Plan {
            node_id: base.node_id,
            cluster_id: base.cluster_id,
            ..plan("z", "b", "10.0.0.2")
        };
        assert_ne!(restart_hash(&read), restart);
        let mut command = base.clone();
        command.services[0].command.push("--flag".to_owned());
        assert_ne!(restart_hash(&command), restart);
    }
}
