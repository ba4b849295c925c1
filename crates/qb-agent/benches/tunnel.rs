//! The Kubernetes API through qb's tunnel, beside the alternatives, in one run. A standing lab of
//! one host (release binaries, the real bundle) becomes a one-master cluster, and the same client
//! code reaches its kube-apiserver three ways from this machine, all HTTPS over keep-alive
//! connections (HTTP/1.1, as kubectl's requests are forwarded):
//!
//! - direct: the host's lab address, port 6443, with the cluster admin's certificate;
//! - qb proxy: `<controller>/k8s/clusters/<cluster>` with the token of `qb cluster kubeconfig`,
//!   through the agent's tunnel (one HTTP/2 stream per upstream connection);
//! - ssh -R: an OpenSSH reverse tunnel that the host opens to an sshd on this machine over the
//!   same lab link, as a host behind a firewall would (cipher AES-128-GCM), with the admin's
//!   certificate.
//!
//! Beside them, a reference for what terminating TLS and HTTP costs, which an authenticating
//! proxy must do and a byte relay such as `ssh -R` does not: nginx on this machine, dialing the
//! API server directly over the lab link with the admin's certificate (no tunnel, no
//! authentication; one worker process).
//!
//! Figures: the latency of small GETs (p50/p99, in interleaved rounds), what the relays of each
//! path (the controller and the agent; sshd and ssh; nginx) spend per request (CPU time and
//! times scheduled in, from the kernel's per-thread `schedstat`), the throughput of a list of
//! about 36 MB and of the API server's OpenAPI document (served from memory, already serialized:
//! what a tunnel carries when the API server is not the bound), and head-of-line blocking: the
//! latency beside 0, 1, 2 and 4 watches whose bodies are never read, so that their streams'
//! flow-control windows stay full (a request not answered within 10 s counts as blocked), as
//! added over the direct path measured in the same rounds (the machine drifts within a minute),
//! and whether the proxy answers again once they are gone. Needs root, `sshd` (openssh-server),
//! `nginx` and the bundle: run it with `cargo xtask bench`, or set `QB_LAB_BUNDLE`.

use std::fmt::Write as _;
use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use qb_lab::Lab;
use qb_lab::standing;
use qb_plan::render::paths;
use rand::Rng as _;
use serde_json::{Value, json};

use standing_lab::{StandingLab, wait};

mod standing_lab;

const CLUSTER: &str = "tunnel";
/// How long the cluster may take to come up.
const BRING_UP: Duration = Duration::from_secs(600);
/// How long one measured request may take (a longer one counts as blocked).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The API server's port on the host (`qb_plan`'s `ports::APISERVER`).
const APISERVER_PORT: u16 = 6443;
const SSHD: &str = "/usr/sbin/sshd";
const NGINX: &str = "/usr/sbin/nginx";

/// Small requests before the measured ones, per path.
const WARM_UP: usize = 100;
/// Measured small requests per path, in `ROUNDS` interleaved rounds (the machine's noise drifts;
/// interleaving spreads it over the paths alike).
const LATENCY_REQUESTS: usize = 2000;
const ROUNDS: usize = 4;
/// The small request: one tiny ConfigMap.
const SMALL: &str = "/api/v1/namespaces/default/configmaps/small";

/// The bulk list: `BULK_OBJECTS` ConfigMaps of `BULK_BYTES` each, listed `BULK_LISTS` times per
/// path, from the API server's watch cache (`resourceVersion=0`) to keep etcd out of it.
const BULK_OBJECTS: usize = 40;
const BULK_BYTES: usize = 900 * 1000;
const BULK_LISTS: usize = 5;
/// The OpenAPI document, which the API server keeps serialized in memory: GETs per path.
const OPENAPI: &str = "/openapi/v2";
const OPENAPI_GETS: usize = 15;
const LABEL: (&str, &str) = ("qb-bench", "bulk");
const BULK_LIST: &str =
    "/api/v1/namespaces/default/configmaps?labelSelector=qb-bench%3Dbulk&resourceVersion=0";
/// A watch that first sends every bulk ConfigMap (`ADDED`), then stays open.
const BULK_WATCH: &str = "/api/v1/namespaces/default/configmaps?labelSelector=qb-bench%3Dbulk\
                          &resourceVersion=0&watch=true&timeoutSeconds=900";

/// The paths (by their place among the targets: direct, qb proxy, ssh -R, nginx) that cross
/// a tunnel, whose streams can stall: head-of-line blocking is measured on them.
const TUNNELED: std::ops::Range<usize> = 1..3;
/// Head-of-line: small requests measured beside each number of stalled watches (none first, for
/// the baseline), each interleaved with as many on the direct path.
const HOL_REQUESTS: usize = 500;
const HOL_STALLED: [usize; 4] = [0, 1, 2, 4];
/// Small requests on the proxy once the stalled watches are gone.
const RECOVERY_REQUESTS: usize = 100;
/// How long the stalled watches get to fill every buffer on their way before measuring.
const HOL_FILL: Duration = Duration::from_secs(3);

/// DESIGN: the tunnel adds less than this at p50 over a direct connection.
const TARGET_ADDED_P50: Duration = Duration::from_millis(1);

fn main() -> Result<()> {
    ensure!(
        Path::new(SSHD).is_file(),
        "{SSHD} is missing: `apt-get install openssh-server` (`cargo xtask bench` installs it)"
    );
    ensure!(
        Path::new(NGINX).is_file(),
        "{NGINX} is missing: `apt-get install nginx` (`cargo xtask bench` installs it)"
    );
    let parent = tempfile::tempdir()?;
    let options = standing_lab::options(parent.path(), 1, "tunnel")?;
    let bench = Bench {
        lab: StandingLab::up(&options)?,
        work: parent.path().to_owned(),
    };
    // The tunnel's processes are gone when `run` returns, whatever happened; then the lab goes.
    let result = bench.run();
    let left = standing::down(&bench.lab.dir);
    let figures = result?;
    print!("{figures}");
    let left = left?;
    ensure!(left.is_empty(), "the lab left {left:?}");
    Ok(())
}

struct Bench {
    lab: StandingLab,
    /// Outside the lab's directory: the kubeconfig, sshd's files.
    work: PathBuf,
}

impl Bench {
    /// Brings the cluster up, opens the paths and measures them.
    fn run(&self) -> Result<Figures> {
        let host = &self.lab.record.hosts[0];
        let agent_pid = host.agent_pid.context("the host's agent did not start")?;
        let controller_pid = self
            .lab
            .record
            .controller_pid
            .context("the controller did not start")?;
        let lab = Lab::existing(self.lab.record.k, self.lab.record.hosts.len());
        self.lab.qb(&["node", "authorize", &host.name])?;
        self.lab.qb(&["cluster", "create", CLUSTER])?;
        self.lab.qb(&["cluster", "attach", CLUSTER, &host.name])?;
        let started = Instant::now();
        wait("the cluster ready", BRING_UP, || {
            let c = self.lab.qb_json(&["cluster", "show", CLUSTER])?;
            Ok(c["state"] == "ready")
        })?;
        let kubeconfig = self.work.join("tunnel.kubeconfig");
        self.lab.qb(&[
            "cluster",
            "kubeconfig",
            CLUSTER,
            "-O",
            &kubeconfig.display().to_string(),
        ])?;
        let want = vec![host.name.clone()];
        wait("the Node Ready through the proxy", BRING_UP, || {
            Ok(ready_nodes(&kubeconfig).is_ok_and(|ready| ready == want))
        })?;
        eprintln!(
            "tunnel: the master Ready through the proxy {:.1?} after attach",
            started.elapsed()
        );

        // The credentials of each path.
        let (server, token) = kubeconfig_server_and_token(&kubeconfig)?;
        let host_root = standing::host_root(&self.lab.dir, &host.name);
        let on_host = |path: &str| read(&host_root.join(path.trim_start_matches('/')));
        let cluster_ca = on_host(paths::CA_CERT)?;
        let admin = [on_host(paths::ADMIN_CERT)?, on_host(paths::ADMIN_KEY)?].concat();
        let controller_ca =
            read(&standing::controller_dir(&self.lab.dir).join("tls/controller.crt"))?;
        let host_ip: IpAddr = lab.host_ip(0).parse().context("the host's address")?;
        let bridge_ip: IpAddr = lab.bridge_ip().parse().context("the bridge's address")?;

        let tunnel = ReverseTunnel::open(&self.work.join("ssh"), bridge_ip, agent_pid)?;
        let controller_tls = standing::controller_dir(&self.lab.dir).join("tls");
        let nginx = Nginx::start(
            &self.work.join("nginx"),
            (
                &controller_tls.join("controller.crt"),
                &controller_tls.join("controller.key"),
            ),
            SocketAddr::new(host_ip, APISERVER_PORT),
            (&cluster_ca, &admin),
        )?;
        let targets = [
            Target {
                name: "direct",
                base: format!("https://kubernetes:{APISERVER_PORT}"),
                ca: cluster_ca.clone(),
                identity: Some(admin.clone()),
                resolve: Some(SocketAddr::new(host_ip, APISERVER_PORT)),
                token: None,
                impersonate: true,
                relays: Vec::new(),
            },
            Target {
                name: "qb proxy",
                base: server,
                ca: controller_ca.clone(),
                identity: None,
                resolve: None,
                token: Some(token),
                impersonate: false,
                relays: vec![
                    Relay::new("controller", vec![controller_pid]),
                    Relay::new("agent", vec![agent_pid]),
                ],
            },
            Target {
                name: "ssh -R",
                base: format!("https://kubernetes:{}", tunnel.port),
                ca: cluster_ca.clone(),
                identity: Some(admin),
                resolve: Some(SocketAddr::new([127, 0, 0, 1].into(), tunnel.port)),
                token: None,
                impersonate: true,
                relays: tunnel.relays.clone(),
            },
            // A reference, not a way through a firewall: what terminating TLS and HTTP costs.
            Target {
                name: "nginx",
                base: format!("https://127.0.0.1:{}", nginx.port),
                ca: controller_ca,
                identity: None,
                resolve: None,
                token: None,
                impersonate: true,
                relays: vec![Relay::new("nginx", nginx.pids())],
            },
        ];
        // One thread: the client's own scheduling stays out of the figures.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let figures = runtime.block_on(measure(&targets));
        drop(tunnel);
        drop(nginx);
        figures
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Debian's `kubectl` with `kubeconfig`, on this machine.
fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=10s")
        .args(args)
        .output()
        .context("running kubectl")?;
    ensure!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// The Nodes whose `Ready` condition is true.
fn ready_nodes(kubeconfig: &Path) -> Result<Vec<String>> {
    let list: Value =
        serde_json::from_slice(&kubectl(kubeconfig, &["get", "nodes", "-o", "json"])?)?;
    Ok(qb_lab::kube::ready_nodes(&list))
}

/// The kubeconfig's server URL (the controller's proxy) and bearer token.
fn kubeconfig_server_and_token(kubeconfig: &Path) -> Result<(String, String)> {
    let config: Value = serde_json::from_slice(&kubectl(
        kubeconfig,
        &["config", "view", "--raw", "-o", "json"],
    )?)?;
    let server = config["clusters"][0]["cluster"]["server"]
        .as_str()
        .context("no server in the kubeconfig")?;
    let token = config["users"][0]["user"]["token"]
        .as_str()
        .context("no token in the kubeconfig")?;
    Ok((server.trim_end_matches('/').to_owned(), token.to_owned()))
}

/// A child process killed (and reaped) when dropped.
struct Killed(Child);

impl Killed {
    /// Starts `command` (`name` in errors) with no input, its output dropped and its errors
    /// written to `log`, which `wait_until` shows if it fails.
    fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Self> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self(child))
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An OpenSSH reverse tunnel: an sshd of its own on the lab's bridge (this machine's side of the
/// link), and `ssh -R` on the host, which dials it and forwards `127.0.0.1:port` here to the
/// host's API server. Both are killed when it is dropped.
struct ReverseTunnel {
    port: u16,
    /// sshd (with the processes it forked for the connection) and ssh.
    relays: Vec<Relay>,
    // Dropped in this order: the client, the server, then sshd's directory.
    _ssh: Killed,
    _sshd: Killed,
    _privsep: Option<RemovedDir>,
}

/// A directory this made, removed (when empty) when dropped.
struct RemovedDir(PathBuf);

impl Drop for RemovedDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

impl ReverseTunnel {
    fn open(dir: &Path, bridge_ip: IpAddr, agent_pid: u32) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        for key in ["host_key", "client_key"] {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "qb-bench", "-f"])
                .arg(dir.join(key))
                .status()
                .context("running ssh-keygen")?;
            ensure!(status.success(), "ssh-keygen failed: {status}");
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys"))?;
        let ssh_port = TcpListener::bind((bridge_ip, 0))
            .and_then(|l| l.local_addr())
            .with_context(|| format!("a free port on {bridge_ip}"))?
            .port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {ssh_port}\n\
                 ListenAddress {bridge_ip}\n\
                 HostKey {host_key}\n\
                 PidFile {pid}\n\
                 AuthorizedKeysFile {authorized}\n\
                 PermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 AllowTcpForwarding yes\n\
                 GatewayPorts no\n",
                host_key = dir.join("host_key").display(),
                pid = dir.join("sshd.pid").display(),
                authorized = dir.join("authorized_keys").display(),
            ),
        )?;
        // sshd refuses to start without its privilege-separation directory.
        let privsep = Path::new("/run/sshd");
        let privsep = if privsep.is_dir() {
            None
        } else {
            std::fs::create_dir_all(privsep)?;
            Some(RemovedDir(privsep.to_owned()))
        };
        let check = Command::new(SSHD)
            .arg("-t")
            .arg("-f")
            .arg(&config)
            .output()?;
        ensure!(
            check.status.success(),
            "sshd refuses its configuration: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let sshd_log = dir.join("sshd.log");
        let mut sshd_command = Command::new(SSHD);
        sshd_command.args(["-D", "-e", "-f"]).arg(&config);
        let mut sshd = Killed::spawn("sshd", sshd_command, &sshd_log)?;
        wait_until("sshd listening", &mut sshd.0, &sshd_log, || {
            TcpStream::connect((bridge_ip, ssh_port)).is_ok()
        })?;

        // On the host, as the host: in its mount and network namespaces.
        let port = qb_test_support::free_port()?;
        let ssh_log = dir.join("ssh.log");
        let mut ssh_command = Command::new("nsenter");
        ssh_command
            .args(["-t", &agent_pid.to_string(), "-m", "-n"])
            .args(["ssh", "-F", "/dev/null", "-N", "-o", "BatchMode=yes"])
            .args(["-o", "LogLevel=ERROR", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "ExitOnForwardFailure=yes"])
            // Its fastest cipher on a CPU with AES-NI, as the proxy's TLS uses AES-GCM too
            // (OpenSSH's default, chacha20-poly1305, is slower there).
            .args(["-o", "Ciphers=aes128-gcm@openssh.com", "-i"])
            .arg(dir.join("client_key"))
            .args(["-p", &ssh_port.to_string(), "-R"])
            .arg(format!("127.0.0.1:{port}:127.0.0.1:{APISERVER_PORT}"))
            .arg(format!("root@{bridge_ip}"));
        let mut ssh = Killed::spawn("ssh -R on the host", ssh_command, &ssh_log)?;
        wait_until("ssh -R forwarding", &mut ssh.0, &ssh_log, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        })?;
        Ok(Self {
            port,
            // sshd forks the processes that serve the connection; they exist once it forwards.
            relays: vec![
                Relay::new(
                    "sshd",
                    [vec![sshd.0.id()], descendants(sshd.0.id())].concat(),
                ),
                Relay::new("ssh", vec![ssh.0.id()]),
            ],
            _ssh: ssh,
            _sshd: sshd,
            _privsep: privsep,
        })
    }
}

/// nginx as a TLS-terminating reverse proxy in front of the API server: it listens on loopback
/// with the controller's certificate and keeps HTTPS connections to the API server, as the
/// cluster admin. One worker process, killed with its master when dropped.
struct Nginx {
    port: u16,
    master: Killed,
}

impl Nginx {
    fn start(
        dir: &Path,
        (cert, key): (&Path, &Path),
        apiserver: SocketAddr,
        (cluster_ca, admin): (&[u8], &[u8]),
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let file = |name: &str, bytes: &[u8]| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, bytes)?;
            Ok(path)
        };
        let ca = file("cluster-ca.crt", cluster_ca)?;
        // The admin's certificate and key, in one PEM file (nginx finds each in it).
        let admin = file("admin.pem", admin)?;
        let port = qb_test_support::free_port()?;
        let d = dir.display();
        let config = file(
            "nginx.conf",
            format!(
                "user root;\n\
                 worker_processes 1;\n\
                 daemon off;\n\
                 pid {d}/nginx.pid;\n\
                 error_log {d}/error.log warn;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n\
                   access_log off;\n\
                   client_body_temp_path {d}/body;\n\
                   proxy_temp_path {d}/proxy;\n\
                   fastcgi_temp_path {d}/fastcgi;\n\
                   uwsgi_temp_path {d}/uwsgi;\n\
                   scgi_temp_path {d}/scgi;\n\
                   upstream apiserver {{ server {apiserver}; keepalive 32; }}\n\
                   server {{\n\
                     listen 127.0.0.1:{port} ssl;\n\
                     ssl_certificate {cert};\n\
                     ssl_certificate_key {key};\n\
                     location / {{\n\
                       proxy_pass https://apiserver;\n\
                       proxy_http_version 1.1;\n\
                       proxy_set_header Connection \"\";\n\
                       proxy_set_header Host kubernetes;\n\
                       proxy_buffering off;\n\
                       proxy_read_timeout 900s;\n\
                       proxy_ssl_certificate {admin};\n\
                       proxy_ssl_certificate_key {admin};\n\
                       proxy_ssl_trusted_certificate {ca};\n\
                       proxy_ssl_verify on;\n\
                       proxy_ssl_name kubernetes;\n\
                       proxy_ssl_session_reuse on;\n\
                     }}\n\
                   }}\n\
                 }}\n",
                cert = cert.display(),
                key = key.display(),
                admin = admin.display(),
                ca = ca.display(),
            )
            .as_bytes(),
        )?;
        let log = dir.join("nginx.log");
        let mut command = Command::new(NGINX);
        command.arg("-p").arg(dir).arg("-c").arg(&config);
        let mut master = Killed::spawn("nginx", command, &log)?;
        let pid = master.0.id();
        wait_until("nginx listening", &mut master.0, &log, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok() && !descendants(pid).is_empty()
        })?;
        Ok(Self { port, master })
    }

    /// The master and its worker.
    fn pids(&self) -> Vec<u32> {
        let master = self.master.0.id();
        [vec![master], descendants(master)].concat()
    }
}

impl Drop for Nginx {
    /// Its master stops its worker on SIGTERM (a killed master would leave the worker running).
    fn drop(&mut self) {
        let master = self.master.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &master]).status();
        let asked = Instant::now();
        while matches!(self.master.0.try_wait(), Ok(None))
            && asked.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Waits until `ready`, as long as `child` runs; its log when it exits or is too slow.
fn wait_until(
    what: &str,
    child: &mut Child,
    log: &Path,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let started = Instant::now();
    while !ready() {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{what}: it exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!(
                "{what}: not within 20 s: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// One way to the API server: where, whom to trust, who the client is.
struct Target {
    name: &'static str,
    /// Paths are appended to it.
    base: String,
    /// The PEM certificate(s) the server's must chain to.
    ca: Vec<u8>,
    /// A client certificate and key (PEM).
    identity: Option<Vec<u8>>,
    /// Where `kubernetes` (the server name of the API server's certificate) is.
    resolve: Option<SocketAddr>,
    token: Option<String>,
    /// Sends the identity the proxy sends for the lab's admin (`qb:admin` in the qb groups), so
    /// that the API server does the same work on every path (impersonation checks and RBAC for
    /// that user, not `system:masters`): the paths then differ only in how they carry bytes.
    impersonate: bool,
    /// The processes that carry this path's bytes between the client and the API server.
    relays: Vec<Relay>,
}

/// Processes that carry a path's bytes, whose CPU time is measured.
#[derive(Clone)]
struct Relay {
    name: &'static str,
    pids: Vec<u32>,
}

impl Relay {
    fn new(name: &'static str, pids: Vec<u32>) -> Self {
        Self { name, pids }
    }

    /// Its processes' time on a CPU, and how often their threads were scheduled in, from the
    /// kernel's `schedstat` of every thread.
    fn usage(&self) -> Usage {
        let mut usage = Usage::default();
        for pid in &self.pids {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
                    continue;
                };
                let mut fields = stat
                    .split_whitespace()
                    .map(|f| f.parse::<u64>().unwrap_or(0));
                usage.cpu += Duration::from_nanos(fields.next().unwrap_or(0));
                usage.switches += fields.nth(1).unwrap_or(0);
            }
        }
        usage
    }
}

/// Every process below `root`.
fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold anything but the last `)`.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.split_off(1)
}

/// CPU time, and how many times the threads were scheduled in.
#[derive(Clone, Copy, Default)]
struct Usage {
    cpu: Duration,
    switches: u64,
}

impl std::ops::Sub for Usage {
    type Output = Usage;

    fn sub(self, earlier: Usage) -> Usage {
        Usage {
            cpu: self.cpu.saturating_sub(earlier.cpu),
            switches: self.switches.saturating_sub(earlier.switches),
        }
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, more: Usage) {
        self.cpu += more.cpu;
        self.switches += more.switches;
    }
}

impl Target {
    /// A client of its own (its own pool of keep-alive connections): HTTP/1.1, TLS with only
    /// this target's trust anchor.
    fn client(&self, timeout: Option<Duration>) -> Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&self.ca)?)
            .http1_only()
            .no_proxy()
            .pool_idle_timeout(None);
        if let Some(identity) = &self.identity {
            builder = builder.identity(reqwest::Identity::from_pem(identity)?);
        }
        if let Some(addr) = self.resolve {
            builder = builder.resolve("kubernetes", addr);
        }
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        Ok(builder.build()?)
    }

    fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let mut request = client.request(method, format!("{}{path}", self.base));
        if self.impersonate {
            request = request.header("impersonate-user", "qb:admin");
            for group in ["qb:viewers", "qb:operators", "qb:admins"] {
                request = request.header("impersonate-group", group);
            }
        }
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// GETs `path` and reads the whole body; its length.
    async fn get(&self, client: &reqwest::Client, path: &str) -> Result<usize> {
        let request = self.request(client, reqwest::Method::GET, path);
        let body = self.answer(request, || format!("GET {path}")).await?;
        Ok(body.len())
    }

    /// Creates a ConfigMap in the default namespace.
    async fn create_config_map(
        &self,
        client: &reqwest::Client,
        metadata: Value,
        data: Value,
    ) -> Result<()> {
        let object = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata,
            "data": data,
        });
        let request = self
            .request(
                client,
                reqwest::Method::POST,
                "/api/v1/namespaces/default/configmaps",
            )
            .header("content-type", "application/json")
            .body(object.to_string());
        self.answer(request, || "creating a ConfigMap".to_owned())
            .await?;
        Ok(())
    }

    /// Sends `request` and reads the whole answer, which must be a success; an error says `what`
    /// was asked (made only then: requests are timed) and shows the start of the answer (a
    /// refused list can be long).
    async fn answer(
        &self,
        request: reqwest::RequestBuilder,
        what: impl FnOnce() -> String,
    ) -> Result<hyper::body::Bytes> {
        let response = request.send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        ensure!(
            status.is_success(),
            "{} {}: {status}: {}",
            self.name,
            what(),
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
        Ok(body)
    }
}

/// A path to the API server and a client of its own.
struct Way<'a> {
    target: &'a Target,
    client: reqwest::Client,
}

async fn small_gets(way: &Way<'_>, n: usize, into: &mut Vec<Duration>) -> Result<()> {
    for _ in 0..n {
        let started = Instant::now();
        way.target.get(&way.client, SMALL).await?;
        into.push(started.elapsed());
    }
    Ok(())
}

async fn measure(targets: &[Target; 4]) -> Result<Figures> {
    let mut ways = Vec::new();
    for target in targets {
        ways.push(Way {
            target,
            client: target.client(Some(REQUEST_TIMEOUT))?,
        });
    }
    let direct = &ways[0];

    // The objects, through the direct path.
    direct
        .target
        .create_config_map(
            &direct.client,
            json!({"name": "small"}),
            json!({"greeting": "hello"}),
        )
        .await?;
    let creating = Instant::now();
    for i in 0..BULK_OBJECTS {
        let blob: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(BULK_BYTES)
            .map(char::from)
            .collect();
        direct
            .target
            .create_config_map(
                &direct.client,
                json!({"name": format!("bulk-{i}"), "labels": {LABEL.0: LABEL.1}}),
                json!({"blob": blob}),
            )
            .await?;
    }
    eprintln!(
        "tunnel: {BULK_OBJECTS} ConfigMaps of {} KB created in {:.1?}",
        BULK_BYTES / 1000,
        creating.elapsed()
    );

    // Latency: warm-up, then interleaved rounds, each path first in turn.
    let mut latency: Vec<Vec<Duration>> = vec![Vec::new(); ways.len()];
    for way in &ways {
        small_gets(way, WARM_UP, &mut Vec::new()).await?;
    }
    // What the relays of each path spent on its requests (and on anything else meanwhile).
    let mut relayed: Vec<Vec<(&'static str, Usage)>> = ways
        .iter()
        .map(|w| {
            w.target
                .relays
                .iter()
                .map(|r| (r.name, Usage::default()))
                .collect()
        })
        .collect();
    for round in 0..ROUNDS {
        for k in 0..ways.len() {
            let i = (round + k) % ways.len();
            let relays = &ways[i].target.relays;
            let before: Vec<Usage> = relays.iter().map(Relay::usage).collect();
            small_gets(&ways[i], LATENCY_REQUESTS / ROUNDS, &mut latency[i]).await?;
            for ((_, total), (relay, before)) in
                relayed[i].iter_mut().zip(relays.iter().zip(before))
            {
                *total += relay.usage() - before;
            }
        }
    }

    // Throughput, of every path.
    let throughput = [
        bulk(&ways, BULK_LIST, BULK_LISTS).await?,
        bulk(&ways, OPENAPI, OPENAPI_GETS).await?,
    ];

    // Head-of-line: watches never read, on connections of their own; small GETs beside them.
    // Then, the stalled watches gone, whether the proxy answers again.
    let mut head_of_line = Vec::new();
    let mut recovered = Err("not measured".to_owned());
    for i in TUNNELED {
        let way = &ways[i];
        for stalled in HOL_STALLED {
            let figures = beside_stalled(way, direct, stalled)
                .await
                .map_err(|e| format!("{e:#}"));
            head_of_line.push((i, stalled, figures));
        }
        if i == 1 {
            let mut after = Vec::new();
            recovered = small_gets(way, RECOVERY_REQUESTS, &mut after)
                .await
                .map(|()| after)
                .map_err(|e| format!("{e:#}"));
        }
    }

    Ok(Figures {
        names: targets.iter().map(|t| t.name).collect(),
        latency,
        relays: relayed,
        throughput,
        head_of_line,
        recovered,
    })
}

/// GETs of `path` on every path: one each to warm up, then `times` each, interleaved.
async fn bulk(paths: &[Way<'_>], path: &str, times: usize) -> Result<Bulk> {
    let mut bytes = 0;
    for way in paths {
        bytes = way.target.get(&way.client, path).await?;
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for round in 0..times {
        for k in 0..paths.len() {
            let i = (round + k) % paths.len();
            let started = Instant::now();
            let got = paths[i].target.get(&paths[i].client, path).await?;
            rates[i].push(got as f64 / 1e6 / started.elapsed().as_secs_f64());
        }
    }
    Ok(Bulk { bytes, rates })
}

/// `HOL_REQUESTS` small GETs on `way`'s own connection while `stalled` watches, on other
/// connections, have their bodies left unread; and as many on the direct path, interleaved in
/// `ROUNDS` rounds, so that what the machine's drift does to both cancels out in the difference.
async fn beside_stalled(way: &Way<'_>, direct: &Way<'_>, stalled: usize) -> Result<Beside> {
    let staller = way.target.client(None)?;
    let mut unread = Vec::new();
    for _ in 0..stalled {
        let response = way
            .target
            .request(&staller, reqwest::Method::GET, BULK_WATCH)
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "the watch: {}",
            response.status()
        );
        // Kept, never read: every buffer and window between the API server and here fills.
        unread.push(response);
    }
    tokio::time::sleep(HOL_FILL).await;
    let mut beside = Beside::default();
    for _ in 0..ROUNDS {
        let result = small_gets(way, HOL_REQUESTS / ROUNDS, &mut beside.path).await;
        result.with_context(|| {
            format!(
                "after {} of {HOL_REQUESTS} requests beside {stalled} stalled watches",
                beside.path.len()
            )
        })?;
        small_gets(direct, HOL_REQUESTS / ROUNDS, &mut beside.direct)
            .await
            .context("the direct path, beside which the stalled path is measured")?;
    }
    drop(unread);
    Ok(beside)
}

/// Latencies on a path beside stalled watches, and on the direct path in the same rounds.
#[derive(Default)]
struct Beside {
    path: Vec<Duration>,
    direct: Vec<Duration>,
}

impl Beside {
    /// What the path added over direct at p50, in these rounds.
    fn added(&self) -> f64 {
        percentile(&self.path, 50).as_secs_f64() - percentile(&self.direct, 50).as_secs_f64()
    }
}

/// What one bulk GET measured: the bytes of one answer, and per path the MB/s of each GET.
struct Bulk {
    bytes: usize,
    rates: Vec<Vec<f64>>,
}

struct Figures {
    names: Vec<&'static str>,
    latency: Vec<Vec<Duration>>,
    /// Per path, what each of its relays spent during its latency requests.
    relays: Vec<Vec<(&'static str, Usage)>>,
    /// The bulk list, then the OpenAPI document.
    throughput: [Bulk; 2],
    /// Path (index), number of stalled watches, latencies beside them (or why they failed).
    head_of_line: Vec<(usize, usize, Result<Beside, String>)>,
    /// The proxy's latencies once its stalled watches are gone (or why they failed).
    recovered: Result<Vec<Duration>, String>,
}

/// The `p`th percentile of `values` (nearest rank).
fn percentile(values: &[Duration], p: usize) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn signed_ms(a: Duration, b: Duration) -> String {
    format!("{:+.2} ms", (a.as_secs_f64() - b.as_secs_f64()) * 1e3)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p50: Vec<Duration> = self.latency.iter().map(|l| percentile(l, 50)).collect();
        let p99: Vec<Duration> = self.latency.iter().map(|l| percentile(l, 99)).collect();
        let paths = &self.names;
        writeln!(
            f,
            "Kubernetes API of a 1-host lab cluster from this machine: HTTPS, keep-alive HTTP/1.1, \
             same client, every request as qb:admin (the proxy's impersonation, sent directly on \
             the other paths); medians (the machine is shared and noisy)"
        )?;
        let mut line = format!(
            "latency       {LATENCY_REQUESTS} GETs of a small ConfigMap ({ROUNDS} interleaved rounds)  "
        );
        for (i, name) in paths.iter().enumerate() {
            if i > 0 {
                line.push_str(" | ");
            }
            let _ = write!(line, "{name} p50 {}", ms(p50[i]));
            if i > 0 {
                let _ = write!(line, " ({})", signed_ms(p50[i], p50[0]));
            }
            let _ = write!(line, " p99 {}", ms(p99[i]));
        }
        writeln!(f, "{line}")?;
        let added = p50[1].saturating_sub(p50[0]);
        let ratio = p50[1].as_secs_f64() / p50[2].as_secs_f64();
        writeln!(
            f,
            "              targets: the tunnel adds < {} p50 over direct: {} ({}); \
             faster than ssh -R: {} (proxy/ssh p50 {ratio:.2})",
            ms(TARGET_ADDED_P50),
            if added < TARGET_ADDED_P50 {
                "met"
            } else {
                "MISSED"
            },
            signed_ms(p50[1], p50[0]),
            if ratio < 1.0 { "met" } else { "MISSED" },
        )?;
        writeln!(
            f,
            "              terminating TLS and HTTP alone, as any authenticating proxy must (nginx, \
             no tunnel): {} over direct, {} over ssh -R",
            signed_ms(p50[3], p50[0]),
            signed_ms(p50[3], p50[2]),
        )?;
        let mut line =
            "relays        per small GET, CPU time and times scheduled in (background work included)  "
                .to_owned();
        for (i, name) in self.names.iter().enumerate().skip(1) {
            if i > 1 {
                line.push_str(" | ");
            }
            let n = self.latency[i].len() as f64;
            let each: Vec<String> = self.relays[i]
                .iter()
                .map(|(relay, u)| {
                    format!(
                        "{relay} {:.0} µs {:.1}",
                        u.cpu.as_secs_f64() * 1e6 / n,
                        u.switches as f64 / n
                    )
                })
                .collect();
            let _ = write!(line, "{name}: {}", each.join(" + "));
        }
        writeln!(f, "{line}")?;
        let [list, openapi] = &self.throughput;
        for (bulk, what, bound) in [
            (
                list,
                format!("list of {BULK_OBJECTS} ConfigMaps"),
                "the API server serializes the list from its watch cache for every GET: direct \
                 shows that cost alone",
            ),
            (
                openapi,
                format!("GET {OPENAPI}"),
                "served from the API server's memory, already serialized",
            ),
        ] {
            let mut line = format!(
                "throughput    {what}, {:.1} MB of JSON, median of {}  ",
                bulk.bytes as f64 / 1e6,
                bulk.rates[0].len()
            );
            for (i, name) in paths.iter().enumerate() {
                if i > 0 {
                    line.push_str(" | ");
                }
                let rate = median(&bulk.rates[i]);
                let _ = write!(
                    line,
                    "{name} {rate:.0} MB/s ({:.2} Gbit/s)",
                    rate * 8.0 / 1e3
                );
            }
            writeln!(f, "{line}")?;
            writeln!(f, "              ({bound})")?;
        }
        for i in TUNNELED {
            let name = paths[i];
            let mut line = format!(
                "head-of-line  {name:<8} {HOL_REQUESTS} GETs beside watches never read, \
                 interleaved with as many direct; p50 added over direct (change from none)"
            );
            let mut baseline = None;
            for (_, stalled, figures) in self.head_of_line.iter().filter(|h| h.0 == i) {
                let beside = match stalled {
                    0 => "none".to_owned(),
                    n => format!("{n} stalled"),
                };
                match figures {
                    Ok(d) => {
                        let added = d.added();
                        let _ = write!(line, " | {beside} {:+.2} ms", added * 1e3);
                        if *stalled == 0 {
                            baseline = Some(added);
                        } else if let Some(none) = baseline {
                            let _ = write!(line, " ({:+.2} ms)", (added - none) * 1e3);
                        }
                        let _ = write!(
                            line,
                            " p50 {} p99 {}",
                            ms(percentile(&d.path, 50)),
                            ms(percentile(&d.path, 99))
                        );
                    }
                    Err(e) => {
                        let _ = write!(line, " | {beside}: BLOCKED ({e})");
                    }
                }
            }
            writeln!(f, "{line}")?;
            if i == 1 {
                match &self.recovered {
                    Ok(d) => writeln!(
                        f,
                        "              qb proxy once they are gone: {RECOVERY_REQUESTS} GETs \
                         p50 {} p99 {}",
                        ms(percentile(d, 50)),
                        ms(percentile(d, 99))
                    )?,
                    Err(e) => writeln!(
                        f,
                        "              qb proxy once they are gone: STILL BLOCKED ({e})"
                    )?,
                }
            }
        }
        writeln!(
            f,
            "              target: a stalled stream holds up no other tunnel (one tunnel, one \
             HTTP/2 stream with its own flow control)"
        )
    }
}
