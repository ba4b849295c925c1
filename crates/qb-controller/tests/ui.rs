//! The web UI's files, served by the controller under a strict content security policy.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::support::{App, sqlite_store};

async fn get(app: &App, path: &str) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let response = app
        .router
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes().to_vec(),
    )
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
    let (status, value) = app.call("", Method::GET, "/api/v1/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{value}");
    // Only GET: the UI's addresses take no writes.
    let response = app
        .router
        .clone()
        .oneshot(Request::post("/ui/app.js").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}
