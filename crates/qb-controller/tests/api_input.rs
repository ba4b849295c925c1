//! Bad input: each is answered with a problem response, and nothing is written.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use qb_store::Store;
use serde_json::{Value, json};

use crate::support::{App, on_both_stores};

on_both_stores!(bad_input_is_refused_and_changes_nothing);

async fn bad_input_is_refused_and_changes_nothing(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    app.pool(&t, "n", 2).await;
    let (status, _) = app
        .call(
            &t.operator,
            Method::POST,
            "/api/v1/clusters",
            Some(json!({"name": "c1"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let before = app.events(t.id).await;

    let raw = |method: Method, path: &str, content_type: &str, body: Vec<u8>| {
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", t.operator))
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap()
    };
    let json_cases: Vec<(&str, &[u8], &str)> = vec![
        (
            "/api/v1/clusters",
            b"{\"name\": \"c2\"",
            "malformed_request",
        ),
        ("/api/v1/clusters", b"not json", "malformed_request"),
        ("/api/v1/clusters", b"[]", "invalid_input"),
        (
            "/api/v1/clusters",
            b"{\"name\": \"c2\", \"nodes\": 3}",
            "invalid_input",
        ),
        ("/api/v1/clusters", b"{}", "invalid_input"),
        (
            "/api/v1/clusters/c1/attach",
            b"{\"count\": 1, \"extra\": true}",
            "invalid_input",
        ),
    ];
    for (path, body, code) in json_cases {
        let (status, problem) = app
            .send(raw(Method::POST, path, "application/json", body.to_vec()))
            .await;
        assert_eq!(
            problem["code"],
            code,
            "{path} {}: {problem}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    let (status, problem) = app
        .send(raw(
            Method::POST,
            "/api/v1/clusters",
            "text/plain",
            b"{\"name\":\"c3\"}".to_vec(),
        ))
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type")
        )
    );
    let huge = format!(
        "{{\"name\": \"c4\", \"pad\": \"{}\"}}",
        "x".repeat(qb_controller::api::MAX_BODY_BYTES)
    );
    let (status, problem) = app
        .send(raw(
            Method::POST,
            "/api/v1/clusters",
            "application/json",
            huge.into_bytes(),
        ))
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );

    let cases: Vec<(Method, &str, Value, StatusCode, &str)> = vec![
        (
            Method::POST,
            "/api/v1/clusters",
            json!({"name": "Bad_Name"}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/v1/clusters",
            json!({"name": "a;drop table nodes"}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/v1/clusters",
            json!({"name": "x".repeat(64)}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/v1/clusters",
            json!({"name": "c5", "pod_cidr": "10.0.0.0/8", "service_cidr": "10.96.0.0/12"}),
            StatusCode::CONFLICT,
            "cidr_overlap",
        ),
        (
            Method::POST,
            "/api/v1/clusters",
            json!({"name": "c5", "pod_cidr": "10.0.0.1/16"}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/v1/clusters",
            json!({"name": "c5", "pod_cidr": "banana"}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/v1/clusters",
            json!({"name": "c5", "masters": 2}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/v1/clusters",
            json!({"name": "c5", "masters": 1, "roles": {"n-0": "master", "n-1": "master"}}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/v1/clusters",
            json!({"name": "c5", "kubernetes_version": "latest"}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/v1/clusters",
            json!({"name": "c1"}),
            StatusCode::CONFLICT,
            "name_taken",
        ),
        (
            Method::POST,
            "/api/v1/clusters/c1/attach",
            json!({"count": 0}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/v1/clusters/c1/attach",
            json!({}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/v1/clusters/c1/attach",
            json!({"count": 1, "nodes": ["n-0"]}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/v1/clusters/c1/attach",
            json!({"nodes": ["n-0", "n-0"]}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/v1/clusters/c1/attach",
            json!({"nodes": ["N 0"]}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/v1/clusters/c1/attach",
            json!({"count": 1, "selector": "zone=a=b"}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/v1/clusters/c1/attach",
            json!({"nodes": ["n-0", "ghost"]}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            "/api/v1/clusters/ghost/attach",
            json!({"count": 1}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            "/api/v1/clusters/c1/detach",
            json!({"nodes": []}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/v1/clusters/c1/detach",
            json!({"nodes": ["n-0"]}),
            StatusCode::CONFLICT,
            "node_not_in_cluster",
        ),
        (
            Method::POST,
            "/api/v1/nodes/n-0/labels",
            json!({"set": {"bad key!": "v"}}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/v1/nodes/n-0/labels",
            json!({"set": {"k": "bad value!"}}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/v1/nodes/ghost/labels",
            json!({"set": {"k": "v"}}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            "/api/v1/nodes/01a1fc8f-3732-7437-af29-7d935c2c90b5/authorize",
            Value::Null,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            "/api/v1/nodes/n-0/authorize",
            Value::Null,
            StatusCode::CONFLICT,
            "invalid_node_state",
        ),
        (
            Method::GET,
            "/api/v1/nodes?state=sleeping",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::GET,
            "/api/v1/nodes?limit=0",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::GET,
            "/api/v1/nodes?limit=abc",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::GET,
            "/api/v1/nodes?bogus=1",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::GET,
            "/api/v1/events?after=x",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::GET,
            "/api/v1/clusters/ghost",
            Value::Null,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::DELETE,
            "/api/v1/clusters/c1?force=maybe",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::PUT,
            "/api/v1/clusters",
            Value::Null,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/api/v2/clusters",
            Value::Null,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (method, path, body, want_status, want_code) in cases {
        let body = if body.is_null() { None } else { Some(body) };
        let (status, problem) = app
            .call(&t.operator, method.clone(), path, body.clone())
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (want_status, Some(want_code)),
            "{method} {path} {body:?}: {problem}"
        );
    }
    assert_eq!(
        app.events(t.id).await,
        before,
        "no refused request wrote anything"
    );
    let (_, clusters) = app
        .call(&t.viewer, Method::GET, "/api/v1/clusters", None)
        .await;
    assert_eq!(clusters["items"].as_array().unwrap().len(), 1);
    let (_, nodes) = app
        .call(
            &t.viewer,
            Method::GET,
            "/api/v1/nodes?state=authorized",
            None,
        )
        .await;
    assert_eq!(nodes["items"].as_array().unwrap().len(), 2);
    assert!(
        nodes["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["labels"] == json!({}))
    );
}
