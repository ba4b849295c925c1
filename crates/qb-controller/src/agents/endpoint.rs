//! The agent endpoint: its own TLS port, where agents register (server-authenticated TLS and a
//! bootstrap token) and then hold their channel (mutual TLS with the node certificate).
//!
//! A presented node certificate is checked against the store when the connection opens: a
//! deauthorized node, or a certificate that is not the node's current (or previous) one, is
//! refused before any request is read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{AppendHeaders, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use qb_agent_proto::etcd::SNAPSHOTS_PATH;
use qb_agent_proto::plan::{ARTIFACTS_PATH, PLAN_PATH};
use qb_agent_proto::{
    CHANNEL_ALPNS, CHANNEL_PATH, ControllerMessage, PROTOCOL_HEADER, PROTOCOL_VERSION,
    REGISTER_PATH, RENEW_PATH, RegisterRequest, RegisterResponse, RenewRequest, RenewResponse,
    SUPPORTED_PROTOCOLS, TUNNEL_PATH,
};
use qb_api::{NodeName, NodeState, ProblemCode};
use qb_pki::{CertificateAuthority, NodeIdentity};
use qb_store::{IssuedCert, Registration, Store, StoreError};
use tokio::io::AsyncSeekExt;
use tokio::net::TcpListener;

use super::Agents;
use super::peers::{PEER_PREFIX, RelayedInstruction, RelayedOutcome};
use crate::ApiError;
use crate::extract::ApiJson;

/// Every bootstrap token starts with this.
pub const BOOTSTRAP_TOKEN_PREFIX: &str = "qbb_";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the agent endpoint shares between connections.
#[derive(Clone)]
pub struct AgentEndpoint {
    pub store: Store,
    pub agents: Arc<Agents>,
    pub ca: Arc<CertificateAuthority>,
    /// How long node certificates live; agents renew at 70–90 % of it.
    pub node_cert_lifetime: time::Duration,
    /// Woken when an agent reports on its plan.
    pub wake: Arc<tokio::sync::Notify>,
    /// Where bundle artifacts are kept.
    pub artifacts: crate::artifacts::ArtifactStore,
}

/// Another controller replica, behind a connection's client certificate.
#[derive(Clone, Debug)]
pub struct ReplicaPeer(pub String);

/// The node behind a connection's client certificate.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub identity: NodeIdentity,
    pub connection: u64,
}

impl AgentEndpoint {
    /// The TLS configuration: a server certificate from the internal CA for `sans` (chain
    /// includes the CA, which agents pin), and optional client certificates from the same CA.
    pub fn tls_config(&self, sans: &[String]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let issued = self.ca.issue_server_cert(sans, time::Duration::days(365))?;
        let certs = rustls_pemfile::certs(&mut issued.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = rustls_pemfile::private_key(&mut issued.key_pem.expose().as_bytes())?
            .ok_or_else(|| anyhow::anyhow!("issued key is missing"))?;
        let mut config = qb_pki::tls::server_config_builder()
            .with_client_cert_verifier(qb_pki::agent_client_verifier(&self.ca)?)
            .with_single_cert(certs, key)?;
        config.alpn_protocols = [b"h2".as_slice()]
            .into_iter()
            .chain(CHANNEL_ALPNS.map(|(alpn, _)| alpn))
            .map(<[u8]>::to_vec)
            .collect();
        // Agents never resume a session (every connection presents the node certificate
        // afresh): tickets and a session cache would only cost each connection memory.
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(Arc::new(config))
    }

    fn router(&self) -> Router {
        let agents = Router::new()
            .route(REGISTER_PATH, post(register))
            .route(CHANNEL_PATH, post(super::channel::over_http2))
            .route(RENEW_PATH, post(renew))
            .route(&format!("{TUNNEL_PATH}/{{stream}}"), post(tunnel))
            .route(PLAN_PATH, get(plan))
            .route(&format!("{ARTIFACTS_PATH}/{{sha256}}"), get(artifact))
            .route(
                &format!("{SNAPSHOTS_PATH}/{{id}}"),
                axum::routing::put(crate::snapshots::upload),
            )
            .route_layer(axum::middleware::from_fn(agent_protocol));
        Router::new()
            .merge(agents)
            .route(
                &format!("{PEER_PREFIX}/artifacts/{{sha256}}"),
                get(relay_artifact),
            )
            .route(
                &format!("{PEER_PREFIX}/nodes/{{node}}/push"),
                post(relay_push),
            )
            .route(
                &format!("{PEER_PREFIX}/nodes/{{node}}/revoke"),
                post(relay_revoke),
            )
            .route(
                &format!("{PEER_PREFIX}/nodes/{{node}}/request"),
                post(relay_request),
            )
            .route(&format!("{PEER_PREFIX}/nodes/status"), post(relay_status))
            .route(
                &format!("{PEER_PREFIX}/nodes/{{node}}/tunnels/{{endpoint}}"),
                post(relay_tunnel),
            )
            .fallback(|| async { ApiError::new(ProblemCode::NotFound, "no such agent path") })
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self.clone())
    }

    /// Serves agents on `listener` until the process ends.
    pub async fn serve(self, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
        let router = self.router();
        loop {
            let (tcp, peer_addr) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "agent endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (endpoint, tls, router) = (self.clone(), tls.clone(), router.clone());
            tokio::spawn(async move { endpoint.connection(tcp, peer_addr, tls, router).await });
        }
    }

    async fn connection(
        self,
        tcp: tokio::net::TcpStream,
        addr: SocketAddr,
        config: Arc<rustls::ServerConfig>,
        router: Router,
    ) {
        let tls =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, super::tls::accept(tcp, config)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%addr, error = %e, "agent TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
        // The channel's own connection names the agent's protocol.
        let channel = CHANNEL_ALPNS
            .iter()
            .find(|(alpn, _)| tls.alpn_protocol() == Some(*alpn))
            .map(|(_, protocol)| *protocol);
        let presented = tls.peer_certificate().map(<[u8]>::to_vec);
        // Another controller replica, relaying work for an agent this one holds.
        let replica = presented
            .as_deref()
            .and_then(qb_pki::replica_of)
            .map(ReplicaPeer);
        let identity = match presented.filter(|_| replica.is_none()) {
            None => None,
            Some(der) => match self.admit(&der).await {
                Ok(identity) => Some(identity),
                Err(Unadmitted::Unchecked(error)) => {
                    tracing::warn!(%addr, %error, "could not check an agent certificate; closing its connection");
                    return;
                }
                Err(Unadmitted::Refused(reason)) => {
                    // Answer with the refusal, so the agent learns why and stops.
                    tracing::warn!(%addr, %reason, "refused an agent certificate");
                    if channel.is_some() {
                        super::channel::refuse(tls).await;
                        return;
                    }
                    let refuse = Router::new().fallback(|| async {
                        ApiError::new(
                            ProblemCode::CertificateRefused,
                            "this node certificate is no longer accepted: the node was deauthorized or re-registered",
                        )
                    });
                    let service = TowerToHyperService::new(refuse);
                    let builder = auto::Builder::new(TokioExecutor::new()).http2_only();
                    let serving = builder.serve_connection(TokioIo::new(tls), service);
                    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, serving).await;
                    return;
                }
            },
        };
        if let Some(protocol) = channel {
            // The channel's own connection: nothing but frames, and only with a node certificate.
            let Some(identity) = identity else {
                tracing::debug!(%addr, "a channel connection without a node certificate");
                return;
            };
            let connection = self.agents.connection_opened(identity.node);
            let peer = Peer {
                identity,
                connection: connection.id,
            };
            // A task of its own, sized for the channel alone: this one is sized for HTTP/2.
            tokio::spawn(super::channel::hold(self, peer, protocol, tls, connection));
            return;
        }
        let connection = identity.map(|id| (id, self.agents.connection_opened(id.node)));
        let peer = connection.as_ref().map(|(identity, c)| Peer {
            identity: *identity,
            connection: c.id,
        });
        // Hand each request the connection's peer; cloning the router is cheap, re-layering it
        // per connection is not (it rebuilds the routes).
        let service = TowerToHyperService::new(tower::service_fn(
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(peer);
                req.extensions_mut().insert(replica.clone());
                tower::ServiceExt::oneshot(router.clone(), req)
            },
        ));
        let mut builder = auto::Builder::new(TokioExecutor::new()).http2_only();
        builder
            .http2()
            .timer(TokioTimer::new())
            // Heartbeats already show the agent is there; pings only find dead connections.
            .keep_alive_interval(Some(self.agents.grace()))
            .keep_alive_timeout(self.agents.grace())
            // Stalled tunnels must leave room for the others and the channel.
            .initial_stream_window_size(qb_tunnel::window::STREAM)
            .initial_connection_window_size(qb_tunnel::window::CONNECTION)
            .max_concurrent_streams(qb_tunnel::window::MAX_STREAMS);
        let serving = builder.serve_connection(TokioIo::new(tls), service);
        match connection {
            Some((identity, mut conn)) => {
                tokio::select! {
                    result = serving => if let Err(e) = result {
                        tracing::debug!(node_id = %identity.node, error = %e, "agent connection ended");
                    },
                    _ = conn.closed.wait_for(|closed| *closed) => {
                        tracing::info!(node_id = %identity.node, "closed the connection of a deauthorized node");
                    }
                }
                self.agents.connection_closed(identity.node, conn.id);
            }
            None => {
                if let Err(e) = serving.await {
                    tracing::debug!(%addr, error = %e, "agent connection ended");
                }
            }
        }
    }

    /// Checks a verified client certificate against the store: the node must exist in the
    /// tenant the certificate names, not be deauthorized, and the serial must be current.
    /// A store that cannot answer refuses nothing: the connection is closed and the agent
    /// comes back (a refusal would make it give up its identity).
    async fn admit(&self, der: &[u8]) -> Result<NodeIdentity, Unadmitted> {
        let info = qb_pki::node_cert_info(der).map_err(|e| Unadmitted::Refused(e.to_string()))?;
        let node = match self
            .store
            .agent_node(info.identity.tenant, info.identity.node)
            .await
        {
            Ok(node) => node,
            Err(e @ StoreError::NotFound { .. }) => {
                return Err(Unadmitted::Refused(format!(
                    "node {}: {e}",
                    info.identity.node
                )));
            }
            Err(e) => return Err(Unadmitted::Unchecked(e.to_string())),
        };
        if !node.accepts_serial(&info.serial) {
            return Err(Unadmitted::Refused(format!(
                "node {} ({}) is {} or the certificate was replaced",
                node.node.name,
                info.identity.node,
                node.node.state.as_str()
            )));
        }
        Ok(info.identity)
    }
}

/// Why a presented node certificate was not taken.
enum Unadmitted {
    /// The node is gone, deauthorized or holds another certificate now.
    Refused(String),
    /// The store could not be asked.
    Unchecked(String),
}

pub(crate) fn require(peer: Option<Peer>) -> Result<Peer, ApiError> {
    peer.ok_or_else(|| {
        ApiError::new(
            ProblemCode::Unauthenticated,
            "this needs the node's client certificate",
        )
    })
}

async fn register(
    State(endpoint): State<AgentEndpoint>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<Json<RegisterResponse>, ApiError> {
    let token = req.token.expose();
    if !token.starts_with(BOOTSTRAP_TOKEN_PREFIX) || token.len() > 128 {
        return Err(ApiError::new(
            ProblemCode::RegistrationRefused,
            "registration refused: that is not a bootstrap token",
        ));
    }
    if req.agent_version.is_empty() || req.agent_version.len() > 64 {
        return Err(ApiError::invalid(
            "agent_version must be 1 to 64 characters",
        ));
    }
    let name: NodeName =
        req.facts
            .hostname
            .to_ascii_lowercase()
            .parse()
            .map_err(|e: qb_api::InvalidValue| {
                ApiError::invalid(format!("the host's name cannot name a node: {e}"))
            })?;
    let registration = Registration {
        token_hash: crate::auth::hash_secret(token),
        machine_id: req.machine_id.as_str().to_owned(),
        name,
        facts: req.facts,
        labels: req.labels,
        agent_version: req.agent_version,
    };
    let ca = endpoint.ca.clone();
    let lifetime = endpoint.node_cert_lifetime;
    let online = |node| endpoint.agents.online(node);
    let registered = endpoint
        .store
        .register_node(&registration, online, |tenant, node| {
            let cert = ca.sign_node_csr(&req.csr_pem, &NodeIdentity { tenant, node }, lifetime)?;
            Ok(IssuedCert {
                pem: cert.cert_pem,
                serial: cert.serial,
            })
        })
        .await;
    let registered = match registered {
        Err(StoreError::IdentityConflict(conflict)) => {
            tracing::warn!(
                node_id = %conflict.node.id,
                node = %conflict.node.name,
                claimant = %conflict.claimant_hostname,
                "a second host presented an online node's machine id"
            );
            endpoint.store.record_identity_conflict(&conflict).await?;
            return Err(StoreError::IdentityConflict(conflict).into());
        }
        other => other?,
    };
    crate::crash::point("register.committed");
    tracing::info!(
        node_id = %registered.node.id,
        node = %registered.node.name,
        tenant_id = %registered.tenant,
        again = registered.existing,
        "agent registered"
    );
    Ok(Json(RegisterResponse {
        tenant_id: registered.tenant,
        node_id: registered.node.id,
        node_name: registered.node.name,
        state: registered.node.state,
        certificate_pem: registered.certificate.pem,
        ca_pem: endpoint.ca.cert_pem().to_owned(),
    }))
}

async fn renew(
    State(endpoint): State<AgentEndpoint>,
    Extension(peer): Extension<Option<Peer>>,
    ApiJson(req): ApiJson<RenewRequest>,
) -> Result<Json<RenewResponse>, ApiError> {
    let peer = require(peer)?;
    let (ca, lifetime) = (endpoint.ca.clone(), endpoint.node_cert_lifetime);
    let cert = endpoint
        .store
        .renew_node_cert(peer.identity.tenant, peer.identity.node, || {
            let cert = ca.sign_node_csr(&req.csr_pem, &peer.identity, lifetime)?;
            Ok(IssuedCert {
                pem: cert.cert_pem,
                serial: cert.serial,
            })
        })
        .await?;
    tracing::info!(node_id = %peer.identity.node, "renewed a node certificate");
    Ok(Json(RenewResponse {
        certificate_pem: cert.pem,
    }))
}

/// The node's current signed plan.
async fn plan(
    State(endpoint): State<AgentEndpoint>,
    Extension(peer): Extension<Option<Peer>>,
) -> Result<Response, ApiError> {
    let peer = require(peer)?;
    match endpoint
        .store
        .node_plan(peer.identity.tenant, peer.identity.node)
        .await?
    {
        Some((_, signed)) => Ok((
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            signed,
        )
            .into_response()),
        None => Err(ApiError::new(
            ProblemCode::NotFound,
            "this node has no plan",
        )),
    }
}

/// An artifact's bytes, if a bundle of the node's tenant ships it. `Range: bytes=<from>-` asks
/// for the rest from byte `from` on (206), so an interrupted download resumes; other ranges
/// are ignored (200, all of it).
async fn artifact(
    State(endpoint): State<AgentEndpoint>,
    Extension(peer): Extension<Option<Peer>>,
    axum::extract::Path(sha256): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let peer = require(peer)?;
    let not_found = || ApiError::new(ProblemCode::NotFound, "no such artifact");
    if !qb_api::is_sha256_hex(&sha256)
        || !endpoint
            .store
            .tenant_has_artifact(peer.identity.tenant, &sha256)
            .await?
    {
        return Err(not_found());
    }
    if let Some(peers) = endpoint.agents.peers()
        && matches!(endpoint.artifacts.size(&sha256).await, Ok(None))
    {
        peers.fetch_artifact(&sha256, &endpoint.artifacts).await;
    }
    let mut file = endpoint
        .artifacts
        .open_file(&sha256)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot read an artifact");
            ApiError::new(ProblemCode::Internal, "cannot read the artifact")
        })?
        .ok_or_else(not_found)?;
    let size = file.metadata().await.map(|m| m.len()).unwrap_or_default();
    let from = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(range_from);
    let mut response_headers = vec![
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (header::ACCEPT_RANGES, "bytes".to_owned()),
    ];
    let status = match from {
        None => StatusCode::OK,
        Some(from) if from >= size => {
            response_headers.push((header::CONTENT_RANGE, format!("bytes */{size}")));
            let headers = AppendHeaders(response_headers);
            return Ok((StatusCode::RANGE_NOT_SATISFIABLE, headers).into_response());
        }
        Some(from) => {
            file.seek(std::io::SeekFrom::Start(from))
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "cannot read an artifact");
                    ApiError::new(ProblemCode::Internal, "cannot read the artifact")
                })?;
            response_headers.push((
                header::CONTENT_RANGE,
                format!("bytes {from}-{}/{size}", size - 1),
            ));
            StatusCode::PARTIAL_CONTENT
        }
    };
    let length = size - from.unwrap_or(0);
    response_headers.push((header::CONTENT_LENGTH, length.to_string()));
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        file,
        256 * 1024,
    ));
    Ok((status, AppendHeaders(response_headers), body).into_response())
}

/// Lets through only agents that speak a protocol version this controller does, and names
/// its own version in every answer.
async fn agent_protocol(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let spoken = request.headers().get(PROTOCOL_HEADER).map(|v| {
        v.to_str()
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| String::from_utf8_lossy(v.as_bytes()).into_owned())
    });
    let supported = format!(
        "this controller speaks agent protocol {} to {}",
        SUPPORTED_PROTOCOLS.start(),
        SUPPORTED_PROTOCOLS.end()
    );
    let mut response = match spoken {
        Some(Ok(version)) if SUPPORTED_PROTOCOLS.contains(&version) => next.run(request).await,
        Some(Ok(version)) => {
            let newer = if version > *SUPPORTED_PROTOCOLS.end() {
                "the controller"
            } else {
                "the agent"
            };
            ApiError::new(
                ProblemCode::UnsupportedProtocol,
                format!("{supported}, the agent {version}: upgrade {newer}"),
            )
            .into_response()
        }
        Some(Err(text)) => ApiError::new(
            ProblemCode::UnsupportedProtocol,
            format!(
                "{supported}; the agent sent {PROTOCOL_HEADER}: {}",
                qb_api::quote(&text)
            ),
        )
        .into_response(),
        None => ApiError::new(
            ProblemCode::UnsupportedProtocol,
            format!("{supported}; the request names no version (no {PROTOCOL_HEADER} header)"),
        )
        .into_response(),
    };
    response.headers_mut().insert(
        PROTOCOL_HEADER,
        axum::http::HeaderValue::from(PROTOCOL_VERSION),
    );
    response
}

/// The start of a `Range: bytes=<from>-` header, the one form the agents send.
fn range_from(range: &str) -> Option<u64> {
    range
        .strip_prefix("bytes=")?
        .strip_suffix('-')?
        .parse()
        .ok()
}

fn require_replica(replica: Option<ReplicaPeer>) -> Result<ReplicaPeer, ApiError> {
    replica.ok_or_else(|| ApiError::new(ProblemCode::NotFound, "no such agent path"))
}

/// Another replica copies an artifact it lacks.
async fn relay_artifact(
    State(endpoint): State<AgentEndpoint>,
    Extension(replica): Extension<Option<ReplicaPeer>>,
    axum::extract::Path(sha256): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    require_replica(replica)?;
    let not_found = || ApiError::new(ProblemCode::NotFound, "no such artifact");
    if !qb_api::is_sha256_hex(&sha256) {
        return Err(not_found());
    }
    let file = endpoint
        .artifacts
        .open_file(&sha256)
        .await
        .map_err(|_| not_found())?
        .ok_or_else(not_found)?;
    Ok(
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
            file,
            256 * 1024,
        ))
        .into_response(),
    )
}

/// Another replica relays a message for an agent this one holds.
async fn relay_push(
    State(endpoint): State<AgentEndpoint>,
    Extension(replica): Extension<Option<ReplicaPeer>>,
    axum::extract::Path(node): axum::extract::Path<qb_api::NodeId>,
    ApiJson(message): ApiJson<ControllerMessage>,
) -> Result<Json<()>, ApiError> {
    require_replica(replica)?;
    if !endpoint.agents.push_local(node, message) {
        return Err(ApiError::new(
            ProblemCode::NotFound,
            "this replica does not hold that agent",
        ));
    }
    Ok(Json(()))
}

/// Another replica relays a revocation (the node was deauthorized there).
async fn relay_revoke(
    State(endpoint): State<AgentEndpoint>,
    Extension(replica): Extension<Option<ReplicaPeer>>,
    axum::extract::Path(node): axum::extract::Path<qb_api::NodeId>,
) -> Result<Json<()>, ApiError> {
    require_replica(replica)?;
    endpoint.agents.revoke_local(node);
    Ok(Json(()))
}

/// Another replica asks how the agents this one holds are: online, and when last heard from.
async fn relay_status(
    State(endpoint): State<AgentEndpoint>,
    Extension(replica): Extension<Option<ReplicaPeer>>,
    ApiJson(nodes): ApiJson<Vec<qb_api::NodeId>>,
) -> Result<Json<Vec<super::peers::AgentStatus>>, ApiError> {
    require_replica(replica)?;
    Ok(Json(
        nodes
            .into_iter()
            .filter_map(|node| {
                let (online, last_seen_at) = endpoint.agents.status(node)?;
                Some(super::peers::AgentStatus {
                    node,
                    online,
                    last_seen_at,
                })
            })
            .collect(),
    ))
}

/// Another replica relays an instruction and waits for the agent's answer.
async fn relay_request(
    State(endpoint): State<AgentEndpoint>,
    Extension(replica): Extension<Option<ReplicaPeer>>,
    axum::extract::Path(node): axum::extract::Path<qb_api::NodeId>,
    ApiJson(relayed): ApiJson<RelayedInstruction>,
) -> Result<Json<RelayedOutcome>, ApiError> {
    require_replica(replica)?;
    let timeout = Duration::from_millis(relayed.timeout_ms.min(600_000));
    let id = endpoint.agents.next_instruction_id();
    let answer = match endpoint
        .agents
        .request_local(node, id, relayed.instruction, timeout)
        .await
    {
        Ok(outcome) => RelayedOutcome::Outcome(outcome),
        // A local request reaches no other replica.
        Err(super::PingError::NotConnected | super::PingError::ReplicaGone) => {
            RelayedOutcome::NotConnected
        }
        Err(super::PingError::NoAnswer) => RelayedOutcome::NoAnswer,
        Err(super::PingError::ChannelClosed) => RelayedOutcome::ChannelClosed,
    };
    Ok(Json(answer))
}

/// Another replica asks for a tunnel through an agent this one holds: opened here, spliced to
/// the replica's stream.
async fn relay_tunnel(
    State(endpoint): State<AgentEndpoint>,
    Extension(replica): Extension<Option<ReplicaPeer>>,
    axum::extract::Path((node, name)): axum::extract::Path<(qb_api::NodeId, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    require_replica(replica)?;
    let mut agent = endpoint
        .agents
        .open_tunnel_local(node, &name, Duration::from_secs(10))
        .await
        .map_err(|e| ApiError::new(ProblemCode::Unavailable, e.to_string()))?;
    let (outgoing, to_replica) = qb_tunnel::outgoing();
    let mut replica_side = qb_tunnel::Tunnel::new(body, to_replica);
    tokio::spawn(async move {
        let _ = tokio::io::copy_bidirectional_with_sizes(
            &mut replica_side,
            &mut agent,
            qb_tunnel::COPY_BUFFER,
            qb_tunnel::COPY_BUFFER,
        )
        .await;
    });
    Ok(Body::new(outgoing).into_response())
}

/// A tunnel the agent opened because the controller asked: the request body brings the
/// endpoint's bytes, the response body takes the bytes to it. A stream nobody asked this node
/// for is not found.
async fn tunnel(
    State(endpoint): State<AgentEndpoint>,
    Extension(peer): Extension<Option<Peer>>,
    axum::extract::Path(stream): axum::extract::Path<u64>,
    body: Body,
) -> Result<Response, ApiError> {
    let peer = require(peer)?;
    let (outgoing, to_agent) = qb_tunnel::outgoing();
    let tunnel = qb_tunnel::Tunnel::new(body, to_agent);
    if !endpoint
        .agents
        .tunnel_opened(peer.identity.node, stream, Ok(tunnel))
    {
        return Err(ApiError::new(
            ProblemCode::NotFound,
            "no tunnel was asked for with that stream number",
        ));
    }
    Ok(Body::new(outgoing).into_response())
}

/// Tells a node's agent its new state, if it is connected.
pub fn notify_state(agents: &Agents, node: qb_api::NodeId, state: NodeState) {
    agents.push(node, ControllerMessage::State { state });
}
