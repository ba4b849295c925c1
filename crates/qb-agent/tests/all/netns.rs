//! A lab of hosts on one machine: a private bridge in the root namespace and one network
//! namespace per host, joined by a veth pair. Everything is torn down when the lab is dropped,
//! also when the test panics.
//!
//! Names and addresses are unique per lab: the bridge `qba<k>` (its creation is the lock on `k`,
//! which the kernel makes atomic), the subnet `10.77.<k>.0/24` with the bridge at `.1` and host
//! `i` at `.(10+i)`, namespaces `qba<k>-<i>`, veths `qba<k>h<i>` (bridge side) and `qba<k>n<i>`
//! (host side). `k` starts from the test process's pid, so parallel tests get different labs. A
//! lab left behind by a killed test (its bridge's alias names a dead pid) is reclaimed.

use std::process::Command;

use crate::harness::run;

/// The range of `k`: 10.77.100.0/24 to 10.77.249.0/24.
const FIRST_K: u32 = 100;
const K_COUNT: u32 = 150;
const ALIAS: &str = "qb-agent-test pid=";

pub struct Lab {
    k: u32,
    hosts: usize,
}

/// Runs `ip ARGS`; the error text when it fails.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = run(Command::new("ip").args(args));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[track_caller]
fn must(args: &[&str]) -> String {
    ip(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Fails the test, loudly, when the lab cannot exist here.
fn require_root_and_ip() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "the network-namespace lab needs root (effective uid is {uid:?}); CI runs as root"
    );
    let version = Command::new("ip").arg("-V").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "the network-namespace lab needs `ip` (iproute2): {version:?}"
    );
}

impl Lab {
    /// A bridge and `hosts` namespaces, each with loopback up and its address on the bridge.
    pub fn new(hosts: usize) -> Self {
        require_root_and_ip();
        assert!(hosts <= 100, "at most 100 hosts per lab");
        make_room_for_neighbours(hosts);
        let lab = Self { k: claim(), hosts };
        // From here on `lab` is dropped (and torn down) if anything below panics.
        let bridge = lab.bridge();
        must(&[
            "addr",
            "add",
            &format!("{}/24", lab.bridge_ip()),
            "dev",
            &bridge,
        ]);
        must(&["link", "set", &bridge, "up"]);
        for i in 0..hosts {
            let (ns, outside, inside) = (lab.netns(i), lab.host_veth(i), lab.inner_veth(i));
            must(&["netns", "add", &ns]);
            must(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ]);
            must(&["link", "set", &outside, "master", &bridge]);
            must(&["link", "set", &outside, "up"]);
            must(&["link", "set", &inside, "netns", &ns]);
            must(&["-n", &ns, "link", "set", "lo", "up"]);
            must(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", lab.host_ip(i)),
                "dev",
                &inside,
            ]);
            must(&["-n", &ns, "link", "set", &inside, "up"]);
        }
        lab
    }

    fn bridge(&self) -> String {
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

    fn inner_veth(&self, i: usize) -> String {
        format!("qba{}n{i}", self.k)
    }

    /// Pulls host `i`'s cable: a real partition, both ways.
    pub fn link_down(&self, i: usize) {
        must(&["link", "set", &self.host_veth(i), "down"]);
    }

    pub fn link_up(&self, i: usize) {
        must(&["link", "set", &self.host_veth(i), "up"]);
    }

    /// Everything of this lab that still exists: namespaces and links.
    pub fn leftovers(&self) -> Vec<String> {
        leftovers(self.k)
    }

    /// Pids of processes inside host `i`'s namespace.
    pub fn pids(&self, i: usize) -> Vec<String> {
        ip(&["netns", "pids", &self.netns(i)])
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first: anything still running in our namespaces was started by this test
        // (they are private to it); end each by its pid.
        for i in 0..self.hosts {
            for pid in self.pids(i) {
                let _ = run(Command::new("kill").args(["-KILL", &pid]));
            }
        }
        let mut errors = Vec::new();
        for i in 0..self.hosts {
            // Deleting a namespace destroys the veth end inside it and so its peer; delete the
            // peer too, in case the namespace was never given its end.
            if let Err(e) = ip(&["netns", "del", &self.netns(i)]) {
                errors.push(e);
            }
            let _ = ip(&["link", "del", &self.host_veth(i)]);
        }
        if let Err(e) = ip(&["link", "del", &self.bridge()]) {
            errors.push(e);
        }
        let left = self.leftovers();
        if !left.is_empty() || !errors.is_empty() {
            eprintln!(
                "lab {} teardown: errors {errors:?}, left over {left:?}",
                self.k
            );
        }
    }
}

/// The kernel keeps one ARP table for all network namespaces, with one limit (`gc_thresh3`,
/// 1024 entries by default): a lab of `n` hosts that all talk to each other needs `n * (n - 1)`
/// entries, and past the limit the kernel drops packets ("neighbor table overflow"). Separate
/// machines have a table each; the lab raises the shared limits (never lowers them).
fn make_room_for_neighbours(hosts: usize) {
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
                .unwrap_or_else(|e| panic!("raising {path} to {value}: {e}"));
        }
    }
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

/// Claims a free `k` by creating its bridge, and labels the bridge with our pid.
fn claim() -> u32 {
    let pid = std::process::id();
    let in_use = ip(&["-o", "-4", "addr", "show"]).expect("ip addr show");
    for step in 0..K_COUNT {
        let k = FIRST_K + (pid + step) % K_COUNT;
        if in_use.contains(&format!(" 10.77.{k}.")) {
            continue;
        }
        let bridge = format!("qba{k}");
        let mut reclaimed = false;
        loop {
            match ip(&["link", "add", &bridge, "type", "bridge"]) {
                Ok(_) => {
                    must(&["link", "set", &bridge, "alias", &format!("{ALIAS}{pid}")]);
                    return k;
                }
                Err(e) if e.contains("File exists") && !reclaimed && stale(&bridge) => {
                    eprintln!("reclaiming lab {k}, left behind by a dead test process");
                    for name in leftovers(k) {
                        if name.contains('-') {
                            let _ = ip(&["netns", "del", &name]);
                        } else if name != bridge {
                            let _ = ip(&["link", "del", &name]);
                        }
                    }
                    let _ = ip(&["link", "del", &bridge]);
                    reclaimed = true;
                }
                Err(e) if e.contains("File exists") => break,
                Err(e) => panic!("cannot create the lab's bridge: {e}"),
            }
        }
    }
    panic!(
        "no free lab subnet in 10.77.{FIRST_K}-{}.0/24",
        FIRST_K + K_COUNT - 1
    )
}

/// `true` when `bridge` was made by a test process that no longer exists.
fn stale(bridge: &str) -> bool {
    let Ok(text) = ip(&["-o", "link", "show", bridge]) else {
        return false;
    };
    let Some(owner) = text
        .split(ALIAS)
        .nth(1)
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .filter(|pid| !pid.is_empty())
    else {
        // No alias yet: its owner is setting it up right now.
        return false;
    };
    !std::path::Path::new("/proc").join(owner).exists()
}

/// The lab's own self-check: a panicking test leaves nothing behind, processes included.
#[test]
fn the_lab_is_torn_down_even_when_the_test_panics() {
    let (k, pid) = {
        let lab = Lab::new(2);
        let k = lab.k;
        assert_eq!(lab.leftovers().len(), 5, "{:?}", lab.leftovers());
        let mut sleeper = Command::new("ip")
            .args(["netns", "exec", &lab.netns(1), "sleep", "60"])
            .spawn()
            .expect("start a process in the namespace");
        let pid = sleeper.id().to_string();
        crate::harness::poll(
            "the process to be in the namespace",
            crate::harness::SHORT,
            || {
                if lab.pids(1).contains(&pid) {
                    Ok(())
                } else {
                    Err(format!("{:?}", lab.pids(1)))
                }
            },
        );
        let lab_in_a_panic = std::panic::AssertUnwindSafe(lab);
        let result = std::panic::catch_unwind(move || {
            let _lab = lab_in_a_panic;
            panic!("a test fails half-way");
        });
        assert!(result.is_err());
        // Reap our child; the lab's teardown killed it.
        let status = crate::harness::poll("the process to end", crate::harness::SHORT, || {
            sleeper
                .try_wait()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "still running".to_owned())
        });
        assert!(!status.success());
        (k, pid)
    };
    assert_eq!(leftovers(k), Vec::<String>::new());
    assert!(!std::path::Path::new("/proc").join(&pid).exists());
}
