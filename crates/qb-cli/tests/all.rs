//! End to end: the real `qb` binary against a real `qb-controller` process, each test with its own
//! data directory, port and client configuration.
//!
//! No agent runs in these tests, so they add nodes straight into the controller's SQLite database
//! through `qb-store`, as registration would; agent packages ship a stand-in for the agent binary.
//!
//! The controller binary is `$QB_CONTROLLER_BIN` if set, else built with `cargo build -p
//! qb-controller` into the same target directory as `qb`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use qb_api::{Labels, NodeFacts};
use qb_store::{Actor, NewNode, Store};
use qb_test_support::haproxy::HaProxy;
use serde_json::Value;

/// How long the controller may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `qb-controller` binary, built if needed.
fn controller_binary() -> PathBuf {
    let qb = PathBuf::from(env!("CARGO_BIN_EXE_qb"));
    qb_test_support::workspace_binary("qb-controller", "qb-controller", &qb)
        .expect("the end-to-end tests need qb-controller")
}

/// A running controller; killed when dropped.
struct Controller {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
    fingerprint: Option<String>,
    admin_token: String,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Controller {
    fn start(https: bool) -> Self {
        Self::start_with(https, &[])
    }

    /// Starts a controller with extra arguments to `serve`.
    fn start_with(https: bool, extra: &[&str]) -> Self {
        Self::start_on(https, extra, None)
    }

    /// Starts a controller on `database` (its own SQLite file when none), with extra arguments
    /// to `serve`. A replica joining a database that has its tenants writes no admin token:
    /// its `admin_token` is empty.
    fn start_on(https: bool, extra: &[&str], database: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // Agent packages ship this small real executable (it links only the C library) instead
        // of a real agent: the tests look at the packages only.
        let agent = dir.path().join("qb-agent");
        std::fs::copy("/bin/true", &agent).expect("a stand-in agent");
        let mut cmd = Command::new(controller_binary());
        cmd.arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--database")
            .arg(database.map_or_else(
                || format!("sqlite://{}", dir.path().join("qb.db").display()),
                str::to_owned,
            ))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--agent-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("QB_LOG", "warn")
            .env("QB_AGENT_BINARY", &agent)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if !https {
            cmd.arg("--insecure-http");
        }
        let mut child = cmd.spawn().expect("start qb-controller");
        let stdout = child.stdout.take().expect("piped stdout");
        // Read the announcement on a thread, so a silent controller cannot hang the test.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut url = None;
        let mut fingerprint = None;
        while url.is_none() || (https && fingerprint.is_none()) {
            let line = rx
                .recv_timeout(START_TIMEOUT)
                .expect("qb-controller announces its address");
            if let Some(u) = line.strip_prefix("listening on ") {
                url = Some(u.trim().to_owned());
            } else if let Some(f) = line.strip_prefix("certificate fingerprint ") {
                fingerprint = Some(f.trim().to_owned());
            }
        }
        let admin_token = match std::fs::read_to_string(dir.path().join("data").join("admin-token"))
        {
            Ok(token) => token.trim().to_owned(),
            Err(_) if database.is_some() => String::new(),
            Err(e) => panic!("first start writes the admin token: {e}"),
        };
        Self {
            child,
            dir,
            url: url.expect("url"),
            fingerprint,
            admin_token,
        }
    }

    /// Kills the process (SIGKILL), keeping its files.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The address the API listens on.
    fn addr(&self) -> std::net::SocketAddr {
        let authority = self.url.split("://").nth(1).expect("a URL");
        authority.trim_end_matches('/').parse().expect("an address")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("client").join("config.yaml")
    }

    /// Runs `qb` with this test's configuration file.
    fn qb(&self, args: &[&str]) -> Run {
        self.qb_with(args, None, &[])
    }

    /// Runs `qb` in the directory `cwd`.
    fn qb_in(&self, cwd: &Path, args: &[&str]) -> Run {
        let output = Command::new(env!("CARGO_BIN_EXE_qb"))
            .args(args)
            .current_dir(cwd)
            .env("QB_CONFIG", self.config())
            .env_remove("QB_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("run qb");
        Run {
            args: args.join(" "),
            output,
        }
    }

    fn qb_with(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_qb"));
        cmd.args(args)
            .env("QB_CONFIG", self.config())
            .env_remove("QB_TOKEN")
            .envs(env.iter().copied())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run qb");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("piped stdin");
            pipe.write_all(input.as_bytes()).expect("write stdin");
        }
        let output = child.wait_with_output().expect("wait for qb");
        Run {
            args: args.join(" "),
            output,
        }
    }

    /// Adds `pending` nodes, as registration would.
    async fn add_nodes(&self, names: &[&str]) {
        let store = Store::open_sqlite(
            &self.dir.path().join("qb.db"),
            qb_store::Keyring::load(&self.dir.path().join("data").join("secrets.key"))
                .expect("the key file"),
        )
        .await
        .expect("open the store");
        let tenant = store
            .tenant_by_name("default")
            .await
            .expect("default tenant");
        for name in names {
            let facts = NodeFacts {
                hostname: (*name).to_owned(),
                os: "Debian GNU/Linux 12 (bookworm)".to_owned(),
                kernel: "6.1.0-18-amd64".to_owned(),
                arch: "x86_64".to_owned(),
                cpus: 4,
                memory_bytes: 8 << 30,
                addresses: vec!["192.0.2.10".parse().expect("ip")],
                interfaces: Vec::new(),
                route_source: None,
            };
            let new = NewNode {
                name: name.parse().expect("node name"),
                facts,
                labels: Labels::new(),
            };
            store
                .insert_node(tenant.id, new, &Actor::controller())
                .await
                .expect("insert node");
        }
        store.close().await;
    }
}

struct Run {
    args: String,
    output: Output,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Asserts success; returns stdout.
    fn ok(&self) -> String {
        assert!(
            self.output.status.success(),
            "qb {} failed:\nstdout: {}\nstderr: {}",
            self.args,
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }

    /// Asserts success; parses stdout as JSON.
    fn json(&self) -> Value {
        let out = self.ok();
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("qb {}: not JSON ({e}): {out}", self.args))
    }

    fn assert_stderr_contains(&self, needle: &str) {
        let err = self.stderr();
        assert!(err.contains(needle), "{err}");
    }

    /// Asserts failure with a message on stderr containing `needle`; nothing on stdout.
    fn fails_with(&self, needle: &str) {
        assert!(
            !self.output.status.success(),
            "qb {} succeeded: {}",
            self.args,
            self.stdout()
        );
        let err = self.stderr();
        assert!(
            err.lines().any(|l| l.starts_with("error: ")),
            "qb {}: {err}",
            self.args
        );
        assert!(
            err.contains(needle),
            "qb {}: expected {needle:?} in {err:?}",
            self.args
        );
    }
}

fn names(v: &Value) -> Vec<String> {
    let mut names: Vec<String> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|n| n["name"].as_str().expect("name").to_owned())
        .collect();
    names.sort();
    names
}

/// A table line's cells, one space apart.
fn words(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The value of the `name` line of a `Name: value` listing.
fn field(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| panic!("no {name} line in {out}"))
}

/// The output of a command that created a token; it warns that the secret is shown only now.
fn created_token(run: &Run) -> String {
    let out = run.ok();
    run.assert_stderr_contains("only time the secret is shown");
    out
}

fn login(c: &Controller) {
    let fp = c.fingerprint.clone().expect("https");
    c.qb_with(
        &["login", &c.url, "--token", "-", "--fingerprint", &fp],
        Some(&c.admin_token),
        &[],
    )
    .ok();
}

#[tokio::test]
async fn login_pins_the_certificate_and_manages_contexts() {
    let c = Controller::start(true);
    let fp = c.fingerprint.clone().expect("https");

    // Without a terminal, qb will not trust an unknown certificate silently; it shows the fingerprint.
    let run = c.qb_with(&["login", &c.url, "--token", &c.admin_token], None, &[]);
    run.fails_with(&fp);
    assert!(!c.config().exists(), "nothing saved");

    // A wrong fingerprint is refused.
    let wrong = format!("sha256:{}", "0".repeat(64));
    c.qb(&[
        "login",
        &c.url,
        "--token",
        &c.admin_token,
        "--fingerprint",
        &wrong,
    ])
    .fails_with("not the expected");

    // A bad token is refused.
    c.qb(&["login", &c.url, "--token", "qb_nope", "--yes"])
        .fails_with("rejected the token");
    assert!(!c.config().exists(), "nothing saved");

    // The right fingerprint, token on stdin.
    let out = c
        .qb_with(
            &["login", &c.url, "--token", "-", "--fingerprint", &fp],
            Some(&c.admin_token),
            &[],
        )
        .ok();
    assert!(out.contains("as admin (admin) in tenant default"), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(c.config())
            .expect("config")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let config = std::fs::read_to_string(c.config()).expect("config");
    assert!(
        config.contains(&fp) && config.contains("current_context: default"),
        "{config}"
    );

    // A second context from QB_TOKEN and --yes; it becomes current.
    c.qb_with(
        &["login", &c.url, "--context", "second", "--yes"],
        None,
        &[("QB_TOKEN", &c.admin_token)],
    )
    .ok();
    assert_eq!(c.qb(&["context", "current"]).ok().trim(), "second");
    let contexts = c.qb(&["context", "list", "-o", "json"]).json();
    assert_eq!(names(&contexts), ["default", "second"]);
    assert!(
        !contexts.to_string().contains(&c.admin_token),
        "tokens are never listed"
    );
    c.qb(&["context", "use", "default"]).ok();
    assert_eq!(c.qb(&["context", "current"]).ok().trim(), "default");
    c.qb(&["context", "use", "third"])
        .fails_with("no context named \"third\"");
    c.qb(&["context", "delete", "second"]).ok();
    assert_eq!(
        names(&c.qb(&["context", "list", "-o", "json"]).json()),
        ["default"]
    );

    let who = c.qb(&["whoami", "-o", "json"]).json();
    assert_eq!(
        (who["user"].as_str(), who["role"].as_str()),
        (Some("admin"), Some("admin"))
    );
    let table = c.qb(&["whoami"]).ok();
    assert!(table.contains("Role:     admin"), "{table}");

    // The certificate the context pins is no longer the controller's: refuse, and say what to do.
    let changed = config.replace(&fp, &wrong);
    std::fs::write(c.config(), changed).expect("rewrite config");
    c.qb(&["whoami"]).fails_with("certificate changed");
    c.qb(&["whoami"])
        .fails_with(&format!("run `qb login {}` again", c.url));
}

/// Two replicas on one PostgreSQL behind HAProxy, both serving one certificate: one `qb login`
/// to the balancer's address serves every call, whichever replica answers it, and calls go on
/// when a replica is killed.
#[tokio::test]
async fn replicas_behind_one_address() {
    let pg = qb_test_support::PgServer::start().expect("PostgreSQL");
    let mut a = Controller::start_on(true, &[], Some(&pg.url()));
    let tls = a.dir.path().join("data").join("tls");
    let (cert, key) = (tls.join("controller.crt"), tls.join("controller.key"));
    let keys = a.dir.path().join("data").join("secrets.key");
    let b = Controller::start_on(
        true,
        &[
            "--tls-cert",
            cert.to_str().expect("a path"),
            "--tls-key",
            key.to_str().expect("a path"),
            "--secrets-key-file",
            keys.to_str().expect("a path"),
        ],
        Some(&pg.url()),
    );
    assert_eq!(b.fingerprint, a.fingerprint, "one certificate");
    let port = qb_test_support::free_port().expect("a port");
    let balancer = HaProxy::start(port, &[("a", a.addr()), ("b", b.addr())]).expect("HAProxy");
    let fingerprint = a.fingerprint.clone().expect("https");
    a.qb_with(
        &[
            "login",
            &format!("https://127.0.0.1:{port}"),
            "--token",
            "-",
            "--fingerprint",
            &fingerprint,
        ],
        Some(&a.admin_token),
        &[],
    )
    .ok();
    let list = |c: &Controller| {
        let nodes = c.qb(&["node", "list", "-o", "json"]).json();
        assert!(nodes.is_array(), "{nodes}");
    };
    for _ in 0..6 {
        list(&a);
    }
    // A connection is logged when it closes: wait for the six.
    let served = |balancer: &HaProxy| (balancer.connections_to("a"), balancer.connections_to("b"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while {
        let (x, y) = served(&balancer);
        x + y < 7
    } && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (by_a, by_b) = served(&balancer);
    assert!(
        by_a >= 2 && by_b >= 2,
        "both replicas answer: {}",
        balancer.log()
    );

    // A dies; the balancer sends its connections to B, and every call still works.
    a.kill();
    for _ in 0..6 {
        list(&a);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while served(&balancer).1 < by_b + 6 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        served(&balancer).1 >= by_b + 6,
        "B took over: {}",
        balancer.log()
    );
}

#[tokio::test]
async fn plain_http_on_loopback() {
    let c = Controller::start(false);
    assert!(c.url.starts_with("http://127.0.0.1:"), "{}", c.url);
    c.qb(&["login", &c.url, "--token", &c.admin_token]).ok();
    c.qb(&[
        "login",
        &c.url,
        "--token",
        &c.admin_token,
        "--fingerprint",
        "sha256:00",
    ])
    .fails_with("https:// controllers only");
    c.qb(&["login", "http://192.0.2.1:7443", "--token", "x"])
        .fails_with("refusing plain http://");
    assert_eq!(c.qb(&["whoami", "-o", "json"]).json()["tenant"], "default");
}

#[tokio::test]
async fn nodes_and_clusters() {
    let c = Controller::start(true);
    login(&c);
    c.add_nodes(&["n1", "n2", "n3", "n4"]).await;

    let nodes = c.qb(&["node", "list", "-o", "json"]).json();
    assert_eq!(names(&nodes), ["n1", "n2", "n3", "n4"]);
    assert!(
        nodes
            .as_array()
            .expect("array")
            .iter()
            .all(|n| n["state"] == "pending")
    );
    let table = c.qb(&["node", "list"]).ok();
    assert_eq!(
        words(table.lines().next().expect("header")),
        "NAME STATE CLUSTER ROLE ONLINE LAST-SEEN AGENT ARCH CPUS MEMORY ADDRESSES LABELS AGE"
    );
    assert!(
        table.contains("8Gi") && table.contains("192.0.2.10"),
        "{table}"
    );
    // No agent has registered: no agent columns to fill.
    let first: Vec<&str> = table
        .lines()
        .nth(1)
        .expect("a row")
        .split_whitespace()
        .collect();
    assert_eq!(
        first[..7],
        ["n1", "pending", "<none>", "-", "-", "-", "-"],
        "{table}"
    );
    assert!(
        nodes
            .as_array()
            .expect("array")
            .iter()
            .all(|n| n["agent"].is_null()),
        "{nodes}"
    );
    let shown = c.qb(&["node", "show", "n1"]).ok();
    assert!(
        shown.contains("Agent:      <none> (no agent has registered)"),
        "{shown}"
    );

    // Ping needs a connected agent: a clear refusal, non-zero exit, nothing on stdout.
    let run = c.qb(&["node", "ping", "n1"]);
    run.fails_with("the node's agent is not connected (agent_unavailable)");
    assert!(run.stdout().is_empty(), "{}", run.stdout());
    assert_eq!(run.output.status.code(), Some(1));
    c.qb(&["node", "ping", "n1", "-o", "json"])
        .fails_with("(agent_unavailable)");
    c.qb(&["node", "ping", "nope"]).fails_with("(not_found)");

    // Several at once give a list; one gives the node.
    let authorized = c
        .qb(&["node", "authorize", "n1", "n2", "n3", "-o", "json"])
        .json();
    assert_eq!(names(&authorized), ["n1", "n2", "n3"]);
    assert_eq!(
        c.qb(&["node", "authorize", "n4", "-o", "json"]).json()["state"],
        "authorized"
    );
    c.qb(&["node", "authorize", "n4", "nope"])
        .fails_with("nope");
    c.qb(&["node", "show", "nope"]).fails_with("(not_found)");

    // Labels, kubectl style.
    let n1 = c
        .qb(&["node", "label", "n1", "zone=a", "rack=r1", "-o", "json"])
        .json();
    assert_eq!(n1["labels"], serde_json::json!({"rack": "r1", "zone": "a"}));
    let n1 = c.qb(&["node", "label", "n1", "rack-", "-o", "json"]).json();
    assert_eq!(n1["labels"], serde_json::json!({"zone": "a"}));
    c.qb(&["node", "label", "n1", "Bad Key=1"])
        .fails_with("invalid label key");
    let shown = c.qb(&["node", "show", "n1"]).ok();
    assert!(
        shown.contains("zone=a") && shown.contains("authorized"),
        "{shown}"
    );

    // Clusters.
    let cluster = c
        .qb(&["cluster", "create", "c1", "--masters", "1", "-o", "json"])
        .json();
    assert_eq!(
        (cluster["name"].as_str(), cluster["state"].as_str()),
        (Some("c1"), Some("empty"))
    );
    c.qb(&["cluster", "create", "c1"])
        .fails_with("(name_taken)");
    c.qb(&[
        "cluster",
        "create",
        "c2",
        "--pod-cidr",
        "10.20.0.0/16",
        "--service-cidr",
        "10.20.0.0/16",
    ])
    .fails_with("(cidr_overlap)");
    let table = c.qb(&["cluster", "list"]).ok();
    assert!(
        table.starts_with("NAME   STATE   VERSION   MASTERS   NODES   POD-CIDR"),
        "{table}"
    );

    c.qb(&[
        "cluster",
        "attach",
        "c1",
        "--count",
        "2",
        "--selector",
        "zone=a",
    ])
    .fails_with("(pool_exhausted)");
    let moved = c
        .qb(&[
            "cluster",
            "attach",
            "c1",
            "--count",
            "1",
            "--selector",
            "zone=a",
            "-o",
            "json",
        ])
        .json();
    assert_eq!(names(&moved["nodes"]), ["n1"]);
    c.qb(&["cluster", "attach", "c1", "n2", "n3"]).ok();
    let members = c
        .qb(&["node", "list", "--cluster", "c1", "-o", "json"])
        .json();
    assert_eq!(names(&members), ["n1", "n2", "n3"]);
    let detail = c.qb(&["cluster", "show", "c1", "-o", "json"]).json();
    assert_eq!(detail["node_count"], 3);
    assert_eq!(names(&detail["nodes"]), ["n1", "n2", "n3"]);

    // Detach waits until the node is back in the pool.
    let run = c.qb(&["cluster", "detach", "c1", "n3"]);
    let out = run.ok();
    assert!(out.contains("back in the pool"), "{out}");
    run.assert_stderr_contains("Waiting for nodes to leave cluster c1");
    let n3 = c.qb(&["node", "show", "n3", "-o", "json"]).json();
    assert_eq!(
        (n3["state"].as_str(), &n3["cluster"]),
        (Some("authorized"), &Value::Null)
    );
    c.qb(&["cluster", "detach", "c1", "n4"])
        .fails_with("(node_not_in_cluster)");

    let moved = c
        .qb(&["cluster", "detach", "c1", "n2", "--no-wait", "-o", "json"])
        .json();
    assert_eq!(names(&moved["nodes"]), ["n2"]);

    c.qb(&["cluster", "delete", "c1"])
        .fails_with("(cluster_not_empty)");
    let deleted = c
        .qb(&["cluster", "delete", "c1", "--force", "-o", "json"])
        .json();
    // n2 was detached without waiting: it may still be detaching, and then returns with n1.
    let returned = names(&deleted["returned_to_pool"]);
    assert!(
        returned == ["n1"] || returned == ["n1", "n2"],
        "{returned:?}"
    );
    assert!(
        c.qb(&["cluster", "list", "-o", "json"])
            .json()
            .as_array()
            .expect("array")
            .is_empty()
    );

    // Deauthorize, then delete.
    c.qb(&["node", "delete", "n4"])
        .fails_with("(invalid_node_state)");
    assert_eq!(
        c.qb(&["node", "deauthorize", "n4", "-o", "json"]).json()["state"],
        "deauthorized"
    );
    assert_eq!(
        c.qb(&["node", "delete", "n4"]).ok().trim(),
        "Node n4 deleted."
    );
    c.qb(&["node", "show", "n4"]).fails_with("(not_found)");
    let left = c
        .qb(&["node", "list", "--state", "authorized", "-o", "json"])
        .json();
    // n2 was detached without waiting: it may still be on its way.
    let left = names(&left);
    assert!(
        left.contains(&"n1".to_owned()) && left.contains(&"n3".to_owned()),
        "{left:?}"
    );

    // The audit trail saw it all.
    let events = c
        .qb(&["events", "--kind", "node", "--object", "n1", "-o", "json"])
        .json();
    let actions: Vec<&str> = events
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.starts_with(&["node.registered", "node.authorized"]),
        "{actions:?}"
    );
    let limited = c.qb(&["events", "--limit", "2", "-o", "json"]).json();
    assert_eq!(limited.as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn users_and_tokens() {
    let c = Controller::start(true);
    login(&c);

    let alice = c
        .qb(&["user", "create", "alice", "--role", "viewer", "-o", "json"])
        .json();
    assert_eq!(alice["role"], "viewer");
    c.qb(&["user", "create", "alice", "--role", "viewer"])
        .fails_with("(name_taken)");
    assert_eq!(
        names(&c.qb(&["user", "list", "-o", "json"]).json()),
        ["admin", "alice"]
    );

    let run = c.qb(&[
        "token",
        "create",
        "--user",
        "alice",
        "--description",
        "read only",
        "--expires-in-hours",
        "1",
    ]);
    let out = created_token(&run);
    let secret = field(&out, "Secret:");
    let id = field(&out, "Token:");

    // Alice logs in with it, as a viewer.
    let fp = c.fingerprint.clone().expect("https");
    c.qb(&[
        "login",
        &c.url,
        "--context",
        "alice",
        "--token",
        &secret,
        "--fingerprint",
        &fp,
    ])
    .ok();
    assert_eq!(c.qb(&["whoami", "-o", "json"]).json()["user"], "alice");
    c.qb(&["cluster", "create", "c1"]).fails_with("(forbidden)");
    c.qb(&["context", "use", "default"]).ok();

    let tokens = c.qb(&["token", "list"]).ok();
    assert!(
        tokens.contains("read only") && tokens.contains("active"),
        "{tokens}"
    );
    let revoked = c.qb(&["token", "revoke", &id, "-o", "json"]).json();
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    c.qb(&["token", "revoke", "not-a-uuid"])
        .fails_with("invalid value");

    // The revoked token no longer works, and qb says what to do.
    c.qb(&["--context", "alice", "whoami"])
        .fails_with("expired or was revoked; run `qb login");

    // A password for the web UI, read from stdin; too short is refused and changes nothing.
    c.qb_with(&["user", "set-password", "alice"], Some("short\n"), &[])
        .fails_with("12 to 256 characters");
    let set = c
        .qb_with(
            &["user", "set-password", "alice"],
            Some("a long passphrase\n"),
            &[],
        )
        .ok();
    assert!(set.contains("Password of alice set"), "{set}");
    c.qb_with(
        &["user", "set-password", "nobody"],
        Some("a long passphrase\n"),
        &[],
    )
    .fails_with("(not_found)");
    let login = |password: &str| {
        reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap()
            .post(format!("{}/api/v1/session", c.url))
            .json(&serde_json::json!({"tenant": "default", "user": "alice", "password": password}))
            .send()
    };
    assert_eq!(login("a long passphrase").await.unwrap().status(), 201);
    assert_eq!(login("a long passphrasE").await.unwrap().status(), 401);
    let events = c.qb(&["events", "--object", "alice", "-o", "json"]).ok();
    assert!(events.contains("user.password_set"), "{events}");
    assert!(!events.contains("passphrase"), "{events}");
}

#[tokio::test]
async fn bootstrap_tokens() {
    let c = Controller::start(true);
    login(&c);

    // The secret is printed once, with a warning.
    let run = c.qb(&[
        "token",
        "bootstrap",
        "create",
        "--description",
        "rack 4",
        "--max-uses",
        "3",
        "--expires-in-hours",
        "2",
    ]);
    let out = created_token(&run);
    let secret = field(&out, "Secret:");
    let id = field(&out, "Token:");
    assert!(secret.starts_with("qbb_"), "{out}");
    assert_eq!(field(&out, "Description:"), "rack 4");
    assert_eq!(field(&out, "Max uses:"), "3");

    // JSON gives the CreatedBootstrapToken, defaults filled in by the controller.
    let created = c.qb(&["token", "bootstrap", "create", "-o", "json"]).json();
    let other_secret = created["secret"].as_str().expect("secret").to_owned();
    assert!(other_secret.starts_with("qbb_"), "{created}");
    assert_eq!(created["token"]["max_uses"], 1);
    assert_eq!(created["token"]["uses"], 0);
    assert!(created["token"]["revoked_at"].is_null(), "{created}");
    let yaml = c.qb(&["token", "bootstrap", "create", "-o", "yaml"]).ok();
    assert!(yaml.contains("secret: qbb_"), "{yaml}");

    // Listing never shows a secret.
    let table = c.qb(&["token", "bootstrap", "list"]).ok();
    let listed = c.qb(&["token", "bootstrap", "list", "-o", "json"]).json();
    for secret in [&secret, &other_secret] {
        assert!(!table.contains(secret.as_str()), "{table}");
        assert!(!listed.to_string().contains(secret.as_str()), "{listed}");
    }
    assert!(!table.contains("qbb_") && !listed.to_string().contains("qbb_"));
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not in {table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1..5], ["active", "0/3", "rack", "4"], "{row}");

    // API tokens are listed apart.
    let api_tokens = c.qb(&["token", "list", "-o", "json"]).json();
    assert!(!api_tokens.to_string().contains(&id), "{api_tokens}");

    // Revoke.
    let out = c.qb(&["token", "bootstrap", "revoke", &id]).ok();
    assert_eq!(out.trim(), format!("Bootstrap token {id} revoked."));
    let table = c.qb(&["token", "bootstrap", "list"]).ok();
    let row = table.lines().find(|l| l.starts_with(&id)).expect("row");
    assert!(row.contains(" revoked "), "{row}");
    let other = created["token"]["id"].as_str().expect("id");
    let revoked = c
        .qb(&["token", "bootstrap", "revoke", other, "-o", "json"])
        .json();
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    c.qb(&["token", "bootstrap", "revoke", "not-a-uuid"])
        .fails_with("invalid value");
    c.qb(&[
        "token",
        "bootstrap",
        "revoke",
        "0190b5a4-8f4e-7c8b-9d0a-1b2c3d4e5f60",
    ])
    .fails_with("(not_found)");
    c.qb(&["token", "bootstrap", "create", "--max-uses", "0"])
        .fails_with("--max-uses");
}

/// Lowercase hex SHA-256.
fn sha256(content: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(content))
}

/// A bundle directory for Kubernetes 1.20.2: `bundle.json` and the files it names.
fn write_bundle(dir: &Path, files: &[(&str, &str, &str, &[u8])]) {
    let mut artifacts = Vec::new();
    for (name, version, file, content) in files {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, content).expect("write artifact");
        artifacts.push(serde_json::json!({
            "name": name,
            "version": version,
            "sha256": sha256(content),
            "size": content.len(),
            "file": file,
        }));
    }
    let manifest = serde_json::json!({"kubernetes_version": "1.20.2", "artifacts": artifacts});
    std::fs::write(dir.join("bundle.json"), manifest.to_string()).expect("write bundle.json");
}

const ETCD: &[u8] = b"#!/bin/sh\necho 'a stand-in for etcd'\n";
const APISERVER: &[u8] = b"#!/bin/sh\necho 'a stand-in for kube-apiserver'\n";

#[tokio::test]
async fn bundles() {
    let c = Controller::start(true);
    login(&c);
    let work = tempfile::tempdir().expect("temp dir");
    let dir = work.path().join("k8s-1.20.2");
    write_bundle(
        &dir,
        &[
            ("etcd", "3.4.23", "bin/etcd", ETCD),
            ("kube-apiserver", "1.20.2", "bin/kube-apiserver", APISERVER),
        ],
    );
    let dir_arg = dir.to_str().expect("utf-8 path");

    let run = c.qb(&["bundle", "list"]);
    assert!(run.ok().is_empty());
    run.assert_stderr_contains("No bundles found.");

    // First import: every artifact is uploaded.
    let run = c.qb(&["bundle", "import", dir_arg]);
    assert_eq!(
        run.ok(),
        "Imported bundle for Kubernetes 1.20.2: etcd 3.4.23, kube-apiserver 1.20.2.\n"
    );
    let progress = run.stderr();
    assert!(
        progress.lines().nth(1).is_some_and(|l| l.ends_with(
            "k8s-1.20.2: Kubernetes 1.20.2, 2 artifacts (84), sizes and checksums match."
        )),
        "{progress}"
    );
    let lines: Vec<Vec<&str>> = progress
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        [
            vec!["etcd", &ETCD.len().to_string(), "uploaded"],
            vec!["kube-apiserver", &APISERVER.len().to_string(), "uploaded"],
        ],
        "{progress}"
    );

    // The same again: nothing to upload, nothing changes.
    let run = c.qb(&["bundle", "import", dir_arg]);
    assert_eq!(
        run.ok(),
        "Bundle for Kubernetes 1.20.2 was already imported.\n"
    );
    assert_eq!(
        run.stderr().matches("already there").count(),
        2,
        "{}",
        run.stderr()
    );

    // Listed and shown.
    let table = c.qb(&["bundle", "list"]).ok();
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert_eq!(
        rows[0].split_whitespace().collect::<Vec<_>>(),
        ["VERSION", "ARTIFACTS", "IMPORTED"]
    );
    assert!(
        rows[1].starts_with("1.20.2    etcd 3.4.23, kube-apiserver 1.20.2   ")
            && rows[1].ends_with(" ago"),
        "{table}"
    );
    let listed = c.qb(&["bundle", "ls", "-o", "json"]).json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["kubernetes_version"], "1.20.2");
    assert_eq!(listed[0]["artifacts"][0]["sha256"], sha256(ETCD).as_str());
    let shown = c.qb(&["bundle", "show", "1.20.2"]).ok();
    assert!(
        shown.starts_with("Version:    1.20.2\n") && shown.contains(&sha256(APISERVER)),
        "{shown}"
    );
    c.qb(&["bundle", "show", "1.21.0"])
        .fails_with("(not_found)");

    // JSON: the bundle, and no progress on stderr.
    let run = c.qb(&["bundle", "import", dir_arg, "-o", "json"]);
    assert_eq!(run.json()["kubernetes_version"], "1.20.2");
    assert!(run.stderr().is_empty(), "{}", run.stderr());

    // A file that does not match bundle.json: refused before anything is sent.
    std::fs::write(
        dir.join("bin/etcd"),
        b"#!/bin/sh\necho 'another etcd build'\n",
    )
    .expect("tamper");
    let run = c.qb(&["bundle", "import", dir_arg]);
    run.fails_with("artifact etcd: ");
    run.fails_with("nothing was uploaded");
    let err = run.stderr();
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines.len() == 2 && lines[0].starts_with("Checking the bundle in "),
        "{err}"
    );

    // A different bundle for an imported version is refused by the controller.
    let other = work.path().join("other");
    write_bundle(&other, &[("etcd", "3.4.24", "etcd", b"a newer etcd")]);
    c.qb(&["bundle", "import", other.to_str().expect("utf-8 path")])
        .fails_with("(bundle_conflict)");

    // Something that is neither a bundle directory nor a tarball.
    let tarball = work.path().join("bundle.tar.gz");
    std::fs::write(&tarball, b"\x1f\x8b").expect("write");
    c.qb(&["bundle", "import", tarball.to_str().expect("utf-8 path")])
        .fails_with("is not a bundle tarball");
    c.qb(&[
        "bundle",
        "import",
        work.path().to_str().expect("utf-8 path"),
    ])
    .fails_with("holds no bundle.json");
}

#[tokio::test]
async fn preflight_without_agents() {
    let c = Controller::start(true);
    login(&c);
    let work = tempfile::tempdir().expect("temp dir");
    write_bundle(work.path(), &[("etcd", "3.4.23", "etcd", ETCD)]);
    c.qb(&[
        "bundle",
        "import",
        work.path().to_str().expect("utf-8 path"),
    ])
    .ok();
    c.add_nodes(&["n1", "n2"]).await;
    c.qb(&["node", "authorize", "n1", "n2"]).ok();
    c.qb(&["cluster", "create", "c1", "--version", "1.20.2"])
        .ok();
    c.qb(&["cluster", "preflight", "c1"])
        .fails_with("has no nodes to check");
    c.qb(&["cluster", "attach", "c1", "n1", "n2"]).ok();

    // No agent answers: the report names both nodes, and qb exits non-zero after printing it.
    let run = c.qb(&["cluster", "preflight", "c1"]);
    run.fails_with("preflight of cluster c1 failed with 2 problems");
    let out = run.stdout();
    assert!(
        out.starts_with("Preflight of c1 FAILED in ") && out.contains("\nProblems:\n  - n1: "),
        "{out}"
    );
    assert!(out.contains("\n  - n2: "), "{out}");
    assert!(
        run.stderr().starts_with("Running preflight on cluster c1"),
        "{}",
        run.stderr()
    );

    // The newest result, as JSON; still a failure.
    let run = c.qb(&["cluster", "preflight", "c1", "--last", "-o", "json"]);
    run.fails_with("preflight of cluster c1 failed");
    let report: Value = serde_json::from_str(&run.stdout()).expect("JSON on stdout");
    assert_eq!(report["passed"], false);
    assert_eq!(report["cluster"]["name"], "c1");
    assert_eq!(report["problems"].as_array().map(Vec::len), Some(2));
    let run = c.qb(&["cluster", "preflight", "c1", "--last"]);
    assert!(
        run.stdout()
            .lines()
            .next()
            .is_some_and(|l| l.contains(" ago).")),
        "{}",
        run.stdout()
    );

    // An upgrade to a version whose bundle is not imported is refused, saying so.
    c.qb(&["cluster", "upgrade", "c1", "--version", "1.21.0"])
        .fails_with("no release bundle for Kubernetes 1.21.0 is imported");

    // The cluster says why it waits, and its nodes have role and plan columns.
    let shown = c.qb(&["cluster", "show", "c1"]).ok();
    let state = shown
        .lines()
        .find(|l| l.starts_with("State:"))
        .expect("state line");
    assert!(state.contains(" — "), "{shown}");
    let header = shown
        .lines()
        .find(|l| l.starts_with("NAME "))
        .expect("node table");
    assert_eq!(
        words(header),
        "NAME STATE ROLE ONLINE LAST-SEEN AGENT ADDRESSES VERSION PLAN"
    );

    // --force reaches the controller (no etcd member to lose here, so it is not needed).
    let moved = c
        .qb(&[
            "cluster",
            "detach",
            "c1",
            "n2",
            "--force",
            "--no-wait",
            "-o",
            "json",
        ])
        .json();
    assert_eq!(names(&moved["nodes"]), ["n2"]);
    c.qb(&["cluster", "preflight", "nope"])
        .fails_with("(not_found)");
}

/// The file's permission bits.
fn mode(path: &Path) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path)
            .expect("downloaded file")
            .permissions()
            .mode()
            & 0o777
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        0o600
    }
}

#[tokio::test]
async fn agent_upgrades_start_show_every_host_pause_and_resume() {
    let c = Controller::start(true);
    login(&c);
    c.qb(&["agent", "upgrade", "status"])
        .fails_with("no agent upgrade was started");
    // Hosts whose agents never connected: they wait, offline, and the upgrade with them.
    c.add_nodes(&["n1", "n2"]).await;
    c.qb(&["agent", "upgrade", "start", "--batch", "0"])
        .fails_with("0 is not in 1..=1000");
    let started = c
        .qb(&["agent", "upgrade", "start", "--batch", "3", "-o", "json"])
        .json();
    let shipped = std::fs::read(c.dir.path().join("qb-agent")).expect("the stand-in agent");
    let build = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&shipped));
    assert_eq!(started["build"], build.as_str(), "{started}");
    assert_eq!(
        (
            &started["state"],
            &started["batch_size"],
            &started["trial_seconds"]
        ),
        (&"running".into(), &3.into(), &120.into())
    );
    let table = c.qb(&["agent", "upgrade", "status"]).ok();
    assert!(
        table.contains(&format!("Build:    {}", &build[..12])),
        "{table}"
    );
    for host in ["n1", "n2"] {
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [host, "offline"]),
            "{table}"
        );
    }
    c.qb(&["agent", "upgrade", "start"])
        .fails_with("an agent upgrade is already running");
    let paused = c.qb(&["agent", "upgrade", "pause", "-o", "json"]).json();
    assert_eq!(paused["state"], "paused");
    // Asking twice is no error.
    let again = c.qb(&["agent", "upgrade", "pause", "-o", "json"]).json();
    assert_eq!(again["state"], "paused");
    let resumed = c.qb(&["agent", "upgrade", "resume", "-o", "json"]).json();
    assert_eq!(resumed["state"], "running");
    // Stopped (hosts that never come back hold no upgrade forever), it starts again.
    let stopped = c.qb(&["agent", "upgrade", "stop", "-o", "json"]).json();
    assert_eq!(
        (&stopped["state"], &stopped["message"]),
        (&"stopped".into(), &"stopped by user:admin".into()),
        "{stopped}"
    );
    c.qb(&["agent", "upgrade", "resume"])
        .fails_with("the agent upgrade is stopped, so it cannot be resumed");
    let again = c.qb(&["agent", "upgrade", "start", "-o", "json"]).json();
    assert_eq!(again["state"], "running");
}

#[tokio::test]
async fn agent_packages() {
    let c = Controller::start(true);
    login(&c);
    let work = tempfile::tempdir().expect("temp dir");
    let bootstrap_tokens = || {
        c.qb(&["token", "bootstrap", "list", "-o", "json"])
            .json()
            .as_array()
            .map_or(0, Vec::len)
    };

    // By default the file takes the controller's name, in the current directory.
    for (format, suffix, magic) in [
        ("deb", ".deb", &b"!<arch>\n"[..]),
        ("rpm", ".rpm", b"\xed\xab\xee\xdb"),
        ("tar.gz", ".tar.gz", b"\x1f\x8b"),
    ] {
        let run = c.qb_in(
            work.path(),
            &["agent-package", "download", "--format", format],
        );
        assert!(run.ok().is_empty(), "table mode prints to stderr only");
        let err = run.stderr();
        let name = err
            .lines()
            .find_map(|l| l.strip_prefix("Wrote "))
            .and_then(|l| l.split(' ').next())
            .unwrap_or_else(|| panic!("{format}: where did it go? {err}"))
            .to_owned();
        assert!(
            name.starts_with("qb-agent") && name.ends_with(suffix) && !name.contains('/'),
            "{format}: {name}"
        );
        let path = work.path().join(&name);
        let bytes = std::fs::read(&path).expect("the package");
        assert!(bytes.starts_with(magic), "{format}: {:?}", &bytes[..8]);
        assert_eq!(mode(&path), 0o600, "{format}");
        assert!(
            err.contains("mode 0600") && err.contains("keep the file private"),
            "{err}"
        );
        let install = match format {
            "deb" => format!("sudo dpkg -i {name}"),
            "rpm" => format!("sudo rpm -i {name}"),
            _ => format!("tar xzf {name} && sudo ./qb-agent-*/install.sh"),
        };
        assert!(err.contains(&install), "{format}: {err}");
    }
    assert_eq!(bootstrap_tokens(), 3, "one bootstrap token per package");

    // The same again would overwrite: refused, and the file is untouched; --force replaces it.
    let deb = std::fs::read_dir(work.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("the deb");
    std::fs::write(&deb, b"mine").expect("overwrite");
    c.qb_in(
        work.path(),
        &["agent-package", "download", "--format", "deb"],
    )
    .fails_with("exists; pass --force");
    assert_eq!(std::fs::read(&deb).expect("deb"), b"mine");
    c.qb_in(
        work.path(),
        &["agent-package", "download", "--format", "deb", "--force"],
    )
    .ok();
    assert!(std::fs::read(&deb).expect("deb").starts_with(b"!<arch>\n"));
    assert_eq!(mode(&deb), 0o600);

    // An explicit file that exists is refused before the controller mints a token.
    let tokens = bootstrap_tokens();
    let mine = work.path().join("mine.rpm");
    std::fs::write(&mine, b"keep").expect("write");
    let mine_arg = mine.to_str().expect("utf-8 path");
    c.qb(&[
        "agent-package",
        "download",
        "--format",
        "rpm",
        "--output-file",
        mine_arg,
    ])
    .fails_with("exists; pass --force");
    assert_eq!(std::fs::read(&mine).expect("mine"), b"keep");
    // So is a directory that does not exist.
    let missing = work.path().join("missing");
    for target in [missing.join("x.deb"), missing.join("")] {
        c.qb(&[
            "agent-package",
            "download",
            "--format",
            "deb",
            "-O",
            target.to_str().expect("utf-8 path"),
        ])
        .fails_with("no such directory");
    }
    assert_eq!(bootstrap_tokens(), tokens);

    // -O FILE with the token's limits; -o json prints where it went.
    let target = work.path().join("sub dir");
    std::fs::create_dir(&target).expect("dir");
    let file = target.join("agent.tgz");
    let file_arg = file.to_str().expect("utf-8 path");
    let run = c.qb(&[
        "agent-package",
        "download",
        "--format",
        "tar.gz",
        "--max-uses",
        "5",
        "--expires-in-hours",
        "48",
        "-O",
        file_arg,
        "-o",
        "json",
    ]);
    let summary = run.json();
    assert_eq!(summary["path"], file_arg);
    assert_eq!(summary["format"], "tar.gz");
    let size = std::fs::metadata(&file).expect("tgz").len();
    assert_eq!(summary["bytes"].as_u64(), Some(size));
    assert_eq!(
        summary["install"].as_str(),
        Some(format!("tar xzf '{file_arg}' && sudo ./qb-agent-*/install.sh").as_str())
    );
    assert!(std::fs::read(&file).expect("tgz").starts_with(b"\x1f\x8b"));
    assert_eq!(mode(&file), 0o600);
    run.assert_stderr_contains("lets up to 5 hosts register within 48 hours");
    let listed = c.qb(&["token", "bootstrap", "list", "-o", "json"]).json();
    assert!(
        listed
            .as_array()
            .expect("array")
            .iter()
            .any(|t| t["max_uses"] == 5),
        "{listed}"
    );

    // A directory takes the controller's file name.
    let run = c.qb(&[
        "agent-package",
        "download",
        "--format",
        "rpm",
        "-O",
        target.to_str().expect("utf-8 path"),
    ]);
    run.ok();
    let rpms: Vec<_> = std::fs::read_dir(&target)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".rpm"))
        .collect();
    assert_eq!(rpms.len(), 1, "{rpms:?}");
    assert!(rpms[0].starts_with("qb-agent"), "{rpms:?}");

    // Nothing half-written is left behind.
    for dir in [work.path(), target.as_path()] {
        for entry in std::fs::read_dir(dir).expect("list") {
            let name = entry.expect("entry").file_name();
            assert!(
                !name.to_string_lossy().contains(".part-"),
                "{name:?} left in {}",
                dir.display()
            );
        }
    }

    c.qb(&["agent-package", "download", "--format", "zip"])
        .fails_with("invalid value");
}

/// Standard base64, decoded by rustls' PEM reader.
fn base64_decode(data: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = format!("-----BEGIN CERTIFICATE-----\n{data}\n-----END CERTIFICATE-----\n");
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap_or_else(|e| panic!("not base64 ({e:?}): {data}"))
        .to_vec()
}

/// A kubeconfig's `(server, certificate-authority-data decoded, user, token)`, checking that it
/// is the one cluster, user and context `qb-<cluster>`.
fn read_kubeconfig(yaml: &str, cluster: &str) -> (String, Option<String>, String, String) {
    let kc: Value = serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{e}: {yaml}"));
    let name = format!("qb-{cluster}");
    assert_eq!(kc["apiVersion"], "v1", "{yaml}");
    assert_eq!(kc["kind"], "Config", "{yaml}");
    assert_eq!(kc["current-context"], name.as_str(), "{yaml}");
    let one = |list: &str| {
        let items = kc[list].as_array().expect(list);
        assert_eq!(items.len(), 1, "{list}: {yaml}");
        items[0].clone()
    };
    let (c, u, ctx) = (one("clusters"), one("users"), one("contexts"));
    assert_eq!(c["name"], name.as_str());
    assert_eq!(ctx["name"], name.as_str());
    assert_eq!(ctx["context"]["cluster"], name.as_str());
    assert_eq!(ctx["context"]["user"], u["name"]);
    let user = u["name"].as_str().expect("user name");
    let user = user
        .strip_suffix(&format!("@{name}"))
        .unwrap_or_else(|| panic!("user {user}"))
        .to_owned();
    let ca = c["cluster"]["certificate-authority-data"]
        .as_str()
        .map(|data| String::from_utf8(base64_decode(data)).expect("the CA data is PEM text"));
    (
        c["cluster"]["server"].as_str().expect("server").to_owned(),
        ca,
        user,
        u["user"]["token"].as_str().expect("token").to_owned(),
    )
}

#[tokio::test]
async fn cluster_kubeconfig() {
    let c = Controller::start(true);
    login(&c);
    c.qb(&["cluster", "create", "prod"]).ok();
    let served = std::fs::read_to_string(c.dir.path().join("data/tls/controller.crt"))
        .expect("the controller's certificate");
    let tokens = || c.qb(&["token", "list", "-o", "json"]).json();
    let before = tokens().as_array().expect("tokens").len();

    // To stdout: the kubeconfig only, pointing at the proxy and trusting the served certificate.
    let run = c.qb(&["cluster", "kubeconfig", "prod"]);
    let (server, ca, user, token) = read_kubeconfig(&run.ok(), "prod");
    assert_eq!(server, format!("{}/k8s/clusters/prod", c.url));
    assert_eq!(ca.as_deref(), Some(served.as_str()));
    assert_eq!(user, "admin");
    assert!(
        token.starts_with("qb_") && token != c.admin_token,
        "{token}"
    );

    // Its token is the admin's own, and works.
    let fp = c.fingerprint.clone().expect("https");
    c.qb(&[
        "login",
        &c.url,
        "--context",
        "kc",
        "--token",
        &token,
        "--fingerprint",
        &fp,
    ])
    .ok();
    let me = c.qb(&["--context", "kc", "whoami", "-o", "json"]).json();
    assert_eq!(
        (&me["user"], &me["role"]),
        (&serde_json::json!("admin"), &serde_json::json!("admin"))
    );
    c.qb(&["context", "use", "default"]).ok();
    let listed = tokens();
    let kc_token = listed
        .as_array()
        .expect("tokens")
        .iter()
        .find(|t| t["id"] == me["token_id"])
        .unwrap_or_else(|| panic!("not listed: {listed}"));
    assert_eq!(kc_token["description"], "kubeconfig for cluster prod");

    // To a file: mode 0600, replacing what was there, nothing else left in the directory.
    let work = tempfile::tempdir().expect("temp dir");
    let file = work.path().join("kubeconfig");
    std::fs::write(&file, "old").expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let file_arg = file.to_str().expect("utf-8 path");
    let run = c.qb(&[
        "cluster",
        "kubeconfig",
        "prod",
        "--expires-in-hours",
        "2",
        "-O",
        file_arg,
    ]);
    assert!(
        run.ok().is_empty(),
        "the file, not stdout: {}",
        run.stdout()
    );
    let err = run.stderr();
    assert!(
        err.contains(&format!("to {file_arg} (mode 0600)"))
            && err.contains("its token expires 20")
            && err.contains(&format!("KUBECONFIG={file_arg} kubectl")),
        "{err}"
    );
    assert_eq!(mode(&file), 0o600);
    let written = std::fs::read_to_string(&file).expect("the kubeconfig");
    let (server, ca, user, token) = read_kubeconfig(&written, "prod");
    assert_eq!(
        (server, ca.as_deref(), user.as_str()),
        (
            format!("{}/k8s/clusters/prod", c.url),
            Some(served.as_str()),
            "admin"
        )
    );
    let left: Vec<_> = std::fs::read_dir(work.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from("kubeconfig")]);
    // -o json says where it went and which token it holds (never the secret).
    let summary = c
        .qb(&[
            "cluster",
            "kubeconfig",
            "prod",
            "-O",
            file_arg,
            "-o",
            "json",
            "--expires-in-hours",
            "3",
        ])
        .json();
    assert_eq!(summary["path"], file_arg);
    let at = |k: &str| {
        time::OffsetDateTime::parse(
            summary["token"][k].as_str().expect(k),
            &time::format_description::well_known::Rfc3339,
        )
        .expect(k)
    };
    let lifetime = at("expires_at") - at("created_at");
    assert!(
        (lifetime - time::Duration::hours(3)).abs() < time::Duration::minutes(1),
        "{summary}"
    );
    assert_eq!(
        summary["token"]["description"],
        "kubeconfig for cluster prod"
    );
    assert!(!summary.to_string().contains("qb_"), "{summary}");
    assert_ne!(
        read_kubeconfig(&std::fs::read_to_string(&file).expect("kubeconfig"), "prod").3,
        token,
        "replaced by the new one"
    );
    let as_json = c
        .qb(&["cluster", "kubeconfig", "prod", "-o", "json"])
        .json();
    read_kubeconfig(as_json["kubeconfig"].as_str().expect("kubeconfig"), "prod");
    assert_eq!(as_json["token"]["user"], "admin");
    assert_eq!(tokens().as_array().expect("tokens").len(), before + 4);

    // Refused before or by the controller: nothing is minted.
    c.qb(&["cluster", "kubeconfig", "nope"])
        .fails_with("(not_found)");
    let missing = work.path().join("missing").join("config");
    c.qb(&[
        "cluster",
        "kubeconfig",
        "prod",
        "-O",
        missing.to_str().expect("utf-8 path"),
    ])
    .fails_with("no such directory");
    c.qb(&[
        "cluster",
        "kubeconfig",
        "prod",
        "-O",
        work.path().to_str().expect("utf-8 path"),
    ])
    .fails_with("is a directory");
    assert_eq!(tokens().as_array().expect("tokens").len(), before + 4);
}

#[tokio::test]
async fn cluster_kubeconfig_public_url() {
    // Plain HTTP: no CA; --public-url is what kubeconfigs point at.
    for (extra, public) in [
        (&[][..], None),
        (
            &["--public-url", "http://qb.example.net:8080/"][..],
            Some("http://qb.example.net:8080"),
        ),
    ] {
        let c = Controller::start_with(false, extra);
        c.qb_with(
            &["login", &c.url, "--token", "-"],
            Some(&c.admin_token),
            &[],
        )
        .ok();
        c.qb(&["cluster", "create", "prod"]).ok();
        let (server, ca, _, _) =
            read_kubeconfig(&c.qb(&["cluster", "kubeconfig", "prod"]).ok(), "prod");
        assert_eq!(
            server,
            format!("{}/k8s/clusters/prod", public.unwrap_or(&c.url))
        );
        assert_eq!(ca, None);
    }

    // A URL kubeconfigs cannot use stops the controller at once.
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(controller_binary())
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--agent-listen",
            "127.0.0.1:0",
            "--public-url",
            "https://qb.example.net/api",
        ])
        .env("QB_LOG", "warn")
        .output()
        .expect("run qb-controller");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--public-url") && err.contains("no path is allowed"),
        "{err}"
    );
}

#[tokio::test]
async fn unreachable_controller() {
    let mut c = Controller::start(true);
    login(&c);
    let _ = c.child.kill();
    let _ = c.child.wait();
    c.qb(&["node", "list"])
        .fails_with(&format!("cannot reach the controller at {}", c.url));
}

#[test]
fn completion_scripts() {
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let out = Command::new(env!("CARGO_BIN_EXE_qb"))
            .args(["completion", shell])
            .output()
            .expect("run qb");
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("qb")
                && script.contains("cluster")
                && script.contains("bundle")
                && script.contains("preflight"),
            "{shell}: {script}"
        );
    }
}
