//! A real Kubernetes 1.20.2 cluster in the lab: the bundle `cargo xtask bundle` builds from
//! Debian's packages (the Kubernetes server binaries from Debian's source package) is imported
//! through the API, hosts in network namespaces attach, and the controller turns them into a
//! cluster whose Nodes are Ready and whose pods on different hosts talk to each other.
//!
//! `kubectl` runs on a master host itself (in its mount and network namespaces) with the
//! administrator's kubeconfig the plan put there.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::engine::{etcdctl, hosts, roles, wait_etcd_healthy, wait_ready};
use crate::harness::{Agent, Controller, poll, run};
use crate::http::Api;
use qb_lab::Lab;

/// Where `cargo xtask test` says the bundle is.
const BUNDLE_ENV: &str = "QB_LAB_BUNDLE";
/// First start of every component from scratch on two shared cores, images imported.
pub(crate) const BRING_UP: Duration = Duration::from_secs(300);
/// How long a master stays cut off once the others have a leader: ten of etcd's default
/// election timeouts (1 s), each at most doubled by its randomization.
const CUT_FOR_ELECTIONS: Duration = Duration::from_secs(10);

/// The directory of the Kubernetes bundle `cargo xtask test` passes; fails loudly without it.
pub(crate) fn bundle_dir() -> PathBuf {
    let dir = std::env::var_os(BUNDLE_ENV)
        .map(PathBuf::from)
        .unwrap_or_default();
    assert!(
        dir.join("bundle.json").is_file(),
        "no Kubernetes bundle at {BUNDLE_ENV}={dir:?}: run the suite with `cargo xtask test`, \
         or set {BUNDLE_ENV} to the directory `cargo xtask bundle` prints"
    );
    dir
}

/// Imports a bundle directory the way `qb bundle import` does: every artifact the controller
/// lacks, then the manifest.
pub fn import_bundle(api: &Api, dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("bundle.json")).expect("bundle.json");
    let manifest: Value = serde_json::from_str(&text).expect("bundle.json is JSON");
    for artifact in manifest["artifacts"].as_array().expect("artifacts") {
        let sha = artifact["sha256"].as_str().expect("sha256");
        let path = format!("/artifacts/{sha}");
        if api.call("HEAD", &format!("/api/v1{path}"), None).status == 200 {
            continue;
        }
        let file = artifact["file"].as_str().expect("file");
        let bytes = std::fs::read(dir.join(file)).expect("artifact file");
        let put = api.put_bytes(&path, &bytes);
        assert_eq!(put.status, 204, "uploading {file}: {:?}", put.body);
    }
    api.post("/bundles", &manifest).ok()
}

/// `kubectl` on `host` (a master) as the cluster administrator.
pub(crate) fn kubectl(host: &Agent, args: &[&str], stdin: Option<&str>) -> Output {
    let pid = host.proc.pid().to_string();
    let mut cmd = Command::new("nsenter");
    cmd.args(["-t", &pid, "-m", "-n", "kubectl"])
        .args([
            "--kubeconfig",
            "/etc/qb/kubernetes/admin.conf",
            "--request-timeout=10s",
        ])
        .args(args);
    match stdin {
        None => run(&mut cmd),
        Some(input) => {
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start kubectl");
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(input.as_bytes())
                .expect("write to kubectl");
            child.wait_with_output().expect("kubectl")
        }
    }
}

/// `kubectl … -o json`, parsed; `Err` with kubectl's complaint.
pub(crate) fn kubectl_json(host: &Agent, args: &[&str]) -> Result<Value, String> {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-o", "json"]);
    let out = kubectl(host, &all, None);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("kubectl printed no JSON: {e}"))
}

/// Waits until exactly `names` are the cluster's Nodes and every one is `Ready`.
pub(crate) fn wait_nodes_ready(host: &Agent, names: &[&str], timeout: Duration) {
    let mut want: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    want.sort();
    poll("every Node Ready", timeout, || {
        let list = kubectl_json(host, &["get", "nodes"])?;
        let mut seen = Vec::new();
        let mut not_ready = Vec::new();
        for node in list["items"].as_array().into_iter().flatten() {
            let name = node["metadata"]["name"].as_str().unwrap_or("?").to_owned();
            let ready = node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            if !ready {
                not_ready.push(name.clone());
            }
            seen.push(name);
        }
        seen.sort();
        if seen == want && not_ready.is_empty() {
            Ok(())
        } else {
            Err(format!("nodes {seen:?}, not ready {not_ready:?}"))
        }
    });
}

/// Kills what pods left in the hosts' cgroups (`/qb/<host>` in every hierarchy) and removes
/// the cgroups, when the test ends: pod processes live in network namespaces of their own, which
/// the lab's teardown does not see.
pub(crate) struct PodCgroups(pub(crate) Vec<String>);

impl Drop for PodCgroups {
    fn drop(&mut self) {
        let left = qb_lab::cgroups::remove(&self.0);
        if !left.is_empty() {
            eprintln!("left over: {left:?}");
        }
    }
}

/// A Deployment of busybox httpd on `nodes`, one pod per node, each serving its pod name.
fn web_deployment(nodes: &[&str]) -> String {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": nodes.len(),
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "automountServiceAccountToken": false,
                    "affinity": {
                        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [{"matchExpressions": [{
                                "key": "kubernetes.io/hostname", "operator": "In", "values": nodes,
                            }]}],
                        }},
                        "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                            "labelSelector": {"matchLabels": {"app": "web"}},
                            "topologyKey": "kubernetes.io/hostname",
                        }]},
                    },
                    "containers": [{
                        "name": "httpd",
                        "image": "qb.local/busybox:1",
                        "imagePullPolicy": "Never",
                        "command": ["/bin/sh", "-c",
                            "mkdir -p /www && echo \"hello from $(hostname)\" > /www/index.html && exec httpd -f -p 8080 -h /www"],
                        "ports": [{"containerPort": 8080}],
                    }],
                },
            },
        },
    })
    .to_string()
}

/// A pod on `node` that fetches `/` from each of `servers` (`ip port`) once and exits.
/// (busybox's `nc`: Debian's static busybox `wget` crashes.)
fn client_pod(node: &str, servers: &[String]) -> String {
    let script: Vec<String> = servers
        .iter()
        .map(|s| format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {s}"))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "client"},
        "spec": {
            "automountServiceAccountToken": false,
            "nodeName": node,
            "restartPolicy": "Never",
            "containers": [{
                "name": "wget",
                "image": "qb.local/busybox:1",
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script.join(" && ")],
            }],
        },
    })
    .to_string()
}

#[test]
fn attached_hosts_become_a_kubernetes_cluster_whose_pods_talk_across_hosts() {
    let bundle = bundle_dir();
    // Dropped last: the lab's teardown stops the kubelets first, so none recreates a pod.
    let _cgroups = PodCgroups((0..5).map(|i| format!("host-{i}")).collect());
    let lab = Lab::new(5).expect("the lab");
    let controller = Controller::start(&lab.bridge_ip());
    let api = controller.api();
    let started = Instant::now();
    import_bundle(&api, &bundle);
    eprintln!("bundle imported in {:?}", started.elapsed());
    let (_configs, agents) = hosts(&lab, &controller, 5);
    api.post(
        "/clusters",
        &json!({"name": "k8s", "pod_cidr": "10.244.0.0/16", "service_cidr": "10.96.0.0/12"}),
    )
    .ok();

    // Three hosts: three masters.
    let attach = Instant::now();
    api.post(
        "/clusters/k8s/attach",
        &json!({"nodes": ["host-0", "host-1", "host-2"]}),
    )
    .ok();
    let ready = wait_ready(&api, "k8s", BRING_UP);
    let (masters, workers) = roles(&ready);
    assert_eq!((masters.len(), workers.len()), (3, 0), "{ready}");
    let admin = &agents[0];
    wait_nodes_ready(admin, &["host-0", "host-1", "host-2"], BRING_UP);
    eprintln!(
        "3 hosts: attach → cluster ready and every Node Ready in {:?}",
        attach.elapsed()
    );

    // Two more: workers.
    let attach = Instant::now();
    api.post(
        "/clusters/k8s/attach",
        &json!({"nodes": ["host-3", "host-4"]}),
    )
    .ok();
    let ready = wait_ready(&api, "k8s", BRING_UP);
    let (masters, workers) = roles(&ready);
    assert_eq!(masters, ["host-0", "host-1", "host-2"]);
    assert_eq!(workers, ["host-3", "host-4"]);
    wait_nodes_ready(
        admin,
        &["host-0", "host-1", "host-2", "host-3", "host-4"],
        BRING_UP,
    );
    eprintln!(
        "2 more hosts: attach → every Node Ready in {:?}",
        attach.elapsed()
    );

    // Pods on the workers serve HTTP to a pod on a master, across hosts.
    let out = kubectl(
        admin,
        &["apply", "-f", "-"],
        Some(&web_deployment(&["host-3", "host-4"])),
    );
    assert!(out.status.success(), "{out:?}");
    let pods = poll("the web pods Running", BRING_UP, || {
        let list = kubectl_json(admin, &["get", "pods", "-l", "app=web"])?;
        let pods: Vec<(String, String, String)> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
            .map(|p| {
                (
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    p["spec"]["nodeName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    p["status"]["podIP"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        if pods.len() == 2 {
            Ok(pods)
        } else {
            Err(list.to_string())
        }
    });
    let mut nodes: Vec<&str> = pods.iter().map(|(_, node, _)| node.as_str()).collect();
    nodes.sort();
    assert_eq!(nodes, ["host-3", "host-4"], "{pods:?}");
    let servers: Vec<String> = pods.iter().map(|(_, _, ip)| format!("{ip} 8080")).collect();
    let out = kubectl(
        admin,
        &["apply", "-f", "-"],
        Some(&client_pod("host-1", &servers)),
    );
    assert!(out.status.success(), "{out:?}");
    poll("the client pod done", BRING_UP, || {
        let pod = kubectl_json(admin, &["get", "pod", "client"])?;
        match pod["status"]["phase"].as_str() {
            Some("Succeeded") => Ok(()),
            Some("Failed") => panic!("the client failed: {pod}"),
            other => Err(format!("{other:?}")),
        }
    });
    let logs = kubectl(admin, &["logs", "client"], None);
    let logs = String::from_utf8_lossy(&logs.stdout);
    for (name, ..) in &pods {
        assert!(logs.contains(&format!("hello from {name}")), "{logs}");
    }

    // The master host-3's API balancer tries first is cut off: both workers' kubelets go on
    // renewing their Node leases through the other masters.
    let cut = first_api_server(&api, &lab, "host-3");
    assert!(
        cut < 3,
        "host-3's balancer tries host-{cut} first, not a master"
    );
    let admin = &agents[(cut + 1) % 3];
    lab.link_down(cut).expect("pull the master's cable");
    let since = OffsetDateTime::now_utc() + Duration::from_secs(5);
    for worker in ["host-3", "host-4"] {
        poll(
            &format!("{worker}'s lease renewed with host-{cut} cut off"),
            BRING_UP,
            || {
                let lease =
                    kubectl_json(admin, &["get", "lease", "-n", "kube-node-lease", worker])?;
                let renewed = lease["spec"]["renewTime"]
                    .as_str()
                    .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
                match renewed {
                    Some(at) if at > since => Ok(()),
                    _ => Err(lease["spec"].to_string()),
                }
            },
        );
    }
    // The others have elected a leader (the leases were renewed through them). The cut master
    // stays away for several election timeouts, then comes back: with pre-vote its return does
    // not depose their leader. Without it, it brings one higher term for every election it
    // started alone, and the others stop answering until a new leader is elected.
    let staying = lab.host_ip((cut + 1) % 3);
    let term = etcd_term(admin, &staying);
    std::thread::sleep(CUT_FOR_ELECTIONS);
    lab.link_up(cut).expect("plug the master's cable back");
    for i in 0..3 {
        wait_etcd_healthy(&api, &format!("host-{i}"), BRING_UP);
    }
    let after = etcd_term(admin, &staying);
    eprintln!("host-{cut} cut off and back: raft term {term} before, {after} after");
    // One election more may come from load alone (a heartbeat late by an election timeout).
    assert!(
        after <= term + 1,
        "host-{cut}'s return deposed the leader: raft term {term} before, {after} after"
    );
    let admin = &agents[0];
    wait_nodes_ready(
        admin,
        &["host-0", "host-1", "host-2", "host-3", "host-4"],
        BRING_UP,
    );

    // Detach a worker: it is drained (its web pod evicted), wiped, its Node deleted.
    let (drained_pod, ..) = pods
        .iter()
        .find(|(_, node, _)| node == "host-4")
        .expect("a web pod on host-4");
    leave(&api, &lab, &agents, 4);
    let web = kubectl_json(admin, &["get", "pods", "-l", "app=web"]).expect("pods");
    assert!(
        web["items"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|p| p["metadata"]["name"] != drained_pod.as_str()),
        "{drained_pod} was not evicted: {web}"
    );
    wait_nodes_ready(admin, &["host-0", "host-1", "host-2", "host-3"], BRING_UP);

    // Detach a master: host-3 (a worker) takes its place in etcd and the control plane.
    leave(&api, &lab, &agents, 2);
    let ready = wait_ready(&api, "k8s", BRING_UP);
    assert_eq!(roles(&ready).0, ["host-0", "host-1", "host-3"], "{ready}");
    wait_nodes_ready(admin, &["host-0", "host-1", "host-3"], BRING_UP);

    // Both come back.
    let attach = Instant::now();
    api.post(
        "/clusters/k8s/attach",
        &json!({"nodes": ["host-2", "host-4"]}),
    )
    .ok();
    wait_ready(&api, "k8s", BRING_UP);
    wait_nodes_ready(
        admin,
        &["host-0", "host-1", "host-2", "host-3", "host-4"],
        BRING_UP,
    );
    eprintln!(
        "2 hosts re-attached: attach → every Node Ready in {:?}",
        attach.elapsed()
    );

    // Deleting the cluster returns every host to the pool, wiped.
    api.delete("/clusters/k8s?force=true").ok();
    for i in 0..5 {
        wait_wiped(&api, &lab, &agents, i);
    }
    let events = api
        .get("/events?object=k8s&action=cluster.&limit=1000")
        .ok();
    let actions: Vec<&str> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in [
        "cluster.nodes_attached",
        "cluster.nodes_detached",
        "cluster.deleted",
    ] {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }
}

/// The lab index of the master whose API server `node`'s balancer tries first, from the
/// message of its plan's `api-balancer` step (`127.0.0.1:6444 -> <address>:6443, ...`).
fn first_api_server(api: &Api, lab: &Lab, node: &str) -> usize {
    let n = api.node(node);
    let message = n["plan"]["report"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == "api-balancer")
        .and_then(|s| s["message"].as_str())
        .unwrap_or_else(|| panic!("{node} reports no api-balancer step: {}", n["plan"]));
    let first = message
        .split_once(" -> ")
        .and_then(|(_, upstreams)| upstreams.split(", ").next())
        .and_then(|u| u.rsplit_once(':'))
        .map(|(ip, _)| ip.to_owned())
        .unwrap_or_else(|| panic!("{node}'s api-balancer step says {message:?}"));
    (0..5)
        .find(|&i| lab.host_ip(i) == first)
        .unwrap_or_else(|| panic!("{first} is no host of the lab"))
}

/// The Raft term of the etcd member at lab address `ip`, asked with `host`'s certificate.
fn etcd_term(host: &Agent, ip: &str) -> u64 {
    let out = etcdctl(
        host,
        &format!("https://{ip}:2379"),
        &["endpoint", "status", "-w", "json"],
    );
    let status: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    status[0]["Status"]["raftTerm"]
        .as_u64()
        .unwrap_or_else(|| panic!("no raft term in {status}"))
}

/// Detaches host `i` and waits until it is back in the pool, wiped.
fn leave(api: &Api, lab: &Lab, agents: &[Agent], i: usize) {
    let name = format!("host-{i}");
    api.post("/clusters/k8s/detach", &json!({"nodes": [name]}))
        .ok();
    wait_wiped(api, lab, agents, i);
}

/// Waits until host `i` is in the pool with nothing of a cluster left: no component running
/// in its namespace but the agent, no cgroup, no installed file.
fn wait_wiped(api: &Api, lab: &Lab, agents: &[Agent], i: usize) {
    let name = format!("host-{i}");
    poll(&format!("{name} back in the pool"), BRING_UP, || {
        let n = api.get(&format!("/nodes/{name}")).ok();
        // The wipe plan applied (a deleted cluster's nodes are in the pool before it is sent).
        let report = &n["plan"]["report"];
        let applied = report["state"] == "applied"
            && report["generation"] == n["plan"]["generation"]
            && report["steps"][0]["name"] == "wipe";
        if n["state"] == "authorized" && applied {
            Ok(())
        } else {
            // The cluster is gone once deleted.
            let c = api.get("/clusters/k8s").body;
            Err(format!(
                "{}: {} — {}",
                n["state"], c["state"], c["state_message"]
            ))
        }
    });
    let agent_pid = agents[i].proc.pid().to_string();
    poll(
        &format!("{name} runs nothing but its agent"),
        BRING_UP,
        || {
            let others: Vec<String> = lab
                .pids(i)
                .into_iter()
                .filter(|p| *p != agent_pid)
                .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).ok())
                .map(|c| c.replace('\0', " "))
                .collect();
            if others.is_empty() {
                Ok(())
            } else {
                Err(format!("{others:?}"))
            }
        },
    );
    for hierarchy in ["pids", "memory", "cpu"] {
        let cgroup = Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join("qb")
            .join(&name);
        assert!(!cgroup.exists(), "{} is left", cgroup.display());
    }
    for path in ["/var/lib/qb/bin/kubelet", "/etc/qb/pki"] {
        let left = agents[i].host_path(path);
        assert!(!left.exists(), "{name}: {path} is left");
    }
    // The kubelet makes its root directory a mount point (a bind onto itself), so it may stay,
    // empty.
    for dir in [
        "/var/lib/qb/kubelet",
        "/var/lib/qb/containerd",
        "/var/lib/qb/etcd",
    ] {
        let left = std::fs::read_dir(agents[i].host_path(dir))
            .map(|entries| entries.count())
            .unwrap_or(0);
        assert_eq!(left, 0, "{name}: {dir} is not empty");
    }
}
