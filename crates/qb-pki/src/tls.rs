//! Where every TLS configuration of qb starts: rustls with the ring provider and its safe
//! default protocol versions (TLS 1.3 and 1.2). The agent's and the controller's clients and
//! servers each go on from here with their own verifier and certificate.

use std::sync::Arc;

use rustls::{ClientConfig, ConfigBuilder, ServerConfig, WantsVerifier};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration, to be given a verifier and (or no) client certificate.
pub fn client_config_builder() -> ConfigBuilder<ClientConfig, WantsVerifier> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls' default protocol versions")
}

/// A server configuration, to be given a client verifier (or none) and a certificate.
pub fn server_config_builder() -> ConfigBuilder<ServerConfig, WantsVerifier> {
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls' default protocol versions")
}
