//! The cgroups a lab host's components run in: `/qb/<node>` in every hierarchy. Pods live in
//! network namespaces of their own, which a network namespace's process list does not show; their
//! cgroups do.

use std::path::PathBuf;

/// `/qb/<node>` in every hierarchy, where it exists.
pub fn node_cgroups(node: &str) -> Vec<PathBuf> {
    qb_host::cgroups::existing(&format!("/qb/{node}")).unwrap_or_default()
}

/// The processes in a node's cgroups.
pub fn pids(node: &str) -> Vec<String> {
    node_cgroups(node)
        .iter()
        .flat_map(|dir| qb_host::cgroups::pids_below(dir))
        .map(|pid| pid.to_string())
        .collect()
}

/// Kills every process in the nodes' cgroups and removes the cgroups (and `/qb` when no other
/// node uses it); what is left.
pub fn remove(nodes: &[String]) -> Vec<String> {
    let paths: Vec<String> = nodes.iter().map(|n| format!("/qb/{n}")).collect();
    let parents: Vec<PathBuf> = nodes
        .iter()
        .flat_map(|n| node_cgroups(n))
        .filter_map(|dir| dir.parent().map(PathBuf::from))
        .collect();
    let mut left = Vec::new();
    if let Err(e) = qb_host::cgroups::remove(&paths) {
        left.push(format!("cgroups of {nodes:?}: {e}"));
    }
    for parent in parents {
        let _ = std::fs::remove_dir(parent);
    }
    left
}
