//! The HTTP client of the controller's REST API: requests to qb-api's `endpoints` (the method
//! and path come from there), pinned TLS, bearer token, problem-details errors, paging.

use std::sync::Arc;
use std::time::Duration;

use qb_api::endpoints::{self, Endpoint};
use qb_api::{Page, Problem, ProblemCode};
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::tls::{self, Fingerprint, PinnedVerifier, Trust};

/// How long to wait for a TCP connection and TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a whole request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a download may take, body included: packages are built on request and may be large.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long an upload may take, body included: artifacts may be hundreds of megabytes.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Items per page when listing everything.
const PAGE_SIZE: u32 = 1000;

/// Why a call to the controller failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The controller refused the request and said why.
    #[error("{} ({})", .problem.detail, code_name(.problem.code))]
    Problem { problem: Problem },
    #[error(
        "the controller at {server} rejected the token ({detail}): it expired or was revoked; run `qb login {server} --token NEW_TOKEN`"
    )]
    Unauthenticated { server: String, detail: String },
    #[error(
        "the controller's certificate changed: the context pins {expected} but {server} presented {seen}. \
         Someone may be intercepting the connection; if the change is expected (the controller got a new \
         certificate), run `qb login {server}` again"
    )]
    CertificateChanged {
        server: String,
        expected: Fingerprint,
        seen: Fingerprint,
    },
    #[error("cannot reach the controller at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error("the controller at {server} did not answer within {} seconds", .after.as_secs())]
    Timeout { server: String, after: Duration },
    #[error("unexpected answer from the controller (HTTP {status}): {body}")]
    Unexpected { status: StatusCode, body: String },
    #[error("cannot understand the controller's answer to {what}: {reason}")]
    Decode { what: String, reason: String },
    #[error("request to the controller at {server} failed: {reason}")]
    Transport { server: String, reason: String },
}

/// `not_found` for `ProblemCode::NotFound`: the code as it appears on the wire.
pub fn code_name(code: ProblemCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{code:?}"))
}

/// The innermost cause of an error: for a failed connection, the part a person can act on
/// ("Connection refused", "invalid peer certificate ...").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// The controller's base URL, checked: `https://`, or `http://` to a loopback address only (a token
/// must not cross a network in clear text).
pub fn parse_server(server: &str) -> anyhow::Result<Url> {
    let url = Url::parse(server)
        .map_err(|e| anyhow::anyhow!("invalid controller URL {server:?}: {e}"))?;
    if url.query().is_some() || url.fragment().is_some() {
        anyhow::bail!("invalid controller URL {server:?}: it must not have a query or fragment");
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => anyhow::bail!(
            "refusing plain http:// to {server}: the token would cross the network unencrypted; use https:// (plain HTTP is for loopback addresses only)"
        ),
        other => anyhow::bail!(
            "invalid controller URL {server:?}: unsupported scheme {other:?}; use https://"
        ),
    }
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A request to make: an endpoint's method and its URL, filled in.
pub struct Request {
    method: Method,
    url: Url,
}

/// The method `reqwest` sends for an endpoint's method.
fn http_method(method: endpoints::Method) -> Method {
    match method {
        endpoints::Method::Get => Method::GET,
        endpoints::Method::Head => Method::HEAD,
        endpoints::Method::Post => Method::POST,
        endpoints::Method::Put => Method::PUT,
        endpoints::Method::Patch => Method::PATCH,
        endpoints::Method::Delete => Method::DELETE,
    }
}

/// A connection to one controller.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
    verifier: Arc<PinnedVerifier>,
}

impl Client {
    /// A client for `server` that trusts what `trust` says (ignored for loopback `http://`).
    pub fn new(server: &str, trust: Trust, token: Option<String>) -> anyhow::Result<Self> {
        let base = parse_server(server)?;
        let (tls, verifier) = tls::client_config(trust)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("qb/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot set up the HTTP client: {}", root_cause(&e)))?;
        Ok(Self {
            http,
            base,
            token,
            verifier,
        })
    }

    /// The base URL, as the user would write it.
    pub fn server(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_owned()
    }

    /// The verifier, to read the certificate a server presented.
    pub fn verifier(&self) -> &PinnedVerifier {
        &self.verifier
    }

    /// A request to `endpoint`: `base` + its path with `params` filled in, each percent-encoded
    /// as one segment, + the query pairs that are set.
    pub fn request(
        &self,
        endpoint: &Endpoint,
        params: &[&str],
        query: &[(&str, Option<String>)],
    ) -> Request {
        let mut url = self.base.clone();
        {
            // A base URL with a scheme of http(s) always has path segments.
            if let Ok(mut path) = url.path_segments_mut() {
                path.pop_if_empty();
                path.extend(endpoint.segments(params));
            }
        }
        let set: Vec<_> = query
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (*k, v)))
            .collect();
        if !set.is_empty() {
            url.query_pairs_mut().extend_pairs(set);
        }
        Request {
            method: http_method(endpoint.method),
            url,
        }
    }

    /// Sends a request and returns the successful response, or the error the controller gave.
    async fn send(
        &self,
        request: Request,
        body: Option<Vec<u8>>,
    ) -> Result<reqwest::Response, ApiError> {
        self.send_within(request, body, REQUEST_TIMEOUT).await
    }

    /// [`Client::send`], the whole request (body included) limited to `timeout`.
    async fn send_within(
        &self,
        request: Request,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<reqwest::Response, ApiError> {
        let mut builder = self.builder(request, timeout);
        if let Some(body) = body {
            builder = builder
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(body);
        }
        self.execute(builder, timeout).await
    }

    /// A request with the token, limited to `timeout`.
    fn builder(&self, request: Request, timeout: Duration) -> reqwest::RequestBuilder {
        let builder = self
            .http
            .request(request.method, request.url)
            .timeout(timeout);
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Sends `request`; returns the successful response, or the error the controller gave.
    async fn execute(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, ApiError> {
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error_after(&e, timeout))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error_after(&e, timeout))?;
        Err(self.status_error(status, &bytes))
    }

    fn transport_error(&self, e: &reqwest::Error) -> ApiError {
        self.transport_error_after(e, REQUEST_TIMEOUT)
    }

    fn transport_error_after(&self, e: &reqwest::Error, timeout: Duration) -> ApiError {
        let server = self.server();
        if let Some((expected, seen)) = self.verifier.mismatch() {
            return ApiError::CertificateChanged {
                server,
                expected,
                seen,
            };
        }
        if e.is_timeout() {
            return ApiError::Timeout {
                server,
                after: timeout,
            };
        }
        if e.is_connect() {
            return ApiError::Unreachable {
                server,
                reason: root_cause(e),
            };
        }
        ApiError::Transport {
            server,
            reason: root_cause(e),
        }
    }

    fn status_error(&self, status: StatusCode, body: &[u8]) -> ApiError {
        let problem = serde_json::from_slice::<Problem>(body).ok();
        if status == StatusCode::UNAUTHORIZED {
            let detail = problem
                .map(|p| p.detail)
                .unwrap_or_else(|| "HTTP 401".to_owned());
            return ApiError::Unauthenticated {
                server: self.server(),
                detail,
            };
        }
        match problem {
            Some(problem) => ApiError::Problem { problem },
            None => {
                let text = String::from_utf8_lossy(body);
                let mut body: String = text.trim().chars().take(300).collect();
                if body.is_empty() {
                    body = status.canonical_reason().unwrap_or("no body").to_owned();
                }
                ApiError::Unexpected { status, body }
            }
        }
    }

    async fn decode<T: DeserializeOwned>(
        &self,
        response: reqwest::Response,
        what: &str,
    ) -> Result<T, ApiError> {
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode {
            what: what.to_owned(),
            reason: e.to_string(),
        })
    }

    /// `POST /api/v1/clusters`: what a request was, for an error about its answer.
    fn what(request: &Request) -> String {
        format!("{} {}", request.method, request.url.path())
    }

    /// Sends `request` without a body; its JSON answer.
    pub async fn call<T: DeserializeOwned>(&self, request: Request) -> Result<T, ApiError> {
        self.call_within(request, REQUEST_TIMEOUT).await
    }

    /// [`Client::call`], for work that takes a while on the controller.
    pub async fn call_within<T: DeserializeOwned>(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<T, ApiError> {
        let what = Self::what(&request);
        let response = self.send_within(request, None, timeout).await?;
        self.decode(response, &what).await
    }

    /// Sends `request` with `body` as JSON; its JSON answer.
    pub async fn call_with<B: Serialize, T: DeserializeOwned>(
        &self,
        request: Request,
        body: &B,
    ) -> Result<T, ApiError> {
        Ok(self.call_creating(request, body).await?.0)
    }

    /// [`Client::call_with`] for a request that may create: the answer, and whether the
    /// controller created something (201) rather than found it there already.
    pub async fn call_creating<B: Serialize, T: DeserializeOwned>(
        &self,
        request: Request,
        body: &B,
    ) -> Result<(T, bool), ApiError> {
        let what = Self::what(&request);
        let bytes = serde_json::to_vec(body).map_err(|e| ApiError::Decode {
            what: what.clone(),
            reason: e.to_string(),
        })?;
        let response = self.send(request, Some(bytes)).await?;
        let created = response.status() == StatusCode::CREATED;
        Ok((self.decode(response, &what).await?, created))
    }

    /// Sends `request` without a body, answered with `204 No Content`.
    pub async fn call_no_content(&self, request: Request) -> Result<(), ApiError> {
        self.send(request, None).await.map(drop)
    }

    /// Asks whether a resource exists (a `HEAD`): `true` on success, `false` on 404.
    pub async fn exists(&self, request: Request) -> Result<bool, ApiError> {
        let response = self
            .builder(request, REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        match response.status() {
            status if status.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            // A HEAD answer has no body to explain itself.
            status => Err(self.status_error(status, &[])),
        }
    }

    /// Sends raw bytes (`application/octet-stream`), answered with no content. The body is sent
    /// from memory.
    pub async fn upload(&self, request: Request, body: Vec<u8>) -> Result<(), ApiError> {
        let builder = self
            .builder(request, UPLOAD_TIMEOUT)
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )
            .body(body);
        self.execute(builder, UPLOAD_TIMEOUT).await.map(drop)
    }

    /// Sends `request` answered with a file: its headers are in, its body is read with
    /// [`Download::chunk`].
    pub async fn download(&self, request: Request) -> Result<Download<'_>, ApiError> {
        let response = self.send_within(request, None, DOWNLOAD_TIMEOUT).await?;
        Ok(Download {
            client: self,
            response,
        })
    }

    /// Every item of a paged list, following `next`, up to `max` items if given.
    pub async fn list<T: DeserializeOwned>(
        &self,
        endpoint: &Endpoint,
        filters: &[(&str, Option<String>)],
        max: Option<usize>,
    ) -> Result<Vec<T>, ApiError> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        if max == Some(0) {
            return Ok(items);
        }
        loop {
            let want = match max {
                Some(max) => (max - items.len()).min(PAGE_SIZE as usize) as u32,
                None => PAGE_SIZE,
            };
            let mut query = filters.to_vec();
            query.push(("limit", Some(want.to_string())));
            query.push(("after", after.clone()));
            let page: Page<T> = self.call(self.request(endpoint, &[], &query)).await?;
            items.extend(page.items);
            if let Some(max) = max.filter(|max| items.len() >= *max) {
                items.truncate(max);
                return Ok(items);
            }
            match page.next {
                Some(next) if Some(&next) == after.as_ref() => {
                    return Err(ApiError::Decode {
                        what: Self::what(&self.request(endpoint, &[], &[])),
                        reason: "the controller returned the same page cursor twice".to_owned(),
                    });
                }
                Some(next) => after = Some(next),
                None => return Ok(items),
            }
        }
    }
}

/// A response whose body is being read piece by piece.
pub struct Download<'a> {
    client: &'a Client,
    response: reqwest::Response,
}

impl Download<'_> {
    /// A response header, if present and printable.
    pub fn header(&self, name: reqwest::header::HeaderName) -> Option<&str> {
        self.response.headers().get(name)?.to_str().ok()
    }

    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<impl AsRef<[u8]> + use<>>, ApiError> {
        self.response
            .chunk()
            .await
            .map_err(|e| self.client.transport_error_after(&e, DOWNLOAD_TIMEOUT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_must_be_https_or_loopback_http() {
        for ok in [
            "https://qb.example.net:8443",
            "https://10.0.0.1",
            "http://127.0.0.1:8080",
            "http://localhost:1234/",
            "http://[::1]:80",
        ] {
            assert!(parse_server(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://qb.example.net",
            "http://10.0.0.1",
            "ftp://x",
            "qb.example.net",
            "https://x/?a=b",
        ] {
            assert!(parse_server(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_encode_segments_and_skip_unset_query() {
        let client =
            Client::new("https://qb.example.net:8443/", Trust::Probe, None).expect("client");
        assert_eq!(
            client
                .request(
                    &endpoints::GET_NODE,
                    &["a/../b c"],
                    &[("state", None), ("cluster", Some("x y".into()))]
                )
                .url
                .as_str(),
            "https://qb.example.net:8443/api/v1/nodes/a%2F..%2Fb%20c?cluster=x+y"
        );
        let behind_prefix = Client::new("https://h/qb", Trust::Probe, None).expect("client");
        assert_eq!(
            behind_prefix
                .request(&endpoints::WHOAMI, &[], &[])
                .url
                .as_str(),
            "https://h/qb/api/v1/whoami"
        );
        assert_eq!(client.server(), "https://qb.example.net:8443");
    }

    #[test]
    fn errors_name_the_code() {
        let client = Client::new("http://127.0.0.1:1", Trust::Probe, None).expect("client");
        let body = serde_json::to_vec(&Problem::new(ProblemCode::NotFound, "node \"x\" not found"))
            .expect("json");
        let err = client.status_error(StatusCode::NOT_FOUND, &body);
        assert_eq!(err.to_string(), "node \"x\" not found (not_found)");

        let body = serde_json::to_vec(&Problem::new(ProblemCode::Unauthenticated, "token revoked"))
            .expect("json");
        let err = client.status_error(StatusCode::UNAUTHORIZED, &body);
        assert!(
            err.to_string()
                .contains("expired or was revoked; run `qb login"),
            "{err}"
        );

        let err = client.status_error(StatusCode::BAD_GATEWAY, b"<html>proxy</html>");
        assert_eq!(
            err.to_string(),
            "unexpected answer from the controller (HTTP 502 Bad Gateway): <html>proxy</html>"
        );
    }

    use std::sync::Arc;

    use crate::fake_server::{self, Protocol};
    use qb_api::{TenantId, TokenId, Whoami};

    fn whoami_body() -> String {
        serde_json::json!({
            "tenant_id": TenantId::new(), "tenant": "default", "user": "admin",
            "role": "admin", "token_id": TokenId::new(),
        })
        .to_string()
    }

    async fn pinned_tls(protocol: Protocol) {
        let server = fake_server::start(
            protocol,
            Arc::new(|_: &fake_server::Seen| (200, whoami_body())),
        )
        .await;
        let presented = server.fingerprint.expect("TLS server has a fingerprint");

        // Probing reads the certificate and sends nothing.
        let probe = Client::new(&server.url, Trust::Probe, Some("secret".into())).expect("client");
        let result = probe
            .call::<serde_json::Value>(probe.request(&endpoints::WHOAMI, &[], &[]))
            .await;
        assert!(result.is_err(), "a probe never completes a request");
        assert_eq!(probe.verifier().seen(), Some(presented));
        assert!(
            server.requests().is_empty(),
            "the probe must not send a request"
        );

        // The pinned certificate is accepted, and the token is sent.
        let client =
            Client::new(&server.url, Trust::Pinned(presented), Some("t0k".into())).expect("client");
        let who: Whoami = client
            .call(client.request(&endpoints::WHOAMI, &[], &[]))
            .await
            .expect("pinned certificate works");
        assert_eq!(who.user.as_str(), "admin");
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].line, "GET /api/v1/whoami");
        assert_eq!(requests[0].authorization.as_deref(), Some("Bearer t0k"));

        // Any other certificate is refused before the token leaves.
        let other = Fingerprint::of_der(b"another certificate");
        let client =
            Client::new(&server.url, Trust::Pinned(other), Some("t0k".into())).expect("client");
        let err = client
            .call::<Whoami>(client.request(&endpoints::WHOAMI, &[], &[]))
            .await
            .expect_err("wrong pin");
        assert!(
            matches!(&err, ApiError::CertificateChanged { expected, seen, .. } if *expected == other && *seen == presented),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("certificate changed") && message.contains("run `qb login"),
            "{message}"
        );
        assert_eq!(server.requests().len(), 1);
    }

    #[tokio::test]
    async fn pinned_tls13() {
        pinned_tls(Protocol::Tls13).await;
    }

    #[tokio::test]
    async fn pinned_tls12() {
        pinned_tls(Protocol::Tls12).await;
    }

    #[tokio::test]
    async fn lists_follow_the_cursor() {
        // Items 0..7 in pages of 3, whatever limit is asked for.
        let handler = |seen: &fake_server::Seen| {
            let start: usize = seen
                .line
                .split(['?', '&'])
                .find_map(|p| p.strip_prefix("after="))
                .and_then(|a| a.parse().ok())
                .unwrap_or(0);
            let end = (start + 3).min(7);
            let next = (end < 7).then(|| end.to_string());
            (
                200,
                serde_json::json!({ "items": (start..end).collect::<Vec<_>>(), "next": next })
                    .to_string(),
            )
        };
        let server = fake_server::start(Protocol::Http, Arc::new(handler)).await;
        let client = Client::new(&server.url, Trust::Probe, Some("t".into())).expect("client");
        let filters = [("state", Some("pending".to_owned())), ("cluster", None)];
        let all: Vec<u32> = client
            .list(&endpoints::LIST_NODES, &filters, None)
            .await
            .expect("list");
        assert_eq!(all, [0, 1, 2, 3, 4, 5, 6]);
        let lines: Vec<String> = server.requests().into_iter().map(|r| r.line).collect();
        assert_eq!(
            lines,
            [
                "GET /api/v1/nodes?state=pending&limit=1000",
                "GET /api/v1/nodes?state=pending&limit=1000&after=3",
                "GET /api/v1/nodes?state=pending&limit=1000&after=6",
            ]
        );
        let some: Vec<u32> = client
            .list(&endpoints::LIST_EVENTS, &[], Some(4))
            .await
            .expect("list");
        assert_eq!(some, [0, 1, 2, 3]);
        let last = server.requests().pop().expect("request").line;
        assert_eq!(last, "GET /api/v1/events?limit=1&after=3");
    }

    #[tokio::test]
    async fn problems_and_bodies() {
        let handler = |seen: &fake_server::Seen| {
            let problem = Problem::new(ProblemCode::PoolExhausted, format!("asked {}", seen.body));
            (409, serde_json::to_string(&problem).unwrap_or_default())
        };
        let server = fake_server::start(Protocol::Http, Arc::new(handler)).await;
        let client = Client::new(&server.url, Trust::Probe, Some("t".into())).expect("client");
        let body = serde_json::json!({"count": 3});
        let err = client
            .call_with::<_, serde_json::Value>(
                client.request(&endpoints::ATTACH_NODES, &["c1"], &[]),
                &body,
            )
            .await
            .expect_err("409");
        assert_eq!(err.to_string(), r#"asked {"count":3} (pool_exhausted)"#);
    }

    #[tokio::test]
    async fn heads_uploads_and_creations() {
        let handler = |seen: &fake_server::Seen| match seen.line.as_str() {
            "HEAD /api/v1/artifacts/there" => (200, String::new()),
            "HEAD /api/v1/artifacts/missing" => (404, String::new()),
            "HEAD /api/v1/artifacts/broken" => (500, String::new()),
            "PUT /api/v1/artifacts/missing" => (204, String::new()),
            "PUT /api/v1/artifacts/bad" => {
                let problem = Problem::new(ProblemCode::InvalidInput, "the content's SHA-256 is x");
                (400, serde_json::to_string(&problem).unwrap_or_default())
            }
            "POST /api/v1/bundles" if seen.body.contains("new") => (201, seen.body.clone()),
            _ => (200, seen.body.clone()),
        };
        let server = fake_server::start(Protocol::Http, Arc::new(handler)).await;
        let client = Client::new(&server.url, Trust::Probe, Some("t".into())).expect("client");
        let exists = |name: &str| client.request(&endpoints::ARTIFACT_EXISTS, &[name], &[]);
        let upload = |name: &str| client.request(&endpoints::UPLOAD_ARTIFACT, &[name], &[]);
        assert!(client.exists(exists("there")).await.expect("head"));
        assert!(!client.exists(exists("missing")).await.expect("head"));
        let err = client.exists(exists("broken")).await.expect_err("500");
        assert!(matches!(err, ApiError::Unexpected { .. }), "{err:?}");

        client
            .upload(upload("missing"), b"content".to_vec())
            .await
            .expect("upload");
        let err = client
            .upload(upload("bad"), b"other".to_vec())
            .await
            .expect_err("refused");
        assert_eq!(
            err.to_string(),
            "the content's SHA-256 is x (invalid_input)"
        );
        let puts: Vec<(String, String, Option<String>)> = server
            .requests()
            .into_iter()
            .filter(|r| r.line.starts_with("PUT "))
            .map(|r| (r.line, r.body, r.authorization))
            .collect();
        assert_eq!(
            puts,
            [
                (
                    "PUT /api/v1/artifacts/missing".to_owned(),
                    "content".to_owned(),
                    Some("Bearer t".to_owned())
                ),
                (
                    "PUT /api/v1/artifacts/bad".to_owned(),
                    "other".to_owned(),
                    Some("Bearer t".to_owned())
                ),
            ]
        );

        let import = || client.request(&endpoints::IMPORT_BUNDLE, &[], &[]);
        let (value, created): (serde_json::Value, bool) = client
            .call_creating(import(), &serde_json::json!({"a": "new"}))
            .await
            .expect("post");
        assert_eq!((value["a"].as_str(), created), (Some("new"), true));
        let (_, created): (serde_json::Value, bool) = client
            .call_creating(import(), &serde_json::json!({"a": "old"}))
            .await
            .expect("post");
        assert!(!created);
    }

    #[tokio::test]
    async fn unreachable_controller() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let client =
            Client::new(&format!("http://{addr}"), Trust::Probe, Some("t".into())).expect("client");
        let err = client
            .call::<Whoami>(client.request(&endpoints::WHOAMI, &[], &[]))
            .await
            .expect_err("nothing listens");
        assert!(matches!(err, ApiError::Unreachable { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("cannot reach the controller at http://{addr}: ")),
            "{message}"
        );
        assert!(message.to_lowercase().contains("refused"), "{message}");
    }
}
