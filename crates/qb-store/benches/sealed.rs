//! What sealing secrets at rest costs: a node's plan (64 KiB, about a master's) read from the
//! database (sqlx's Any driver, as the store reads) and opened, beside the same row not
//! opened, and read through the store (`Store::node_plan`); and sealing
//! and opening alone, at a plan's size and at a node's certificates' (8 KiB). Medians of
//! several rounds, on SQLite. Run with `cargo xtask bench`.

use std::time::{Duration, Instant};

use qb_api::{Name, NodeFacts, NodeName};
use qb_store::{Actor, Keyring, NewNode, Store};

const ROUNDS: usize = 7;
const READS: u32 = 2000;
const PLAN_BYTES: usize = 64 * 1024;
const CERTS_BYTES: usize = 8 * 1024;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("qb.db");
    let keyring = Keyring::ephemeral();
    let store = Store::open_sqlite(&path, keyring.clone())
        .await
        .expect("the store");
    let name: Name = "bench".parse().expect("a name");
    let (tenant, _) = store
        .create_tenant(&name, &"admin".parse().expect("a name"))
        .await
        .expect("a tenant");
    let node = store
        .insert_node(
            tenant.id,
            NewNode {
                name: "n1".parse::<NodeName>().expect("a node name"),
                facts: NodeFacts::default(),
                labels: Default::default(),
            },
            &Actor::controller(),
        )
        .await
        .expect("a node");
    let plan = text(PLAN_BYTES);
    store
        .publish_plan(
            tenant.id,
            node.id,
            None,
            qb_store::PlanHashes {
                plan: "bench",
                restart: None,
            },
            None,
            |_| Ok(plan.clone()),
        )
        .await
        .expect("the plan");
    // Through sqlx's Any driver, as the store reads.
    let raw = sqlx::AnyPool::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("the database");

    let read_row = || async {
        sqlx::query_scalar::<_, String>("SELECT plan FROM nodes WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.id.to_string())
            .bind(node.id.to_string())
            .fetch_one(&raw)
            .await
            .expect("the row")
    };
    let place = qb_store::sealed_place("nodes", "plan", &node.id.to_string());
    let not_opened = median(|| async {
        for _ in 0..READS {
            assert!(read_row().await.len() > PLAN_BYTES);
        }
    })
    .await;
    let opened = median(|| async {
        for _ in 0..READS {
            let plain = keyring.open(&place, &read_row().await).expect("opens");
            assert_eq!(plain.len(), PLAN_BYTES);
        }
    })
    .await;
    let through_store = median(|| async {
        for _ in 0..READS {
            let read = store.node_plan(tenant.id, node.id).await.expect("a plan");
            assert_eq!(read.map(|(_, p)| p.len()), Some(PLAN_BYTES));
        }
    })
    .await;
    println!("a node's 64 KiB plan read {READS} times, median of {ROUNDS} rounds:");
    println!(
        "  its row read, not opened: {:>7.1} µs per read",
        per_read(not_opened)
    );
    println!(
        "  its row read and opened:  {:>7.1} µs per read",
        per_read(opened)
    );
    println!(
        "  through the store:        {:>7.1} µs per read",
        per_read(through_store)
    );
    println!(
        "  opened / not opened: {:.2}x",
        opened.as_secs_f64() / not_opened.as_secs_f64()
    );

    for (what, bytes) in [("plan", PLAN_BYTES), ("certificates", CERTS_BYTES)] {
        let value = text(bytes);
        let seal = median(|| async {
            for _ in 0..READS {
                std::hint::black_box(keyring.seal("nodes.plan/x", value.as_bytes()));
            }
        })
        .await;
        let sealed = keyring.seal("nodes.plan/x", value.as_bytes());
        let open = median(|| async {
            for _ in 0..READS {
                std::hint::black_box(keyring.open("nodes.plan/x", &sealed).expect("opens"));
            }
        })
        .await;
        println!(
            "{what} ({} KiB): seal {:.1} µs, open {:.1} µs",
            bytes / 1024,
            per_read(seal),
            per_read(open)
        );
    }
}

/// The median time of `ROUNDS` runs of `f`.
async fn median<F, Fut>(f: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        f().await;
        times.push(start.elapsed());
    }
    times.sort();
    times[ROUNDS / 2]
}

fn per_read(total: Duration) -> f64 {
    total.as_secs_f64() * 1e6 / f64::from(READS)
}

/// `bytes` of plan-like text (JSON with base64-ish content).
fn text(bytes: usize) -> String {
    let line = "{\"path\":\"/etc/qb/pki/apiserver.key\",\"content\":\"MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\"},";
    line.chars().cycle().take(bytes).collect()
}
