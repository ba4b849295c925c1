//! Cgroups: those a plan's services need before they start (kubelet refuses a `cgroupRoot`
//! that does not exist in every hierarchy it uses), and removing a tree of them with everything
//! that runs in it.
//!
//! The cgroup hierarchies are found in `/proc/self/mountinfo` (cgroup v1 controllers, named
//! hierarchies and the v2 unified tree alike). In a v1 `cpuset` hierarchy a new cgroup starts
//! with no CPUs and no memory nodes, so it gets its parent's.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("invalid cgroup path {0:?}: expected an absolute path without \"..\"")]
    Invalid(String),
    #[error("reading the mount table")]
    Mounts(#[source] std::io::Error),
    #[error("no cgroup hierarchy is mounted")]
    NoHierarchy,
    #[error("removing {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Creates each of `paths` (e.g. `/qb/host-1`) in every mounted hierarchy. Returns a summary.
pub fn ensure(paths: &[String]) -> Result<String, CgroupError> {
    if paths.is_empty() {
        return Ok("none needed".to_owned());
    }
    for path in paths {
        check(path)?;
    }
    let hierarchies = mounted()?;
    if hierarchies.is_empty() {
        return Err(CgroupError::NoHierarchy);
    }
    let mut created = 0;
    for root in &hierarchies {
        for path in paths {
            let mut dir = root.clone();
            for part in Path::new(path).components().skip(1) {
                let parent = dir.clone();
                dir.push(part);
                if dir.is_dir() {
                    continue;
                }
                std::fs::create_dir(&dir).map_err(|source| CgroupError::Create {
                    path: dir.clone(),
                    source,
                })?;
                inherit_cpuset(&parent, &dir).map_err(|source| CgroupError::Create {
                    path: dir.clone(),
                    source,
                })?;
                created += 1;
            }
        }
    }
    Ok(format!(
        "{} in {} hierarchies ({created} created)",
        paths.join(", "),
        hierarchies.len()
    ))
}

/// Kills every process in each of `paths` (and the cgroups below), in every hierarchy, and
/// removes the cgroups: what a node that leaves its cluster must not keep running (pods, the
/// container runtime's shims). Returns a summary.
pub fn remove(paths: &[String]) -> Result<String, CgroupError> {
    if paths.is_empty() {
        return Ok("none".to_owned());
    }
    let mut trees = Vec::new();
    for path in paths {
        trees.extend(existing(path)?);
    }
    let mut killed = std::collections::BTreeSet::new();
    let mut removed = 0;
    // Processes may fork while they are being killed: a few rounds, then give up loudly.
    for _ in 0..50 {
        let mut alive = false;
        for pid in trees.iter().flat_map(|tree| pids_below(tree)) {
            alive = true;
            if let Some(pid) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                killed.insert(pid.as_raw_nonzero().get());
            }
        }
        if !alive {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for tree in &trees {
        for dir in walk(tree).into_iter().rev() {
            let mut result = std::fs::remove_dir(&dir);
            // A cgroup whose last process is still exiting is busy for a moment.
            for _ in 0..50 {
                if result.is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
                result = std::fs::remove_dir(&dir);
            }
            match result {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(CgroupError::Remove { path: dir, source }),
            }
        }
    }
    Ok(format!(
        "{} processes killed, {removed} cgroups removed",
        killed.len()
    ))
}

/// `path` (e.g. `/qb/host-1`) in every mounted hierarchy, where it exists.
pub fn existing(path: &str) -> Result<Vec<PathBuf>, CgroupError> {
    check(path)?;
    Ok(mounted()?
        .iter()
        .map(|root| root.join(path.trim_start_matches('/')))
        .filter(|dir| dir.is_dir())
        .collect())
}

/// The processes in the cgroup `dir` and every cgroup below it.
pub fn pids_below(dir: &Path) -> Vec<u32> {
    walk(dir)
        .iter()
        .flat_map(|d| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// An absolute path without `..`.
fn check(path: &str) -> Result<(), CgroupError> {
    let p = Path::new(path);
    let fine = p.is_absolute()
        && p.components()
            .all(|c| !matches!(c, std::path::Component::ParentDir));
    if fine {
        Ok(())
    } else {
        Err(CgroupError::Invalid(path.to_owned()))
    }
}

/// The mount points of the cgroup hierarchies.
fn mounted() -> Result<Vec<PathBuf>, CgroupError> {
    let mounts = crate::mounts::table().map_err(CgroupError::Mounts)?;
    Ok(hierarchies(&mounts))
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

/// Mount points of cgroup hierarchies (v1 controllers, named hierarchies, the v2 tree).
fn hierarchies(mounts: &[crate::mounts::Mount]) -> Vec<PathBuf> {
    mounts
        .iter()
        .filter(|m| matches!(m.fstype.as_str(), "cgroup" | "cgroup2"))
        .map(|m| m.point.clone())
        .collect()
}

/// Copies `cpuset.cpus` and `cpuset.mems` from `parent` when `dir` is a v1 cpuset cgroup.
fn inherit_cpuset(parent: &Path, dir: &Path) -> std::io::Result<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let child = dir.join(file);
        let is_v1_cpuset = child.exists() && !dir.join("cgroup.controllers").exists();
        if !is_v1_cpuset {
            continue;
        }
        let value = std::fs::read_to_string(parent.join(file))?;
        std::fs::write(&child, value.trim())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hierarchies_are_the_cgroup_mounts() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /mnt/with\\040space rw - cgroup2 cgroup2 rw
60 23 0:41 / /proc rw - proc proc rw";
        assert_eq!(
            hierarchies(&crate::mounts::parse(mountinfo).unwrap()),
            [
                "/sys/fs/cgroup/cpu",
                "/sys/fs/cgroup/cpuset",
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/unified",
                "/mnt/with space",
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn paths_must_be_absolute_and_stay_inside() {
        for bad in ["qb/host", "/qb/../../etc"] {
            assert!(
                matches!(ensure(&[bad.to_owned()]), Err(CgroupError::Invalid(_))),
                "{bad}"
            );
            assert!(
                matches!(remove(&[bad.to_owned()]), Err(CgroupError::Invalid(_))),
                "{bad}"
            );
            assert!(
                matches!(existing(bad), Err(CgroupError::Invalid(_))),
                "{bad}"
            );
        }
        assert_eq!(ensure(&[]).unwrap(), "none needed");
    }
}
