//! Three hosts, each in its own network namespace, against a controller on the lab's bridge.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Agent, AgentConfig, Controller, SHORT, poll};
use crate::http::{Api, online, state};
use qb_lab::Lab;

/// The controller is told to expect a heartbeat every second; three missed is offline.
const GRACE: Duration = Duration::from_secs(3);

fn by_name<'a>(nodes: &'a [Value], name: &str) -> Option<&'a Value> {
    nodes.iter().find(|n| n["name"] == name)
}

/// One line per node: name, state, online.
fn summary(nodes: &[Value]) -> String {
    nodes
        .iter()
        .map(|n| format!("{}={}/online={}", n["name"], state(n), online(n)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fails at once if any of `names` is not online.
#[track_caller]
fn assert_online(nodes: &[Value], names: &[String], when: &str) {
    for name in names {
        let node = by_name(nodes, name).unwrap_or_else(|| panic!("{name} vanished {when}"));
        assert!(
            online(node),
            "{name} went offline {when}: {}",
            summary(nodes)
        );
    }
}

fn ping(api: &Api, name: &str) -> f64 {
    let reply = api.post(&format!("/nodes/{name}/ping"), &json!({})).ok();
    let ms = reply["round_trip_ms"]
        .as_f64()
        .expect("round_trip_ms is a number");
    assert!(
        ms > 0.0 && ms < 1000.0,
        "{name}: implausible round trip {ms} ms"
    );
    ms
}

#[test]
fn three_hosts_register_survive_a_partition_and_are_deauthorized() {
    // Declared first, dropped last: processes end before their namespaces go.
    let lab = Lab::new(3).expect("the lab");
    let controller = Controller::start(&lab.bridge_ip());
    let api = controller.api();
    let token = api.bootstrap_token(3, 1);
    let names: Vec<String> = (0..3).map(|i| format!("host-{i}")).collect();
    let mut agents: Vec<Agent> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            Agent::start(
                &AgentConfig::new(&controller, &token.secret, name),
                Some(&lab.netns(i)),
            )
        })
        .collect();

    // 1. Each host registers and holds its channel: pending, agent online.
    let registered = Instant::now();
    let nodes = poll("three pending nodes with online agents", SHORT * 4, || {
        let nodes = controller.api().nodes();
        let ready = nodes.len() == 3
            && names.iter().all(|name| {
                by_name(&nodes, name).is_some_and(|n| state(n) == "pending" && online(n))
            });
        if ready {
            Ok(nodes)
        } else {
            Err(summary(&nodes))
        }
    });
    eprintln!(
        "three hosts registered and online in {:?}",
        registered.elapsed()
    );
    for (i, name) in names.iter().enumerate() {
        let node = by_name(&nodes, name).expect("node");
        // The facts come from inside the host's namespace: its address, and no address of the
        // root namespace.
        let addresses: Vec<&str> = node["facts"]["addresses"]
            .as_array()
            .expect("addresses")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            addresses.contains(&lab.host_ip(i).as_str()),
            "{name}: {addresses:?}"
        );
        assert!(
            addresses
                .iter()
                .filter(|a| !a.contains(':'))
                .all(|a| a.starts_with(&lab.subnet_prefix())),
            "{name} sees addresses outside its namespace: {addresses:?}"
        );
        assert_eq!(
            agents[i].node_id().as_deref(),
            node["id"].as_str(),
            "{name}: the agent's saved identity names its node"
        );
        assert_eq!(node["agent"]["version"], env!("CARGO_PKG_VERSION"));
    }
    let tokens = api.bootstrap_tokens();
    let used = tokens
        .iter()
        .find(|t| t["id"] == token.id.as_str())
        .expect("token");
    assert_eq!(used["uses"], 3);

    // 2. Authorize: the state change is pushed to each agent at once.
    for (i, name) in names.iter().enumerate() {
        let node = api
            .post(&format!("/nodes/{name}/authorize"), &json!({}))
            .ok();
        assert_eq!(state(&node), "authorized");
        agents[i]
            .proc
            .log
            .wait_for(&["node state changed", "authorized"], SHORT);
    }

    // 3. Ping each: the controller pushes, the agent answers, the round trip is reported.
    let pings: Vec<f64> = names.iter().map(|name| ping(&api, name)).collect();
    eprintln!("ping round trips (ms): {pings:?}");

    // 4. Host metrics: each agent's heartbeats carry its host's figures, which the API shows
    // and a real Prometheus scrapes from /metrics with a token, a series per host.
    for name in &names {
        let metrics = poll(&format!("{name}'s first heartbeat"), SHORT * 4, || {
            let metrics = api.get(&format!("/nodes/{name}/metrics")).ok();
            if metrics["latest"].is_null() {
                Err(metrics.to_string())
            } else {
                Ok(metrics)
            }
        });
        let latest = &metrics["latest"];
        let cpu = latest["cpu_percent"].as_f64().expect("cpu_percent");
        assert!((0.0..=100.0).contains(&cpu), "{name}: {metrics}");
        assert!(
            latest["memory_total_bytes"].as_u64() > Some(0),
            "{name}: {metrics}"
        );
        assert!(
            latest["memory_available_bytes"].as_u64() <= latest["memory_total_bytes"].as_u64(),
            "{name}: {metrics}"
        );
        assert!(
            latest["disk_total_bytes"].as_u64() > Some(0),
            "{name}: {metrics}"
        );
        assert!(
            latest["uptime_seconds"].as_u64() > Some(0),
            "{name}: {metrics}"
        );
    }
    let prometheus = qb_test_support::prometheus::Prometheus::start(&format!(
        "  - job_name: qb\n    authorization: {{credentials: \"{}\"}}\n    \
         static_configs: [{{targets: [\"{}\"]}}]\n",
        controller.admin_token,
        controller.url().trim_start_matches("http://")
    ))
    .expect("prometheus");
    poll("a memory series per host in Prometheus", SHORT * 4, || {
        let series = prometheus
            .query("qb_node_memory_total_bytes")
            .map_err(|e| e.to_string())?;
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| !series.contains(&format!("\"node\":\"{n}\"")))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "no series of {missing:?} in {series}; log: {}",
                prometheus.log()
            ))
        }
    });
    // Pushes answered by the agents, timed by the controller.
    for name in &names {
        ping(&api, name);
    }
    poll("the pings' round trips in Prometheus", SHORT * 4, || {
        let count = prometheus
            .query("qb_agent_round_trip_seconds_count")
            .map_err(|e| e.to_string())?;
        let pushed = count
            .split("\"value\":[")
            .nth(1)
            .and_then(|v| v.split('"').nth(1))
            .and_then(|n| n.parse::<u64>().ok());
        match pushed {
            Some(n) if n >= 3 => Ok(()),
            _ => Err(count),
        }
    });
    drop(prometheus);

    // 5. Cut host-1's cable. It goes offline within the grace period (by the controller's
    //    clock); the others stay online all along.
    let others: Vec<String> = vec![names[0].clone(), names[2].clone()];
    lab.link_down(1).expect("the cable");
    let cut = Instant::now();
    poll(
        "host-1 to go offline after its link was cut",
        SHORT * 2,
        || {
            let nodes = api.nodes();
            assert_online(&nodes, &others, "while host-1 was cut off");
            let node = by_name(&nodes, "host-1").expect("host-1");
            if online(node) {
                Err(summary(&nodes))
            } else {
                Ok(())
            }
        },
    );
    let detected = cut.elapsed();
    eprintln!("cut link detected (host-1 offline) after {detected:?}");
    // Its last heartbeat arrived at most a second before the cut: offline cannot come before
    // two seconds (the grace period is not cut short), and the poll bounds it from above.
    assert!(
        detected >= GRACE - Duration::from_secs(1),
        "offline after only {detected:?}; the grace period is {GRACE:?}"
    );
    assert_eq!(
        state(&api.node("host-1")),
        "authorized",
        "going offline does not change the lifecycle state"
    );
    // A host-offline alert fires for it (a warning: it is in the pool), and for it alone.
    // (Other rules may fire in the lab: its hosts share this machine's disk.)
    let offline_alerts = |alerts: &Value| -> Vec<Value> {
        alerts
            .as_array()
            .expect("alerts")
            .iter()
            .filter(|a| a["rule"] == "host_offline")
            .cloned()
            .collect()
    };
    let alert = poll("a host_offline alert for host-1", SHORT * 2, || {
        let alerts = api.get("/alerts").ok();
        let firing = offline_alerts(&alerts);
        match firing.as_slice() {
            [a] if a["object_name"] == "host-1" => Ok(a.clone()),
            _ => Err(alerts.to_string()),
        }
    });
    assert_eq!(alert["severity"], "warning", "{alert}");
    eprintln!("host_offline alert fired {:?} after the cut", cut.elapsed());

    // 6. Reconnect the cable: host-1 comes back online (resuming or reconnecting).
    lab.link_up(1).expect("the cable");
    let restored = Instant::now();
    poll("host-1 to come back online", SHORT * 6, || {
        let nodes = api.nodes();
        assert_online(&nodes, &others, "while host-1 came back");
        let node = by_name(&nodes, "host-1").expect("host-1");
        if online(node) {
            Ok(())
        } else {
            Err(summary(&nodes))
        }
    });
    let back = restored.elapsed();
    // Its alert resolves.
    poll("host-1's alert resolved", SHORT * 2, || {
        let alerts = api.get("/alerts?state=all").ok();
        let resolved = alerts.as_array().expect("alerts").iter().any(|a| {
            a["id"] == alert["id"] && a["state"] == "resolved" && a["resolved_at"].is_string()
        });
        let firing = offline_alerts(&api.get("/alerts").ok());
        if resolved && firing.is_empty() {
            Ok(())
        } else {
            Err(alerts.to_string())
        }
    });
    let reconnected = agents[1].proc.log.count("lost the controller") > 0;
    eprintln!("host-1 back online {back:?} after the link came up (reconnected: {reconnected})");
    // And it answers pushes again. A ping pushed while the resumed connection is still being
    // torn down by the controller's keep-alive can be lost (it then times out after 5 s), so
    // this is a bounded poll too.
    let answered = Instant::now();
    poll("host-1 to answer a ping again", SHORT * 4, || {
        let reply = api.post("/nodes/host-1/ping", &json!({}));
        if reply.status == 200 {
            Ok(())
        } else {
            Err(reply.body.to_string())
        }
    });
    eprintln!("host-1 answered a ping {:?} after that", answered.elapsed());

    // 7. Deauthorize host-2: offline within a second, and the agent is told why.
    let refused_before = controller.proc.log.count("refused an agent certificate");
    let asked = Instant::now();
    let node = api.post("/nodes/host-2/deauthorize", &json!({})).ok();
    assert_eq!(state(&node), "deauthorized");
    poll("host-2 to be offline after deauthorization", SHORT, || {
        let node = api.node("host-2");
        if online(&node) {
            Err(format!("{node}"))
        } else {
            Ok(())
        }
    });
    let offline_after = asked.elapsed();
    eprintln!("deauthorize -> offline in {offline_after:?}");
    assert!(
        offline_after <= Duration::from_secs(1),
        "host-2 was still shown online {offline_after:?} after it was deauthorized"
    );
    let told = agents[2]
        .proc
        .log
        .wait_for(&["deauthorized this host"], SHORT);
    assert!(told.contains("ERROR"), "{told}");
    agents[2]
        .proc
        .log
        .wait_for(&["install a new bootstrap token"], SHORT);

    // It does not storm back: over a few seconds, at most one refused attempt.
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let refused = controller.proc.log.count("refused an agent certificate") - refused_before;
    let attempts = agents[2]
        .proc
        .log
        .count_since(window, "lost the controller")
        + agents[2].proc.log.count_since(window, "could not register")
        + agents[2]
            .proc
            .log
            .count_since(window, "registration refused");
    eprintln!(
        "after deauthorization: {refused} refused certificate(s) at the controller, {attempts} agent attempt(s) in 3 s"
    );
    assert!(
        refused <= 1,
        "the deauthorized agent keeps trying: {refused} refusals"
    );
    assert_eq!(attempts, 0, "{}", agents[2].proc.log.tail(10));
    assert!(
        agents[2].proc.is_running(),
        "the agent waits, it does not exit"
    );
    // Its identity is gone from the host; the mark stays so it will not reuse the token.
    assert!(!agents[2].state_dir.join("node.key").exists());
    assert!(!agents[2].state_dir.join("identity.json").exists());
    assert!(agents[2].state_dir.join("deauthorized").exists());
    assert_eq!(state(&api.node("host-2")), "deauthorized");
    assert!(!online(&api.node("host-2")));
    // The others were not disturbed.
    assert_online(&api.nodes(), &names[..2], "while host-2 was deauthorized");

    // Processes end before the lab goes (and the lab kills anything left in its namespaces).
    agents.clear();
    drop(controller);
    drop(lab);
}
