//! A node's etcd membership as the engine keeps it from one pass to the next (and the store
//! keeps it for a restarted or failed-over controller).

use serde::{Deserialize, Serialize};

use crate::render::EtcdBootstrap;

/// A node's etcd membership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// How the member first started; fixed from then on (it is part of etcd's command line).
    pub bootstrap: EtcdBootstrap,
    /// Added as a learner and not promoted yet.
    pub learner: bool,
    /// etcd's id, known for members added one by one.
    pub member_id: Option<u64>,
}
