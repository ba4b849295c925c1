//! An agent host's disk full, as it once happened: three hosts of one cluster share one small
//! file system (a tmpfs the test mounts) holding their agents' state and their system
//! directories, etcd's data among them, and it fills up while the cluster runs and is written
//! to. The agents stay up the whole time, and once space is back the cluster recovers by
//! itself: every etcd member healthy, writes accepted, the cluster ready again.

use std::time::{Duration, Instant};

use qb_lab::netns::Lab;
use qb_test_support::disk::{Tmpfs, fill};
use serde_json::json;

use crate::engine::{
    CONVERGE, authorize_when_online, cluster, etcdctl, import_etcd_bundle, try_etcdctl,
    wait_online, wait_ready,
};
use crate::harness::{Agent, AgentConfig, Controller, poll};

const HOSTS: usize = 3;
/// Room for three hosts' etcd (its binary twice: the cache and the installed copy; its
/// write-ahead log, 64 MiB preallocated) and a little more.
const DISK: &str = "600m";
/// How long the disk stays full while the cluster is written to.
const FULL_FOR: Duration = Duration::from_secs(30);

#[test]
fn a_full_disk_on_every_host_stops_no_agent_and_the_cluster_recovers_once_space_is_back() {
    let lab = Lab::new(HOSTS).expect("the lab");
    let controller = Controller::start(&lab.bridge_ip());
    let api = controller.api();
    import_etcd_bundle(&api);
    let dir = tempfile::tempdir().expect("temp dir");
    let disk = Tmpfs::mount(&dir.path().join("disk"), DISK).expect("a tmpfs");
    let token = api.bootstrap_token(HOSTS as u32, 1);
    let configs: Vec<AgentConfig> = (0..HOSTS)
        .map(|i| AgentConfig::new(&controller, &token.secret, &format!("host-{i}")))
        .collect();
    let mut agents: Vec<Agent> = configs
        .iter()
        .enumerate()
        .map(|(i, c)| Agent::start_host_in(c, &lab.netns(i), disk.path()))
        .collect();
    authorize_when_online(&api, &configs);

    // The disk is full before the cluster installs: no host can even keep its plan.
    let filler = disk.path().join("filler");
    let spare = disk.path().join("spare");
    std::fs::write(&spare, vec![0u8; 4 << 20]).expect("a spare file");
    fill(&filler).expect("filling the disk");
    api.post("/clusters", &json!({"name": "full"})).ok();
    api.post(
        "/clusters/full/attach",
        &json!({"nodes": ["host-0", "host-1", "host-2"]}),
    )
    .ok();
    wait_message("the plan not kept", &api, "plan not saved");
    std::thread::sleep(Duration::from_secs(5));
    assert_agents_up(&mut agents);

    // A little room: the plans are kept, etcd does not fit.
    std::fs::remove_file(&spare).expect("freeing a little");
    wait_message("the download not kept", &api, "artifacts Failed");
    assert_agents_up(&mut agents);

    // Room enough: the install finishes by itself.
    std::fs::remove_file(&filler).expect("freeing the disk");
    let freed = Instant::now();
    wait_ready(&api, "full", CONVERGE);
    eprintln!("installed {:?} after space came back", freed.elapsed());
    let endpoints: Vec<String> = (0..HOSTS)
        .map(|i| format!("https://{}:2379", lab.host_ip(i)))
        .collect();
    let all = endpoints.join(",");
    etcdctl(&agents[0], &all, &["put", "before", "full"]);

    // The disk fills up while the cluster runs, and the cluster is written to.
    let filled = fill(&filler).expect("filling the disk");
    eprintln!("disk filled with {} MiB more", filled >> 20);
    let full_since = Instant::now();
    let (mut accepted, mut refused) = (0, 0);
    let value = "x".repeat(64 << 10);
    while full_since.elapsed() < FULL_FOR {
        let key = format!("during-{accepted}-{refused}");
        if try_etcdctl(&agents[0], &all, &["put", &key, &value]).is_ok() {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    eprintln!("while full: {accepted} writes accepted, {refused} refused");
    assert_agents_up(&mut agents);

    // Space is back: the cluster recovers by itself.
    std::fs::remove_file(&filler).expect("freeing the disk");
    let freed = Instant::now();
    poll(
        "every etcd member healthy and writes accepted",
        Duration::from_secs(120),
        || {
            let health = try_etcdctl(&agents[0], &all, &["endpoint", "health"])?;
            if health.matches("is healthy").count() != HOSTS {
                return Err(health);
            }
            try_etcdctl(&agents[0], &all, &["put", "after", "space"]).map(drop)
        },
    );
    eprintln!(
        "etcd healthy and writable {:?} after space came back",
        freed.elapsed()
    );
    wait_ready(&api, "full", CONVERGE);
    for (i, endpoint) in endpoints.iter().enumerate() {
        wait_online(&api, &format!("host-{i}"));
        let got = etcdctl(
            &agents[0],
            endpoint,
            &["get", "before", "--print-value-only"],
        );
        assert_eq!(got.trim(), "full", "host-{i}");
    }
    eprintln!("cluster ready {:?} after space came back", freed.elapsed());
}

fn assert_agents_up(agents: &mut [Agent]) {
    for (i, agent) in agents.iter_mut().enumerate() {
        assert!(
            agent.proc.is_running(),
            "host-{i}'s agent exited on a full disk: {}",
            agent.proc.log.tail(30)
        );
    }
}

/// Waits until the cluster's state message says `what` and that the disk is full.
fn wait_message(waiting_for: &str, api: &crate::http::Api, what: &str) {
    let message = poll(waiting_for, Duration::from_secs(60), || {
        let c = cluster(api, "full");
        let message = c["state_message"].as_str().unwrap_or_default().to_owned();
        if message.contains(what) && message.contains("No space left on device") {
            Ok(message)
        } else {
            Err(c.to_string())
        }
    });
    eprintln!("{waiting_for}: {message}");
}
