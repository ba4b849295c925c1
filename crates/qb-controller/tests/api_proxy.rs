//! The Kubernetes API proxy's own answers, before any cluster is reached.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use qb_store::Store;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::{App, on_both_stores};

on_both_stores!(proxy_refuses_a_revoked_token_within_a_second);

/// A GET through the proxy: its status and Kubernetes `Status` body.
async fn get(app: &App, token: &str, path: &str) -> (StatusCode, Value) {
    let request = Request::get(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let response = app.router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

/// The proxy remembers a token's caller for a second; a revoked token is refused after that.
async fn proxy_refuses_a_revoked_token_within_a_second(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    let (status, created) = app
        .call(
            &t.admin,
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"user": "op"})),
        )
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

    let (status, _) = app
        .call(
            &t.admin,
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            None,
        )
        .await;
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
