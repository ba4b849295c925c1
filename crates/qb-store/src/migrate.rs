//! Schema migrations, embedded in the binary and applied at start.

use std::borrow::Cow;

use futures_core::future::BoxFuture;
use sqlx::AnyPool;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

use crate::Backend;

/// `(version, description, SQL)` per backend, in order.
const SQLITE: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "agents",
        include_str!("../migrations/shared/0002_agents.sql"),
    ),
    (
        3,
        "engine",
        include_str!("../migrations/shared/0003_engine.sql"),
    ),
    (
        4,
        "pod subnets",
        include_str!("../migrations/shared/0004_pod_subnets.sql"),
    ),
    (
        5,
        "replicas",
        include_str!("../migrations/shared/0005_replicas.sql"),
    ),
    (
        6,
        "passwords",
        include_str!("../migrations/shared/0006_passwords.sql"),
    ),
    (
        7,
        "web sessions",
        include_str!("../migrations/shared/0007_web_sessions.sql"),
    ),
    (
        8,
        "node address, roles",
        include_str!("../migrations/shared/0008_node_address_roles.sql"),
    ),
    (
        9,
        "node drain",
        include_str!("../migrations/shared/0009_node_drain.sql"),
    ),
];
const POSTGRES: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "agents",
        include_str!("../migrations/shared/0002_agents.sql"),
    ),
    (
        3,
        "engine",
        include_str!("../migrations/shared/0003_engine.sql"),
    ),
    (
        4,
        "pod subnets",
        include_str!("../migrations/shared/0004_pod_subnets.sql"),
    ),
    (
        5,
        "replicas",
        include_str!("../migrations/shared/0005_replicas.sql"),
    ),
    (
        6,
        "passwords",
        include_str!("../migrations/shared/0006_passwords.sql"),
    ),
    (
        7,
        "web sessions",
        include_str!("../migrations/shared/0007_web_sessions.sql"),
    ),
    (
        8,
        "node address, roles",
        include_str!("../migrations/shared/0008_node_address_roles.sql"),
    ),
    (
        9,
        "node drain",
        include_str!("../migrations/shared/0009_node_drain.sql"),
    ),
];

#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// Applies every migration not yet applied. On PostgreSQL, concurrent replicas take turns.
pub(crate) async fn run(
    pool: &AnyPool,
    backend: Backend,
) -> Result<(), sqlx::migrate::MigrateError> {
    let source = match backend {
        Backend::Sqlite => Embedded(SQLITE),
        Backend::Postgres => Embedded(POSTGRES),
    };
    Migrator::new(source).await?.run(pool).await
}
