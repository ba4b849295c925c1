//! Several controller replicas on one PostgreSQL. Each holds the channels of the agents that
//! connected to it; the store records which replica holds which agent. An instruction, a push,
//! a revocation or a tunnel for an agent that another replica holds goes to that replica, over
//! its agent endpoint, with mutual TLS: each replica has a certificate from the internal CA
//! naming it (`qb:replica:<id>`), which no node certificate carries.
//!
//! Each replica reads where every agent is once, then follows the changes as the database
//! notifies them; every second it reads only the (few) replicas that are alive.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use qb_agent_proto::{ControllerMessage, Instruction, Outcome};
use qb_api::NodeId;
use qb_store::{SessionChange, Store};
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::net::TcpStream;

use super::{AgentTunnel, PingError, TunnelError};

/// Where the peer routes live on the agent endpoint.
pub const PEER_PREFIX: &str = "/peer/v1";
/// How often a replica says it is alive and reads which others are.
const REFRESH: Duration = Duration::from_secs(1);
/// A replica silent for this long is gone; its agents are not online through it.
const REPLICA_GRACE: Duration = Duration::from_secs(5);
/// Replicas gone this long are forgotten, with their sessions.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a node list waits for another replica to say how its agents are (a display
/// detail: without the answer, its agents show as online with their stored last-seen time).
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a request to another replica failed.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    /// No connection to the replica could be made: nothing was sent. It may have died, and
    /// its agents are on their way to another replica.
    #[error("the agent's replica at {url} cannot be reached: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

/// An instruction relayed to the replica that holds the agent.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayedInstruction {
    pub instruction: Instruction,
    pub timeout_ms: u64,
}

/// How an agent a replica holds is, by that replica's clock.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentStatus {
    pub node: NodeId,
    pub online: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen_at: OffsetDateTime,
}

/// The relayed answer: the agent's outcome, or why there is none.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayedOutcome {
    Outcome(Outcome),
    NotConnected,
    NoAnswer,
    ChannelClosed,
}

/// This replica, and how it reaches the others.
pub struct Peers {
    /// This replica's id.
    pub replica: String,
    /// Where the other replicas reach this one.
    pub peer_url: String,
    store: Store,
    /// Agents other replicas hold: node → the holder's id.
    remote: RwLock<HashMap<NodeId, String>>,
    /// The other live replicas: id → URL.
    others: RwLock<HashMap<String, String>>,
    tls: tokio_rustls::TlsConnector,
    connections: tokio::sync::Mutex<HashMap<String, SendRequest<Body>>>,
    /// Artifacts are copied from other replicas one at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl Peers {
    /// `certificate` is this replica's (chain and key, from the internal CA whose certificate
    /// `ca_pem` is); peers are trusted by that CA alone.
    pub fn new(
        store: Store,
        replica: String,
        peer_url: String,
        ca_pem: &str,
        certificate: &qb_pki::IssuedCert,
    ) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let chain = rustls_pemfile::certs(&mut certificate.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = rustls_pemfile::private_key(&mut certificate.key_pem.expose().as_bytes())?
            .ok_or_else(|| anyhow::anyhow!("the replica certificate has no key"))?;
        let mut config = qb_pki::tls::client_config_builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            replica,
            peer_url,
            store,
            remote: RwLock::default(),
            others: RwLock::default(),
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            connections: tokio::sync::Mutex::default(),
            fetching: tokio::sync::Mutex::default(),
        })
    }

    /// Says this replica is alive and reads which others are, every [`REFRESH`], and follows
    /// which agents the others hold, until the process ends.
    pub async fn run(self: Arc<Self>) {
        tokio::spawn(Arc::clone(&self).follow_sessions());
        let mut tick = tokio::time::interval(REFRESH);
        let mut forgotten = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            let now = OffsetDateTime::now_utc();
            if let Err(e) = self
                .store
                .replica_alive(&self.replica, &self.peer_url, now)
                .await
            {
                tracing::warn!(error = %e, "could not record that this replica is alive");
                continue;
            }
            match self
                .store
                .live_replicas(&self.replica, now - REPLICA_GRACE)
                .await
            {
                Ok(others) => *self.others.write().unwrap_or_else(|p| p.into_inner()) = others,
                Err(e) => tracing::warn!(error = %e, "could not read the other replicas"),
            }
            if forgotten.elapsed() > REPLICA_GRACE * 12 {
                forgotten = tokio::time::Instant::now();
                if let Err(e) = self.store.forget_replicas(now - FORGET_AFTER).await {
                    tracing::debug!(error = %e, "could not forget old replicas");
                }
            }
        }
    }

    /// Keeps `remote` up to date for as long as the process runs.
    async fn follow_sessions(self: Arc<Self>) {
        loop {
            match self.follow_until_missed().await {
                Ok(true) => tracing::info!("changes to the agent sessions may have been missed"),
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow the other replicas' agents");
                    tokio::time::sleep(REFRESH).await;
                }
            }
        }
    }

    /// Listens for session changes, reads all sessions, then applies each change as it comes,
    /// until changes may have been missed (`true`). `false`: the database sends no changes.
    async fn follow_until_missed(&self) -> qb_store::Result<bool> {
        let Some(mut changes) = self.store.session_changes().await? else {
            return Ok(false);
        };
        // Listening before reading: a change committed in between is in both, and applying it
        // again changes nothing.
        let all = self.store.remote_sessions(&self.replica).await?;
        *self.remote.write().unwrap_or_else(|p| p.into_inner()) = all;
        loop {
            match changes.next().await? {
                SessionChange::Missed => return Ok(true),
                change => apply(
                    &mut self.remote.write().unwrap_or_else(|p| p.into_inner()),
                    &self.replica,
                    change,
                ),
            }
        }
    }

    /// The URL of the replica that holds `node`'s agent, if another live one does.
    pub fn holder(&self, node: NodeId) -> Option<String> {
        let remote = self.remote.read().unwrap_or_else(|p| p.into_inner());
        let replica = remote.get(&node)?;
        self.others
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(replica)
            .cloned()
    }

    /// The other live replicas' URLs.
    fn others(&self) -> Vec<String> {
        self.others
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Records that this replica holds `node`'s channel, or no longer does.
    pub async fn session(&self, node: NodeId, open: bool) {
        let result = if open {
            self.store
                .agent_session_opened(node, &self.replica, OffsetDateTime::now_utc())
                .await
        } else {
            self.store.agent_session_closed(node, &self.replica).await
        };
        if let Err(e) = result {
            tracing::warn!(node_id = %node, error = %e, "could not record the agent's session");
        }
    }

    /// An HTTP/2 connection to the replica at `url`, kept for the next request.
    async fn connection(&self, url: &str) -> anyhow::Result<SendRequest<Body>> {
        let mut connections = self.connections.lock().await;
        if let Some(sender) = connections.get(url)
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        let (host, port) = crate::https_host_port(url)
            .ok_or_else(|| anyhow::anyhow!("peer URL {url:?} is not an https:// URL"))?;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| anyhow::anyhow!("connecting to the replica at {url} timed out"))??;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host)?;
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, self.tls.connect(name, tcp))
            .await
            .map_err(|_| anyhow::anyhow!("TLS with the replica at {url} timed out"))??;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(qb_tunnel::window::STREAM)
            .initial_connection_window_size(qb_tunnel::window::CONNECTION)
            .keep_alive_interval(Some(Duration::from_secs(10)))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(tls))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection to a replica ended");
            }
        });
        connections.insert(url.to_owned(), sender.clone());
        Ok(sender)
    }

    async fn post(
        &self,
        url: &str,
        path: &str,
        body: Body,
    ) -> Result<hyper::Response<hyper::body::Incoming>, RelayError> {
        self.send(hyper::Method::POST, url, path, body).await
    }

    async fn send(
        &self,
        method: hyper::Method,
        url: &str,
        path: &str,
        body: Body,
    ) -> Result<hyper::Response<hyper::body::Incoming>, RelayError> {
        let mut sender = self
            .connection(url)
            .await
            .map_err(|e| RelayError::Unreachable {
                url: url.to_owned(),
                reason: format!("{e:#}"),
            })?;
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{url}{PEER_PREFIX}{path}"))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(anyhow::Error::from)?;
        match sender.send_request(request).await {
            Ok(response) => Ok(response),
            // The connection broke: when no new one can be made, the replica is gone (it died
            // as the request went out, and whatever it passed on may be sent again: the
            // agents' instructions are safe to repeat, as the engine repeats them anyway).
            Err(e) => {
                self.connections.lock().await.remove(url);
                match self.connection(url).await {
                    Err(unreachable) => Err(RelayError::Unreachable {
                        url: url.to_owned(),
                        reason: format!("{e}; then {unreachable:#}"),
                    }),
                    Ok(_) => Err(anyhow::Error::from(e).into()),
                }
            }
        }
    }

    /// Copies a bundle artifact this replica lacks from another replica that has it (bundles
    /// are imported through one replica, agents download through any). The store keeps it only
    /// if its content hashes to `sha256`. Whether it is here now.
    pub async fn fetch_artifact(
        &self,
        sha256: &str,
        into: &crate::artifacts::ArtifactStore,
    ) -> bool {
        let _one_at_a_time = self.fetching.lock().await;
        if matches!(into.size(sha256).await, Ok(Some(_))) {
            return true;
        }
        for url in self.others() {
            let response = match self
                .send(
                    hyper::Method::GET,
                    &url,
                    &format!("/artifacts/{sha256}"),
                    Body::empty(),
                )
                .await
            {
                Ok(response) if response.status().is_success() => response,
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(%url, error = %e, "could not ask a replica for an artifact");
                    continue;
                }
            };
            let stream = http_body_util::BodyDataStream::new(response.into_body())
                .map(|chunk| chunk.map_err(axum::Error::new));
            match into.put(sha256, stream).await {
                Ok(size) => {
                    tracing::info!(sha256, size, from = %url, "copied an artifact from another replica");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(sha256, from = %url, error = %e, "an artifact from another replica was refused")
                }
            }
        }
        false
    }

    async fn post_json<T: Serialize>(
        &self,
        url: &str,
        path: &str,
        value: &T,
    ) -> Result<Bytes, RelayError> {
        let json = serde_json::to_vec(value).map_err(anyhow::Error::from)?;
        let response = self
            .post(url, path, Body::new(Full::new(Bytes::from(json))))
            .await?;
        if !response.status().is_success() {
            let refusal = refusal(response).await;
            return Err(anyhow::anyhow!("the replica at {url} answered {refusal}").into());
        }
        Ok(response
            .into_body()
            .collect()
            .await
            .map_err(anyhow::Error::from)?
            .to_bytes())
    }

    /// Sends `message` to `node`'s agent through the replica at `url`, in the background.
    pub fn push(self: &Arc<Self>, url: String, node: NodeId, message: ControllerMessage) {
        let peers = self.clone();
        tokio::spawn(async move {
            if let Err(e) = peers
                .post_json(&url, &format!("/nodes/{node}/push"), &message)
                .await
            {
                tracing::warn!(node_id = %node, error = %e, "could not relay a message to the agent's replica");
            }
        });
    }

    /// Revokes `node`'s live identity on the replica at `url`.
    pub fn revoke(self: &Arc<Self>, url: String, node: NodeId) {
        let peers = self.clone();
        tokio::spawn(async move {
            if let Err(e) = peers
                .post_json(&url, &format!("/nodes/{node}/revoke"), &())
                .await
            {
                tracing::warn!(node_id = %node, error = %e, "could not relay a revocation to the agent's replica");
            }
        });
    }

    /// How the agents of `nodes` are, as the replica at `url` that holds them says.
    pub async fn statuses(&self, url: &str, nodes: &[NodeId]) -> anyhow::Result<Vec<AgentStatus>> {
        let answer =
            tokio::time::timeout(STATUS_TIMEOUT, self.post_json(url, "/nodes/status", &nodes))
                .await
                .map_err(|_| anyhow::anyhow!("the replica at {url} did not answer in time"))??;
        Ok(serde_json::from_slice(&answer)?)
    }

    /// An instruction to `node`'s agent through the replica at `url`, and its answer.
    pub async fn request(
        &self,
        url: &str,
        node: NodeId,
        instruction: Instruction,
        timeout: Duration,
    ) -> Result<Outcome, PingError> {
        let relayed = RelayedInstruction {
            instruction,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let answer = tokio::time::timeout(
            timeout + CONNECT_TIMEOUT,
            self.post_json(url, &format!("/nodes/{node}/request"), &relayed),
        )
        .await
        .map_err(|_| PingError::NoAnswer)?
        .map_err(|e| match e {
            RelayError::Unreachable { .. } => PingError::ReplicaGone,
            RelayError::Failed(e) => {
                tracing::warn!(node_id = %node, error = %format!("{e:#}"), "could not relay an instruction");
                PingError::NotConnected
            }
        })?;
        match serde_json::from_slice(&answer) {
            Ok(RelayedOutcome::Outcome(outcome)) => Ok(outcome),
            Ok(RelayedOutcome::NoAnswer) => Err(PingError::NoAnswer),
            Ok(RelayedOutcome::ChannelClosed) => Err(PingError::ChannelClosed),
            Ok(RelayedOutcome::NotConnected) | Err(_) => Err(PingError::NotConnected),
        }
    }

    /// A tunnel to `endpoint` of `node`'s agent through the replica at `url`: that replica
    /// asks its agent and splices; bytes flow through both replicas, each hop its own HTTP/2
    /// stream.
    pub async fn open_tunnel(
        &self,
        url: &str,
        node: NodeId,
        endpoint: &str,
    ) -> Result<AgentTunnel, TunnelError> {
        let (outgoing, to_peer) = qb_tunnel::outgoing();
        let response = self
            .post(
                url,
                &format!("/nodes/{node}/tunnels/{endpoint}"),
                Body::new(outgoing),
            )
            .await
            .map_err(|e| match e {
                RelayError::Unreachable { .. } => TunnelError::ReplicaGone,
                RelayError::Failed(e) => {
                    TunnelError::Refused(format!("the agent's replica at {url}: {e:#}"))
                }
            })?;
        if !response.status().is_success() {
            let reason = refusal(response).await;
            return Err(TunnelError::Refused(reason));
        }
        Ok(qb_tunnel::Tunnel::new(
            Body::new(response.into_body()),
            to_peer,
        ))
    }
}

/// Why another replica refused: its problem's detail, or the status.
async fn refusal(response: hyper::Response<hyper::body::Incoming>) -> String {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    serde_json::from_slice::<qb_api::Problem>(&body)
        .map(|p| format!("{status}: {}", p.detail))
        .unwrap_or_else(|_| status.to_string())
}

/// Applies a session change to `remote` (node → the other replica holding it), as replica `me`.
fn apply(remote: &mut HashMap<NodeId, String>, me: &str, change: SessionChange) {
    match change {
        // Ours now: whoever held it before may never say it let go (its close finds the
        // session already taken over, and changes nothing).
        SessionChange::Opened { node, replica } if replica == me => {
            remote.remove(&node);
        }
        SessionChange::Opened { node, replica } => {
            remote.insert(node, replica);
        }
        SessionChange::Closed { node, replica } => {
            if remote.get(&node) == Some(&replica) {
                remote.remove(&node);
            }
        }
        SessionChange::Missed => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_changes_track_which_other_replica_holds_each_agent() {
        let (n1, n2) = (NodeId::new(), NodeId::new());
        let opened = |node, replica: &str| SessionChange::Opened {
            node,
            replica: replica.to_owned(),
        };
        let closed = |node, replica: &str| SessionChange::Closed {
            node,
            replica: replica.to_owned(),
        };
        let mut remote = HashMap::new();
        for change in [opened(n1, "a"), opened(n2, "b")] {
            apply(&mut remote, "me", change);
        }
        assert_eq!(remote.len(), 2);
        assert_eq!(remote[&n1], "a");

        // n1 moves to this replica; A's close comes late, or never (it finds the session
        // taken over): n1 is no longer A's either way.
        apply(&mut remote, "me", opened(n1, "me"));
        assert!(!remote.contains_key(&n1), "{remote:?}");
        apply(&mut remote, "me", closed(n1, "a"));
        apply(&mut remote, "me", closed(n1, "me"));
        assert!(!remote.contains_key(&n1), "{remote:?}");

        // n2 moves from B to A before B closes: B's late close leaves it with A.
        apply(&mut remote, "me", opened(n2, "a"));
        apply(&mut remote, "me", closed(n2, "b"));
        assert_eq!(remote[&n2], "a");
        apply(&mut remote, "me", closed(n2, "a"));
        assert!(remote.is_empty(), "{remote:?}");
    }
}
