//! qb's internal PKI: the controller's certificate authority, node (agent) certificates, CA
//! pins, and the rustls verifiers of the agent channel.
//!
//! Each host's `qb-agent` connects out to the controller over mutually-authenticated TLS:
//!
//! - The agent trusts the controller through a [`Pin`] of the controller CA's public key, given
//!   to it at install time ([`PinnedCaVerifier`]), the way `kubeadm join` pins a CA hash.
//! - The agent makes its own key and a CSR ([`new_key_and_csr`]); the private key never leaves
//!   the host. The controller signs the CSR with an identity it chose itself
//!   ([`CertificateAuthority::sign_node_csr`]), never one the CSR asked for.
//! - The controller's agent port accepts node certificates from its CA, or none at all for
//!   registration ([`agent_client_verifier`]), and reads the identity back out of a presented
//!   certificate with [`node_cert_info`].
//!
//! Pure logic: no I/O, no async runtime. Private keys are [`PrivateKeyPem`]s, whose `Debug` is
//! redacted and which have no `Display`.

mod ca;
mod csr;
mod error;
mod identity;
mod pin;
mod plan_signing;
pub mod tls;
mod util;
mod verify;

#[cfg(test)]
mod testing;

pub use ca::{CLOCK_SKEW, CertificateAuthority, IssuedCert, NodeCert, PrivateKeyPem};
pub use csr::{KeyAndCsr, MAX_CSR_PEM_LEN, new_key_and_csr};
pub use error::PkiError;
pub use identity::{NodeCertInfo, NodeIdentity, REPLICA_URI_PREFIX, node_cert_info, replica_of};
pub use pin::{Pin, spki_pin};
pub use plan_signing::{PLAN_SIGNER_URI, PlanSignatureError, PlanSigner, verify_plan_signature};
pub use verify::{PinnedCaVerifier, agent_client_verifier};
