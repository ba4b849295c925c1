//! qb's durable state on SQLite (one file, the default) or PostgreSQL (shared by several
//! controller replicas), behind one [`Store`].
//!
//! Every change and its audit event commit in one transaction. Writes that move nodes are
//! serialized per tenant (a process-wide lock on SQLite, a row lock on the tenant in PostgreSQL),
//! and the schema itself forbids a node from being in two clusters.
//!
//! The store knows nothing of HTTP: it speaks in [`qb_api`] types and [`StoreError`]s.

mod agent_upgrades;
mod agents;
mod alerts;
mod clusters;
mod engine;
mod events;
mod invariants;
mod metrics;
mod migrate;
mod nodes;
mod notifications;
mod replicas;
mod rows;
mod rules;
mod sealed;
mod snapshots;
mod tenants;

use std::sync::Arc;
use std::time::Duration;

use qb_api::{InvalidValue, Node};
use sqlx::any::{AnyPoolOptions, AnyRow, install_default_drivers};
use sqlx::{Any, AnyPool, Executor, Transaction};
use time::OffsetDateTime;
use tokio::sync::{Mutex, OwnedMutexGuard};

pub use agent_upgrades::{NewAgentUpgrade, StoredAgentUpgrade, UpgradingNode, UpgradingState};
pub use agents::{
    AgentNode, IdentityConflict, IssueError, IssuedCert, NewSecret, Registered, Registration,
    SeenAgent, TokenRefusal,
};
pub use alerts::{AlertChanges, WantedAlert};
pub use clusters::{
    ClusterSpec, MAX_SNAPSHOT_INTERVAL, MAX_SNAPSHOT_RETENTION, SpecError, check_snapshot_schedule,
};
pub use engine::{Drain, EngineCluster, EngineNode, PlanHashes, WIPE_PLAN_HASH};
pub use events::EventFilter;
pub use metrics::{HOURS_KEPT, MINUTES_KEPT};
pub use nodes::{NewNode, NodeFilter};
pub use notifications::{ChannelTarget, DeliveryOutcome, DueDelivery};
pub use replicas::{EngineWakes, Leadership, SessionChange, SessionChanges};
pub use rules::MetricLows;
pub use sealed::{
    KeyFileError, Keyring, Resealed, SealError, SealedStatus, context as sealed_place,
};
pub use snapshots::{CHUNK_BYTES, SnapshotJob, SnapshotReader, SnapshotUpload};
pub use tenants::{PasswordUser, Principal, Tenant};

/// Which database a [`Store`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Who made a change, as written into the event log: `user:<name>` or `controller`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor(pub String);

impl Actor {
    pub fn user(name: &str) -> Self {
        Self(format!("user:{name}"))
    }

    pub fn controller() -> Self {
        Self("controller".to_owned())
    }
}

/// How a path names a node or a cluster: by id or by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key<Id> {
    Id(Id),
    Name(String),
}

impl<Id: std::str::FromStr> Key<Id> {
    /// A UUID is taken as an id, anything else as a name.
    pub fn parse(s: &str) -> Self {
        s.parse()
            .map(Key::Id)
            .unwrap_or_else(|_| Key::Name(s.to_owned()))
    }
}

impl<Id: std::fmt::Display> std::fmt::Display for Key<Id> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Id(id) => id.fmt(f),
            Key::Name(name) => f.write_str(name),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {key:?} not found")]
    NotFound { kind: &'static str, key: String },
    #[error("a {kind} named {name:?} already exists")]
    NameTaken { kind: &'static str, name: String },
    #[error("{0}")]
    Invalid(#[from] InvalidValue),
    #[error(
        "the pool has {available} authorized node(s){matching}, fewer than the {wanted} asked for; nothing was attached",
        matching = if *.selector { " matching the selector" } else { "" }
    )]
    PoolExhausted {
        wanted: u32,
        available: u32,
        selector: bool,
    },
    #[error("node {node:?} is {state}, so it cannot be {action}")]
    InvalidNodeState {
        node: String,
        state: &'static str,
        action: &'static str,
    },
    #[error("node {node:?} is not in cluster {cluster:?}")]
    NodeNotInCluster { node: String, cluster: String },
    #[error(
        "node {node:?} is in cluster {cluster:?}, so it cannot be {action}; detach it first (`qb cluster detach {cluster} {node}`, with --force if its host is unreachable)"
    )]
    NodeInCluster {
        node: String,
        cluster: String,
        action: &'static str,
    },
    #[error(
        "cluster {cluster:?} still has {nodes} node(s); detach them first or delete with force to return them to the pool"
    )]
    ClusterNotEmpty { cluster: String, nodes: u32 },
    #[error(
        "a different bundle for Kubernetes {version} is already imported; bundles are immutable"
    )]
    BundleConflict { version: String },
    #[error("{0}")]
    UpgradeRefused(String),
    /// A snapshot cannot be asked for, deleted or read as it stands.
    #[error("{0}")]
    SnapshotRefused(String),
    #[error("stored {what} is unreadable")]
    Corrupt {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("registration refused: {0}")]
    TokenRefused(TokenRefusal),
    #[error("registration refused: {0}")]
    IdentityConflict(Box<IdentityConflict>),
    #[error("could not issue a certificate")]
    Issue(#[source] IssueError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// The connection failed while the transaction committed: the database may have made the
    /// change or not, and nobody can tell without looking.
    #[error("the database connection failed while committing")]
    CommitInDoubt(#[source] sqlx::Error),
    /// A stored secret that does not open: the key file lacks its key, or it was altered.
    #[error("stored {what} cannot be read: {source}")]
    Sealed {
        what: &'static str,
        #[source]
        source: SealError,
    },
    #[error("could not apply database migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    fn not_found(kind: &'static str, key: impl ToString) -> Self {
        Self::NotFound {
            kind,
            key: key.to_string(),
        }
    }

    /// `node` is in a state that does not allow `action`.
    fn invalid_state(node: &Node, action: &'static str) -> Self {
        Self::InvalidNodeState {
            node: node.name.to_string(),
            state: node.state.as_str(),
            action,
        }
    }

    /// Another request moved `node` between reading and writing it.
    fn changed_meanwhile(node: &Node, action: &'static str) -> Self {
        Self::InvalidNodeState {
            node: node.name.to_string(),
            state: "changed by another request",
            action,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The controller's database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// PostgreSQL's URL, for the connection that listens for notifications.
    postgres_url: Option<Arc<str>>,
    /// SQLite allows one writer at a time; writers queue here instead of failing with "busy".
    sqlite_writer: Arc<Mutex<()>>,
    /// Seals and opens the secrets the store holds.
    keyring: Keyring,
}

/// A write transaction that holds the tenant's write lock until it ends.
struct WriteTx {
    tx: Transaction<'static, Any>,
    _writer: Option<OwnedMutexGuard<()>>,
}

impl Store {
    /// Opens (creating if needed) the database at `url` and applies pending migrations.
    /// `keyring` seals the secrets written and opens those read; secrets stored before are
    /// sealed by [`Store::reseal`].
    ///
    /// `sqlite://<path>` or `postgres://...`.
    pub async fn open(url: &str, keyring: Keyring) -> Result<Self> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(InvalidValue(
                "database URL must start with sqlite:// or postgres://".to_owned(),
            )
            .into());
        };
        let pool = match backend {
            Backend::Sqlite => {
                let url = if url.contains('?') {
                    url.to_owned()
                } else {
                    format!("{url}?mode=rwc")
                };
                AnyPoolOptions::new()
                    .max_connections(8)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                            )
                            .await
                            .map(|_| ())
                        })
                    })
                    // A COMMIT that fails on a full disk is rolled back by SQLite itself; the
                    // driver's own ROLLBACK then fails and it counts the transaction as still
                    // open, so every later BEGIN on that connection would fail. Such a
                    // connection is closed rather than handed out again.
                    .before_acquire(|conn, _| {
                        Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) })
                    })
                    .connect(&url)
                    .await?
            }
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await?
            }
        };
        migrate::run(&pool, backend).await?;
        Ok(Self {
            pool,
            backend,
            postgres_url: (backend == Backend::Postgres).then(|| url.into()),
            sqlite_writer: Arc::new(Mutex::new(())),
            keyring,
        })
    }

    /// Opens the SQLite database file at `path`.
    pub async fn open_sqlite(path: &std::path::Path, keyring: Keyring) -> Result<Self> {
        Self::open(&format!("sqlite://{}", path.display()), keyring).await
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The keys that seal the store's secrets.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A page of what `sql` selects, given the tenant, the cursor and `limit + 1` as $1, $2, $3.
    async fn fetch_page<T>(
        &self,
        sql: &str,
        tenant: qb_api::TenantId,
        after: Option<&str>,
        limit: u32,
        row: fn(&AnyRow) -> Result<T>,
        cursor: impl Fn(&T) -> String,
    ) -> Result<qb_api::Page<T>> {
        let rows = sqlx::query(sql)
            .bind(tenant.to_string())
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await?;
        let items = rows.iter().map(row).collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit, cursor))
    }

    /// For single-statement bookkeeping writes outside a transaction (token use, agent
    /// last-seen): on SQLite they queue behind the writer like any other write.
    async fn bookkeeping_lock(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.backend {
            Backend::Sqlite => Some(self.sqlite_writer.lock().await),
            Backend::Postgres => None,
        }
    }

    /// Starts a write transaction holding `tenant`'s write lock.
    async fn write(&self, tenant: qb_api::TenantId) -> Result<WriteTx> {
        let mut w = self.write_global().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT id FROM tenants WHERE id = $1 FOR UPDATE")
                .bind(tenant.to_string())
                .fetch_optional(&mut *w.tx)
                .await?;
        }
        Ok(w)
    }

    /// Starts a write transaction not tied to a tenant (creating one).
    async fn write_global(&self) -> Result<WriteTx> {
        match self.backend {
            // IMMEDIATE takes SQLite's write lock up front, so a transaction that reads before
            // it writes never fails with "busy" when another process (an operator command)
            // writes the same file; the busy timeout makes it wait instead.
            Backend::Sqlite => {
                let writer = self.sqlite_writer.clone().lock_owned().await;
                let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
                Ok(WriteTx {
                    tx,
                    _writer: Some(writer),
                })
            }
            Backend::Postgres => Ok(WriteTx {
                tx: self.pool.begin().await?,
                _writer: None,
            }),
        }
    }
}

impl WriteTx {
    async fn commit(self) -> Result<()> {
        self.tx.commit().await.map_err(|e| {
            // The commit went out and no answer came back.
            if connection_failed(&e) {
                StoreError::CommitInDoubt(e)
            } else {
                StoreError::Database(e)
            }
        })
    }
}

/// Whether `e` says the connection to the database failed (it went away, is shutting down or
/// starting up) rather than the statement.
pub fn connection_failed(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_))
        || e.as_database_error().is_some_and(|db| {
            // PostgreSQL's classes 08 (connection exception) and 57P (shutdown, starting up).
            db.code()
                .is_some_and(|code| code.starts_with("08") || code.starts_with("57P"))
        })
}

/// Milliseconds since the Unix epoch, as stored.
fn now_ms() -> i64 {
    to_ms(OffsetDateTime::now_utc())
}

fn to_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `true` when the error is a unique-constraint violation (a taken name).
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Cuts a list fetched with `limit + 1` rows into a page and the cursor of the next one.
fn page<T>(mut items: Vec<T>, limit: u32, cursor: impl Fn(&T) -> String) -> qb_api::Page<T> {
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(cursor)
    } else {
        None
    };
    qb_api::Page { items, next }
}

/// The id of a record that a [`Key`] names by id or by name, and where its rows are read.
trait Keyed: std::fmt::Display {
    /// What a `NotFound` error calls it.
    const KIND: &'static str;
    /// Selects its rows, from a table aliased [`Self::ALIAS`].
    const SELECT: &'static str;
    const ALIAS: &'static str;
}

/// The row in `tenant` that `key` names.
async fn fetch_keyed<'e, E, Id>(ex: E, tenant: qb_api::TenantId, key: &Key<Id>) -> Result<AnyRow>
where
    E: Executor<'e, Database = Any>,
    Id: Keyed,
{
    let (column, value) = match key {
        Key::Id(id) => ("id", id.to_string()),
        Key::Name(name) => ("name", name.clone()),
    };
    let (select, alias) = (Id::SELECT, Id::ALIAS);
    sqlx::query(&format!(
        "{select} WHERE {alias}.tenant_id = $1 AND {alias}.{column} = $2"
    ))
    .bind(tenant.to_string())
    .bind(value)
    .fetch_optional(ex)
    .await?
    .ok_or_else(|| StoreError::not_found(Id::KIND, key))
}

/// Parses an id read from the database.
fn parse_id<T: std::str::FromStr<Err = uuid::Error>>(what: &'static str, s: &str) -> Result<T> {
    s.parse().map_err(|e| StoreError::Corrupt {
        what,
        source: Box::new(e),
    })
}
