//! Threshold rules: made, listed and removed per tenant, checked first; and each host's lowest
//! figures over its recent minutes, which the rules are held against.

use qb_api::{AlertSeverity, CreateThresholdRule, HostMetric, MetricsPoint};
use qb_store::StoreError;
use time::{Duration, OffsetDateTime};

use crate::{TestDb, actor, pending_node, tenant};

on_both_backends!(threshold_rules_and_the_lows_they_read);

fn point(at: OffsetDateTime, cpu: f64, memory_used: u64, load1: f64) -> MetricsPoint {
    MetricsPoint {
        at,
        samples: 6,
        cpu_percent: cpu,
        cpu_percent_max: cpu,
        load1,
        memory_used_bytes: memory_used,
        memory_total_bytes: 8 << 30,
        disk_used_bytes: 25 << 30,
        disk_total_bytes: 100 << 30,
    }
}

async fn threshold_rules_and_the_lows_they_read(db: TestDb) {
    let (a, b) = (tenant(&db, "acme").await, tenant(&db, "other").await);
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let busy = CreateThresholdRule {
        name: "busy".parse().unwrap(),
        metric: HostMetric::Cpu,
        above: 90.0,
        for_minutes: 10,
        severity: Some(AlertSeverity::Critical),
    };
    let made = db
        .create_threshold_rule(a, &busy, &actor(), now)
        .await
        .unwrap();
    assert_eq!(
        (made.metric, made.above, made.for_minutes),
        (HostMetric::Cpu, 90.0, 10)
    );
    assert!(matches!(
        db.create_threshold_rule(a, &busy, &actor(), now).await,
        Err(StoreError::NameTaken { .. })
    ));
    let bad = CreateThresholdRule {
        for_minutes: 0,
        ..busy.clone()
    };
    assert!(matches!(
        db.create_threshold_rule(b, &bad, &actor(), now).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(db.list_threshold_rules(a).await.unwrap(), [made]);
    assert!(db.list_threshold_rules(b).await.unwrap().is_empty());

    // n1 busy for three minutes, with one quieter minute before; n2 in the other tenant.
    let n1 = pending_node(&db, a, "n1", &[]).await;
    let n2 = pending_node(&db, b, "n2", &[]).await;
    let minute = |m: i64| now - Duration::minutes(m);
    db.record_node_metrics(&[
        (a, n1.id, point(minute(4), 40.0, 2 << 30, 0.5)),
        (a, n1.id, point(minute(3), 95.0, 4 << 30, 3.0)),
        (a, n1.id, point(minute(2), 97.0, 6 << 30, 2.5)),
        (a, n1.id, point(minute(1), 92.0, 4 << 30, 4.0)),
        (b, n2.id, point(minute(1), 10.0, 1 << 30, 0.1)),
    ])
    .await
    .unwrap();
    let last3 = db.metric_lows(a, minute(3)).await.unwrap();
    let lows = last3[&n1.id];
    assert_eq!(lows.minutes, 3);
    assert_eq!(lows.of(HostMetric::Cpu), 92.0);
    assert_eq!(lows.of(HostMetric::Memory), 50.0);
    assert_eq!(lows.of(HostMetric::Disk), 25.0);
    assert_eq!(lows.of(HostMetric::Load), 2.5);
    assert_eq!(last3.len(), 1, "only the tenant's hosts");
    let last4 = db.metric_lows(a, minute(4)).await.unwrap();
    assert_eq!(
        (last4[&n1.id].minutes, last4[&n1.id].cpu_percent),
        (4, 40.0)
    );

    db.delete_threshold_rule(a, &"busy".parse().unwrap(), &actor())
        .await
        .unwrap();
    assert!(matches!(
        db.delete_threshold_rule(a, &"busy".parse().unwrap(), &actor())
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(db.list_threshold_rules(a).await.unwrap().is_empty());
}
