//! Pinning the controller's certificate the way ssh pins a host key.
//!
//! The controller serves a self-signed certificate. Instead of trusting a CA, the client remembers the
//! SHA-256 fingerprint of the leaf certificate's DER, shown to the user at `qb login`, and afterwards
//! accepts exactly that certificate. Hostnames and CAs are ignored; the handshake signatures are still
//! verified, so the server must hold the certificate's private key.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// The SHA-256 digest of a certificate's DER; written `sha256:<64 lowercase hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of_der(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a fingerprint was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidFingerprint(String);

impl fmt::Display for InvalidFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid fingerprint {:?}: expected sha256: followed by 64 hex digits",
            self.0
        )
    }
}

impl std::error::Error for InvalidFingerprint {}

impl FromStr for Fingerprint {
    type Err = InvalidFingerprint;

    /// Accepts `sha256:<hex>`, bare hex, upper or lower case, and hex bytes separated by `:` (the
    /// form `openssl x509 -fingerprint` prints).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidFingerprint(s.to_owned());
        let trimmed = s.trim();
        let hex_part = match trimmed.split_once(':') {
            Some((algo, rest)) if algo.eq_ignore_ascii_case("sha256") => rest,
            _ => trimmed,
        };
        let digits: String = hex_part.chars().filter(|c| *c != ':').collect();
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(digits.to_ascii_lowercase(), &mut out).map_err(|_| bad())?;
        Ok(Self(out))
    }
}

/// What a [`PinnedVerifier`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Exactly the certificate with this fingerprint.
    Pinned(Fingerprint),
    /// Nothing: record the certificate the server presents and abort the handshake, so that no
    /// request is sent before the user has decided to trust it.
    Probe,
}

/// A certificate verifier that accepts one pinned certificate, ignoring hostnames and CAs.
#[derive(Debug)]
pub struct PinnedVerifier {
    trust: Trust,
    /// The fingerprint of the last certificate the server presented.
    seen: Mutex<Option<Fingerprint>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedVerifier {
    pub fn new(trust: Trust, provider: &CryptoProvider) -> Self {
        Self {
            trust,
            seen: Mutex::new(None),
            algorithms: provider.signature_verification_algorithms,
        }
    }

    /// The fingerprint of the last certificate the server presented, if a handshake got that far.
    pub fn seen(&self) -> Option<Fingerprint> {
        *self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `Some((expected, seen))` when the server presented a certificate other than the pinned one.
    pub fn mismatch(&self) -> Option<(Fingerprint, Fingerprint)> {
        match (self.trust, self.seen()) {
            (Trust::Pinned(expected), Some(seen)) if seen != expected => Some((expected, seen)),
            _ => None,
        }
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fingerprint = Fingerprint::of_der(end_entity.as_ref());
        *self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(fingerprint);
        match self.trust {
            Trust::Pinned(expected) if expected == fingerprint => {
                Ok(ServerCertVerified::assertion())
            }
            Trust::Pinned(_) => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
            Trust::Probe => Err(rustls::Error::General(
                "certificate recorded; not trusted yet".to_owned(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A TLS client configuration that trusts what `trust` says, and the verifier it uses (to read what
/// the server presented after a failed handshake).
pub fn client_config(trust: Trust) -> anyhow::Result<(ClientConfig, Arc<PinnedVerifier>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedVerifier::new(trust, &provider));
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    Ok((config, verifier))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_formats_and_parses() {
        let fp = Fingerprint::of_der(b"certificate");
        let text = fp.to_string();
        assert!(text.starts_with("sha256:"));
        assert_eq!(text.len(), "sha256:".len() + 64);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(text.parse::<Fingerprint>(), Ok(fp));
        // Bare, upper case, and colon-separated forms name the same digest.
        let bare = text.trim_start_matches("sha256:");
        assert_eq!(bare.parse::<Fingerprint>(), Ok(fp));
        assert_eq!(bare.to_uppercase().parse::<Fingerprint>(), Ok(fp));
        let colons: Vec<String> = bare
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        assert_eq!(
            format!("SHA256:{}", colons.join(":")).parse::<Fingerprint>(),
            Ok(fp)
        );
    }

    #[test]
    fn bad_fingerprints_are_rejected() {
        for bad in [
            "",
            "sha256:",
            "sha256:abcd",
            "md5:00",
            &format!("sha256:{}", "g".repeat(64)),
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }
}
