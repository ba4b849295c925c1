//! Kubernetes bring-up in the standing lab of `cargo xtask lab` (release binaries, agents
//! installed from the controller's tarball, the real bundle): how long the lab takes to come up
//! and go, and from "attach" to every Node `Ready` (as the API server reports) for 3 hosts from
//! nothing (artifacts downloaded from the controller), 2 more, then — after the cluster was
//! deleted, with the artifacts cached on the hosts (the design target of 60 s) — 3 and 5 hosts
//! at once. Needs root and the bundle: run it with `cargo xtask bench`, or set `QB_LAB_BUNDLE`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use qb_lab::standing;
use serde_json::Value;

use standing_lab::{StandingLab, wait};

mod standing_lab;

const TARGET: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_secs(600);
/// Warm bring-ups of each size (the median is reported).
const WARM_ROUNDS: usize = 3;

fn main() -> Result<()> {
    let parent = tempfile::tempdir()?;
    let options = standing_lab::options(parent.path(), 5, "bench")?;
    let started = Instant::now();
    let bench = Bench {
        lab: StandingLab::up(&options)?,
    };
    let up = started.elapsed();
    let result = bench.rounds();
    let started = Instant::now();
    let left = standing::down(&bench.lab.dir)?;
    let down = started.elapsed();
    let (cold, more, warm3, warm5) = result?;
    ensure!(left.is_empty(), "the lab left {left:?}");

    println!("lab of 5 hosts (bundle imported): up {up:.1?}, down {down:.1?}");
    println!("attach → every Node Ready:");
    println!("  3 hosts, artifacts downloaded  {cold:>8.1?}");
    println!("  2 more hosts, downloaded       {more:>8.1?}");
    for (n, warm) in [(3, warm3), (5, warm5)] {
        let median = {
            let mut w = warm.clone();
            w.sort();
            w[w.len() / 2]
        };
        println!(
            "  {n} hosts, artifacts cached      {median:>8.1?} median of {WARM_ROUNDS} {warm:.1?}, {:.2} of the {TARGET:?} target",
            median.as_secs_f64() / TARGET.as_secs_f64()
        );
    }
    Ok(())
}

struct Bench {
    lab: StandingLab,
}

impl Bench {
    fn names(&self, range: std::ops::Range<usize>) -> Vec<String> {
        self.lab.record.hosts[range]
            .iter()
            .map(|h| h.name.clone())
            .collect()
    }

    /// Cold 3, then 2 more; then, `WARM_ROUNDS` times each, warm 3 and warm 5 (each time in a
    /// new cluster, the previous one deleted).
    fn rounds(&self) -> Result<(Duration, Duration, Vec<Duration>, Vec<Duration>)> {
        let all = self.names(0..5);
        self.lab
            .qb(&[&["node", "authorize"], &strs(&all)[..]].concat())?;
        self.lab.qb(&["cluster", "create", "bench"])?;
        let cold = self.attach(&self.names(0..3), &self.names(0..3))?;
        let more = self.attach(&self.names(3..5), &all)?;
        let (mut warm3, mut warm5) = (Vec::new(), Vec::new());
        for _ in 0..WARM_ROUNDS {
            for (n, warm) in [(3, &mut warm3), (5, &mut warm5)] {
                self.recreate()?;
                warm.push(self.attach(&self.names(0..n), &self.names(0..n))?);
            }
        }
        Ok((cold, more, warm3, warm5))
    }

    /// Deletes the cluster, waits until every host is wiped and back in the pool, and creates
    /// it again, empty.
    fn recreate(&self) -> Result<()> {
        self.lab.qb(&["cluster", "delete", "bench", "--force"])?;
        // Back in the pool at once; wiped once each has applied its wipe plan.
        wait("every host wiped", TIMEOUT, || {
            let nodes = self.lab.qb_json(&["node", "list"])?;
            Ok(nodes.as_array().into_iter().flatten().all(|n| {
                let report = &n["plan"]["report"];
                n["state"] == "authorized"
                    && report["state"] == "applied"
                    && report["generation"] == n["plan"]["generation"]
                    && report["steps"][0]["name"] == "wipe"
            }))
        })?;
        self.lab.qb(&["cluster", "create", "bench"]).map(drop)
    }

    /// Attaches `names`; the time until the cluster is ready and exactly `nodes` are Ready.
    fn attach(&self, names: &[String], nodes: &[String]) -> Result<Duration> {
        let started = Instant::now();
        self.lab
            .qb(&[&["cluster", "attach", "bench"], &strs(names)[..]].concat())?;
        wait("the cluster ready", TIMEOUT, || {
            let c = self.lab.qb_json(&["cluster", "show", "bench"])?;
            Ok(c["state"] == "ready"
                && c["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .all(|n| n["role"].is_string()))
        })?;
        let mut want = nodes.to_vec();
        want.sort();
        wait("every Node Ready", TIMEOUT, || {
            Ok(self.ready_nodes().is_ok_and(|ready| ready == want))
        })?;
        Ok(started.elapsed())
    }

    /// The Nodes whose `Ready` condition is true, from kubectl on the first host (a master).
    fn ready_nodes(&self) -> Result<Vec<String>> {
        let pid = self.lab.record.hosts[0].agent_pid.context("no agent")?;
        let out = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "-n", "kubectl"])
            .args(["--kubeconfig", "/etc/qb/kubernetes/admin.conf"])
            .args(["--request-timeout=5s", "get", "nodes", "-o", "json"])
            .output()?;
        ensure!(out.status.success(), "kubectl failed");
        let list: Value = serde_json::from_slice(&out.stdout)?;
        Ok(qb_lab::kube::ready_nodes(&list))
    }
}

fn strs(names: &[String]) -> Vec<&str> {
    names.iter().map(String::as_str).collect()
}
