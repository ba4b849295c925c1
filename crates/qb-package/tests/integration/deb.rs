//! The Debian package, read by `dpkg-deb`, checked by `lintian` and installed by `dpkg`.

use std::fs;
use std::path::Path;
use std::process::Command;

use qb_package::{AgentPackage, Format};
use tempfile::TempDir;

use super::support::{
    self, AGENT_BINARY, AGENT_BINARY_2, AGENT_BINARY_PATH, CONFIG, InitCalls, Root, Systemd,
    package, stdout, tool,
};

const UNIT: &str = "/lib/systemd/system/qb-agent.service";

/// What the deb's scripts ask of the init system's tools where systemd runs. Without systemd,
/// only `deb-systemd-helper` is called.
const DEB_SYSTEMD: InitCalls = InitCalls {
    install: &[
        "deb-systemd-helper unmask qb-agent.service",
        "deb-systemd-helper --quiet was-enabled qb-agent.service",
        "deb-systemd-helper enable qb-agent.service",
        "systemctl --system daemon-reload",
        "deb-systemd-invoke start qb-agent.service",
    ],
    upgrade: &[
        "deb-systemd-helper unmask qb-agent.service",
        "deb-systemd-helper --quiet was-enabled qb-agent.service",
        "deb-systemd-helper enable qb-agent.service",
        "systemctl --system daemon-reload",
        "deb-systemd-invoke restart qb-agent.service",
    ],
    removal: &[
        "deb-systemd-invoke stop qb-agent.service",
        "systemctl daemon-reload",
        "deb-systemd-helper mask qb-agent.service",
        "deb-systemd-helper purge qb-agent.service",
        "deb-systemd-helper unmask qb-agent.service",
    ],
};

/// The package's documentation, manual page and lintian overrides.
const DOCS: [&str; 4] = [
    "/usr/share/doc/qb-agent/copyright",
    "/usr/share/doc/qb-agent/changelog.gz",
    qb_package::MAN_PAGE_PATH,
    "/usr/share/lintian/overrides/qb-agent",
];

/// The packages the deb may depend on, with their architecture (none: the build target's).
const DEPENDENCIES: [(&str, Option<&str>); 5] = [
    ("libc6", None),
    ("libgcc-s1", None),
    ("iptables", None),
    ("iproute2", None),
    ("init-system-helpers", Some("all")),
];

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

/// The version of `package` installed on this host (a Debian system).
fn host_version(package: &str) -> String {
    stdout(
        Command::new(tool("dpkg-query", "dpkg"))
            .args(["--showformat=${Version}", "--show"])
            .arg(package),
    )
}

/// A root whose dpkg database has what the deb depends on (at this host's versions, unless
/// `older` names another for a package), and recording stand-ins for `deb-systemd-helper` and
/// `deb-systemd-invoke`.
fn dpkg_root_with(systemd: Systemd, older: Option<(&str, &str)>) -> Root {
    let root = Root::new(systemd);
    // Joined at run time: this test binary may stand in for the agent in the lintian test, and
    // lintian warns of a program that names dpkg's database.
    let database = root.join("/var/lib").join("dpkg");
    for dir in ["info", "updates", "triggers"] {
        fs::create_dir_all(database.join(dir)).unwrap();
    }
    let (native, _) = support::target_arch();
    let mut status = String::new();
    for (package, arch) in DEPENDENCIES {
        let arch = arch.unwrap_or(native);
        let version = match older {
            Some((name, version)) if name == package => version.to_owned(),
            _ => host_version(package),
        };
        status.push_str(&format!(
            "Package: {package}\nStatus: install ok installed\nPriority: optional\n\
             Section: libs\nMaintainer: a stand-in <stand-in@example.invalid>\n\
             Architecture: {arch}\nVersion: {version}\nDescription: a stand-in\n\n"
        ));
        fs::write(database.join("info").join(format!("{package}.list")), "").unwrap();
    }
    fs::write(database.join("status"), status).unwrap();
    for helper in ["deb-systemd-helper", "deb-systemd-invoke"] {
        support::root_stub(root.path(), &format!("/usr/bin/{helper}"));
    }
    root
}

fn dpkg_root(systemd: Systemd) -> Root {
    dpkg_root_with(systemd, None)
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

/// `dpkg -L qb-agent`: the paths dpkg has of the package, or None when it has none.
fn listed(root: &Root) -> Option<Vec<String>> {
    let out = dpkg(root).args(["-L", "qb-agent"]).output().unwrap();
    out.status.success().then(|| {
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    })
}

/// What `dpkg-shlibdeps`, Debian's own tool, says a package holding `binary` depends on.
fn shlibdeps(binary: &Path) -> Vec<String> {
    let dir = TempDir::new().unwrap();
    fs::create_dir(dir.path().join("debian")).unwrap();
    fs::write(
        dir.path().join("debian/control"),
        "Source: qb\n\nPackage: qb-agent\nArchitecture: any\n",
    )
    .unwrap();
    let said = stdout(
        Command::new(tool("dpkg-shlibdeps", "dpkg-dev"))
            .current_dir(dir.path())
            .args(["-O", "-e"])
            .arg(binary),
    );
    said.trim()
        .strip_prefix("shlibs:Depends=")
        .unwrap_or_else(|| panic!("unexpected dpkg-shlibdeps output {said:?}"))
        .split(", ")
        .map(str::to_owned)
        .collect()
}

/// The newest `GLIBC_` symbol version `binary` needs, as binutils' `objdump -T` lists them.
fn newest_glibc(binary: &Path) -> String {
    let symbols = stdout(
        Command::new(tool("objdump", "binutils"))
            .arg("-T")
            .arg(binary),
    );
    symbols
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|word| word.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            v.split('.')
                .map(|n| n.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()
        })
        .max()
        .expect("the binary needs some glibc symbol version")
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// Checks a deb's `Depends` (`depends`, its clauses) for `binary`: the C library at the newest
/// `GLIBC_` version it needs; the packages `dpkg-shlibdeps` names, in its order (gcc's unwinder
/// also under its name before Debian 11), never at a newer version than it asks (it may ask
/// more: an agent linked against an older glibc than this host's uses symbols that moved into
/// libc in 2.34, which its symbols files date 2.34); and what the maintainer scripts use.
fn assert_depends_fit(binary: &Path, depends: &[&str]) {
    assert_eq!(
        depends.first().copied(),
        Some(format!("libc6 (>= {})", newest_glibc(binary)).as_str()),
        "{depends:?}"
    );
    // Then the node's tools, then what the maintainer scripts use.
    assert_eq!(
        depends[depends.len() - 3..],
        ["iptables", "iproute2", "init-system-helpers (>= 1.18~)"]
    );
    let debians = shlibdeps(binary);
    let ours = &depends[..depends.len() - 3];
    assert_eq!(ours.len(), debians.len(), "{depends:?} {debians:?}");
    for (ours, debians) in ours.iter().zip(&debians) {
        let ours = ours.split(" | ").next().unwrap();
        let (package, version) = ours.split_once(" (>= ").unwrap();
        let (debian_package, debian_version) = debians.split_once(" (>= ").unwrap();
        assert_eq!(package, debian_package, "{depends:?} {debians:?}");
        let newer = Command::new(tool("dpkg", "dpkg"))
            .arg("--compare-versions")
            .arg(version.trim_end_matches(')'))
            .arg("gt")
            .arg(debian_version.trim_end_matches(')'))
            .status()
            .unwrap();
        assert!(!newer.success(), "{ours} asks more than {debians}");
    }
}

/// The `Depends` clauses `dpkg-deb --info` shows.
fn depends_of(info: &str) -> Vec<&str> {
    info.lines()
        .find_map(|l| l.strip_prefix(" Depends: "))
        .unwrap_or_else(|| panic!("no Depends in\n{info}"))
        .split(", ")
        .collect()
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
        "Priority",
        "Recommends",
    ]));
    assert_eq!(
        fields,
        format!(
            "Package: qb-agent\nVersion: 0.1.0\nArchitecture: {arch}\nMaintainer: {}\n\
             Section: admin\nPriority: optional\nRecommends: conntrack\n",
            qb_package::MAINTAINER
        )
    );
    let size: u64 = stdout(dpkg_deb().arg("--field").arg(&deb).arg("Installed-Size"))
        .trim()
        .parse()
        .unwrap();
    let kib = AGENT_BINARY.len() as u64 / 1024;
    assert!((kib..kib + 32).contains(&size), "Installed-Size {size}");

    let info = stdout(dpkg_deb().arg("--info").arg(&deb));
    assert!(
        info.contains(" Description: Node agent of qb, preconfigured"),
        "{info}"
    );
    assert_depends_fit(Path::new(AGENT_BINARY_PATH), &depends_of(&info));
    for member in [
        "conffiles",
        "control",
        "md5sums",
        "postinst",
        "prerm",
        "postrm",
    ] {
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
            (
                "-rw-r--r--",
                "root/root",
                "./usr/share/doc/qb-agent/copyright"
            ),
            (
                "-rw-r--r--",
                "root/root",
                "./usr/share/doc/qb-agent/changelog.gz"
            ),
            (
                "-rw-r--r--",
                "root/root",
                "./usr/share/man/man1/qb-agent.1.gz"
            ),
            (
                "-rw-r--r--",
                "root/root",
                "./usr/share/lintian/overrides/qb-agent"
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
    let changelog = stdout(
        Command::new(tool("zcat", "gzip")).arg(tree.join("usr/share/doc/qb-agent/changelog.gz")),
    );
    assert!(
        changelog.starts_with("qb-agent (0.1.0) stable; urgency=medium\n"),
        "{changelog}"
    );

    let control = dir.path().join("control");
    support::run(dpkg_deb().arg("--control").arg(&deb).arg(&control));
    assert_eq!(
        fs::read_to_string(control.join("conffiles")).unwrap(),
        "/etc/qb-agent/config.toml\n"
    );
    // Every file but the conffile, with its digest.
    let md5sums = fs::read_to_string(control.join("md5sums")).unwrap();
    let summed: Vec<&str> = md5sums
        .lines()
        .map(|l| l.split_once("  ").unwrap().1)
        .collect();
    assert_eq!(
        summed,
        [
            "usr/bin/qb-agent",
            "lib/systemd/system/qb-agent.service",
            "usr/share/doc/qb-agent/copyright",
            "usr/share/doc/qb-agent/changelog.gz",
            "usr/share/man/man1/qb-agent.1.gz",
            "usr/share/lintian/overrides/qb-agent",
        ]
    );
    support::run(
        Command::new(tool("md5sum", "coreutils"))
            .arg("--check")
            .arg("--quiet")
            .arg(control.join("md5sums"))
            .current_dir(&tree),
    );
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        assert_eq!(support::mode(&path), 0o755, "{script}");
        support::assert_sh_syntax(script, &path);
    }
}

#[test]
fn deb_of_the_shipped_agent_passes_lintian() {
    let dir = TempDir::new().unwrap();
    let binary = support::shipped_agent(dir.path());
    let agent = fs::read(&binary).unwrap();
    let deb = support::write_package(
        dir.path(),
        Format::Deb,
        &AgentPackage {
            agent_binary: &agent,
            ..package("0.1.0")
        },
    );
    let info = stdout(dpkg_deb().arg("--info").arg(&deb));
    assert_depends_fit(&binary, &depends_of(&info));

    // lintian exits 0 with warnings and info, 2 with errors; every tag is printed.
    let out = Command::new(tool("lintian", "lintian"))
        .args(["--pedantic", "--display-info", "--show-overrides"])
        .arg(&deb)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let bad: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect();
    assert!(
        out.status.success() && bad.is_empty(),
        "lintian ({}) finds errors or warnings:\n{said}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The one override is used, and says why.
    assert!(
        said.contains(
            "O: qb-agent: non-standard-file-perm 0600 != 0644 [etc/qb-agent/config.toml]"
        ),
        "{said}"
    );
}

#[test]
fn deb_installs_upgrades_removes_and_purges_without_systemd() {
    let (root, dir, said) = installed_v1(Systemd::Absent);
    assert!(
        said.contains("systemd is not running on this host"),
        "{said}"
    );
    assert!(
        said.contains("/usr/bin/qb-agent --config /etc/qb-agent/config.toml"),
        "{said}"
    );
    support::assert_installed(root.path(), UNIT, &AGENT_BINARY);
    for doc in DOCS {
        assert!(root.join(doc).is_file(), "{doc}");
    }
    let state = status(&root).expect("qb-agent is installed");
    assert!(state.contains("Status: install ok installed"), "{state}");
    assert!(
        state.contains("Conffiles:\n /etc/qb-agent/config.toml "),
        "{state}"
    );
    // The installed files match the package's md5sums, modes and owners.
    assert_eq!(stdout(dpkg(&root).args(["--verify", "qb-agent"])), "");
    // The unit is enabled for when the host boots with systemd.
    let enable = &DEB_SYSTEMD.install[..3];
    assert_eq!(root.init_calls(), enable);
    // Already in a state directory: an agent's data, which only a purge removes.
    support::write_agent_state(&root);

    // An upgrade keeps the host's identity.
    support::run(dpkg(&root).arg("--install").arg(support::write_package(
        dir.path(),
        Format::Deb,
        &support::upgrade(),
    )));
    support::assert_installed(root.path(), UNIT, &AGENT_BINARY_2);
    assert_eq!(
        fs::read_to_string(root.join("/var/lib/qb-agent/identity")).unwrap(),
        "node"
    );
    assert!(status(&root).unwrap().contains("Version: 0.2.0"));
    assert_eq!(root.init_calls()[3..], *enable);

    // Remove keeps the conffile and the state, as Debian does.
    support::run(dpkg(&root).args(["--remove", "qb-agent"]));
    assert!(!root.join("/usr/bin/qb-agent").exists());
    assert!(!root.join(UNIT).exists());
    assert_eq!(
        fs::read_to_string(root.join("/etc/qb-agent/config.toml")).unwrap(),
        CONFIG
    );
    assert!(root.join("/var/lib/qb-agent/identity").exists());
    let state = status(&root).unwrap();
    assert!(
        state.contains("Status: deinstall ok config-files"),
        "{state}"
    );
    let kept = listed(&root).expect("dpkg keeps the conffile's record");
    assert!(
        kept.contains(&"/etc/qb-agent/config.toml".to_owned()),
        "{kept:?}"
    );
    assert!(!kept.contains(&"/usr/bin/qb-agent".to_owned()), "{kept:?}");

    support::run(dpkg(&root).args(["--purge", "qb-agent"]));
    support::assert_removed(root.path());
    assert_eq!(status(&root), None);
    assert_eq!(listed(&root), None);
    assert_eq!(
        root.init_calls()[6..],
        [
            "deb-systemd-helper mask qb-agent.service",
            "deb-systemd-helper purge qb-agent.service",
            "deb-systemd-helper unmask qb-agent.service",
        ]
    );
}

#[test]
fn deb_enables_starts_upgrades_and_stops_the_unit_with_systemd() {
    let (root, dir, said) = installed_v1(Systemd::Running);
    support::assert_enabled(&root, UNIT, &said, &DEB_SYSTEMD);

    // An upgrade restarts the agent (if it runs) and keeps its state.
    support::write_agent_state(&root);
    support::run(dpkg(&root).arg("--install").arg(support::write_package(
        dir.path(),
        Format::Deb,
        &support::upgrade(),
    )));
    support::assert_upgraded(&root, UNIT, &DEB_SYSTEMD);
    assert!(status(&root).unwrap().contains("Version: 0.2.0"));

    support::run(dpkg(&root).args(["--purge", "qb-agent"]));
    support::assert_purged(&root, &DEB_SYSTEMD);
    assert_eq!(listed(&root), None);
}

#[test]
fn deb_is_not_configured_where_the_c_library_is_too_old() {
    let root = dpkg_root_with(Systemd::Absent, Some(("libc6", "2.17-0")));
    let dir = TempDir::new().unwrap();
    let deb = support::write_package(dir.path(), Format::Deb, &package("0.1.0"));
    let out = dpkg(&root).arg("--install").arg(&deb).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    let libc = format!("libc6 (>= {})", newest_glibc(Path::new(AGENT_BINARY_PATH)));
    assert!(
        said.contains(&format!("qb-agent depends on {libc}; however:"))
            && said.contains("Version of libc6 on system is 2.17-0."),
        "{said}"
    );
    // Unpacked, never configured: the maintainer script did not run.
    assert!(
        status(&root)
            .unwrap()
            .contains("Status: install ok unpacked")
    );
    assert!(!root.join("/var/lib/qb-agent").exists());
}
