//! Alerts: fired once per rule and object, resolved when no longer wanted, silenced by what
//! covers them, every change in the audit trail, per tenant.

use qb_api::{AlertRule, AlertSeverity, AlertState, CreateSilence};
use qb_store::{Actor, EventFilter, StoreError, WantedAlert};
use time::{Duration, OffsetDateTime};

use crate::{TestDb, actor, tenant};

on_both_backends!(alerts_fire_once_resolve_and_are_silenced);

fn offline(node: &str) -> WantedAlert {
    WantedAlert {
        rule: AlertRule::HostOffline,
        severity: AlertSeverity::Critical,
        object_kind: "node",
        object_id: format!("id-{node}"),
        object_name: node.to_owned(),
        summary: format!("{node}'s agent is offline"),
    }
}

async fn alerts_fire_once_resolve_and_are_silenced(db: TestDb) {
    let (a, b) = (tenant(&db, "acme").await, tenant(&db, "other").await);
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();

    // A silence of host_offline on n2, an hour long.
    let silence = db
        .create_silence(
            a,
            &CreateSilence {
                rule: Some(AlertRule::HostOffline),
                object_name: Some("n2".into()),
                duration_minutes: 60,
                comment: "rack work".into(),
            },
            &actor(),
            now,
        )
        .await
        .unwrap();
    assert_eq!(silence.ends_at, now + Duration::HOUR);
    let bad = CreateSilence {
        rule: None,
        object_name: None,
        duration_minutes: 60,
        comment: "everything".into(),
    };
    assert!(matches!(
        db.create_silence(a, &bad, &actor(), now).await,
        Err(StoreError::Invalid(_))
    ));

    let fired = db
        .sync_alerts(a, &[offline("n1"), offline("n2")], now)
        .await
        .unwrap();
    assert_eq!(fired.fired.len(), 2);
    assert!(fired.resolved.is_empty());
    let silenced: Vec<(String, bool)> = fired
        .fired
        .iter()
        .map(|x| (x.object_name.clone(), x.silenced))
        .collect();
    assert_eq!(
        silenced,
        [("n1".to_owned(), false), ("n2".to_owned(), true)]
    );
    // The same again changes nothing: one firing alert per rule and object.
    let again = db
        .sync_alerts(a, &[offline("n1"), offline("n2")], now)
        .await
        .unwrap();
    assert_eq!(again, Default::default());
    assert_eq!(
        db.list_alerts(a, Some(AlertState::Firing), 100)
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(
        db.list_alerts(b, None, 100).await.unwrap().is_empty(),
        "another tenant's"
    );

    // n1 back: resolved; n2 still firing.
    let later = now + Duration::minutes(5);
    let changes = db.sync_alerts(a, &[offline("n2")], later).await.unwrap();
    assert!(changes.fired.is_empty());
    assert_eq!(changes.resolved.len(), 1);
    let resolved = &changes.resolved[0];
    assert_eq!(
        (
            resolved.object_name.as_str(),
            resolved.state,
            resolved.resolved_at
        ),
        ("n1", AlertState::Resolved, Some(later))
    );
    let all = db.list_alerts(a, None, 100).await.unwrap();
    assert_eq!(all.len(), 2);
    let stored = all.iter().find(|x| x.id == resolved.id).unwrap();
    assert_eq!(stored, resolved);
    // n1 offline again: a new alert, the old one stays resolved.
    let third = db
        .sync_alerts(a, &[offline("n1"), offline("n2")], later)
        .await
        .unwrap();
    assert_eq!(third.fired.len(), 1);
    assert_ne!(third.fired[0].id, resolved.id);
    assert_eq!(db.list_alerts(a, None, 100).await.unwrap().len(), 3);

    let events = db
        .list_events(
            a,
            &EventFilter {
                object_kind: Some("alert".into()),
                ..Default::default()
            },
            None,
            100,
        )
        .await
        .unwrap();
    let actions: Vec<&str> = events.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "alert.fired",
            "alert.fired",
            "alert.resolved",
            "alert.fired"
        ]
    );
    assert!(
        events
            .items
            .iter()
            .all(|e| e.actor == Actor::controller().0)
    );

    // Silences: listed until they end; deleted by id; another tenant's is not found.
    assert_eq!(
        db.list_silences(a, now).await.unwrap(),
        std::slice::from_ref(&silence)
    );
    assert!(
        db.list_silences(a, now + Duration::HOUR)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        db.delete_silence(b, &silence.id, &actor()).await,
        Err(StoreError::NotFound { .. })
    ));
    db.delete_silence(a, &silence.id, &actor()).await.unwrap();
    assert!(db.list_silences(a, now).await.unwrap().is_empty());
    assert_eq!(db.tenants_with_objects().await.unwrap(), [a]);
}
