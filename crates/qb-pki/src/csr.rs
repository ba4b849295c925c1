//! Certificate signing requests: the agent makes them, the CA checks them.

use std::fmt;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData, SignatureAlgorithm,
};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::error::X509Error;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::{SubjectPublicKeyInfo, X509Version};

use crate::PkiError;
use crate::ca::PrivateKeyPem;
use crate::util::single_pem_block;

/// The largest CSR (PEM text) the CA reads. An agent's CSR is well under 1 KiB; an RSA-4096 one
/// is about 2 KiB.
pub const MAX_CSR_PEM_LEN: usize = 16 * 1024;

/// The smallest RSA modulus accepted in a CSR, in bits.
const MIN_RSA_BITS: usize = 2048;

/// What an agent makes before it registers: a fresh private key, which never leaves the host,
/// and a CSR for it to send to the controller.
#[derive(Clone)]
pub struct KeyAndCsr {
    /// The new private key. A secret: it stays on the host.
    pub key_pem: PrivateKeyPem,
    /// The CSR for it, PEM, to send to the controller.
    pub csr_pem: String,
}

impl fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("key_pem", &self.key_pem)
            .field("csr_pem", &self.csr_pem)
            .finish()
    }
}

/// Agent side: a fresh ECDSA P-256 key and a CSR for it with CN = `hostname`. The CN is only a
/// hint for people reading the CSR: the controller chooses the certificate's identity.
pub fn new_key_and_csr(hostname: &str) -> Result<KeyAndCsr, PkiError> {
    if hostname.is_empty() {
        return Err(PkiError::Invalid {
            what: "hostname",
            reason: "empty".into(),
        });
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(PkiError::Rcgen)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, hostname);
    let csr = params.serialize_request(&key).map_err(PkiError::Rcgen)?;
    Ok(KeyAndCsr {
        key_pem: PrivateKeyPem::new(key.serialize_pem()),
        csr_pem: csr.pem().map_err(PkiError::Rcgen)?,
    })
}

/// The public key of a CSR whose signature verified: all the CA takes from a CSR.
pub(crate) struct CsrPublicKey {
    /// The subjectPublicKey bits (an EC point, an Ed25519 key, or an RSAPublicKey).
    raw: Vec<u8>,
    /// rcgen's description of the key type, used to write the certificate's SPKI.
    alg: &'static SignatureAlgorithm,
}

impl PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &SignatureAlgorithm {
        self.alg
    }
}

/// Reads a PEM CSR: at most [`MAX_CSR_PEM_LEN`] bytes, exactly one CSR, an accepted key type
/// and signature algorithm, and a signature that verifies with the CSR's own key (proof that the
/// requester holds the private key). Everything else in the CSR is ignored.
pub(crate) fn verified_csr_key(csr_pem: &str) -> Result<CsrPublicKey, PkiError> {
    const WHAT: &str = "CSR";
    if csr_pem.len() > MAX_CSR_PEM_LEN {
        return Err(PkiError::TooLarge {
            what: WHAT,
            len: csr_pem.len(),
            max: MAX_CSR_PEM_LEN,
        });
    }
    let der = single_pem_block(
        csr_pem,
        &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"],
        WHAT,
    )?;
    let (rest, csr) =
        X509CertificationRequest::from_der(&der).map_err(|e| PkiError::Malformed {
            what: WHAT,
            source: X509Error::from(e),
        })?;
    if !rest.is_empty() {
        return Err(PkiError::Invalid {
            what: WHAT,
            reason: format!("{} bytes after the CSR", rest.len()),
        });
    }
    let info = &csr.certification_request_info;
    if info.version != X509Version(0) {
        return Err(PkiError::Invalid {
            what: WHAT,
            reason: format!("version {} (only version 1 exists)", info.version.0 + 1),
        });
    }
    let alg = key_type(&info.subject_pki)?;

    // SHA-1 and anything else ring or this PKI does not like is refused before verifying.
    let sig_alg = &csr.signature_algorithm.algorithm;
    let accepted = [
        OID_SIG_ECDSA_WITH_SHA256,
        OID_SIG_ECDSA_WITH_SHA384,
        OID_SIG_ED25519,
        OID_PKCS1_SHA256WITHRSA,
        OID_PKCS1_SHA384WITHRSA,
        OID_PKCS1_SHA512WITHRSA,
    ];
    if !accepted.contains(sig_alg) {
        return Err(PkiError::Invalid {
            what: WHAT,
            reason: format!("unsupported signature algorithm {sig_alg}"),
        });
    }
    csr.verify_signature().map_err(PkiError::CsrSignature)?;

    Ok(CsrPublicKey {
        raw: info.subject_pki.subject_public_key.data.to_vec(),
        alg,
    })
}

/// The accepted key types: ECDSA P-256 or P-384, Ed25519, RSA of at least 2048 bits.
fn key_type(spki: &SubjectPublicKeyInfo<'_>) -> Result<&'static SignatureAlgorithm, PkiError> {
    let unsupported = |reason: String| PkiError::UnsupportedKey { reason };
    let oid = &spki.algorithm.algorithm;
    if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| unsupported("EC key without a named curve".into()))?;
        if curve == OID_EC_P256 {
            Ok(&rcgen::PKCS_ECDSA_P256_SHA256)
        } else if curve == OID_NIST_EC_P384 {
            Ok(&rcgen::PKCS_ECDSA_P384_SHA384)
        } else {
            Err(unsupported(format!(
                "EC curve {curve} (P-256 and P-384 are accepted)"
            )))
        }
    } else if *oid == OID_SIG_ED25519 {
        Ok(&rcgen::PKCS_ED25519)
    } else if *oid == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => modulus_bits(rsa.modulus),
            _ => return Err(unsupported("malformed RSA public key".into())),
        };
        if bits < MIN_RSA_BITS {
            return Err(unsupported(format!(
                "RSA key of {bits} bits (at least {MIN_RSA_BITS} are required)"
            )));
        }
        Ok(&rcgen::PKCS_RSA_SHA256)
    } else {
        Err(unsupported(format!(
            "key algorithm {oid} (ECDSA P-256/P-384, Ed25519 and RSA are accepted)"
        )))
    }
}

/// The size in bits of a big-endian unsigned integer (leading zero bytes and bits ignored).
fn modulus_bits(modulus: &[u8]) -> usize {
    let significant = match modulus.iter().position(|&b| b != 0) {
        Some(i) => &modulus[i..],
        None => return 0,
    };
    significant.len() * 8 - significant[0].leading_zeros() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{
        CSR_P521, CSR_RSA_1024, CSR_RSA_2048, CSR_RSA_2048_SHA1, csr, tamper_csr,
    };

    #[test]
    fn agent_csr_is_accepted_and_has_a_fresh_key() {
        let a = new_key_and_csr("host-a").unwrap();
        let b = new_key_and_csr("host-a").unwrap();
        assert!(a.csr_pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(
            a.key_pem
                .expose()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
        assert_ne!(a.key_pem.expose(), b.key_pem.expose());
        let key = verified_csr_key(&a.csr_pem).unwrap();
        assert!(std::ptr::eq(key.alg, &rcgen::PKCS_ECDSA_P256_SHA256));
        // The CSR's key is the private key's.
        let pair = KeyPair::from_pem(a.key_pem.expose()).unwrap();
        assert_eq!(key.raw, pair.public_key_raw());
        assert!(new_key_and_csr("").is_err());
    }

    #[test]
    fn key_pem_is_not_in_debug_output() {
        let k = new_key_and_csr("host-a").unwrap();
        let debug = format!("{k:?} {:?} {:#?}", k.key_pem, k);
        assert!(!debug.contains(k.key_pem.expose()));
        assert!(!debug.contains("PRIVATE KEY"));
        let body: String = k.key_pem.expose().lines().nth(1).unwrap().to_owned();
        assert!(!debug.contains(&body));
        assert!(debug.contains("CERTIFICATE REQUEST"));
    }

    #[test]
    fn accepts_the_supported_key_types() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let key = verified_csr_key(&csr_with(alg)).unwrap();
            assert!(std::ptr::eq(key.alg, alg));
        }
        let rsa = verified_csr_key(CSR_RSA_2048).unwrap();
        assert!(std::ptr::eq(rsa.alg, &rcgen::PKCS_RSA_SHA256));
    }

    fn csr_with(alg: &'static SignatureAlgorithm) -> String {
        let key = KeyPair::generate_for(alg).unwrap();
        CertificateParams::new(vec!["x.example".to_owned()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    }

    #[test]
    fn rejects_weak_or_unsupported_keys() {
        for (case, pem) in [("RSA-1024", CSR_RSA_1024), ("P-521", CSR_P521)] {
            let err = verified_csr_key(pem).err().unwrap();
            assert!(
                matches!(err, PkiError::UnsupportedKey { .. }),
                "{case}: {err}"
            );
        }
        let err = verified_csr_key(CSR_RSA_2048_SHA1).err().unwrap();
        assert!(err.to_string().contains("signature algorithm"), "{err}");
    }

    #[test]
    fn rejects_a_bad_signature() {
        let good = csr("host-a");
        // Flip a bit of the signature, then of the signed subject.
        for from_end in [true, false] {
            let bad = tamper_csr(&good, from_end);
            let err = verified_csr_key(&bad).err().unwrap();
            assert!(
                matches!(err, PkiError::CsrSignature(_) | PkiError::Malformed { .. }),
                "{err}"
            );
        }
        // Flipping the last byte keeps the DER well-formed: it is the signature check that fails.
        assert!(matches!(
            verified_csr_key(&tamper_csr(&good, true)),
            Err(PkiError::CsrSignature(_))
        ));
    }

    #[test]
    fn rejects_garbage_and_oversized_input() {
        let good = csr("host-a");
        let der = single_pem_block(&good, &["CERTIFICATE REQUEST"], "CSR").unwrap();
        let cases: Vec<(&str, String)> = vec![
            ("empty", String::new()),
            ("text", "hello".into()),
            ("truncated", good[..good.len() / 2].to_owned()),
            ("wrong label", crate::util::pem_encode("CERTIFICATE", &der)),
            ("two CSRs", format!("{good}{good}")),
            (
                "not DER",
                crate::util::pem_encode("CERTIFICATE REQUEST", b"garbage"),
            ),
            ("trailing DER", {
                let mut d = der.clone();
                d.push(0);
                crate::util::pem_encode("CERTIFICATE REQUEST", &d)
            }),
        ];
        for (case, input) in cases {
            assert!(verified_csr_key(&input).is_err(), "{case} was accepted");
        }

        // Over the limit, even when it is a valid CSR padded with spaces.
        let padded = format!("{good}{}", " ".repeat(MAX_CSR_PEM_LEN));
        assert!(matches!(
            verified_csr_key(&padded),
            Err(PkiError::TooLarge { .. })
        ));
        // Exactly at the limit is read.
        let at_limit = format!("{good}{}", "\n".repeat(MAX_CSR_PEM_LEN - good.len()));
        assert_eq!(at_limit.len(), MAX_CSR_PEM_LEN);
        verified_csr_key(&at_limit).unwrap();
    }

    #[test]
    fn counts_modulus_bits() {
        assert_eq!(modulus_bits(&[]), 0);
        assert_eq!(modulus_bits(&[0, 0]), 0);
        assert_eq!(modulus_bits(&[1]), 1);
        assert_eq!(modulus_bits(&[0, 0x80, 0]), 16);
        assert_eq!(modulus_bits(&[0x7f; 256]), 2047);
        let mut m = vec![0u8; 257];
        m[1] = 0x80;
        assert_eq!(modulus_bits(&m), 2048);
    }
}
