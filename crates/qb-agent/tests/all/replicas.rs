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

use crate::engine::{authorize_when_online, roles, start_hosts, wait_ready};
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
    let a = Controller::start_replica(&lab.bridge_ip(), &pg.url(), Some(&b.admin_token));
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
    let stop = Arc::new(AtomicBool::new(false));
    let lister = {
        let (api, stop, all) = (api_b.clone(), stop.clone(), all.clone());
        std::thread::spawn(move || {
            let (mut calls, mut failures) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                calls += 1;
                match ready_nodes(&api) {
                    Ok(ready) if ready == all => {}
                    other => failures.push(format!("{other:?}")),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (calls, failures)
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let _ = Command::new("kill")
        .args(["-9", &a.proc.pid().to_string()])
        .status();
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
    stop.store(true, Ordering::Relaxed);
    let (calls, failures) = lister.join().expect("the lister");
    assert!(
        failures.is_empty(),
        "{} of {calls} listings through B failed while A died: {failures:#?}",
        failures.len()
    );
    assert!(calls > 40, "only {calls} listings");
    let c = wait_ready(&api_b, "k8s", BRING_UP);
    assert_eq!(c["state"], "ready", "{c}");
    assert_eq!(ready_nodes(&api_b), Ok(all), "through B, agents now on B");
    drop(a);
}
