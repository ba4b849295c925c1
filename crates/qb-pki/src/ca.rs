//! The controller's certificate authority.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName};
use time::{Duration, OffsetDateTime};

use crate::csr::verified_csr_key;
use crate::util::{now, parse_cert, pem_encode, random_serial, single_pem_block};
use crate::{NodeIdentity, Pin, PkiError};

/// How far before "now" issued certificates start, so that a host whose clock is behind the
/// controller's (by up to this much) accepts them: it must reach the controller to be told its
/// clock is off (preflight refuses a host more than a minute off).
pub const CLOCK_SKEW: Duration = Duration::hours(2);

/// A PEM-encoded PKCS#8 private key. A secret: `Debug` prints `<redacted>` and there is no
/// `Display`, so it cannot reach a log by accident; [`PrivateKeyPem::expose`] is explicit.
#[derive(Clone)]
pub struct PrivateKeyPem(String);

impl PrivateKeyPem {
    pub(crate) fn new(pem: String) -> Self {
        Self(pem)
    }

    /// The PEM text, to write to a file readable only by its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyPem(<redacted>)")
    }
}

/// The controller's internal CA: signs node (agent) client certificates and the controller's
/// agent-endpoint server certificate. ECDSA P-256, `CA:true, pathlen:0`, keyCertSign|cRLSign.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    /// The subject, for `Debug`.
    subject: String,
    not_after: OffsetDateTime,
    pin: Pin,
    key: KeyPair,
    /// rcgen's view of the CA, rebuilt from `cert_der`, used only as the issuer when signing:
    /// its own DER is a re-signed copy and is never shown.
    issuer: rcgen::Certificate,
}

/// A certificate with its new private key: the controller's agent-endpoint server certificate.
#[derive(Clone)]
pub struct IssuedCert {
    /// The leaf certificate.
    pub cert_pem: String,
    /// The leaf then the CA certificate: what the server presents, so agents find the pinned CA.
    pub chain_pem: String,
    /// The leaf's private key. A secret.
    pub key_pem: PrivateKeyPem,
    /// Lower-case hex of the serial number's DER bytes.
    pub serial: String,
    /// Start of the validity window, as written in the certificate.
    pub not_before: OffsetDateTime,
    /// End of the validity window, as written in the certificate.
    pub not_after: OffsetDateTime,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &self.key_pem)
            .finish_non_exhaustive()
    }
}

/// A signed node (agent) client certificate. The key stays on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCert {
    /// The node's certificate, PEM.
    pub cert_pem: String,
    /// Lower-case hex of the serial number's DER bytes: what [`crate::node_cert_info`] reads.
    pub serial: String,
    /// Start of the validity window, as written in the certificate.
    pub not_before: OffsetDateTime,
    /// End of the validity window, as written in the certificate.
    pub not_after: OffsetDateTime,
}

impl CertificateAuthority {
    /// A new CA with a fresh ECDSA P-256 key, valid from [`CLOCK_SKEW`] ago for `validity`.
    pub fn generate(common_name: &str, validity: Duration) -> Result<Self, PkiError> {
        Self::generate_at(common_name, validity, now())
    }

    fn generate_at(
        common_name: &str,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<Self, PkiError> {
        if common_name.is_empty() {
            return Err(PkiError::Invalid {
                what: "CA common name",
                reason: "empty".into(),
            });
        }
        if validity <= Duration::ZERO {
            return Err(PkiError::Validity(validity));
        }
        let not_after = now
            .checked_add(validity)
            .ok_or(PkiError::Validity(validity))?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(PkiError::Rcgen)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        params.not_before = now - CLOCK_SKEW;
        params.not_after = not_after;
        let cert = params.self_signed(&key).map_err(PkiError::Rcgen)?;
        // The same path as a CA loaded from disk, so both behave alike.
        Self::from_parts(cert.der().to_vec(), key)
    }

    /// Loads a CA from its certificate and PKCS#8 private key. Checks that the certificate is a
    /// CA certificate (and may sign certificates) and that the key is the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let der = single_pem_block(cert_pem, &["CERTIFICATE"], "CA certificate")?;
        let key = KeyPair::from_pem(key_pem).map_err(PkiError::PrivateKey)?;
        Self::from_parts(der, key)
    }

    fn from_parts(der: Vec<u8>, key: KeyPair) -> Result<Self, PkiError> {
        const WHAT: &str = "CA certificate";
        let invalid = |reason: &str| PkiError::Invalid {
            what: WHAT,
            reason: reason.to_owned(),
        };
        let x509 = parse_cert(&der, WHAT)?;
        if !x509.is_ca() {
            return Err(invalid("not a CA certificate (basicConstraints CA:true)"));
        }
        let key_usage = x509
            .key_usage()
            .map_err(|source| PkiError::Malformed { what: WHAT, source })?;
        if key_usage.is_some_and(|ku| !ku.value.key_cert_sign()) {
            return Err(invalid("its keyUsage does not allow keyCertSign"));
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(PkiError::KeyMismatch);
        }

        let issuer = CertificateParams::from_ca_cert_der(&CertificateDer::from(der.as_slice()))
            .and_then(|params| params.self_signed(&key))
            .map_err(PkiError::Rcgen)?;
        // webpki matches issuer to subject byte for byte: if rcgen cannot re-encode this subject
        // exactly, nothing this CA signed would verify. Refuse it now rather than later.
        let reencoded = parse_cert(issuer.der(), WHAT)?;
        if reencoded.subject().as_raw() != x509.subject().as_raw() {
            return Err(invalid("its subject name cannot be reproduced exactly"));
        }

        Ok(Self {
            cert_pem: pem_encode("CERTIFICATE", &der),
            subject: x509.subject().to_string(),
            not_after: x509.validity().not_after.to_datetime(),
            pin: Pin::of_spki(x509.public_key().raw),
            cert_der: CertificateDer::from(der),
            key,
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA's private key, PKCS#8 PEM. A secret.
    pub fn key_pem(&self) -> PrivateKeyPem {
        PrivateKeyPem(self.key.serialize_pem())
    }

    /// The pin agents are given: SHA-256 of the CA certificate's SubjectPublicKeyInfo.
    pub fn pin(&self) -> Pin {
        self.pin
    }

    /// When the CA certificate expires; nothing it issues outlives it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// A server certificate for the controller's agent endpoint, with a fresh P-256 key:
    /// serverAuth EKU only, the given DNS names and IP addresses as SANs (the first is the CN).
    pub fn issue_server_cert(
        &self,
        sans: &[impl AsRef<str>],
        validity: Duration,
    ) -> Result<IssuedCert, PkiError> {
        self.issue_server_cert_at(sans, validity, now())
    }

    fn issue_server_cert_at(
        &self,
        sans: &[impl AsRef<str>],
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        let Some(first) = sans.first() else {
            return Err(PkiError::Invalid {
                what: "server certificate",
                reason: "no subject alternative name".into(),
            });
        };
        let subject_alt_names = sans
            .iter()
            .map(|san| parse_san(san.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        self.issue_leaf(first.as_ref(), validity, now, |params| {
            params.subject_alt_names = subject_alt_names;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        })
    }

    /// A new key and a certificate for it, signed now for `validity`, named `common_name` and
    /// completed by `shape` (SANs, usages).
    fn issue_leaf(
        &self,
        common_name: &str,
        validity: Duration,
        now: OffsetDateTime,
        shape: impl FnOnce(&mut CertificateParams),
    ) -> Result<IssuedCert, PkiError> {
        let (not_before, not_after) = self.window(validity, now)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(PkiError::Rcgen)?;
        let serial = random_serial()?;
        let mut params = leaf_params(common_name, serial, not_before, not_after);
        shape(&mut params);
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(PkiError::Rcgen)?;
        let cert_pem = cert.pem();
        Ok(IssuedCert {
            chain_pem: format!("{cert_pem}{}", self.cert_pem),
            cert_pem,
            key_pem: PrivateKeyPem(key.serialize_pem()),
            serial: hex::encode(serial),
            not_before,
            not_after,
        })
    }

    /// Signs an agent's CSR for the identity the controller chose. Only the CSR's public key is
    /// used, after its signature verified (the agent holds the key); the subject, SANs and
    /// extensions it asks for are ignored. The certificate has CN = node id, the identity's URI
    /// SAN, clientAuth EKU only, digitalSignature, and a random serial.
    pub fn sign_node_csr(
        &self,
        csr_pem: &str,
        identity: &NodeIdentity,
        validity: Duration,
    ) -> Result<NodeCert, PkiError> {
        self.sign_node_csr_at(csr_pem, identity, validity, now())
    }

    fn sign_node_csr_at(
        &self,
        csr_pem: &str,
        identity: &NodeIdentity,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<NodeCert, PkiError> {
        let public_key = verified_csr_key(csr_pem)?;
        let (not_before, not_after) = self.window(validity, now)?;
        let serial = random_serial()?;

        let mut params = leaf_params(&identity.node.to_string(), serial, not_before, not_after);
        let uri = identity
            .uri()
            .try_into()
            .expect("a node identity URI is ASCII");
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&public_key, &self.issuer, &self.key)
            .map_err(PkiError::Rcgen)?;

        Ok(NodeCert {
            cert_pem: cert.pem(),
            serial: hex::encode(serial),
            not_before,
            not_after,
        })
    }

    /// A key and certificate for signing plans: codeSigning EKU and the URI SAN
    /// [`crate::PLAN_SIGNER_URI`], which node certificates never carry, so no agent key can
    /// sign a plan another agent would accept.
    pub fn issue_plan_signer(&self, validity: Duration) -> Result<crate::PlanSigner, PkiError> {
        let (not_before, not_after) = self.window(validity, now())?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(PkiError::Rcgen)?;
        let mut params = leaf_params("qb plan signer", random_serial()?, not_before, not_after);
        params.subject_alt_names = vec![SanType::URI(
            crate::PLAN_SIGNER_URI
                .try_into()
                .expect("the plan signer URI is ASCII"),
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(PkiError::Rcgen)?;
        crate::PlanSigner::from_pem(
            &format!("{}{}", cert.pem(), self.cert_pem),
            &key.serialize_pem(),
        )
    }

    /// A certificate for a controller replica, with which it reaches the other replicas'
    /// agent endpoints: clientAuth and serverAuth EKUs and the URI SAN
    /// `qb:replica:<replica>` ([`crate::replica_of`] reads it back), which no node certificate
    /// carries.
    pub fn issue_replica_cert(
        &self,
        replica: &str,
        validity: Duration,
    ) -> Result<IssuedCert, PkiError> {
        let uri = format!("{}{replica}", crate::REPLICA_URI_PREFIX);
        if replica.is_empty()
            || !replica
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(PkiError::Invalid {
                what: "replica certificate",
                reason: format!("{replica:?} is not a replica id"),
            });
        }
        let san = SanType::URI(uri.as_str().try_into().map_err(PkiError::Rcgen)?);
        self.issue_leaf("qb controller replica", validity, now(), |params| {
            params.subject_alt_names = vec![san];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ];
        })
    }

    /// The validity window of a certificate issued `now` for `validity`: from [`CLOCK_SKEW`]
    /// ago, to `now + validity` or the CA's own expiry, whichever comes first.
    fn window(
        &self,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
        if validity <= Duration::ZERO {
            return Err(PkiError::Validity(validity));
        }
        if self.not_after <= now {
            return Err(PkiError::CaExpired {
                not_after: self.not_after,
            });
        }
        let not_after = now
            .checked_add(validity)
            .map_or(self.not_after, |end| end.min(self.not_after));
        Ok((now - CLOCK_SKEW, not_after))
    }
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.subject)
            .field("pin", &self.pin)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// What every leaf has: CN, serial, validity, not a CA, digitalSignature, and the CA's key id.
fn leaf_params(
    common_name: &str,
    serial: [u8; 16],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

/// A SAN of a server certificate: an IP address, or a DNS name (no wildcards).
fn parse_san(san: &str) -> Result<SanType, PkiError> {
    let invalid = || PkiError::InvalidSan {
        san: san.chars().take(256).collect(),
    };
    if let Ok(ip) = IpAddr::from_str(san) {
        return Ok(SanType::IpAddress(ip));
    }
    match ServerName::try_from(san) {
        Ok(ServerName::DnsName(_)) => Ok(SanType::DnsName(
            san.to_owned().try_into().map_err(|_| invalid())?,
        )),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::RootCertStore;
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::UnixTime;
    use rustls::server::WebPkiClientVerifier;
    use rustls::server::danger::ClientCertVerifier;
    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::GeneralName;

    use super::*;
    use crate::testing::{
        cert_der, csr, identity, is_invalid_purpose, is_not_valid_for_name, tamper_csr, unix,
    };
    use crate::util::provider;
    use crate::{PinnedCaVerifier, node_cert_info};

    const DAY: Duration = Duration::days(1);

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate("qb test CA", Duration::days(365)).unwrap()
    }

    fn roots(ca: &CertificateAuthority) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        Arc::new(roots)
    }

    fn client_verifier(ca: &CertificateAuthority) -> Arc<dyn ClientCertVerifier> {
        WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .unwrap()
    }

    fn server_verifier(ca: &CertificateAuthority) -> Arc<WebPkiServerVerifier> {
        WebPkiServerVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .unwrap()
    }

    /// The subject alternative names of a leaf, which every leaf of this CA has.
    fn sans<'a>(x509: &'a X509Certificate<'_>) -> &'a [GeneralName<'a>] {
        &x509
            .subject_alternative_name()
            .unwrap()
            .expect("a leaf has subject alternative names")
            .value
            .general_names
    }

    #[test]
    fn shareable_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<CertificateAuthority>();
        send_sync::<PinnedCaVerifier>();
    }

    #[test]
    fn ca_certificate_has_the_right_shape() {
        let ca = ca();
        let der = ca.cert_der().to_vec();
        let x509 = parse_cert(&der, "CA").unwrap();
        assert_eq!(x509.subject().to_string(), "CN=qb test CA");
        assert_eq!(x509.subject().as_raw(), x509.issuer().as_raw());
        let bc = x509.basic_constraints().unwrap().unwrap();
        assert!(bc.critical);
        assert!(bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let ku = x509.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert!(!ku.digital_signature());
        assert_eq!(
            x509.public_key()
                .algorithm
                .parameters
                .as_ref()
                .unwrap()
                .as_oid()
                .unwrap(),
            x509_parser::oid_registry::OID_EC_P256
        );
        // Self-signed with its own key.
        x509.verify_signature(None).unwrap();
        assert_eq!(x509.raw_serial().len(), 16);
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert_eq!(cert_der(ca.cert_pem()), der);
    }

    #[test]
    fn ca_round_trips_through_pem_and_keeps_its_pin() {
        let ca = ca();
        let key_pem = ca.key_pem();
        let loaded = CertificateAuthority::from_pem(ca.cert_pem(), key_pem.expose()).unwrap();
        assert_eq!(loaded.pin(), ca.pin());
        assert_eq!(loaded.cert_der(), ca.cert_der());
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(loaded.not_after(), ca.not_after());
        assert_eq!(loaded.key_pem().expose(), key_pem.expose());

        // What the reloaded CA signs verifies against the original CA certificate, and its
        // issuer name is the CA's subject byte for byte.
        let cert = loaded.sign_node_csr(&csr("h"), &identity(), DAY).unwrap();
        let der = cert_der(&cert.cert_pem);
        client_verifier(&ca)
            .verify_client_cert(&der.clone().into(), &[], UnixTime::now())
            .unwrap();
        let leaf = parse_cert(&der, "leaf").unwrap();
        let ca_x509 = parse_cert(ca.cert_der(), "CA").unwrap();
        assert_eq!(leaf.issuer().as_raw(), ca_x509.subject().as_raw());
        // The authority key id is the CA's subject key id.
        let aki = leaf
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.clone()
                }
                _ => None,
            })
            .unwrap();
        let ski = ca_x509
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    Some(k.clone())
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(aki.0, ski.0);
    }

    #[test]
    fn from_pem_rejects_what_is_not_this_ca() {
        let ca = ca();
        let other = CertificateAuthority::generate("other", DAY).unwrap();
        // Someone else's key.
        assert!(matches!(
            CertificateAuthority::from_pem(ca.cert_pem(), other.key_pem().expose()),
            Err(PkiError::KeyMismatch)
        ));
        // A leaf with its own key is not a CA.
        let server = ca.issue_server_cert(&["c.example"], DAY).unwrap();
        let err =
            CertificateAuthority::from_pem(&server.cert_pem, server.key_pem.expose()).unwrap_err();
        assert!(matches!(err, PkiError::Invalid { .. }), "{err}");
        // The chain (two certificates) is not one CA certificate.
        assert!(matches!(
            CertificateAuthority::from_pem(&server.chain_pem, ca.key_pem().expose()),
            Err(PkiError::PemBlocks { .. })
        ));
        // Garbage.
        assert!(CertificateAuthority::from_pem("garbage", ca.key_pem().expose()).is_err());
        assert!(matches!(
            CertificateAuthority::from_pem(ca.cert_pem(), "garbage"),
            Err(PkiError::PrivateKey(_))
        ));
        assert!(matches!(
            CertificateAuthority::from_pem(ca.key_pem().expose(), ca.key_pem().expose()),
            Err(PkiError::PemBlocks { .. })
        ));
    }

    #[test]
    fn from_pem_rejects_a_ca_certificate_that_may_not_sign_certificates() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let err = CertificateAuthority::from_pem(&cert.pem(), &key.serialize_pem()).unwrap_err();
        assert!(err.to_string().contains("keyCertSign"), "{err}");
    }

    #[test]
    fn key_pem_never_appears_in_debug_output() {
        let ca = ca();
        let key = ca.key_pem();
        let server = ca.issue_server_cert(&["c.example"], DAY).unwrap();
        let debug = format!("{ca:?} {ca:#?} {key:?} {server:?} {server:#?}");
        for secret in [key.expose(), server.key_pem.expose()] {
            assert!(!debug.contains(secret));
            for line in secret.lines().filter(|l| !l.starts_with("-----")) {
                assert!(!debug.contains(line), "{line} leaked");
            }
        }
        assert!(!debug.contains("PRIVATE KEY"));
        assert!(debug.contains("<redacted>"));
        assert!(debug.contains(&ca.pin().to_string()));
    }

    #[test]
    fn node_cert_carries_the_controllers_identity_not_the_csrs() {
        let ca = ca();
        let id = identity();
        // The CSR asks for another name, other SANs (including someone else's qb identity), and
        // server use.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["controller.example".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "evil");
        params
            .subject_alt_names
            .push(SanType::URI(identity().uri().try_into().unwrap()));
        params
            .subject_alt_names
            .push(SanType::IpAddress([10, 0, 0, 1].into()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();

        let cert = ca.sign_node_csr(&csr_pem, &id, DAY).unwrap();
        let der = cert_der(&cert.cert_pem);

        // Verifies as a client certificate of this CA.
        client_verifier(&ca)
            .verify_client_cert(&der.clone().into(), &[], UnixTime::now())
            .unwrap();
        assert_eq!(node_cert_info(&der).unwrap().identity, id);

        let x509 = parse_cert(&der, "leaf").unwrap();
        assert_eq!(x509.subject().to_string(), format!("CN={}", id.node));
        assert_eq!(sans(&x509), [GeneralName::URI(&id.uri())]);
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth);
        assert!(!eku.server_auth && !eku.any && eku.other.is_empty());
        let ku = x509.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature());
        assert!(!ku.key_cert_sign());
        assert!(!x509.is_ca());
        // The key is the CSR's.
        assert_eq!(
            x509.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
    }

    #[test]
    fn node_certs_for_other_key_types() {
        let ca = ca();
        for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
            let key = KeyPair::generate_for(alg).unwrap();
            let csr_pem = CertificateParams::default()
                .serialize_request(&key)
                .unwrap()
                .pem()
                .unwrap();
            let cert = ca.sign_node_csr(&csr_pem, &identity(), DAY).unwrap();
            let der = cert_der(&cert.cert_pem);
            client_verifier(&ca)
                .verify_client_cert(&der.clone().into(), &[], UnixTime::now())
                .unwrap();
            let x509 = parse_cert(&der, "leaf").unwrap();
            assert_eq!(x509.public_key().raw, key.public_key_der());
        }
        let cert = ca
            .sign_node_csr(crate::testing::CSR_RSA_2048, &identity(), DAY)
            .unwrap();
        client_verifier(&ca)
            .verify_client_cert(&cert_der(&cert.cert_pem).into(), &[], UnixTime::now())
            .unwrap();
    }

    #[test]
    fn sign_node_csr_rejects_bad_csrs() {
        let ca = ca();
        let id = identity();
        let good = csr("h");
        assert!(matches!(
            ca.sign_node_csr(&tamper_csr(&good, true), &id, DAY),
            Err(PkiError::CsrSignature(_))
        ));
        assert!(ca.sign_node_csr("garbage", &id, DAY).is_err());
        assert!(matches!(
            ca.sign_node_csr(&"A".repeat(MAX_PLUS_ONE), &id, DAY),
            Err(PkiError::TooLarge { .. })
        ));
        assert!(matches!(
            ca.sign_node_csr(crate::testing::CSR_RSA_1024, &id, DAY),
            Err(PkiError::UnsupportedKey { .. })
        ));
    }

    const MAX_PLUS_ONE: usize = crate::MAX_CSR_PEM_LEN + 1;

    #[test]
    fn serials_are_random_and_read_back() {
        let ca = ca();
        let id = identity();
        let csr_pem = csr("h");
        let mut serials = std::collections::HashSet::new();
        for _ in 0..20 {
            let cert = ca.sign_node_csr(&csr_pem, &id, DAY).unwrap();
            assert_eq!(cert.serial.len(), 32);
            assert!(
                cert.serial
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
            assert_eq!(
                node_cert_info(&cert_der(&cert.cert_pem)).unwrap().serial,
                cert.serial
            );
            assert!(serials.insert(cert.serial));
        }
        let server = ca.issue_server_cert(&["c.example"], DAY).unwrap();
        let x509_der = cert_der(&server.cert_pem);
        let x509 = parse_cert(&x509_der, "leaf").unwrap();
        assert_eq!(hex::encode(x509.raw_serial()), server.serial);
        assert!(serials.insert(server.serial));
        assert!(serials.insert(hex::encode(
            parse_cert(ca.cert_der(), "CA").unwrap().raw_serial()
        )));
    }

    #[test]
    fn validity_windows() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let ca = CertificateAuthority::generate_at("qb test CA", Duration::days(365), now).unwrap();
        assert_eq!(ca.not_after(), now + Duration::days(365));
        let ca_x509 = parse_cert(ca.cert_der(), "CA").unwrap();
        assert_eq!(
            ca_x509.validity().not_before.to_datetime(),
            now - CLOCK_SKEW
        );

        let later = now + Duration::days(10);
        let cert = ca
            .sign_node_csr_at(&csr("h"), &identity(), Duration::days(30), later)
            .unwrap();
        assert_eq!(cert.not_before, later - CLOCK_SKEW);
        assert_eq!(cert.not_after, later + Duration::days(30));
        let info = node_cert_info(&cert_der(&cert.cert_pem)).unwrap();
        assert_eq!(
            (info.not_before, info.not_after),
            (cert.not_before, cert.not_after)
        );

        // webpki agrees: valid just inside the window, not just outside it.
        let der = cert_der(&cert.cert_pem).into();
        let verifier = client_verifier(&ca);
        for (at, ok) in [
            (cert.not_before, true),
            (cert.not_after, true),
            (cert.not_before - Duration::seconds(1), false),
            (cert.not_after + Duration::seconds(1), false),
        ] {
            assert_eq!(
                verifier.verify_client_cert(&der, &[], unix(at)).is_ok(),
                ok,
                "{at}"
            );
        }

        // Nothing outlives the CA.
        let long = ca
            .issue_server_cert_at(&["c.example"], Duration::days(10_000), later)
            .unwrap();
        assert_eq!(long.not_after, ca.not_after());
        let capped = ca
            .sign_node_csr_at(&csr("h"), &identity(), Duration::MAX, later)
            .unwrap();
        assert_eq!(capped.not_after, ca.not_after());

        // No certificates from an expired CA, nor with no validity.
        assert!(matches!(
            ca.sign_node_csr_at(&csr("h"), &identity(), DAY, ca.not_after()),
            Err(PkiError::CaExpired { .. })
        ));
        for bad in [Duration::ZERO, Duration::seconds(-1)] {
            assert!(matches!(
                ca.sign_node_csr_at(&csr("h"), &identity(), bad, later),
                Err(PkiError::Validity(_))
            ));
            assert!(matches!(
                CertificateAuthority::generate("x", bad),
                Err(PkiError::Validity(_))
            ));
        }
        assert!(matches!(
            CertificateAuthority::generate("x", Duration::MAX),
            Err(PkiError::Validity(_))
        ));
    }

    #[test]
    fn node_cert_is_not_a_server_cert_and_server_cert_is_not_a_client_cert() {
        let ca = ca();
        let node = ca.sign_node_csr(&csr("h"), &identity(), DAY).unwrap();
        let server = ca.issue_server_cert(&["controller.example"], DAY).unwrap();
        let node_der = cert_der(&node.cert_pem).into();
        let server_der = cert_der(&server.cert_pem).into();
        let name = ServerName::try_from("controller.example").unwrap();

        // Each is good for its own purpose...
        server_verifier(&ca)
            .verify_server_cert(&server_der, &[], &name, &[], UnixTime::now())
            .unwrap();
        client_verifier(&ca)
            .verify_client_cert(&node_der, &[], UnixTime::now())
            .unwrap();
        // ...and refused for the other, for want of the EKU.
        let err = server_verifier(&ca)
            .verify_server_cert(&node_der, &[], &name, &[], UnixTime::now())
            .unwrap_err();
        assert!(is_invalid_purpose(&err), "{err:?}");
        let err = client_verifier(&ca)
            .verify_client_cert(&server_der, &[], UnixTime::now())
            .unwrap_err();
        assert!(is_invalid_purpose(&err), "{err:?}");
    }

    #[test]
    fn server_cert_sans_and_chain() {
        let ca = ca();
        let server = ca
            .issue_server_cert(&["controller.example", "10.1.2.3", "::1"], DAY)
            .unwrap();
        let der = cert_der(&server.cert_pem);
        let x509 = parse_cert(&der, "leaf").unwrap();
        assert_eq!(x509.subject().to_string(), "CN=controller.example");
        let sans = sans(&x509);
        assert_eq!(sans.len(), 3);
        assert_eq!(sans[0], GeneralName::DNSName("controller.example"));
        assert_eq!(sans[1], GeneralName::IPAddress(&[10, 1, 2, 3]));
        let verifier = server_verifier(&ca);
        for name in ["controller.example", "10.1.2.3", "::1"] {
            let name = ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&der.clone().into(), &[], &name, &[], UnixTime::now())
                .unwrap();
        }
        let err = verifier
            .verify_server_cert(
                &der.clone().into(),
                &[],
                &ServerName::try_from("other.example").unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_err();
        assert!(is_not_valid_for_name(&err), "{err:?}");

        // The chain is the leaf then the CA.
        let chain: Vec<_> = pem::parse_many(&server.chain_pem)
            .unwrap()
            .into_iter()
            .map(|p| p.into_contents())
            .collect();
        assert_eq!(chain, vec![der.clone(), ca.cert_der().to_vec()]);
        // The key is the leaf's.
        let key = KeyPair::from_pem(server.key_pem.expose()).unwrap();
        assert_eq!(x509.public_key().raw, key.public_key_der());

        for bad in ["", "*.example.com", "bad name", "exa mple", "a..b", "-"] {
            assert!(
                matches!(
                    ca.issue_server_cert(&[bad], DAY),
                    Err(PkiError::InvalidSan { .. })
                ),
                "{bad:?} accepted"
            );
        }
        assert!(ca.issue_server_cert(&[] as &[&str], DAY).is_err());
    }

    #[test]
    fn replica_certificates_name_their_replica_and_are_never_node_certificates() {
        let ca = ca();
        let replica = ca.issue_replica_cert("0192-abc", DAY).unwrap();
        let der = cert_der(&replica.cert_pem);
        assert_eq!(crate::replica_of(&der).as_deref(), Some("0192-abc"));
        assert!(node_cert_info(&der).is_err());
        let verifier = crate::agent_client_verifier(&ca).unwrap();
        verifier
            .verify_client_cert(
                &rustls::pki_types::CertificateDer::from(der.clone()),
                &[],
                unix(now()),
            )
            .expect("the agent endpoint accepts a replica's certificate");
        let node = ca.sign_node_csr(&csr("h"), &identity(), DAY).unwrap();
        assert_eq!(crate::replica_of(&cert_der(&node.cert_pem)), None);
        for bad in ["", "a b", "x/../y", "qb:node"] {
            assert!(ca.issue_replica_cert(bad, DAY).is_err(), "{bad:?}");
        }
    }
}
