use time::{Duration, OffsetDateTime};
use x509_parser::error::X509Error;

/// Why a PKI operation failed.
///
/// `TooLarge`, `Pem`, `Malformed`, `Invalid`, `CsrSignature`, `UnsupportedKey`, `InvalidSan`,
/// `InvalidPin` and `InvalidNodeIdentity` mean the input was bad (a client's fault when it came
/// from one); `Random` and `Rcgen` mean this side failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The input is larger than this crate accepts.
    #[error("the {what} is {len} bytes, more than the {max} accepted")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// The input is not PEM at all.
    #[error("the {what} is not valid PEM")]
    Pem {
        what: &'static str,
        #[source]
        source: pem::PemError,
    },
    /// The PEM input does not hold exactly one block of the expected kind.
    #[error("the {what} must hold exactly one {expected} PEM block, found {found}")]
    PemBlocks {
        what: &'static str,
        expected: &'static str,
        found: String,
    },
    /// The DER inside is not a well-formed certificate or CSR.
    #[error("the {what} is malformed")]
    Malformed {
        what: &'static str,
        #[source]
        source: X509Error,
    },
    /// Well-formed, but not acceptable for what it is used for.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// The CSR's signature does not verify: the requester did not prove it holds the key.
    #[error("the CSR's signature does not verify")]
    CsrSignature(#[source] X509Error),
    /// The key is of a type or size this PKI does not accept.
    #[error("unsupported key: {reason}")]
    UnsupportedKey { reason: String },
    /// The private key could not be read.
    #[error("invalid private key")]
    PrivateKey(#[source] rcgen::Error),
    /// The CA's private key is not the one of its certificate.
    #[error("the private key does not match the CA certificate")]
    KeyMismatch,
    /// A certificate was asked for with a validity that is not positive or out of range.
    #[error("invalid validity {0}: must be positive and within the representable range")]
    Validity(Duration),
    /// The CA has expired and can no longer issue certificates.
    #[error("the CA expired at {not_after}")]
    CaExpired { not_after: OffsetDateTime },
    /// A subject alternative name is neither an IP address nor a valid DNS name.
    #[error("invalid subject alternative name {san:?}: expected a DNS name or an IP address")]
    InvalidSan { san: String },
    /// A CA pin is not `sha256:` followed by 64 hex digits.
    #[error("invalid CA pin {input:?}: expected sha256: followed by 64 hex digits")]
    InvalidPin { input: String },
    /// A node identity URI is not `urn:qb:tenant:<uuid>:node:<uuid>` in canonical form.
    #[error("invalid node identity {uri:?}: expected urn:qb:tenant:<uuid>:node:<uuid>")]
    InvalidNodeIdentity { uri: String },
    /// The system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// Key or certificate generation failed.
    #[error("certificate generation failed")]
    Rcgen(#[source] rcgen::Error),
    /// The rustls verifier could not be built.
    #[error("cannot build the TLS certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}
