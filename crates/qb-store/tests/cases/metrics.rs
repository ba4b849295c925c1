//! Node metrics history: minute points merged when written twice, rolled up by the hour,
//! pruned by age, kept per tenant, gone with their node.

use qb_api::MetricsPoint;
use qb_store::{HOURS_KEPT, Key, MINUTES_KEPT};
use time::{Duration, OffsetDateTime};

use crate::{TestDb, actor, pending_node, tenant};

on_both_backends!(metrics_merge_roll_up_and_age);

fn point(
    at: OffsetDateTime,
    samples: u32,
    cpu: f64,
    memory_used: u64,
    disk_used: u64,
) -> MetricsPoint {
    MetricsPoint {
        at,
        samples,
        cpu_percent: cpu,
        cpu_percent_max: cpu,
        load1: cpu / 100.0,
        memory_used_bytes: memory_used,
        memory_total_bytes: 8 << 30,
        disk_used_bytes: disk_used,
        disk_total_bytes: 100 << 30,
    }
}

async fn metrics_merge_roll_up_and_age(db: TestDb) {
    let (a, b) = (tenant(&db, "acme").await, tenant(&db, "other").await);
    let n1 = pending_node(&db, a, "n1", &[]).await;
    let n2 = pending_node(&db, b, "n2", &[]).await;
    // Whole hours, so the minutes of the last hour roll up into one point.
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let hour = now.replace_minute(0).unwrap().replace_second(0).unwrap() - Duration::HOUR;
    let minute = |m: i64| hour + Duration::minutes(m);

    db.record_node_metrics(&[
        (a, n1.id, point(minute(0), 6, 10.0, 1 << 30, 10 << 30)),
        (a, n1.id, point(minute(1), 6, 30.0, 3 << 30, 12 << 30)),
        (b, n2.id, point(minute(0), 6, 90.0, 5 << 30, 50 << 30)),
    ])
    .await
    .unwrap();
    // The same minute again (a controller restarted mid-minute): weighted, peaks kept.
    db.record_node_metrics(&[(a, n1.id, point(minute(1), 2, 70.0, 7 << 30, 11 << 30))])
        .await
        .unwrap();
    let minutes = db.node_metrics(a, n1.id, 60, hour).await.unwrap();
    assert_eq!(minutes.len(), 2, "{minutes:?}");
    assert_eq!(minutes[0], point(minute(0), 6, 10.0, 1 << 30, 10 << 30));
    let merged = &minutes[1];
    assert_eq!((merged.at, merged.samples), (minute(1), 8));
    assert!((merged.cpu_percent - 40.0).abs() < 1e-9, "{merged:?}");
    assert_eq!(merged.cpu_percent_max, 70.0);
    assert_eq!(merged.memory_used_bytes, 4 << 30);
    assert_eq!(merged.disk_used_bytes, 12 << 30);

    // The newest minute's disk use of each node, of the tenant's nodes only.
    let disks = db.recent_disk_use(a, hour).await.unwrap();
    assert_eq!(
        disks,
        [(n1.id, (12 << 30, 100 << 30))].into_iter().collect()
    );
    assert!(
        db.recent_disk_use(a, now + Duration::MINUTE)
            .await
            .unwrap()
            .is_empty()
    );

    // Another tenant's node is not found under this one.
    assert!(
        db.node_metrics(a, n2.id, 60, hour)
            .await
            .unwrap()
            .is_empty()
    );

    // The hour: the minutes summed, done twice with the same result.
    for _ in 0..2 {
        db.roll_up_node_metrics(hour, now).await.unwrap();
    }
    let hours = db.node_metrics(a, n1.id, 3600, hour).await.unwrap();
    assert_eq!(hours.len(), 1, "{hours:?}");
    let h = &hours[0];
    assert_eq!((h.at, h.samples), (hour, 14));
    // (6 x 10 + 8 x 40) / 14
    assert!((h.cpu_percent - 380.0 / 14.0).abs() < 1e-9, "{h:?}");
    assert_eq!((h.cpu_percent_max, h.disk_used_bytes), (70.0, 12 << 30));
    assert_eq!(
        db.node_metrics(b, n2.id, 3600, hour).await.unwrap()[0].samples,
        6
    );

    // Past their age, points go: minutes after a day, hours after 30 days.
    db.roll_up_node_metrics(hour, now + MINUTES_KEPT + Duration::HOUR)
        .await
        .unwrap();
    assert!(
        db.node_metrics(a, n1.id, 60, hour)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        db.node_metrics(a, n1.id, 3600, hour).await.unwrap().len(),
        1
    );
    db.roll_up_node_metrics(hour - HOURS_KEPT, now + HOURS_KEPT + Duration::HOUR)
        .await
        .unwrap();
    assert!(
        db.node_metrics(a, n1.id, 3600, hour)
            .await
            .unwrap()
            .is_empty()
    );

    // A deleted node's points go with it.
    db.record_node_metrics(&[(b, n2.id, point(now, 1, 5.0, 1, 1))])
        .await
        .unwrap();
    db.delete_node(b, &Key::Id(n2.id), &actor()).await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM node_metrics")
        .fetch_one(&db.raw().await)
        .await
        .unwrap();
    assert_eq!(left, 0);
}
