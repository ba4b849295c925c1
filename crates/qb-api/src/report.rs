//! What agents report about plans and preflight checks, as the API shows it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
pub struct PortSpec {
    pub port: u16,
    pub protocol: Protocol,
}

impl PortSpec {
    pub const fn tcp(port: u16) -> Self {
        Self {
            port,
            protocol: Protocol::Tcp,
        }
    }

    pub const fn udp(port: u16) -> Self {
        Self {
            port,
            protocol: Protocol::Udp,
        }
    }
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol.as_str())
    }
}

/// The agent's account of applying a plan, sent whenever it changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlanReport {
    pub generation: u64,
    pub state: PlanState,
    pub steps: Vec<StepReport>,
    pub services: Vec<ServiceReport>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlanState {
    /// Steps are running.
    #[default]
    Applying,
    /// Every step is done and every service passed its probe once.
    Applied,
    /// A step failed; the agent retries with backoff.
    Failed,
    /// The plan was not accepted (bad signature, not for this node, older generation).
    Refused,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StepReport {
    /// `artifacts`, `files`, `service:<name>`, or `wipe`.
    pub name: String,
    pub state: StepState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    Done,
    Failed,
}

/// A supervised service as the agent sees it now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceReport {
    pub name: String,
    pub running: bool,
    /// The last probe passed (or there is no probe and the process runs).
    pub healthy: bool,
    /// Restarts since the service was (re)defined.
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// How the process last ended, e.g. `exit status 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckResult {
    /// e.g. `port 2379/tcp`, `memory`, `swap`, `clock`, `kernel`, `module br_netfilter`.
    pub name: String,
    pub ok: bool,
    pub severity: Severity,
    /// What was found, e.g. `address in use` or `2.0 GiB, need 1.0 GiB`.
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// A failure blocks the install.
    Error,
    /// Shown, but does not block.
    Warning,
}

/// The result of a preflight run across a cluster's nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PreflightReport {
    pub id: uuid::Uuid,
    pub cluster: crate::ClusterRef,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: time::OffsetDateTime,
    pub duration_ms: u64,
    /// No Error-severity check failed and every probe succeeded.
    pub passed: bool,
    /// One line per failure, naming hosts and ports; empty when passed.
    pub problems: Vec<String>,
    /// Local checks of every node.
    pub checks: Vec<NodeCheck>,
    /// Every node probing every other node on every required port.
    pub mesh: Vec<MeshProbe>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeCheck {
    pub node: crate::NodeId,
    pub node_name: crate::NodeName,
    #[serde(flatten)]
    pub check: CheckResult,
}

/// One cell of the preflight matrix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MeshProbe {
    pub from: crate::NodeName,
    pub to: crate::NodeName,
    pub port: u16,
    pub protocol: Protocol,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
