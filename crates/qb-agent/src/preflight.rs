//! The agent's side of the preflight (the protocol is in `qb_agent_proto::preflight`).
//!
//! Phase 1, [`Preflight::check`]: the local checks, a listener on every required port that
//! answers with the session's banner, and a bind of every port only the node uses. A port
//! another program holds fails its check with that program's name and pid, found through /proc.
//! Phase 2, [`Preflight::probe`]: every port of every peer at once, each probe with the same
//! timeout, so the whole mesh check takes about one timeout even when nothing answers.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use qb_agent_proto::plan::{PortSpec, Protocol};
use qb_agent_proto::preflight::{
    CheckResult, LocalPort, LocalReport, PreflightCheck, PreflightProbe, ProbeResult, Requirements,
    Severity, banner,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Pending connections a preflight TCP listener queues: every peer probes at once.
const LISTEN_BACKLOG: u32 = 1024;
/// A UDP probe sends its banner again after this long without an echo (a datagram may be lost).
const UDP_RESEND: Duration = Duration::from_millis(250);
/// The most a probe reads from a TCP peer: a banner of any session fits.
const MAX_ANSWER: usize = 64;

/// The preflight of one agent. It owns the listeners of the latest session: a new
/// [`check`](Self::check) closes them before it binds again.
#[derive(Default)]
pub struct Preflight {
    listeners: Mutex<Option<Listeners>>,
    /// The plan generation that last closed them (see [`close_for`](Self::close_for)); 0 for
    /// none, as generations start at 1.
    closed_for: AtomicU64,
}

/// The listener tasks of one session; dropping the set aborts them.
struct Listeners {
    session: u64,
    tasks: JoinSet<()>,
}

impl Listeners {
    /// Stops every listener and waits until its socket is closed, so the ports can be bound again.
    async fn close(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A bound preflight socket.
enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Preflight {
    /// A preflight with no session yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Phase 1: closes the listeners of any earlier session, listens on every port of `req.listen`
    /// that the node's own services (`held_by_services`) do not hold, checks that every such
    /// port of `req.local` is free at its address (bound, then released at once), and runs the
    /// local checks. A port that cannot be bound is a failed check named `port <port>/<proto>`
    /// that names the process holding it; ports bound for the mesh are reported in `listening`
    /// (not as checks). Listeners close after `req.hold_ms`.
    #[tracing::instrument(skip_all, fields(session = req.session))]
    pub async fn check(&self, req: &PreflightCheck, held_by_services: &[PortSpec]) -> LocalReport {
        let mut current = self.listeners.lock().await;
        if let Some(old) = current.take() {
            tracing::debug!(
                old_session = old.session,
                "closing the listeners of the last session"
            );
            old.close().await;
        }
        let banner: Arc<str> = banner(req.session).into();
        let hold = Duration::from_millis(req.hold_ms);
        let mut tasks = JoinSet::new();
        let mut report = LocalReport::default();
        let mut seen = HashSet::new();
        for &port in &req.listen {
            if !seen.insert(port) {
                continue;
            }
            if held_by_services.contains(&port) {
                report.held_by_service.push(port);
                continue;
            }
            match bind(port) {
                Ok(bound) => {
                    tasks.spawn(answer_until(bound, Arc::clone(&banner), hold));
                    report.listening.push(port);
                }
                Err(e) => {
                    tracing::info!(%port, error = %e, "preflight port not free");
                    report.checks.push(port_taken(port, &e));
                }
            }
        }
        for &LocalPort { port, address } in &req.local {
            // A port bound for the mesh above is free, and ours now.
            if !seen.insert(port) {
                continue;
            }
            if held_by_services.contains(&port) {
                report.held_by_service.push(port);
                continue;
            }
            // Free if it binds; nothing probes it, so it is released at once.
            if let Err(e) = bind_at(address, port) {
                tracing::info!(%port, %address, error = %e, "local port not free");
                report.checks.push(port_taken(port, &e));
            }
        }
        *current = Some(Listeners {
            session: req.session,
            tasks,
        });
        report.checks.extend(local_checks(&req.requirements));
        tracing::info!(
            listening = report.listening.len(),
            failed = report.checks.iter().filter(|c| !c.ok).count(),
            "preflight checks done"
        );
        report
    }

    /// Closes the listeners of the last session before their hold ends, when plan `generation`
    /// is applied for the first time: a plan arrives once its preflight is over, and its services
    /// need those ports. Retries of the same plan leave the listeners alone: they may be a later
    /// preflight's (of a node that joins), whose probes must find them.
    pub async fn close_for(&self, generation: u64) {
        if self.closed_for.swap(generation, Ordering::Relaxed) != generation {
            self.close().await;
        }
    }

    async fn close(&self) {
        if let Some(listeners) = self.listeners.lock().await.take() {
            tracing::debug!(
                session = listeners.session,
                "closing the preflight listeners"
            );
            listeners.close().await;
        }
    }

    /// Phase 2: probes every port of every target at once, each probe giving up after
    /// `req.timeout_ms`. Results come in the order of the targets and their ports.
    #[tracing::instrument(skip_all, fields(session = req.session))]
    pub async fn probe(&self, req: &PreflightProbe) -> Vec<ProbeResult> {
        let banner = banner(req.session);
        let banner = banner.as_bytes();
        let timeout = Duration::from_millis(req.timeout_ms);
        let probes = req.targets.iter().flat_map(|target| {
            target.ports.iter().map(move |&port| async move {
                let to = SocketAddr::new(target.address, port.port);
                let held = target.held.contains(&port);
                let outcome = match port.protocol {
                    Protocol::Tcp if held => connect_tcp(to, timeout).await,
                    Protocol::Tcp => probe_tcp(to, banner, timeout).await,
                    Protocol::Udp => probe_udp(to, banner, timeout).await,
                };
                probe_result(target.node, port, outcome)
            })
        });
        let results = join_all(probes).await;
        tracing::info!(
            probes = results.len(),
            failed = results.iter().filter(|r| !r.ok).count(),
            "preflight probes done"
        );
        results
    }
}

fn probe_result(
    to: qb_api::NodeId,
    port: PortSpec,
    outcome: Result<Duration, String>,
) -> ProbeResult {
    match outcome {
        Ok(latency) => ProbeResult {
            to,
            port,
            ok: true,
            latency_us: Some(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX)),
            error: None,
        },
        Err(error) => ProbeResult {
            to,
            port,
            ok: false,
            latency_us: None,
            error: Some(error),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Listeners

/// Binds `port` on every IPv4 address.
fn bind(port: PortSpec) -> io::Result<Bound> {
    bind_at(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

/// Binds `port` at `address` (a TCP port listens: binding alone would not find a conflict
/// with another listener that also set `SO_REUSEADDR`).
fn bind_at(address: IpAddr, port: PortSpec) -> io::Result<Bound> {
    let address = SocketAddr::new(address, port.port);
    match port.protocol {
        Protocol::Tcp => {
            let socket = match address {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            // Connections the last session closed linger in TIME_WAIT; they must not keep
            // this session from binding. A listening socket still makes the bind fail.
            socket.set_reuseaddr(true)?;
            socket.bind(address)?;
            Ok(Bound::Tcp(socket.listen(LISTEN_BACKLOG)?))
        }
        Protocol::Udp => {
            let socket = std::net::UdpSocket::bind(address)?;
            socket.set_nonblocking(true)?;
            Ok(Bound::Udp(UdpSocket::from_std(socket)?))
        }
    }
}

/// The failed "free to bind" check of `port`: for a port in use, who holds it.
fn port_taken(port: PortSpec, error: &io::Error) -> CheckResult {
    let detail = match error.kind() {
        io::ErrorKind::AddrInUse => match holders(port).as_slice() {
            [] => "in use (by a process the agent cannot see)".to_owned(),
            [one] => format!("in use by {one}"),
            [first, rest @ ..] => format!(
                "in use by {first} and {} other process{}",
                rest.len(),
                if rest.len() == 1 { "" } else { "es" }
            ),
        },
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => error.to_string(),
    };
    CheckResult {
        name: format!("port {port}"),
        ok: false,
        severity: Severity::Error,
        detail,
    }
}

// ---------------------------------------------------------------------------------------------
// Who holds a port

/// The processes that hold a socket bound to `port` (for TCP, listening ones if there are any),
/// as `comm (pid N)`, by pid. Sockets come from this network namespace's `/proc/net` tables;
/// their holders from the `socket:[inode]` links in `/proc/<pid>/fd` of every process the agent
/// may read (a process of another network namespace cannot hold one: inodes are unique).
fn holders(port: PortSpec) -> Vec<String> {
    let tables: Vec<String> = match port.protocol {
        Protocol::Tcp => ["/proc/net/tcp", "/proc/net/tcp6"],
        Protocol::Udp => ["/proc/net/udp", "/proc/net/udp6"],
    }
    .iter()
    .filter_map(|table| std::fs::read_to_string(table).ok())
    .collect();
    let bound = |listening_only| -> HashSet<u64> {
        tables
            .iter()
            .flat_map(|table| socket_inodes(table, port, listening_only))
            .collect()
    };
    let mut inodes = bound(true);
    if inodes.is_empty() {
        // A connection's socket without SO_REUSEADDR holds its local port too.
        inodes = bound(false);
    }
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid| holds_socket(pid, &inodes))
        .collect();
    pids.sort_unstable();
    pids.into_iter()
        .map(
            |pid| match qb_host::process::comm(pid).filter(|c| !c.is_empty()) {
                None => format!("pid {pid}"),
                Some(comm) => format!("{comm} (pid {pid})"),
            },
        )
        .collect()
}

/// The inodes of the sockets in a `/proc/net/{tcp,tcp6,udp,udp6}` table bound to `port`; with
/// `listening_only`, of TCP sockets only listening ones (UDP sockets do not listen).
fn socket_inodes(table: &str, port: PortSpec, listening_only: bool) -> Vec<u64> {
    /// `st` of a listening TCP socket.
    const TCP_LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid
            // timeout inode ...
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (_, local_port) = fields.get(1)?.rsplit_once(':')?;
            let state = *fields.get(3)?;
            let inode: u64 = fields.get(9)?.parse().ok()?;
            let bound = u16::from_str_radix(local_port, 16).ok()? == port.port;
            let listening =
                !listening_only || port.protocol == Protocol::Udp || state == TCP_LISTEN;
            (bound && listening && inode != 0).then_some(inode)
        })
        .collect()
}

/// Whether one of `pid`'s descriptors is a socket of `inodes`; false for a process the agent
/// may not look into.
fn holds_socket(pid: u32, inodes: &HashSet<u64>) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok).any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
                .is_some_and(|inode| inodes.contains(&inode))
        })
    })
}

/// Answers probes on `bound` for `hold`, then closes it.
async fn answer_until(bound: Bound, banner: Arc<str>, hold: Duration) {
    let _ = tokio::time::timeout(hold, async {
        match bound {
            Bound::Tcp(listener) => answer_tcp(listener, &banner).await,
            Bound::Udp(socket) => answer_udp(socket, &banner).await,
        }
    })
    .await;
}

/// Sends the banner to every connection, then closes it.
async fn answer_tcp(listener: TcpListener, banner: &str) {
    loop {
        match listener.accept().await {
            Ok((mut stream, _)) => {
                // A few bytes on a fresh connection fit in the socket buffer: this does not
                // wait for the peer.
                let _ = stream.write_all(banner.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "preflight accept failed");
                // Out of descriptors, say: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Echoes the banner to every datagram that carries exactly it; anything else is ignored.
async fn answer_udp(socket: UdpSocket, banner: &str) {
    let mut buf = [0u8; 512];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, peer)) if &buf[..n] == banner.as_bytes() => {
                let _ = socket.send_to(banner.as_bytes(), peer).await;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "preflight UDP receive failed"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Probes

/// Connects, then reads the peer's banner. The latency is the connect's round trip.
async fn probe_tcp(to: SocketAddr, banner: &[u8], timeout: Duration) -> Result<Duration, String> {
    let deadline = Instant::now() + timeout;
    let start = Instant::now();
    let mut stream = match tokio::time::timeout_at(deadline, TcpStream::connect(to)).await {
        Err(_) => return Err("timed out".to_owned()),
        Ok(Err(e)) => return Err(io_error_text(&e)),
        Ok(Ok(stream)) => stream,
    };
    let latency = start.elapsed();
    let mut answer = Vec::with_capacity(MAX_ANSWER);
    // On a timeout, `answer` holds what came so far.
    let _ = tokio::time::timeout_at(deadline, read_line(&mut stream, &mut answer)).await;
    if answer == banner {
        Ok(latency)
    } else {
        Err(wrong_answer(&answer))
    }
}

/// Connects to a port a service of the target holds; connecting is all that is asked.
async fn connect_tcp(to: SocketAddr, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    match tokio::time::timeout(timeout, TcpStream::connect(to)).await {
        Err(_) => Err("timed out".to_owned()),
        Ok(Err(e)) => Err(io_error_text(&e)),
        Ok(Ok(_stream)) => Ok(start.elapsed()),
    }
}

/// Reads into `answer` up to a newline, the end of the stream, an error or [`MAX_ANSWER`] bytes.
async fn read_line(stream: &mut TcpStream, answer: &mut Vec<u8>) {
    let mut buf = [0u8; MAX_ANSWER];
    while answer.len() < MAX_ANSWER && !answer.ends_with(b"\n") {
        match stream.read(&mut buf[..MAX_ANSWER - answer.len()]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends the banner from an ephemeral socket connected to `to` (so an ICMP "port unreachable"
/// fails the receive) until it comes back. The echo must come from `to` itself. The latency
/// runs from the first send: it includes a resend if a datagram was lost.
async fn probe_udp(to: SocketAddr, banner: &[u8], timeout: Duration) -> Result<Duration, String> {
    let deadline = Instant::now() + timeout;
    let local = match to {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| format!("cannot open a UDP socket: {}", io_error_text(&e)))?;
    socket.connect(to).await.map_err(|e| io_error_text(&e))?;
    let start = Instant::now();
    let mut buf = [0u8; MAX_ANSWER];
    let exchange = async {
        loop {
            socket.send(banner).await?;
            if let Ok(received) = tokio::time::timeout(UDP_RESEND, socket.recv(&mut buf)).await {
                return received;
            }
        }
    };
    let received = tokio::time::timeout_at(deadline, exchange).await;
    match received {
        Err(_) => Err("no answer (timed out)".to_owned()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Err("port unreachable".to_owned())
        }
        Ok(Err(e)) => Err(io_error_text(&e)),
        Ok(Ok(n)) if &buf[..n] == banner => Ok(start.elapsed()),
        Ok(Ok(n)) => Err(wrong_answer(&buf[..n])),
    }
}

/// Why an answer that is not this session's banner fails the probe.
fn wrong_answer(answer: &[u8]) -> String {
    match std::str::from_utf8(answer).ok().and_then(banner_session) {
        Some(session) => {
            format!("wrong answer: the preflight listener of another session ({session})")
        }
        None => "wrong answer: connected, but not to the preflight listener".to_owned(),
    }
}

/// The session whose banner `answer` is, if it is one.
fn banner_session(answer: &str) -> Option<u64> {
    let session = answer.trim_end().rsplit(' ').next()?.parse().ok()?;
    (banner(session) == answer).then_some(session)
}

/// A short reason for a failed connect or exchange.
fn io_error_text(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
        io::ErrorKind::HostUnreachable => "host unreachable".to_owned(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".to_owned(),
        io::ErrorKind::TimedOut => "timed out".to_owned(),
        _ => error.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Local checks

/// The local checks, against this host.
fn local_checks(req: &Requirements) -> Vec<CheckResult> {
    let memory = qb_host::process::Memory::read();
    let uname = rustix::system::uname();
    let cpus = std::thread::available_parallelism()
        .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    let proc_modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let mut checks = vec![
        os_check(std::env::consts::OS, &os_release),
        kernel_check(&uname.release().to_string_lossy(), req.min_kernel),
        cpus_check(cpus, req.min_cpus),
        memory_check(memory.total_bytes, req.min_memory_bytes),
        swap_check(memory.swap_bytes),
        clock_check(now_ms(), req.controller_time_ms, req.max_clock_offset_ms),
    ];
    checks.extend(
        req.kernel_modules
            .iter()
            .map(|name| module_check(name, &proc_modules, Path::new("/sys/module"))),
    );
    checks
}

fn check_result(name: &str, ok: bool, severity: Severity, detail: String) -> CheckResult {
    CheckResult {
        name: name.to_owned(),
        ok,
        severity,
        detail,
    }
}

/// The OS must be Linux; the detail names the distribution.
fn os_check(os: &str, os_release: &str) -> CheckResult {
    let pretty = os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .unwrap_or_else(|| "unknown distribution".to_owned());
    if os == "linux" {
        check_result("os", true, Severity::Error, pretty)
    } else {
        check_result("os", false, Severity::Error, format!("{os}, need Linux"))
    }
}

/// The kernel release must be `min` (`major.minor`) or newer.
fn kernel_check(release: &str, min: (u32, u32)) -> CheckResult {
    let need = format!("need {}.{} or newer", min.0, min.1);
    match kernel_version(release) {
        Some(version) if version >= min => {
            check_result("kernel", true, Severity::Error, release.to_owned())
        }
        Some(_) => check_result(
            "kernel",
            false,
            Severity::Error,
            format!("{release}, {need}"),
        ),
        None => check_result(
            "kernel",
            false,
            Severity::Error,
            format!("cannot read the version of {release:?}, {need}"),
        ),
    }
}

/// `major.minor` of a release like `6.1.0-18-amd64`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split('.');
    let number = |part: Option<&str>| -> Option<u32> {
        let part = part?;
        let end = part
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(part.len());
        part[..end].parse().ok()
    };
    Some((number(parts.next())?, number(parts.next())?))
}

fn cpus_check(cpus: u32, min: u32) -> CheckResult {
    if cpus >= min {
        check_result("cpus", true, Severity::Error, cpus.to_string())
    } else {
        check_result(
            "cpus",
            false,
            Severity::Error,
            format!("{cpus}, need {min}"),
        )
    }
}

/// The host's memory must be at least `min` bytes.
fn memory_check(total: u64, min: u64) -> CheckResult {
    if total >= min {
        check_result("memory", true, Severity::Error, bytes(total))
    } else {
        let detail = format!("{}, need {}", bytes(total), bytes(min));
        check_result("memory", false, Severity::Error, detail)
    }
}

/// Swap does not block, but the kubelet then runs with `failSwapOn=false`.
fn swap_check(swap: u64) -> CheckResult {
    match swap {
        0 => check_result("swap", true, Severity::Warning, "no swap".to_owned()),
        swap => check_result(
            "swap",
            false,
            Severity::Warning,
            format!(
                "{} of swap: the kubelet will run with failSwapOn=false",
                bytes(swap)
            ),
        ),
    }
}

/// This host's clock against the controller's, which includes the instruction's delivery time.
fn clock_check(now_ms: i64, controller_ms: i64, max_offset_ms: u64) -> CheckResult {
    let offset = now_ms.saturating_sub(controller_ms);
    let detail = format!("offset {offset:+} ms from the controller");
    if offset.unsigned_abs() <= max_offset_ms {
        check_result("clock", true, Severity::Error, detail)
    } else {
        let detail = format!("{detail}, at most ±{max_offset_ms} ms allowed");
        check_result("clock", false, Severity::Error, detail)
    }
}

/// A kernel module is available if loaded (`/proc/modules`) or built in (`<sys_module>/<name>`).
fn module_check(name: &str, proc_modules: &str, sys_module: &Path) -> CheckResult {
    let check_name = format!("module {name}");
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        let detail = "not a module name".to_owned();
        return check_result(&check_name, false, Severity::Warning, detail);
    }
    // The kernel spells `-` as `_` in both places.
    let canonical = name.replace('-', "_");
    let loaded = proc_modules
        .lines()
        .any(|line| line.split_whitespace().next() == Some(canonical.as_str()));
    if loaded || sys_module.join(&canonical).exists() {
        check_result(&check_name, true, Severity::Warning, "available".to_owned())
    } else {
        let detail = "not loaded and not built in".to_owned();
        check_result(&check_name, false, Severity::Warning, detail)
    }
}

/// `1.5 GiB`, `512.0 MiB`.
fn bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    const GIB: f64 = 1024.0 * MIB;
    let n = n as f64;
    if n >= GIB {
        format!("{:.1} GiB", n / GIB)
    } else {
        format!("{:.1} MiB", n / MIB)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use std::time::Instant as StdInstant;

    use qb_agent_proto::preflight::ProbeTarget;
    use qb_api::NodeId;

    use super::*;

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn tcp(port: u16) -> PortSpec {
        PortSpec::tcp(port)
    }

    fn udp(port: u16) -> PortSpec {
        PortSpec::udp(port)
    }

    /// A port that was free a moment ago (bound on port 0, then released).
    fn free_port(protocol: Protocol) -> PortSpec {
        let any = (Ipv4Addr::UNSPECIFIED, 0);
        let port = match protocol {
            Protocol::Tcp => std::net::TcpListener::bind(any).unwrap().local_addr(),
            Protocol::Udp => std::net::UdpSocket::bind(any).unwrap().local_addr(),
        }
        .unwrap()
        .port();
        PortSpec { port, protocol }
    }

    /// Requirements every machine that runs these tests meets.
    fn easy() -> Requirements {
        Requirements {
            min_memory_bytes: 1,
            min_cpus: 1,
            controller_time_ms: now_ms(),
            max_clock_offset_ms: 60_000,
            min_kernel: (2, 6),
            kernel_modules: vec!["kernel".to_owned()],
        }
    }

    fn check_request(session: u64, listen: Vec<PortSpec>, hold_ms: u64) -> PreflightCheck {
        PreflightCheck {
            session,
            listen,
            local: Vec::new(),
            hold_ms,
            requirements: easy(),
        }
    }

    /// `comm (pid N)` of this test process, as a failed port check names its holder.
    fn this_process() -> String {
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        format!("{} (pid {})", comm.trim_end(), std::process::id())
    }

    fn probe_request(
        session: u64,
        targets: Vec<(IpAddr, Vec<PortSpec>)>,
        timeout_ms: u64,
    ) -> PreflightProbe {
        PreflightProbe {
            session,
            targets: targets
                .into_iter()
                .map(|(address, ports)| ProbeTarget {
                    node: NodeId::new(),
                    address,
                    ports,
                    held: Vec::new(),
                })
                .collect(),
            timeout_ms,
        }
    }

    #[tokio::test]
    async fn a_port_held_by_a_service_needs_only_a_connection() {
        // A TLS server, say: it accepts and waits for the client to speak.
        let silent = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let port = PortSpec {
            port: silent.local_addr().unwrap().port(),
            protocol: Protocol::Tcp,
        };
        let mut req = probe_request(7, vec![(IpAddr::V4(Ipv4Addr::LOCALHOST), vec![port])], 300);
        let preflight = Preflight::new();
        let started = std::time::Instant::now();
        req.targets[0].held = vec![port];
        let held = preflight.probe(&req).await;
        assert!(held[0].ok, "{held:?}");
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "no wait for a banner"
        );
        req.targets[0].held.clear();
        let not_held = preflight.probe(&req).await;
        assert!(!not_held[0].ok, "{not_held:?}");
        drop(silent);
    }

    fn named<'a>(report: &'a LocalReport, name: &str) -> &'a CheckResult {
        report
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name} in {:#?}", report.checks))
    }

    fn error_of(result: &ProbeResult) -> &str {
        assert!(!result.ok, "{result:?} should have failed");
        assert_eq!(result.latency_us, None, "{result:?}");
        result.error.as_deref().unwrap_or_default()
    }

    #[tokio::test]
    async fn listens_on_the_ports_and_answers_probes_with_the_banner() {
        let (t, u) = (free_port(Protocol::Tcp), free_port(Protocol::Udp));
        let preflight = Preflight::new();
        let report = preflight
            .check(&check_request(7, vec![t, u, t], 10_000), &[])
            .await;
        assert_eq!(report.listening, vec![t, u], "duplicates are bound once");
        assert!(report.held_by_service.is_empty());
        assert!(
            report.checks.iter().all(|c| !c.name.starts_with("port ")),
            "{:#?}",
            report.checks
        );

        let request = probe_request(7, vec![(LOCALHOST, vec![t, u])], 2_000);
        let results = preflight.probe(&request).await;
        assert_eq!(results.len(), 2);
        for (result, port) in results.iter().zip([t, u]) {
            assert_eq!(result.port, port);
            assert_eq!(result.to, request.targets[0].node);
            assert!(result.ok, "{result:?}");
            assert!(result.latency_us.is_some(), "{result:?}");
            assert_eq!(result.error, None);
        }
    }

    #[tokio::test]
    async fn a_port_in_use_is_a_failed_check() {
        let taken = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = tcp(taken.local_addr().unwrap().port());
        let free = free_port(Protocol::Udp);
        let report = Preflight::new()
            .check(&check_request(1, vec![port, free], 10_000), &[])
            .await;
        let check = named(&report, &format!("port {}/tcp", port.port));
        assert!(!check.ok);
        assert_eq!(check.severity, Severity::Error);
        assert_eq!(check.detail, format!("in use by {}", this_process()));
        assert_eq!(report.listening, vec![free]);
    }

    #[tokio::test]
    async fn a_local_port_in_use_names_the_process_holding_it() {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        // Another program on the loopback port a component will bind, and on a UDP port.
        let tcp_holder = std::net::TcpListener::bind((loopback, 0)).unwrap();
        let udp_holder = std::net::UdpSocket::bind((loopback, 0)).unwrap();
        let taken_tcp = tcp(tcp_holder.local_addr().unwrap().port());
        let taken_udp = udp(udp_holder.local_addr().unwrap().port());
        let free = free_port(Protocol::Tcp);
        let local = |port, address| LocalPort { port, address };
        let mut request = check_request(1, vec![], 60_000);
        request.local = vec![
            local(taken_tcp, loopback),
            local(taken_udp, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            local(free, loopback),
        ];
        let report = Preflight::new().check(&request, &[]).await;

        for port in [taken_tcp, taken_udp] {
            let check = named(&report, &format!("port {port}"));
            assert!(!check.ok && check.severity == Severity::Error, "{check:?}");
            assert_eq!(check.detail, format!("in use by {}", this_process()));
        }
        assert!(
            report
                .checks
                .iter()
                .all(|c| c.name != format!("port {free}")),
            "{:#?}",
            report.checks
        );
        // Nothing listens on local ports: the free one was released at once.
        assert!(report.listening.is_empty(), "{:?}", report.listening);
        std::net::TcpListener::bind((loopback, free.port)).expect("the local port is free again");
    }

    #[tokio::test]
    async fn local_ports_held_by_the_nodes_services_are_left_to_them() {
        let service = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let held = tcp(service.local_addr().unwrap().port());
        let mut request = check_request(1, vec![], 10_000);
        request.local = vec![LocalPort {
            port: held,
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }];
        let report = Preflight::new().check(&request, &[held]).await;
        assert_eq!(report.held_by_service, vec![held]);
        assert!(report.listening.is_empty());
        assert!(report.checks.iter().all(|c| !c.name.starts_with("port ")));
    }

    #[test]
    fn sockets_are_found_in_proc_net_tables() {
        // /proc/net/tcp: 127.0.0.1:10248 listening (inode 111), a connection from it (222),
        // 0.0.0.0:10256 listening (333).
        let tcp_table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2808 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:2808 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 20 4 30 10 -1
   2: 00000000:2810 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(socket_inodes(tcp_table, tcp(10248), true), [111]);
        assert_eq!(socket_inodes(tcp_table, tcp(10248), false), [111, 222]);
        assert_eq!(socket_inodes(tcp_table, tcp(10256), true), [333]);
        assert!(socket_inodes(tcp_table, tcp(10250), true).is_empty());
        // /proc/net/udp6: [::]:8472, unconnected (st 07).
        let udp_table = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  10: 00000000000000000000000000000000:2118 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 444 2 0000000000000000 0
";
        assert_eq!(socket_inodes(udp_table, udp(8472), true), [444]);
    }

    #[tokio::test]
    async fn ports_held_by_the_nodes_services_are_left_to_them() {
        // The service holds the port: binding it would fail, so the check must not try.
        let service = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let held = tcp(service.local_addr().unwrap().port());
        let report = Preflight::new()
            .check(&check_request(1, vec![held], 10_000), &[held])
            .await;
        assert_eq!(report.held_by_service, vec![held]);
        assert!(report.listening.is_empty());
        assert!(report.checks.iter().all(|c| !c.name.starts_with("port ")));
    }

    #[tokio::test]
    async fn a_new_session_closes_the_listeners_of_the_last_one() {
        let ports = vec![free_port(Protocol::Tcp), free_port(Protocol::Udp)];
        let preflight = Preflight::new();
        let first = preflight
            .check(&check_request(1, ports.clone(), 60_000), &[])
            .await;
        assert_eq!(first.listening, ports);
        // The first session's connections leave TIME_WAIT behind; binding again must still work.
        let old = preflight
            .probe(&probe_request(1, vec![(LOCALHOST, ports.clone())], 2_000))
            .await;
        assert!(old.iter().all(|r| r.ok), "{old:?}");

        let second = preflight
            .check(&check_request(2, ports.clone(), 60_000), &[])
            .await;
        assert_eq!(second.listening, ports, "{:#?}", second.checks);
        let results = preflight
            .probe(&probe_request(2, vec![(LOCALHOST, ports.clone())], 2_000))
            .await;
        assert!(results.iter().all(|r| r.ok), "{results:?}");
    }

    #[tokio::test]
    async fn listeners_close_when_the_hold_runs_out() {
        let port = free_port(Protocol::Tcp);
        let preflight = Preflight::new();
        let report = preflight
            .check(&check_request(3, vec![port], 200), &[])
            .await;
        assert_eq!(report.listening, vec![port]);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let results = preflight
            .probe(&probe_request(3, vec![(LOCALHOST, vec![port])], 1_000))
            .await;
        assert_eq!(error_of(&results[0]), "connection refused");
    }

    #[tokio::test]
    async fn closing_frees_the_ports_before_the_hold_ends() {
        let ports = vec![free_port(Protocol::Tcp), free_port(Protocol::Udp)];
        let preflight = Preflight::new();
        let report = preflight
            .check(&check_request(4, ports.clone(), 60_000), &[])
            .await;
        assert_eq!(report.listening, ports);
        assert!(std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, ports[0].port)).is_err());

        preflight.close_for(1).await;
        std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, ports[0].port))
            .expect("the TCP port is free");
        std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, ports[1].port))
            .expect("the UDP port is free");
    }

    #[tokio::test]
    async fn retrying_a_plan_leaves_a_later_preflights_listeners_open() {
        let ports = vec![free_port(Protocol::Tcp)];
        let bound = || std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, ports[0].port)).is_ok();
        let preflight = Preflight::new();
        preflight
            .check(&check_request(4, ports.clone(), 60_000), &[])
            .await;
        preflight.close_for(1).await;
        assert!(bound(), "plan 1 closes the listeners of its preflight");

        // Another node's preflight, while plan 1 is applied again after a failure.
        preflight
            .check(&check_request(5, ports.clone(), 60_000), &[])
            .await;
        preflight.close_for(1).await;
        assert!(
            !bound(),
            "a retry of plan 1 closed a later preflight's listeners"
        );
        preflight.close_for(2).await;
        assert!(bound(), "plan 2 closes them");
    }

    #[tokio::test]
    async fn a_listener_of_another_session_fails_the_probe() {
        let ports = vec![free_port(Protocol::Tcp), free_port(Protocol::Udp)];
        // Another agent (or a stale session) listens with session 41's banner.
        let stale = Preflight::new();
        stale
            .check(&check_request(41, ports.clone(), 10_000), &[])
            .await;
        let results = Preflight::new()
            .probe(&probe_request(42, vec![(LOCALHOST, ports)], 500))
            .await;
        assert_eq!(
            error_of(&results[0]),
            "wrong answer: the preflight listener of another session (41)"
        );
        // It ignores a datagram with another banner.
        assert_eq!(error_of(&results[1]), "no answer (timed out)");
    }

    #[tokio::test]
    async fn probes_tell_why_they_failed() {
        let closed_tcp = free_port(Protocol::Tcp);
        let closed_udp = free_port(Protocol::Udp);
        // Some other program that greets with something else.
        let other = tokio::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
            .await
            .unwrap();
        let other_port = tcp(other.local_addr().unwrap().port());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = other.accept().await.unwrap();
                stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
            }
        });
        // A program that accepts but says nothing.
        let silent = tokio::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
            .await
            .unwrap();
        let silent_port = tcp(silent.local_addr().unwrap().port());

        let ports = vec![closed_tcp, closed_udp, other_port, silent_port];
        let started = StdInstant::now();
        let results = Preflight::new()
            .probe(&probe_request(5, vec![(LOCALHOST, ports)], 500))
            .await;
        let errors: Vec<&str> = results.iter().map(error_of).collect();
        assert_eq!(
            errors,
            vec![
                "connection refused",
                "port unreachable",
                "wrong answer: connected, but not to the preflight listener",
                "wrong answer: connected, but not to the preflight listener",
            ]
        );
        assert!(started.elapsed() < Duration::from_millis(1_500));
    }

    #[tokio::test]
    async fn many_failing_probes_take_about_one_timeout() {
        // Every kind of slow failure: a TCP listener that never accepts (the connect succeeds
        // through the backlog, the banner never comes), a UDP socket that never answers, and
        // closed ports; on 50 different addresses (all of 127.0.0.0/8 is this host).
        let mute_tcp = tokio::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
            .await
            .unwrap();
        let mute_udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await.unwrap();
        let ports = vec![
            tcp(mute_tcp.local_addr().unwrap().port()),
            udp(mute_udp.local_addr().unwrap().port()),
            free_port(Protocol::Tcp),
            free_port(Protocol::Udp),
        ];
        let targets = (1..=50)
            .map(|i| (IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)), ports.clone()))
            .collect();
        let timeout = Duration::from_millis(600);
        let started = StdInstant::now();
        let results = Preflight::new()
            .probe(&probe_request(9, targets, 600))
            .await;
        let elapsed = started.elapsed();
        assert_eq!(results.len(), 200);
        assert!(results.iter().all(|r| !r.ok), "every probe fails");
        assert!(
            elapsed >= timeout && elapsed < 3 * timeout,
            "took {elapsed:?} for a timeout of {timeout:?}"
        );
    }

    #[tokio::test]
    async fn many_answering_probes_take_milliseconds() {
        let ports = vec![free_port(Protocol::Tcp), free_port(Protocol::Udp)];
        let preflight = Preflight::new();
        preflight
            .check(&check_request(11, ports.clone(), 10_000), &[])
            .await;
        // TCP on 50 addresses of this host. UDP on 127.0.0.1 only: the listener's echo leaves
        // from the address routing picks, and the probe accepts it only from the probed one.
        let mut targets: Vec<_> = (1..=50)
            .map(|i| (IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)), vec![ports[0]]))
            .collect();
        targets[0].1 = ports.clone();
        let started = StdInstant::now();
        let results = preflight.probe(&probe_request(11, targets, 5_000)).await;
        let elapsed = started.elapsed();
        assert_eq!(results.len(), 51);
        assert!(results.iter().all(|r| r.ok), "{results:?}");
        assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    }

    #[tokio::test]
    async fn requirements_the_host_cannot_meet_fail_with_details() {
        let request = PreflightCheck {
            session: 1,
            listen: vec![],
            local: vec![],
            hold_ms: 1_000,
            requirements: Requirements {
                min_memory_bytes: 1 << 50,
                min_cpus: 1_000,
                controller_time_ms: now_ms() - 3_600_000,
                max_clock_offset_ms: 1_000,
                min_kernel: (99, 0),
                kernel_modules: vec!["qb_no_such_module".to_owned()],
            },
        };
        let report = Preflight::new().check(&request, &[]).await;

        let memory = named(&report, "memory");
        assert!(
            !memory.ok && memory.severity == Severity::Error,
            "{memory:?}"
        );
        assert!(
            memory.detail.ends_with(", need 1048576.0 GiB"),
            "{memory:?}"
        );
        let cpus = named(&report, "cpus");
        assert!(!cpus.ok && cpus.detail.ends_with(", need 1000"), "{cpus:?}");
        let kernel = named(&report, "kernel");
        assert!(
            !kernel.ok && kernel.detail.ends_with(", need 99.0 or newer"),
            "{kernel:?}"
        );
        let clock = named(&report, "clock");
        assert!(!clock.ok && clock.severity == Severity::Error, "{clock:?}");
        assert!(clock.detail.starts_with("offset +36"), "{clock:?}");
        assert!(clock.detail.contains("at most ±1000 ms"), "{clock:?}");
        let module = named(&report, "module qb_no_such_module");
        assert!(
            !module.ok && module.severity == Severity::Warning,
            "{module:?}"
        );
        assert_eq!(module.detail, "not loaded and not built in");
    }

    #[tokio::test]
    async fn easy_requirements_pass() {
        let report = Preflight::new()
            .check(&check_request(1, vec![], 1_000), &[])
            .await;
        for name in ["os", "kernel", "cpus", "memory", "clock", "module kernel"] {
            let check = named(&report, name);
            assert!(check.ok, "{check:?}");
            assert!(!check.detail.is_empty(), "{check:?}");
        }
        assert_eq!(report.checks.len(), 7, "{:#?}", report.checks);
        // Swap is whatever this host has: a warning if any.
        let swap = named(&report, "swap");
        assert_eq!(
            swap.ok,
            qb_host::process::Memory::read().swap_bytes == 0,
            "{swap:?}"
        );
        assert_eq!(swap.severity, Severity::Warning);
    }

    #[test]
    fn swap_warns_that_the_kubelet_tolerates_it() {
        let swap = swap_check(2_097_148 * 1024);
        assert!(!swap.ok);
        assert_eq!(swap.severity, Severity::Warning);
        assert_eq!(
            swap.detail,
            "2.0 GiB of swap: the kubelet will run with failSwapOn=false"
        );
        assert_eq!(memory_check(16_318_412 * 1024, 1 << 30).detail, "15.6 GiB");
        assert!(swap_check(0).ok);
    }

    #[test]
    fn kernel_versions_are_read_from_releases() {
        assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.15.0-1051-azure"), Some((5, 15)));
        assert_eq!(kernel_version("4.18.0-513.el8.x86_64"), Some((4, 18)));
        assert_eq!(kernel_version("6.8-rc1"), Some((6, 8)));
        assert_eq!(kernel_version("garbage"), None);
        assert!(kernel_check("4.19.0", (4, 19)).ok);
        assert!(kernel_check("5.4.0", (4, 19)).ok);
        assert!(!kernel_check("4.18.0", (4, 19)).ok);
        let unreadable = kernel_check("garbage", (4, 19));
        assert!(!unreadable.ok);
        assert!(unreadable.detail.contains("cannot read"), "{unreadable:?}");
    }

    #[test]
    fn modules_are_found_loaded_or_built_in() {
        let sys_module = tempfile::tempdir().unwrap();
        std::fs::create_dir(sys_module.path().join("nf_conntrack")).unwrap();
        let proc_modules = "br_netfilter 32768 0 - Live 0x0000000000000000\n\
                            overlay 151552 0 - Live 0x0000000000000000\n";
        for present in ["br_netfilter", "overlay", "nf_conntrack", "nf-conntrack"] {
            assert!(
                module_check(present, proc_modules, sys_module.path()).ok,
                "{present}"
            );
        }
        let missing = module_check("ip_vs", proc_modules, sys_module.path());
        assert!(!missing.ok);
        assert_eq!(missing.name, "module ip_vs");
        let bad = module_check("../etc", proc_modules, sys_module.path());
        assert!(!bad.ok);
        assert_eq!(bad.detail, "not a module name");
    }

    #[test]
    fn clock_offsets_within_the_limit_pass() {
        assert!(clock_check(10_500, 10_000, 500).ok);
        assert!(clock_check(9_500, 10_000, 500).ok);
        let behind = clock_check(9_000, 10_000, 500);
        assert!(!behind.ok);
        assert!(behind.detail.starts_with("offset -1000 ms"), "{behind:?}");
    }

    #[test]
    fn banners_of_other_sessions_are_recognised() {
        assert_eq!(banner_session(&banner(12)), Some(12));
        assert_eq!(banner_session("qb-preflight 12"), None, "no newline");
        assert_eq!(banner_session("SSH-2.0-OpenSSH_9.2\r\n"), None);
    }
}
