//! Errors as RFC 9457 problem details (`application/problem+json`) with a stable code.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A stable, machine-readable error code. Clients match on this, never on the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProblemCode {
    /// No valid token: missing, unknown, expired or revoked.
    Unauthenticated,
    /// The caller's role does not allow this.
    Forbidden,
    /// No such object in the caller's tenant (or no such path).
    NotFound,
    MethodNotAllowed,
    /// The body is not valid JSON, or has unknown or missing fields.
    MalformedRequest,
    UnsupportedMediaType,
    PayloadTooLarge,
    /// A value broke a rule (a name, CIDR, label, count ...).
    InvalidInput,
    /// The name is taken in this tenant.
    NameTaken,
    /// Two network ranges overlap.
    CidrOverlap,
    /// The pool has fewer matching authorized nodes than asked for.
    PoolExhausted,
    /// The node's state does not allow this operation.
    InvalidNodeState,
    /// The node is not in this cluster.
    NodeNotInCluster,
    /// The cluster still has nodes; detach them or delete with `force`.
    ClusterNotEmpty,
    /// The cluster has no nodes for this to act on; attach some first.
    ClusterHasNoNodes,
    /// The bootstrap token is unknown, expired, revoked or used up; the agent cannot register
    /// with it. The detail says which.
    RegistrationRefused,
    /// Another host whose agent is online holds this host's machine id (a cloned machine?); the
    /// detail names both hosts. The host needs its own machine id.
    IdentityConflict,
    /// The node certificate is no longer accepted: the node was deauthorized or its certificate
    /// replaced. The agent must register again.
    CertificateRefused,
    /// The node's agent is not connected or did not answer.
    AgentUnavailable,
    /// A bundle for this Kubernetes version exists with different content.
    BundleConflict,
    /// The cluster's own Kubernetes API cannot be read now: it has no API server yet, or
    /// neither its masters' agents nor their API servers answer. The detail says which.
    ClusterApiUnavailable,
    /// The change would leave etcd without quorum or without a member; the detail says why.
    /// Repeat with `force` to do it anyway.
    QuorumAtRisk,
    /// The cluster cannot move to this version: its bundle is not imported, or it would go
    /// down, skip a Kubernetes minor version or take etcd down; the detail says which.
    UpgradeRefused,
    /// The snapshot cannot be taken, deleted or read as things stand (the cluster is not
    /// running, another is being taken, this one is not done); the detail says which.
    SnapshotRefused,
    /// Too many failed logins for this user; wait before trying again.
    TooManyAttempts,
    /// The agent speaks a version of the agent protocol this controller does not (or says
    /// none); the detail names both. Upgrade whichever is older.
    UnsupportedProtocol,
    /// A test notification did not reach its channel; the detail says what the receiver or
    /// the SMTP server answered.
    NotDelivered,
    /// Something went wrong on the controller; details are in its log.
    Internal,
    /// The controller's store is unavailable; retry later.
    Unavailable,
}

impl ProblemCode {
    pub fn status(self) -> u16 {
        match self {
            Self::Unauthenticated | Self::RegistrationRefused => 401,
            Self::Forbidden | Self::CertificateRefused => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::MalformedRequest | Self::InvalidInput | Self::UnsupportedProtocol => 400,
            Self::UnsupportedMediaType => 415,
            Self::PayloadTooLarge => 413,
            Self::NameTaken
            | Self::CidrOverlap
            | Self::PoolExhausted
            | Self::InvalidNodeState
            | Self::NodeNotInCluster
            | Self::ClusterNotEmpty
            | Self::ClusterHasNoNodes
            | Self::AgentUnavailable
            | Self::BundleConflict
            | Self::ClusterApiUnavailable
            | Self::QuorumAtRisk
            | Self::UpgradeRefused
            | Self::SnapshotRefused
            | Self::IdentityConflict => 409,
            Self::TooManyAttempts => 429,
            Self::NotDelivered => 502,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::Unauthenticated => "Authentication required",
            Self::Forbidden => "Not allowed for this role",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::MalformedRequest => "Malformed request",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::PayloadTooLarge => "Request body too large",
            Self::InvalidInput => "Invalid input",
            Self::NameTaken => "Name already taken",
            Self::CidrOverlap => "Network ranges overlap",
            Self::PoolExhausted => "Not enough nodes in the pool",
            Self::InvalidNodeState => "Node state does not allow this",
            Self::NodeNotInCluster => "Node not in this cluster",
            Self::ClusterNotEmpty => "Cluster still has nodes",
            Self::ClusterHasNoNodes => "Cluster has no nodes",
            Self::RegistrationRefused => "Registration refused",
            Self::IdentityConflict => "Host identity in use by another host",
            Self::AgentUnavailable => "Agent unavailable",
            Self::CertificateRefused => "Certificate refused",
            Self::BundleConflict => "A different bundle has this version",
            Self::ClusterApiUnavailable => "Cluster API unavailable",
            Self::QuorumAtRisk => "etcd quorum at risk",
            Self::UpgradeRefused => "Upgrade refused",
            Self::SnapshotRefused => "Snapshot not possible now",
            Self::TooManyAttempts => "Too many failed logins",
            Self::NotDelivered => "Notification not delivered",
            Self::UnsupportedProtocol => "Agent protocol not supported",
            Self::Internal => "Internal error",
            Self::Unavailable => "Service unavailable",
        }
    }
}

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// `urn:qb:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
    pub code: ProblemCode,
}

impl Problem {
    /// The most characters of detail a problem carries; a longer detail is cut. Messages quote
    /// input with [`crate::quote`] and stay well below this; it bounds those that quote input
    /// whole (serde's, such as an unknown field's name).
    pub const MAX_DETAIL_CHARS: usize = 1024;

    pub fn new(code: ProblemCode, detail: impl Into<String>) -> Self {
        let mut detail = detail.into();
        if let Some(start) = crate::values::prefix(&detail, Self::MAX_DETAIL_CHARS) {
            detail = format!("{start}…");
        }
        let code_text = serde_json::to_value(code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        Self {
            kind: format!("urn:qb:problem:{code_text}"),
            title: code.title().to_owned(),
            status: code.status(),
            detail,
            code,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_detail_is_cut() {
        let long = Problem::new(ProblemCode::InvalidInput, "é".repeat(60_000));
        assert_eq!(long.detail.chars().count(), Problem::MAX_DETAIL_CHARS + 1);
        assert!(long.detail.ends_with("é…"), "{}", long.detail);
        let exact = "x".repeat(Problem::MAX_DETAIL_CHARS);
        assert_eq!(
            Problem::new(ProblemCode::InvalidInput, exact.clone()).detail,
            exact
        );
    }
}
