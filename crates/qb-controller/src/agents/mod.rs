//! Connected agents: who is online, their channels, and pushing work to them.
//!
//! Liveness is judged by the controller's clock: an agent is online while its channel is open
//! and it was heard from within [`Agents::grace`]. Heartbeats only touch this map; the database
//! is written when an agent connects, when its facts change and when it leaves.

pub mod ca;
mod channel;
pub mod endpoint;
pub mod metrics;
pub mod outbox;
pub mod packages;
pub mod peers;
mod tls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qb_agent_proto::{ControllerMessage, Instruction, Outcome};
use qb_api::{Node, NodeId};
use time::OffsetDateTime;
use tokio::sync::{oneshot, watch};

/// How long work for an agent whose replica cannot be reached waits for the agent to connect
/// to another replica: agents reconnect within a second or two of losing their replica.
const MOVE_WAIT: Duration = Duration::from_secs(10);
/// How often the wait looks where the agent is.
const MOVE_POLL: Duration = Duration::from_millis(100);

/// The registry of connected agents, shared by the agent endpoint and the API.
pub struct Agents {
    nodes: Mutex<HashMap<NodeId, Entry>>,
    /// Instructions waiting for their answer, with the node they went to.
    waiting: Mutex<HashMap<u64, (NodeId, oneshot::Sender<Outcome>)>>,
    /// Tunnels asked for and not yet opened, with the node asked.
    tunnels: Mutex<HashMap<u64, PendingTunnel>>,
    next_id: AtomicU64,
    heartbeat: Duration,
    /// The other replicas, when several share the database.
    peers: std::sync::OnceLock<Arc<peers::Peers>>,
    /// What the agents held here report of their hosts.
    metrics: Arc<metrics::HostMetrics>,
}

#[derive(Default)]
struct Entry {
    /// Open TLS connections of this node and the switch that closes each.
    connections: Vec<(u64, watch::Sender<bool>)>,
    channel: Option<Channel>,
}

struct Channel {
    connection: u64,
    /// The agent protocol the agent speaks on it.
    protocol: u32,
    to_agent: outbox::Sender,
    last_seen: Instant,
    last_seen_at: OffsetDateTime,
}

/// An open agent connection; `closed` flips to `true` when the controller wants it gone.
pub struct Connection {
    pub id: u64,
    pub closed: watch::Receiver<bool>,
}

impl Agents {
    pub fn new(heartbeat: Duration) -> Self {
        Self {
            nodes: Mutex::default(),
            waiting: Mutex::default(),
            tunnels: Mutex::default(),
            next_id: AtomicU64::new(1),
            heartbeat,
            peers: std::sync::OnceLock::new(),
            metrics: Arc::default(),
        }
    }

    /// What the agents held here report of their hosts.
    pub fn metrics(&self) -> &Arc<metrics::HostMetrics> {
        &self.metrics
    }

    /// Routes work for agents other replicas hold through them, from now on.
    pub fn set_peers(&self, peers: Arc<peers::Peers>) {
        let _ = self.peers.set(peers);
    }

    /// The other replicas, if several share the database.
    pub fn peers(&self) -> Option<&Arc<peers::Peers>> {
        self.peers.get()
    }

    /// The URL of the replica holding `node`'s agent, when another replica does.
    fn holder(&self, node: NodeId) -> Option<(&Arc<peers::Peers>, String)> {
        let peers = self.peers.get()?;
        if self.holds(node) {
            return None;
        }
        peers.holder(node).map(|url| (peers, url))
    }

    /// Whether this replica holds the node's channel.
    pub fn holds(&self, node: NodeId) -> bool {
        self.lock().get(&node).is_some_and(|e| e.channel.is_some())
    }

    /// How often agents heartbeat.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// How long an agent may stay silent before it is offline: three missed heartbeats.
    pub fn grace(&self) -> Duration {
        self.heartbeat * 3
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Entry>> {
        self.nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn connection_opened(&self, node: NodeId) -> Connection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(false);
        self.lock()
            .entry(node)
            .or_default()
            .connections
            .push((id, tx));
        Connection { id, closed: rx }
    }

    pub fn connection_closed(&self, node: NodeId, connection: u64) {
        let mut abandoned = false;
        let mut nodes = self.lock();
        if let Some(entry) = nodes.get_mut(&node) {
            entry.connections.retain(|(id, _)| *id != connection);
            if entry
                .channel
                .as_ref()
                .is_some_and(|c| c.connection == connection)
            {
                entry.channel = None;
                abandoned = true;
            }
            if entry.connections.is_empty() && entry.channel.is_none() {
                nodes.remove(&node);
            }
        }
        drop(nodes);
        if abandoned {
            self.abandon_pings(node);
        }
    }

    /// The agent's channel is open: from now on instructions go to `to_agent`. A newer channel
    /// replaces an older one (a reconnect that overtook the old connection's timeout).
    pub fn channel_opened(
        &self,
        node: NodeId,
        connection: u64,
        protocol: u32,
        to_agent: outbox::Sender,
    ) {
        self.lock().entry(node).or_default().channel = Some(Channel {
            connection,
            protocol,
            to_agent,
            last_seen: Instant::now(),
            last_seen_at: OffsetDateTime::now_utc(),
        });
    }

    pub fn channel_closed(&self, node: NodeId, connection: u64) {
        let closed = match self.lock().get_mut(&node) {
            Some(entry)
                if entry
                    .channel
                    .as_ref()
                    .is_some_and(|c| c.connection == connection) =>
            {
                entry.channel = None;
                true
            }
            _ => false,
        };
        if closed {
            self.abandon_pings(node);
        }
    }

    /// Pings sent to a channel that closed will never be answered: fail them now.
    fn abandon_pings(&self, node: NodeId) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (to, _)| *to != node);
        self.pending_tunnels().retain(|_, (to, _)| *to != node);
    }

    /// The agent was heard from (a heartbeat or any frame).
    pub fn heard(&self, node: NodeId) {
        if let Some(channel) = self.lock().get_mut(&node).and_then(|e| e.channel.as_mut()) {
            channel.last_seen = Instant::now();
            channel.last_seen_at = OffsetDateTime::now_utc();
        }
    }

    /// Sends a message to the agent now, if it is connected. `false` when it is not, or when it
    /// is so far behind that its queue is full.
    pub fn push(&self, node: NodeId, message: ControllerMessage) -> bool {
        if let Some((peers, url)) = self.holder(node) {
            peers.push(url, node, message);
            return true;
        }
        self.push_local(node, message)
    }

    /// Sends a message to the agent if this replica holds its channel.
    pub fn push_local(&self, node: NodeId, message: ControllerMessage) -> bool {
        let sender = self
            .lock()
            .get(&node)
            .and_then(|e| e.channel.as_ref())
            .map(|c| c.to_agent.clone());
        sender.is_some_and(|s| s.try_send(message).is_ok())
    }

    /// Revokes a node's live identity: tells the agent, then closes all its connections a
    /// moment later (so the message can reach it). Must be called within a tokio runtime.
    pub fn revoke(&self, node: NodeId) {
        if let Some((peers, url)) = self.holder(node) {
            peers.revoke(url, node);
        }
        self.revoke_local(node);
    }

    /// Revokes the node's connections to this replica.
    pub fn revoke_local(&self, node: NodeId) {
        let entry = self.lock().remove(&node);
        self.abandon_pings(node);
        if let Some(entry) = entry {
            if let Some(channel) = &entry.channel {
                let _ = channel.to_agent.try_send(ControllerMessage::Deauthorized);
            }
            tokio::spawn(async move {
                tokio::time::sleep(Self::REVOKE_GRACE).await;
                for (_, close) in &entry.connections {
                    let _ = close.send(true);
                }
            });
        }
    }

    /// How long a revoked agent's connection stays open for the news to reach it.
    const REVOKE_GRACE: Duration = Duration::from_millis(200);

    /// Online state and last contact of a node's agent, by the controller's clock.
    pub fn status(&self, node: NodeId) -> Option<(bool, OffsetDateTime)> {
        let nodes = self.lock();
        let channel = nodes.get(&node)?.channel.as_ref()?;
        Some((
            channel.last_seen.elapsed() < self.grace(),
            channel.last_seen_at,
        ))
    }

    /// The first moment an agent whose channel this replica holds goes offline unless it
    /// speaks before: when to look at liveness again.
    pub fn next_offline(&self) -> Option<Instant> {
        let (now, grace) = (Instant::now(), self.grace());
        self.lock()
            .values()
            .filter_map(|e| e.channel.as_ref())
            .map(|c| c.last_seen + grace)
            .filter(|at| *at > now)
            .min()
    }

    /// Fills in the live part of a node's agent information.
    pub fn overlay(&self, node: &mut Node) {
        let Some(agent) = node.agent.as_mut() else {
            return;
        };
        if let Some((online, last_seen)) = self.status(node.id) {
            agent.online = online;
            agent.last_seen_at = Some(last_seen);
        } else if self.holder(node.id).is_some() {
            // Another replica holds its channel: online; the stored last-seen time stands.
            agent.online = true;
        }
    }

    /// As [`Agents::overlay`] for many nodes, with the state of agents other replicas hold
    /// asked of them (one request per replica), so every replica shows the same last-seen
    /// times. A replica that does not answer leaves its agents as `overlay` has them.
    pub async fn overlay_all(&self, nodes: &mut [Node]) {
        let mut remote: HashMap<String, Vec<NodeId>> = HashMap::new();
        for node in nodes.iter_mut() {
            self.overlay(node);
            if node.agent.is_some()
                && let Some((_, url)) = self.holder(node.id)
            {
                remote.entry(url).or_default().push(node.id);
            }
        }
        let Some(peers) = self.peers.get() else {
            return;
        };
        let asked = remote
            .iter()
            .map(|(url, ids)| async move { (url, peers.statuses(url, ids).await) });
        for (url, answer) in futures_util::future::join_all(asked).await {
            let statuses = match answer {
                Ok(statuses) => statuses,
                Err(e) => {
                    tracing::debug!(replica = url, error = %format!("{e:#}"), "could not ask a replica how its agents are");
                    continue;
                }
            };
            let by_node: HashMap<NodeId, (bool, OffsetDateTime)> = statuses
                .into_iter()
                .map(|s| (s.node, (s.online, s.last_seen_at)))
                .collect();
            for node in nodes.iter_mut() {
                if let (Some(agent), Some((online, seen))) =
                    (node.agent.as_mut(), by_node.get(&node.id))
                {
                    agent.online = *online;
                    agent.last_seen_at = Some(*seen);
                }
            }
        }
    }

    /// How many agents have an open channel.
    pub fn connected(&self) -> usize {
        self.lock().values().filter(|e| e.channel.is_some()).count()
    }

    /// Pushes a ping and waits for the agent to answer: the time from "the controller decided"
    /// to "the agent did it".
    pub async fn ping(&self, node: NodeId, timeout: Duration) -> Result<Duration, PingError> {
        let started = Instant::now();
        self.request(node, |id| Instruction::Ping { nonce: id }, timeout)
            .await?;
        Ok(started.elapsed())
    }

    /// Pushes an instruction (built from its id) and waits for the agent's answer.
    pub async fn request(
        &self,
        node: NodeId,
        instruction: impl FnOnce(u64) -> Instruction,
        timeout: Duration,
    ) -> Result<Outcome, PingError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let instruction = instruction(id);
        let give_up = Instant::now() + timeout.min(MOVE_WAIT);
        loop {
            let Some((peers, url)) = self.holder(node) else {
                return self.request_local(node, id, instruction, timeout).await;
            };
            match peers
                .request(&url, node, instruction.clone(), timeout)
                .await
            {
                // Nothing reached the agent: ask again wherever it went.
                Err(PingError::ReplicaGone) => {
                    if !self.moved_from(node, &url, give_up).await {
                        return Err(PingError::NotConnected);
                    }
                }
                answer => return answer,
            }
        }
    }

    /// Waits until `node`'s agent is no longer said to be on the replica at `url` (it
    /// connected here, or to another replica), until `give_up`. Whether it moved.
    async fn moved_from(&self, node: NodeId, url: &str, give_up: Instant) -> bool {
        loop {
            if self.holder(node).is_none_or(|(_, holder)| holder != url) {
                return true;
            }
            if Instant::now() >= give_up {
                tracing::info!(node_id = %node, replica = url, "the agent's replica cannot be reached, and the agent did not connect elsewhere");
                return false;
            }
            tokio::time::sleep(MOVE_POLL).await;
        }
    }

    /// A fresh instruction id.
    pub fn next_instruction_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Pushes an instruction to the agent if this replica holds its channel, and waits for
    /// the answer.
    pub async fn request_local(
        &self,
        node: NodeId,
        id: u64,
        instruction: Instruction,
        timeout: Duration,
    ) -> Result<Outcome, PingError> {
        let protocol = self
            .lock()
            .get(&node)
            .and_then(|e| e.channel.as_ref())
            .map(|c| c.protocol);
        if let Some(protocol) = protocol
            && protocol < instruction.protocol()
        {
            return Ok(Outcome::Failed {
                error: format!(
                    "the node's agent speaks protocol {protocol}, and this takes protocol {}: upgrade the agent's package",
                    instruction.protocol()
                ),
            });
        }
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (node, tx));
        let message = ControllerMessage::Instruction {
            id,
            instruction: Box::new(instruction),
        };
        let pushed = Instant::now();
        let result = if !self.push_local(node, message) {
            Err(PingError::NotConnected)
        } else {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(outcome)) => {
                    self.metrics.round_trip(node, pushed.elapsed());
                    Ok(outcome)
                }
                Ok(Err(_)) => Err(PingError::ChannelClosed),
                Err(_) => Err(PingError::NoAnswer),
            }
        };
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        result
    }

    /// The agent answered an instruction (`Done` answers with `Outcome::Done`). An answer from
    /// another node than the one asked is ignored.
    pub fn answered(&self, from: NodeId, instruction: u64, outcome: Outcome) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting.get(&instruction).is_some_and(|(to, _)| *to == from)
            && let Some((_, waiter)) = waiting.remove(&instruction)
        {
            let _ = waiter.send(outcome);
        }
    }

    /// Asks the node's agent for a connection to one of the endpoints its plan allows (by
    /// name) and waits until the agent opened it or refused.
    pub async fn open_tunnel(
        &self,
        node: NodeId,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<AgentTunnel, TunnelError> {
        let give_up = Instant::now() + timeout.min(MOVE_WAIT);
        loop {
            let Some((peers, url)) = self.holder(node) else {
                return self.open_tunnel_local(node, endpoint, timeout).await;
            };
            match peers.open_tunnel(&url, node, endpoint).await {
                Err(TunnelError::ReplicaGone) => {
                    if !self.moved_from(node, &url, give_up).await {
                        return Err(TunnelError::NotConnected);
                    }
                }
                tunnel => return tunnel,
            }
        }
    }

    /// A tunnel through the agent if this replica holds its channel.
    pub async fn open_tunnel_local(
        &self,
        node: NodeId,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<AgentTunnel, TunnelError> {
        let stream = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending_tunnels().insert(stream, (node, tx));
        let message = ControllerMessage::OpenTunnel {
            stream,
            endpoint: endpoint.to_owned(),
        };
        let result = if !self.push_local(node, message) {
            Err(TunnelError::NotConnected)
        } else {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(Ok(tunnel))) => Ok(tunnel),
                Ok(Ok(Err(reason))) => Err(TunnelError::Refused(reason)),
                Ok(Err(_)) => Err(TunnelError::ChannelClosed),
                Err(_) => Err(TunnelError::NoAnswer),
            }
        };
        self.pending_tunnels().remove(&stream);
        result
    }

    fn pending_tunnels(&self) -> std::sync::MutexGuard<'_, HashMap<u64, PendingTunnel>> {
        self.tunnels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The agent opened the tunnel `stream` (or refused it, `Err`). `false` when nobody waits
    /// for it any more, or `from` is not the node that was asked.
    pub fn tunnel_opened(
        &self,
        from: NodeId,
        stream: u64,
        tunnel: Result<AgentTunnel, String>,
    ) -> bool {
        let mut pending = self.pending_tunnels();
        if pending.get(&stream).is_none_or(|(to, _)| *to != from) {
            return false;
        }
        pending
            .remove(&stream)
            .is_some_and(|(_, waiter)| waiter.send(tunnel).is_ok())
    }

    /// Whether the node's agent is online now.
    pub fn online(&self, node: NodeId) -> bool {
        self.status(node).is_some_and(|(online, _)| online) || self.holder(node).is_some()
    }
}

/// A connection the agent carries to a local endpoint: read and write it like a socket.
pub type AgentTunnel = qb_tunnel::Tunnel<axum::body::Body>;

/// The node asked for a tunnel, and who waits for it (or for the agent's refusal).
type PendingTunnel = (NodeId, oneshot::Sender<Result<AgentTunnel, String>>);

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("the node's agent is not connected")]
    NotConnected,
    #[error("the node's agent did not open the tunnel in time")]
    NoAnswer,
    #[error("the node's agent disconnected before it opened the tunnel")]
    ChannelClosed,
    #[error("the node's agent refused: {0}")]
    Refused(String),
    /// The replica holding the agent cannot be reached (kept within this module: a caller
    /// sees the agent again on its new replica, or `NotConnected`).
    #[error("the replica holding the node's agent cannot be reached")]
    ReplicaGone,
}

#[derive(Debug, thiserror::Error)]
pub enum PingError {
    #[error("the node's agent is not connected")]
    NotConnected,
    #[error("the node's agent did not answer in time")]
    NoAnswer,
    #[error("the node's agent disconnected before it answered")]
    ChannelClosed,
    /// As [`TunnelError::ReplicaGone`].
    #[error("the replica holding the node's agent cannot be reached")]
    ReplicaGone,
}

#[cfg(test)]
mod tests {
    use qb_agent_proto::PROTOCOL_VERSION;

    use super::*;

    #[tokio::test]
    async fn revoke_tells_the_agent_and_closes_its_connections() {
        let agents = Agents::new(Duration::from_secs(1));
        let node = NodeId::new();
        let mut conn = agents.connection_opened(node);
        let (tx, mut rx) = outbox::channel(4);
        agents.channel_opened(node, conn.id, PROTOCOL_VERSION, tx);
        assert_eq!(agents.status(node).map(|s| s.0), Some(true));
        agents.revoke(node);
        assert_eq!(rx.recv().await, Some(ControllerMessage::Deauthorized));
        conn.closed.changed().await.unwrap();
        assert!(*conn.closed.borrow());
        assert_eq!(agents.status(node), None);
        assert!(!agents.push(node, ControllerMessage::Deauthorized));
    }

    #[tokio::test]
    async fn pings_are_answered_or_fail_fast_when_the_channel_closes() {
        let agents = std::sync::Arc::new(Agents::new(Duration::from_secs(1)));
        let node = NodeId::new();
        let conn = agents.connection_opened(node);
        let (tx, mut rx) = outbox::channel(4);
        agents.channel_opened(node, conn.id, PROTOCOL_VERSION, tx);
        // An agent that answers.
        let answering = {
            let agents = agents.clone();
            tokio::spawn(async move {
                let Some(ControllerMessage::Instruction { id, .. }) = rx.recv().await else {
                    panic!()
                };
                agents.answered(node, id, Outcome::Done);
                rx
            })
        };
        let rtt = agents.ping(node, Duration::from_secs(5)).await.unwrap();
        assert!(rtt < Duration::from_secs(1));
        let _rx = answering.await.unwrap();
        // An agent whose channel closes before it answers: the ping fails at once, not at the timeout.
        let started = std::time::Instant::now();
        let closer = {
            let agents = agents.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                agents.channel_closed(node, conn.id);
            })
        };
        let err = agents.ping(node, Duration::from_secs(5)).await.unwrap_err();
        closer.await.unwrap();
        assert!(matches!(err, PingError::ChannelClosed), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(matches!(
            agents.ping(node, Duration::from_secs(5)).await,
            Err(PingError::NotConnected)
        ));
    }

    #[tokio::test]
    async fn silence_past_the_grace_period_is_offline() {
        let agents = Agents::new(Duration::from_millis(1));
        let node = NodeId::new();
        let conn = agents.connection_opened(node);
        let (tx, _rx) = outbox::channel(4);
        agents.channel_opened(node, conn.id, PROTOCOL_VERSION, tx);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(agents.status(node).map(|s| s.0), Some(false));
        agents.heard(node);
        assert_eq!(agents.status(node).map(|s| s.0), Some(true));
        agents.connection_closed(node, conn.id);
        assert_eq!(
            agents.status(node),
            None,
            "closing the connection ends its channel"
        );
    }
}
