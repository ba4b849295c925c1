//! The mounts of this process's mount namespace, as `/proc/self/mountinfo` lists them. (The
//! `procfs` crate reads the listing but leaves the kernel's octal escapes of spaces and the
//! like in place: a path with a space would never match.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One line of mountinfo: where, and what kind of file system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    /// e.g. `ext4`, `tmpfs`, `cgroup2`.
    pub fstype: String,
}

/// Every mount, in the kernel's order.
pub fn table() -> std::io::Result<Vec<Mount>> {
    parse(&std::fs::read_to_string("/proc/self/mountinfo")?)
}

/// Every mount point; one that carries several mounts is listed once.
pub fn points() -> std::io::Result<BTreeSet<PathBuf>> {
    Ok(table()?.into_iter().map(|m| m.point).collect())
}

/// The mount points at or below `dir`.
pub fn points_below(dir: &Path) -> std::io::Result<BTreeSet<PathBuf>> {
    Ok(points()?
        .into_iter()
        .filter(|point| point.starts_with(dir))
        .collect())
}

/// The mounts of a mountinfo listing. Fields: id parent major:minor root mount-point options
/// [optional...] - type source super-options.
pub fn parse(mountinfo: &str) -> std::io::Result<Vec<Mount>> {
    mountinfo
        .lines()
        .map(|line| {
            let (before, after) = line.split_once(" - ").unwrap_or((line, ""));
            let point = before.split(' ').nth(4);
            let fstype = after.split(' ').next().filter(|t| !t.is_empty());
            match (point, fstype) {
                (Some(point), Some(fstype)) => Ok(Mount {
                    point: PathBuf::from(unescape(point)),
                    fstype: fstype.to_owned(),
                }),
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a mountinfo line without a mount point or type: {line:?}"),
                )),
            }
        })
        .collect()
}

/// Undoes the kernel's escapes in a mountinfo path: `\ooo`, three octal digits, stands for a
/// space, tab, newline or backslash.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
95 22 0:48 / /var/lib/kubelet/pods/a\\040b\\134c/volumes rw,relatime shared:50 - tmpfs tmpfs rw
96 22 8:1 /var/lib/kubelet /var/lib/kubelet rw,relatime shared:1 - ext4 /dev/sda1 rw
97 96 8:1 /var/lib/kubelet /var/lib/kubelet rw,relatime - ext4 /dev/sda1 rw";

    #[test]
    fn escaped_points_are_read_back_with_their_types() {
        let mounts = parse(LISTING).unwrap();
        let read: Vec<(&str, &str)> = mounts
            .iter()
            .map(|m| (m.point.to_str().unwrap(), m.fstype.as_str()))
            .collect();
        assert_eq!(
            read,
            [
                ("/", "ext4"),
                ("/var/lib/kubelet/pods/a b\\c/volumes", "tmpfs"),
                ("/var/lib/kubelet", "ext4"),
                ("/var/lib/kubelet", "ext4"),
            ]
        );
        assert!(parse("22 1 8:1 / / rw").is_err(), "no type");
    }

    #[test]
    fn this_process_sees_its_root_once() {
        let points = points().unwrap();
        assert!(points.contains(Path::new("/")), "{points:?}");
        assert_eq!(points_below(Path::new("/")).unwrap(), points);
        assert!(table().unwrap().len() >= points.len());
    }
}
