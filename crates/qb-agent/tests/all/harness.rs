//! The processes under test (a `qb-controller`, `qb-agent`s), their logs, and bounded polls.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use crate::http::Api;

/// How long the controller may take to start and announce itself.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a short helper command (`ip`, `qb-controller tenant create`) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_STEP: Duration = Duration::from_millis(50);
/// A bound for things that take a moment.
pub const SHORT: Duration = Duration::from_secs(5);

/// Calls `check` until it returns `Ok`, for at most `timeout`; then fails naming `what` and the
/// last thing `check` saw.
pub fn poll<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if started.elapsed() >= timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(POLL_STEP),
        }
    }
}

/// Runs a short command to completion, killing it after [`COMMAND_TIMEOUT`].
pub fn run(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    // Read both pipes on threads so a chatty command cannot block on a full pipe.
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        match child.try_wait().expect("wait for a command") {
            Some(status) => break status,
            None if started.elapsed() > COMMAND_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {COMMAND_TIMEOUT:?}");
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    Output {
        status,
        stdout: out.join().expect("pipe reader"),
        stderr: err.join().expect("pipe reader"),
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// What a process wrote, line by line with the time each arrived, collected by a thread.
#[derive(Clone, Default)]
pub struct Log {
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Log {
    /// Collects `reader`'s lines; each is also sent to `tee` if given.
    fn collect(reader: impl Read + Send + 'static, tee: Option<mpsc::Sender<String>>) -> Self {
        let log = Self::default();
        let lines = log.lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                let line = strip_ansi(&line);
                if let Some(tee) = &tee {
                    let _ = tee.send(line.clone());
                }
                lines
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((Instant::now(), line));
            }
        });
        log
    }

    fn snapshot(&self) -> Vec<(Instant, String)> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.snapshot()
            .iter()
            .filter(|(_, l)| l.contains(needle))
            .count()
    }

    /// Lines containing `needle` that arrived at or after `since`.
    pub fn count_since(&self, since: Instant, needle: &str) -> usize {
        self.snapshot()
            .iter()
            .filter(|(at, l)| *at >= since && l.contains(needle))
            .count()
    }

    /// Waits for a line containing every one of `needles`; returns it.
    pub fn wait_for(&self, needles: &[&str], timeout: Duration) -> String {
        poll(&format!("a log line with {needles:?}"), timeout, || {
            self.snapshot()
                .into_iter()
                .map(|(_, l)| l)
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .ok_or_else(|| format!("last lines:\n{}", self.tail(8)))
        })
    }

    pub fn tail(&self, n: usize) -> String {
        let lines = self.snapshot();
        let start = lines.len().saturating_sub(n);
        lines[start..]
            .iter()
            .map(|(_, l)| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Removes terminal colour sequences, so log lines can be matched as plain text.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A command that dies with the test: `setpriv --pdeathsig KILL` makes the kernel kill it if
/// the test process is killed before it can clean up. With `netns`, it runs inside that network
/// namespace (`ip netns exec` and `setpriv` both exec, so the child's pid is the program's).
pub fn command(program: &Path, netns: Option<&str>) -> Command {
    let mut cmd = match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, "setpriv"]);
            cmd
        }
        None => Command::new("setpriv"),
    };
    cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
    cmd.env("NO_COLOR", "1");
    cmd
}

/// A running process and its stderr; killed (by its pid, through `Child`) when dropped. When the
/// test is failing, the end of its log is printed.
pub struct Proc {
    name: String,
    child: Child,
    pub log: Log,
}

impl Proc {
    /// Starts `cmd` with stderr collected; returns stdout's lines on a channel.
    pub fn spawn(name: &str, mut cmd: Command) -> (Self, mpsc::Receiver<String>) {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let _ = Log::collect(stdout, Some(tx));
        let log = Log::collect(child.stderr.take().expect("piped stderr"), None);
        let proc = Self {
            name: name.to_owned(),
            child,
            log,
        };
        (proc, rx)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until the program has died at crash point `point` (see `qb_host::crash`), and
    /// only there.
    pub fn wait_crashed(&mut self, point: &str, timeout: Duration) {
        let started = Instant::now();
        let said = format!("crash point {point}:");
        poll(&format!("{} dead at {point}", self.name), timeout, || {
            if self.is_running() {
                return Err(self.log.tail(5));
            }
            if self.log.count(&said) == 1 {
                Ok(())
            } else {
                Err(format!("it exited elsewhere: {}", self.log.tail(30)))
            }
        });
        eprintln!(
            "{} died at {point} after {:?}",
            self.name,
            started.elapsed()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- last lines of {} ---\n{}", self.name, self.log.tail(40));
        }
    }
}

/// The `qb-controller` binary, built once per test process if needed.
pub fn controller_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let agent = PathBuf::from(env!("CARGO_BIN_EXE_qb-agent"));
            qb_test_support::workspace_binary("qb-controller", "qb-controller", &agent)
                .expect("these tests need qb-controller")
        })
        .clone()
}

pub fn agent_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_qb-agent"))
}

/// A running controller: API on loopback (plain HTTP), agent endpoint on `agent_ip`, heartbeats
/// every second (offline after three missed).
pub struct Controller {
    pub proc: Proc,
    dir: tempfile::TempDir,
    api: SocketAddr,
    /// The agent endpoint, as agents reach it.
    pub agent_url: String,
    pub agent_addr: SocketAddr,
    /// The agent CA's pin, `sha256:<hex>`.
    pub pin: String,
    pub admin_token: String,
    /// The crash points this controller's data directory died at, in order (see
    /// [`Controller::wait_crashed`]).
    pub crashed_at: Vec<String>,
    /// The agent it ships, when given (restarts ship it too).
    agent_binary: Option<PathBuf>,
}

impl Controller {
    pub fn start(agent_ip: &str) -> Self {
        Self::start_in(
            tempfile::tempdir().expect("temp dir"),
            &format!("{agent_ip}:0"),
            None,
            None,
        )
    }

    /// As [`Self::start`], with agent packages that ship `agent_binary`.
    pub fn start_shipping(agent_ip: &str, agent_binary: &Path) -> Self {
        Self::start_in(
            tempfile::tempdir().expect("temp dir"),
            &format!("{agent_ip}:0"),
            None,
            Some(agent_binary),
        )
    }

    /// As [`Self::start`], with more environment for the controller (its flags' variables).
    pub fn start_with_env(agent_ip: &str, env: &[(&str, String)]) -> Self {
        Self::start_shipping_with_env(agent_ip, None, env)
    }

    /// As [`Self::start_with_env`], with agent packages (and agent upgrades) that ship
    /// `agent_binary` when given.
    pub fn start_shipping_with_env(
        agent_ip: &str,
        agent_binary: Option<&Path>,
        env: &[(&str, String)],
    ) -> Self {
        Self::start_in_with(
            tempfile::tempdir().expect("temp dir"),
            &format!("{agent_ip}:0"),
            None,
            agent_binary,
            env,
        )
    }

    /// A replica on the shared PostgreSQL database `database`; the first one to start makes
    /// the first tenant and the secrets key file, the others are given `first`'s admin token
    /// and key file, as an operator would copy them.
    pub fn start_replica(agent_ip: &str, database: &str, first: Option<&Controller>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some(first) = first {
            let data = dir.path().join("data");
            std::fs::create_dir_all(&data).expect("data dir");
            std::fs::write(data.join("admin-token"), &first.admin_token).expect("admin token");
            std::fs::copy(
                first.data_dir().join("secrets.key"),
                data.join("secrets.key"),
            )
            .expect("the first replica's secrets key file");
        }
        Self::start_in(dir, &format!("{agent_ip}:0"), Some(database), None)
    }

    /// Kills the replica with SIGKILL (if it still runs) and starts another on the same data
    /// directory, agent address and database: agents that knew the first find it there.
    pub fn restart_replica(mut self, database: &str) -> Self {
        self.proc.stop();
        let agent_addr = self.agent_addr.to_string();
        let Self { dir, .. } = self;
        Self::start_in(dir, &agent_addr, Some(database), None)
    }

    /// Kills the controller with SIGKILL and starts it again on the same data directory and
    /// agent address (agents find it where they left it).
    pub fn kill_and_restart(mut self) -> Self {
        self.proc.stop();
        let agent_addr = self.agent_addr.to_string();
        let Self {
            dir, agent_binary, ..
        } = self;
        Self::start_in(dir, &agent_addr, None, agent_binary.as_deref())
    }

    /// The controller's data directory (database, artifacts).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn start_in(
        dir: tempfile::TempDir,
        agent_listen: &str,
        database: Option<&str>,
        agent_binary: Option<&Path>,
    ) -> Self {
        Self::start_in_with(dir, agent_listen, database, agent_binary, &[])
    }

    /// Kills the controller (if it still runs) and starts it again on the same data directory
    /// and agent address, with `env` added to its environment.
    pub fn restart_with_env(mut self, env: &[(&str, String)]) -> Self {
        self.proc.stop();
        let agent_addr = self.agent_addr.to_string();
        let Self {
            dir, crashed_at, ..
        } = self;
        let mut restarted = Self::start_in_with(dir, &agent_addr, None, None, env);
        restarted.crashed_at = crashed_at;
        restarted
    }

    /// Kills the controller (if it still runs), starts it again on the same data directory and
    /// agent address with crash point `point` armed, and waits until it dies there: what it
    /// was doing is left half done. (Its API address is then stale: restart it again.)
    pub fn restart_crashing_at(mut self, point: &str, timeout: Duration) -> Self {
        self.proc.stop();
        let agent_addr = self.agent_addr.to_string();
        let cmd = Self::command(
            self.dir.path(),
            &agent_addr,
            None,
            None,
            &[("QB_CRASH_AT", point.to_owned())],
        );
        let (proc, _stdout) = Proc::spawn("qb-controller", cmd);
        self.proc = proc;
        self.wait_crashed(point, timeout);
        self
    }

    /// Waits until the controller, started with crash point `point` armed, died there.
    pub fn wait_crashed(&mut self, point: &str, timeout: Duration) {
        self.proc.wait_crashed(point, timeout);
        self.crashed_at.push(point.to_owned());
    }

    /// The controller's command line on the data directory `dir`.
    fn command(
        dir: &Path,
        agent_listen: &str,
        database: Option<&str>,
        agent_binary: Option<&Path>,
        env: &[(&str, String)],
    ) -> Command {
        let mut cmd = command(&controller_binary(), None);
        let mut data = data_args(dir);
        if let Some(url) = database {
            data[3] = url.to_owned();
        }
        cmd.args(data)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--insecure-http",
                "--agent-listen",
                agent_listen,
                "--heartbeat-seconds",
                "1",
                // Host metrics reach the store (and the UI's charts) within seconds.
                "--metrics-flush-seconds",
                "2",
            ])
            .env("QB_LOG", "info,sqlx=warn");
        if let Some(binary) = agent_binary {
            cmd.env("QB_AGENT_BINARY", binary);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn start_in_with(
        dir: tempfile::TempDir,
        agent_listen: &str,
        database: Option<&str>,
        agent_binary: Option<&Path>,
        env: &[(&str, String)],
    ) -> Self {
        let agent_ip = agent_listen
            .rsplit_once(':')
            .map_or(agent_listen, |(ip, _)| ip)
            .to_owned();
        let cmd = Self::command(dir.path(), agent_listen, database, agent_binary, env);
        let (proc, stdout) = Proc::spawn("qb-controller", cmd);
        let (mut agent_url, mut agent_addr, mut pin, mut api) = (None, None, None, None);
        while api.is_none() {
            let line = stdout.recv_timeout(START_TIMEOUT).unwrap_or_else(|_| {
                panic!(
                    "qb-controller did not announce its addresses; its log:\n{}",
                    proc.log.tail(20)
                )
            });
            if let Some(rest) = line.strip_prefix("agent endpoint on https://") {
                // `agent endpoint on https://ADDR (agents use URL)`
                let (addr, url) = rest.split_once(" (agents use ").expect("announcement");
                agent_addr = Some(addr.parse::<SocketAddr>().expect("agent endpoint address"));
                agent_url = Some(url.trim_end_matches(')').to_owned());
            } else if let Some(p) = line.strip_prefix("agent CA pin ") {
                pin = Some(p.trim().to_owned());
            } else if let Some(u) = line.strip_prefix("listening on http://") {
                api = Some(u.trim().parse::<SocketAddr>().expect("API address"));
            }
        }
        let admin_token = std::fs::read_to_string(dir.path().join("data").join("admin-token"))
            .expect("the first start writes the admin token")
            .trim()
            .to_owned();
        let agent_url = agent_url.expect("the controller announces the agent URL");
        assert!(
            agent_url.starts_with(&format!("https://{agent_ip}:")),
            "{agent_url}"
        );
        Self {
            proc,
            dir,
            api: api.expect("API address"),
            agent_url,
            agent_addr: agent_addr.expect("agent endpoint address"),
            pin: pin.expect("the controller announces the CA pin"),
            admin_token,
            crashed_at: Vec::new(),
            agent_binary: agent_binary.map(Path::to_owned),
        }
    }

    /// Where the API (and the web UI) is served: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// The API as the first tenant's admin.
    pub fn api(&self) -> Api {
        Api::new(self.api, &self.admin_token)
    }

    /// The API with another token.
    pub fn api_as(&self, token: &str) -> Api {
        Api::new(self.api, token)
    }

    pub fn database(&self) -> PathBuf {
        self.dir.path().join("data").join("qb.db")
    }

    /// The keys the controller seals its database's secrets with.
    pub fn keyring(&self) -> qb_store::Keyring {
        qb_store::Keyring::load(&self.dir.path().join("data").join("secrets.key"))
            .expect("the controller's secrets key file")
    }

    /// `qb-controller tenant create NAME` on the same database; the new admin's token.
    pub fn create_tenant(&self, name: &str) -> String {
        let out = run(Command::new(controller_binary())
            .args(data_args(self.dir.path()))
            .args(["tenant", "create", name])
            .env("NO_COLOR", "1"));
        assert!(
            out.status.success(),
            "tenant create {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout)
            .expect("UTF-8")
            .trim()
            .to_owned();
        assert!(token.starts_with("qb_"), "tenant create printed {token:?}");
        token
    }
}

fn data_args(dir: &Path) -> Vec<String> {
    let data = dir.join("data");
    vec![
        "--data-dir".to_owned(),
        data.display().to_string(),
        "--database".to_owned(),
        format!("sqlite://{}", data.join("qb.db").display()),
    ]
}

/// A fresh machine id: 32 lowercase hex digits.
pub fn machine_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// A fresh bootstrap-token-shaped secret (`qbb_` and 64 hex digits).
pub fn random_bootstrap_secret() -> String {
    format!("qbb_{}", hex::encode(rand::random::<[u8; 32]>()))
}

/// What an agent's configuration file says.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub controller_url: String,
    /// Other replicas' agent endpoints.
    pub other_controller_urls: Vec<String>,
    pub ca_pins: Vec<String>,
    pub bootstrap_token: Option<String>,
    pub machine_id: String,
    pub node_name: String,
    /// The agent's environment beside its own (e.g. [`AgentConfig::clock_off`]'s).
    pub env: Vec<(String, String)>,
}

impl AgentConfig {
    /// Runs the agent, and what it starts, with its clock `offset` from the real one (`-1h`,
    /// `+1h`), through Debian's libfaketime; timers (the monotonic clock) stay real.
    pub fn clock_off(mut self, offset: &str) -> Self {
        const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
        assert!(
            Path::new(LIBFAKETIME).exists(),
            "{LIBFAKETIME} is missing: install Debian's faketime (cargo xtask test does)"
        );
        self.env = vec![
            ("LD_PRELOAD".to_owned(), LIBFAKETIME.to_owned()),
            ("FAKETIME".to_owned(), offset.to_owned()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
        ];
        self
    }

    /// A new host (fresh machine id) for `controller`, registering with `token`.
    pub fn new(controller: &Controller, token: &str, node_name: &str) -> Self {
        Self {
            controller_url: controller.agent_url.clone(),
            other_controller_urls: Vec::new(),
            ca_pins: vec![controller.pin.clone()],
            bootstrap_token: Some(token.to_owned()),
            machine_id: machine_id(),
            node_name: node_name.to_owned(),
            env: Vec::new(),
        }
    }
}

pub use qb_lab::host::HOST_DIRS;

/// A running `qb-agent` with its own configuration file and state directory.
pub struct Agent {
    pub proc: Proc,
    pub state_dir: PathBuf,
    /// Where this host's [`HOST_DIRS`] really are, when it has private ones.
    pub host_root: Option<PathBuf>,
    /// `host_root` is the host's whole root filesystem, its programs chrooted into it.
    pub chroot: bool,
    netns: Option<String>,
    _service_logs: ServiceLogs,
    _dir: tempfile::TempDir,
}

/// The services' logs of a host with private directories: when the test is failing, the end of
/// each is printed (a component that keeps exiting says why only there).
struct ServiceLogs(Option<PathBuf>);

impl Drop for ServiceLogs {
    fn drop(&mut self) {
        let Some(dir) = &self.0 else { return };
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut logs: Vec<PathBuf> = entries
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n      ");
            eprintln!("--- last lines of {} ---\n      {tail}", log.display());
        }
    }
}

impl Agent {
    /// Starts the agent, inside network namespace `netns` if given.
    pub fn start(config: &AgentConfig, netns: Option<&str>) -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"), config, netns)
    }

    /// Starts the agent of a lab host in namespace `netns`, with private [`HOST_DIRS`] (the
    /// cluster engine installs components there).
    pub fn start_host(config: &AgentConfig, netns: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("host");
        Self::start_with(dir, config, Some(netns), Some(root))
    }

    /// As [`Self::start_host`], with the agent's state and the host's directories under
    /// `parent` (a file system the test controls, e.g. one it fills).
    pub fn start_host_in(config: &AgentConfig, netns: &str, parent: &Path) -> Self {
        let dir = tempfile::tempdir_in(parent).expect("temp dir");
        let root = dir.path().join("host");
        Self::start_with(dir, config, Some(netns), Some(root))
    }

    /// As [`Self::start_host`], with `resolver` as the host's one nameserver (its own
    /// `/etc/resolv.conf`).
    pub fn start_host_resolving_with(config: &AgentConfig, netns: &str, resolver: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("host");
        std::fs::create_dir_all(root.join("etc")).expect("the host's /etc");
        std::fs::write(
            root.join("etc/resolv.conf"),
            format!("nameserver {resolver}\n"),
        )
        .expect("the host's resolv.conf");
        Self::start_with(dir, config, Some(netns), Some(root))
    }

    /// Stops `agent` and starts it again with `config`, keeping its state directory.
    pub fn restart(mut agent: Self, config: &AgentConfig) -> Self {
        agent.proc.stop();
        let Self { _dir: dir, .. } = agent;
        Self::start_in(dir, config, None)
    }

    /// Kills the agent with SIGKILL (what it started keeps running) and starts it again in the
    /// same namespace with the same state and host directories.
    pub fn kill_and_restart(mut self, config: &AgentConfig) -> Self {
        self.proc.stop();
        let Self {
            _dir: dir,
            netns,
            host_root,
            ..
        } = self;
        Self::start_with(dir, config, netns.as_deref(), host_root)
    }

    /// Where `path` (under one of [`HOST_DIRS`]) of this host really is.
    pub fn host_path(&self, path: &str) -> PathBuf {
        let root = self
            .host_root
            .as_ref()
            .expect("a host with private directories");
        root.join(path.trim_start_matches('/'))
    }

    fn start_in(dir: tempfile::TempDir, config: &AgentConfig, netns: Option<&str>) -> Self {
        Self::start_with(dir, config, netns, None)
    }

    /// As [`Self::start_host`], running `binary` (another build of the agent).
    pub fn start_host_running(config: &AgentConfig, netns: &str, binary: &Path) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("host");
        Self::start_binary(binary, dir, config, Some(netns), Some(root))
    }

    fn start_with(
        dir: tempfile::TempDir,
        config: &AgentConfig,
        netns: Option<&str>,
        host_root: Option<PathBuf>,
    ) -> Self {
        Self::start_binary(&agent_binary(), dir, config, netns, host_root)
    }

    fn start_binary(
        binary: &Path,
        dir: tempfile::TempDir,
        config: &AgentConfig,
        netns: Option<&str>,
        host_root: Option<PathBuf>,
    ) -> Self {
        let state_dir = dir.path().join("state");
        let mut file = serde_json::json!({
            "controller_url": config.controller_url,
            "other_controller_urls": config.other_controller_urls,
            "ca_pins": config.ca_pins,
            "state_dir": state_dir,
            "machine_id": config.machine_id,
            "node_name": config.node_name,
        });
        if let Some(token) = &config.bootstrap_token {
            file["bootstrap_token"] = token.clone().into();
        }
        let path = dir.path().join("config.toml");
        std::fs::write(&path, toml::to_string(&file).expect("TOML")).expect("write config");
        let mut cmd = match &host_root {
            None => command(binary, netns),
            Some(root) => qb_lab::host::Host {
                netns,
                root,
                dirs: HOST_DIRS,
                chroot: false,
                hostname: None,
                machine_id: None,
                die_with_parent: true,
            }
            .command(binary)
            .expect("the host's directories"),
        };
        cmd.arg("--config")
            .arg(&path)
            .env("QB_LOG", "info")
            .envs(config.env.iter().cloned());
        let (proc, _stdout) = Proc::spawn(&format!("qb-agent {}", config.node_name), cmd);
        Self {
            proc,
            state_dir,
            _service_logs: ServiceLogs(host_root.as_ref().map(|r| r.join("var/log/qb"))),
            host_root,
            chroot: false,
            netns: netns.map(str::to_owned),
            _dir: dir,
        }
    }

    /// Starts the agent a package installed in `<dir>/root`, a host's whole root filesystem
    /// (another distribution's), as its service would: chrooted into it, in namespace `netns`,
    /// with the host name `hostname` (the agent's node name by default).
    pub fn start_installed(dir: tempfile::TempDir, netns: &str, hostname: &str) -> Self {
        let root = dir.path().join("root");
        let mut cmd = qb_lab::host::Host {
            netns: Some(netns),
            root: &root,
            dirs: &[],
            chroot: true,
            hostname: Some(hostname),
            machine_id: None,
            die_with_parent: true,
        }
        .command(Path::new(qb_package::BINARY_PATH))
        .expect("the host's root");
        cmd.args(["--config", qb_package::CONFIG_PATH])
            .env("QB_LOG", "info");
        let (proc, _stdout) = Proc::spawn(&format!("qb-agent {hostname}"), cmd);
        Self {
            proc,
            state_dir: root.join(qb_package::STATE_DIR.trim_start_matches('/')),
            _service_logs: ServiceLogs(Some(root.join("var/log/qb"))),
            host_root: Some(root),
            chroot: true,
            netns: Some(netns.to_owned()),
            _dir: dir,
        }
    }

    /// Stops the installed agent (as its service manager does: the components it started go on)
    /// and starts it again, e.g. after its package was upgraded.
    pub fn restart_installed(mut self, hostname: &str) -> Self {
        assert!(self.chroot, "an installed agent");
        self.proc.stop();
        let netns = self.netns.take().expect("a lab host");
        let Self { _dir: dir, .. } = self;
        Self::start_installed(dir, &netns, hostname)
    }

    /// The node id in the agent's saved identity, once it has registered.
    pub fn node_id(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.state_dir.join("identity.json")).ok()?;
        let identity: serde_json::Value = serde_json::from_str(&text).ok()?;
        identity["node_id"].as_str().map(str::to_owned)
    }
}
