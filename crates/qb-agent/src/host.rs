//! What the agent reports about its host: facts (what the host is) and metrics (how it is).

use std::net::IpAddr;
use std::path::Path;

use qb_agent_proto::HostMetrics;
use qb_api::{InterfaceKind, NetInterface, NodeFacts};

/// The host's facts, read fresh. `route_source`: the local address of the agent's connection
/// to the controller, when it has one.
pub fn facts(hostname_override: Option<&str>, route_source: Option<IpAddr>) -> NodeFacts {
    let uname = rustix::system::uname();
    let hostname = hostname_override
        .map(str::to_owned)
        .unwrap_or_else(|| uname.nodename().to_string_lossy().into_owned());
    let interfaces = interfaces(Path::new("/sys/class/net"));
    let mut addresses: Vec<IpAddr> = interfaces
        .iter()
        .flat_map(|i| i.addresses.iter().copied())
        .collect();
    addresses.sort();
    addresses.dedup();
    NodeFacts {
        hostname,
        os: os_name(&std::fs::read_to_string("/etc/os-release").unwrap_or_default()),
        kernel: uname.release().to_string_lossy().into_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        cpus: std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
        memory_bytes: qb_host::process::Memory::read().total_bytes,
        addresses,
        interfaces,
        route_source: route_source.filter(|ip| !ip.is_loopback() && !ip.is_unspecified()),
    }
}

/// The host's interfaces but loopback, with their addresses and what kind they are (read from
/// `sys_net`, the network namespace's `/sys/class/net`), sorted by name.
fn interfaces(sys_net: &Path) -> Vec<NetInterface> {
    let mut by_name: std::collections::BTreeMap<String, Vec<IpAddr>> = Default::default();
    for i in if_addrs::get_if_addrs().unwrap_or_default() {
        if !i.is_loopback() {
            by_name.entry(i.name.clone()).or_default().push(i.ip());
        }
    }
    by_name
        .into_iter()
        .map(|(name, mut addresses)| {
            addresses.sort();
            addresses.dedup();
            let dir = sys_net.join(&name);
            NetInterface {
                kind: interface_kind(&dir),
                master: std::fs::read_link(dir.join("master"))
                    .ok()
                    .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned())),
                name,
                addresses,
            }
        })
        .collect()
}

/// An interface's kind from its sysfs directory.
fn interface_kind(dir: &Path) -> InterfaceKind {
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();
    let devtype = read("uevent")
        .lines()
        .find_map(|l| l.strip_prefix("DEVTYPE=").map(str::to_owned))
        .unwrap_or_default();
    // ARPHRD_ETHER is 1; tunnels have their own link types (ipip 768, sit 776, gre 778,
    // none 65534 for WireGuard and tun).
    let link_type: u32 = read("type").trim().parse().unwrap_or(1);
    let peer_elsewhere = read("iflink").trim() != read("ifindex").trim();
    if dir.join("bridge").is_dir() {
        InterfaceKind::Bridge
    } else if dir.join("bonding").is_dir() {
        InterfaceKind::Bond
    } else if devtype == "vlan" {
        InterfaceKind::Vlan
    } else if matches!(devtype.as_str(), "vxlan" | "geneve" | "wireguard") || link_type != 1 {
        InterfaceKind::Tunnel
    } else if dir.join("device").exists() {
        InterfaceKind::Physical
    } else if devtype.is_empty() && peer_elsewhere {
        InterfaceKind::Veth
    } else {
        InterfaceKind::Virtual
    }
}

/// `PRETTY_NAME` of an os-release file.
fn os_name(os_release: &str) -> String {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Busy and total CPU time from /proc/stat, to turn into a percentage between two samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuSample {
    busy: u64,
    total: u64,
}

fn cpu_sample(stat: &str) -> CpuSample {
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return CpuSample::default();
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    // idle + iowait are not busy.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    CpuSample {
        busy: total.saturating_sub(idle),
        total,
    }
}

/// Samples the host's load. `previous` is the CPU sample of the last call.
pub struct Metrics {
    previous: CpuSample,
}

impl Metrics {
    /// Starts sampling: the first sample's CPU use is since now.
    pub fn start() -> Self {
        Self {
            previous: cpu_sample(&std::fs::read_to_string("/proc/stat").unwrap_or_default()),
        }
    }

    pub fn sample(&mut self, state_dir: &Path) -> HostMetrics {
        let now = cpu_sample(&std::fs::read_to_string("/proc/stat").unwrap_or_default());
        let (busy, total) = (
            now.busy.saturating_sub(self.previous.busy),
            now.total.saturating_sub(self.previous.total),
        );
        self.previous = now;
        let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load: Vec<f32> = loadavg
            .split_whitespace()
            .take(3)
            .filter_map(|v| v.parse().ok())
            .collect();
        let memory = qb_host::process::Memory::read();
        let (disk_total, disk_available) = match rustix::fs::statvfs(state_dir) {
            Ok(s) => (s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize),
            Err(_) => (0, 0),
        };
        let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
        HostMetrics {
            cpu_percent: if total == 0 {
                0.0
            } else {
                (busy as f64 * 100.0 / total as f64) as f32
            },
            load1: load.first().copied().unwrap_or(0.0),
            load5: load.get(1).copied().unwrap_or(0.0),
            load15: load.get(2).copied().unwrap_or(0.0),
            memory_total_bytes: memory.total_bytes,
            memory_available_bytes: memory.available_bytes,
            disk_total_bytes: disk_total,
            disk_available_bytes: disk_available,
            uptime_seconds: uptime
                .split('.')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            etcd: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(
            os_name("NAME=x\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"),
            "Debian GNU/Linux 12 (bookworm)"
        );
        assert_eq!(os_name(""), "unknown");
        let a = cpu_sample("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3\n");
        assert_eq!(
            a,
            CpuSample {
                busy: 200,
                total: 1000
            }
        );
    }

    #[test]
    fn interface_kinds_come_from_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        let make = |name: &str, files: &[(&str, &str)], dirs: &[&str]| {
            let dir = sys.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for (file, content) in files {
                std::fs::write(dir.join(file), content).unwrap();
            }
            for sub in dirs {
                std::fs::create_dir_all(dir.join(sub)).unwrap();
            }
            dir
        };
        let ether = [
            ("type", "1\n"),
            ("ifindex", "4\n"),
            ("iflink", "4\n"),
            ("uevent", "INTERFACE=x\n"),
        ];
        let card = make("eth0", &ether, &["device"]);
        let bridge = make("qb0", &ether, &["bridge"]);
        let bond = make("bond0", &ether, &["bonding"]);
        let vlan = make(
            "eth0.7",
            &[("type", "1\n"), ("uevent", "DEVTYPE=vlan\n")],
            &[],
        );
        let vxlan = make(
            "vx0",
            &[("type", "1\n"), ("uevent", "DEVTYPE=vxlan\n")],
            &[],
        );
        let wg = make("wg0", &[("type", "65534\n")], &[]);
        let veth = make(
            "veth9",
            &[("type", "1\n"), ("ifindex", "9\n"), ("iflink", "8\n")],
            &[],
        );
        let dummy = make("dummy0", &ether, &[]);
        assert_eq!(interface_kind(&card), InterfaceKind::Physical);
        assert_eq!(interface_kind(&bridge), InterfaceKind::Bridge);
        assert_eq!(interface_kind(&bond), InterfaceKind::Bond);
        assert_eq!(interface_kind(&vlan), InterfaceKind::Vlan);
        assert_eq!(interface_kind(&vxlan), InterfaceKind::Tunnel);
        assert_eq!(interface_kind(&wg), InterfaceKind::Tunnel);
        assert_eq!(interface_kind(&veth), InterfaceKind::Veth);
        assert_eq!(interface_kind(&dummy), InterfaceKind::Virtual);
    }

    #[test]
    fn facts_and_metrics_of_this_host_are_plausible() {
        let f = facts(None, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(f.route_source, None, "loopback is no route source");
        assert!(!f.hostname.is_empty() && !f.kernel.is_empty());
        assert_eq!(f.arch, std::env::consts::ARCH);
        assert!(f.cpus >= 1 && f.memory_bytes > 0);
        let mut m = Metrics::start();
        let sample = m.sample(Path::new("/"));
        assert!(
            sample.memory_total_bytes >= sample.memory_available_bytes
                && sample.memory_total_bytes > 0
        );
        assert!(sample.disk_total_bytes > 0 && (0.0..=100.0).contains(&sample.cpu_percent));
        assert_eq!(facts(Some("override"), None).hostname, "override");
    }
}
