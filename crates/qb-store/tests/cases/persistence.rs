//! The database outlives the store: reopening applies no migration twice and keeps everything.

use qb_api::Role;
use qb_store::{Key, Store};
use sqlx::Row;
use time::{Duration, OffsetDateTime};

use crate::{
    TestDb, actor, attach_nodes, cluster, detach_nodes, from_pool, name, new_user, pool_node,
    snapshot, tenant,
};

on_both_backends!(reopening_keeps_everything);

async fn reopening_keeps_everything(db: TestDb) {
    let t = tenant(&db, "acme").await;
    new_user(&db, t, "bob", Role::Operator).await;
    let expires = OffsetDateTime::now_utc() + Duration::hours(1);
    db.create_token(
        t,
        &name("bob"),
        "s".into(),
        "hash-bob",
        None,
        expires,
        &actor(),
    )
    .await
    .unwrap();
    for n in ["n1", "n2", "n3"] {
        pool_node(&db, t, n, &[("zone", "a")]).await;
    }
    let c = cluster(&db, t, "c1").await;
    attach_nodes(&db, t, c.id, &["n1", "n2"]).await;
    detach_nodes(&db, t, c.id, &["n2"]).await;
    let before = snapshot(&db, t).await;
    db.store.close().await;

    let again = db.open_again().await;
    assert_eq!(snapshot(&again, t).await, before);
    assert_eq!(again.tenant_by_name("acme").await.unwrap().id, t);
    assert_eq!(
        again
            .authenticate("hash-bob")
            .await
            .unwrap()
            .map(|p| p.user),
        Some(name("bob"))
    );
    assert_eq!(crate::detaching(&again, t).await.len(), 1);

    // Work goes on where it stopped.
    again
        .attach(t, &Key::Id(c.id), &from_pool(1, None), &actor())
        .await
        .unwrap();
    let after = snapshot(&again, t).await;
    assert_eq!(after.events.len(), before.events.len() + 2);
    assert!(after.events[before.events.len()].id > before.events[before.events.len() - 1].id);
    again.close().await;

    // Opened a third time, by two stores at once.
    let (third, fourth) = tokio::join!(db.open_again(), db.open_again());
    assert_eq!(snapshot(&third, t).await, after);
    assert_eq!(snapshot(&fourth, t).await, after);

    let raw = db.raw().await;
    // `success` is a BOOLEAN, which the Any driver cannot read from SQLite: filter on it instead.
    let rows = sqlx::query("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(&raw)
        .await
        .unwrap();
    let applied: Vec<i64> = rows.iter().map(|row| row.get("version")).collect();
    let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM _sqlx_migrations")
        .fetch_one(&raw)
        .await
        .unwrap()
        .get("n");
    assert_eq!((applied, total), ((1..=22).collect::<Vec<i64>>(), 22));
}

/// Controller replicas starting together on a fresh PostgreSQL database take turns migrating.
/// (SQLite deployments have one controller process, which opens the file once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_migrate_a_fresh_postgres_database_together() {
    let server = qb_test_support::PgServer::start()
        .unwrap_or_else(|e| panic!("these tests need PostgreSQL: {e:#}"));
    let url = server.url();
    let keyring = qb_store::Keyring::ephemeral();
    let opened = futures_join_all((0..4).map(|_| {
        let (url, keyring) = (url.clone(), keyring.clone());
        async move { Store::open(&url, keyring).await }
    }))
    .await;
    let stores: Vec<Store> = opened.into_iter().map(|s| s.unwrap()).collect();
    let (acme, _) = stores[0]
        .create_tenant(&name("acme"), &name("alice"))
        .await
        .unwrap();
    for store in &stores {
        assert_eq!(store.tenant_by_name("acme").await.unwrap(), acme);
    }
    for store in &stores {
        store.close().await;
    }
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join_all<
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
>(
    futures: impl Iterator<Item = F>,
) -> Vec<T> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}
