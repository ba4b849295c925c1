//! The agent's channel: the agent's frames in, instructions out, for as long as it is connected.
//!
//! Agents of protocol 2 on hold it on a TLS connection of its own (ALPN
//! [`qb_agent_proto::CHANNEL_ALPN`]): one small task per agent reads and writes the stream, so an
//! idle agent costs a TLS session, that task and its queue. Agents of protocol 1 hold it as one
//! long-lived HTTP/2 stream ([`over_http2`]); both read frames with the same [`Listener`].

use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use qb_agent_proto::{AgentMessage, ControllerMessage, FrameDecoder, Outcome, encode};
use qb_api::{NodeFacts, ProblemCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::endpoint::{AgentEndpoint, Peer, require};
use super::{Connection, outbox};
use crate::ApiError;

/// Instructions queued for one agent before pushes to it are refused.
const QUEUE: usize = 64;
/// The most one read takes from the TLS session (it holds the rest decrypted).
const READ_CHUNK: usize = 16 * 1024;

/// The channel over a connection of its own. Ends when the agent closes it, breaks the
/// protocol, sends no whole frame for the grace period, or does not take its frames within it;
/// when a newer channel of the node replaces this one (its queue ends); or when the controller
/// closes the connection (`connection.closed`: the node was deauthorized).
pub(super) async fn hold<S>(
    endpoint: AgentEndpoint,
    peer: Peer,
    protocol: u32,
    mut stream: S,
    mut connection: Connection,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // This future is what every idle agent costs: what it holds across awaits is kept small,
    // and the rare, large steps (opening, writing, closing, the store) are boxed.
    let node = peer.identity.node;
    let (mut listener, mut to_agent) = match Box::pin(open(endpoint.clone(), peer, protocol)).await
    {
        Ok(opened) => opened,
        Err(e) => {
            tracing::warn!(node_id = %node, error = %e.0.detail, "could not open an agent's channel");
            endpoint.agents.connection_closed(node, peer.connection);
            return;
        }
    };
    drop(endpoint);
    let grace = listener.endpoint.agents.grace();
    let mut decoder = FrameDecoder::default();
    // Empty between frames: an idle channel holds no read buffer (a read takes what room it
    // needs, growing from 64 bytes).
    let mut chunk = Vec::new();
    let mut deadline = tokio::time::Instant::now() + grace;
    loop {
        tokio::select! {
            // What is queued goes first: a `Deauthorized` before the close that follows it.
            biased;
            message = to_agent.recv() => {
                let Some(message) = message else { break };
                if !Box::pin(send(&mut stream, &message, grace)).await {
                    tracing::info!(node_id = %node, "an agent did not take its frames; closing its channel");
                    break;
                }
            }
            read = stream.read_buf(&mut chunk) => {
                match read {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(node_id = %node, error = %e, "agent channel ended");
                        break;
                    }
                }
                decoder.push(&chunk);
                match Box::pin(listener.read(&mut decoder)).await {
                    Err(Broken) => break,
                    // Only whole frames count as signs of life, not bytes trickled in.
                    Ok(0) => {}
                    Ok(_) => deadline = tokio::time::Instant::now() + grace,
                }
                chunk = match decoder.pending() {
                    0 => Vec::new(),
                    // Part of a frame came: read the rest in larger pieces.
                    _ => Vec::with_capacity((chunk.capacity() * 2).min(READ_CHUNK)),
                };
            }
            () = closed(&mut connection) => {
                tracing::info!(node_id = %node, "closed the connection of a deauthorized node");
                break;
            }
            () = tokio::time::sleep_until(deadline) => {
                tracing::info!(node_id = %node, seconds = grace.as_secs(), "an agent was silent past the grace period; closing its channel");
                break;
            }
        }
    }
    Box::pin(close(stream, listener)).await;
}

/// Writes one frame; `false` when the agent did not take it within `grace`.
async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    message: &ControllerMessage,
    grace: Duration,
) -> bool {
    let frame = encode(message);
    let sent = tokio::time::timeout(grace, async {
        stream.write_all(&frame).await?;
        stream.flush().await
    });
    matches!(sent.await, Ok(Ok(())))
}

/// Ends a channel's own connection: the registry first (nothing more is pushed to it), then
/// close_notify, so the agent tells a deliberate close from a broken connection.
async fn close<S: AsyncWrite + Unpin>(mut stream: S, listener: Listener) {
    let (node, connection) = (listener.peer.identity.node, listener.peer.connection);
    let agents = listener.endpoint.agents.clone();
    listener.closed().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.shutdown()).await;
    agents.connection_closed(node, connection);
}

/// Completes when the controller wants the connection gone.
async fn closed(connection: &mut Connection) {
    let _ = connection.closed.wait_for(|closed| *closed).await;
}

/// Tells an agent whose certificate is refused, on its channel's connection, then closes it.
pub(super) async fn refuse<S: AsyncWrite + Unpin>(mut stream: S) {
    let frame = encode(&ControllerMessage::Deauthorized);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        stream.write_all(&frame).await?;
        stream.shutdown().await
    })
    .await;
}

/// The channel as agents of protocol 1 hold it: the agent's frames in the request body, the
/// controller's in the response body, for as long as the HTTP/2 connection lives.
pub(super) async fn over_http2(
    State(endpoint): State<AgentEndpoint>,
    Extension(peer): Extension<Option<Peer>>,
    body: Body,
) -> Result<Response, ApiError> {
    let peer = require(peer)?;
    let (mut listener, from_controller) = open(endpoint, peer, 1).await?;
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut decoder = FrameDecoder::default();
        while let Some(Ok(chunk)) = stream.next().await {
            decoder.push(&chunk);
            if listener.read(&mut decoder).await.is_err() {
                break;
            }
        }
        listener.closed().await;
    });
    let frames = futures_util::stream::unfold(from_controller, |mut rx| async move {
        let message = rx.recv().await?;
        Some((Ok::<_, Infallible>(Bytes::from(encode(&message))), rx))
    });
    Ok(Body::from_stream(frames).into_response())
}

/// Opens the channel: queues the `Welcome`, routes the node's instructions to the queue
/// returned, and tells the other replicas that this one holds the agent.
async fn open(
    endpoint: AgentEndpoint,
    peer: Peer,
    protocol: u32,
) -> Result<(Listener, outbox::Receiver), ApiError> {
    let node = endpoint
        .store
        .agent_node(peer.identity.tenant, peer.identity.node)
        .await?
        .node;
    let (to_agent, from_controller) = outbox::channel(QUEUE);
    let welcome = ControllerMessage::Welcome {
        node_id: node.id,
        state: node.state,
        heartbeat_seconds: u32::try_from(endpoint.agents.heartbeat().as_secs())
            .unwrap_or(u32::MAX)
            .max(1),
        plan_generation: endpoint
            .store
            .node_plan(peer.identity.tenant, peer.identity.node)
            .await?
            .map(|(generation, _)| generation),
    };
    to_agent
        .try_send(welcome)
        .map_err(|_| ApiError::new(ProblemCode::Internal, "channel closed"))?;
    endpoint
        .agents
        .channel_opened(node.id, peer.connection, protocol, to_agent);
    if let Some(peers) = endpoint.agents.peers() {
        peers.session(node.id, true).await;
    }
    let listener = Listener {
        endpoint,
        peer,
        // What the store already knows: a reconnecting agent whose facts did not change costs
        // no write.
        known_facts: Some(node.facts),
        known_agent: node.agent.map(|a| (a.version, a.build, a.protocol)),
        version: String::new(),
        build: None,
        protocol,
    };
    Ok((listener, from_controller))
}

/// Acts on an agent's frames. A bad frame is never acted on.
struct Listener {
    endpoint: AgentEndpoint,
    peer: Peer,
    known_facts: Option<NodeFacts>,
    /// The agent's version, build and protocol as the store has them.
    known_agent: Option<(String, Option<String>, Option<u32>)>,
    /// The agent's version, from its `Hello`; empty until then.
    version: String,
    /// The agent's build, from its `Hello`.
    build: Option<String>,
    /// The protocol the agent speaks on this channel.
    protocol: u32,
}

/// The agent broke the protocol: its channel closes.
struct Broken;

impl Listener {
    /// Acts on every complete frame `decoder` holds; how many there were.
    async fn read(&mut self, decoder: &mut FrameDecoder) -> Result<usize, Broken> {
        let node = self.peer.identity.node;
        let mut frames = 0;
        loop {
            match decoder.next_message::<AgentMessage>() {
                Ok(Some(message)) => {
                    self.on(message).await?;
                    frames += 1;
                }
                Ok(None) => return Ok(frames),
                Err(e) => {
                    tracing::warn!(node_id = %node, error = %e, "agent broke the protocol; closing its channel");
                    return Err(Broken);
                }
            }
        }
    }

    async fn on(&mut self, message: AgentMessage) -> Result<(), Broken> {
        let (tenant, node) = (self.peer.identity.tenant, self.peer.identity.node);
        let endpoint = &self.endpoint;
        // The first frame must say who the agent is; nothing before it is acted on.
        if self.version.is_empty() && !matches!(message, AgentMessage::Hello { .. }) {
            tracing::warn!(node_id = %node, "agent did not start with hello; closing its channel");
            return Err(Broken);
        }
        endpoint.agents.heard(node);
        let seen = match message {
            AgentMessage::Hello {
                agent_version,
                facts,
                build,
                rolled_back,
            } => {
                self.version = agent_version.chars().take(64).collect();
                if self.version.is_empty() {
                    tracing::warn!(node_id = %node, "agent sent an empty version; closing its channel");
                    return Err(Broken);
                }
                self.build = build.map(|b| b.as_str().to_owned());
                // An agent running the build it says it went back from reports an old trial.
                if let Some(back) =
                    rolled_back.filter(|b| Some(b.build.as_str()) != self.build.as_deref())
                {
                    let reason: String = back.reason.chars().take(512).collect();
                    tracing::warn!(node_id = %node, build = %back.build, reason, "the agent went back from a new build");
                    let result = Box::pin(endpoint.store.agent_rolled_back(
                        tenant,
                        node,
                        back.build.as_str(),
                        &reason,
                    ))
                    .await;
                    if let Err(e) = result {
                        tracing::warn!(node_id = %node, error = %e, "could not record the agent's roll-back");
                    }
                }
                let agent = (
                    self.version.clone(),
                    self.build.clone(),
                    Some(self.protocol),
                );
                let unchanged = self.known_facts.as_ref() == Some(&facts)
                    && self.known_agent.as_ref() == Some(&agent);
                self.known_agent = Some(agent);
                (!unchanged).then_some(facts)
            }
            AgentMessage::Heartbeat { facts, metrics } => {
                let sample = super::metrics::sample(&metrics, time::OffsetDateTime::now_utc());
                endpoint.agents.metrics().record(tenant, node, sample);
                facts
            }
            AgentMessage::Done { instruction } => {
                endpoint.agents.answered(node, instruction, Outcome::Done);
                None
            }
            AgentMessage::Reply {
                instruction,
                outcome,
            } => {
                endpoint.agents.answered(node, instruction, outcome);
                None
            }
            AgentMessage::KeepAlive => {
                endpoint
                    .agents
                    .push_local(node, ControllerMessage::KeepAlive);
                None
            }
            AgentMessage::TunnelRefused { stream, reason } => {
                let reason: String = reason.chars().take(512).collect();
                endpoint.agents.tunnel_opened(node, stream, Err(reason));
                None
            }
            AgentMessage::Plan(report) => {
                if let Err(e) =
                    Box::pin(endpoint.store.record_plan_report(tenant, node, &report)).await
                {
                    tracing::warn!(node_id = %node, error = %e, "could not record a plan report");
                }
                endpoint.wake.notify_one();
                None
            }
        };
        if let Some(facts) = seen {
            let result = Box::pin(endpoint.store.agent_seen(
                tenant,
                node,
                &self.seen(),
                Some(&facts),
                time::OffsetDateTime::now_utc(),
            ))
            .await;
            if let Err(e) = result {
                tracing::warn!(node_id = %node, error = %e, "could not record agent facts");
            }
            self.known_facts = Some(facts);
        }
        Ok(())
    }

    fn seen(&self) -> qb_store::SeenAgent<'_> {
        qb_store::SeenAgent {
            version: &self.version,
            build: self.build.as_deref(),
            protocol: self.protocol,
        }
    }

    /// The channel is gone: instructions stop going to it, other replicas learn that this one
    /// no longer holds the agent, and the store when it was last seen.
    async fn closed(self) {
        let (tenant, node) = (self.peer.identity.tenant, self.peer.identity.node);
        let endpoint = &self.endpoint;
        endpoint.agents.channel_closed(node, self.peer.connection);
        if let Some(peers) = endpoint.agents.peers()
            && !endpoint.agents.holds(node)
        {
            peers.session(node, false).await;
        }
        if !self.version.is_empty()
            && let Err(e) = endpoint
                .store
                .agent_left(tenant, node, time::OffsetDateTime::now_utc())
                .await
        {
            tracing::debug!(node_id = %node, error = %e, "could not record when the agent left");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use qb_agent_proto::PROTOCOL_VERSION;
    use qb_api::{NodeId, TenantId};
    use qb_pki::NodeIdentity;
    use tokio::io::DuplexStream;

    use super::*;
    use crate::agents::Agents;

    /// Beside its TLS session, what an idle agent costs the controller is this task: whatever
    /// the channel's future holds across its awaits, for as long as the agent is connected.
    #[tokio::test]
    async fn the_channel_task_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let store = qb_store::Store::open(
            &qb_test_support::sqlite_url(dir.path()),
            qb_store::Keyring::ephemeral(),
        )
        .await
        .unwrap();
        let ca = crate::agents::ca::load_or_create(&store).await.unwrap();
        let agents = Arc::new(Agents::new(Duration::from_secs(10)));
        let endpoint = AgentEndpoint {
            store,
            agents: agents.clone(),
            ca: Arc::new(ca),
            node_cert_lifetime: time::Duration::days(1),
            wake: Arc::default(),
            artifacts: crate::artifacts::ArtifactStore::open(&dir.path().join("a")).unwrap(),
        };
        let node = NodeId::new();
        let connection = agents.connection_opened(node);
        let peer = Peer {
            identity: NodeIdentity {
                tenant: TenantId::new(),
                node,
            },
            connection: connection.id,
        };
        let (stream, _other_end) = tokio::io::duplex(64);
        let task = hold(endpoint, peer, PROTOCOL_VERSION, stream, connection);
        let own = std::mem::size_of_val(&task) - std::mem::size_of::<DuplexStream>();
        eprintln!("the channel's future holds {own} bytes beside its stream");
        // 1264 bytes when this was written; a step held inline rather than boxed adds kilobytes.
        assert!(
            own <= 1536,
            "the channel's future holds {own} bytes beside its stream"
        );
    }
}
