//! Serving the zone over UDP and TCP: queries under the zone are answered from the current
//! snapshot (its responses written as bytes, see `wire`), every other query is forwarded as it
//! came to the upstream resolvers (the host's), and their answer relayed as it came back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::wire::{self, MAX_UDP, Reply, Transport};
use crate::zone::Zone;

/// How long an upstream resolver has to answer before the next one is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP client may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// The current zone, swapped whole when the cluster changes. Readers keep their own copy and
/// look only at the generation per query (one atomic load), taking the new zone when it moved.
#[derive(Clone)]
pub struct SharedZone(Arc<(RwLock<Arc<Zone>>, AtomicU64)>);

impl SharedZone {
    pub fn new(zone: Zone) -> Self {
        Self(Arc::new((RwLock::new(Arc::new(zone)), AtomicU64::new(0))))
    }

    pub fn get(&self) -> Arc<Zone> {
        self.0.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, zone: Zone) {
        *self.0.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(zone);
        self.0.1.fetch_add(1, Ordering::Release);
    }

    fn generation(&self) -> u64 {
        self.0.1.load(Ordering::Acquire)
    }

    /// A reader's copy of the zone.
    fn reader(&self) -> ZoneReader {
        ZoneReader {
            generation: self.generation(),
            zone: self.get(),
        }
    }
}

/// One task's copy of the current zone.
struct ZoneReader {
    generation: u64,
    zone: Arc<Zone>,
}

impl ZoneReader {
    /// The current zone, taken again only when it changed.
    fn current(&mut self, shared: &SharedZone) -> &Zone {
        let generation = shared.generation();
        if generation != self.generation {
            // Read the generation first: a change after it is seen on the next query.
            self.generation = generation;
            self.zone = shared.get();
        }
        &self.zone
    }
}

/// Answers queries from the zone, forwarding the rest to `upstreams`.
#[derive(Clone)]
pub struct Resolver {
    pub zone: SharedZone,
    pub upstreams: Arc<[SocketAddr]>,
}

impl Resolver {
    /// Serves UDP on `socket` with `workers` tasks receiving at once.
    pub async fn serve_udp(self, socket: UdpSocket, workers: usize) -> std::io::Result<()> {
        let socket = Arc::new(socket);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers.max(1) {
            let (me, socket) = (self.clone(), socket.clone());
            tasks.spawn(async move { me.udp_loop(socket).await });
        }
        match tasks.join_next().await {
            Some(Ok(result)) => result,
            Some(Err(e)) => Err(std::io::Error::other(e)),
            None => Ok(()),
        }
    }

    async fn udp_loop(self, socket: Arc<UdpSocket>) -> std::io::Result<()> {
        let mut buf = vec![0u8; 4096];
        let mut out = Vec::with_capacity(usize::from(MAX_UDP));
        let mut zone = self.zone.reader();
        loop {
            let (len, peer) = socket.recv_from(&mut buf).await?;
            let query = &buf[..len];
            match wire::answer(zone.current(&self.zone), query, Transport::Udp, &mut out) {
                Reply::Answer => {
                    let _ = socket.send_to(&out, peer).await;
                }
                Reply::Ignore => {}
                Reply::Forward => {
                    let (me, socket, query) = (self.clone(), socket.clone(), query.to_vec());
                    tokio::spawn(async move {
                        if let Some(bytes) = me.forward(&query, Transport::Udp).await {
                            let _ = socket.send_to(&bytes, peer).await;
                        }
                    });
                }
            }
        }
    }

    /// Serves TCP on `listener`, each connection in its own task.
    pub async fn serve_tcp(self, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let me = self.clone();
            tokio::spawn(async move {
                let _ = me.tcp_connection(stream).await;
            });
        }
    }

    async fn tcp_connection(self, mut stream: TcpStream) -> std::io::Result<()> {
        let mut zone = self.zone.reader();
        let mut out = Vec::new();
        loop {
            let mut len = [0u8; 2];
            match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
                Ok(Ok(_)) => {}
                _ => return Ok(()),
            }
            let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
            stream.read_exact(&mut query).await?;
            match wire::answer(zone.current(&self.zone), &query, Transport::Tcp, &mut out) {
                Reply::Answer => {}
                Reply::Ignore => return Ok(()),
                Reply::Forward => match self.forward(&query, Transport::Tcp).await {
                    Some(bytes) => out = bytes,
                    None => return Ok(()),
                },
            }
            let Ok(len) = u16::try_from(out.len()) else {
                return Ok(());
            };
            stream.write_all(&len.to_be_bytes()).await?;
            stream.write_all(&out).await?;
        }
    }

    /// `query` sent as it came to each upstream resolver in turn; the first answer. A UDP answer
    /// that came truncated to a TCP client is asked again over TCP.
    async fn forward(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        for upstream in self.upstreams.iter() {
            let answer = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
                let udp = forward_udp(*upstream, query).await?;
                let truncated = udp.get(2).is_some_and(|flags| flags & 0x02 != 0);
                if truncated && transport == Transport::Tcp {
                    forward_tcp(*upstream, query).await
                } else {
                    Ok(udp)
                }
            })
            .await;
            match answer {
                Ok(Ok(bytes)) => return Some(bytes),
                Ok(Err(e)) => tracing::debug!(%upstream, error = %e, "upstream resolver failed"),
                Err(_) => tracing::debug!(%upstream, "upstream resolver timed out"),
            }
        }
        // Nobody answered: SERVFAIL, as the client would otherwise only time out.
        wire::server_failure(query)
    }
}

async fn forward_udp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let len = socket.recv(&mut buf).await?;
        // Only the answer to this query (same ID).
        if len >= 2 && buf[..2] == query[..2] {
            buf.truncate(len);
            return Ok(buf);
        }
    }
}

async fn forward_tcp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(query).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut answer = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}

/// The nameservers of a `resolv.conf` (port 53), in order.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_are_read_in_order() {
        let conf = "# generated\nsearch example.org\nnameserver 10.0.0.2\nnameserver  fe80::1%eth0\n\
                    nameserver bogus\noptions ndots:5\n";
        assert_eq!(
            nameservers(conf),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }
}
