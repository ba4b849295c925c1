//! Kubernetes node operations, carried out by the agent of a master through its local
//! kube-apiserver (the controller never dials a host), with the client certificate the
//! instruction names.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeRequest {
    /// The local API server, e.g. `https://127.0.0.1:6443`.
    pub endpoint: String,
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
    pub op: KubeOp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum KubeOp {
    /// List the nodes.
    Nodes,
    /// Cordon the node and evict its pods, as `kubectl drain --ignore-daemonsets
    /// --delete-emptydir-data --force` does; fails when pods remain after `timeout_seconds`.
    /// A node the API server does not know is drained already.
    Drain { node: String, timeout_seconds: u32 },
    /// Remove the node object; one that is gone already is not an error.
    DeleteNode { node: String },
    /// Make the node schedulable again (after a drain); one the API server does not know is
    /// not an error. Protocol 3.
    Uncordon { node: String },
    /// Give the node its role's labels ([`ROLE_LABELS`]) and, for a master with `taint`, the
    /// [`MASTER_TAINT`] (`NoSchedule`); take away those of the other role. Other labels and
    /// taints stay.
    SetRole {
        node: String,
        master: bool,
        taint: bool,
    },
}

/// Labels of a master in Kubernetes 1.20 (both, as kubeadm sets them); a worker has the last.
pub const ROLE_LABELS: [&str; 3] = [
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
    "node-role.kubernetes.io/worker",
];

/// The taint that keeps workloads off masters, as kubeadm 1.20 sets it.
pub const MASTER_TAINT: &str = "node-role.kubernetes.io/master";

/// The role labels a node of this role has.
pub fn role_labels(master: bool) -> Vec<&'static str> {
    if master {
        ROLE_LABELS[..2].to_vec()
    } else {
        ROLE_LABELS[2..].to_vec()
    }
}

/// A node as the API server lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeNode {
    pub name: String,
    /// Its `Ready` condition is `True`.
    pub ready: bool,
    /// Cordoned: no new pods are scheduled on it.
    pub unschedulable: bool,
    /// e.g. `v1.20.2`; empty before the kubelet first reported.
    pub kubelet_version: String,
    /// Which of [`ROLE_LABELS`] it has, sorted.
    #[serde(default)]
    pub role_labels: Vec<String>,
    /// Whether it has the [`MASTER_TAINT`].
    #[serde(default)]
    pub master_taint: bool,
}
