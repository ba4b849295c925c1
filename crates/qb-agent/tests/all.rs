//! End to end: real `qb-agent` processes against a real `qb-controller` process.
//!
//! - `lab`: three hosts, each a network namespace on a private bridge, register, are authorized
//!   and pinged, one is cut off and comes back, one is deauthorized.
//! - `security`: wrong CA pin, refused bootstrap tokens, re-registration, a stolen certificate
//!   (also after the host registers again), an agent deauthorized while down, a second tenant,
//!   and hostile frames on the channel (agents on 127.0.0.1).
//! - `binary`, `distros`: the agent needs only the C library; the one that ships needs glibc
//!   2.17 at most and is stripped; every binary of the bundle is static. The shipped agent
//!   registers from a Debian 11 root (debootstrap, cached) that has no machine id; a Debian 11
//!   host and a Debian 12 host, each installed with `dpkg -i` of the controller's package, form
//!   a cluster that runs pods and survives an upgrade of the agent's package on both.
//! - `identity`: a cloned host (another host with the same machine id) is refused while the
//!   first is online, reported to the operator, and the first keeps working.
//! - `engine`: the cluster engine on real etcd: a cluster forms, grows, refuses an unsafe
//!   detach, shrinks safely; preflight; tampered plans and artifacts; crashes.
//! - `crashes`: the controller killed at each of its crash points during a registration, two
//!   attaches and a detach on real etcd; each finishes once, the store stays consistent.
//! - `disk_full`: the hosts of a cluster share one small file system that fills up before,
//!   during and after the install; agents stay connected and say why, the cluster recovers.
//! - `kubernetes`: real Kubernetes 1.20.2 clusters from the bundle `cargo xtask bundle` builds,
//!   used as people use them: a workload on every host, pod-to-pod between every pair of hosts
//!   and a Service from every host and pod, after a master is cut off, a host power-cycled and
//!   one more attached; hosts reused in a second cluster and left as they were before.
//! - `addons`: qb's cluster DNS in a real 3-host cluster: pods find Services by name (ClusterIP
//!   to every host, SRV, headless, other names from the hosts' resolver), a NodePort answers on
//!   every host, the add-on comes back when deleted and answers while every API server is frozen.
//! - `faults`: in a real Kubernetes cluster: the controller and an agent killed mid-install, a
//!   host power-cycled, a master's cable pulled during the install.
//! - `standing`: the standing lab of `cargo xtask lab`: agents installed from the controller's
//!   tarball, and a teardown that leaves nothing, also after a crash or a failed start.
//! - `proxy`: the Kubernetes API proxy: plain `kubectl` with the kubeconfig `qb` writes reaches
//!   a real cluster through the controller and the agents' tunnels, as the qb user.
//! - `replicas`: two controller replicas on one PostgreSQL: agents held by one, the engine and
//!   the API on the other, work relayed between them; agents move when their replica dies.
//! - `ui`: the web UI in a real headless Chromium (`browser`): an operator authorizes hosts,
//!   creates a cluster, attaches nodes and sees it become ready live, detaches one; a viewer is
//!   offered no change and its forged requests are refused. Screenshots go to
//!   `target/tmp/ui-screenshots`.
//! - `upgrades`: a cluster moved to a bundle with etcd 3.5: its members change one at a time
//!   while a client writes, also across a controller killed in the middle, and etcd never
//!   loses its quorum. (The add-ons' used Kubernetes
//!   cluster is upgraded the same way, to etcd 3.5 and then to Kubernetes built again, while a
//!   pod fetches a Service and `kubectl` lists pods through the proxy.)
//! - `agent_upgrades`: three hosts' agents upgrade themselves to the build the controller
//!   ships, the first alone, across a controller killed in the middle and a host offline; a
//!   build that cannot reach the controller goes back on the first host and stops the upgrade.
//! - `netns`: the lab helper itself, and a check that it leaves nothing behind when a test panics.
//!
//! The controller binary is `$QB_CONTROLLER_BIN` if set, else built with `cargo build -p
//! qb-controller` into the same target directory as `qb-agent`. The namespace lab needs root and
//! `ip` (iproute2); without them the tests fail, they are never skipped.
//!
//! One test binary: the helpers live in `tests/all/`.

#[path = "all/addons.rs"]
mod addons;
#[path = "all/agent_upgrades.rs"]
mod agent_upgrades;
#[path = "all/alerting.rs"]
mod alerting;
#[path = "all/binary.rs"]
mod binary;
#[path = "all/browser.rs"]
mod browser;
#[path = "all/channel.rs"]
mod channel;
#[path = "all/crashes.rs"]
mod crashes;
#[path = "all/disk_full.rs"]
mod disk_full;
#[path = "all/distros.rs"]
mod distros;
#[path = "all/engine.rs"]
mod engine;
#[path = "all/faults.rs"]
mod faults;
#[path = "all/harness.rs"]
mod harness;
#[path = "all/http.rs"]
mod http;
#[path = "all/identity.rs"]
mod identity;
#[path = "all/kubernetes.rs"]
mod kubernetes;
#[path = "all/lab.rs"]
mod lab;
#[path = "all/netns.rs"]
mod netns;
#[path = "all/proxy.rs"]
mod proxy;
#[path = "all/replicas.rs"]
mod replicas;
#[path = "all/security.rs"]
mod security;
#[path = "all/snapshots.rs"]
mod snapshots;
#[path = "all/standing.rs"]
mod standing;
#[path = "all/ui.rs"]
mod ui;
#[path = "all/upgrades.rs"]
mod upgrades;
