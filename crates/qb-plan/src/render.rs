//! Plan rendering: from a cluster, its nodes, its PKI and one node's certificates to that node's
//! [`Plan`].
//!
//! Every component runs natively on the host as a plain process supervised by the agent (the
//! kubelet included; only pods run in containers). A component is in a plan only when the
//! release bundle ships its artifact, so a bundle with nothing but etcd renders etcd alone.
//! Masters run etcd and, when shipped, kube-apiserver, kube-controller-manager and
//! kube-scheduler; every node runs containerd, the kubelet and kube-proxy when shipped, and gets
//! the CNI configuration when the bundle has the bridge plugin.
//!
//! Services start in this order, each one's probe gating the next: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, containerd, kubelet, kube-proxy.
//!
//! Probes:
//! - etcd: `GET https://127.0.0.1:2379/health` with the agent's etcd client certificate.
//! - kube-apiserver: anonymous requests are refused, so the agent presents its own client
//!   certificate (no groups; RBAC's `system:public-info-viewer` lets any authenticated user read
//!   it) and asks `GET https://127.0.0.1:6443/readyz`.
//! - kube-controller-manager and kube-scheduler: `GET /healthz` on their secure ports (served
//!   with certificates of the cluster CA) from 1.21, where those paths are always allowed; a TCP
//!   connection on 1.20.
//! - containerd: a connection to its socket. Then one task per image the bundle ships imports
//!   it (`ctr images import`), before the kubelet starts.
//! - kubelet: `GET http://127.0.0.1:10248/healthz`; kube-proxy: `GET http://127.0.0.1:10256/healthz`.
//!
//! Kubeconfigs of the kubelet and kube-proxy point at the agent's API balancer on the node,
//! `https://127.0.0.1:6444`, which carries each connection to the first master's API server that
//! accepts it: a master's own first, then the others, each worker starting at another one, so
//! that the nodes keep reaching the cluster while any master's API server runs. The
//! controller-manager's and scheduler's point at their own master's API server on 127.0.0.1.
//! Kubeconfigs ([`crate::kubeconfig`]) refer to certificate and key files, so no key is ever
//! copied into a second file.
//!
//! The output is deterministic: artifacts sorted by name, files by path, no timestamps.
//!
//! One long file: each component's flags, files and probe are read together with the others
//! they must agree with (ports, paths, certificates, the order of services), as one node's plan.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use qb_agent_proto::plan::{
    ApiBalancer, Artifact, HostPath, KUBE_APISERVER_ENDPOINT, Owner, Plan, PlanFile, PortSpec,
    Probe, RestartPolicy, Route, Service, ServiceName, Sha256Hex,
};
use qb_api::{
    BundleManifest, Cidr, ClusterId, KubernetesVersion, Labels, NodeFacts, NodeId, NodeName,
    NodeRole,
};
use serde::{Deserialize, Serialize};

use crate::kubeconfig::{Credentials, Kubeconfig, TrustedCa, quote};
use crate::pki::{Authority, CertPurpose, ClusterPki, NodeCerts};

/// Where everything lives on a node.
pub mod paths {
    use crate::pki::{Authority, CertPurpose};

    /// Executables from the bundle: `BIN_DIR/<artifact name>`.
    pub const BIN_DIR: &str = "/var/lib/qb/bin";
    /// CNI plugins: `CNI_BIN_DIR/<plugin>` (`bridge`, `host-local`, `loopback`, `portmap`).
    pub const CNI_BIN_DIR: &str = "/var/lib/qb/cni/bin";
    /// Container images as OCI image tarballs: `IMAGES_DIR/<artifact name>.tar`.
    pub const IMAGES_DIR: &str = "/var/lib/qb/images";
    /// The pause (sandbox) image.
    pub const PAUSE_IMAGE: &str = "/var/lib/qb/images/pause-image.tar";
    /// runc's state of the containers of containerd's runc shim.
    pub const RUNC_ROOT: &str = "/run/qb/runc";

    /// Certificates (`.crt`, 0644) and keys (`.key`, 0600).
    pub const PKI_DIR: &str = "/etc/qb/pki";
    pub const CA_CERT: &str = "/etc/qb/pki/ca.crt";
    /// The cluster CA's key: on masters only, and only for kube-controller-manager.
    pub const CA_KEY: &str = "/etc/qb/pki/ca.key";
    pub const ETCD_CA_CERT: &str = "/etc/qb/pki/etcd/ca.crt";
    pub const ETCD_SERVER_CERT: &str = "/etc/qb/pki/etcd/server.crt";
    pub const ETCD_SERVER_KEY: &str = "/etc/qb/pki/etcd/server.key";
    pub const ETCD_PEER_CERT: &str = "/etc/qb/pki/etcd/peer.crt";
    pub const ETCD_PEER_KEY: &str = "/etc/qb/pki/etcd/peer.key";
    /// The agent's etcd client: health probes and membership operations.
    pub const ETCD_HEALTHCHECK_CLIENT_CERT: &str = "/etc/qb/pki/etcd/healthcheck-client.crt";
    pub const ETCD_HEALTHCHECK_CLIENT_KEY: &str = "/etc/qb/pki/etcd/healthcheck-client.key";
    pub const APISERVER_CERT: &str = "/etc/qb/pki/apiserver.crt";
    pub const APISERVER_KEY: &str = "/etc/qb/pki/apiserver.key";
    pub const APISERVER_ETCD_CLIENT_CERT: &str = "/etc/qb/pki/apiserver-etcd-client.crt";
    pub const APISERVER_ETCD_CLIENT_KEY: &str = "/etc/qb/pki/apiserver-etcd-client.key";
    pub const APISERVER_KUBELET_CLIENT_CERT: &str = "/etc/qb/pki/apiserver-kubelet-client.crt";
    pub const APISERVER_KUBELET_CLIENT_KEY: &str = "/etc/qb/pki/apiserver-kubelet-client.key";
    /// The agent's API server client, for the API server's probe.
    pub const APISERVER_HEALTHCHECK_CLIENT_CERT: &str =
        "/etc/qb/pki/apiserver-healthcheck-client.crt";
    pub const APISERVER_HEALTHCHECK_CLIENT_KEY: &str =
        "/etc/qb/pki/apiserver-healthcheck-client.key";
    pub const FRONT_PROXY_CA_CERT: &str = "/etc/qb/pki/front-proxy-ca.crt";
    pub const FRONT_PROXY_CLIENT_CERT: &str = "/etc/qb/pki/front-proxy-client.crt";
    pub const FRONT_PROXY_CLIENT_KEY: &str = "/etc/qb/pki/front-proxy-client.key";
    pub const SA_KEY: &str = "/etc/qb/pki/sa.key";
    pub const SA_PUB: &str = "/etc/qb/pki/sa.pub";
    pub const CONTROLLER_MANAGER_CLIENT_CERT: &str = "/etc/qb/pki/controller-manager.crt";
    pub const CONTROLLER_MANAGER_CLIENT_KEY: &str = "/etc/qb/pki/controller-manager.key";
    pub const CONTROLLER_MANAGER_SERVING_CERT: &str = "/etc/qb/pki/controller-manager-serving.crt";
    pub const CONTROLLER_MANAGER_SERVING_KEY: &str = "/etc/qb/pki/controller-manager-serving.key";
    pub const SCHEDULER_CLIENT_CERT: &str = "/etc/qb/pki/scheduler.crt";
    pub const SCHEDULER_CLIENT_KEY: &str = "/etc/qb/pki/scheduler.key";
    pub const SCHEDULER_SERVING_CERT: &str = "/etc/qb/pki/scheduler-serving.crt";
    pub const SCHEDULER_SERVING_KEY: &str = "/etc/qb/pki/scheduler-serving.key";
    /// The kubelet's serving and client certificate.
    pub const KUBELET_CERT: &str = "/etc/qb/pki/kubelet.crt";
    pub const KUBELET_KEY: &str = "/etc/qb/pki/kubelet.key";
    pub const KUBE_PROXY_CERT: &str = "/etc/qb/pki/kube-proxy.crt";
    pub const KUBE_PROXY_KEY: &str = "/etc/qb/pki/kube-proxy.key";
    /// The cluster administrator's certificate, on masters.
    pub const ADMIN_CERT: &str = "/etc/qb/pki/admin.crt";
    pub const ADMIN_KEY: &str = "/etc/qb/pki/admin.key";

    /// Kubeconfigs and component configurations.
    pub const KUBERNETES_DIR: &str = "/etc/qb/kubernetes";
    pub const CONTROLLER_MANAGER_KUBECONFIG: &str = "/etc/qb/kubernetes/controller-manager.conf";
    pub const SCHEDULER_KUBECONFIG: &str = "/etc/qb/kubernetes/scheduler.conf";
    pub const KUBELET_KUBECONFIG: &str = "/etc/qb/kubernetes/kubelet.conf";
    pub const KUBE_PROXY_KUBECONFIG: &str = "/etc/qb/kubernetes/kube-proxy.conf";
    /// The cluster administrator's kubeconfig on masters, for the local API server.
    pub const ADMIN_KUBECONFIG: &str = "/etc/qb/kubernetes/admin.conf";
    pub const KUBELET_CONFIG: &str = "/etc/qb/kubernetes/kubelet-config.yaml";
    pub const KUBE_PROXY_CONFIG: &str = "/etc/qb/kubernetes/kube-proxy-config.yaml";
    pub const CONTAINERD_CONFIG: &str = "/etc/qb/containerd/config.toml";
    pub const CNI_CONF_DIR: &str = "/etc/qb/cni/net.d";
    pub const CNI_CONFLIST: &str = "/etc/qb/cni/net.d/10-qb.conflist";

    /// State, wiped when the node leaves its cluster.
    pub const ETCD_DATA_DIR: &str = "/var/lib/qb/etcd";
    pub const KUBELET_ROOT_DIR: &str = "/var/lib/qb/kubelet";
    pub const CONTAINERD_ROOT_DIR: &str = "/var/lib/qb/containerd";
    pub const RUN_DIR: &str = "/run/qb";
    pub const CONTAINERD_STATE_DIR: &str = "/run/qb/containerd";
    pub const CONTAINERD_SOCKET: &str = "/run/qb/containerd/containerd.sock";
    /// host-local IPAM's leases: in `/run`, since no pod outlives a reboot.
    pub const CNI_IPAM_DATA_DIR: &str = "/run/qb/cni/networks";
    /// Pods' and containers' logs, where the kubelet keeps them (no flag moves them).
    pub const POD_LOG_DIR: &str = "/var/log/pods";
    pub const CONTAINER_LOG_DIR: &str = "/var/log/containers";
    /// Every state directory, in the order the plan lists them.
    pub const STATE_DIRS: &[&str] = &[
        ETCD_DATA_DIR,
        KUBELET_ROOT_DIR,
        CONTAINERD_ROOT_DIR,
        RUN_DIR,
        POD_LOG_DIR,
        CONTAINER_LOG_DIR,
    ];

    /// Where a bundle artifact is installed and its mode; `None` for a name the engine does not
    /// know.
    pub fn artifact(name: &str) -> Option<(String, u32)> {
        let cni = |plugin: &str| Some((format!("{CNI_BIN_DIR}/{plugin}"), 0o755));
        match name {
            "pause-image" => Some((PAUSE_IMAGE.to_owned(), 0o644)),
            image if image.starts_with(qb_api::IMAGE_PREFIX) => {
                Some((format!("{IMAGES_DIR}/{image}.tar"), 0o644))
            }
            "cni-bridge" => cni("bridge"),
            "cni-host-local" => cni("host-local"),
            "cni-loopback" => cni("loopback"),
            "cni-portmap" => cni("portmap"),
            "etcd"
            | "kube-apiserver"
            | "kube-controller-manager"
            | "kube-scheduler"
            | "kubelet"
            | "kube-proxy"
            | "containerd"
            | "containerd-shim-runc-v2"
            | "ctr"
            | "runc" => Some((format!("{BIN_DIR}/{name}"), 0o755)),
            _ => None,
        }
    }

    /// The certificate and key files of a purpose.
    pub fn cert_files(purpose: CertPurpose) -> (&'static str, &'static str) {
        match purpose {
            CertPurpose::EtcdServer => (ETCD_SERVER_CERT, ETCD_SERVER_KEY),
            CertPurpose::EtcdPeer => (ETCD_PEER_CERT, ETCD_PEER_KEY),
            CertPurpose::EtcdHealthcheckClient => {
                (ETCD_HEALTHCHECK_CLIENT_CERT, ETCD_HEALTHCHECK_CLIENT_KEY)
            }
            CertPurpose::Apiserver => (APISERVER_CERT, APISERVER_KEY),
            CertPurpose::ApiserverEtcdClient => {
                (APISERVER_ETCD_CLIENT_CERT, APISERVER_ETCD_CLIENT_KEY)
            }
            CertPurpose::ApiserverKubeletClient => {
                (APISERVER_KUBELET_CLIENT_CERT, APISERVER_KUBELET_CLIENT_KEY)
            }
            CertPurpose::ApiserverHealthcheckClient => (
                APISERVER_HEALTHCHECK_CLIENT_CERT,
                APISERVER_HEALTHCHECK_CLIENT_KEY,
            ),
            CertPurpose::FrontProxyClient => (FRONT_PROXY_CLIENT_CERT, FRONT_PROXY_CLIENT_KEY),
            CertPurpose::ControllerManagerClient => (
                CONTROLLER_MANAGER_CLIENT_CERT,
                CONTROLLER_MANAGER_CLIENT_KEY,
            ),
            CertPurpose::ControllerManagerServing => (
                CONTROLLER_MANAGER_SERVING_CERT,
                CONTROLLER_MANAGER_SERVING_KEY,
            ),
            CertPurpose::SchedulerClient => (SCHEDULER_CLIENT_CERT, SCHEDULER_CLIENT_KEY),
            CertPurpose::SchedulerServing => (SCHEDULER_SERVING_CERT, SCHEDULER_SERVING_KEY),
            CertPurpose::Kubelet => (KUBELET_CERT, KUBELET_KEY),
            CertPurpose::KubeProxy => (KUBE_PROXY_CERT, KUBE_PROXY_KEY),
            CertPurpose::Admin => (ADMIN_CERT, ADMIN_KEY),
        }
    }

    /// The certificate file of a CA.
    pub fn ca_cert(authority: Authority) -> &'static str {
        match authority {
            Authority::Cluster => CA_CERT,
            Authority::Etcd => ETCD_CA_CERT,
            Authority::FrontProxy => FRONT_PROXY_CA_CERT,
        }
    }
}

/// The ports components listen on.
pub mod ports {
    pub const ETCD_CLIENT: u16 = 2379;
    pub const ETCD_PEER: u16 = 2380;
    /// etcd's metrics and health over plain HTTP, on 127.0.0.1 only.
    pub const ETCD_METRICS: u16 = 2381;
    pub const APISERVER: u16 = 6443;
    /// The agent's balancer in front of the masters' API servers, on 127.0.0.1 only.
    pub const API_BALANCER: u16 = 6444;
    pub const CONTROLLER_MANAGER: u16 = 10257;
    pub const SCHEDULER: u16 = 10259;
    pub const KUBELET: u16 = 10250;
    /// The kubelet's health endpoint, on 127.0.0.1 only.
    pub const KUBELET_HEALTHZ: u16 = 10248;
    pub const KUBE_PROXY_HEALTHZ: u16 = 10256;
    /// kube-proxy's metrics, on 127.0.0.1 only.
    pub const KUBE_PROXY_METRICS: u16 = 10249;
    /// The cluster network's VXLAN overlay between nodes (UDP).
    pub const VXLAN: u16 = 8472;
}

/// The node label whose value, an IP address, overrides the address qb picks for a node.
pub use qb_api::ADDRESS_LABEL;
/// The oldest Kubernetes minor version rendered (1.20).
pub const MIN_MINOR: u32 = 20;
/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The issuer of service-account tokens.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The image containerd runs as every pod's sandbox; the bundle's `pause-image` holds it.
pub const SANDBOX_IMAGE: &str = "qb.local/pause:3.2";

/// Artifact names the renderer uses.
mod artifact {
    pub const ETCD: &str = "etcd";
    pub const APISERVER: &str = "kube-apiserver";
    pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
    pub const SCHEDULER: &str = "kube-scheduler";
    pub const KUBELET: &str = "kubelet";
    pub const KUBE_PROXY: &str = "kube-proxy";
    pub const CONTAINERD: &str = "containerd";
    pub const CONTAINERD_SHIM: &str = "containerd-shim-runc-v2";
    pub const RUNC: &str = "runc";
    pub const CTR: &str = "ctr";
    pub const PAUSE_IMAGE: &str = "pause-image";
    pub const CNI_BRIDGE: &str = "cni-bridge";
    pub const CNI_PLUGINS: &[&str] = &[
        "cni-bridge",
        "cni-host-local",
        "cni-loopback",
        "cni-portmap",
    ];
}

/// The cluster as rendering needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterInput {
    pub id: ClusterId,
    pub name: String,
    /// Must be the bundle's version.
    pub version: KubernetesVersion,
    pub pod_cidr: Cidr,
    pub service_cidr: Cidr,
    pub bundle: BundleManifest,
}

/// One node of the cluster as rendering needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInput {
    pub id: NodeId,
    pub name: NodeName,
    /// Where other nodes reach it (see [`node_address`]).
    pub address: IpAddr,
    pub role: NodeRole,
    /// Masters only: how its etcd member joins.
    pub etcd: Option<EtcdBootstrap>,
    /// The node's own part of the cluster's pod CIDR (see [`pod_subnet`]), assigned once by
    /// the controller and kept while the node stays in the cluster.
    pub pod_subnet: Cidr,
}

/// How an etcd member starts. Fixed when the member first starts: etcd ignores it afterwards,
/// but it is part of etcd's command line, so the controller keeps it stable (a change would
/// restart etcd for nothing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdBootstrap {
    /// The members to start with: (member name = node name, address). Includes this node.
    pub initial_cluster: Vec<(String, IpAddr)>,
    pub state: InitialClusterState,
}

/// etcd's `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitialClusterState {
    /// A member of a new cluster.
    New,
    /// A member joining a running cluster (added as a learner first).
    Existing,
}

impl InitialClusterState {
    /// The flag's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Existing => "existing",
        }
    }
}

/// Why a plan cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("node {0} is not one of the cluster's nodes")]
    UnknownNode(NodeId),
    #[error("the bundle ships no etcd")]
    NoEtcd,
    #[error("the bundle is for Kubernetes {bundle}, but the cluster runs {cluster}")]
    BundleVersion {
        bundle: KubernetesVersion,
        cluster: KubernetesVersion,
    },
    #[error("Kubernetes {0} is not supported; the oldest supported release is 1.{MIN_MINOR}")]
    UnsupportedVersion(KubernetesVersion),
    #[error("master {node} has no etcd bootstrap")]
    MasterWithoutEtcd { node: NodeName },
    #[error("worker {node} has an etcd bootstrap; only masters run etcd")]
    WorkerWithEtcd { node: NodeName },
    #[error("the etcd bootstrap of {node} does not list it at {address}")]
    NotInInitialCluster { node: NodeName, address: IpAddr },
    #[error("the cluster has no master for its nodes to reach the API server")]
    NoMaster,
    #[error("the pod subnet {subnet} of {node} is not inside the cluster's pod CIDR {pod_cidr}")]
    PodSubnet {
        node: NodeName,
        subnet: Cidr,
        pod_cidr: Cidr,
    },
    #[error(
        "the address {address} of {node} is in the cluster's range {range}: routes through it would point into the cluster's own network"
    )]
    AddressInClusterRange {
        node: NodeName,
        address: IpAddr,
        range: Cidr,
    },
    #[error("node {node} has no {purpose:?} certificate")]
    MissingCert {
        node: NodeName,
        purpose: CertPurpose,
    },
}

/// The plan of `node`: generation 0 (the controller sets it) and `cluster_id` set.
pub fn render(
    cluster: &ClusterInput,
    nodes: &[NodeInput],
    node: NodeId,
    pki: &ClusterPki,
    certs: &NodeCerts,
) -> Result<Plan, RenderError> {
    let ctx = Context::new(cluster, nodes, node, pki, certs)?;
    let mut parts = Parts::default();
    etcd(&ctx, &mut parts)?;
    kube_apiserver(&ctx, &mut parts)?;
    admin(&ctx, &mut parts)?;
    kube_controller_manager(&ctx, &mut parts)?;
    kube_scheduler(&ctx, &mut parts)?;
    containerd(&ctx, &mut parts);
    cni(&ctx, &mut parts)?;
    kubelet(&ctx, &mut parts)?;
    kube_proxy(&ctx, &mut parts)?;
    Ok(parts.into_plan(&ctx))
}

/// The ports a node of `role` needs open to the other nodes; the preflight checks them.
pub fn required_ports(cluster: &ClusterInput, role: NodeRole) -> Vec<PortSpec> {
    let ships = |name: &str| cluster.bundle.artifact(name).is_some();
    let mut ports = vec![udp(ports::VXLAN)];
    if role == NodeRole::Master {
        ports.extend([tcp(ports::ETCD_CLIENT), tcp(ports::ETCD_PEER)]);
        if ships(artifact::APISERVER) {
            ports.push(tcp(ports::APISERVER));
        }
    }
    if ships(artifact::KUBELET) {
        ports.push(tcp(ports::KUBELET));
    }
    ports.sort();
    ports
}

/// The ports a node of `role` uses only itself, each at the address its component binds: no
/// other node reaches them, but another program holding one would keep the component from
/// starting, so the preflight checks that each is free.
pub fn local_ports(
    cluster: &ClusterInput,
    role: NodeRole,
) -> Vec<qb_agent_proto::preflight::LocalPort> {
    use qb_agent_proto::preflight::LocalPort;
    let ships = |name: &str| cluster.bundle.artifact(name).is_some();
    let loopback = |port| LocalPort {
        port: tcp(port),
        address: IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let mut local = Vec::new();
    if role == NodeRole::Master {
        local.push(loopback(ports::ETCD_METRICS));
        if ships(artifact::CONTROLLER_MANAGER) {
            local.push(loopback(ports::CONTROLLER_MANAGER));
        }
        if ships(artifact::SCHEDULER) {
            local.push(loopback(ports::SCHEDULER));
        }
    }
    // The kubelet and kube-proxy reach the API servers through the balancer.
    if ships(artifact::KUBELET) || ships(artifact::KUBE_PROXY) {
        local.push(loopback(ports::API_BALANCER));
    }
    if ships(artifact::KUBELET) {
        local.push(loopback(ports::KUBELET_HEALTHZ));
    }
    if ships(artifact::KUBE_PROXY) {
        local.push(loopback(ports::KUBE_PROXY_METRICS));
        // Its health endpoint binds every address (see `kube_proxy_config`).
        local.push(LocalPort {
            port: tcp(ports::KUBE_PROXY_HEALTHZ),
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        });
    }
    local.sort();
    local
}

/// etcd's client URL at `address`, e.g. `https://10.0.0.1:2379`.
pub fn etcd_client_url(address: IpAddr) -> String {
    https_url(address, ports::ETCD_CLIENT)
}

/// etcd's peer URL at `address`, e.g. `https://10.0.0.1:2380`.
pub fn etcd_peer_url(address: IpAddr) -> String {
    https_url(address, ports::ETCD_PEER)
}

/// Why no address could be chosen for a node.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("its {ADDRESS_LABEL} label {0:?} is not an IP address")]
    LabelNotAnAddress(String),
    #[error("its {ADDRESS_LABEL} label {address} is in the cluster's range {range}")]
    LabelInClusterRange { address: IpAddr, range: Cidr },
    #[error(
        "the host reported no address outside the cluster's pod and service ranges and its pod network; label it {ADDRESS_LABEL}=<ip>"
    )]
    NoneUsable,
}

/// The address a cluster will reach a node at, chosen when the node is first planned there
/// (and then kept, see [`qb_api::Node::address`]): the [`ADDRESS_LABEL`] label's value; else
/// the address the host's connection to the controller leaves from; else the host's first
/// address by kind of interface (network cards first) and then IPv4 before IPv6. Never
/// loopback, link-local or unspecified, never inside one of `cluster_ranges` (the cluster's
/// pod and service ranges), never on the pod network's interfaces (`qb0` and its pods' veths).
pub fn choose_node_address(
    facts: &NodeFacts,
    labels: &Labels,
    cluster_ranges: &[Cidr],
) -> Result<IpAddr, AddressError> {
    let in_range = |ip: IpAddr| cluster_ranges.iter().find(|r| r.net().contains(&ip));
    if let Some((_, value)) = labels.iter().find(|(k, _)| k.as_str() == ADDRESS_LABEL) {
        let address: IpAddr = value
            .as_str()
            .parse()
            .map_err(|_| AddressError::LabelNotAnAddress(value.as_str().to_owned()))?;
        if let Some(range) = in_range(address) {
            return Err(AddressError::LabelInClusterRange {
                address,
                range: *range,
            });
        }
        return Ok(address);
    }
    // Candidates with a rank: lower is better.
    let mut candidates: Vec<(u8, bool, IpAddr)> = if facts.interfaces.is_empty() {
        // An agent that does not report interfaces: its addresses, in its order.
        facts
            .addresses
            .iter()
            .map(|ip| (0, ip.is_ipv6(), *ip))
            .collect()
    } else {
        facts
            .interfaces
            .iter()
            .filter(|i| !i.is_pod_network())
            .flat_map(|i| {
                let rank = kind_rank(i.kind);
                i.addresses.iter().map(move |ip| (rank, ip.is_ipv6(), *ip))
            })
            .collect()
    };
    candidates.retain(|(_, _, ip)| is_usable_address(*ip) && in_range(*ip).is_none());
    if let Some(source) = facts.route_source
        && candidates.iter().any(|(_, _, ip)| *ip == source)
    {
        return Ok(source);
    }
    candidates.sort_by_key(|(rank, v6, _)| (*rank, *v6));
    candidates
        .first()
        .map(|(_, _, ip)| *ip)
        .ok_or(AddressError::NoneUsable)
}

/// How likely an interface of this kind carries the host's own address.
fn kind_rank(kind: qb_api::InterfaceKind) -> u8 {
    use qb_api::InterfaceKind::*;
    match kind {
        Physical | Bond | Vlan => 0,
        Bridge => 1,
        Veth => 2,
        Virtual => 3,
        Tunnel => 4,
    }
}

fn is_usable_address(ip: IpAddr) -> bool {
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    !ip.is_loopback() && !ip.is_unspecified() && !link_local
}

/// Address number `n` of `cidr` (0 is the network address), if the range is that large.
pub fn nth_address(cidr: &Cidr, n: u128) -> Option<IpAddr> {
    let net = cidr.net();
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    if host_bits < 128 && n >> host_bits != 0 {
        return None;
    }
    offset_address(net.network(), n)
}

/// The `kubernetes` service's address: the first of the service range.
pub fn kubernetes_service_ip(service_cidr: &Cidr) -> IpAddr {
    nth_address(service_cidr, 1).expect("a CIDR holds at least 16 addresses")
}

/// The cluster DNS service's address: the 10th of the service range.
pub fn cluster_dns_ip(service_cidr: &Cidr) -> IpAddr {
    nth_address(service_cidr, 10).expect("a CIDR holds at least 16 addresses")
}

/// The `index`-th /24 (IPv4) or /64 (IPv6) of the pod CIDR, if there is one: the pod subnet of
/// the node the controller gave `index`.
pub fn pod_subnet(pod_cidr: &Cidr, index: usize) -> Option<Cidr> {
    let net = pod_cidr.net();
    let max = net.max_prefix_len();
    let prefix: u8 = if max == 32 { 24 } else { 64 };
    let subnet_bits = prefix.checked_sub(net.prefix_len())?;
    let index = u128::try_from(index).ok()?;
    if index >> subnet_bits != 0 {
        return None;
    }
    let network = offset_address(net.network(), index << (max - prefix))?;
    format!("{network}/{prefix}").parse().ok()
}

/// How many node subnets the pod CIDR holds (see [`pod_subnet`]), at most `u32::MAX`.
pub fn pod_subnet_count(pod_cidr: &Cidr) -> u32 {
    let net = pod_cidr.net();
    let prefix: u8 = if net.max_prefix_len() == 32 { 24 } else { 64 };
    match prefix.checked_sub(net.prefix_len()) {
        None => 0,
        Some(bits) if bits >= 32 => u32::MAX,
        Some(bits) => 1 << bits,
    }
}

fn offset_address(ip: IpAddr, n: u128) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) => u32::try_from(n)
            .ok()
            .and_then(|n| u32::from(v4).checked_add(n))
            .map(|v| IpAddr::V4(v.into())),
        IpAddr::V6(v6) => u128::from(v6).checked_add(n).map(|v| IpAddr::V6(v.into())),
    }
}

/// Every command-line difference between the supported Kubernetes versions, decided here and
/// nowhere else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct VersionFlags {
    /// kube-apiserver `--insecure-port=0`, kube-controller-manager and kube-scheduler
    /// `--port=0`: the insecure ports exist up to 1.23 (the flags are gone in 1.24).
    disable_insecure_ports: bool,
    /// kubelet `--container-runtime=remote`: up to 1.26 (removed in 1.27; the endpoint flag
    /// stays).
    kubelet_container_runtime: bool,
    /// kubelet `--network-plugin=cni` and its `--cni-bin-dir`/`--cni-conf-dir`: up to 1.23
    /// (removed with dockershim in 1.24).
    kubelet_network_plugin: bool,
    /// HTTP probes of `/healthz` on the controller-manager's and scheduler's secure ports: from
    /// 1.21, whose delegated authorization always allows the health paths; TCP before.
    secure_port_http_probes: bool,
}

impl VersionFlags {
    fn for_minor(minor: u32) -> Self {
        Self {
            disable_insecure_ports: minor <= 23,
            kubelet_container_runtime: minor <= 26,
            kubelet_network_plugin: minor <= 23,
            secure_port_http_probes: minor >= 21,
        }
    }
}

/// What every component needs to know, checked once.
struct Context<'a> {
    cluster: &'a ClusterInput,
    node: &'a NodeInput,
    pki: &'a ClusterPki,
    certs: &'a NodeCerts,
    flags: VersionFlags,
    /// Every node of the cluster, this one included.
    nodes: &'a [NodeInput],
    /// The masters' API servers in the order this node's balancer tries them.
    api_servers: Vec<SocketAddr>,
}

impl<'a> Context<'a> {
    fn new(
        cluster: &'a ClusterInput,
        nodes: &'a [NodeInput],
        id: NodeId,
        pki: &'a ClusterPki,
        certs: &'a NodeCerts,
    ) -> Result<Self, RenderError> {
        let mut sorted: Vec<&NodeInput> = nodes.iter().collect();
        sorted.sort_by_key(|n| n.id);
        let node = *sorted
            .iter()
            .find(|n| n.id == id)
            .ok_or(RenderError::UnknownNode(id))?;
        if cluster.bundle.artifact(artifact::ETCD).is_none() {
            return Err(RenderError::NoEtcd);
        }
        if cluster.bundle.kubernetes_version != cluster.version {
            return Err(RenderError::BundleVersion {
                bundle: cluster.bundle.kubernetes_version.clone(),
                cluster: cluster.version.clone(),
            });
        }
        let (_, minor, _) = cluster.version.release();
        if minor < MIN_MINOR {
            return Err(RenderError::UnsupportedVersion(cluster.version.clone()));
        }
        check_etcd_bootstrap(node)?;
        Ok(Self {
            cluster,
            node,
            pki,
            certs,
            flags: VersionFlags::for_minor(minor),
            nodes,
            api_servers: api_servers(&sorted, node),
        })
    }

    fn ships(&self, name: &str) -> bool {
        self.cluster.bundle.artifact(name).is_some()
    }

    fn is_master(&self) -> bool {
        self.node.role == NodeRole::Master
    }

    fn name(&self) -> &str {
        self.node.name.as_str()
    }

    /// The balancer in front of the masters' API servers, for kubelets and kube-proxies.
    fn api_balancer(&self) -> Result<ApiBalancer, RenderError> {
        if self.api_servers.is_empty() {
            return Err(RenderError::NoMaster);
        }
        Ok(ApiBalancer {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ports::API_BALANCER),
            upstreams: self.api_servers.clone(),
        })
    }
}

/// The masters' API servers in the order `node`'s balancer tries them: a master's own first, then
/// the others by node id; a worker starts at the master its place among the nodes gives, so that
/// workers spread over the masters. `sorted` is every node by id.
fn api_servers(sorted: &[&NodeInput], node: &NodeInput) -> Vec<SocketAddr> {
    let mut masters: Vec<&NodeInput> = sorted
        .iter()
        .copied()
        .filter(|n| n.role == NodeRole::Master)
        .collect();
    if let Some(own) = masters.iter().position(|m| m.id == node.id) {
        let own = masters.remove(own);
        masters.insert(0, own);
    } else if !masters.is_empty() {
        let place = sorted.iter().position(|n| n.id == node.id).unwrap_or(0);
        let count = masters.len();
        masters.rotate_left(place % count);
    }
    masters
        .iter()
        .map(|m| SocketAddr::new(m.address, ports::APISERVER))
        .collect()
}

/// Masters need an etcd bootstrap that lists them; workers must not have one.
fn check_etcd_bootstrap(node: &NodeInput) -> Result<(), RenderError> {
    match (node.role, &node.etcd) {
        (NodeRole::Master, None) => Err(RenderError::MasterWithoutEtcd {
            node: node.name.clone(),
        }),
        (NodeRole::Worker, Some(_)) => Err(RenderError::WorkerWithEtcd {
            node: node.name.clone(),
        }),
        (NodeRole::Master, Some(bootstrap))
            if !bootstrap
                .initial_cluster
                .iter()
                .any(|(name, address)| name == node.name.as_str() && *address == node.address) =>
        {
            Err(RenderError::NotInInitialCluster {
                node: node.name.clone(),
                address: node.address,
            })
        }
        _ => Ok(()),
    }
}

/// The plan being assembled; files and artifacts shared by components appear once.
#[derive(Default)]
struct Parts {
    artifacts: BTreeMap<String, Artifact>,
    files: BTreeMap<String, PlanFile>,
    services: Vec<Service>,
    routes: Vec<Route>,
    cgroups: Vec<String>,
    endpoints: BTreeMap<String, SocketAddr>,
    api_balancer: Option<ApiBalancer>,
}

impl Parts {
    /// Installs the artifact `name` if the bundle ships it; its path.
    fn install(&mut self, ctx: &Context, name: &str) -> Option<String> {
        let shipped = ctx.cluster.bundle.artifact(name)?;
        let (path, mode) = paths::artifact(name)?;
        self.artifacts.insert(
            name.to_owned(),
            Artifact {
                name: name.to_owned(),
                sha256: Sha256Hex::try_from(shipped.sha256.as_str())
                    .expect("bundles are checked on import: their digests are hex"),
                size: shipped.size,
                path: host_path(&path),
                mode,
            },
        );
        Some(path)
    }

    /// Writes a root-owned file; its path.
    fn file(&mut self, path: &str, content: String, mode: u32) -> String {
        self.files.insert(
            path.to_owned(),
            PlanFile {
                path: host_path(path),
                content: content.into(),
                mode,
                owner: Owner::default(),
            },
        );
        path.to_owned()
    }

    /// Writes the node's certificate (0644) and key (0600) for `purpose`; their paths.
    fn cert(&mut self, ctx: &Context, purpose: CertPurpose) -> Result<[String; 2], RenderError> {
        let cert = ctx
            .certs
            .get(purpose)
            .ok_or_else(|| RenderError::MissingCert {
                node: ctx.node.name.clone(),
                purpose,
            })?;
        let (cert_path, key_path) = paths::cert_files(purpose);
        Ok([
            self.file(cert_path, cert.cert_pem.clone(), 0o644),
            self.file(key_path, cert.key_pem.clone(), 0o600),
        ])
    }

    /// The API balancer's URL; the node runs the balancer.
    fn api_balancer_url(&mut self, ctx: &Context) -> Result<String, RenderError> {
        let balancer = ctx.api_balancer()?;
        let url = https_url(balancer.listen.ip(), balancer.listen.port());
        self.api_balancer = Some(balancer);
        Ok(url)
    }

    /// Writes the certificate of a CA; its path.
    fn ca_cert(&mut self, ctx: &Context, authority: Authority) -> String {
        let cert = ctx.pki.authority(authority).cert_pem.clone();
        self.file(paths::ca_cert(authority), cert, 0o644)
    }

    fn into_plan(self, ctx: &Context) -> Plan {
        Plan {
            node_id: ctx.node.id,
            cluster_id: Some(ctx.cluster.id),
            generation: 0,
            artifacts: self.artifacts.into_values().collect(),
            files: self.files.into_values().collect(),
            services: self.services,
            // All of them on every node: a node that stopped being a master still has etcd's
            // data, and wiping a directory that does not exist costs nothing.
            state_dirs: paths::STATE_DIRS.iter().map(|d| host_path(d)).collect(),
            routes: self.routes,
            cgroups: self.cgroups.iter().map(|c| host_path(c)).collect(),
            endpoints: self.endpoints,
            api_balancer: self.api_balancer,
        }
    }
}

/// A command line: the program, then `--flag=value` arguments.
struct Command(Vec<String>);

impl Command {
    fn new(program: String) -> Self {
        Self(vec![program])
    }

    fn arg(mut self, flag: &str, value: impl std::fmt::Display) -> Self {
        self.0.push(format!("--{flag}={value}"));
        self
    }

    fn arg_if(self, condition: bool, flag: &str, value: impl std::fmt::Display) -> Self {
        if condition {
            self.arg(flag, value)
        } else {
            self
        }
    }
}

/// A supervised service, restarted whenever it exits.
fn service(
    name: &str,
    command: Command,
    probe: Option<Probe>,
    ports: Vec<PortSpec>,
    inputs: Vec<String>,
) -> Service {
    Service {
        name: service_name(name),
        command: command.0,
        env: BTreeMap::new(),
        restart: RestartPolicy::Always,
        probe,
        ports,
        inputs: inputs.iter().map(|i| host_path(i)).collect(),
        data_dirs: Vec::new(),
    }
}

/// A path of the plan. The renderer makes paths only from `paths` and from artifact names a
/// bundle's import checked (`[a-z0-9-]`), so each is absolute and free of `..`.
fn host_path(path: &str) -> HostPath {
    HostPath::try_from(path).expect("the renderer's paths are absolute, without ..")
}

/// A service's name: the renderer's own, or `import-` and an image name a bundle's import
/// checked (`[a-z0-9-]`, at most 46 characters).
fn service_name(name: &str) -> ServiceName {
    ServiceName::try_from(name).expect("the renderer's service names are [a-z0-9-]")
}

/// etcd, on masters: TLS for clients and peers, client certificates required on both.
fn etcd(ctx: &Context, parts: &mut Parts) -> Result<(), RenderError> {
    let Some(bootstrap) = ctx.node.etcd.as_ref().filter(|_| ctx.is_master()) else {
        return Ok(());
    };
    let binary = parts
        .install(ctx, artifact::ETCD)
        .ok_or(RenderError::NoEtcd)?;
    let ca = parts.ca_cert(ctx, Authority::Etcd);
    let [server_cert, server_key] = parts.cert(ctx, CertPurpose::EtcdServer)?;
    let [peer_cert, peer_key] = parts.cert(ctx, CertPurpose::EtcdPeer)?;
    let [probe_cert, probe_key] = parts.cert(ctx, CertPurpose::EtcdHealthcheckClient)?;

    let address = ctx.node.address;
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut listen_client = vec![etcd_client_url(address)];
    if address != loopback {
        listen_client.push(etcd_client_url(loopback));
    }
    let mut members = bootstrap.initial_cluster.clone();
    members.sort();
    let initial_cluster = members
        .iter()
        .map(|(name, address)| format!("{name}={}", etcd_peer_url(*address)))
        .collect::<Vec<_>>()
        .join(",");

    let command = Command::new(binary.clone())
        .arg("name", ctx.name())
        .arg("data-dir", paths::ETCD_DATA_DIR)
        .arg("listen-client-urls", listen_client.join(","))
        .arg("advertise-client-urls", etcd_client_url(address))
        .arg("listen-peer-urls", etcd_peer_url(address))
        .arg("initial-advertise-peer-urls", etcd_peer_url(address))
        .arg("initial-cluster", initial_cluster)
        .arg("initial-cluster-state", bootstrap.state.as_str())
        .arg("initial-cluster-token", ctx.cluster.id)
        // A member cut off from the others keeps starting elections, each with a higher term;
        // without pre-vote (off by default before etcd 3.5) its return deposes the leader of
        // the members that kept quorum, and none of them answers until a new one is elected.
        .arg("pre-vote", true)
        .arg("client-cert-auth", true)
        .arg("trusted-ca-file", &ca)
        .arg("cert-file", &server_cert)
        .arg("key-file", &server_key)
        .arg("peer-client-cert-auth", true)
        .arg("peer-trusted-ca-file", &ca)
        .arg("peer-cert-file", &peer_cert)
        .arg("peer-key-file", &peer_key)
        .arg(
            "listen-metrics-urls",
            format!("http://{}", SocketAddr::new(loopback, ports::ETCD_METRICS)),
        );
    let probe = Probe::Http {
        url: format!("{}/health", etcd_client_url(loopback)),
        ca_file: Some(ca.clone()),
        cert_file: Some(probe_cert),
        key_file: Some(probe_key),
    };
    // A member's data is its identity in etcd: a master demoted (its member removed) and
    // promoted again must join as a new member, from nothing.
    parts.services.push(Service {
        data_dirs: vec![host_path(paths::ETCD_DATA_DIR)],
        ..service(
            "etcd",
            command,
            Some(probe),
            vec![tcp(ports::ETCD_CLIENT), tcp(ports::ETCD_PEER)],
            vec![binary, ca, server_cert, server_key, peer_cert, peer_key],
        )
    });
    Ok(())
}

/// kube-apiserver, on masters: its local etcd member, Node and RBAC authorization, no anonymous
/// access, aggregation through the front proxy, service-account tokens.
fn kube_apiserver(ctx: &Context, parts: &mut Parts) -> Result<(), RenderError> {
    if !ctx.is_master() {
        return Ok(());
    }
    let Some(binary) = parts.install(ctx, artifact::APISERVER) else {
        return Ok(());
    };
    let ca = parts.ca_cert(ctx, Authority::Cluster);
    let etcd_ca = parts.ca_cert(ctx, Authority::Etcd);
    let front_proxy_ca = parts.ca_cert(ctx, Authority::FrontProxy);
    let [cert, key] = parts.cert(ctx, CertPurpose::Apiserver)?;
    let [etcd_cert, etcd_key] = parts.cert(ctx, CertPurpose::ApiserverEtcdClient)?;
    let [kubelet_cert, kubelet_key] = parts.cert(ctx, CertPurpose::ApiserverKubeletClient)?;
    let [proxy_cert, proxy_key] = parts.cert(ctx, CertPurpose::FrontProxyClient)?;
    let [probe_cert, probe_key] = parts.cert(ctx, CertPurpose::ApiserverHealthcheckClient)?;
    let (sa_key, sa_pub) = service_account_keys(ctx, parts);

    let command = Command::new(binary.clone())
        .arg("advertise-address", ctx.node.address)
        .arg("allow-privileged", true)
        .arg("anonymous-auth", false)
        .arg("authorization-mode", "Node,RBAC")
        .arg("client-ca-file", &ca)
        .arg("enable-admission-plugins", "NodeRestriction")
        .arg("etcd-cafile", &etcd_ca)
        .arg("etcd-certfile", &etcd_cert)
        .arg("etcd-keyfile", &etcd_key)
        .arg(
            "etcd-servers",
            etcd_client_url(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        )
        .arg_if(ctx.flags.disable_insecure_ports, "insecure-port", 0)
        .arg("kubelet-certificate-authority", &ca)
        .arg("kubelet-client-certificate", &kubelet_cert)
        .arg("kubelet-client-key", &kubelet_key)
        .arg("kubelet-preferred-address-types", "InternalIP,Hostname")
        .arg("proxy-client-cert-file", &proxy_cert)
        .arg("proxy-client-key-file", &proxy_key)
        .arg("requestheader-allowed-names", "front-proxy-client")
        .arg("requestheader-client-ca-file", &front_proxy_ca)
        .arg("requestheader-extra-headers-prefix", "X-Remote-Extra-")
        .arg("requestheader-group-headers", "X-Remote-Group")
        .arg("requestheader-username-headers", "X-Remote-User")
        .arg("secure-port", ports::APISERVER)
        .arg("service-account-issuer", SERVICE_ACCOUNT_ISSUER)
        .arg("service-account-key-file", &sa_pub)
        .arg("service-account-signing-key-file", &sa_key)
        .arg("service-cluster-ip-range", ctx.cluster.service_cidr)
        .arg("tls-cert-file", &cert)
        .arg("tls-private-key-file", &key);
    let probe = Probe::Http {
        url: format!(
            "{}/readyz",
            https_url(IpAddr::V4(Ipv4Addr::LOCALHOST), ports::APISERVER)
        ),
        ca_file: Some(ca.clone()),
        cert_file: Some(probe_cert),
        key_file: Some(probe_key),
    };
    // The controller reaches this API server through the agent's tunnel, and nothing else.
    parts.endpoints.insert(
        KUBE_APISERVER_ENDPOINT.to_owned(),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ports::APISERVER),
    );
    parts.services.push(service(
        "kube-apiserver",
        command,
        Some(probe),
        vec![tcp(ports::APISERVER)],
        vec![
            binary,
            ca,
            etcd_ca,
            front_proxy_ca,
            cert,
            key,
            etcd_cert,
            etcd_key,
            kubelet_cert,
            kubelet_key,
            proxy_cert,
            proxy_key,
            sa_key,
            sa_pub,
        ],
    ));
    Ok(())
}

/// Writes the service-account key pair; the paths of the private and the public key.
fn service_account_keys(ctx: &Context, parts: &mut Parts) -> (String, String) {
    (
        parts.file(
            paths::SA_KEY,
            ctx.pki.service_account_key_pem.clone(),
            0o600,
        ),
        parts.file(
            paths::SA_PUB,
            ctx.pki.service_account_pub_pem.clone(),
            0o644,
        ),
    )
}

/// kube-controller-manager, on masters: allocates node pod CIDRs and signs kubelet CSRs with
/// the cluster CA's key (the one component that gets it).
fn kube_controller_manager(ctx: &Context, parts: &mut Parts) -> Result<(), RenderError> {
    if !ctx.is_master() {
        return Ok(());
    }
    let Some(binary) = parts.install(ctx, artifact::CONTROLLER_MANAGER) else {
        return Ok(());
    };
    let ca = parts.ca_cert(ctx, Authority::Cluster);
    let ca_key = parts.file(paths::CA_KEY, ctx.pki.ca.key_pem.clone(), 0o600);
    let front_proxy_ca = parts.ca_cert(ctx, Authority::FrontProxy);
    let [client_cert, client_key] = parts.cert(ctx, CertPurpose::ControllerManagerClient)?;
    let [serving_cert, serving_key] = parts.cert(ctx, CertPurpose::ControllerManagerServing)?;
    let (sa_key, _) = service_account_keys(ctx, parts);
    let kubeconfig = parts.file(
        paths::CONTROLLER_MANAGER_KUBECONFIG,
        kubeconfig(
            ctx,
            &local_api_server_url(),
            "system:kube-controller-manager",
            &client_cert,
            &client_key,
        ),
        0o600,
    );

    let command = Command::new(binary.clone())
        // The controller gives each node its pod subnet (CNI configuration and routes).
        .arg("allocate-node-cidrs", false)
        .arg("authentication-kubeconfig", &kubeconfig)
        .arg("authorization-kubeconfig", &kubeconfig)
        .arg("bind-address", Ipv4Addr::LOCALHOST)
        .arg("client-ca-file", &ca)
        .arg("cluster-cidr", ctx.cluster.pod_cidr)
        .arg("cluster-name", &ctx.cluster.name)
        .arg("cluster-signing-cert-file", &ca)
        .arg("cluster-signing-key-file", &ca_key)
        .arg("kubeconfig", &kubeconfig)
        .arg("leader-elect", true)
        .arg_if(ctx.flags.disable_insecure_ports, "port", 0)
        .arg("requestheader-client-ca-file", &front_proxy_ca)
        .arg("root-ca-file", &ca)
        .arg("secure-port", ports::CONTROLLER_MANAGER)
        .arg("service-account-private-key-file", &sa_key)
        .arg("service-cluster-ip-range", ctx.cluster.service_cidr)
        .arg("tls-cert-file", &serving_cert)
        .arg("tls-private-key-file", &serving_key)
        .arg("use-service-account-credentials", true);
    parts.services.push(service(
        "kube-controller-manager",
        command,
        Some(secure_port_probe(ctx, ports::CONTROLLER_MANAGER, &ca)),
        vec![tcp(ports::CONTROLLER_MANAGER)],
        vec![
            binary,
            kubeconfig,
            ca,
            ca_key,
            front_proxy_ca,
            client_cert,
            client_key,
            serving_cert,
            serving_key,
            sa_key,
        ],
    ));
    Ok(())
}

/// kube-scheduler, on masters.
fn kube_scheduler(ctx: &Context, parts: &mut Parts) -> Result<(), RenderError> {
    if !ctx.is_master() {
        return Ok(());
    }
    let Some(binary) = parts.install(ctx, artifact::SCHEDULER) else {
        return Ok(());
    };
    let ca = parts.ca_cert(ctx, Authority::Cluster);
    let [client_cert, client_key] = parts.cert(ctx, CertPurpose::SchedulerClient)?;
    let [serving_cert, serving_key] = parts.cert(ctx, CertPurpose::SchedulerServing)?;
    let kubeconfig = parts.file(
        paths::SCHEDULER_KUBECONFIG,
        kubeconfig(
            ctx,
            &local_api_server_url(),
            "system:kube-scheduler",
            &client_cert,
            &client_key,
        ),
        0o600,
    );

    let command = Command::new(binary.clone())
        .arg("authentication-kubeconfig", &kubeconfig)
        .arg("authorization-kubeconfig", &kubeconfig)
        .arg("bind-address", Ipv4Addr::LOCALHOST)
        .arg("kubeconfig", &kubeconfig)
        .arg("leader-elect", true)
        .arg_if(ctx.flags.disable_insecure_ports, "port", 0)
        .arg("secure-port", ports::SCHEDULER)
        .arg("tls-cert-file", &serving_cert)
        .arg("tls-private-key-file", &serving_key);
    parts.services.push(service(
        "kube-scheduler",
        command,
        Some(secure_port_probe(ctx, ports::SCHEDULER, &ca)),
        vec![tcp(ports::SCHEDULER)],
        vec![
            binary,
            kubeconfig,
            ca,
            client_cert,
            client_key,
            serving_cert,
            serving_key,
        ],
    ));
    Ok(())
}

/// On masters with an API server: the administrator's certificate and a kubeconfig for the
/// local API server, used by the agent for node operations.
fn admin(ctx: &Context, parts: &mut Parts) -> Result<(), RenderError> {
    if !(ctx.is_master() && ctx.ships(artifact::APISERVER)) {
        return Ok(());
    }
    let [cert, key] = parts.cert(ctx, CertPurpose::Admin)?;
    parts.ca_cert(ctx, Authority::Cluster);
    let local = https_url(IpAddr::V4(Ipv4Addr::LOCALHOST), ports::APISERVER);
    parts.file(
        paths::ADMIN_KUBECONFIG,
        kubeconfig(ctx, &local, "qb-admin", &cert, &key),
        0o600,
    );
    Ok(())
}

/// The probe of a controller-manager's or scheduler's secure port on 127.0.0.1 (see
/// [`VersionFlags::secure_port_http_probes`]).
fn secure_port_probe(ctx: &Context, port: u16, ca: &str) -> Probe {
    let address = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    if ctx.flags.secure_port_http_probes {
        Probe::Http {
            url: format!("https://{address}/healthz"),
            ca_file: Some(ca.to_owned()),
            cert_file: None,
            key_file: None,
        }
    } else {
        Probe::Tcp {
            address: address.to_string(),
        }
    }
}

/// containerd with its CRI plugin, its runc shim and runc, everything under qb's own
/// directories and socket. No probe: it listens on a unix socket only.
fn containerd(ctx: &Context, parts: &mut Parts) {
    let Some(binary) = parts.install(ctx, artifact::CONTAINERD) else {
        return;
    };
    for name in [artifact::CONTAINERD_SHIM, artifact::RUNC] {
        parts.install(ctx, name);
    }
    let config = parts.file(paths::CONTAINERD_CONFIG, containerd_config(ctx), 0o644);
    // Every container and shim of the node lives in its cgroup, which the agent creates here
    // and empties when the node leaves the cluster.
    parts.cgroups.push(kubelet_cgroup_root(ctx));
    parts.cgroups.push(shim_cgroup(ctx));
    let command = Command::new(binary.clone()).arg("config", &config);
    let probe = Probe::Unix {
        path: paths::CONTAINERD_SOCKET.to_owned(),
    };
    let mut containerd = service(
        "containerd",
        command,
        Some(probe),
        Vec::new(),
        vec![binary, config],
    );
    // containerd finds its shim on the PATH.
    containerd.env.insert(
        "PATH".to_owned(),
        format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            paths::BIN_DIR
        ),
    );
    parts.services.push(containerd);
    import_images(ctx, parts);
}

/// One task per image the bundle ships (the pause image and `image-*`): `ctr images import`
/// into containerd's `k8s.io` namespace, where the kubelet finds them, run again whenever an
/// image of it is gone. Needs the bundle's `ctr`.
fn import_images(ctx: &Context, parts: &mut Parts) {
    let images: Vec<&str> = ctx
        .cluster
        .bundle
        .artifacts
        .iter()
        .map(|a| a.name.as_str())
        .filter(|name| *name == artifact::PAUSE_IMAGE || name.starts_with(qb_api::IMAGE_PREFIX))
        .collect();
    if images.is_empty() {
        return;
    }
    let Some(ctr) = parts.install(ctx, artifact::CTR) else {
        return;
    };
    for name in images {
        let Some(image) = parts.install(ctx, name) else {
            continue;
        };
        let command = vec![
            ctr.clone(),
            "--address".to_owned(),
            paths::CONTAINERD_SOCKET.to_owned(),
            "--namespace".to_owned(),
            "k8s.io".to_owned(),
            "images".to_owned(),
            "import".to_owned(),
            image.clone(),
        ];
        // Checked again while the plan stands: the kubelet deletes unused images when the
        // disk runs short.
        let probe = Probe::Images {
            ctr: host_path(&ctr),
            address: host_path(paths::CONTAINERD_SOCKET),
            namespace: "k8s.io".to_owned(),
            archive: host_path(&image),
        };
        parts.services.push(Service {
            name: service_name(&format!("import-{name}")),
            command,
            env: BTreeMap::new(),
            restart: RestartPolicy::Never,
            probe: Some(probe),
            ports: Vec::new(),
            inputs: vec![host_path(&ctr), host_path(&image)],
            data_dirs: Vec::new(),
        });
    }
}

fn containerd_config(ctx: &Context) -> String {
    let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
    format!(
        r#"version = 2
root = {root}
state = {state}

[grpc]
  address = {socket}

[{cri}]
  sandbox_image = {sandbox}
  restrict_oom_score_adj = true

[{cri}.cni]
  bin_dir = {cni_bin}
  conf_dir = {cni_conf}

[{cri}.containerd]
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = {runc}
  Root = {runc_root}
  ShimCgroup = {shim_cgroup}
"#,
        root = quote(paths::CONTAINERD_ROOT_DIR),
        state = quote(paths::CONTAINERD_STATE_DIR),
        socket = quote(paths::CONTAINERD_SOCKET),
        sandbox = quote(SANDBOX_IMAGE),
        cni_bin = quote(paths::CNI_BIN_DIR),
        cni_conf = quote(paths::CNI_CONF_DIR),
        runc = quote(&format!("{}/{}", paths::BIN_DIR, artifact::RUNC)),
        runc_root = quote(paths::RUNC_ROOT),
        shim_cgroup = quote(&shim_cgroup(ctx)),
    )
}

/// The CNI plugins and the network configuration: a bridge `qb0` on the node's pod subnet
/// (host-local IPAM), port mappings, loopback.
fn cni(ctx: &Context, parts: &mut Parts) -> Result<(), RenderError> {
    if !ctx.ships(artifact::CNI_BRIDGE) {
        return Ok(());
    }
    for name in artifact::CNI_PLUGINS {
        parts.install(ctx, name);
    }
    for node in ctx.nodes {
        for range in [ctx.cluster.pod_cidr, ctx.cluster.service_cidr] {
            if range.net().contains(&node.address) {
                return Err(RenderError::AddressInClusterRange {
                    node: node.name.clone(),
                    address: node.address,
                    range,
                });
            }
        }
        let (pod_cidr, subnet) = (ctx.cluster.pod_cidr.net(), node.pod_subnet.net());
        if !(pod_cidr.contains(&subnet.network()) && subnet.prefix_len() >= pod_cidr.prefix_len()) {
            return Err(RenderError::PodSubnet {
                node: node.name.clone(),
                subnet: node.pod_subnet,
                pod_cidr: ctx.cluster.pod_cidr,
            });
        }
        if node.id != ctx.node.id {
            parts.routes.push(Route {
                destination: node.pod_subnet.net(),
                via: node.address,
            });
        }
    }
    parts.routes.sort();
    let subnet = ctx.node.pod_subnet;
    let default_route = if subnet.net().max_prefix_len() == 32 {
        "0.0.0.0/0"
    } else {
        "::/0"
    };
    let conflist = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "qb",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "qb0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": paths::CNI_IPAM_DATA_DIR,
                    "ranges": [[{ "subnet": subnet.to_string() }]],
                    "routes": [{ "dst": default_route }],
                },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
            { "type": "loopback" },
        ],
    });
    let text = serde_json::to_string_pretty(&conflist).expect("JSON values always serialize");
    parts.file(paths::CNI_CONFLIST, format!("{text}\n"), 0o644);
    Ok(())
}

/// The kubelet, on every node: a native process, its config file, containerd's socket.
fn kubelet(ctx: &Context, parts: &mut Parts) -> Result<(), RenderError> {
    let Some(binary) = parts.install(ctx, artifact::KUBELET) else {
        return Ok(());
    };
    let ca = parts.ca_cert(ctx, Authority::Cluster);
    let [cert, key] = parts.cert(ctx, CertPurpose::Kubelet)?;
    let server = parts.api_balancer_url(ctx)?;
    let kubeconfig = parts.file(
        paths::KUBELET_KUBECONFIG,
        kubeconfig(
            ctx,
            &server,
            &format!("system:node:{}", ctx.name()),
            &cert,
            &key,
        ),
        0o600,
    );
    let config = parts.file(paths::KUBELET_CONFIG, kubelet_config(ctx), 0o644);

    let network_plugin = ctx.flags.kubelet_network_plugin;
    let command = Command::new(binary.clone())
        .arg("config", &config)
        .arg("kubeconfig", &kubeconfig)
        .arg("root-dir", paths::KUBELET_ROOT_DIR)
        .arg("hostname-override", ctx.name())
        .arg("node-ip", ctx.node.address)
        .arg_if(
            ctx.flags.kubelet_container_runtime,
            "container-runtime",
            "remote",
        )
        .arg(
            "container-runtime-endpoint",
            format!("unix://{}", paths::CONTAINERD_SOCKET),
        )
        .arg_if(network_plugin, "network-plugin", "cni")
        .arg_if(network_plugin, "cni-bin-dir", paths::CNI_BIN_DIR)
        .arg_if(network_plugin, "cni-conf-dir", paths::CNI_CONF_DIR);
    let probe = Probe::Http {
        url: format!(
            "http://{}/healthz",
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ports::KUBELET_HEALTHZ)
        ),
        ca_file: None,
        cert_file: None,
        key_file: None,
    };
    parts.services.push(service(
        "kubelet",
        command,
        Some(probe),
        vec![tcp(ports::KUBELET)],
        vec![binary, config, kubeconfig, ca, cert, key],
    ));
    Ok(())
}

/// The KubeletConfiguration: x509 and webhook authentication (no anonymous access), webhook
/// authorization, cgroupfs under `/qb/<node name>` (so several kubelets can share a machine),
/// swap tolerated, cluster DNS at the 10th service address.
fn kubelet_config(ctx: &Context) -> String {
    format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
clusterDNS:
  - {dns}
clusterDomain: {domain}
# Evict pods when the host runs short, in absolute terms: the percentages kubelet defaults to
# (10 % of the disk free) taint a big, well-used disk with plenty of room left.
evictionHard:
  memory.available: \"200Mi\"
  nodefs.available: \"2Gi\"
  nodefs.inodesFree: \"5%\"
  imagefs.available: \"2Gi\"
# Pods come back a minute after the disk has room again, not the default five: qb's control
# plane runs outside pods, so only workloads wait, and a minute still keeps a node hovering
# around a threshold from flapping.
evictionPressureTransitionPeriod: \"1m\"
failSwapOn: false
# Images go only when the disk is really short (the eviction threshold above), never because a
# big disk is 85 % used: the bundle's images (the pause image among them) cannot be pulled
# again, and a node whose pause image is gone starts no pod.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
healthzBindAddress: \"127.0.0.1\"
healthzPort: {healthz_port}
port: {port}
tlsCertFile: {cert}
tlsPrivateKeyFile: {key}
",
        ca = quote(paths::CA_CERT),
        cgroup_root = quote(&kubelet_cgroup_root(ctx)),
        dns = quote(&cluster_dns_ip(&ctx.cluster.service_cidr).to_string()),
        domain = quote(CLUSTER_DOMAIN),
        healthz_port = ports::KUBELET_HEALTHZ,
        port = ports::KUBELET,
        cert = quote(paths::KUBELET_CERT),
        key = quote(paths::KUBELET_KEY),
    )
}

/// The kubelet's cgroup, under which it puts every pod: `/qb/<node name>`.
fn kubelet_cgroup_root(ctx: &Context) -> String {
    format!("/qb/{}", ctx.name())
}

/// Where containerd puts its runc shims: beside the pods, `/qb/<node name>/shims`.
fn shim_cgroup(ctx: &Context) -> String {
    format!("{}/shims", kubelet_cgroup_root(ctx))
}

/// kube-proxy, on every node: iptables mode.
fn kube_proxy(ctx: &Context, parts: &mut Parts) -> Result<(), RenderError> {
    let Some(binary) = parts.install(ctx, artifact::KUBE_PROXY) else {
        return Ok(());
    };
    let ca = parts.ca_cert(ctx, Authority::Cluster);
    let [cert, key] = parts.cert(ctx, CertPurpose::KubeProxy)?;
    let server = parts.api_balancer_url(ctx)?;
    let kubeconfig = parts.file(
        paths::KUBE_PROXY_KUBECONFIG,
        kubeconfig(ctx, &server, "system:kube-proxy", &cert, &key),
        0o600,
    );
    let config = parts.file(paths::KUBE_PROXY_CONFIG, kube_proxy_config(ctx), 0o644);
    let command = Command::new(binary.clone()).arg("config", &config);
    let probe = Probe::Http {
        url: format!(
            "http://{}/healthz",
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ports::KUBE_PROXY_HEALTHZ)
        ),
        ca_file: None,
        cert_file: None,
        key_file: None,
    };
    parts.services.push(service(
        "kube-proxy",
        command,
        Some(probe),
        vec![tcp(ports::KUBE_PROXY_HEALTHZ)],
        vec![binary, config, kubeconfig, ca, cert, key],
    ));
    Ok(())
}

fn kube_proxy_config(ctx: &Context) -> String {
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
clusterCIDR: {cluster_cidr}
healthzBindAddress: {healthz}
hostnameOverride: {hostname}
metricsBindAddress: {metrics}
mode: iptables
# Conntrack sizing and timeouts are the host's own: kube-proxy leaves the sysctls alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpCloseWaitTimeout: 0s
  tcpEstablishedTimeout: 0s
",
        kubeconfig = quote(paths::KUBE_PROXY_KUBECONFIG),
        cluster_cidr = quote(&ctx.cluster.pod_cidr.to_string()),
        healthz = quote(&format!("0.0.0.0:{}", ports::KUBE_PROXY_HEALTHZ)),
        hostname = quote(ctx.name()),
        metrics = quote(&format!("127.0.0.1:{}", ports::KUBE_PROXY_METRICS)),
    )
}

/// A kubeconfig for `user`, trusting the cluster CA and presenting the given certificate files.
fn kubeconfig(ctx: &Context, server: &str, user: &str, cert: &str, key: &str) -> String {
    Kubeconfig {
        cluster: ctx.cluster.name.clone(),
        server: server.to_owned(),
        ca: TrustedCa::File(paths::CA_CERT.to_owned()),
        user: user.to_owned(),
        credentials: Credentials::ClientCertificate {
            cert: cert.to_owned(),
            key: key.to_owned(),
        },
        context: None,
    }
    .to_yaml()
}

/// The node's own API server, for the components next to it.
fn local_api_server_url() -> String {
    https_url(IpAddr::V4(Ipv4Addr::LOCALHOST), ports::APISERVER)
}

fn https_url(address: IpAddr, port: u16) -> String {
    format!("https://{}", SocketAddr::new(address, port))
}

fn tcp(port: u16) -> PortSpec {
    PortSpec::tcp(port)
}

fn udp(port: u16) -> PortSpec {
    PortSpec::udp(port)
}

/// Inputs shared by the tests of this crate.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::net::IpAddr;

    use qb_api::{BundleArtifact, BundleManifest, ClusterId, KNOWN_ARTIFACTS, NodeId, NodeRole};
    use sha2::{Digest, Sha256};

    use super::{ClusterInput, EtcdBootstrap, InitialClusterState, NodeInput};

    /// A bundle of `version` shipping `names`, with checksums derived from the names.
    pub fn bundle(version: &str, names: &[&str]) -> BundleManifest {
        BundleManifest {
            kubernetes_version: version.parse().unwrap(),
            artifacts: names
                .iter()
                .map(|name| BundleArtifact {
                    name: (*name).to_owned(),
                    version: "1.0.0".to_owned(),
                    sha256: hex::encode(Sha256::digest(name.as_bytes())),
                    size: name.len() as u64 * 1000,
                    file: None,
                })
                .collect(),
        }
    }

    pub fn full_bundle(version: &str) -> BundleManifest {
        bundle(version, KNOWN_ARTIFACTS)
    }

    pub fn etcd_only_bundle(version: &str) -> BundleManifest {
        bundle(version, &["etcd"])
    }

    pub fn cluster(bundle: BundleManifest) -> ClusterInput {
        ClusterInput {
            id: ClusterId("0190c0de-0000-7000-8000-00000000c105".parse().unwrap()),
            name: "demo".to_owned(),
            version: bundle.kubernetes_version.clone(),
            pod_cidr: "10.244.0.0/16".parse().unwrap(),
            service_cidr: "10.96.0.0/12".parse().unwrap(),
            bundle,
        }
    }

    pub fn node_id(n: u8) -> NodeId {
        format!("0190c0de-0000-7000-8000-0000000000{n:02x}")
            .parse()
            .unwrap()
    }

    pub fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    pub fn master(n: u8, name: &str, address: &str) -> NodeInput {
        NodeInput {
            id: node_id(n),
            name: name.parse().unwrap(),
            address: ip(address),
            role: NodeRole::Master,
            etcd: Some(EtcdBootstrap {
                initial_cluster: vec![(name.to_owned(), ip(address))],
                state: InitialClusterState::New,
            }),
            pod_subnet: subnet_of(n),
        }
    }

    pub fn worker(n: u8, name: &str, address: &str) -> NodeInput {
        NodeInput {
            id: node_id(n),
            name: name.parse().unwrap(),
            address: ip(address),
            role: NodeRole::Worker,
            etcd: None,
            pod_subnet: subnet_of(n),
        }
    }

    /// Node `n`'s pod subnet: `10.244.<n>.0/24`.
    pub fn subnet_of(n: u8) -> qb_api::Cidr {
        format!("10.244.{n}.0/24").parse().unwrap()
    }

    /// One master and two workers.
    pub fn nodes() -> Vec<NodeInput> {
        vec![
            master(1, "m1", "10.0.0.11"),
            worker(2, "w1", "10.0.0.12"),
            worker(3, "w2", "10.0.0.13"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use expect_test::expect_file;
    use qb_agent_proto::plan::Plan;

    use super::fixtures::{
        bundle, cluster, etcd_only_bundle, full_bundle, ip, master, node_id, nodes, worker,
    };
    use super::*;
    use crate::pki::issue_node_certs;

    /// Renders every node of `nodes`, with fresh PKI and certificates.
    fn render_all(cluster: &ClusterInput, nodes: &[NodeInput]) -> (ClusterPki, Vec<Plan>) {
        let pki = ClusterPki::generate(&cluster.name).unwrap();
        let plans = nodes
            .iter()
            .map(|node| {
                let certs = issue_node_certs(&pki, cluster, node).unwrap();
                render(cluster, nodes, node.id, &pki, &certs).unwrap()
            })
            .collect();
        (pki, plans)
    }

    fn render_node(cluster: &ClusterInput, nodes: &[NodeInput], index: usize) -> Plan {
        render_all(cluster, nodes).1.remove(index)
    }

    fn render_err(cluster: &ClusterInput, nodes: &[NodeInput], id: NodeId) -> RenderError {
        let pki = ClusterPki::generate(&cluster.name).unwrap();
        let node = nodes.iter().find(|n| n.id == id).unwrap_or(&nodes[0]);
        let certs = issue_node_certs(&pki, cluster, node).unwrap();
        render(cluster, nodes, id, &pki, &certs).unwrap_err()
    }

    fn service<'p>(plan: &'p Plan, name: &str) -> &'p Service {
        plan.services
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    fn file<'p>(plan: &'p Plan, path: &str) -> &'p PlanFile {
        plan.files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("no file {path}"))
    }

    fn has_arg(plan: &Plan, service_name: &str, arg: &str) -> bool {
        service(plan, service_name).command.iter().any(|a| a == arg)
    }

    /// PEM blocks (random) become a placeholder naming their label.
    fn redact(content: &str) -> String {
        match content.lines().next() {
            Some(first) if first.starts_with("-----BEGIN ") => {
                format!("<{}>", first.trim_matches('-').trim_start_matches("BEGIN "))
            }
            _ => content.to_owned(),
        }
    }

    /// A plan as text for snapshots: argv one per line, file contents inline.
    fn describe(plan: &Plan) -> String {
        let mut out = String::new();
        let cluster = plan.cluster_id.map(|c| c.to_string()).unwrap_or_default();
        writeln!(
            out,
            "node {} cluster {cluster} generation {}",
            plan.node_id, plan.generation
        )
        .unwrap();
        out.push_str("\nartifacts:\n");
        for a in &plan.artifacts {
            writeln!(
                out,
                "  {} -> {} ({:04o}, {} bytes, sha256 {}…)",
                a.name,
                a.path,
                a.mode,
                a.size,
                &a.sha256[..12]
            )
            .unwrap();
        }
        out.push_str("\nfiles:\n");
        for f in &plan.files {
            writeln!(
                out,
                "  {} ({:04o}, {}:{})",
                f.path, f.mode, f.owner.uid, f.owner.gid
            )
            .unwrap();
            for line in redact(f.content.expose()).lines() {
                writeln!(out, "    |{}{line}", if line.is_empty() { "" } else { " " }).unwrap();
            }
        }
        out.push_str("\nservices:\n");
        for s in &plan.services {
            writeln!(out, "  {} (restart {:?})", s.name, s.restart).unwrap();
            for (key, value) in &s.env {
                writeln!(out, "    env {key}={value}").unwrap();
            }
            for arg in &s.command {
                writeln!(out, "    {arg}").unwrap();
            }
            writeln!(out, "    probe: {:?}", s.probe).unwrap();
            let ports: Vec<String> = s.ports.iter().map(ToString::to_string).collect();
            let list = |items: &[String]| {
                if items.is_empty() {
                    "-".to_owned()
                } else {
                    items.join(" ")
                }
            };
            writeln!(out, "    ports: {}", list(&ports)).unwrap();
            let inputs: Vec<String> = s.inputs.iter().map(ToString::to_string).collect();
            writeln!(out, "    inputs: {}", list(&inputs)).unwrap();
        }
        writeln!(out, "\nroutes:").unwrap();
        for r in &plan.routes {
            writeln!(out, "  {} via {}", r.destination, r.via).unwrap();
        }
        writeln!(out, "\ncgroups: {}", plan.cgroups.join(" ")).unwrap();
        writeln!(out, "\nstate dirs: {}", plan.state_dirs.join(" ")).unwrap();
        if let Some(balancer) = &plan.api_balancer {
            let upstreams: Vec<String> =
                balancer.upstreams.iter().map(ToString::to_string).collect();
            writeln!(
                out,
                "\napi balancer: {} -> {}",
                balancer.listen,
                upstreams.join(" ")
            )
            .unwrap();
        }
        out
    }

    #[test]
    fn render_snapshot_of_a_full_master_and_worker_on_1_20() {
        let cluster = cluster(full_bundle("1.20.2"));
        let (_, plans) = render_all(&cluster, &nodes());
        expect_file!["snapshots/render_1.20.2_master.txt"].assert_eq(&describe(&plans[0]));
        expect_file!["snapshots/render_1.20.2_worker.txt"].assert_eq(&describe(&plans[2]));
    }

    #[test]
    fn render_snapshot_of_an_etcd_only_bundle() {
        let cluster = cluster(etcd_only_bundle("1.20.2"));
        let (_, plans) = render_all(&cluster, &nodes());
        expect_file!["snapshots/render_etcd_only_master.txt"].assert_eq(&describe(&plans[0]));
        // Workers have nothing to run, but their state directories are still theirs to wipe.
        let worker = &plans[1];
        assert!(worker.artifacts.is_empty() && worker.files.is_empty());
        assert!(worker.services.is_empty());
        assert_eq!(worker.state_dirs, paths::STATE_DIRS);
        assert_eq!(worker.cluster_id, Some(cluster.id));
    }

    #[test]
    fn render_is_deterministic_whatever_the_order_of_the_nodes() {
        let cluster = cluster(full_bundle("1.24.3"));
        let nodes = nodes();
        let pki = ClusterPki::generate("demo").unwrap();
        let certs = issue_node_certs(&pki, &cluster, &nodes[2]).unwrap();
        let plan = render(&cluster, &nodes, node_id(3), &pki, &certs).unwrap();
        let mut reversed = nodes.clone();
        reversed.reverse();
        let again = render(&cluster, &reversed, node_id(3), &pki, &certs).unwrap();
        assert_eq!(plan, again);
        assert_eq!(plan.generation, 0);
        assert_eq!(plan.node_id, node_id(3));
    }

    #[test]
    fn render_only_a_master_with_an_api_server_lets_the_controller_tunnel_to_it() {
        let (_, plans) = render_all(&cluster(full_bundle("1.20.2")), &nodes());
        let apiserver: SocketAddr = "127.0.0.1:6443".parse().unwrap();
        assert_eq!(
            plans[0].endpoints,
            BTreeMap::from([(KUBE_APISERVER_ENDPOINT.to_owned(), apiserver)])
        );
        assert!(plans[1..].iter().all(|worker| worker.endpoints.is_empty()));
        let (_, etcd_only) = render_all(&cluster(etcd_only_bundle("1.20.2")), &nodes());
        assert!(etcd_only.iter().all(|plan| plan.endpoints.is_empty()));
    }

    #[test]
    fn render_worker_plans_hold_no_ca_key_and_nothing_of_etcd() {
        let cluster = cluster(full_bundle("1.20.2"));
        let (pki, plans) = render_all(&cluster, &nodes());
        let secrets = [
            pki.ca.key_pem.as_str(),
            &pki.etcd_ca.key_pem,
            &pki.front_proxy_ca.key_pem,
            &pki.service_account_key_pem,
        ];
        for worker in &plans[1..] {
            for f in &worker.files {
                assert!(
                    !secrets.contains(&f.content.expose()),
                    "{} holds a CA key",
                    f.path
                );
                assert!(!f.path.contains("etcd"), "{}", f.path);
                assert!(
                    !f.path.contains("front-proxy") && !f.path.contains("/sa."),
                    "{}",
                    f.path
                );
            }
            for name in [
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
            ] {
                assert!(worker.artifacts.iter().all(|a| a.name != name), "{name}");
                assert!(worker.services.iter().all(|s| s.name != name), "{name}");
            }
            let services: Vec<&str> = worker.services.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(
                services,
                ["containerd", "import-pause-image", "kubelet", "kube-proxy"]
            );
        }
        // The master has the cluster CA's key for kube-controller-manager, and no other CA key.
        let master = &plans[0];
        assert_eq!(file(master, paths::CA_KEY).content.expose(), pki.ca.key_pem);
        assert_eq!(file(master, paths::CA_KEY).mode, 0o600);
        for secret in &secrets[1..3] {
            assert!(master.files.iter().all(|f| f.content.expose() != *secret));
        }
    }

    #[test]
    fn render_gives_the_ca_key_only_to_a_controller_manager() {
        let names: Vec<&str> = qb_api::KNOWN_ARTIFACTS
            .iter()
            .copied()
            .filter(|n| *n != "kube-controller-manager")
            .collect();
        let cluster = cluster(bundle("1.20.2", &names));
        let master = render_node(&cluster, &nodes(), 0);
        assert!(master.files.iter().all(|f| f.path != paths::CA_KEY));
        assert!(
            master
                .services
                .iter()
                .all(|s| s.name != "kube-controller-manager")
        );
        assert!(master.services.iter().any(|s| s.name == "kube-scheduler"));
    }

    #[test]
    fn render_files_modes_inputs_and_probes_are_consistent() {
        for version in ["1.20.2", "1.31.0"] {
            let cluster = cluster(full_bundle(version));
            let (_, plans) = render_all(&cluster, &nodes());
            for plan in &plans {
                let mut known: Vec<&str> = plan.files.iter().map(|f| f.path.as_str()).collect();
                known.extend(plan.artifacts.iter().map(|a| a.path.as_str()));
                for f in &plan.files {
                    let expected = if f.path.ends_with(".key") {
                        0o600
                    } else if f.path.ends_with(".crt") || f.path.ends_with(".pub") {
                        0o644
                    } else if f.path.ends_with(".conf") {
                        0o600
                    } else {
                        0o644
                    };
                    assert_eq!(f.mode, expected, "{}", f.path);
                    assert_eq!(f.owner, Owner::default());
                    if f.path.ends_with(".key") {
                        assert!(f.content.expose().contains("PRIVATE KEY"), "{}", f.path);
                    }
                }
                for s in &plan.services {
                    // Tasks import images; everything else is a service that always restarts.
                    let expected = if s.name.starts_with("import-") {
                        RestartPolicy::Never
                    } else {
                        RestartPolicy::Always
                    };
                    assert_eq!(s.restart, expected, "{}", s.name);
                    assert!(s.command[0].starts_with(paths::BIN_DIR), "{}", s.name);
                    assert_eq!(
                        s.inputs[0], s.command[0],
                        "{}: the binary is an input",
                        s.name
                    );
                    for input in &s.inputs {
                        assert!(known.contains(&input.as_str()), "{}: {input}", s.name);
                    }
                    if let Some(Probe::Http {
                        ca_file,
                        cert_file,
                        key_file,
                        ..
                    }) = &s.probe
                    {
                        for path in [ca_file, cert_file, key_file].into_iter().flatten() {
                            assert!(known.contains(&path.as_str()), "{}: {path}", s.name);
                        }
                    }
                    // An import is checked against the very archive and ctr it runs.
                    if s.restart == RestartPolicy::Never {
                        let Some(Probe::Images {
                            ctr,
                            address,
                            namespace,
                            archive,
                        }) = &s.probe
                        else {
                            panic!("{}: no images probe: {:?}", s.name, s.probe);
                        };
                        assert_eq!(ctr.as_str(), s.command[0], "{}", s.name);
                        assert_eq!(address.as_str(), paths::CONTAINERD_SOCKET);
                        assert_eq!(namespace, "k8s.io");
                        assert_eq!(Some(archive.as_str()), s.command.last().map(String::as_str));
                        assert!(known.contains(&archive.as_str()), "{}", s.name);
                    }
                    // Every file a flag names is in the plan.
                    for arg in &s.command[1..] {
                        if let Some((_, value)) = arg.split_once('=')
                            && value.starts_with("/etc/qb/")
                            && std::path::Path::new(value).extension().is_some_and(|e| {
                                ["crt", "key", "pub", "conf", "yaml", "toml"]
                                    .contains(&e.to_str().unwrap())
                            })
                        {
                            assert!(known.contains(&value), "{}: {arg}", s.name);
                        }
                    }
                }
                let mut paths: Vec<&str> = plan.files.iter().map(|f| f.path.as_str()).collect();
                paths.dedup();
                assert_eq!(paths.len(), plan.files.len());
            }
        }
    }

    #[test]
    fn kubelets_reach_the_masters_through_the_balancer_and_control_planes_their_own() {
        // Masters m2 (id 1) and m1 (id 4), whatever the order given; workers w (id 2), x (id 3).
        let mut two_masters = nodes();
        two_masters[0] = master(4, "m1", "10.0.0.11");
        two_masters.push(master(1, "m2", "10.0.0.21"));
        let cluster = cluster(full_bundle("1.20.2"));
        let upstreams = |plan: &Plan| {
            let balancer = plan.api_balancer.as_ref().expect("a balancer");
            assert_eq!(balancer.listen, "127.0.0.1:6444".parse().unwrap());
            balancer
                .upstreams
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        for (i, _) in two_masters.iter().enumerate() {
            let plan = render_node(&cluster, &two_masters, i);
            for path in [paths::KUBELET_KUBECONFIG, paths::KUBE_PROXY_KUBECONFIG] {
                assert!(
                    file(&plan, path)
                        .content
                        .expose()
                        .contains("server: \"https://127.0.0.1:6444\""),
                    "{path}"
                );
            }
        }
        // A master tries its own API server first; workers start at different masters.
        let m1 = render_node(&cluster, &two_masters, 0);
        assert_eq!(upstreams(&m1), ["10.0.0.11:6443", "10.0.0.21:6443"]);
        let m2 = render_node(&cluster, &two_masters, 3);
        assert_eq!(upstreams(&m2), ["10.0.0.21:6443", "10.0.0.11:6443"]);
        let workers: Vec<Vec<String>> = [1, 2]
            .map(|i| upstreams(&render_node(&cluster, &two_masters, i)))
            .into();
        assert_ne!(workers[0][0], workers[1][0], "{workers:?}");
        for w in &workers {
            let mut sorted = w.clone();
            sorted.sort();
            assert_eq!(sorted, ["10.0.0.11:6443", "10.0.0.21:6443"]);
        }
        assert!(
            file(&m1, paths::CONTROLLER_MANAGER_KUBECONFIG)
                .content
                .expose()
                .contains("server: \"https://127.0.0.1:6443\"")
        );
        assert!(
            file(&m1, paths::SCHEDULER_KUBECONFIG)
                .content
                .expose()
                .contains("server: \"https://127.0.0.1:6443\"")
        );
    }

    #[test]
    fn each_node_has_its_pod_subnet_and_routes_to_the_others() {
        let cluster = cluster(full_bundle("1.20.2"));
        let nodes = nodes();
        let (_, plans) = render_all(&cluster, &nodes);
        for (node, plan) in nodes.iter().zip(&plans) {
            let conflist: serde_json::Value =
                serde_json::from_str(file(plan, paths::CNI_CONFLIST).content.expose()).unwrap();
            let subnet = &conflist["plugins"][0]["ipam"]["ranges"][0][0]["subnet"];
            assert_eq!(subnet, &node.pod_subnet.to_string());
            let routes: Vec<(String, IpAddr)> = plan
                .routes
                .iter()
                .map(|r| (r.destination.to_string(), r.via))
                .collect();
            let others: Vec<(String, IpAddr)> = nodes
                .iter()
                .filter(|n| n.id != node.id)
                .map(|n| (n.pod_subnet.to_string(), n.address))
                .collect();
            assert_eq!(routes, others);
            assert_eq!(conflist["plugins"][0]["bridge"], "qb0");
            let types: Vec<&str> = conflist["plugins"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["type"].as_str().unwrap())
                .collect();
            assert_eq!(types, ["bridge", "portmap", "loopback"]);
        }
    }

    #[test]
    fn routes_never_go_through_an_address_of_the_clusters_own_ranges() {
        let cluster = cluster(full_bundle("1.20.2"));
        for bad in [
            nth_address(&cluster.pod_cidr, 1).unwrap(),
            nth_address(&cluster.service_cidr, 5).unwrap(),
        ] {
            let mut nodes = nodes();
            nodes[1].address = bad;
            // Every node's plan is refused: each would route through the bad address, or is it.
            for node in &nodes {
                let err = render_err(&cluster, &nodes, node.id);
                assert!(
                    matches!(&err, RenderError::AddressInClusterRange { address, .. } if *address == bad),
                    "{err:?}"
                );
            }
        }
    }

    #[test]
    fn render_etcd_flags_come_from_the_bootstrap() {
        let mut m = master(1, "m1", "10.0.0.11");
        m.etcd = Some(EtcdBootstrap {
            initial_cluster: vec![
                ("m3".into(), ip("10.0.0.13")),
                ("m1".into(), ip("10.0.0.11")),
                ("m2".into(), ip("10.0.0.12")),
            ],
            state: InitialClusterState::Existing,
        });
        let cluster = cluster(etcd_only_bundle("1.20.2"));
        let plan = render_node(&cluster, &[m], 0);
        for arg in [
            "--initial-cluster=m1=https://10.0.0.11:2380,m2=https://10.0.0.12:2380,m3=https://10.0.0.13:2380",
            "--initial-cluster-state=existing",
            &format!("--initial-cluster-token={}", cluster.id),
            "--listen-client-urls=https://10.0.0.11:2379,https://127.0.0.1:2379",
            "--advertise-client-urls=https://10.0.0.11:2379",
            "--listen-peer-urls=https://10.0.0.11:2380",
            "--client-cert-auth=true",
            "--peer-client-cert-auth=true",
            "--data-dir=/var/lib/qb/etcd",
            "--listen-metrics-urls=http://127.0.0.1:2381",
        ] {
            assert!(has_arg(&plan, "etcd", arg), "{arg}");
        }

        // A member on 127.0.0.1 listens there once.
        let local = master(1, "m1", "127.0.0.1");
        let plan = render_node(&cluster, &[local], 0);
        assert!(has_arg(
            &plan,
            "etcd",
            "--listen-client-urls=https://127.0.0.1:2379"
        ));
    }

    /// Renders `version` and says whether `service` has `arg` on the master (index 0) or the
    /// worker (index 1).
    fn arg_on(version: &str, index: usize, service_name: &str, arg: &str) -> bool {
        let plan = render_node(&cluster(full_bundle(version)), &nodes(), index);
        has_arg(&plan, service_name, arg)
    }

    #[test]
    fn version_insecure_ports_are_disabled_up_to_1_23() {
        for (version, present) in [
            ("1.20.2", true),
            ("1.23.17", true),
            ("1.24.0", false),
            ("1.31.1", false),
        ] {
            assert_eq!(
                arg_on(version, 0, "kube-apiserver", "--insecure-port=0"),
                present,
                "{version}"
            );
            assert_eq!(
                arg_on(version, 0, "kube-controller-manager", "--port=0"),
                present,
                "{version}"
            );
            assert_eq!(
                arg_on(version, 0, "kube-scheduler", "--port=0"),
                present,
                "{version}"
            );
        }
    }

    #[test]
    fn version_kubelet_container_runtime_flag_up_to_1_26() {
        for (version, present) in [
            ("1.20.2", true),
            ("1.26.15", true),
            ("1.27.0", false),
            ("1.31.1", false),
        ] {
            assert_eq!(
                arg_on(version, 1, "kubelet", "--container-runtime=remote"),
                present,
                "{version}"
            );
            // The endpoint stays in every version.
            assert!(arg_on(
                version,
                1,
                "kubelet",
                "--container-runtime-endpoint=unix:///run/qb/containerd/containerd.sock"
            ));
        }
    }

    #[test]
    fn version_kubelet_network_plugin_flags_up_to_1_23() {
        for (version, present) in [("1.20.2", true), ("1.23.17", true), ("1.24.0", false)] {
            for arg in [
                "--network-plugin=cni",
                "--cni-bin-dir=/var/lib/qb/cni/bin",
                "--cni-conf-dir=/etc/qb/cni/net.d",
            ] {
                assert_eq!(
                    arg_on(version, 1, "kubelet", arg),
                    present,
                    "{version} {arg}"
                );
            }
        }
    }

    #[test]
    fn version_secure_port_probes_are_tcp_on_1_20_and_http_from_1_21() {
        for (version, http) in [("1.20.15", false), ("1.21.0", true), ("1.31.1", true)] {
            let plan = render_node(&cluster(full_bundle(version)), &nodes(), 0);
            for (name, port) in [
                ("kube-controller-manager", 10257),
                ("kube-scheduler", 10259),
            ] {
                let expected = if http {
                    Probe::Http {
                        url: format!("https://127.0.0.1:{port}/healthz"),
                        ca_file: Some(paths::CA_CERT.to_owned()),
                        cert_file: None,
                        key_file: None,
                    }
                } else {
                    Probe::Tcp {
                        address: format!("127.0.0.1:{port}"),
                    }
                };
                assert_eq!(
                    service(&plan, name).probe,
                    Some(expected),
                    "{version} {name}"
                );
            }
        }
    }

    #[test]
    fn version_flags_table_boundaries() {
        let at = VersionFlags::for_minor;
        assert!(at(23).disable_insecure_ports && !at(24).disable_insecure_ports);
        assert!(at(26).kubelet_container_runtime && !at(27).kubelet_container_runtime);
        assert!(at(23).kubelet_network_plugin && !at(24).kubelet_network_plugin);
        assert!(!at(20).secure_port_http_probes && at(21).secure_port_http_probes);
    }

    #[test]
    fn render_refuses_what_it_cannot_render() {
        let nodes = nodes();
        let full = cluster(full_bundle("1.20.2"));
        let err = |cluster: &ClusterInput, nodes: &[NodeInput], id| {
            render_err(cluster, nodes, id).to_string()
        };

        assert!(err(&full, &nodes, node_id(9)).contains("not one of the cluster's nodes"));
        assert!(
            err(&cluster(bundle("1.20.2", &["kubelet"])), &nodes, node_id(1))
                .contains("ships no etcd")
        );
        assert!(
            err(&cluster(full_bundle("1.19.16")), &nodes, node_id(1)).contains("not supported")
        );

        let mut mismatched = full.clone();
        mismatched.version = "1.21.0".parse().unwrap();
        assert!(err(&mismatched, &nodes, node_id(1)).contains("bundle is for Kubernetes 1.20.2"));

        let mut no_etcd = nodes.clone();
        no_etcd[0].etcd = None;
        assert!(matches!(
            render_err(&full, &no_etcd, node_id(1)),
            RenderError::MasterWithoutEtcd { .. }
        ));

        let mut worker_etcd = nodes.clone();
        worker_etcd[1].etcd = nodes[0].etcd.clone();
        assert!(matches!(
            render_err(&full, &worker_etcd, node_id(2)),
            RenderError::WorkerWithEtcd { .. }
        ));

        let mut moved = nodes.clone();
        moved[0].address = ip("10.0.0.99");
        assert!(matches!(
            render_err(&full, &moved, node_id(1)),
            RenderError::NotInInitialCluster { .. }
        ));

        let workers_only = [worker(2, "w1", "10.0.0.12")];
        assert!(matches!(
            render_err(&full, &workers_only, node_id(2)),
            RenderError::NoMaster
        ));
        // Without a kubelet or kube-proxy, a worker needs no master.
        let etcd_only = cluster(etcd_only_bundle("1.20.2"));
        let (_, plans) = render_all(&etcd_only, &workers_only);
        assert!(plans[0].services.is_empty());

        let mut small = full.clone();
        small.pod_cidr = "10.244.0.0/24".parse().unwrap();
        let e = render_err(&small, &nodes, node_id(2));
        assert!(
            matches!(&e, RenderError::PodSubnet { node, .. } if node.as_str() == "m1"),
            "{e}"
        );

        // Certificates of a worker do not serve a master.
        let pki = ClusterPki::generate("demo").unwrap();
        let worker_certs = issue_node_certs(&pki, &full, &nodes[1]).unwrap();
        let e = render(&full, &nodes, node_id(1), &pki, &worker_certs).unwrap_err();
        assert!(
            matches!(
                e,
                RenderError::MissingCert {
                    purpose: CertPurpose::EtcdServer,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn required_ports_by_role_and_bundle() {
        let names =
            |ports: Vec<PortSpec>| ports.iter().map(ToString::to_string).collect::<Vec<_>>();
        let full = cluster(full_bundle("1.20.2"));
        assert_eq!(
            names(required_ports(&full, NodeRole::Master)),
            ["2379/tcp", "2380/tcp", "6443/tcp", "8472/udp", "10250/tcp"]
        );
        assert_eq!(
            names(required_ports(&full, NodeRole::Worker)),
            ["8472/udp", "10250/tcp"]
        );
        let etcd = cluster(etcd_only_bundle("1.20.2"));
        assert_eq!(
            names(required_ports(&etcd, NodeRole::Master)),
            ["2379/tcp", "2380/tcp", "8472/udp"]
        );
        assert_eq!(names(required_ports(&etcd, NodeRole::Worker)), ["8472/udp"]);
    }

    #[test]
    fn local_ports_by_role_and_bundle() {
        use qb_agent_proto::preflight::LocalPort;
        let names = |ports: Vec<LocalPort>| {
            ports
                .iter()
                .map(|p| format!("{}:{}", p.address, p.port))
                .collect::<Vec<_>>()
        };
        let full = cluster(full_bundle("1.20.2"));
        assert_eq!(
            names(local_ports(&full, NodeRole::Master)),
            [
                "127.0.0.1:2381/tcp",
                "127.0.0.1:6444/tcp",
                "127.0.0.1:10248/tcp",
                "127.0.0.1:10249/tcp",
                "0.0.0.0:10256/tcp",
                "127.0.0.1:10257/tcp",
                "127.0.0.1:10259/tcp",
            ]
        );
        assert_eq!(
            names(local_ports(&full, NodeRole::Worker)),
            [
                "127.0.0.1:6444/tcp",
                "127.0.0.1:10248/tcp",
                "127.0.0.1:10249/tcp",
                "0.0.0.0:10256/tcp",
            ]
        );
        let etcd = cluster(etcd_only_bundle("1.20.2"));
        assert_eq!(
            names(local_ports(&etcd, NodeRole::Master)),
            ["127.0.0.1:2381/tcp"]
        );
        assert!(local_ports(&etcd, NodeRole::Worker).is_empty());
        // Only what ships: a kubelet without kube-proxy, an API server without a scheduler.
        let some = cluster(bundle(
            "1.20.2",
            &[
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kubelet",
            ],
        ));
        assert_eq!(
            names(local_ports(&some, NodeRole::Master)),
            [
                "127.0.0.1:2381/tcp",
                "127.0.0.1:6444/tcp",
                "127.0.0.1:10248/tcp",
                "127.0.0.1:10257/tcp",
            ]
        );
        assert_eq!(
            names(local_ports(&some, NodeRole::Worker)),
            ["127.0.0.1:6444/tcp", "127.0.0.1:10248/tcp"]
        );
        // None of them is one other nodes reach.
        for role in [NodeRole::Master, NodeRole::Worker] {
            let required = required_ports(&full, role);
            assert!(
                local_ports(&full, role)
                    .iter()
                    .all(|l| !required.contains(&l.port))
            );
        }
    }

    #[test]
    fn etcd_urls_bracket_ipv6() {
        assert_eq!(etcd_client_url(ip("10.0.0.1")), "https://10.0.0.1:2379");
        assert_eq!(etcd_peer_url(ip("10.0.0.1")), "https://10.0.0.1:2380");
        assert_eq!(etcd_client_url(ip("fd00::1")), "https://[fd00::1]:2379");
        assert_eq!(etcd_peer_url(ip("fd00::1")), "https://[fd00::1]:2380");
    }

    #[test]
    fn node_address_prefers_the_label_then_the_route_source_then_network_cards() {
        use qb_api::{InterfaceKind, NetInterface};
        let iface = |name: &str, kind, master: Option<&str>, addresses: &[&str]| NetInterface {
            name: name.to_owned(),
            kind,
            master: master.map(str::to_owned),
            addresses: addresses.iter().map(|a| ip(a)).collect(),
        };
        let labels = |value: &str| -> Labels {
            [(ADDRESS_LABEL.parse().unwrap(), value.parse().unwrap())].into()
        };
        let none = Labels::new();
        let ranges: Vec<Cidr> = vec![
            "10.20.0.0/16".parse().unwrap(),
            "10.21.0.0/16".parse().unwrap(),
        ];
        // A used host: its pod bridge came up first and holds the lowest address.
        let mut host = NodeFacts {
            interfaces: vec![
                iface(
                    "qb0",
                    InterfaceKind::Bridge,
                    None,
                    &["10.20.1.1", "fe80::1"],
                ),
                iface(
                    "veth1a2b",
                    InterfaceKind::Veth,
                    Some("qb0"),
                    &["169.254.3.3"],
                ),
                iface("docker0", InterfaceKind::Bridge, None, &["172.17.0.1"]),
                iface(
                    "eth0",
                    InterfaceKind::Physical,
                    None,
                    &["fd00::5", "192.168.1.5"],
                ),
                iface("wg0", InterfaceKind::Tunnel, None, &["10.99.0.2"]),
            ],
            ..NodeFacts::default()
        };
        host.addresses = host
            .interfaces
            .iter()
            .flat_map(|i| i.addresses.clone())
            .collect();
        assert_eq!(
            choose_node_address(&host, &none, &ranges),
            Ok(ip("192.168.1.5"))
        );
        // The source of the route to the controller wins, if it is a host address.
        host.route_source = Some(ip("10.99.0.2"));
        assert_eq!(
            choose_node_address(&host, &none, &ranges),
            Ok(ip("10.99.0.2"))
        );
        host.route_source = Some(ip("10.20.1.1"));
        assert_eq!(
            choose_node_address(&host, &none, &ranges),
            Ok(ip("192.168.1.5"))
        );
        // The label wins, unless it is no address or lies in the cluster's ranges.
        assert_eq!(
            choose_node_address(&host, &labels("10.9.9.9"), &ranges),
            Ok(ip("10.9.9.9"))
        );
        assert_eq!(
            choose_node_address(&host, &labels("eth0"), &ranges),
            Err(AddressError::LabelNotAnAddress("eth0".into()))
        );
        assert!(matches!(
            choose_node_address(&host, &labels("10.21.0.10"), &ranges),
            Err(AddressError::LabelInClusterRange { .. })
        ));
        // An address of a range the cluster uses is never chosen, on any interface.
        let clash = NodeFacts {
            interfaces: vec![
                iface("eth0", InterfaceKind::Physical, None, &["10.20.0.1"]),
                iface("eth1", InterfaceKind::Physical, None, &["fd00::7"]),
            ],
            ..NodeFacts::default()
        };
        assert_eq!(
            choose_node_address(&clash, &none, &ranges),
            Ok(ip("fd00::7"))
        );
        let only_pods = NodeFacts {
            interfaces: vec![iface("qb0", InterfaceKind::Bridge, None, &["10.30.0.1"])],
            route_source: Some(ip("10.30.0.1")),
            ..NodeFacts::default()
        };
        assert_eq!(
            choose_node_address(&only_pods, &none, &[]),
            Err(AddressError::NoneUsable)
        );
        // An agent that reports no interfaces: its first usable address outside the ranges.
        let old = NodeFacts {
            addresses: ["127.0.0.1", "fe80::2", "10.20.3.1", "192.168.7.7"]
                .map(ip)
                .to_vec(),
            ..NodeFacts::default()
        };
        assert_eq!(
            choose_node_address(&old, &none, &ranges),
            Ok(ip("192.168.7.7"))
        );
    }

    #[test]
    fn address_arithmetic() {
        let cidr = |s: &str| -> Cidr { s.parse().unwrap() };
        assert_eq!(
            kubernetes_service_ip(&cidr("10.96.0.0/12")),
            ip("10.96.0.1")
        );
        assert_eq!(cluster_dns_ip(&cidr("10.96.0.0/12")), ip("10.96.0.10"));
        assert_eq!(cluster_dns_ip(&cidr("fd00:96::/112")), ip("fd00:96::a"));
        assert_eq!(
            nth_address(&cidr("10.0.0.16/28"), 15),
            Some(ip("10.0.0.31"))
        );
        assert_eq!(nth_address(&cidr("10.0.0.16/28"), 16), None);

        assert_eq!(
            pod_subnet(&cidr("10.244.0.0/16"), 0),
            Some(cidr("10.244.0.0/24"))
        );
        assert_eq!(
            pod_subnet(&cidr("10.244.0.0/16"), 255),
            Some(cidr("10.244.255.0/24"))
        );
        assert_eq!(pod_subnet(&cidr("10.244.0.0/16"), 256), None);
        assert_eq!(pod_subnet_count(&cidr("10.244.0.0/16")), 256);
        assert_eq!(pod_subnet_count(&cidr("10.244.0.0/24")), 1);
        assert_eq!(pod_subnet_count(&cidr("10.244.0.0/25")), 0);
        assert_eq!(pod_subnet_count(&cidr("fd00:244::/56")), 256);
        assert_eq!(pod_subnet_count(&cidr("fd00::/8")), u32::MAX);
        assert_eq!(
            pod_subnet(&cidr("10.244.0.0/24"), 0),
            Some(cidr("10.244.0.0/24"))
        );
        assert_eq!(pod_subnet(&cidr("10.244.0.0/24"), 1), None);
        assert_eq!(pod_subnet(&cidr("10.244.0.0/25"), 0), None);
        assert_eq!(
            pod_subnet(&cidr("fd00:244::/56"), 3),
            Some(cidr("fd00:244:0:3::/64"))
        );
    }
}
