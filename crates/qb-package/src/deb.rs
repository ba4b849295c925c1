//! The Debian package: an `ar` archive of `debian-binary`, `control.tar.gz` and `data.tar.gz`
//! (deb(5)), laid out as `dpkg-deb --build` would.

use crate::content;
use crate::{AgentPackage, Arch, MTIME, PackageError, TarGz};

/// Where Debian packages put systemd units.
const UNIT_DIR: &str = "/lib/systemd/system";

pub(crate) fn build(p: &AgentPackage, arch: Arch) -> Result<Vec<u8>, PackageError> {
    let unit_path = format!("{UNIT_DIR}/{}", crate::UNIT_NAME);
    let files: [(&str, u32, &[u8]); 3] = [
        (crate::BINARY_PATH, 0o755, p.agent_binary),
        (crate::CONFIG_PATH, 0o600, p.config_toml.as_bytes()),
        (&unit_path, 0o644, content::UNIT.as_bytes()),
    ];
    // Every directory above the files, parents first, once.
    let mut dirs: Vec<String> = Vec::new();
    for (path, _, _) in &files {
        let mut at = 0;
        while let Some(i) = path[at + 1..].find('/') {
            at += 1 + i;
            let dir = format!(".{}/", &path[..at]);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }

    let mut data = TarGz::new("deb's data.tar.gz");
    data.dir("./")?;
    for dir in &dirs {
        data.dir(dir)?;
    }
    for (path, mode, bytes) in &files {
        data.file(&format!(".{path}"), *mode, bytes)?;
    }
    let data = data.finish()?;

    // In KiB, as dpkg-gencontrol counts: each file rounded up, one per directory.
    let installed_size: u64 = files
        .iter()
        .map(|(_, _, bytes)| (bytes.len() as u64).div_ceil(1024))
        .sum::<u64>()
        + dirs.len() as u64
        + 1;
    let control = format!(
        "Package: {name}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: qb\n\
         Installed-Size: {installed_size}\n\
         Section: admin\n\
         Priority: optional\n\
         Description: {description}\n",
        name = crate::PACKAGE_NAME,
        version = p.version,
        arch = arch.debian(),
        description = content::debian_description(),
    );
    let mut control_tar = TarGz::new("deb's control.tar.gz");
    control_tar.dir("./")?;
    control_tar.file("./control", 0o644, control.as_bytes())?;
    control_tar.file(
        "./conffiles",
        0o644,
        format!("{}\n", crate::CONFIG_PATH).as_bytes(),
    )?;
    control_tar.file("./postinst", 0o755, content::deb_postinst().as_bytes())?;
    control_tar.file("./prerm", 0o755, content::deb_prerm().as_bytes())?;
    control_tar.file("./postrm", 0o755, content::deb_postrm().as_bytes())?;
    let control_tar = control_tar.finish()?;

    let mut deb = ar::Builder::new(Vec::new());
    let members: [(&str, &[u8]); 3] = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.gz", &control_tar),
        ("data.tar.gz", &data),
    ];
    for (name, bytes) in members {
        let mut header = ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64);
        header.set_mode(0o100644);
        header.set_mtime(u64::from(MTIME));
        deb.append(&header, bytes)
            .map_err(|source| PackageError::Archive {
                what: "deb",
                source,
            })?;
    }
    deb.into_inner().map_err(|source| PackageError::Archive {
        what: "deb",
        source,
    })
}
