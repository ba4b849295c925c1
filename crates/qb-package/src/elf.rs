//! What the packages learn from the agent's ELF headers: the architecture it is built for, and
//! the shared libraries and symbol versions it needs, which become the packages' dependencies
//! (a host whose C library is too old refuses the package, rather than get an agent that cannot
//! start); and whether it was stripped.

use std::collections::BTreeMap;

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, SectionHeader};
use object::{Endianness, FileKind};

use crate::{Arch, PackageError};

/// The agent binary as its ELF headers describe it.
#[derive(Debug)]
pub(crate) struct AgentElf {
    /// The shared objects it links (`DT_NEEDED`), in order, with their Debian packages.
    needed: Vec<(String, DebianLibrary)>,
    /// The symbol versions it needs, as (shared object, its Debian package, version)
    /// (`.gnu.version_r`), in order.
    versions: Vec<(String, DebianLibrary, String)>,
    /// It has only a GNU hash table, which the dynamic linker must support.
    gnu_hash_only: bool,
    /// It has no symbol table and no debug info.
    stripped: bool,
}

impl AgentElf {
    /// Reads the headers of `binary`, a 64-bit ELF executable for `arch` that links only
    /// libraries every glibc host has.
    pub(crate) fn read(binary: &[u8], arch: Arch) -> Result<Self, PackageError> {
        if !matches!(FileKind::parse(binary), Ok(FileKind::Elf64)) {
            return Err(PackageError::NotElf);
        }
        let file = ElfFile64::<Endianness>::parse(binary).map_err(PackageError::Elf)?;
        let endian = file.endian();
        let header = file.elf_header();
        if !matches!(header.e_type(endian), elf::ET_EXEC | elf::ET_DYN) {
            return Err(PackageError::NotElf);
        }
        let machine = header.e_machine(endian);
        if machine != arch.elf_machine() {
            return Err(PackageError::WrongArch {
                machine: machine.0,
                arch: arch.rpm(),
            });
        }
        let sections = file.elf_section_table();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();

        let mut needed = Vec::new();
        let mut has_hash = false;
        let mut has_gnu_hash = false;
        let dynamic = sections
            .dynamic_table(endian, binary)
            .map_err(PackageError::Elf)?;
        for entry in &dynamic {
            match entry.tag {
                elf::DT_NEEDED => {
                    let soname = text(dynamic.string(entry).map_err(PackageError::Elf)?);
                    let package = DebianLibrary::of(&soname)?;
                    needed.push((soname, package));
                }
                elf::DT_HASH => has_hash = true,
                elf::DT_GNU_HASH => has_gnu_hash = true,
                _ => {}
            }
        }

        let mut versions = Vec::new();
        if let Some((mut needs, link)) = sections
            .gnu_verneed(endian, binary)
            .map_err(PackageError::Elf)?
        {
            let strings = sections
                .strings(endian, binary, link)
                .map_err(PackageError::Elf)?;
            while let Some((need, mut auxes)) = needs.next().map_err(PackageError::Elf)? {
                let file = text(need.file(endian, strings).map_err(PackageError::Elf)?);
                let package = DebianLibrary::of(&file)?;
                while let Some(aux) = auxes.next().map_err(PackageError::Elf)? {
                    let version = text(aux.name(endian, strings).map_err(PackageError::Elf)?);
                    versions.push((file.clone(), package, version));
                }
            }
        }

        let mut stripped = true;
        for section in sections.iter() {
            let name = sections
                .section_name(endian, section)
                .map_err(PackageError::Elf)?;
            let allocated = section.sh_flags(endian).contains(elf::SHF_ALLOC);
            if section.sh_type(endian) == elf::SHT_SYMTAB
                || (!allocated && (name.starts_with(b".debug_") || name.starts_with(b".zdebug_")))
            {
                stripped = false;
            }
        }

        Ok(Self {
            needed,
            versions,
            gnu_hash_only: has_gnu_hash && !has_hash,
            stripped,
        })
    }

    pub(crate) fn stripped(&self) -> bool {
        self.stripped
    }

    /// The Debian `Depends` the libraries ask for, as `dpkg-shlibdeps` would write them: one
    /// clause per package, at least the newest symbol version needed from it.
    pub(crate) fn debian_depends(&self) -> Vec<String> {
        let mut newest: BTreeMap<DebianLibrary, Option<Version>> = BTreeMap::new();
        for (_, package) in &self.needed {
            newest.entry(*package).or_default();
        }
        for (_, package, version) in &self.versions {
            let found = version
                .strip_prefix(package.version_prefix())
                .and_then(Version::parse);
            let slot = newest.entry(*package).or_default();
            if found > *slot {
                *slot = found;
            }
        }
        newest
            .into_iter()
            .map(|(package, version)| package.relation(version.as_ref()))
            .collect()
    }

    /// The RPM `Requires` the libraries ask for, as rpm's `elfdeps` writes them:
    /// `libc.so.6(GLIBC_2.34)(64bit)` per symbol version, `libc.so.6()(64bit)` per library,
    /// and `rtld(GNU_HASH)` when the binary has only a GNU hash table.
    pub(crate) fn rpm_requires(&self) -> Vec<String> {
        let mut requires: Vec<String> = self
            .versions
            .iter()
            .map(|(soname, _, version)| format!("{soname}({version})(64bit)"))
            .chain(
                self.needed
                    .iter()
                    .map(|(soname, _)| format!("{soname}()(64bit)")),
            )
            .collect();
        if self.gnu_hash_only {
            requires.push("rtld(GNU_HASH)".to_owned());
        }
        requires
    }
}

/// The Debian packages of the libraries an agent may link: the C library and gcc's unwinder,
/// which every glibc system has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum DebianLibrary {
    Libc,
    Libgcc,
}

impl DebianLibrary {
    /// The package of `soname`; any other library is refused.
    fn of(soname: &str) -> Result<Self, PackageError> {
        match soname {
            "libc.so.6" | "libm.so.6" | "libpthread.so.0" | "libdl.so.2" | "librt.so.1"
            | "libutil.so.1" | "libresolv.so.2" => Ok(Self::Libc),
            s if s.starts_with("ld-linux") && s.contains(".so.") => Ok(Self::Libc),
            "libgcc_s.so.1" => Ok(Self::Libgcc),
            _ => Err(PackageError::UnknownLibrary(soname.to_owned())),
        }
    }

    /// How the library names its symbol versions: `GLIBC_2.34`, `GCC_4.2.0`.
    fn version_prefix(self) -> &'static str {
        match self {
            Self::Libc => "GLIBC_",
            Self::Libgcc => "GCC_",
        }
    }

    /// The `Depends` clause. gcc's unwinder is `libgcc-s1` since Debian 11 and Ubuntu 20.04,
    /// `libgcc1` (with an epoch) before; `libgcc-s1` provides `libgcc1` at its own version.
    fn relation(self, version: Option<&Version>) -> String {
        match (self, version) {
            (Self::Libc, Some(v)) => format!("libc6 (>= {v})"),
            (Self::Libc, None) => "libc6".to_owned(),
            (Self::Libgcc, Some(v)) => format!("libgcc-s1 (>= {v}) | libgcc1 (>= 1:{v})"),
            (Self::Libgcc, None) => "libgcc-s1 | libgcc1".to_owned(),
        }
    }
}

/// A symbol version's number, compared part by part (2.9 < 2.10); shown without trailing
/// `.0` parts beyond the second, as the libraries' Debian symbols files write them
/// (`GCC_4.2.0` is 4.2).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Version(Vec<u32>);

impl Version {
    fn parse(s: &str) -> Option<Self> {
        let mut parts = s
            .split('.')
            .map(|p| p.parse().ok())
            .collect::<Option<Vec<u32>>>()?;
        while parts.len() > 2 && parts.last() == Some(&0) {
            parts.pop();
        }
        Some(Self(parts))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u32::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn this_test_binary() -> Vec<u8> {
        std::fs::read(std::env::current_exe().unwrap()).unwrap()
    }

    fn elf(needed: &[&str], versions: &[(&str, &str)]) -> AgentElf {
        let package = |soname: &str| DebianLibrary::of(soname).unwrap();
        AgentElf {
            needed: needed
                .iter()
                .map(|s| ((*s).to_owned(), package(s)))
                .collect(),
            versions: versions
                .iter()
                .map(|(f, v)| ((*f).to_owned(), package(f), (*v).to_owned()))
                .collect(),
            gnu_hash_only: true,
            stripped: true,
        }
    }

    #[test]
    fn reads_a_real_binary() {
        // This test binary is built like the agent: a Rust program on glibc, not stripped.
        let read = AgentElf::read(&this_test_binary(), Arch::target().unwrap()).unwrap();
        assert!(
            read.needed.iter().any(|(n, _)| n == "libc.so.6"),
            "{read:?}"
        );
        assert!(
            read.versions
                .iter()
                .any(|(f, _, v)| f == "libc.so.6" && v.starts_with("GLIBC_2.")),
            "{read:?}"
        );
        assert!(!read.stripped());
        let depends = read.debian_depends();
        assert!(depends[0].starts_with("libc6 (>= 2."), "{depends:?}");
        let requires = read.rpm_requires();
        assert!(
            requires.contains(&"libc.so.6()(64bit)".to_owned()),
            "{requires:?}"
        );
    }

    #[test]
    fn refuses_what_is_not_an_agent_for_this_architecture() {
        let arch = Arch::target().unwrap();
        for not_elf in [&b"#!/bin/sh\necho agent\n"[..], b"\x7fELF", b""] {
            assert!(matches!(
                AgentElf::read(not_elf, arch),
                Err(PackageError::NotElf)
            ));
        }
        let mut other = this_test_binary();
        // e_machine, little-endian, at offset 18: RISC-V.
        other[18..20].copy_from_slice(&243u16.to_le_bytes());
        match AgentElf::read(&other, arch) {
            Err(PackageError::WrongArch { machine: 243, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn depends_on_the_newest_version_needed_from_each_library() {
        let read = elf(
            &[
                "libgcc_s.so.1",
                "libm.so.6",
                "libc.so.6",
                "ld-linux-x86-64.so.2",
            ],
            &[
                ("libgcc_s.so.1", "GCC_3.0"),
                ("libgcc_s.so.1", "GCC_4.2.0"),
                ("libgcc_s.so.1", "GCC_3.3"),
                ("libm.so.6", "GLIBC_2.29"),
                ("libc.so.6", "GLIBC_2.2.5"),
                ("libc.so.6", "GLIBC_2.9"),
                ("libc.so.6", "GLIBC_2.10"),
                ("libc.so.6", "GLIBC_PRIVATE"),
                ("ld-linux-x86-64.so.2", "GLIBC_2.3"),
            ],
        );
        assert_eq!(
            read.debian_depends(),
            ["libc6 (>= 2.29)", "libgcc-s1 (>= 4.2) | libgcc1 (>= 1:4.2)"]
        );
        assert_eq!(elf(&["libc.so.6"], &[]).debian_depends(), ["libc6"]);
        assert_eq!(elf(&[], &[]).debian_depends(), Vec::<String>::new());
    }

    #[test]
    fn only_the_c_library_and_gccs_unwinder_may_be_linked() {
        for soname in [
            "libc.so.6",
            "ld-linux-aarch64.so.1",
            "libgcc_s.so.1",
            "libm.so.6",
        ] {
            DebianLibrary::of(soname).unwrap();
        }
        for soname in ["libssl.so.3", "libstdc++.so.6", "ld-linux"] {
            match DebianLibrary::of(soname) {
                Err(PackageError::UnknownLibrary(refused)) => assert_eq!(refused, soname),
                other => panic!("{soname}: {other:?}"),
            }
        }
    }

    #[test]
    fn requires_as_elfdeps_writes_them() {
        let read = elf(
            &["libc.so.6", "ld-linux-x86-64.so.2"],
            &[
                ("libc.so.6", "GLIBC_2.34"),
                ("ld-linux-x86-64.so.2", "GLIBC_2.3"),
            ],
        );
        assert_eq!(
            read.rpm_requires(),
            [
                "libc.so.6(GLIBC_2.34)(64bit)",
                "ld-linux-x86-64.so.2(GLIBC_2.3)(64bit)",
                "libc.so.6()(64bit)",
                "ld-linux-x86-64.so.2()(64bit)",
                "rtld(GNU_HASH)",
            ]
        );
    }

    #[test]
    fn versions_compare_by_number() {
        let v = |s: &str| Version::parse(s).unwrap();
        assert!(v("2.9") < v("2.10"));
        assert!(v("2.2.5") < v("2.3"));
        assert_eq!(v("4.2.0").to_string(), "4.2");
        assert_eq!(v("12.0.0").to_string(), "12.0");
        assert_eq!(v("2.2.5").to_string(), "2.2.5");
        assert_eq!(Version::parse("PRIVATE"), None);
    }
}
