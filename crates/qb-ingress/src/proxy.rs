//! The reverse proxy: HTTP/1.1 and HTTP/2 from clients (HTTP/2 by ALPN on TLS, by prior
//! knowledge on plain HTTP), each request routed by the routing table of the moment it arrives
//! (so a new table takes effect on open connections without closing them), and sent over
//! pooled keep-alive HTTP/1.1 connections to the backend's endpoints. WebSocket (and other
//! HTTP/1.1) upgrades are passed through.

use std::borrow::Cow;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::pool::{Pool, Returning, SendError};
use crate::routes::Routes;

/// A response's body: the endpoint's, or one the proxy wrote.
pub enum Body {
    Endpoint(Returning),
    Local(Full<Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Body::Endpoint(body) => Pin::new(body).poll_frame(cx),
            Body::Local(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Endpoint(body) => body.is_end_stream(),
            Body::Local(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Endpoint(body) => body.size_hint(),
            Body::Local(body) => body.size_hint(),
        }
    }
}

/// The current routing table, replaced whole on every change. Each thread keeps the table it
/// last read and reads again only when the generation moved, so the requests of different
/// threads share no counter.
#[derive(Clone, Default)]
pub struct SharedRoutes(Arc<RoutesCell>);

#[derive(Default)]
struct RoutesCell {
    generation: AtomicU64,
    table: RwLock<Arc<Routes>>,
}

thread_local! {
    /// This thread's copy: the table, its generation, and whose it is.
    static CACHED: RefCell<Option<(usize, u64, Arc<Routes>)>> = const { RefCell::new(None) };
}

impl SharedRoutes {
    pub fn get(&self) -> Arc<Routes> {
        self.0
            .table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set(&self, routes: Routes) {
        *self.0.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes);
        self.0.generation.fetch_add(1, Ordering::Release);
    }

    /// Whether a table was set: before, nothing is known of the cluster's Ingresses.
    pub fn loaded(&self) -> bool {
        self.0.generation.load(Ordering::Relaxed) > 0
    }

    /// `f` of the current table, from this thread's copy when it is current.
    pub fn with<T>(&self, f: impl FnOnce(&Routes) -> T) -> T {
        let owner = Arc::as_ptr(&self.0) as usize;
        let generation = self.0.generation.load(Ordering::Acquire);
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            match &*cached {
                Some((o, g, table)) if *o == owner && *g == generation => f(table),
                _ => {
                    let table = self.get();
                    let result = f(&table);
                    *cached = Some((owner, generation, table));
                    result
                }
            }
        })
    }
}

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The proxy: routes and a pool of connections to endpoints.
#[derive(Clone)]
pub struct Proxy {
    routes: SharedRoutes,
    pool: Pool,
    /// Tracks open connections until [`Proxy::shut_down`] takes it.
    graceful: Arc<Mutex<Option<GracefulShutdown>>>,
}

impl Proxy {
    pub fn new(routes: SharedRoutes) -> Self {
        Self {
            routes,
            pool: Pool::default(),
            graceful: Arc::new(Mutex::new(Some(GracefulShutdown::new()))),
        }
    }

    /// Asks every open connection to finish (HTTP/1.1 after its current request, HTTP/2 with
    /// GOAWAY) and waits for them, at most `within`; new connections are closed at once.
    pub async fn shut_down(&self, within: Duration) {
        let graceful = self
            .graceful
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(graceful) = graceful
            && tokio::time::timeout(within, graceful.shutdown())
                .await
                .is_err()
        {
            tracing::info!("connections still open after {within:?}; closing them");
        }
    }

    /// Serves plain HTTP (HTTP/1.1, or HTTP/2 with prior knowledge) on `listener`, until the
    /// process ends.
    pub async fn serve_http(self, listener: TcpListener) {
        loop {
            let (stream, remote) = accept(&listener).await;
            tokio::spawn(
                self.clone()
                    .connection(TokioIo::new(stream), remote, Scheme::Http),
            );
        }
    }

    /// Serves HTTPS on `listener`, each connection's certificate chosen by `tls`.
    pub async fn serve_https(self, listener: TcpListener, tls: TlsAcceptor) {
        loop {
            let (stream, remote) = accept(&listener).await;
            let (me, tls) = (self.clone(), tls.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        me.connection(TokioIo::new(stream), remote, Scheme::Https)
                            .await
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "no TLS handshake in {HANDSHAKE_TIMEOUT:?}"),
                }
            });
        }
    }

    async fn connection<I>(self, io: TokioIo<I>, remote: SocketAddr, scheme: Scheme)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let watcher = {
            let graceful = self.graceful.lock().unwrap_or_else(|p| p.into_inner());
            match graceful.as_ref() {
                Some(graceful) => graceful.watcher(),
                None => return,
            }
        };
        let service = hyper::service::service_fn(move |req| {
            let me = self.clone();
            async move { Ok::<_, std::convert::Infallible>(me.handle(req, remote, scheme).await) }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // A client gets this long for a request's head, and for its next one on a kept
        // connection; HTTP/2 connections are pinged when idle.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(HEADER_TIMEOUT);
        let connection = builder.serve_connection_with_upgrades(io, service);
        if let Err(e) = watcher.watch(connection).await {
            tracing::debug!(%remote, error = %e, "connection ended with an error");
        }
    }

    /// Routes and forwards one request.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        remote: SocketAddr,
        scheme: Scheme,
    ) -> Response<Body> {
        if !self.routes.loaded() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "starting: the routes are not loaded yet\n",
            );
        }
        if req.headers().get_all(header::HOST).iter().count() > 1 {
            return error(
                StatusCode::BAD_REQUEST,
                "the request has more than one Host\n",
            );
        }
        let Some(host) = request_host(&req) else {
            return error(StatusCode::BAD_REQUEST, "the request names no host\n");
        };
        let host = host.into_owned();
        if !plain_path(req.uri().path()) {
            return error(
                StatusCode::BAD_REQUEST,
                "the path has dot segments or encoded dots or slashes\n",
            );
        }
        let backend = self
            .routes
            .with(|routes| routes.route(&host, req.uri().path()).cloned());
        let Some(backend) = backend else {
            return error(
                StatusCode::NOT_FOUND,
                "no Ingress routes this host and path\n",
            );
        };
        let upgrade = wants_websocket(&req).then(|| hyper::upgrade::on(&mut req));
        // The host routed by is the host the backend sees, port and all.
        if let Some(authority) = req.uri().authority()
            && let Ok(value) = HeaderValue::from_str(authority.as_str())
        {
            req.headers_mut().insert(header::HOST, value);
        }
        if req.version() == Version::HTTP_2 {
            join_cookies(req.headers_mut());
        }
        forward_headers(req.headers_mut(), &host, remote, scheme, upgrade.is_some());
        // Origin-form, as a request to a server (not to a proxy) is written.
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
        *req.version_mut() = Version::HTTP_11;
        match self.pool.send(&backend, req).await {
            Ok(mut response) => {
                let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                match (switching, upgrade) {
                    (true, Some(client_side)) => {
                        let backend_side = hyper::upgrade::on(&mut response);
                        tokio::spawn(tunnel(client_side, backend_side));
                    }
                    (true, None) => {
                        tracing::warn!(backend = %backend.name, "the backend switched protocols unasked");
                        return error(
                            StatusCode::BAD_GATEWAY,
                            "the backend switched protocols unasked\n",
                        );
                    }
                    (false, _) => {}
                }
                strip_hop_by_hop(response.headers_mut(), switching);
                response.map(Body::Endpoint)
            }
            Err(SendError::Timeout { .. }) => {
                tracing::warn!(backend = %backend.name, "the backend did not answer in time");
                error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the backend did not answer in time\n",
                )
            }
            Err(SendError::NoEndpoints) => {
                tracing::debug!(backend = %backend.name, problem = ?backend.problem, "no endpoint to send to");
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the backend has no ready endpoints\n",
                )
            }
            Err(e) => {
                tracing::warn!(backend = %backend.name, error = format!("{:#}", anyhow::Error::new(e)), "the backend failed");
                error(StatusCode::BAD_GATEWAY, "the backend did not answer\n")
            }
        }
    }
}

/// After both sides switched protocols: bytes both ways until either closes.
async fn tunnel(client: hyper::upgrade::OnUpgrade, backend: hyper::upgrade::OnUpgrade) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "an upgrade did not complete");
            return;
        }
    };
    let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
    let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
}

/// The next connection of `listener`. Errors (out of file descriptors, a connection reset
/// before it was taken) are logged and waited out: the listener keeps serving.
async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                return (stream, remote);
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

pub fn error(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::Local(Full::new(Bytes::from_static(text.as_bytes()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The host a request is for, in lower case without its port or a final dot: HTTP/2's
/// `:authority` (or an absolute URI's), else the `Host` header. Borrowed when already so.
fn request_host<B>(req: &Request<B>) -> Option<Cow<'_, str>> {
    let host = match req.uri().authority() {
        Some(authority) => authority.host(),
        None => {
            let value = req.headers().get(header::HOST)?.to_str().ok()?;
            let host = match value.strip_prefix('[') {
                // An IPv6 address, with its brackets.
                Some(rest) => &value[..rest.find(']')? + 2],
                None => match value.rsplit_once(':') {
                    Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
                    _ => value,
                },
            };
            let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b);
            if host.is_empty() || !host.bytes().all(allowed) {
                return None;
            }
            host
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// A WebSocket handshake (the one upgrade passed through: others, such as `h2c`, would reach
/// paths no Ingress routes).
fn wants_websocket<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Whether `path` is as a backend resolves it: no `.` or `..` segments, no encoded dots or
/// slashes that it would decode into them (a `Prefix /public` rule must not reach
/// `/public/../secret`).
fn plain_path(path: &str) -> bool {
    let lower = path.as_bytes();
    let encoded = lower.windows(3).any(|w| {
        w[0] == b'%'
            && (w[1..].eq_ignore_ascii_case(b"2e")
                || w[1..].eq_ignore_ascii_case(b"2f")
                || w[1..].eq_ignore_ascii_case(b"5c"))
    });
    !encoded
        && !path.contains('\\')
        && !path
            .split('/')
            .any(|segment| segment == "." || segment == "..")
}

/// HTTP/2 clients may split `Cookie` into several fields; HTTP/1.1 servers expect one, joined
/// with `; ` (RFC 9113, 8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().count() < 2 {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(value) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, value);
    }
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Headers that belong to one connection, not to the request (RFC 9110, 7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    let upgrade = keep_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The request's headers as the backend gets them: hop-by-hop ones removed (but an upgrade's),
/// `Host` kept as the client sent it (or set from HTTP/2's authority), and where the request
/// came from in `X-Forwarded-*`.
fn forward_headers(
    headers: &mut HeaderMap,
    host: &str,
    remote: SocketAddr,
    scheme: Scheme,
    upgrade: bool,
) {
    strip_hop_by_hop(headers, upgrade);
    if !headers.contains_key(header::HOST)
        && let Ok(value) = HeaderValue::from_str(host)
    {
        headers.insert(header::HOST, value);
    }
    let client = remote.ip().to_string();
    let forwarded_for = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(before) => HeaderValue::from_str(&format!("{before}, {client}")),
        None => HeaderValue::from_str(&client),
    };
    if let Ok(client) = HeaderValue::from_str(&client) {
        headers.insert(X_REAL_IP, client);
    }
    if let Ok(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme.as_str()));
    // The host as asked (the Host header's value, port and all, is shared, not copied).
    let forwarded_host = match headers.get(header::HOST) {
        Some(value) => Ok(value.clone()),
        None => HeaderValue::from_str(host),
    };
    if let Ok(value) = forwarded_host {
        headers.insert(X_FORWARDED_HOST, value);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_stay_behind_and_the_client_is_named() {
        let mut original = HeaderMap::new();
        for (name, value) in [
            ("host", "Shop.Example.org:8080"),
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "secret"),
            ("te", "trailers"),
            ("x-forwarded-for", "192.0.2.1"),
            ("accept", "text/html"),
        ] {
            original.append(name, HeaderValue::from_static(value));
        }
        let remote: SocketAddr = "198.51.100.7:4000".parse().expect("an address");
        let mut headers = original.clone();
        forward_headers(
            &mut headers,
            "shop.example.org",
            remote,
            Scheme::Https,
            false,
        );
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept",
                "host",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto",
                "x-real-ip"
            ]
        );
        assert_eq!(headers["host"], "Shop.Example.org:8080");
        assert_eq!(headers["x-forwarded-for"], "192.0.2.1, 198.51.100.7");
        assert_eq!(headers["x-forwarded-proto"], "https");

        let mut upgrade = HeaderMap::new();
        upgrade.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        upgrade.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let mut headers = upgrade.clone();
        forward_headers(&mut headers, "h.test", remote, Scheme::Http, true);
        assert_eq!(headers[header::UPGRADE], "websocket");
        assert_eq!(headers[header::CONNECTION], "upgrade");
        assert_eq!(headers[header::HOST], "h.test");
    }

    #[test]
    fn paths_that_climb_or_hide_a_slash_are_not_plain() {
        for plain in ["/", "/a/b", "/a/b/", "/a.b/c..d", "/%41", "/a%20b"] {
            assert!(plain_path(plain), "{plain}");
        }
        for climbing in [
            "/a/../b",
            "/..",
            "/a/.",
            "/./a",
            "/a/%2e%2E/b",
            "/a%2fb",
            "/a%5cb",
            "/a\\b",
        ] {
            assert!(!plain_path(climbing), "{climbing}");
        }
    }

    #[test]
    fn split_cookies_are_joined_and_hop_by_hop_stays_but_trailers() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        join_cookies(&mut headers);
        assert_eq!(
            headers.get_all(header::COOKIE).iter().collect::<Vec<_>>(),
            ["a=1; b=2"]
        );

        let mut headers = HeaderMap::new();
        headers.insert(header::TRAILER, HeaderValue::from_static("x-checksum"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        headers.insert("http2-settings", HeaderValue::from_static("AAA"));
        strip_hop_by_hop(&mut headers, false);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["trailer"]);
    }

    #[test]
    fn the_host_comes_from_the_authority_or_the_host_header() {
        let req = |uri: &str, host: Option<&str>| {
            let mut builder = Request::builder().uri(uri);
            if let Some(host) = host {
                builder = builder.header(header::HOST, host);
            }
            builder.body(()).expect("a request")
        };
        assert_eq!(
            request_host(&req("https://WWW.Example.org:443/x", None)).as_deref(),
            Some("www.example.org")
        );
        assert_eq!(
            request_host(&req("/x", Some("shop.test:8080"))).as_deref(),
            Some("shop.test")
        );
        assert_eq!(
            request_host(&req("/x", Some("shop.test."))).as_deref(),
            Some("shop.test")
        );
        assert_eq!(
            request_host(&req("/x", Some("[fd00::1]:80"))).as_deref(),
            Some("[fd00::1]")
        );
        assert_eq!(request_host(&req("/x", None)), None);
        assert_eq!(request_host(&req("/x", Some("bad host"))), None);
    }
}
