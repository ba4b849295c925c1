//! The cluster engine against real etcd: lab hosts in network namespaces, each with private
//! system directories, run the plans the controller signs; Debian's etcd is the bundle's etcd.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{Agent, AgentConfig, Controller, SHORT, poll, run};
use crate::http::Api;
use qb_lab::Lab;

const ETCD: &str = "/usr/bin/etcd";
pub const ETCDCTL: &str = "/usr/bin/etcdctl";
/// Installing etcd from scratch and forming a cluster, on shared cores.
pub const CONVERGE: Duration = Duration::from_secs(120);

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
    let (configs, agents) = pending_hosts(lab, controller, n);
    authorize_when_online(&controller.api(), &configs);
    (configs, agents)
}

/// Starts `n` lab hosts with private directories, registered (pending) with their agents online.
pub fn pending_hosts(
    lab: &Lab,
    controller: &Controller,
    n: usize,
) -> (Vec<AgentConfig>, Vec<Agent>) {
    let api = controller.api();
    let token = api.bootstrap_token(n as u32, 1);
    let configs: Vec<AgentConfig> = (0..n)
        .map(|i| AgentConfig::new(controller, &token.secret, &format!("host-{i}")))
        .collect();
    let agents = start_hosts(lab, &configs);
    for c in &configs {
        wait_online(&api, &c.node_name);
    }
    (configs, agents)
}

/// Starts the agent of host `i` with `configs[i]`, each in its lab namespace.
pub fn start_hosts(lab: &Lab, configs: &[AgentConfig]) -> Vec<Agent> {
    configs
        .iter()
        .enumerate()
        .map(|(i, c)| Agent::start_host(c, &lab.netns(i)))
        .collect()
}

/// Waits until `api` sees each host's agent online, then authorizes the host through it.
pub fn authorize_when_online(api: &Api, configs: &[AgentConfig]) {
    for c in configs {
        let name = &c.node_name;
        wait_online(api, name);
        api.post(&format!("/nodes/{name}/authorize"), &json!({}))
            .ok();
    }
}

/// Waits until `api` sees the host `name` registered with its agent online; the node.
pub fn wait_online(api: &Api, name: &str) -> Value {
    poll(
        &format!("{name} registered"),
        Duration::from_secs(30),
        || {
            let node = api.get(&format!("/nodes/{name}"));
            if node.status == 200 && node.body["agent"]["online"] == true {
                Ok(node.body)
            } else {
                Err(node.body.to_string())
            }
        },
    )
}

pub fn cluster(api: &Api, name: &str) -> Value {
    api.get(&format!("/clusters/{name}")).ok()
}

/// Waits until the cluster is `ready` with a role for each of its nodes (right after an attach
/// the cluster may still be `ready` without the newcomers); panics with its last state and
/// message otherwise.
pub fn wait_ready(api: &Api, name: &str, timeout: Duration) -> Value {
    poll(&format!("cluster {name} ready"), timeout, || {
        ready_and_placed(api, name, None)
    })
}

/// Waits as [`wait_ready`] does, and until the cluster has `nodes` nodes.
pub fn wait_ready_with_nodes(api: &Api, name: &str, nodes: usize, timeout: Duration) -> Value {
    poll(
        &format!("cluster {name} ready, its {nodes} nodes placed"),
        timeout,
        || ready_and_placed(api, name, Some(nodes)),
    )
}

/// The cluster if it is `ready` with a role for each of its nodes (`nodes` of them, if given);
/// else its state and message.
fn ready_and_placed(api: &Api, name: &str, nodes: Option<usize>) -> Result<Value, String> {
    let c = cluster(api, name);
    let listed = c["nodes"].as_array().map_or(&[][..], Vec::as_slice);
    let placed =
        nodes.is_none_or(|n| listed.len() == n) && listed.iter().all(|n| n["role"].is_string());
    if c["state"] == "ready" && placed {
        Ok(c)
    } else {
        Err(format!("{} — {}", c["state"], c["state_message"]))
    }
}

/// Waits until `node` left cluster `lab` for the pool; the cluster's state says why while not.
fn wait_in_pool(api: &Api, node: &str) {
    poll(&format!("{node} back in the pool"), CONVERGE, || {
        let n = api.node(node);
        if n["state"] == "authorized" {
            Ok(())
        } else {
            let c = cluster(api, "lab");
            Err(format!(
                "{}: {} — {}",
                n["state"], c["state"], c["state_message"]
            ))
        }
    });
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
/// taken from `host`'s private directories; what it printed.
pub fn etcdctl(host: &Agent, endpoint: &str, args: &[&str]) -> String {
    try_etcdctl(host, endpoint, args).unwrap_or_else(|text| panic!("etcdctl {args:?}: {text}"))
}

/// As [`etcdctl`], for a call that may fail: what it printed, as an error when it failed.
pub fn try_etcdctl(host: &Agent, endpoint: &str, args: &[&str]) -> Result<String, String> {
    let root = host
        .host_root
        .as_ref()
        .expect("a host with private directories");
    try_etcdctl_from(root, endpoint, args)
}

/// As [`try_etcdctl`], with the certificate of the host whose private directories are at
/// `root` (for a thread of its own).
pub fn try_etcdctl_from(root: &Path, endpoint: &str, args: &[&str]) -> Result<String, String> {
    let file = |p: &str| root.join(p.trim_start_matches('/')).display().to_string();
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
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Waits until `node`'s agent is online and reports its etcd healthy.
pub fn wait_etcd_healthy(api: &Api, node: &str, timeout: Duration) {
    poll(&format!("{node} online, its etcd healthy"), timeout, || {
        let n = api.get(&format!("/nodes/{node}")).ok();
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
}

/// Names in `etcdctl member list` (`id, started, name, peers, clients, learner`).
pub fn member_names(list: &str) -> Vec<String> {
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
    let lab = Lab::new(5).expect("the lab");
    let controller = Controller::start(&lab.bridge_ip());
    let api = controller.api();
    let etcd = import_etcd_bundle(&api);
    let (_configs, agents) = hosts(&lab, &controller, 5);
    api.post("/clusters", &json!({"name": "lab"})).ok();
    // host-0 holds the first half of etcd from an interrupted download: it asks for the rest.
    let cache = agents[0].state_dir.join("artifacts");
    std::fs::create_dir_all(&cache).expect("the artifact cache");
    let sha = hex::encode(Sha256::digest(&etcd));
    std::fs::write(
        cache.join(format!("{sha}.partial")),
        &etcd[..etcd.len() / 2],
    )
    .expect("a partial download");

    // Three nodes: preflight passes, three masters form a TLS etcd cluster.
    let started = Instant::now();
    let moved = api
        .post(
            "/clusters/lab/attach",
            &json!({"nodes": ["host-0", "host-1", "host-2"]}),
        )
        .ok();
    // The answer shows the nodes as every node view does: with their agents' live state.
    for node in moved["nodes"].as_array().expect("nodes") {
        assert_eq!(node["agent"]["online"], true, "{node}");
    }
    let c = wait_ready(&api, "lab", CONVERGE);
    eprintln!("3 nodes attached → ready in {:?}", started.elapsed());
    let resumed = format!("have={}", etcd.len() / 2);
    assert_eq!(
        agents[0].proc.log.count(&resumed),
        1,
        "host-0 resumed its download: {}",
        agents[0].proc.log.tail(20)
    );
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
    // Each etcd started once: nothing held its ports (the preflight's listeners close when the
    // plan comes).
    for i in 0..3 {
        let services =
            api.get(&format!("/nodes/host-{i}")).ok()["plan"]["report"]["services"].clone();
        let etcd = services
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "etcd"))
            .unwrap_or_else(|| panic!("host-{i} reports no etcd: {services}"));
        assert_eq!(etcd["restarts"], 0, "host-{i}: {etcd}");
    }
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

    // These masters run no API server: asked for a tunnel to one, each agent refuses, since
    // its plan allows it no endpoint (it dials nothing a request names).
    let proxied = api.call("GET", "/k8s/clusters/lab/version", None);
    assert_eq!(proxied.status, 502, "{}", proxied.body);
    let message = proxied.body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("plan allows no endpoint \"kube-apiserver\""),
        "{message}"
    );

    // Two more: placement keeps three masters; the new nodes are workers, etcd stays at 3.
    api.post(
        "/clusters/lab/attach",
        &json!({"nodes": ["host-3", "host-4"]}),
    )
    .ok();
    let c = wait_ready_with_nodes(&api, "lab", 5, CONVERGE);
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
    lab.link_down(2).expect("the cable");
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
    lab.link_up(2).expect("the cable");
    wait_etcd_healthy(&api, "host-2", CONVERGE);
    wait_ready(&api, "lab", CONVERGE);

    // Detach a master: its member goes first, a worker joins as a learner and is promoted,
    // and the node comes back to the pool wiped.
    let leaving = "host-0";
    // `ready` comes from the agents' reports; the detach's quorum check asks etcd itself, which
    // may take a moment longer to see host-2's member healthy again. Until then it refuses.
    poll("the detach accepted", Duration::from_secs(30), || {
        let r = api.post("/clusters/lab/detach", &json!({"nodes": [leaving]}));
        match r.status {
            200..300 => Ok(()),
            409 if r.body["code"] == "quorum_at_risk" => Err(r.body.to_string()),
            _ => panic!("detach answered {}: {}", r.status, r.body),
        }
    });
    wait_in_pool(&api, leaving);
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

    // A master in a cluster cannot be deauthorized: the refusal says to detach it first.
    let cut = index(&masters[1]);
    let name = format!("host-{cut}");
    api.post(&format!("/nodes/{name}/deauthorize"), &json!({}))
        .problem(409, "invalid_node_state");

    // Its host goes away for good: detached with --force, its member is removed all the same
    // (a worker takes its place), and it returns to the pool without waiting for its wipe.
    lab.link_down(cut).expect("the cable");
    poll(&format!("{name} offline"), Duration::from_secs(30), || {
        let n = api.node(&name);
        if n["agent"]["online"] == false {
            Ok(())
        } else {
            Err(n["agent"].to_string())
        }
    });
    api.post(
        "/clusters/lab/detach",
        &json!({"nodes": [name], "force": true}),
    )
    .ok();
    wait_in_pool(&api, &name);
    let c = wait_ready(&api, "lab", CONVERGE);
    let (masters, _) = roles(&c);
    assert_eq!(masters.len(), 3, "{c}");
    assert!(!masters.contains(&name), "{c}");
    let survivor = &agents[index(&masters[0])];
    let endpoint = format!("https://{}:2379", lab.host_ip(index(&masters[0])));
    poll(
        "the unreachable member removed",
        Duration::from_secs(30),
        || {
            let list = etcdctl(survivor, &endpoint, &["member", "list"]);
            if member_names(&list) == masters && !list.contains(&lab.host_ip(cut)) {
                Ok(())
            } else {
                Err(list)
            }
        },
    );
    // Back, its agent finds the wipe waiting: nothing of the cluster is left.
    lab.link_up(cut).expect("the cable");
    poll(&format!("{name} wiped once back"), CONVERGE, || {
        let n = api.node(&name);
        let report = &n["plan"]["report"];
        let wiped = report["state"] == "applied"
            && report["generation"] == n["plan"]["generation"]
            && report["steps"][0]["name"] == "wipe";
        if wiped {
            Ok(())
        } else {
            Err(n["plan"].to_string())
        }
    });
    assert!(
        !agents[cut].host_path("/var/lib/qb/etcd").exists(),
        "{name}'s etcd data survived"
    );

    // Two of the three masters detached at once with --force, which skips the quorum guard:
    // their members still go one at a time while they run, so the one left keeps a leader and
    // the cluster is ready on one master, with one healthy member.
    let c = wait_ready(&api, "lab", CONVERGE);
    let (masters, workers) = roles(&c);
    assert_eq!((masters.len(), workers.len()), (3, 0), "{c}");
    let (keep, leaving) = (&masters[0], &masters[1..]);
    api.post(
        "/clusters/lab/detach",
        &json!({"nodes": leaving, "force": true}),
    )
    .ok();
    for node in leaving {
        wait_in_pool(&api, node);
    }
    let c = wait_ready(&api, "lab", CONVERGE);
    assert_eq!(roles(&c), (vec![keep.clone()], vec![]), "{c}");
    let survivor = &agents[index(keep)];
    let endpoint = format!("https://{}:2379", lab.host_ip(index(keep)));
    let list = poll("one member left", Duration::from_secs(30), || {
        let list = etcdctl(survivor, &endpoint, &["member", "list"]);
        if member_names(&list) == [keep.clone()] {
            Ok(list)
        } else {
            Err(list)
        }
    });
    let health = etcdctl(survivor, &endpoint, &["endpoint", "health", "--cluster"]);
    assert_eq!(health.matches("is healthy").count(), 1, "{health} {list}");
    for node in leaving {
        assert!(
            !agents[index(node)].host_path("/var/lib/qb/etcd").exists(),
            "{node}'s etcd data survived"
        );
    }
}

/// Runs `sh -c script` inside host `i`'s network namespace, in the background; killed with the
/// lab.
fn in_namespace(lab: &Lab, i: usize, script: &str) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", &lab.netns(i), "sh", "-c", script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run in a namespace")
}

fn nft(lab: &Lab, i: usize, args: &str) {
    let out = run(Command::new("ip").args([
        "netns",
        "exec",
        &lab.netns(i),
        "sh",
        "-c",
        &format!("nft {args}"),
    ]));
    assert!(
        out.status.success(),
        "nft {args}: {} (the preflight test needs nftables)",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits (up to `timeout`) until preflight blocks the install of cluster `name`; the cluster and
/// the preflight report.
fn blocked_by_preflight(api: &Api, name: &str, timeout: Duration) -> (Value, Value) {
    let c = poll("preflight blocks the install", timeout, || {
        let c = cluster(api, name);
        if c["state"] == "blocked" {
            Ok(c)
        } else {
            Err(format!("{} — {}", c["state"], c["state_message"]))
        }
    });
    let message = c["state_message"].as_str().expect("a message");
    assert!(message.contains("preflight failed"), "{message}");
    let report = api.get(&format!("/clusters/{name}/preflight")).ok();
    assert_eq!(report["passed"], false, "{report}");
    (c, report)
}

/// The problems a preflight report names.
fn problems(report: &Value) -> Vec<&str> {
    report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// Hosts whose clocks are an hour behind and an hour ahead of the controller's register,
/// connect and answer like any other (certificates start two hours before they are issued);
/// attached to a cluster, preflight holds the install up and says how far off each clock is.
#[test]
fn hosts_an_hour_off_connect_and_preflight_says_how_far_off_their_clocks_are() {
    let lab = Lab::new(3).expect("the lab");
    let controller = Controller::start(&lab.bridge_ip());
    let api = controller.api();
    import_etcd_bundle(&api);
    let token = api.bootstrap_token(3, 1);
    let config = |i: usize| AgentConfig::new(&controller, &token.secret, &format!("host-{i}"));
    let configs = vec![
        config(0),
        config(1).clock_off("-1h"),
        config(2).clock_off("+1h"),
    ];
    let _agents = start_hosts(&lab, &configs);
    authorize_when_online(&api, &configs);
    for c in &configs {
        let pinged = api
            .post(&format!("/nodes/{}/ping", c.node_name), &json!({}))
            .ok();
        assert!(pinged["round_trip_ms"].as_f64().is_some(), "{pinged}");
    }

    api.post("/clusters", &json!({"name": "skew"})).ok();
    api.post("/clusters/skew/attach", &json!({"count": 3})).ok();
    let (_, report) = blocked_by_preflight(&api, "skew", CONVERGE);
    let problems = problems(&report);
    // "host-1: clock: offset -3600012 ms from the controller, at most ±60000 ms allowed"
    let offset = |host: &str| -> i64 {
        let prefix = format!("{host}: clock: offset ");
        let problem = problems
            .iter()
            .find_map(|p| p.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no clock problem for {host}: {problems:#?}"));
        problem
            .split_once(" ms")
            .and_then(|(ms, _)| ms.parse().ok())
            .unwrap_or_else(|| panic!("no offset in {problem:?}"))
    };
    for (host, hours) in [("host-1", -1), ("host-2", 1)] {
        let off = offset(host) - hours * 3_600_000;
        assert!(
            off.abs() < 60_000,
            "{host}'s offset is {off} ms off an hour"
        );
    }
    assert!(
        !problems.iter().any(|p| p.starts_with("host-0: clock")),
        "{problems:#?}"
    );
}

#[test]
fn preflight_names_a_port_in_use_and_a_node_whose_udp_is_dropped() {
    let lab = Lab::new(10).expect("the lab");
    let controller = Controller::start(&lab.bridge_ip());
    let api = controller.api();
    import_etcd_bundle(&api);
    let (_configs, _agents) = hosts(&lab, &controller, 10);
    // host-1 will be a master (placement prefers names in order among equals): something
    // else holds its etcd client port. host-7 drops every datagram to the overlay port.
    let mut squatter = in_namespace(&lab, 1, "exec busybox nc -l -p 2379");
    nft(&lab, 7, "add table inet qbtest");
    nft(
        &lab,
        7,
        "'add chain inet qbtest input { type filter hook input priority 0; }'",
    );
    nft(&lab, 7, "add rule inet qbtest input udp dport 8472 drop");

    api.post("/clusters", &json!({"name": "pf"})).ok();
    let all: Vec<String> = (0..10).map(|i| format!("host-{i}")).collect();
    api.post("/clusters/pf/attach", &json!({"nodes": all})).ok();
    let (c, report) = blocked_by_preflight(&api, "pf", Duration::from_secs(60));
    let problems = problems(&report);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("host-1: port 2379/tcp:") && p.contains("in use")),
        "the port in use is named: {problems:#?}"
    );
    // Every other node fails to reach host-7 over UDP; nothing else fails.
    let udp_to_7: Vec<&&str> = problems
        .iter()
        .filter(|p| p.contains("cannot reach host-7 on 8472/udp"))
        .collect();
    assert_eq!(udp_to_7.len(), 9, "{problems:#?}");
    // Nothing but the two faults: probes of host-1's 2379/tcp reach the squatter or nothing.
    let fault = |to: &str, port: &str| {
        to == "host-1" && port == "2379/tcp" || to == "host-7" && port == "8472/udp"
    };
    for p in &problems[1..] {
        let (_, rest) = p
            .split_once(" cannot reach ")
            .unwrap_or_else(|| panic!("{p}"));
        let mut words = rest.split(' ');
        let (to, port) = (
            words.next().unwrap_or_default(),
            words.nth(1).unwrap_or_default().trim_end_matches(':'),
        );
        assert!(fault(to, port), "unexpected problem {p}");
    }
    let mesh = report["mesh"].as_array().expect("mesh");
    for m in mesh.iter().filter(|m| m["ok"] == false) {
        let port = format!(
            "{}/{}",
            m["port"],
            m["protocol"].as_str().unwrap_or_default()
        );
        assert!(fault(m["to"].as_str().unwrap_or_default(), &port), "{m}");
    }
    // Nothing was installed.
    for n in c["nodes"].as_array().expect("nodes") {
        assert!(
            n["plan"].is_null(),
            "{} got a plan despite the failed preflight",
            n["name"]
        );
    }

    // Fixed: preflight passes, on ten nodes, in about a second.
    let _ = squatter.kill();
    let _ = squatter.wait();
    nft(&lab, 7, "delete table inet qbtest");
    let report = api.post("/clusters/pf/preflight", &json!({})).ok();
    assert_eq!(report["passed"], true, "{report}");
    let probes = report["mesh"].as_array().expect("mesh").len();
    // 5 masters × (2379, 2380, 8472) and 5 workers × 8472, probed by the 9 others each.
    assert_eq!(probes, 9 * (5 * 3 + 5), "{report}");
    eprintln!(
        "preflight of 10 healthy nodes: {} ms, {probes} probes",
        report["duration_ms"]
    );
}

/// The signed plan stored for `node`, tampered by someone who holds the database and its
/// secrets key file: a higher generation and an extra service, the signature left as it was.
fn tamper_stored_plan(database: &Path, keyring: &qb_store::Keyring, node: &str, marker: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        use sqlx::Row;
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(database)
            .busy_timeout(Duration::from_secs(10));
        let db = sqlx::SqlitePool::connect_with(options)
            .await
            .expect("open the database");
        let row = sqlx::query("SELECT id, plan, plan_generation FROM nodes WHERE name = ?")
            .bind(node)
            .fetch_one(&db)
            .await
            .expect("the node's plan");
        let place = qb_store::sealed_place("nodes", "plan", &row.get::<String, _>("id"));
        let signed = keyring
            .open(&place, &row.get::<String, _>("plan"))
            .expect("the plan opens with the key file");
        let signed: Value = serde_json::from_slice(&signed).expect("signed plan");
        let mut plan: Value =
            serde_json::from_str(signed["plan"].as_str().expect("plan text")).expect("plan");
        let generation = row.get::<i64, _>("plan_generation") + 1;
        plan["generation"] = generation.into();
        plan["services"]
            .as_array_mut()
            .expect("services")
            .push(json!({
                "name": "evil",
                "command": ["/bin/sh", "-c", format!("touch {marker}; sleep 1000")],
            }));
        let mut forged = signed.clone();
        forged["plan"] = plan.to_string().into();
        sqlx::query("UPDATE nodes SET plan = ?, plan_generation = ? WHERE name = ?")
            .bind(keyring.seal(&place, forged.to_string().as_bytes()))
            .bind(generation)
            .bind(node)
            .execute(&db)
            .await
            .expect("store the forged plan");
        db.close().await;
    });
}

pub fn etcd_processes(lab: &Lab, i: usize) -> usize {
    lab.pids(i)
        .iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "etcd")
        })
        .count()
}

#[test]
fn tampered_artifacts_and_plans_are_refused_and_crashes_end_in_the_right_state() {
    let lab = Lab::new(4).expect("the lab");
    let mut controller = Controller::start(&lab.bridge_ip());
    let api = controller.api();
    let etcd = import_etcd_bundle(&api);
    let (configs, mut agents) = hosts(&lab, &controller, 4);
    api.post("/clusters", &json!({"name": "crash"})).ok();

    // The controller's copy of etcd is corrupted: every node refuses it.
    let sha = hex::encode(Sha256::digest(&etcd));
    let blob = controller.data_dir().join("artifacts").join(&sha);
    let mut bad = etcd.clone();
    bad[1000] ^= 0xff;
    std::fs::write(&blob, &bad).expect("corrupt the artifact");
    api.post(
        "/clusters/crash/attach",
        &json!({"nodes": ["host-0", "host-1", "host-2"]}),
    )
    .ok();
    let c = poll(
        "the checksum mismatch reported",
        Duration::from_secs(60),
        || {
            let c = cluster(&api, "crash");
            let message = c["state_message"].as_str().unwrap_or_default().to_owned();
            if message.contains("checksum mismatch") {
                Ok(c)
            } else {
                Err(message)
            }
        },
    );
    assert_eq!(c["state"], "installing", "{c}");
    for agent in &agents[..3] {
        assert!(
            !agent.host_path("/var/lib/qb/bin/etcd").exists(),
            "a corrupted etcd was installed"
        );
    }

    // Repaired; host-1's agent is killed (-9) while it is applying and comes back: the
    // cluster forms, with one etcd per host.
    std::fs::write(&blob, &etcd).expect("repair the artifact");
    poll("host-1 applying", Duration::from_secs(60), || {
        let n = api.get("/nodes/host-1").ok();
        let steps = &n["plan"]["report"]["steps"];
        let artifacts_done = steps.as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["name"] == "artifacts" && s["state"] == "done")
        });
        if artifacts_done {
            Ok(())
        } else {
            Err(n["plan"].to_string())
        }
    });
    let agent = agents.remove(1);
    agents.insert(1, agent.kill_and_restart(&configs[1]));
    wait_ready(&api, "crash", CONVERGE);
    for i in 0..3 {
        assert_eq!(etcd_processes(&lab, i), 1, "host-{i} runs one etcd");
    }

    // The controller is killed (-9) right after it accepted an attach, and restarted: the node
    // ends attached and placed, and the cluster ready; no node is left half-attached.
    api.post("/clusters/crash/attach", &json!({"nodes": ["host-3"]}))
        .ok();
    controller = controller.kill_and_restart();
    let api = controller.api();
    let c = wait_ready_with_nodes(&api, "crash", 4, CONVERGE);
    let (masters, workers) = roles(&c);
    assert_eq!(
        (masters.len(), workers),
        (3, vec!["host-3".to_owned()]),
        "{c}"
    );
    for n in api.nodes() {
        let attached = n["state"] == "attached";
        assert_eq!(attached, n["cluster"]["name"] == "crash", "{n}");
        assert_eq!(attached, n["role"].is_string(), "{n}");
    }

    // The database holds no private key in the clear: a dump or a stolen disk shows none.
    let mut files = std::fs::read(controller.database()).expect("the database file");
    files.extend(std::fs::read(controller.database().with_extension("db-wal")).unwrap_or_default());
    let files = String::from_utf8_lossy(&files);
    assert!(files.contains("qb-sealed-v1:"), "no sealed value");
    assert!(
        !files.contains("PRIVATE KEY"),
        "a private key in the database"
    );

    // A plan whose text was changed after signing is refused, reported, and never run, even
    // by one who holds the database and its key file.
    let marker = "/var/lib/qb/forged";
    tamper_stored_plan(
        &controller.database(),
        &controller.keyring(),
        "host-2",
        marker,
    );
    let agent = agents.remove(2);
    agents.insert(2, agent.kill_and_restart(&configs[2]));
    let n = poll("the forged plan refused", Duration::from_secs(60), || {
        let n = api.get("/nodes/host-2").ok();
        if n["plan"]["report"]["state"] == "refused" {
            Ok(n)
        } else {
            Err(n["plan"].to_string())
        }
    });
    let why = n["plan"]["report"]["steps"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("signature does not match"), "{n}");
    assert!(
        !agents[2].host_path(marker).exists(),
        "the forged service ran"
    );
    assert_eq!(
        etcd_processes(&lab, 2),
        1,
        "host-2 keeps running its last good plan"
    );
    // The cluster says so from its next engine pass on.
    poll("the cluster naming the refused plan", SHORT * 2, || {
        let c = cluster(&api, "crash");
        let message = c["state_message"].as_str().unwrap_or_default();
        if message.contains("signature") {
            Ok(())
        } else {
            Err(format!("{} — {message}", c["state"]))
        }
    });
}
