//! Web UI sessions. Logging in (with an API token, or with a user's password) opens a session:
//! a new token of the user (listed and revocable like any other, at most [`MAX_HOURS`] long and
//! never outliving a token that opened it; [`AppState::open_session`] makes it), kept by the
//! browser in an HttpOnly cookie. Requests with the cookie are the API's requests, under the
//! same rules; those that change anything must also carry the session's CSRF token, which only
//! pages of this controller can read.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use qb_api::{Login, ProblemCode, Session};
use qb_store::Principal;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::SessionLogin;
use crate::auth::{Caller, hash_secret, looks_like_token, unauthenticated};
use crate::extract::ApiJson;
use crate::{ApiError, AppState};

/// The cookie that carries a session's token.
pub const COOKIE: &str = "qb_session";
/// The header that carries a session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The longest a session lasts.
pub const MAX_HOURS: i64 = 12;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(current, login, logout))
}

/// The session token in a request's cookies, if it has one of the right form.
pub(crate) fn cookie_secret(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|value| looks_like_token(value))
}

/// The CSRF token of the session whose token is `secret`: derived from it, so nothing more is
/// stored, and useless without it.
pub fn csrf_token(secret: &str) -> String {
    hex::encode(Sha256::digest(format!("qb csrf\n{secret}")))
}

/// Refuses a request with the session cookie unless it carries the session's CSRF token.
pub(crate) fn check_csrf(headers: &HeaderMap, secret: &str) -> Result<(), ApiError> {
    let refused = || {
        ApiError::new(
            ProblemCode::Forbidden,
            "a change made with the session cookie needs the session's X-CSRF-Token header",
        )
    };
    let given = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(refused)?;
    // Compared as hashes, so the time taken tells nothing about the expected value.
    if Sha256::digest(given) == Sha256::digest(csrf_token(secret)) {
        Ok(())
    } else {
        Err(refused())
    }
}

/// Log in to the web UI, with an API token or with a tenant, user and password: opens a
/// session (a cookie) for the user.
#[utoipa::path(post, path = "/api/v1/session", tag = "session", request_body = Login,
    responses((status = 201, body = Session), (status = 401, body = qb_api::Problem),
        (status = 429, body = qb_api::Problem)))]
pub(crate) async fn login(
    State(app): State<AppState>,
    ApiJson(login): ApiJson<Login>,
) -> Result<Response, ApiError> {
    let login = match login {
        Login {
            token: Some(token),
            tenant: None,
            user: None,
            password: None,
        } => {
            let token = token.trim();
            if !looks_like_token(token) {
                return Err(unauthenticated(
                    "that is not a qb API token (they start with 'qb_')",
                ));
            }
            SessionLogin::Token(token.to_owned())
        }
        Login {
            token: None,
            tenant: Some(tenant),
            user: Some(user),
            password: Some(password),
        } => SessionLogin::Password {
            tenant,
            user,
            password,
        },
        _ => {
            return Err(ApiError::invalid(
                "log in with either \"token\", or \"tenant\", \"user\" and \"password\"",
            ));
        }
    };
    let opened = app.open_session(login).await?;
    let max_age = (opened.expires_at - OffsetDateTime::now_utc())
        .whole_seconds()
        .max(0);
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        opened.secret,
        secure(&app)
    );
    let session = Session {
        csrf_token: csrf_token(&opened.secret),
        tenant: opened.tenant,
        user: opened.user,
        role: opened.role,
        expires_at: opened.expires_at,
    };
    Ok((
        StatusCode::CREATED,
        [(header::SET_COOKIE, header_value(cookie))],
        Json(session),
    )
        .into_response())
}

/// The session of the request's cookie.
#[utoipa::path(get, path = "/api/v1/session", tag = "session",
    responses((status = 200, body = Session), (status = 401, body = qb_api::Problem)))]
pub(crate) async fn current(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Session>, ApiError> {
    let secret = cookie_secret(&headers).ok_or_else(|| unauthenticated("not logged in"))?;
    let caller = Caller::authenticate(&state, &hash_secret(secret)).await?;
    let expires_at = caller.0.token_expires_at;
    Ok(Json(session(&caller.0, secret, expires_at)))
}

/// Log out: the session's token is revoked and the cookie removed.
#[utoipa::path(delete, path = "/api/v1/session", tag = "session",
    responses((status = 204), (status = 403, body = qb_api::Problem)))]
pub(crate) async fn logout(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(secret) = cookie_secret(&headers) {
        check_csrf(&headers, secret)?;
        app.end_session(secret).await?;
    }
    let cookie = format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        secure(&app)
    );
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, header_value(cookie))],
    )
        .into_response())
}

fn session(principal: &Principal, secret: &str, expires_at: OffsetDateTime) -> Session {
    Session {
        tenant: principal.tenant.clone(),
        user: principal.user.clone(),
        role: principal.role,
        csrf_token: csrf_token(secret),
        expires_at,
    }
}

/// Cookies are only for HTTPS, unless the controller is known to be reached over plain HTTP
/// (on loopback, when asked for).
fn secure(state: &AppState) -> &'static str {
    match &state.public {
        Some(public) if public.url.starts_with("http://") => "",
        _ => "; Secure",
    }
}

fn header_value(cookie: String) -> HeaderValue {
    HeaderValue::try_from(cookie).expect("a cookie of token characters is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_session_cookie_is_found_among_others_and_only_in_a_token_form() {
        let secret = format!("qb_{}", "ab".repeat(32));
        let h = headers(&[
            ("cookie", "theme=dark"),
            ("cookie", &format!("a=1; {COOKIE}={secret}; b=2")),
        ]);
        assert_eq!(cookie_secret(&h), Some(secret.as_str()));
        assert_eq!(
            cookie_secret(&headers(&[("cookie", "qb_session=abc")])),
            None
        );
        assert_eq!(
            cookie_secret(&headers(&[("cookie", "xqb_session=qb_1")])),
            None
        );
        assert_eq!(cookie_secret(&HeaderMap::new()), None);
    }

    #[test]
    fn csrf_tokens_belong_to_their_session() {
        let a = format!("qb_{}", "ab".repeat(32));
        let b = format!("qb_{}", "cd".repeat(32));
        assert_ne!(csrf_token(&a), csrf_token(&b));
        assert!(!csrf_token(&a).contains(&a[3..]));
        let ok = headers(&[(CSRF_HEADER, &csrf_token(&a))]);
        assert!(check_csrf(&ok, &a).is_ok());
        assert!(check_csrf(&ok, &b).is_err());
        assert!(check_csrf(&HeaderMap::new(), &a).is_err());
    }
}
