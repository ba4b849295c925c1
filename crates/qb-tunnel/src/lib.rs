//! A byte stream carried by the two bodies of one HTTP/2 stream.
//!
//! The agent opens a tunneled connection as a request on its connection to the controller: the
//! request body carries the bytes one way, the response body the other. HTTP/2 gives each stream
//! its own flow control, so a stalled tunnel never holds up the others or the agent's channel.
//! [`Tunnel`] reads the incoming body and writes to the outgoing one, as any socket would.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use hyper::body::{Body, Bytes, Frame};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

/// HTTP/2 flow control of a connection that carries tunnels. Each stream has its own window;
/// data a stalled tunnel has not read also holds the connection's window, so that one is large
/// enough for every stream the connection allows to stall with a full window and still leave a
/// window's worth for the others (and for the agent's channel). Both ends use these.
pub mod window {
    /// Each stream's window: a tunnel's throughput is at most this per round trip.
    pub const STREAM: u32 = 1 << 20;
    /// Streams open at once on one connection (the receiving end enforces it).
    pub const MAX_STREAMS: u32 = 128;
    /// The connection's window: what stalled tunnels can hold at most, plus one stream's.
    pub const CONNECTION: u32 = STREAM * (MAX_STREAMS + 1);
}

/// How many written chunks may wait for the HTTP/2 stream's window before writes wait too.
const QUEUED_CHUNKS: usize = 8;

/// The buffer size for copying between a tunnel and a socket: large enough to keep HTTP/2
/// frames full.
pub const COPY_BUFFER: usize = 64 * 1024;

/// The body a [`Tunnel`]'s writes go out on: hand it to HTTP as a request or response body.
pub struct Outgoing(mpsc::Receiver<Bytes>);

impl Body for Outgoing {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// Creates the outgoing half: the body to send, and the sender a [`Tunnel`] writes to.
pub fn outgoing() -> (Outgoing, mpsc::Sender<Bytes>) {
    let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
    (Outgoing(rx), tx)
}

/// One tunneled connection: reads come from `incoming`, writes go to the [`Outgoing`] body.
/// Shutting down the write side ends the outgoing body; the incoming body's end is end of file.
pub struct Tunnel<B> {
    incoming: B,
    /// Received but not yet read.
    pending: Bytes,
    incoming_done: bool,
    outgoing: PollSender<Bytes>,
}

impl<B> Tunnel<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(incoming: B, outgoing: mpsc::Sender<Bytes>) -> Self {
        Self {
            incoming,
            pending: Bytes::new(),
            incoming_done: false,
            outgoing: PollSender::new(outgoing),
        }
    }
}

impl<B> AsyncRead for Tunnel<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending.is_empty() && !self.incoming_done {
            match ready!(Pin::new(&mut self.incoming).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers carry nothing for a tunnel.
                    if let Ok(data) = frame.into_data() {
                        self.pending = data;
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                None => self.incoming_done = true,
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<B: Unpin> AsyncWrite for Tunnel<B> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.outgoing.poll_reserve(cx)).map_err(|_| closed())?;
        self.outgoing
            .send_item(Bytes::copy_from_slice(buf))
            .map_err(|_| closed())?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Chunks go out as soon as the stream's window allows; there is nothing to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outgoing.close();
        Poll::Ready(Ok(()))
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the tunnel's stream is closed")
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use http_body_util::BodyExt;
    use http_body_util::combinators::BoxBody;
    use hyper::body::Incoming;
    use hyper::client::conn::http2::SendRequest;
    use hyper::{Request, Response};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    type AnyBody = BoxBody<Bytes, Infallible>;

    /// An HTTP/2 connection over memory whose server hands every request's tunnel to `serve`.
    async fn connection<F, Fut>(serve: F) -> SendRequest<AnyBody>
    where
        F: Fn(Tunnel<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let serve = serve.clone();
                async move {
                    let (body, tx) = outgoing();
                    tokio::spawn(serve(Tunnel::new(req.into_body(), tx)));
                    Ok::<_, Infallible>(Response::new(body))
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(window::STREAM)
                .initial_connection_window_size(window::CONNECTION)
                .max_concurrent_streams(window::MAX_STREAMS)
                .serve_connection(TokioIo::new(server), service)
                .await;
        });
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(window::STREAM)
            .initial_connection_window_size(window::CONNECTION)
            .handshake(TokioIo::new(client))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
    }

    async fn open(sender: &mut SendRequest<AnyBody>) -> Tunnel<Incoming> {
        let (body, tx) = outgoing();
        let response = sender
            .send_request(Request::post("http://x/t").body(body.boxed()).unwrap())
            .await
            .unwrap();
        Tunnel::new(response.into_body(), tx)
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_shutdown_is_end_of_file() {
        let mut sender = connection(|mut t: Tunnel<Incoming>| async move {
            let mut got = Vec::new();
            t.read_to_end(&mut got).await.unwrap();
            got.reverse();
            t.write_all(&got).await.unwrap();
            t.shutdown().await.unwrap();
        })
        .await;
        let mut tunnel = open(&mut sender).await;
        let sent: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        tunnel.write_all(&sent).await.unwrap();
        tunnel.shutdown().await.unwrap();
        let mut back = Vec::new();
        tunnel.read_to_end(&mut back).await.unwrap();
        back.reverse();
        assert_eq!(back, sent);
    }

    #[tokio::test]
    async fn stalled_tunnels_do_not_hold_up_another_on_the_same_connection() {
        // The server echoes; the stalled tunnels' readers never read their echoes, so their
        // streams' windows fill and their writes stall, holding what they buffered of the
        // connection's window. The live one keeps echoing.
        let mut sender = connection(|mut t: Tunnel<Incoming>| async move {
            let mut buf = vec![0; COPY_BUFFER];
            while let Ok(n) = t.read(&mut buf).await {
                if n == 0 || t.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        })
        .await;
        let mut stalled = Vec::new();
        for _ in 0..8 {
            let mut tunnel = open(&mut sender).await;
            let chunk = vec![7u8; COPY_BUFFER];
            let mut written = 0usize;
            while tokio::time::timeout(Duration::from_millis(300), tunnel.write_all(&chunk))
                .await
                .is_ok()
            {
                written += chunk.len();
                assert!(written < 64 << 20, "writes never stalled");
            }
            assert!(
                written >= window::STREAM as usize,
                "stalled after {written} bytes"
            );
            stalled.push(tunnel);
        }

        let mut live = open(&mut sender).await;
        for round in 0..100u32 {
            let message = round.to_be_bytes();
            live.write_all(&message).await.unwrap();
            let mut echo = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(2), live.read_exact(&mut echo))
                .await
                .expect("the live tunnel answers while the others are stalled")
                .unwrap();
            assert_eq!(echo, message);
        }
        drop(stalled);
    }
}
