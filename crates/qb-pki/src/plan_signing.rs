//! Signed plans: the controller signs each node's plan with a key whose certificate its CA
//! issued for that purpose; the agent accepts a plan only if the signer chains to a pinned CA,
//! is a plan signer, and the signature covers the exact bytes it received.

use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

use crate::util::{parse_cert, single_pem_block};
use crate::{Pin, PkiError, PrivateKeyPem};

/// The URI SAN that marks a plan-signing certificate.
pub const PLAN_SIGNER_URI: &str = "qb:plan-signer";

/// The controller's plan-signing key and its certificate chain (signer, then CA).
pub struct PlanSigner {
    key: EcdsaKeyPair,
    key_pem: String,
    chain_pem: String,
}

impl fmt::Debug for PlanSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlanSigner").finish_non_exhaustive()
    }
}

impl PlanSigner {
    /// Loads a signer from its chain (signer certificate first) and PKCS#8 key.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let der = single_pem_block(key_pem, &["PRIVATE KEY"], "plan signing key")?;
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der, &SystemRandom::new())
                .map_err(|e| PkiError::Invalid {
                what: "plan signing key",
                reason: e.to_string(),
            })?;
        Ok(Self {
            key,
            key_pem: key_pem.to_owned(),
            chain_pem: chain_pem.to_owned(),
        })
    }

    /// The certificate chain that goes with every signature.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// The private key, PKCS#8 PEM. A secret.
    pub fn key_pem(&self) -> PrivateKeyPem {
        PrivateKeyPem::new(self.key_pem.clone())
    }

    /// Signs `payload`; the signature is ASN.1 DER, hex.
    pub fn sign(&self, payload: &[u8]) -> Result<String, PkiError> {
        let signature = self
            .key
            .sign(&SystemRandom::new(), payload)
            .map_err(|_| PkiError::Random)?;
        Ok(hex::encode(signature.as_ref()))
    }
}

/// Why a signed plan was refused.
#[derive(Debug, thiserror::Error)]
pub enum PlanSignatureError {
    #[error("the signer's certificate chain is unreadable: {0}")]
    Chain(String),
    #[error("the signer does not chain to a pinned CA")]
    NotPinned,
    #[error("the signer's certificate was not issued by the pinned CA")]
    NotIssuedByCa,
    #[error("the signer's certificate is not valid now")]
    Expired,
    #[error("the signer's certificate is not a plan signer")]
    NotAPlanSigner,
    #[error("the signature does not match the plan")]
    BadSignature,
}

/// Verifies that `signature_hex` is a signature of `payload` by a plan signer whose chain
/// (`chain_pem`: signer, then CA) ends in a CA with one of `pins`, valid at `now`.
pub fn verify_plan_signature(
    payload: &[u8],
    signature_hex: &str,
    chain_pem: &str,
    pins: &[Pin],
    now: OffsetDateTime,
) -> Result<(), PlanSignatureError> {
    let blocks =
        pem::parse_many(chain_pem).map_err(|e| PlanSignatureError::Chain(e.to_string()))?;
    let [signer, ca] = blocks.as_slice() else {
        return Err(PlanSignatureError::Chain(format!(
            "expected 2 certificates, found {}",
            blocks.len()
        )));
    };
    let (signer, ca) = (parse_block(signer)?, parse_block(ca)?);
    if !pins.contains(&Pin::of_spki(ca.public_key().raw)) {
        return Err(PlanSignatureError::NotPinned);
    }
    signer
        .verify_signature(Some(ca.public_key()))
        .map_err(|_| PlanSignatureError::NotIssuedByCa)?;
    let at = x509_parser::time::ASN1Time::from_timestamp(now.unix_timestamp())
        .map_err(|_| PlanSignatureError::Expired)?;
    if !signer.validity().is_valid_at(at) {
        return Err(PlanSignatureError::Expired);
    }
    let is_signer = signer
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value
                .general_names
                .iter()
                .any(|n| matches!(n, GeneralName::URI(uri) if *uri == PLAN_SIGNER_URI))
        })
        && signer
            .extended_key_usage()
            .ok()
            .flatten()
            .is_some_and(|eku| eku.value.code_signing);
    if !is_signer {
        return Err(PlanSignatureError::NotAPlanSigner);
    }
    let signature = hex::decode(signature_hex).map_err(|_| PlanSignatureError::BadSignature)?;
    ring::signature::UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_ASN1,
        signer.public_key().subject_public_key.data.as_ref(),
    )
    .verify(payload, &signature)
    .map_err(|_| PlanSignatureError::BadSignature)
}

fn parse_block(
    block: &pem::Pem,
) -> Result<x509_parser::certificate::X509Certificate<'_>, PlanSignatureError> {
    if block.tag() != "CERTIFICATE" {
        return Err(PlanSignatureError::Chain(format!(
            "a {:?} block",
            block.tag()
        )));
    }
    parse_cert(block.contents(), "certificate")
        .map_err(|e| PlanSignatureError::Chain(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CertificateAuthority;
    use time::Duration;

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate("test CA", Duration::days(1)).unwrap()
    }

    #[test]
    fn a_signed_plan_verifies_and_any_change_is_refused() {
        let ca = ca();
        let signer = ca.issue_plan_signer(Duration::hours(1)).unwrap();
        let plan = br#"{"generation":1}"#;
        let sig = signer.sign(plan).unwrap();
        let now = OffsetDateTime::now_utc();
        let pins = [ca.pin()];
        verify_plan_signature(plan, &sig, signer.chain_pem(), &pins, now).unwrap();

        // The payload changed by one byte.
        let err =
            verify_plan_signature(br#"{"generation":2}"#, &sig, signer.chain_pem(), &pins, now);
        assert!(
            matches!(err, Err(PlanSignatureError::BadSignature)),
            "{err:?}"
        );
        // The signature changed.
        let mut bad = sig.clone().into_bytes();
        let i = bad.len() - 3;
        bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
        let err = verify_plan_signature(
            plan,
            std::str::from_utf8(&bad).unwrap(),
            signer.chain_pem(),
            &pins,
            now,
        );
        assert!(
            matches!(err, Err(PlanSignatureError::BadSignature)),
            "{err:?}"
        );
        // Not hex at all.
        let err = verify_plan_signature(plan, "zz", signer.chain_pem(), &pins, now);
        assert!(
            matches!(err, Err(PlanSignatureError::BadSignature)),
            "{err:?}"
        );
        // Expired signer.
        let err = verify_plan_signature(
            plan,
            &sig,
            signer.chain_pem(),
            &pins,
            now + Duration::hours(2),
        );
        assert!(matches!(err, Err(PlanSignatureError::Expired)), "{err:?}");
    }

    #[test]
    fn only_a_plan_signer_of_the_pinned_ca_is_trusted() {
        let (ca, other) = (ca(), ca());
        let now = OffsetDateTime::now_utc();
        let plan = b"{}";
        // A signer of another CA.
        let foreign = other.issue_plan_signer(Duration::hours(1)).unwrap();
        let sig = foreign.sign(plan).unwrap();
        let err = verify_plan_signature(plan, &sig, foreign.chain_pem(), &[ca.pin()], now);
        assert!(matches!(err, Err(PlanSignatureError::NotPinned)), "{err:?}");
        // Another CA's signer presented with the pinned CA's certificate.
        let forged_chain = format!(
            "{}{}",
            foreign
                .chain_pem()
                .split_inclusive("-----END CERTIFICATE-----\n")
                .next()
                .unwrap(),
            ca.cert_pem()
        );
        let err = verify_plan_signature(plan, &sig, &forged_chain, &[ca.pin()], now);
        assert!(
            matches!(err, Err(PlanSignatureError::NotIssuedByCa)),
            "{err:?}"
        );
        // A key the CA issued for something else (a server certificate) is not a plan signer.
        let server = ca
            .issue_server_cert(&["controller"], Duration::hours(1))
            .unwrap();
        let impostor = PlanSigner::from_pem(&server.chain_pem, server.key_pem.expose()).unwrap();
        let sig = impostor.sign(plan).unwrap();
        let err = verify_plan_signature(plan, &sig, impostor.chain_pem(), &[ca.pin()], now);
        assert!(
            matches!(err, Err(PlanSignatureError::NotAPlanSigner)),
            "{err:?}"
        );
        // Garbage chains.
        for chain in ["", "not pem", ca.cert_pem()] {
            let err = verify_plan_signature(plan, &sig, chain, &[ca.pin()], now);
            assert!(matches!(err, Err(PlanSignatureError::Chain(_))), "{err:?}");
        }
    }

    #[test]
    fn a_signer_round_trips_through_pem_and_hides_its_key() {
        let ca = ca();
        let signer = ca.issue_plan_signer(Duration::hours(1)).unwrap();
        let again = PlanSigner::from_pem(signer.chain_pem(), signer.key_pem().expose()).unwrap();
        let sig = again.sign(b"x").unwrap();
        verify_plan_signature(
            b"x",
            &sig,
            signer.chain_pem(),
            &[ca.pin()],
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        assert!(!format!("{again:?}").contains("PRIVATE"));
    }
}
