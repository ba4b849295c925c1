//! A controller router over a fresh store, with a token per role, and request helpers; and a
//! controller process ([`Controller`]) for the tests that need a real server.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode, header, request, response};
use http_body_util::BodyExt;
use qb_api::{Name, NodeFacts, Role, TenantId};
use qb_controller::{AppState, router};
use qb_store::{Actor, NewNode, Store};
use serde_json::Value;
use tower::ServiceExt;

/// Runs an async test body once on SQLite and once on PostgreSQL.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let (store, _guard) = crate::support::sqlite_store().await;
                    super::$name(store).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let (store, _guard) = crate::support::postgres_store().await;
                    super::$name(store).await;
                }
            }
        )*
    };
}
pub(crate) use on_both_stores;

/// Keeps a test's database alive.
pub enum StoreGuard {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(#[allow(dead_code)] qb_test_support::PgServer),
}

pub async fn sqlite_store() -> (Store, StoreGuard) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("qb.db"), qb_store::Keyring::ephemeral())
        .await
        .unwrap();
    (store, StoreGuard::Sqlite(dir))
}

pub async fn postgres_store() -> (Store, StoreGuard) {
    let server = qb_test_support::PgServer::start().expect("PostgreSQL is required for this test");
    let store = Store::open(&server.url(), qb_store::Keyring::ephemeral())
        .await
        .unwrap();
    (store, StoreGuard::Postgres(server))
}

/// A tenant with one token per role.
pub struct Tenant {
    pub id: TenantId,
    pub admin: String,
    pub operator: String,
    pub viewer: String,
}

pub struct App {
    pub store: Store,
    pub state: AppState,
    pub router: axum::Router,
    _artifacts: tempfile::TempDir,
}

impl App {
    pub async fn new(store: Store) -> Self {
        let agents = std::sync::Arc::new(qb_controller::agents::Agents::new(
            std::time::Duration::from_secs(10),
        ));
        let artifacts = tempfile::tempdir().unwrap();
        let ca = qb_controller::agents::ca::load_or_create(&store)
            .await
            .unwrap();
        let engine = qb_controller::engine::Engine::load(
            store.clone(),
            agents,
            qb_controller::artifacts::ArtifactStore::open(artifacts.path()).unwrap(),
            &ca,
        )
        .await
        .unwrap();
        let state = AppState::new(std::sync::Arc::new(engine));
        Self {
            store,
            router: router(state.clone()),
            state,
            _artifacts: artifacts,
        }
    }

    /// The same app, sending notifications with `notifier`.
    pub fn with_notifier(mut self, notifier: qb_controller::notify::Notifier) -> Self {
        self.state.notifier = std::sync::Arc::new(notifier);
        self.router = router(self.state.clone());
        self
    }

    pub async fn tenant(&self, name: &str) -> Tenant {
        let (tenant, admin) = self
            .store
            .create_tenant(&name.parse().unwrap(), &"admin".parse().unwrap())
            .await
            .unwrap();
        let mint = |user: Name| {
            let store = self.store.clone();
            async move {
                qb_controller::app::mint_token(
                    &store,
                    tenant.id,
                    &user,
                    None,
                    1,
                    &Actor::controller(),
                )
                .await
                .unwrap()
                .secret
            }
        };
        for (user, role) in [("op", Role::Operator), ("view", Role::Viewer)] {
            self.store
                .create_user(
                    tenant.id,
                    &user.parse().unwrap(),
                    role,
                    &Actor::controller(),
                )
                .await
                .unwrap();
        }
        Tenant {
            id: tenant.id,
            admin: mint(admin.name).await,
            operator: mint("op".parse().unwrap()).await,
            viewer: mint("view".parse().unwrap()).await,
        }
    }

    /// Registers `n` pending nodes named `<prefix>-<i>`, as the agent's registration will.
    pub async fn pending_nodes(&self, tenant: TenantId, prefix: &str, n: usize) -> Vec<String> {
        let mut names = Vec::new();
        for i in 0..n {
            let name = format!("{prefix}-{i}");
            let facts = NodeFacts {
                hostname: name.clone(),
                os: "Debian GNU/Linux 12 (bookworm)".into(),
                kernel: "6.1.0".into(),
                arch: "x86_64".into(),
                cpus: 2,
                memory_bytes: 4 << 30,
                addresses: vec![format!("10.77.0.{}", i + 10).parse().unwrap()],
                interfaces: Vec::new(),
                route_source: None,
            };
            let new = NewNode {
                name: name.parse().unwrap(),
                facts,
                labels: Default::default(),
            };
            self.store
                .insert_node(tenant, new, &Actor::controller())
                .await
                .unwrap();
            names.push(name);
        }
        names
    }

    /// Registers and authorizes `n` nodes: a pool.
    pub async fn pool(&self, tenant: &Tenant, prefix: &str, n: usize) -> Vec<String> {
        let names = self.pending_nodes(tenant.id, prefix, n).await;
        for name in &names {
            let path = format!("/api/v1/nodes/{name}/authorize");
            let (status, _) = self.call(&tenant.operator, Method::POST, &path, None).await;
            assert_eq!(status, StatusCode::OK);
        }
        names
    }

    /// Sends a request with a bearer token and a JSON body; returns status and JSON body.
    pub async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.send(json_request(bearer(token, method, path), body))
            .await
    }

    pub async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.call(token, Method::GET, path, None).await
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(token, Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.call(token, Method::DELETE, path, None).await
    }

    /// Sends `req`, checks that an error answer is a problem, and returns status and JSON body.
    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let (head, bytes) = self.respond(req).await;
        let status = head.status;
        let problem = head
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/problem+json");
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status.is_client_error() || status.is_server_error() {
            assert!(
                problem,
                "error {status} without a problem+json body: {value}"
            );
            assert_eq!(value["status"], status.as_u16(), "{value}");
            assert!(
                value["code"].is_string() && value["detail"].is_string(),
                "{value}"
            );
        }
        (status, value)
    }

    /// Sends `req` as it is, for answers that are not JSON or whose headers matter.
    pub async fn respond(&self, req: Request<Body>) -> (response::Parts, Bytes) {
        let (head, body) = self.router.clone().oneshot(req).await.unwrap().into_parts();
        (head, body.collect().await.unwrap().to_bytes())
    }

    /// Every event of the tenant (to check that a refused request wrote nothing).
    pub async fn events(&self, tenant: TenantId) -> Vec<qb_api::Event> {
        self.store
            .list_events(tenant, &Default::default(), None, 1000)
            .await
            .unwrap()
            .items
    }

    /// The tenant's events of changes made: all but the records of changes refused.
    pub async fn changes(&self, tenant: TenantId) -> Vec<qb_api::Event> {
        let mut events = self.events(tenant).await;
        events.retain(|e| e.action != qb_controller::audit::REFUSED);
        events
    }

    /// The tenant's records of changes refused, oldest first.
    pub async fn refusals(&self, tenant: TenantId) -> Vec<qb_api::Event> {
        let mut events = self.events(tenant).await;
        events.retain(|e| e.action == qb_controller::audit::REFUSED);
        events
    }
}

/// A request with `token` as its bearer credential (none when `token` is empty).
pub fn bearer(token: &str, method: Method, path: &str) -> request::Builder {
    let req = Request::builder().method(method).uri(path);
    if token.is_empty() {
        req
    } else {
        req.header(header::AUTHORIZATION, format!("Bearer {token}"))
    }
}

/// Finishes `req` with `body` as JSON, or with no body.
pub fn json_request(req: request::Builder, body: Option<Value>) -> Request<Body> {
    match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap()
}

/// The items of a page (`{"items": [...], "next": ...}`).
pub fn items(page: &Value) -> &[Value] {
    page["items"].as_array().expect("a page of items")
}

/// The string at `key` of every object in the array `list`, e.g. the names of listed nodes.
pub fn pluck<'a>(list: &'a Value, key: &str) -> Vec<&'a str> {
    let list = list.as_array().expect("an array");
    list.iter().map(|x| x[key].as_str().expect(key)).collect()
}

/// How long a controller process may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `qb-controller` process, over plain HTTP on loopback; killed when dropped.
pub struct Controller {
    child: Child,
    data_dir: PathBuf,
    database: String,
    log: PathBuf,
    pub url: String,
    pub admin_token: String,
}

impl Controller {
    /// Starts one with its state in `data_dir` and `database`, its log and a stand-in agent
    /// binary in `dir`.
    pub fn start(dir: &Path, data_dir: &Path, database: &str) -> Self {
        // Agent packages ship this small real executable in place of an agent.
        let agent = dir.join("qb-agent");
        std::fs::copy("/bin/true", &agent).unwrap();
        let data_dir = data_dir.to_owned();
        let log = dir.join("controller.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_qb-controller"))
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--database", database])
            .args(["serve", "--insecure-http", "--listen", "127.0.0.1:0"])
            .args(["--agent-listen", "127.0.0.1:0"])
            .env("QB_AGENT_BINARY", &agent)
            .env("QB_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting qb-controller");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let url = loop {
            let line = rx
                .recv_timeout(START_TIMEOUT)
                .expect("qb-controller announces its address");
            if let Some(url) = line.strip_prefix("listening on ") {
                break url.trim().to_owned();
            }
        };
        let admin_token = std::fs::read_to_string(data_dir.join("admin-token"))
            .unwrap()
            .trim()
            .to_owned();
        Self {
            child,
            data_dir,
            database: database.to_owned(),
            log,
            url,
            admin_token,
        }
    }

    /// Runs an operator command (`qb-controller ARGS`) on its data directory and database;
    /// what it printed. It must succeed.
    pub fn command(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_qb-controller"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--database", &self.database])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "qb-controller {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// A new tenant: its admin's token.
    pub fn create_tenant(&self, name: &str) -> String {
        let stdout = self.command(&["tenant", "create", name]);
        stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix("qb_").map(|t| format!("qb_{t}")))
            .unwrap_or_else(|| panic!("no token in {stdout:?}"))
    }

    /// The names of its first tenant's users, as the API lists them.
    pub async fn user_names(&self, client: &reqwest::Client) -> Vec<String> {
        let users: serde_json::Value = client
            .get(format!("{}/api/v1/users", self.url))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        users
            .as_array()
            .unwrap_or_else(|| panic!("not a list of users: {users}"))
            .iter()
            .map(|user| user["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
