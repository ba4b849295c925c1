//! The agent as it ships, on other distributions. Each host has a root filesystem of its own,
//! a Debian 11 or Debian 12 root made with debootstrap (minbase, plus the tools a node needs:
//! no machine id, no systemd), its own network namespace, and a private mount namespace in which
//! it is chrooted, with its own /proc and /sys. `cargo xtask test` makes the roots once and
//! caches them; each test copies them.
//!
//! - The shipped agent registers from a Debian 11 root (glibc 2.31) with no machine id.
//! - A cluster of a Debian 11 host and a Debian 12 host, each installed as an administrator
//!   does — the controller's `.deb`, `dpkg -i` — becomes ready, runs pods on both that reach
//!   each other and a Service, and survives a package upgrade of the agent on both: the API
//!   balancer, a process of its own, keeps serving meanwhile, its connections unbroken.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::json;

use crate::engine::{roles, wait_online, wait_ready};
use crate::harness::{Agent, AgentConfig, Controller, Proc, SHORT, poll, run};
use crate::http::online;
use crate::kubernetes::{
    BRING_UP, PodCgroups, check_traffic, import_bundle, kubectl, wait_nodes_ready, web, web_pods,
};
use qb_lab::Lab;

const DEBIAN_11: &str = "QB_DEBIAN_11_ROOT";
const DEBIAN_12: &str = "QB_DEBIAN_12_ROOT";

#[test]
fn the_shipped_agent_registers_from_a_debian_11_root_without_a_machine_id() {
    let agent = crate::binary::shipped_agent();
    // Declared first, dropped last: the agent is gone before its root is removed.
    let work = host_root(DEBIAN_11);
    let root = work.path().join("root");
    std::fs::copy(&agent, root.join("usr/bin/qb-agent")).expect("the agent in the root");
    assert!(
        !root.join("etc/machine-id").exists(),
        "a minbase root has no machine id"
    );

    let lab = Lab::new(1).expect("the lab");
    let controller = Controller::start(&lab.bridge_ip());
    let api = controller.api();
    let token = api.bootstrap_token(1, 1);
    let config = AgentConfig::new(&controller, &token.secret, "bullseye");
    let file = json!({
        "controller_url": config.controller_url,
        "ca_pins": config.ca_pins,
        "bootstrap_token": token.secret,
        "state_dir": "/var/lib/qb/agent",
        "node_name": config.node_name,
    });
    std::fs::create_dir_all(root.join("etc/qb")).expect("/etc/qb");
    std::fs::write(
        root.join("etc/qb/agent.toml"),
        toml::to_string(&file).expect("TOML"),
    )
    .expect("the agent's configuration");
    let netns = lab.netns(0);
    let mut cmd = qb_lab::host::Host {
        netns: Some(&netns),
        root: &root,
        dirs: &[],
        chroot: true,
        hostname: None,
        machine_id: None,
        die_with_parent: true,
    }
    .command(Path::new("/usr/bin/qb-agent"))
    .expect("the host");
    cmd.args(["--config", "/etc/qb/agent.toml"])
        .env("QB_LOG", "info");
    let (_agent, _stdout) = Proc::spawn("qb-agent in Debian 11", cmd);

    let node = poll("the Debian 11 host online", SHORT, || {
        let node = api.get("/nodes/bullseye");
        (node.status == 200 && online(&node.body))
            .then_some(node.body.clone())
            .ok_or(node.body.to_string())
    });
    let os = node["facts"]["os"].as_str().unwrap_or_default();
    assert!(os.contains("Debian GNU/Linux 11"), "{node}");
    assert!(
        node["facts"]["addresses"]
            .as_array()
            .is_some_and(|a| a.iter().any(|ip| ip == lab.host_ip(0).as_str())),
        "{node}"
    );
    let own = std::fs::read_to_string(root.join("var/lib/qb/agent/machine-id"))
        .expect("qb's own machine id, made for a host without one");
    assert_eq!(own.trim().len(), 32, "{own}");
}

#[test]
fn debian_11_and_12_hosts_installed_with_dpkg_form_a_cluster_that_survives_an_agent_upgrade() {
    let bundle = crate::kubernetes::bundle_dir();
    let shipped = crate::binary::shipped_agent();
    // host-0 runs Debian 11, host-1 Debian 12.
    let distros = [
        (DEBIAN_11, "Debian GNU/Linux 11"),
        (DEBIAN_12, "Debian GNU/Linux 12"),
    ];
    let names: Vec<String> = (0..2).map(|i| format!("host-{i}")).collect();
    let _cgroups = PodCgroups(names.clone());
    let lab = Lab::new(2).expect("the lab");
    lab.add_gateway().expect("the hosts' gateway");
    let controller = Controller::start_shipping(&lab.bridge_ip(), &shipped);
    let api = controller.api();
    import_bundle(&api, &bundle);

    // Each host: its root, the controller's package installed with dpkg, the agent started as
    // its service would be.
    let mut agents = Vec::new();
    for (i, (env, _)) in distros.iter().enumerate() {
        let work = host_root(env);
        let root = work.path().join("root");
        let deb = api.get_bytes("/agent-packages/deb?max_uses=1&expires_in_hours=1");
        install(&root, "qb-agent_0.1.0_amd64.deb", &deb);
        assert_eq!(installed_version(&root), env!("CARGO_PKG_VERSION"));
        // The administrator's kubectl, for whichever host becomes a master.
        std::fs::copy("/usr/bin/kubectl", root.join("usr/local/bin/kubectl"))
            .expect("kubectl (Debian's kubernetes-client) on this machine");
        agents.push(Agent::start_installed(work, &lab.netns(i), &names[i]));
    }
    let mut ids = Vec::new();
    for (name, (_, os)) in names.iter().zip(distros) {
        let node = wait_online(&api, name);
        assert!(
            node["facts"]["os"]
                .as_str()
                .unwrap_or_default()
                .contains(os),
            "{node}"
        );
        ids.push(node["id"].clone());
        api.post(&format!("/nodes/{name}/authorize"), &json!({}))
            .ok();
    }

    api.post(
        "/clusters",
        &json!({"name": "distros", "pod_cidr": "10.244.0.0/16", "service_cidr": "10.96.0.0/12"}),
    )
    .ok();
    let attach = Instant::now();
    api.post("/clusters/distros/attach", &json!({"nodes": names}))
        .ok();
    let ready = wait_ready(&api, "distros", BRING_UP);
    let (masters, workers) = roles(&ready);
    assert_eq!(masters.len() + workers.len(), 2, "{ready}");
    let admin = names
        .iter()
        .position(|n| *n == masters[0])
        .expect("a master");
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_nodes_ready(&agents[admin], &refs, BRING_UP);
    eprintln!(
        "Debian 11 + Debian 12: attach → cluster ready, every Node Ready in {:?} (masters {masters:?})",
        attach.elapsed()
    );
    let out = kubectl(&agents[admin], &["apply", "-f", "-"], Some(&web(&names)));
    assert!(out.status.success(), "{out:?}");
    let matrix = check_traffic(&agents[admin], &agents, &names);
    eprintln!("pod to pod (rows: client's host):\n{matrix}");
    let pods = web_pods(&agents[admin], &names);

    // The package upgrade: a newer package of the agent (as the controller of a newer release
    // serves it), installed over the old one with dpkg, then the agent restarted as its service
    // manager does.
    // Meanwhile each node's API balancer (127.0.0.1:6444) is connected to every 50 ms, and the
    // connections the kubelet and kube-proxy hold through it are watched.
    let carried: Vec<BTreeSet<String>> = (0..2).map(|i| balancer_clients(&lab, i)).collect();
    assert!(carried.iter().all(|c| !c.is_empty()), "{carried:?}");
    let probes: Vec<std::process::Child> = (0..2)
        .map(|i| {
            Command::new("ip")
                .args(["netns", "exec", &lab.netns(i), "bash", "-c"])
                .arg(
                    "while :; do if timeout 1 bash -c '</dev/tcp/127.0.0.1/6444' 2>/dev/null; \
                     then echo ok; else echo refused; fi; sleep 0.05; done",
                )
                .stdout(Stdio::piped())
                .spawn()
                .expect("a connection loop")
        })
        .collect();
    let upgrade = Instant::now();
    let agent_binary = std::fs::read(&shipped).expect("the shipped agent");
    for (i, name) in names.iter().enumerate() {
        let root = agents[i].host_root.clone().expect("the host's root");
        let config = std::fs::read_to_string(root.join("etc/qb-agent/config.toml"))
            .expect("the installed configuration");
        let newer = qb_package::Format::Deb
            .build(&qb_package::AgentPackage {
                version: UPGRADE_VERSION,
                agent_binary: &agent_binary,
                config_toml: &config,
            })
            .expect("the newer package");
        install(
            &root,
            &format!("qb-agent_{UPGRADE_VERSION}_amd64.deb"),
            &newer,
        );
        assert_eq!(installed_version(&root), UPGRADE_VERSION);
        assert_eq!(
            std::fs::read_to_string(root.join("etc/qb-agent/config.toml")).ok(),
            Some(config),
            "the configuration is kept"
        );
        let agent = agents.remove(i);
        agents.insert(i, agent.restart_installed(name));
    }
    for ((name, id), agent) in names.iter().zip(&ids).zip(&agents) {
        // The new agent process itself is back, as the same node.
        let id = id.as_str().expect("a node id");
        agent
            .proc
            .log
            .wait_for(&["connected to the controller", id], SHORT);
        let node = wait_online(&api, name);
        assert_eq!(node["id"], id, "{name} is still the same node: {node}");
    }
    let ready = wait_ready(&api, "distros", BRING_UP);
    assert_eq!(roles(&ready), (masters, workers), "{ready}");
    wait_nodes_ready(&agents[admin], &refs, BRING_UP);
    for (i, mut probe) in probes.into_iter().enumerate() {
        let _ = probe.kill();
        let out = probe
            .wait_with_output()
            .expect("the connection loop's output");
        let said = String::from_utf8_lossy(&out.stdout);
        let (ok, refused) = (said.matches("ok").count(), said.matches("refused").count());
        eprintln!(
            "host-{i}'s API balancer during the upgrade: {ok} connections taken, {refused} refused"
        );
        assert!(
            ok > 0 && refused == 0,
            "host-{i}: {ok} taken, {refused} refused"
        );
        let now = balancer_clients(&lab, i);
        assert!(
            carried[i].is_subset(&now),
            "host-{i}: connections through the balancer before the upgrade {:?}, after {now:?}",
            carried[i]
        );
    }
    // The same pods, still serving.
    assert_eq!(web_pods(&agents[admin], &names), pods);
    check_traffic(&agents[admin], &agents, &names);
    eprintln!(
        "agent package {UPGRADE_VERSION} on both hosts: cluster ready, pods serving, in {:?}",
        upgrade.elapsed()
    );
}

/// The local ends of the connections established to host `i`'s API balancer (the kubelet's,
/// kube-proxy's).
fn balancer_clients(lab: &Lab, i: usize) -> BTreeSet<String> {
    let out = run(Command::new("ss").args([
        "-N",
        &lab.netns(i),
        "-H",
        "-t",
        "-n",
        "state",
        "established",
        "dst",
        "127.0.0.1:6444",
    ]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .collect()
}

/// The version of the upgrade package: newer than the controller's.
const UPGRADE_VERSION: &str = "0.1.0+upgrade1";

/// A fresh copy of the cached root `env` names, at `<dir>/root`.
fn host_root(env: &str) -> tempfile::TempDir {
    let cached = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "{env} is not set: run the suite with `cargo xtask test`, or set it to a root made \
             with `debootstrap --variant=minbase --include=iptables,iproute2,conntrack RELEASE DIR`"
        )
    });
    assert!(
        cached.join("etc/debian_version").exists(),
        "{} is no Debian root",
        cached.display()
    );
    let work = tempfile::tempdir().expect("temp dir");
    let copy = run(Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(&cached)
        .arg(work.path().join("root")));
    assert!(copy.status.success(), "{copy:?}");
    work
}

/// `dpkg -i` of the package `bytes` on the host whose root is `root`, as its administrator
/// does (chrooted into it, no systemd running).
fn install(root: &Path, file: &str, bytes: &[u8]) {
    std::fs::write(root.join("tmp").join(file), bytes).expect("the package in the root");
    let out = run(Command::new("chroot")
        .arg(root)
        .args(["dpkg", "-i"])
        .arg(format!("/tmp/{file}"))
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"));
    assert!(
        out.status.success(),
        "dpkg -i {file}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The version of qb-agent dpkg has installed in `root`.
fn installed_version(root: &Path) -> String {
    let out = run(Command::new("chroot").arg(root).args([
        "dpkg-query",
        "-W",
        "-f=${Status} ${Version}",
        "qb-agent",
    ]));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    said.strip_prefix("install ok installed ")
        .unwrap_or_else(|| panic!("qb-agent is not installed: {said}"))
        .to_owned()
}
