//! The ingress proxy on real sockets: backends are small HTTP servers on loopback standing in
//! for pods, the routing table is built from Ingress, Service and Endpoints objects as the
//! watch builds it, and clients are reqwest (HTTP/1.1, HTTP/2, TLS) and a raw socket for the
//! WebSocket upgrade.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Endpoints, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use qb_ingress::proxy::{Proxy, SharedRoutes};
use qb_ingress::routes::Routes;
use qb_ingress::tls::{CertResolver, Certificates, server_config};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// A backend standing in for a pod: answers `<name> <path> host=<Host> proto=<X-Forwarded-Proto>`,
/// echoes bytes after an upgrade, and counts the connections it accepted.
struct Backend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

async fn backend(name: &'static str) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let addr = listener.local_addr().expect("its address");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |mut req: Request<hyper::body::Incoming>| async move {
                        if req.headers().contains_key(hyper::header::UPGRADE) {
                            let upgrade = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                let Ok(upgraded) = upgrade.await else { return };
                                let (mut read, mut write) =
                                    tokio::io::split(TokioIo::new(upgraded));
                                let _ = tokio::io::copy(&mut read, &mut write).await;
                            });
                            let response = Response::builder()
                                .status(StatusCode::SWITCHING_PROTOCOLS)
                                .header("upgrade", "websocket")
                                .header("connection", "upgrade")
                                .body(Full::new(Bytes::new()))
                                .expect("a response");
                            return Ok::<_, std::convert::Infallible>(response);
                        }
                        let header = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_owned()
                        };
                        let text = format!(
                            "{name} {} host={} proto={} for={}",
                            req.uri(),
                            header("host"),
                            header("x-forwarded-proto"),
                            header("x-forwarded-for")
                        );
                        Ok(Response::new(Full::new(Bytes::from(text))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Backend { addr, connections }
}

fn object<T: for<'de> k8s_openapi::serde::Deserialize<'de>>(value: serde_json::Value) -> Arc<T> {
    Arc::new(serde_json::from_value(value).expect("a valid object"))
}

/// A Service `name` on port 80 and its Endpoints at `addrs`.
fn service(name: &str, addrs: &[SocketAddr]) -> (Arc<Service>, Arc<Endpoints>) {
    let subsets: Vec<_> = addrs
        .iter()
        .map(|a| json!({"addresses": [{"ip": a.ip().to_string()}], "ports": [{"port": a.port()}]}))
        .collect();
    (
        object(json!({
            "metadata": {"namespace": "default", "name": name},
            "spec": {"clusterIP": "10.96.0.50", "ports": [{"port": 80}]},
        })),
        object(json!({"metadata": {"namespace": "default", "name": name}, "subsets": subsets})),
    )
}

fn ingress(rules: serde_json::Value, tls: serde_json::Value) -> Arc<Ingress> {
    object(json!({
        "metadata": {"namespace": "default", "name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"ingressClassName": "qb", "rules": rules, "tls": tls},
    }))
}

fn rule(host: &str, paths: &[(&str, &str)]) -> serde_json::Value {
    let paths: Vec<_> = paths
        .iter()
        .map(|(path, svc)| {
            json!({"path": path, "pathType": "Prefix",
                   "backend": {"service": {"name": svc, "port": {"number": 80}}}})
        })
        .collect();
    json!({"host": host, "http": {"paths": paths}})
}

struct Running {
    http: SocketAddr,
    https: SocketAddr,
    routes: SharedRoutes,
    certificates: Arc<CertResolver>,
}

async fn start_proxy() -> Running {
    let routes = SharedRoutes::default();
    let certificates = Arc::new(CertResolver::new().expect("the default certificate"));
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(
        server_config(certificates.clone()).expect("a TLS configuration"),
    ));
    let http = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let https = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let running = Running {
        http: http.local_addr().expect("its address"),
        https: https.local_addr().expect("its address"),
        routes: routes.clone(),
        certificates,
    };
    let proxy = Proxy::new(routes);
    tokio::spawn(proxy.clone().serve_http(http));
    tokio::spawn(proxy.serve_https(https, tls));
    running
}

fn set_routes(
    running: &Running,
    ingress: Arc<Ingress>,
    services: &[(Arc<Service>, Arc<Endpoints>)],
) {
    let (svcs, eps): (Vec<_>, Vec<_>) = services.iter().cloned().unzip();
    running
        .routes
        .set(Routes::build(&[ingress], &[], &svcs, &eps));
}

fn client(hosts: &[&str], to: SocketAddr) -> reqwest::ClientBuilder {
    hosts
        .iter()
        .fold(reqwest::Client::builder(), |b, h| b.resolve(h, to))
}

async fn get(client: &reqwest::Client, url: &str) -> (StatusCode, String, reqwest::Version) {
    let response = client.get(url).send().await.expect("a response");
    let (status, version) = (response.status(), response.version());
    (status, response.text().await.expect("a body"), version)
}

#[tokio::test]
async fn hosts_and_paths_route_over_http1_and_http2_on_pooled_connections_to_endpoints() {
    let (one, two) = (backend("one").await, backend("two").await);
    let running = start_proxy().await;
    set_routes(
        &running,
        ingress(
            json!([
                rule("a.test", &[("/one", "svc-one"), ("/two", "svc-two")]),
                rule("b.test", &[("/", "svc-two")])
            ]),
            json!([]),
        ),
        &[
            service("svc-one", &[one.addr]),
            service("svc-two", &[two.addr]),
        ],
    );
    let port = running.http.port();
    let h1 = client(&["a.test", "b.test"], running.http)
        .build()
        .expect("a client");
    let h2 = client(&["a.test", "b.test"], running.http)
        .http2_prior_knowledge()
        .build()
        .expect("a client");
    for (client, version) in [
        (&h1, reqwest::Version::HTTP_11),
        (&h2, reqwest::Version::HTTP_2),
    ] {
        for (url, want) in [
            (
                format!("http://a.test:{port}/one/x?q=1"),
                format!("one /one/x?q=1 host=a.test:{port} proto=http for=127.0.0.1"),
            ),
            (
                format!("http://a.test:{port}/two"),
                format!("two /two host=a.test:{port} proto=http for=127.0.0.1"),
            ),
            (
                format!("http://b.test:{port}/anything"),
                format!("two /anything host=b.test:{port} proto=http for=127.0.0.1"),
            ),
        ] {
            let (status, body, got_version) = get(client, &url).await;
            assert_eq!(status, StatusCode::OK, "{url}: {body}");
            assert_eq!(got_version, version);
            // HTTP/2 has no Host header: the proxy sends the authority, port and all.
            assert_eq!(body, want, "{url}");
        }
    }
    let (status, body, _) = get(&h1, &format!("http://a.test:{port}/three")).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::NOT_FOUND,
            "no Ingress routes this host and path\n"
        )
    );

    // What a backend must not see: a second Host, paths that climb out of the routed prefix
    // (sent raw: clients tidy such paths themselves).
    for request in [
        "GET /one/x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n",
        "GET /one/../secret HTTP/1.1\r\nHost: a.test\r\n",
        "GET /one/%2e%2e/secret HTTP/1.1\r\nHost: a.test\r\n",
        "GET /one/%2F HTTP/1.1\r\nHost: a.test\r\n",
    ] {
        let mut stream = TcpStream::connect(running.http)
            .await
            .expect("a connection");
        let request = format!("{request}Connection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("the request");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .await
            .expect("the answer");
        assert!(answer.starts_with("HTTP/1.1 400"), "{request}: {answer}");
    }

    // Keep-alive to the endpoints: many requests, few connections.
    let before = one.connections.load(Ordering::SeqCst);
    for _ in 0..50 {
        let (status, _, _) = get(&h1, &format!("http://a.test:{port}/one")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let opened = one.connections.load(Ordering::SeqCst) - before;
    assert!(
        opened <= 1,
        "{opened} connections for 50 sequential requests"
    );
}

#[tokio::test]
async fn https_presents_each_hosts_certificate_by_sni_over_http2_and_http1() {
    let backend = backend("web").await;
    let running = start_proxy().await;
    let mut secrets = Vec::new();
    let mut roots = Vec::new();
    for (name, host) in [("a-cert", "a.test"), ("b-cert", "b.test")] {
        let cert =
            rcgen::generate_simple_self_signed(vec![host.to_owned()]).expect("a certificate");
        roots.push(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).expect("PEM"));
        let mut secret = Secret::default();
        secret.metadata.namespace = Some("default".into());
        secret.metadata.name = Some(name.into());
        secret.data = Some(
            [
                (
                    "tls.crt".to_owned(),
                    ByteString(cert.cert.pem().into_bytes()),
                ),
                (
                    "tls.key".to_owned(),
                    ByteString(cert.key_pair.serialize_pem().into_bytes()),
                ),
            ]
            .into(),
        );
        secrets.push(Arc::new(secret));
    }
    set_routes(
        &running,
        ingress(
            json!([
                rule("a.test", &[("/", "web")]),
                rule("b.test", &[("/", "web")]),
                rule("c.test", &[("/", "web")])
            ]),
            json!([{"hosts": ["a.test"], "secretName": "a-cert"}, {"hosts": ["b.test"], "secretName": "b-cert"}]),
        ),
        &[service("web", &[backend.addr])],
    );
    let table = running.routes.get();
    let (certs, problems) = Certificates::build(&table.tls, |r| {
        secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(&r.name))
            .cloned()
    });
    assert!(problems.is_empty(), "{problems:?}");
    running.certificates.set(certs);

    let port = running.https.port();
    let client = |http1: bool| {
        let mut builder =
            client(&["a.test", "b.test", "c.test"], running.https).tls_built_in_root_certs(false);
        for root in &roots {
            builder = builder.add_root_certificate(root.clone());
        }
        if http1 {
            builder = builder.http1_only();
        }
        builder.build().expect("a client")
    };
    for (client, version) in [
        (client(false), reqwest::Version::HTTP_2),
        (client(true), reqwest::Version::HTTP_11),
    ] {
        for host in ["a.test", "b.test"] {
            let (status, body, got) = get(&client, &format!("https://{host}:{port}/x")).await;
            assert_eq!((status, got), (StatusCode::OK, version), "{host}: {body}");
            assert!(body.contains("proto=https"), "{body}");
        }
        // A host no Secret covers gets the self-signed default, which the client rejects.
        let err = client
            .get(format!("https://c.test:{port}/"))
            .send()
            .await
            .expect_err("an untrusted certificate");
        assert!(
            format!("{err:?}").to_lowercase().contains("certificate"),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn before_its_routes_are_loaded_the_proxy_answers_503() {
    let running = start_proxy().await;
    let client = client(&["a.test"], running.http).build().expect("a client");
    let (status, body, _) = get(&client, &format!("http://a.test:{}/", running.http.port())).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: the routes are not loaded yet\n"
        )
    );
}

#[tokio::test]
async fn new_routes_take_effect_on_open_connections_without_a_failed_request() {
    let (old, new) = (backend("old").await, backend("new").await);
    let running = start_proxy().await;
    let services = [service("old", &[old.addr]), service("new", &[new.addr])];
    set_routes(
        &running,
        ingress(json!([rule("a.test", &[("/", "old")])]), json!([])),
        &services,
    );
    let client = client(&["a.test"], running.http).build().expect("a client");
    let url = format!("http://a.test:{}/", running.http.port());
    let mut seen = Vec::new();
    for i in 0..40 {
        if i == 20 {
            set_routes(
                &running,
                ingress(json!([rule("a.test", &[("/", "new")])]), json!([])),
                &services,
            );
        }
        let (status, body, _) = get(&client, &url).await;
        assert_eq!(status, StatusCode::OK, "request {i}: {body}");
        seen.push(body.split(' ').next().unwrap_or_default().to_owned());
    }
    assert!(seen[..20].iter().all(|b| b == "old"), "{seen:?}");
    assert!(seen[20..].iter().all(|b| b == "new"), "{seen:?}");
}

#[tokio::test]
async fn a_refused_endpoint_is_skipped_and_a_backend_without_endpoints_is_503() {
    let live = backend("live").await;
    // A port nothing listens on.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port")
        .local_addr()
        .expect("its address");
    let running = start_proxy().await;
    set_routes(
        &running,
        ingress(
            json!([rule("a.test", &[("/", "both"), ("/none", "none")])]),
            json!([]),
        ),
        &[service("both", &[dead, live.addr]), service("none", &[])],
    );
    let client = client(&["a.test"], running.http).build().expect("a client");
    let port = running.http.port();
    for _ in 0..6 {
        let (status, body, _) = get(&client, &format!("http://a.test:{port}/")).await;
        assert_eq!(
            (status, body.split(' ').next()),
            (StatusCode::OK, Some("live")),
            "{body}"
        );
    }
    let (status, _, _) = get(&client, &format!("http://a.test:{port}/none")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_websocket_upgrade_is_passed_through_both_ways() {
    let backend = backend("ws").await;
    let running = start_proxy().await;
    set_routes(
        &running,
        ingress(json!([rule("a.test", &[("/", "ws")])]), json!([])),
        &[service("ws", &[backend.addr])],
    );
    let mut stream = TcpStream::connect(running.http)
        .await
        .expect("a connection");
    stream
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .expect("the request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .await
            .expect("the response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for message in [&b"hello"[..], b"and again"] {
        stream.write_all(message).await.expect("a message");
        let mut echo = vec![0u8; message.len()];
        stream.read_exact(&mut echo).await.expect("its echo");
        assert_eq!(echo, message);
    }
}
