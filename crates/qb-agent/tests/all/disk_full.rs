//! An agent host's disk full, as it once happened: the three hosts of a Kubernetes cluster share
//! one file system (a tmpfs the test mounts) holding their agents' state and their system
//! directories — etcd's data, containerd's images, the kubelet's pods — and it fills up, first
//! before the cluster installs, then while the cluster runs a workload and is written to, until
//! every kubelet has evicted pods and deleted images to make room. The agents stay up the whole
//! time, and once space is back everything recovers by itself: every etcd member healthy, the
//! deleted images imported again, every Node Ready without disk pressure, the workload running
//! on every host again, and pod-to-pod traffic, the Service and the cluster DNS as before.

use std::path::Path;
use std::time::{Duration, Instant};

use qb_lab::netns::Lab;
use qb_test_support::disk::{Tmpfs, fill};
use serde_json::{Value, json};

use crate::engine::{
    authorize_when_online, cluster, etcdctl, try_etcdctl, wait_online, wait_ready,
};
use crate::harness::{Agent, AgentConfig, Controller, poll};
use crate::kubernetes::{
    BRING_UP, PodCgroups, bundle_dir, check_traffic, import_bundle, kubectl, kubectl_json, names,
    try_traffic, wait_nodes_ready, web,
};

const HOSTS: usize = 3;
/// How long the disk stays full once every kubelet has deleted images.
const FULL_FOR: Duration = Duration::from_secs(20);
/// What the kubelets keep free (their `evictionHard`): the disk must hold that beyond what the
/// hosts keep on it, or they are under pressure from the start.
const EVICTION_FLOOR: u64 = 2 << 30;

/// Room for every host's copy of the bundle's artifacts, as much again for images unpacked in
/// containerd, what the kubelets keep free, and a little more for etcd and logs.
fn disk_size(bundle: &Path) -> String {
    let bundle_bytes: u64 = ["bin", "images", "cni"]
        .iter()
        .filter_map(|d| std::fs::read_dir(bundle.join(d)).ok())
        .flatten()
        .flatten()
        .filter_map(|entry| entry.metadata().ok())
        .map(|meta| meta.len())
        .sum();
    let bytes = 2 * bundle_bytes * HOSTS as u64 + EVICTION_FLOOR + (768 << 20);
    format!("{}m", bytes >> 20)
}

#[test]
fn a_full_disk_under_a_used_cluster_stops_no_agent_and_everything_recovers_once_space_is_back() {
    let bundle = bundle_dir();
    let hosts = names(0..HOSTS);
    // Dropped last: the lab's teardown stops the kubelets first, so none recreates a pod.
    let _cgroups = PodCgroups(hosts.clone());
    let lab = Lab::new(HOSTS).expect("the lab");
    lab.add_gateway().expect("the hosts' gateway");
    let controller = Controller::start(&lab.bridge_ip());
    let api = controller.api();
    import_bundle(&api, &bundle);
    let dir = tempfile::tempdir().expect("temp dir");
    let size = disk_size(&bundle);
    let disk = Tmpfs::mount(&dir.path().join("disk"), &size).expect("a tmpfs");
    eprintln!("the hosts' disk: a tmpfs of {size}");
    let token = api.bootstrap_token(HOSTS as u32, 1);
    let configs: Vec<AgentConfig> = hosts
        .iter()
        .map(|h| AgentConfig::new(&controller, &token.secret, h))
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
    api.post("/clusters/full/attach", &json!({"nodes": hosts}))
        .ok();
    wait_message("the plan not kept", &api, "plan not saved");
    std::thread::sleep(Duration::from_secs(5));
    assert_agents_up(&mut agents);

    // A little room: the plans are kept, the artifacts do not fit.
    std::fs::remove_file(&spare).expect("freeing a little");
    wait_message("the download not kept", &api, "artifacts Failed");
    assert_agents_up(&mut agents);

    // Room enough: the install finishes by itself.
    std::fs::remove_file(&filler).expect("freeing the disk");
    let freed = Instant::now();
    wait_ready(&api, "full", BRING_UP);
    let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    wait_nodes_ready(&agents[0], &host_refs, BRING_UP);
    eprintln!("installed {:?} after space came back", freed.elapsed());

    // The cluster is used: a workload on every host behind a Service, found by its name.
    let admin = &agents[0];
    let out = kubectl(admin, &["apply", "-f", "-"], Some(&web(&hosts)));
    assert!(out.status.success(), "{out:?}");
    check_traffic(admin, &agents, &hosts);
    let endpoints: Vec<String> = (0..HOSTS)
        .map(|i| format!("https://{}:2379", lab.host_ip(i)))
        .collect();
    let all = endpoints.join(",");
    etcdctl(admin, &all, &["put", "before", "full"]);

    // The disk fills up while the cluster runs and is written to, and stays full a while once
    // every kubelet has deleted images to make room (the bundle's, which no registry brings back).
    let images_before: Vec<Vec<String>> = agents
        .iter()
        .map(|a| images(a).expect("containerd's images"))
        .collect();
    let filled = fill(&filler).expect("filling the disk");
    eprintln!("disk filled with {} MiB more", filled >> 20);
    let full = Instant::now();
    let (mut accepted, mut refused) = (0, 0);
    let mut images_gone = None;
    // Each host's kubelet deletes some at some moment (the agent may have imported one again
    // since, as a little room came back).
    let mut deleted_on = [false; HOSTS];
    let value = "x".repeat(64 << 10);
    while images_gone.is_none_or(|since: Instant| since.elapsed() < FULL_FOR) {
        let key = format!("during-{accepted}-{refused}");
        if try_etcdctl(admin, &all, &["put", &key, &value]).is_ok() {
            accepted += 1;
        } else {
            refused += 1;
        }
        let now: Vec<Option<Vec<String>>> = agents.iter().map(images).collect();
        for ((deleted, n), b) in deleted_on.iter_mut().zip(&now).zip(&images_before) {
            *deleted |= n.as_ref().is_some_and(|n| n.len() < b.len());
        }
        if images_gone.is_none() && deleted_on.iter().all(|d| *d) {
            eprintln!(
                "every kubelet deleted images {:?} after the fill: {:?} left of {:?}",
                full.elapsed(),
                now,
                images_before
            );
            images_gone = Some(Instant::now());
        }
        assert!(
            full.elapsed() < BRING_UP,
            "images on each host after {BRING_UP:?}: {now:?}, before the fill: {images_before:?}"
        );
    }
    eprintln!("while full: {accepted} writes accepted, {refused} refused");
    assert_agents_up(&mut agents);
    let admin = &agents[0];

    // Space is back: everything recovers by itself.
    std::fs::remove_file(&filler).expect("freeing the disk");
    let freed = Instant::now();
    poll(
        "every etcd member healthy and writes accepted",
        Duration::from_secs(120),
        || {
            let health = try_etcdctl(admin, &all, &["endpoint", "health"])?;
            if health.matches("is healthy").count() != HOSTS {
                return Err(health);
            }
            try_etcdctl(admin, &all, &["put", "after", "space"]).map(drop)
        },
    );
    eprintln!(
        "etcd healthy and writable {:?} after space came back",
        freed.elapsed()
    );
    wait_ready(&api, "full", BRING_UP);
    poll("no Node under disk pressure", BRING_UP, || {
        let left = pressured(admin)?;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
    wait_nodes_ready(admin, &host_refs, BRING_UP);
    eprintln!(
        "every Node Ready without pressure {:?} after space came back",
        freed.elapsed()
    );
    // Pods the kubelets evicted stay listed (Failed) until someone deletes them. (The API may
    // still be slow to answer on a busy machine: each call is tried until it answers.)
    let evicted = poll("the failed pods listed", BRING_UP, || {
        kubectl_json(
            admin,
            &["get", "pods", "-A", "--field-selector=status.phase=Failed"],
        )
    });
    let evicted = evicted["items"].as_array().map_or(0, Vec::len);
    poll("the failed pods deleted", BRING_UP, || {
        let out = kubectl(
            admin,
            &[
                "delete",
                "pods",
                "-A",
                "--field-selector=status.phase=Failed",
            ],
            None,
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    // Traffic as before, on the third try at the latest, 20 s apart (a miss is printed with
    // what the probes and the hosts' packet filters saw).
    let mut misses = 0;
    let matrix = loop {
        match try_traffic(admin, &agents, &hosts) {
            Ok(matrix) => break matrix,
            Err(failures) if misses < 2 => {
                misses += 1;
                eprintln!(
                    "traffic not yet as before {:?} after space came back:\n{failures}",
                    freed.elapsed()
                );
                std::thread::sleep(Duration::from_secs(20));
            }
            Err(failures) => panic!("{failures}"),
        }
    };
    eprintln!(
        "{evicted} pods evicted under pressure; traffic as before {:?} after space came back:\n{matrix}",
        freed.elapsed()
    );
    for (i, before) in images_before.iter().enumerate() {
        poll(&format!("host-{i}'s images back"), BRING_UP, || {
            let now = images(&agents[i]);
            if now.as_ref() == Some(before) {
                Ok(())
            } else {
                Err(format!("{now:?}, before the fill {before:?}"))
            }
        });
    }
    let again: Vec<usize> = agents
        .iter()
        .map(|a| a.proc.log.count("running it again"))
        .collect();
    eprintln!("image imports run again, by host: {again:?}");
    assert!(again.iter().all(|n| *n > 0), "{again:?}");
    for (i, endpoint) in endpoints.iter().enumerate() {
        wait_online(&api, &format!("host-{i}"));
        let got = etcdctl(admin, endpoint, &["get", "before", "--print-value-only"]);
        assert_eq!(got.trim(), "full", "host-{i}");
    }
}

/// The names of the images in `host`'s containerd, as the kubelet sees them; `None` when
/// containerd does not answer.
fn images(host: &Agent) -> Option<Vec<String>> {
    let out = crate::harness::run(std::process::Command::new("nsenter").args([
        "-t",
        &host.proc.pid().to_string(),
        "-m",
        "-n",
        "/var/lib/qb/bin/ctr",
        "--address",
        "/run/qb/containerd/containerd.sock",
        "--namespace",
        "k8s.io",
        "images",
        "ls",
        "--quiet",
    ]));
    if !out.status.success() {
        return None;
    }
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("qb.local/"))
        .map(str::to_owned)
        .collect();
    names.sort();
    Some(names)
}

/// The Nodes whose `DiskPressure` condition is true.
fn pressured(admin: &Agent) -> Result<Vec<String>, String> {
    let list = kubectl_json(admin, &["get", "nodes"])?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|node| {
            node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c: &Value| c["type"] == "DiskPressure" && c["status"] == "True")
        })
        .map(|node| node["metadata"]["name"].as_str().unwrap_or("?").to_owned())
        .collect())
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
