//! A tiny HTTP/1.1 server for the client's tests: canned answers, plain or over TLS with a
//! self-signed certificate, recording the requests it got.

use std::sync::{Arc, Mutex};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::tls::Fingerprint;

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `GET /api/v1/whoami?x=y`
    pub line: String,
    /// The `authorization` header, if any.
    pub authorization: Option<String>,
    pub body: String,
}

/// What to answer: status and JSON body.
pub type Handler = Arc<dyn Fn(&Seen) -> (u16, String) + Send + Sync>;

pub struct FakeServer {
    pub url: String,
    /// For TLS: the fingerprint of the server's certificate.
    pub fingerprint: Option<Fingerprint>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Which protocol the server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Tls12,
    Tls13,
}

pub async fn start(protocol: Protocol, handler: Handler) -> FakeServer {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (acceptor, fingerprint) = match protocol {
        Protocol::Http => (None, None),
        Protocol::Tls12 | Protocol::Tls13 => {
            let (acceptor, fingerprint) = tls_acceptor(protocol);
            (Some(acceptor), Some(fingerprint))
        }
    };
    let task_seen = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let seen = task_seen.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    None => serve(tcp, handler, seen).await,
                    Some(acceptor) => {
                        // A client that rejects the certificate aborts the handshake: nothing to serve.
                        if let Ok(stream) = acceptor.accept(tcp).await {
                            serve(stream, handler, seen).await;
                        }
                    }
                }
            });
        }
    });
    let scheme = if protocol == Protocol::Http {
        "http"
    } else {
        "https"
    };
    FakeServer {
        url: format!("{scheme}://{addr}"),
        fingerprint,
        seen,
        task,
    }
}

fn tls_acceptor(protocol: Protocol) -> (tokio_rustls::TlsAcceptor, Fingerprint) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["qb.test".to_owned()]).expect("certificate");
    let cert: CertificateDer<'static> = certified.cert.der().clone();
    let fingerprint = Fingerprint::of_der(cert.as_ref());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let versions: &[&rustls::SupportedProtocolVersion] = match protocol {
        Protocol::Tls12 => &[&rustls::version::TLS12],
        _ => &[&rustls::version::TLS13],
    };
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("server config");
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        fingerprint,
    )
}

/// Reads one request and answers it, closing the connection.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    handler: Handler,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let line = lines
        .next()
        .unwrap_or_default()
        .trim_end_matches(" HTTP/1.1")
        .to_owned();
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let request = Seen {
        line,
        authorization: header("authorization"),
        body: String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned(),
    };
    let (status, body) = handler(&request);
    if let Ok(mut s) = seen.lock() {
        s.push(request);
    }
    let content_type = if status >= 400 {
        "application/problem+json"
    } else {
        "application/json"
    };
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
