//! TLS for agent connections, with buffers that exist only while they hold bytes.
//!
//! rustls's buffered connection (what tokio-rustls drives) keeps a 4 KiB receive buffer for as
//! long as a connection lives: with ten thousand idle agents, 40 MiB that hold nothing. This
//! stream drives rustls's unbuffered API instead, with three buffers of its own (records
//! received, records to send, data decrypted and not yet read), each released once drained, so
//! an idle connection holds only its TLS state.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What one read from the socket asks for at least (a whole record when more is known missing).
const READ_SIZE: usize = 4096;
/// The most plaintext one write encrypts.
const WRITE_SIZE: usize = 64 * 1024;
/// A TLS record's header: type, version, length.
const HEADER: usize = 5;
/// Room for a record's header, content type and AEAD tag (rustls asks for more when needed).
const RECORD_OVERHEAD: usize = 64;

/// A server-side TLS stream over TCP.
pub(crate) struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Records received and not yet processed: between reads, at most part of one.
    incoming: Vec<u8>,
    /// Decrypted data not yet read, from `read_at` on.
    plaintext: Vec<u8>,
    read_at: usize,
    /// Records to send, from `sent` on.
    outgoing: Vec<u8>,
    sent: usize,
    /// The peer sent close_notify: reading is at its end.
    peer_closed: bool,
    /// Our close_notify is queued.
    closing: bool,
}

/// What the caller wants of the connection when it processes the records received.
#[derive(Clone, Copy)]
enum Intent<'a> {
    Read,
    Write(&'a [u8]),
    Close,
}

/// What processing came to.
enum Step {
    /// Decrypted data, records to send or the peer's close came of it: look again.
    Progress,
    /// Nothing more without more records from the peer.
    NeedData,
    /// This much of the caller's data is now records to send (0: the close_notify).
    Wrote(usize),
    /// Both sides have closed.
    Closed,
}

/// Completes the TLS handshake on `tcp` as a server.
pub(crate) async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
    let mut stream = TlsStream {
        tcp,
        conn,
        incoming: Vec::new(),
        plaintext: Vec::new(),
        read_at: 0,
        outgoing: Vec::new(),
        sent: 0,
        peer_closed: false,
        closing: false,
    };
    std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    /// The protocol agreed by ALPN.
    pub(crate) fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The client's certificate (its leaf), when it presented one.
    pub(crate) fn peer_certificate(&self) -> Option<&[u8]> {
        self.conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.as_ref())
    }

    /// Bytes the stream's own buffers hold: 0 on an idle connection.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.incoming.capacity() + self.plaintext.capacity() + self.outgoing.capacity()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_send(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            match self.process(Intent::Read)? {
                Step::Progress => {}
                // The client's last flight may complete the handshake with nothing to follow.
                Step::NeedData if !self.conn.is_handshaking() => {}
                Step::NeedData => {
                    if ready!(self.poll_receive(cx))? == 0 {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                Step::Wrote(_) | Step::Closed => {
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
            }
        }
    }

    /// Processes the records received as far as they go, toward `intent`.
    fn process(&mut self, intent: Intent<'_>) -> io::Result<Step> {
        let Self {
            conn,
            incoming,
            plaintext,
            outgoing,
            peer_closed,
            ..
        } = self;
        let UnbufferedStatus { mut discard, state } = conn.process_tls_records(incoming);
        let step = match state.map_err(invalid)? {
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(record) = records.next_record() {
                    let record = record.map_err(invalid)?;
                    discard += record.discard;
                    plaintext.extend_from_slice(record.payload);
                }
                Step::Progress
            }
            ConnectionState::EncodeTlsData(mut data) => {
                let start = outgoing.len();
                outgoing.resize(start + READ_SIZE, 0);
                loop {
                    match data.encode(&mut outgoing[start..]) {
                        Ok(written) => break outgoing.truncate(start + written),
                        Err(EncodeError::InsufficientSize(size)) => {
                            outgoing.resize(start + size.required_size, 0);
                        }
                        Err(e) => return Err(io::Error::other(e)),
                    }
                }
                Step::Progress
            }
            // What was encoded is in `outgoing`, which goes out before anything waits on the peer.
            ConnectionState::TransmitTlsData(data) => {
                data.done();
                Step::Progress
            }
            ConnectionState::BlockedHandshake => Step::NeedData,
            ConnectionState::PeerClosed => {
                *peer_closed = true;
                Step::Progress
            }
            ConnectionState::Closed => Step::Closed,
            ConnectionState::WriteTraffic(mut traffic) => {
                let (data, max) = match intent {
                    Intent::Read => return finish(incoming, discard, Step::NeedData),
                    Intent::Write(data) => {
                        let data = &data[..data.len().min(WRITE_SIZE)];
                        (
                            data,
                            data.len() + RECORD_OVERHEAD * (data.len() / 16_384 + 1),
                        )
                    }
                    Intent::Close => (&[][..], RECORD_OVERHEAD),
                };
                let start = outgoing.len();
                outgoing.resize(start + max, 0);
                loop {
                    let written = match intent {
                        Intent::Close => traffic.queue_close_notify(&mut outgoing[start..]),
                        _ => traffic.encrypt(data, &mut outgoing[start..]),
                    };
                    match written {
                        Ok(written) => break outgoing.truncate(start + written),
                        Err(EncryptError::InsufficientSize(size)) => {
                            outgoing.resize(start + size.required_size, 0);
                        }
                        Err(e) => {
                            outgoing.truncate(start);
                            return Err(io::Error::other(e));
                        }
                    }
                }
                Step::Wrote(data.len())
            }
            state => {
                return Err(io::Error::other(format!(
                    "unexpected TLS state {state:?} (early data is not accepted)"
                )));
            }
        };
        finish(incoming, discard, step)
    }

    /// Sends every record queued; the buffer is released once sent.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads what the socket has into `incoming`; 0 at its end.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // A whole record when its header says how much is missing, so it takes one read.
        let missing = match self.incoming.get(..HEADER) {
            Some(header) => (HEADER + usize::from(u16::from_be_bytes([header[3], header[4]])))
                .saturating_sub(self.incoming.len()),
            None => 0,
        };
        let start = self.incoming.len();
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            // The room is made only once the socket has bytes, so a waiting stream holds none.
            self.incoming.resize(start + missing.max(READ_SIZE), 0);
            let read = self.tcp.try_read(&mut self.incoming[start..]);
            self.incoming.truncate(start + *read.as_ref().unwrap_or(&0));
            if self.incoming.is_empty() {
                self.incoming = Vec::new();
            }
            match read {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Drops the records processed; a drained buffer is released.
fn finish(incoming: &mut Vec<u8>, discard: usize, step: Step) -> io::Result<Step> {
    incoming.drain(..discard);
    if incoming.is_empty() {
        *incoming = Vec::new();
    }
    Ok(step)
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.read_at < this.plaintext.len() {
                let n = buf.remaining().min(this.plaintext.len() - this.read_at);
                buf.put_slice(&this.plaintext[this.read_at..this.read_at + n]);
                this.read_at += n;
                if this.read_at == this.plaintext.len() {
                    this.plaintext = Vec::new();
                    this.read_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            // Records of our own (an alert, a key update) go out when they can; reading does
            // not wait for them.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            match this.process(Intent::Read)? {
                Step::Progress => {}
                Step::Closed => return Poll::Ready(Ok(())),
                Step::NeedData | Step::Wrote(_) => {
                    if ready!(this.poll_receive(cx))? == 0 {
                        // The connection ended without close_notify: the data may be cut short.
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the peer closed the connection without a TLS close_notify",
                        )));
                    }
                }
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.closing {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // At most one write's records wait unsent: they go before more are made.
        ready!(this.poll_send(cx))?;
        loop {
            match this.process(Intent::Write(buf))? {
                Step::Wrote(n) => {
                    // Sent now if the socket takes them; else by the next write or flush.
                    if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Ready(Ok(n));
                }
                Step::Progress => ready!(this.poll_send(cx))?,
                Step::NeedData | Step::Closed => {
                    return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while !this.closing {
            ready!(this.poll_send(cx))?;
            match this.process(Intent::Close) {
                Ok(Step::Progress) => {}
                // Queued, or the session is past sending one.
                Ok(_) | Err(_) => this.closing = true,
            }
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use qb_pki::CertificateAuthority;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const DAY: time::Duration = time::Duration::days(1);
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

    struct Pair {
        server: TlsStream,
        client: tokio_rustls::client::TlsStream<TcpStream>,
    }

    /// A server and a client that presents a certificate, both on the CA's word, over loopback.
    async fn pair(client_alpn: &[u8]) -> Pair {
        let ca = CertificateAuthority::generate("test CA", DAY).unwrap();
        let pem = |s: &str| {
            rustls_pemfile::certs(&mut s.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        };
        let key = |s: &qb_pki::PrivateKeyPem| {
            rustls_pemfile::private_key(&mut s.expose().as_bytes())
                .unwrap()
                .unwrap()
        };
        let server_cert = ca
            .issue_server_cert(&["localhost".to_owned()], DAY)
            .unwrap();
        let mut server = qb_pki::tls::server_config_builder()
            .with_client_cert_verifier(qb_pki::agent_client_verifier(&ca).unwrap())
            .with_single_cert(pem(&server_cert.chain_pem), key(&server_cert.key_pem))
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"qb-test".to_vec()];
        // As the agent endpoint: with no ticket to send, the client's last flight ends the
        // handshake with nothing after it.
        server.send_tls13_tickets = 0;
        let client_cert = ca.issue_replica_cert("test", DAY).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let mut client = qb_pki::tls::client_config_builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(pem(&client_cert.chain_pem), key(&client_cert.key_pem))
            .unwrap();
        client.alpn_protocols = vec![client_alpn.to_vec()];

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let dial = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            connector.connect(name, tcp).await.unwrap()
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let server = tokio::time::timeout(TIMEOUT, accept(tcp, Arc::new(server)))
            .await
            .expect("the handshake ends once the client's last flight is in")
            .unwrap();
        Pair {
            server,
            client: dial.await.unwrap(),
        }
    }

    #[tokio::test]
    async fn a_handshake_gives_the_protocol_and_the_client_certificate() {
        let Pair { server, client } = pair(b"qb-test").await;
        assert_eq!(server.alpn_protocol(), Some(&b"qb-test"[..]));
        let presented = client.get_ref().1.peer_certificates().unwrap().len();
        assert_eq!(presented, 2, "the server presents its leaf and the CA");
        let der = server.peer_certificate().expect("the client's certificate");
        assert_eq!(qb_pki::replica_of(der).as_deref(), Some("test"));
    }

    #[tokio::test]
    async fn data_crosses_both_ways_at_once_and_an_idle_stream_holds_no_buffer() {
        let Pair { server, client } = pair(b"h2").await;
        // A megabyte each way, written while the other side writes too: neither may stall.
        let sent: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        let (mut server_read, mut server_write) = tokio::io::split(server);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let to_client = sent.clone();
        let server_writes = tokio::spawn(async move {
            server_write.write_all(&to_client).await.unwrap();
            server_write.flush().await.unwrap();
            server_write
        });
        let to_server = sent.clone();
        let client_writes = tokio::spawn(async move {
            client_write.write_all(&to_server).await.unwrap();
            client_write.flush().await.unwrap();
            client_write
        });
        let mut at_server = vec![0; sent.len()];
        server_read.read_exact(&mut at_server).await.unwrap();
        let mut at_client = vec![0; sent.len()];
        client_read.read_exact(&mut at_client).await.unwrap();
        assert!(at_server == sent && at_client == sent, "the bytes changed");
        let server = server_read.unsplit(server_writes.await.unwrap());
        assert_eq!(server.buffered(), 0, "an idle stream holds no buffer");
        drop(client_writes.await.unwrap());
    }

    /// The agent's channel waits for the controller's welcome before it says anything.
    #[tokio::test]
    async fn the_server_may_speak_first() {
        let Pair {
            mut server,
            mut client,
        } = pair(b"h2").await;
        server.write_all(b"welcome").await.unwrap();
        server.flush().await.unwrap();
        let mut heard = [0; 7];
        tokio::time::timeout(TIMEOUT, client.read_exact(&mut heard))
            .await
            .expect("the client hears the server")
            .unwrap();
        assert_eq!(&heard, b"welcome");
    }

    #[tokio::test]
    async fn close_notify_ends_reading_cleanly_both_ways() {
        let Pair {
            mut server,
            mut client,
        } = pair(b"h2").await;
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap();
        let mut heard = Vec::new();
        server.read_to_end(&mut heard).await.unwrap();
        assert_eq!(heard, b"last words");
        // The peer's close does not stop this side's writes (TLS 1.3 closes each way alone).
        server.write_all(b"goodbye").await.unwrap();
        server.shutdown().await.unwrap();
        let mut heard = Vec::new();
        client.read_to_end(&mut heard).await.unwrap();
        assert_eq!(heard, b"goodbye");
        assert_eq!(server.buffered(), 0);
    }

    #[tokio::test]
    async fn a_connection_cut_without_close_notify_is_an_error_not_an_end() {
        let Pair { mut server, client } = pair(b"h2").await;
        let (mut tcp, _) = client.into_inner();
        tcp.write_all(&[23, 3, 3, 0, 100, 1, 2, 3]).await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut heard = Vec::new();
        let error = server.read_to_end(&mut heard).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
        drop(tcp);
    }

    #[tokio::test]
    async fn garbage_fails_the_handshake_or_the_session_with_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ca = CertificateAuthority::generate("test CA", DAY).unwrap();
        let cert = ca
            .issue_server_cert(&["localhost".to_owned()], DAY)
            .unwrap();
        let config = qb_pki::tls::server_config_builder()
            .with_no_client_auth()
            .with_single_cert(
                rustls_pemfile::certs(&mut cert.chain_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                rustls_pemfile::private_key(&mut cert.key_pem.expose().as_bytes())
                    .unwrap()
                    .unwrap(),
            )
            .unwrap();
        let writer = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            tcp
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let error = accept(tcp, Arc::new(config))
            .await
            .err()
            .expect("plain HTTP is no TLS handshake");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_tampered_record_is_refused() {
        let Pair { mut server, client } = pair(b"h2").await;
        let (mut tcp, _) = client.into_inner();
        // An application-data record that no key produced.
        let mut record = vec![23, 3, 3, 0, 40];
        record.extend([7u8; 40]);
        tcp.write_all(&record).await.unwrap();
        let mut heard = [0; 16];
        let error = server.read(&mut heard).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        drop(tcp);
    }
}
