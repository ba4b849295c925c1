//! The Kubernetes API proxy: `/k8s/clusters/{cluster}/...` on the controller reaches the
//! cluster's API servers through the masters' agents (the controller never dials a host).
//!
//! Every request is authenticated as an API request is (a qb token; the proxy remembers a
//! token's caller for a second, see [`RecentCallers`]), the cluster is looked up
//! in the caller's tenant (another tenant's is not found), and the request is forwarded with
//! the caller as an impersonated Kubernetes user — `qb:<user>`, in the groups of their role —
//! so the cluster's RBAC decides what they may do. The proxy's own certificate may only
//! impersonate. What the client says about identity (its `Authorization`, any `Impersonate-*`
//! header) never reaches the cluster.
//!
//! Every write (any method but GET, HEAD and OPTIONS, and every upgrade) that reaches a cluster
//! is in the tenant's audit trail as `cluster.kubernetes_write`: who, the method, the path and
//! the status the client got, recorded before the answer goes back.
//!
//! Upgraded requests (`exec`, `attach`, `port-forward`) get a connection of their own, and
//! their bytes are spliced only after the API server switched protocols: a refused upgrade is
//! answered and its connection dropped, so nothing can be smuggled over it with the proxy's
//! credentials (CVE-2018-1002105).

pub(crate) mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use hyper::body::Body as _;
use hyper_util::rt::TokioIo;
use qb_api::{ClusterId, Role, TenantId};
use qb_store::{Key, Store, StoreError};

use crate::AppState;
use crate::agents::Agents;
use crate::auth::{Caller, RecentCallers};
use upstream::{ClusterUpstream, UpstreamError};

/// The Kubernetes groups of qb's roles; each role has its own and those of the roles below.
pub const VIEWERS: &str = "qb:viewers";
pub const OPERATORS: &str = "qb:operators";
pub const ADMINS: &str = "qb:admins";
/// Where the proxy serves a cluster: `<PREFIX>/<cluster name>/...`.
pub const PREFIX: &str = "/k8s/clusters";
/// How long a cluster name is trusted to mean the same cluster.
const NAME_FRESH: Duration = Duration::from_secs(5);

/// The Kubernetes user a qb user is in their clusters.
pub fn kubernetes_user(user: &str) -> String {
    format!("qb:{user}")
}

/// The Kubernetes groups of a qb role.
pub fn kubernetes_groups(role: Role) -> &'static [&'static str] {
    match role {
        Role::Viewer => &[VIEWERS],
        Role::Operator => &[VIEWERS, OPERATORS],
        Role::Admin => &[VIEWERS, OPERATORS, ADMINS],
    }
}

/// The proxy's connections to every cluster, shared by all requests.
pub struct KubeProxy {
    store: Store,
    agents: Arc<Agents>,
    upstreams: Mutex<HashMap<ClusterId, Arc<ClusterUpstream>>>,
    names: Mutex<HashMap<(TenantId, String), (ClusterId, Instant)>>,
    callers: RecentCallers,
    /// Requests to each cluster's API servers through this replica: answered, failed.
    requests: Mutex<HashMap<ClusterId, (u64, u64)>>,
}

impl KubeProxy {
    pub fn new(store: Store, agents: Arc<Agents>) -> Self {
        Self {
            store,
            agents,
            upstreams: Mutex::default(),
            names: Mutex::default(),
            callers: RecentCallers::default(),
            requests: Mutex::default(),
        }
    }

    fn count(&self, cluster: ClusterId, answered: bool) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let counts = requests.entry(cluster).or_default();
        if answered {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }

    /// Requests to the cluster's API servers through this replica so far: answered (whatever
    /// their status) and failed (no API server reached).
    pub fn requests(&self, cluster: ClusterId) -> (u64, u64) {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&cluster)
            .copied()
            .unwrap_or_default()
    }

    /// The id of `tenant`'s cluster `key` (name or id).
    async fn cluster_id(&self, tenant: TenantId, key: &str) -> Result<ClusterId, ProxyError> {
        let cached = self
            .names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(tenant, key.to_owned()))
            .filter(|(_, at)| at.elapsed() < NAME_FRESH)
            .map(|(id, _)| *id);
        let id = match cached {
            Some(id) => id,
            None => {
                let detail = self
                    .store
                    .get_cluster(tenant, &Key::parse(key))
                    .await
                    .map_err(ProxyError::store)?;
                let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
                names.retain(|_, (_, at)| at.elapsed() < NAME_FRESH);
                names.insert(
                    (tenant, key.to_owned()),
                    (detail.cluster.id, Instant::now()),
                );
                detail.cluster.id
            }
        };
        Ok(id)
    }

    /// The connections of cluster `id` of `tenant`, made when there are none (or they are due
    /// for new certificates).
    pub(crate) async fn upstream_of(
        &self,
        tenant: TenantId,
        id: ClusterId,
    ) -> Result<Arc<ClusterUpstream>, ProxyError> {
        let existing = self
            .upstreams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .filter(|u| !u.stale())
            .cloned();
        if let Some(upstream) = existing {
            return Ok(upstream);
        }
        let cluster = self
            .store
            .engine_cluster(tenant, id)
            .await
            .map_err(ProxyError::store)?;
        let Some(pki) = cluster.pki else {
            return Err(ProxyError::Unavailable(format!(
                "cluster {} has no API server yet",
                cluster.cluster.name
            )));
        };
        let upstream = Arc::new(
            ClusterUpstream::new(
                self.store.clone(),
                self.agents.clone(),
                tenant,
                id,
                cluster.cluster.name.to_string(),
                &pki,
            )
            .map_err(|e| {
                tracing::error!(cluster_id = %id, error = %e, "cannot set up the cluster's proxy");
                ProxyError::Internal
            })?,
        );
        self.upstreams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, upstream.clone());
        Ok(upstream)
    }
}

/// The proxy's routes, beside the API's.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(&format!("{PREFIX}/{{cluster}}"), any(proxy))
        .route(&format!("{PREFIX}/{{cluster}}/{{*rest}}"), any(proxy))
}

async fn proxy(State(state): State<AppState>, request: Request) -> Response {
    match forward(&state, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn forward(state: &AppState, request: Request) -> Result<Response, ProxyError> {
    let (parts, body) = request.into_parts();
    let caller = state
        .kube_proxy
        .callers
        .caller(&parts, state)
        .await
        .map_err(|e| ProxyError::Refused(e.0))?;
    let rest = parts
        .uri
        .path()
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or_else(|| ProxyError::Invalid("not a proxy path".to_owned()))?;
    let (cluster, path) = match rest.split_once('/') {
        Some((cluster, path)) => (cluster.to_owned(), format!("/{path}")),
        None => (rest.to_owned(), "/".to_owned()),
    };
    let path_and_query = match parts.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.clone(),
    };
    let upgrade = is_upgrade(&parts.headers);
    let headers = upstream_headers(&parts.headers, &caller, upgrade)?;
    let id = state
        .kube_proxy
        .cluster_id(caller.tenant(), &cluster)
        .await?;
    let write = upgrade || !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let audit = write.then(|| (parts.method.to_string(), path));
    let result = match state.kube_proxy.upstream_of(caller.tenant(), id).await {
        Ok(upstream) => forward_to(&upstream, parts, body, path_and_query, headers, upgrade).await,
        Err(e) => Err(e),
    };
    state.kube_proxy.count(id, result.is_ok());
    let response = result.unwrap_or_else(IntoResponse::into_response);
    if let Some((method, path)) = audit {
        let detail = serde_json::json!({
            "method": method,
            "path": path,
            "status": response.status().as_u16(),
        });
        let recorded = state
            .store
            .record_request(
                caller.tenant(),
                &caller.actor(),
                "cluster.kubernetes_write",
                ("cluster", id.to_string(), &cluster),
                detail,
            )
            .await;
        if let Err(e) = recorded {
            tracing::warn!(cluster_id = %id, error = %e, "could not record a Kubernetes write in the audit trail");
        }
    }
    Ok(response)
}

/// Sends a request to one of the cluster's API servers.
async fn forward_to(
    upstream: &ClusterUpstream,
    mut parts: axum::http::request::Parts,
    body: Body,
    path_and_query: String,
    headers: HeaderMap,
    upgrade: bool,
) -> Result<Response, ProxyError> {
    let masters = upstream.masters().await.map_err(ProxyError::upstream)?;

    if upgrade {
        let client_side = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        return forward_upgrade(
            upstream,
            masters[0],
            parts.method,
            path_and_query,
            headers,
            body,
            client_side,
        )
        .await;
    }
    // A request without a body can go to the next master when one cannot be reached. A read
    // also when its connection broke before it was answered (the replica relaying its tunnel
    // died, say), on each master twice (the first try may take a connection already broken),
    // and when an API server fails it while another master is left.
    let retryable = body.is_end_stream();
    let read = retryable
        && matches!(
            parts.method,
            hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS
        );
    let tries = if read {
        masters.len() * 2
    } else {
        masters.len()
    };
    let mut body = Some(body);
    let mut last_error = String::new();
    for (i, master) in masters.iter().cycle().take(tries).enumerate() {
        if let Err(e) = upstream.ensure_rbac(*master).await {
            last_error = qb_api::error_chain(e.as_ref());
            tracing::warn!(cluster_id = %upstream.cluster, node_id = %master, error = %last_error, "cannot set up the proxy's RBAC");
            continue;
        }
        let mut request = hyper::Request::builder()
            .method(parts.method.clone())
            .uri(format!("https://{master}{path_and_query}"))
            .body(body.take().unwrap_or_else(Body::empty))
            .map_err(|e| ProxyError::Invalid(e.to_string()))?;
        *request.headers_mut() = headers.clone();
        match upstream.client().request(request).await {
            // An API server failing a read (its etcd member just removed, say) while another
            // master is left to ask: that one, as a load balancer skips an unhealthy server.
            Ok(response)
                if read && response.status().is_server_error() && i + 1 < masters.len() =>
            {
                last_error = format!("the API server of {master} answered {}", response.status());
                tracing::info!(cluster_id = %upstream.cluster, node_id = %master, status = %response.status(), "a master's API server failed a read; asking the next");
            }
            Ok(response) => {
                upstream.answered(*master);
                let (mut parts, incoming) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                return Ok(Response::from_parts(parts, Body::new(incoming)));
            }
            Err(e) => {
                last_error = qb_api::error_chain(&e);
                tracing::info!(cluster_id = %upstream.cluster, node_id = %master, error = %last_error, "a master's API server could not be reached");
                if !(read || retryable && e.is_connect()) {
                    break;
                }
            }
        }
    }
    Err(ProxyError::BadGateway(format!(
        "no API server of the cluster answered: {last_error}"
    )))
}

/// An upgraded request on a connection of its own. The bytes are spliced only once the API
/// server switched protocols; any other answer is passed on and the connection dropped.
async fn forward_upgrade(
    upstream: &ClusterUpstream,
    master: qb_api::NodeId,
    method: hyper::Method,
    path_and_query: String,
    mut headers: HeaderMap,
    body: Body,
    client_side: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response, ProxyError> {
    let client_side = client_side.ok_or_else(|| {
        ProxyError::Invalid(
            "this connection cannot be upgraded (upgrades need HTTP/1.1)".to_owned(),
        )
    })?;
    let gateway = |e: &(dyn std::error::Error + 'static)| {
        ProxyError::BadGateway(format!("the API server: {}", qb_api::error_chain(e)))
    };
    if let Err(e) = upstream.ensure_rbac(master).await {
        return Err(gateway(e.as_ref()));
    }
    let io = upstream
        .connect(master)
        .await
        .map_err(|e| gateway(e.as_ref()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| gateway(&e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upgraded upstream connection ended");
        }
    });
    headers.insert(header::HOST, HeaderValue::from_static("kubernetes"));
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path_and_query)
        .body(body)
        .map_err(|e| ProxyError::Invalid(e.to_string()))?;
    *request.headers_mut() = headers;
    let mut response = sender
        .send_request(request)
        .await
        .map_err(|e| gateway(&e))?;
    drop(sender);
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, incoming) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        return Ok(Response::from_parts(parts, Body::new(incoming)));
    }
    upstream.answered(master);
    let upstream_side = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        match tokio::try_join!(client_side, upstream_side) {
            Ok((client, server)) => {
                let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
            Err(e) => tracing::debug!(error = %e, "an upgrade did not complete"),
        }
    });
    let (parts, _) = response.into_parts();
    Ok(Response::from_parts(parts, Body::empty()))
}

/// Headers that describe one connection, not the request; never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().copied() {
        headers.remove(name);
    }
    for name in named {
        headers.remove(name);
    }
}

/// The request's headers as the API server gets them: without anything about the client's
/// connection or identity, with the caller's identity to impersonate.
fn upstream_headers(
    from: &HeaderMap,
    caller: &Caller,
    upgrade: bool,
) -> Result<HeaderMap, ProxyError> {
    if from
        .keys()
        .any(|name| name.as_str().starts_with("impersonate-"))
    {
        return Err(ProxyError::Forbidden(
            "impersonation (kubectl --as) is not allowed through qb: requests act as your qb user"
                .to_owned(),
        ));
    }
    let mut headers = from.clone();
    let upgrade_to = headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::HOST);
    if upgrade && let Some(protocol) = upgrade_to {
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    let user = HeaderValue::try_from(kubernetes_user(caller.0.user.as_str()))
        .map_err(|_| ProxyError::Invalid("the user's name cannot be sent".to_owned()))?;
    headers.insert("impersonate-user", user);
    for group in kubernetes_groups(caller.0.role) {
        headers.append("impersonate-group", HeaderValue::from_static(group));
    }
    Ok(headers)
}

/// Why the proxy answered itself, as a Kubernetes `Status` so that kubectl shows it well.
#[derive(Debug)]
pub(crate) enum ProxyError {
    /// Authentication or authorization failed; the problem says why.
    Refused(qb_api::Problem),
    NotFound(String),
    Forbidden(String),
    Invalid(String),
    Unavailable(String),
    BadGateway(String),
    Internal,
}

impl ProxyError {
    /// What went wrong, for a log or a status (never a secret).
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Refused(problem) => problem.detail.clone(),
            Self::NotFound(m)
            | Self::Forbidden(m)
            | Self::Invalid(m)
            | Self::Unavailable(m)
            | Self::BadGateway(m) => m.clone(),
            Self::Internal => "internal error; see the controller's log".to_owned(),
        }
    }

    fn store(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => Self::NotFound(e.to_string()),
            e => {
                let problem = crate::ApiError::from(e).0;
                Self::Refused(problem)
            }
        }
    }

    fn upstream(e: UpstreamError) -> Self {
        match e {
            UpstreamError::Store(e) => Self::store(e),
            e @ (UpstreamError::NoMasters(_) | UpstreamError::NoneOnline(_)) => {
                Self::Unavailable(e.to_string())
            }
            UpstreamError::Pki(e) => {
                tracing::error!(error = %e, "the cluster's PKI");
                Self::Internal
            }
        }
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let (status, reason, message) = match self {
            Self::Refused(problem) => {
                let status = StatusCode::from_u16(problem.status)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let reason = match status {
                    StatusCode::UNAUTHORIZED => "Unauthorized",
                    StatusCode::FORBIDDEN => "Forbidden",
                    StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
                    _ => "InternalError",
                };
                (status, reason, problem.detail)
            }
            Self::NotFound(m) => (StatusCode::NOT_FOUND, "NotFound", m),
            Self::Forbidden(m) => (StatusCode::FORBIDDEN, "Forbidden", m),
            Self::Invalid(m) => (StatusCode::BAD_REQUEST, "BadRequest", m),
            Self::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", m),
            Self::BadGateway(m) => (StatusCode::BAD_GATEWAY, "InternalError", m),
            Self::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "internal error; see the controller's log".to_owned(),
            ),
        };
        let body = serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": format!("qb: {message}"),
            "reason": reason,
            "code": status.as_u16(),
        });
        (status, axum::Json(body)).into_response()
    }
}
