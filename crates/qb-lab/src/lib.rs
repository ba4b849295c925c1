//! A lab of hosts on one machine, for the end-to-end tests and `cargo xtask lab`.
//!
//! - [`netns`]: the network: a private bridge and one network namespace per host.
//! - [`host`]: entering a host: its namespace and its own copy of the system directories.
//! - [`cgroups`]: the cgroups a host's components (and pods) run in, to clean up after them.
//! - [`kube`]: reading what a lab cluster's API server answers.
//! - [`postgres`]: a PostgreSQL server for a standing lab's controller replicas.
//! - [`standing`]: a lab that stays up after the command that made it: a controller, hosts
//!   with agents installed from the controller's own tarball, and a teardown that leaves nothing,
//!   also after a failed run.
//!
//! Everything here needs root and iproute2; without them it fails and says so.

pub mod cgroups;
pub mod host;
pub mod kube;
pub mod netns;
pub mod postgres;
pub mod standing;

pub use netns::Lab;

/// Sends SIGKILL to `pid` (a process of the lab); a process already gone is no error.
pub(crate) fn kill(pid: &str) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", pid])
        .stderr(std::process::Stdio::null())
        .status();
}
