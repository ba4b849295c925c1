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
    assert_room_for_a_cluster(&dir);
    dir
}

/// The most hosts a lab test attaches to clusters at once.
const MOST_HOSTS: u64 = 6;
/// What the lab's kubelets keep free: below it they evict every pod (their `evictionHard`).
const EVICTION_FLOOR: u64 = 2 << 30;

/// Fails at once, saying why, when the disk the lab's hosts live on has too little room for a
/// cluster: every host keeps its own copy of the bundle's artifacts and images, and kubelets
/// evict every pod once less than [`EVICTION_FLOOR`] is free, which a test would otherwise
/// see minutes later as pods that never run.
fn assert_room_for_a_cluster(bundle: &Path) {
    let bundle_bytes: u64 = std::fs::read_dir(bundle.join("bin"))
        .into_iter()
        .chain(std::fs::read_dir(bundle.join("images")))
        .chain(std::fs::read_dir(bundle.join("cni")))
        .flatten()
        .flatten()
        .filter_map(|entry| entry.metadata().ok())
        .map(|meta| meta.len())
        .sum();
    // The controller's copy, each host's, and as much again for images unpacked in containerd.
    let needed = EVICTION_FLOOR + bundle_bytes * (1 + 2 * MOST_HOSTS);
    let tmp = std::env::temp_dir();
    let stat = rustix::fs::statvfs(&tmp).expect("statvfs of the temporary directory");
    let free = stat.f_bavail * stat.f_frsize;
    let gib = |bytes: u64| bytes as f64 / f64::from(1 << 30);
    assert!(
        free >= needed,
        "only {:.1} GiB free on the disk of {tmp:?}; a lab cluster needs about {:.1} GiB \
         (each of up to {MOST_HOSTS} hosts keeps its own copy of the bundle's {:.1} GiB, and the \
         lab's kubelets evict every pod once less than {:.0} GiB is free): free some space",
        gib(free),
        gib(needed),
        gib(bundle_bytes),
        gib(EVICTION_FLOOR),
    );
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

/// `kubectl` on `host` (a master) as the cluster administrator; a host with a root filesystem
/// of its own needs a `kubectl` in it.
pub(crate) fn kubectl(host: &Agent, args: &[&str], stdin: Option<&str>) -> Output {
    let pid = host.proc.pid().to_string();
    let mut cmd = Command::new("nsenter");
    cmd.args(["-t", &pid, "-m", "-n"]);
    if host.chroot {
        cmd.arg("-r");
    }
    cmd.arg("kubectl")
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

/// A Deployment of busybox httpd on `nodes`, one pod per node, each serving its pod name, and
/// the Service `web` (port 80) in front of them.
///
/// A new list of nodes changes the pod template, so the Deployment replaces every pod. It does
/// so all at once (`Recreate`): a rolling update would surge new pods that the anti-affinity
/// keeps off every node still running an old one, and step through the nodes one termination
/// and one scheduling retry at a time, minutes on a slow machine. httpd as PID 1 ignores
/// SIGTERM, hence the short grace period.
pub(crate) fn web(nodes: &[String]) -> String {
    web_with_grace(nodes, 1)
}

/// [`web`], whose pods serve on for `grace_seconds` once told to stop (as pods moved off a
/// drained node must, while every host's kube-proxy stops sending them traffic).
pub(crate) fn web_with_grace(nodes: &[String], grace_seconds: u32) -> String {
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": nodes.len(),
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": grace_seconds,
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
    });
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": 8080}],
        },
    });
    format!("{deployment}\n{service}\n")
}

/// Tries per source to reach every backend of the Service: with 6 backends picked at random,
/// the chance that one is never picked is below 1e-7.
const SERVICE_TRIES: usize = 120;

/// A shell loop that fetches `/` from `target` (`ip port`) `tries` times with busybox `nc`
/// (`busybox` is the program), printing `<tag> <last line of the answer>` each time.
/// (Debian's static busybox `wget` crashes.)
fn fetch_loop(busybox: &str, tag: &str, target: &str, tries: usize) -> String {
    format!(
        "i=0; while [ $i -lt {tries} ]; do i=$((i+1)); \
         echo \"{tag} $(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | {busybox} nc -w 3 {target} 2>/dev/null | tail -n 1)\"; done"
    )
}

/// A pod on `node` that fetches from every server once (`POD <ip> <answer>`) and from the
/// Service `SERVICE_TRIES` times (`SVC - <answer>`), looks the Service up by name
/// (`DNS <address>`), then exits.
fn probe_pod(name: &str, node: &str, servers: &[String], service_ip: &str) -> String {
    let mut script: Vec<String> = servers
        .iter()
        .map(|ip| fetch_loop("", &format!("POD {ip}"), &format!("{ip} 8080"), 1))
        .collect();
    script.push(fetch_loop(
        "",
        "SVC -",
        &format!("{service_ip} 80"),
        SERVICE_TRIES,
    ));
    // The Service by name, from the cluster DNS (its replicas may be starting: a while).
    script.push(
        "i=0; until out=$(nslookup web.default.svc.cluster.local 2>&1) || [ $i -ge 20 ]; \
         do i=$((i+1)); sleep 2; done; \
         echo \"DNS $(echo \"$out\" | sed -n 's/^Address: *//p' | tail -n 1)\""
            .to_owned(),
    );
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "probe"}},
        "spec": {
            "automountServiceAccountToken": false,
            "nodeName": node,
            "restartPolicy": "Never",
            "containers": [{
                "name": "probe",
                "image": "qb.local/busybox:1",
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script.join("; ")],
            }],
        },
    })
    .to_string()
}

/// The `web` pods, once exactly one runs on each of `hosts`: (pod name, node, pod IP).
pub(crate) fn web_pods(admin: &Agent, hosts: &[String]) -> Vec<(String, String, String)> {
    poll("a web pod Running on each host", BRING_UP, || {
        let list = kubectl_json(admin, &["get", "pods", "-l", "app=web"])?;
        let mut pods: Vec<(String, String, String)> = Vec::new();
        for p in list["items"].as_array().into_iter().flatten() {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            let running = p["status"]["phase"] == "Running"
                && p["status"]["podIP"].is_string()
                && p["metadata"]["deletionTimestamp"].is_null()
                && p["status"]["containerStatuses"][0]["ready"] == true;
            if running {
                pods.push((
                    text(&p["metadata"]["name"]),
                    text(&p["spec"]["nodeName"]),
                    text(&p["status"]["podIP"]),
                ));
            }
        }
        pods.sort_by(|a, b| a.1.cmp(&b.1));
        let nodes: Vec<&String> = pods.iter().map(|(_, n, _)| n).collect();
        let want: Vec<&String> = hosts.iter().collect();
        if nodes == want && pods.len() == list["items"].as_array().map_or(0, Vec::len) {
            Ok(pods)
        } else {
            // Every pod as it is, with what holds it (unschedulable, a container waiting).
            let seen: Vec<String> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let why: Vec<String> = p["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|c| c["status"] != "True" && c["message"].is_string())
                        .map(|c| format!("{}: {}", c["type"], c["message"]))
                        .chain(
                            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                                .as_str()
                                .map(str::to_owned),
                        )
                        .collect();
                    format!(
                        "{} on {} {}{} {}",
                        p["metadata"]["name"],
                        p["spec"]["nodeName"],
                        p["status"]["phase"],
                        if p["metadata"]["deletionTimestamp"].is_null() {
                            ""
                        } else {
                            " (terminating)"
                        },
                        why.join("; ")
                    )
                })
                .collect();
            Err(format!(
                "web pods running on {nodes:?}, want {want:?}; pods: {seen:#?}"
            ))
        }
    })
}

/// Traffic as a cluster's users send it: from a pod on every host to the `web` pod on every
/// host (every ordered pair), and to the `web` Service from a pod on every host and from every
/// host itself, each reaching every backend; and the Service's name looked up in the cluster
/// DNS from a pod on every host. Panics naming what failed; returns the pair matrix.
pub(crate) fn check_traffic(admin: &Agent, agents: &[Agent], hosts: &[String]) -> String {
    try_traffic(admin, agents, hosts).unwrap_or_else(|failures| panic!("{failures}"))
}

/// [`check_traffic`], saying what failed (and what the hosts' packet filters and the probes
/// saw) rather than panicking.
pub(crate) fn try_traffic(
    admin: &Agent,
    agents: &[Agent],
    hosts: &[String],
) -> Result<String, String> {
    let pods = web_pods(admin, hosts);
    // Each API call is tried until it answers: the API may be slow on a busy machine.
    let service = poll("the web Service", BRING_UP, || {
        kubectl_json(admin, &["get", "service", "web"])
    });
    let service_ip = service["spec"]["clusterIP"]
        .as_str()
        .expect("a cluster IP")
        .to_owned();
    let backends: std::collections::BTreeSet<String> = pods
        .iter()
        .map(|(name, ..)| format!("hello from {name}"))
        .collect();
    let ips: Vec<String> = pods.iter().map(|(.., ip)| ip.clone()).collect();
    wait_service_programmed(agents, hosts, &ips);
    // Probe pods: one per host, all at once.
    let _ = kubectl(
        admin,
        &["delete", "pod", "-l", "app=probe", "--wait=true"],
        None,
    );
    let mut manifests = String::new();
    for host in hosts {
        manifests.push_str(&probe_pod(
            &format!("probe-{host}"),
            host,
            &ips,
            &service_ip,
        ));
        manifests.push('\n');
    }
    poll("the probe pods made", BRING_UP, || {
        let out = kubectl(admin, &["apply", "-f", "-"], Some(&manifests));
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    let mut failures = Vec::new();
    let mut matrix = format!("{:>8} │ {}\n", "from\\to", hosts.join(" "));
    for host in hosts {
        let name = format!("probe-{host}");
        poll(&format!("{name} done"), BRING_UP, || {
            let pod = kubectl_json(admin, &["get", "pod", &name])?;
            match pod["status"]["phase"].as_str() {
                Some("Succeeded") => Ok(()),
                Some("Failed") => panic!("{name} failed: {pod}"),
                other => Err(format!("{other:?}")),
            }
        });
        let logs = kubectl(admin, &["logs", &name], None);
        let logs = String::from_utf8_lossy(&logs.stdout).into_owned();
        let mut row = format!("{host:>8} │");
        for (server, node, ip) in &pods {
            let ok = logs
                .lines()
                .any(|l| l == format!("POD {ip} hello from {server}"));
            row.push_str(if ok { "   ok " } else { "   -- " });
            if !ok {
                failures.push(format!("pod on {host} → pod on {node} ({ip})"));
            }
        }
        matrix.push_str(&format!("{row}\n"));
        let missed = never_reached(&backends, &logs);
        if !missed.is_empty() {
            failures.push(format!(
                "Service {service_ip} from a pod on {host}: never reached {missed:?}; answers: {:?}\n{}",
                answers(&logs),
                service_path(&agents[index_of(host)], &pods),
            ));
        }
        if !logs.lines().any(|l| l == format!("DNS {service_ip}")) {
            let said: Vec<&str> = logs.lines().filter(|l| l.starts_with("DNS")).collect();
            // What the DNS add-on was doing.
            let pods = kubectl(
                admin,
                &["get", "pods", "-n", "kube-system", "-o", "wide"],
                None,
            );
            let dns_logs = kubectl(
                admin,
                &[
                    "logs",
                    "-n",
                    "kube-system",
                    "-l",
                    "app.kubernetes.io/name=qb-dns",
                    "--tail=20",
                ],
                None,
            );
            failures.push(format!(
                "web.default.svc.cluster.local from a pod on {host}: {said:?}, not {service_ip}\n{}\n{}{}",
                String::from_utf8_lossy(&pods.stdout),
                String::from_utf8_lossy(&dns_logs.stdout),
                String::from_utf8_lossy(&dns_logs.stderr),
            ));
        }
    }
    // From each host itself (its network namespace), as a process on the host would.
    for host in hosts {
        let agent = &agents[index_of(host)];
        let script = fetch_loop(
            "/bin/busybox",
            "SVC -",
            &format!("{service_ip} 80"),
            SERVICE_TRIES,
        );
        let out = run(Command::new("nsenter")
            .args(["-t", &agent.proc.pid().to_string(), "-n", "sh", "-c"])
            .arg(&script));
        let said = String::from_utf8_lossy(&out.stdout);
        let missed = never_reached(&backends, &said);
        if !missed.is_empty() {
            failures.push(format!(
                "Service {service_ip} from host {host}: never reached {missed:?}; answers: {:?}",
                answers(&said)
            ));
        }
    }
    let _ = kubectl(
        admin,
        &["delete", "pod", "-l", "app=probe", "--wait=false"],
        None,
    );
    if failures.is_empty() {
        Ok(matrix)
    } else {
        Err(format!("{}\n{matrix}", failures.join("\n")))
    }
}

/// How many times each answer came back to a probe's fetches of the Service (an empty answer:
/// nothing came back in time).
fn answers(output: &str) -> std::collections::BTreeMap<&str, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for answer in output.lines().filter_map(|l| l.strip_prefix("SVC -")) {
        *counts.entry(answer.trim()).or_default() += 1;
    }
    counts
}

/// Where `host` sends the `web` Service and each backend: its packet filter's rules for the
/// Service, and its route to every backend pod.
fn service_path(host: &Agent, pods: &[(String, String, String)]) -> String {
    let pid = host.proc.pid().to_string();
    let netns = |args: &[&str]| {
        let out = run(Command::new("nsenter").args(["-t", &pid, "-n"]).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let rules: Vec<String> = netns(&["iptables-save", "-t", "nat"])
        .lines()
        .filter(|l| l.contains("default/web"))
        .map(str::to_owned)
        .collect();
    let routes: Vec<String> = pods
        .iter()
        .map(|(name, node, ip)| {
            format!(
                "{name} on {node}: {}",
                netns(&["ip", "route", "get", ip]).trim()
            )
        })
        .collect();
    format!("  {}\n  {}", rules.join("\n  "), routes.join("\n  "))
}

/// Waits until every host's kube-proxy sends the `web` Service to exactly `ips`: it programs a
/// change of the Service's endpoints a moment after it, later on a busy machine, and traffic
/// sent meanwhile goes to pods that are gone.
pub(crate) fn wait_service_programmed(agents: &[Agent], hosts: &[String], ips: &[String]) {
    let mut want: Vec<&str> = ips.iter().map(String::as_str).collect();
    want.sort_unstable();
    for host in hosts {
        let pid = agents[index_of(host)].proc.pid().to_string();
        poll(
            &format!("kube-proxy on {host} sending the web Service to every backend"),
            BRING_UP,
            || {
                let out = run(Command::new("nsenter").args([
                    "-t",
                    &pid,
                    "-n",
                    "iptables-save",
                    "-t",
                    "nat",
                ]));
                let rules = String::from_utf8_lossy(&out.stdout);
                let mut backends: Vec<&str> = rules
                    .lines()
                    .filter(|l| l.contains("\"default/web\""))
                    .filter_map(|l| l.split("--to-destination ").nth(1))
                    .filter_map(|d| d.split_whitespace().next()?.strip_suffix(":8080"))
                    .collect();
                backends.sort_unstable();
                backends.dedup();
                if backends == want {
                    Ok(())
                } else {
                    Err(format!("{backends:?}, want {want:?}"))
                }
            },
        );
    }
}

/// The backends no `SVC - <answer>` line of `output` came from.
fn never_reached<'b>(
    backends: &'b std::collections::BTreeSet<String>,
    output: &str,
) -> Vec<&'b String> {
    let seen: std::collections::BTreeSet<&str> = output
        .lines()
        .filter_map(|l| l.strip_prefix("SVC - "))
        .collect();
    backends
        .iter()
        .filter(|b| !seen.contains(b.as_str()))
        .collect()
}

fn index_of(host: &str) -> usize {
    host.trim_start_matches("host-").parse().expect("host-N")
}

pub(crate) fn names(hosts: std::ops::Range<usize>) -> Vec<String> {
    hosts.map(|i| format!("host-{i}")).collect()
}

/// What a lab host has that a cluster could leave behind: interfaces, addresses, routes,
/// packet filter rules, mounts (of the agent's mount namespace), processes besides the agent,
/// and files under the directories components use.
#[derive(Debug, PartialEq)]
struct HostState {
    links: Vec<String>,
    addresses: Vec<String>,
    routes: Vec<String>,
    rules: Vec<String>,
    mounts: Vec<String>,
    processes: Vec<String>,
    files: Vec<String>,
}

fn host_state(lab: &Lab, agent: &Agent, i: usize) -> HostState {
    let ns = lab.netns(i);
    let ip_json = |args: &[&str]| -> Vec<Value> {
        let out = run(Command::new("ip").args(["-n", &ns, "-j"]).args(args));
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let mut links: Vec<String> = ip_json(&["link", "show"])
        .iter()
        .map(|l| format!("{} master={}", l["ifname"], l["master"]))
        .collect();
    let mut addresses: Vec<String> = ip_json(&["addr", "show"])
        .iter()
        .flat_map(|l| {
            l["addr_info"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |a| format!("{} {}/{}", l["ifname"], a["local"], a["prefixlen"]))
        })
        .collect();
    let mut routes = Vec::new();
    for family in ["-4", "-6"] {
        let out =
            run(Command::new("ip").args(["-n", &ns, family, "route", "show", "table", "all"]));
        routes.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned),
        );
    }
    // Rules and the chains they are in; the tables' built-in chains exist once any tool looked.
    let builtin = ["INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"];
    let mut rules = Vec::new();
    for save in ["iptables-save", "ip6tables-save"] {
        let out = run(Command::new("ip").args(["netns", "exec", &ns, save]));
        rules.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| {
                    l.starts_with("-A")
                        || l.strip_prefix(':').is_some_and(|c| {
                            !builtin.contains(&c.split_whitespace().next().unwrap_or_default())
                        })
                })
                .map(|l| format!("{save}: {l}")),
        );
    }
    let mountinfo = std::fs::read_to_string(format!("/proc/{}/mountinfo", agent.proc.pid()))
        .expect("the agent's mounts");
    // Mounts on the directories components use; the machine's own, and the lab's namespaces
    // (made by other tests too), come from outside the host.
    let mut mounts: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .filter(|m| {
            crate::harness::HOST_DIRS.iter().any(|d| m.starts_with(d))
                && !m.starts_with("/run/netns/qba")
        })
        .collect();
    let mut processes = other_processes(lab, agent, i);
    let mut files = Vec::new();
    for dir in crate::harness::HOST_DIRS {
        let root = agent.host_path(dir);
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let path = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(path);
                } else {
                    files.push(format!(
                        "{dir}/{}",
                        path.strip_prefix(&root).unwrap_or(&path).display()
                    ));
                }
            }
        }
    }
    for list in [
        &mut links,
        &mut addresses,
        &mut routes,
        &mut rules,
        &mut mounts,
        &mut processes,
        &mut files,
    ] {
        list.sort();
        list.dedup();
    }
    HostState {
        links,
        addresses,
        routes,
        rules,
        mounts,
        processes,
        files,
    }
}

/// The command lines of what runs in host `i`'s network namespace besides its agent (the
/// supervisor and the agent it runs).
fn other_processes(lab: &Lab, agent: &Agent, i: usize) -> Vec<String> {
    let supervisor = agent.proc.pid().to_string();
    let children =
        std::fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children"))
            .unwrap_or_default();
    let agent_pids: Vec<&str> = std::iter::once(supervisor.as_str())
        .chain(children.split_whitespace())
        .collect();
    lab.pids(i)
        .into_iter()
        .filter(|p| !agent_pids.contains(&p.as_str()))
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).ok())
        .map(|c| c.replace('\0', " "))
        .collect()
}

/// Waits until host `i`, in no cluster now, is as it was before it first joined one.
fn wait_clean(lab: &Lab, agent: &Agent, i: usize, before: &HostState) {
    poll(
        &format!("host-{i} as it was before its first cluster"),
        BRING_UP,
        || {
            let now = host_state(lab, agent, i);
            if &now == before {
                Ok(())
            } else {
                Err(format!("before: {before:#?}\nnow: {now:#?}"))
            }
        },
    );
}

/// The plan's routes on host `i` (`ip route` lines the agent added).
fn plan_routes(lab: &Lab, i: usize) -> Vec<String> {
    let out = run(Command::new("ip").args(["-n", &lab.netns(i), "route", "show", "proto", "196"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The role labels and whether the master taint is set, of every Node.
fn node_roles(admin: &Agent) -> Vec<(String, Vec<String>, bool)> {
    let list = kubectl_json(admin, &["get", "nodes"]).expect("nodes");
    let mut roles: Vec<(String, Vec<String>, bool)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let labels: Vec<String> = n["metadata"]["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| {
                    k.strip_prefix("node-role.kubernetes.io/")
                        .map(str::to_owned)
                })
                .collect();
            let tainted = n["spec"]["taints"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["key"] == "node-role.kubernetes.io/master");
            (
                n["metadata"]["name"].as_str().unwrap_or("?").to_owned(),
                labels,
                tainted,
            )
        })
        .collect();
    roles.sort();
    roles
}

/// Waits until every Node carries its role's labels (masters `control-plane` and `master`,
/// workers `worker`) and no master taint.
fn wait_role_labels(admin: &Agent, masters: &[String], workers: &[String]) {
    let mut want: Vec<(String, Vec<String>, bool)> = masters
        .iter()
        .map(|m| {
            (
                m.clone(),
                vec!["control-plane".to_owned(), "master".to_owned()],
                false,
            )
        })
        .chain(
            workers
                .iter()
                .map(|w| (w.clone(), vec!["worker".to_owned()], false)),
        )
        .collect();
    want.sort();
    poll("every Node labelled with its role", BRING_UP, || {
        let roles = node_roles(admin);
        if roles == want {
            Ok(())
        } else {
            Err(format!("{roles:?}"))
        }
    });
}

/// A cluster as people use it, from its first hosts to its last: 3 masters and 2 workers with
/// a workload on every host; pod-to-pod between every pair of hosts and the Service from every
/// host and pod, checked after each change: a master cut off and back, a host power-cycled, a
/// sixth host attached. Then reuse: a host that ran pods is detached (and is exactly as it was
/// before it first joined), joins a second cluster with other ranges and serves there; two
/// workers follow it there (their pods evicted first), one joining while the other's drain is
/// stalled and the controller killed in the middle of that drain; that cluster shrinks from 3
/// nodes to 2 (a master demoted) and grows back to 3 masters with 3 healthy etcd members, the
/// controller killed in the middle of the join. Deleting both clusters leaves every host as it
/// was.
#[test]
fn attached_hosts_become_a_kubernetes_cluster_that_keeps_working_while_used() {
    let bundle = bundle_dir();
    // Dropped last: the lab's teardown stops the kubelets first, so none recreates a pod.
    let _cgroups = PodCgroups((0..6).map(|i| format!("host-{i}")).collect());
    let lab = Lab::new(6).expect("the lab");
    lab.add_gateway().expect("the hosts' gateway");
    let controller = Controller::start(&lab.bridge_ip());
    let api = controller.api();
    let started = Instant::now();
    import_bundle(&api, &bundle);
    eprintln!("bundle imported in {:?}", started.elapsed());
    let (configs, mut agents) = hosts(&lab, &controller, 6);
    let pristine: Vec<HostState> = (0..6).map(|i| host_state(&lab, &agents[i], i)).collect();
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
    wait_nodes_ready(&agents[0], &["host-0", "host-1", "host-2"], BRING_UP);
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
    let five = names(0..5);
    let five_refs: Vec<&str> = five.iter().map(String::as_str).collect();
    wait_nodes_ready(&agents[0], &five_refs, BRING_UP);
    eprintln!(
        "2 more hosts: attach → every Node Ready in {:?}",
        attach.elapsed()
    );
    wait_role_labels(&agents[0], &masters, &workers);

    // A workload on every host, and its Service.
    let admin = &agents[0];
    let out = kubectl(admin, &["apply", "-f", "-"], Some(&web(&five)));
    assert!(out.status.success(), "{out:?}");
    let matrix = check_traffic(admin, &agents, &five);
    eprintln!("used cluster, pod to pod (rows: client's host):\n{matrix}");
    // The hosts run pods: their pod bridges have addresses, and each node's address is still
    // its host's, chosen once; routes go through those addresses only. (In the second cluster
    // below, the pod bridge's 10.30.x.1 sorts before the host's 10.77.x.y: a node address taken
    // afresh from the host's first address would move there when that cluster grows.)
    let mut listing = String::from("NAME    STATE     ROLE    ADDRESS       HOST'S ADDRESSES\n");
    for i in 0..5 {
        let n = api.node(&format!("host-{i}"));
        assert_eq!(n["address"], lab.host_ip(i), "{n}");
        listing.push_str(&format!(
            "{:<7} {:<9} {:<7} {:<13} {}\n",
            n["name"].as_str().unwrap_or("?"),
            n["state"].as_str().unwrap_or("?"),
            n["role"].as_str().unwrap_or("-"),
            n["address"].as_str().unwrap_or("-"),
            n["facts"]["addresses"]
        ));
    }
    eprintln!("node list with pods running:\n{listing}");
    for i in [0, 3] {
        let out = run(Command::new("ip").args(["-n", &lab.netns(i), "route"]));
        eprintln!(
            "ip route of host-{i}:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // Someone deletes a route of the plan: the agent puts it back.
    let routes = plan_routes(&lab, 3);
    assert_eq!(routes.len(), 4, "{routes:?}");
    let destination = routes[0]
        .split_whitespace()
        .next()
        .expect("a destination")
        .to_owned();
    run(Command::new("ip").args(["-n", &lab.netns(3), "route", "del", &destination]));
    poll(
        "host-3's deleted route back",
        Duration::from_secs(30),
        || {
            let now = plan_routes(&lab, 3);
            if now == routes {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        },
    );

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
    wait_nodes_ready(&agents[0], &five_refs, BRING_UP);

    // host-4 loses power and boots: everything comes back, and still works.
    crate::faults::power_cycle(&lab, &agents[4], 4);
    let booted = now_in_seconds();
    let agent = agents.remove(4);
    agents.insert(4, agent.kill_and_restart(&configs[4]));
    let admin = &agents[0];
    let boot = Instant::now();
    wait_ready(&api, "k8s", BRING_UP);
    wait_nodes_ready(admin, &five_refs, BRING_UP);
    // Its web pod runs again (the API keeps the old pod's status until the kubelet reports).
    poll("host-4's web pod started again", BRING_UP, || {
        let list = kubectl_json(admin, &["get", "pods", "-l", "app=web"])?;
        let started = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["spec"]["nodeName"] == "host-4")
            .filter_map(|p| {
                let at = p["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
                    .as_str()?;
                OffsetDateTime::parse(at, &Rfc3339).ok()
            })
            .any(|at| at >= booted);
        if started {
            Ok(())
        } else {
            Err(list.to_string())
        }
    });
    check_traffic(admin, &agents, &five);
    eprintln!(
        "host-4 power-cycled: traffic as before {:?} after it booted",
        boot.elapsed()
    );

    // A sixth host: a worker, with a pod of its own.
    let join = Instant::now();
    api.post("/clusters/k8s/attach", &json!({"nodes": ["host-5"]}))
        .ok();
    let ready = wait_ready(&api, "k8s", BRING_UP);
    // How long a worker's join takes when nothing else goes on.
    let usual_join = join.elapsed();
    assert_eq!(roles(&ready).1, ["host-3", "host-4", "host-5"], "{ready}");
    let six = names(0..6);
    let six_refs: Vec<&str> = six.iter().map(String::as_str).collect();
    wait_nodes_ready(admin, &six_refs, BRING_UP);
    let out = kubectl(admin, &["apply", "-f", "-"], Some(&web(&six)));
    assert!(out.status.success(), "{out:?}");
    check_traffic(admin, &agents, &six);
    eprintln!("host-5 attached: traffic between all 6 hosts");

    // host-5, which ran pods, leaves: it is drained, wiped, and as it was before it joined.
    leave(&api, &lab, &agents, "k8s", 5);
    wait_clean(&lab, &agents[5], 5, &pristine[5]);
    eprintln!("host-5 detached: as it was before its first attach");
    let out = kubectl(admin, &["apply", "-f", "-"], Some(&web(&five)));
    assert!(out.status.success(), "{out:?}");

    // It joins a second cluster with other ranges, and serves there.
    api.post(
        "/clusters",
        &json!({"name": "reuse", "pod_cidr": "10.30.0.0/16", "service_cidr": "10.31.0.0/16"}),
    )
    .ok();
    api.post("/clusters/reuse/attach", &json!({"nodes": ["host-5"]}))
        .ok();
    wait_ready(&api, "reuse", BRING_UP);
    assert_eq!(api.node("host-5")["address"], lab.host_ip(5));
    let other = &agents[5];
    wait_nodes_ready(other, &["host-5"], BRING_UP);
    let only = names(5..6);
    let out = kubectl(other, &["apply", "-f", "-"], Some(&web(&only)));
    assert!(out.status.success(), "{out:?}");
    check_traffic(other, &agents, &only);
    eprintln!("host-5 reused in a cluster with other ranges: it serves there");

    // Both workers of k8s leave and, used, join the second cluster: three masters there.
    // host-4 leaves first, its web pod evicted.
    let mut serving = five.clone();
    let evicted = web_pods(admin, &serving)
        .into_iter()
        .find(|(_, node, _)| node == "host-4")
        .expect("a web pod on host-4")
        .0;
    leave(&api, &lab, &agents, "k8s", 4);
    let left = kubectl_json(admin, &["get", "pods", "-l", "app=web"]).expect("pods");
    assert!(
        left["items"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|p| p["metadata"]["name"] != evicted.as_str()),
        "{evicted} was not evicted: {left}"
    );
    serving.retain(|h| h != "host-4");
    let out = kubectl(admin, &["apply", "-f", "-"], Some(&web(&serving)));
    assert!(out.status.success(), "{out:?}");

    // host-3's drain stalls (its kubelet frozen, its web pod never goes). Meanwhile host-4
    // joins the second cluster as fast as a join goes when nothing stalls, while the first
    // still drains host-3: one cluster's drain holds no other cluster up.
    let kubelet = component_pid(&lab, 3, "kubelet");
    run(Command::new("kill").args(["-STOP", &kubelet]));
    api.post("/clusters/k8s/detach", &json!({"nodes": ["host-3"]}))
        .ok();
    poll("host-3's drain begun", BRING_UP, || {
        match drain_events(&api, "host-3").as_slice() {
            [begun] if begun == "node.draining" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let join = Instant::now();
    api.post("/clusters/reuse/attach", &json!({"nodes": ["host-4"]}))
        .ok();
    wait_ready(&api, "reuse", BRING_UP);
    let stalled_join = join.elapsed();
    eprintln!(
        "host-4 joined reuse in {stalled_join:?} while k8s's drain of host-3 stalled \
         (host-5 joined k8s in {usual_join:?})"
    );
    assert_eq!(
        drain_events(&api, "host-3"),
        ["node.draining"],
        "drain no longer stalled"
    );
    assert_eq!(api.node("host-3")["state"], "detaching");
    assert!(
        stalled_join < usual_join * 3 / 2 + Duration::from_secs(10),
        "the join took {stalled_join:?} while another cluster drained; {usual_join:?} otherwise"
    );

    // The controller is killed (-9) in the middle of the drain. The new one resumes it where
    // it was (begun once), and ends it once the kubelet is back.
    let controller = controller.kill_and_restart();
    let api = controller.api();
    run(Command::new("kill").args(["-CONT", &kubelet]));
    wait_wiped(&api, &lab, &agents, "k8s", 3);
    assert_eq!(
        drain_events(&api, "host-3"),
        ["node.draining", "node.drained"],
        "drain resumed, not begun again"
    );
    eprintln!(
        "controller killed (-9) in the middle of host-3's drain: the drain resumed and ended"
    );
    serving.retain(|h| h != "host-3");
    let out = kubectl(admin, &["apply", "-f", "-"], Some(&web(&serving)));
    assert!(out.status.success(), "{out:?}");
    let ready = wait_ready(&api, "k8s", BRING_UP);
    assert_eq!(roles(&ready), (names(0..3), Vec::new()), "{ready}");
    wait_nodes_ready(admin, &["host-0", "host-1", "host-2"], BRING_UP);
    api.post("/clusters/reuse/attach", &json!({"nodes": ["host-3"]}))
        .ok();
    let ready = wait_ready(&api, "reuse", BRING_UP);
    assert_eq!(roles(&ready).0, ["host-3", "host-4", "host-5"], "{ready}");

    // Shrunk to 2 nodes (one master stays, the other is demoted), grown back to 3: three
    // healthy etcd members again, the demoted one joining as a new member.
    api.post("/clusters/reuse/detach", &json!({"nodes": ["host-4"]}))
        .ok();
    wait_wiped(&api, &lab, &agents, "reuse", 4);
    let ready = wait_ready(&api, "reuse", BRING_UP);
    let (masters, workers) = roles(&ready);
    assert_eq!((masters.len(), workers.len()), (1, 1), "{ready}");
    api.post("/clusters/reuse/attach", &json!({"nodes": ["host-4"]}))
        .ok();
    // The controller is killed (-9) in the middle of the join, once host-4 has its role.
    poll("host-4 given its role in reuse", BRING_UP, || {
        let n = api.node("host-4");
        if n["role"].is_string() {
            Ok(())
        } else {
            Err(n["state"].to_string())
        }
    });
    let controller = controller.kill_and_restart();
    let api = controller.api();
    let ready = wait_ready(&api, "reuse", BRING_UP);
    assert_eq!(roles(&ready).0, ["host-3", "host-4", "host-5"], "{ready}");
    for host in ["host-3", "host-4", "host-5"] {
        wait_etcd_healthy(&api, host, BRING_UP);
    }
    let members = etcdctl(
        other,
        &format!("https://{}:2379", lab.host_ip(5)),
        &["member", "list"],
    );
    let voters = members
        .lines()
        .filter(|l| l.trim_end().ends_with("false"))
        .count();
    assert_eq!(voters, 3, "{members}");
    let (masters, workers) = roles(&ready);
    wait_nodes_ready(other, &["host-3", "host-4", "host-5"], BRING_UP);
    wait_role_labels(other, &masters, &workers);
    eprintln!("reuse shrunk to 2 nodes and grown back: 3 healthy etcd voters");

    // Deleting both clusters returns every host to the pool as it was before.
    for name in ["k8s", "reuse"] {
        api.delete(&format!("/clusters/{name}?force=true")).ok();
    }
    for (i, before) in pristine.iter().enumerate() {
        let cluster = if [2, 4, 5].contains(&i) {
            "reuse"
        } else {
            "k8s"
        };
        wait_wiped(&api, &lab, &agents, cluster, i);
        wait_clean(&lab, &agents[i], i, before);
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

/// The pid of the component (`kubelet`, `etcd`, ...) running on host `i`.
pub(crate) fn component_pid(lab: &Lab, i: usize, component: &str) -> String {
    lab.pids(i)
        .into_iter()
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                let program = c.split(|b| *b == 0).next().unwrap_or_default();
                program.ends_with(format!("/{component}").as_bytes())
            })
        })
        .unwrap_or_else(|| panic!("no {component} on host-{i}"))
}

/// The actions of `node`'s drain events, oldest first.
pub(crate) fn drain_events(api: &Api, node: &str) -> Vec<String> {
    let events = api
        .get(&format!("/events?object={node}&action=node.&limit=100"))
        .ok();
    events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .filter(|a| a.starts_with("node.drain") || *a == "node.uncordoned")
        .map(str::to_owned)
        .collect()
}

/// Now, to the second, as the API server writes times.
fn now_in_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
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

/// Detaches host `i` from `cluster` and waits until it is back in the pool, wiped.
fn leave(api: &Api, lab: &Lab, agents: &[Agent], cluster: &str, i: usize) {
    let name = format!("host-{i}");
    api.post(
        &format!("/clusters/{cluster}/detach"),
        &json!({"nodes": [name]}),
    )
    .ok();
    wait_wiped(api, lab, agents, cluster, i);
}

/// Waits until host `i` is in the pool with nothing of a cluster left: no component running
/// in its namespace but the agent, no cgroup, no installed file.
fn wait_wiped(api: &Api, lab: &Lab, agents: &[Agent], cluster: &str, i: usize) {
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
            let c = api.get(&format!("/clusters/{cluster}")).body;
            Err(format!(
                "{}: {} — {}",
                n["state"], c["state"], c["state_message"]
            ))
        }
    });
    poll(
        &format!("{name} runs nothing but its agent"),
        BRING_UP,
        || {
            let others = other_processes(lab, &agents[i], i);
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
