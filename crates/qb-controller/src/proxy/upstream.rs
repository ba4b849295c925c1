//! A cluster's API servers as the proxy reaches them: each connection is a tunnel through a
//! master's agent, then TLS to its kube-apiserver, verified by the cluster's CA, with one of
//! the controller's own client certificates (kept in memory, renewed before they expire).
//! Connections are pooled per master, so a request costs no tunnel or handshake when one is
//! idle.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::Uri;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use qb_agent_proto::plan::KUBE_APISERVER_ENDPOINT;
use qb_api::{ClusterId, NodeId, NodeRole, TenantId};
use qb_plan::pki::{Authority, ClusterPki, ControllerClient, KeyCert};
use qb_store::Store;
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::sync::OnceCell;
use tokio_rustls::TlsConnector;

use crate::agents::{AgentTunnel, Agents};

/// How long a master's agent has to open a tunnel.
const TUNNEL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the TLS handshake with an API server may take.
const TLS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the list of masters is trusted before it is read again.
const MASTERS_FRESH: Duration = Duration::from_secs(5);
/// Client certificates are replaced at half their lifetime.
const RENEW_AFTER: Duration = Duration::from_secs(12 * 3600);
/// How long a watch may send nothing before it is taken for dead (the API server sends a
/// bookmark about every minute when asked).
const WATCH_SILENCE: Duration = Duration::from_secs(180);
/// The name the API servers' certificates carry for every master.
const APISERVER_NAME: &str = "kubernetes";

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cluster {0} has no master with an API server yet")]
    NoMasters(String),
    #[error("no master of cluster {0} is online")]
    NoneOnline(String),
    #[error("the cluster's PKI: {0}")]
    Pki(String),
    #[error(transparent)]
    Store(#[from] qb_store::StoreError),
}

/// The connections of one cluster.
pub struct ClusterUpstream {
    pub tenant: TenantId,
    pub cluster: ClusterId,
    name: String,
    store: Store,
    agents: Arc<Agents>,
    /// The proxy's pooled connections, one pool per master.
    client: Client<TunnelConnector, Body>,
    connector: TunnelConnector,
    /// Pooled connections with the controller's administrator certificate: the proxy's RBAC,
    /// the add-ons.
    admin: Client<TunnelConnector, Body>,
    /// The cluster's masters, the one that answered last first, and when they were read.
    masters: Mutex<(Vec<NodeId>, Option<Instant>)>,
    /// The RBAC the proxy relies on, set up once per upstream.
    rbac: OnceCell<()>,
    created: Instant,
}

impl ClusterUpstream {
    pub fn new(
        store: Store,
        agents: Arc<Agents>,
        tenant: TenantId,
        cluster: ClusterId,
        name: String,
        pki: &ClusterPki,
    ) -> Result<Self, UpstreamError> {
        let ca = &pki.authority(Authority::Cluster).cert_pem;
        let connector = |client| -> Result<TunnelConnector, UpstreamError> {
            let cert = pki
                .issue_controller_client(client)
                .map_err(|e| UpstreamError::Pki(e.to_string()))?;
            Ok(TunnelConnector {
                agents: agents.clone(),
                tls: tls_connector(ca, &cert).map_err(|e| UpstreamError::Pki(format!("{e:#}")))?,
            })
        };
        let proxy = connector(ControllerClient::Proxy)?;
        let admin = connector(ControllerClient::Admin)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(32)
            .build(proxy.clone());
        Ok(Self {
            tenant,
            cluster,
            name,
            store,
            agents,
            client,
            connector: proxy,
            admin: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .build(admin),
            masters: Mutex::new((Vec::new(), None)),
            rbac: OnceCell::new(),
            created: Instant::now(),
        })
    }

    /// Whether its client certificates are due for renewal.
    pub fn stale(&self) -> bool {
        self.created.elapsed() > RENEW_AFTER
    }

    /// The pooled client; requests go to `https://<master node id>/...`.
    pub fn client(&self) -> &Client<TunnelConnector, Body> {
        &self.client
    }

    /// A fresh connection to `master`'s API server, for one upgraded request.
    pub async fn connect(&self, master: NodeId) -> Result<UpstreamIo, BoxError> {
        self.connector.clone().connect(master).await
    }

    /// The masters to try, in order: online ones, the one that answered last first.
    pub async fn masters(&self) -> Result<Vec<NodeId>, UpstreamError> {
        let fresh = {
            let masters = self.masters.lock().unwrap_or_else(|p| p.into_inner());
            masters
                .1
                .is_some_and(|at| at.elapsed() < MASTERS_FRESH)
                .then(|| masters.0.clone())
        };
        let masters = match fresh {
            Some(masters) => masters,
            None => {
                let cluster = self.store.engine_cluster(self.tenant, self.cluster).await?;
                let mut read: Vec<NodeId> = cluster
                    .nodes
                    .iter()
                    .filter(|n| n.node.role == Some(NodeRole::Master))
                    .map(|n| n.node.id)
                    .collect();
                let mut cached = self.masters.lock().unwrap_or_else(|p| p.into_inner());
                // Keep the preferred master first.
                if let Some(first) = cached.0.first()
                    && let Some(at) = read.iter().position(|n| n == first)
                {
                    read[..=at].rotate_right(1);
                }
                *cached = (read.clone(), Some(Instant::now()));
                read
            }
        };
        if masters.is_empty() {
            return Err(UpstreamError::NoMasters(self.name.clone()));
        }
        let online: Vec<NodeId> = masters
            .into_iter()
            .filter(|m| self.agents.online(*m))
            .collect();
        if online.is_empty() {
            return Err(UpstreamError::NoneOnline(self.name.clone()));
        }
        Ok(online)
    }

    /// `master` answered: try it first from now on.
    pub fn answered(&self, master: NodeId) {
        let mut cached = self.masters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = cached.0.iter().position(|n| *n == master)
            && at > 0
        {
            cached.0[..=at].rotate_right(1);
        }
    }

    /// Sets up, once, the RBAC that proxied requests rely on (see [`rbac_objects`]), with the
    /// controller's administrator certificate through `master`.
    pub async fn ensure_rbac(&self, master: NodeId) -> Result<(), BoxError> {
        self.rbac
            .get_or_try_init(|| async {
                self.apply(master, &rbac_objects(), "qb-controller").await?;
                tracing::info!(cluster_id = %self.cluster, "set up the proxy's RBAC");
                Ok::<_, BoxError>(())
            })
            .await
            .map(|_| ())
    }

    /// Server-side applies `objects` (API path, object) in order through `master`, as the
    /// controller's administrator, owning their fields as `manager` (and taking them from any
    /// other manager: what qb applies is qb's).
    pub async fn apply(
        &self,
        master: NodeId,
        objects: &[(String, serde_json::Value)],
        manager: &str,
    ) -> Result<(), BoxError> {
        for (path, object) in objects {
            let uri = format!("https://{master}{path}?fieldManager={manager}&force=true");
            let request = hyper::Request::patch(uri)
                .header("content-type", "application/apply-patch+yaml")
                .body(Body::from(object.to_string()))?;
            self.admin_call(request, path).await?;
        }
        Ok(())
    }

    /// Deletes the object at `path` through `master` as the controller's administrator (its
    /// dependents in the background); one already gone is no error.
    pub async fn delete(&self, master: NodeId, path: &str) -> Result<(), BoxError> {
        let request = hyper::Request::delete(format!(
            "https://{master}{path}?propagationPolicy=Background"
        ))
        .body(Body::empty())?;
        match self.admin_call(request, path).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The object at `path`, read through `master` as the controller's administrator.
    pub async fn get(&self, master: NodeId, path: &str) -> Result<serde_json::Value, BoxError> {
        let request = hyper::Request::get(format!("https://{master}{path}")).body(Body::empty())?;
        let body = self.admin_call(request, path).await?;
        Ok(serde_json::from_slice(&body)?)
    }

    /// Follows the watch at `path` (with `watch=1`) through `master` as the controller's
    /// administrator, calling `event` with each event the API server sends, until it ends the
    /// watch; fails when nothing at all (not even a bookmark) came for [`WATCH_SILENCE`].
    pub async fn watch(
        &self,
        master: NodeId,
        path: &str,
        mut event: impl FnMut(serde_json::Value),
    ) -> Result<(), BoxError> {
        let request = hyper::Request::get(format!("https://{master}{path}")).body(Body::empty())?;
        let response = self.admin.request(request).await?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let text = http_body_util::BodyExt::collect(body)
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(Box::new(Refused {
                method: hyper::Method::GET,
                path: path.to_owned(),
                status,
                body: String::from_utf8_lossy(&text).chars().take(300).collect(),
            }));
        }
        let mut pending = Vec::new();
        loop {
            let frame = match tokio::time::timeout(
                WATCH_SILENCE,
                http_body_util::BodyExt::frame(&mut body),
            )
            .await
            {
                Err(_) => return Err(format!("the watch of {path} went silent").into()),
                Ok(None) => return Ok(()),
                Ok(Some(frame)) => frame?,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            // One JSON event per line.
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                event(serde_json::from_slice(&line)?);
            }
        }
    }

    /// Sends `request` with the administrator's certificate; the body of a 2xx answer.
    async fn admin_call(
        &self,
        request: hyper::Request<Body>,
        path: &str,
    ) -> Result<Bytes, BoxError> {
        let method = request.method().clone();
        let response = self.admin.request(request).await?;
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if !status.is_success() {
            return Err(Box::new(Refused {
                method,
                path: path.to_owned(),
                status,
                body: String::from_utf8_lossy(&body).chars().take(300).collect(),
            }));
        }
        Ok(body)
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether `e` is an API server's 404.
pub fn is_not_found(e: &BoxError) -> bool {
    e.downcast_ref::<Refused>()
        .is_some_and(|r| r.status == hyper::StatusCode::NOT_FOUND)
}

/// An API server's answer other than success.
#[derive(Debug, thiserror::Error)]
#[error("{method} {path}: the API server answered {status}: {body}")]
pub struct Refused {
    method: hyper::Method,
    path: String,
    status: hyper::StatusCode,
    body: String,
}

/// What the proxy's identity may do (impersonate, nothing else), and what each qb role may do
/// in the cluster: viewers read (`view`, plus nodes, namespaces and storage), operators change
/// workloads (`edit`), admins anything (`cluster-admin`).
pub fn rbac_objects() -> Vec<(String, serde_json::Value)> {
    const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1";
    let role = |name: &str, rules: serde_json::Value| {
        (
            format!("{RBAC}/clusterroles/{name}"),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "qb"}},
                "rules": rules,
            }),
        )
    };
    let binding = |name: &str, role: &str, group: &str| {
        (
            format!("{RBAC}/clusterrolebindings/{name}"),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "qb"}},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
            }),
        )
    };
    let read = json!(["get", "list", "watch"]);
    vec![
        role(
            "qb:impersonator",
            json!([{"apiGroups": [""], "resources": ["users", "groups"], "verbs": ["impersonate"]}]),
        ),
        binding("qb:proxy", "qb:impersonator", ControllerClient::PROXY_GROUP),
        role(
            "qb:cluster-reader",
            json!([
                {"apiGroups": [""], "resources": ["nodes", "namespaces", "persistentvolumes"], "verbs": read},
                {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": read},
            ]),
        ),
        binding("qb:viewers", "view", super::VIEWERS),
        binding("qb:viewers-cluster", "qb:cluster-reader", super::VIEWERS),
        binding("qb:operators", "edit", super::OPERATORS),
        binding("qb:admins", "cluster-admin", super::ADMINS),
    ]
}

fn tls_connector(ca_pem: &str, client: &KeyCert) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let chain =
        rustls_pemfile::certs(&mut client.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut client.key_pem.as_bytes())?
        .ok_or_else(|| anyhow::anyhow!("the client certificate has no key"))?;
    let mut config = qb_pki::tls::client_config_builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    // HTTP/1.1 only: upgrades (exec, port-forward) need it, and every request gets its own
    // tunnel stream, flow-controlled on its own.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Opens connections to a master's API server through its agent's tunnel. The URI's host is
/// the master's node id; nothing else of it is used.
#[derive(Clone)]
pub struct TunnelConnector {
    agents: Arc<Agents>,
    tls: TlsConnector,
}

impl TunnelConnector {
    async fn connect(self, master: NodeId) -> Result<UpstreamIo, BoxError> {
        let tunnel = self
            .agents
            .open_tunnel(master, KUBE_APISERVER_ENDPOINT, TUNNEL_TIMEOUT)
            .await?;
        let name = ServerName::try_from(APISERVER_NAME).expect("a valid DNS name");
        let tls = tokio::time::timeout(TLS_TIMEOUT, self.tls.connect(name, tunnel))
            .await
            .map_err(|_| "the TLS handshake with the API server timed out")??;
        Ok(UpstreamIo(TokioIo::new(tls)))
    }
}

impl tower::Service<Uri> for TunnelConnector {
    type Response = UpstreamIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            let master: NodeId = uri
                .host()
                .and_then(|h| h.parse().ok())
                .ok_or("the upstream URI names no node")?;
            connector.connect(master).await
        })
    }
}

/// TLS to an API server over a tunnel.
pub struct UpstreamIo(TokioIo<tokio_rustls::client::TlsStream<AgentTunnel>>);

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
