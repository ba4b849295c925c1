//! The RPM, built with the pure-Rust `rpm` crate (no rpmbuild).

use rpm::{BuildConfig, CompressionWithLevel, Dependency, FileOptions, PackageBuilder, Scriptlet};

use crate::content;
use crate::elf::AgentElf;
use crate::{AgentPackage, Arch, MTIME, PackageError};

/// Where RPM distributions put systemd units.
const UNIT_DIR: &str = "/usr/lib/systemd/system";

pub(crate) fn build(p: &AgentPackage, arch: Arch, elf: &AgentElf) -> Result<Vec<u8>, PackageError> {
    let config = BuildConfig::v4()
        .source_date(MTIME)
        // rpm's default, level 9, takes much longer on a large binary for little gain.
        .compression(CompressionWithLevel::Gzip(6))
        .reserved_space(None);
    let mut builder = PackageBuilder::new(
        crate::PACKAGE_NAME,
        p.version,
        env!("CARGO_PKG_LICENSE"),
        arch.rpm(),
        content::SUMMARY,
    );
    builder
        .using_config(config)
        .release("1")
        .description(content::rpm_description())
        .vendor("qb")
        .packager(crate::MAINTAINER)
        .group("System Environment/Daemons")
        // The same bytes wherever the package is built, as in reproducible distribution builds.
        .build_host("reproducible")
        .add_changelog_entry(
            format!("{} - {}-1", crate::MAINTAINER, p.version),
            format!("- qb-agent {}, packaged by its qb controller.", p.version),
            MTIME,
        );
    for requirement in elf.rpm_requires() {
        builder.requires(Dependency::any(requirement));
    }
    for tool in crate::NODE_TOOLS_RPM {
        builder.requires(Dependency::any(*tool));
    }
    builder.recommends(Dependency::any(crate::NODE_RECOMMENDS_RPM));
    let man_page = crate::gzip_best(content::man_page(p.version).as_bytes(), "man page")?;
    builder
        .with_file_contents(
            p.agent_binary,
            FileOptions::new(crate::BINARY_PATH)
                .permissions(0o755)
                .user("root")
                .group("root"),
        )
        .and_then(|b| {
            b.with_dir_entry(
                FileOptions::dir(crate::CONFIG_DIR)
                    .permissions(0o755)
                    .user("root")
                    .group("root"),
            )
        })
        .and_then(|b| {
            b.with_file_contents(
                p.config_toml,
                FileOptions::new(crate::CONFIG_PATH)
                    .permissions(0o600)
                    .user("root")
                    .group("root")
                    .config()
                    .noreplace(),
            )
        })
        .and_then(|b| {
            b.with_file_contents(
                man_page,
                FileOptions::new(crate::MAN_PAGE_PATH)
                    .permissions(0o644)
                    .user("root")
                    .group("root")
                    .doc(),
            )
        })
        .and_then(|b| {
            b.with_file_contents(
                content::UNIT,
                FileOptions::new(format!("{UNIT_DIR}/{}", crate::UNIT_NAME))
                    .permissions(0o644)
                    .user("root")
                    .group("root"),
            )
        })
        .map_err(PackageError::Rpm)?;
    // The interpreter is named, as rpmbuild does: rpm's default is /bin/sh too, but only then
    // does `rpm -q --scripts` show it.
    let sh = |script: String| Scriptlet::new(script).prog(vec!["/bin/sh"]);
    builder
        .post_install_script(sh(content::rpm_post()))
        .pre_uninstall_script(sh(content::rpm_preun()))
        .post_uninstall_script(sh(content::rpm_postun()));
    let package = builder.build().map_err(PackageError::Rpm)?;
    let mut out = Vec::new();
    package.write(&mut out).map_err(PackageError::Rpm)?;
    Ok(out)
}
