//! The cluster engine against real etcd: lab hosts in network namespaces, each with private
//! system directories, run the plans the controller signs; Debian's etcd is the bundle's etcd.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{Agent, AgentConfig, Controller, poll, run};
use crate::http::Api;
use crate::netns::Lab;

const ETCD: &str = "/usr/bin/etcd";
const ETCDCTL: &str = "/usr/bin/etcdctl";
/// Installing etcd from scratch and forming a cluster, on shared cores.
const CONVERGE: Duration = Duration::from_secs(120);

/// The etcd-only bundle for 1.20.2, imported through the API as `qb bundle import` does.
pub fn import_etcd_bundle(api: &Api) -> Vec<u8> {
    assert!(
        Path::new(ETCD).exists() && Path::new(ETCDCTL).exists(),
        "these tests need Debian's etcd: apt-get install etcd-server etcd-client"
    );
    let bytes = std::fs::read(ETCD).expect("read etcd");
    let sha = hex::encode(Sha256::digest(&bytes));
    assert_eq!(
        api.put_bytes(&format!("/artifacts/{sha}"), &bytes).status,
        204
    );
    let manifest = json!({
        "kubernetes_version": "1.20.2",
        "artifacts": [{"name": "etcd", "version": "3.4.23", "sha256": sha, "size": bytes.len()}],
    });
    api.post("/bundles", &manifest).ok();
    bytes
}

/// Starts `n` lab hosts with private directories, registered and authorized.
pub fn hosts(lab: &Lab, controller: &Controller, n: usize) -> (Vec<AgentConfig>, Vec<Agent>) {
    let api = controller.api();
    let token = api.bootstrap_token(n as u32, 1);
    let configs: Vec<AgentConfig> = (0..n)
        .map(|i| AgentConfig::new(controller, &token.secret, &format!("host-{i}")))
        .collect();
    let agents: Vec<Agent> = configs
        .iter()
        .enumerate()
        .map(|(i, c)| Agent::start_host(c, &lab.netns(i)))
        .collect();
    for c in &configs {
        let name = &c.node_name;
        poll(
            &format!("{name} registered"),
            Duration::from_secs(30),
            || {
                let node = api.get(&format!("/nodes/{name}"));
                if node.status == 200 && node.body["agent"]["online"] == true {
                    Ok(())
                } else {
                    Err(node.body.to_string())
                }
            },
        );
        api.post(&format!("/nodes/{name}/authorize"), &json!({}))
            .ok();
    }
    (configs, agents)
}

pub fn cluster(api: &Api, name: &str) -> Value {
    api.get(&format!("/clusters/{name}")).ok()
}

/// Waits until the cluster is `ready`; panics with its last state and message otherwise.
pub fn wait_ready(api: &Api, name: &str, timeout: Duration) -> Value {
    poll(&format!("cluster {name} ready"), timeout, || {
        let c = cluster(api, name);
        if c["state"] == "ready" {
            Ok(c)
        } else {
            Err(format!("{} — {}", c["state"], c["state_message"]))
        }
    })
}

pub fn roles(cluster: &Value) -> (Vec<String>, Vec<String>) {
    let mut masters = Vec::new();
    let mut workers = Vec::new();
    for n in cluster["nodes"].as_array().expect("nodes") {
        let name = n["name"].as_str().expect("name").to_owned();
        match n["role"].as_str() {
            Some("master") => masters.push(name),
            Some("worker") => workers.push(name),
            other => panic!("{name} has role {other:?}"),
        }
    }
    (masters, workers)
}

/// `etcdctl` from the machine against the cluster, with the cluster's own client certificate
/// taken from `host`'s private directories.
pub fn etcdctl(host: &Agent, endpoint: &str, args: &[&str]) -> String {
    let file = |p: &str| host.host_path(p).display().to_string();
    let out = run(Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoint,
            "--cacert",
            &file("/etc/qb/pki/etcd/ca.crt"),
            "--cert",
            &file("/etc/qb/pki/etcd/healthcheck-client.crt"),
            "--key",
            &file("/etc/qb/pki/etcd/healthcheck-client.key"),
            "--dial-timeout",
            "3s",
            "--command-timeout",
            "5s",
        ])
        .args(args));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "etcdctl {args:?}: {text}");
    text
}

/// Names in `etcdctl member list` (`id, started, name, peers, clients, learner`).
fn member_names(list: &str) -> Vec<String> {
    let mut names: Vec<String> = list
        .lines()
        .filter_map(|l| l.split(", ").nth(2).map(str::to_owned))
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names
}

fn index(name: &str) -> usize {
    name.trim_start_matches("host-").parse().expect("host-N")
}

#[test]
fn a_cluster_forms_on_real_etcd_grows_and_shrinks_safely() {
    let lab = Lab::new(5);
    let controller = Controller::start(&lab.bridge_ip());
    let api = controller.api();
    import_etcd_bundle(&api);
    let (_configs, agents) = hosts(&lab, &controller, 5);
    api.post("/clusters", &json!({"name": "lab"})).ok();

    // Three nodes: preflight passes, three masters form a TLS etcd cluster.
    let started = Instant::now();
    api.post(
        "/clusters/lab/attach",
        &json!({"nodes": ["host-0", "host-1", "host-2"]}),
    )
    .ok();
    let c = wait_ready(&api, "lab", CONVERGE);
    eprintln!("3 nodes attached → ready in {:?}", started.elapsed());
    let preflight = api.get("/clusters/lab/preflight").ok();
    assert_eq!(preflight["passed"], true, "{preflight}");
    assert_eq!(
        preflight["mesh"].as_array().expect("mesh").len(),
        // Every ordered pair, on 2379/tcp + 2380/tcp + 8472/udp.
        3 * 2 * 3,
        "{preflight}"
    );
    let (masters, workers) = roles(&c);
    assert_eq!((masters.len(), workers.len()), (3, 0), "{c}");
    let endpoint = format!("https://{}:2379", lab.host_ip(0));
    let health = etcdctl(&agents[0], &endpoint, &["endpoint", "health", "--cluster"]);
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");
    let list = etcdctl(&agents[0], &endpoint, &["member", "list"]);
    assert_eq!(
        member_names(&list),
        ["host-0", "host-1", "host-2"],
        "{list}"
    );
    // TLS only: plain HTTP to a member is refused.
    let plain = run(Command::new(ETCDCTL).env("ETCDCTL_API", "3").args([
        "--endpoints",
        &format!("http://{}:2379", lab.host_ip(1)),
        "--dial-timeout",
        "2s",
        "endpoint",
        "health",
    ]));
    assert!(!plain.status.success(), "etcd answered plain HTTP");

    // Two more: placement keeps three masters; the new nodes are workers, etcd stays at 3.
    api.post(
        "/clusters/lab/attach",
        &json!({"nodes": ["host-3", "host-4"]}),
    )
    .ok();
    let c = poll("five nodes placed and ready", CONVERGE, || {
        let c = cluster(&api, "lab");
        let placed = c["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 5 && n.iter().all(|n| n["role"].is_string()));
        if placed && c["state"] == "ready" {
            Ok(c)
        } else {
            Err(format!("{} — {}", c["state"], c["state_message"]))
        }
    });
    let (masters, workers) = roles(&c);
    assert_eq!(
        masters,
        ["host-0", "host-1", "host-2"],
        "stable masters: {c}"
    );
    assert_eq!(workers, ["host-3", "host-4"]);
    let list = etcdctl(&agents[0], &endpoint, &["member", "list"]);
    assert_eq!(member_names(&list).len(), 3, "{list}");

    // With one master cut off, detaching another would leave one healthy voter of two: refused,
    // and nothing changes.
    lab.link_down(2);
    poll("host-2 offline", Duration::from_secs(30), || {
        let n = api.get("/nodes/host-2").ok();
        if n["agent"]["online"] == false {
            Ok(())
        } else {
            Err(n["agent"].to_string())
        }
    });
    api.post("/clusters/lab/detach", &json!({"nodes": ["host-1"]}))
        .problem(409, "quorum_at_risk");
    assert_eq!(api.get("/nodes/host-1").ok()["state"], "attached");
    lab.link_up(2);
    poll("host-2 back, its etcd healthy", CONVERGE, || {
        let n = api.get("/nodes/host-2").ok();
        let etcd_ok = n["plan"]["report"]["services"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["name"] == "etcd" && s["healthy"] == true)
        });
        if n["agent"]["online"] == true && etcd_ok {
            Ok(())
        } else {
            Err(n["plan"].to_string())
        }
    });
    wait_ready(&api, "lab", CONVERGE);

    // Detach a master: its member goes first, a worker joins as a learner and is promoted,
    // and the node comes back to the pool wiped.
    let leaving = "host-0";
    api.post("/clusters/lab/detach", &json!({"nodes": [leaving]}))
        .ok();
    poll("host-0 back in the pool", CONVERGE, || {
        let n = api.get(&format!("/nodes/{leaving}")).ok();
        if n["state"] == "authorized" {
            Ok(())
        } else {
            let c = cluster(&api, "lab");
            Err(format!(
                "{}: {} — {}",
                n["state"], c["state"], c["state_message"]
            ))
        }
    });
    let c = poll("four nodes ready with three masters", CONVERGE, || {
        let c = cluster(&api, "lab");
        let ms = c["nodes"]
            .as_array()
            .map_or(0, |n| n.iter().filter(|n| n["role"] == "master").count());
        if c["state"] == "ready" && ms == 3 {
            Ok(c)
        } else {
            Err(format!(
                "{} masters, {} — {}",
                ms, c["state"], c["state_message"]
            ))
        }
    });
    let (masters, _) = roles(&c);
    assert!(!masters.contains(&leaving.to_owned()), "{c}");
    let survivor = &agents[index(&masters[0])];
    let endpoint = format!("https://{}:2379", lab.host_ip(index(&masters[0])));
    let list = poll(
        "etcd membership follows placement",
        Duration::from_secs(30),
        || {
            let list = etcdctl(survivor, &endpoint, &["member", "list"]);
            let names = member_names(&list);
            if names == masters && !list.contains("true") {
                Ok(list)
            } else {
                Err(list)
            }
        },
    );
    assert!(!list.contains(leaving), "{list}");
    let health = etcdctl(survivor, &endpoint, &["endpoint", "health", "--cluster"]);
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");
    // The detached host is wiped: no etcd data, no binary, no certificates, no etcd process.
    let gone = &agents[0];
    for path in [
        "/var/lib/qb/etcd",
        "/var/lib/qb/bin/etcd",
        "/etc/qb/pki/etcd/peer.key",
    ] {
        assert!(!gone.host_path(path).exists(), "{path} survived the detach");
    }
    let etcd_in_ns0 = lab.pids(0).iter().any(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "etcd")
    });
    assert!(!etcd_in_ns0, "etcd still runs on the detached host");
}
