//! What the benches on a standing lab share: a lab of this build's binaries that imports the
//! bundle `cargo xtask bench` names, `qb` logged in to it, and waiting for it to get somewhere.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use qb_lab::standing::{self, Binaries, Options, Record};
use serde_json::Value;

/// A lab of `hosts` hosts named `<name_prefix>-N`, in `parent`, of this build's binaries; it
/// imports the bundle in `QB_LAB_BUNDLE`.
pub fn options(parent: &Path, hosts: usize, name_prefix: &str) -> Result<Options> {
    let bundle = std::env::var_os("QB_LAB_BUNDLE")
        .map(PathBuf::from)
        .filter(|b| b.join("bundle.json").is_file())
        .context("set QB_LAB_BUNDLE to the directory `cargo xtask bundle` prints")?;
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_qb-agent"));
    let binaries = Binaries {
        controller: qb_test_support::workspace_binary("qb-controller", "qb-controller", &agent)?,
        qb: qb_test_support::workspace_binary("qb-cli", "qb", &agent)?,
        agent,
    };
    Ok(Options {
        dir: parent.join("lab"),
        hosts,
        replicas: 1,
        name_prefix: name_prefix.to_owned(),
        bundle: Some(bundle),
        binaries,
    })
}

/// A lab that is up: where it lives, what it is made of, and the `qb` that drives it.
pub struct StandingLab {
    pub dir: PathBuf,
    pub record: Record,
    qb: PathBuf,
}

impl StandingLab {
    /// Brings the lab of `options` up. `standing::down(&lab.dir)` takes it down again.
    pub fn up(options: &Options) -> Result<Self> {
        let record = standing::up(options)?;
        Ok(Self {
            dir: options.dir.canonicalize()?,
            record,
            qb: options.binaries.qb.clone(),
        })
    }

    /// What `qb args` prints, as the lab's user.
    pub fn qb(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.qb)
            .env("QB_CONFIG", standing::qb_config(&self.dir))
            .args(args)
            .output()?;
        ensure!(
            out.status.success(),
            "qb {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// What `qb args` prints, asked for as JSON.
    pub fn qb_json(&self, args: &[&str]) -> Result<Value> {
        let text = self.qb(&[args, &["-o", "json"]].concat())?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// Waits until `done` says so, asking every 250 ms: short beside a bring-up, which benches time.
pub fn wait(what: &str, timeout: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let started = Instant::now();
    while !done()? {
        if started.elapsed() > timeout {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}
