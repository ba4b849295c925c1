//! The previous agent: `qb-agent` as the last commit of protocol 2 built it, for the tests that
//! hold this controller to agents not yet upgraded. Built once per machine from the repository's
//! own history (`git archive` of the commit, so the work tree is untouched), cached by commit.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{bundle, cargo, run};

/// The last commit whose agent speaks protocol 2 (and reads past fields it does not know).
pub const COMMIT: &str = "d5a563497b07337aeea07f0307ce9c01db693357";
/// Where the tests find it.
pub const ENV: &str = "QB_PREVIOUS_AGENT";

/// The previous agent's binary, built into the cache the first time.
pub fn agent(root: &Path) -> Result<PathBuf> {
    let dir = bundle::cache_dir()?.join(format!("previous-agent-{}", &COMMIT[..12]));
    let binary = dir.join("qb-agent");
    if binary.exists() {
        return Ok(binary);
    }
    eprintln!(
        "xtask: building the previous agent (commit {}) into {}",
        &COMMIT[..12],
        dir.display()
    );
    let work = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&work);
    let source = work.join("source");
    std::fs::create_dir_all(&source)?;
    let archive = Command::new("git")
        .current_dir(root)
        .args(["archive", "--format=tar", COMMIT])
        .output()
        .context("running git archive")?;
    if !archive.status.success() {
        bail!(
            "git archive {COMMIT} failed (a shallow clone lacks it; fetch the history): {}",
            String::from_utf8_lossy(&archive.stderr).trim()
        );
    }
    tar::Archive::new(archive.stdout.as_slice())
        .unpack(&source)
        .context("unpacking the previous commit")?;
    run(Command::new(cargo())
        .current_dir(&source)
        .env("CARGO_TARGET_DIR", work.join("target"))
        .args(["build", "--locked", "-p", "qb-agent", "--bin", "qb-agent"]))?;
    std::fs::copy(work.join("target/debug/qb-agent"), work.join("qb-agent"))?;
    // Only the binary is kept.
    std::fs::remove_dir_all(work.join("target"))?;
    std::fs::remove_dir_all(&source)?;
    std::fs::rename(&work, &dir)?;
    Ok(binary)
}
