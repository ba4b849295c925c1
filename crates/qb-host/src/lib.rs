//! What touches the host, shared by the agent and the lab: cgroups, mounts, processes and what
//! `/proc` says of them, the host's memory; and crash points, for the agent and the controller.

pub mod cgroups;
pub mod crash;
pub mod mounts;
pub mod process;
