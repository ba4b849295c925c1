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

/// Every endpoint the CLI calls (`qb_api::endpoints`) is an operation of the committed document,
/// with that method: the CLI calls no route the API lacks. Operations it does not call (the web
/// UI's) are listed, not refused.
#[test]
fn every_endpoint_the_cli_calls_is_documented() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let called: Vec<String> = qb_api::endpoints::ALL
        .iter()
        .map(|e| format!("{} {}", e.method.as_str(), e.template))
        .collect();
    let documented: Vec<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| format!("{} {path}", method.to_ascii_uppercase()))
        })
        .collect();
    let undocumented: Vec<&String> = called.iter().filter(|c| !documented.contains(c)).collect();
    assert!(
        undocumented.is_empty(),
        "qb_api::endpoints names operations {} does not have: {undocumented:?}",
        path.display()
    );
    let not_called: Vec<&String> = documented.iter().filter(|d| !called.contains(d)).collect();
    eprintln!("documented operations the CLI does not call: {not_called:?}");
}

#[tokio::test]
async fn served_document_is_the_committed_one() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        qb_store::Store::open_sqlite(&dir.path().join("qb.db"), qb_store::Keyring::ephemeral())
            .await
            .unwrap();
    let app = crate::support::App::new(store).await;
    let (status, served) = app.get("", "/api/v1/openapi.json").await;
    assert_eq!(status, axum::http::StatusCode::OK);
    let generated: serde_json::Value =
        serde_json::from_str(&qb_controller::openapi::document_json()).unwrap();
    assert_eq!(served, generated);
}

/// Every `$ref` points into the document: one that does not makes validators and client
/// generators refuse the whole document.
#[test]
fn every_reference_in_the_document_resolves() {
    let doc: serde_json::Value =
        serde_json::from_str(&qb_controller::openapi::document_json()).unwrap();
    let mut refs = Vec::new();
    references(&doc, &mut refs);
    assert!(refs.len() > 50, "{} references", refs.len());
    let unresolved: Vec<String> = refs
        .iter()
        .filter(|r| {
            r.as_str()
                .and_then(|r| r.strip_prefix('#'))
                .and_then(|pointer| doc.pointer(pointer))
                .is_none()
        })
        .map(ToString::to_string)
        .collect();
    assert!(unresolved.is_empty(), "unresolved: {unresolved:?}");
}

/// The values of every `$ref` key in `value`.
fn references<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                if key == "$ref" {
                    out.push(value);
                } else {
                    references(value, out);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| references(v, out)),
        _ => {}
    }
}

/// The rules of the OpenAPI specification that the generator does not enforce: operation ids
/// are unique; a path's `{parameters}` are exactly its required path parameters; every
/// operation says what it answers.
#[test]
fn operations_are_well_formed() {
    let doc: serde_json::Value =
        serde_json::from_str(&qb_controller::openapi::document_json()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut ids = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let mut templated: Vec<&str> = path
            .split('{')
            .skip(1)
            .filter_map(|s| s.split_once('}').map(|(name, _)| name))
            .collect();
        templated.sort_unstable();
        for (method, op) in item.as_object().unwrap() {
            let at = format!("{method} {path}");
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(!id.is_empty(), "{at}: no operation id");
            assert!(
                ids.insert(id.to_owned()),
                "{at}: operation id {id:?} repeated"
            );
            let params = op["parameters"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let mut in_path: Vec<&str> = params
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| {
                    assert_eq!(p["required"], true, "{at}: {p}");
                    p["name"].as_str().unwrap()
                })
                .collect();
            in_path.sort_unstable();
            assert_eq!(in_path, templated, "{at}: path parameters");
            let responses = op["responses"].as_object();
            assert!(
                responses.is_some_and(|r| !r.is_empty()),
                "{at}: no responses"
            );
        }
    }
}
