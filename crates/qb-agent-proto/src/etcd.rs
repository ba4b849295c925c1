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
    /// Take a snapshot of the local member's database (protocol 4), upload it with
    /// `PUT {SNAPSHOTS_PATH}/{snapshot}`, and answer with `Outcome::EtcdSnapshot`.
    Snapshot {
        snapshot: u64,
    },
}

/// `PUT {SNAPSHOTS_PATH}/{id}`: the snapshot `EtcdOp::Snapshot` asked for, as etcd streamed it
/// (the database with its own SHA-256 at the end), with [`SNAPSHOT_SHA256_HEADER`] and
/// [`SNAPSHOT_REVISION_HEADER`]. Answered 204 once stored.
pub const SNAPSHOTS_PATH: &str = "/agent/v1/snapshots";
/// The SHA-256 of the whole upload, hex.
pub const SNAPSHOT_SHA256_HEADER: &str = "qb-snapshot-sha256";
/// The member's revision when the snapshot began: the snapshot holds it and maybe more.
pub const SNAPSHOT_REVISION_HEADER: &str = "qb-snapshot-revision";

/// A snapshot taken and uploaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotTaken {
    pub size: u64,
    pub sha256: crate::Sha256Hex,
    pub revision: u64,
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
