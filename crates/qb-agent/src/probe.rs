//! Health probes of supervised services: a TCP or Unix-socket connection, or an HTTP(S) `GET`
//! answering 2xx; and of tasks: an image archive's images still in containerd.
//!
//! HTTPS probes trust only the plan's `ca_file` (never the system's roots) and present
//! `cert_file`/`key_file` as the client certificate when given, as etcd and the Kubernetes API
//! server expect.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use qb_agent_proto::plan::Probe;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the probe is misconfigured: {0}")]
    Config(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connecting to {address}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} in {path} is unusable")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("TLS with {address}")]
    Tls {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP request to {url}")]
    Http {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{url} answered status {status}")]
    Status { url: String, status: StatusCode },
    #[error("reading the answer of {url}")]
    Body {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Images(#[from] crate::images::ImagesError),
}

impl ProbeError {
    /// Whether the probe found what a task did undone (rather than failing to look).
    pub fn undone(&self) -> bool {
        matches!(
            self,
            Self::Images(crate::images::ImagesError::Missing { .. })
        )
    }
}

/// The most of an answer [`fetch`] reads.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Runs `probe` once: `Ok` when the service is healthy. Gives up after `timeout`.
pub async fn check(probe: &Probe, timeout: Duration) -> Result<(), ProbeError> {
    tokio::time::timeout(timeout, run(probe))
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}

async fn run(probe: &Probe) -> Result<(), ProbeError> {
    match probe {
        Probe::Tcp { address } => connect(address).await.map(drop),
        Probe::Images {
            ctr,
            address,
            namespace,
            archive,
        } => Ok(crate::images::check(
            ctr.as_path(),
            address.as_path(),
            namespace,
            archive.as_path(),
        )
        .await?),
        Probe::Unix { path } => tokio::net::UnixStream::connect(path)
            .await
            .map(drop)
            .map_err(|source| ProbeError::Connect {
                address: path.clone(),
                source,
            }),
        Probe::Http {
            url,
            ca_file,
            cert_file,
            key_file,
        } => {
            let target = Target::parse(url)?;
            let tcp = connect(&target.address).await?;
            if !target.https {
                return get(TokioIo::new(tcp), &target, false).await.map(drop);
            }
            let ca_file = ca_file.as_deref().ok_or_else(|| {
                ProbeError::Config(format!("{url}: an https probe needs a ca_file"))
            })?;
            let client = match (cert_file, key_file) {
                (Some(cert), Some(key)) => Some((cert.as_str(), key.as_str())),
                (None, None) => None,
                _ => {
                    return Err(ProbeError::Config(format!(
                        "{url}: cert_file and key_file go together"
                    )));
                }
            };
            let config = tls_config(ca_file, client).await?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(target.server_name()?, tcp)
                .await
                .map_err(|source| ProbeError::Tls {
                    address: target.address.clone(),
                    source,
                })?;
            get(TokioIo::new(tls), &target, false).await.map(drop)
        }
    }
}

async fn connect(address: &str) -> Result<TcpStream, ProbeError> {
    TcpStream::connect(address)
        .await
        .map_err(|source| ProbeError::Connect {
            address: address.to_owned(),
            source,
        })
}

/// Where an HTTP probe goes.
struct Target {
    url: String,
    https: bool,
    /// `host:port`, as `TcpStream::connect` takes it.
    address: String,
    /// The host without brackets, for TLS.
    host: String,
    /// The `Host` header.
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, ProbeError> {
        let bad = |why: &str| ProbeError::Config(format!("invalid probe url {url:?}: {why}"));
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = authority.host();
        Ok(Self {
            url: url.to_owned(),
            https,
            address: format!("{host}:{port}"),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            authority: authority.as_str().to_owned(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }

    fn server_name(&self) -> Result<ServerName<'static>, ProbeError> {
        ServerName::try_from(self.host.clone()).map_err(|_| {
            ProbeError::Config(format!(
                "{}: {:?} is not a valid TLS server name",
                self.url, self.host
            ))
        })
    }
}

/// One `GET` over HTTP/1.1 on an open connection; 2xx is healthy.
async fn get<S>(io: TokioIo<S>, target: &Target, read_body: bool) -> Result<Bytes, ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http_error = |source| ProbeError::Http {
        url: target.url.clone(),
        source,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(http_error)?;
    let connection = tokio::spawn(async move {
        // Errors surface through `send_request`.
        let _ = connection.await;
    });
    let request = Request::get(target.path.as_str())
        .header(hyper::header::HOST, target.authority.as_str())
        .header(hyper::header::USER_AGENT, "qb-agent-probe")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ProbeError::Config(format!("{}: {e}", target.url)))?;
    let read = async {
        let response = sender.send_request(request).await.map_err(http_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(ProbeError::Status {
                url: target.url.clone(),
                status,
            });
        }
        if !read_body {
            return Ok(Bytes::new());
        }
        Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|source| ProbeError::Body {
                url: target.url.clone(),
                source,
            })
    };
    let result = read.await;
    connection.abort();
    result
}

/// `GET url` over plain HTTP (a service's metrics on loopback, say) and the body of its 2xx
/// answer, within `timeout`.
pub async fn fetch(url: &str, timeout: Duration) -> Result<Bytes, ProbeError> {
    let fetch = async {
        let target = Target::parse(url)?;
        if target.https {
            return Err(ProbeError::Config(format!(
                "{url}: only plain HTTP is fetched"
            )));
        }
        let tcp = connect(&target.address).await?;
        get(TokioIo::new(tcp), &target, true).await
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}

/// A client configuration trusting only the certificates in `ca_file`.
async fn tls_config(
    ca_file: &str,
    client: Option<(&str, &str)>,
) -> Result<rustls::ClientConfig, ProbeError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca_file).await? {
        roots.add(cert).map_err(|e| ProbeError::Pem {
            what: "the CA certificate",
            path: ca_file.into(),
            source: Box::new(e),
        })?;
    }
    let builder = qb_pki::tls::client_config_builder().with_root_certificates(roots);
    let Some((cert_file, key_file)) = client else {
        return Ok(builder.with_no_client_auth());
    };
    let chain = certificates(cert_file).await?;
    let key = private_key(key_file).await?;
    builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| ProbeError::Pem {
            what: "the client certificate and key",
            path: cert_file.into(),
            source: Box::new(e),
        })
}

async fn read(path: &str) -> Result<Vec<u8>, ProbeError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| ProbeError::ReadFile {
            path: path.into(),
            source,
        })
}

async fn certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, ProbeError> {
    let pem = read(path).await?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ProbeError::Pem {
            what: "certificates",
            path: path.into(),
            source: Box::new(e),
        })?;
    if certs.is_empty() {
        return Err(ProbeError::Pem {
            what: "certificates",
            path: path.into(),
            source: "no certificate found".into(),
        });
    }
    Ok(certs)
}

async fn private_key(path: &str) -> Result<PrivateKeyDer<'static>, ProbeError> {
    let pem = read(path).await?;
    let pem_error = |source: Box<dyn std::error::Error + Send + Sync>| ProbeError::Pem {
        what: "the private key",
        path: path.into(),
        source,
    };
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| pem_error(Box::new(e)))?
        .ok_or_else(|| pem_error("no private key found".into()))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::path::Path;

    use hyper::Response;
    use hyper::service::service_fn;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::server::WebPkiClientVerifier;
    use tokio::net::TcpListener;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// Serves `status` to every request on a loopback port, over TLS when `tls` is given, with
    /// the request's path as the body.
    async fn serve(status: u16, tls: Option<rustls::ServerConfig>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let acceptor = tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<_>| async move {
                        let path = Bytes::from(req.uri().path().to_owned());
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .body(http_body_util::Full::new(path))
                                .unwrap(),
                        )
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(acceptor) => {
                            // A refused handshake is what some tests want.
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        address
    }

    fn http(url: String) -> Probe {
        Probe::Http {
            url,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }

    #[tokio::test]
    async fn tcp_probe_passes_on_a_listener_and_fails_when_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        check(
            &Probe::Tcp {
                address: address.clone(),
            },
            TIMEOUT,
        )
        .await
        .unwrap();

        drop(listener);
        let err = check(&Probe::Tcp { address }, TIMEOUT).await.unwrap_err();
        assert!(
            matches!(&err, ProbeError::Connect { source, .. }
                if source.kind() == std::io::ErrorKind::ConnectionRefused),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn unix_probe_passes_on_a_listening_socket_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let probe = Probe::Unix {
            path: path.to_str().unwrap().to_owned(),
        };
        let err = check(&probe, TIMEOUT).await.unwrap_err();
        assert!(matches!(err, ProbeError::Connect { .. }), "{err:?}");
        let _listener = tokio::net::UnixListener::bind(&path).unwrap();
        check(&probe, TIMEOUT).await.unwrap();
    }

    #[tokio::test]
    async fn http_probe_wants_a_2xx() {
        let ok = serve(200, None).await;
        check(&http(format!("http://{ok}/health")), TIMEOUT)
            .await
            .unwrap();

        let unavailable = serve(503, None).await;
        let err = check(&http(format!("http://{unavailable}/health")), TIMEOUT)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProbeError::Status { status, .. } if status == StatusCode::SERVICE_UNAVAILABLE)
        );
        assert!(err.to_string().contains("status 503"), "{err}");
    }

    #[tokio::test]
    async fn fetch_returns_the_body_of_a_2xx_over_plain_http_only() {
        let ok = serve(200, None).await;
        let body = fetch(&format!("http://{ok}/metrics"), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(&body[..], b"/metrics");
        let unavailable = serve(503, None).await;
        let err = fetch(&format!("http://{unavailable}/metrics"), TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("status 503"), "{err}");
        let err = fetch(&format!("https://{ok}/metrics"), TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Config(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        // Accepts connections (the backlog does) but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let err = check(
            &http(format!("http://{address}/")),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ProbeError::Timeout(_)), "{err:?}");
    }

    /// A CA and a certificate it signed for `127.0.0.1`, as PEM (certificate, key).
    struct Pki {
        ca_pem: String,
        ca: rcgen::Certificate,
        ca_key: KeyPair,
    }

    impl Pki {
        fn new(name: &str) -> Self {
            let ca_key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let ca = params.self_signed(&ca_key).unwrap();
            Self {
                ca_pem: ca.pem(),
                ca,
                ca_key,
            }
        }

        fn issue(&self, san: &str) -> (String, String) {
            let key = KeyPair::generate().unwrap();
            let params = CertificateParams::new(vec![san.to_owned()]).unwrap();
            let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
            (cert.pem(), key.serialize_pem())
        }

        /// A server for 127.0.0.1 that demands a client certificate from this CA.
        fn server_config(&self) -> rustls::ServerConfig {
            let (cert, key) = self.issue("127.0.0.1");
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut self.ca_pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .unwrap();
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(
                    rustls_pemfile::certs(&mut cert.as_bytes())
                        .map(Result::unwrap)
                        .collect(),
                    rustls_pemfile::private_key(&mut key.as_bytes())
                        .unwrap()
                        .unwrap(),
                )
                .unwrap()
        }
    }

    fn write(dir: &Path, name: &str, content: &str) -> Option<String> {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        Some(path.to_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn https_probe_trusts_only_its_ca_and_presents_the_client_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new("test CA");
        let address = serve(200, Some(pki.server_config())).await;
        let (client_cert, client_key) = pki.issue("probe");
        let url = format!("https://{address}/health");
        let probe = |ca: &str, with_client: bool| Probe::Http {
            url: url.clone(),
            ca_file: write(dir.path(), "ca.pem", ca),
            cert_file: with_client
                .then(|| write(dir.path(), "client.pem", &client_cert))
                .flatten(),
            key_file: with_client
                .then(|| write(dir.path(), "client.key", &client_key))
                .flatten(),
        };

        check(&probe(&pki.ca_pem, true), TIMEOUT).await.unwrap();

        // The server demands a client certificate.
        let err = check(&probe(&pki.ca_pem, false), TIMEOUT)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProbeError::Tls { .. } | ProbeError::Http { .. }),
            "{err:?}"
        );

        // Another CA does not vouch for the server.
        let other = Pki::new("another CA");
        let err = check(&probe(&other.ca_pem, true), TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Tls { .. }), "{err:?}");
        let chain = format!("{:#}", anyhow::Error::from(err));
        assert!(chain.contains("UnknownIssuer"), "{chain}");

        // No CA at all is a configuration error, not a silent use of the system's roots.
        let err = check(&http(url.clone()), TIMEOUT).await.unwrap_err();
        assert!(matches!(err, ProbeError::Config(_)), "{err:?}");
    }
}
