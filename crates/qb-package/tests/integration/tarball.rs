//! The tarball, listed and unpacked by `tar`, installed by its own `install.sh` into a throwaway
//! root (`QB_ROOT`) and removed by `uninstall.sh`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use qb_package::AgentPackage;
use tempfile::TempDir;

use super::support::{
    self, AGENT_BINARY, AGENT_BINARY_2, BusyboxPath, CONFIG, SYSTEMCTL, assert_installed,
    assert_removed, package, stdout, tool,
};

const UNIT: &str = "/etc/systemd/system/qb-agent.service";

fn tar() -> Command {
    Command::new(tool("tar", "tar"))
}

/// Writes the tarball into `dir`, unpacks it there with `tar`; the unpacked directory.
fn unpack(dir: &Path, p: &AgentPackage) -> PathBuf {
    let name = format!("qb-agent-{}.tar.gz", p.version);
    let tarball = support::write(dir, &name, &qb_package::tarball(p).unwrap());
    support::run(tar().arg("-xzf").arg(&tarball).arg("-C").arg(dir));
    dir.join(format!("qb-agent-{}", p.version))
}

/// Runs one of the tarball's scripts with busybox's `sh`, `PATH` holding busybox's applets and
/// nothing else, installing into `root`; all it printed.
fn busybox_sh(path: &BusyboxPath, script: &Path, root: &Path) -> String {
    support::all_output(
        Command::new(path.sh())
            .arg(script)
            .env_clear()
            .env("PATH", path.path())
            .env("QB_ROOT", root),
    )
}

#[test]
fn tarball_listing() {
    let dir = TempDir::new().unwrap();
    let tarball = support::write(
        dir.path(),
        "agent.tar.gz",
        &qb_package::tarball(&package("0.1.0")).unwrap(),
    );
    let listing = support::listing(&stdout(tar().arg("-tzvf").arg(&tarball)));
    assert_eq!(
        support::rows(&listing),
        [
            ("drwxr-xr-x", "root/root", "qb-agent-0.1.0/"),
            ("-rwxr-xr-x", "root/root", "qb-agent-0.1.0/qb-agent"),
            ("-rw-------", "root/root", "qb-agent-0.1.0/config.toml"),
            ("-rw-r--r--", "root/root", "qb-agent-0.1.0/qb-agent.service"),
            ("-rwxr-xr-x", "root/root", "qb-agent-0.1.0/install.sh"),
            ("-rwxr-xr-x", "root/root", "qb-agent-0.1.0/uninstall.sh"),
            ("-rw-r--r--", "root/root", "qb-agent-0.1.0/README"),
        ]
    );
    let unpacked = unpack(dir.path(), &package("0.1.0"));
    assert_eq!(
        fs::read_to_string(unpacked.join("config.toml")).unwrap(),
        CONFIG
    );
    assert!(fs::read(unpacked.join("qb-agent")).unwrap() == *AGENT_BINARY);
    for script in ["install.sh", "uninstall.sh"] {
        support::assert_sh_syntax(script, &unpacked.join(script));
    }
    let readme = fs::read_to_string(unpacked.join("README")).unwrap();
    assert!(
        readme.starts_with("qb-agent 0.1.0\n==============\n"),
        "{readme}"
    );
}

#[test]
fn tarball_installs_and_uninstalls_under_busybox_without_systemd() {
    support::require_root();
    let dir = TempDir::new().unwrap();
    let root = TempDir::with_prefix("qb-package-root-").unwrap();
    let path = BusyboxPath::new();
    let unpacked = unpack(dir.path(), &package("0.1.0"));

    let said = busybox_sh(&path, &unpacked.join("install.sh"), root.path());
    assert!(
        said.contains("systemd is not running on this host"),
        "{said}"
    );
    assert!(said.contains("qb-agent 0.1.0 installed"), "{said}");
    assert_installed(root.path(), UNIT, &AGENT_BINARY);
    // No temporary file is left behind.
    assert_eq!(
        fs::read_dir(root.path().join("etc/qb-agent"))
            .unwrap()
            .count(),
        1
    );
    fs::write(root.path().join("var/lib/qb-agent/identity"), "node").unwrap();

    let said = busybox_sh(&path, &unpacked.join("uninstall.sh"), root.path());
    assert!(said.contains("qb-agent removed"), "{said}");
    assert_removed(root.path());
    assert_eq!(path.init_calls(), Vec::<String>::new());
}

#[test]
fn tarball_reinstall_keeps_a_changed_config_with_systemd() {
    support::require_root();
    let dir = TempDir::new().unwrap();
    let root = TempDir::with_prefix("qb-package-root-").unwrap();
    fs::create_dir_all(root.path().join("run/systemd/system")).unwrap();
    let path = BusyboxPath::new();
    let unpacked = unpack(dir.path(), &package("0.1.0"));

    let said = busybox_sh(&path, &unpacked.join("install.sh"), root.path());
    assert!(!said.contains("systemd is not running"), "{said}");
    assert_installed(root.path(), UNIT, &AGENT_BINARY);
    assert_eq!(path.init_calls(), SYSTEMCTL.install);

    // The administrator changes the config; a newer tarball keeps it and puts its own beside it.
    let config = root.path().join("etc/qb-agent/config.toml");
    fs::write(&config, "changed by hand\n").unwrap();
    let dir2 = TempDir::new().unwrap();
    let unpacked2 = unpack(dir2.path(), &support::upgrade());
    let said = busybox_sh(&path, &unpacked2.join("install.sh"), root.path());
    assert!(
        said.contains("kept the existing /etc/qb-agent/config.toml"),
        "{said}"
    );
    assert_eq!(fs::read_to_string(&config).unwrap(), "changed by hand\n");
    let new = root.path().join("etc/qb-agent/config.toml.new");
    assert_eq!(fs::read_to_string(&new).unwrap(), CONFIG);
    assert_eq!(support::mode(&new), 0o600);
    assert!(fs::read(root.path().join("usr/bin/qb-agent")).unwrap() == *AGENT_BINARY_2);
    assert_eq!(path.init_calls()[2..], *SYSTEMCTL.upgrade);

    busybox_sh(&path, &unpacked2.join("uninstall.sh"), root.path());
    assert_removed(root.path());
    assert_eq!(path.init_calls()[4..], *SYSTEMCTL.removal);
}

#[test]
fn tarball_installs_with_the_hosts_sh() {
    support::require_root();
    let dir = TempDir::new().unwrap();
    let root = TempDir::with_prefix("qb-package-root-").unwrap();
    let unpacked = unpack(dir.path(), &package("0.1.0"));

    // As a person would: ./install.sh, through its #!/bin/sh (dash on Debian).
    support::run(Command::new(unpacked.join("install.sh")).env("QB_ROOT", root.path()));
    assert_installed(root.path(), UNIT, &AGENT_BINARY);
    support::run(Command::new(unpacked.join("uninstall.sh")).env("QB_ROOT", root.path()));
    assert_removed(root.path());
}
