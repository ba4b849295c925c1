//! Dialing the controller: TCP (directly or through an HTTP CONNECT proxy), TLS trusting only the
//! pinned CA, then HTTP/2.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use qb_pki::{Pin, PinnedCaVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{Config, authority};

pub type Body = BoxBody<Bytes, Infallible>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the controller is and how to trust it.
#[derive(Clone)]
pub struct Controller {
    pub url: String,
    address: String,
    host: String,
    proxy: Option<String>,
    pins: Vec<Pin>,
}

/// An open HTTP/2 connection to the controller.
pub struct Connection {
    pub sender: SendRequest<Body>,
    /// Completes when the connection is gone.
    pub closed: tokio::task::JoinHandle<()>,
}

impl Controller {
    pub fn new(config: &Config) -> Result<Self> {
        let (address, host) = config.controller_address().map_err(anyhow::Error::msg)?;
        let proxy = config
            .http_proxy
            .as_deref()
            .map(|p| {
                authority(p, 3128)
                    .map(|(addr, _)| addr)
                    .map_err(anyhow::Error::msg)
            })
            .transpose()?;
        Ok(Self {
            url: config.controller_url.trim_end_matches('/').to_owned(),
            address,
            host,
            proxy,
            pins: config.ca_pins.clone(),
        })
    }

    /// Opens a connection, presenting `client` (the node certificate chain and key) if given.
    pub async fn connect(
        &self,
        client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<Connection> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, self.tcp())
            .await
            .with_context(|| format!("connecting to {} timed out", self.address))??;
        let _ = tcp.set_nodelay(true);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(PinnedCaVerifier::new(self.pins.clone()));
        let mut tls_config = match client {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .context("the node certificate")?,
            None => builder.with_no_client_auth(),
        };
        tls_config.alpn_protocols = vec![b"h2".to_vec()];
        let server_name =
            ServerName::try_from(self.host.clone()).context("the controller's host name")?;
        let tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_rustls::TlsConnector::from(Arc::new(tls_config)).connect(server_name, tcp),
        )
        .await
        .context("TLS handshake timed out")?
        .with_context(|| format!("TLS with {} (is the CA pin right?)", self.address))?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .context("HTTP/2 handshake")?;
        let closed = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "controller connection ended");
            }
        });
        Ok(Connection { sender, closed })
    }

    async fn tcp(&self) -> Result<TcpStream> {
        let Some(proxy) = &self.proxy else {
            return TcpStream::connect(&self.address)
                .await
                .with_context(|| format!("connecting to {}", self.address));
        };
        let mut tcp = TcpStream::connect(proxy)
            .await
            .with_context(|| format!("connecting to the proxy {proxy}"))?;
        let request = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", self.address);
        tcp.write_all(request.as_bytes()).await?;
        // Read the proxy's answer up to the blank line, byte by byte: nothing after it may be
        // consumed, it belongs to TLS.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 8192 {
                bail!("the proxy {proxy} sent an oversized answer");
            }
            let byte = tcp
                .read_u8()
                .await
                .with_context(|| format!("the proxy {proxy} closed the connection"))?;
            head.push(byte);
        }
        let status_line = String::from_utf8_lossy(&head)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        if status_line.split_whitespace().nth(1) != Some("200") {
            bail!(
                "the proxy {proxy} refused to connect to {}: {status_line}",
                self.address
            );
        }
        Ok(tcp)
    }

    pub fn uri(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

/// A JSON request body.
pub fn json_body<T: serde::Serialize>(value: &T) -> Body {
    Full::new(Bytes::from(
        serde_json::to_vec(value).expect("requests serialize"),
    ))
    .boxed()
}

/// Posts JSON and reads the whole answer: `Ok(body)` on success, `Err((status, problem))` else.
pub async fn post_json<T: serde::Serialize>(
    sender: &mut SendRequest<Body>,
    uri: &str,
    value: &T,
) -> Result<std::result::Result<Bytes, (u16, qb_api::Problem)>> {
    let request = hyper::Request::post(uri)
        .header("content-type", "application/json")
        .body(json_body(value))?;
    let response = sender
        .send_request(request)
        .await
        .context("sending the request")?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .context("reading the answer")?
        .to_bytes();
    if status.is_success() {
        return Ok(Ok(bytes));
    }
    let problem = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        qb_api::Problem::new(
            qb_api::ProblemCode::Internal,
            format!("the controller answered {status}"),
        )
    });
    Ok(Err((status.as_u16(), problem)))
}

/// PEM → what rustls wants.
pub fn client_identity(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())?.context("no private key")?;
    Ok((certs, key))
}
