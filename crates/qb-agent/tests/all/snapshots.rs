//! etcd snapshots of a running cluster: taken by a master's agent on demand and on a
//! schedule, stored sealed in the controller's database, and downloaded whole: the file is a
//! snapshot the real `etcdctl` reads, with every key written before it.

use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::engine::{CONVERGE, ETCDCTL, etcdctl, hosts, import_etcd_bundle, wait_ready};
use crate::harness::{Controller, poll, run};
use crate::http::Api;
use crate::upgrades::etcd_endpoints;
use qb_lab::Lab;

/// How long a snapshot of a small database may take on shared cores.
const TAKEN: Duration = Duration::from_secs(60);

/// Waits until snapshot `id` of `cluster` is done or failed; it, done.
fn wait_taken(api: &Api, cluster: &str, id: u64) -> Value {
    let snapshot = poll(&format!("snapshot {id} taken"), TAKEN, || {
        let s = api.get(&format!("/clusters/{cluster}/snapshots/{id}")).ok();
        match s["state"].as_str() {
            Some("done" | "failed") => Ok(s),
            _ => Err(s.to_string()),
        }
    });
    assert_eq!(snapshot["state"], "done", "{snapshot}");
    snapshot
}

#[test]
fn an_etcd_snapshot_is_taken_by_a_master_stored_sealed_and_read_back_with_every_key() {
    let lab = Lab::new(3).expect("the lab");
    let controller = Controller::start(&lab.bridge_ip());
    let api = controller.api();
    import_etcd_bundle(&api);
    let (_configs, agents) = hosts(&lab, &controller, 3);
    api.post("/clusters", &json!({"name": "snap"})).ok();
    // No snapshot of a cluster that has no etcd yet.
    api.post("/clusters/snap/snapshots", &json!({}))
        .problem(409, "snapshot_refused");
    api.post(
        "/clusters/snap/attach",
        &json!({"nodes": ["host-0", "host-1", "host-2"]}),
    )
    .ok();
    wait_ready(&api, "snap", CONVERGE);
    // Scheduled snapshots off, so that only the one asked for is taken until the schedule
    // is set again below.
    let c = api
        .patch("/clusters/snap", &json!({"snapshot_interval_minutes": 0}))
        .ok();
    assert_eq!(c["snapshot_interval_minutes"], 0, "{c}");
    // 50 small keys and three of 1 MB, so that the snapshot spans several stored chunks.
    let endpoints = etcd_endpoints(&lab, 3);
    for i in 0..50 {
        etcdctl(
            &agents[0],
            &endpoints,
            &["put", &format!("key-{i}"), "before"],
        );
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let big = dir.path().join("big");
    std::fs::write(&big, "x".repeat(1 << 20)).expect("writing a big value");
    let pki = |file: &str| {
        agents[0]
            .host_path(&format!("/etc/qb/pki/etcd/{file}"))
            .display()
            .to_string()
    };
    for i in 0..3 {
        // etcdctl reads a value left out from its standard input.
        let written = run(std::process::Command::new("sh")
            .args([
                "-c",
                &format!("{ETCDCTL} --endpoints {endpoints} --cacert \"$1\" --cert \"$2\" --key \"$3\" put big-{i} < \"$4\""),
                "sh",
                &pki("ca.crt"),
                &pki("healthcheck-client.crt"),
                &pki("healthcheck-client.key"),
                &big.display().to_string(),
            ])
            .env("ETCDCTL_API", "3"));
        assert!(
            written.status.success(),
            "etcdctl put: {}",
            String::from_utf8_lossy(&written.stderr)
        );
    }

    let asked = api.post("/clusters/snap/snapshots", &json!({}));
    assert_eq!(asked.status, 202, "{:?}", asked.body);
    let id = asked.body["id"].as_u64().expect("an id");
    assert_eq!(asked.body["trigger"], "manual");
    let snapshot = wait_taken(&api, "snap", id);
    let node = snapshot["node"].as_str().expect("the master that took it");
    assert!(node.starts_with("host-"), "{snapshot}");
    let size = snapshot["size"].as_u64().expect("a size");
    assert!(size > 3 << 20, "{snapshot}");

    // Downloaded, it is the file etcd wrote: its SHA-256, and etcdctl reads every key in it.
    let bytes = api.get_bytes(&format!("/clusters/snap/snapshots/{id}/content"));
    assert_eq!(bytes.len() as u64, size);
    let sha256 = format!("{:x}", Sha256::digest(&bytes));
    assert_eq!(snapshot["sha256"], sha256.as_str());
    let file = dir.path().join("snapshot.db");
    std::fs::write(&file, &bytes).expect("writing the snapshot");
    let status = run(std::process::Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(&file));
    assert!(
        status.status.success(),
        "etcdctl snapshot status: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: Value = serde_json::from_slice(&status.stdout).expect("etcdctl's JSON");
    let revision = snapshot["revision"].as_u64().expect("a revision");
    assert!(
        status["revision"].as_u64() >= Some(revision) && revision >= 53,
        "etcdctl says {status}, qb {snapshot}"
    );
    assert!(status["totalKey"].as_u64() >= Some(53), "{status}");
    // Restored by etcdctl, the keys are there.
    let restored = dir.path().join("restored");
    let restore = run(std::process::Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&restored));
    assert!(
        restore.status.success(),
        "etcdctl snapshot restore: {}",
        String::from_utf8_lossy(&restore.stderr)
    );
    assert!(restored.join("member/snap/db").is_file());

    // The bytes at rest are sealed: no run of the big values is in the database's files (the
    // database and its write-ahead log, where recent pages still are).
    let database = controller.database();
    let mut files = vec![database.clone()];
    files.push(database.with_extension("db-wal"));
    for file in files.iter().filter(|f| f.exists()) {
        let bytes = std::fs::read(file).expect("the database");
        assert!(
            !bytes.windows(4096).any(|w| w.iter().all(|b| *b == b'x')),
            "plain snapshot bytes in {}",
            file.display()
        );
    }
    assert!(
        files.iter().all(|f| f.exists()),
        "no write-ahead log: {files:?}"
    );

    // A schedule: a snapshot is taken on it by itself.
    let c = api
        .patch(
            "/clusters/snap",
            &json!({"snapshot_interval_minutes": 1, "snapshot_retention": 1}),
        )
        .ok();
    assert_eq!(
        (&c["snapshot_interval_minutes"], &c["snapshot_retention"]),
        (&json!(1), &json!(1))
    );
    // The first is due an interval after the cluster was created, then an interval after the
    // last; the loop looks every 30 s.
    let scheduled = poll("a scheduled snapshot", Duration::from_secs(150), || {
        let all = api.get("/clusters/snap/snapshots").ok();
        all.as_array()
            .into_iter()
            .flatten()
            .find(|s| s["trigger"] == "scheduled")
            .and_then(|s| s["id"].as_u64())
            .ok_or(all.to_string())
    });
    wait_taken(&api, "snap", scheduled);
    // Events say who asked and what came of it.
    let events = api.get("/events?action=cluster.snapshot").ok();
    let actions: Vec<&str> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"cluster.snapshot_requested")
            && actions.contains(&"cluster.snapshot_taken"),
        "{events}"
    );
    // Deleted, it is gone.
    assert_eq!(
        api.delete(&format!("/clusters/snap/snapshots/{id}")).status,
        204
    );
    api.get(&format!("/clusters/snap/snapshots/{id}"))
        .problem(404, "not_found");
    eprintln!(
        "snapshot {id} of {size} bytes at revision {revision} taken by {node}; scheduled snapshot {scheduled} taken"
    );
}
