//! The RPM, read and installed by `rpm`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use qb_package::Format;
use tempfile::TempDir;

use super::support::{self, AGENT_BINARY, CONFIG, Root, SYSTEMCTL, Systemd, package, stdout, tool};

const UNIT: &str = "/usr/lib/systemd/system/qb-agent.service";
const MAN: &str = qb_package::MAN_PAGE_PATH;

fn rpm() -> Command {
    Command::new(tool("rpm", "rpm"))
}

/// `rpm` working on `root` only: its database (at the usual place, whatever the host's rpm
/// defaults to), its files, its scripts run chrooted there.
fn rpm_in(root: &Root) -> Command {
    let mut cmd = rpm();
    cmd.arg("--root")
        .arg(root.path())
        .args(["--dbpath", "/var/lib/rpm"]);
    cmd
}

/// A root with an empty rpm database.
fn rpm_root(systemd: Systemd) -> Root {
    let root = Root::new(systemd);
    support::run(rpm_in(&root).arg("--initdb"));
    root
}

/// A root where `rpm -i` installed 0.1.0, the directory of the package, and what rpm said.
fn installed_v1(systemd: Systemd) -> (Root, TempDir, String) {
    let root = rpm_root(systemd);
    let dir = TempDir::new().unwrap();
    let pkg = support::write_package(dir.path(), Format::Rpm, &package("0.1.0"));
    let said = support::all_output(rpm_in(&root).args(["-i", "--nodeps"]).arg(&pkg));
    (root, dir, said)
}

/// The installed qb-agent's version-release, or None.
fn installed(root: &Root) -> Option<String> {
    let out = rpm_in(root)
        .args(["-q", "--qf", "%{VERSION}-%{RELEASE}", "qb-agent"])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap())
}

#[test]
fn rpm_metadata_contents_and_scripts() {
    let dir = TempDir::new().unwrap();
    let pkg = support::write_package(dir.path(), Format::Rpm, &package("0.1.0"));
    let (_, arch) = support::target_arch();

    // The build date in UTC, whatever the local time zone.
    let info: BTreeMap<String, String> = stdout(rpm().env("TZ", "UTC").arg("-qpi").arg(&pkg))
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    for (key, want) in [
        ("Name", "qb-agent"),
        ("Version", "0.1.0"),
        ("Release", "1"),
        ("Architecture", arch),
        ("License", "Apache-2.0"),
        ("Vendor", "qb"),
        ("Packager", qb_package::MAINTAINER),
        (
            "Summary",
            "Node agent of qb, preconfigured for one qb controller",
        ),
        ("Build Host", "reproducible"),
        ("Build Date", "Wed Jan  1 00:00:00 2025"),
    ] {
        assert_eq!(
            info.get(key).map(String::as_str),
            Some(want),
            "{key} in {info:?}"
        );
    }

    assert_eq!(
        stdout(rpm().arg("-qpl").arg(&pkg)),
        format!("/etc/qb-agent\n/etc/qb-agent/config.toml\n/usr/bin/qb-agent\n{UNIT}\n{MAN}\n")
    );
    let changelog = stdout(
        rpm()
            .env("TZ", "UTC")
            .args(["-qp", "--changelog"])
            .arg(&pkg),
    );
    assert_eq!(
        changelog,
        format!(
            "* Wed Jan 01 2025 {} - 0.1.0-1\n- qb-agent 0.1.0, packaged by its qb controller.\n\n",
            qb_package::MAINTAINER
        )
    );

    // path size mtime digest mode owner group isconfig isdoc rdev symlink
    let dump = stdout(rpm().args(["-qp", "--dump"]).arg(&pkg));
    let dump: Vec<(&str, &str, &str, &str, &str, &str)> = dump
        .lines()
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c[0], c[1], c[4], c[5], c[6], c[7])
        })
        .collect();
    let config_size = CONFIG.len().to_string();
    let binary_size = AGENT_BINARY.len().to_string();
    let unit_size = dump[3].1;
    let man_size = dump[4].1;
    for size in [unit_size, man_size] {
        assert!(size.parse::<u64>().is_ok_and(|n| n > 0), "{dump:?}");
    }
    assert_eq!(
        dump,
        [
            ("/etc/qb-agent", "0", "040755", "root", "root", "0"),
            (
                "/etc/qb-agent/config.toml",
                &*config_size,
                "0100600",
                "root",
                "root",
                "1"
            ),
            (
                "/usr/bin/qb-agent",
                &*binary_size,
                "0100755",
                "root",
                "root",
                "0"
            ),
            (UNIT, unit_size, "0100644", "root", "root", "0"),
            (MAN, man_size, "0100644", "root", "root", "0"),
        ]
    );
    // %config(noreplace): flags c and n; %doc: d.
    assert_eq!(
        stdout(
            rpm()
                .args(["-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]"])
                .arg(&pkg)
        ),
        format!(
            "/etc/qb-agent \n/etc/qb-agent/config.toml cn\n/usr/bin/qb-agent \n{UNIT} \n{MAN} d\n"
        )
    );

    let scripts = stdout(rpm().args(["-qp", "--scripts"]).arg(&pkg));
    for heading in [
        "postinstall scriptlet (using /bin/sh):",
        "preuninstall scriptlet (using /bin/sh):",
        "postuninstall scriptlet (using /bin/sh):",
    ] {
        assert!(scripts.contains(heading), "{heading} not in\n{scripts}");
    }
    for (tag, name) in [
        ("POSTIN", "%post"),
        ("PREUN", "%preun"),
        ("POSTUN", "%postun"),
    ] {
        let body = stdout(
            rpm()
                .args(["-qp", "--qf", &format!("%{{{tag}}}")])
                .arg(&pkg),
        );
        let path = support::write(dir.path(), tag, body.as_bytes());
        support::assert_sh_syntax(name, &path);
    }

    support::run(rpm().arg("--checksig").arg(&pkg));

    // What rpm's own payload reader unpacks is what went in. (Not rpm2cpio: it writes the whole
    // payload but exits 1, because the rpm crate leaves out the signature header's
    // uncompressed-payload size that rpm2cpio compares against; rpm -i does not use it.)
    let archive = support::run(
        Command::new(tool("rpm2archive", "rpm"))
            .arg("-")
            .stdin(fs::File::open(&pkg).unwrap()),
    )
    .stdout;
    let archive = support::write(dir.path(), "payload.tgz", &archive);
    let listing = support::listing(&stdout(
        Command::new(tool("tar", "tar")).arg("-tzvf").arg(&archive),
    ));
    let files = support::rows(&listing);
    let unit = format!(".{UNIT}");
    let man = format!(".{MAN}");
    assert_eq!(
        files,
        [
            ("drwxr-xr-x", "root/root", "./etc/qb-agent/"),
            ("-rw-------", "root/root", "./etc/qb-agent/config.toml"),
            ("-rwxr-xr-x", "root/root", "./usr/bin/qb-agent"),
            ("-rw-r--r--", "root/root", unit.as_str()),
            ("-rw-r--r--", "root/root", man.as_str()),
        ]
    );
    let tree = dir.path().join("tree");
    fs::create_dir(&tree).unwrap();
    support::run(
        Command::new(tool("tar", "tar"))
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(&tree),
    );
    assert_eq!(
        fs::read_to_string(tree.join("etc/qb-agent/config.toml")).unwrap(),
        CONFIG
    );
    assert!(fs::read(tree.join("usr/bin/qb-agent")).unwrap() == *AGENT_BINARY);
}

#[test]
fn rpm_installs_and_erases_without_systemd() {
    let (root, _dir, said) = installed_v1(Systemd::Absent);
    assert!(
        said.contains("systemd is not running on this host"),
        "{said}"
    );
    support::assert_installed(root.path(), UNIT, &AGENT_BINARY);
    assert_eq!(installed(&root).as_deref(), Some("0.1.0-1"));
    // The installed files check out against the package's digests, modes and owners.
    assert_eq!(
        stdout(rpm_in(&root).args(["-V", "--nodeps", "qb-agent"])),
        ""
    );
    support::write_agent_state(&root);

    // The rpm's only removal: it purges.
    support::run(rpm_in(&root).args(["-e", "qb-agent"]));
    support::assert_removed(root.path());
    assert_eq!(installed(&root), None);
    assert_eq!(root.init_calls(), Vec::<String>::new());
}

#[test]
fn rpm_enables_starts_upgrades_and_stops_the_unit_with_systemd() {
    let (root, dir, said) = installed_v1(Systemd::Running);
    support::assert_enabled(&root, UNIT, &said, &SYSTEMCTL);

    // An upgrade restarts the agent and keeps its state: the old package's %preun and %postun
    // run with $1 = 1 and must neither stop it nor purge.
    support::write_agent_state(&root);
    support::run(
        rpm_in(&root)
            .args(["-U", "--nodeps"])
            .arg(support::write_package(
                dir.path(),
                Format::Rpm,
                &support::upgrade(),
            )),
    );
    support::assert_upgraded(&root, UNIT, &SYSTEMCTL);
    assert_eq!(installed(&root).as_deref(), Some("0.2.0-1"));

    support::run(rpm_in(&root).args(["-e", "qb-agent"]));
    support::assert_purged(&root, &SYSTEMCTL);
}

#[test]
fn rpm_requires_what_rpms_own_dependency_generator_finds() {
    let dir = TempDir::new().unwrap();
    let binary = support::shipped_agent(dir.path());
    let agent = fs::read(&binary).unwrap();
    let p = qb_package::AgentPackage {
        agent_binary: &agent,
        ..package("0.1.0")
    };
    let pkg = support::write_package(dir.path(), Format::Rpm, &p);
    let requires = stdout(rpm().args(["-qp", "--requires"]).arg(&pkg));
    // Besides the C library: the node's tools, and the shell of the scriptlets.
    let tools = ["iptables", "iproute", "/bin/sh"];
    for tool in tools {
        assert!(requires.lines().any(|r| r == tool), "{tool} in {requires}");
    }
    let mut from_elf: Vec<&str> = requires
        .lines()
        .filter(|r| !r.starts_with("rpmlib(") && !r.starts_with("config(") && !tools.contains(r))
        .collect();
    from_elf.sort_unstable();

    // What rpmbuild would have declared: rpm's ELF dependency generator on the file as it is
    // installed (executable), which reads file names on its standard input.
    let elfdeps = Path::new("/usr/lib/rpm/elfdeps");
    assert!(
        elfdeps.exists(),
        "{} is missing: run `apt-get install -y rpm`",
        elfdeps.display()
    );
    let mut child = Command::new(elfdeps)
        .arg("--requires")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(support::mode(&binary) & 0o111, 0o111);
    writeln!(child.stdin.take().unwrap(), "{}", binary.display()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let mut generated: Vec<&str> = generated.lines().collect();
    generated.sort_unstable();
    assert_eq!(from_elf, generated);
    assert!(
        from_elf
            .iter()
            .any(|r| r.starts_with("libc.so.6(GLIBC_2.") && r.ends_with(")(64bit)")),
        "{requires}"
    );
}

#[test]
fn rpm_will_not_install_where_the_c_library_is_missing() {
    let root = rpm_root(Systemd::Absent);
    let dir = TempDir::new().unwrap();
    let pkg = support::write_package(dir.path(), Format::Rpm, &package("0.1.0"));
    let out = rpm_in(&root).arg("-i").arg(&pkg).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("libc.so.6(GLIBC_2.") && said.contains("is needed by qb-agent-0.1.0-1"),
        "{said}"
    );
    assert_eq!(installed(&root), None);
}

#[test]
fn rpm_of_the_shipped_agent_passes_rpmlint() {
    let dir = TempDir::new().unwrap();
    let binary = support::shipped_agent(dir.path());
    let agent = fs::read(&binary).unwrap();
    let pkg = support::write_package(
        dir.path(),
        Format::Rpm,
        &qb_package::AgentPackage {
            agent_binary: &agent,
            ..package("0.1.0")
        },
    );
    // rpmlint exits 64 on errors (66 when it finds too many warnings); every finding is printed.
    // The filters say why each of them is as it is.
    let filters = Path::new(env!("CARGO_MANIFEST_DIR")).join("qb-agent.rpmlintrc");
    let out = Command::new(tool("rpmlint", "rpmlint"))
        .arg("-r")
        .arg(&filters)
        .arg(&pkg)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    eprintln!("{said}");
    let errors: Vec<&str> = said.lines().filter(|l| l.contains(": E: ")).collect();
    assert!(
        out.status.success() && errors.is_empty(),
        "rpmlint ({}) finds errors:\n{said}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
