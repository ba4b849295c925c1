//! Notifications: every alert change that is not silenced queues one delivery per channel
//! that wants its severity, in the same transaction; deliveries are due, retried, finished
//! and listed per tenant; a channel's secret never leaves through its listing.

use qb_api::{
    AlertRule, AlertSeverity, AlertState, ChannelKind, CreateChannel, CreateSilence, DeliveryStatus,
};
use qb_store::{DeliveryOutcome, StoreError, WantedAlert};
use time::{Duration, OffsetDateTime};

use crate::{TestDb, actor, tenant};

on_both_backends!(alert_changes_queue_one_delivery_per_channel_and_tenant);

fn wanted(rule: AlertRule, severity: AlertSeverity, node: &str) -> WantedAlert {
    WantedAlert {
        rule,
        severity,
        object_kind: "node",
        object_id: format!("id-{node}"),
        object_name: node.to_owned(),
        summary: format!("{node}: {}", rule.as_str()),
    }
}

fn channel(name: &str, kind: ChannelKind, target: &str, min: AlertSeverity) -> CreateChannel {
    CreateChannel {
        name: name.parse().unwrap(),
        kind,
        target: target.to_owned(),
        min_severity: Some(min),
    }
}

async fn alert_changes_queue_one_delivery_per_channel_and_tenant(db: TestDb) {
    let (a, b) = (tenant(&db, "acme").await, tenant(&db, "other").await);
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let hook = channel(
        "hook",
        ChannelKind::Webhook,
        "https://hooks.example.com/a",
        AlertSeverity::Warning,
    );
    let created = db
        .create_channel(a, &hook, Some("s3cret".into()), &actor(), now)
        .await
        .unwrap();
    assert_eq!(created.target, "https://hooks.example.com/a");
    let pager = channel(
        "pager",
        ChannelKind::Email,
        "oncall@example.com",
        AlertSeverity::Critical,
    );
    db.create_channel(a, &pager, None, &actor(), now)
        .await
        .unwrap();
    // Names are per tenant; a taken one is refused and changes nothing.
    assert!(matches!(
        db.create_channel(a, &hook, None, &actor(), now).await,
        Err(StoreError::NameTaken { .. })
    ));
    db.create_channel(b, &hook, Some("other".into()), &actor(), now)
        .await
        .unwrap();
    let bad = channel(
        "x",
        ChannelKind::Email,
        "not-an-address",
        AlertSeverity::Warning,
    );
    assert!(matches!(
        db.create_channel(a, &bad, None, &actor(), now).await,
        Err(StoreError::Invalid(_))
    ));
    let names: Vec<String> = db
        .list_channels(a)
        .await
        .unwrap()
        .iter()
        .map(|c| c.name.to_string())
        .collect();
    assert_eq!(names, ["hook", "pager"]);

    // A silence covers n3.
    db.create_silence(
        a,
        &CreateSilence {
            rule: None,
            object_name: Some("n3".into()),
            duration_minutes: 60,
            comment: "maintenance".into(),
        },
        &actor(),
        now,
    )
    .await
    .unwrap();
    let critical = wanted(AlertRule::HostOffline, AlertSeverity::Critical, "n1");
    let warning = wanted(AlertRule::DiskFull, AlertSeverity::Warning, "n2");
    let silenced = wanted(AlertRule::HostOffline, AlertSeverity::Critical, "n3");
    db.sync_alerts(a, &[critical.clone(), warning.clone(), silenced], now)
        .await
        .unwrap();
    // The webhook wants both, the pager the critical one only; the silenced alert none; the
    // other tenant's channel nothing.
    let due = db.due_deliveries(now, 100).await.unwrap();
    let mut seen: Vec<(String, String)> = due
        .iter()
        .map(|d| {
            (
                d.channel.channel.name.to_string(),
                d.alert.object_name.clone(),
            )
        })
        .collect();
    seen.sort();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(c, n)| (c.to_string(), n.to_string()))
            .collect()
    };
    assert_eq!(
        seen,
        pairs(&[("hook", "n1"), ("hook", "n2"), ("pager", "n1")])
    );
    assert!(due.iter().all(|d| d.tenant == a && d.attempts == 0));
    let hook_due = due
        .iter()
        .find(|d| d.channel.channel.name.as_str() == "hook")
        .unwrap();
    assert_eq!(hook_due.channel.secret.as_deref(), Some("s3cret"));
    assert!(
        !format!("{hook_due:?}").contains("s3cret"),
        "Debug shows the secret"
    );
    // Nothing is due before its time.
    assert!(
        db.due_deliveries(now - Duration::SECOND, 100)
            .await
            .unwrap()
            .is_empty()
    );

    // The pager's delivery fails once and is retried a minute later, then delivered; the
    // webhook's are refused for good.
    let pager_id = vec![
        due.iter()
            .find(|d| d.channel.channel.name.as_str() == "pager")
            .unwrap()
            .id
            .clone(),
    ];
    let next = now + Duration::MINUTE;
    db.finish_deliveries(
        &pager_id,
        &DeliveryOutcome::Retry {
            error: "connection refused".into(),
            next,
        },
        now,
    )
    .await
    .unwrap();
    let hook_ids: Vec<String> = due
        .iter()
        .filter(|d| d.channel.channel.name.as_str() == "hook")
        .map(|d| d.id.clone())
        .collect();
    db.finish_deliveries(
        &hook_ids,
        &DeliveryOutcome::Failed {
            error: "HTTP 404".into(),
        },
        now,
    )
    .await
    .unwrap();
    assert!(db.due_deliveries(now, 100).await.unwrap().is_empty());
    let retry = db.due_deliveries(next, 100).await.unwrap();
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].attempts, 1);
    db.finish_deliveries(&pager_id, &DeliveryOutcome::Delivered, next)
        .await
        .unwrap();
    // A finished delivery is not finished again.
    db.finish_deliveries(
        &pager_id,
        &DeliveryOutcome::Failed {
            error: "late".into(),
        },
        next,
    )
    .await
    .unwrap();

    let log = db.list_deliveries(a, None, 100).await.unwrap();
    assert_eq!(log.len(), 3);
    let pager_log = db
        .list_deliveries(a, Some(&"pager".parse().unwrap()), 100)
        .await
        .unwrap();
    assert_eq!(pager_log.len(), 1);
    let d = &pager_log[0];
    assert_eq!(
        (d.status, d.attempts, d.transition, d.last_error.as_deref()),
        (
            DeliveryStatus::Delivered,
            2,
            AlertState::Firing,
            Some("connection refused")
        )
    );
    assert_eq!(d.delivered_at, Some(next));
    assert!(
        log.iter()
            .filter(|d| d.channel.as_str() == "hook")
            .all(|d| d.status == DeliveryStatus::Failed && d.attempts == 1)
    );
    assert!(db.list_deliveries(b, None, 100).await.unwrap().is_empty());

    // n1 comes back: one "resolved" per channel that wants it; the delivery of the firing
    // still says firing.
    let later = now + Duration::MINUTE * 2;
    db.sync_alerts(a, &[warning], later).await.unwrap();
    let due = db.due_deliveries(later, 100).await.unwrap();
    let mut seen: Vec<(String, String, AlertState)> = due
        .iter()
        .map(|d| {
            (
                d.channel.channel.name.to_string(),
                d.alert.object_name.clone(),
                d.alert.state,
            )
        })
        .collect();
    seen.sort_by(|x, y| (&x.0, &x.1).cmp(&(&y.0, &y.1)));
    assert_eq!(
        seen,
        [
            ("hook".to_owned(), "n1".to_owned(), AlertState::Resolved),
            ("pager".to_owned(), "n1".to_owned(), AlertState::Resolved),
        ]
    );
    assert!(due.iter().all(|d| d.alert.resolved_at == Some(later)));

    // Deleting a channel drops its queue and log; old finished deliveries are pruned.
    db.delete_channel(a, &"pager".parse().unwrap(), &actor())
        .await
        .unwrap();
    assert!(matches!(
        db.delete_channel(a, &"pager".parse().unwrap(), &actor())
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let due = db.due_deliveries(later, 100).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(
        db.prune_deliveries(later + Duration::SECOND).await.unwrap(),
        2
    );
    assert_eq!(db.list_deliveries(a, None, 100).await.unwrap().len(), 1);
}
