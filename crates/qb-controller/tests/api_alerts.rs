//! Alerts and silences through the API: listed per tenant, silences made and ended by
//! operators only, bad input refused with nothing changed.

use axum::http::StatusCode;
use qb_api::{AlertRule, AlertSeverity};
use qb_store::{Store, WantedAlert};
use serde_json::json;
use time::OffsetDateTime;

use crate::support::{App, on_both_stores};

on_both_stores!(
    alerts_are_listed_and_silences_made_per_tenant,
    threshold_rules_are_made_by_operators_and_fire_on_hosts_above_them
);

async fn alerts_are_listed_and_silences_made_per_tenant(store: Store) {
    let app = App::new(store).await;
    let (a, b) = (app.tenant("a").await, app.tenant("b").await);
    let offline = WantedAlert {
        rule: AlertRule::HostOffline,
        severity: AlertSeverity::Critical,
        object_kind: "node",
        object_id: "n1-id".into(),
        object_name: "n1".into(),
        summary: "the agent of n1 (in cluster web) is offline".into(),
    };
    let now = OffsetDateTime::now_utc();
    app.store.sync_alerts(a.id, &[offline], now).await.unwrap();
    app.store.sync_alerts(a.id, &[], now).await.unwrap();
    let disk = WantedAlert {
        rule: AlertRule::DiskFull,
        severity: AlertSeverity::Warning,
        object_kind: "node",
        object_id: "n2-id".into(),
        object_name: "n2".into(),
        summary: "the disk of n2's agent state is 95 % full".into(),
    };
    app.store.sync_alerts(a.id, &[disk], now).await.unwrap();

    let (status, firing) = app.get(&a.viewer, "/api/v1/alerts").await;
    assert_eq!(status, StatusCode::OK, "{firing}");
    assert_eq!(firing.as_array().unwrap().len(), 1, "{firing}");
    assert_eq!(firing[0]["rule"], "disk_full");
    assert_eq!(firing[0]["state"], "firing");
    let (_, all) = app.get(&a.viewer, "/api/v1/alerts?state=all").await;
    let rules: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["disk_full", "host_offline"], "newest first");
    let (_, resolved) = app.get(&a.viewer, "/api/v1/alerts?state=resolved").await;
    assert_eq!(resolved[0]["object_name"], "n1");
    assert!(resolved[0]["resolved_at"].is_string());
    let (status, _) = app.get(&a.viewer, "/api/v1/alerts?state=loud").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, others) = app.get(&b.admin, "/api/v1/alerts?state=all").await;
    assert_eq!(others, json!([]));

    // Silences: operators make and end them; a viewer may only look.
    let silence = json!({"rule": "disk_full", "object_name": "n2", "duration_minutes": 120,
                         "comment": "moving data off n2"});
    let (status, _) = app
        .post(&a.viewer, "/api/v1/silences", silence.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for bad in [
        json!({"duration_minutes": 60, "comment": "all of it"}),
        json!({"rule": "disk_full", "duration_minutes": 0, "comment": "x"}),
        json!({"rule": "disk_full", "duration_minutes": 60, "comment": "  "}),
        json!({"rule": "loud", "duration_minutes": 60, "comment": "x"}),
    ] {
        let (status, problem) = app.post(&a.operator, "/api/v1/silences", bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {problem}");
    }
    let (status, made) = app.post(&a.operator, "/api/v1/silences", silence).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!(made["created_by"], "user:op");
    let (_, listed) = app.get(&a.viewer, "/api/v1/silences").await;
    assert_eq!(listed, json!([made.clone()]));
    let (_, none) = app.get(&b.admin, "/api/v1/silences").await;
    assert_eq!(none, json!([]));
    let path = format!("/api/v1/silences/{}", made["id"].as_str().unwrap());
    assert_eq!(app.delete(&b.admin, &path).await.0, StatusCode::NOT_FOUND);
    assert_eq!(app.delete(&a.viewer, &path).await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        app.delete(&a.operator, &path).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.delete(&a.operator, &path).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, listed) = app.get(&a.viewer, "/api/v1/silences").await;
    assert_eq!(listed, json!([]));
}

async fn threshold_rules_are_made_by_operators_and_fire_on_hosts_above_them(store: Store) {
    let app = App::new(store).await;
    let (a, b) = (app.tenant("a").await, app.tenant("b").await);
    let hot = json!({"name": "hot", "metric": "cpu", "above": 90, "for_minutes": 3,
                     "severity": "critical"});
    let (status, _) = app
        .post(&a.viewer, "/api/v1/alert-rules", hot.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for bad in [
        json!({"name": "x", "metric": "swap", "above": 1, "for_minutes": 3}),
        json!({"name": "x", "metric": "cpu", "above": 100, "for_minutes": 3}),
        json!({"name": "x", "metric": "cpu", "above": 50, "for_minutes": 0}),
        json!({"name": "x", "metric": "cpu", "above": 50}),
    ] {
        let (status, problem) = app
            .post(&a.operator, "/api/v1/alert-rules", bad.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {problem}");
    }
    let (status, made) = app
        .post(&a.operator, "/api/v1/alert-rules", hot.clone())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let (status, _) = app.post(&a.operator, "/api/v1/alert-rules", hot).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, listed) = app.get(&a.viewer, "/api/v1/alert-rules").await;
    assert_eq!(listed, json!([made]));
    let (_, none) = app.get(&b.viewer, "/api/v1/alert-rules").await;
    assert_eq!(none, json!([]));

    // a's host at 95 % for four minutes, b's as busy: only a's rule sees only a's host.
    let busy = |tenant, node: &str| {
        let store = app.store.clone();
        let node = node.to_owned();
        async move {
            let id = store
                .get_node(tenant, &qb_store::Key::parse(&node))
                .await
                .unwrap()
                .id;
            let now = OffsetDateTime::now_utc();
            let points: Vec<_> = (1..=4)
                .map(|m| {
                    (
                        tenant,
                        id,
                        qb_api::MetricsPoint {
                            at: now - time::Duration::minutes(m),
                            samples: 6,
                            cpu_percent: 95.0,
                            cpu_percent_max: 99.0,
                            load1: 1.0,
                            memory_used_bytes: 1 << 30,
                            memory_total_bytes: 4 << 30,
                            disk_used_bytes: 1 << 30,
                            disk_total_bytes: 10 << 30,
                        },
                    )
                })
                .collect();
            store.record_node_metrics(&points).await.unwrap();
        }
    };
    app.pending_nodes(a.id, "a", 1).await;
    app.pending_nodes(b.id, "b", 1).await;
    busy(a.id, "a-0").await;
    busy(b.id, "b-0").await;
    let workloads = qb_controller::workloads::Workloads::default();
    let certs = qb_controller::alerts::CertScan::default();
    qb_controller::alerts::evaluate(&app.store, &app.state.agents, &workloads, &certs)
        .await
        .unwrap();
    let (_, firing) = app.get(&a.viewer, "/api/v1/alerts").await;
    let threshold: Vec<&serde_json::Value> = firing
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["rule"] == "host_threshold")
        .collect();
    assert_eq!(threshold.len(), 1, "{firing}");
    assert_eq!(threshold[0]["object_name"], "a-0");
    assert_eq!(threshold[0]["severity"], "critical");
    assert_eq!(
        threshold[0]["summary"],
        "cpu of a-0 above 90 % for 3 minutes (rule hot; lowest 95.0 %)"
    );
    let (_, others) = app.get(&b.viewer, "/api/v1/alerts").await;
    assert!(!others.to_string().contains("host_threshold"), "{others}");

    // The rule removed: its alert resolves.
    assert_eq!(
        app.delete(&a.operator, "/api/v1/alert-rules/hot").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.delete(&a.operator, "/api/v1/alert-rules/hot").await.0,
        StatusCode::NOT_FOUND
    );
    qb_controller::alerts::evaluate(&app.store, &app.state.agents, &workloads, &certs)
        .await
        .unwrap();
    let (_, firing) = app.get(&a.viewer, "/api/v1/alerts").await;
    assert!(!firing.to_string().contains("host_threshold"), "{firing}");
}
