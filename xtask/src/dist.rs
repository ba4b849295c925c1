//! `cargo xtask dist`: the release binaries as they ship, in `target/dist`: `qb-controller` and
//! `qb` for this machine, and the `qb-agent` the controller puts in its packages, which must
//! start on every host people run — so it is linked against glibc 2.17 (CentOS 7, Debian 8 and
//! later) with `cargo-zigbuild` and the Zig toolchain of PyPI's `ziglang` wheel, and stripped, its
//! debug info kept beside it as `qb-agent.debug` (for reading a crash, not for every host).
//!
//! Zig is cached by version under the cache directory; cargo-zigbuild is installed once.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::{cargo, run};

/// The oldest glibc the agent runs on.
pub const AGENT_GLIBC: &str = "2.17";
const ZIGLANG_VERSION: &str = "0.17.1";
const ZIGBUILD_VERSION: &str = "0.24.1";
const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds everything into `target/dist`; returns that directory.
pub fn all(root: &Path) -> Result<PathBuf> {
    let dist = root.join("target/dist");
    std::fs::create_dir_all(&dist)?;
    run(Command::new(cargo()).current_dir(root).args([
        "build",
        "--release",
        "--locked",
        "--bin",
        "qb-controller",
        "--bin",
        "qb",
    ]))?;
    for bin in ["qb-controller", "qb"] {
        let built = root.join("target/release").join(bin);
        std::fs::copy(&built, dist.join(bin))
            .with_context(|| format!("copying {}", built.display()))?;
    }
    agent(root, &dist)?;
    Ok(dist)
}

/// Installs what the agent's build needs (Zig and cargo-zigbuild) when it is missing; returns
/// the directory holding `zig`.
pub fn tools() -> Result<PathBuf> {
    let zig = zig()?;
    ensure_zigbuild()?;
    Ok(zig)
}

/// Builds the shipped agent into `dir` (`qb-agent` and `qb-agent.debug`); returns its path.
pub fn agent(root: &Path, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let zig = tools()?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![zig];
    paths.extend(std::env::split_paths(&path));
    run(Command::new(cargo())
        .current_dir(root)
        .env("PATH", std::env::join_paths(paths)?)
        .args([
            "zigbuild",
            "--release",
            "--locked",
            "-p",
            "qb-agent",
            "--bin",
            "qb-agent",
            "--target",
            &format!("{AGENT_TARGET}.{AGENT_GLIBC}"),
        ]))?;
    let built = root
        .join("target")
        .join(AGENT_TARGET)
        .join("release/qb-agent");
    let shipped = dir.join("qb-agent");
    let debug = dir.join("qb-agent.debug");
    std::fs::copy(&built, &shipped).with_context(|| format!("copying {}", built.display()))?;
    // The debug info goes beside the binary; the binary keeps a link to it (by name and CRC).
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .args([&shipped, &debug]))?;
    run(Command::new("objcopy")
        .args(["--strip-debug", "--strip-unneeded"])
        .arg(format!("--add-gnu-debuglink={}", debug.display()))
        .arg(&shipped))?;
    Ok(shipped)
}

/// The directory holding the `zig` of the pinned `ziglang` wheel, installed into the cache
/// the first time.
fn zig() -> Result<PathBuf> {
    let home = crate::pip_into_cache(&format!("ziglang=={ZIGLANG_VERSION}"), false, "ziglang/zig")?;
    Ok(home.join("ziglang"))
}

/// Installs the pinned cargo-zigbuild unless cargo has it.
fn ensure_zigbuild() -> Result<()> {
    let installed = Command::new("cargo-zigbuild")
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(ZIGBUILD_VERSION)
        });
    if installed {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-zigbuild {ZIGBUILD_VERSION}");
    run(Command::new(cargo()).args([
        "install",
        "--locked",
        "cargo-zigbuild",
        "--version",
        ZIGBUILD_VERSION,
    ]))
}

/// What the lab's Debian roots have beyond minbase: what a Kubernetes node needs from its
/// distribution (the agent's package depends on them), so the package installs with `dpkg -i`.
const ROOT_PACKAGES: &str = "iptables,iproute2,conntrack";
/// Bumped when the roots change (2: [`ROOT_PACKAGES`] added): older roots are removed.
const ROOTS_REVISION: u32 = 2;

/// A minimal Debian root of `release` (Debian 11 is `bullseye`: glibc 2.31; Debian 12 is
/// `bookworm`), with no machine id and no systemd, made with debootstrap the first time and
/// kept in the cache under `roots/`: the tests copy it for each host of that distribution.
pub fn debian_root(release: &str) -> Result<PathBuf> {
    let roots = crate::bundle::cache_dir()?.join("roots");
    for old in std::iter::once(roots.join(release))
        .chain((2..ROOTS_REVISION).map(|r| roots.join(format!("{release}-{r}"))))
    {
        if old.exists() {
            run(Command::new("rm")
                .args(["-rf", "--one-file-system"])
                .arg(&old))?;
        }
    }
    let root = roots.join(format!("{release}-{ROOTS_REVISION}"));
    if root.join("etc/debian_version").exists() {
        return Ok(root);
    }
    eprintln!("xtask: making a Debian {release} root with debootstrap");
    let partial = root.with_extension("partial");
    if partial.exists() {
        run(Command::new("rm")
            .args(["-rf", "--one-file-system"])
            .arg(&partial))?;
    }
    std::fs::create_dir_all(&partial)?;
    run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={ROOT_PACKAGES}"),
            release,
        ])
        .arg(&partial)
        .arg("http://deb.debian.org/debian"))?;
    std::fs::rename(&partial, &root)?;
    Ok(root)
}
