//! Which build of the agent runs, and how a new one is tried.
//!
//! `qb-agent run` is a small supervisor, the process the host's service manager knows. It runs
//! the agent itself (`qb-agent work`) from the build it should, restarts it when it exits, and
//! decides whether a new build stays:
//!
//! - Builds the controller offered live in `<state>/builds/<sha256>/qb-agent`; the state file
//!   ([`Builds`], `<state>/agent-build.json`) says which one runs (none: the installed binary).
//! - The agent stages a new build (downloaded, its hash and signature checked, run once with
//!   `--version`), writes its [`UpgradeRequest`] and exits with [`EXIT_UPGRADE`].
//! - The supervisor starts the new build on trial. The trial passes once the new agent has held
//!   the channel for [`TRIAL_HOLD`] since the controller welcomed it (a controller that refused
//!   what it said would have closed it): it creates the file [`TRIAL_ENV`] names, and
//!   the build becomes the one that runs. If the agent on trial exits, or the deadline passes
//!   first, the supervisor kills it and starts the build that ran before, which tells the
//!   controller what it went back from and why ([`RolledBack`]).
//!
//! Going back never depends on the new build's code: the supervisor is the installed binary
//! and changes only with the package. A package that installs another binary wins over the
//! builds the agent upgraded itself to.
//!
//! The agent holds the read end of a pipe from the supervisor as its stdin: when the
//! supervisor dies (stopped, killed), the agent sees the pipe close and exits too.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use qb_agent_proto::{RolledBack, Sha256Hex};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The exit code of an agent that staged a new build and wants the supervisor to try it.
pub const EXIT_UPGRADE: i32 = 75;
/// The installed binary, as the supervisor tells the agent it runs (services of the agent's own,
/// the API balancer, run it).
pub const INSTALLED_ENV: &str = "QB_AGENT_INSTALLED";
/// Set for an agent on trial: the file it creates once it has held the channel for
/// [`TRIAL_HOLD`] since the controller welcomed it.
pub const TRIAL_ENV: &str = "QB_AGENT_TRIAL";
/// A test's doing: the build (SHA-256) named here plays one that cannot reach its
/// controller (it runs, and never dials), so a test can show such a build going back.
pub const UNREACHABLE_BUILD_ENV: &str = "QB_TEST_UNREACHABLE_BUILD";

/// How long an agent on trial holds the channel before its build passes.
pub const TRIAL_HOLD: Duration = Duration::from_secs(10);

const STATE_FILE: &str = "agent-build.json";
const REQUEST_FILE: &str = "agent-upgrade.json";
const TRIAL_PASSED_FILE: &str = "agent-trial-passed";
const BUILDS_DIR: &str = "builds";
const BINARY: &str = "qb-agent";

/// The supervisor's state: which build runs and what happened to the last new one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Builds {
    /// The installed binary's hash when this was written: another one means a package
    /// replaced the binary, which then runs.
    #[serde(default)]
    pub installed: Option<Sha256Hex>,
    /// The build that runs, when it is not the installed binary.
    #[serde(default)]
    pub current: Option<Sha256Hex>,
    /// The build on trial, until when.
    #[serde(default)]
    pub trial: Option<Trial>,
    /// The last build whose trial failed, until another one passes.
    #[serde(default)]
    pub rolled_back: Option<RolledBack>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub build: Sha256Hex,
    /// Unix seconds.
    pub deadline: i64,
}

/// What a running agent asks of the supervisor when it exits with [`EXIT_UPGRADE`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpgradeRequest {
    pub build: Sha256Hex,
    pub trial_seconds: u32,
}

/// The builds kept in an agent's state directory.
#[derive(Clone, Debug)]
pub struct BuildStore {
    state_dir: PathBuf,
}

impl BuildStore {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
        }
    }

    /// Where `build`'s binary is (or goes).
    pub fn binary(&self, build: &Sha256Hex) -> PathBuf {
        self.state_dir
            .join(BUILDS_DIR)
            .join(build.as_str())
            .join(BINARY)
    }

    /// The state; the default when there is none or it cannot be read (the installed binary
    /// runs then, which is always safe).
    pub fn load(&self) -> Builds {
        let path = self.state_dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "unreadable; the installed agent runs");
                Builds::default()
            }),
            Err(_) => Builds::default(),
        }
    }

    pub fn save(&self, builds: &Builds) -> Result<()> {
        let path = self.state_dir.join(STATE_FILE);
        let json = serde_json::to_vec_pretty(builds).expect("builds serialize");
        crate::state::write_private(&path, &json)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Asks the supervisor to try `build` once this agent exits with [`EXIT_UPGRADE`].
    pub fn request(&self, request: &UpgradeRequest) -> Result<()> {
        let path = self.state_dir.join(REQUEST_FILE);
        let json = serde_json::to_vec(request).expect("requests serialize");
        crate::state::write_private(&path, &json)
            .with_context(|| format!("writing {}", path.display()))
    }

    fn take_request(&self) -> Option<UpgradeRequest> {
        let path = self.state_dir.join(REQUEST_FILE);
        let bytes = std::fs::read(&path).ok()?;
        let _ = std::fs::remove_file(&path);
        serde_json::from_slice(&bytes)
            .inspect_err(|e| tracing::warn!(error = %e, "an unreadable upgrade request"))
            .ok()
    }

    fn trial_passed_file(&self) -> PathBuf {
        self.state_dir.join(TRIAL_PASSED_FILE)
    }

    /// Removes every kept build but `keep`.
    fn prune(&self, keep: Option<&Sha256Hex>) {
        let Ok(entries) = std::fs::read_dir(self.state_dir.join(BUILDS_DIR)) else {
            return;
        };
        for entry in entries.flatten() {
            if keep.is_none_or(|k| entry.file_name() != k.as_str()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// The SHA-256 of a file, e.g. `/proc/self/exe` (this process's binary, even when the package
/// manager has replaced the file since).
pub fn sha256_of(path: &Path) -> std::io::Result<Sha256Hex> {
    hash_file(path).map(|(sha256, _)| sha256)
}

/// A file's SHA-256 and size, read once.
pub fn hash_file(path: &Path) -> std::io::Result<(Sha256Hex, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hash = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut size = 0;
    loop {
        match file.read(&mut buffer)? {
            0 => break,
            n => {
                hash.update(&buffer[..n]);
                size += n as u64;
            }
        }
    }
    let sha256 = Sha256Hex::try_from(hex::encode(hash.finalize())).expect("a SHA-256 in hex");
    Ok((sha256, size))
}

/// The build of this process's binary, hashed once.
pub fn own_build() -> Option<&'static Sha256Hex> {
    static OWN: std::sync::OnceLock<Option<Sha256Hex>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| {
        sha256_of(Path::new("/proc/self/exe"))
            .inspect_err(|e| tracing::warn!(error = %e, "cannot hash the agent's own binary"))
            .ok()
    })
    .as_ref()
}

/// Exits this process when its supervisor goes: the kernel kills it (the parent-death
/// signal), and should that not be set, it sees its stdin (the supervisor's pipe) close.
pub fn exit_with_supervisor() {
    if let Err(e) =
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
    {
        tracing::warn!(error = %e, "cannot ask to die with the supervisor");
    }
    std::thread::spawn(|| {
        let mut stdin = std::io::stdin();
        let mut byte = [0u8; 1];
        while matches!(stdin.read(&mut byte), Ok(1..)) {}
        tracing::info!("the agent's supervisor is gone; the agent stops");
        std::process::exit(0);
    });
}

/// How an agent's run ended.
#[derive(Debug)]
enum Ended {
    Exited(ExitStatus),
    /// The build on trial failed; the reason.
    TrialFailed(String),
}

/// Runs the agent (`<binary> --config <config> work`) from the build it should run, for as long
/// as this process lives.
pub fn supervise(config: &Path, state_dir: &Path) -> Result<()> {
    let exe = std::env::current_exe().context("finding the agent's own binary")?;
    // Replaced by a package since it started: the new binary is at the same path.
    let installed = match exe.to_str().and_then(|t| t.strip_suffix(" (deleted)")) {
        Some(path) => PathBuf::from(path),
        None => exe,
    };
    let installed_build =
        sha256_of(Path::new("/proc/self/exe")).context("hashing the agent's own binary")?;
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let supervisor = Supervisor {
        store: BuildStore::new(state_dir),
        installed,
        installed_build,
        config: config.to_owned(),
    };
    let mut restart_delay = RESTART_FIRST;
    loop {
        let started = Instant::now();
        let ended = supervisor.run_once()?;
        // A test made the agent die at a crash point, as `kill -9` would: the host's agent
        // dies with it, as it did before it had a supervisor.
        if let Ended::Exited(status) = &ended
            && std::os::unix::process::ExitStatusExt::signal(status) == Some(9)
            && std::env::var_os(qb_host::crash::ENV).is_some()
        {
            tracing::error!("the agent died at a crash point; so does its supervisor");
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
            std::process::abort();
        }
        match ended {
            Ended::Exited(status) if status.code() != Some(EXIT_UPGRADE) => {
                if started.elapsed() > RESTART_RESET {
                    restart_delay = RESTART_FIRST;
                }
                tracing::warn!(%status, restart_in = ?restart_delay, "the agent exited");
                std::thread::sleep(restart_delay);
                restart_delay = (restart_delay * 2).min(RESTART_MAX);
            }
            _ => restart_delay = RESTART_FIRST,
        }
    }
}

/// Starts the agent from the right build, one run at a time.
struct Supervisor {
    store: BuildStore,
    /// The installed binary (the supervisor's own) and its build.
    installed: PathBuf,
    installed_build: Sha256Hex,
    config: PathBuf,
}

impl Supervisor {
    /// Runs the agent once, from the build it should, and records what its end means: a
    /// trial to start, passed or failed.
    fn run_once(&self) -> Result<Ended> {
        let store = &self.store;
        let mut builds = store.load();
        if builds.installed.as_ref() != Some(&self.installed_build) {
            if let Some(current) = &builds.current {
                tracing::info!(build = %current, "another agent binary was installed: it runs, not the build the agent upgraded itself to");
            }
            builds = Builds {
                installed: Some(self.installed_build.clone()),
                ..Builds::default()
            };
            store.save(&builds)?;
            store.prune(None);
        }
        let binary = match (&builds.trial, &builds.current) {
            (Some(trial), _) => store.binary(&trial.build),
            (None, Some(current)) if store.binary(current).exists() => store.binary(current),
            (None, _) => self.installed.clone(),
        };
        let ended = run_agent(store, &binary, &self.installed, &self.config, &mut builds)?;
        match &ended {
            Ended::TrialFailed(reason) => {
                let trial = builds.trial.take().expect("a trial failed");
                tracing::error!(build = %trial.build, reason, "the new agent build failed its trial; going back to the one before");
                builds.rolled_back = Some(RolledBack {
                    build: trial.build,
                    reason: reason.clone(),
                });
                store.save(&builds)?;
                store.prune(builds.current.as_ref());
            }
            Ended::Exited(status) if status.code() == Some(EXIT_UPGRADE) => {
                match store.take_request() {
                    Some(request) if store.binary(&request.build).exists() => {
                        tracing::info!(build = %request.build, trial_seconds = request.trial_seconds, "trying a new agent build");
                        let _ = std::fs::remove_file(store.trial_passed_file());
                        builds.trial = Some(Trial {
                            build: request.build,
                            deadline: now_unix() + i64::from(request.trial_seconds),
                        });
                        // What the agent on trial reports is about this trial alone.
                        builds.rolled_back = None;
                        store.save(&builds)?;
                    }
                    _ => tracing::warn!("the agent asked for a build it did not stage"),
                }
            }
            Ended::Exited(_) => {}
        }
        Ok(ended)
    }
}

/// Restart delays of an agent that exits by itself: as systemd's `Restart=always`, growing.
const RESTART_FIRST: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// An agent that ran this long before it exited restarts at once.
const RESTART_RESET: Duration = Duration::from_secs(60);
/// How often a trial is looked at.
const TRIAL_POLL: Duration = Duration::from_millis(200);

/// Runs the agent from `binary` until it exits, or until its trial (if `builds` has one)
/// fails. A trial that passes is saved, and the agent runs on.
fn run_agent(
    store: &BuildStore,
    binary: &Path,
    installed: &Path,
    config: &Path,
    builds: &mut Builds,
) -> Result<Ended> {
    let mut command = Command::new(binary);
    command
        .arg("--config")
        .arg(config)
        .arg("work")
        .env(INSTALLED_ENV, installed)
        .stdin(Stdio::piped());
    if builds.trial.is_some() {
        command.env(TRIAL_ENV, store.trial_passed_file());
    } else {
        command.env_remove(TRIAL_ENV);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) if builds.trial.is_some() => {
            return Ok(Ended::TrialFailed(format!(
                "it could not start: {e} ({})",
                binary.display()
            )));
        }
        Err(e) => return Err(e).with_context(|| format!("starting {}", binary.display())),
    };
    // The pipe's write end stays here, open for as long as this process lives.
    let _lifeline = child.stdin.take();
    loop {
        let Some(trial) = builds.trial.clone() else {
            return Ok(Ended::Exited(child.wait()?));
        };
        // Passed first: an agent may pass and exit (to be restarted) before the next look.
        if store.trial_passed_file().exists() {
            tracing::info!(build = %trial.build, "the new agent build passed its trial");
            builds.current = Some(trial.build);
            builds.trial = None;
            builds.rolled_back = None;
            store.save(builds)?;
            store.prune(builds.current.as_ref());
            let _ = std::fs::remove_file(store.trial_passed_file());
            continue;
        }
        if let Some(status) = child.try_wait()? {
            return Ok(Ended::TrialFailed(format!("it exited ({status})")));
        }
        if now_unix() >= trial.deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Ended::TrialFailed(
                "it did not reach the controller before its trial's deadline".to_owned(),
            ));
        }
        std::thread::sleep(TRIAL_POLL);
    }
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A stand-in for a build of the agent: a shell script that notes it ran, then `body`.
    fn script(dir: &Path, path: &Path, name: &str, body: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let ran = dir.join("ran");
        std::fs::write(
            path,
            format!("#!/bin/sh\necho {name} >> {}\n{body}\n", ran.display()),
        )
        .unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn build(n: u8) -> Sha256Hex {
        Sha256Hex::try_from(format!("{n:064x}")).unwrap()
    }

    /// A supervisor whose installed agent (build 1) runs `installed`.
    fn supervisor(dir: &Path, installed: &str) -> Supervisor {
        let path = dir.join("installed/qb-agent");
        script(dir, &path, "installed", installed);
        let state = dir.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let store = BuildStore::new(&state);
        // As after the supervisor's first start.
        let builds = Builds {
            installed: Some(build(1)),
            ..Builds::default()
        };
        store.save(&builds).unwrap();
        Supervisor {
            store,
            installed: path,
            installed_build: build(1),
            config: dir.join("config.toml"),
        }
    }

    fn ran(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("ran"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The installed agent stages build 2 (as `body` behaves) and asks for it.
    fn staged(dir: &Path, supervisor: &Supervisor, trial_seconds: u32, body: &str) {
        script(dir, &supervisor.store.binary(&build(2)), "new", body);
        supervisor
            .store
            .request(&UpgradeRequest {
                build: build(2),
                trial_seconds,
            })
            .unwrap();
    }

    fn code(ended: Ended) -> Option<i32> {
        match ended {
            Ended::Exited(status) => status.code(),
            Ended::TrialFailed(reason) => panic!("the trial failed: {reason}"),
        }
    }

    fn failed(ended: Ended) -> String {
        match ended {
            Ended::TrialFailed(reason) => reason,
            Ended::Exited(status) => panic!("no trial failed: the agent exited ({status})"),
        }
    }

    #[test]
    fn a_staged_build_is_tried_and_stays_once_the_agent_on_trial_reached_the_controller() {
        let dir = tempfile::tempdir().unwrap();
        let supervisor = supervisor(dir.path(), "exit 75");
        staged(
            dir.path(),
            &supervisor,
            60,
            r#"[ -n "$QB_AGENT_TRIAL" ] && touch "$QB_AGENT_TRIAL"; sleep 0.5; exit 3"#,
        );
        assert_eq!(code(supervisor.run_once().unwrap()), Some(EXIT_UPGRADE));
        let trial = supervisor.store.load().trial.expect("a trial");
        assert_eq!(trial.build, build(2));
        assert_eq!(code(supervisor.run_once().unwrap()), Some(3));
        let builds = supervisor.store.load();
        assert_eq!(builds.current, Some(build(2)), "{builds:?}");
        assert_eq!((builds.trial, builds.rolled_back), (None, None));
        // It runs from now on, no longer on trial.
        assert_eq!(code(supervisor.run_once().unwrap()), Some(3));
        assert_eq!(ran(dir.path()), ["installed", "new", "new"]);
    }

    #[test]
    fn a_build_that_does_not_reach_the_controller_in_time_is_killed_and_the_one_before_runs() {
        let dir = tempfile::tempdir().unwrap();
        let supervisor = supervisor(dir.path(), "exit 75");
        staged(dir.path(), &supervisor, 1, "exec sleep 30");
        supervisor.run_once().unwrap();
        let started = Instant::now();
        let reason = failed(supervisor.run_once().unwrap());
        assert!(reason.contains("deadline"), "{reason}");
        assert!(started.elapsed() < Duration::from_secs(10), "killed");
        let builds = supervisor.store.load();
        assert_eq!((builds.current, builds.trial), (None, None));
        let back = builds.rolled_back.expect("the build went back");
        assert_eq!(back.build, build(2));
        assert!(!supervisor.store.binary(&build(2)).exists(), "removed");
        supervisor.run_once().unwrap();
        assert_eq!(ran(dir.path()), ["installed", "new", "installed"]);
    }

    #[test]
    fn a_build_that_exits_on_trial_goes_back_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let supervisor = supervisor(dir.path(), "exit 75");
        staged(dir.path(), &supervisor, 60, "exit 1");
        supervisor.run_once().unwrap();
        let reason = failed(supervisor.run_once().unwrap());
        assert!(reason.contains("exited"), "{reason}");
        let builds = supervisor.store.load();
        assert_eq!(builds.current, None);
        assert_eq!(builds.rolled_back.map(|r| r.build), Some(build(2)));
        // A build that cannot even start fails its trial too.
        staged(dir.path(), &supervisor, 60, "exit 0");
        supervisor.run_once().unwrap();
        std::fs::remove_file(supervisor.store.binary(&build(2))).unwrap();
        let reason = failed(supervisor.run_once().unwrap());
        assert!(reason.contains("could not start"), "{reason}");
    }

    #[test]
    fn a_package_that_installs_another_binary_wins_over_the_build_the_agent_upgraded_to() {
        let dir = tempfile::tempdir().unwrap();
        let mut supervisor = supervisor(dir.path(), "exit 75");
        staged(
            dir.path(),
            &supervisor,
            60,
            r#"touch "$QB_AGENT_TRIAL"; exit 0"#,
        );
        supervisor.run_once().unwrap();
        supervisor.run_once().unwrap();
        assert_eq!(supervisor.store.load().current, Some(build(2)));
        supervisor.installed_build = build(9);
        script(dir.path(), &supervisor.installed, "package", "exit 0");
        supervisor.run_once().unwrap();
        let builds = supervisor.store.load();
        assert_eq!((builds.installed, builds.current), (Some(build(9)), None));
        assert!(!supervisor.store.binary(&build(2)).exists(), "removed");
        assert_eq!(ran(dir.path()).last().map(String::as_str), Some("package"));
    }

    #[test]
    fn an_unreadable_state_runs_the_installed_binary() {
        let dir = tempfile::tempdir().unwrap();
        let supervisor = supervisor(dir.path(), "exit 4");
        std::fs::write(dir.path().join("state").join(STATE_FILE), "{").unwrap();
        assert_eq!(code(supervisor.run_once().unwrap()), Some(4));
        assert_eq!(ran(dir.path()), ["installed"]);
    }
}
