//! Small helpers shared by the modules: the crypto provider, randomness, PEM and DER parsing.

use std::sync::{Arc, LazyLock};

use rustls::crypto::CryptoProvider;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::prelude::FromDer;

use crate::PkiError;

/// The one crypto provider of this crate: ring, whatever the process default is.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: LazyLock<Arc<CryptoProvider>> =
        LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));
    Arc::clone(&PROVIDER)
}

/// Now, to the second (X.509 times have no fractions).
pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond")
}

/// A random positive serial of 16 bytes: the top byte is `0b01xx_xxxx`, so the DER encoding
/// always has the same length and the hex form is 32 digits; 126 bits are random.
pub(crate) fn random_serial() -> Result<[u8; 16], PkiError> {
    let mut bytes = [0u8; 16];
    provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    bytes[0] = (bytes[0] & 0x3f) | 0x40;
    Ok(bytes)
}

/// The DER inside `input`, which must hold exactly one PEM block, labelled one of `labels`.
pub(crate) fn single_pem_block(
    input: &str,
    labels: &[&'static str],
    what: &'static str,
) -> Result<Vec<u8>, PkiError> {
    let mut blocks = pem::parse_many(input).map_err(|source| PkiError::Pem { what, source })?;
    let expected = labels[0];
    match blocks.len() {
        1 => {}
        0 => {
            return Err(PkiError::PemBlocks {
                what,
                expected,
                found: "none".into(),
            });
        }
        n => {
            return Err(PkiError::PemBlocks {
                what,
                expected,
                found: format!("{n} blocks"),
            });
        }
    }
    let block = blocks.remove(0);
    if !labels.contains(&block.tag()) {
        return Err(PkiError::PemBlocks {
            what,
            expected,
            found: format!("a {:?} block", block.tag()),
        });
    }
    Ok(block.into_contents())
}

/// PEM with `\n` line endings, as rcgen writes it.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Parses a DER certificate, refusing trailing bytes.
pub(crate) fn parse_cert<'a>(
    der: &'a [u8],
    what: &'static str,
) -> Result<X509Certificate<'a>, PkiError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::Malformed {
        what,
        source: X509Error::from(e),
    })?;
    if !rest.is_empty() {
        return Err(PkiError::Invalid {
            what,
            reason: format!("{} bytes after the certificate", rest.len()),
        });
    }
    Ok(cert)
}
