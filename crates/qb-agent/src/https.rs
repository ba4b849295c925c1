//! A small HTTPS client for the control-plane components on the agent's own host (etcd's JSON
//! gateway, the kube-apiserver): one HTTP/1.1 connection, TLS trusting only the CA file it is
//! given and presenting a client certificate. Callers interpret status codes and bodies.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

/// How long the TCP connection and the TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one exchange may take (an etcd membership change waits for the raft commit).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an HTTPS exchange with a local component failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no {what}")]
    Pem { path: String, what: &'static str },
    #[error("the TLS client configuration")]
    TlsConfig(#[source] rustls::Error),
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("connecting to {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {endpoint}")]
    Handshake {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} to {endpoint} timed out")]
    Timeout { endpoint: String, what: String },
    #[error("invalid request {method} {path}")]
    Request {
        method: Method,
        path: String,
        #[source]
        source: hyper::http::Error,
    },
    #[error("HTTP exchange with {endpoint}")]
    Http {
        endpoint: String,
        #[source]
        source: hyper::Error,
    },
}

/// The files of a mutually authenticated TLS connection.
#[derive(Clone, Copy, Debug)]
pub struct TlsFiles<'a> {
    /// The only CA trusted to sign the server's certificate.
    pub ca_file: &'a str,
    pub cert_file: &'a str,
    pub key_file: &'a str,
}

/// A request body and its media type.
#[derive(Clone, Debug)]
pub struct Payload<'a> {
    pub content_type: &'a str,
    pub bytes: Vec<u8>,
}

impl<'a> Payload<'a> {
    pub fn json(value: &serde_json::Value) -> Self {
        Self::typed("application/json", value)
    }

    /// `value` as JSON under another media type (e.g. a Kubernetes patch type).
    pub fn typed(content_type: &'a str, value: &serde_json::Value) -> Self {
        Self {
            content_type,
            bytes: value.to_string().into_bytes(),
        }
    }
}

/// What the server answered, whatever the status.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

/// An HTTP/1.1 connection over TLS.
pub struct Client {
    endpoint: String,
    authority: String,
    sender: SendRequest<Full<Bytes>>,
}

impl Client {
    /// Connects to `endpoint` (`https://host:port`) within [`CONNECT_TIMEOUT`].
    pub async fn connect(endpoint: &str, files: TlsFiles<'_>) -> Result<Self, HttpsError> {
        let (host, port, authority) = parse_endpoint(endpoint)?;
        let tls = tls_config(files)?;
        let server_name = ServerName::try_from(host.clone()).map_err(|e| HttpsError::Endpoint {
            endpoint: endpoint.to_owned(),
            reason: e.to_string(),
        })?;
        let timeout = |what: &str| HttpsError::Timeout {
            endpoint: endpoint.to_owned(),
            what: what.to_owned(),
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| timeout("connecting"))?
            .map_err(|source| HttpsError::Connect {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(server_name, tcp),
        )
        .await
        .map_err(|_| timeout("the TLS handshake"))?
        .map_err(|source| HttpsError::Handshake {
            endpoint: endpoint.to_owned(),
            source,
        })?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| HttpsError::Http {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTPS connection ended");
            }
        });
        Ok(Self {
            endpoint: endpoint.to_owned(),
            authority,
            sender,
        })
    }

    /// The server closed the connection (or it broke): a new one is needed.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends one request and reads the whole answer, within [`REQUEST_TIMEOUT`]. `path`
    /// includes the query, if any.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Payload<'_>>,
    ) -> Result<Response, HttpsError> {
        let what = format!("{method} {path}");
        let exchange = async {
            let response = self.exchange(method, path, body).await?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|source| self.http_error(source))?;
            Ok::<_, HttpsError>(Response {
                status,
                body: body.to_bytes(),
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| self.timeout(what))?
    }

    /// Sends one request and returns the answer once its head came, within
    /// [`REQUEST_TIMEOUT`], its body unread: for bodies too large to hold, which the caller
    /// reads as they come (and bounds how long that may take).
    pub async fn stream(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Payload<'_>>,
    ) -> Result<hyper::Response<Incoming>, HttpsError> {
        let what = format!("{method} {path}");
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| self.timeout(what))?
    }

    /// Sends one request; the answer's head and its body unread.
    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Payload<'_>>,
    ) -> Result<hyper::Response<Incoming>, HttpsError> {
        let mut builder = hyper::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::ACCEPT, "application/json");
        let bytes = match body {
            Some(payload) => {
                builder = builder.header(hyper::header::CONTENT_TYPE, payload.content_type);
                Bytes::from(payload.bytes)
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(bytes))
            .map_err(|source| HttpsError::Request {
                method,
                path: path.to_owned(),
                source,
            })?;
        self.sender
            .ready()
            .await
            .map_err(|source| self.http_error(source))?;
        self.sender
            .send_request(request)
            .await
            .map_err(|source| self.http_error(source))
    }

    /// `source` broke the exchange with this client's endpoint.
    fn http_error(&self, source: hyper::Error) -> HttpsError {
        HttpsError::Http {
            endpoint: self.endpoint.clone(),
            source,
        }
    }

    /// `what` took too long.
    fn timeout(&self, what: String) -> HttpsError {
        HttpsError::Timeout {
            endpoint: self.endpoint.clone(),
            what,
        }
    }
}

/// `https://host:port` → host (without IPv6 brackets), port, and the authority for `Host`.
fn parse_endpoint(endpoint: &str) -> Result<(String, u16, String), HttpsError> {
    let invalid = |reason: &str| HttpsError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: hyper::Uri = endpoint.parse().map_err(|_| invalid("not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(invalid("the scheme must be https"));
    }
    let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(443);
    Ok((host.to_owned(), port, authority.as_str().to_owned()))
}

/// Trust only `ca_file`; present `cert_file` and `key_file`.
fn tls_config(files: TlsFiles<'_>) -> Result<rustls::ClientConfig, HttpsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(files.ca_file)? {
        roots.add(cert).map_err(HttpsError::TlsConfig)?;
    }
    let chain = read_certs(files.cert_file)?;
    let key = read_key(files.key_file)?;
    let mut config = qb_pki::tls::client_config_builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(HttpsError::TlsConfig)?;
    // The connection is HTTP/1.1 only; servers that also speak h2 must not pick it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read_pem(path: &str) -> Result<Vec<u8>, HttpsError> {
    std::fs::read(Path::new(path)).map_err(|source| HttpsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, HttpsError> {
    let pem = read_pem(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| HttpsError::Read {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(HttpsError::Pem {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn read_key(path: &str) -> Result<PrivateKeyDer<'static>, HttpsError> {
    let pem = read_pem(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| HttpsError::Read {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| HttpsError::Pem {
            path: path.to_owned(),
            what: "private key",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_https_urls() {
        assert_eq!(
            parse_endpoint("https://127.0.0.1:2379").unwrap(),
            ("127.0.0.1".to_owned(), 2379, "127.0.0.1:2379".to_owned())
        );
        assert_eq!(
            parse_endpoint("https://[::1]:6443").unwrap(),
            ("::1".to_owned(), 6443, "[::1]:6443".to_owned())
        );
        assert_eq!(
            parse_endpoint("https://localhost").unwrap(),
            ("localhost".to_owned(), 443, "localhost".to_owned())
        );
        assert!(matches!(
            parse_endpoint("http://127.0.0.1:2379"),
            Err(HttpsError::Endpoint { .. })
        ));
        assert!(parse_endpoint("not a url").is_err());
    }

    #[test]
    fn missing_and_empty_pem_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.crt").display().to_string();
        assert_eq!(
            read_certs(&missing).unwrap_err().to_string(),
            format!("reading {missing}")
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let empty = empty.display().to_string();
        assert_eq!(
            read_certs(&empty).unwrap_err().to_string(),
            format!("{empty} holds no certificate")
        );
        assert_eq!(
            read_key(&empty).unwrap_err().to_string(),
            format!("{empty} holds no private key")
        );
    }
}
