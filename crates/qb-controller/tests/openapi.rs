//! The committed OpenAPI document matches the API; `UPDATE_OPENAPI=1` rewrites it.

#[test]
fn committed_openapi_document_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let generated = qb_controller::openapi::document_json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date with the API: run `UPDATE_OPENAPI=1 cargo nextest run -p qb-controller openapi` and commit it",
        path.display()
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    for path in [
        "/api/v1/nodes",
        "/api/v1/clusters/{cluster}/attach",
        "/api/v1/events",
        "/api/v1/tokens",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["components"]["schemas"]["Problem"].is_object());
}

#[tokio::test]
async fn served_document_is_the_committed_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = qb_store::Store::open_sqlite(&dir.path().join("qb.db"))
        .await
        .unwrap();
    let app = crate::support::App::new(store).await;
    let (status, served) = app
        .call("", axum::http::Method::GET, "/api/v1/openapi.json", None)
        .await;
    assert_eq!(status, axum::http::StatusCode::OK);
    let generated: serde_json::Value =
        serde_json::from_str(&qb_controller::openapi::document_json()).unwrap();
    assert_eq!(served, generated);
}
