//! Secrets at rest: private keys, signing keys, plans and channel secrets are sealed under the
//! key file's keys. A dump of the database shows none of them; they read back only with the
//! keys; a database from before sealing is sealed by `reseal`; rotating the key wraps data keys
//! again and loses nothing.

use qb_api::{AlertSeverity, ChannelKind, CreateChannel, NodeId, TenantId};
use qb_plan::pki::{CertPurpose, ClusterPki, KeyCert, NodeCerts};
use qb_store::{Keyring, Resealed, SealError, Store, StoreError};
use sqlx::Row as _;
use time::OffsetDateTime;

use crate::{TestDb, actor, attach_nodes, cluster, pool_node, tenant};

on_both_backends!(
    a_dump_of_the_database_shows_no_secret,
    secrets_stored_plain_are_sealed_and_keys_rotate,
    without_the_key_nothing_opens_and_nothing_changes,
);

const PLAN: &str = "a signed plan with -----BEGIN PRIVATE KEY----- plan-key-material";
const CHANNEL_SECRET: &str = "webhook-signing-secret-5bd1";
const CONTROLLER_SECRET: &str = "-----BEGIN PRIVATE KEY----- controller-ca-material";
const SNAPSHOT: &[u8] = b"an etcd snapshot with every Secret of the cluster";

/// Every kind of secret the store keeps, written through the store; what each reads back as.
struct Written {
    tenant: TenantId,
    cluster: qb_api::ClusterId,
    node: NodeId,
    pki: ClusterPki,
    certs: NodeCerts,
    snapshot: u64,
}

async fn write_every_secret(db: &Store) -> Written {
    let t = tenant(db, "acme").await;
    let n = pool_node(db, t, "n1", &[]).await;
    let c = cluster(db, t, "c1").await;
    attach_nodes(db, t, c.id, &["n1"]).await;
    let pki = ClusterPki::generate("c1").unwrap();
    db.init_cluster_pki(t, c.id, &pki).await.unwrap();
    let certs = NodeCerts {
        certs: [(
            CertPurpose::EtcdServer,
            KeyCert {
                cert_pem: "a certificate".to_owned(),
                key_pem: "-----BEGIN PRIVATE KEY----- node-key-material".to_owned(),
            },
        )]
        .into(),
    };
    db.set_node_engine(t, n.id, c.id, None, None, Some(&certs))
        .await
        .unwrap();
    db.publish_plan(
        t,
        n.id,
        Some(c.id),
        qb_store::PlanHashes {
            plan: "hash",
            restart: None,
        },
        None,
        |_| Ok(PLAN.to_owned()),
    )
    .await
    .unwrap();
    let hook = CreateChannel {
        name: "hook".parse().unwrap(),
        kind: ChannelKind::Webhook,
        target: "https://hooks.example.com/qb".to_owned(),
        min_severity: Some(AlertSeverity::Warning),
    };
    db.create_channel(
        t,
        &hook,
        Some(CHANNEL_SECRET.to_owned()),
        &actor(),
        OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    db.controller_secret("ca", || Ok(CONTROLLER_SECRET.to_owned()))
        .await
        .unwrap();
    // An etcd snapshot: its data key is sealed like the rest.
    db.set_cluster_state(t, c.id, qb_api::ClusterState::Ready, None)
        .await
        .unwrap();
    let snapshot = db
        .request_snapshot(
            t,
            &qb_store::Key::Id(c.id),
            qb_api::SnapshotTrigger::Manual,
            &actor(),
        )
        .await
        .unwrap();
    assert!(db.start_snapshot(snapshot.id, &n).await.unwrap());
    let mut upload = db.snapshot_upload(t, n.id, snapshot.id).await.unwrap();
    upload.write(SNAPSHOT).await.unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, SNAPSHOT);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    upload.finish(&hex, 1).await.unwrap();
    Written {
        tenant: t,
        cluster: c.id,
        node: n.id,
        pki,
        certs,
        snapshot: snapshot.id,
    }
}

/// Reads every secret back through `store` and checks it is what was written.
async fn read_every_secret(store: &Store, w: &Written) {
    let ec = store.engine_cluster(w.tenant, w.cluster).await.unwrap();
    assert_eq!(ec.pki.as_ref(), Some(&w.pki));
    assert_eq!(ec.nodes[0].certs.as_ref(), Some(&w.certs));
    let (_, plan) = store.node_plan(w.tenant, w.node).await.unwrap().unwrap();
    assert_eq!(plan, PLAN);
    let target = store
        .channel_target(w.tenant, &"hook".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(target.secret.as_deref(), Some(CHANNEL_SECRET));
    let ca = store
        .controller_secret("ca", || panic!("stored already"))
        .await
        .unwrap();
    assert_eq!(ca, CONTROLLER_SECRET);
    let mut reader = store
        .snapshot_reader(w.tenant, &qb_store::Key::Id(w.cluster), w.snapshot)
        .await
        .unwrap();
    assert_eq!(
        reader.next_chunk().await.unwrap().as_deref(),
        Some(SNAPSHOT)
    );
    assert_eq!(reader.next_chunk().await.unwrap(), None);
}

/// What in `dump` gives a secret away.
fn secrets_in(dump: &str) -> Vec<&'static str> {
    [
        "PRIVATE KEY",
        "key-material",
        CHANNEL_SECRET,
        "controller-ca-material",
    ]
    .into_iter()
    .filter(|s| dump.contains(s))
    .collect()
}

async fn a_dump_of_the_database_shows_no_secret(db: TestDb) {
    let written = write_every_secret(&db).await;
    read_every_secret(&db, &written).await;
    let status = db.sealed_status().await.unwrap();
    assert_eq!(status.not_sealed, 0);
    // The cluster PKI, node certificates, plan, channel secret and controller secret.
    assert_eq!(status.by_key.values().sum::<u64>(), 6, "{status:?}");
    let dump = db.dump();
    assert!(
        dump.contains("qb-sealed-v1:"),
        "the dump holds the sealed values"
    );
    assert_eq!(secrets_in(&dump), Vec::<&str>::new());
}

/// Writes `plain` into `table.column` of row `id`, as a controller from before sealing did.
async fn store_plain(db: &TestDb, table: &str, column: &str, id: &str, plain: &str) {
    sqlx::query(&format!("UPDATE {table} SET {column} = $1 WHERE id = $2"))
        .bind(plain)
        .bind(id)
        .execute(&db.raw().await)
        .await
        .unwrap();
}

async fn secrets_stored_plain_are_sealed_and_keys_rotate(db: TestDb) {
    let written = write_every_secret(&db).await;
    // As a database from before sealing holds them: the plan and the PKI stored plain.
    store_plain(&db, "nodes", "plan", &written.node.to_string(), PLAN).await;
    let pki_json = serde_json::to_string(&written.pki).unwrap();
    let cluster = written.cluster.to_string();
    store_plain(&db, "clusters", "pki", &cluster, &pki_json).await;
    assert_eq!(db.sealed_status().await.unwrap().not_sealed, 2);
    // Not sealed is not read as if it were: reads fail until they are sealed.
    match db.node_plan(written.tenant, written.node).await {
        Err(StoreError::Sealed {
            source: SealError::NotSealed,
            ..
        }) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        db.reseal().await.unwrap(),
        Resealed {
            sealed: 2,
            rewrapped: 0
        }
    );
    assert_eq!(db.reseal().await.unwrap(), Resealed::default());
    read_every_secret(&db, &written).await;
    assert_eq!(db.sealed_status().await.unwrap().not_sealed, 0);

    // Rotation: a new key goes first in the key file, and another store (a replica, or
    // `qb-controller secrets reseal`) reseals.
    let old = db.keyring.names()[0].clone();
    let new = Keyring::add_key(&db.key_file).unwrap();
    let rotated = Store::open(&db.url, Keyring::load(&db.key_file).unwrap())
        .await
        .unwrap();
    assert_eq!(
        rotated.reseal().await.unwrap(),
        Resealed {
            sealed: 0,
            rewrapped: 6
        }
    );
    let status = rotated.sealed_status().await.unwrap();
    assert_eq!(status.by_key.keys().collect::<Vec<_>>(), vec![&new]);
    read_every_secret(&rotated, &written).await;
    // The running store reads its key file again and opens what the new key sealed.
    read_every_secret(&db, &written).await;
    assert_eq!(db.keyring.names(), vec![new.clone(), old.clone()]);
    // The old key's line can go now: the new key alone opens everything.
    let text = std::fs::read_to_string(&db.key_file).unwrap();
    let without_old: String = text
        .lines()
        .filter(|l| !l.starts_with(&old))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&db.key_file, without_old).unwrap();
    let only_new = Store::open(&db.url, Keyring::load(&db.key_file).unwrap())
        .await
        .unwrap();
    assert_eq!(only_new.keyring().names(), vec![new]);
    read_every_secret(&only_new, &written).await;
    assert_eq!(secrets_in(&db.dump()), Vec::<&str>::new());
}

async fn without_the_key_nothing_opens_and_nothing_changes(db: TestDb) {
    let written = write_every_secret(&db).await;
    let plan_row = || async {
        sqlx::query("SELECT plan FROM nodes")
            .fetch_one(&db.raw().await)
            .await
            .unwrap()
            .get::<String, _>("plan")
    };
    let before = plan_row().await;
    // A controller given another key file (a new one, made because none was there).
    let stranger = Store::open(&db.url, Keyring::ephemeral()).await.unwrap();
    match stranger.reseal().await {
        Err(StoreError::Sealed {
            source: SealError::UnknownKey(key),
            ..
        }) => assert_eq!(key, db.keyring.names()[0]),
        other => panic!("expected a refusal, got {other:?}"),
    }
    match stranger.node_plan(written.tenant, written.node).await {
        Err(StoreError::Sealed {
            source: SealError::UnknownKey(_),
            ..
        }) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    match stranger
        .snapshot_reader(
            written.tenant,
            &qb_store::Key::Id(written.cluster),
            written.snapshot,
        )
        .await
    {
        Err(StoreError::Sealed {
            source: SealError::UnknownKey(_),
            ..
        }) => {}
        Err(e) => panic!("expected a refusal, got {e:?}"),
        Ok(_) => panic!("a snapshot opened without its key"),
    }
    assert_eq!(
        db.sealed_status().await.unwrap(),
        stranger.sealed_status().await.unwrap()
    );
    assert_eq!(plan_row().await, before);
    read_every_secret(&db, &written).await;

    // A sealed value moved to another row does not open there.
    let t = written.tenant;
    let other = pool_node(&db, t, "n2", &[]).await;
    attach_nodes(&db, t, written.cluster, &["n2"]).await;
    let raw = db.raw().await;
    sqlx::query("UPDATE nodes SET plan = (SELECT plan FROM nodes WHERE id = $1) WHERE id = $2")
        .bind(written.node.to_string())
        .bind(other.id.to_string())
        .execute(&raw)
        .await
        .unwrap();
    match db.node_plan(t, other.id).await {
        Err(StoreError::Sealed {
            source: SealError::Forged,
            ..
        }) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}
