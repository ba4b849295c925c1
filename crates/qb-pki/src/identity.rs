//! Node identities and reading them back out of node certificates.

use std::fmt;
use std::str::FromStr;

use qb_api::{NodeId, TenantId};
use time::OffsetDateTime;
use uuid::Uuid;
use x509_parser::extensions::GeneralName;

use crate::PkiError;
use crate::util::parse_cert;

/// Who a node certificate belongs to. Carried in the certificate as the one URI SAN
/// `urn:qb:tenant:<tenant uuid>:node:<node uuid>`, with the node id as the subject's CN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeIdentity {
    /// The tenant owning the node.
    pub tenant: TenantId,
    /// The node.
    pub node: NodeId,
}

const TENANT_PREFIX: &str = "urn:qb:tenant:";
const NODE_INFIX: &str = ":node:";

impl NodeIdentity {
    /// The SAN URI of this identity, `urn:qb:tenant:<uuid>:node:<uuid>`.
    pub fn uri(&self) -> String {
        self.to_string()
    }

    /// Parses a SAN URI; only the canonical form (lower-case hyphenated UUIDs) is accepted.
    pub fn from_uri(uri: &str) -> Result<Self, PkiError> {
        let invalid = || PkiError::InvalidNodeIdentity {
            uri: uri.chars().take(200).collect(),
        };
        let rest = uri.strip_prefix(TENANT_PREFIX).ok_or_else(invalid)?;
        let (tenant, node) = rest.split_once(NODE_INFIX).ok_or_else(invalid)?;
        let tenant = Uuid::parse_str(tenant).map_err(|_| invalid())?;
        let node = Uuid::parse_str(node).map_err(|_| invalid())?;
        let identity = Self {
            tenant: TenantId(tenant),
            node: NodeId(node),
        };
        // Uuid::parse_str also takes braces, `urn:uuid:`, upper case and no hyphens: one
        // identity must have one spelling.
        if identity.uri() != uri {
            return Err(invalid());
        }
        Ok(identity)
    }
}

impl fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TENANT_PREFIX}{}{NODE_INFIX}{}", self.tenant, self.node)
    }
}

impl FromStr for NodeIdentity {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_uri(s)
    }
}

/// What the controller needs from a node certificate presented on its agent port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCertInfo {
    /// Who the certificate was issued to.
    pub identity: NodeIdentity,
    /// The serial number, lower-case hex of its DER bytes (as in [`crate::NodeCert::serial`]).
    pub serial: String,
    /// Start of the validity window.
    pub not_before: OffsetDateTime,
    /// End of the validity window.
    pub not_after: OffsetDateTime,
}

/// Reads identity, serial and validity out of a node certificate (DER). Rejects CA certificates,
/// certificates without the clientAuth EKU, and any without exactly one URI SAN that is a
/// well-formed qb node identity.
///
/// It does not verify the certificate: call it on one the TLS layer has verified
/// ([`crate::agent_client_verifier`]), then check the node is still authorized.
pub fn node_cert_info(der: &[u8]) -> Result<NodeCertInfo, PkiError> {
    const WHAT: &str = "node certificate";
    let malformed = |source| PkiError::Malformed { what: WHAT, source };
    let invalid = |reason: &str| PkiError::Invalid {
        what: WHAT,
        reason: reason.to_owned(),
    };
    let cert = parse_cert(der, WHAT)?;

    if cert.is_ca() {
        return Err(invalid("it is a CA certificate"));
    }
    let client_auth = cert
        .extended_key_usage()
        .map_err(malformed)?
        .is_some_and(|eku| eku.value.client_auth);
    if !client_auth {
        return Err(invalid("no clientAuth extended key usage"));
    }

    let uris: Vec<&str> = cert
        .subject_alternative_name()
        .map_err(malformed)?
        .iter()
        .flat_map(|san| san.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    let identity = match uris.as_slice() {
        [uri] => NodeIdentity::from_uri(uri)?,
        _ => {
            return Err(PkiError::Invalid {
                what: WHAT,
                reason: format!("expected exactly one URI SAN, found {}", uris.len()),
            });
        }
    };

    let validity = cert.validity();
    Ok(NodeCertInfo {
        identity,
        serial: hex::encode(cert.raw_serial()),
        not_before: validity.not_before.to_datetime(),
        not_after: validity.not_after.to_datetime(),
    })
}

/// Every replica certificate's URI SAN starts with this, then the replica's id.
pub const REPLICA_URI_PREFIX: &str = "qb:replica:";

/// The replica a certificate (DER) was issued to by
/// [`crate::CertificateAuthority::issue_replica_cert`]: not a CA, clientAuth, exactly one URI
/// SAN, `qb:replica:<id>`. `None` for anything else, node certificates included. Like
/// [`node_cert_info`], call it only on a certificate the TLS layer verified.
pub fn replica_of(der: &[u8]) -> Option<String> {
    let cert = parse_cert(der, "replica certificate").ok()?;
    let client_auth = cert
        .extended_key_usage()
        .ok()
        .flatten()
        .is_some_and(|eku| eku.value.client_auth);
    if cert.is_ca() || !client_auth {
        return None;
    }
    let san = cert.subject_alternative_name().ok().flatten()?;
    match san.value.general_names.as_slice() {
        [GeneralName::URI(uri)] => uri
            .strip_prefix(REPLICA_URI_PREFIX)
            .filter(|id| !id.is_empty())
            .map(str::to_owned),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, SanType};

    use super::*;
    use crate::CertificateAuthority;
    use crate::testing::{cert_der, csr, identity};

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate("qb test CA", time::Duration::days(30)).unwrap()
    }

    /// A certificate signed by rcgen directly (not by `sign_node_csr`), for shapes the CA never
    /// issues.
    fn custom_cert(sans: Vec<SanType>, ekus: Vec<ExtendedKeyUsagePurpose>) -> Vec<u8> {
        let issuer_key = KeyPair::generate().unwrap();
        let mut issuer_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        issuer_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = issuer_params.self_signed(&issuer_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.extended_key_usages = ekus;
        params
            .signed_by(&key, &issuer, &issuer_key)
            .unwrap()
            .der()
            .to_vec()
    }

    fn uri_san(uri: &str) -> SanType {
        SanType::URI(uri.to_owned().try_into().unwrap())
    }

    #[test]
    fn uri_round_trips() {
        let id = identity();
        let uri = id.uri();
        assert_eq!(
            uri,
            format!("urn:qb:tenant:{}:node:{}", id.tenant.0, id.node.0)
        );
        assert_eq!(NodeIdentity::from_uri(&uri).unwrap(), id);
        assert_eq!(uri.parse::<NodeIdentity>().unwrap(), id);
        assert_eq!(id.to_string(), uri);
    }

    #[test]
    fn from_uri_accepts_only_the_canonical_form() {
        let id = identity();
        let (t, n) = (id.tenant.0, id.node.0);
        for bad in [
            String::new(),
            "urn:qb:tenant:".to_owned(),
            format!("urn:qb:node:{n}:tenant:{t}"),
            format!("urn:qb:tenant:{t}"),
            format!("urn:qb:tenant:{t}:node:"),
            format!("urn:qb:tenant:{t}:node:{n}:extra"),
            format!("urn:qb:tenant:{t}:node:{n}/"),
            format!("URN:qb:tenant:{t}:node:{n}"),
            format!("urn:qb:tenant:{}:node:{n}", t.to_string().to_uppercase()),
            format!("urn:qb:tenant:{t}:node:{}", n.simple()),
            format!("urn:qb:tenant:{{{t}}}:node:{n}"),
            format!("urn:qb:tenant:{t}:node:urn:uuid:{n}"),
            format!(" urn:qb:tenant:{t}:node:{n}"),
        ] {
            let err = NodeIdentity::from_uri(&bad).unwrap_err();
            assert!(
                matches!(err, PkiError::InvalidNodeIdentity { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn reads_a_node_certificate() {
        let ca = ca();
        let id = identity();
        let cert = ca
            .sign_node_csr(&csr("host-1"), &id, time::Duration::days(7))
            .unwrap();
        let info = node_cert_info(&cert_der(&cert.cert_pem)).unwrap();
        assert_eq!(info.identity, id);
        assert_eq!(info.serial, cert.serial);
        assert_eq!(info.not_before, cert.not_before);
        assert_eq!(info.not_after, cert.not_after);
    }

    #[test]
    fn rejects_a_server_certificate() {
        let ca = ca();
        let server = ca
            .issue_server_cert(&["controller.example"], time::Duration::days(7))
            .unwrap();
        let err = node_cert_info(&cert_der(&server.cert_pem)).unwrap_err();
        assert!(err.to_string().contains("clientAuth"), "{err}");
        // Nor the CA's own certificate.
        let err = node_cert_info(ca.cert_der()).unwrap_err();
        assert!(err.to_string().contains("CA certificate"), "{err}");
    }

    #[test]
    fn rejects_certificates_without_exactly_one_qb_uri() {
        let uri = identity().uri();
        let client = vec![ExtendedKeyUsagePurpose::ClientAuth];
        // The shape the CA issues is accepted...
        let good = custom_cert(vec![uri_san(&uri)], client.clone());
        assert_eq!(node_cert_info(&good).unwrap().identity.uri(), uri);
        // ...and these are not.
        let cases = [
            ("no SAN", custom_cert(vec![], client.clone())),
            (
                "DNS SAN only",
                custom_cert(
                    vec![SanType::DnsName("node.example".try_into().unwrap())],
                    client.clone(),
                ),
            ),
            (
                "two qb URIs",
                custom_cert(
                    vec![uri_san(&uri), uri_san(&identity().uri())],
                    client.clone(),
                ),
            ),
            (
                "a qb URI and another URI",
                custom_cert(
                    vec![uri_san(&uri), uri_san("https://node.example/")],
                    client.clone(),
                ),
            ),
            (
                "a malformed qb URI",
                custom_cert(vec![uri_san(&uri.to_uppercase())], client.clone()),
            ),
            ("no EKU", custom_cert(vec![uri_san(&uri)], vec![])),
            (
                "serverAuth only",
                custom_cert(
                    vec![uri_san(&uri)],
                    vec![ExtendedKeyUsagePurpose::ServerAuth],
                ),
            ),
        ];
        for (case, der) in cases {
            assert!(node_cert_info(&der).is_err(), "{case} was accepted");
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            node_cert_info(b""),
            Err(PkiError::Malformed { .. })
        ));
        assert!(matches!(
            node_cert_info(&[0x30, 0x03, 0x02, 0x01, 0x01]),
            Err(PkiError::Malformed { .. })
        ));
        let ca = ca();
        let cert = ca
            .sign_node_csr(&csr("h"), &identity(), time::Duration::days(1))
            .unwrap();
        let mut der = cert_der(&cert.cert_pem);
        der.extend_from_slice(b"trailing");
        assert!(matches!(
            node_cert_info(&der),
            Err(PkiError::Invalid { .. })
        ));
    }
}
