//! Faults in the Kubernetes lab: the controller and an agent killed (-9) in the middle of an
//! install, a whole host restarted, a master's cable pulled during the install. Each ends with
//! the cluster converged (the controller says `ready` and every Node is `Ready`); while a fault
//! lasts, the API names the host at fault: never a silent hang.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::engine::{cluster, hosts, roles, wait_ready};
use crate::harness::{Agent, AgentConfig, Controller, SHORT, poll, run};
use crate::http::Api;
use crate::kubernetes::{
    BRING_UP, PodCgroups, bundle_dir, import_bundle, kubectl, kubectl_json, wait_nodes_ready,
};
use qb_lab::Lab;

const HOSTS: [&str; 3] = ["host-0", "host-1", "host-2"];
/// Three missed heartbeats of a second, then an engine pass (every 5 s, longer when a pass waits
/// on an agent).
const NOTICED: Duration = Duration::from_secs(30);
/// How long host-1's cable stays out: longer than the agent's HTTP/2 keep-alive gives a silent
/// connection (30 s + 20 s), so the agent also drops it and reconnects.
const OUTAGE: Duration = Duration::from_secs(60);
/// Where service binaries are installed on a host.
const BIN_DIR: &str = "/var/lib/qb/bin";

/// A new cluster `k8s` of three lab hosts (three masters), attached now: the lab, the
/// controller, the hosts' configurations and agents, and when the attach was accepted.
fn three_hosts_attached() -> (Lab, Controller, Vec<AgentConfig>, Vec<Agent>, Instant) {
    let bundle = bundle_dir();
    let lab = Lab::new(3).expect("the lab");
    let controller = Controller::start(&lab.bridge_ip());
    let api = controller.api();
    import_bundle(&api, &bundle);
    let (configs, agents) = hosts(&lab, &controller, 3);
    api.post(
        "/clusters",
        &json!({"name": "k8s", "pod_cidr": "10.244.0.0/16", "service_cidr": "10.96.0.0/12"}),
    )
    .ok();
    api.post("/clusters/k8s/attach", &json!({ "nodes": HOSTS }))
        .ok();
    (lab, controller, configs, agents, Instant::now())
}

/// The cluster's state and message, for failure reports.
fn summary(c: &Value) -> String {
    format!("{} — {}", c["state"], c["state_message"])
}

/// `name`'s entry in a cluster's detail.
fn member<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["name"] == name))
        .unwrap_or(&Value::Null)
}

/// The step `node` (as the API shows it) reports running on its newest plan.
fn running_step(node: &Value) -> Option<String> {
    let plan = &node["plan"];
    let report = &plan["report"];
    if report["generation"] != plan["generation"] {
        return None;
    }
    report["steps"]
        .as_array()?
        .iter()
        .find(|s| s["state"] == "running")
        .and_then(|s| s["name"].as_str())
        .map(str::to_owned)
}

/// `true` once `node` reports its newest plan applied.
fn applied(node: &Value) -> bool {
    let plan = &node["plan"];
    plan["report"]["state"] == "applied" && plan["report"]["generation"] == plan["generation"]
}

/// The program (first word of the command line; with its subcommand for the agent's API
/// balancer) of every process in host `i`'s network namespace, with their pids.
fn programs(lab: &Lab, i: usize) -> BTreeMap<String, Vec<u32>> {
    let mut found: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for pid in lab.pids(i) {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let words: Vec<String> = cmdline
            .split(|b| *b == 0)
            .take(2)
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        let program = match words.as_slice() {
            [program, sub] if sub == "api-balancer" => format!("{program} {sub}"),
            [program, ..] => program.clone(),
            [] => continue,
        };
        let Ok(pid) = pid.parse() else { continue };
        found.entry(program).or_default().push(pid);
    }
    found
}

/// The program `programs` names a service's process by.
fn service_program(service: &str) -> String {
    if service == "api-balancer" {
        format!("{} api-balancer", crate::harness::agent_binary().display())
    } else {
        format!("{BIN_DIR}/{service}")
    }
}

/// Waits until host `i` reports its newest plan applied with every service running and
/// healthy, each as exactly one process in the host's namespace, the one the report names, and
/// none of them in `not`; returns service → pid.
fn wait_services(api: &Api, lab: &Lab, i: usize, not: &[u32]) -> BTreeMap<String, u32> {
    let name = format!("host-{i}");
    poll(
        &format!("{name}'s services running, one process each"),
        BRING_UP,
        || {
            let node = api.node(&name);
            if !applied(&node) || node["agent"]["online"] != true {
                return Err(format!(
                    "online {}, plan {}",
                    node["agent"]["online"], node["plan"]
                ));
            }
            let running = programs(lab, i);
            let mut pids = BTreeMap::new();
            for s in node["plan"]["report"]["services"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let service = s["name"].as_str().unwrap_or_default();
                let pid = s["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
                let processes = running
                    .get(&service_program(service))
                    .cloned()
                    .unwrap_or_default();
                match pid {
                    Some(pid)
                        if s["running"] == true
                            && s["healthy"] == true
                            && processes == [pid]
                            && !not.contains(&pid) =>
                    {
                        pids.insert(service.to_owned(), pid);
                    }
                    _ => return Err(format!("{s}; processes of {service}: {processes:?}")),
                }
            }
            if pids.is_empty() {
                Err(format!("no services in {}", node["plan"]))
            } else {
                Ok(pids)
            }
        },
    )
}

/// Host `i` loses power (see `qb_lab::host::power_off`); its agent is killed first, so it
/// restarts nothing.
pub(crate) fn power_cycle(lab: &Lab, host: &Agent, i: usize) {
    let _ = run(Command::new("kill").args(["-KILL", &host.proc.pid().to_string()]));
    let root = host
        .host_root
        .as_ref()
        .expect("a host with private directories");
    qb_lab::host::power_off(lab, i, &format!("host-{i}"), root).expect("power off");
}

/// A pod on `node` that sleeps; restarted if it ends.
fn sleeper_pod(node: &str) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sleeper"},
        "spec": {
            "automountServiceAccountToken": false,
            "nodeName": node,
            "containers": [{
                "name": "sleep",
                "image": "qb.local/busybox:1",
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", "exec sleep 100000"],
            }],
        },
    })
    .to_string()
}

fn rfc3339(value: &Value) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(value.as_str()?, &Rfc3339).ok()
}

/// Waits until the pod `sleeper` runs a container started at or after `since`; its start.
fn wait_sleeper_running_since(admin: &Agent, since: OffsetDateTime) -> OffsetDateTime {
    poll("the sleeper pod running", BRING_UP, || {
        let pod = kubectl_json(admin, &["get", "pod", "sleeper"])?;
        let started =
            pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"].clone();
        match rfc3339(&started) {
            Some(at) if pod["status"]["phase"] == "Running" && at >= since => Ok(at),
            _ => Err(pod["status"].to_string()),
        }
    })
}

/// Waits until `node`'s kubelet said its Node is `Ready` at or after `since` (the API server
/// keeps the last status it got; only a running kubelet sends a new one).
fn wait_ready_heartbeat_since(admin: &Agent, node: &str, since: OffsetDateTime) {
    poll(
        &format!("{node} Ready, heard from its kubelet"),
        BRING_UP,
        || {
            let n = kubectl_json(admin, &["get", "node", node])?;
            let ready = n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .cloned()
                .unwrap_or_default();
            match rfc3339(&ready["lastHeartbeatTime"]) {
                Some(at) if ready["status"] == "True" && at >= since => Ok(()),
                _ => Err(ready.to_string()),
            }
        },
    );
}

/// Now, to the second, as the API server writes times.
fn now_in_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// The controller is killed (-9) while the agents download the bundle and restarted; then
/// host-1's agent is killed (-9) in the middle of a step and restarted (its components keep
/// running and are adopted, not started twice): the install converges. Then host-2 goes through
/// a power cycle (every process killed, its pods' too; cgroups and /run lost): while it is down
/// the API says the cluster is degraded because host-2's agent is offline; once its agent runs
/// again it restarts every component, the Node reports Ready again and the pod on it runs again.
#[test]
fn controller_and_agent_killed_mid_install_then_a_host_restarted_the_cluster_converges_each_time() {
    // Dropped last: the lab's teardown stops the kubelets first, so none recreates a pod.
    let _cgroups = PodCgroups(HOSTS.iter().map(|h| (*h).to_owned()).collect());
    let (lab, mut controller, configs, mut agents, attached) = three_hosts_attached();

    // The controller dies while the install is under way: a node downloads the bundle from it.
    let who = poll("a node downloading its artifacts", BRING_UP, || {
        let c = cluster(&controller.api(), "k8s");
        HOSTS
            .iter()
            .find(|h| running_step(member(&c, h)).as_deref() == Some("artifacts"))
            .ok_or_else(|| summary(&c))
    });
    controller = controller.kill_and_restart();
    let api = controller.api();
    let controller_back = Instant::now();
    eprintln!(
        "controller killed (-9) and restarted {:?} after the attach, while {who} downloaded its artifacts",
        attached.elapsed()
    );

    // host-1's agent dies in the middle of a step, after it reconnected to the new controller.
    let step = poll("host-1 running a service step", BRING_UP, || {
        let node = api.node("host-1");
        assert!(
            !applied(&node),
            "host-1 finished its install before its agent could be killed in the middle: {}",
            node["plan"]
        );
        match running_step(&node) {
            Some(step) if node["agent"]["online"] == true && step.starts_with("service:") => {
                Ok(step)
            }
            other => Err(format!(
                "online {}, step {other:?}",
                node["agent"]["online"]
            )),
        }
    });
    // What host-1's agent started so far, by program, once the step's own service runs.
    let program = format!("{BIN_DIR}/{}", step.trim_start_matches("service:"));
    let started: BTreeMap<String, Vec<u32>> = poll(&format!("{program} running"), SHORT, || {
        let running = programs(&lab, 1);
        if running.contains_key(&program) {
            Ok(running
                .into_iter()
                .filter(|(program, _)| {
                    program.starts_with(BIN_DIR) || *program == service_program("api-balancer")
                })
                .collect())
        } else {
            Err(format!("{running:?}"))
        }
    });
    let agent = agents.remove(1);
    agents.insert(1, agent.kill_and_restart(&configs[1]));
    let agent_back = Instant::now();
    eprintln!(
        "host-1's agent killed (-9) and restarted {:?} after the controller restarted, during {step}",
        controller_back.elapsed()
    );

    let ready = wait_ready(&api, "k8s", BRING_UP);
    let (masters, workers) = roles(&ready);
    assert_eq!((masters.len(), workers.len()), (3, 0), "{ready}");
    let admin = &agents[0];
    wait_nodes_ready(admin, &HOSTS, BRING_UP);
    eprintln!(
        "converged (cluster ready, every Node Ready) {:?} after the controller restarted, {:?} \
         after host-1's agent restarted, {:?} after the attach",
        controller_back.elapsed(),
        agent_back.elapsed(),
        attached.elapsed()
    );
    // One process per service everywhere; host-1's new agent adopted the services its
    // predecessor started (the same processes), unless one of them crashed since.
    for i in [0, 2] {
        wait_services(&api, &lab, i, &[]);
    }
    let services = wait_services(&api, &lab, 1, &[]);
    let restarts = api.node("host-1")["plan"]["report"]["services"].clone();
    let (mut adopted, mut crashed) = (Vec::new(), Vec::new());
    for (service, pid) in &services {
        let Some(before) = started.get(&service_program(service)) else {
            continue;
        };
        let restarted = restarts
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["name"] == service.as_str() && s["restarts"].as_u64() > Some(0));
        if before == &[*pid] {
            adopted.push(service.as_str());
        } else {
            assert!(
                restarted,
                "host-1's {service} ran as {before:?} before its agent was killed, now as {pid}: {restarts}"
            );
            crashed.push(service.as_str());
        }
    }
    eprintln!("host-1's new agent adopted {adopted:?} (restarted after a crash: {crashed:?})");

    // A pod on host-2, then host-2 loses power.
    let out = kubectl(admin, &["apply", "-f", "-"], Some(&sleeper_pod("host-2")));
    assert!(out.status.success(), "{out:?}");
    wait_sleeper_running_since(admin, OffsetDateTime::UNIX_EPOCH);
    let before: Vec<u32> = wait_services(&api, &lab, 2, &[]).into_values().collect();
    let down = Instant::now();
    power_cycle(&lab, &agents[2], 2);
    let c = poll("the API says host-2 is down", NOTICED, || {
        let c = cluster(&api, "k8s");
        let message = c["state_message"].as_str().unwrap_or_default();
        if c["state"] == "degraded"
            && message.contains("host-2: agent offline")
            && api.node("host-2")["agent"]["online"] == false
        {
            Ok(c)
        } else {
            Err(summary(&c))
        }
    });
    eprintln!(
        "host-2 powered off; {:?} later the API says: {}",
        down.elapsed(),
        summary(&c)
    );

    // It boots: its agent starts with the state it had.
    let booted = now_in_seconds();
    let agent = agents.remove(2);
    agents.insert(2, agent.kill_and_restart(&configs[2]));
    let admin = &agents[0];
    let boot = Instant::now();
    let services = wait_services(&api, &lab, 2, &before);
    eprintln!(
        "host-2 booted: its agent started {} services again in {:?}",
        services.len(),
        boot.elapsed()
    );
    wait_ready(&api, "k8s", BRING_UP);
    wait_nodes_ready(admin, &HOSTS, BRING_UP);
    wait_ready_heartbeat_since(admin, "host-2", booted);
    eprintln!(
        "host-2 booted: cluster ready and host-2's Node Ready (its kubelet heard) in {:?}",
        boot.elapsed()
    );
    wait_sleeper_running_since(admin, booted);
    eprintln!(
        "host-2 booted: its pod runs again {:?} after its agent started",
        boot.elapsed()
    );
    let c = cluster(&api, "k8s");
    assert_eq!(c["state"], "ready", "{c}");
}

/// host-1 (a master) loses its cable while it installs: within seconds the node shows its agent
/// offline and the cluster says `host-1: agent offline` — and keeps saying it, never `ready`, for
/// the whole minute of the outage (long enough for the agent to give up its connection). Once
/// the cable is back the install converges: cluster ready, every Node Ready.
#[test]
fn a_master_cut_off_during_install_is_named_and_the_cluster_converges_once_it_is_back() {
    let _cgroups = PodCgroups(HOSTS.iter().map(|h| (*h).to_owned()).collect());
    let (lab, controller, _configs, agents, attached) = three_hosts_attached();
    let api = controller.api();

    let step = poll("host-1 applying its plan", BRING_UP, || {
        let node = api.node("host-1");
        running_step(&node).ok_or_else(|| node["plan"].to_string())
    });
    lab.link_down(1).expect("pull host-1's cable");
    let cut = Instant::now();
    eprintln!(
        "host-1's cable pulled {:?} after the attach, during its step {step}",
        attached.elapsed()
    );

    let c = poll("the API names host-1 as offline", NOTICED, || {
        let c = cluster(&api, "k8s");
        let message = c["state_message"].as_str().unwrap_or_default();
        if c["state"] == "installing"
            && message.contains("host-1: agent offline")
            && api.node("host-1")["agent"]["online"] == false
        {
            Ok(c)
        } else {
            Err(summary(&c))
        }
    });
    eprintln!(
        "{:?} after the cut the API says: {}",
        cut.elapsed(),
        summary(&c)
    );
    // For as long as the cable is out, the API keeps saying so.
    let mut seen = 0;
    while cut.elapsed() < OUTAGE {
        std::thread::sleep(Duration::from_secs(1));
        let c = cluster(&api, "k8s");
        let message = c["state_message"].as_str().unwrap_or_default();
        assert!(
            c["state"] != "ready" && message.contains("host-1: agent offline"),
            "{:?} into the outage: {}",
            cut.elapsed(),
            summary(&c)
        );
        assert_eq!(api.node("host-1")["agent"]["online"], false);
        seen += 1;
    }
    let c = cluster(&api, "k8s");
    eprintln!(
        "{seen} looks over {:?} of outage all named host-1; at the end: {}",
        cut.elapsed(),
        summary(&c)
    );

    lab.link_up(1).expect("plug host-1's cable back");
    let back = Instant::now();
    poll("host-1 online again", Duration::from_secs(90), || {
        let node = api.node("host-1");
        if node["agent"]["online"] == true {
            Ok(())
        } else {
            Err(node["agent"].to_string())
        }
    });
    eprintln!("host-1 online {:?} after its cable is back", back.elapsed());
    let ready = wait_ready(&api, "k8s", BRING_UP);
    let (masters, workers) = roles(&ready);
    assert_eq!((masters.len(), workers.len()), (3, 0), "{ready}");
    wait_nodes_ready(&agents[0], &HOSTS, BRING_UP);
    for i in 0..3 {
        wait_services(&api, &lab, i, &[]);
    }
    eprintln!(
        "converged (cluster ready, every Node Ready) {:?} after the cable is back, {:?} after the attach",
        back.elapsed(),
        attached.elapsed()
    );
}
