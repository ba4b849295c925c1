//! The proxy's threads: one per core, as nginx runs its workers. Each thread has its own
//! single-threaded runtime, its own listeners on the shared ports (`SO_REUSEPORT`: the kernel
//! spreads connections over them) and its own pool of connections to endpoints, so a request
//! is served start to end on one thread, with no lock or wake-up shared with another.

use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::proxy::{Proxy, SharedRoutes};

/// Where the proxy serves: plain HTTP, and HTTPS with its TLS configuration.
pub struct Ports {
    pub http: SocketAddr,
    pub https: Option<(SocketAddr, TlsAcceptor)>,
}

/// The running threads; [`Workers::stop`] ends them.
pub struct Workers {
    threads: Vec<JoinHandle<()>>,
    stop: watch::Sender<Option<Duration>>,
    /// The ports bound (the actual ones, when port 0 was asked for).
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
}

/// A socket bound to `addr` that other sockets may bind too.
fn shared_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

impl Workers {
    /// Binds `threads` listeners to each port (failing here if a port is taken) and starts a
    /// thread for each, routing by `routes`.
    pub fn start(threads: usize, ports: Ports, routes: SharedRoutes) -> io::Result<Workers> {
        let threads = threads.max(1);
        let bind = |addr: SocketAddr| -> io::Result<(SocketAddr, Vec<TcpSocket>)> {
            let first = shared_socket(addr)?;
            // Port 0: the others take the port the first one got.
            let addr = first.local_addr()?;
            let mut sockets = vec![first];
            for _ in 1..threads {
                sockets.push(shared_socket(addr)?);
            }
            Ok((addr, sockets))
        };
        let (http, mut http_sockets) = bind(ports.http)?;
        let (https, mut https_sockets, tls) = match ports.https {
            Some((addr, tls)) => {
                let (addr, sockets) = bind(addr)?;
                (Some(addr), sockets, Some(tls))
            }
            None => (None, Vec::new(), None),
        };
        let (stop, stopped) = watch::channel(None);
        let mut handles = Vec::new();
        for i in 0..threads {
            let plain = http_sockets.pop().expect("one socket per thread");
            let secure = https_sockets.pop().zip(tls.clone());
            let routes = routes.clone();
            let mut stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            tracing::error!(error = %e, "starting a proxy thread failed");
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let proxy = Proxy::new(routes);
                        let mut serving = tokio::task::JoinSet::new();
                        match plain.listen(1024) {
                            Ok(listener) => {
                                serving.spawn(proxy.clone().serve_http(listener));
                            }
                            Err(e) => tracing::error!(error = %e, "listening for HTTP failed"),
                        }
                        if let Some((socket, tls)) = secure {
                            match socket.listen(1024) {
                                Ok(listener) => {
                                    serving.spawn(proxy.clone().serve_https(listener, tls));
                                }
                                Err(e) => tracing::error!(error = %e, "listening for HTTPS failed"),
                            }
                        }
                        let within = loop {
                            if let Some(within) = *stopped.borrow_and_update() {
                                break within;
                            }
                            if stopped.changed().await.is_err() {
                                break Duration::ZERO;
                            }
                        };
                        serving.abort_all();
                        proxy.shut_down(within).await;
                    });
                })?;
            handles.push(thread);
        }
        Ok(Workers {
            threads: handles,
            stop,
            http,
            https,
        })
    }

    /// Stops accepting, gives open connections `within` to finish, and waits for the threads.
    pub fn stop(self, within: Duration) {
        self.stop.send_replace(Some(within));
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}
