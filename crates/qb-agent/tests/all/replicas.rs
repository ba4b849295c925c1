//! Two controller replicas on one PostgreSQL. The agents hold their channels with replica A;
//! replica B runs the cluster engine and answers the API. Everything B does to the agents —
//! preflight, etcd membership, plans, artifacts imported through B — and every tunnel a
//! request through B's Kubernetes proxy needs, B relays through A (mutual TLS with replica
//! certificates). When A is killed, its agents move to B, and requests through B go on.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::http::Api;

use qb_lab::Lab;
use qb_test_support::PgServer;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::engine::{authorize_when_online, cluster, roles, start_hosts, wait_ready};
use crate::harness::{AgentConfig, Controller, poll};
use crate::kubernetes::{BRING_UP, PodCgroups, bundle_dir, import_bundle};

/// The Ready Nodes, as `GET /api/v1/nodes` through the controller's Kubernetes API proxy
/// answers. (`kubectl` sends no token to a plain-HTTP server like this test's; the proxy test
/// runs it against a TLS controller.)
fn ready_nodes(api: &Api) -> Result<Vec<String>, String> {
    let reply = api.call("GET", "/k8s/clusters/k8s/api/v1/nodes", None);
    if reply.status != 200 {
        return Err(format!("{}: {}", reply.status, reply.body));
    }
    Ok(qb_lab::kube::ready_nodes(&reply.body))
}

#[test]
fn agents_on_one_replica_are_reached_through_another_and_move_when_it_dies() {
    let bundle = bundle_dir();
    let _pods = PodCgroups((0..3).map(|i| format!("host-{i}")).collect());
    let pg = PgServer::start().expect("PostgreSQL");
    let lab = Lab::new(3).expect("the lab");
    // B first: it makes the first tenant and takes the engine's lead.
    let b = Controller::start_replica(&lab.bridge_ip(), &pg.url(), None);
    b.proc.log.wait_for(
        &["this replica runs the cluster engine"],
        Duration::from_secs(20),
    );
    let a = Controller::start_replica(&lab.bridge_ip(), &pg.url(), Some(&b));
    let (api_a, api_b) = (a.api(), b.api());
    assert_eq!(
        a.proc.log.count("this replica runs the cluster engine"),
        0,
        "only one replica runs the engine"
    );

    // The hosts are A's: their packages name A first, B as the other replica.
    let token = api_a.bootstrap_token(3, 1);
    let configs: Vec<AgentConfig> = (0..3)
        .map(|i| {
            let mut config = AgentConfig::new(&a, &token.secret, &format!("host-{i}"));
            config.other_controller_urls = vec![b.agent_url.clone()];
            config
        })
        .collect();
    let _agents = start_hosts(&lab, &configs);
    // B sees them online although they talk to A; authorizing through B reaches them.
    authorize_when_online(&api_b, &configs);
    for c in &configs {
        let name = &c.node_name;
        let ping = api_b.post(&format!("/nodes/{name}/ping"), &json!({})).ok();
        assert!(ping["round_trip_ms"].as_f64().is_some(), "{ping}");
    }
    assert_eq!(
        a.proc.log.count("agent registered"),
        3,
        "the agents registered with A: {}",
        a.proc.log.tail(20)
    );
    // B shows when each agent was last heard from as A, which holds it, knows it: a moment
    // ago (they heartbeat every second), not when it registered.
    std::thread::sleep(Duration::from_secs(6));
    for c in &configs {
        let name = &c.node_name;
        let seen = |api: &Api| {
            let node = api.node(name);
            let at = node["agent"]["last_seen_at"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            OffsetDateTime::parse(&at, &Rfc3339)
                .unwrap_or_else(|e| panic!("{name}'s last_seen_at {at:?}: {e}"))
        };
        let (through_a, through_b) = (seen(&api_a), seen(&api_b));
        let age = OffsetDateTime::now_utc() - through_b;
        assert!(
            age < time::Duration::seconds(4),
            "{name} last seen {age} ago, says B"
        );
        assert!(
            (through_a - through_b).abs() < time::Duration::seconds(2),
            "{name}: A says {through_a}, B {through_b}"
        );
    }

    // B's engine forms the cluster through A: preflight, etcd members, plans; the agents
    // download through A the artifacts imported through B.
    import_bundle(&api_b, &bundle);
    api_b
        .post(
            "/clusters",
            &json!({"name": "k8s", "pod_cidr": "10.244.0.0/16", "service_cidr": "10.96.0.0/12"}),
        )
        .ok();
    api_b
        .post(
            "/clusters/k8s/attach",
            &json!({"nodes": ["host-0", "host-1", "host-2"]}),
        )
        .ok();
    let c = wait_ready(&api_b, "k8s", BRING_UP);
    let (masters, _) = roles(&c);
    assert_eq!(masters.len(), 3, "{c}");

    // Through B's Kubernetes API proxy, every tunnel relayed through A.
    let all = vec![
        "host-0".to_owned(),
        "host-1".to_owned(),
        "host-2".to_owned(),
    ];
    poll("every Node Ready through B", BRING_UP, || {
        let ready = ready_nodes(&api_b)?;
        (ready == all)
            .then_some(())
            .ok_or(format!("ready: {ready:?}"))
    });
    assert!(
        a.proc.log.count("copied an artifact from another replica") > 0,
        "{}",
        a.proc.log.tail(20)
    );

    // A dies while a client lists the Nodes through B every 100 ms: its agents move to B,
    // which then holds them itself. No request fails: work for an agent whose replica cannot
    // be reached waits for the agent to reconnect (a second or two), and a read whose tunnel
    // broke with A is sent again.
    let lister = Lister::start(&api_b, Some(all.clone()));
    std::thread::sleep(Duration::from_secs(1));
    kill(&a);
    // The first ping of each agent after the kill is answered (through A it could not be).
    let killed = Instant::now();
    for c in &configs {
        let name = &c.node_name;
        let ping = api_b.post(&format!("/nodes/{name}/ping"), &json!({}));
        assert_eq!(ping.status, 200, "{name}: {}", ping.body);
    }
    eprintln!(
        "every agent answered through B {:?} after A was killed",
        killed.elapsed()
    );
    std::thread::sleep(Duration::from_secs(5));
    lister.finish("A died");
    let c = wait_ready(&api_b, "k8s", BRING_UP);
    assert_eq!(c["state"], "ready", "{c}");
    assert_eq!(
        ready_nodes(&api_b),
        Ok(all.clone()),
        "through B, agents now on B"
    );

    // The engine's replica dies in the middle of a detach, then in the middle of an attach,
    // while a client lists the Nodes through the other replica: that one takes the engine
    // over, the agents move to it, and each operation finishes. A comes back first, on its
    // address: the agents know it.
    let a = a.restart_replica(&pg.url());
    let api_a = a.api();
    poll("A answers", Duration::from_secs(30), || {
        ready_nodes(&api_a).map(|_| ())
    });
    poll(
        "the detach of host-2 accepted",
        Duration::from_secs(30),
        || {
            let r = api_a.post("/clusters/k8s/detach", &json!({"nodes": ["host-2"]}));
            match r.status {
                200..300 => Ok(()),
                409 if r.body["code"] == "quorum_at_risk" => Err(r.body.to_string()),
                _ => panic!("detach answered {}: {}", r.status, r.body),
            }
        },
    );
    let lister = Lister::start(&api_a, None);
    assert_eq!(
        api_a.node("host-2")["state"],
        "detaching",
        "killed mid-detach"
    );
    kill(&b);
    poll("host-2 back in the pool", BRING_UP, || {
        let n = api_a.node("host-2");
        (n["state"] == "authorized")
            .then_some(())
            .ok_or(n.to_string())
    });
    // Two nodes left: one master (an even number of etcd members is no safer than one less),
    // so host-1's member went too, and its API server with it.
    let c = wait_ready(&api_a, "k8s", BRING_UP);
    assert_eq!(
        roles(&c),
        (vec!["host-0".to_owned()], vec!["host-1".to_owned()]),
        "{c}"
    );
    lister.finish("B died in the middle of a detach");

    let b = b.restart_replica(&pg.url());
    let api_b = b.api();
    poll("B answers", Duration::from_secs(30), || {
        ready_nodes(&api_b).map(|_| ())
    });
    api_a
        .post("/clusters/k8s/attach", &json!({"nodes": ["host-2"]}))
        .ok();
    let lister = Lister::start(&api_b, None);
    let c = cluster(&api_a, "k8s");
    assert!(
        roles_or_none(&c).is_none_or(|masters| masters.len() < 3),
        "killed mid-attach: {c}"
    );
    kill(&a);
    let c = poll("host-2 a master again", BRING_UP, || {
        let c = cluster(&api_b, "k8s");
        match roles_or_none(&c) {
            Some(masters) if masters.len() == 3 && c["state"] == "ready" => Ok(c),
            _ => Err(format!("{} — {}", c["state"], c["state_message"])),
        }
    });
    assert_eq!(roles(&c).0, all, "{c}");
    poll("every Node Ready through B", BRING_UP, || {
        let ready = ready_nodes(&api_b)?;
        (ready == all)
            .then_some(())
            .ok_or(format!("ready: {ready:?}"))
    });
    lister.finish("A died in the middle of an attach");
}

/// SIGKILL, as a crash or a power cut ends a replica.
fn kill(replica: &Controller) {
    let _ = Command::new("kill")
        .args(["-9", &replica.proc.pid().to_string()])
        .status();
}

/// The masters, once every node of the cluster has a role.
fn roles_or_none(cluster: &serde_json::Value) -> Option<Vec<String>> {
    let nodes = cluster["nodes"].as_array()?;
    nodes
        .iter()
        .all(|n| n["role"].is_string())
        .then(|| roles(cluster).0)
}

/// A client listing the Nodes through one replica every 100 ms, as `kubectl get nodes` in a
/// loop would, and what failed.
struct Lister {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl Lister {
    /// Counts as failed any listing that is not answered (and, when `expected` is given, any
    /// that lists other Ready Nodes).
    fn start(api: &Api, expected: Option<Vec<String>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (api, stopping) = (api.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let (mut calls, mut failures) = (0, Vec::new());
            while !stopping.load(Ordering::Relaxed) {
                calls += 1;
                match (ready_nodes(&api), &expected) {
                    (Ok(ready), Some(expected)) if ready != *expected => {
                        failures.push(format!("ready: {ready:?}"));
                    }
                    (Ok(_), _) => {}
                    (Err(e), _) => failures.push(e),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (calls, failures)
        });
        Self { stop, thread }
    }

    /// Stops it; panics if any listing failed.
    fn finish(self, during: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let (calls, failures) = self.thread.join().expect("the lister");
        assert!(
            failures.is_empty(),
            "{} of {calls} listings failed while {during}: {failures:#?}",
            failures.len()
        );
        assert!(calls >= 20, "only {calls} listings while {during}");
        eprintln!("{calls} listings while {during}, none failed");
    }
}
