//! The rustls verifiers of the agent channel: the agent pins the controller's CA, the controller
//! checks node certificates.

use std::fmt;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};

use crate::util::provider;
use crate::{CertificateAuthority, Pin, PkiError, spki_pin};

/// The agent's rustls `ServerCertVerifier`: trusts the controller only if the chain it presents
/// contains a certificate whose SPKI pin is one of `pins` (several, so the CA can rotate) and
/// the leaf validates to it with webpki (serverAuth EKU, validity, the server name).
/// Handshake signatures are verified with the ring provider. The pinned certificate is a trust
/// anchor, so its own dates are not checked (the CA never issues a leaf that outlives it).
pub struct PinnedCaVerifier {
    pins: Vec<Pin>,
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    /// A verifier trusting the CAs with these pins. With no pins it trusts nothing.
    pub fn new(pins: Vec<Pin>) -> Arc<Self> {
        Arc::new(Self {
            pins,
            provider: provider(),
        })
    }
}

impl fmt::Debug for PinnedCaVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedCaVerifier")
            .field("pins", &self.pins)
            .finish_non_exhaustive()
    }
}

/// Why a server chain was refused before path validation.
#[derive(Debug, thiserror::Error)]
#[error("no certificate in the server's chain has a pinned CA key")]
struct NoPinnedCa;

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The pinned certificates become the trust anchors; the rest stay intermediates. The leaf
        // itself is never an anchor.
        let mut anchors = RootCertStore::empty();
        let mut others = Vec::with_capacity(intermediates.len());
        for cert in intermediates {
            let pinned = spki_pin(cert).is_ok_and(|pin| self.pins.contains(&pin));
            if !(pinned && anchors.add(cert.clone().into_owned()).is_ok()) {
                others.push(cert.clone());
            }
        }
        if anchors.is_empty() {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(NoPinnedCa)),
            )));
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(
            Arc::new(anchors),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|e| rustls::Error::General(format!("cannot build the verifier: {e}")))?;
        webpki.verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The rustls `ClientCertVerifier` of the controller's agent port. A client certificate is
/// optional (an agent registers without one); one that is presented must chain to `ca` and carry
/// the clientAuth EKU. The handshake proves the CA issued it; whether that node is still
/// authorized is for the controller to decide, from [`crate::node_cert_info`].
pub fn agent_client_verifier(
    ca: &CertificateAuthority,
) -> Result<Arc<dyn ClientCertVerifier>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.cert_der().clone())
        .map_err(|e| PkiError::Invalid {
            what: "CA certificate",
            reason: format!("not usable as a trust anchor: {e}"),
        })?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(PkiError::Verifier)
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::server::WebPkiClientVerifier;
    use time::Duration;

    use super::*;
    use crate::testing::{
        TLS12, TLS13, chain, client_config, handshake, identity, is_expired, is_invalid_purpose,
        is_not_valid_for_name, private_key, server_config, unix,
    };
    use crate::{IssuedCert, NodeIdentity, new_key_and_csr, node_cert_info};

    const NAME: &str = "controller.example";
    const DAY: Duration = Duration::days(1);

    /// A client certificate chain and its key, as rustls takes them.
    type ClientIdentity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

    fn ca(name: &str) -> CertificateAuthority {
        CertificateAuthority::generate(name, Duration::days(30)).unwrap()
    }

    fn server_cert(ca: &CertificateAuthority) -> IssuedCert {
        ca.issue_server_cert(&[NAME, "127.0.0.1"], DAY).unwrap()
    }

    /// A controller presenting `chain_pem` with `key`, accepting any client (or none).
    fn controller(chain_pem: &str, key: &crate::PrivateKeyPem) -> rustls::ServerConfig {
        let anyone = WebPkiClientVerifier::no_client_auth();
        server_config(anyone, chain(chain_pem), private_key(key))
    }

    /// Why an agent pinning `ca` refused a controller presenting `chain_pem` with `key`.
    fn agent_refuses(
        ca: &CertificateAuthority,
        chain_pem: &str,
        key: &crate::PrivateKeyPem,
    ) -> rustls::Error {
        handshake(agent(vec![ca.pin()]), controller(chain_pem, key), NAME).unwrap_err()
    }

    /// A controller presenting `server`'s chain, accepting any client (or none).
    fn serving(server: &IssuedCert) -> rustls::ServerConfig {
        controller(&server.chain_pem, &server.key_pem)
    }

    /// The agent port: presents `server`'s chain, checks node certificates of `ca`.
    fn agent_port(ca: &CertificateAuthority, server: &IssuedCert) -> rustls::ServerConfig {
        server_config(
            agent_client_verifier(ca).unwrap(),
            chain(&server.chain_pem),
            private_key(&server.key_pem),
        )
    }

    /// An agent trusting `ca` over TLS 1.3, presenting `identity` if given.
    fn agent_of(
        ca: &CertificateAuthority,
        identity: Option<ClientIdentity>,
    ) -> rustls::ClientConfig {
        client_config(TLS13, PinnedCaVerifier::new(vec![ca.pin()]), identity)
    }

    /// An agent trusting `pins`, without a client certificate.
    fn agent(pins: Vec<Pin>) -> rustls::ClientConfig {
        client_config(TLS13, PinnedCaVerifier::new(pins), None)
    }

    /// A node's key and certificate from `ca`, as a rustls client identity.
    fn node_identity(ca: &CertificateAuthority, id: &NodeIdentity) -> ClientIdentity {
        let k = new_key_and_csr("host-1").unwrap();
        let cert = ca.sign_node_csr(&k.csr_pem, id, DAY).unwrap();
        (chain(&cert.cert_pem), private_key(&k.key_pem))
    }

    fn is_no_pinned_ca(err: &rustls::Error) -> bool {
        matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::Other(other))
                if other.0.to_string().contains("pinned")
        )
    }

    fn is_unknown_issuer(err: &rustls::Error) -> bool {
        matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        )
    }

    #[test]
    fn pinned_handshake_succeeds_with_the_right_pin() {
        let ca = ca("qb CA");
        let server = server_cert(&ca);
        for versions in [TLS13, TLS12] {
            let agent = client_config(versions, PinnedCaVerifier::new(vec![ca.pin()]), None);
            let (client, _) = handshake(agent, serving(&server), NAME).unwrap();
            assert_eq!(
                client.protocol_version(),
                Some(versions[0].version),
                "negotiated the version asked for"
            );
        }
        // By IP address too.
        handshake(agent(vec![ca.pin()]), serving(&server), "127.0.0.1").unwrap();
    }

    #[test]
    fn pinned_handshake_fails_with_a_wrong_pin() {
        let ca = ca("qb CA");
        let server = server_cert(&ca);
        let wrong = CertificateAuthority::generate("qb CA", DAY).unwrap().pin();
        let err = handshake(agent(vec![wrong]), serving(&server), NAME).unwrap_err();
        assert!(is_no_pinned_ca(&err), "{err:?}");
        // No pins at all: nothing is trusted.
        let err = handshake(agent(vec![]), serving(&server), NAME).unwrap_err();
        assert!(is_no_pinned_ca(&err), "{err:?}");
    }

    #[test]
    fn pinned_handshake_succeeds_when_the_right_pin_is_the_second() {
        let old = ca("qb CA");
        let new = ca("qb CA");
        let server = server_cert(&new);
        handshake(agent(vec![old.pin(), new.pin()]), serving(&server), NAME).unwrap();
        // And the old CA's server still works for an agent pinning both: rotation.
        let old_server = server_cert(&old);
        handshake(
            agent(vec![old.pin(), new.pin()]),
            serving(&old_server),
            NAME,
        )
        .unwrap();
    }

    #[test]
    fn pinned_handshake_fails_when_the_chain_omits_the_ca() {
        let ca = ca("qb CA");
        let server = server_cert(&ca);
        let err = agent_refuses(&ca, &server.cert_pem, &server.key_pem);
        assert!(is_no_pinned_ca(&err), "{err:?}");
    }

    #[test]
    fn pinned_handshake_fails_for_a_leaf_of_another_ca_beside_the_pinned_one() {
        // The real CA certificate is public: an impostor can put it in its chain, and even name
        // its own CA the same. Its leaf still does not validate to the pinned key.
        let ca = ca("qb CA");
        let impostor = CertificateAuthority::generate("qb CA", DAY).unwrap();
        let fake = server_cert(&impostor);
        for chain_pem in [
            format!("{}{}", fake.cert_pem, ca.cert_pem()),
            format!("{}{}{}", fake.cert_pem, ca.cert_pem(), impostor.cert_pem()),
            format!("{}{}{}", fake.cert_pem, impostor.cert_pem(), ca.cert_pem()),
        ] {
            let err = agent_refuses(&ca, &chain_pem, &fake.key_pem);
            assert!(
                matches!(
                    err,
                    rustls::Error::InvalidCertificate(
                        CertificateError::UnknownIssuer | CertificateError::BadSignature
                    )
                ),
                "{err:?}"
            );
        }
    }

    #[test]
    fn pinned_handshake_fails_for_another_server_name() {
        let ca = ca("qb CA");
        let server = server_cert(&ca);
        let err = handshake(agent(vec![ca.pin()]), serving(&server), "evil.example").unwrap_err();
        assert!(is_not_valid_for_name(&err), "{err:?}");
    }

    #[test]
    fn pinned_handshake_fails_for_a_node_certificate_posing_as_server() {
        // A node's key and certificate, chained to the pinned CA, but clientAuth only.
        let ca = ca("qb CA");
        let k = new_key_and_csr("host-1").unwrap();
        let node = ca.sign_node_csr(&k.csr_pem, &identity(), DAY).unwrap();
        let chain_pem = format!("{}{}", node.cert_pem, ca.cert_pem());
        let err = agent_refuses(&ca, &chain_pem, &k.key_pem);
        assert!(is_invalid_purpose(&err), "{err:?}");
    }

    #[test]
    fn pinned_verifier_checks_validity() {
        let ca = ca("qb CA");
        let server = server_cert(&ca);
        let certs = chain(&server.chain_pem);
        let name = ServerName::try_from(NAME).unwrap();
        let verifier = PinnedCaVerifier::new(vec![ca.pin()]);
        let at = |t| verifier.verify_server_cert(&certs[0], &certs[1..], &name, &[], unix(t));
        at(server.not_after).unwrap();
        let err = at(server.not_after + Duration::seconds(1)).unwrap_err();
        assert!(is_expired(&err), "{err:?}");
        assert!(at(server.not_before - Duration::seconds(1)).is_err());
        assert!(format!("{verifier:?}").contains(&ca.pin().to_string()));
    }

    #[test]
    fn mutual_handshake_with_a_node_certificate() {
        let ca = ca("qb CA");
        let server = server_cert(&ca);
        let id = identity();
        for versions in [TLS13, TLS12] {
            let agent = client_config(
                versions,
                PinnedCaVerifier::new(vec![ca.pin()]),
                Some(node_identity(&ca, &id)),
            );
            let port = agent_port(&ca, &server);
            let (_, conn) = handshake(agent, port, NAME).unwrap();
            // The controller reads who connected from the verified certificate.
            let presented = conn.peer_certificates().unwrap();
            assert_eq!(presented.len(), 1);
            assert_eq!(node_cert_info(&presented[0]).unwrap().identity, id);
        }
    }

    #[test]
    fn agent_port_accepts_a_client_without_certificate() {
        let ca = ca("qb CA");
        let server = server_cert(&ca);
        let port = agent_port(&ca, &server);
        let (_, conn) = handshake(agent(vec![ca.pin()]), port, NAME).unwrap();
        assert!(conn.peer_certificates().is_none());
    }

    #[test]
    fn agent_port_refuses_a_node_certificate_of_another_ca() {
        let other = ca("qb CA"); // The same name, another key.
        let ca = ca("qb CA");
        let server = server_cert(&ca);
        let agent = agent_of(&ca, Some(node_identity(&other, &identity())));
        let port = agent_port(&ca, &server);
        let err = handshake(agent, port, NAME).unwrap_err();
        assert!(
            is_unknown_issuer(&err)
                || matches!(
                    err,
                    rustls::Error::InvalidCertificate(CertificateError::BadSignature)
                ),
            "{err:?}"
        );
    }

    #[test]
    fn agent_port_refuses_a_server_certificate_as_client_certificate() {
        let ca = ca("qb CA");
        let server = server_cert(&ca);
        let agent = agent_of(
            &ca,
            Some((chain(&server.cert_pem), private_key(&server.key_pem))),
        );
        let port = agent_port(&ca, &server);
        let err = handshake(agent, port, NAME).unwrap_err();
        assert!(is_invalid_purpose(&err), "{err:?}");
    }

    #[test]
    fn agent_port_refuses_an_expired_node_certificate() {
        let ca = ca("qb CA");
        let k = new_key_and_csr("host-1").unwrap();
        let node = ca.sign_node_csr(&k.csr_pem, &identity(), DAY).unwrap();
        let verifier = agent_client_verifier(&ca).unwrap();
        let certs = chain(&node.cert_pem);
        verifier
            .verify_client_cert(&certs[0], &[], unix(node.not_after))
            .unwrap();
        let err = verifier
            .verify_client_cert(&certs[0], &[], unix(node.not_after + Duration::seconds(1)))
            .unwrap_err();
        assert!(is_expired(&err), "{err:?}");
        // Client authentication is offered but not mandatory.
        assert!(!verifier.client_auth_mandatory());
        assert!(verifier.offer_client_auth());
    }
}
