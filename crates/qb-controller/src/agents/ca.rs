//! The controller's internal CA, kept in the database so every replica signs with the same one.

use qb_pki::CertificateAuthority;
use qb_store::Store;
use serde::{Deserialize, Serialize};

/// The CA's lifetime. Agents pin its public key, so a new CA means new pins on every host.
const CA_LIFETIME: time::Duration = time::Duration::days(3650);
const SECRET_NAME: &str = "agent-ca";

#[derive(Serialize, Deserialize)]
struct Stored {
    cert_pem: String,
    key_pem: String,
}

/// Loads the CA, creating it on the first start of the first replica.
pub async fn load_or_create(store: &Store) -> anyhow::Result<CertificateAuthority> {
    let value = store
        .controller_secret(SECRET_NAME, || {
            let ca = CertificateAuthority::generate("qb controller agent CA", CA_LIFETIME)?;
            let stored = Stored {
                cert_pem: ca.cert_pem().to_owned(),
                key_pem: ca.key_pem().expose().to_owned(),
            };
            Ok(serde_json::to_string(&stored)?)
        })
        .await?;
    let stored: Stored = serde_json::from_str(&value)?;
    Ok(CertificateAuthority::from_pem(
        &stored.cert_pem,
        &stored.key_pem,
    )?)
}
