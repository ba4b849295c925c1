//! Bad input: each is answered with a problem response, and nothing is written.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode, header};
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use qb_store::Store;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};

use crate::support::{App, bearer, items, on_both_stores, sqlite_store};

on_both_stores!(bad_input_is_refused_and_changes_nothing);

async fn bad_input_is_refused_and_changes_nothing(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    app.pool(&t, "n", 2).await;
    let (status, _) = app
        .post(&t.operator, "/api/v1/clusters", json!({"name": "c1"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let before = app.changes(t.id).await;

    let raw = |method: Method, path: &str, content_type: &str, body: Vec<u8>| {
        bearer(&t.operator, method, path)
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
        ("/api/v1/clusters", b"[\"c2\"]", "invalid_input"),
        (
            "/api/v1/clusters",
            b"{\"name\": \"c2\", \"name\": \"c3\"}",
            "invalid_input",
        ),
        (
            "/api/v1/nodes/n-0/labels",
            b"{\"set\": {\"k\": \"a\", \"k\": \"b\"}}",
            "invalid_input",
        ),
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
        app.changes(t.id).await,
        before,
        "no refused request wrote anything"
    );
    let (_, clusters) = app.get(&t.viewer, "/api/v1/clusters").await;
    assert_eq!(items(&clusters).len(), 1);
    let (_, nodes) = app.get(&t.viewer, "/api/v1/nodes?state=authorized").await;
    assert_eq!(items(&nodes).len(), 2);
    assert!(items(&nodes).iter().all(|n| n["labels"] == json!({})));
}

/// What serde alone would take is refused, with a message that says where: an array read as an
/// object field by field (`[]` made an admin token), a key repeated in a map (the last one won).
/// A message about a huge input quotes only its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_what_the_document_describes_is_taken() {
    let (store, _guard) = sqlite_store().await;
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    app.pool(&t, "n", 1).await;
    let before = app.changes(t.id).await;
    let post = |token: &str, path: &str, body: &str| {
        bearer(token, Method::POST, path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let cases = [
        (
            &t.admin,
            "/api/v1/tokens",
            "[]",
            "expected struct CreateToken",
        ),
        (
            &t.admin,
            "/api/v1/tokens",
            "[null, 1]",
            "expected struct CreateToken",
        ),
        (
            &t.admin,
            "/api/v1/users",
            r#"["eve", "admin"]"#,
            "expected struct CreateUser",
        ),
        (
            &t.operator,
            "/api/v1/clusters",
            r#"["harr"]"#,
            "expected struct CreateCluster",
        ),
        (
            &t.operator,
            "/api/v1/nodes/n-0/labels",
            r#"{"set": {"zone": "a", "zone": "b"}}"#,
            r#"duplicate key "zone""#,
        ),
        (
            &t.operator,
            "/api/v1/clusters",
            r#"{"name": "c1", "roles": {"n-0": "master", "n-0": "worker"}}"#,
            r#"duplicate key "n-0""#,
        ),
    ];
    for (token, path, body, says) in cases {
        let (status, problem) = app.send(post(token, path, body)).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_input")),
            "{path} {body}: {problem}"
        );
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{path} {body}: {detail}");
    }

    let name = "x".repeat(60_000);
    let (status, problem) = app
        .send(post(
            &t.operator,
            "/api/v1/clusters",
            &json!({ "name": name }).to_string(),
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let size = problem.to_string().len();
    assert!(size < 1024, "{size} bytes: {problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!(
            "name: invalid name \"{}\"… (60000 characters)",
            &name[..64]
        )) && detail.contains("use 1-63 lowercase letters"),
        "{detail}"
    );
    // A message that quotes input whole (serde's, about an unknown field) is cut.
    let (status, problem) = app
        .send(post(
            &t.operator,
            "/api/v1/clusters",
            &json!({ name: 1 }).to_string(),
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.chars().count() == qb_api::Problem::MAX_DETAIL_CHARS + 1 && detail.ends_with("xx…"),
        "{detail}"
    );

    assert_eq!(app.changes(t.id).await, before, "nothing was written");
}

/// A body over the limit is answered 413 with a problem, over TLS as the controller serves, on
/// HTTP/1.1 and HTTP/2 alike, with or without a length, and while the client is still sending:
/// the rest of the body is read first, so the client can send it all and read the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_answered_413_on_http1_and_http2() {
    let (store, _guard) = sqlite_store().await;
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    let tls_dir = tempfile::tempdir().unwrap();
    let identity = qb_controller::tls::load_or_generate(None, tls_dir.path(), &[]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(qb_controller::serve::serve(
        listener,
        app.router.clone(),
        Some(identity.config.clone()),
        async {
            let _ = stopped.await;
        },
    ));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let limit = qb_controller::api::MAX_BODY_BYTES;
    for http2 in [false, true] {
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        tls.alpn_protocols = vec![if http2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls));
        // 4 MiB is more than HTTP/2's windows let a client send before the server reads.
        for (size, with_length) in [(limit + 1, true), (4 << 20, true), (4 << 20, false)] {
            let at = format!("HTTP/2: {http2}, {size} bytes, length given: {with_length}");
            let body = format!("{{\"name\": \"big\", \"pad\": \"{}\"}}", "x".repeat(size));
            let length = body.len();
            let sent = Arc::new(AtomicUsize::new(0));
            let counter = Arc::clone(&sent);
            let chunks: Vec<Bytes> = body
                .into_bytes()
                .chunks(16 * 1024)
                .map(Bytes::copy_from_slice)
                .collect();
            let body = StreamBody::new(futures_util::stream::iter(chunks).map(move |chunk| {
                counter.fetch_add(chunk.len(), Ordering::SeqCst);
                Ok::<_, Infallible>(Frame::data(chunk))
            }));
            let mut request = Request::post(if http2 {
                "https://localhost/api/v1/clusters"
            } else {
                "/api/v1/clusters"
            })
            .header(header::HOST, "localhost")
            .header(header::AUTHORIZATION, format!("Bearer {}", t.operator))
            .header(header::CONTENT_TYPE, "application/json");
            if with_length {
                request = request.header(header::CONTENT_LENGTH, length);
            }
            let request = request.body(body).unwrap();
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let io = TokioIo::new(
                tls.connect("localhost".try_into().unwrap(), tcp)
                    .await
                    .unwrap(),
            );
            let answer = async {
                if http2 {
                    let (mut sender, conn) =
                        hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                    tokio::spawn(conn);
                    sender.send_request(request).await
                } else {
                    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
                    tokio::spawn(conn);
                    sender.send_request(request).await
                }
            };
            let response = tokio::time::timeout(std::time::Duration::from_secs(60), answer)
                .await
                .unwrap_or_else(|_| panic!("{at}: no answer"))
                .unwrap_or_else(|e| panic!("{at}: {e:?}"));
            assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "{at}");
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "application/problem+json",
                "{at}"
            );
            let problem = response.into_body().collect().await.unwrap().to_bytes();
            let problem: Value = serde_json::from_slice(&problem).unwrap();
            assert_eq!(problem["code"], "payload_too_large", "{at}: {problem}");
            assert_eq!(
                sent.load(Ordering::SeqCst),
                length,
                "{at}: the client could send its whole body"
            );
        }
    }
    let (_, clusters) = app.get(&t.viewer, "/api/v1/clusters").await;
    assert_eq!(clusters["items"], json!([]), "nothing was created");
}
