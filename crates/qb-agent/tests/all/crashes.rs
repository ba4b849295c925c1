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
    CONVERGE, authorize_when_online, cluster, etcdctl, import_etcd_bundle, member_names,
    start_hosts, wait_online, wait_ready, wait_ready_with_nodes,
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
    let mut points = crash_points();
    points.sort_unstable();
    assert_eq!(tried, points, "every crash point tried");
}

/// The controller's crash points, from its source (its `crash::POINTS`).
fn crash_points() -> Vec<&'static str> {
    let source = include_str!("../../../qb-controller/src/crash.rs");
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
