//! TLS for port 443: each connection's certificate chosen by the name the client asks for (SNI),
//! from the `kubernetes.io/tls` Secrets the Ingresses name; a name no Ingress covers gets a
//! self-signed certificate made at start.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Secret;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::routes::SecretRef;

/// Why a Secret gives no certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("the Secret has no {0}")]
    Missing(&'static str),
    #[error("its tls.crt holds no PEM certificate")]
    NoCertificate,
    #[error("its tls.key holds no PEM private key")]
    NoKey,
    #[error("its tls.key is not a key rustls can sign with")]
    Key(#[source] rustls::Error),
    #[error("its PEM cannot be read")]
    Pem(#[source] std::io::Error),
}

/// The certificate and key of a `kubernetes.io/tls` Secret.
pub fn certified_key(secret: &Secret) -> Result<CertifiedKey, CertError> {
    let field = |name: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(name))
            .map(|b| b.0.as_slice())
            .ok_or(CertError::Missing(name))
    };
    let certs = rustls_pemfile::certs(&mut field("tls.crt")?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(CertError::Pem)?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let key = rustls_pemfile::private_key(&mut field("tls.key")?)
        .map_err(CertError::Pem)?
        .ok_or(CertError::NoKey)?;
    let key = any_supported_type(&key).map_err(CertError::Key)?;
    Ok(CertifiedKey::new(certs, key))
}

/// The certificates of one moment: by host name (exact, or `*.suffix`).
#[derive(Debug, Default)]
pub struct Certificates {
    by_host: HashMap<String, Arc<CertifiedKey>>,
}

impl Certificates {
    /// The certificate of each TLS host of the routes, from the Secrets that have one; the
    /// problems of those that don't, as `(secret, why)`.
    pub fn build(
        tls: &HashMap<String, SecretRef>,
        secret: impl Fn(&SecretRef) -> Option<Arc<Secret>>,
    ) -> (Certificates, Vec<(SecretRef, String)>) {
        let mut keys: HashMap<&SecretRef, Option<Arc<CertifiedKey>>> = HashMap::new();
        let mut problems = Vec::new();
        let mut by_host = HashMap::new();
        for (host, secret_ref) in tls {
            let key = keys.entry(secret_ref).or_insert_with(|| {
                let Some(object) = secret(secret_ref) else {
                    problems.push((secret_ref.clone(), "no such Secret".to_owned()));
                    return None;
                };
                match certified_key(&object) {
                    Ok(key) => Some(Arc::new(key)),
                    Err(e) => {
                        problems.push((secret_ref.clone(), e.to_string()));
                        None
                    }
                }
            });
            if let Some(key) = key {
                by_host.insert(host.clone(), key.clone());
            }
        }
        (Certificates { by_host }, problems)
    }

    fn find(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = name.to_ascii_lowercase();
        self.by_host.get(&name).or_else(|| {
            let (_, suffix) = name.split_once('.')?;
            self.by_host.get(&format!("*.{suffix}"))
        })
    }
}

/// Chooses each TLS connection's certificate from the current [`Certificates`].
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<Certificates>>,
    fallback: Arc<CertifiedKey>,
}

impl CertResolver {
    /// With no certificates yet, and a fresh self-signed one for names none covers.
    pub fn new() -> Result<Self, rcgen::Error> {
        let cert = rcgen::generate_simple_self_signed(vec!["qb-ingress.invalid".to_owned()])?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let key = any_supported_type(&key).map_err(|_| rcgen::Error::CouldNotParseKeyPair)?;
        Ok(Self {
            current: RwLock::default(),
            fallback: Arc::new(CertifiedKey::new(vec![cert.cert.der().clone()], key)),
        })
    }

    pub fn set(&self, certificates: Certificates) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(certificates);
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Some(
            hello
                .server_name()
                .and_then(|name| current.find(name))
                .unwrap_or(&self.fallback)
                .clone(),
        )
    }
}

/// The TLS configuration of port 443: HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::*;

    fn tls_secret(name: &str, hosts: &[&str]) -> Arc<Secret> {
        let cert = rcgen::generate_simple_self_signed(
            hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(),
        )
        .expect("a certificate");
        let mut secret = Secret::default();
        secret.metadata.name = Some(name.to_owned());
        secret.metadata.namespace = Some("default".to_owned());
        secret.type_ = Some("kubernetes.io/tls".to_owned());
        secret.data = Some(
            [
                (
                    "tls.crt".to_owned(),
                    ByteString(cert.cert.pem().into_bytes()),
                ),
                (
                    "tls.key".to_owned(),
                    ByteString(cert.key_pair.serialize_pem().into_bytes()),
                ),
            ]
            .into(),
        );
        Arc::new(secret)
    }

    fn secret_ref(name: &str) -> SecretRef {
        SecretRef {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn each_host_gets_its_secrets_certificate_and_bad_secrets_are_named() {
        let good = tls_secret("shop-cert", &["shop.example.org"]);
        let mut broken = (*tls_secret("broken", &["x.test"])).clone();
        if let Some(data) = broken.data.as_mut() {
            data.insert("tls.key".to_owned(), ByteString(b"not a key".to_vec()));
        }
        let broken = Arc::new(broken);
        let tls: HashMap<String, SecretRef> = [
            ("shop.example.org".to_owned(), secret_ref("shop-cert")),
            ("*.example.org".to_owned(), secret_ref("shop-cert")),
            ("x.test".to_owned(), secret_ref("broken")),
            ("y.test".to_owned(), secret_ref("missing")),
        ]
        .into();
        let (certs, mut problems) = Certificates::build(&tls, |r| match r.name.as_str() {
            "shop-cert" => Some(good.clone()),
            "broken" => Some(broken.clone()),
            _ => None,
        });
        problems.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        assert_eq!(
            problems,
            [
                (
                    secret_ref("broken"),
                    "its tls.key holds no PEM private key".to_owned()
                ),
                (secret_ref("missing"), "no such Secret".to_owned()),
            ]
        );
        let shop = certs
            .find("SHOP.example.org")
            .expect("the shop's certificate");
        assert!(Arc::ptr_eq(
            shop,
            certs.find("www.example.org").expect("the wildcard")
        ));
        assert!(certs.find("a.b.example.org").is_none());
        assert!(certs.find("x.test").is_none());
    }
}
