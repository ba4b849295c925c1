//! A PostgreSQL server of the standing lab, for controller replicas: Debian's server binaries,
//! its data in the lab's directory, on loopback, trusting local connections, started in its own
//! process group so that it outlives the command that started it.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

/// Where Debian installs each PostgreSQL version's programs: `<root>/<version>/bin`.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
/// PostgreSQL refuses to run as root; as root, the lab runs it as this user.
const SYSTEM_USER: &str = "postgres";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The newest installed version's programs.
pub fn bindir() -> Result<PathBuf> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(DEBIAN_ROOT)
        .with_context(|| {
            format!("no PostgreSQL in {DEBIAN_ROOT}: `apt-get install postgresql` for replicas")
        })?
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .with_context(|| format!("no PostgreSQL server in {DEBIAN_ROOT}/*/bin"))
}

/// `program` of `bin`, run as the PostgreSQL system user when we are root.
fn command(bin: &Path, program: &str) -> Command {
    if is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={SYSTEM_USER}"),
            &format!("--regid={SYSTEM_USER}"),
            "--init-groups",
            "--",
        ])
        .arg(bin.join(program));
        cmd
    } else {
        Command::new(bin.join(program))
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Makes a database cluster in `dir` and starts its server on 127.0.0.1:`port`, logging to
/// `log`; returns the postmaster's pid once it accepts connections. `dir`'s parents must let
/// the PostgreSQL user through.
pub fn start(dir: &Path, port: u16, log: &Path) -> Result<u32> {
    let bin = bindir()?;
    let data = dir.join("data");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    if is_root() {
        let chown = Command::new("chown")
            .args(["-R", &format!("{SYSTEM_USER}:{SYSTEM_USER}")])
            .arg(dir)
            .status()
            .context("running chown")?;
        ensure!(chown.success(), "chown of {} failed", dir.display());
    }
    let out = command(&bin, "initdb")
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        .stdin(Stdio::null())
        .output()
        .context("running initdb")?;
    ensure!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = command(&bin, "postgres")
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .arg("-k")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0)
        .spawn()
        .context("starting postgres")?;
    let pid = child.id();
    let started = Instant::now();
    loop {
        let ready = Command::new(bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return Ok(pid);
        }
        if started.elapsed() > START_TIMEOUT {
            bail!(
                "PostgreSQL did not accept connections within {START_TIMEOUT:?}; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The URL of the lab server's database on `port`.
pub fn url(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// Stops the server whose postmaster is `pid` at once (an immediate shutdown), and waits until
/// it is gone.
pub fn stop(pid: u32) {
    let _ = Command::new("kill")
        .args(["-QUIT", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
    let started = Instant::now();
    while crate::standing::alive(pid) && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    crate::kill(&pid.to_string());
}
