//! What touches the host, shared by the agent and the lab: cgroups, processes and what `/proc`
//! says of them, the host's memory.

pub mod cgroups;
pub mod process;
