//! Resources, requests and responses of the REST API.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::{
    Cidr, ClusterId, Description, KubernetesVersion, LabelKey, LabelValue, Labels, MasterCount,
    Name, NodeId, NodeName, Selector, TenantId, TokenId, UserId,
};

/// What a user may do. Each role includes the ones below it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read everything of the tenant.
    Viewer,
    /// Viewer, plus change nodes and clusters.
    Operator,
    /// Operator, plus manage users and tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Viewer, Self::Operator, Self::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// Where a node is in its life.
///
/// `pending → authorized (in the pool) → attached → detaching → authorized`; any state can be
/// `deauthorized`, which revokes the host's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Registered, waiting for an administrator to authorize it.
    Pending,
    /// Authorized and in the tenant's node pool, in no cluster.
    Authorized,
    /// Member of a cluster.
    Attached,
    /// Leaving its cluster; returns to the pool once its components are removed.
    Detaching,
    /// Identity revoked; the host must register again to come back.
    Deauthorized,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Authorized => "authorized",
            Self::Attached => "attached",
            Self::Detaching => "detaching",
            Self::Deauthorized => "deauthorized",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Authorized,
            Self::Attached,
            Self::Detaching,
            Self::Deauthorized,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// Where a cluster is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClusterState {
    /// No nodes.
    Empty,
    /// Has nodes the cluster engine has not looked at yet.
    Pending,
    /// Checking the nodes and the network between them before installing.
    Preflight,
    /// Rolling plans out, or changing etcd membership.
    Installing,
    /// Every node runs its plan and every component is healthy.
    Ready,
    /// Installed, but a node is offline or a component unhealthy.
    Degraded,
    /// Cannot go on without the operator: preflight failed, no bundle, impossible placement.
    /// `state_message` says why.
    Blocked,
}

impl ClusterState {
    pub const ALL: [Self; 7] = [
        Self::Empty,
        Self::Pending,
        Self::Preflight,
        Self::Installing,
        Self::Ready,
        Self::Degraded,
        Self::Blocked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Pending => "pending",
            Self::Preflight => "preflight",
            Self::Installing => "installing",
            Self::Ready => "ready",
            Self::Degraded => "degraded",
            Self::Blocked => "blocked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The role a node plays in its cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// Control plane and etcd member.
    Master,
    Worker,
}

/// What the host reported about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeFacts {
    pub hostname: String,
    /// Distribution and version, e.g. `Debian GNU/Linux 12 (bookworm)`.
    pub os: String,
    pub kernel: String,
    /// CPU architecture, e.g. `x86_64`.
    pub arch: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    #[schema(value_type = Vec<String>)]
    pub addresses: Vec<IpAddr>,
    /// The host's network interfaces (not loopback), so the controller can tell a host's own
    /// addresses from those of bridges and pods.
    #[serde(default)]
    pub interfaces: Vec<NetInterface>,
    /// The address the host's connection to the controller leaves from: the address of its
    /// route towards the controller, the first choice for the node's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub route_source: Option<IpAddr>,
}

/// A network interface of a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetInterface {
    pub name: String,
    pub kind: InterfaceKind,
    /// The interface it is enslaved to (a bridge or a bond), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    #[schema(value_type = Vec<String>)]
    pub addresses: Vec<IpAddr>,
}

impl NetInterface {
    /// Whether a cluster's pod network made it: qb's pod bridge, or a pod's end on it.
    pub fn is_pod_network(&self) -> bool {
        self.name == POD_BRIDGE || self.master.as_deref() == Some(POD_BRIDGE)
    }
}

/// The label that sets the address a node's cluster reaches it at (an IP address). It is read
/// when the node is first planned in a cluster; while the node is in one it cannot change.
pub const ADDRESS_LABEL: &str = "node.qb.io/address";

/// The bridge the pods of a qb cluster's node are attached to.
pub const POD_BRIDGE: &str = "qb0";

/// What kind of network interface a host has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InterfaceKind {
    /// A network card (it has a device).
    Physical,
    Bridge,
    Bond,
    Vlan,
    /// One end of a virtual Ethernet pair.
    Veth,
    /// VXLAN, GRE, WireGuard, IP-in-IP and the like.
    Tunnel,
    /// Any other virtual interface (dummy, tun/tap, macvlan, ...).
    Virtual,
}

/// A short reference to a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterRef {
    pub id: ClusterId,
    pub name: Name,
}

/// A host known to the controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    pub id: NodeId,
    pub name: NodeName,
    pub state: NodeState,
    /// The cluster the node belongs to, when attached or detaching.
    pub cluster: Option<ClusterRef>,
    pub facts: NodeFacts,
    #[schema(schema_with = crate::map_schema::<LabelKey, LabelValue>)]
    pub labels: Labels,
    /// The node's agent, once one has registered.
    pub agent: Option<NodeAgent>,
    /// Its role in its cluster, once placed.
    #[serde(default)]
    pub role: Option<NodeRole>,
    /// The address its cluster reaches it at: chosen when the node is first planned in its
    /// cluster (the [`ADDRESS_LABEL`] label, else the address the host reaches the controller
    /// from, never one of the cluster's pod or service ranges or of its pod network) and kept
    /// until the node leaves the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub address: Option<IpAddr>,
    /// The node's plan: the generation the controller published and the agent's last report.
    #[serde(default)]
    pub plan: Option<NodePlan>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The agent on a node, as the controller sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeAgent {
    pub version: String,
    /// The build it runs: the SHA-256 of its binary (agents of protocol 3 on say it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    /// The agent protocol it speaks, as it last connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    /// Connected and heartbeating, judged by the controller's clock.
    pub online: bool,
    /// When the controller last heard from it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen_at: Option<OffsetDateTime>,
}

/// A node's plan as the controller published it and the agent last reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodePlan {
    /// The newest generation published for the node.
    pub generation: u64,
    /// The Kubernetes version (bundle) that plan runs; none for a plan that removes the
    /// cluster's components.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<KubernetesVersion>,
    /// The agent's last report (it may be about an older generation).
    pub report: Option<crate::PlanReport>,
}

/// Changes to a node's labels: `set` adds or replaces, `remove` deletes (absent keys are ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelChange {
    #[serde(default)]
    #[schema(schema_with = crate::map_schema::<LabelKey, LabelValue>)]
    pub set: BTreeMap<LabelKey, LabelValue>,
    #[serde(default)]
    pub remove: Vec<LabelKey>,
}

/// A Kubernetes cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Cluster {
    pub id: ClusterId,
    pub name: Name,
    pub kubernetes_version: KubernetesVersion,
    pub pod_cidr: Cidr,
    pub service_cidr: Cidr,
    #[schema(value_type = String, example = "auto")]
    pub masters: MasterCount,
    /// Explicit roles for named nodes ("advanced mode"); other nodes are placed automatically.
    #[schema(schema_with = crate::map_schema::<NodeName, NodeRole>)]
    pub roles: BTreeMap<NodeName, NodeRole>,
    /// Masters carry the `node-role.kubernetes.io/master:NoSchedule` taint: only pods that
    /// tolerate it run there.
    #[serde(default)]
    pub taint_masters: bool,
    /// The rollout of changes that restart services (a new version) is paused: nodes not given
    /// the change yet wait until it is resumed.
    #[serde(default)]
    pub rollout_paused: bool,
    /// Minutes between scheduled etcd snapshots; 0: none are scheduled.
    #[serde(default)]
    pub snapshot_interval_minutes: u32,
    /// How many scheduled snapshots are kept (the oldest go first); manual ones stay until
    /// deleted.
    #[serde(default)]
    pub snapshot_retention: u32,
    pub state: ClusterState,
    /// Why the cluster is in its state, when there is more to say (e.g. what blocks it).
    #[serde(default)]
    pub state_message: Option<String>,
    /// When the cluster entered `state`, so that one taking long stands out. For `pending`,
    /// when the empty cluster got its first nodes.
    #[serde(with = "time::serde::rfc3339")]
    pub state_since: OffsetDateTime,
    /// Nodes attached or detaching.
    pub node_count: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A cluster with its nodes and add-ons.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterDetail {
    #[serde(flatten)]
    pub cluster: Cluster,
    pub nodes: Vec<Node>,
    /// What qb runs in the cluster for it (its DNS, ...), as last checked; empty until the
    /// cluster first became ready.
    #[serde(default)]
    pub addons: Vec<AddonStatus>,
}

/// An add-on of a cluster, as the controller last saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AddonStatus {
    /// e.g. `qb-dns`.
    pub name: String,
    /// The version applied; none when it could not be.
    #[serde(default)]
    pub version: Option<String>,
    pub health: AddonHealth,
    /// What is wrong, or how far it is.
    #[serde(default)]
    pub message: Option<String>,
    /// When it was last checked.
    #[serde(with = "time::serde::rfc3339")]
    pub checked_at: OffsetDateTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AddonHealth {
    /// Applied, and every replica ready.
    Ready,
    /// Applied; replicas are starting or some are not ready.
    Progressing,
    /// Applying it failed: the message says why.
    Failing,
    /// The cluster cannot run it (e.g. its bundle lacks the image).
    Unavailable,
}

impl AddonHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Progressing => "progressing",
            Self::Failing => "failing",
            Self::Unavailable => "unavailable",
        }
    }
}

/// A request to create an empty cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCluster {
    pub name: Name,
    /// Defaults to the newest supported version.
    #[serde(default)]
    pub kubernetes_version: Option<KubernetesVersion>,
    /// Range pods get addresses from; default `10.20.0.0/16`.
    #[serde(default)]
    pub pod_cidr: Option<Cidr>,
    /// Range services get addresses from; default `10.21.0.0/16`.
    #[serde(default)]
    pub service_cidr: Option<Cidr>,
    #[serde(default)]
    #[schema(value_type = String, example = "auto")]
    pub masters: MasterCount,
    /// Advanced mode: explicit roles for named nodes.
    #[serde(default)]
    #[schema(schema_with = crate::map_schema::<NodeName, NodeRole>)]
    pub roles: BTreeMap<NodeName, NodeRole>,
    /// Taint masters so that workloads run on workers only (default: masters run workloads
    /// too, which small clusters need).
    #[serde(default)]
    pub taint_masters: bool,
}

/// Changes to a cluster's settings; what is left out stays as it is. A new version is rolled
/// out to the nodes one at a time: masters first, each once the one before is healthy again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCluster {
    /// Upgrade to this version: its bundle must be imported; Kubernetes moves up at most one
    /// minor version at a time and never down, and etcd never down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<KubernetesVersion>,
    /// Taint masters so that workloads run on workers only, or no longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taint_masters: Option<bool>,
    /// Pause the rollout of changes that restart services (nodes not given the change yet
    /// wait; a worker being drained stays cordoned), or resume it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_paused: Option<bool>,
    /// Minutes between scheduled etcd snapshots (at most a week); 0: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 10080)]
    pub snapshot_interval_minutes: Option<u32>,
    /// How many scheduled snapshots to keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000)]
    pub snapshot_retention: Option<u32>,
}

impl CreateCluster {
    pub const DEFAULT_POD_CIDR: &str = "10.20.0.0/16";
    pub const DEFAULT_SERVICE_CIDR: &str = "10.21.0.0/16";
}

/// Which nodes to attach: either `count` nodes from the pool (optionally only those matching
/// `selector`), or the `nodes` named.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000)]
    pub count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = node_list_or_null_schema)]
    pub nodes: Option<Vec<NodeName>>,
}

/// An attach request, checked: exactly one way of choosing nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachTarget {
    FromPool {
        count: u32,
        selector: Option<Selector>,
    },
    Named(Vec<NodeName>),
}

impl AttachRequest {
    /// The most nodes one request may move.
    pub const MAX_NODES: u32 = 1000;

    pub fn target(&self) -> Result<AttachTarget, crate::InvalidValue> {
        let bad = |m: &str| Err(crate::InvalidValue(m.to_owned()));
        match (self.count, &self.selector, &self.nodes) {
            (Some(0), _, _) => bad("count must be at least 1"),
            (Some(n), _, _) if n > Self::MAX_NODES => bad("count must be at most 1000"),
            (Some(count), selector, None) => Ok(AttachTarget::FromPool {
                count,
                selector: selector.clone(),
            }),
            (None, None, Some(nodes)) => {
                check_node_list(nodes)?;
                Ok(AttachTarget::Named(nodes.clone()))
            }
            (None, Some(_), Some(_)) => bad("selector applies to count, not to named nodes"),
            (Some(_), _, Some(_)) => bad("give either count or nodes, not both"),
            (None, _, None) => bad("give count (nodes from the pool) or nodes (by name)"),
        }
    }
}

/// [`check_node_list`]'s rule as a schema.
fn node_list_schema() -> utoipa::openapi::schema::Array {
    use utoipa::ToSchema;
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(utoipa::openapi::Ref::from_schema_name(NodeName::name()))
        .min_items(Some(1))
        .max_items(Some(AttachRequest::MAX_NODES as usize))
        .unique_items(true)
        .build()
}

/// [`node_list_schema`], or `null`.
fn node_list_or_null_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{SchemaType, Type};
    let mut schema = node_list_schema();
    schema.schema_type = SchemaType::from_iter([Type::Array, Type::Null]);
    schema
}

/// A list of named nodes to move: 1 to [`AttachRequest::MAX_NODES`], each once.
fn check_node_list(nodes: &[NodeName]) -> Result<(), crate::InvalidValue> {
    let bad = |m: &str| Err(crate::InvalidValue(m.to_owned()));
    if nodes.is_empty() || nodes.len() > AttachRequest::MAX_NODES as usize {
        return bad("nodes must name 1 to 1000 nodes");
    }
    let unique: std::collections::BTreeSet<&NodeName> = nodes.iter().collect();
    if unique.len() != nodes.len() {
        return bad("nodes names a node more than once");
    }
    Ok(())
}

/// Nodes to detach from a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DetachRequest {
    #[schema(schema_with = node_list_schema)]
    pub nodes: Vec<NodeName>,
    /// Skip the checks that would hold the detach up: the quorum guard (refusing when etcd
    /// would lose its quorum or every member), draining the nodes, and waiting for the wipe of
    /// a host whose agent is offline (it wipes itself when it comes back). Their etcd members
    /// are still removed, one at a time.
    #[serde(default)]
    pub force: bool,
}

impl DetachRequest {
    /// Checks the list: 1 to 1000 nodes, each named once.
    pub fn validate(&self) -> Result<(), crate::InvalidValue> {
        check_node_list(&self.nodes)
    }
}

/// The nodes an attach or detach moved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeMove {
    pub cluster: ClusterRef,
    pub nodes: Vec<Node>,
}

/// What deleting a cluster did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeletedCluster {
    /// Nodes the cluster still had, now back in the pool (only with `force`).
    pub returned_to_pool: Vec<Node>,
}

/// A user of the tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: UserId,
    pub name: Name,
    pub role: Role,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub name: Name,
    pub role: Role,
}

/// An API token. Its secret is shown once, when created, and stored only as a hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: TokenId,
    /// The user the token acts as.
    pub user: Name,
    pub role: Role,
    pub description: Option<Description>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// The user the token acts as; defaults to the caller.
    #[serde(default)]
    pub user: Option<Name>,
    #[serde(default)]
    pub description: Option<Description>,
    /// Lifetime in hours, 1 to 8760; default 720 (30 days).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 8760)]
    pub expires_in_hours: Option<u32>,
}

impl CreateToken {
    pub const DEFAULT_HOURS: u32 = 720;
    pub const MAX_HOURS: u32 = 8760;
}

/// A new token and its secret. The secret is never shown again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub token: Token,
    pub secret: String,
}

/// A request for a kubeconfig that points `kubectl` at a cluster through the controller's
/// Kubernetes API proxy, with a new API token of the caller's own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKubeconfig {
    /// Lifetime of the kubeconfig's token in hours, 1 to 8760; default 24.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 8760)]
    pub expires_in_hours: Option<u32>,
}

impl CreateKubeconfig {
    pub const DEFAULT_HOURS: u32 = 24;
    pub const MAX_HOURS: u32 = CreateToken::MAX_HOURS;
}

/// A kubeconfig and the token inside it. The token's secret is in the kubeconfig only, and is
/// never shown again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Kubeconfig {
    /// The kubeconfig, YAML: one cluster, user and context, all named `qb-<cluster>`
    /// (the user `<user>@qb-<cluster>`), the context current.
    pub kubeconfig: String,
    /// The token the kubeconfig authenticates with: the caller's user and role.
    pub token: Token,
}

/// A bootstrap token: lets agents register hosts into the tenant. Its secret is shown once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BootstrapToken {
    pub id: crate::BootstrapTokenId,
    pub description: Option<Description>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// How many registrations it allows.
    pub max_uses: u32,
    pub uses: u32,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBootstrapToken {
    #[serde(default)]
    pub description: Option<Description>,
    /// Lifetime in hours, 1 to 720; default 24.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 720)]
    pub expires_in_hours: Option<u32>,
    /// How many hosts may register with it, 1 to 10000; default 1.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10000)]
    pub max_uses: Option<u32>,
}

impl CreateBootstrapToken {
    pub const DEFAULT_HOURS: u32 = 24;
    pub const MAX_HOURS: u32 = 720;
    pub const DEFAULT_USES: u32 = 1;
    pub const MAX_USES: u32 = 10_000;
}

/// How long a pushed instruction took to reach the agent and be answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PingResult {
    pub round_trip_ms: f64,
}

/// A piece of one of a node's service logs, whole lines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeLog {
    pub node: String,
    pub service: String,
    pub text: String,
    /// Where `text` starts in the log.
    pub start: u64,
    /// Pass as `offset` to read what the log gets next.
    pub end: u64,
    /// The log was rotated since `offset`: `text` is from its new beginning.
    pub rotated: bool,
}

/// Which part of a log to read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Read on from here (a former answer's `end`); without it, the log's end.
    pub offset: Option<u64>,
    /// Without `offset`: from the first line written this many seconds ago or later (by the
    /// host's clock, as the lines' timestamps tell) rather than the log's end; at most 30 days.
    #[param(maximum = 2592000)]
    pub since_seconds: Option<u64>,
    /// At most this many bytes (default and most: 24576).
    #[param(minimum = 1, maximum = 24576)]
    pub max_bytes: Option<u32>,
}

impl LogQuery {
    /// The most one piece holds.
    pub const MAX_BYTES: u32 = 24 * 1024;
    /// The furthest back `since_seconds` goes: 30 days.
    pub const MAX_SINCE_SECONDS: u64 = 30 * 24 * 3600;
}

/// A new bootstrap token and its secret. The secret is never shown again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedBootstrapToken {
    pub token: BootstrapToken,
    pub secret: String,
}

/// Logging in to the web UI, with an API token, or with a user's password (tenant, user and
/// password together).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// A user's new password: 12 to 256 characters.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    #[schema(min_length = 12, max_length = 256)]
    pub password: String,
}

impl SetPassword {
    pub const MIN_CHARS: usize = 12;
    pub const MAX_CHARS: usize = 256;
}

impl std::fmt::Debug for SetPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SetPassword { password: <hidden> }")
    }
}

/// A web UI session. The session itself is an HttpOnly cookie the browser sends; requests that
/// change anything must also carry `csrf_token` in the `X-CSRF-Token` header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Session {
    pub tenant: Name,
    pub user: Name,
    pub role: Role,
    pub csrf_token: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// Who the caller is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Whoami {
    pub tenant_id: TenantId,
    pub tenant: Name,
    pub user: Name,
    pub role: Role,
    pub token_id: TokenId,
}

/// One entry of the append-only audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Increases with every event of the controller.
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who made the change: `user:<name>`, or `controller` for the controller's own work.
    pub actor: String,
    /// What happened, e.g. `node.authorized`, `cluster.nodes_attached`.
    pub action: String,
    /// `node`, `cluster`, `user`, `token`, `tenant`, or `request`: a change the API refused
    /// (action `api.request_refused`; its name is the method and path, its detail the status
    /// and problem code).
    pub object_kind: String,
    pub object_id: String,
    pub object_name: String,
    /// Details of the change.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// One page of a list, oldest first. Pass `next` back as `after` for the following page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The cursor of the next page; absent on the last page.
    pub next: Option<String>,
}

/// Paging of list calls.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// At most this many items, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
}

impl PageParams {
    pub const DEFAULT_LIMIT: u32 = 100;
    pub const MAX_LIMIT: u32 = 1000;

    pub fn limit(&self) -> Result<u32, crate::InvalidValue> {
        match self.limit {
            None => Ok(Self::DEFAULT_LIMIT),
            Some(n) if (1..=Self::MAX_LIMIT).contains(&n) => Ok(n),
            Some(_) => Err(crate::InvalidValue(
                "limit must be between 1 and 1000".to_owned(),
            )),
        }
    }
}
