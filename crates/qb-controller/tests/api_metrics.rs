//! Host metrics through the API: a node's last report and history, and `/metrics` scraped by a
//! real Prometheus (Debian's), each tenant seeing only its own nodes.

use axum::http::{Method, StatusCode, header};
use qb_api::{MetricsPoint, NodeId};
use qb_controller::agents::metrics::sample;
use qb_test_support::prometheus::Prometheus;
use time::OffsetDateTime;

use crate::support::{App, bearer, json_request, on_both_stores};

on_both_stores!(a_nodes_metrics_are_its_last_report_and_its_history);

/// What an agent's heartbeat says of its host.
fn heartbeat(cpu: f32) -> qb_agent_proto::HostMetrics {
    qb_agent_proto::HostMetrics {
        cpu_percent: cpu,
        load1: 0.5,
        load5: 0.25,
        load15: 0.125,
        memory_total_bytes: 8 << 30,
        memory_available_bytes: 6 << 30,
        disk_total_bytes: 100 << 30,
        disk_available_bytes: 40 << 30,
        uptime_seconds: 3600,
        etcd: Some(qb_agent_proto::EtcdMetrics {
            has_leader: true,
            is_leader: true,
            db_size_bytes: 20 << 20,
            db_in_use_bytes: 12 << 20,
            leader_changes: 1,
        }),
    }
}

async fn node_id(app: &App, tenant: qb_api::TenantId, name: &str) -> NodeId {
    app.store
        .get_node(tenant, &qb_store::Key::Name(name.to_owned()))
        .await
        .unwrap()
        .id
}

async fn a_nodes_metrics_are_its_last_report_and_its_history(store: qb_store::Store) {
    let app = App::new(store).await;
    let (a, b) = (app.tenant("a").await, app.tenant("b").await);
    app.pool(&a, "a", 1).await;
    app.pool(&b, "b", 1).await;
    let a0 = node_id(&app, a.id, "a-0").await;
    let now = OffsetDateTime::now_utc();
    app.state
        .agents
        .metrics()
        .record(a.id, a0, sample(&heartbeat(42.0), now));
    let minute = now
        .replace_second(0)
        .unwrap()
        .replace_nanosecond(0)
        .unwrap()
        - time::Duration::MINUTE;
    let point = MetricsPoint {
        at: minute,
        samples: 6,
        cpu_percent: 40.0,
        cpu_percent_max: 55.0,
        load1: 0.5,
        memory_used_bytes: 2 << 30,
        memory_total_bytes: 8 << 30,
        disk_used_bytes: 60 << 30,
        disk_total_bytes: 100 << 30,
    };
    app.store
        .record_node_metrics(&[(a.id, a0, point.clone())])
        .await
        .unwrap();

    let (status, metrics) = app.get(&a.viewer, "/api/v1/nodes/a-0/metrics").await;
    assert_eq!(status, StatusCode::OK, "{metrics}");
    assert_eq!(metrics["range"], "1h");
    assert_eq!(metrics["resolution_seconds"], 60);
    assert_eq!(metrics["latest"]["cpu_percent"], 42.0);
    assert_eq!(metrics["latest"]["memory_available_bytes"], 6u64 << 30);
    assert_eq!(
        metrics["latest"]["etcd"],
        serde_json::json!({"has_leader": true, "is_leader": true, "db_size_bytes": 20u64 << 20,
               "db_in_use_bytes": 12u64 << 20, "leader_changes": 1})
    );
    let points: Vec<MetricsPoint> = serde_json::from_value(metrics["points"].clone()).unwrap();
    assert_eq!(points, [point]);
    let (_, month) = app
        .get(&a.viewer, "/api/v1/nodes/a-0/metrics?range=30d")
        .await;
    assert_eq!(month["resolution_seconds"], 3600);
    assert_eq!(month["points"], serde_json::json!([]), "not rolled up yet");
    let (status, problem) = app
        .get(&a.viewer, "/api/v1/nodes/a-0/metrics?range=2h")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    // Another tenant's node is not there for B.
    let (status, _) = app.get(&b.admin, "/api/v1/nodes/a-0/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A request through the Kubernetes API proxy to a cluster no API server of which answers
    // (it has no nodes) counts as failed.
    let (status, _) = app
        .post(
            &a.operator,
            "/api/v1/clusters",
            serde_json::json!({"name": "c1"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (head, _) = app
        .respond(json_request(
            bearer(&a.viewer, Method::GET, "/k8s/clusters/c1/api"),
            None,
        ))
        .await;
    assert!(head.status.is_server_error(), "{:?}", head.status);

    // /metrics: the caller's tenant only, and only with a token.
    let b0 = node_id(&app, b.id, "b-0").await;
    app.state
        .agents
        .metrics()
        .record(b.id, b0, sample(&heartbeat(7.0), now));
    let (head, body) = app
        .respond(json_request(
            bearer(&a.viewer, Method::GET, "/metrics"),
            None,
        ))
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(
        head.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        text.contains("qb_node_cpu_percent{node=\"a-0\",cluster=\"\"} 42\n"),
        "{text}"
    );
    assert!(
        text.contains("qb_node_state{node=\"a-0\",cluster=\"\",state=\"authorized\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("qb_etcd_has_leader{node=\"a-0\",cluster=\"\"} 1\n")
            && text.contains("qb_etcd_db_size_bytes{node=\"a-0\",cluster=\"\"} 20971520\n"),
        "{text}"
    );
    assert!(!text.contains("b-0"), "{text}");
    assert!(
        text.contains("qb_cluster_state{cluster=\"c1\",state=\"empty\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("qb_proxy_requests_total{cluster=\"c1\",outcome=\"failed\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("qb_proxy_requests_total{cluster=\"c1\",outcome=\"answered\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE qb_agent_round_trip_seconds histogram\n"),
        "{text}"
    );
    assert!(
        text.contains("qb_agent_round_trip_seconds_bucket{le=\"+Inf\"} 0\n"),
        "{text}"
    );
    let (head, _) = app
        .respond(json_request(bearer("", Method::GET, "/metrics"), None))
        .await;
    assert_eq!(head.status, StatusCode::UNAUTHORIZED);
}

/// Debian's Prometheus scrapes a controller's `/metrics` with a tenant's token and its query API
/// returns a series per node; a scrape with a revoked-looking token is refused (`up` 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_each_nodes_series_with_a_token() {
    let (store, _guard) = crate::support::sqlite_store().await;
    let app = App::new(store).await;
    let a = app.tenant("a").await;
    let names = app.pool(&a, "host", 3).await;
    let now = OffsetDateTime::now_utc();
    for (i, name) in names.iter().enumerate() {
        let id = node_id(&app, a.id, name).await;
        app.state
            .agents
            .metrics()
            .record(a.id, id, sample(&heartbeat(10.0 * (i + 1) as f32), now));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app.router.clone()).into_future());

    let token = a.viewer.clone();
    let prometheus = tokio::task::spawn_blocking(move || {
        Prometheus::start(&format!(
            "  - job_name: qb\n    authorization: {{credentials: \"{token}\"}}\n    \
             static_configs: [{{targets: [\"{addr}\"]}}]\n\
             \x20 - job_name: stranger\n    authorization: {{credentials: \"qbt_not-a-token\"}}\n    \
             static_configs: [{{targets: [\"{addr}\"]}}]\n"
        ))
    })
    .await
    .unwrap()
    .unwrap();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let series = prometheus.query("qb_node_cpu_percent").unwrap();
        let up = prometheus.query("up").unwrap();
        let found: Vec<bool> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                series.contains(&format!("\"node\":\"{n}\""))
                    && series.contains(&format!("\"{}\"]", 10 * (i + 1)))
            })
            .collect();
        let stranger_refused = up.contains("\"job\":\"stranger\"},\"value\":[")
            && up
                .split("\"job\":\"stranger\"")
                .nth(1)
                .is_some_and(|rest| rest.contains(",\"0\"]"));
        if found.iter().all(|f| *f) && stranger_refused {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no series for every node within 30 s:\n{series}\nup: {up}\nlog: {}",
            prometheus.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
