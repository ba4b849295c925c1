//! Web UI sessions: log in with a token, the cookie, CSRF, logout; the live stream; the UI's
//! files. A browser is a client of the same API: a viewer's session can change nothing, however
//! the request is made.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use qb_store::Store;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::{App, items, json_request, on_both_stores, pluck};

on_both_stores!(
    a_token_opens_a_session_that_works_like_it,
    cookie_changes_need_the_csrf_token_and_nothing_changes_without,
    a_viewer_session_cannot_change_anything_by_forged_requests,
    logout_revokes_the_session,
    bad_logins_open_nothing,
    the_live_stream_tells_of_changes_and_ends_with_the_session,
    passwords_open_sessions_and_failures_are_throttled,
    a_password_change_ends_the_users_other_sessions,
);

/// A browser's session: its cookie and CSRF token.
struct Browser {
    cookie: String,
    csrf: String,
    session: Value,
}

async fn login(app: &App, token: &str) -> Browser {
    login_with(app, json!({ "token": token })).await
}

/// A login: `POST /api/v1/session` with a JSON body.
fn session_request(body: &Value) -> Request<Body> {
    json_request(Request::post("/api/v1/session"), Some(body.clone()))
}

async fn login_with(app: &App, body: Value) -> Browser {
    let (head, answer) = app.respond(session_request(&body)).await;
    assert_eq!(head.status, StatusCode::CREATED);
    let set_cookie = head.headers[header::SET_COOKIE].to_str().unwrap();
    let session: Value = serde_json::from_slice(&answer).unwrap();
    Browser {
        cookie: set_cookie.split(';').next().unwrap().to_owned(),
        csrf: session["csrf_token"].as_str().unwrap().to_owned(),
        session,
    }
}

impl Browser {
    /// A request as the UI makes it: the cookie, and the CSRF header if `csrf` is given.
    fn request(
        &self,
        method: Method,
        path: &str,
        csrf: Option<&str>,
        body: Option<Value>,
    ) -> Request<Body> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::COOKIE, &self.cookie);
        if let Some(csrf) = csrf {
            req = req.header("x-csrf-token", csrf);
        }
        json_request(req, body)
    }

    async fn call(
        &self,
        app: &App,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        app.send(self.request(method, path, Some(&self.csrf), body))
            .await
    }

    async fn post(&self, app: &App, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(app, Method::POST, path, Some(body)).await
    }
}

async fn a_token_opens_a_session_that_works_like_it(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    let (head, _) = app
        .respond(session_request(&json!({ "token": t.operator })))
        .await;
    assert_eq!(head.status, StatusCode::CREATED);
    let cookie = head.headers[header::SET_COOKIE].to_str().unwrap();
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
        "Secure",
        "Max-Age=",
    ] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    assert!(
        !cookie.contains(&t.operator),
        "the cookie holds a new token, not the one given"
    );

    let b = login(&app, &t.operator).await;
    assert_eq!(
        (
            b.session["user"].as_str(),
            b.session["role"].as_str(),
            b.session["tenant"].as_str()
        ),
        (Some("op"), Some("operator"), Some("a"))
    );
    // The session is a token of the user's own, listed (never its secret) and short-lived.
    let (_, tokens) = app.get(&t.admin, "/api/v1/tokens").await;
    let sessions: Vec<&Value> = items(&tokens)
        .iter()
        .filter(|t| t["description"] == "web session")
        .collect();
    assert_eq!(sessions.len(), 2, "{tokens}");
    assert!(sessions.iter().all(|s| s["user"] == "op"));
    let expires = time::OffsetDateTime::parse(
        b.session["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(expires <= time::OffsetDateTime::now_utc() + time::Duration::hours(12));
    assert!(
        !tokens
            .to_string()
            .contains(b.cookie.trim_start_matches("qb_session="))
    );

    // Reads need no CSRF token; the session is shown again to a reloaded page.
    let (status, nodes) = app
        .send(b.request(Method::GET, "/api/v1/nodes", None, None))
        .await;
    assert_eq!(status, StatusCode::OK, "{nodes}");
    let (status, again) = app
        .send(b.request(Method::GET, "/api/v1/session", None, None))
        .await;
    assert_eq!((status, &again), (StatusCode::OK, &b.session));
    // The operator's session changes what the operator may.
    let (status, cluster) = b
        .post(&app, "/api/v1/clusters", json!({"name": "web"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{cluster}");
    // An Authorization header is judged alone: a bad token beside a good cookie is refused.
    let mut req = b.request(Method::GET, "/api/v1/nodes", None, None);
    req.headers_mut()
        .insert(header::AUTHORIZATION, "Bearer qb_nonsense".parse().unwrap());
    assert_eq!(app.send(req).await.0, StatusCode::UNAUTHORIZED);

    // A session never outlives the token that opened it.
    let (_, short) = app
        .post(
            &t.admin,
            "/api/v1/tokens",
            json!({"user": "view", "expires_in_hours": 1}),
        )
        .await;
    let s = login(&app, short["secret"].as_str().unwrap()).await;
    assert_eq!(s.session["expires_at"], short["token"]["expires_at"]);
}

async fn cookie_changes_need_the_csrf_token_and_nothing_changes_without(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    let pending = app.pending_nodes(t.id, "n", 1).await;
    let b = login(&app, &t.admin).await;
    let other = login(&app, &t.admin).await;
    let before = app.changes(t.id).await;
    let authorize = format!("/api/v1/nodes/{}/authorize", pending[0]);
    for csrf in [None, Some(""), Some("x"), Some(other.csrf.as_str())] {
        for (method, path, body) in [
            (Method::POST, authorize.as_str(), None),
            (
                Method::POST,
                "/api/v1/clusters",
                Some(json!({"name": "forged"})),
            ),
            (Method::POST, "/api/v1/tokens", Some(json!({"user": "op"}))),
            (Method::DELETE, "/api/v1/session", None),
        ] {
            let (status, problem) = app.send(b.request(method.clone(), path, csrf, body)).await;
            assert_eq!(
                (status, problem["code"].as_str()),
                (StatusCode::FORBIDDEN, Some("forbidden")),
                "{method} {path} with CSRF {csrf:?}: {problem}"
            );
            assert!(problem["detail"].as_str().unwrap().contains("X-CSRF-Token"));
        }
    }
    assert_eq!(
        app.changes(t.id).await,
        before,
        "a refused request changed something"
    );
    let (_, node) = app
        .send(b.request(
            Method::GET,
            &format!("/api/v1/nodes/{}", pending[0]),
            None,
            None,
        ))
        .await;
    assert_eq!(node["state"], "pending");
    // With its own CSRF token, the same request goes through.
    let (status, node) = b.call(&app, Method::POST, &authorize, None).await;
    assert_eq!(
        (status, node["state"].as_str()),
        (StatusCode::OK, Some("authorized")),
        "{node}"
    );
}

async fn a_viewer_session_cannot_change_anything_by_forged_requests(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    let pending = app.pending_nodes(t.id, "p", 1).await;
    let pool = app.pool(&t, "q", 2).await;
    let (_, cluster) = app
        .post(&t.admin, "/api/v1/clusters", json!({"name": "prod"}))
        .await;
    assert!(cluster["id"].is_string(), "{cluster}");
    let viewer = login(&app, &t.viewer).await;
    assert_eq!(viewer.session["role"], "viewer");
    let before = app.changes(t.id).await;

    // Every change the UI could offer, forged with the viewer's valid cookie and CSRF token.
    let forged = [
        (
            Method::POST,
            format!("/api/v1/nodes/{}/authorize", pending[0]),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/nodes/{}/deauthorize", pool[0]),
            None,
        ),
        (
            Method::DELETE,
            format!("/api/v1/nodes/{}", pending[0]),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/nodes/{}/labels", pool[0]),
            Some(json!({"set": {"a": "b"}})),
        ),
        (
            Method::POST,
            "/api/v1/clusters".to_owned(),
            Some(json!({"name": "mine"})),
        ),
        (
            Method::POST,
            "/api/v1/clusters/prod/attach".to_owned(),
            Some(json!({"count": 1})),
        ),
        (
            Method::POST,
            "/api/v1/clusters/prod/detach".to_owned(),
            Some(json!({"nodes": [pool[1]]})),
        ),
        (Method::DELETE, "/api/v1/clusters/prod".to_owned(), None),
        (
            Method::POST,
            "/api/v1/tokens".to_owned(),
            Some(json!({"user": "view"})),
        ),
        (
            Method::POST,
            "/api/v1/users".to_owned(),
            Some(json!({"name": "eve", "role": "admin"})),
        ),
        (
            Method::POST,
            "/api/v1/bootstrap-tokens".to_owned(),
            Some(json!({})),
        ),
        (
            Method::POST,
            "/api/v1/clusters/prod/preflight".to_owned(),
            None,
        ),
    ];
    for (method, path, body) in forged {
        let (status, problem) = viewer.call(&app, method.clone(), &path, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("viewer"),
            "{problem}"
        );
    }
    assert_eq!(
        app.changes(t.id).await,
        before,
        "a viewer's request changed something"
    );
    let (_, nodes) = viewer.call(&app, Method::GET, "/api/v1/nodes", None).await;
    let states = pluck(&nodes["items"], "state");
    assert_eq!(states, ["pending", "authorized", "authorized"]);
    // And another tenant's session sees none of it.
    let u = app.tenant("b").await;
    let stranger = login(&app, &u.admin).await;
    let (status, _) = stranger
        .call(&app, Method::GET, "/api/v1/clusters/prod", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, theirs) = stranger
        .call(&app, Method::GET, "/api/v1/nodes", None)
        .await;
    assert_eq!(theirs["items"], json!([]));
}

async fn logout_revokes_the_session(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    let b = login(&app, &t.admin).await;
    let (head, _) = app
        .respond(b.request(Method::DELETE, "/api/v1/session", Some(&b.csrf), None))
        .await;
    assert_eq!(head.status, StatusCode::NO_CONTENT);
    let cleared = head.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cleared.starts_with("qb_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    for path in ["/api/v1/session", "/api/v1/nodes"] {
        let (status, _) = app.send(b.request(Method::GET, path, None, None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} after logout");
    }
    // The token that opened it still works; the session's token is listed as revoked.
    let (status, tokens) = app.get(&t.admin, "/api/v1/tokens").await;
    assert_eq!(status, StatusCode::OK);
    let session = items(&tokens)
        .iter()
        .find(|t| t["description"] == "web session")
        .unwrap();
    assert!(session["revoked_at"].is_string(), "{session}");
}

async fn bad_logins_open_nothing(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    let before = app.changes(t.id).await;
    let unknown = format!("qb_{}", "0".repeat(64));
    for (body, content_type, expected) in [
        (
            json!({"token": unknown}).to_string(),
            "application/json",
            StatusCode::UNAUTHORIZED,
        ),
        (
            json!({"token": "hunter2"}).to_string(),
            "application/json",
            StatusCode::UNAUTHORIZED,
        ),
        (
            json!({"token": t.admin, "user": "admin"}).to_string(),
            "application/json",
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("token={}", t.admin),
            "application/x-www-form-urlencoded",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        ("{".to_owned(), "application/json", StatusCode::BAD_REQUEST),
    ] {
        let req = Request::post("/api/v1/session")
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body.clone()))
            .unwrap();
        let (head, _) = app.respond(req).await;
        assert_eq!(head.status, expected, "{body}");
        assert!(head.headers.get(header::SET_COOKIE).is_none());
    }
    assert_eq!(app.changes(t.id).await, before);
    let (status, _) = app
        .send(Request::get("/api/v1/session").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// The next server-sent event's name and data, within `within`.
async fn next_event(
    body: &mut Body,
    buffer: &mut String,
    within: Duration,
) -> Option<(String, String)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_owned())
            };
            match (field("event:"), field("data:")) {
                (Some(event), Some(data)) => return Some((event, data)),
                _ => continue, // a keep-alive comment
            }
        }
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .ok()??
            .ok()?;
        if let Ok(data) = frame.into_data() {
            buffer.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
}

async fn the_live_stream_tells_of_changes_and_ends_with_the_session(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    let b = login(&app, &t.operator).await;
    let response = app
        .router
        .clone()
        .oneshot(b.request(Method::GET, "/api/v1/changes", None, None))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = response.into_body();
    let mut buffer = String::new();
    let (event, first) = next_event(&mut body, &mut buffer, Duration::from_secs(5))
        .await
        .expect("a first event at once");
    assert_eq!(event, "change");
    let first: Value = serde_json::from_str(&first).unwrap();

    // A change made elsewhere (the CLI, here) reaches the browser within a few seconds.
    let (status, _) = app
        .post(&t.admin, "/api/v1/clusters", json!({"name": "live"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (event, next) = next_event(&mut body, &mut buffer, Duration::from_secs(5))
        .await
        .expect("a change event");
    assert_eq!(event, "change");
    let next: Value = serde_json::from_str(&next).unwrap();
    assert!(
        next["version"].as_u64() > first["version"].as_u64(),
        "{first} then {next}"
    );

    // Without the cookie there is no stream.
    let (status, _) = app
        .send(Request::get("/api/v1/changes").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Logging out (a change itself) ends the stream.
    let (status, _) = app
        .send(b.request(Method::DELETE, "/api/v1/session", Some(&b.csrf), None))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        next_event(&mut body, &mut buffer, Duration::from_secs(10)).await,
        None,
        "the stream goes on after logout"
    );
}

/// A password login's answer: status and problem code.
async fn password_login(
    app: &App,
    tenant: &str,
    user: &str,
    password: &str,
) -> (StatusCode, Value) {
    let body = json!({"tenant": tenant, "user": user, "password": password});
    app.send(session_request(&body)).await
}

async fn passwords_open_sessions_and_failures_are_throttled(store: Store) {
    let app = App::new(store.clone()).await;
    let t = app.tenant("a").await;
    let password = "correct horse battery staple";
    // Nobody has a password yet: the same answer as a wrong one.
    let (status, problem) = password_login(&app, "a", "op", password).await;
    assert_eq!(
        (status, problem["detail"].as_str()),
        (
            StatusCode::UNAUTHORIZED,
            Some("wrong tenant, user or password")
        )
    );

    // Who may set whose password, and which passwords.
    let set = |token: String, user: &'static str, password: &'static str| {
        let app = &app;
        async move {
            app.call(
                &token,
                Method::PUT,
                &format!("/api/v1/users/{user}/password"),
                Some(json!({ "password": password })),
            )
            .await
        }
    };
    let before = app.changes(t.id).await;
    assert_eq!(
        set(t.viewer.clone(), "op", password).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        set(t.operator.clone(), "admin", password).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, problem) = set(t.admin.clone(), "op", "too short").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_input"))
    );
    assert_eq!(
        set(t.admin.clone(), "nobody", password).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.changes(t.id).await,
        before,
        "a refused change wrote something"
    );
    let (status, user) = set(t.admin.clone(), "op", password).await;
    assert_eq!(
        (status, user["name"].as_str()),
        (StatusCode::OK, Some("op")),
        "{user}"
    );
    assert_eq!(
        set(t.viewer.clone(), "view", "the viewer's own secret")
            .await
            .0,
        StatusCode::OK
    );
    let events = app.events(t.id).await;
    let set_events: Vec<&str> = events
        .iter()
        .filter(|e| e.action == "user.password_set")
        .map(|e| e.object_name.as_str())
        .collect();
    assert_eq!(set_events, ["op", "view"]);
    let trail = serde_json::to_string(&events).unwrap();
    assert!(
        !trail.contains("horse") && !trail.contains("argon2"),
        "{trail}"
    );
    let (_, users) = app.get(&t.admin, "/api/v1/users").await;
    assert!(!users.to_string().contains("argon2"), "{users}");

    // The right password opens a session of that user, like a token would.
    let b = login_with(
        &app,
        json!({"tenant": "a", "user": "op", "password": password}),
    )
    .await;
    assert_eq!(
        (b.session["user"].as_str(), b.session["role"].as_str()),
        (Some("op"), Some("operator"))
    );
    let (status, _) = b
        .post(&app, "/api/v1/clusters", json!({"name": "pw"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // The same tenant and user elsewhere, another tenant's name, or a wrong password: no.
    app.tenant("b").await;
    for (tenant, user, pw) in [
        ("a", "op", "correct horse battery stapl"),
        ("b", "op", password),
        ("a", "nobody", password),
        ("nope", "op", password),
    ] {
        let (status, problem) = password_login(&app, tenant, user, pw).await;
        assert_eq!(
            (status, problem["detail"].as_str()),
            (
                StatusCode::UNAUTHORIZED,
                Some("wrong tenant, user or password")
            ),
            "{tenant}/{user}"
        );
    }
    // Mixed or partial credentials are malformed, not failures.
    for body in [
        json!({"token": t.admin, "user": "op"}),
        json!({"tenant": "a", "user": "op"}),
        json!({}),
    ] {
        let (status, _) = app.send(session_request(&body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }

    // Failures in a row make the user wait, even with the right password; others are not held up.
    for _ in 0..4 {
        assert_eq!(
            password_login(&app, "a", "op", "guess guess guess").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let (status, problem) = password_login(&app, "a", "op", password).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("too_many_attempts")),
        "{problem}"
    );
    assert_eq!(
        password_login(&app, "a", "view", "the viewer's own secret")
            .await
            .0,
        StatusCode::CREATED
    );
}

async fn a_password_change_ends_the_users_other_sessions(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    let old = "correct horse battery staple";
    let (status, _) = app
        .call(
            &t.admin,
            Method::PUT,
            "/api/v1/users/op/password",
            Some(json!({ "password": old })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let credentials = json!({"tenant": "a", "user": "op", "password": old});
    let (here, elsewhere) = (
        login_with(&app, credentials.clone()).await,
        login_with(&app, credentials).await,
    );
    let by_token = login(&app, &t.operator).await;
    let admins = login(&app, &t.admin).await;
    let works = |b: &Browser| {
        let request = b.request(Method::GET, "/api/v1/nodes", None, None);
        let app = &app;
        async move { app.send(request).await.0 }
    };
    let set_password = |b: &Browser, password: &str| {
        let body = Some(json!({ "password": password }));
        let request = b.request(
            Method::PUT,
            "/api/v1/users/op/password",
            Some(&b.csrf),
            body,
        );
        let app = &app;
        async move { app.send(request).await.0 }
    };

    // The user changes their own password in one session: the other one ends.
    assert_eq!(
        set_password(&here, "a new and longer secret").await,
        StatusCode::OK
    );
    assert_eq!(works(&here).await, StatusCode::OK);
    assert_eq!(works(&elsewhere).await, StatusCode::UNAUTHORIZED);
    // Every session of the user ends, the one opened with a token too; API tokens and other
    // users' sessions stay.
    assert_eq!(works(&by_token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(works(&admins).await, StatusCode::OK);
    let (status, _) = app.get(&t.operator, "/api/v1/nodes").await;
    assert_eq!(status, StatusCode::OK);

    // An admin sets it: every session of the user ends, none of the admin's.
    assert_eq!(
        set_password(&admins, "the admin's choice, again").await,
        StatusCode::OK
    );
    assert_eq!(works(&here).await, StatusCode::UNAUTHORIZED);
    assert_eq!(works(&admins).await, StatusCode::OK);
    let ended: Vec<u64> = app
        .events(t.id)
        .await
        .iter()
        .filter(|e| e.action == "user.password_set")
        .map(|e| e.detail["sessions_ended"].as_u64().unwrap())
        .collect();
    assert_eq!(ended, [0, 2, 1]);
    let (_, tokens) = app.get(&t.admin, "/api/v1/tokens").await;
    let revoked = items(&tokens)
        .iter()
        .filter(|t| t["description"] == "web session" && t["revoked_at"].is_string())
        .count();
    assert_eq!(revoked, 3, "{tokens}");
}
