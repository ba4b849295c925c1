//! The store's test suite, one binary. Every case is written once, as an async fn taking a
//! [`TestDb`], and runs twice: on a SQLite file in a temp dir (`<case>::sqlite`) and on a private
//! PostgreSQL server (`<case>::postgres`). The PostgreSQL half fails, never skips, when PostgreSQL
//! is not installed.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::Deref;

use qb_api::{
    AttachTarget, Cluster, ClusterDetail, ClusterId, CreateCluster, Event, Labels, Name, Node,
    NodeFacts, NodeMove, NodeName, NodeState, Page, Role, TenantId, Token, User,
};
use qb_store::{
    Actor, Backend, ClusterSpec, EventFilter, Key, NewNode, NodeFilter, Store, StoreError,
};
use qb_test_support::PgServer;
use sqlx::AnyPool;

/// Generates `<case>::sqlite` and `<case>::postgres` for each case fn in the calling module.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$case(crate::TestDb::sqlite().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$case(crate::TestDb::postgres().await).await;
            }
        }
    )*};
}

#[path = "cases/agents.rs"]
mod agents;
#[path = "cases/alerts.rs"]
mod alerts;
#[path = "cases/attach.rs"]
mod attach;
#[path = "cases/clusters.rs"]
mod clusters;
#[path = "cases/events.rs"]
mod events;
#[path = "cases/metrics.rs"]
mod metrics;
#[path = "cases/nodes.rs"]
mod nodes;
#[path = "cases/notifications.rs"]
mod notifications;
#[path = "cases/paging.rs"]
mod paging;
#[path = "cases/persistence.rs"]
mod persistence;
#[path = "cases/replicas.rs"]
mod replicas;
#[path = "cases/rules.rs"]
mod rules;
#[path = "cases/secrets.rs"]
mod secrets;
#[path = "cases/snapshots.rs"]
mod snapshots;
#[path = "cases/tenants.rs"]
mod tenants;

/// A store on a database of its own, and what keeps that database alive.
pub struct TestDb {
    pub store: Store,
    pub url: String,
    /// The keys the store seals its secrets with; another store on the database needs them.
    pub keyring: qb_store::Keyring,
    /// The file they are kept in.
    pub key_file: std::path::PathBuf,
    _keys: tempfile::TempDir,
    _home: Home,
}

enum Home {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(#[allow(dead_code)] PgServer),
}

impl TestDb {
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let url = qb_test_support::sqlite_url(dir.path());
        Self::open(url, Backend::Sqlite, Home::Sqlite(dir)).await
    }

    pub async fn postgres() -> Self {
        let server = match PgServer::start() {
            Ok(server) => server,
            Err(e) => panic!("these tests need PostgreSQL: {e:#}"),
        };
        let url = server.url();
        Self::open(url, Backend::Postgres, Home::Postgres(server)).await
    }

    async fn open(url: String, backend: Backend, home: Home) -> Self {
        let keys = tempfile::tempdir().expect("creating a temp dir");
        let key_file = keys.path().join("secrets.key");
        let (keyring, _) = qb_store::Keyring::load_or_create(&key_file).expect("a key file");
        let store = Store::open(&url, keyring.clone())
            .await
            .unwrap_or_else(|e| panic!("opening a {backend:?} store: {e:#}"));
        assert_eq!(store.backend(), backend);
        Self {
            store,
            url,
            keyring,
            key_file,
            _keys: keys,
            _home: home,
        }
    }

    pub fn backend(&self) -> Backend {
        self.store.backend()
    }

    /// Another store on the same database, as a second controller replica would open.
    pub async fn open_again(&self) -> Store {
        Store::open(&self.url, self.keyring.clone())
            .await
            .expect("opening the store again")
    }

    /// Everything the database holds, as an operator's dump or a stolen disk shows it: on
    /// SQLite the bytes of its files (the database and its write-ahead log, free pages
    /// included), on PostgreSQL `pg_dump`'s output.
    pub fn dump(&self) -> String {
        match &self._home {
            Home::Sqlite(dir) => ["qb.db", "qb.db-wal"]
                .iter()
                .filter_map(|f| std::fs::read(dir.path().join(f)).ok())
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .collect(),
            Home::Postgres(server) => server.dump().expect("pg_dump"),
        }
    }

    /// A connection pool that goes around the store, straight to the database.
    pub async fn raw(&self) -> AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&self.url)
            .await
            .expect("connecting to the database directly")
    }
}

impl Deref for TestDb {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}

// ---- Inputs -------------------------------------------------------------------------------------

pub fn actor() -> Actor {
    Actor::user("alice")
}

pub fn name(s: &str) -> Name {
    s.parse().unwrap()
}

pub fn node_name(s: &str) -> NodeName {
    s.parse().unwrap()
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
        .collect()
}

pub fn named(names: &[&str]) -> AttachTarget {
    AttachTarget::Named(names.iter().map(|n| node_name(n)).collect())
}

pub fn from_pool(count: u32, selector: Option<&str>) -> AttachTarget {
    AttachTarget::FromPool {
        count,
        selector: selector.map(|s| s.parse().unwrap()),
    }
}

pub fn spec(cluster: &str) -> ClusterSpec {
    ClusterSpec::try_from(CreateCluster {
        name: name(cluster),
        kubernetes_version: None,
        pod_cidr: None,
        service_cidr: None,
        masters: Default::default(),
        roles: BTreeMap::new(),
        taint_masters: false,
    })
    .unwrap()
}

pub fn by_name<Id>(s: &str) -> Key<Id> {
    Key::Name(s.to_owned())
}

// ---- Setup --------------------------------------------------------------------------------------

/// A tenant with its admin `alice`.
pub async fn tenant(store: &Store, tenant: &str) -> TenantId {
    store
        .create_tenant(&name(tenant), &name("alice"))
        .await
        .unwrap()
        .0
        .id
}

/// A user that `alice` adds to the tenant.
pub async fn new_user(store: &Store, t: TenantId, user: &str, role: Role) -> User {
    store
        .create_user(t, &name(user), role, &actor())
        .await
        .unwrap()
}

/// A registered node, still `pending`.
pub async fn pending_node(store: &Store, t: TenantId, node: &str, pairs: &[(&str, &str)]) -> Node {
    let new = NewNode {
        name: node_name(node),
        facts: NodeFacts {
            hostname: node.to_owned(),
            cpus: 2,
            ..Default::default()
        },
        labels: labels(pairs),
    };
    let created = store.insert_node(t, new, &actor()).await.unwrap();
    assert_eq!(created.state, NodeState::Pending);
    created
}

/// A node in the pool (`authorized`).
pub async fn pool_node(store: &Store, t: TenantId, node: &str, pairs: &[(&str, &str)]) -> Node {
    let pending = pending_node(store, t, node, pairs).await;
    let node = store
        .authorize_node(t, &Key::Id(pending.id), &actor())
        .await
        .unwrap();
    assert_eq!(node.state, NodeState::Authorized);
    node
}

/// Nodes in the pool, without labels.
pub async fn pool_nodes(store: &Store, t: TenantId, nodes: &[&str]) {
    for node in nodes {
        pool_node(store, t, node, &[]).await;
    }
}

pub async fn cluster(store: &Store, t: TenantId, cluster: &str) -> Cluster {
    store
        .create_cluster(t, &spec(cluster), &actor())
        .await
        .unwrap()
}

/// Attaches the named pool nodes to cluster `c`.
pub async fn attach_nodes(store: &Store, t: TenantId, c: ClusterId, nodes: &[&str]) -> NodeMove {
    store
        .attach(t, &Key::Id(c), &named(nodes), &actor())
        .await
        .unwrap()
}

/// Starts detaching the named nodes from cluster `c`, without force.
pub async fn detach_nodes(store: &Store, t: TenantId, c: ClusterId, nodes: &[&str]) -> NodeMove {
    let nodes: Vec<NodeName> = nodes.iter().map(|n| node_name(n)).collect();
    store
        .detach(t, &Key::Id(c), &nodes, false, &actor())
        .await
        .unwrap()
}

// ---- Refusals -----------------------------------------------------------------------------------

/// Asserts that a request was refused because the `kind` it names does not exist.
#[track_caller]
pub fn assert_not_found<T: Debug>(result: &Result<T, StoreError>, kind: &str) {
    assert!(
        matches!(result, Err(StoreError::NotFound { kind: k, .. }) if *k == kind),
        "expected NotFound for a {kind}, got {result:?}"
    );
}

/// Asserts that a request was refused because its `kind` called `name` exists already.
#[track_caller]
pub fn assert_name_taken<T: Debug>(result: &Result<T, StoreError>, kind: &str, name: &str) {
    assert!(
        matches!(result, Err(StoreError::NameTaken { kind: k, name: n }) if *k == kind && n == name),
        "expected NameTaken for the {kind} {name}, got {result:?}"
    );
}

/// Asserts that a request was refused because a node it names is in `state`.
#[track_caller]
pub fn assert_invalid_state<T: Debug>(result: &Result<T, StoreError>, state: &str) {
    assert!(
        matches!(result, Err(StoreError::InvalidNodeState { state: s, .. }) if *s == state),
        "expected InvalidNodeState {state}, got {result:?}"
    );
}

/// Asserts that an attach was refused because the pool holds only `available` nodes (matching
/// the selector, if `selector`) where `wanted` were asked for.
#[track_caller]
pub fn assert_pool_exhausted<T: Debug>(
    result: &Result<T, StoreError>,
    wanted: u32,
    available: u32,
    selector: bool,
) {
    match result {
        Err(StoreError::PoolExhausted {
            wanted: w,
            available: a,
            selector: s,
        }) => assert_eq!((*w, *a, *s), (wanted, available, selector)),
        other => panic!("expected PoolExhausted, got {other:?}"),
    }
}

// ---- Reading everything back --------------------------------------------------------------------

/// Follows `next` cursors until the last page, checking the pages on the way.
pub async fn collect_pages<T, F, Fut>(limit: u32, mut fetch: F) -> Vec<T>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Page<T>>,
{
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = fetch(after.take()).await;
        assert!(
            page.items.len() <= limit as usize,
            "a page holds more than the limit"
        );
        assert!(
            !page.items.is_empty() || all.is_empty(),
            "an empty page after a full one"
        );
        match page.next {
            Some(next) => {
                assert_eq!(
                    page.items.len(),
                    limit as usize,
                    "only the last page may be short"
                );
                all.extend(page.items);
                after = Some(next);
            }
            None => {
                all.extend(page.items);
                return all;
            }
        }
    }
}

/// The tenant's nodes that pass `filter`, read `limit` at a time.
pub async fn nodes_by_pages(
    store: &Store,
    t: TenantId,
    filter: &NodeFilter,
    limit: u32,
) -> Vec<Node> {
    collect_pages(limit, |after| async move {
        store
            .list_nodes(t, filter, after.as_deref(), limit)
            .await
            .unwrap()
    })
    .await
}

pub async fn all_nodes(store: &Store, t: TenantId) -> Vec<Node> {
    nodes_by_pages(store, t, &NodeFilter::default(), 1000).await
}

pub async fn all_clusters(store: &Store, t: TenantId) -> Vec<Cluster> {
    collect_pages(1000, |after| async move {
        store
            .list_clusters(t, after.as_deref(), 1000)
            .await
            .unwrap()
    })
    .await
}

pub async fn all_tokens(store: &Store, t: TenantId) -> Vec<Token> {
    collect_pages(1000, |after| async move {
        store.list_tokens(t, after.as_deref(), 1000).await.unwrap()
    })
    .await
}

/// The tenant's events that pass `filter`, read `limit` at a time.
pub async fn events_by_pages(
    store: &Store,
    t: TenantId,
    filter: &EventFilter,
    limit: u32,
) -> Vec<Event> {
    collect_pages(limit, |after| async move {
        let after = after.map(|a| a.parse::<i64>().unwrap());
        store.list_events(t, filter, after, limit).await.unwrap()
    })
    .await
}

pub async fn events(store: &Store, t: TenantId, filter: &EventFilter) -> Vec<Event> {
    events_by_pages(store, t, filter, 1000).await
}

/// The tenant's events whose action starts with `prefix`.
pub async fn events_with_action(store: &Store, t: TenantId, prefix: &str) -> Vec<Event> {
    let filter = EventFilter {
        action_prefix: Some(prefix.into()),
        ..Default::default()
    };
    events(store, t, &filter).await
}

pub async fn all_events(store: &Store, t: TenantId) -> Vec<Event> {
    events(store, t, &EventFilter::default()).await
}

pub fn actions(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.action.as_str()).collect()
}

/// Everything a tenant has, to show that a refused request changed nothing.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub nodes: Vec<Node>,
    pub clusters: Vec<ClusterDetail>,
    pub tokens: Vec<Token>,
    pub users: Vec<User>,
    pub events: Vec<Event>,
}

pub async fn snapshot(store: &Store, t: TenantId) -> Snapshot {
    let mut clusters = Vec::new();
    for c in all_clusters(store, t).await {
        clusters.push(store.get_cluster(t, &Key::Id(c.id)).await.unwrap());
    }
    Snapshot {
        nodes: all_nodes(store, t).await,
        clusters,
        tokens: all_tokens(store, t).await,
        users: store.list_users(t).await.unwrap(),
        events: all_events(store, t).await,
    }
}

pub async fn node(store: &Store, t: TenantId, node: &str) -> Node {
    store.get_node(t, &by_name(node)).await.unwrap()
}

/// The tenant's nodes that are leaving a cluster.
pub async fn detaching(store: &Store, t: TenantId) -> Vec<Node> {
    let filter = NodeFilter {
        state: Some(qb_api::NodeState::Detaching),
        cluster: None,
    };
    store
        .list_nodes(t, &filter, None, 1000)
        .await
        .unwrap()
        .items
}

pub async fn cluster_detail(store: &Store, t: TenantId, id: ClusterId) -> ClusterDetail {
    store.get_cluster(t, &Key::Id(id)).await.unwrap()
}

/// The names of nodes, sorted.
pub fn names(nodes: &[Node]) -> Vec<String> {
    let mut names: Vec<String> = nodes.iter().map(|n| n.name.to_string()).collect();
    names.sort();
    names
}
