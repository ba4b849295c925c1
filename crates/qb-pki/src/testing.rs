//! Helpers shared by the unit tests: fixtures, PEM plumbing, and an in-memory TLS handshake.

use std::sync::Arc;

use qb_api::{NodeId, TenantId};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, ConnectionCommon, ServerConfig,
    ServerConnection, SupportedProtocolVersion,
};
use time::OffsetDateTime;

use crate::util::provider;
use crate::{NodeIdentity, PrivateKeyPem, new_key_and_csr};

/// A fresh identity.
pub(crate) fn identity() -> NodeIdentity {
    NodeIdentity {
        tenant: TenantId::new(),
        node: NodeId::new(),
    }
}

/// A fresh agent CSR (its key is thrown away).
pub(crate) fn csr(hostname: &str) -> String {
    new_key_and_csr(hostname).unwrap().csr_pem
}

/// The DER of the first block of a PEM text.
pub(crate) fn cert_der(pem: &str) -> Vec<u8> {
    pem::parse_many(pem).unwrap().remove(0).into_contents()
}

/// Every certificate of a PEM chain.
pub(crate) fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
    pem::parse_many(pem)
        .unwrap()
        .into_iter()
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect()
}

/// A PKCS#8 key for rustls.
pub(crate) fn private_key(pem: &PrivateKeyPem) -> PrivateKeyDer<'static> {
    let der = pem::parse(pem.expose()).unwrap().into_contents();
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))
}

/// A CSR with one bit flipped: in the signature (its last byte, which keeps the DER
/// well-formed), or in the signed subject (its CN must contain "host").
pub(crate) fn tamper_csr(csr_pem: &str, in_signature: bool) -> String {
    let mut der = cert_der(csr_pem);
    let at = if in_signature {
        der.len() - 1
    } else {
        der.windows(4).position(|w| w == b"host").unwrap()
    };
    der[at] ^= 1;
    crate::util::pem_encode("CERTIFICATE REQUEST", &der)
}

/// Whether rustls refused a certificate for want of the right extended key usage.
pub(crate) fn is_invalid_purpose(err: &rustls::Error) -> bool {
    matches!(
        err,
        rustls::Error::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
        )
    )
}

/// Whether rustls refused a certificate that does not name the server asked for.
pub(crate) fn is_not_valid_for_name(err: &rustls::Error) -> bool {
    matches!(
        err,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}

/// Whether rustls refused a certificate past its validity.
pub(crate) fn is_expired(err: &rustls::Error) -> bool {
    matches!(
        err,
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        )
    )
}

/// An `OffsetDateTime` as rustls' time.
pub(crate) fn unix(t: OffsetDateTime) -> UnixTime {
    let secs = u64::try_from(t.unix_timestamp()).unwrap();
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs))
}

/// TLS 1.3 only, TLS 1.2 only.
pub(crate) const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
pub(crate) const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

/// An agent's client config: trusts the server through `verifier`, presents `identity` (chain
/// and key) if given.
pub(crate) fn client_config(
    versions: &[&'static SupportedProtocolVersion],
    verifier: Arc<dyn ServerCertVerifier>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> ClientConfig {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    }
}

/// A controller's server config: presents `chain` with `key`, checks clients with `verifier`.
pub(crate) fn server_config(
    verifier: Arc<dyn ClientCertVerifier>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> ServerConfig {
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap()
}

/// Runs a whole handshake in memory, the client connecting to `server_name`. The first error
/// either side raises is returned.
pub(crate) fn handshake(
    client: ClientConfig,
    server: ServerConfig,
    server_name: &str,
) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let mut client = ClientConnection::new(Arc::new(client), name)?;
    let mut server = ServerConnection::new(Arc::new(server))?;
    for _ in 0..32 {
        let sent = transfer(&mut client, &mut server)?;
        let answered = transfer(&mut server, &mut client)?;
        if !sent && !answered {
            break;
        }
    }
    assert!(
        !client.is_handshaking() && !server.is_handshaking(),
        "the handshake stalled without an error"
    );
    Ok((client, server))
}

/// Moves all pending TLS records from one side to the other; whether there were any.
fn transfer<A, B>(
    from: &mut ConnectionCommon<A>,
    to: &mut ConnectionCommon<B>,
) -> Result<bool, rustls::Error> {
    let mut records = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut records).unwrap();
    }
    let mut rest = records.as_slice();
    while !rest.is_empty() {
        to.read_tls(&mut rest).unwrap();
        to.process_new_packets()?;
    }
    Ok(!records.is_empty())
}

/// RSA-2048 key, sha256WithRSAEncryption: accepted.
pub(crate) const CSR_RSA_2048: &str = "\
-----BEGIN CERTIFICATE REQUEST-----
MIICVzCCAT8CAQAwEjEQMA4GA1UEAwwHcnNhMjA0ODCCASIwDQYJKoZIhvcNAQEB
BQADggEPADCCAQoCggEBAJYWjmG9nSW8qtgmcQXHCtymTtPV8m0XLAoES54wJc+a
P0toVzJcGeJVvGwph4/CjxNanMjKaf5uil41LEpFuTy01waPKYFGECfQQpgqubaZ
kaVSOa9CaPFVcGj0grTUcwBfo5kDBlqSoC8KED3Z87+T0/fEUnK5tJcTNSHPssna
G4VcTmt855mC8+cNX3NYPrvALxUryaYf6snK8MISDA1N3+rA7OlIx/eEfdvLVo7Y
+863VNWxqCTKL3O7Bof06jqQvjnwa7vKzQjr5ZAb90+oJoWacSR4VQSk9OyNtYqG
lMfrYN8C/oUM5l8jO1VbBDU0JMT5yu+SJaECtk7JeQMCAwEAAaAAMA0GCSqGSIb3
DQEBCwUAA4IBAQAKFjmdj4yPke0rBJM+knsTAVrknFh2HzBTVleYnlcaarLKfe8Q
gsyQMJZm2vz+OHCmKrkdtmIWsT7tWcWhG7g+YIFNFVIY7dzOmWSH5/SFCGgQ5k8S
A1mfQ/+bKCtlaOXWLE8eQrdudbmfuVe7Zs46UPCBd3Sk2oQGUeLKMhPpQOFxtppM
7bQvnTIWkGFQzTw2hEHmazbAms0QFrQyCyFNVVoiTp3tsm7Nv/MLv7KMxAsVfIFA
l/qfwiE2pBoilHKl+ajRiei2w/kO8P8Oage3RSCBwk06XA8KSyP7Lo60fG4t5LLj
RHt54H7O59OqdAN0+gxu5p1uiyu7cKq7hX5K
-----END CERTIFICATE REQUEST-----
";

/// RSA-1024 key: too small.
pub(crate) const CSR_RSA_1024: &str = "\
-----BEGIN CERTIFICATE REQUEST-----
MIIBUTCBuwIBADASMRAwDgYDVQQDDAdyc2ExMDI0MIGfMA0GCSqGSIb3DQEBAQUA
A4GNADCBiQKBgQDAzccykwpsVqyK62d0wT0QAWFWvO3fLdA8onPeLhrZZR/GYdSX
mAM5iV9qNVW5KsvnkDz3LmhEEnOm0+RKTfea0qkR63w0OfFk4LaLA9PONiHRx5vV
+tvlOdZwqYqggR6q/4yAPqOSJlGBSf3iScy0tbQxgFi6rYA9+bMC42Db3wIDAQAB
oAAwDQYJKoZIhvcNAQELBQADgYEAGMIKvH8fcsPn2C65TryRJ3N7tVJR4rFw3c/f
eA+gUwxpYjK7UZKTRDMVpWpJrwGY+latOUf+NN9YU8AYerCSQcLabYQGxHkc1JRb
rW9PfCY3fJVm2RRqpV/BotJVcdnyV9Op2WGjeHjT45NC1eZQ1bkN8bs1j9PDpVDf
obx87Fs=
-----END CERTIFICATE REQUEST-----
";

/// ECDSA P-521 key: an unsupported curve.
pub(crate) const CSR_P521: &str = "\
-----BEGIN CERTIFICATE REQUEST-----
MIIBUjCBtAIBADAPMQ0wCwYDVQQDDARwNTIxMIGbMBAGByqGSM49AgEGBSuBBAAj
A4GGAAQAWC115zNGhqOuaKVVTR/dF1vBINw2VXouDmaT3qrrXjaclHjYW5wYou06
RRkruTR1zzbcx8sGNU7NWO8iJo4p+ZABdSBipWv88fA/cewDCwuF/KqkI8VSwlHT
aXavOILT0GJPWjC1kVSF+DT59Y8ltkorDvMPsXCnS4ewnAKkxas+rMugADAKBggq
hkjOPQQDBAOBjAAwgYgCQgGjxXwGAC8k3quB3XB50M1hM0Mfl1tH8XaR7w/2QV9b
xXMcs0QLjx3I79yl25WFZcmAnOulaztuWVRmKLvVWEJ02gJCAXDUyWvM00yfLEX0
t2jLWZuFBtlvPzHve7zAxJOyREkzRc5nouXMjlo9NTGI6wl1Yap3s2iPPlxyCj6J
bJXDicjm
-----END CERTIFICATE REQUEST-----
";

/// RSA-2048 key, but signed with sha1WithRSAEncryption.
pub(crate) const CSR_RSA_2048_SHA1: &str = "\
-----BEGIN CERTIFICATE REQUEST-----
MIICXDCCAUQCAQAwFzEVMBMGA1UEAwwMcnNhMjA0OC1zaGExMIIBIjANBgkqhkiG
9w0BAQEFAAOCAQ8AMIIBCgKCAQEAlhaOYb2dJbyq2CZxBccK3KZO09XybRcsCgRL
njAlz5o/S2hXMlwZ4lW8bCmHj8KPE1qcyMpp/m6KXjUsSkW5PLTXBo8pgUYQJ9BC
mCq5tpmRpVI5r0Jo8VVwaPSCtNRzAF+jmQMGWpKgLwoQPdnzv5PT98RScrm0lxM1
Ic+yydobhVxOa3znmYLz5w1fc1g+u8AvFSvJph/qycrwwhIMDU3f6sDs6UjH94R9
28tWjtj7zrdU1bGoJMovc7sGh/TqOpC+OfBru8rNCOvlkBv3T6gmhZpxJHhVBKT0
7I21ioaUx+tg3wL+hQzmXyM7VVsENTQkxPnK75IloQK2Tsl5AwIDAQABoAAwDQYJ
KoZIhvcNAQEFBQADggEBAFKa+rntpcL6cx8lTW2Krm2ZRsvzjSLYkeuessvHLfqv
BP0pJ0okA+soqmobkXdnZwP86wMMVdO5uED+4Bg6r5aaDKioCyiYIFH97JG6ntY2
izYuWQ9dCBez5Gs8g6VEjjR9EqPPiAjupOl6bQbAQpsEVMrRKHW1werd6rwISnOy
8nF/SvAOoRixQ98z+DBpZgd8pUdGWdQB1/rJD9aI3KU5p4r2DV86gtcZZlRpQ4Or
wg/xq0HwlnzwBcCyrpKq1WRrxSrV5a7TZFe5w9YlpzzHuSqDJdMhmjZ31KK2T6ke
tbnF/uWoNjTJGXSN1Wu46gfOkAUC3XC3bOwnW4Uot6Q=
-----END CERTIFICATE REQUEST-----
";
