//! Authentication, roles, and tenant isolation.

use axum::http::{Method, StatusCode};
use qb_store::{Actor, Store};
use serde_json::json;

use crate::support::{App, items, on_both_stores, pluck};

on_both_stores!(
    every_call_needs_a_valid_token,
    revoked_and_expired_tokens_are_refused,
    viewer_reads_but_cannot_mutate,
    refused_changes_are_in_the_callers_audit_trail,
    operator_cannot_manage_users_or_tokens,
    tenants_cannot_see_or_touch_each_other,
);

/// Every API route, with a body a mutation would accept.
fn routes() -> Vec<(Method, &'static str, Option<serde_json::Value>)> {
    vec![
        (Method::GET, "/api/v1/whoami", None),
        (Method::GET, "/api/v1/nodes", None),
        (Method::GET, "/api/v1/nodes/n-0", None),
        (
            Method::POST,
            "/api/v1/nodes/n-0/labels",
            Some(json!({"set": {"zone": "a"}})),
        ),
        (Method::POST, "/api/v1/nodes/n-0/authorize", None),
        (Method::POST, "/api/v1/nodes/n-0/deauthorize", None),
        (Method::DELETE, "/api/v1/nodes/n-0", None),
        (Method::GET, "/api/v1/clusters", None),
        (
            Method::POST,
            "/api/v1/clusters",
            Some(json!({"name": "c2"})),
        ),
        (Method::GET, "/api/v1/clusters/c1", None),
        (Method::DELETE, "/api/v1/clusters/c1?force=true", None),
        (
            Method::POST,
            "/api/v1/clusters/c1/attach",
            Some(json!({"count": 1})),
        ),
        (
            Method::POST,
            "/api/v1/clusters/c1/detach",
            Some(json!({"nodes": ["n-0"]})),
        ),
        (Method::GET, "/api/v1/users", None),
        (
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": "u2", "role": "viewer"})),
        ),
        (Method::GET, "/api/v1/tokens", None),
        (Method::POST, "/api/v1/tokens", Some(json!({}))),
        (
            Method::DELETE,
            "/api/v1/tokens/01a1fc8f-3732-7437-af29-7d935c2c90b5",
            None,
        ),
        (Method::GET, "/api/v1/events", None),
        (Method::GET, "/api/v1/nodes/n-0/metrics", None),
        (Method::GET, "/api/v1/alerts", None),
        (Method::GET, "/api/v1/silences", None),
        (
            Method::POST,
            "/api/v1/silences",
            Some(json!({"rule": "disk_full", "duration_minutes": 5, "comment": "c"})),
        ),
        (
            Method::DELETE,
            "/api/v1/silences/01a1fc8f-3732-7437-af29-7d935c2c90b5",
            None,
        ),
    ]
}

async fn every_call_needs_a_valid_token(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    app.pending_nodes(t.id, "n", 1).await;
    let before = app.changes(t.id).await.len();
    for bad in [
        "",
        "qb_0000000000000000000000000000000000000000000000000000000000000000",
        "not-a-token",
    ] {
        for (method, path, body) in routes() {
            let (status, problem) = app.call(bad, method.clone(), path, body).await;
            assert_eq!(
                (status, problem["code"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("unauthenticated")),
                "{method} {path} with {bad:?}"
            );
        }
    }
    assert_eq!(
        app.changes(t.id).await.len(),
        before,
        "refused calls wrote nothing"
    );
    // The OpenAPI document and the health check are public.
    assert_eq!(app.get("", "/api/v1/openapi.json").await.0, StatusCode::OK);
    assert_eq!(app.get("", "/healthz").await.0, StatusCode::OK);
}

async fn revoked_and_expired_tokens_are_refused(store: Store) {
    let app = App::new(store.clone()).await;
    let t = app.tenant("a").await;
    let (status, created) = app
        .post(&t.admin, "/api/v1/tokens", json!({"user": "op"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(app.get(&secret, "/api/v1/whoami").await.1["user"], "op");
    // The list never shows secrets, and shows the token as used.
    let (_, list) = app.get(&t.admin, "/api/v1/tokens").await;
    assert!(!list.to_string().contains(&secret));
    let id = created["token"]["id"].as_str().unwrap();
    let listed = items(&list).iter().find(|x| x["id"] == id).unwrap().clone();
    assert!(listed["last_used_at"].is_string(), "{listed}");

    let (status, revoked) = app.delete(&t.admin, &format!("/api/v1/tokens/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(revoked["revoked_at"].is_string());
    let (status, problem) = app.get(&secret, "/api/v1/whoami").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
    );

    let (expired, hash) = qb_controller::auth::new_secret();
    let past = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    store
        .create_token(
            t.id,
            &"op".parse().unwrap(),
            expired.clone(),
            &hash,
            None,
            past,
            &Actor::controller(),
        )
        .await
        .unwrap();
    assert_eq!(
        app.get(&expired, "/api/v1/whoami").await.0,
        StatusCode::UNAUTHORIZED
    );

    // Lifetimes are bounded.
    for hours in [0, 8761] {
        let (status, _) = app
            .post(
                &t.admin,
                "/api/v1/tokens",
                json!({"expires_in_hours": hours}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{hours}");
    }
}

async fn viewer_reads_but_cannot_mutate(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    app.pending_nodes(t.id, "n", 1).await;
    let (status, _) = app
        .post(&t.operator, "/api/v1/clusters", json!({"name": "c1"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let before = app.changes(t.id).await.len();
    for (method, path, body) in routes() {
        let (status, problem) = app.call(&t.viewer, method.clone(), path, body).await;
        let admin_only = path.starts_with("/api/v1/users") || path.starts_with("/api/v1/tokens");
        if method == Method::GET && !admin_only {
            assert_eq!(status, StatusCode::OK, "viewer may read {path}");
        } else {
            assert_eq!(
                (status, problem["code"].as_str()),
                (StatusCode::FORBIDDEN, Some("forbidden")),
                "viewer {method} {path}: {problem}"
            );
        }
    }
    assert_eq!(
        app.changes(t.id).await.len(),
        before,
        "refused calls wrote nothing"
    );
    let (_, node) = app.get(&t.viewer, "/api/v1/nodes/n-0").await;
    assert_eq!(node["state"], "pending");
    // Each refused change is in the audit trail as the viewer's, in order; reads are not.
    let refused: Vec<String> = routes()
        .into_iter()
        .filter(|(method, _, _)| *method != Method::GET)
        .map(|(method, path, _)| format!("{method} {}", path.split('?').next().unwrap()))
        .collect();
    let recorded = app.refusals(t.id).await;
    let names: Vec<&str> = recorded.iter().map(|e| e.object_name.as_str()).collect();
    assert_eq!(names, refused);
    for event in &recorded {
        assert_eq!(event.actor, "user:view", "{event:?}");
        assert_eq!(event.object_kind, "request", "{event:?}");
        assert_eq!(event.detail["status"], 403, "{event:?}");
        assert_eq!(event.detail["code"], "forbidden", "{event:?}");
    }
}

async fn refused_changes_are_in_the_callers_audit_trail(store: Store) {
    let app = App::new(store).await;
    let (a, b) = (app.tenant("a").await, app.tenant("b").await);
    let (status, _) = app
        .post(&a.operator, "/api/v1/clusters", json!({"name": "c1"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let refusals = [
        (
            &a.operator,
            Method::POST,
            "/api/v1/clusters",
            Some(json!({"name": "Not a name!"})),
        ),
        (
            &a.operator,
            Method::POST,
            "/api/v1/clusters",
            Some(json!({"name": "c1"})),
        ),
        (&a.operator, Method::DELETE, "/api/v1/clusters/nope", None),
        (
            &a.admin,
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"expires_in_hours": 0})),
        ),
        (&b.operator, Method::DELETE, "/api/v1/clusters/c1", None),
    ];
    let mut answers = Vec::new();
    for (token, method, path, body) in refusals {
        let (status, problem) = app.call(token, method.clone(), path, body).await;
        assert!(status.is_client_error(), "{method} {path}: {status}");
        answers.push((status.as_u16(), problem["code"].clone()));
    }
    // Not recorded: reads, and changes without a valid token (no tenant to record them in).
    assert_eq!(
        app.get(&a.operator, "/api/v1/clusters/nope").await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _) = app
        .call(
            "",
            Method::POST,
            "/api/v1/clusters",
            Some(json!({"name": "c2"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let in_a = app.refusals(a.id).await;
    let seen: Vec<_> = in_a
        .iter()
        .map(|e| {
            (
                e.actor.as_str(),
                e.object_name.as_str(),
                (
                    e.detail["status"].as_u64().unwrap() as u16,
                    e.detail["code"].clone(),
                ),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("user:op", "POST /api/v1/clusters", answers[0].clone()),
            ("user:op", "POST /api/v1/clusters", answers[1].clone()),
            (
                "user:op",
                "DELETE /api/v1/clusters/nope",
                answers[2].clone()
            ),
            ("user:admin", "POST /api/v1/tokens", answers[3].clone()),
        ]
    );
    assert_eq!(answers[1], (409, json!("name_taken")), "the name is taken");
    // b's attempt on a's cluster is b's to see, and a's cluster is untouched.
    let in_b = app.refusals(b.id).await;
    assert_eq!(in_b.len(), 1, "{in_b:?}");
    assert_eq!(in_b[0].object_name, "DELETE /api/v1/clusters/c1");
    assert_eq!(in_b[0].detail["status"], 404);
    assert_eq!(
        app.get(&a.operator, "/api/v1/clusters/c1").await.0,
        StatusCode::OK
    );
    // Admins query them as any event.
    let (_, listed) = app
        .get(&a.admin, "/api/v1/events?action=api.request_refused")
        .await;
    assert_eq!(items(&listed).len(), 4, "{listed}");
}

async fn operator_cannot_manage_users_or_tokens(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    for (method, path, body) in routes()
        .into_iter()
        .filter(|(_, p, _)| p.contains("/users") || p.contains("/tokens"))
    {
        let (status, _) = app
            .call(&t.operator, method.clone(), path, body.clone())
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "operator {method} {path}");
        let (status, _) = app.call(&t.admin, method.clone(), path, body).await;
        assert_ne!(status, StatusCode::FORBIDDEN, "admin {method} {path}");
    }
    let (status, user) = app
        .post(
            &t.admin,
            "/api/v1/users",
            json!({"name": "carol", "role": "operator"}),
        )
        .await;
    assert_eq!(
        (status, user["role"].as_str()),
        (StatusCode::CREATED, Some("operator"))
    );
    let (status, problem) = app
        .post(
            &t.admin,
            "/api/v1/users",
            json!({"name": "carol", "role": "viewer"}),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::CONFLICT, Some("name_taken"))
    );
}

async fn tenants_cannot_see_or_touch_each_other(store: Store) {
    let app = App::new(store).await;
    let a = app.tenant("a").await;
    let b = app.tenant("b").await;
    let a_nodes = app.pool(&a, "a", 3).await;
    app.pending_nodes(a.id, "ap", 1).await;
    app.pool(&b, "b", 1).await;
    let (_, a_cluster) = app
        .post(
            &a.operator,
            "/api/v1/clusters",
            json!({"name": "shared-name"}),
        )
        .await;
    let (_, moved) = app
        .post(
            &a.operator,
            "/api/v1/clusters/shared-name/attach",
            json!({"count": 1}),
        )
        .await;
    assert_eq!(moved["nodes"].as_array().unwrap().len(), 1);
    let a_node_id = moved["nodes"][0]["id"].as_str().unwrap().to_owned();
    let a_cluster_id = a_cluster["id"].as_str().unwrap().to_owned();
    // B may use the same cluster name: names are per tenant.
    let (status, _) = app
        .post(
            &b.operator,
            "/api/v1/clusters",
            json!({"name": "shared-name"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let a_events_before = app.changes(a.id).await.len();

    // Lists show only B's own objects.
    let (_, nodes) = app.get(&b.admin, "/api/v1/nodes").await;
    let names = pluck(&nodes["items"], "name");
    assert_eq!(names, ["b-0"]);
    let (_, clusters) = app.get(&b.admin, "/api/v1/clusters").await;
    assert_eq!(items(&clusters).len(), 1);
    assert_ne!(clusters["items"][0]["id"], a_cluster_id.as_str());
    let (_, tokens) = app.get(&b.admin, "/api/v1/tokens").await;
    let (_, events) = app.get(&b.admin, "/api/v1/events").await;
    let text = events.to_string();
    assert!(
        !text.contains(&a_node_id)
            && !text.contains(&a_cluster_id)
            && !text.contains("\"object_name\":\"a-0\""),
        "{text}"
    );
    let (_, a_tokens) = app.get(&a.admin, "/api/v1/tokens").await;
    let a_token_id = a_tokens["items"][0]["id"].as_str().unwrap().to_owned();
    let b_token_ids = pluck(&tokens["items"], "id");
    assert!(!b_token_ids.contains(&a_token_id.as_str()));

    // Every touch of A's objects, by id or by name, is a 404 (not 403: B must not learn they exist).
    let attempts = [
        (Method::GET, format!("/api/v1/nodes/{a_node_id}"), None),
        (Method::GET, format!("/api/v1/nodes/{}", a_nodes[1]), None),
        (Method::GET, "/api/v1/nodes/ap-0".to_owned(), None),
        (
            Method::POST,
            "/api/v1/nodes/ap-0/authorize".to_owned(),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/nodes/{}/deauthorize", a_nodes[1]),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/nodes/{a_node_id}/labels"),
            Some(json!({"set": {"x": "y"}})),
        ),
        (Method::DELETE, "/api/v1/nodes/ap-0".to_owned(), None),
        (
            Method::GET,
            format!("/api/v1/clusters/{a_cluster_id}"),
            None,
        ),
        (
            Method::DELETE,
            format!("/api/v1/clusters/{a_cluster_id}?force=true"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/clusters/{a_cluster_id}/attach"),
            Some(json!({"count": 1})),
        ),
        (
            Method::POST,
            format!("/api/v1/clusters/{a_cluster_id}/detach"),
            Some(json!({"nodes": [moved["nodes"][0]["name"]]})),
        ),
        // A's pool node into B's own cluster.
        (
            Method::POST,
            "/api/v1/clusters/shared-name/attach".to_owned(),
            Some(json!({"nodes": [a_nodes[2]]})),
        ),
        (
            Method::GET,
            format!("/api/v1/nodes?cluster={a_cluster_id}"),
            None,
        ),
        (Method::DELETE, format!("/api/v1/tokens/{a_token_id}"), None),
    ];
    for (method, path, body) in attempts {
        let (status, problem) = app.call(&b.admin, method.clone(), &path, body).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "B {method} {path}: {problem}"
        );
    }
    // B's own cluster of the same name is B's: attaching from B's pool takes B's node only.
    let (status, moved_b) = app
        .post(
            &b.operator,
            "/api/v1/clusters/shared-name/attach",
            json!({"count": 2}),
        )
        .await;
    assert_eq!(
        (status, moved_b["code"].as_str()),
        (StatusCode::CONFLICT, Some("pool_exhausted"))
    );
    assert_eq!(
        app.changes(a.id).await.len(),
        a_events_before,
        "nothing of A changed"
    );
    let (_, node) = app
        .get(&a.viewer, &format!("/api/v1/nodes/{a_node_id}"))
        .await;
    assert_eq!(node["state"], "attached");
}
