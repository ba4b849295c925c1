//! The cgroups a lab host's components run in: `/qb/<node>` in every hierarchy. Pods live in
//! network namespaces of their own, which a network namespace's process list does not show; their
//! cgroups do.

use std::path::{Path, PathBuf};
use std::time::Duration;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// `/qb/<node>` in every hierarchy, where it exists.
pub fn node_cgroups(node: &str) -> Vec<PathBuf> {
    let Ok(hierarchies) = std::fs::read_dir(CGROUP_ROOT) else {
        return Vec::new();
    };
    hierarchies
        .flatten()
        .map(|h| h.path().join("qb").join(node))
        .filter(|p| p.is_dir())
        .collect()
}

/// Kills every process in the nodes' cgroups and removes the cgroups (and `/qb` when no other
/// node uses it); what is left.
pub fn remove(nodes: &[String]) -> Vec<String> {
    let roots: Vec<PathBuf> = nodes.iter().flat_map(|n| node_cgroups(n)).collect();
    for root in &roots {
        for pid in pids_below(root) {
            crate::kill(&pid);
        }
    }
    let mut left = Vec::new();
    for root in &roots {
        // Deepest first; a cgroup goes once its processes are gone (which takes a moment).
        for dir in walk(root).into_iter().rev() {
            let mut removed = false;
            for _ in 0..50 {
                if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                    removed = true;
                    break;
                }
                for pid in pids_below(&dir) {
                    crate::kill(&pid);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !removed {
                left.push(format!("cgroup {}", dir.display()));
            }
        }
        if let Some(parent) = root.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
    left
}

/// The pids in `dir`'s cgroup tree.
pub fn pids_below(dir: &Path) -> Vec<String> {
    walk(dir)
        .iter()
        .flat_map(|d| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `dir` and every directory below it, parents before children.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_owned()];
    let mut i = 0;
    while i < all.len() {
        if let Ok(entries) = std::fs::read_dir(&all[i]) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    all.push(entry.path());
                }
            }
        }
        i += 1;
    }
    all
}
