//! API throughput and latency on SQLite and PostgreSQL, side by side in one run.
//!
//! A real controller (router, store, reconciler) serves plain HTTP on loopback; concurrent
//! clients drive three workloads: reading one node, listing 100 nodes, and attach/detach writes
//! (each a transaction with its events). Each workload runs several rounds; the table shows the
//! median round. Run with `cargo xtask bench` (or `cargo bench -p qb-controller --bench api`).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use qb_api::{NodeFacts, Role};
use qb_controller::{AppState, router, serve};
use qb_store::{Actor, NewNode, Store};
use serde_json::json;

const CLIENTS: usize = 8;
const NODES_PER_CLIENT: usize = 8;
const POOL: usize = 200;
const ROUND: Duration = Duration::from_secs(2);
const ROUNDS: usize = 3;

struct Fixture {
    base: String,
    token: String,
    client: reqwest::Client,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

async fn fixture(store: Store) -> Fixture {
    let (tenant, admin) = store
        .create_tenant(&"bench".parse().unwrap(), &"admin".parse().unwrap())
        .await
        .unwrap();
    let op = store
        .create_user(
            tenant.id,
            &"op".parse().unwrap(),
            Role::Operator,
            &Actor::controller(),
        )
        .await
        .unwrap();
    let _ = admin;
    let token =
        qb_controller::app::mint_token(&store, tenant.id, &op.name, None, 1, &Actor::controller())
            .await
            .unwrap()
            .secret;
    for i in 0..POOL {
        let name = format!("node-{i:03}");
        let facts = NodeFacts {
            hostname: name.clone(),
            cpus: 2,
            memory_bytes: 8 << 30,
            ..Default::default()
        };
        let node = store
            .insert_node(
                tenant.id,
                NewNode {
                    name: name.parse().unwrap(),
                    facts,
                    labels: Default::default(),
                },
                &Actor::controller(),
            )
            .await
            .unwrap();
        store
            .authorize_node(tenant.id, &qb_store::Key::Id(node.id), &Actor::controller())
            .await
            .unwrap();
    }
    let artifacts = std::env::temp_dir().join(format!("qb-bench-artifacts-{}", std::process::id()));
    let ca = qb_controller::agents::ca::load_or_create(&store)
        .await
        .unwrap();
    let engine = std::sync::Arc::new(
        qb_controller::engine::Engine::load(
            store,
            std::sync::Arc::new(qb_controller::agents::Agents::new(
                std::time::Duration::from_secs(10),
            )),
            qb_controller::artifacts::ArtifactStore::open(&artifacts).unwrap(),
            &ca,
        )
        .await
        .unwrap(),
    );
    let state = AppState::new(engine.clone());
    tokio::spawn(engine.run());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve::serve(listener, router(state), None, async move {
        let _ = rx.await;
    }));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    let f = Fixture {
        base,
        token,
        client,
        _shutdown: tx,
    };
    for c in 0..CLIENTS {
        f.request(
            reqwest::Method::POST,
            "/api/v1/clusters",
            Some(json!({"name": format!("bench-{c}")})),
        )
        .await;
    }
    f
}

impl Fixture {
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> reqwest::StatusCode {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let _ = resp.bytes().await.unwrap();
        status
    }
}

#[derive(Clone, Copy)]
enum Workload {
    GetNode,
    ListNodes,
    AttachDetach,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Self::GetNode => "GET one node",
            Self::ListNodes => "GET 100 nodes",
            Self::AttachDetach => "attach/detach",
        }
    }
}

struct Round {
    per_sec: f64,
    latencies: Vec<Duration>,
}

/// One round: every client loops on the workload until the time is up.
async fn round(f: &Arc<Fixture>, workload: Workload) -> Round {
    let deadline = Instant::now() + ROUND;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0usize;
            while Instant::now() < deadline {
                let node = format!("node-{:03}", c * NODES_PER_CLIENT + i % NODES_PER_CLIENT);
                let started = Instant::now();
                match workload {
                    Workload::GetNode => {
                        assert!(
                            f.request(reqwest::Method::GET, &format!("/api/v1/nodes/{node}"), None)
                                .await
                                .is_success()
                        );
                    }
                    Workload::ListNodes => {
                        assert!(
                            f.request(reqwest::Method::GET, "/api/v1/nodes?limit=100", None)
                                .await
                                .is_success()
                        );
                    }
                    Workload::AttachDetach => {
                        // Attach this client's next node, detach it; the reconciler returns it
                        // to the pool before the client comes back round to it.
                        let cluster = format!("/api/v1/clusters/bench-{c}");
                        let status = f
                            .request(
                                reqwest::Method::POST,
                                &format!("{cluster}/attach"),
                                Some(json!({"nodes": [node]})),
                            )
                            .await;
                        if status.is_success() {
                            latencies.push(started.elapsed());
                            let started = Instant::now();
                            let status = f
                                .request(
                                    reqwest::Method::POST,
                                    &format!("{cluster}/detach"),
                                    Some(json!({"nodes": [node]})),
                                )
                                .await;
                            assert!(status.is_success(), "detach: {status}");
                            latencies.push(started.elapsed());
                        }
                        i += 1;
                        continue;
                    }
                }
                latencies.push(started.elapsed());
                i += 1;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    latencies.sort();
    Round {
        per_sec: latencies.len() as f64 / ROUND.as_secs_f64(),
        latencies,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// The median round by throughput.
async fn measure(f: &Arc<Fixture>, workload: Workload) -> Round {
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        rounds.push(round(f, workload).await);
    }
    rounds.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
    rounds.swap_remove(ROUNDS / 2)
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would too: nothing else to parse.
    let workloads = [
        Workload::GetNode,
        Workload::ListNodes,
        Workload::AttachDetach,
    ];
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open_sqlite(&dir.path().join("qb.db"), qb_store::Keyring::ephemeral())
        .await
        .unwrap();
    let pg_server =
        qb_test_support::PgServer::start().expect("PostgreSQL is needed for the benchmark");
    let postgres = Store::open(&pg_server.url(), qb_store::Keyring::ephemeral())
        .await
        .unwrap();
    let backends = [
        ("sqlite", Arc::new(fixture(sqlite).await)),
        ("postgres", Arc::new(fixture(postgres).await)),
    ];

    println!(
        "qb API benchmark: {CLIENTS} concurrent clients over HTTP on loopback, {ROUNDS} rounds of {}s, median round",
        ROUND.as_secs()
    );
    println!(
        "{:<10} {:<16} {:>10} {:>9} {:>9}",
        "store", "workload", "req/s", "p50 ms", "p99 ms"
    );
    let mut rates = Vec::new();
    for workload in workloads {
        for (name, f) in &backends {
            let r = measure(f, workload).await;
            println!(
                "{:<10} {:<16} {:>10.0} {:>9.2} {:>9.2}",
                name,
                workload.name(),
                r.per_sec,
                percentile(&r.latencies, 0.50),
                percentile(&r.latencies, 0.99)
            );
            rates.push((workload.name(), *name, r.per_sec));
        }
    }
    println!();
    for workload in workloads {
        let rate = |store: &str| {
            rates
                .iter()
                .find(|(w, s, _)| *w == workload.name() && *s == store)
                .map(|r| r.2)
        };
        if let (Some(s), Some(p)) = (rate("sqlite"), rate("postgres")) {
            println!(
                "{:<16} postgres/sqlite throughput ratio {:.2}",
                workload.name(),
                p / s
            );
        }
    }
}
