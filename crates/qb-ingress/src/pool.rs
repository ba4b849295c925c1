//! Keep-alive HTTP/1.1 connections to endpoints, one pool per proxy thread. A request goes on
//! an idle connection of its endpoint when there is one, else on a new one; the connection
//! goes back to the pool once its response's body has been read to the end. A connection the
//! endpoint closed while idle gives the request back unsent, and it goes on the next; an
//! endpoint that refuses connections is passed over for the next one of its backend. A
//! connection goes back only when both its request and its response went through to the end
//! (an endpoint may answer before a client's upload ended); anything else closes it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::routes::Backend;

/// How long connecting to an endpoint may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an endpoint may take to answer a request's head (nginx's `proxy_read_timeout`).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a pooled connection may take to be ready for the next request.
const READY_TIMEOUT: Duration = Duration::from_millis(500);
/// When the kernel starts probing an idle connection to an endpoint whose host may be gone.
const KEEPALIVE: Duration = Duration::from_secs(30);
/// How long an idle connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The most idle connections kept per endpoint.
const MAX_IDLE: usize = 256;

type Sender = SendRequest<Upload>;

#[derive(Default)]
struct Idle {
    by_endpoint: HashMap<SocketAddr, Vec<(Sender, Instant)>>,
    swept: Option<Instant>,
}

/// The pool of one proxy thread (a mutex no other thread waits on).
#[derive(Clone, Default)]
pub struct Pool(Arc<Mutex<Idle>>);

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the backend has no ready endpoints")]
    NoEndpoints,
    #[error("no endpoint accepted a connection; the last, {endpoint}")]
    Connect {
        endpoint: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("endpoint {endpoint} did not answer within {RESPONSE_TIMEOUT:?}")]
    Timeout { endpoint: SocketAddr },
    #[error("endpoint {endpoint} failed the request")]
    Request {
        endpoint: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

impl Pool {
    /// Sends `req` (origin-form URI, its `Host` set) to one of `backend`'s endpoints.
    pub async fn send(
        &self,
        backend: &Backend,
        req: Request<Incoming>,
    ) -> Result<Response<Returning>, SendError> {
        let uploaded = Arc::new(AtomicBool::new(req.body().is_end_stream()));
        let mut req = req.map(|body| Upload {
            body,
            done: uploaded.clone(),
        });
        let mut last = SendError::NoEndpoints;
        for endpoint in backend.endpoints() {
            let addr = endpoint.addr;
            loop {
                let (mut sender, fresh) = match self.take(addr) {
                    Some(sender) => (sender, false),
                    None => match connect(addr).await {
                        Ok(sender) => (sender, true),
                        Err(source) => {
                            last = SendError::Connect {
                                endpoint: addr,
                                source,
                            };
                            break;
                        }
                    },
                };
                // A pooled connection is ready at once, or is busy or gone: another.
                match tokio::time::timeout(READY_TIMEOUT, sender.ready()).await {
                    Ok(Ok(())) => {}
                    _ if fresh => {
                        last = SendError::Connect {
                            endpoint: addr,
                            source: std::io::Error::other("the new connection closed at once"),
                        };
                        break;
                    }
                    _ => continue,
                }
                let sent =
                    tokio::time::timeout(RESPONSE_TIMEOUT, sender.try_send_request(req)).await;
                let Ok(sent) = sent else {
                    return Err(SendError::Timeout { endpoint: addr });
                };
                match sent {
                    Ok(response) => {
                        // An upgraded connection is the client's now.
                        let mut lease = (response.status()
                            != hyper::StatusCode::SWITCHING_PROTOCOLS)
                            .then(|| Lease {
                                pool: self.clone(),
                                addr,
                                sender,
                                uploaded,
                            });
                        if response.body().is_end_stream()
                            && let Some(lease) = lease.take()
                        {
                            lease.release();
                        }
                        return Ok(response.map(|body| Returning { body, lease }));
                    }
                    Err(mut e) => match e.take_message() {
                        // Not sent: the connection was closing. Another, or the next endpoint.
                        Some(back) => {
                            req = back;
                            if fresh {
                                break;
                            }
                        }
                        None => {
                            return Err(SendError::Request {
                                endpoint: addr,
                                source: e.into_error(),
                            });
                        }
                    },
                }
            }
        }
        Err(last)
    }

    fn take(&self, addr: SocketAddr) -> Option<Sender> {
        let mut idle = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let senders = idle.by_endpoint.get_mut(&addr)?;
        while let Some((sender, since)) = senders.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, sender: Sender) {
        let mut idle = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // Now and then, forget connections that closed or idled too long, and endpoints gone.
        if idle.swept.is_none_or(|at| now - at > IDLE_TIMEOUT / 3) {
            idle.swept = Some(now);
            idle.by_endpoint.retain(|_, senders| {
                senders.retain(|(s, since)| !s.is_closed() && now - *since < IDLE_TIMEOUT);
                !senders.is_empty()
            });
        }
        let senders = idle.by_endpoint.entry(addr).or_default();
        if senders.len() < MAX_IDLE {
            senders.push((sender, now));
        }
    }
}

async fn connect(addr: SocketAddr) -> std::io::Result<Sender> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting timed out"))??;
    stream.set_nodelay(true)?;
    // A pooled connection to a host that went away without a word is found out in minutes,
    // not in the kernel's quarter of an hour of retransmissions.
    socket2::SockRef::from(&stream).set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE)
            .with_interval(KEEPALIVE / 3)
            .with_retries(3),
    )?;
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(endpoint = %addr, error = %e, "an endpoint connection ended");
        }
    });
    Ok(sender)
}

/// A connection lent to one response; it goes back to the pool when the body was read through.
struct Lease {
    pool: Pool,
    addr: SocketAddr,
    sender: Sender,
    /// Whether the request's body went out to its end.
    uploaded: Arc<AtomicBool>,
}

impl Lease {
    /// Back to the pool, if the request's body went out whole; else closed.
    fn release(self) {
        if self.uploaded.load(Ordering::Acquire) {
            self.pool.put(self.addr, self.sender);
        }
    }
}

/// A request's body on its way to an endpoint, saying when it ended.
pub struct Upload {
    body: Incoming,
    done: Arc<AtomicBool>,
}

impl Body for Upload {
    type Data = hyper::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        if frame.is_none() || this.body.is_end_stream() {
            this.done.store(true, Ordering::Release);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that gives its connection back to the pool at its end (dropped before,
/// the connection closes with it: its state is unknown).
pub struct Returning {
    body: Incoming,
    lease: Option<Lease>,
}

impl Body for Returning {
    type Data = hyper::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        let ended = match &frame {
            None => true,
            Some(Ok(_)) => this.body.is_end_stream(),
            Some(Err(_)) => {
                this.lease = None;
                false
            }
        };
        if ended && let Some(lease) = this.lease.take() {
            lease.release();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
