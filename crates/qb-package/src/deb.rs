//! The Debian package: an `ar` archive of `debian-binary`, `control.tar.gz` and `data.tar.gz`
//! (deb(5)), laid out as `dpkg-deb --build` would, with what Debian's policy asks of a package
//! (copyright file, changelog, manual page, md5sums) so that lintian finds no error.

use md5::{Digest, Md5};

use crate::content;
use crate::elf::AgentElf;
use crate::{AgentPackage, Arch, MTIME, PackageError, TarGz};

/// Where Debian packages put systemd units.
const UNIT_DIR: &str = "/lib/systemd/system";
/// The package's documentation directory.
const DOC_DIR: &str = "/usr/share/doc/qb-agent";
/// Where lintian looks for a package's overrides.
const LINTIAN_OVERRIDES_PATH: &str = "/usr/share/lintian/overrides/qb-agent";

/// What the maintainer scripts need besides the essential packages: `deb-systemd-helper` with
/// `purge` (1.18, as debhelper declares it; the package is essential itself since Debian 9).
const SCRIPT_DEPENDS: &str = "init-system-helpers (>= 1.18~)";

pub(crate) fn build(p: &AgentPackage, arch: Arch, elf: &AgentElf) -> Result<Vec<u8>, PackageError> {
    let unit_path = format!("{UNIT_DIR}/{}", crate::UNIT_NAME);
    let copyright_path = format!("{DOC_DIR}/copyright");
    let changelog_path = format!("{DOC_DIR}/changelog.gz");
    let changelog = crate::gzip_best(
        content::debian_changelog(p.version).as_bytes(),
        "deb's changelog",
    )?;
    let man_page = crate::gzip_best(content::man_page(p.version).as_bytes(), "man page")?;
    let copyright = content::debian_copyright();
    let files: [(&str, u32, &[u8]); 7] = [
        (crate::BINARY_PATH, 0o755, p.agent_binary),
        (crate::CONFIG_PATH, 0o600, p.config_toml.as_bytes()),
        (&unit_path, 0o644, content::UNIT.as_bytes()),
        (&copyright_path, 0o644, copyright.as_bytes()),
        (&changelog_path, 0o644, &changelog),
        (crate::MAN_PAGE_PATH, 0o644, &man_page),
        (
            LINTIAN_OVERRIDES_PATH,
            0o644,
            content::LINTIAN_OVERRIDES.as_bytes(),
        ),
    ];
    let conffiles = [crate::CONFIG_PATH];
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

    // As dh_md5sums writes it: every file but the conffiles (dpkg keeps their sums itself).
    let md5sums: String = files
        .iter()
        .filter(|(path, _, _)| !conffiles.contains(path))
        .map(|(path, _, bytes)| {
            format!(
                "{:x}  {}\n",
                Md5::digest(bytes),
                path.trim_start_matches('/')
            )
        })
        .collect();

    // In KiB, as dpkg-gencontrol counts: each file rounded up, one per directory.
    let installed_size: u64 = files
        .iter()
        .map(|(_, _, bytes)| (bytes.len() as u64).div_ceil(1024))
        .sum::<u64>()
        + dirs.len() as u64
        + 1;
    let depends = elf
        .debian_depends()
        .into_iter()
        .chain(crate::NODE_TOOLS_DEB.iter().map(|t| t.to_string()))
        .chain([SCRIPT_DEPENDS.to_owned()])
        .collect::<Vec<_>>()
        .join(", ");
    let control = format!(
        "Package: {name}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: {maintainer}\n\
         Installed-Size: {installed_size}\n\
         Depends: {depends}\n\
         Recommends: {recommends}\n\
         Section: admin\n\
         Priority: optional\n\
         Description: {description}\n",
        name = crate::PACKAGE_NAME,
        version = p.version,
        arch = arch.debian(),
        maintainer = crate::MAINTAINER,
        recommends = crate::NODE_RECOMMENDS_DEB,
        description = content::debian_description(),
    );
    let conffiles: String = conffiles.iter().map(|c| format!("{c}\n")).collect();
    let mut control_tar = TarGz::new("deb's control.tar.gz");
    control_tar.dir("./")?;
    control_tar.file("./control", 0o644, control.as_bytes())?;
    control_tar.file("./md5sums", 0o644, md5sums.as_bytes())?;
    control_tar.file("./conffiles", 0o644, conffiles.as_bytes())?;
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
