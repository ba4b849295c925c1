//! Preflight: local checks on each node, then a mesh check between all of a cluster's nodes.
//!
//! Two phases, driven by the controller over the channel:
//! 1. [`PreflightCheck`] to every node: run the local checks and start listening on every
//!    required port (a port that cannot be bound is a failed local check, naming the process
//!    that holds it). The answer is a [`LocalReport`]. Listeners answer with [`banner`] (TCP:
//!    sent on accept; UDP: echoed back for a datagram that carries it), so a probe that reaches
//!    some other program fails. The ports only the node itself uses ([`LocalPort`]) are bound
//!    too, where their component binds them, and released at once: no peer probes them.
//! 2. once every node listens, [`PreflightProbe`] to every node: probe every other node on every
//!    port, all at once, each probe with the same deadline. The answer is a list of
//!    [`ProbeResult`]s. Listeners close when the session's `hold_ms` ran out.

use qb_api::NodeId;
use serde::{Deserialize, Serialize};

pub use qb_api::{CheckResult, PortSpec, Severity};

/// What a listener says for `session`; probes expect exactly this.
pub fn banner(session: u64) -> String {
    format!("qb-preflight {session}\n")
}

/// Phase 1: local checks, and listen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightCheck {
    pub session: u64,
    /// Ports to bind and answer on. Ports held by services of the node's current plan are
    /// left to those services (reported as `held_by_service`).
    pub listen: Vec<PortSpec>,
    /// Ports only the node itself uses: each must be free to bind at its address, but nothing
    /// listens on it afterwards and no peer probes it. Ports held by services of the node's
    /// current plan are left alone, as in `listen`. (Left out when empty, so an agent of a build
    /// that refused unknown fields still reads the checks of nodes that have none.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local: Vec<LocalPort>,
    /// How long listeners stay open, from when they opened.
    pub hold_ms: u64,
    pub requirements: Requirements,
}

/// A port a component of the node binds for the node's own use (a health or metrics endpoint,
/// the API balancer), at the address it binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LocalPort {
    pub port: PortSpec,
    /// `127.0.0.1` for a component that binds loopback only, `0.0.0.0` for every address.
    pub address: std::net::IpAddr,
}

/// What the host must have.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements {
    pub min_memory_bytes: u64,
    pub min_cpus: u32,
    /// The controller's clock when it sent the check (Unix ms); the agent compares its own.
    pub controller_time_ms: i64,
    pub max_clock_offset_ms: u64,
    /// Oldest kernel accepted, `major.minor`.
    pub min_kernel: (u32, u32),
    /// Kernel modules that should be available (loaded or built in); missing ones warn.
    #[serde(default)]
    pub kernel_modules: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalReport {
    pub checks: Vec<CheckResult>,
    /// Ports now listening for the mesh check.
    pub listening: Vec<PortSpec>,
    /// Ports held by the node's own services, of `listen` and `local` (not bound by the
    /// preflight; those of `listen` are probed all the same).
    #[serde(default)]
    pub held_by_service: Vec<PortSpec>,
}

/// Phase 2: probe the peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightProbe {
    pub session: u64,
    pub targets: Vec<ProbeTarget>,
    /// Every probe gives up after this long.
    pub timeout_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeTarget {
    pub node: NodeId,
    pub address: std::net::IpAddr,
    pub ports: Vec<PortSpec>,
    /// Of `ports`, the TCP ports the target's own services hold: a connection is enough (they
    /// do not send the banner).
    #[serde(default)]
    pub held: Vec<PortSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub to: NodeId,
    pub port: PortSpec,
    pub ok: bool,
    /// Round trip of the probe in microseconds, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// Why it failed: `connection refused`, `timed out`, `wrong answer`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
