//! A PostgreSQL server of the standing lab, for controller replicas: Debian's server binaries,
//! its data in the lab's directory, on loopback, trusting local connections, started in its own
//! process group so that it outlives the command that started it.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use qb_test_support::{PG_SYSTEM_USER, PgInstallation};

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Makes a database cluster in `dir` and starts its server on 127.0.0.1:`port`, logging to
/// `log`; returns the postmaster's pid once it accepts connections. `dir`'s parents must let
/// the PostgreSQL user through.
pub fn start(dir: &Path, port: u16, log: &Path) -> Result<u32> {
    let pg = PgInstallation::find()?;
    let data = dir.join("data");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    if pg.as_system_user {
        let chown = Command::new("chown")
            .args(["-R", &format!("{PG_SYSTEM_USER}:{PG_SYSTEM_USER}")])
            .arg(dir)
            .status()
            .context("running chown")?;
        ensure!(chown.success(), "chown of {} failed", dir.display());
    }
    let out = pg
        .command("initdb")
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
    let child = pg
        .command("postgres")
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
        let ready = Command::new(pg.bindir.join("pg_isready"))
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
