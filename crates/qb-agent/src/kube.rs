//! Kubernetes node operations through the local kube-apiserver, over HTTPS with the client
//! certificate the instruction names, trusting only its CA: list the nodes, drain one (what
//! `kubectl drain --ignore-daemonsets --delete-emptydir-data --force` does), delete one.
//!
//! Written against the Kubernetes 1.20 API: evictions are `policy/v1beta1`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hyper::Method;
use qb_agent_proto::kube::{KubeNode, KubeOp, KubeRequest};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::https::{self, HttpsError, Payload, TlsFiles};

const NODES_PATH: &str = "/api/v1/nodes";
/// How often to look whether evicted pods are gone.
const DRAIN_POLL: Duration = Duration::from_secs(1);
/// How often to ask again for evictions a disruption budget refused.
const EVICTION_RETRY: Duration = Duration::from_secs(2);
/// The annotation of a mirror pod: the API server's copy of a kubelet's static pod, which an
/// eviction cannot remove.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Why a Kubernetes node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "invalid {what} name {name:?}: expected an RFC 1123 subdomain (lowercase letters, \
         digits, '-' and '.', at most 253 characters)"
    )]
    InvalidName { what: &'static str, name: String },
    /// Reaching the API server failed (files, TLS, connection, timeout); its message is the
    /// cause's.
    #[error(transparent)]
    Https(#[from] HttpsError),
    /// The API server refused the call; `message` is the one of its `Status` object.
    #[error("the API server answered {status} to {method} {path}: {message}")]
    Api {
        method: Method,
        path: String,
        status: u16,
        message: String,
    },
    #[error("the API server's answer to {method} {path} is malformed")]
    Decode {
        method: Method,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    /// Disruption budgets still refused to let these pods go when the time was up.
    #[error(
        "draining {node}: evicting {} still refused after {timeout_seconds} s: {message}",
        .pods.join(", ")
    )]
    EvictionRefused {
        node: String,
        timeout_seconds: u32,
        pods: Vec<String>,
        message: String,
    },
    /// Evicted pods still there (terminating) when the time was up.
    #[error(
        "draining {node}: pods still there after {timeout_seconds} s: {}",
        .pods.join(", ")
    )]
    DrainTimeout {
        node: String,
        timeout_seconds: u32,
        pods: Vec<String>,
    },
}

/// Carries out `req` against the local API server and returns the nodes after it.
#[tracing::instrument(skip_all, fields(endpoint = %req.endpoint, op = ?req.op))]
pub async fn run(req: &KubeRequest) -> Result<Vec<KubeNode>, KubeError> {
    // The API is dialled on the first call, after the node name passed: a bad one is never sent.
    let mut api = Api::new(req);
    match &req.op {
        KubeOp::Nodes => {}
        KubeOp::Drain {
            node,
            timeout_seconds,
        } => drain(&mut api, ObjectName::parse("node", node)?, *timeout_seconds).await?,
        KubeOp::DeleteNode { node } => {
            delete_node(&mut api, ObjectName::parse("node", node)?).await?
        }
        KubeOp::Uncordon { node } => {
            schedule(&mut api, ObjectName::parse("node", node)?, true).await?;
        }
        KubeOp::SetRole {
            node,
            master,
            taint,
        } => set_role(&mut api, ObjectName::parse("node", node)?, *master, *taint).await?,
    }
    api.nodes().await
}

/// Sets the role labels and the master taint of `node` with one merge patch, made against the
/// version read (a concurrent change makes it fail, and the engine tries again).
async fn set_role(
    api: &mut Api<'_>,
    node: ObjectName<'_>,
    master: bool,
    taint: bool,
) -> Result<(), KubeError> {
    use qb_agent_proto::kube::{MASTER_TAINT, ROLE_LABELS, role_labels};
    let path = format!("{NODES_PATH}/{node}");
    let current: Value = api.get(&path).await?;
    let wanted = role_labels(master);
    let labels: serde_json::Map<String, Value> = ROLE_LABELS
        .iter()
        .map(|l| {
            let value = if wanted.contains(l) {
                Value::String(String::new())
            } else {
                Value::Null
            };
            ((*l).to_owned(), value)
        })
        .collect();
    let mut taints: Vec<Value> = current["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["key"] != MASTER_TAINT)
        .cloned()
        .collect();
    if master && taint {
        taints.push(json!({ "key": MASTER_TAINT, "effect": "NoSchedule" }));
    }
    let patch = json!({
        "metadata": {
            "labels": labels,
            "resourceVersion": current["metadata"]["resourceVersion"],
        },
        "spec": { "taints": taints },
    });
    let response = api
        .send(
            Method::PATCH,
            &path,
            Some(Payload::typed("application/merge-patch+json", &patch)),
        )
        .await?;
    api.check(Method::PATCH, &path, &response)?;
    tracing::info!(%node, master, taint, "set the node's role labels and taint");
    Ok(())
}

/// Cordons (`schedulable` false) or uncordons `node`; false when the API server does not know
/// it.
async fn schedule(
    api: &mut Api<'_>,
    node: ObjectName<'_>,
    schedulable: bool,
) -> Result<bool, KubeError> {
    let patch = Payload::typed(
        "application/strategic-merge-patch+json",
        &json!({ "spec": { "unschedulable": !schedulable } }),
    );
    let path = format!("{NODES_PATH}/{node}");
    let response = api.send(Method::PATCH, &path, Some(patch)).await?;
    if response.status == hyper::StatusCode::NOT_FOUND {
        return Ok(false);
    }
    api.check(Method::PATCH, &path, &response)?;
    if schedulable {
        tracing::info!(%node, "uncordoned");
    } else {
        tracing::info!(%node, "cordoned");
    }
    Ok(true)
}

/// Cordons `node`, evicts its pods but those of daemon sets, mirror pods and finished ones,
/// and waits until they are gone, all within `timeout_seconds`.
async fn drain(
    api: &mut Api<'_>,
    node: ObjectName<'_>,
    timeout_seconds: u32,
) -> Result<(), KubeError> {
    let deadline = Instant::now() + Duration::from_secs(timeout_seconds.into());
    if !schedule(api, node, false).await? {
        tracing::info!(%node, "the API server does not know the node: nothing to drain");
        return Ok(());
    }

    let pods_path = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}");
    let pods: List<Pod> = api.get(&pods_path).await?;
    let targets: Vec<PodRef> = evictable(&pods.items);
    tracing::info!(
        %node,
        pods = pods.items.len(),
        evicting = targets.len(),
        "evicting the node's pods"
    );

    // Ask for every eviction; retry those a disruption budget refuses until it lets them go.
    let mut pending: Vec<&PodRef> = targets.iter().collect();
    loop {
        let mut refused = Vec::new();
        let mut last_refusal = String::new();
        for pod in pending {
            if let Some(message) = api.evict(pod).await? {
                refused.push(pod);
                last_refusal = message;
            }
        }
        pending = refused;
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(KubeError::EvictionRefused {
                node: node.to_string(),
                timeout_seconds,
                pods: pending.iter().map(|p| p.to_string()).collect(),
                message: last_refusal,
            });
        }
        tracing::info!(%node, refused = pending.len(), refusal = %last_refusal, "evictions refused for now; retrying");
        sleep_until(deadline, EVICTION_RETRY).await;
    }
    tracing::info!(%node, evicted = targets.len(), "evictions accepted; waiting for the pods to go");

    loop {
        let pods: List<Pod> = api.get(&pods_path).await?;
        let left = still_there(&targets, &pods.items);
        if left.is_empty() {
            tracing::info!(%node, evicted = targets.len(), "drained");
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(KubeError::DrainTimeout {
                node: node.to_string(),
                timeout_seconds,
                pods: left.iter().map(|p| p.to_string()).collect(),
            });
        }
        sleep_until(deadline, DRAIN_POLL).await;
    }
}

/// Sleeps `interval`, or until `deadline` if that comes first (for a last look then).
async fn sleep_until(deadline: Instant, interval: Duration) {
    tokio::time::sleep_until(deadline.min(Instant::now() + interval)).await;
}

/// Deletes the node object; one that is gone already is fine.
async fn delete_node(api: &mut Api<'_>, node: ObjectName<'_>) -> Result<(), KubeError> {
    let path = format!("{NODES_PATH}/{node}");
    let response = api.send(Method::DELETE, &path, None).await?;
    if response.status == hyper::StatusCode::NOT_FOUND {
        tracing::info!(%node, "the node object is gone already");
        return Ok(());
    }
    api.check(Method::DELETE, &path, &response)?;
    tracing::info!(%node, "deleted the node object");
    Ok(())
}

/// The API server, reached over one connection that is opened again when it breaks.
struct Api<'a> {
    endpoint: &'a str,
    files: TlsFiles<'a>,
    connection: Option<https::Client>,
}

impl<'a> Api<'a> {
    fn new(req: &'a KubeRequest) -> Self {
        Self {
            endpoint: &req.endpoint,
            files: TlsFiles {
                ca_file: &req.ca_file,
                cert_file: &req.cert_file,
                key_file: &req.key_file,
            },
            connection: None,
        }
    }

    /// One call, whatever the answer's status.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Payload<'_>>,
    ) -> Result<https::Response, KubeError> {
        let reused = match self.connection.take() {
            Some(client) if !client.is_closed() => Some(client),
            _ => None,
        };
        let was_reused = reused.is_some();
        let mut client = match reused {
            Some(client) => client,
            None => https::Client::connect(self.endpoint, self.files).await?,
        };
        let mut result = client.request(method.clone(), path, body.clone()).await;
        // The server may close an idle connection just as a request goes out; every call made
        // here is idempotent, so it is safe to send it once more on a new connection.
        if was_reused && matches!(result, Err(HttpsError::Http { .. })) {
            tracing::debug!(%method, path, "the connection broke; reconnecting");
            client = https::Client::connect(self.endpoint, self.files).await?;
            result = client.request(method, path, body).await;
        }
        // A connection whose exchange failed half-way is of no further use.
        if result.is_ok() {
            self.connection = Some(client);
        }
        Ok(result?)
    }

    /// `Ok` for a 2xx answer; the API server's message otherwise.
    fn check(
        &self,
        method: Method,
        path: &str,
        response: &https::Response,
    ) -> Result<(), KubeError> {
        if response.status.is_success() {
            return Ok(());
        }
        Err(KubeError::Api {
            method,
            path: path.to_owned(),
            status: response.status.as_u16(),
            message: status_message(&response.body),
        })
    }

    async fn get<T: DeserializeOwned>(&mut self, path: &str) -> Result<T, KubeError> {
        let response = self.send(Method::GET, path, None).await?;
        self.check(Method::GET, path, &response)?;
        serde_json::from_slice(&response.body).map_err(|source| KubeError::Decode {
            method: Method::GET,
            path: path.to_owned(),
            source,
        })
    }

    async fn nodes(&mut self) -> Result<Vec<KubeNode>, KubeError> {
        let list: List<Node> = self.get(NODES_PATH).await?;
        Ok(list.items.into_iter().map(KubeNode::from).collect())
    }

    /// Asks for `pod`'s eviction: `None` when it is accepted or the pod is gone, the refusal's
    /// message when a disruption budget does not allow it now.
    async fn evict(&mut self, pod: &PodRef) -> Result<Option<String>, KubeError> {
        let namespace = ObjectName::parse("namespace", &pod.namespace)?;
        let name = ObjectName::parse("pod", &pod.name)?;
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}/eviction");
        let eviction = json!({
            "apiVersion": "policy/v1beta1",
            "kind": "Eviction",
            "metadata": { "name": pod.name, "namespace": pod.namespace },
        });
        let response = self
            .send(Method::POST, &path, Some(Payload::json(&eviction)))
            .await?;
        match response.status {
            hyper::StatusCode::NOT_FOUND => Ok(None),
            hyper::StatusCode::TOO_MANY_REQUESTS => Ok(Some(status_message(&response.body))),
            _ => {
                self.check(Method::POST, &path, &response)?;
                tracing::info!(pod = %pod, "eviction accepted");
                Ok(None)
            }
        }
    }
}

/// A name the API server requires to be an RFC 1123 subdomain (nodes, pods; namespaces are
/// stricter still), which makes it safe in a URL path and a field selector.
#[derive(Clone, Copy, Debug)]
struct ObjectName<'a>(&'a str);

impl<'a> ObjectName<'a> {
    fn parse(what: &'static str, name: &'a str) -> Result<Self, KubeError> {
        if is_dns_subdomain(name) {
            Ok(Self(name))
        } else {
            Err(KubeError::InvalidName {
                what,
                name: name.to_owned(),
            })
        }
    }
}

impl fmt::Display for ObjectName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`, at most 253 characters.
fn is_dns_subdomain(name: &str) -> bool {
    let label_ok = |label: &str| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    name.len() <= 253 && name.split('.').all(label_ok)
}

/// The message of a `Status` object the API server answers errors with, or the body itself.
fn status_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Status {
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Status>(body) {
        Ok(status) if !status.message.is_empty() => status.message,
        _ => String::from_utf8_lossy(body).trim().to_owned(),
    }
}

/// The pods of `pods` to evict: all but those of daemon sets (they would come straight back
/// and tolerate the cordon), mirror pods (the kubelet's static pods) and finished pods.
fn evictable(pods: &[Pod]) -> Vec<PodRef> {
    pods.iter()
        .filter(|pod| {
            let daemon = pod
                .metadata
                .owner_references
                .iter()
                .any(|owner| owner.kind == "DaemonSet");
            let mirror = pod.metadata.annotations.contains_key(MIRROR_ANNOTATION);
            let finished = matches!(pod.status.phase.as_str(), "Succeeded" | "Failed");
            !(daemon || mirror || finished)
        })
        .map(|pod| PodRef {
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
        })
        .collect()
}

/// The pods of `targets` that `pods` still holds. A pod of the same name with another uid is a
/// new one (a stateful set's replacement), not the one evicted.
fn still_there<'t>(targets: &'t [PodRef], pods: &[Pod]) -> Vec<&'t PodRef> {
    targets
        .iter()
        .filter(|target| {
            pods.iter().any(|pod| {
                pod.metadata.namespace == target.namespace
                    && pod.metadata.name == target.name
                    && pod.metadata.uid == target.uid
            })
        })
        .collect()
}

/// A pod to evict.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PodRef {
    namespace: String,
    name: String,
    uid: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A `…List` object; only its items matter here.
#[derive(Deserialize)]
struct List<T> {
    #[serde(default = "Vec::new")]
    items: Vec<T>,
}

/// The fields of object metadata used here (the API server sends many more).
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    owner_references: Vec<OwnerReference>,
}

#[derive(Deserialize)]
struct OwnerReference {
    kind: String,
}

#[derive(Deserialize)]
struct Node {
    metadata: Metadata,
    #[serde(default)]
    spec: NodeSpec,
    #[serde(default)]
    status: NodeStatus,
}

#[derive(Default, Deserialize)]
struct NodeSpec {
    #[serde(default)]
    unschedulable: bool,
    #[serde(default)]
    taints: Vec<Taint>,
}

#[derive(Deserialize)]
struct Taint {
    key: String,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeStatus {
    #[serde(default)]
    conditions: Vec<Condition>,
    #[serde(default)]
    node_info: NodeInfo,
}

#[derive(Deserialize)]
struct Condition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeInfo {
    #[serde(default)]
    kubelet_version: String,
}

impl From<Node> for KubeNode {
    fn from(node: Node) -> Self {
        Self {
            name: node.metadata.name,
            ready: node
                .status
                .conditions
                .iter()
                .any(|c| c.kind == "Ready" && c.status == "True"),
            unschedulable: node.spec.unschedulable,
            kubelet_version: node.status.node_info.kubelet_version,
            role_labels: qb_agent_proto::kube::ROLE_LABELS
                .iter()
                .filter(|l| node.metadata.labels.contains_key(**l))
                .map(|l| (*l).to_owned())
                .collect(),
            master_taint: node
                .spec
                .taints
                .iter()
                .any(|t| t.key == qb_agent_proto::kube::MASTER_TAINT),
        }
    }
}

#[derive(Deserialize)]
struct Pod {
    metadata: Metadata,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Default, Deserialize)]
struct PodStatus {
    #[serde(default)]
    phase: String,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    use rustls::server::WebPkiClientVerifier;
    use serde_json::Value;
    use tokio::net::TcpListener;

    use super::*;

    fn pods(json: Value) -> Vec<Pod> {
        serde_json::from_value::<List<Pod>>(json).unwrap().items
    }

    fn names(pods: &[PodRef]) -> Vec<String> {
        pods.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn nodes_parse_from_the_api_servers_list() {
        let list: List<Node> = serde_json::from_str(
            r#"{"kind":"NodeList","apiVersion":"v1","metadata":{"resourceVersion":"1234"},
                "items":[
                  {"metadata":{"name":"m1","uid":"u1","labels":{"kubernetes.io/hostname":"m1"}},
                   "spec":{"podCIDR":"10.244.0.0/24"},
                   "status":{"conditions":[
                       {"type":"MemoryPressure","status":"False","reason":"KubeletHasSufficientMemory"},
                       {"type":"Ready","status":"True","reason":"KubeletReady"}],
                     "nodeInfo":{"kubeletVersion":"v1.20.2","kubeProxyVersion":"v1.20.2"}}},
                  {"metadata":{"name":"w1"},"spec":{"unschedulable":true},
                   "status":{"conditions":[{"type":"Ready","status":"Unknown"}],
                     "nodeInfo":{"kubeletVersion":"v1.20.2"}}},
                  {"metadata":{"name":"w2"}}
                ]}"#,
        )
        .unwrap();
        let nodes: Vec<KubeNode> = list.items.into_iter().map(KubeNode::from).collect();
        let node = |name: &str, ready, unschedulable, version: &str| KubeNode {
            name: name.to_owned(),
            ready,
            unschedulable,
            kubelet_version: version.to_owned(),
            role_labels: Vec::new(),
            master_taint: false,
        };
        assert_eq!(
            nodes,
            vec![
                node("m1", true, false, "v1.20.2"),
                node("w1", false, true, "v1.20.2"),
                node("w2", false, false, ""),
            ]
        );
        let empty: List<Node> = serde_json::from_str(r#"{"kind":"NodeList","items":[]}"#).unwrap();
        assert!(empty.items.is_empty());
        assert!(serde_json::from_str::<List<Node>>(r#"{"items":[{"metadata":{}}]}"#).is_err());
    }

    #[test]
    fn drains_evict_all_but_daemon_set_mirror_and_finished_pods() {
        let list = pods(json!({"kind": "PodList", "items": [
            {"metadata": {"name": "web-5d4f", "namespace": "default", "uid": "1",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "r"}]},
             "spec": {"nodeName": "w1"}, "status": {"phase": "Running"}},
            {"metadata": {"name": "flannel-x2", "namespace": "kube-system", "uid": "2",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "flannel", "uid": "d"}]},
             "status": {"phase": "Running"}},
            {"metadata": {"name": "kube-apiserver-w1", "namespace": "kube-system", "uid": "3",
                "annotations": {"kubernetes.io/config.mirror": "abc", "kubernetes.io/config.source": "file"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "w1", "uid": "n"}]},
             "status": {"phase": "Running"}},
            {"metadata": {"name": "job-abc", "namespace": "batch", "uid": "4",
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "job", "uid": "j"}]},
             "status": {"phase": "Succeeded"}},
            {"metadata": {"name": "crashed", "namespace": "default", "uid": "5"},
             "status": {"phase": "Failed"}},
            // A bare pod: `--force` evicts it although nothing recreates it.
            {"metadata": {"name": "bare", "namespace": "default", "uid": "6"},
             "status": {"phase": "Pending"}},
            // An emptyDir's data goes with the pod (`--delete-emptydir-data`).
            {"metadata": {"name": "cache-0", "namespace": "apps", "uid": "7",
                "ownerReferences": [{"kind": "StatefulSet", "name": "cache", "uid": "s"}]},
             "spec": {"volumes": [{"name": "scratch", "emptyDir": {}}]}},
        ]}));
        let chosen = evictable(&list);
        assert_eq!(
            names(&chosen),
            vec!["default/web-5d4f", "default/bare", "apps/cache-0"]
        );
        assert_eq!(chosen[0].uid, "1");
        assert!(evictable(&pods(json!({"items": []}))).is_empty());
    }

    #[test]
    fn a_pod_replaced_under_the_same_name_is_not_the_one_evicted() {
        let targets = evictable(&pods(json!({"items": [
            {"metadata": {"name": "a", "namespace": "default", "uid": "1"}},
            {"metadata": {"name": "b", "namespace": "default", "uid": "2"}},
            {"metadata": {"name": "c", "namespace": "default", "uid": "3"}},
        ]})));
        let now = pods(json!({"items": [
            {"metadata": {"name": "a", "namespace": "default", "uid": "1"}},
            {"metadata": {"name": "b", "namespace": "default", "uid": "22"}},
            {"metadata": {"name": "c", "namespace": "other", "uid": "3"}},
        ]}));
        let left: Vec<String> = still_there(&targets, &now)
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(left, vec!["default/a"]);
    }

    #[test]
    fn node_names_must_be_dns_subdomains() {
        for good in [
            "w1",
            "node-1.example.com",
            "0",
            "a.b",
            &"a".repeat(253),
            &format!("{}.{}", "a".repeat(63), "b".repeat(100)),
        ] {
            assert!(ObjectName::parse("node", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "W1",
            "-w1",
            "w1-",
            "w1.",
            ".w1",
            "a..b",
            "w_1",
            "w 1",
            "../etc",
            "w1/eviction",
            "w1?x=1",
            "w1%2F",
            "ü",
            &"a".repeat(254),
        ] {
            let error = ObjectName::parse("node", bad).unwrap_err();
            assert!(
                matches!(&error, KubeError::InvalidName { what: "node", name } if name == bad),
                "{bad}: {error:?}"
            );
        }
    }

    #[test]
    fn api_errors_give_the_status_message() {
        let body = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
            "message":"nodes \"w1\" is forbidden: User \"x\" cannot patch resource \"nodes\"",
            "reason":"Forbidden","details":{"name":"w1","kind":"nodes"},"code":403}"#;
        assert_eq!(
            status_message(body),
            r#"nodes "w1" is forbidden: User "x" cannot patch resource "nodes""#
        );
        assert_eq!(
            status_message(b"404 page not found\n"),
            "404 page not found"
        );
        assert_eq!(
            status_message(br#"{"kind":"Status"}"#),
            r#"{"kind":"Status"}"#
        );
    }

    // A fake API server over mutual TLS, serving the few calls this module makes.

    /// What the fake API server holds, and what it was asked.
    #[derive(Default)]
    struct Cluster {
        nodes: Vec<Value>,
        pods: Vec<Value>,
        /// How many more times a disruption budget refuses a pod's eviction, by pod name.
        budget: BTreeMap<String, u32>,
        /// Pods whose termination hangs: evicted, they stay.
        stuck: BTreeSet<String>,
        /// Pods evicted: they are gone from the next list on (termination takes a moment).
        terminating: BTreeSet<String>,
        /// Every request, as `METHOD /path?query`.
        requests: Vec<String>,
        /// Close each connection after one answer, as a server going away between calls does.
        one_request_per_connection: bool,
    }

    fn node(name: &str) -> Value {
        json!({
            "metadata": {"name": name, "uid": format!("uid-{name}")},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "nodeInfo": {"kubeletVersion": "v1.20.2"},
            },
        })
    }

    fn pod(name: &str, node: &str, owner: &str) -> Value {
        json!({
            "metadata": {
                "name": name,
                "namespace": "default",
                "uid": format!("uid-{name}"),
                "ownerReferences": [{"kind": owner, "name": "owner", "uid": "o"}],
            },
            "spec": {"nodeName": node},
            "status": {"phase": "Running"},
        })
    }

    fn status(code: u16, message: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code})
    }

    fn name_of(object: &Value) -> &str {
        object["metadata"]["name"].as_str().unwrap()
    }

    impl Cluster {
        fn handle(
            &mut self,
            method: &Method,
            uri: &hyper::Uri,
            content_type: Option<&str>,
            body: &[u8],
        ) -> (u16, Value) {
            self.requests.push(format!("{method} {uri}"));
            let segments: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
            match (method.as_str(), segments.as_slice()) {
                ("GET", ["api", "v1", "nodes"]) => {
                    (200, json!({"kind": "NodeList", "items": self.nodes}))
                }
                ("GET", ["api", "v1", "nodes", name]) => {
                    match self.nodes.iter().find(|n| name_of(n) == *name) {
                        Some(node) => (200, node.clone()),
                        None => (404, status(404, &format!("nodes \"{name}\" not found"))),
                    }
                }
                ("PATCH", ["api", "v1", "nodes", name])
                    if content_type == Some("application/merge-patch+json") =>
                {
                    let patch: Value = serde_json::from_slice(body).unwrap();
                    let Some(node) = self.nodes.iter_mut().find(|n| name_of(n) == *name) else {
                        return (404, status(404, &format!("nodes \"{name}\" not found")));
                    };
                    if patch["metadata"]["resourceVersion"] != node["metadata"]["resourceVersion"] {
                        return (409, status(409, "the object has been modified"));
                    }
                    merge(node, &patch);
                    let version: u64 = node["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    node["metadata"]["resourceVersion"] = json!((version + 1).to_string());
                    (200, node.clone())
                }
                ("PATCH", ["api", "v1", "nodes", name]) => {
                    assert_eq!(content_type, Some("application/strategic-merge-patch+json"));
                    let patch: Value = serde_json::from_slice(body).unwrap();
                    let unschedulable = patch["spec"]["unschedulable"].clone();
                    assert!(unschedulable.is_boolean(), "{patch}");
                    assert_eq!(patch, json!({"spec": {"unschedulable": unschedulable}}));
                    if *name == "locked" {
                        return (403, status(403, "nodes \"locked\" is forbidden"));
                    }
                    match self.nodes.iter_mut().find(|n| name_of(n) == *name) {
                        Some(node) => {
                            node["spec"]["unschedulable"] = unschedulable;
                            (200, node.clone())
                        }
                        None => (404, status(404, &format!("nodes \"{name}\" not found"))),
                    }
                }
                ("DELETE", ["api", "v1", "nodes", name]) => {
                    let before = self.nodes.len();
                    self.nodes.retain(|n| name_of(n) != *name);
                    if self.nodes.len() < before {
                        (200, status(200, ""))
                    } else {
                        (404, status(404, &format!("nodes \"{name}\" not found")))
                    }
                }
                ("GET", ["api", "v1", "pods"]) => {
                    let node = uri
                        .query()
                        .and_then(|q| q.strip_prefix("fieldSelector=spec.nodeName%3D"))
                        .expect("pods are listed by node");
                    let (terminating, stuck) = (&self.terminating, &self.stuck);
                    self.pods.retain(|p| {
                        let name = name_of(p);
                        !terminating.contains(name) || stuck.contains(name)
                    });
                    let on_node: Vec<&Value> = self
                        .pods
                        .iter()
                        .filter(|p| p["spec"]["nodeName"] == node)
                        .collect();
                    (200, json!({"kind": "PodList", "items": on_node}))
                }
                (
                    "POST",
                    [
                        "api",
                        "v1",
                        "namespaces",
                        namespace,
                        "pods",
                        name,
                        "eviction",
                    ],
                ) => {
                    assert_eq!(content_type, Some("application/json"));
                    let eviction: Value = serde_json::from_slice(body).unwrap();
                    assert_eq!(
                        eviction,
                        json!({
                            "apiVersion": "policy/v1beta1",
                            "kind": "Eviction",
                            "metadata": {"name": name, "namespace": namespace},
                        })
                    );
                    if !self.pods.iter().any(|p| name_of(p) == *name) {
                        return (404, status(404, &format!("pods \"{name}\" not found")));
                    }
                    if let Some(refusals) = self.budget.get_mut(*name)
                        && *refusals > 0
                    {
                        *refusals -= 1;
                        let message =
                            "Cannot evict pod as it would violate the pod's disruption budget.";
                        return (429, status(429, message));
                    }
                    self.terminating.insert((*name).to_owned());
                    (201, eviction)
                }
                _ => (
                    404,
                    status(404, "the server could not find the requested resource"),
                ),
            }
        }

        fn evictions(&self) -> Vec<&str> {
            self.requests
                .iter()
                .filter(|r| r.ends_with("/eviction"))
                .filter_map(|r| r.split('/').nth_back(1))
                .collect()
        }
    }

    /// A fake API server on a loopback port, demanding a client certificate, and the files of
    /// a client it accepts.
    struct Lab {
        dir: tempfile::TempDir,
        endpoint: String,
        cluster: Arc<Mutex<Cluster>>,
    }

    impl Lab {
        async fn start(cluster: Cluster) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let ca_key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "qb test kubernetes CA");
            let ca = params.self_signed(&ca_key).unwrap();
            let issue = |san: &str, usage| {
                let key = KeyPair::generate().unwrap();
                let mut params = CertificateParams::new(vec![san.to_owned()]).unwrap();
                params.extended_key_usages = vec![usage];
                (params.signed_by(&key, &ca, &ca_key).unwrap(), key)
            };
            let write =
                |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();
            write("ca.crt", ca.pem());
            let (client, client_key) = issue("admin", ExtendedKeyUsagePurpose::ClientAuth);
            write("admin.crt", client.pem());
            write("admin.key", client_key.serialize_pem());
            let (server, server_key) = issue("127.0.0.1", ExtendedKeyUsagePurpose::ServerAuth);

            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der().clone()).unwrap();
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .unwrap();
            let tls = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(
                    vec![server.der().clone()],
                    rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
                )
                .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let endpoint = format!("https://{}", listener.local_addr().unwrap());
            let cluster = Arc::new(Mutex::new(cluster));
            let shared = cluster.clone();
            tokio::spawn(async move {
                loop {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let (acceptor, cluster) = (acceptor.clone(), shared.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let keep_alive = !cluster.lock().unwrap().one_request_per_connection;
                        let service = service_fn(move |request: hyper::Request<Incoming>| {
                            let cluster = cluster.clone();
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body.collect().await.unwrap().to_bytes();
                                let content_type = parts
                                    .headers
                                    .get(hyper::header::CONTENT_TYPE)
                                    .map(|v| v.to_str().unwrap().to_owned());
                                let (status, answer) = cluster.lock().unwrap().handle(
                                    &parts.method,
                                    &parts.uri,
                                    content_type.as_deref(),
                                    &body,
                                );
                                Ok::<_, Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .header(hyper::header::CONTENT_TYPE, "application/json")
                                        .body(Full::new(Bytes::from(answer.to_string())))
                                        .unwrap(),
                                )
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .keep_alive(keep_alive)
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
            Self {
                dir,
                endpoint,
                cluster,
            }
        }

        fn request(&self, op: KubeOp) -> KubeRequest {
            let file = |name: &str| self.dir.path().join(name).display().to_string();
            KubeRequest {
                endpoint: self.endpoint.clone(),
                ca_file: file("ca.crt"),
                cert_file: file("admin.crt"),
                key_file: file("admin.key"),
                op,
            }
        }

        fn cluster(&self) -> std::sync::MutexGuard<'_, Cluster> {
            self.cluster.lock().unwrap()
        }
    }

    /// RFC 7386 JSON merge patch.
    fn merge(target: &mut Value, patch: &Value) {
        match patch.as_object() {
            Some(fields) => {
                if !target.is_object() {
                    *target = json!({});
                }
                for (key, value) in fields {
                    if value.is_null() {
                        target.as_object_mut().unwrap().remove(key);
                    } else {
                        merge(&mut target[key], value);
                    }
                }
            }
            None => *target = patch.clone(),
        }
    }

    #[tokio::test]
    async fn roles_set_their_labels_and_the_master_taint_and_leave_the_rest() {
        let mut node = node("n1");
        node["metadata"]["resourceVersion"] = json!("7");
        node["metadata"]["labels"] = json!({"zone": "a", "node-role.kubernetes.io/worker": ""});
        node["spec"]["taints"] = json!([{"key": "gpu", "effect": "NoSchedule"}]);
        let lab = Lab::start(Cluster {
            nodes: vec![node],
            ..Cluster::default()
        })
        .await;
        let set = |master, taint| {
            lab.request(KubeOp::SetRole {
                node: "n1".into(),
                master,
                taint,
            })
        };
        let nodes = run(&set(true, true)).await.unwrap();
        assert_eq!(
            nodes[0].role_labels,
            [
                "node-role.kubernetes.io/control-plane",
                "node-role.kubernetes.io/master"
            ]
        );
        assert!(nodes[0].master_taint);
        let stored = lab.cluster().nodes[0].clone();
        assert_eq!(stored["metadata"]["labels"]["zone"], "a");
        assert_eq!(
            stored["spec"]["taints"],
            json!([
                {"key": "gpu", "effect": "NoSchedule"},
                {"key": "node-role.kubernetes.io/master", "effect": "NoSchedule"},
            ])
        );
        // Untainted master, then a worker again: the master taint goes, the others stay.
        let nodes = run(&set(true, false)).await.unwrap();
        assert!(!nodes[0].master_taint);
        let nodes = run(&set(false, true)).await.unwrap();
        assert_eq!(nodes[0].role_labels, ["node-role.kubernetes.io/worker"]);
        assert!(!nodes[0].master_taint);
        let stored = lab.cluster().nodes[0].clone();
        assert_eq!(
            stored["spec"]["taints"],
            json!([{"key": "gpu", "effect": "NoSchedule"}])
        );
        assert_eq!(stored["metadata"]["labels"]["zone"], "a");
    }

    fn drain_op(node: &str, timeout_seconds: u32) -> KubeOp {
        KubeOp::Drain {
            node: node.to_owned(),
            timeout_seconds,
        }
    }

    #[tokio::test]
    async fn a_drain_cordons_evicts_and_waits_for_the_pods_to_go() {
        let mut mirror = pod("kube-proxy-w1", "w1", "Node");
        mirror["metadata"]["annotations"] = json!({ MIRROR_ANNOTATION: "abc" });
        let mut done = pod("job-1", "w1", "Job");
        done["status"]["phase"] = json!("Succeeded");
        let lab = Lab::start(Cluster {
            nodes: vec![node("m1"), node("w1")],
            pods: vec![
                pod("web-1", "w1", "ReplicaSet"),
                pod("guarded-1", "w1", "ReplicaSet"),
                pod("flannel-w1", "w1", "DaemonSet"),
                mirror,
                done,
                pod("web-2", "m1", "ReplicaSet"),
            ],
            budget: BTreeMap::from([("guarded-1".to_owned(), 1)]),
            ..Cluster::default()
        })
        .await;

        let nodes = run(&lab.request(drain_op("w1", 30))).await.unwrap();
        let flags: Vec<(&str, bool, bool)> = nodes
            .iter()
            .map(|n| (n.name.as_str(), n.ready, n.unschedulable))
            .collect();
        assert_eq!(flags, vec![("m1", true, false), ("w1", true, true)]);

        {
            let cluster = lab.cluster();
            // The budget refused the first eviction of guarded-1; the one two seconds later passed.
            assert_eq!(cluster.evictions(), vec!["web-1", "guarded-1", "guarded-1"]);
            let left: Vec<&str> = cluster.pods.iter().map(name_of).collect();
            assert_eq!(left, vec!["flannel-w1", "kube-proxy-w1", "job-1", "web-2"]);
            assert_eq!(
                cluster.requests.first().map(String::as_str),
                Some("PATCH /api/v1/nodes/w1")
            );
            assert_eq!(
                cluster.requests.last().map(String::as_str),
                Some("GET /api/v1/nodes")
            );
        }
        // Draining again finds nothing left to evict.
        run(&lab.request(drain_op("w1", 30))).await.unwrap();
        assert_eq!(lab.cluster().evictions().len(), 3);
        // Uncordoned, it takes pods again; a node the API server does not know is no error.
        let nodes = run(&lab.request(KubeOp::Uncordon { node: "w1".into() }))
            .await
            .unwrap();
        assert!(nodes.iter().all(|n| !n.unschedulable), "{nodes:?}");
        run(&lab.request(KubeOp::Uncordon {
            node: "gone".into(),
        }))
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_server_closing_connections_between_calls_is_dialled_again() {
        let lab = Lab::start(Cluster {
            nodes: vec![node("w1")],
            pods: vec![
                pod("web-1", "w1", "ReplicaSet"),
                pod("web-2", "w1", "ReplicaSet"),
            ],
            one_request_per_connection: true,
            ..Cluster::default()
        })
        .await;
        let nodes = run(&lab.request(drain_op("w1", 30))).await.unwrap();
        assert!(nodes[0].unschedulable);
        let cluster = lab.cluster();
        assert_eq!(cluster.evictions(), vec!["web-1", "web-2"]);
        assert!(cluster.pods.is_empty());
    }

    #[tokio::test]
    async fn a_drain_gives_up_in_time_naming_the_pods_left() {
        let lab = Lab::start(Cluster {
            nodes: vec![node("w1"), node("w2")],
            pods: vec![
                pod("stuck-1", "w1", "ReplicaSet"),
                pod("web-1", "w1", "ReplicaSet"),
                pod("guarded-1", "w2", "ReplicaSet"),
            ],
            stuck: BTreeSet::from(["stuck-1".to_owned()]),
            budget: BTreeMap::from([("guarded-1".to_owned(), u32::MAX)]),
            ..Cluster::default()
        })
        .await;

        let started = Instant::now();
        let error = run(&lab.request(drain_op("w1", 1))).await.unwrap_err();
        assert!(
            matches!(&error, KubeError::DrainTimeout { node, timeout_seconds: 1, pods }
                if node == "w1" && *pods == ["default/stuck-1"]),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "draining w1: pods still there after 1 s: default/stuck-1"
        );

        let error = run(&lab.request(drain_op("w2", 1))).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "draining w2: evicting default/guarded-1 still refused after 1 s: \
             Cannot evict pod as it would violate the pod's disruption budget."
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn nodes_unknown_to_the_api_server_are_drained_and_deleted_already() {
        let lab = Lab::start(Cluster {
            nodes: vec![node("m1"), node("w1")],
            ..Cluster::default()
        })
        .await;
        let nodes = run(&lab.request(drain_op("gone", 30))).await.unwrap();
        assert_eq!(nodes.len(), 2);

        let nodes = run(&lab.request(KubeOp::DeleteNode {
            node: "w1".to_owned(),
        }))
        .await
        .unwrap();
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, vec!["m1"]);
        let nodes = run(&lab.request(KubeOp::DeleteNode {
            node: "w1".to_owned(),
        }))
        .await
        .unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(run(&lab.request(KubeOp::Nodes)).await.unwrap(), nodes);
    }

    #[tokio::test]
    async fn errors_name_their_cause_and_bad_names_are_never_sent() {
        let lab = Lab::start(Cluster {
            nodes: vec![node("locked")],
            ..Cluster::default()
        })
        .await;
        let error = run(&lab.request(drain_op("locked", 30))).await.unwrap_err();
        assert!(
            matches!(&error, KubeError::Api { status: 403, message, .. }
                if message == "nodes \"locked\" is forbidden"),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "the API server answered 403 to PATCH /api/v1/nodes/locked: nodes \"locked\" is forbidden"
        );
        lab.cluster().requests.clear();

        for bad in ["W1", "../../api/v1/namespaces", "w1?dryRun=All", ""] {
            for op in [
                drain_op(bad, 30),
                KubeOp::DeleteNode {
                    node: bad.to_owned(),
                },
            ] {
                let error = run(&lab.request(op)).await.unwrap_err();
                assert!(
                    matches!(&error, KubeError::InvalidName { what: "node", name } if name == bad),
                    "{error:?}"
                );
            }
        }
        assert!(lab.cluster().requests.is_empty());

        // A missing client key is named; nothing is sent without one.
        let mut request = lab.request(KubeOp::Nodes);
        request.key_file = lab.dir.path().join("missing.key").display().to_string();
        let error = run(&request).await.unwrap_err();
        assert!(
            matches!(error, KubeError::Https(HttpsError::Read { .. })),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!("reading {}", lab.dir.path().join("missing.key").display())
        );
    }
}
