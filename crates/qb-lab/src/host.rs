//! Entering a lab host: its network namespace, and a private mount namespace in which the
//! host's own copy of each system directory cluster components use is mounted over the
//! machine's, so components of different hosts never share files — or, for a host of another
//! distribution, in which the host's whole root filesystem (made with debootstrap) is the root.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result};

/// The system directories cluster components live in; each lab host has its own.
pub const HOST_DIRS: &[&str] = &[
    "/etc/qb",
    "/var/lib/qb",
    "/var/log/qb",
    "/run/qb",
    // Where the kubelet, containerd and the CNI plugins keep what no flag moves: pod logs,
    // pods' network namespaces, CNI results. Separate machines have their own.
    "/var/log/pods",
    "/var/log/containers",
    "/run/netns",
    "/var/lib/cni",
];

/// Where the agent's packages install its configuration and state.
pub const AGENT_DIRS: &[&str] = &["/etc/qb-agent", "/var/lib/qb-agent"];

/// How to start a program on a lab host.
pub struct Host<'a> {
    /// The host's network namespace (`None`: the machine's).
    pub netns: Option<&'a str>,
    /// Where the host's directories really are: `root/<dir>` for each of `dirs`.
    pub root: &'a Path,
    pub dirs: &'a [&'a str],
    /// `root` is the host's whole root filesystem (a distribution's, as debootstrap makes it):
    /// programs run chrooted into it, with its own `/proc` and `/sys` and the machine's `/dev`
    /// and cgroups; `dirs` are part of it already and not mounted. The program is a path in it.
    pub chroot: bool,
    /// The host's own name, as a separate machine has (a new UTS namespace); `None` keeps the
    /// machine's.
    pub hostname: Option<&'a str>,
    /// The host's own `/etc/machine-id`; `None` keeps what the host's files have.
    pub machine_id: Option<&'a str>,
    /// Kill the program when its parent dies (`setpriv --pdeathsig`): for tests, whose hosts must
    /// not outlive them.
    pub die_with_parent: bool,
}

impl Host<'_> {
    /// `program` on this host; add its arguments to the command.
    pub fn command(&self, program: &Path) -> Result<Command> {
        let mut script = String::from("set -e; ");
        if let Some(machine_id) = self.machine_id {
            let file = self.root.join("etc/machine-id");
            std::fs::create_dir_all(self.root.join("etc"))?;
            std::fs::write(&file, format!("{machine_id}\n"))
                .with_context(|| format!("writing {}", file.display()))?;
            if !self.chroot {
                script.push_str(&format!(
                    "mount --bind '{}' /etc/machine-id; ",
                    file.display()
                ));
            }
        }
        if let Some(name) = self.hostname {
            script.push_str(&format!("echo '{name}' > /proc/sys/kernel/hostname; "));
        }
        if self.chroot {
            // The root is a mount point, as a host's is (the kubelet looks for the mount its
            // directories are on); its own /proc (of the namespaces it runs in) and /sys (of its
            // network namespace); the machine's devices and cgroup hierarchies.
            let r = self.root.display();
            script.push_str(&format!(
                "mount --bind '{r}' '{r}'; mount -t proc proc '{r}/proc'; mount -t sysfs sysfs '{r}/sys'; \
                 mount --rbind /sys/fs/cgroup '{r}/sys/fs/cgroup'; mount --rbind /dev '{r}/dev'; "
            ));
        } else {
            // The host's own resolvers, when it has them.
            let resolv = self.root.join("etc/resolv.conf");
            if resolv.is_file() {
                script.push_str(&format!(
                    "mount --bind '{}' /etc/resolv.conf; ",
                    resolv.display()
                ));
            }
            for dir in self.dirs {
                let private = self.root.join(dir.trim_start_matches('/'));
                std::fs::create_dir_all(&private)
                    .with_context(|| format!("creating {}", private.display()))?;
                // The mount point must exist on the machine; it stays empty there.
                std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
                script.push_str(&format!("mount --bind '{}' '{dir}'; ", private.display()));
            }
        }
        if self.netns.is_some() && !self.chroot {
            // The namespace's own sysfs (its network devices), as `ip netns exec` mounts it, but
            // keeping the machine's cgroup hierarchies, which `ip netns exec` would hide: the
            // kubelet and the agent need them.
            let cgroup = self.root.join(".cgroup");
            std::fs::create_dir_all(&cgroup)
                .with_context(|| format!("creating {}", cgroup.display()))?;
            let cgroup = cgroup.display();
            script.push_str(&format!(
                "mount --rbind /sys/fs/cgroup '{cgroup}'; mount -t sysfs sysfs /sys; \
                 mount --move '{cgroup}' /sys/fs/cgroup; "
            ));
        }
        let chroot = if self.chroot {
            format!("chroot '{}' ", self.root.display())
        } else {
            String::new()
        };
        if self.die_with_parent {
            script.push_str(&format!(r#"exec setpriv --pdeathsig KILL -- {chroot}"$@""#));
        } else {
            script.push_str(&format!(r#"exec {chroot}"$@""#));
        }
        let mut cmd = match self.netns {
            Some(ns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net=/run/netns/{ns}")).arg("unshare");
                cmd
            }
            None => Command::new("unshare"),
        };
        cmd.args(["--mount", "--propagation", "private"]);
        if self.hostname.is_some() {
            cmd.arg("--uts");
        }
        cmd.args(["sh", "-c", &script, "sh"]).arg(program);
        cmd.env("NO_COLOR", "1");
        Ok(cmd)
    }
}

/// Host `i` of `lab`, the node `node` with its directories under `root`, loses power: every
/// process of it ends at once (those in its network namespace, and those in its cgroups
/// `/qb/<node>`, where pods run in network namespaces of their own), and what a reboot does not
/// keep goes: its cgroups, its `/run` directories (a tmpfs), and the routes, links and packet
/// filter rules made since it booted. Its disk and its configured routes (`proto static`) stay. Starting its agent again is the boot.
pub fn power_off(lab: &crate::Lab, i: usize, node: &str, root: &Path) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        let mut pids = lab.pids(i);
        pids.extend(crate::cgroups::pids(node));
        if pids.is_empty() {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "processes of {node} keep running: {pids:?}"
        );
        for pid in &pids {
            crate::kill(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let left = crate::cgroups::remove(&[node.to_owned()]);
    anyhow::ensure!(left.is_empty(), "{node}: {left:?} remain");
    for run in HOST_DIRS.iter().filter(|d| d.starts_with("/run/")) {
        let dir = root.join(run.trim_start_matches('/'));
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.with_context(|| format!("emptying {}", path.display()))?;
        }
    }
    let ns = lab.netns(i);
    let ip = |args: &[&str]| crate::netns::ip(&[&["-n", &ns], args].concat());
    // Routes the kernel did not add for an address, nor the host's configuration (its gateway).
    for route in ip(&["-o", "route", "show"])?.lines() {
        if !route.contains("proto kernel") && !route.contains("proto static") {
            let spec: Vec<&str> = route.split_whitespace().collect();
            ip(&[&["route", "del"], &spec[..]].concat())?;
        }
    }
    // Links other than loopback and the host's cable (bridges and veths of pods).
    for name in crate::netns::link_names(&ip(&["-o", "link", "show"])?) {
        if name != "lo" && name != lab.inner_veth(i) {
            // A pod's veth goes with its peer; it may be gone already.
            let _ = ip(&["link", "del", name]);
        }
    }
    let out = Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "flush", "ruleset"])
        .output()
        .context("running nft (install nftables)")?;
    anyhow::ensure!(
        out.status.success(),
        "flushing {node}'s packet filter: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}
