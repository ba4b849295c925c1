//! etcd snapshots: asked for, given to a master, stored sealed in chunks, read back whole,
//! refused when they cannot be, scheduled and pruned.

use qb_api::{ClusterState, SnapshotState, SnapshotTrigger, UpdateCluster};
use qb_store::{CHUNK_BYTES, Key, StoreError};

use crate::*;

on_both_backends!(
    a_snapshot_is_stored_sealed_and_read_back_whole,
    snapshots_are_refused_when_they_cannot_be_taken,
    scheduled_snapshots_come_due_and_the_oldest_go,
);

/// A ready cluster with one attached node, `n1`.
async fn ready_cluster(db: &TestDb, t: qb_api::TenantId, name: &str) -> (qb_api::Cluster, Node) {
    let node = pool_node(db, t, &format!("{name}-n1"), &[]).await;
    let c = cluster(db, t, name).await;
    attach_nodes(db, t, c.id, &[&format!("{name}-n1")]).await;
    db.set_cluster_state(t, c.id, ClusterState::Ready, None)
        .await
        .unwrap();
    (c, node)
}

/// Bytes that are not all alike, so a swapped chunk shows.
fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

fn sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn read_all(
    db: &TestDb,
    t: qb_api::TenantId,
    c: &qb_api::Cluster,
    id: u64,
) -> Result<Vec<u8>, StoreError> {
    let mut reader = db.snapshot_reader(t, &Key::Id(c.id), id).await?;
    let mut all = Vec::new();
    while let Some(chunk) = reader.next_chunk().await? {
        all.extend_from_slice(&chunk);
    }
    Ok(all)
}

async fn a_snapshot_is_stored_sealed_and_read_back_whole(db: TestDb) {
    let t = tenant(&db, "acme").await;
    let (c, node) = ready_cluster(&db, t, "c1").await;
    let asked = db
        .request_snapshot(t, &Key::Id(c.id), SnapshotTrigger::Manual, &actor())
        .await
        .unwrap();
    assert_eq!(asked.state, SnapshotState::Requested);
    assert_eq!(asked.kubernetes_version, c.kubernetes_version);
    let jobs = db.requested_snapshots().await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!((jobs[0].id, jobs[0].cluster), (asked.id, c.id));
    assert!(db.start_snapshot(asked.id, &node).await.unwrap());
    assert!(
        !db.start_snapshot(asked.id, &node).await.unwrap(),
        "given once"
    );

    // Another node of the tenant cannot upload it; its own node can, in pieces of any size.
    let other = pool_node(&db, t, "other", &[]).await;
    assert!(matches!(
        db.snapshot_upload(t, other.id, asked.id).await.err(),
        Some(StoreError::NotFound { .. })
    ));
    let bytes = content(2 * CHUNK_BYTES + 12345);
    // A first try still streaming when a second begins (the agent tried again) cannot
    // finish; the chunk it stored is left for the prune to clear.
    let mut first = db.snapshot_upload(t, node.id, asked.id).await.unwrap();
    first.write(&bytes[..CHUNK_BYTES + 10]).await.unwrap();
    first
        .write(&bytes[CHUNK_BYTES + 10..2 * CHUNK_BYTES + 1])
        .await
        .unwrap();
    let mut upload = db.snapshot_upload(t, node.id, asked.id).await.unwrap();
    first.write(&bytes[2 * CHUNK_BYTES + 1..]).await.unwrap();
    let overtaken = first.finish(&sha256(&bytes), 7).await;
    assert!(
        matches!(overtaken, Err(StoreError::SnapshotRefused(_))),
        "{overtaken:?}"
    );
    // A damaged upload is refused, and nothing is marked done.
    upload.write(&bytes[..100]).await.unwrap();
    let refused = upload.finish(&sha256(&bytes), 7).await;
    assert!(
        matches!(refused, Err(StoreError::Invalid(_))),
        "{refused:?}"
    );
    let mut upload = db.snapshot_upload(t, node.id, asked.id).await.unwrap();
    for piece in bytes.chunks(300_000) {
        upload.write(piece).await.unwrap();
    }
    let done = upload.finish(&sha256(&bytes), 42).await.unwrap();
    assert_eq!(done.state, SnapshotState::Done);
    assert_eq!(done.size, Some(bytes.len() as u64));
    assert_eq!(done.revision, Some(42));
    assert_eq!(done.node.as_ref().map(|n| n.as_str()), Some("c1-n1"));
    assert_eq!(read_all(&db, t, &c, done.id).await.unwrap(), bytes);
    assert_eq!(
        db.snapshots(t, &Key::Id(c.id)).await.unwrap(),
        vec![done.clone()]
    );

    // At rest the chunks hold no plain byte run of the content, and the key is sealed.
    let raw = db.raw().await;
    // The overtaken try's chunk goes with the prune; the finished upload's three stay.
    let count = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM etcd_snapshot_chunks WHERE snapshot_id = $1",
        )
        .bind(done.id as i64)
        .fetch_one(&raw)
        .await
        .unwrap()
    };
    assert_eq!(count().await, 4);
    db.prune_snapshots().await.unwrap();
    assert_eq!(count().await, 3);
    let chunks: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT data FROM etcd_snapshot_chunks WHERE snapshot_id = $1 ORDER BY seq",
    )
    .bind(done.id as i64)
    .fetch_all(&raw)
    .await
    .unwrap();
    assert_eq!(chunks.len(), 3);
    assert!(
        chunks
            .iter()
            .all(|chunk| !chunk.windows(64).any(|w| w == &bytes[4096..4160]))
    );
    let key: String = sqlx::query_scalar("SELECT data_key FROM etcd_snapshots WHERE id = $1")
        .bind(done.id as i64)
        .fetch_one(&raw)
        .await
        .unwrap();
    assert!(key.starts_with("qb-sealed-v1:"), "{key}");

    // Swapped chunks, or a cut-off end (even with the count made to match), do not read back;
    // put back as they were, they do.
    let swap = [
        "UPDATE etcd_snapshot_chunks SET seq = 100 WHERE snapshot_id = $1 AND seq = 0",
        "UPDATE etcd_snapshot_chunks SET seq = 0 WHERE snapshot_id = $1 AND seq = 1",
        "UPDATE etcd_snapshot_chunks SET seq = 1 WHERE snapshot_id = $1 AND seq = 100",
    ];
    let cases: [(&[&str], &[&str]); 2] = [
        (&swap, &swap),
        (
            &[
                "UPDATE etcd_snapshot_chunks SET seq = 100 WHERE snapshot_id = $1 AND seq = 2",
                "UPDATE etcd_snapshots SET chunks = 2 WHERE id = $1",
            ],
            &[
                "UPDATE etcd_snapshot_chunks SET seq = 2 WHERE snapshot_id = $1 AND seq = 100",
                "UPDATE etcd_snapshots SET chunks = 3 WHERE id = $1",
            ],
        ),
    ];
    for (damage, undo) in cases {
        for sql in damage {
            sqlx::query(sql)
                .bind(done.id as i64)
                .execute(&raw)
                .await
                .unwrap();
        }
        let read = read_all(&db, t, &c, done.id).await;
        assert!(
            matches!(read, Err(StoreError::Corrupt { .. })),
            "{damage:?}: {read:?}"
        );
        for sql in undo {
            sqlx::query(sql)
                .bind(done.id as i64)
                .execute(&raw)
                .await
                .unwrap();
        }
        assert_eq!(read_all(&db, t, &c, done.id).await.unwrap(), bytes);
    }

    let events = actions(&events_with_action(&db, t, "cluster.snapshot").await)
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert_eq!(
        events,
        ["cluster.snapshot_requested", "cluster.snapshot_taken"]
    );
    db.delete_snapshot(t, &Key::Id(c.id), done.id, &actor())
        .await
        .unwrap();
    assert!(db.snapshots(t, &Key::Id(c.id)).await.unwrap().is_empty());
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM etcd_snapshot_chunks")
        .fetch_one(&raw)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

async fn snapshots_are_refused_when_they_cannot_be_taken(db: TestDb) {
    let t = tenant(&db, "acme").await;
    let fresh = cluster(&db, t, "fresh").await;
    let refused = db
        .request_snapshot(t, &Key::Id(fresh.id), SnapshotTrigger::Manual, &actor())
        .await;
    assert!(
        matches!(refused, Err(StoreError::SnapshotRefused(_))),
        "{refused:?}"
    );

    let (c, node) = ready_cluster(&db, t, "c1").await;
    let first = db
        .request_snapshot(t, &Key::Id(c.id), SnapshotTrigger::Manual, &actor())
        .await
        .unwrap();
    let twice = db
        .request_snapshot(t, &Key::Id(c.id), SnapshotTrigger::Manual, &actor())
        .await;
    assert!(
        matches!(twice, Err(StoreError::SnapshotRefused(_))),
        "{twice:?}"
    );
    // Not readable before it is done; not deletable while taken.
    assert!(matches!(
        db.snapshot_reader(t, &Key::Id(c.id), first.id).await.err(),
        Some(StoreError::SnapshotRefused(_))
    ));
    assert!(db.start_snapshot(first.id, &node).await.unwrap());
    assert!(matches!(
        db.delete_snapshot(t, &Key::Id(c.id), first.id, &actor())
            .await,
        Err(StoreError::SnapshotRefused(_))
    ));
    db.fail_snapshot(first.id, "etcd did not answer")
        .await
        .unwrap();
    let failed = db.snapshot(t, &Key::Id(c.id), first.id).await.unwrap();
    assert_eq!(failed.state, SnapshotState::Failed);
    assert_eq!(failed.error.as_deref(), Some("etcd did not answer"));
    // An upload after it failed is refused.
    assert!(matches!(
        db.snapshot_upload(t, node.id, first.id).await.err(),
        Some(StoreError::SnapshotRefused(_))
    ));
    // Another tenant sees none of it.
    let other = tenant(&db, "other").await;
    assert!(matches!(
        db.snapshot(other, &Key::Id(c.id), first.id).await,
        Err(StoreError::NotFound { .. })
    ));
    // A snapshot schedule outside its bounds changes nothing.
    for bad in [
        UpdateCluster {
            snapshot_interval_minutes: Some(qb_store::MAX_SNAPSHOT_INTERVAL + 1),
            ..UpdateCluster::default()
        },
        UpdateCluster {
            snapshot_retention: Some(0),
            taint_masters: Some(true),
            ..UpdateCluster::default()
        },
    ] {
        let refused = db
            .change_cluster_settings(t, &Key::Id(c.id), &bad, &actor())
            .await;
        assert!(
            matches!(refused, Err(StoreError::Invalid(_))),
            "{refused:?}"
        );
    }
    let kept = cluster_detail(&db, t, c.id).await.cluster;
    assert_eq!(
        (
            kept.snapshot_interval_minutes,
            kept.snapshot_retention,
            kept.taint_masters
        ),
        (720, 5, false)
    );
}

async fn scheduled_snapshots_come_due_and_the_oldest_go(db: TestDb) {
    let t = tenant(&db, "acme").await;
    let (c, node) = ready_cluster(&db, t, "c1").await;
    let _not_ready = cluster(&db, t, "idle").await;
    let change = UpdateCluster {
        snapshot_interval_minutes: Some(0),
        ..UpdateCluster::default()
    };
    db.change_cluster_settings(t, &Key::Id(c.id), &change, &actor())
        .await
        .unwrap();
    assert_eq!(db.request_due_snapshots().await.unwrap(), 0, "no schedule");
    let change = UpdateCluster {
        snapshot_interval_minutes: Some(1),
        snapshot_retention: Some(2),
        ..UpdateCluster::default()
    };
    let changed = db
        .change_cluster_settings(t, &Key::Id(c.id), &change, &actor())
        .await
        .unwrap();
    assert_eq!(
        (
            changed.snapshot_interval_minutes,
            changed.snapshot_retention
        ),
        (1, 2)
    );
    // Not due before the cluster is an interval old.
    assert_eq!(
        db.request_due_snapshots().await.unwrap(),
        0,
        "a new cluster"
    );
    sqlx::query("UPDATE clusters SET created_at = created_at - 60001")
        .execute(&db.raw().await)
        .await
        .unwrap();
    // Three scheduled snapshots, each due once the last was asked for a minute ago (moved
    // back in time here).
    let bytes = content(1000);
    for round in 0..3 {
        assert_eq!(
            db.request_due_snapshots().await.unwrap(),
            1,
            "round {round}"
        );
        assert_eq!(
            db.request_due_snapshots().await.unwrap(),
            0,
            "one at a time"
        );
        let job = db.requested_snapshots().await.unwrap().remove(0);
        assert!(db.start_snapshot(job.id, &node).await.unwrap());
        let mut upload = db.snapshot_upload(t, node.id, job.id).await.unwrap();
        upload.write(&bytes).await.unwrap();
        upload.finish(&sha256(&bytes), round).await.unwrap();
        assert_eq!(db.request_due_snapshots().await.unwrap(), 0, "not due yet");
        sqlx::query("UPDATE etcd_snapshots SET requested_at = requested_at - 60001")
            .execute(&db.raw().await)
            .await
            .unwrap();
    }
    // A manual one is never pruned.
    db.request_due_snapshots().await.unwrap();
    let job = db.requested_snapshots().await.unwrap().remove(0);
    db.fail_snapshot(job.id, "gone").await.unwrap();
    let manual = db
        .request_snapshot(t, &Key::Id(c.id), SnapshotTrigger::Manual, &actor())
        .await
        .unwrap();
    assert_eq!(db.prune_snapshots().await.unwrap(), 1);
    let left: Vec<_> = db
        .snapshots(t, &Key::Id(c.id))
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.trigger, s.state, s.revision))
        .collect();
    assert_eq!(
        left,
        [
            (SnapshotTrigger::Manual, SnapshotState::Requested, None),
            (SnapshotTrigger::Scheduled, SnapshotState::Failed, None),
            (SnapshotTrigger::Scheduled, SnapshotState::Done, Some(2)),
            (SnapshotTrigger::Scheduled, SnapshotState::Done, Some(1)),
        ]
    );
    // Deleting the cluster takes its snapshots along.
    db.fail_snapshot(manual.id, "x").await.unwrap();
    detach_nodes(&db, t, c.id, &["c1-n1"]).await;
    db.delete_cluster(t, &Key::Id(c.id), true, &actor())
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM etcd_snapshots")
        .fetch_one(&db.raw().await)
        .await
        .unwrap();
    assert_eq!(left, 0);
}
