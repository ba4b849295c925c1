//! The controller killed at every crash point (`qb_controller::crash::POINTS`), one after the
//! other, while hosts register and a cluster on real etcd gets one node, then two more, then
//! loses one: each time the controller dies with the work half done (stored but not told,
//! told but not stored), starts again, and carries on. In the end the registration, the
//! attaches and the detach are done exactly once: one node per host, etcd members as placed
//! (three, then one: two nodes have one master), the leaving host wiped and back in the pool,
//! and the store keeps every rule it checks.

use std::time::Duration;

use serde_json::json;

use crate::channel::runtime;
use crate::engine::{
    CONVERGE, authorize_when_online, cluster, etcd_processes, etcdctl, hosts, import_etcd_bundle,
    member_names, start_hosts, wait_online, wait_ready, wait_ready_with_nodes,
};
use crate::harness::{Agent, AgentConfig, Controller, poll};

/// How long the engine may take to reach the next crash point after a start.
const REACH: Duration = Duration::from_secs(90);

#[test]
fn the_controller_killed_at_every_crash_point_finishes_what_it_was_doing() {
    let lab = qb_lab::netns::Lab::new(3).expect("the lab");
    let crash_at = |point: &str| [("QB_CRASH_AT", point.to_owned())];

    // A host registers with a token good for one use; the controller dies once it stored the
    // node and before it answered. The agent asks again with the same token.
    let controller = Controller::start_with_env(&lab.bridge_ip(), &crash_at("register.committed"));
    let api = controller.api();
    import_etcd_bundle(&api);
    let token = api.bootstrap_token(1, 1);
    let first = vec![AgentConfig::new(&controller, &token.secret, "host-0")];
    let mut agents = start_hosts(&lab, &first);
    let mut controller = controller;
    controller.wait_crashed("register.committed", REACH);
    let controller = controller.restart_with_env(&crash_at("engine.pki.stored"));
    let api = controller.api();
    wait_online(&api, "host-0");
    assert_eq!(api.nodes().len(), 1, "one node for the host");

    let token = api.bootstrap_token(2, 1);
    let more: Vec<AgentConfig> = ["host-1", "host-2"]
        .iter()
        .map(|name| AgentConfig::new(&controller, &token.secret, name))
        .collect();
    let configs: Vec<AgentConfig> = first.into_iter().chain(more).collect();
    for (i, config) in configs.iter().enumerate().skip(1) {
        agents.push(Agent::start_host(config, &lab.netns(i)));
    }
    authorize_when_online(&api, &configs);
    api.post("/clusters", &json!({"name": "crash"})).ok();

    // The first node's attach, killed at each of its steps: the cluster's PKI, the node's
    // certificates and its plan stored, nothing told yet.
    api.post("/clusters/crash/attach", &json!({"nodes": ["host-0"]}))
        .ok();
    let mut controller = controller;
    controller.wait_crashed("engine.pki.stored", REACH);
    let controller = controller
        .restart_crashing_at("engine.certs.stored", REACH)
        .restart_crashing_at("engine.plan.published", REACH)
        .restart_with_env(&crash_at("engine.etcd.learner_added"));
    let api = controller.api();
    wait_ready_with_nodes(&api, "crash", 1, CONVERGE);

    // Two more join etcd as learners, then voters: killed once etcd changed and before the
    // store knew.
    api.post(
        "/clusters/crash/attach",
        &json!({"nodes": ["host-1", "host-2"]}),
    )
    .ok();
    let mut controller = controller;
    controller.wait_crashed("engine.etcd.learner_added", REACH);
    let controller = controller
        .restart_crashing_at("engine.etcd.promoted", REACH)
        .restart_with_env(&crash_at("engine.etcd.member_removed"));
    let api = controller.api();
    let c = wait_ready_with_nodes(&api, "crash", 3, CONVERGE);
    assert_eq!(c["nodes"].as_array().map(Vec::len), Some(3), "{c}");
    let endpoint = format!("https://{}:2379", lab.host_ip(0));
    let list = etcdctl(&agents[0], &endpoint, &["member", "list"]);
    assert_eq!(
        member_names(&list),
        ["host-0", "host-1", "host-2"],
        "{list}"
    );
    assert_consistent(&controller);

    // The detach, killed at each of its steps: after the member's removal, after the wipe's
    // plan (or another node's new plan) is stored, and before the node returns to the pool.
    api.post("/clusters/crash/detach", &json!({"nodes": ["host-2"]}))
        .ok();
    let mut controller = controller;
    controller.wait_crashed("engine.etcd.member_removed", REACH);
    let controller = controller
        .restart_crashing_at("engine.plan.published", REACH)
        .restart_crashing_at("engine.detach.finishing", REACH)
        .restart_with_env(&[]);
    let api = controller.api();
    poll("host-2 back in the pool", CONVERGE, || {
        let n = api.get("/nodes/host-2").ok();
        if n["state"] == "authorized" && n["cluster"].is_null() {
            Ok(())
        } else {
            Err(format!("{n} — {}", cluster(&api, "crash")["state_message"]))
        }
    });
    let c = wait_ready(&api, "crash", CONVERGE);
    assert_eq!(c["nodes"].as_array().map(Vec::len), Some(2), "{c}");
    // Two nodes have one master (`masters: auto`): host-1 left etcd too, as a worker.
    let list = etcdctl(&agents[0], &endpoint, &["member", "list"]);
    assert_eq!(member_names(&list), ["host-0"], "{list}");
    assert!(
        !agents[2].host_path("/var/lib/qb/bin/etcd").exists(),
        "host-2 was not wiped"
    );
    for i in 0..3 {
        wait_online(&api, &format!("host-{i}"));
    }
    assert_eq!(api.nodes().len(), 3, "one node per host");
    assert_consistent(&controller);
    assert_eq!(
        controller.proc.log.count("crash point"),
        0,
        "the last start crashed"
    );
    let mut tried = controller.crashed_at.clone();
    tried.sort_unstable();
    tried.dedup();
    let mut points = crash_points(include_str!("../../../qb-controller/src/crash.rs"));
    points.sort_unstable();
    assert_eq!(tried, points, "every crash point tried");
}

/// The agent killed at each of its crash points while its host joins a cluster on real etcd
/// and while it is wiped on leaving: each time it starts again and finishes the work. In the
/// end etcd ran once (a service spawned or recorded but not let go is never doubled), and the
/// wipe left nothing of the cluster.
#[test]
fn the_agent_killed_at_every_crash_point_finishes_what_it_was_doing() {
    let lab = qb_lab::netns::Lab::new(1).expect("the lab");
    let controller = Controller::start(&lab.bridge_ip());
    let api = controller.api();
    import_etcd_bundle(&api);
    let (configs, mut agents) = hosts(&lab, &controller, 1);
    let crashing = |point: &str| {
        let mut config = configs[0].clone();
        config
            .env
            .push(("QB_CRASH_AT".to_owned(), point.to_owned()));
        config
    };
    let mut tried = Vec::new();

    // The join: killed once the plan is kept, an artifact copied, a file written, etcd
    // spawned, and etcd recorded.
    let mut agent = agents.remove(0).kill_and_restart(&crashing("plan.kept"));
    wait_online(&api, "host-0");
    api.post("/clusters", &json!({"name": "agent-crash"})).ok();
    api.post(
        "/clusters/agent-crash/attach",
        &json!({"nodes": ["host-0"]}),
    )
    .ok();
    agent.proc.wait_crashed("plan.kept", REACH);
    tried.push("plan.kept".to_owned());
    for point in [
        "apply.artifact.copied",
        "apply.file.written",
        "service.spawned",
        "service.recorded",
    ] {
        agent = agent.kill_and_restart(&crashing(point));
        agent.proc.wait_crashed(point, REACH);
        tried.push(point.to_owned());
    }
    let agent = agent.kill_and_restart(&configs[0]);
    wait_ready_with_nodes(&api, "agent-crash", 1, CONVERGE);
    assert_eq!(etcd_processes(&lab, 0), 1, "etcd runs once");
    let endpoint = format!("https://{}:2379", lab.host_ip(0));
    etcdctl(&agent, &endpoint, &["put", "joined", "once"]);

    // The wipe: killed once its services stopped.
    let mut agent = agent.kill_and_restart(&crashing("apply.wipe.services_stopped"));
    wait_online(&api, "host-0");
    api.post(
        "/clusters/agent-crash/detach",
        &json!({"nodes": ["host-0"]}),
    )
    .ok();
    agent
        .proc
        .wait_crashed("apply.wipe.services_stopped", REACH);
    tried.push("apply.wipe.services_stopped".to_owned());
    let agent = agent.kill_and_restart(&configs[0]);
    poll("host-0 wiped and back in the pool", CONVERGE, || {
        let n = api.get("/nodes/host-0").ok();
        if n["state"] == "authorized" && n["cluster"].is_null() {
            Ok(())
        } else {
            Err(n.to_string())
        }
    });
    assert_eq!(etcd_processes(&lab, 0), 0, "etcd left running");
    assert!(
        !agent.host_path("/var/lib/qb/bin/etcd").exists(),
        "etcd's binary left"
    );
    tried.sort_unstable();
    let mut points = crash_points(include_str!("../../src/crash.rs"));
    points.sort_unstable();
    assert_eq!(tried, points, "every crash point of the agent tried");
}

/// The crash points a program's `crash.rs` (its source) lists in its `POINTS`.
fn crash_points(source: &'static str) -> Vec<&'static str> {
    let list = source
        .split("pub const POINTS")
        .nth(1)
        .and_then(|rest| rest.split("];").next())
        .expect("the controller's POINTS");
    list.lines()
        .filter_map(|l| l.trim().strip_prefix('"')?.strip_suffix("\","))
        .collect()
}

/// The controller's store keeps every rule it checks.
fn assert_consistent(controller: &Controller) {
    let broken = runtime().block_on(async {
        let store = qb_store::Store::open_sqlite(&controller.database(), controller.keyring())
            .await
            .expect("the controller's database");
        let broken = store.invariant_violations().await.expect("the check");
        store.close().await;
        broken
    });
    assert_eq!(broken, Vec::<String>::new());
}
