//! The mount points of this process's mount namespace, as `/proc/self/mountinfo` lists them.
//! (The `procfs` crate reads the listing but leaves the kernel's octal escapes of spaces and
//! the like in place; a path with a space would never match.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Every mount point; one that carries several mounts is listed once.
pub fn points() -> std::io::Result<BTreeSet<PathBuf>> {
    let text = std::fs::read("/proc/self/mountinfo")?;
    parse(&text)
}

/// The mount points at or below `dir`.
pub fn points_below(dir: &Path) -> std::io::Result<BTreeSet<PathBuf>> {
    Ok(points()?
        .into_iter()
        .filter(|point| point.starts_with(dir))
        .collect())
}

/// The mount points of a `mountinfo` listing: each line's fifth field.
pub fn parse(text: &[u8]) -> std::io::Result<BTreeSet<PathBuf>> {
    String::from_utf8_lossy(text)
        .lines()
        .map(|line| {
            line.split(' ')
                .nth(4)
                .map(|point| PathBuf::from(unescape(point)))
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("a mountinfo line without a mount point: {line:?}"),
                    )
                })
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
97 96 8:1 /var/lib/kubelet /var/lib/kubelet rw,relatime shared:1 - ext4 /dev/sda1 rw
";

    #[test]
    fn escaped_points_are_read_back_and_each_is_listed_once() {
        let points = parse(LISTING.as_bytes()).unwrap();
        let expected: BTreeSet<PathBuf> = [
            "/",
            "/var/lib/kubelet/pods/a b\\c/volumes",
            "/var/lib/kubelet",
        ]
        .into_iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(points, expected);
    }

    #[test]
    fn this_process_sees_its_root() {
        let points = points().unwrap();
        assert!(points.contains(Path::new("/")), "{points:?}");
        assert!(points_below(Path::new("/")).unwrap().len() == points.len());
    }
}
