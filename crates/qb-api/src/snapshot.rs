//! etcd snapshots of a cluster: taken by one of its masters' agents on a schedule or on
//! demand, kept in the controller's store sealed under its key file.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::{ClusterId, KubernetesVersion, NodeName};

/// Where a snapshot is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotState {
    /// Waits for a master whose agent can take it.
    Requested,
    /// A master's agent takes and uploads it.
    Taking,
    /// Stored whole: it can be downloaded and restored.
    Done,
    /// Not taken; `error` says why.
    Failed,
}

/// Why a snapshot was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotTrigger {
    /// By the cluster's schedule; the oldest beyond its retention are deleted.
    Scheduled,
    /// Asked for (`qb cluster backup`); kept until deleted.
    Manual,
}

/// `as_str` and `FromStr` by the names the API uses.
macro_rules! named {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = crate::InvalidValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok(Self::$variant),)+
                    _ => Err(crate::InvalidValue(format!(concat!("no ", $what, " {:?}"), s))),
                }
            }
        }
    };
}

named!(SnapshotState, "snapshot state", {
    Requested => "requested",
    Taking => "taking",
    Done => "done",
    Failed => "failed",
});
named!(SnapshotTrigger, "snapshot trigger", {
    Scheduled => "scheduled",
    Manual => "manual",
});

/// An etcd snapshot of a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub id: u64,
    pub cluster_id: ClusterId,
    pub state: SnapshotState,
    pub trigger: SnapshotTrigger,
    /// The cluster's version when it was asked for: a restore needs its etcd.
    pub kubernetes_version: KubernetesVersion,
    /// The master whose agent took it.
    #[serde(default)]
    pub node: Option<NodeName>,
    /// Bytes, once done.
    #[serde(default)]
    pub size: Option<u64>,
    /// SHA-256 of the snapshot file, hex, once done.
    #[serde(default)]
    pub sha256: Option<String>,
    /// etcd's revision when it began: the snapshot holds every change up to it.
    #[serde(default)]
    pub revision: Option<u64>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}
