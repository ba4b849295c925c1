//! What touches the host, shared by the agent and the lab: cgroups, mounts, processes and what
//! `/proc` says of them, the host's memory.

pub mod cgroups;
pub mod mounts;
pub mod process;
