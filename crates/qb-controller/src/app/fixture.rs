//! An app over a fresh SQLite store, with one tenant and a caller per role, for the operations'
//! tests.

use std::sync::Arc;
use std::time::Duration;

use qb_api::{Cluster, CreateCluster, Name, NodeFacts, NodeName, Role, TenantId};
use qb_store::{Actor, ClusterSpec, NewNode, Store};

use super::{AppState, mint_token};
use crate::auth::Caller;

pub(super) struct Fixture {
    pub app: AppState,
    pub store: Store,
    pub tenant: TenantId,
    pub admin: Caller,
    pub operator: Caller,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &qb_test_support::sqlite_url(dir.path()),
            qb_store::Keyring::ephemeral(),
        )
        .await
        .unwrap();
        let ca = crate::agents::ca::load_or_create(&store).await.unwrap();
        let engine = crate::engine::Engine::load(
            store.clone(),
            Arc::new(crate::agents::Agents::new(Duration::from_secs(10))),
            crate::artifacts::ArtifactStore::open(&dir.path().join("artifacts")).unwrap(),
            &ca,
        )
        .await
        .unwrap();
        let app = AppState::new(Arc::new(engine));
        let (tenant, admin) = store
            .create_tenant(&"acme".parse().unwrap(), &"admin".parse().unwrap())
            .await
            .unwrap();
        let operator: Name = "op".parse().unwrap();
        store
            .create_user(tenant.id, &operator, Role::Operator, &Actor::controller())
            .await
            .unwrap();
        let mut fixture = Self {
            admin: caller(&store, tenant.id, &admin.name, 24).await,
            operator: caller(&store, tenant.id, &operator, 24).await,
            app,
            store,
            tenant: tenant.id,
            _dir: dir,
        };
        fixture.app.public = Some(Arc::new(crate::kubeconfig::PublicEndpoint {
            url: "https://qb.example.net".to_owned(),
            ca_pem: None,
        }));
        fixture
    }

    /// The operator again, with a token that expires in `hours`.
    pub async fn operator_for(&self, hours: u32) -> Caller {
        caller(&self.store, self.tenant, &"op".parse().unwrap(), hours).await
    }

    /// A new cluster of the defaults.
    pub async fn cluster(&self, name: &str) -> Cluster {
        let request: CreateCluster =
            serde_json::from_value(serde_json::json!({ "name": name })).unwrap();
        let spec = ClusterSpec::try_from(request).unwrap();
        self.app
            .create_cluster(&self.operator, &spec)
            .await
            .unwrap()
    }

    /// A pending node, as a host's first registration leaves it.
    pub async fn pending_node(&self, name: &str) -> NodeName {
        let name: NodeName = name.parse().unwrap();
        self.store
            .insert_node(
                self.tenant,
                NewNode {
                    name: name.clone(),
                    facts: NodeFacts::default(),
                    labels: Default::default(),
                },
                &Actor::controller(),
            )
            .await
            .unwrap();
        name
    }
}

/// `user` as the holder of a new token that expires in `hours`.
async fn caller(store: &Store, tenant: TenantId, user: &Name, hours: u32) -> Caller {
    let created = mint_token(store, tenant, user, None, hours, &Actor::controller())
        .await
        .unwrap();
    let principal = store
        .authenticate(&crate::auth::hash_secret(&created.secret))
        .await
        .unwrap()
        .unwrap();
    Caller(principal)
}
