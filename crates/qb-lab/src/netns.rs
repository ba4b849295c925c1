//! The lab's network: a private bridge in the root namespace and one network namespace per
//! host, joined by a veth pair.
//!
//! Names and addresses are unique per lab: the bridge `qba<k>` (its creation is the lock on `k`,
//! which the kernel makes atomic), the subnet `10.77.<k>.0/24` with the bridge at `.1` and host
//! `i` at `.(10+i)`, namespaces `qba<k>-<i>`, veths `qba<k>h<i>` (bridge side) and `qba<k>n<i>`
//! (host side). The bridge's alias names its owner: a test process (`pid=<pid>`; a lab whose
//! owner is dead is reclaimed) or a standing lab (`dir=<path>`, torn down by `cargo xtask lab
//! down`).

use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};

/// The range of `k`: 10.77.100.0/24 to 10.77.249.0/24.
const FIRST_K: u32 = 100;
const K_COUNT: u32 = 150;
const ALIAS: &str = "qb-lab ";
const PID_OWNER: &str = "pid=";
/// The most hosts one lab may have (addresses .10 to .109).
pub const MAX_HOSTS: usize = 100;

/// A bridge and its host namespaces. Torn down when dropped (also when a test panics), unless
/// [`Lab::keep`] made it a standing lab.
pub struct Lab {
    k: u32,
    hosts: usize,
    keep: bool,
}

/// Runs `ip ARGS`; the error text when it fails.
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
}

/// Fails, saying why, when the lab cannot exist here.
pub fn require_root_and_ip() -> Result<()> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_default();
    ensure!(
        uid == "0",
        "the network-namespace lab needs root (effective uid is {uid:?})"
    );
    ip(&["-V"]).context("the network-namespace lab needs `ip` (iproute2)")?;
    Ok(())
}

impl Lab {
    /// A lab for this process (a test): reclaimed by the next lab if the process dies without
    /// tearing it down.
    pub fn new(hosts: usize) -> Result<Self> {
        Self::create(hosts, &format!("{PID_OWNER}{}", std::process::id()))
    }

    /// A lab that outlives this process, owned by the directory `dir` (its record).
    pub fn standing(hosts: usize, dir: &std::path::Path) -> Result<Self> {
        Self::create(hosts, &format!("dir={}", dir.display()))
    }

    /// A handle on lab `k` of `hosts` hosts, which exists already (made by [`Lab::standing`]);
    /// dropping it leaves the lab standing ([`Lab::teardown`] removes it).
    pub fn existing(k: u32, hosts: usize) -> Self {
        Self {
            k,
            hosts,
            keep: true,
        }
    }

    fn create(hosts: usize, owner: &str) -> Result<Self> {
        require_root_and_ip()?;
        ensure!(
            (1..=MAX_HOSTS).contains(&hosts),
            "a lab has 1 to {MAX_HOSTS} hosts, not {hosts}"
        );
        make_room_for_neighbours(hosts)?;
        let lab = Self {
            k: claim(owner)?,
            hosts,
            keep: false,
        };
        // From here on `lab` is dropped (and torn down) if anything below fails.
        let bridge = lab.bridge();
        ip(&[
            "addr",
            "add",
            &format!("{}/24", lab.bridge_ip()),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..hosts {
            let (ns, outside, inside) = (lab.netns(i), lab.host_veth(i), lab.inner_veth(i));
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ])?;
            ip(&["link", "set", &outside, "master", &bridge])?;
            ip(&["link", "set", &outside, "up"])?;
            ip(&["link", "set", &inside, "netns", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", lab.host_ip(i)),
                "dev",
                &inside,
            ])?;
            ip(&["-n", &ns, "link", "set", &inside, "up"])?;
        }
        Ok(lab)
    }

    /// Leaves the lab standing when the handle is dropped.
    pub fn keep(mut self) {
        self.keep = true;
    }

    /// The lab's number: its bridge, subnet and namespaces are named after it.
    pub fn k(&self) -> u32 {
        self.k
    }

    pub fn hosts(&self) -> usize {
        self.hosts
    }

    pub fn bridge(&self) -> String {
        format!("qba{}", self.k)
    }

    /// The bridge's address, in the root namespace: where the controller listens.
    pub fn bridge_ip(&self) -> String {
        format!("10.77.{}.1", self.k)
    }

    /// The subnet's first three octets and a dot: `10.77.<k>.`.
    pub fn subnet_prefix(&self) -> String {
        format!("10.77.{}.", self.k)
    }

    pub fn host_ip(&self, i: usize) -> String {
        format!("10.77.{}.{}", self.k, 10 + i)
    }

    pub fn netns(&self, i: usize) -> String {
        format!("qba{}-{i}", self.k)
    }

    /// Host `i`'s veth on the bridge side (in the root namespace): its cable.
    pub fn host_veth(&self, i: usize) -> String {
        format!("qba{}h{i}", self.k)
    }

    pub(crate) fn inner_veth(&self, i: usize) -> String {
        format!("qba{}n{i}", self.k)
    }

    /// Gives every host a default route through the bridge, as hosts of a data center have a
    /// gateway (a host reaches its cluster's Service addresses only through a route). The
    /// bridge never forwards what arrives on it, whatever the machine's `ip_forward`: nothing a
    /// host sends leaves the machine.
    pub fn add_gateway(&self) -> Result<()> {
        let sysctl = format!("/proc/sys/net/ipv4/conf/{}/forwarding", self.bridge());
        std::fs::write(&sysctl, "0").with_context(|| format!("writing {sysctl}"))?;
        for i in 0..self.hosts {
            ip(&[
                "-n",
                &self.netns(i),
                "route",
                "replace",
                "default",
                "via",
                &self.bridge_ip(),
                // The host's own configuration: it survives a power cycle.
                "proto",
                "static",
            ])?;
        }
        Ok(())
    }

    /// Pulls host `i`'s cable: a real partition, both ways.
    pub fn link_down(&self, i: usize) -> Result<()> {
        ip(&["link", "set", &self.host_veth(i), "down"]).map(drop)
    }

    pub fn link_up(&self, i: usize) -> Result<()> {
        ip(&["link", "set", &self.host_veth(i), "up"]).map(drop)
    }

    /// Everything of this lab that still exists: namespaces and links.
    pub fn leftovers(&self) -> Vec<String> {
        leftovers(self.k)
    }

    /// Pids of processes inside host `i`'s network namespace.
    pub fn pids(&self, i: usize) -> Vec<String> {
        ip(&["netns", "pids", &self.netns(i)])
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Kills every process in the hosts' namespaces, then removes the namespaces, links and
    /// bridge; what it could not remove.
    pub fn teardown(&self) -> Vec<String> {
        for i in 0..self.hosts {
            for pid in self.pids(i) {
                crate::kill(&pid);
            }
        }
        let mut errors = Vec::new();
        for i in 0..self.hosts {
            // Deleting a namespace destroys the veth end inside it and so its peer; delete the
            // peer too, in case the namespace was never given its end.
            if let Err(e) = ip(&["netns", "del", &self.netns(i)]) {
                errors.push(format!("{e:#}"));
            }
            let _ = ip(&["link", "del", &self.host_veth(i)]);
        }
        if let Err(e) = ip(&["link", "del", &self.bridge()]) {
            errors.push(format!("{e:#}"));
        }
        errors.retain(|e| !e.contains("No such file") && !e.contains("Cannot find device"));
        errors.extend(self.leftovers().into_iter().map(|l| format!("{l} is left")));
        errors
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let problems = self.teardown();
        if !problems.is_empty() {
            eprintln!("lab {} teardown: {problems:?}", self.k);
        }
    }
}

/// The kernel keeps one ARP table for all network namespaces, with one limit (`gc_thresh3`,
/// 1024 entries by default): a lab of `n` hosts that all talk to each other needs `n * (n - 1)`
/// entries, and past the limit the kernel drops packets ("neighbor table overflow"). Separate
/// machines have a table each; the lab raises the shared limits (never lowers them).
fn make_room_for_neighbours(hosts: usize) -> Result<()> {
    let wanted = (hosts * hosts).max(1024) * 4;
    for (name, share) in [("gc_thresh1", 8), ("gc_thresh2", 2), ("gc_thresh3", 1)] {
        let path = format!("/proc/sys/net/ipv4/neigh/default/{name}");
        let current: usize = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let value = wanted / share;
        if current < value {
            std::fs::write(&path, value.to_string())
                .with_context(|| format!("raising {path} to {value}"))?;
        }
    }
    Ok(())
}

/// Names of namespaces and links of lab `k` that exist.
fn leftovers(k: u32) -> Vec<String> {
    let ns_prefix = format!("qba{k}-");
    let link = format!("qba{k}");
    let mut found: Vec<String> = ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&ns_prefix))
        .map(str::to_owned)
        .collect();
    found.extend(
        ip(&["-o", "link", "show"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n))
            .filter(|n| {
                n.strip_prefix(&link).is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with('h') || rest.starts_with('n')
                })
            })
            .map(str::to_owned),
    );
    found
}

/// Claims a free `k` by creating its bridge, and labels the bridge with its owner.
fn claim(owner: &str) -> Result<u32> {
    reclaim_stale();
    let in_use = ip(&["-o", "-4", "addr", "show"])?;
    for step in 0..K_COUNT {
        let k = FIRST_K + (std::process::id() + step) % K_COUNT;
        if in_use.contains(&format!(" 10.77.{k}.")) {
            continue;
        }
        let bridge = format!("qba{k}");
        let mut reclaimed = false;
        loop {
            match ip(&["link", "add", &bridge, "type", "bridge"]) {
                Ok(_) => {
                    ip(&["link", "set", &bridge, "alias", &format!("{ALIAS}{owner}")])?;
                    return Ok(k);
                }
                Err(e) if is_exists(&e) && !reclaimed && stale(&bridge) => {
                    eprintln!("reclaiming lab {k}, left behind by a dead test process");
                    Lab::existing(k, MAX_HOSTS).teardown();
                    reclaimed = true;
                }
                Err(e) if is_exists(&e) => break,
                Err(e) => return Err(e.context("cannot create the lab's bridge")),
            }
        }
    }
    bail!(
        "no free lab subnet in 10.77.{FIRST_K}-{}.0/24",
        FIRST_K + K_COUNT - 1
    )
}

/// Tears down every lab whose test process died without doing it (killed at a timeout): its
/// components would go on running, and their cgroups bear the same host names as a new lab's.
fn reclaim_stale() {
    let Ok(bridges) = ip(&["-o", "link", "show", "type", "bridge"]) else {
        return;
    };
    for name in link_names(&bridges) {
        let Some(k) = name.strip_prefix("qba").and_then(|k| k.parse::<u32>().ok()) else {
            continue;
        };
        if stale(name) {
            eprintln!("reclaiming lab {k}, left behind by a dead test process");
            let problems = Lab::existing(k, MAX_HOSTS).teardown();
            if !problems.is_empty() {
                eprintln!("lab {k} teardown: {problems:?}");
            }
        }
    }
}

/// The interface names in `ip -o link show` output (without the `@peer` of a veth).
pub(crate) fn link_names(output: &str) -> impl Iterator<Item = &str> {
    output
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
}

fn is_exists(e: &anyhow::Error) -> bool {
    format!("{e:#}").contains("File exists")
}

/// `true` when `bridge` was made by a test process that no longer exists.
fn stale(bridge: &str) -> bool {
    let Ok(text) = ip(&["-o", "link", "show", bridge]) else {
        return false;
    };
    let Some(owner) = text
        .split(&format!("{ALIAS}{PID_OWNER}"))
        .nth(1)
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .filter(|pid| !pid.is_empty())
    else {
        // No alias yet (its owner is setting it up right now), or a standing lab.
        return false;
    };
    !std::path::Path::new("/proc").join(owner).exists()
}

#[cfg(test)]
mod tests {
    #[test]
    fn link_names_drop_the_peer_of_a_veth() {
        let output = "1: lo: <LOOPBACK,UP> mtu 65536 qdisc noqueue state UNKNOWN\n\
                      7: qba120: <BROADCAST,MULTICAST,UP> mtu 1500 qdisc noqueue\n\
                      9: veth1a2b@if3: <BROADCAST,MULTICAST,UP> mtu 1500 master qb0\n";
        let names: Vec<&str> = super::link_names(output).collect();
        assert_eq!(names, ["lo", "qba120", "veth1a2b"]);
    }
}
