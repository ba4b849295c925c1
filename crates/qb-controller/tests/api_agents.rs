//! Bootstrap tokens and agent packages through the API.

use std::io::Read;
use std::sync::Arc;

use axum::http::{Method, StatusCode, header};
use qb_controller::agents::packages::Packaging;
use qb_store::Store;
use serde_json::json;

use crate::support::{App, bearer, items, json_request, on_both_stores, pluck};

on_both_stores!(bootstrap_tokens_are_shown_once_and_scoped_to_the_tenant);

async fn bootstrap_tokens_are_shown_once_and_scoped_to_the_tenant(store: Store) {
    let app = App::new(store).await;
    let a = app.tenant("a").await;
    let b = app.tenant("b").await;
    let (status, created) = app
        .post(
            &a.operator,
            "/api/v1/bootstrap-tokens",
            json!({"max_uses": 3, "description": "rack 4"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("qbb_") && secret.len() == 68, "{secret}");
    assert_eq!(
        (
            created["token"]["max_uses"].as_u64(),
            created["token"]["uses"].as_u64()
        ),
        (Some(3), Some(0))
    );
    let id = created["token"]["id"].as_str().unwrap();

    let (_, list) = app.get(&a.viewer, "/api/v1/bootstrap-tokens").await;
    assert_eq!(
        list["code"], "forbidden",
        "viewers do not see bootstrap tokens"
    );
    let (_, list) = app.get(&a.operator, "/api/v1/bootstrap-tokens").await;
    assert_eq!(items(&list).len(), 1);
    assert!(
        !list.to_string().contains(secret),
        "the secret is never listed"
    );
    let (_, other) = app.get(&b.operator, "/api/v1/bootstrap-tokens").await;
    assert_eq!(items(&other).len(), 0);
    let path = format!("/api/v1/bootstrap-tokens/{id}");
    let (status, problem) = app.delete(&b.operator, &path).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, revoked) = app.delete(&a.operator, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(revoked["revoked_at"].is_string());

    for body in [
        json!({"max_uses": 0}),
        json!({"max_uses": 10001}),
        json!({"expires_in_hours": 721}),
        json!({"bogus": 1}),
    ] {
        let (status, _) = app
            .post(&a.operator, "/api/v1/bootstrap-tokens", body.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    let (_, events) = app
        .get(&a.viewer, "/api/v1/events?kind=bootstrap_token")
        .await;
    let actions = pluck(&events["items"], "action");
    assert_eq!(
        actions,
        ["bootstrap_token.created", "bootstrap_token.revoked"]
    );
    assert!(!events.to_string().contains(secret));
}

#[tokio::test]
async fn agent_packages_carry_the_controller_and_a_fresh_token() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("qb.db"), qb_store::Keyring::ephemeral())
        .await
        .unwrap();
    let mut app = App::new(store).await;
    let t = app.tenant("a").await;

    // Without an agent binary, packages are unavailable, and say so.
    let (status, problem) = app.get(&t.operator, "/api/v1/agent-packages/deb").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
    );

    let binary = dir.path().join("qb-agent");
    let ca = qb_pki::CertificateAuthority::generate("test CA", time::Duration::days(1)).unwrap();
    app.state.packaging = Some(Arc::new(Packaging {
        agent_url: "https://controller.example:7444".into(),
        other_agent_urls: vec!["https://replica-b.example:7444".into()],
        ca_pin: ca.pin(),
        agent_binary: binary.clone(),
    }));
    app.router = qb_controller::router(app.state.clone());

    // A binary that cannot be packaged (not an executable) is refused before a bootstrap token
    // is made for its package.
    std::fs::write(&binary, b"#!/bin/sh\necho agent\n").unwrap();
    let (status, problem) = app.get(&t.operator, "/api/v1/agent-packages/deb").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
        "{problem}"
    );
    let (_, tokens) = app.get(&t.operator, "/api/v1/bootstrap-tokens").await;
    assert_eq!(
        tokens["items"].as_array().map(Vec::len),
        Some(0),
        "{tokens}"
    );

    // A small real executable that links only the C library stands in for the agent.
    std::fs::copy("/bin/true", &binary).unwrap();

    let (status, _) = app.get(&t.viewer, "/api/v1/agent-packages/deb").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, problem) = app.get(&t.operator, "/api/v1/agent-packages/exe").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    let download = |format: &str| {
        let path = format!("/api/v1/agent-packages/{format}?max_uses=5");
        let req = json_request(bearer(&t.operator, Method::GET, &path), None);
        let app = &app;
        async move {
            let (head, body) = app.respond(req).await;
            assert_eq!(head.status, StatusCode::OK);
            let disposition = head.headers[header::CONTENT_DISPOSITION].to_str().unwrap();
            assert_eq!(head.headers[header::CACHE_CONTROL], "no-store");
            (disposition.to_owned(), body)
        }
    };
    let (disposition, deb) = download("deb").await;
    assert!(disposition.contains(".deb\""), "{disposition}");
    assert!(deb.starts_with(b"!<arch>\n"));
    let (_, rpm) = download("rpm").await;
    assert!(rpm.starts_with(&[0xed, 0xab, 0xee, 0xdb]));
    let (_, tarball) = download("tar.gz").await;

    // The tarball's config names this controller, pins its CA and holds a working token.
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&tarball[..]));
    let mut config = String::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().ends_with("config.toml") {
            entry.read_to_string(&mut config).unwrap();
        }
    }
    assert!(
        config.contains("controller_url = \"https://controller.example:7444\"")
            && config.contains("other_controller_urls = [\"https://replica-b.example:7444\"]"),
        "{config}"
    );
    assert!(config.contains(&ca.pin().to_string()), "{config}");
    let secret = config
        .split("bootstrap_token = \"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let hash = qb_controller::auth::hash_secret(secret);
    let (_, tokens) = app.get(&t.operator, "/api/v1/bootstrap-tokens").await;
    assert_eq!(items(&tokens).len(), 3, "one fresh token per package");
    assert!(items(&tokens).iter().all(|t| t["max_uses"] == 5));
    assert!(!tokens.to_string().contains(secret) && !tokens.to_string().contains(&hash));
}
