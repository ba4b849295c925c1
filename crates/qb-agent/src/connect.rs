//! Dialing the controller: TCP (directly or through an HTTP CONNECT proxy), TLS trusting only the
//! pinned CA, then the channel's frames ([`Controller::channel`]) or HTTP/2 ([`Link`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use qb_agent_proto::CHANNEL_ALPN;
use qb_pki::{Pin, PinnedCaVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::config::{Config, authority};

pub type Body = BoxBody<Bytes, Infallible>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long sent data may go unacknowledged before the connection counts as dead.
const UNACKNOWLEDGED: Duration = Duration::from_secs(20);

/// Where the controller is and how to trust it.
#[derive(Clone)]
pub struct Controller {
    pub url: String,
    address: String,
    host: String,
    proxy: Option<String>,
    pins: Vec<Pin>,
}

/// The node certificate chain and its key, as rustls takes them.
pub type ClientIdentity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The channel's own connection to the controller.
pub struct Channel {
    pub stream: TlsStream<TcpStream>,
    /// The host's address this connection leaves from (the source of its route towards the
    /// controller, or towards the proxy).
    pub local_ip: Option<std::net::IpAddr>,
    /// The controller replica's address, when dialed directly (not through a proxy).
    pub peer: Option<SocketAddr>,
}

/// HTTP/2 to the controller beside the channel, for plans, artifacts, tunnels and renewals:
/// opened when a request needs it, shared while in use, and let go once nothing has used it for
/// [`LINK_IDLE`], so an idle agent holds only its channel. It goes to the replica that holds
/// the channel, which is the one waiting for the agent's tunnels.
pub struct Link {
    controller: Controller,
    client: std::sync::Mutex<ClientIdentity>,
    open: tokio::sync::Mutex<Option<SendRequest<Body>>>,
    usage: Arc<std::sync::Mutex<Usage>>,
}

/// How long an unused HTTP/2 connection to the controller is kept.
pub const LINK_IDLE: Duration = Duration::from_secs(30);

/// Requests and tunnels under way on the link, and since when none is.
struct Usage {
    in_use: usize,
    since: Instant,
}

/// Held while a request or tunnel uses the link: it is not let go meanwhile.
pub struct InUse(Arc<std::sync::Mutex<Usage>>);

impl Drop for InUse {
    fn drop(&mut self) {
        let mut usage = self.0.lock().unwrap_or_else(|p| p.into_inner());
        usage.in_use -= 1;
        usage.since = Instant::now();
    }
}

impl Link {
    /// A link to the replica `channel` reached (the same address, when dialed directly).
    pub fn new(controller: &Controller, channel: &Channel, client: ClientIdentity) -> Self {
        let mut controller = controller.clone();
        if let Some(peer) = channel.peer {
            controller.address = peer.to_string();
        }
        Self {
            controller,
            client: std::sync::Mutex::new(client),
            open: tokio::sync::Mutex::new(None),
            usage: Arc::new(std::sync::Mutex::new(Usage {
                in_use: 0,
                since: Instant::now(),
            })),
        }
    }

    /// The controller's agent endpoint URL, to which request paths are appended.
    pub fn base(&self) -> &str {
        &self.controller.url
    }

    /// A sender on the open connection, or on a new one, and the mark that it is in use.
    pub async fn sender(&self) -> Result<(SendRequest<Body>, InUse)> {
        let in_use = {
            let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
            usage.in_use += 1;
            InUse(self.usage.clone())
        };
        let mut open = self.open.lock().await;
        if let Some(sender) = open.as_ref()
            && !sender.is_closed()
        {
            return Ok((sender.clone(), in_use));
        }
        let client = {
            let client = self.client.lock().unwrap_or_else(|p| p.into_inner());
            (client.0.clone(), client.1.clone_key())
        };
        let connection = self.controller.connect(Some(client)).await?;
        *open = Some(connection.sender.clone());
        Ok((connection.sender, in_use))
    }

    /// New connections present `client` from now on (a renewed certificate).
    pub fn renewed(&self, client: ClientIdentity) {
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = client;
    }

    /// Lets the connection go once nothing has used it for [`LINK_IDLE`].
    pub fn close_idle(&self) {
        let idle = {
            let usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
            usage.in_use == 0 && usage.since.elapsed() >= LINK_IDLE
        };
        if idle && let Ok(mut open) = self.open.try_lock() {
            *open = None;
        }
    }
}

/// An open HTTP/2 connection to the controller.
pub struct Connection {
    pub sender: SendRequest<Body>,
    /// The host's address this connection leaves from (the source of its route towards the
    /// controller, or towards the proxy).
    pub local_ip: Option<std::net::IpAddr>,
    /// Completes when the connection is gone.
    pub closed: tokio::task::JoinHandle<()>,
}

impl Controller {
    /// The controller's agent endpoint at `url` (one of `config.controller_urls()`).
    pub fn new(config: &Config, url: &str) -> Result<Self> {
        let (address, host) = authority(url, 443).map_err(anyhow::Error::msg)?;
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
            url: url.trim_end_matches('/').to_owned(),
            address,
            host,
            proxy,
            pins: config.ca_pins.clone(),
        })
    }

    /// Opens an HTTP/2 connection, presenting `client` (the node certificate chain and key) if
    /// given.
    pub async fn connect(&self, client: Option<ClientIdentity>) -> Result<Connection> {
        let (tls, local_ip, _) = self.tls(client, b"h2").await?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Finds a dead link to the controller while requests are under way.
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            // Stalled tunnels must leave room for the others.
            .initial_stream_window_size(qb_tunnel::window::STREAM)
            .initial_connection_window_size(qb_tunnel::window::CONNECTION)
            .handshake(TokioIo::new(tls))
            .await
            .context("HTTP/2 handshake")?;
        let closed = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "controller connection ended");
            }
        });
        Ok(Connection {
            sender,
            local_ip,
            closed,
        })
    }

    /// Opens the channel's own connection (ALPN [`CHANNEL_ALPN`]) with the node certificate.
    pub async fn channel(&self, client: ClientIdentity) -> Result<Channel> {
        let older = || {
            anyhow::anyhow!(
                "the controller at {} does not speak agent protocol {} (its channel, ALPN {}): \
                 upgrade the controller",
                self.url,
                qb_agent_proto::PROTOCOL_VERSION,
                String::from_utf8_lossy(CHANNEL_ALPN)
            )
        };
        let (stream, local_ip, peer) = match self.tls(Some(client), CHANNEL_ALPN).await {
            Err(e) if format!("{e:#}").contains("NoApplicationProtocol") => return Err(older()),
            other => other?,
        };
        if stream.get_ref().1.alpn_protocol() != Some(CHANNEL_ALPN) {
            return Err(older());
        }
        Ok(Channel {
            stream,
            local_ip,
            peer,
        })
    }

    async fn tls(
        &self,
        client: Option<ClientIdentity>,
        alpn: &[u8],
    ) -> Result<(
        TlsStream<TcpStream>,
        Option<std::net::IpAddr>,
        Option<SocketAddr>,
    )> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, self.tcp())
            .await
            .with_context(|| format!("connecting to {} timed out", self.address))??;
        let _ = tcp.set_nodelay(true);
        // A controller that vanished without closing (a partition, a host gone) is found when
        // what the agent sent, its heartbeats at least, goes unacknowledged this long: an idle
        // channel has nothing else that would notice.
        let _ = socket2::SockRef::from(&tcp).set_tcp_user_timeout(Some(UNACKNOWLEDGED));
        let local_ip = tcp.local_addr().ok().map(|a| a.ip());
        let peer = tcp.peer_addr().ok().filter(|_| self.proxy.is_none());
        let builder = qb_pki::tls::client_config_builder()
            .dangerous()
            .with_custom_certificate_verifier(PinnedCaVerifier::new(self.pins.clone()));
        let mut tls_config = match client {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .context("the node certificate")?,
            None => builder.with_no_client_auth(),
        };
        tls_config.alpn_protocols = vec![alpn.to_vec()];
        let server_name =
            ServerName::try_from(self.host.clone()).context("the controller's host name")?;
        let tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_rustls::TlsConnector::from(Arc::new(tls_config)).connect(server_name, tcp),
        )
        .await
        .context("TLS handshake timed out")?
        .with_context(|| format!("TLS with {} (is the CA pin right?)", self.address))?;
        Ok((tls, local_ip, peer))
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

/// A request to the controller's agent endpoint, naming the protocol version the agent speaks.
pub fn controller_request(method: hyper::Method, uri: &str) -> hyper::http::request::Builder {
    hyper::Request::builder().method(method).uri(uri).header(
        qb_agent_proto::PROTOCOL_HEADER,
        qb_agent_proto::PROTOCOL_VERSION,
    )
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
    let request = controller_request(hyper::Method::POST, uri)
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
pub fn client_identity(cert_pem: &str, key_pem: &str) -> Result<ClientIdentity> {
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())?.context("no private key")?;
    Ok((certs, key))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;

    fn config(url: &str, proxy: Option<&str>) -> Config {
        let mut text = format!(
            "controller_url = \"{url}\"\nca_pins = [\"sha256:{}\"]\n",
            "ab".repeat(32)
        );
        if let Some(p) = proxy {
            text.push_str(&format!("http_proxy = \"{p}\"\n"));
        }
        Config::parse(std::path::Path::new("test.toml"), &text).unwrap()
    }

    /// A minimal real CONNECT proxy: reads the request head, records it, then pipes bytes.
    async fn proxy(answer: &'static str) -> (String, tokio::sync::oneshot::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (client, _) = listener.accept().await.unwrap();
            let mut client = BufReader::new(client);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                client.read_line(&mut line).await.unwrap();
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let target = head.split_whitespace().nth(1).unwrap().to_owned();
            let _ = tx.send(head);
            let mut client = client.into_inner();
            client.write_all(answer.as_bytes()).await.unwrap();
            if answer.contains(" 200 ") {
                let mut upstream = tokio::net::TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn connects_through_an_http_connect_proxy() {
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target_addr = target.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = target.accept().await.unwrap();
            s.write_all(b"hello from the controller").await.unwrap();
        });
        let (proxy_addr, head) =
            proxy("HTTP/1.1 200 Connection established\r\nVia: test\r\n\r\n").await;
        let url = format!("https://{target_addr}");
        let config = config(&url, Some(&format!("http://{proxy_addr}")));
        let controller = Controller::new(&config, &url).unwrap();
        let mut tcp = controller.tcp().await.unwrap();
        let mut got = String::new();
        tcp.read_to_string(&mut got).await.unwrap();
        assert_eq!(
            got, "hello from the controller",
            "nothing of the proxy's answer leaks into the stream"
        );
        let head = head.await.unwrap();
        assert!(
            head.starts_with(&format!("CONNECT {target_addr} HTTP/1.1\r\n")),
            "{head}"
        );
    }

    #[tokio::test]
    async fn a_refusing_proxy_is_a_clear_error() {
        let (proxy_addr, _head) = proxy("HTTP/1.1 403 Forbidden\r\n\r\n").await;
        let url = "https://controller.example:7444";
        let controller =
            Controller::new(&config(url, Some(&format!("http://{proxy_addr}"))), url).unwrap();
        let err = controller.tcp().await.unwrap_err().to_string();
        assert!(
            err.contains("refused to connect to controller.example:7444") && err.contains("403"),
            "{err}"
        );
    }
}
