//! A cluster's health as its own API tells it: whether each Kubernetes node is Ready, whether
//! the scheduler and the controller manager have a current leader, and the pods that restart,
//! wait or fail, with their restart counts and why their containers last stopped.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// Read from the cluster's API through a master's agent when asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterHealth {
    pub cluster: String,
    /// When the cluster's API answered.
    #[serde(with = "time::serde::rfc3339")]
    pub checked_at: OffsetDateTime,
    pub nodes: Vec<KubeNodeHealth>,
    /// `kube-scheduler` and `kube-controller-manager`, from their leases in `kube-system`.
    pub leaders: Vec<LeaderHealth>,
    pub pods: PodCounts,
    /// The pods that are not running well: a container restarted, waiting or not ready, or the
    /// pod Pending, Failed or Unknown; by namespace and name, at most [`ClusterHealth::MAX_PODS`].
    pub attention: Vec<PodStatus>,
}

impl ClusterHealth {
    pub const MAX_PODS: usize = 200;
}

/// A Kubernetes node's `Ready` condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KubeNodeHealth {
    pub name: String,
    pub ready: bool,
    /// The condition's reason and message, e.g. `KubeletNotReady`.
    pub reason: Option<String>,
    pub message: Option<String>,
    /// When the condition last changed.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    pub kubelet_version: Option<String>,
}

/// Who leads a control-plane component, from its lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaderHealth {
    /// `kube-scheduler` or `kube-controller-manager`.
    pub component: String,
    /// The leader's identity (`host-0_<uuid>`); none when no lease was taken yet.
    pub holder: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub renewed_at: Option<OffsetDateTime>,
    /// Whether the lease was renewed within its duration: the component has a leader now.
    pub current: bool,
}

/// How many pods are in each phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PodCounts {
    pub total: u32,
    pub running: u32,
    pub pending: u32,
    pub succeeded: u32,
    pub failed: u32,
}

/// A pod and its containers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PodStatus {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    pub phase: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub containers: Vec<ContainerStatus>,
}

impl PodStatus {
    /// Restarts of all its containers.
    pub fn restarts(&self) -> u32 {
        self.containers.iter().map(|c| c.restarts).sum()
    }

    /// Whether it is not running well (see [`ClusterHealth::attention`]).
    pub fn needs_attention(&self) -> bool {
        match self.phase.as_str() {
            "Succeeded" => false,
            "Running" => self
                .containers
                .iter()
                .any(|c| c.restarts > 0 || c.waiting.is_some() || !c.ready),
            _ => true,
        }
    }
}

/// One container of a pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ContainerStatus {
    pub name: String,
    pub ready: bool,
    pub restarts: u32,
    /// Why it waits, e.g. `CrashLoopBackOff` or `ImagePullBackOff`.
    pub waiting: Option<String>,
    /// How it last stopped.
    pub last_exit: Option<ContainerExit>,
}

/// How a container stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ContainerExit {
    /// `Error`, `OOMKilled`, `Completed`, ...
    pub reason: String,
    pub exit_code: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}
