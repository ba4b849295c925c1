//! The reverse proxy: HTTP/1.1 and HTTP/2 from clients (HTTP/2 by ALPN on TLS, by prior
//! knowledge on plain HTTP), each request routed by the routing table of the moment it arrives
//! (so a new table takes effect on open connections without closing them), and sent over
//! pooled keep-alive HTTP/1.1 connections to the backend's endpoints. WebSocket (and other
//! HTTP/1.1) upgrades are passed through.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::routes::{Backend, Routes};

pub type Body = BoxBody<Bytes, hyper::Error>;

/// How long connecting to an endpoint may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an idle pooled connection to an endpoint is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// The current routing table, replaced whole on every change.
#[derive(Clone, Default)]
pub struct SharedRoutes(Arc<RwLock<Arc<Routes>>>);

impl SharedRoutes {
    pub fn get(&self) -> Arc<Routes> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, routes: Routes) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes);
    }
}

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
    client: Client<HttpConnector, Body>,
    /// Tracks open connections until [`Proxy::shut_down`] takes it.
    graceful: Arc<Mutex<Option<GracefulShutdown>>>,
}

impl Proxy {
    pub fn new(routes: SharedRoutes) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .set_host(false)
            .build(connector);
        Self {
            routes,
            client,
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
    pub async fn serve_http(self, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, remote) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(
                self.clone()
                    .connection(TokioIo::new(stream), remote, Scheme::Http),
            );
        }
    }

    /// Serves HTTPS on `listener`, each connection's certificate chosen by `tls`.
    pub async fn serve_https(self, listener: TcpListener, tls: TlsAcceptor) -> std::io::Result<()> {
        loop {
            let (stream, remote) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let (me, tls) = (self.clone(), tls.clone());
            tokio::spawn(async move {
                match tls.accept(stream).await {
                    Ok(stream) => {
                        me.connection(TokioIo::new(stream), remote, Scheme::Https)
                            .await
                    }
                    Err(e) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
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
        let builder = auto::Builder::new(TokioExecutor::new());
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
        let Some(host) = request_host(&req) else {
            return error(StatusCode::BAD_REQUEST, "the request names no host\n");
        };
        let routes = self.routes.get();
        let Some(backend) = routes.route(&host, req.uri().path()) else {
            return error(
                StatusCode::NOT_FOUND,
                "no Ingress routes this host and path\n",
            );
        };
        let backend = backend.clone();
        drop(routes);
        let upgrade = wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let headers = forwarded_headers(&parts.headers, &host, remote, scheme, upgrade.is_some());
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let empty = body.is_end_stream();
        let mut body = Some(body.boxed());
        let mut last = None;
        for endpoint in backend.endpoints() {
            // A request whose body was sent cannot go again; one without a body can, when
            // its endpoint refused the connection.
            let attempt = match body.take() {
                Some(body) => body,
                None if empty => Empty::new().map_err(|never| match never {}).boxed(),
                None => break,
            };
            let uri = Uri::builder()
                .scheme("http")
                .authority(endpoint.authority.clone())
                .path_and_query(path.as_str())
                .build();
            let Ok(uri) = uri else {
                return error(StatusCode::BAD_REQUEST, "the request's path is not valid\n");
            };
            let mut upstream = Request::new(attempt);
            *upstream.method_mut() = parts.method.clone();
            *upstream.uri_mut() = uri;
            *upstream.version_mut() = Version::HTTP_11;
            *upstream.headers_mut() = headers.clone();
            match self.client.request(upstream).await {
                Ok(mut response) => {
                    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                    if switching && let Some(client_side) = upgrade {
                        let backend_side = hyper::upgrade::on(&mut response);
                        tokio::spawn(tunnel(client_side, backend_side));
                    }
                    strip_hop_by_hop(response.headers_mut(), switching);
                    return response.map(BodyExt::boxed);
                }
                Err(e) if e.is_connect() => {
                    tracing::debug!(backend = %backend.name, endpoint = %endpoint.addr, error = %e, "endpoint refused; trying the next");
                    last = Some(e);
                }
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        bad_gateway(&backend, last)
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

fn bad_gateway(
    backend: &Backend,
    error: Option<hyper_util::client::legacy::Error>,
) -> Response<Body> {
    match (error, &backend.problem) {
        (None, Some(problem)) => {
            tracing::debug!(backend = %backend.name, problem, "no endpoint to send to");
            self::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the backend has no ready endpoints\n",
            )
        }
        (None, None) => self::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the backend has no ready endpoints\n",
        ),
        (Some(e), _) => {
            tracing::warn!(backend = %backend.name, error = format!("{:#}", anyhow::Error::new(e)), "the backend failed");
            self::error(StatusCode::BAD_GATEWAY, "the backend did not answer\n")
        }
    }
}

pub fn error(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The host a request is for, in lower case without its port: HTTP/2's `:authority` (or an
/// absolute URI's), else the `Host` header.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let host = match req.uri().authority() {
        Some(authority) => authority.host().to_owned(),
        None => {
            let value = req.headers().get(header::HOST)?.to_str().ok()?;
            let authority: hyper::http::uri::Authority = value.parse().ok()?;
            authority.host().to_owned()
        }
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
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
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
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
/// `Host` kept as the client sent it, and where the request came from in `X-Forwarded-*`.
fn forwarded_headers(
    original: &HeaderMap,
    host: &str,
    remote: SocketAddr,
    scheme: Scheme,
    upgrade: bool,
) -> HeaderMap {
    let mut headers = original.clone();
    strip_hop_by_hop(&mut headers, upgrade);
    if !headers.contains_key(header::HOST)
        && let Ok(value) = HeaderValue::from_str(host)
    {
        headers.insert(header::HOST, value);
    }
    let client = remote.ip().to_string();
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(before) => format!("{before}, {client}"),
        None => client.clone(),
    };
    for (name, value) in [
        ("x-forwarded-for", forwarded_for.as_str()),
        ("x-real-ip", client.as_str()),
        ("x-forwarded-proto", scheme.as_str()),
        ("x-forwarded-host", host),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    headers
}

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
        let headers =
            forwarded_headers(&original, "shop.example.org", remote, Scheme::Https, false);
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
        let headers = forwarded_headers(&upgrade, "h.test", remote, Scheme::Http, true);
        assert_eq!(headers[header::UPGRADE], "websocket");
        assert_eq!(headers[header::CONNECTION], "upgrade");
        assert_eq!(headers[header::HOST], "h.test");
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
