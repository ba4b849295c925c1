//! `cargo xtask lab …`: a standing lab of hosts on this machine (see `qb_lab::standing`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use qb_lab::standing::{self, Binaries, Options};

/// Overrides where the lab lives (default: `lab` in the target directory).
const DIR_ENV: &str = "QB_LAB_DIR";
const DEFAULT_HOSTS: usize = 3;

pub const USAGE: &str = "\
usage: cargo xtask lab <command>
  up [--hosts N] [--replicas R] [--no-bundle]
                                build qb, start a controller and N hosts (default 3) with agents
                                installed from the controller's tarball, import the Kubernetes bundle;
                                with R > 1, R controller replicas sharing a PostgreSQL of the lab
  status                        what runs: the controller, each host's link and agent
  exec HOST CMD...              run CMD on HOST (its network, mount and UTS namespaces)
  restart HOST                  power-cycle HOST: kill all its processes, then start its agent
  cut HOST | mend HOST          pull HOST's network cable, or plug it back
  down                          remove everything of the lab; says what is left, if anything
The lab lives in $QB_LAB_DIR (default: target/lab).";

pub fn main(root: &Path, args: &[String]) -> Result<()> {
    let dir = std::env::var_os(DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir(root).join("lab"));
    let host = || {
        args.get(1)
            .map(String::as_str)
            .context("which host? (`cargo xtask lab status` lists them)")
    };
    match args.first().map(String::as_str) {
        Some("up") => up(root, &dir, &args[1..]),
        Some("down") => {
            let left = standing::down(&dir)?;
            if left.is_empty() {
                eprintln!("lab: down; nothing is left");
                Ok(())
            } else {
                bail!(
                    "the lab in {} is not fully removed, left: {left:?}",
                    dir.display()
                )
            }
        }
        Some("status") => {
            println!("{}", standing::status(&dir)?);
            Ok(())
        }
        Some("exec") => {
            let status = standing::exec(&dir, host()?, &args[2..])?;
            std::process::exit(status.code().unwrap_or(1))
        }
        Some("restart") => standing::restart(&dir, host()?),
        Some("cut") => standing::cable(&dir, host()?, false),
        Some("mend") => standing::cable(&dir, host()?, true),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2)
        }
    }
}

fn up(root: &Path, dir: &Path, args: &[String]) -> Result<()> {
    let mut hosts = DEFAULT_HOSTS;
    let mut replicas = 1;
    let mut with_bundle = true;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--hosts" => {
                hosts = rest
                    .next()
                    .and_then(|n| n.parse().ok())
                    .context("--hosts takes a number of hosts")?;
            }
            "--replicas" => {
                replicas = rest
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| (1..=9).contains(n))
                    .context("--replicas takes a number of controller replicas, 1 to 9")?;
            }
            "--no-bundle" => with_bundle = false,
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    crate::prerequisites()?;
    let bundle = if with_bundle {
        Some(crate::addon_images::bundle(
            root,
            &crate::bundle::ensure()?,
        )?)
    } else {
        None
    };
    eprintln!("lab: building qb-controller, qb-agent and qb (release)");
    crate::run(Command::new(crate::cargo()).current_dir(root).args([
        "build",
        "--release",
        "--bin",
        "qb-controller",
        "--bin",
        "qb-agent",
        "--bin",
        "qb",
    ]))?;
    let bin = target_dir(root).join("release");
    let options = Options {
        dir: dir.to_owned(),
        hosts,
        replicas,
        name_prefix: "lab".to_owned(),
        bundle,
        binaries: Binaries {
            controller: bin.join("qb-controller"),
            agent: bin.join("qb-agent"),
            qb: bin.join("qb"),
        },
    };
    let record = standing::up(&options)?;
    let first = &record.hosts[0].name;
    let names: Vec<&str> = record.hosts.iter().map(|h| h.name.as_str()).collect();
    println!(
        "\nThe lab is up: {} and {} hosts, registered and waiting to be authorized.\n\
         Use it with the qb client it is logged in with:\n\n  \
         export QB_CONFIG={} PATH={}:$PATH\n  \
         qb node list\n  \
         qb node authorize {}\n  \
         qb cluster create demo\n  \
         qb cluster attach demo --count {}\n  \
         qb cluster show demo\n  \
         cargo xtask lab exec {first} kubectl --kubeconfig /etc/qb/kubernetes/admin.conf get nodes\n\n\
         `cargo xtask lab status` shows what runs; `cargo xtask lab down` removes it all.",
        match replicas {
            1 => "a controller".to_owned(),
            n =>
                format!("{n} controller replicas on one PostgreSQL (qb is logged in to the first)"),
        },
        record.hosts.len(),
        standing::qb_config(dir).display(),
        bin.display(),
        names.join(" "),
        names.len(),
    );
    Ok(())
}

/// Cargo's target directory.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}
