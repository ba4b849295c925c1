//! The tarball, for hosts with neither dpkg nor rpm: the files and the scripts that put them in
//! place, in one directory `qb-agent-<version>/`.

use crate::content;
use crate::{AgentPackage, PackageError, TarGz};

pub(crate) fn build(p: &AgentPackage) -> Result<Vec<u8>, PackageError> {
    let dir = format!("{}-{}", crate::PACKAGE_NAME, p.version);
    let mut tar = TarGz::new("tarball");
    tar.dir(&format!("{dir}/"))?;
    tar.file(&format!("{dir}/qb-agent"), 0o755, p.agent_binary)?;
    tar.file(
        &format!("{dir}/config.toml"),
        0o600,
        p.config_toml.as_bytes(),
    )?;
    tar.file(
        &format!("{dir}/{}", crate::UNIT_NAME),
        0o644,
        content::UNIT.as_bytes(),
    )?;
    tar.file(
        &format!("{dir}/install.sh"),
        0o755,
        content::install_sh(p.version).as_bytes(),
    )?;
    tar.file(
        &format!("{dir}/uninstall.sh"),
        0o755,
        content::uninstall_sh().as_bytes(),
    )?;
    tar.file(
        &format!("{dir}/README"),
        0o644,
        content::readme(p.version).as_bytes(),
    )?;
    tar.finish()
}
