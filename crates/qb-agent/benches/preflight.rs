//! Preflight across lab hosts (network namespaces on one bridge, a real controller and real
//! agents): how long a full run takes — local checks on every node, then every node probing
//! every other on every required TCP and UDP port — for 10 and 50 nodes.
//!
//! For each size: the first run (at attach, listeners everywhere), then the median of five runs
//! on the installed cluster (etcd holds the masters' ports), against the design target of 2 s
//! for 50 nodes. Needs root (namespaces), like the lab tests.

// The tests' helpers; the tests themselves are not compiled here.
#[allow(dead_code, unused_imports)]
#[path = "../tests/all/engine.rs"]
mod engine;
#[allow(dead_code)]
#[path = "../tests/all/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "../tests/all/http.rs"]
mod http;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

const TARGET_50_MS: f64 = 2000.0;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    println!("nodes  probes  first run ms  median of 5 (installed) ms  wall ms (API call)");
    for n in [10, 50] {
        let lab = qb_lab::Lab::new(n).expect("the lab");
        let controller = harness::Controller::start(&lab.bridge_ip());
        let api = controller.api();
        engine::import_etcd_bundle(&api);
        let (_configs, _agents) = engine::hosts(&lab, &controller, n);
        api.post("/clusters", &json!({"name": "bench"})).ok();
        let names: Vec<String> = (0..n).map(|i| format!("host-{i}")).collect();
        api.post("/clusters/bench/attach", &json!({"nodes": names}))
            .ok();
        // The first run comes with the attach; when it fails the cluster is blocked and the
        // figures say so instead.
        let first = harness::poll("the first preflight", Duration::from_secs(120), || {
            let r = api.get("/clusters/bench/preflight");
            if r.status == 200 {
                Ok(r.body)
            } else {
                Err(r.body.to_string())
            }
        });
        if first["passed"] != true {
            let problems = first["problems"].as_array().map_or(0, Vec::len);
            println!(
                "{n:>5}  FAILED in {} ms with {problems} problems, e.g. {}",
                first["duration_ms"], first["problems"][0]
            );
            continue;
        }
        engine::wait_ready(&api, "bench", Duration::from_secs(300));
        let mut runs = Vec::new();
        let mut walls = Vec::new();
        let mut probes = 0;
        for _ in 0..5 {
            let started = Instant::now();
            let report: Value = api.post("/clusters/bench/preflight", &json!({})).ok();
            walls.push(started.elapsed().as_secs_f64() * 1000.0);
            probes = report["mesh"].as_array().map_or(0, Vec::len);
            if report["passed"] != true {
                println!(
                    "{n:>5}  a run on the installed cluster FAILED: {}",
                    report["problems"][0]
                );
            }
            runs.push(report["duration_ms"].as_f64().unwrap_or_default());
        }
        let steady = median(runs);
        println!(
            "{n:>5}  {probes:>6}  {:>12}  {steady:>26.0}  {:>18.0}",
            first["duration_ms"],
            median(walls)
        );
        if n == 50 {
            println!(
                "50 nodes: {steady:.0} ms of the {TARGET_50_MS:.0} ms target ({:.2} of it)",
                steady / TARGET_50_MS
            );
        }
    }
}
