//! The web UI's files, served by the controller under a strict content security policy.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};

use crate::support::{App, sqlite_store};

async fn get(app: &App, path: &str) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let (head, body) = app
        .respond(Request::get(path).body(Body::empty()).unwrap())
        .await;
    (head.status, head.headers, body.to_vec())
}

#[tokio::test]
async fn the_ui_is_served_with_its_policy_and_every_ui_address_loads_the_page() {
    let (store, _guard) = sqlite_store().await;
    let app = App::new(store).await;
    let index = qb_ui::index().body;
    for path in [
        "/",
        "/ui",
        "/ui/",
        "/ui/clusters/prod",
        "/ui/nope.js",
        "/ui/..%2FCargo.toml",
    ] {
        let (status, headers, body) = get(&app, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(
            headers[header::CONTENT_TYPE],
            "text/html; charset=utf-8",
            "{path}"
        );
        assert_eq!(body, index, "{path}");
        assert_eq!(
            headers[header::CONTENT_SECURITY_POLICY],
            qb_controller::ui::CONTENT_SECURITY_POLICY
        );
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
    }
    for asset in qb_ui::ASSETS {
        let (status, headers, body) = get(&app, &format!("/ui/{}", asset.name)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], asset.content_type);
        assert_eq!(body, asset.body);
    }
    // The API keeps its own answers: an unknown API path is a problem, not the page.
    let (status, value) = app.get("", "/api/v1/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{value}");
    // Only GET: the UI's addresses take no writes.
    let (head, _) = app
        .respond(Request::post("/ui/app.js").body(Body::empty()).unwrap())
        .await;
    assert_eq!(head.status, StatusCode::METHOD_NOT_ALLOWED);
}
