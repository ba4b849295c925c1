//! The Kubernetes API proxy's own answers, before any cluster is reached.

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use qb_store::Store;
use serde_json::{Value, json};

use crate::support::{App, bearer, json_request, on_both_stores};

on_both_stores!(
    proxy_refuses_a_revoked_token_within_a_second,
    writes_through_the_proxy_are_in_the_audit_trail,
);

/// A GET through the proxy: its status and Kubernetes `Status` body.
async fn get(app: &App, token: &str, path: &str) -> (StatusCode, Value) {
    let (head, body) = app
        .respond(json_request(bearer(token, Method::GET, path), None))
        .await;
    (head.status, serde_json::from_slice(&body).unwrap())
}

/// The proxy remembers a token's caller for a second; a revoked token is refused after that.
async fn proxy_refuses_a_revoked_token_within_a_second(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    let (status, created) = app
        .post(&t.admin, "/api/v1/tokens", json!({"user": "op"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let secret = created["secret"].as_str().unwrap();
    let id = created["token"]["id"].as_str().unwrap();

    // Known caller, unknown cluster: the proxy's 404, as a Kubernetes Status.
    let path = "/k8s/clusters/nowhere/api/v1/nodes";
    let (status, answer) = get(&app, secret, path).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert_eq!(
        (answer["kind"].as_str(), answer["code"].as_u64()),
        (Some("Status"), Some(404))
    );

    let (status, _) = app.delete(&t.admin, &format!("/api/v1/tokens/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    let revoked = Instant::now();
    let refused = loop {
        let (status, answer) = get(&app, secret, path).await;
        if status == StatusCode::UNAUTHORIZED {
            break answer;
        }
        assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
        assert!(
            revoked.elapsed() < Duration::from_millis(1500),
            "the revoked token still worked after {:?}",
            revoked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(refused["kind"], "Status", "{refused}");
    // Other tokens of the tenant are untouched.
    assert_eq!(get(&app, &t.operator, path).await.0, StatusCode::NOT_FOUND);
}

/// A write through the proxy is recorded with who, the method, the path and the status the
/// client got, even when no API server answered; reads are not; another tenant sees nothing.
async fn writes_through_the_proxy_are_in_the_audit_trail(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    let other = app.tenant("b").await;
    let (status, _) = app
        .post(&t.operator, "/api/v1/clusters", json!({"name": "c1"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let writes = |events: Vec<qb_api::Event>| -> Vec<qb_api::Event> {
        events
            .into_iter()
            .filter(|e| e.action == "cluster.kubernetes_write")
            .collect()
    };

    let (status, _) = get(&app, &t.operator, "/k8s/clusters/c1/api/v1/namespaces").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        writes(app.events(t.id).await).is_empty(),
        "a read was recorded"
    );

    let path = "/k8s/clusters/c1/api/v1/namespaces/default/configmaps";
    let (head, _) = app
        .respond(json_request(
            bearer(&t.operator, Method::POST, path),
            Some(json!({"metadata": {"name": "x"}})),
        ))
        .await;
    assert_eq!(head.status, StatusCode::SERVICE_UNAVAILABLE);
    let recorded = writes(app.events(t.id).await);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(
        (
            recorded[0].actor.as_str(),
            recorded[0].object_kind.as_str(),
            recorded[0].object_name.as_str()
        ),
        ("user:op", "cluster", "c1")
    );
    assert_eq!(
        recorded[0].detail,
        json!({"method": "POST", "path": "/api/v1/namespaces/default/configmaps", "status": 503})
    );
    assert!(writes(app.events(other.id).await).is_empty());
}
