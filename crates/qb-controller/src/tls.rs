//! The controller's TLS identity: given by the operator, or generated on first start and kept in
//! the data directory. Clients pin its fingerprint the way ssh remembers a host key.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// A certificate chain and its key, ready to serve.
pub struct Identity {
    pub config: Arc<rustls::ServerConfig>,
    /// `sha256:<hex>` of the leaf certificate.
    pub fingerprint: String,
    /// The certificate chain served, as PEM (certificates only, whatever else the file held).
    pub cert_pem: String,
}

/// `sha256:<hex>` of a DER certificate: what `qb login` shows and pins.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(cert.as_ref())))
}

/// Loads the operator's certificate and key, or the generated pair in `dir` (creating it with
/// `sans` on first use).
pub fn load_or_generate(
    given: Option<(&Path, &Path)>,
    dir: &Path,
    sans: &[String],
) -> Result<Identity> {
    let (cert_path, key_path) = match given {
        Some((c, k)) => (c.to_path_buf(), k.to_path_buf()),
        None => {
            let (c, k) = (dir.join("controller.crt"), dir.join("controller.key"));
            if !c.exists() {
                generate(dir, &c, &k, sans)?;
            }
            (c, k)
        }
    };
    let certs = read_certs(&cert_path)?;
    let key = read_key(&key_path)?;
    let leaf = certs.first().context("no certificate")?;
    let fingerprint = fingerprint(leaf);
    let cert_pem = certs.iter().map(|c| pem_certificate(c)).collect();
    let mut config = qb_pki::tls::server_config_builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "certificate {} does not match key {}",
                cert_path.display(),
                key_path.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Identity {
        config: Arc::new(config),
        fingerprint,
        cert_pem,
    })
}

/// One certificate as PEM.
fn pem_certificate(cert: &CertificateDer<'_>) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", cert.as_ref()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn generate(dir: &Path, cert_path: &Path, key_path: &Path, sans: &[String]) -> Result<()> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(sans.iter().cloned());
    let key = rcgen::KeyPair::generate().context("generating the TLS key")?;
    let mut params = rcgen::CertificateParams::new(names).context("certificate names")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "qb controller");
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    let cert = params
        .self_signed(&key)
        .context("signing the TLS certificate")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    crate::bootstrap::write_private(key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(cert_path, cert.pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed TLS certificate");
    Ok(())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("parsing the key in {}", path.display()))?
        .with_context(|| format!("no private key in {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_chain_is_kept_as_pem_and_nothing_else() {
        let dir = tempfile::tempdir().expect("temp dir");
        let generated = load_or_generate(None, dir.path(), &[]).expect("generate");
        let file = std::fs::read_to_string(dir.path().join("controller.crt")).expect("cert");
        assert_eq!(generated.cert_pem, file);
        let again = load_or_generate(None, dir.path(), &[]).expect("load");
        assert_eq!(
            (again.cert_pem, again.fingerprint),
            (file.clone(), generated.fingerprint)
        );

        // An operator's file with the key and comments in it: only the certificates are kept.
        let key = std::fs::read_to_string(dir.path().join("controller.key")).expect("key");
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, format!("# ours\n{key}{file}{file}")).expect("write");
        let given = load_or_generate(Some((&bundle, &bundle)), &dir.path().join("unused"), &[])
            .expect("load the bundle");
        assert_eq!(given.cert_pem, format!("{file}{file}"));
        assert!(!given.cert_pem.contains("PRIVATE KEY"));
    }
}
