//! A standing lab: a controller and hosts that stay up after `up` returns, for trying qb on one
//! machine. Each host gets the agent the way a user installs it: the controller's own tarball,
//! downloaded with `qb agent-package download`, unpacked and installed by its `install.sh`.
//!
//! Everything `up` makes is written to `<dir>/lab.json` before it is made, so `down` removes
//! all of it — processes, pods, cgroups, namespaces, links, files — also after an `up` that
//! failed or was killed half-way.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::host::{AGENT_DIRS, HOST_DIRS, Host};
use crate::netns::Lab;

const RECORD: &str = "lab.json";
/// Where the controller listens for agents, on the lab's bridge.
const AGENT_PORT: u16 = 7444;
/// How long the controller may take to start, and the agents to register.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The programs a lab runs.
pub struct Binaries {
    pub controller: PathBuf,
    /// Shipped in the agent packages the controller serves.
    pub agent: PathBuf,
    /// The command-line client: the lab uses it as a user would.
    pub qb: PathBuf,
}

pub struct Options {
    /// Where everything of the lab lives (and its record).
    pub dir: PathBuf,
    pub hosts: usize,
    /// Controller replicas: one on SQLite, or several sharing a PostgreSQL server of the lab.
    pub replicas: usize,
    /// Hosts are named `<prefix>-1` to `<prefix>-N`.
    pub name_prefix: String,
    /// A release bundle to import once the hosts are up.
    pub bundle: Option<PathBuf>,
    pub binaries: Binaries,
}

/// What a standing lab is made of.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    /// The lab network's number (see [`crate::netns`]).
    pub k: u32,
    pub hosts: Vec<HostRecord>,
    pub controller_pid: Option<u32>,
    /// The controller's API, once it listens.
    pub api_url: Option<String>,
    /// The other controller replicas, with several.
    #[serde(default)]
    pub more_replicas: Vec<ReplicaRecord>,
    /// The PostgreSQL server the replicas share, with several.
    #[serde(default)]
    pub postgres: Option<PostgresRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub pid: Option<u32>,
    pub api_url: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PostgresRecord {
    pub port: u16,
    pub pid: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    pub machine_id: String,
    pub agent_pid: Option<u32>,
}

impl Record {
    fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(RECORD);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .with_context(|| format!("{} is not a lab record", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the record through a temporary file, so a crash leaves the old or the new one.
    fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(RECORD);
        let tmp = dir.join(format!("{RECORD}.tmp"));
        let text = serde_json::to_string_pretty(self).expect("a record serializes");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    fn lab(&self) -> Lab {
        Lab::existing(self.k, self.hosts.len())
    }

    /// Every controller replica's pid, the first's first.
    pub fn controller_pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.controller_pid
            .into_iter()
            .chain(self.more_replicas.iter().filter_map(|r| r.pid))
    }

    fn host(&self, name: &str) -> Result<(usize, &HostRecord)> {
        self.hosts
            .iter()
            .enumerate()
            .find(|(_, h)| h.name == name)
            .with_context(|| {
                let names: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
                format!("the lab has no host {name:?}; its hosts are {names:?}")
            })
    }
}

/// The qb configuration file the lab logs in with (use it with `QB_CONFIG`).
pub fn qb_config(dir: &Path) -> PathBuf {
    dir.join("qb.yaml")
}

/// The controller's data directory (its database, TLS identity, artifacts).
pub fn controller_dir(dir: &Path) -> PathBuf {
    dir.join("controller")
}

/// Replica `n`'s data directory: the first replica's is [`controller_dir`].
fn replica_dir(dir: &Path, n: usize) -> PathBuf {
    match n {
        0 => controller_dir(dir),
        n => dir.join(format!("controller-{}", n + 1)),
    }
}

fn host_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join("hosts").join(name)
}

/// Where host `name`'s files really are (its `/etc/qb`, `/var/lib/qb`, ... are below).
pub fn host_root(dir: &Path, name: &str) -> PathBuf {
    host_dir(dir, name).join("root")
}

/// Brings a lab up: the network, the controller, and on every host the agent installed from the
/// controller's tarball and registered (pending); then imports the bundle if one is given. On
/// failure, everything made so far is removed again.
pub fn up(options: &Options) -> Result<Record> {
    let dir = &options.dir;
    if let Some(record) = Record::load(dir)? {
        bail!(
            "a lab of {} hosts is already up in {} (`cargo xtask lab down` removes it)",
            record.hosts.len(),
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let started = Instant::now();
    let lab = Lab::standing(options.hosts, &dir)?;
    let mut record = Record {
        k: lab.k(),
        hosts: (0..options.hosts)
            .map(|i| HostRecord {
                name: format!("{}-{}", options.name_prefix, i + 1),
                machine_id: machine_id(),
                agent_pid: None,
            })
            .collect(),
        controller_pid: None,
        api_url: None,
        more_replicas: Vec::new(),
        postgres: None,
    };
    // Recorded before anything runs: from here on `down` finds all of it.
    record.save(&dir)?;
    lab.keep();
    note(&format!(
        "network: bridge qba{} with {} hosts in 10.77.{}.0/24 ({:.1} s)",
        record.k,
        options.hosts,
        record.k,
        started.elapsed().as_secs_f64()
    ));
    match bring_up(options, &dir, &mut record) {
        Ok(()) => {
            note(&format!("up in {:.1} s", started.elapsed().as_secs_f64()));
            Ok(record)
        }
        Err(e) => {
            note(&format!("up failed: {e:#}; removing what it made"));
            match down(&dir) {
                Ok(left) if left.is_empty() => {}
                Ok(left) => note(&format!("left over: {left:?}")),
                Err(down) => note(&format!("cannot remove it: {down:#}")),
            }
            Err(e)
        }
    }
}

fn note(line: &str) {
    eprintln!("lab: {line}");
}

fn bring_up(options: &Options, dir: &Path, record: &mut Record) -> Result<()> {
    let bins = &options.binaries;
    let lab = record.lab();
    let bridge_ip = lab.bridge_ip();

    // With several replicas, the PostgreSQL server they share.
    let database = if options.replicas > 1 {
        let port = free_port()?;
        record.postgres = Some(PostgresRecord { port, pid: None });
        record.save(dir)?;
        // The server's user must get through to its directory.
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o711);
        std::fs::set_permissions(dir, mode)?;
        let pid = crate::postgres::start(&dir.join("postgres"), port, &dir.join("postgres.log"))?;
        record.postgres = Some(PostgresRecord {
            port,
            pid: Some(pid),
        });
        record.save(dir)?;
        note(&format!(
            "PostgreSQL on 127.0.0.1:{port} for {} replicas",
            options.replicas
        ));
        Some(crate::postgres::url(port))
    } else {
        None
    };

    // The controller replicas, in the machine's namespaces: API on loopback, agent endpoints on
    // the bridge. The first makes the TLS identity and the secrets key file; the others use
    // them, and its artifacts.
    let agent_urls: Vec<String> = (0..options.replicas)
        .map(|n| format!("https://{bridge_ip}:{}", AGENT_PORT + n as u16))
        .collect();
    let mut first = None;
    for n in 0..options.replicas {
        let data = replica_dir(dir, n);
        let log = match n {
            0 => dir.join("controller.log"),
            n => dir.join(format!("controller-{}.log", n + 1)),
        };
        let mut controller = Command::new(&bins.controller);
        controller.arg("--data-dir").arg(&data);
        if let Some(url) = &database {
            controller.args(["--database", url]);
        }
        controller
            .args(["serve", "--listen", "127.0.0.1:0", "--agent-listen"])
            .arg(format!("{bridge_ip}:{}", AGENT_PORT + n as u16))
            .arg("--agent-binary")
            .arg(&bins.agent)
            .args(["--heartbeat-seconds", "5"]);
        for (other, url) in agent_urls.iter().enumerate() {
            if other != n {
                controller.args(["--other-agent-url", url]);
            }
        }
        if n > 0 {
            let main = controller_dir(dir);
            std::fs::create_dir_all(&data)?;
            std::os::unix::fs::symlink(main.join("artifacts"), data.join("artifacts"))?;
            controller
                .arg("--tls-cert")
                .arg(main.join("tls/controller.crt"))
                .arg("--tls-key")
                .arg(main.join("tls/controller.key"))
                .arg("--secrets-key-file")
                .arg(main.join("secrets.key"));
        }
        let pid = spawn_detached(controller, &log)?;
        match n {
            0 => record.controller_pid = Some(pid),
            _ => record.more_replicas.push(ReplicaRecord {
                pid: Some(pid),
                api_url: None,
            }),
        }
        record.save(dir)?;
        let announced = wait_for_lines(&log, pid, &["listening on ", "certificate fingerprint "])
            .with_context(|| format!("controller replica {} did not start", n + 1))?;
        let url = announced[0].clone();
        match n {
            0 => {
                record.api_url = Some(url.clone());
                first = Some((url.clone(), announced[1].clone()));
            }
            _ => record.more_replicas[n - 1].api_url = Some(url.clone()),
        }
        record.save(dir)?;
        note(&format!(
            "controller replica {}: {url} (log: {})",
            n + 1,
            log.display()
        ));
    }
    let (url, fingerprint) = first.context("no controller replica")?;

    // The lab's own qb login, as the first admin.
    let token = std::fs::read_to_string(controller_dir(dir).join("admin-token"))
        .context("reading the admin token the controller wrote")?;
    let mut login = qb(bins, dir);
    login.args(["login", &url, "--token", "-", "--fingerprint", &fingerprint]);
    run_with_stdin(login, token.trim())?;

    // The agent tarball, as a user downloads it: one bootstrap token for every host.
    let package = dir.join("qb-agent.tar.gz");
    let mut download = qb(bins, dir);
    download
        .args(["agent-package", "download", "--format", "tar.gz", "--force"])
        .args(["--max-uses", &record.hosts.len().to_string()])
        .arg("-O")
        .arg(&package);
    run_quietly(download)?;

    for i in 0..record.hosts.len() {
        install_agent(dir, &record.hosts[i].name, &package)?;
        let pid = start_agent(dir, &lab, i, &record.hosts[i])?;
        record.hosts[i].agent_pid = Some(pid);
        record.save(dir)?;
    }
    note(&format!(
        "agents installed from the controller's tarball on {}",
        record
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| format!("{} ({})", h.name, lab.host_ip(i)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    wait_registered(bins, dir, record)?;

    if let Some(bundle) = &options.bundle {
        note(&format!(
            "importing the release bundle {}",
            bundle.display()
        ));
        let mut import = qb(bins, dir);
        import.args(["bundle", "import"]).arg(bundle);
        run_quietly(import)?;
    }
    Ok(())
}

/// `qb` with the lab's configuration.
fn qb(bins: &Binaries, dir: &Path) -> Command {
    let mut cmd = Command::new(&bins.qb);
    cmd.env("QB_CONFIG", qb_config(dir)).env("NO_COLOR", "1");
    cmd
}

fn run_quietly(mut cmd: Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_with_stdin(mut cmd: Command, input: &str) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(format!("{input}\n").as_bytes())
        .with_context(|| format!("writing to {cmd:?}"))?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Starts `cmd` in its own process group (a Ctrl-C at the terminal does not reach it), with
/// stdout and stderr appended to `log`; its pid.
fn spawn_detached(mut cmd: Command, log: &Path) -> Result<u32> {
    let file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .env("NO_COLOR", "1")
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    Ok(child.id())
}

/// Waits until `log` has a line starting with each of `prefixes`; the rest of each line.
fn wait_for_lines(log: &Path, pid: u32, prefixes: &[&str]) -> Result<Vec<String>> {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found: Vec<Option<String>> = prefixes
            .iter()
            .map(|p| {
                text.lines()
                    .find_map(|l| l.strip_prefix(p))
                    .map(|rest| rest.trim().to_owned())
            })
            .collect();
        if found.iter().all(Option::is_some) {
            return Ok(found.into_iter().flatten().collect());
        }
        if !alive(pid) {
            bail!("it exited; its log:\n{}", tail(&text, 20));
        }
        if started.elapsed() > START_TIMEOUT {
            bail!(
                "nothing after {START_TIMEOUT:?}; its log:\n{}",
                tail(&text, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Unpacks the tarball on host `name` and runs its `install.sh` into the host's root.
fn install_agent(dir: &Path, name: &str, package: &Path) -> Result<()> {
    let unpacked = host_dir(dir, name).join("package");
    std::fs::create_dir_all(&unpacked)?;
    run_quietly({
        let mut tar = Command::new("tar");
        tar.arg("-xzf").arg(package).arg("-C").arg(&unpacked);
        tar
    })?;
    let install = std::fs::read_dir(&unpacked)?
        .flatten()
        .map(|e| e.path().join("install.sh"))
        .find(|p| p.is_file())
        .with_context(|| format!("no install.sh in {}", package.display()))?;
    let mut cmd = Command::new("sh");
    cmd.arg(&install).env("QB_ROOT", host_root(dir, name));
    run_quietly(cmd).map(drop)
}

/// Starts host `i`'s installed agent as its init system would, after a boot: in the host's
/// namespaces, with its own directories, host name and machine id.
fn start_agent(dir: &Path, lab: &Lab, i: usize, host: &HostRecord) -> Result<u32> {
    let root = host_root(dir, &host.name);
    let dirs: Vec<&str> = HOST_DIRS.iter().chain(AGENT_DIRS).copied().collect();
    let netns = lab.netns(i);
    let mut cmd = Host {
        netns: Some(&netns),
        root: &root,
        dirs: &dirs,
        chroot: false,
        hostname: Some(&host.name),
        machine_id: Some(&host.machine_id),
        die_with_parent: false,
    }
    .command(&root.join("usr/bin/qb-agent"))?;
    cmd.args(["--config", "/etc/qb-agent/config.toml"]);
    spawn_detached(cmd, &host_dir(dir, &host.name).join("agent.log"))
}

/// Waits until every host is registered with its agent online.
fn wait_registered(bins: &Binaries, dir: &Path, record: &Record) -> Result<()> {
    let started = Instant::now();
    let mut last = usize::MAX;
    loop {
        let mut list = qb(bins, dir);
        list.args(["node", "list", "-o", "json"]);
        let text = run_quietly(list)?;
        let nodes: serde_json::Value =
            serde_json::from_str(&text).context("`qb node list -o json` printed no JSON")?;
        let online = record
            .hosts
            .iter()
            .filter(|h| {
                nodes.as_array().into_iter().flatten().any(|n| {
                    n["name"] == h.name.as_str() && n["agent"]["online"] == serde_json::json!(true)
                })
            })
            .count();
        if online != last {
            note(&format!(
                "{online}/{} hosts registered, agents online",
                record.hosts.len()
            ));
            last = online;
        }
        if online == record.hosts.len() {
            return Ok(());
        }
        for host in &record.hosts {
            if !host.agent_pid.is_some_and(alive) {
                bail!(
                    "the agent of {} exited; its log is {}",
                    host.name,
                    host_dir(dir, &host.name).join("agent.log").display()
                );
            }
        }
        if started.elapsed() > START_TIMEOUT {
            bail!("not every host registered within {START_TIMEOUT:?}: {nodes}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Removes the lab in `dir`: its processes (the controller, the agents and everything they
/// started, pods included), cgroups, namespaces, links and files. Returns what is left, if
/// anything (empty: nothing).
pub fn down(dir: &Path) -> Result<Vec<String>> {
    let Some(record) = Record::load(dir)? else {
        if dir.exists() {
            // An `up` that died before its first record: only files.
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        return Ok(Vec::new());
    };
    let dir = dir.canonicalize()?;
    for pid in record.controller_pids() {
        if runs(pid, "qb-controller") {
            crate::kill(&pid.to_string());
        }
    }
    if let Some(pid) = record.postgres.as_ref().and_then(|p| p.pid)
        && runs(pid, "postgres")
    {
        crate::postgres::stop(pid);
    }
    for host in &record.hosts {
        if let Some(pid) = host.agent_pid.filter(|p| runs(*p, "qb-agent")) {
            crate::kill(&pid.to_string());
        }
    }
    let mut left = record.lab().teardown();
    let names: Vec<String> = record.hosts.iter().map(|h| h.name.clone()).collect();
    left.extend(crate::cgroups::remove(&names));
    let mounts = qb_host::mounts::points_below(&dir).unwrap_or_default();
    left.extend(mounts.iter().map(|m| format!("mount {}", m.display())));
    for pid in record.controller_pids().filter(|p| alive(*p)) {
        left.push(format!("controller process {pid}"));
    }
    if let Some(pid) = record
        .postgres
        .as_ref()
        .and_then(|p| p.pid)
        .filter(|p| alive(*p))
    {
        left.push(format!("PostgreSQL process {pid}"));
    }
    if left.is_empty() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(left)
}

/// What runs in the lab, one line per part.
pub fn status(dir: &Path) -> Result<String> {
    let record = Record::load(dir)?.with_context(|| {
        format!(
            "no lab in {} (`cargo xtask lab up` makes one)",
            dir.display()
        )
    })?;
    let lab = record.lab();
    let mut lines = vec![format!(
        "controller  {}  pid {}",
        record.api_url.as_deref().unwrap_or("(not started)"),
        describe(record.controller_pid)
    )];
    for (n, replica) in record.more_replicas.iter().enumerate() {
        lines.push(format!(
            "replica {}   {}  pid {}",
            n + 2,
            replica.api_url.as_deref().unwrap_or("(not started)"),
            describe(replica.pid)
        ));
    }
    if let Some(pg) = &record.postgres {
        lines.push(format!(
            "postgres    {}  pid {}",
            crate::postgres::url(pg.port),
            describe(pg.pid)
        ));
    }
    for (i, host) in record.hosts.iter().enumerate() {
        let link = crate::netns::ip(&["-o", "link", "show", &lab.host_veth(i)])
            .map(|l| if l.contains(",UP") { "up" } else { "cut" })
            .unwrap_or("missing");
        lines.push(format!(
            "{:<10}  {:<12}  link {link:<4}  agent pid {}  {} processes",
            host.name,
            lab.host_ip(i),
            describe(host.agent_pid),
            lab.pids(i).len(),
        ));
    }
    lines.push(format!("QB_CONFIG={}", qb_config(dir).display()));
    Ok(lines.join("\n"))
}

fn describe(pid: Option<u32>) -> String {
    match pid {
        Some(pid) if alive(pid) => format!("{pid} (running)"),
        Some(pid) => format!("{pid} (exited)"),
        None => "-".to_owned(),
    }
}

/// Runs `args` on host `name`: in its agent's network, mount and UTS namespaces.
pub fn exec(dir: &Path, name: &str, args: &[String]) -> Result<std::process::ExitStatus> {
    let record = Record::load(dir)?.context("no lab is up")?;
    let (_, host) = record.host(name)?;
    let pid = host.agent_pid.filter(|p| alive(*p)).with_context(|| {
        format!("{name}'s agent is not running (`cargo xtask lab restart {name}`)")
    })?;
    ensure!(!args.is_empty(), "which command?");
    Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "-u", "-n", "--"])
        .args(args)
        .status()
        .context("running nsenter")
}

/// Restarts host `name` as a power cycle would (see [`crate::host::power_off`]): every process
/// of it ends at once, pods too, what a reboot loses goes, and its agent starts again with its
/// disk intact.
pub fn restart(dir: &Path, name: &str) -> Result<()> {
    let mut record = Record::load(dir)?.context("no lab is up")?;
    let (i, _) = record.host(name)?;
    let lab = record.lab();
    crate::host::power_off(&lab, i, name, &host_root(dir, name))?;
    let pid = start_agent(dir, &lab, i, &record.hosts[i])?;
    record.hosts[i].agent_pid = Some(pid);
    record.save(dir)
}

/// Pulls (`connected: false`) or plugs back host `name`'s network cable.
pub fn cable(dir: &Path, name: &str, connected: bool) -> Result<()> {
    let record = Record::load(dir)?.context("no lab is up")?;
    let (i, _) = record.host(name)?;
    let lab = record.lab();
    if connected {
        lab.link_up(i)
    } else {
        lab.link_down(i)
    }
}

/// `true` while process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// `true` while `pid` runs a program whose command line mentions `program` (a pid is reused
/// once its process is gone).
fn runs(pid: u32, program: &str) -> bool {
    alive(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(program))
}

/// A fresh machine id: 32 lowercase hex digits, from the kernel's random UUIDs.
fn machine_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|u| u.trim().replace('-', ""))
        .unwrap_or_else(|_| format!("{:032x}", std::process::id()))
}

/// A TCP port free on loopback now.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
