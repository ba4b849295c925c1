//! The Debian package, read by `dpkg-deb` and installed by `dpkg`.

use std::fs;
use std::process::Command;

use qb_package::Format;
use tempfile::TempDir;

use super::support::{self, AGENT_BINARY, CONFIG, Root, Systemd, package, stdout, tool};

const UNIT: &str = "/lib/systemd/system/qb-agent.service";

fn dpkg_deb() -> Command {
    Command::new(tool("dpkg-deb", "dpkg"))
}

/// `dpkg` working on `root` only: its database, its files, its scripts run chrooted there.
fn dpkg(root: &Root) -> Command {
    let mut cmd = Command::new(tool("dpkg", "dpkg"));
    cmd.arg(format!("--root={}", root.path().display()))
        // Not the host's /var/log/dpkg.log.
        .arg("--log=/dev/null");
    cmd
}

/// A root with an empty dpkg database.
fn dpkg_root(systemd: Systemd) -> Root {
    let root = Root::new(systemd);
    for dir in ["info", "updates", "triggers"] {
        fs::create_dir_all(root.join("/var/lib/dpkg").join(dir)).unwrap();
    }
    fs::write(root.join("/var/lib/dpkg/status"), "").unwrap();
    root
}

/// A root where `dpkg --install` installed 0.1.0, the directory of the package, and what dpkg
/// said.
fn installed_v1(systemd: Systemd) -> (Root, TempDir, String) {
    let root = dpkg_root(systemd);
    let dir = TempDir::new().unwrap();
    let deb = support::write_package(dir.path(), Format::Deb, &package("0.1.0"));
    let said = support::all_output(dpkg(&root).arg("--install").arg(&deb));
    (root, dir, said)
}

/// `dpkg -s qb-agent`, or None when dpkg knows no such package.
fn status(root: &Root) -> Option<String> {
    let out = dpkg(root).args(["-s", "qb-agent"]).output().unwrap();
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap())
}

#[test]
fn deb_metadata_contents_and_scripts() {
    let dir = TempDir::new().unwrap();
    let deb = support::write_package(dir.path(), Format::Deb, &package("0.1.0"));
    let (arch, _) = support::target_arch();

    let fields = stdout(dpkg_deb().arg("--field").arg(&deb).args([
        "Package",
        "Version",
        "Architecture",
        "Maintainer",
        "Section",
    ]));
    assert_eq!(
        fields,
        format!(
            "Package: qb-agent\nVersion: 0.1.0\nArchitecture: {arch}\nMaintainer: qb\nSection: admin\n"
        )
    );
    let size: u64 = stdout(dpkg_deb().arg("--field").arg(&deb).arg("Installed-Size"))
        .trim()
        .parse()
        .unwrap();
    let kib = AGENT_BINARY.len() as u64 / 1024;
    assert!((kib..kib + 16).contains(&size), "Installed-Size {size}");

    let info = stdout(dpkg_deb().arg("--info").arg(&deb));
    assert!(
        info.contains(" Description: qb agent, preconfigured"),
        "{info}"
    );
    for member in ["conffiles", "control", "postinst", "prerm", "postrm"] {
        assert!(
            info.lines()
                .any(|l| l.split_whitespace().nth(4) == Some(member)
                    || l.split_whitespace().nth(5) == Some(member)),
            "{member} not in\n{info}"
        );
    }

    let contents = support::listing(&stdout(dpkg_deb().arg("--contents").arg(&deb)));
    let mut files = support::rows(&contents);
    files.retain(|(perm, _, _)| perm.starts_with('-'));
    assert_eq!(
        files,
        [
            ("-rwxr-xr-x", "root/root", "./usr/bin/qb-agent"),
            ("-rw-------", "root/root", "./etc/qb-agent/config.toml"),
            (
                "-rw-r--r--",
                "root/root",
                "./lib/systemd/system/qb-agent.service"
            ),
        ]
    );
    assert!(
        contents.iter().all(|(perm, owner, _)| perm.starts_with('-')
            || (perm == "drwxr-xr-x" && owner == "root/root")),
        "{contents:?}"
    );

    // What dpkg-deb extracts is what went in.
    let tree = dir.path().join("tree");
    support::run(dpkg_deb().arg("--extract").arg(&deb).arg(&tree));
    assert_eq!(
        fs::read_to_string(tree.join("etc/qb-agent/config.toml")).unwrap(),
        CONFIG
    );
    assert!(fs::read(tree.join("usr/bin/qb-agent")).unwrap() == *AGENT_BINARY);
    assert_eq!(support::mode(&tree.join("etc/qb-agent/config.toml")), 0o600);
    assert_eq!(support::mode(&tree.join("usr/bin/qb-agent")), 0o755);

    let control = dir.path().join("control");
    support::run(dpkg_deb().arg("--control").arg(&deb).arg(&control));
    assert_eq!(
        fs::read_to_string(control.join("conffiles")).unwrap(),
        "/etc/qb-agent/config.toml\n"
    );
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        assert_eq!(support::mode(&path), 0o755, "{script}");
        support::assert_sh_syntax(script, &path);
    }
}

#[test]
fn deb_installs_removes_and_purges_without_systemd() {
    let (root, _dir, said) = installed_v1(Systemd::Absent);
    assert!(
        said.contains("systemd is not running on this host"),
        "{said}"
    );
    assert!(
        said.contains("/usr/bin/qb-agent --config /etc/qb-agent/config.toml"),
        "{said}"
    );
    support::assert_installed(root.path(), UNIT, &AGENT_BINARY);
    let state = status(&root).expect("qb-agent is installed");
    assert!(state.contains("Status: install ok installed"), "{state}");
    assert!(
        state.contains("Conffiles:\n /etc/qb-agent/config.toml "),
        "{state}"
    );
    // Already in a state directory: an agent's data, which only a purge removes.
    support::write_agent_state(&root);

    // Remove keeps the conffile and the state, as Debian does.
    support::run(dpkg(&root).args(["--remove", "qb-agent"]));
    assert!(!root.join("/usr/bin/qb-agent").exists());
    assert!(!root.join(UNIT).exists());
    assert_eq!(
        fs::read_to_string(root.join("/etc/qb-agent/config.toml")).unwrap(),
        CONFIG
    );
    assert!(root.join("/var/lib/qb-agent/identity").exists());

    support::run(dpkg(&root).args(["--purge", "qb-agent"]));
    support::assert_removed(root.path(), UNIT);
    assert_eq!(status(&root), None);
    assert_eq!(root.systemctl_calls(), Vec::<String>::new());
}

#[test]
fn deb_enables_starts_and_stops_the_unit_with_systemd() {
    let (root, dir, said) = installed_v1(Systemd::Running);
    support::assert_enabled(&root, UNIT, &said);

    // An upgrade restarts the agent (if it runs) and keeps its state.
    support::write_agent_state(&root);
    support::run(dpkg(&root).arg("--install").arg(support::write_package(
        dir.path(),
        Format::Deb,
        &support::upgrade(),
    )));
    support::assert_upgraded(&root, UNIT);
    assert!(status(&root).unwrap().contains("Version: 0.2.0"));

    support::run(dpkg(&root).args(["--purge", "qb-agent"]));
    support::assert_purged(&root, UNIT);
}
