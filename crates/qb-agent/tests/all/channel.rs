//! Speaking to the agent endpoint ourselves: TLS trusting only the pinned CA, optionally with a
//! node certificate taken from an agent's state directory, then HTTP/2 or the channel's own
//! connection as the agent does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::HeaderMap;
use hyper::body::{Bytes, Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use qb_agent_proto::{
    CHANNEL_ALPN, CHANNEL_PATH, ControllerMessage, FrameDecoder, PROTOCOL_HEADER, PROTOCOL_VERSION,
};
use qb_pki::{Pin, PinnedCaVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;

pub type Body = BoxBody<Bytes, Infallible>;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A node's identity as an agent keeps it: `identity.json` (with `cert_pem`) and `node.key`.
pub struct NodeCert {
    pub node_id: String,
    pub tenant_id: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for NodeCert {
    fn clone(&self) -> Self {
        Self {
            node_id: self.node_id.clone(),
            tenant_id: self.tenant_id.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl NodeCert {
    /// Copies the identity out of an agent's state directory.
    pub fn steal(state_dir: &Path) -> Self {
        let identity: Value = serde_json::from_str(
            &std::fs::read_to_string(state_dir.join("identity.json")).expect("identity.json"),
        )
        .expect("identity.json is JSON");
        let key_pem = std::fs::read_to_string(state_dir.join("node.key")).expect("node.key");
        let cert_pem = identity["cert_pem"].as_str().expect("cert_pem");
        let chain = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate PEM");
        assert!(!chain.is_empty(), "no certificate in identity.json");
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .expect("key PEM")
            .expect("a private key in node.key");
        Self {
            node_id: identity["node_id"].as_str().expect("node_id").to_owned(),
            tenant_id: identity["tenant_id"]
                .as_str()
                .expect("tenant_id")
                .to_owned(),
            chain,
            key,
        }
    }
}

/// An HTTP/2 connection to the agent endpoint.
pub struct Conn {
    sender: SendRequest<Body>,
    base: String,
    /// The protocol version each request names, as agents do (`None`: no header).
    pub protocol: Option<String>,
}

/// TLS to `addr` (certificate checked against `pin`), presenting `cert` if given, offering
/// `alpn`.
async fn tls(
    addr: SocketAddr,
    pin: &str,
    cert: Option<&NodeCert>,
    alpn: &[u8],
) -> TlsStream<TcpStream> {
    let pin: Pin = pin.parse().expect("a CA pin");
    let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("TCP connect timed out")
        .expect("TCP connect to the agent endpoint");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(PinnedCaVerifier::new(vec![pin]));
    let mut config = match cert {
        Some(cert) => builder
            .with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    let name = ServerName::from(addr.ip());
    tokio::time::timeout(
        TIMEOUT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("TLS handshake timed out")
    .expect("TLS handshake with the agent endpoint")
}

impl Conn {
    /// An HTTP/2 connection to `addr` (certificate checked against `pin`), presenting `cert` if
    /// given.
    pub async fn open(addr: SocketAddr, pin: &str, cert: Option<&NodeCert>) -> Self {
        let tls = tls(addr, pin, cert, b"h2").await;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Self {
            sender,
            base: format!("https://{addr}"),
            protocol: Some(PROTOCOL_VERSION.to_string()),
        }
    }

    /// `POST /agent/v1/channel`, the channel of protocol 1 agents: the open channel, or the
    /// refusal's status and problem.
    pub async fn channel(&mut self) -> Result<Channel, (u16, Value)> {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let bytes = rx.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(bytes)), rx))
        });
        let request = hyper::Request::post(format!("{}{CHANNEL_PATH}", self.base))
            .body(BodyExt::boxed(StreamBody::new(frames)))
            .expect("request");
        let response = self.send(request).await;
        let status = response.status().as_u16();
        if status != 200 {
            return Err((status, read_json(response.into_body()).await));
        }
        Ok(Channel {
            transport: Transport::Http2 {
                tx,
                body: response.into_body(),
            },
            decoder: FrameDecoder::default(),
        })
    }

    /// GETs `path`, with a `Range` header if given: status, headers and body.
    pub async fn get(&mut self, path: &str, range: Option<&str>) -> (u16, HeaderMap, Bytes) {
        let mut request = hyper::Request::get(format!("{}{path}", self.base));
        if let Some(range) = range {
            request = request.header("range", range);
        }
        let request = request
            .body(Full::new(Bytes::new()).boxed())
            .expect("request");
        let response = self.send(request).await;
        let (parts, body) = response.into_parts();
        let bytes = tokio::time::timeout(TIMEOUT, body.collect())
            .await
            .expect("reading an answer timed out")
            .expect("reading an answer")
            .to_bytes();
        (parts.status.as_u16(), parts.headers, bytes)
    }

    /// POSTs JSON to `path`: status and body.
    pub async fn post(&mut self, path: &str, json: &Value) -> (u16, Value) {
        let request = hyper::Request::post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(json.to_string())).boxed())
            .expect("request");
        let response = self.send(request).await;
        let status = response.status().as_u16();
        (status, read_json(response.into_body()).await)
    }

    async fn send(&mut self, mut request: hyper::Request<Body>) -> hyper::Response<Incoming> {
        if let Some(version) = &self.protocol {
            let value = version.parse().expect("a header value");
            request.headers_mut().insert(PROTOCOL_HEADER, value);
        }
        tokio::time::timeout(TIMEOUT, self.sender.send_request(request))
            .await
            .expect("the agent endpoint did not answer in time")
            .expect("sending a request to the agent endpoint")
    }
}

async fn read_json(body: Incoming) -> Value {
    let bytes = tokio::time::timeout(TIMEOUT, body.collect())
        .await
        .expect("reading an answer timed out")
        .expect("reading an answer")
        .to_bytes();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
}

/// A runtime for the async clients of a synchronous test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// How the controller's side of a channel ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The response body ended normally.
    Clean,
    /// The stream or connection was reset.
    Reset(String),
}

/// An open channel, as agents hold it.
pub struct Channel {
    transport: Transport,
    decoder: FrameDecoder,
}

enum Transport {
    /// A connection of its own (protocol 2 on): frames both ways.
    Own(Box<TlsStream<TcpStream>>),
    /// One HTTP/2 stream (protocol 1): our frames in the request body, the controller's in the
    /// response body.
    Http2 {
        tx: mpsc::Sender<Bytes>,
        body: Incoming,
    },
}

/// What the controller's side did next.
enum Next {
    Bytes(Vec<u8>),
    Ended(End),
    TimedOut,
}

impl Channel {
    /// The channel's own connection (ALPN `CHANNEL_ALPN`), presenting `cert`.
    pub async fn open(addr: SocketAddr, pin: &str, cert: &NodeCert) -> Self {
        Self {
            transport: Transport::Own(Box::new(tls(addr, pin, Some(cert), CHANNEL_ALPN).await)),
            decoder: FrameDecoder::default(),
        }
    }

    /// The channel's own connection without a client certificate, as no agent opens it.
    pub async fn open_anonymous(addr: SocketAddr, pin: &str) -> Self {
        Self {
            transport: Transport::Own(Box::new(tls(addr, pin, None, CHANNEL_ALPN).await)),
            decoder: FrameDecoder::default(),
        }
    }

    /// Sends raw bytes (frames, or anything else). On its own connection, a controller that
    /// closes the channel part-way (a frame it refuses) shows in what is read next.
    pub async fn send(&mut self, bytes: Vec<u8>) {
        match &mut self.transport {
            Transport::Own(stream) => {
                if stream.write_all(&bytes).await.is_ok() {
                    let _ = stream.flush().await;
                }
            }
            Transport::Http2 { tx, .. } => tx
                .send(Bytes::from(bytes))
                .await
                .expect("the request body is still open"),
        }
    }

    async fn next(&mut self, deadline: tokio::time::Instant) -> Next {
        match &mut self.transport {
            Transport::Own(stream) => {
                let mut chunk = vec![0; 16 * 1024];
                match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
                    Err(_) => Next::TimedOut,
                    Ok(Ok(0)) => Next::Ended(End::Clean),
                    Ok(Ok(n)) => {
                        chunk.truncate(n);
                        Next::Bytes(chunk)
                    }
                    Ok(Err(e)) => Next::Ended(End::Reset(e.to_string())),
                }
            }
            Transport::Http2 { body, .. } => {
                match tokio::time::timeout_at(deadline, body.frame()).await {
                    Err(_) => Next::TimedOut,
                    Ok(None) => Next::Ended(End::Clean),
                    Ok(Some(Err(e))) => Next::Ended(End::Reset(e.to_string())),
                    Ok(Some(Ok(frame))) => {
                        Next::Bytes(frame.into_data().map(|d| d.to_vec()).unwrap_or_default())
                    }
                }
            }
        }
    }

    /// The controller's next message; `Err` when the channel ends first (how) or nothing comes
    /// within `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Result<ControllerMessage, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(message) = self
                .decoder
                .next_message::<ControllerMessage>()
                .map_err(|e| format!("the controller sent a bad frame: {e}"))?
            {
                return Ok(message);
            }
            match self.next(deadline).await {
                Next::TimedOut => return Err(format!("no message within {timeout:?}")),
                Next::Ended(end) => return Err(format!("{end:?}")),
                Next::Bytes(bytes) => self.decoder.push(&bytes),
            }
        }
    }

    /// Reads until the controller ends the channel, at most `timeout`; the messages seen on
    /// the way and how it ended. Panics if it does not end in time.
    pub async fn until_end(&mut self, timeout: Duration) -> (Vec<ControllerMessage>, End) {
        match self.ends_within(timeout).await {
            (seen, Some(end)) => (seen, end),
            (seen, None) => {
                panic!("the controller kept the channel open for {timeout:?} (messages: {seen:?})")
            }
        }
    }

    /// Like [`Self::until_end`], but `None` when the channel is still open after `timeout`.
    pub async fn ends_within(
        &mut self,
        timeout: Duration,
    ) -> (Vec<ControllerMessage>, Option<End>) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            while let Ok(Some(message)) = self.decoder.next_message::<ControllerMessage>() {
                seen.push(message);
            }
            match self.next(deadline).await {
                Next::TimedOut => return (seen, None),
                Next::Ended(end) => return (seen, Some(end)),
                Next::Bytes(bytes) => self.decoder.push(&bytes),
            }
        }
    }
}
