//! Agents upgrade themselves to the build the controller ships: one host first, then in
//! batches; an offline host upgrades once it is back; a controller killed in the middle carries
//! on; a build that cannot reach the controller stops at the first host, which goes back.
//!
//! The builds: the hosts' agents start as the test build (debug); the controller ships the
//! agent as `cargo xtask dist` makes it (release, stripped): another build of the same code.
//! The broken build is that one with bytes appended: another SHA-256, the same code, named to
//! the hosts' agents (`QB_TEST_UNREACHABLE_BUILD`, a test's setting) as one that plays a build
//! unable to reach its controller. How it goes back is real: its supervisor kills it at the
//! trial's deadline and starts the build before, which tells the controller.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::engine::{authorize_when_online, start_hosts, wait_online};
use crate::harness::{AgentConfig, Controller, poll};
use crate::http::Api;
use qb_lab::Lab;

const HOSTS: [&str; 3] = ["host-0", "host-1", "host-2"];
/// From the start to every online host upgraded: downloads of a few MiB, restarts, reconnects.
const UPGRADED: Duration = Duration::from_secs(120);

/// The agent as `cargo xtask dist` builds it (release, stripped).
pub(crate) fn dist_agent() -> PathBuf {
    std::env::var_os("QB_DIST_AGENT")
        .map(PathBuf::from)
        .expect("QB_DIST_AGENT is not set: run the suite with `cargo xtask test`")
}

fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("the build")))
}

fn status(api: &Api) -> Value {
    api.get("/agent-upgrade").ok()
}

/// Each host's state in the upgrade, by name.
fn states(upgrade: &Value) -> Vec<(String, String)> {
    upgrade["nodes"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or_default().to_owned(),
                n["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn state_of(upgrade: &Value, host: &str) -> String {
    states(upgrade)
        .into_iter()
        .find(|(name, _)| name == host)
        .map(|(_, state)| state)
        .unwrap_or_default()
}

/// Polls the upgrade until `done` says so, checking on every look that no host started before
/// the first one (the canary) had upgraded.
fn watch(api: &Api, what: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
    poll(what, timeout, || {
        let upgrade = status(api);
        let canary = state_of(&upgrade, HOSTS[0]);
        for host in &HOSTS[1..] {
            let state = state_of(&upgrade, host);
            assert!(
                !(matches!(state.as_str(), "upgrading" | "upgraded") && canary != "upgraded"),
                "{host} is {state} while the canary is {canary}: {upgrade}"
            );
        }
        if done(&upgrade) {
            Ok(upgrade)
        } else {
            Err(upgrade.to_string())
        }
    })
}

#[test]
fn agents_upgrade_a_canary_first_then_in_batches_and_a_broken_build_goes_back_and_stops() {
    let lab = Lab::new(3).expect("the lab");
    let builds = tempfile::tempdir().expect("temp dir");
    let shipped = builds.path().join("qb-agent");
    std::fs::copy(dist_agent(), &shipped).expect("the shipped agent");
    let good = sha256(&shipped);
    let mut broken_bytes = std::fs::read(&shipped).expect("the shipped agent");
    broken_bytes.extend_from_slice(b"\nanother build, for a test\n");
    let broken = hex::encode(Sha256::digest(&broken_bytes));

    let controller = Controller::start_shipping(&lab.bridge_ip(), &shipped);
    let api = controller.api();
    let token = api.bootstrap_token(3, 1);
    let configs: Vec<AgentConfig> = HOSTS
        .iter()
        .map(|host| {
            let mut config = AgentConfig::new(&controller, &token.secret, host);
            config.env = vec![("QB_TEST_UNREACHABLE_BUILD".to_owned(), broken.clone())];
            config
        })
        .collect();
    let mut agents = start_hosts(&lab, &configs);
    authorize_when_online(&api, &configs);
    let before = wait_online(&api, HOSTS[0]);
    assert_eq!(
        before["agent"]["protocol"],
        qb_agent_proto::PROTOCOL_VERSION,
        "{before}"
    );
    assert_ne!(
        before["agent"]["build"],
        good.as_str(),
        "the hosts start on another build"
    );

    // host-2 is off during the upgrade.
    agents[2].proc.stop();
    poll("host-2 offline", Duration::from_secs(30), || {
        let node = api.get("/nodes/host-2").ok();
        (node["agent"]["online"] == false)
            .then_some(())
            .ok_or(node.to_string())
    });
    let started = api
        .post(
            "/agent-upgrade",
            &json!({"batch_size": 2, "trial_seconds": 60}),
        )
        .ok();
    assert_eq!(
        (started["build"].as_str(), started["state"].as_str()),
        (Some(good.as_str()), Some("running")),
        "{started}"
    );
    // A second start while it runs is refused, and changes nothing.
    let again = api.post("/agent-upgrade", &json!({}));
    assert_eq!(again.status, 409, "{}", again.body);

    // The canary passes; the controller is killed once it has, and carries on.
    watch(&api, "the canary upgraded", UPGRADED, |u| {
        state_of(u, HOSTS[0]) == "upgraded"
    });
    let controller = controller.kill_and_restart();
    let api = controller.api();
    let upgrade = watch(&api, "host-1 upgraded", UPGRADED, |u| {
        state_of(u, HOSTS[1]) == "upgraded"
    });
    assert_eq!(
        (
            state_of(&upgrade, HOSTS[2]).as_str(),
            upgrade["state"].as_str()
        ),
        ("offline", Some("running")),
        "an offline host waits, and the upgrade with it: {upgrade}"
    );
    // Back, it upgrades, and the upgrade is done.
    let host_2 = agents.pop().expect("host-2's agent");
    agents.push(host_2.kill_and_restart(&configs[2]));
    let upgrade = watch(&api, "the upgrade done", UPGRADED, |u| u["state"] == "done");
    assert!(
        states(&upgrade).iter().all(|(_, s)| s == "upgraded"),
        "{upgrade}"
    );
    for (i, host) in HOSTS.iter().enumerate() {
        let node = wait_online(&api, host);
        assert_eq!(node["agent"]["build"], good.as_str(), "{node}");
        // The host's agent process (its supervisor) is the one started: the upgrade
        // restarted the agent beneath it.
        assert!(agents[i].proc.is_running(), "{host}'s agent runs");
    }

    // The broken build: the canary goes back, the upgrade stops, nobody else moves.
    let staged = builds.path().join("qb-agent.new");
    std::fs::write(&staged, &broken_bytes).expect("the broken build");
    std::fs::rename(&staged, &shipped).expect("the broken build shipped");
    let started = api
        .post(
            "/agent-upgrade",
            &json!({"batch_size": 2, "trial_seconds": 15}),
        )
        .ok();
    assert_eq!(started["build"], broken.as_str(), "{started}");
    let stopped = poll("the upgrade stopped", UPGRADED, || {
        let upgrade = status(&api);
        for host in &HOSTS[1..] {
            assert_eq!(state_of(&upgrade, host), "waiting", "{upgrade}");
        }
        if upgrade["state"] == "stopped" {
            Ok(upgrade)
        } else {
            Err(upgrade.to_string())
        }
    });
    let message = stopped["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("host-0 failed:") && message.contains("deadline"),
        "{stopped}"
    );
    assert_eq!(state_of(&stopped, HOSTS[0]), "failed", "{stopped}");
    // host-0 runs the build it ran before, and says so.
    for host in HOSTS {
        let node = wait_online(&api, host);
        assert_eq!(node["agent"]["build"], good.as_str(), "{node}");
    }
    let events = api.get("/events?action=agent_upgrade.&limit=100").ok();
    let actions: Vec<&str> = events["items"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "agent_upgrade.started")
            .count(),
        2,
        "{events}"
    );
}

/// `qb-agent` as the last commit of protocol 2 built it (`cargo xtask test` builds it once).
fn previous_agent() -> PathBuf {
    std::env::var_os("QB_PREVIOUS_AGENT")
        .map(PathBuf::from)
        .expect("QB_PREVIOUS_AGENT is not set: run the suite with `cargo xtask test`")
}

#[test]
fn an_agent_of_the_previous_protocol_works_with_this_controller_and_is_left_to_its_package() {
    let lab = Lab::new(2).expect("the lab");
    let builds = tempfile::tempdir().expect("temp dir");
    let shipped = builds.path().join("qb-agent");
    std::fs::copy(dist_agent(), &shipped).expect("the shipped agent");
    let controller = Controller::start_shipping(&lab.bridge_ip(), &shipped);
    let api = controller.api();
    let token = api.bootstrap_token(2, 1);
    let configs: Vec<AgentConfig> = ["host-0", "host-1"]
        .iter()
        .map(|host| AgentConfig::new(&controller, &token.secret, host))
        .collect();
    let mut previous =
        crate::harness::Agent::start_host_running(&configs[0], &lab.netns(0), &previous_agent());
    let _current = crate::harness::Agent::start_host(&configs[1], &lab.netns(1));
    authorize_when_online(&api, &configs);
    let node = wait_online(&api, "host-0");
    assert_eq!(node["agent"]["protocol"], 2, "{node}");
    assert!(
        node["agent"].get("build").is_none(),
        "protocol 2 names no build: {node}"
    );
    let ping = api.post("/nodes/host-0/ping", &json!({}));
    assert_eq!(ping.status, 200, "{}", ping.body);

    // An upgrade leaves it to its package and upgrades the other host.
    api.post("/agent-upgrade", &json!({"trial_seconds": 60}))
        .ok();
    let upgrade = poll("host-1 upgraded", UPGRADED, || {
        let upgrade = status(&api);
        if state_of(&upgrade, "host-1") == "upgraded" {
            Ok(upgrade)
        } else {
            Err(upgrade.to_string())
        }
    });
    assert_eq!(state_of(&upgrade, "host-0"), "needs_package", "{upgrade}");
    assert_eq!(upgrade["state"], "running", "{upgrade}");
    // It was never sent what it does not know: it would have closed its channel.
    assert!(previous.proc.is_running());
    assert_eq!(
        controller.proc.log.count("broke the protocol"),
        0,
        "{}",
        controller.proc.log.tail(20)
    );
    let node = wait_online(&api, "host-0");
    assert_eq!(node["agent"]["protocol"], 2, "{node}");
    let ping = api.post("/nodes/host-0/ping", &json!({}));
    assert_eq!(ping.status, 200, "{}", ping.body);
}
