//! Serving the zone over UDP and TCP: queries under the zone are answered from the current
//! snapshot, every other query is forwarded as it came to the upstream resolvers (the host's),
//! and their answer relayed as it came back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::zone::{Answer, Zone};

/// How long an upstream resolver has to answer before the next one is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest UDP answer sent to a client that does not say (RFC 1035).
const CLASSIC_UDP: usize = 512;
/// The largest UDP answer this server sends (the DNS flag day 2020 size).
const MAX_UDP: u16 = 1232;
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

/// How a query came: UDP answers are bounded in size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
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
        let mut zone = self.zone.reader();
        loop {
            let (len, peer) = socket.recv_from(&mut buf).await?;
            let query = &buf[..len];
            match answer(zone.current(&self.zone), query, Transport::Udp) {
                Reply::Now(Some(bytes)) => {
                    let _ = socket.send_to(&bytes, peer).await;
                }
                Reply::Now(None) => {}
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
        loop {
            let mut len = [0u8; 2];
            match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
                Ok(Ok(_)) => {}
                _ => return Ok(()),
            }
            let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
            stream.read_exact(&mut query).await?;
            let bytes = match answer(zone.current(&self.zone), &query, Transport::Tcp) {
                Reply::Now(bytes) => bytes,
                Reply::Forward => self.forward(&query, Transport::Tcp).await,
            };
            let Some(bytes) = bytes else {
                return Ok(());
            };
            let Ok(len) = u16::try_from(bytes.len()) else {
                return Ok(());
            };
            stream.write_all(&len.to_be_bytes()).await?;
            stream.write_all(&bytes).await?;
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
        let request = Message::from_vec(query).ok()?;
        let mut response = response_to(&request);
        response.set_response_code(ResponseCode::ServFail);
        response.to_vec().ok()
    }
}

/// The answer to `query` from the zone, or that it is for the upstream resolvers. A query
/// too broken to answer gets nothing.
fn answer(zone: &Zone, query: &[u8], transport: Transport) -> Reply {
    let Ok(request) = Message::from_vec(query) else {
        return Reply::Now(None);
    };
    if request.message_type() != MessageType::Query {
        return Reply::Now(None);
    }
    let mut response = response_to(&request);
    let limit = match (transport, request.extensions()) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, Some(edns)) => usize::from(edns.max_payload().clamp(512, MAX_UDP)),
        (Transport::Udp, None) => CLASSIC_UDP,
    };
    if let Some(edns) = request.extensions() {
        let mut ours = Edns::new();
        ours.set_max_payload(MAX_UDP).set_version(edns.version());
        response.set_edns(ours);
    }
    let [question] = request.queries() else {
        response.set_response_code(ResponseCode::FormErr);
        return Reply::Now(response.to_vec().ok());
    };
    if request.op_code() != OpCode::Query {
        response.set_response_code(ResponseCode::NotImp);
        return Reply::Now(response.to_vec().ok());
    }
    let (code, answers, authority): (_, Vec<Record>, _) =
        match zone.lookup(question.name(), question.query_type()) {
            Answer::NotOurs => return Reply::Forward,
            Answer::Records(records) => (ResponseCode::NoError, records, None),
            Answer::NoData(soa) => (ResponseCode::NoError, Vec::new(), Some(soa)),
            Answer::NxDomain(soa) => (ResponseCode::NXDomain, Vec::new(), Some(soa)),
        };
    response
        .set_authoritative(true)
        .set_response_code(code)
        .add_answers(answers)
        .add_name_servers(authority);
    let Ok(bytes) = response.to_vec() else {
        response.set_response_code(ResponseCode::ServFail);
        return Reply::Now(response.to_vec().ok());
    };
    if bytes.len() <= limit {
        return Reply::Now(Some(bytes));
    }
    // Too long for UDP: truncated, so the client asks again over TCP.
    response.take_answers();
    response.take_name_servers();
    response.set_truncated(true);
    Reply::Now(response.to_vec().ok())
}

/// The start of the response to `request`: its id, opcode and question, recursion as asked.
fn response_to(request: &Message) -> Message {
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .add_queries(request.queries().iter().cloned());
    response
}

enum Reply {
    Now(Option<Vec<u8>>),
    Forward,
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
