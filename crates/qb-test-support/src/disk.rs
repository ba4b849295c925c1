//! Full disks on demand: a small tmpfs of its own for a test, and a file that fills it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// A tmpfs of a given size mounted at a new directory; unmounted when dropped. Mounting needs
/// root, as CI has: without it this fails, never skips.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount`'s syntax: `6m`, `1g`) at `at`, a directory it creates.
    pub fn mount(at: &Path, size: &str) -> Result<Self> {
        std::fs::create_dir(at).with_context(|| format!("creating {}", at.display()))?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "qb-test"])
            .arg(at)
            .status()
            .context("running mount")?;
        if !status.success() {
            bail!(
                "mounting a tmpfs at {} failed ({status}): this test needs root, as CI has",
                at.display()
            );
        }
        Ok(Self(at.to_owned()))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes to `path` until its file system has no space left; how many bytes went in.
pub fn fill(path: &Path) -> Result<u64> {
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let chunk = vec![0xa5_u8; 64 << 10];
    let mut written = 0;
    loop {
        match file.write_all(&chunk).and_then(|()| file.sync_all()) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) if e.raw_os_error() == Some(28) => return Ok(written),
            Err(e) => return Err(e).with_context(|| format!("filling {}", path.display())),
        }
    }
}
