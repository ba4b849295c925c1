//! etcd membership changes, carried out by the agent of a master through its local etcd member
//! (the controller never dials a host). The agent speaks etcd's JSON gateway (`/v3/cluster/...`)
//! with the client certificate the instruction names.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdRequest {
    /// The local member's client URL, e.g. `https://127.0.0.1:2379`.
    pub endpoint: String,
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
    pub op: EtcdOp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum EtcdOp {
    /// List the members.
    List,
    /// Add a non-voting member (a learner) that will sync before it is promoted.
    AddLearner {
        peer_url: String,
    },
    /// Make a caught-up learner a voting member (etcd refuses while it lags).
    Promote {
        id: u64,
    },
    Remove {
        id: u64,
    },
}

/// A member as etcd lists it. A member added but not yet started has an empty `name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMember {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}
