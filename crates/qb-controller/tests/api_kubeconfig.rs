//! Kubeconfigs: a new token of the caller's own, pointing `kubectl` at the Kubernetes API proxy.

use std::sync::Arc;

use axum::http::StatusCode;
use qb_controller::kubeconfig::PublicEndpoint;
use qb_store::Store;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

use crate::support::{App, items, on_both_stores};

on_both_stores!(
    kubeconfig_carries_a_token_of_the_caller,
    kubeconfig_refusals_mint_nothing,
);

const PUBLIC_URL: &str = "https://qb.example.net:8443";
const PROD_KUBECONFIG: &str = "/api/v1/clusters/prod/kubeconfig";

/// Makes the app write kubeconfigs for `endpoint` (`None`: it does not know its public URL).
fn serve_public(app: &mut App, endpoint: Option<PublicEndpoint>) {
    app.state.public = endpoint.map(Arc::new);
    app.router = qb_controller::router(app.state.clone());
}

/// The value of the kubeconfig's one `key:` line (all values are double-quoted scalars).
fn field(kubeconfig: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}: ");
    let mut values = kubeconfig
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix(prefix.as_str()));
    let value = values.next()?;
    assert!(values.next().is_none(), "{key} twice in {kubeconfig}");
    Some(serde_json::from_str(value).unwrap_or_else(|e| panic!("{key}: {value}: {e}")))
}

/// What the controller must write for `user` and cluster `prod` (`secret` and `ca` aside).
fn expected(server: &str, ca_data: Option<&str>, user: &str, secret: &str) -> String {
    let ca = ca_data.map_or_else(String::new, |ca| {
        format!("      certificate-authority-data: \"{ca}\"\n")
    });
    format!(
        r#"apiVersion: v1
kind: Config
clusters:
  - name: "qb-prod"
    cluster:
      server: "{server}"
{ca}users:
  - name: "{user}@qb-prod"
    user:
      token: "{secret}"
contexts:
  - name: "qb-prod"
    context:
      cluster: "qb-prod"
      user: "{user}@qb-prod"
current-context: "qb-prod"
"#
    )
}

/// Standard base64, decoded by rustls' PEM reader (independent of the controller's encoder).
fn base64_decode(data: &str) -> Vec<u8> {
    let pem = format!("-----BEGIN CERTIFICATE-----\n{data}\n-----END CERTIFICATE-----\n");
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap_or_else(|e| panic!("not base64 ({e:?}): {data}"))
        .to_vec()
}

async fn kubeconfig_carries_a_token_of_the_caller(store: Store) {
    let mut app = App::new(store).await;
    let t = app.tenant("a").await;
    let tls_dir = tempfile::tempdir().unwrap();
    let identity = qb_controller::tls::load_or_generate(None, tls_dir.path(), &[]).unwrap();
    let served = std::fs::read_to_string(tls_dir.path().join("controller.crt")).unwrap();
    serve_public(
        &mut app,
        Some(PublicEndpoint {
            url: PUBLIC_URL.to_owned(),
            ca_pem: Some(identity.cert_pem.clone()),
        }),
    );
    let (status, cluster) = app
        .post(&t.operator, "/api/v1/clusters", json!({"name": "prod"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{cluster}");
    let cluster_id = cluster["id"].as_str().unwrap().to_owned();

    let mut minted = Vec::new();
    // Any role may have one; by id or by name, the proxy's path names the cluster.
    for (caller, user, role, key) in [
        (&t.admin, "admin", "admin", "prod"),
        (&t.operator, "op", "operator", "prod"),
        (&t.viewer, "view", "viewer", cluster_id.as_str()),
    ] {
        let (status, kc) = app
            .post(
                caller,
                &format!("/api/v1/clusters/{key}/kubeconfig"),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{role}: {kc}");
        let text = kc["kubeconfig"].as_str().unwrap();
        let secret = field(text, "token").unwrap();
        assert!(secret.starts_with("qb_") && secret != *caller, "{secret}");
        let ca_data = field(text, "certificate-authority-data").unwrap();
        assert_eq!(
            text,
            expected(
                &format!("{PUBLIC_URL}/k8s/clusters/prod"),
                Some(&ca_data),
                user,
                &secret
            )
        );
        // The CA is the served certificate, as PEM.
        let ca_pem = String::from_utf8(base64_decode(&ca_data)).unwrap();
        assert_eq!(ca_pem, served);
        let ca_certs: Vec<_> = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let served_certs: Vec<_> = CertificateDer::pem_slice_iter(served.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ca_certs, served_certs);
        assert_eq!(
            qb_controller::tls::fingerprint(&ca_certs[0]),
            identity.fingerprint
        );

        // The token acts as the caller: same user, same role; it is the one described.
        let (status, me) = app.get(caller, "/api/v1/whoami").await;
        assert_eq!(status, StatusCode::OK);
        let (status, it) = app.get(&secret, "/api/v1/whoami").await;
        assert_eq!(status, StatusCode::OK, "{it}");
        assert_eq!((&it["user"], &it["role"]), (&me["user"], &me["role"]));
        assert_eq!(
            (it["user"].as_str(), it["role"].as_str()),
            (Some(user), Some(role))
        );
        assert_eq!(it["tenant_id"], me["tenant_id"]);
        assert_ne!(it["token_id"], me["token_id"]);
        let token = &kc["token"];
        assert_eq!(token["id"], it["token_id"]);
        assert_eq!(
            (token["user"].as_str(), token["role"].as_str()),
            (Some(user), Some(role))
        );
        assert_eq!(token["description"], "kubeconfig for cluster prod");
        assert!(token.get("secret").is_none(), "{token}");
        // 24 hours by default, but never beyond the caller's token (an hour in these tests).
        assert_eq!(lifetime_hours(token), 1);
        minted.push(token["id"].as_str().unwrap().to_owned());
    }

    // Listed with the description; the audit trail says who minted each.
    let (status, tokens) = app.get(&t.admin, "/api/v1/tokens").await;
    assert_eq!(status, StatusCode::OK);
    for id in &minted {
        let listed = items(&tokens)
            .iter()
            .find(|tok| tok["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} not listed: {tokens}"));
        assert_eq!(listed["description"], "kubeconfig for cluster prod");
    }
    let events = app.events(t.id).await;
    for (id, actor) in minted.iter().zip(["user:admin", "user:op", "user:view"]) {
        assert!(
            events
                .iter()
                .any(|e| e.action == "token.created" && e.object_id == *id && e.actor == actor),
            "no token.created by {actor} for {id}"
        );
    }

    // Lifetimes at both ends of the range, never beyond the asking token's own expiry (the
    // test's tokens live an hour).
    for (hours, lifetime) in [(1, 1), (8760, 1)] {
        let (status, kc) = app
            .post(
                &t.viewer,
                PROD_KUBECONFIG,
                json!({"expires_in_hours": hours}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{kc}");
        assert_eq!(
            lifetime_hours(&kc["token"]),
            lifetime,
            "asked for {hours} h"
        );
    }

    // A controller reached over plain HTTP: no CA.
    serve_public(
        &mut app,
        Some(PublicEndpoint {
            url: "http://127.0.0.1:7443".to_owned(),
            ca_pem: None,
        }),
    );
    let (status, kc) = app.post(&t.viewer, PROD_KUBECONFIG, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{kc}");
    let text = kc["kubeconfig"].as_str().unwrap();
    let secret = field(text, "token").unwrap();
    assert_eq!(
        text,
        expected(
            "http://127.0.0.1:7443/k8s/clusters/prod",
            None,
            "view",
            &secret
        )
    );
    assert!(!text.contains("certificate-authority"), "{text}");
    let (status, _) = app.get(&secret, "/api/v1/whoami").await;
    assert_eq!(status, StatusCode::OK);
}

/// Hours from the token's creation to its expiry.
fn lifetime_hours(token: &Value) -> u32 {
    let at = |k: &str| {
        time::OffsetDateTime::parse(
            token[k].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    let seconds = (at("expires_at") - at("created_at")).whole_seconds();
    // Created and expiry are taken a moment apart.
    u32::try_from((seconds + 60) / 3600).unwrap()
}

async fn kubeconfig_refusals_mint_nothing(store: Store) {
    let mut app = App::new(store).await;
    let a = app.tenant("a").await;
    let b = app.tenant("b").await;
    serve_public(
        &mut app,
        Some(PublicEndpoint {
            url: PUBLIC_URL.to_owned(),
            ca_pem: None,
        }),
    );
    let (status, cluster) = app
        .post(&a.operator, "/api/v1/clusters", json!({"name": "prod"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = cluster["id"].as_str().unwrap().to_owned();
    let store = app.store.clone();
    let tokens = |tenant| {
        let store = store.clone();
        async move {
            store
                .list_tokens(tenant, None, 1000)
                .await
                .unwrap()
                .items
                .len()
        }
    };
    let before = (
        tokens(a.id).await,
        tokens(b.id).await,
        app.changes(a.id).await.len(),
        app.changes(b.id).await.len(),
    );

    let refused = [
        // Another tenant's cluster, by name or id, does not exist for b.
        (
            &b.admin,
            "prod",
            json!({}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            &b.viewer,
            id.as_str(),
            json!({}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            &a.viewer,
            "nope",
            json!({}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            &a.admin,
            "prod",
            json!({"expires_in_hours": 0}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            &a.viewer,
            "prod",
            json!({"expires_in_hours": 8761}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            &a.viewer,
            "prod",
            json!({"expires_in_hours": -1}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            &a.viewer,
            "prod",
            json!({"user": "admin"}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
    ];
    for (token, key, body, status, code) in refused {
        let (got, problem) = app
            .post(
                token,
                &format!("/api/v1/clusters/{key}/kubeconfig"),
                body.clone(),
            )
            .await;
        assert_eq!(
            (got, problem["code"].as_str()),
            (status, Some(code)),
            "{key} {body}: {problem}"
        );
    }
    let (_, problem) = app
        .post(
            &a.viewer,
            PROD_KUBECONFIG,
            json!({"expires_in_hours": 9000}),
        )
        .await;
    assert_eq!(
        problem["detail"],
        "expires_in_hours must be between 1 and 8760"
    );
    let (status, _) = app.post("", PROD_KUBECONFIG, json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A controller that does not know how users reach it writes no kubeconfig.
    serve_public(&mut app, None);
    let (status, problem) = app.post(&a.admin, PROD_KUBECONFIG, json!({})).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
        "{problem}"
    );

    let after = (
        tokens(a.id).await,
        tokens(b.id).await,
        app.changes(a.id).await.len(),
        app.changes(b.id).await.len(),
    );
    assert_eq!(after, before, "a refused request minted a token");
}
