//! Schema migrations, embedded in the binary and applied at start.

use std::borrow::Cow;

use futures_core::future::BoxFuture;
use sqlx::AnyPool;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

use crate::Backend;

/// The first migration differs per backend, and those with triggers; the rest serve both.
const INIT_SQLITE: &str = include_str!("../migrations/sqlite/0001_init.sql");
const INIT_POSTGRES: &str = include_str!("../migrations/postgres/0001_init.sql");
const OWN_SQLITE: &[(i64, &str, &str)] = &[
    (
        16,
        "events retention",
        include_str!("../migrations/sqlite/0016_events_retention.sql"),
    ),
    (
        22,
        "etcd snapshots",
        include_str!("../migrations/sqlite/0022_etcd_snapshots.sql"),
    ),
];
const OWN_POSTGRES: &[(i64, &str, &str)] = &[
    (
        16,
        "events retention",
        include_str!("../migrations/postgres/0016_events_retention.sql"),
    ),
    (
        22,
        "etcd snapshots",
        include_str!("../migrations/postgres/0022_etcd_snapshots.sql"),
    ),
];

/// `(version, description, SQL)` after the first, in order.
const SHARED: &[(i64, &str, &str)] = &[
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
    (
        10,
        "cluster state since",
        include_str!("../migrations/shared/0010_cluster_state_since.sql"),
    ),
    (
        11,
        "cluster add-ons",
        include_str!("../migrations/shared/0011_cluster_addons.sql"),
    ),
    (
        12,
        "node metrics",
        include_str!("../migrations/shared/0012_node_metrics.sql"),
    ),
    (
        13,
        "alerts",
        include_str!("../migrations/shared/0013_alerts.sql"),
    ),
    (
        14,
        "notifications",
        include_str!("../migrations/shared/0014_notifications.sql"),
    ),
    (
        15,
        "threshold rules",
        include_str!("../migrations/shared/0015_threshold_rules.sql"),
    ),
    (
        17,
        "node bootstrap token",
        include_str!("../migrations/shared/0017_node_bootstrap_token.sql"),
    ),
    (
        18,
        "node plan version",
        include_str!("../migrations/shared/0018_node_plan_version.sql"),
    ),
    (
        19,
        "agent upgrades",
        include_str!("../migrations/shared/0019_agent_upgrades.sql"),
    ),
    (
        20,
        "cluster rollout pause",
        include_str!("../migrations/shared/0020_cluster_rollout_pause.sql"),
    ),
    (
        21,
        "cluster snapshot schedule",
        include_str!("../migrations/shared/0021_cluster_snapshot_schedule.sql"),
    ),
];

/// A backend's migrations: its own first one, the shared ones and its own later ones, in
/// order of version.
#[derive(Debug)]
struct Embedded {
    init: &'static str,
    own: &'static [(i64, &'static str, &'static str)],
}

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            let init = (1, "init", self.init);
            let mut all: Vec<_> = std::iter::once(&init)
                .chain(SHARED)
                .chain(self.own)
                .collect();
            all.sort_by_key(|(version, _, _)| *version);
            Ok(all
                .into_iter()
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
    let (init, own) = match backend {
        Backend::Sqlite => (INIT_SQLITE, OWN_SQLITE),
        Backend::Postgres => (INIT_POSTGRES, OWN_POSTGRES),
    };
    Migrator::new(Embedded { init, own }).await?.run(pool).await
}
