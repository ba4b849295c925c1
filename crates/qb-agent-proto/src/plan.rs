//! Plans: what a node must run, declared by the controller, signed, and converged by the agent.
//!
//! A plan is the whole desired state of one node: artifacts to install, files to write, services
//! to supervise in order. The agent applies it in steps — `artifacts`, `files`, then one step per
//! service, each service's health probe being the readiness gate of the next — and reports each
//! step. Applying the same plan twice changes nothing; a changed plan restarts only the services
//! whose definition or inputs changed. A plan with `cluster_id: None` means the node belongs to
//! no cluster: everything the previous plan installed is stopped and its state wiped.
//!
//! The controller signs the exact JSON text of a plan ([`SignedPlan`]); the agent verifies the
//! signature against a signer certificate that chains to its pinned CA before it parses a byte.

use std::collections::BTreeMap;

use qb_api::{ClusterId, NodeId};
pub use qb_api::{PlanReport, PlanState, PortSpec, Protocol, ServiceReport, StepReport, StepState};
use serde::{Deserialize, Serialize};

pub use crate::values::{HostPath, ServiceName, Sha256Hex};

/// `GET`: the node's current [`SignedPlan`] (404 while it has none).
pub const PLAN_PATH: &str = "/agent/v1/plan";
/// `GET {ARTIFACTS_PATH}/{sha256}`: an artifact's bytes, if a bundle of the node's tenant has it.
pub const ARTIFACTS_PATH: &str = "/agent/v1/artifacts";

/// A plan as the controller signed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPlan {
    /// The plan's JSON text, exactly as signed. Parse it only after the signature verified.
    pub plan: String,
    /// ECDSA P-256 / SHA-256 signature of `plan`'s bytes (ASN.1 DER), hex.
    pub signature: String,
    /// The certificate of the key that signed, issued by the controller's CA for plan signing.
    pub signer_pem: String,
}

/// Everything one node must have and run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub node_id: NodeId,
    /// `None`: the node is in no cluster; stop everything and wipe `state_dirs` of the old plan.
    pub cluster_id: Option<ClusterId>,
    /// Grows with every change; the agent refuses a plan older than the one it has.
    pub generation: u64,
    pub artifacts: Vec<Artifact>,
    pub files: Vec<PlanFile>,
    /// Started in this order; each waits for the previous one's probe (its readiness gate).
    pub services: Vec<Service>,
    /// Directories holding the cluster's state on this node (etcd data, ...), removed when the
    /// node leaves its cluster.
    pub state_dirs: Vec<HostPath>,
    /// Routes to the other nodes' pod subnets through their hosts (flannel's host-gw way). The
    /// agent keeps exactly these: routes it added that a plan no longer has are removed.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Cgroups the services need to exist (kubelet's `cgroupRoot`), as paths from the root of
    /// every cgroup hierarchy; created before the services start.
    #[serde(default)]
    pub cgroups: Vec<HostPath>,
    /// Local endpoints the controller may reach through the agent's tunnel, by name (e.g.
    /// [`KUBE_APISERVER_ENDPOINT`] → `127.0.0.1:6443`). The agent dials nothing else.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoints: BTreeMap<String, std::net::SocketAddr>,
    /// The node's way to the cluster's API servers: the kubelet and kube-proxy connect to the
    /// balancer's address on this host, and the agent carries each connection to the first
    /// master's API server that accepts it. They keep working while any master does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_balancer: Option<ApiBalancer>,
}

/// A TCP load balancer the agent runs for the node's Kubernetes components.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiBalancer {
    /// Where it listens: a loopback address.
    pub listen: std::net::SocketAddr,
    /// The API servers, in the order they are tried.
    pub upstreams: Vec<std::net::SocketAddr>,
}

/// The endpoint name of a master's own Kubernetes API server.
pub const KUBE_APISERVER_ENDPOINT: &str = "kube-apiserver";

/// `destination` is reached through `via`, a host on the node's own network.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Route {
    /// A CIDR, e.g. `10.244.3.0/24`.
    pub destination: ipnet::IpNet,
    pub via: std::net::IpAddr,
}

/// A file from the release bundle, installed at `path` once its SHA-256 matched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// The bundle's name for it, e.g. `etcd`.
    pub name: String,
    /// SHA-256 of the content.
    pub sha256: Sha256Hex,
    pub size: u64,
    /// Where to install it.
    pub path: HostPath,
    pub mode: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanFile {
    pub path: HostPath,
    /// Secret, as many plan files hold keys: `Debug` shows only its length.
    pub content: qb_api::Secret,
    pub mode: u32,
    #[serde(default)]
    pub owner: Owner,
}

/// Numeric owner of a file; `0:0` (root) unless said otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// A long-running process the agent supervises, or a task (`restart: never`) it runs to
/// completion once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// E.g. `etcd`; names its log file and step.
    pub name: ServiceName,
    /// Program (absolute path) and arguments.
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Health check; also the readiness gate before the next service starts.
    #[serde(default)]
    pub probe: Option<Probe>,
    /// Ports the service listens on (preflight leaves them alone once the service runs).
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// Paths of files and artifacts the service reads: when one changes, the service restarts.
    #[serde(default)]
    pub inputs: Vec<HostPath>,
    /// Directories holding this service's own state (etcd's data): removed when the service
    /// leaves the plan, so that it starts from nothing if a later plan has it again (a master
    /// demoted and promoted again joins etcd as a new member).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_dirs: Vec<HostPath>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Restart whenever it exits (with backoff).
    #[default]
    Always,
    /// Restart only after a non-zero exit or a signal.
    OnFailure,
    /// A task, not a service: it runs to completion, exit status 0 being its readiness gate, and
    /// runs again only when its definition or inputs change (importing an image, say), or when
    /// its probe, if it has one, says that what it did was undone.
    Never,
}

/// How to tell a service is healthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Probe {
    /// A TCP connection to `address` (`host:port`) succeeds.
    Tcp { address: String },
    /// A connection to the Unix socket at `path` succeeds.
    Unix { path: String },
    /// `GET url` answers 2xx. For `https`, the server is verified against `ca_file`, and
    /// `cert_file`/`key_file` are presented as the client certificate when given.
    Http {
        url: String,
        #[serde(default)]
        ca_file: Option<String>,
        #[serde(default)]
        cert_file: Option<String>,
        #[serde(default)]
        key_file: Option<String>,
    },
    /// Every image the OCI image archive `archive` holds is in containerd, as `ctr` lists
    /// them on the socket `address` in `namespace`. The probe of the task that imports the
    /// archive: the kubelet deletes unused images when the disk runs short, and no registry
    /// brings a bundle's images back, so the agent imports them again when this fails.
    Images {
        ctr: HostPath,
        address: HostPath,
        namespace: String,
        archive: HostPath,
    },
}
