//! Schemathesis (PyPI) drives every operation of the OpenAPI document against a running
//! `qb-controller`, over HTTP, on SQLite and on PostgreSQL, with all of its checks: no 5xx,
//! every response matches its schema, every status and content type is documented, schema-valid
//! input is accepted and schema-invalid input refused, and its stateful phase chains operations.
//! The rules the document cannot state are listed, with why, in `schemathesis.toml` beside this
//! file.
//!
//! The fuzzed tenant holds a cluster, a node and a user named as the document's examples are,
//! so generated requests find them; a second tenant holds objects of the same names. Its view
//! of them must come out of the run unchanged: no request of one tenant touches another's data.
//!
//! `cargo xtask test` installs the pinned Schemathesis and names it in `QB_SCHEMATHESIS`; without
//! it the test fails and says so. The run is bounded (`QB_API_FUZZ_EXAMPLES` examples per
//! operation and phase, 10 by default) and repeatable (`QB_API_FUZZ_SEED`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use qb_api::{Labels, NodeFacts};
use qb_store::{Actor, NewNode, Store};
use serde_json::{Value, json};

use crate::support::Controller;

/// The directory Schemathesis is installed in (a `pip install --target`).
const SCHEMATHESIS_ENV: &str = "QB_SCHEMATHESIS";
const EXAMPLES_ENV: &str = "QB_API_FUZZ_EXAMPLES";
const SEED_ENV: &str = "QB_API_FUZZ_SEED";
const DEFAULT_SEED: &str = "20261206";
/// What the schema's examples name: generated requests use them often.
const CLUSTER: &str = "clus100";
const NODE: &str = "host-1.rack2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_holds_up_to_schemathesis_on_sqlite() {
    fuzz(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_holds_up_to_schemathesis_on_postgresql() {
    let server = qb_test_support::PgServer::start().expect("PostgreSQL is required for this test");
    fuzz(Some(server.url())).await;
}

async fn fuzz(postgres: Option<String>) {
    let schemathesis = schemathesis_dir();
    let dir = tempfile::tempdir().unwrap();
    let database = postgres.unwrap_or_else(|| qb_test_support::sqlite_url(dir.path()));
    let controller = Controller::start(dir.path(), &dir.path().join("data"), &database);
    // The controller made its key file as it started.
    let keyring = qb_store::Keyring::load(&dir.path().join("data/secrets.key")).unwrap();
    let store = Store::open(&database, keyring).await.unwrap();

    let fuzzed = controller.admin_token.clone();
    let other = controller.create_tenant("other");
    for token in [&fuzzed, &other] {
        seed(&controller.url, token).await;
    }
    for tenant in ["default", "other"] {
        add_node(&store, tenant).await;
    }
    let before = view(&controller.url, &other).await;

    let examples = std::env::var(EXAMPLES_ENV).unwrap_or_else(|_| "10".to_owned());
    let seed = std::env::var(SEED_ENV).unwrap_or_else(|_| DEFAULT_SEED.to_owned());
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    let report = dir.path().join("schemathesis.txt");
    let run = Command::new("python3")
        .args(["-m", "schemathesis.cli", "--no-color", "--config-file"])
        .arg(&config)
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", controller.url))
        .arg("--header")
        .arg(format!("Authorization: Bearer {fuzzed}"))
        // Every check runs (Schemathesis's default; `--checks all` would also override the
        // configuration's one exception).
        .args(["--workers", "1", "--generation-database", "none"])
        .args(["--max-examples", &examples, "--seed", &seed])
        .current_dir(dir.path())
        .env("PYTHONPATH", &schemathesis)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&report).unwrap())
        .stderr(Stdio::inherit())
        .status()
        .expect("running python3 -m schemathesis.cli");
    let output = std::fs::read_to_string(&report).unwrap();
    // The summary: operations, phases, failures and how many cases were generated.
    let summary = output
        .rfind("SUMMARY")
        .map_or(output.as_str(), |at| &output[at..]);
    println!("schemathesis (seed {seed}, {examples} examples):\n{summary}");
    assert!(
        run.success(),
        "schemathesis found failures ({run}); rerun with {SEED_ENV}={seed}:\n{}",
        shorten(&output)
    );

    assert_eq!(
        view(&controller.url, &other).await,
        before,
        "the fuzzed tenant's requests changed another tenant's data"
    );
    let log = controller.log();
    assert!(
        !log.contains("panicked"),
        "the controller panicked during the run:\n{log}"
    );
}

/// Schemathesis's directory, or a failure that says how to get it.
fn schemathesis_dir() -> PathBuf {
    let dir = std::env::var_os(SCHEMATHESIS_ENV).unwrap_or_else(|| {
        panic!(
            "{SCHEMATHESIS_ENV} is not set: run the suite with `cargo xtask test`, which installs \
             Schemathesis, or set it to a `pip install --target` directory holding it"
        )
    });
    let dir = PathBuf::from(dir);
    assert!(
        dir.join("schemathesis").is_dir(),
        "{SCHEMATHESIS_ENV}={} holds no schemathesis package",
        dir.display()
    );
    dir
}

/// A failure report short enough to read: its start (the failures) and its end (the summary).
fn shorten(output: &str) -> String {
    const KEEP: usize = 20_000;
    if output.len() <= 2 * KEEP {
        return output.to_owned();
    }
    let start = output.floor_char_boundary(KEEP);
    let end = output.ceil_char_boundary(output.len() - KEEP);
    format!(
        "{}\n… ({} bytes left out) …\n{}",
        &output[..start],
        end - start,
        &output[end..]
    )
}

/// A cluster, a user, tokens, an alert rule, a notification channel and a silence, named as the
/// document's examples are.
async fn seed(url: &str, token: &str) {
    let client = reqwest::Client::new();
    for (path, body) in [
        ("/api/v1/clusters", json!({"name": CLUSTER})),
        (
            "/api/v1/users",
            json!({"name": CLUSTER, "role": "operator"}),
        ),
        ("/api/v1/tokens", json!({"description": "ci pipeline"})),
        (
            "/api/v1/bootstrap-tokens",
            json!({"description": "ci pipeline"}),
        ),
        (
            "/api/v1/alert-rules",
            json!({"name": CLUSTER, "metric": "cpu", "above": 90.0, "for_minutes": 5}),
        ),
        (
            "/api/v1/notification-channels",
            json!({"name": CLUSTER, "kind": "webhook", "target": "http://127.0.0.1:9/hook"}),
        ),
        (
            "/api/v1/silences",
            json!({"object_name": NODE, "duration_minutes": 60, "comment": "maintenance"}),
        ),
    ] {
        let response = client
            .post(format!("{url}{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert!(
            status.is_success(),
            "POST {path}: {status} {}",
            response.text().await.unwrap()
        );
    }
}

/// A pending node in `tenant`'s pool, as registration would add it.
async fn add_node(store: &Store, tenant: &str) {
    let tenant = store.tenant_by_name(tenant).await.unwrap();
    store
        .insert_node(
            tenant.id,
            NewNode {
                name: NODE.parse().unwrap(),
                facts: NodeFacts {
                    hostname: NODE.to_owned(),
                    ..NodeFacts::default()
                },
                labels: Labels::new(),
            },
            &Actor::controller(),
        )
        .await
        .unwrap();
}

/// Everything a tenant's admin reads of the tenant's objects and audit trail.
async fn view(url: &str, token: &str) -> Vec<(String, Value)> {
    let client = reqwest::Client::new();
    let mut seen = Vec::new();
    for path in [
        "/api/v1/clusters".to_owned(),
        format!("/api/v1/clusters/{CLUSTER}"),
        "/api/v1/nodes".to_owned(),
        format!("/api/v1/nodes/{NODE}"),
        "/api/v1/users".to_owned(),
        "/api/v1/tokens".to_owned(),
        "/api/v1/bootstrap-tokens".to_owned(),
        "/api/v1/alert-rules".to_owned(),
        "/api/v1/alerts?state=all".to_owned(),
        "/api/v1/silences".to_owned(),
        "/api/v1/notification-channels".to_owned(),
        "/api/v1/events?order=newest&limit=1000".to_owned(),
    ] {
        let response = client
            .get(format!("{url}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        let mut body: Value = response.json().await.unwrap();
        forget_reads(&mut body);
        seen.push((path, body));
    }
    seen
}

/// Drops what reading itself changes: when a token was last used.
fn forget_reads(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("last_used_at");
            map.values_mut().for_each(forget_reads);
        }
        Value::Array(items) => items.iter_mut().for_each(forget_reads),
        _ => {}
    }
}
