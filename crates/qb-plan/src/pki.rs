//! The cluster PKI: three certificate authorities per cluster (the cluster CA, etcd's CA and the
//! front proxy's CA), the service-account signing key, and every leaf certificate a node needs.
//!
//! The controller generates a [`ClusterPki`] once per cluster and stores it; it issues each node
//! its [`NodeCerts`] with [`issue_node_certs`] and stores them too, so a plan renders the same
//! certificates every time. When a node's address or role changes, [`node_certs_fit`] turns false
//! and the controller issues the node new certificates.
//!
//! All keys are ECDSA P-256. CAs are valid for [`CA_VALIDITY`], leaves for [`LEAF_VALIDITY`]
//! (never beyond their CA), both from [`CLOCK_SKEW`] ago. Serial numbers are derived from each
//! certificate's fresh public key, so key generation is the only source of randomness.
//! Private keys never reach a log: the `Debug` of [`KeyCert`] and [`ClusterPki`] redacts them.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use qb_api::NodeRole;
use qb_pki::CLOCK_SKEW;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::render::{ClusterInput, NodeInput, kubernetes_service_ip};

/// How long the cluster's CAs are valid.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// How long leaf certificates are valid (at most until their CA expires).
pub const LEAF_VALIDITY: Duration = Duration::days(365);
/// A node's certificates no longer fit when one of them expires sooner than this.
pub const RENEW_BEFORE: Duration = Duration::days(30);

/// The DNS names of the `kubernetes` service, all in the API server's certificate.
pub const KUBERNETES_SERVICE_NAMES: &[&str] = &[
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// Why a certificate or key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A new key pair could not be generated.
    #[error("cannot generate a key pair")]
    KeyGeneration(#[source] rcgen::Error),
    /// A stored CA (certificate or key) cannot be used to sign.
    #[error("the stored {authority} cannot be loaded")]
    LoadCa {
        authority: Authority,
        #[source]
        source: rcgen::Error,
    },
    /// A name cannot go into a certificate.
    #[error("{name:?} cannot be a DNS name in a certificate")]
    InvalidName {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    /// Signing failed.
    #[error("cannot sign the {what} certificate")]
    Sign {
        what: String,
        #[source]
        source: rcgen::Error,
    },
}

/// A certificate and its private key, both PEM. `Debug` shows the certificate only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyCert {
    pub cert_pem: String,
    /// PKCS#8 PEM. A secret.
    pub key_pem: String,
}

impl KeyCert {
    /// When the certificate expires; `None` when it cannot be read.
    pub fn not_after(&self) -> Option<OffsetDateTime> {
        CertificateParams::from_ca_cert_pem(&self.cert_pem)
            .ok()
            .map(|p| p.not_after)
    }
}

impl fmt::Debug for KeyCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The certificate authorities of one cluster, and its service-account key pair.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterPki {
    /// Signs the API server's, kubelets' and components' certificates, and (in
    /// kube-controller-manager) kubelet CSRs.
    pub ca: KeyCert,
    /// Signs etcd's server and peer certificates and its clients' certificates.
    pub etcd_ca: KeyCert,
    /// Signs the API server's front-proxy (aggregation) client certificate.
    pub front_proxy_ca: KeyCert,
    /// Signs service-account tokens (PKCS#8 PEM). A secret.
    pub service_account_key_pem: String,
    /// Verifies service-account tokens (SubjectPublicKeyInfo PEM).
    pub service_account_pub_pem: String,
}

impl fmt::Debug for ClusterPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterPki")
            .field("ca", &self.ca)
            .field("etcd_ca", &self.etcd_ca)
            .field("front_proxy_ca", &self.front_proxy_ca)
            .field("service_account_key_pem", &"<redacted>")
            .field("service_account_pub_pem", &self.service_account_pub_pem)
            .finish()
    }
}

impl ClusterPki {
    /// New CAs (valid [`CA_VALIDITY`]) and a new service-account key for the cluster.
    pub fn generate(cluster_name: &str) -> Result<Self, PkiError> {
        let now = now();
        let service_account = new_key()?;
        Ok(Self {
            ca: new_ca(&format!("qb {cluster_name} cluster CA"), now)?,
            etcd_ca: new_ca(&format!("qb {cluster_name} etcd CA"), now)?,
            front_proxy_ca: new_ca(&format!("qb {cluster_name} front-proxy CA"), now)?,
            service_account_key_pem: service_account.serialize_pem(),
            service_account_pub_pem: service_account.public_key_pem(),
        })
    }

    /// The CA (certificate and key) of `authority`.
    pub fn authority(&self, authority: Authority) -> &KeyCert {
        match authority {
            Authority::Cluster => &self.ca,
            Authority::Etcd => &self.etcd_ca,
            Authority::FrontProxy => &self.front_proxy_ca,
        }
    }
}

/// One of a cluster's certificate authorities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Authority {
    Cluster,
    Etcd,
    FrontProxy,
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cluster => "cluster CA",
            Self::Etcd => "etcd CA",
            Self::FrontProxy => "front-proxy CA",
        })
    }
}

/// What a leaf certificate is for. Masters get all of them, workers the last two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertPurpose {
    /// etcd's client-facing server certificate (server and client use).
    EtcdServer,
    /// etcd's peer certificate (server and client use).
    EtcdPeer,
    /// The agent's etcd client: health probes and membership changes.
    EtcdHealthcheckClient,
    /// kube-apiserver's serving certificate.
    Apiserver,
    /// kube-apiserver's etcd client.
    ApiserverEtcdClient,
    /// kube-apiserver's client towards kubelets (group `system:masters`).
    ApiserverKubeletClient,
    /// The agent's kube-apiserver client for its readiness probe (no group; RBAC's
    /// `system:public-info-viewer` lets any authenticated user read `/readyz`).
    ApiserverHealthcheckClient,
    /// kube-apiserver's client towards aggregated API servers (front proxy).
    FrontProxyClient,
    /// kube-controller-manager's API client (`system:kube-controller-manager`).
    ControllerManagerClient,
    /// kube-controller-manager's serving certificate (its secure port, for the probe).
    ControllerManagerServing,
    /// kube-scheduler's API client (`system:kube-scheduler`).
    SchedulerClient,
    /// kube-scheduler's serving certificate (its secure port, for the probe).
    SchedulerServing,
    /// The kubelet's serving and client certificate (`system:node:<name>`, `system:nodes`).
    Kubelet,
    /// kube-proxy's API client (`system:kube-proxy`).
    KubeProxy,
    /// The cluster administrator on masters (`qb-admin`, group `system:masters`): the agent's
    /// node operations (node health, cordon and drain) and `admin.conf` for an operator on the
    /// host.
    Admin,
}

impl CertPurpose {
    /// Every purpose, in order.
    pub const ALL: &[CertPurpose] = &[
        Self::EtcdServer,
        Self::EtcdPeer,
        Self::EtcdHealthcheckClient,
        Self::Apiserver,
        Self::ApiserverEtcdClient,
        Self::ApiserverKubeletClient,
        Self::ApiserverHealthcheckClient,
        Self::FrontProxyClient,
        Self::ControllerManagerClient,
        Self::ControllerManagerServing,
        Self::SchedulerClient,
        Self::SchedulerServing,
        Self::Kubelet,
        Self::KubeProxy,
        Self::Admin,
    ];

    /// The CA that signs it.
    pub fn authority(self) -> Authority {
        match self {
            Self::EtcdServer
            | Self::EtcdPeer
            | Self::EtcdHealthcheckClient
            | Self::ApiserverEtcdClient => Authority::Etcd,
            Self::FrontProxyClient => Authority::FrontProxy,
            _ => Authority::Cluster,
        }
    }

    /// Whether a node of `role` gets one.
    pub fn for_role(self, role: NodeRole) -> bool {
        match role {
            NodeRole::Master => true,
            NodeRole::Worker => matches!(self, Self::Kubelet | Self::KubeProxy),
        }
    }
}

/// Every leaf certificate one node needs, by purpose. Stored by the controller per node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeCerts {
    pub certs: BTreeMap<CertPurpose, KeyCert>,
}

impl NodeCerts {
    /// The certificate for `purpose`, if the node has one.
    pub fn get(&self, purpose: CertPurpose) -> Option<&KeyCert> {
        self.certs.get(&purpose)
    }
}

/// The controller's own clients of a cluster's API servers, which it reaches through the
/// agents' tunnels. It keeps their keys in memory only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ControllerClient {
    /// The Kubernetes API proxy (`qb-proxy`, group `qb:proxy`). The cluster's RBAC lets that
    /// group impersonate users and groups and nothing else, so every proxied request is
    /// decided as the qb user it carries.
    Proxy,
    /// Sets up that RBAC (`qb-controller`, group `system:masters`).
    Admin,
}

impl ControllerClient {
    /// The Kubernetes group of the proxy's certificate.
    pub const PROXY_GROUP: &str = "qb:proxy";
}

/// How long the controller's client certificates live.
pub const CONTROLLER_CLIENT_VALIDITY: Duration = Duration::days(1);

impl ClusterPki {
    /// A new key and client certificate for one of the controller's own clients, valid for
    /// [`CONTROLLER_CLIENT_VALIDITY`].
    pub fn issue_controller_client(&self, client: ControllerClient) -> Result<KeyCert, PkiError> {
        let spec = match client {
            ControllerClient::Proxy => {
                LeafSpec::new("qb-proxy", Usage::Client).organization(ControllerClient::PROXY_GROUP)
            }
            ControllerClient::Admin => {
                LeafSpec::new("qb-controller", Usage::Client).organization("system:masters")
            }
        };
        Signer::load(Authority::Cluster, self.authority(Authority::Cluster))?.issue(
            &spec,
            now(),
            CONTROLLER_CLIENT_VALIDITY,
        )
    }
}

/// Issues every certificate `node` needs in `cluster` for its role, each with a fresh key,
/// valid for [`LEAF_VALIDITY`].
pub fn issue_node_certs(
    pki: &ClusterPki,
    cluster: &ClusterInput,
    node: &NodeInput,
) -> Result<NodeCerts, PkiError> {
    let now = now();
    let mut signers = BTreeMap::new();
    let mut certs = BTreeMap::new();
    for (purpose, spec) in leaf_specs(cluster, node) {
        let authority = purpose.authority();
        // Each CA is loaded once, and only if the node needs something it signs.
        let signer = match signers.entry(authority) {
            Entry::Occupied(loaded) => loaded.into_mut(),
            Entry::Vacant(slot) => slot.insert(Signer::load(authority, pki.authority(authority))?),
        };
        certs.insert(purpose, signer.issue(&spec, now, LEAF_VALIDITY)?);
    }
    Ok(NodeCerts { certs })
}

/// Whether `certs` are still right for `node`: exactly the purposes of its role, each with the
/// expected subject, SANs (name, address, service IP) and usages, and none expiring within
/// [`RENEW_BEFORE`]. False means the controller must issue new ones.
pub fn node_certs_fit(certs: &NodeCerts, cluster: &ClusterInput, node: &NodeInput) -> bool {
    node_certs_fit_at(certs, cluster, node, now())
}

fn node_certs_fit_at(
    certs: &NodeCerts,
    cluster: &ClusterInput,
    node: &NodeInput,
    now: OffsetDateTime,
) -> bool {
    let specs = leaf_specs(cluster, node);
    specs.len() == certs.certs.len()
        && specs.iter().all(|(purpose, spec)| {
            certs
                .get(*purpose)
                .is_some_and(|cert| spec.matches(&cert.cert_pem, now))
        })
}

/// A subject alternative name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum San {
    Dns(String),
    Ip(IpAddr),
}

impl San {
    fn dns(name: impl Into<String>) -> Self {
        Self::Dns(name.into())
    }

    fn to_rcgen(&self) -> Result<SanType, PkiError> {
        match self {
            Self::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            Self::Dns(name) => name
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|source| PkiError::InvalidName {
                    name: name.clone(),
                    source,
                }),
        }
    }

    fn from_rcgen(san: &SanType) -> Option<Self> {
        match san {
            SanType::DnsName(name) => Some(Self::Dns(name.as_str().to_owned())),
            SanType::IpAddress(ip) => Some(Self::Ip(*ip)),
            _ => None,
        }
    }
}

/// The TLS roles a certificate may play.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Usage {
    Server,
    Client,
    ServerAndClient,
}

impl Usage {
    fn extended_key_usages(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Self::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Self::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Self::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        }
    }
}

/// What one leaf certificate must say.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LeafSpec {
    common_name: String,
    organization: Option<&'static str>,
    /// Sorted.
    sans: Vec<San>,
    usage: Usage,
}

impl LeafSpec {
    fn new(common_name: impl Into<String>, usage: Usage) -> Self {
        Self {
            common_name: common_name.into(),
            organization: None,
            sans: Vec::new(),
            usage,
        }
    }

    fn organization(mut self, organization: &'static str) -> Self {
        self.organization = Some(organization);
        self
    }

    fn sans(mut self, sans: impl IntoIterator<Item = San>) -> Self {
        self.sans = sans.into_iter().collect();
        self.sans.sort();
        self.sans.dedup();
        self
    }

    fn distinguished_name(&self) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, self.common_name.as_str());
        if let Some(organization) = self.organization {
            dn.push(DnType::OrganizationName, organization);
        }
        dn
    }

    /// Whether `cert_pem` is a certificate with this subject, SANs and usages, valid for at
    /// least [`RENEW_BEFORE`] after `now`.
    fn matches(&self, cert_pem: &str, now: OffsetDateTime) -> bool {
        let Ok(params) = CertificateParams::from_ca_cert_pem(cert_pem) else {
            return false;
        };
        let mut sans: Vec<San> = params
            .subject_alt_names
            .iter()
            .filter_map(San::from_rcgen)
            .collect();
        sans.sort();
        params.not_after - now > RENEW_BEFORE
            && params.subject_alt_names.len() == sans.len()
            && sans == self.sans
            && dn_text(&params.distinguished_name, DnType::CommonName)
                == Some(self.common_name.as_str())
            && dn_text(&params.distinguished_name, DnType::OrganizationName) == self.organization
            && params.extended_key_usages == self.usage.extended_key_usages()
    }
}

/// The text of a name attribute, whatever string type encodes it.
fn dn_text(dn: &DistinguishedName, ty: DnType) -> Option<&str> {
    match dn.get(&ty)? {
        DnValue::Utf8String(s) => Some(s.as_str()),
        DnValue::PrintableString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// The certificates a node of its role needs, and what each must say.
fn leaf_specs(cluster: &ClusterInput, node: &NodeInput) -> BTreeMap<CertPurpose, LeafSpec> {
    let name = node.name.as_str();
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    // Reached at the node's name and address, and locally.
    let node_and_local = [
        San::dns(name),
        San::dns("localhost"),
        San::Ip(node.address),
        San::Ip(loopback),
    ];
    let local_only = [San::dns("localhost"), San::Ip(loopback)];

    let mut apiserver_sans: Vec<San> = KUBERNETES_SERVICE_NAMES
        .iter()
        .copied()
        .map(San::dns)
        .collect();
    apiserver_sans.extend([
        San::dns(name),
        San::dns("localhost"),
        San::Ip(kubernetes_service_ip(&cluster.service_cidr)),
        San::Ip(node.address),
        San::Ip(loopback),
    ]);

    let specs = [
        (
            CertPurpose::EtcdServer,
            LeafSpec::new(name, Usage::ServerAndClient).sans(node_and_local.clone()),
        ),
        (
            CertPurpose::EtcdPeer,
            LeafSpec::new(name, Usage::ServerAndClient).sans(node_and_local),
        ),
        (
            CertPurpose::EtcdHealthcheckClient,
            LeafSpec::new("qb-etcd-healthcheck-client", Usage::Client),
        ),
        (
            CertPurpose::Apiserver,
            LeafSpec::new("kube-apiserver", Usage::Server).sans(apiserver_sans),
        ),
        (
            CertPurpose::ApiserverEtcdClient,
            LeafSpec::new("kube-apiserver-etcd-client", Usage::Client),
        ),
        (
            CertPurpose::ApiserverKubeletClient,
            LeafSpec::new("kube-apiserver-kubelet-client", Usage::Client)
                .organization("system:masters"),
        ),
        (
            CertPurpose::ApiserverHealthcheckClient,
            LeafSpec::new("qb-apiserver-healthcheck-client", Usage::Client),
        ),
        (
            CertPurpose::FrontProxyClient,
            LeafSpec::new("front-proxy-client", Usage::Client),
        ),
        (
            CertPurpose::ControllerManagerClient,
            LeafSpec::new("system:kube-controller-manager", Usage::Client),
        ),
        (
            CertPurpose::ControllerManagerServing,
            LeafSpec::new("kube-controller-manager", Usage::Server).sans(local_only.clone()),
        ),
        (
            CertPurpose::SchedulerClient,
            LeafSpec::new("system:kube-scheduler", Usage::Client),
        ),
        (
            CertPurpose::SchedulerServing,
            LeafSpec::new("kube-scheduler", Usage::Server).sans(local_only),
        ),
        (
            CertPurpose::Kubelet,
            LeafSpec::new(format!("system:node:{name}"), Usage::ServerAndClient)
                .organization("system:nodes")
                .sans([San::dns(name), San::Ip(node.address)]),
        ),
        (
            CertPurpose::KubeProxy,
            LeafSpec::new("system:kube-proxy", Usage::Client),
        ),
        (
            CertPurpose::Admin,
            LeafSpec::new("qb-admin", Usage::Client).organization("system:masters"),
        ),
    ];
    specs
        .into_iter()
        .filter(|(purpose, _)| purpose.for_role(node.role))
        .collect()
}

/// A CA loaded for signing.
struct Signer {
    key: KeyPair,
    /// rcgen's view of the CA, rebuilt from the stored certificate (same subject and key id);
    /// used only as the issuer.
    issuer: Certificate,
    not_after: OffsetDateTime,
}

impl Signer {
    fn load(authority: Authority, ca: &KeyCert) -> Result<Self, PkiError> {
        let load_error = |source| PkiError::LoadCa { authority, source };
        let key = KeyPair::from_pem(&ca.key_pem).map_err(load_error)?;
        let params = CertificateParams::from_ca_cert_pem(&ca.cert_pem).map_err(load_error)?;
        let not_after = params.not_after;
        let issuer = params.self_signed(&key).map_err(load_error)?;
        Ok(Self {
            key,
            issuer,
            not_after,
        })
    }

    /// A new key and a certificate for it, as `spec` says.
    fn issue(
        &self,
        spec: &LeafSpec,
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<KeyCert, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = spec.distinguished_name();
        params.subject_alt_names = spec
            .sans
            .iter()
            .map(San::to_rcgen)
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = spec.usage.extended_key_usages();
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - CLOCK_SKEW;
        params.not_after = (now + validity).min(self.not_after);
        let key = new_key()?;
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(|source| PkiError::Sign {
                what: spec.common_name.clone(),
                source,
            })?;
        Ok(KeyCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A self-signed CA: `CA:true, pathlen:0`, keyCertSign, cRLSign and digitalSignature.
fn new_ca(common_name: &str, now: OffsetDateTime) -> Result<KeyCert, PkiError> {
    let key = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + CA_VALIDITY;
    let cert = params.self_signed(&key).map_err(|source| PkiError::Sign {
        what: common_name.to_owned(),
        source,
    })?;
    Ok(KeyCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn new_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(PkiError::KeyGeneration)
}

/// Now, to the second (X.509 times have no fractions).
fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond")
}

#[cfg(test)]
mod tests {
    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::GeneralName;
    use x509_parser::pem::{Pem, parse_x509_pem};

    use super::*;
    use crate::render::fixtures::{cluster, full_bundle, ip, master, nodes, worker};

    fn pem(text: &str) -> Pem {
        let (rest, pem) = parse_x509_pem(text.as_bytes()).unwrap();
        assert!(rest.iter().all(u8::is_ascii_whitespace), "one PEM block");
        assert_eq!(pem.label, "CERTIFICATE");
        pem
    }

    fn x509(pem: &Pem) -> X509Certificate<'_> {
        pem.parse_x509().unwrap()
    }

    fn sans(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<IpAddr>) {
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        if let Some(ext) = cert.subject_alternative_name().unwrap() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(n) => dns.push((*n).to_owned()),
                    GeneralName::IPAddress(bytes) => ips.push(match bytes.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap()),
                        _ => IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap()),
                    }),
                    other => panic!("unexpected SAN {other:?}"),
                }
            }
        }
        dns.sort();
        ips.sort();
        (dns, ips)
    }

    fn attribute(
        cert: &X509Certificate<'_>,
        oid: &x509_parser::der_parser::Oid<'_>,
    ) -> Vec<String> {
        cert.subject()
            .iter_by_oid(oid)
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    }

    fn common_name(cert: &X509Certificate<'_>) -> String {
        attribute(cert, &x509_parser::oid_registry::OID_X509_COMMON_NAME).join(",")
    }

    fn organization(cert: &X509Certificate<'_>) -> Vec<String> {
        attribute(cert, &x509_parser::oid_registry::OID_X509_ORGANIZATION_NAME)
    }

    fn master_and_worker() -> (ClusterPki, ClusterInput, NodeCerts, NodeCerts) {
        let cluster = cluster(full_bundle("1.20.2"));
        let nodes = nodes();
        let pki = ClusterPki::generate("demo").unwrap();
        let master = issue_node_certs(&pki, &cluster, &nodes[0]).unwrap();
        let worker = issue_node_certs(&pki, &cluster, &nodes[1]).unwrap();
        (pki, cluster, master, worker)
    }

    #[test]
    fn pki_cas_are_self_signed_ten_year_cas() {
        let pki = ClusterPki::generate("demo").unwrap();
        let mut subjects = Vec::new();
        for authority in [Authority::Cluster, Authority::Etcd, Authority::FrontProxy] {
            let ca = pki.authority(authority);
            let pem = pem(&ca.cert_pem);
            let cert = x509(&pem);
            assert!(cert.is_ca(), "{authority}");
            assert_eq!(cert.subject().as_raw(), cert.issuer().as_raw());
            cert.verify_signature(None).unwrap();
            let ku = cert.key_usage().unwrap().unwrap().value;
            assert!(ku.key_cert_sign() && ku.crl_sign());
            let validity = cert.validity();
            let days =
                (validity.not_after.to_datetime() - validity.not_before.to_datetime()).whole_days();
            assert_eq!(
                days, 3650,
                "{authority}: {days} days (+ the clock skew minutes)"
            );
            // The key is the certificate's.
            let key = KeyPair::from_pem(&ca.key_pem).unwrap();
            assert_eq!(cert.public_key().raw, key.public_key_der());
            assert!(common_name(&cert).contains("demo"));
            subjects.push(cert.subject().to_string());
        }
        subjects.dedup();
        assert_eq!(subjects.len(), 3, "three distinct CAs");

        // The service-account public key is the private key's.
        let key = KeyPair::from_pem(&pki.service_account_key_pem).unwrap();
        assert_eq!(key.public_key_pem(), pki.service_account_pub_pem);
        assert!(pki.service_account_pub_pem.contains("BEGIN PUBLIC KEY"));
    }

    #[test]
    fn pki_every_leaf_chains_to_its_own_ca_only() {
        let (pki, _, master, worker) = master_and_worker();
        let cas: Vec<(Authority, Pem)> =
            [Authority::Cluster, Authority::Etcd, Authority::FrontProxy]
                .into_iter()
                .map(|a| (a, pem(&pki.authority(a).cert_pem)))
                .collect();
        for certs in [&master, &worker] {
            for (purpose, key_cert) in &certs.certs {
                let leaf_pem = pem(&key_cert.cert_pem);
                let leaf = x509(&leaf_pem);
                assert!(!leaf.is_ca(), "{purpose:?}");
                for (authority, ca_pem) in &cas {
                    let ca = x509(ca_pem);
                    let signed = leaf.verify_signature(Some(ca.public_key())).is_ok();
                    assert_eq!(
                        signed,
                        *authority == purpose.authority(),
                        "{purpose:?} by {authority}"
                    );
                    if signed {
                        assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw(), "{purpose:?}");
                    }
                }
                let key = KeyPair::from_pem(&key_cert.key_pem).unwrap();
                assert_eq!(leaf.public_key().raw, key.public_key_der(), "{purpose:?}");
                let validity = leaf.validity();
                let days = (validity.not_after.to_datetime() - validity.not_before.to_datetime())
                    .whole_days();
                assert_eq!(days, 365, "{purpose:?}");
            }
        }
    }

    #[test]
    fn pki_masters_get_every_purpose_workers_only_kubelet_and_kube_proxy() {
        let (_, _, master, worker) = master_and_worker();
        assert_eq!(
            master.certs.keys().copied().collect::<Vec<_>>(),
            CertPurpose::ALL
        );
        assert_eq!(
            worker.certs.keys().copied().collect::<Vec<_>>(),
            [CertPurpose::Kubelet, CertPurpose::KubeProxy]
        );
    }

    #[test]
    fn pki_sans_of_etcd_and_apiserver_and_kubelet() {
        let (_, _, master, worker) = master_and_worker();
        for purpose in [CertPurpose::EtcdServer, CertPurpose::EtcdPeer] {
            let pem = pem(&master.get(purpose).unwrap().cert_pem);
            let (dns, ips) = sans(&x509(&pem));
            assert_eq!(dns, ["localhost", "m1"], "{purpose:?}");
            assert_eq!(ips, [ip("10.0.0.11"), ip("127.0.0.1")], "{purpose:?}");
        }

        let pem_ = pem(&master.get(CertPurpose::Apiserver).unwrap().cert_pem);
        let (dns, ips) = sans(&x509(&pem_));
        for name in KUBERNETES_SERVICE_NAMES {
            assert!(dns.contains(&(*name).to_owned()), "{name}");
        }
        assert_eq!(
            dns,
            [
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "localhost",
                "m1",
            ]
        );
        assert_eq!(ips, [ip("10.0.0.11"), ip("10.96.0.1"), ip("127.0.0.1")]);

        let pem_ = pem(&worker.get(CertPurpose::Kubelet).unwrap().cert_pem);
        let kubelet = x509(&pem_);
        assert_eq!(
            sans(&kubelet),
            (vec!["w1".to_owned()], vec![ip("10.0.0.12")])
        );
        assert_eq!(common_name(&kubelet), "system:node:w1");
        assert_eq!(organization(&kubelet), ["system:nodes"]);

        for purpose in [
            CertPurpose::ControllerManagerServing,
            CertPurpose::SchedulerServing,
        ] {
            let pem = pem(&master.get(purpose).unwrap().cert_pem);
            assert_eq!(
                sans(&x509(&pem)),
                (vec!["localhost".to_owned()], vec![ip("127.0.0.1")]),
                "{purpose:?}"
            );
        }
    }

    #[test]
    fn pki_key_usages_separate_servers_from_clients() {
        let (_, _, master, _) = master_and_worker();
        for (purpose, key_cert) in &master.certs {
            let pem = pem(&key_cert.cert_pem);
            let cert = x509(&pem);
            let ku = cert.key_usage().unwrap().unwrap().value;
            assert!(ku.digital_signature() && !ku.key_cert_sign(), "{purpose:?}");
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            let (server, client) = match purpose {
                CertPurpose::EtcdServer | CertPurpose::EtcdPeer | CertPurpose::Kubelet => {
                    (true, true)
                }
                CertPurpose::Apiserver
                | CertPurpose::ControllerManagerServing
                | CertPurpose::SchedulerServing => (true, false),
                _ => (false, true),
            };
            assert_eq!(
                (eku.server_auth, eku.client_auth),
                (server, client),
                "{purpose:?}"
            );
            assert!(!eku.any && eku.other.is_empty(), "{purpose:?}");
        }
    }

    #[test]
    fn pki_client_identities() {
        let (_, _, master, _) = master_and_worker();
        let subject = |purpose| {
            let pem = pem(&master.get(purpose).unwrap().cert_pem);
            let cert = x509(&pem);
            (common_name(&cert), organization(&cert))
        };
        let none: Vec<String> = Vec::new();
        assert_eq!(
            subject(CertPurpose::Kubelet),
            ("system:node:m1".to_owned(), vec!["system:nodes".to_owned()])
        );
        assert_eq!(
            subject(CertPurpose::ApiserverKubeletClient),
            (
                "kube-apiserver-kubelet-client".to_owned(),
                vec!["system:masters".to_owned()]
            )
        );
        assert_eq!(
            subject(CertPurpose::ControllerManagerClient),
            ("system:kube-controller-manager".to_owned(), none.clone())
        );
        assert_eq!(
            subject(CertPurpose::SchedulerClient),
            ("system:kube-scheduler".to_owned(), none.clone())
        );
        assert_eq!(
            subject(CertPurpose::KubeProxy),
            ("system:kube-proxy".to_owned(), none.clone())
        );
        assert_eq!(
            subject(CertPurpose::FrontProxyClient),
            ("front-proxy-client".to_owned(), none.clone())
        );
        // The agent's probe identity has no group: it may read health endpoints, nothing more.
        assert_eq!(subject(CertPurpose::ApiserverHealthcheckClient).1, none);
    }

    #[test]
    fn pki_debug_never_shows_a_private_key() {
        let (pki, _, master, _) = master_and_worker();
        let debug = format!("{pki:?} {pki:#?} {master:?} {master:#?}");
        assert!(!debug.contains("PRIVATE KEY"));
        assert!(debug.contains("<redacted>"));
        assert!(debug.contains("BEGIN CERTIFICATE"));
        let secrets = [
            &pki.ca.key_pem,
            &pki.service_account_key_pem,
            &master.get(CertPurpose::Kubelet).unwrap().key_pem,
        ];
        for secret in secrets {
            for line in secret.lines().filter(|l| !l.starts_with("-----")) {
                assert!(!debug.contains(line), "{line} leaked");
            }
        }
    }

    #[test]
    fn pki_round_trips_through_json() {
        let (pki, _, master, _) = master_and_worker();
        let json = serde_json::to_string(&pki).unwrap();
        assert_eq!(serde_json::from_str::<ClusterPki>(&json).unwrap(), pki);
        let json = serde_json::to_value(&master).unwrap();
        assert!(json["certs"]["etcd_server"]["cert_pem"].is_string());
        assert_eq!(serde_json::from_value::<NodeCerts>(json).unwrap(), master);
    }

    #[test]
    fn pki_node_certs_fit_until_address_role_or_service_range_change() {
        let (pki, cluster, master_certs, worker_certs) = master_and_worker();
        let nodes = nodes();
        let (m1, w1) = (&nodes[0], &nodes[1]);
        assert!(node_certs_fit(&master_certs, &cluster, m1));
        assert!(node_certs_fit(&worker_certs, &cluster, w1));

        // A new address.
        let mut moved = m1.clone();
        moved.address = ip("10.0.0.99");
        assert!(!node_certs_fit(&master_certs, &cluster, &moved));
        let mut moved = w1.clone();
        moved.address = ip("10.0.0.98");
        assert!(!node_certs_fit(&worker_certs, &cluster, &moved));

        // A new role, either way.
        let promoted = master(2, "w1", "10.0.0.12");
        assert!(!node_certs_fit(&worker_certs, &cluster, &promoted));
        let demoted = worker(1, "m1", "10.0.0.11");
        assert!(!node_certs_fit(&master_certs, &cluster, &demoted));
        // ...and the new certificates fit the new role.
        let reissued = issue_node_certs(&pki, &cluster, &promoted).unwrap();
        assert!(node_certs_fit(&reissued, &cluster, &promoted));

        // Another node's certificates, or another service range (the API server's SAN).
        assert!(!node_certs_fit(&worker_certs, &cluster, &nodes[2]));
        let mut other_range = cluster.clone();
        other_range.service_cidr = "10.100.0.0/16".parse().unwrap();
        assert!(!node_certs_fit(&master_certs, &other_range, m1));
        assert!(node_certs_fit(&worker_certs, &other_range, w1));

        // A missing, an extra or an unreadable certificate.
        let mut missing = master_certs.clone();
        missing.certs.remove(&CertPurpose::EtcdPeer);
        assert!(!node_certs_fit(&missing, &cluster, m1));
        let mut extra = worker_certs.clone();
        extra.certs.insert(
            CertPurpose::EtcdPeer,
            master_certs.get(CertPurpose::EtcdPeer).unwrap().clone(),
        );
        assert!(!node_certs_fit(&extra, &cluster, w1));
        let mut garbage = worker_certs.clone();
        garbage
            .certs
            .get_mut(&CertPurpose::KubeProxy)
            .unwrap()
            .cert_pem = "garbage".into();
        assert!(!node_certs_fit(&garbage, &cluster, w1));
    }

    #[test]
    fn pki_node_certs_stop_fitting_shortly_before_they_expire() {
        let (_, cluster, _, worker_certs) = master_and_worker();
        let w1 = &nodes()[1];
        let now = now();
        assert!(node_certs_fit_at(
            &worker_certs,
            &cluster,
            w1,
            now + Duration::days(330)
        ));
        assert!(!node_certs_fit_at(
            &worker_certs,
            &cluster,
            w1,
            now + Duration::days(336)
        ));
    }

    #[test]
    fn pki_refuses_a_ca_it_cannot_load() {
        let (mut pki, cluster, _, _) = master_and_worker();
        pki.etcd_ca.key_pem = pki.ca.key_pem.replace("MI", "XX");
        let err = issue_node_certs(&pki, &cluster, &nodes()[0]).unwrap_err();
        assert!(
            matches!(
                err,
                PkiError::LoadCa {
                    authority: Authority::Etcd,
                    ..
                }
            ),
            "{err}"
        );
        // A worker needs nothing from the etcd CA.
        assert!(issue_node_certs(&pki, &cluster, &nodes()[1]).is_ok());
    }
}
