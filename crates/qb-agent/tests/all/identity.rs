//! Host identity: a second host presenting the machine id of a host whose agent is online (a
//! cloned VM) is refused and reported; the first host keeps working, and stays the same node
//! when it is renamed.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Agent, AgentConfig, Controller, SHORT, poll};
use crate::http::{online, state};
use qb_lab::Lab;

#[test]
fn a_cloned_host_is_refused_while_the_first_is_online_and_the_first_keeps_working() {
    // Declared first, dropped last: processes end before their namespaces go.
    let lab = Lab::new(2).expect("the lab");
    let controller = Controller::start(&lab.bridge_ip());
    let api = controller.api();
    let token = api.bootstrap_token(2, 1);
    let first_config = AgentConfig::new(&controller, &token.secret, "first");
    let first = Agent::start(&first_config, Some(&lab.netns(0)));
    poll("first online", SHORT, || {
        let node = api.get("/nodes/first");
        (node.status == 200 && online(&node.body))
            .then_some(())
            .ok_or(node.body.to_string())
    });

    // The clone: another host (its own address), the same machine id.
    let clone_config = AgentConfig {
        machine_id: first_config.machine_id.clone(),
        ..AgentConfig::new(&controller, &token.secret, "clone")
    };
    let mut clone = Agent::start(&clone_config, Some(&lab.netns(1)));
    let refusal = clone.proc.log.wait_for(&["registration refused"], SHORT);
    for part in [
        "\"clone\"",
        lab.host_ip(1).as_str(),
        first_config.machine_id.as_str(),
        "node first",
        lab.host_ip(0).as_str(),
    ] {
        assert!(
            refusal.contains(part),
            "{part:?} in the clone's log: {refusal}"
        );
    }
    let events = api
        .get("/events?object=first&action=node.identity_conflict&limit=10")
        .ok();
    let event = &events["items"][0];
    assert_eq!(event["detail"]["claimant"]["hostname"], "clone", "{events}");
    assert!(
        event["detail"]["claimant"]["addresses"]
            .as_array()
            .is_some_and(|a| a.iter().any(|ip| ip == lab.host_ip(1).as_str())),
        "{event}"
    );
    assert_eq!(event["detail"]["holder"]["hostname"], "first", "{event}");

    // Nothing changed for the first host: one node, online, and it can be authorized and
    // pinged while the clone keeps trying.
    let nodes = api.get("/nodes").ok();
    assert_eq!(nodes["items"].as_array().map(Vec::len), Some(1), "{nodes}");
    api.post("/nodes/first/authorize", &json!({})).ok();
    std::thread::sleep(Duration::from_secs(2));
    let node = api.node("first");
    assert!(online(&node), "{node}");
    assert_eq!(state(&node), "authorized");
    api.post("/nodes/first/ping", &json!({})).ok();
    assert!(clone.proc.is_running(), "the clone waits and tries again");
    assert_eq!(
        first.proc.log.count("deauthorized"),
        0,
        "the first host was not told it is deauthorized"
    );

    // Renamed, the first host stays the same node: its certificate says who it is.
    drop(clone);
    let id = api.node("first")["id"].clone();
    let renamed = AgentConfig {
        node_name: "first-renamed".to_owned(),
        ..first_config.clone()
    };
    let _first = first.kill_and_restart(&renamed);
    poll("the new name reported", SHORT, || {
        let node = api.node("first");
        (online(&node) && node["facts"]["hostname"] == "first-renamed")
            .then_some(())
            .ok_or(node.to_string())
    });
    assert_eq!(api.node("first")["id"], id);
    let nodes = api.get("/nodes").ok();
    assert_eq!(nodes["items"].as_array().map(Vec::len), Some(1), "{nodes}");
}
