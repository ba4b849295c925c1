//! Kubernetes node operations, carried out by the agent of a master through its local
//! kube-apiserver (the controller never dials a host), with the client certificate the
//! instruction names.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeRequest {
    /// The local API server, e.g. `https://127.0.0.1:6443`.
    pub endpoint: String,
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
    pub op: KubeOp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum KubeOp {
    /// List the nodes.
    Nodes,
    /// Cordon the node and evict its pods, as `kubectl drain --ignore-daemonsets
    /// --delete-emptydir-data --force` does; fails when pods remain after `timeout_seconds`.
    /// A node the API server does not know is drained already.
    Drain { node: String, timeout_seconds: u32 },
    /// Remove the node object; one that is gone already is not an error.
    DeleteNode { node: String },
}

/// A node as the API server lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeNode {
    pub name: String,
    /// Its `Ready` condition is `True`.
    pub ready: bool,
    /// Cordoned: no new pods are scheduled on it.
    pub unschedulable: bool,
    /// e.g. `v1.20.2`; empty before the kubelet first reported.
    pub kubelet_version: String,
}
