//! `cargo xtask fuzz [SECONDS]`: every fuzz target in `fuzz/` (cargo-fuzz, libFuzzer) for a
//! bounded time each, from the corpus kept in the repository. `cargo xtask test` runs it after
//! the test suite, 20 seconds a target.
//!
//! The REST API is fuzzed by a test of the suite (the controller's `api_fuzz`) with Schemathesis
//! from PyPI, which [`schemathesis`] installs.
//!
//! The targets build with the one stable toolchain (`--sanitizer none`: the workspace forbids
//! unsafe code, so what the fuzzer finds is panics, overflows, hangs and runaway memory). What
//! a run discovers goes to a scratch corpus, not the repository's; a crash stops the run with
//! the input saved under `fuzz/artifacts/<target>/`, which `cargo fuzz run -s none <target>
//! <file>` replays.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Seconds each target runs in `cargo xtask test`.
pub const TEST_SECONDS: u64 = 20;

/// Installs cargo-fuzz when it is missing.
pub fn tools() -> Result<()> {
    let has = Command::new(crate::cargo())
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        eprintln!("xtask: installing cargo-fuzz");
        crate::run(Command::new(crate::cargo()).args(["install", "--locked", "cargo-fuzz"]))?;
    }
    Ok(())
}

/// The Schemathesis the API fuzz test runs, pinned.
const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// Where the API fuzz test finds it.
pub const SCHEMATHESIS_ENV: &str = "QB_SCHEMATHESIS";

/// The directory holding the pinned Schemathesis and its dependencies (a `pip install
/// --target`), installed into the cache the first time.
pub fn schemathesis() -> Result<std::path::PathBuf> {
    crate::pip_into_cache(
        &format!("schemathesis=={SCHEMATHESIS_VERSION}"),
        true,
        "schemathesis",
    )
}

/// Runs every target for `seconds`; fails on the first target that finds a crash.
pub fn run(root: &Path, seconds: u64) -> Result<()> {
    tools()?;
    // Built into the cache, so that a fresh clone (as in CI) rebuilds only what changed.
    let target_dir = crate::bundle::cache_dir()?.join("fuzz-target");
    let fuzz = |args: &[&str]| {
        let mut cmd = Command::new(crate::cargo());
        cmd.current_dir(root).arg("fuzz").args(args);
        cmd
    };
    crate::run(fuzz(&["build", "--sanitizer", "none", "--target-dir"]).arg(&target_dir))?;
    let listed = fuzz(&["list"])
        .output()
        .context("listing the fuzz targets")?;
    let targets: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        bail!("`cargo fuzz list` found no fuzz targets");
    }
    let scratch = tempfile_dir()?;
    for target in &targets {
        let found = scratch.join(target);
        std::fs::create_dir_all(&found)?;
        let corpus = root.join("fuzz/corpus").join(target);
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        let status = fuzz(&["run", "--sanitizer", "none", "--target-dir"])
            .arg(&target_dir)
            .arg(target)
            .arg(&found)
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-rss_limit_mb=2048",
                "-timeout=10",
                "-print_final_stats=1",
            ])
            .status()
            .with_context(|| format!("running fuzz target {target}"))?;
        if !status.success() {
            bail!(
                "fuzz target {target} failed ({status}): the input is under {}",
                root.join("fuzz/artifacts").join(target).display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("qb-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
