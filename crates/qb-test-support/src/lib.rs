//! Test helpers: a throwaway PostgreSQL server from the system's packages, free ports and SQLite
//! URLs, a throwaway DNS resolver ([`unbound`]) and a throwaway nginx ([`nginx`]).
//!
//! [`PgServer::start`] runs a private `postgres` on 127.0.0.1 with its data in a temporary
//! directory (on `/dev/shm` when it has room), and stops it and removes the directory when
//! dropped, or, through a watchdog, when the test process dies. `initdb` runs once per machine
//! (per PostgreSQL version and user): its result is kept as a template under the system's temp
//! directory and copied for every server, so a server starts in a fraction of a second even when
//! every test runs in its own process, as under `cargo nextest`.
//!
//! PostgreSQL refuses to run as root; as root, the server runs as the `postgres` system user that
//! Debian's package creates.
//!
//! There is no silent skipping: without PostgreSQL's server binaries, `start` fails and says how
//! to install them.

use std::fs::{self, File};
use std::io::{ErrorKind, Read as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

pub mod disk;
pub mod exim;
pub mod haproxy;
pub mod nginx;
pub mod prometheus;
pub mod unbound;
pub mod webhook;

/// Where Debian's `postgresql-<major>` packages put the server binaries.
const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";
/// Overrides the directory holding `initdb` and `postgres` (for other layouts).
pub const BINDIR_ENV: &str = "QB_TEST_PG_BINDIR";
/// Overrides where servers keep their data (default: `/dev/shm` if roomy, else the temp dir).
pub const TMPDIR_ENV: &str = "QB_TEST_PG_TMPDIR";
/// The system account that runs PostgreSQL when the tests run as root.
pub const PG_SYSTEM_USER: &str = "postgres";
/// The superuser every server is initialized with, whoever runs it.
const SUPERUSER: &str = "postgres";
/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to stop before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at starting when another process takes the chosen port first.
const PORT_ATTEMPTS: usize = 5;

/// A free TCP port on 127.0.0.1, as the kernel hands out for port 0.
///
/// The port is free when returned; another process may still take it before the caller binds it.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(listener
        .local_addr()
        .context("reading the bound address")?
        .port())
}

/// The URL of a SQLite database file `qb.db` in `dir`, for `qb_store::Store::open`.
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("qb.db").display())
}

/// A private PostgreSQL server for one test, listening on 127.0.0.1 only, with trust
/// authentication and durability turned off for speed. Dropping it stops the server and deletes
/// its data.
pub struct PgServer {
    port: u16,
    /// Whether commits wait for the log (see [`PgServer::start_durable`]).
    durable: bool,
    postmaster: Child,
    /// Stops the postmaster and removes `dir` if this process dies without dropping the server
    /// (a test killed on timeout); see `spawn_watchdog`.
    watchdog: Option<Child>,
    dir: tempfile::TempDir,
}

impl PgServer {
    /// Starts a server and waits until it accepts connections.
    ///
    /// Fails, never skips, when PostgreSQL is not installed.
    pub fn start() -> Result<Self> {
        Self::start_with(false)
    }

    /// As [`PgServer::start`], with every commit in the log before it is acknowledged
    /// (`synchronous_commit`, PostgreSQL's default), so a crash of the server loses nothing
    /// acknowledged. The other servers skip that wait for speed: what they acknowledged in the
    /// last fraction of a second before a crash is gone.
    pub fn start_durable() -> Result<Self> {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Result<Self> {
        let install = PgInstallation::find()?;
        let template = install.template()?;
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            match Self::start_on(&install, &template, free_port()?, durable)? {
                Ok(server) => return Ok(server),
                // Another process took the port between `free_port` and the bind: try another.
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt was made"))
    }

    /// `Ok(Err(..))` when the port was taken, so another can be tried.
    fn start_on(
        install: &PgInstallation,
        template: &Path,
        port: u16,
        durable: bool,
    ) -> Result<Result<Self>> {
        let root = scratch_root();
        let dir = tempfile::Builder::new()
            .prefix("qb-test-pg-")
            .tempdir_in(root)
            .with_context(|| format!("creating a temp dir in {}", root.display()))?;
        let data = dir.path().join("data");
        run(
            Command::new("cp").arg("-a").arg(template).arg(&data),
            "copying the template data dir",
        )?;
        if install.as_system_user {
            // `cp -a` kept the data's owner; the server also needs the dir for its socket.
            run(
                Command::new("chown")
                    .arg(format!("{PG_SYSTEM_USER}:"))
                    .arg(dir.path()),
                "handing the temp dir to the postgres user",
            )?;
        }
        let log_path = dir.path().join("server.log");
        let postmaster = spawn_postgres(install, &data, dir.path(), port, durable)?;
        let mut server = Self {
            port,
            durable,
            postmaster,
            watchdog: None,
            dir,
        };
        server.watchdog = Some(spawn_watchdog(server.postmaster.id(), server.dir.path())?);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = server
                .postmaster
                .try_wait()
                .context("checking on postgres")?
            {
                let log = read_log(&log_path);
                let error = anyhow::anyhow!(
                    "postgres exited with {status} before accepting connections (data copied from the template {}; \
                     delete it if it is damaged). Its log:\n{log}",
                    template.display()
                );
                return if log.contains("could not bind")
                    || log.contains("could not create listen socket")
                {
                    Ok(Err(error))
                } else {
                    Err(error)
                };
            }
            if is_ready(&data) && TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(Ok(server));
            }
            if Instant::now() > deadline {
                bail!(
                    "postgres did not accept connections within {START_TIMEOUT:?}. Its log:\n{}",
                    read_log(&log_path)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of database `database` on this server (create it first).
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The server's temporary directory: `data/`, `server.log` and the Unix socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `pg_dump` of database `postgres`: its schema and every row, as SQL text.
    pub fn dump(&self) -> Result<String> {
        let install = PgInstallation::find()?;
        let out = Command::new(install.bindir.join("pg_dump"))
            .args(["--dbname", &self.url()])
            .output()
            .context("running pg_dump")?;
        if !out.status.success() {
            bail!("pg_dump failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8(out.stdout).context("pg_dump's output is not UTF-8")
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("server.log"))
    }

    /// Restarts the server as a crash and an operator would: an immediate shutdown (every
    /// connection dropped, no checkpoint: the next start recovers from the log), `down` with
    /// nothing listening, then a start on the same data and port. Returns once it accepts
    /// connections again.
    pub fn restart_after(&mut self, down: Duration) -> Result<()> {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        self.stop()?;
        std::thread::sleep(down);
        let data = self.dir.path().join("data");
        self.postmaster = spawn_postgres(
            &PgInstallation::find()?,
            &data,
            self.dir.path(),
            self.port,
            self.durable,
        )?;
        self.watchdog = Some(spawn_watchdog(self.postmaster.id(), self.dir.path())?);
        let (port, log) = (self.port, self.dir.path().join("server.log"));
        wait_ready(
            "postgres, started again,",
            &mut self.postmaster,
            START_TIMEOUT,
            || is_ready(&data) && TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok(),
            || read_log(&log),
        )
    }

    /// Stops the server (an immediate shutdown: nothing is kept) and waits for it to exit.
    fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.postmaster.try_wait()? {
            return Ok(status);
        }
        // SIGQUIT makes the postmaster stop its backends and remove its shared memory; SIGKILL,
        // all std can send, would leave the shared memory segment behind.
        let signalled = Command::new("kill")
            .args(["-QUIT", &self.postmaster.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if signalled {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Some(status) = self.postmaster.try_wait()? {
                    return Ok(status);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.postmaster.kill()?;
        Ok(self.postmaster.wait()?)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // The watchdog goes first: once the postmaster is reaped its pid may be reused.
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        if let Err(e) = self.stop() {
            eprintln!(
                "qb-test-support: could not stop postgres (pid {}): {e:#}",
                self.postmaster.id()
            );
        }
        // `dir` is removed when its field drops.
    }
}

impl std::fmt::Debug for PgServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgServer")
            .field("url", &self.url())
            .field("pid", &self.postmaster.id())
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// Waits until `ready` holds for the server `what` that `child` runs: an error, with the
/// server's `log`, when the child exits first or `within` passes.
pub(crate) fn wait_ready(
    what: &str,
    child: &mut Child,
    within: Duration,
    ready: impl Fn() -> bool,
    log: impl Fn() -> String,
) -> Result<()> {
    let deadline = Instant::now() + within;
    while !ready() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited ({status}):\n{}", log());
        }
        if Instant::now() > deadline {
            bail!("{what} was not ready within {within:?}:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The postmaster of the data directory `data` on `port`, its socket in `dir` and its log
/// appended to `dir/server.log`. Never `fsync`: a test crashes the server, never the machine.
fn spawn_postgres(
    install: &PgInstallation,
    data: &Path,
    dir: &Path,
    port: u16,
    durable: bool,
) -> Result<Child> {
    let log_path = dir.join("server.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = install.command("postgres");
    cmd.arg("-D")
        .arg(data)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-p",
            &port.to_string(),
            "-k",
        ])
        .arg(dir)
        .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
        .args(if durable {
            ["-c", "synchronous_commit=on"]
        } else {
            ["-c", "synchronous_commit=off"]
        })
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file handle")?)
        .stderr(log)
        // Out of the test's process group: see `spawn_watchdog`.
        .process_group(0);
    cmd.spawn().context("starting postgres")
}

/// Starts `sh` waiting for end-of-file on a pipe whose only writer is this process. When this
/// process dies without dropping the server (a test killed on timeout, a panic that aborts), the
/// pipe closes and `sh` stops the postmaster with SIGQUIT and removes its directory.
///
/// The watchdog and the postmaster get process groups of their own, so that a test runner killing
/// the test's process group reaches neither: the watchdog must outlive the test, and the
/// postmaster must get SIGQUIT (SIGKILL would leave its shared memory behind).
fn spawn_watchdog(postmaster_pid: u32, dir: &Path) -> Result<Child> {
    const SCRIPT: &str = r#"read -r _unused
kill -QUIT "$0" 2>/dev/null
i=0
while kill -0 "$0" 2>/dev/null && ! grep -qs '^State:[[:space:]]*Z' "/proc/$0/status" &&
    [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
rm -rf -- "$1""#;
    Command::new("sh")
        .args(["-c", SCRIPT, &postmaster_pid.to_string()])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting the watchdog shell that stops postgres if the test process dies")
}

/// Where servers keep their data: `/dev/shm` when it is a roomy tmpfs (creating the thousand
/// files of a data dir on a disk can take a second), else the system's temp dir.
/// `QB_TEST_PG_TMPDIR` overrides both.
fn scratch_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        if let Some(dir) = std::env::var_os(TMPDIR_ENV) {
            return PathBuf::from(dir);
        }
        let shm = Path::new("/dev/shm");
        // PostgreSQL also keeps its dynamic shared memory there: leave plenty (a container's
        // default /dev/shm is 64 MiB).
        if shm.is_dir() && available_kib(shm).is_some_and(|kib| kib >= 1 << 20) {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        }
    })
}

/// Free space of the file system holding `path`, from `df -Pk`.
fn available_kib(path: &Path) -> Option<u64> {
    let out = Command::new("df")
        .arg("-Pk")
        .arg(path)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    // "Filesystem 1024-blocks Used Available Capacity Mounted on", then one line per file system.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// `true` once the postmaster reports, in line 8 of `postmaster.pid`, that it accepts
/// connections (`starting` until then).
fn is_ready(data: &Path) -> bool {
    fs::read_to_string(data.join("postmaster.pid")).is_ok_and(|pid_file| {
        pid_file
            .lines()
            .nth(7)
            .is_some_and(|status| status.trim() == "ready")
    })
}

fn read_log(path: &Path) -> String {
    let mut text = String::new();
    match File::open(path).and_then(|mut f| f.read_to_string(&mut text)) {
        Ok(_) => text,
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

/// Runs a command to completion; fails with its output unless it succeeds.
fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what}: {cmd:?} exited with {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The PostgreSQL server binaries (the newest Debian installed, or [`BINDIR_ENV`]'s) and how to
/// run them: as the `postgres` system user when we are root, since PostgreSQL refuses root.
pub struct PgInstallation {
    /// The directory of `initdb`, `postgres`, `pg_isready`, `psql`, ...
    pub bindir: PathBuf,
    /// `15.18`, from `postgres --version`.
    version: String,
    /// We are root: run PostgreSQL as the `postgres` user.
    pub as_system_user: bool,
}

impl PgInstallation {
    /// The installed server; an error saying how to install one when there is none.
    pub fn find() -> Result<Self> {
        let bindir = match std::env::var_os(BINDIR_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => newest_debian_bindir()?,
        };
        for tool in ["initdb", "postgres"] {
            if !bindir.join(tool).is_file() {
                bail!(
                    "PostgreSQL's `{tool}` is missing from {}: install the server with \
                     `apt-get install postgresql` (the tests never skip themselves).",
                    bindir.display()
                );
            }
        }
        let out = Command::new(bindir.join("postgres"))
            .arg("--version")
            .output()
            .with_context(|| format!("running {}/postgres --version", bindir.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        let version = text
            .split_whitespace()
            .nth(2)
            .filter(|v| out.status.success() && v.starts_with(|c: char| c.is_ascii_digit()))
            .with_context(|| format!("unexpected output of postgres --version: {text:?}"))?
            .to_owned();
        Ok(Self {
            bindir,
            version,
            as_system_user: running_as_root()?,
        })
    }

    /// A command running `tool` as the user that runs PostgreSQL.
    pub fn command(&self, tool: &str) -> Command {
        let program = self.bindir.join(tool);
        if self.as_system_user {
            // setpriv execs the tool (runuser would fork and wait), so the child we hold is the
            // postmaster itself and signals reach it.
            let mut cmd = Command::new("setpriv");
            cmd.args([
                &format!("--reuid={PG_SYSTEM_USER}"),
                &format!("--regid={PG_SYSTEM_USER}"),
                "--init-groups",
                "--",
            ])
            .arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }

    /// The data dir `initdb` made for this version and user, made now if no test made it before.
    ///
    /// Each maker writes a private staging dir and renames it into place, so concurrent test
    /// processes never see a half-made template and a crash leaves no stale lock behind; at worst
    /// the first few processes run `initdb` concurrently and all but one discard their result.
    fn template(&self) -> Result<PathBuf> {
        let owner = if self.as_system_user {
            PG_SYSTEM_USER.to_owned()
        } else {
            current_uid_tag()?
        };
        let template =
            std::env::temp_dir().join(format!("qb-test-pg-template-{}-{owner}", self.version));
        if template.join("PG_VERSION").is_file() {
            return Ok(template);
        }
        let staging = tempfile::Builder::new()
            .prefix(&format!("qb-test-pg-template-{}-staging-", self.version))
            .tempdir_in(std::env::temp_dir())
            .context("creating a staging dir for the template")?;
        let data = staging.path().join("data");
        fs::create_dir(&data).with_context(|| format!("creating {}", data.display()))?;
        if self.as_system_user {
            run(
                Command::new("chown")
                    .arg("-R")
                    .arg(format!("{PG_SYSTEM_USER}:"))
                    .arg(staging.path()),
                "handing the staging dir to the postgres user",
            )?;
        }
        run(
            self.command("initdb")
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                ])
                .args(["--no-sync", "--no-instructions", "--wal-segsize=1"])
                .current_dir(staging.path())
                .env("LC_ALL", "C"),
            "initializing the template data dir",
        )?;
        match fs::rename(&data, &template) {
            Ok(()) => Ok(template),
            // Another process finished first; its template is as good as ours.
            Err(_) if template.join("PG_VERSION").is_file() => Ok(template),
            Err(e) => Err(e).with_context(|| {
                format!(
                    "moving the template into place: {} -> {}",
                    data.display(),
                    template.display()
                )
            }),
        }
    }
}

/// The bin dir of the newest `/usr/lib/postgresql/<version>` that has `initdb`.
fn newest_debian_bindir() -> Result<PathBuf> {
    let missing = || {
        anyhow::anyhow!(
            "PostgreSQL server binaries not found: no {DEBIAN_PG_ROOT}/<version>/bin/initdb. Install \
             the server with `apt-get install postgresql` (or set \
             {BINDIR_ENV} to the directory holding initdb and postgres); the tests never skip themselves."
        )
    };
    let entries = match fs::read_dir(DEBIAN_PG_ROOT) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(missing()),
        Err(e) => return Err(e).with_context(|| format!("reading {DEBIAN_PG_ROOT}")),
    };
    let mut versions = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {DEBIAN_PG_ROOT}"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // "15", or "9.6" for old releases.
        let key: Option<Vec<u32>> = name.split('.').map(|p| p.parse().ok()).collect();
        if let Some(key) = key {
            let bindir = entry.path().join("bin");
            if bindir.join("initdb").is_file() && bindir.join("postgres").is_file() {
                versions.push((key, bindir));
            }
        }
    }
    versions
        .into_iter()
        .max()
        .map(|(_, bindir)| bindir)
        .ok_or_else(missing)
}

/// Whether this process runs as root, judged by the owner of a file it creates.
fn running_as_root() -> Result<bool> {
    Ok(current_uid()? == 0)
}

fn current_uid() -> Result<u32> {
    let probe = tempfile::tempfile().context("creating a probe file to learn our user id")?;
    Ok(probe
        .metadata()
        .context("reading the probe file's owner")?
        .uid())
}

fn current_uid_tag() -> Result<String> {
    Ok(format!("uid{}", current_uid()?))
}

/// A binary of this workspace, built (if needed) into the same target directory and profile as
/// the test that asks: `beside` is one of that test's own binaries (`env!("CARGO_BIN_EXE_...")`).
/// End-to-end tests use it to run another package's binary (`qb-controller`, `qb-agent`).
///
/// `$QB_<BIN>_BIN` (e.g. `QB_CONTROLLER_BIN`) names a ready binary instead.
pub fn workspace_binary(package: &str, bin: &str, beside: &Path) -> Result<PathBuf> {
    let env_name = format!(
        "{}_BIN",
        bin.trim_start_matches("qb-")
            .to_uppercase()
            .replace('-', "_")
    );
    if let Some(path) = std::env::var_os(format!("QB_{env_name}")) {
        return Ok(PathBuf::from(path));
    }
    let dir = beside
        .parent()
        .context("a test binary lives in a directory")?;
    let mut build = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    build.args(["build", "--quiet", "-p", package, "--bin", bin]);
    // Cargo gives a test the variables of its own package (CARGO_MANIFEST_DIR, ...). Passed on,
    // they change the fingerprint of build scripts that watch them (ring's does), and every run
    // would rebuild half the dependency tree.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let inherited = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_BIN_",
            "CARGO_CRATE_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ];
        if inherited.iter().any(|p| name.starts_with(p)) {
            build.env_remove(name.as_ref());
        }
    }
    if dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build
        .status()
        .with_context(|| format!("running cargo build -p {package}"))?;
    anyhow::ensure!(
        status.success(),
        "cargo build -p {package} --bin {bin} failed"
    );
    let path = dir.join(bin);
    anyhow::ensure!(path.exists(), "{bin} not found at {}", path.display());
    Ok(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn server_accepts_sql_and_is_gone_after_drop() {
        let server = PgServer::start().unwrap();
        assert!(
            server.url().starts_with("postgres://postgres@127.0.0.1:"),
            "{}",
            server.url()
        );
        TcpStream::connect(server.addr()).unwrap();

        let psql = PgInstallation::find().unwrap().bindir.join("psql");
        let out = Command::new(psql)
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &server.url()])
            .args(["-c", "SELECT current_user || ' ' || current_setting('fsync') || ' ' || current_setting('listen_addresses')"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "postgres off 127.0.0.1"
        );

        let addr = server.addr();
        let dir = server.dir().to_owned();
        let pid = server.postmaster.id();
        drop(server);
        assert!(
            TcpStream::connect(addr).is_err(),
            "the server still listens after drop"
        );
        assert!(!dir.exists(), "{} was not removed", dir.display());
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "postmaster {pid} still runs"
        );
    }

    #[test]
    fn servers_are_independent() {
        let a = PgServer::start().unwrap();
        let b = PgServer::start().unwrap();
        assert_ne!(a.port(), b.port());
        assert_ne!(a.dir(), b.dir());
        drop(a);
        TcpStream::connect(b.addr()).unwrap();
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }

    #[test]
    fn sqlite_url_names_a_file_in_the_dir() {
        assert_eq!(sqlite_url(Path::new("/tmp/x")), "sqlite:///tmp/x/qb.db");
    }
}
