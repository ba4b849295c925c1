//! First start: the first tenant, its admin user and an admin token the operator can find.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use qb_api::Name;
use qb_store::{Actor, Store};

/// The first tenant's name.
pub const FIRST_TENANT: &str = "default";
/// The first tenant's admin user.
pub const FIRST_ADMIN: &str = "admin";
/// Where the first admin token is written, inside the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// The first admin token's lifetime, in hours (30 days).
const ADMIN_TOKEN_HOURS: u32 = 720;

/// On an empty store, creates the first tenant and admin and writes an admin token to
/// `<data_dir>/admin-token` (mode 0600). Returns that file's path, only on the first start.
pub async fn first_start(store: &Store, data_dir: &Path) -> Result<Option<PathBuf>> {
    if store.tenant_count().await? > 0 {
        return Ok(None);
    }
    let tenant_name: Name = FIRST_TENANT.parse().expect("a valid name");
    let admin_name: Name = FIRST_ADMIN.parse().expect("a valid name");
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let (tenant, admin) = store.create_tenant(&tenant_name, &admin_name).await?;
    let created = crate::app::mint_token(
        store,
        tenant.id,
        &admin.name,
        Some("first admin token".parse().expect("a valid description")),
        ADMIN_TOKEN_HOURS,
        &Actor::controller(),
    )
    .await?;
    write_private(&path, format!("{}\n", created.secret).as_bytes())?;
    Ok(Some(path))
}

/// Writes a secret to a new file only its owner can read.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
