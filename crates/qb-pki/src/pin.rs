//! CA pins: the SHA-256 of a certificate's SubjectPublicKeyInfo.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::PkiError;
use crate::util::parse_cert;

/// A CA pin: the SHA-256 of the CA certificate's SubjectPublicKeyInfo, written `sha256:<64 hex>`.
///
/// It pins the key, not the certificate, so a CA certificate renewed with the same key keeps its
/// pin. Parsing accepts upper- or lower-case hex; `Display` and serde write lower case.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pin([u8; 32]);

const PREFIX: &str = "sha256:";

impl Pin {
    /// The pin of a DER-encoded SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        Self(Sha256::digest(spki_der).into())
    }

    /// The 32 bytes of the digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The pin of a DER certificate's public key (see [`Pin`]).
pub fn spki_pin(cert_der: &[u8]) -> Result<Pin, PkiError> {
    let cert = parse_cert(cert_der, "certificate")?;
    Ok(Pin::of_spki(cert.public_key().raw))
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pin({self})")
    }
}

impl FromStr for Pin {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || PkiError::InvalidPin {
            input: s.chars().take(80).collect(),
        };
        let digits = s.strip_prefix(PREFIX).ok_or_else(invalid)?;
        // hex::decode_to_slice also checks the length: 64 digits, no more, no less.
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(digits, &mut bytes).map_err(|_| invalid())?;
        Ok(Self(bytes))
    }
}

impl Serialize for Pin {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Pin {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CertificateAuthority;

    #[test]
    fn displays_and_parses() {
        let pin = Pin::of_spki(b"some key");
        let text = pin.to_string();
        assert!(text.starts_with("sha256:"));
        assert_eq!(text.len(), "sha256:".len() + 64);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(text.parse::<Pin>().unwrap(), pin);
        assert_eq!(format!("{pin:?}"), format!("Pin({text})"));
        // Upper-case hex is the same pin.
        let upper = format!("sha256:{}", hex::encode_upper(pin.as_bytes()));
        assert_eq!(upper.parse::<Pin>().unwrap(), pin);
    }

    #[test]
    fn rejects_malformed_pins() {
        let good = Pin::of_spki(b"k").to_string();
        let digits = &good["sha256:".len()..];
        for bad in [
            String::new(),
            digits.to_owned(),                   // no prefix
            format!("SHA256:{digits}"),          // prefix is lower case
            format!("sha1:{digits}"),            // wrong algorithm
            format!("sha256:{}", &digits[..62]), // too short
            format!("{good}00"),                 // too long
            format!("sha256:{}zz", &digits[..62]),
            format!("sha256: {}", &digits[1..]),
            format!("{good}\n"),
        ] {
            let err = bad.parse::<Pin>().unwrap_err();
            assert!(matches!(err, PkiError::InvalidPin { .. }), "{bad:?}: {err}");
        }
    }

    #[test]
    fn serde_is_the_string_form() {
        let pin = Pin::of_spki(b"k");
        let json = serde_json::to_string(&pin).unwrap();
        assert_eq!(json, format!("\"{pin}\""));
        assert_eq!(serde_json::from_str::<Pin>(&json).unwrap(), pin);
        assert!(serde_json::from_str::<Pin>("\"sha256:00\"").is_err());
        assert!(serde_json::from_str::<Pin>("42").is_err());
    }

    #[test]
    fn pins_the_key_not_the_certificate() {
        let ca = CertificateAuthority::generate("qb test CA", time::Duration::days(1)).unwrap();
        assert_eq!(spki_pin(ca.cert_der()).unwrap(), ca.pin());

        // The same key in a different certificate: same pin.
        let key = rcgen::KeyPair::from_pem(ca.key_pem().expose()).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        let renewed = params.self_signed(&key).unwrap();
        assert_ne!(renewed.der(), ca.cert_der());
        assert_eq!(spki_pin(renewed.der()).unwrap(), ca.pin());

        // Another CA: another pin.
        let other = CertificateAuthority::generate("qb test CA", time::Duration::days(1)).unwrap();
        assert_ne!(other.pin(), ca.pin());
    }

    #[test]
    fn spki_pin_rejects_garbage() {
        assert!(matches!(
            spki_pin(b"not a certificate"),
            Err(PkiError::Malformed { .. })
        ));
        let ca = CertificateAuthority::generate("qb test CA", time::Duration::days(1)).unwrap();
        let mut trailing = ca.cert_der().to_vec();
        trailing.push(0);
        assert!(matches!(spki_pin(&trailing), Err(PkiError::Invalid { .. })));
    }
}
