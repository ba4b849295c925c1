//! What the tests share: the package inputs, the tools (found, or a loud failure naming the
//! package to install), throwaway roots with a busybox shell, and checks of what got installed.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::LazyLock;

use qb_package::{AgentPackage, Format};
use tempfile::TempDir;

/// The agent's config: a secret, and characters a careless script or archive would mangle.
pub const CONFIG: &str = "# qb-agent configuration\n\
controller = \"https://qb.example.test:8443\"\n\
ca_sha256 = [\"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"]\n\
bootstrap_token = \"qb_5e4f0c7b2a9d8e1f3c6b5a4d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f\"\n\
note = \"quotes ' \\\" $HOME `id` \\\\ ünïcödé, no trailing newline\"";

/// A stand-in for the agent executable: a small real program that, like the agent, links only
/// the C library (the packages read its ELF headers and never run it).
pub const AGENT_BINARY_PATH: &str = "/bin/true";
pub static AGENT_BINARY: LazyLock<Vec<u8>> = LazyLock::new(|| fs::read(AGENT_BINARY_PATH).unwrap());

/// Another agent build, for upgrades.
pub static AGENT_BINARY_2: LazyLock<Vec<u8>> = LazyLock::new(|| fs::read("/bin/false").unwrap());

/// Where `cargo xtask test` puts the agent as it ships (built by `cargo xtask dist`).
const DIST_AGENT_ENV: &str = "QB_DIST_AGENT";

/// The agent as it ships, written to `dir/qb-agent`: `cargo xtask dist`'s when the suite runs
/// under `cargo xtask test` (`QB_DIST_AGENT`), otherwise a Rust program built as the agent is
/// (this test binary: glibc, gcc's unwinder) and stripped the same way, its debug info split off
/// into a file beside it. Its path.
pub fn shipped_agent(dir: &Path) -> PathBuf {
    let shipped = dir.join("qb-agent");
    if let Some(dist) = std::env::var_os(DIST_AGENT_ENV) {
        fs::copy(&dist, &shipped)
            .unwrap_or_else(|e| panic!("{DIST_AGENT_ENV}={}: {e}", Path::new(&dist).display()));
    } else {
        let objcopy = tool("objcopy", "binutils");
        let built = std::env::current_exe().unwrap();
        let debug = dir.join("qb-agent.debug");
        run(Command::new(&objcopy)
            .arg("--only-keep-debug")
            .arg(&built)
            .arg(&debug));
        run(Command::new(&objcopy)
            .args(["--strip-debug", "--strip-unneeded"])
            .arg(format!("--add-gnu-debuglink={}", debug.display()))
            .arg(&built)
            .arg(&shipped));
    }
    assert!(
        qb_package::is_stripped(&fs::read(&shipped).unwrap()).unwrap(),
        "the shipped agent is not stripped"
    );
    shipped
}

pub fn package(version: &str) -> AgentPackage<'_> {
    AgentPackage {
        version,
        agent_binary: &AGENT_BINARY,
        config_toml: CONFIG,
    }
}

/// Builds `p` as `format` and writes it into `dir` under its conventional name; its path.
pub fn write_package(dir: &Path, format: Format, p: &AgentPackage) -> PathBuf {
    let name = format.file_name(p.version).unwrap();
    write(dir, &name, &format.build(p).unwrap())
}

/// The next version, with another agent build: what the upgrade tests install.
pub fn upgrade() -> AgentPackage<'static> {
    AgentPackage {
        agent_binary: &AGENT_BINARY_2,
        ..package("0.2.0")
    }
}

/// What a package's scripts ask of the init system's tools where systemd runs: on the first
/// install, on an upgrade, on removal (each call a line: the tool, then its arguments).
pub struct InitCalls {
    pub install: &'static [&'static str],
    pub upgrade: &'static [&'static str],
    pub removal: &'static [&'static str],
}

/// The rpm's and the tarball's: systemctl.
pub const SYSTEMCTL: InitCalls = InitCalls {
    install: &[
        "systemctl daemon-reload",
        "systemctl enable --now qb-agent.service",
    ],
    upgrade: &[
        "systemctl daemon-reload",
        "systemctl try-restart qb-agent.service",
    ],
    removal: &[
        "systemctl disable --now qb-agent.service",
        "systemctl daemon-reload",
    ],
};

/// The package architecture names of the build target: (Debian, RPM).
pub fn target_arch() -> (&'static str, &'static str) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", "x86_64"),
        "aarch64" => ("arm64", "aarch64"),
        other => panic!("no package architecture for {other}"),
    }
}

/// Where a tool is: on `PATH`, or in the sbin directories root's `PATH` has.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A tool the test cannot do without: a missing one fails the test, saying what to install.
pub fn tool(name: &str, debian_package: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed, and this test needs it: run `apt-get install -y \
             {debian_package}` (or `cargo xtask deps`, which installs everything the suite needs)"
        )
    })
}

/// Installing needs root: dpkg and rpm chroot into the throwaway root to run the maintainer
/// scripts there.
pub fn require_root() {
    let uid = fs::metadata("/proc/self").map(|m| m.uid());
    assert!(
        matches!(uid, Ok(0)),
        "this test must run as root (it is uid {uid:?}): dpkg and rpm chroot into a throwaway \
         root to run the package's maintainer scripts there. CI runs the suite as root."
    );
}

/// Runs `cmd` (standard input: nothing, unless set); panics with everything it said unless it
/// succeeded.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({})\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd`; its standard output, which must be UTF-8.
pub fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).expect("the tools print UTF-8")
}

/// Runs `cmd`; standard output and error together.
pub fn all_output(cmd: &mut Command) -> String {
    let out = run(cmd);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes `bytes` to `dir/name`.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

/// The applets the maintainer scripts may use; the throwaway roots have nothing else.
const SCRIPT_APPLETS: &[&str] = &["sh", "[", "test", "echo", "true", "mkdir", "chmod", "rm"];

/// The applets the tarball's scripts may use besides those.
const TARBALL_APPLETS: &[&str] = &["cp", "mv", "cmp", "id", "dirname", "pwd"];

/// A recording stand-in for one of the init system's tools, `name` (systemd cannot run in a
/// test): appends its name and arguments to `log`, and succeeds.
pub fn init_tool_stub(name: &str, log: &str) -> String {
    format!("#!/bin/sh\necho \"{name} $*\" >> {log}\n")
}

/// Where a [`Root`]'s stand-ins record their calls.
pub const INIT_LOG: &str = "/init-calls.log";

/// The static busybox, checked to run where no libraries are.
fn busybox() -> PathBuf {
    tool("busybox", "busybox-static")
}

/// Whether systemd is PID 1 in a root, as the scripts see it (`/run/systemd/system`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Systemd {
    Running,
    Absent,
}

/// A throwaway root to install into: busybox as its only shell and tools, and a recording
/// `systemctl` (called only where `/run/systemd/system` exists), which logs to [`INIT_LOG`].
pub struct Root {
    dir: TempDir,
}

impl Root {
    pub fn new(systemd: Systemd) -> Self {
        require_root();
        let busybox = busybox();
        let dir = TempDir::with_prefix("qb-package-root-").unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir_all(&bin).unwrap();
        fs::copy(&busybox, bin.join("busybox")).unwrap();
        for applet in SCRIPT_APPLETS {
            symlink("busybox", bin.join(applet)).unwrap();
        }
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        // Scripts send what they do not need to /dev/null.
        fs::create_dir_all(dir.path().join("dev")).unwrap();
        let null = dir.path().join("dev/null");
        run(Command::new(tool("mknod", "coreutils"))
            .args(["-m", "666"])
            .arg(&null)
            .args(["c", "1", "3"]));
        root_stub(dir.path(), "/bin/systemctl");
        if systemd == Systemd::Running {
            fs::create_dir_all(dir.path().join("run/systemd/system")).unwrap();
        }
        let works = Command::new(tool("chroot", "coreutils"))
            .arg(dir.path())
            .args(["/bin/busybox", "true"])
            .status()
            .unwrap_or_else(|e| panic!("could not run chroot: {e}"));
        assert!(
            works.success(),
            "{} does not run in an empty root (is it dynamically linked?): run \
             `apt-get install -y busybox-static`",
            busybox.display()
        );
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `path` (absolute, as on the installed system) inside the root.
    pub fn join(&self, path: &str) -> PathBuf {
        self.dir.path().join(path.trim_start_matches('/'))
    }

    /// What the scripts asked of the init system's tools, one call a line.
    pub fn init_calls(&self) -> Vec<String> {
        read_calls(&self.join(INIT_LOG))
    }
}

/// Puts a recording stand-in for the tool at `path` (absolute, as on the installed system) in the
/// root at `root`.
pub fn root_stub(root: &Path, path: &str) {
    let at = root.join(path.trim_start_matches('/'));
    let name = at.file_name().unwrap().to_str().unwrap().to_owned();
    fs::create_dir_all(at.parent().unwrap()).unwrap();
    fs::write(&at, init_tool_stub(&name, INIT_LOG)).unwrap();
    fs::set_permissions(&at, fs::Permissions::from_mode(0o755)).unwrap();
}

fn read_calls(log: &Path) -> Vec<String> {
    match fs::read_to_string(log) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", log.display()),
    }
}

/// A directory to use as the whole `PATH` of the tarball's scripts run on this host: busybox's
/// applets and the recording `systemctl`, which logs to `<dir>/init-calls.log`.
pub struct BusyboxPath {
    dir: TempDir,
}

impl BusyboxPath {
    pub fn new() -> Self {
        let busybox = busybox();
        let dir = TempDir::with_prefix("qb-package-path-").unwrap();
        for applet in SCRIPT_APPLETS.iter().chain(TARBALL_APPLETS) {
            symlink(&busybox, dir.path().join(applet)).unwrap();
        }
        let log = dir.path().join("init-calls.log");
        let stub = write(
            dir.path(),
            "systemctl",
            init_tool_stub("systemctl", &log.display().to_string()).as_bytes(),
        );
        fs::set_permissions(stub, fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn sh(&self) -> PathBuf {
        self.dir.path().join("sh")
    }

    pub fn init_calls(&self) -> Vec<String> {
        read_calls(&self.dir.path().join("init-calls.log"))
    }
}

/// The mode bits (permissions, setuid and friends) of `path`, not following a symlink.
pub fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Checks what an install left in `root`: the agent, its config and unit byte for byte, with
/// their modes and owners, and the state directory.
pub fn assert_installed(root: &Path, unit_path: &str, binary: &[u8]) {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let files: [(&str, u32, &[u8]); 3] = [
        ("/usr/bin/qb-agent", 0o755, binary),
        ("/etc/qb-agent/config.toml", 0o600, CONFIG.as_bytes()),
        (unit_path, 0o644, b""),
    ];
    for (path, want_mode, want_bytes) in files {
        let file = at(path);
        let meta = fs::symlink_metadata(&file).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(meta.is_file(), "{path} is not a regular file");
        assert_eq!(mode(&file), want_mode, "mode of {path}");
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "owner of {path}");
        let bytes = fs::read(&file).unwrap();
        if want_bytes.is_empty() {
            let unit = String::from_utf8(bytes).unwrap();
            assert!(
                unit.lines()
                    .any(|l| l == "ExecStart=/usr/bin/qb-agent --config /etc/qb-agent/config.toml"),
                "{path}:\n{unit}"
            );
        } else {
            assert!(bytes == want_bytes, "{path} differs from what was packaged");
        }
    }
    let state = at("/var/lib/qb-agent");
    assert!(state.is_dir(), "no state directory");
    assert_eq!(mode(&state), 0o700, "mode of /var/lib/qb-agent");
    assert_eq!(mode(&at("/etc/qb-agent")), 0o755, "mode of /etc/qb-agent");
}

/// Checks that nothing of the agent is left in `root`: no file or directory whose name has
/// `qb` in it (the agent, its config, unit, state, manual page, documentation).
pub fn assert_removed(root: &Path) {
    let mut left = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap().to_string_lossy().contains("qb") {
                left.push(path.strip_prefix(root).unwrap().display().to_string());
            }
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                todo.push(path);
            }
        }
    }
    assert_eq!(left, Vec::<String>::new(), "left after removal");
}

/// A [`listing`]'s rows borrowed, to compare with literals.
pub fn rows(listing: &[(String, String, String)]) -> Vec<(&str, &str, &str)> {
    listing
        .iter()
        .map(|(p, o, n)| (p.as_str(), o.as_str(), n.as_str()))
        .collect()
}

/// Checks a first install on a host running systemd: what the package manager `said`, the
/// files, and the unit enabled and started.
pub fn assert_enabled(root: &Root, unit_path: &str, said: &str, calls: &InitCalls) {
    assert!(!said.contains("systemd is not running"), "{said}");
    assert_installed(root.path(), unit_path, &AGENT_BINARY);
    assert_eq!(root.init_calls(), calls.install);
}

/// Leaves some agent state, which only a purge may remove.
pub fn write_agent_state(root: &Root) {
    fs::write(root.join("/var/lib/qb-agent/identity"), "node").unwrap();
}

/// Checks an upgrade to [`upgrade`] after [`assert_enabled`]: the new agent is in place, its
/// state kept, and it is restarted.
pub fn assert_upgraded(root: &Root, unit_path: &str, calls: &InitCalls) {
    assert_installed(root.path(), unit_path, &AGENT_BINARY_2);
    assert!(root.join("/var/lib/qb-agent/identity").exists());
    assert_eq!(root.init_calls()[calls.install.len()..], *calls.upgrade);
}

/// Checks the removal after [`assert_upgraded`]: nothing left, the unit stopped and disabled.
pub fn assert_purged(root: &Root, calls: &InitCalls) {
    assert_removed(root.path());
    let before = calls.install.len() + calls.upgrade.len();
    assert_eq!(root.init_calls()[before..], *calls.removal);
}

/// Parses `ls -l`-like listings (`tar tv`, `dpkg-deb --contents`): (permissions, owner, path).
pub fn listing(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            assert!(cols.len() >= 6, "unexpected listing line {line:?}");
            (
                cols[0].to_owned(),
                cols[1].to_owned(),
                cols[cols.len() - 1].to_owned(),
            )
        })
        .collect()
}

/// Checks the syntax of a shell script with busybox's `sh` and with the host's `/bin/sh` (dash on
/// Debian).
pub fn assert_sh_syntax(name: &str, script: &Path) {
    for sh in [busybox(), PathBuf::from("/bin/sh")] {
        let mut cmd = Command::new(&sh);
        if sh.ends_with("busybox") {
            cmd.arg("sh");
        }
        let out = cmd.arg("-n").arg(script).output().unwrap();
        assert!(
            out.status.success(),
            "{name} is not valid for {}: {}",
            sh.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_missing_tool_is_not_found_and_fails_loudly() {
    assert_eq!(find_tool("qb-no-such-tool"), None);
    let panic = std::panic::catch_unwind(|| tool("qb-no-such-tool", "qb-no-such-package"))
        .expect_err("a missing tool fails the test");
    let message = panic
        .downcast_ref::<String>()
        .expect("the message is formatted");
    assert!(
        message.contains("apt-get install -y qb-no-such-package"),
        "{message}"
    );
}
