//! The preconfigured `qb-agent` packages the controller serves per tenant, built in memory at run
//! time with no packaging tools: a Debian package ([`deb`]), an RPM ([`rpm`]) and a tarball with
//! install scripts ([`tarball`]).
//!
//! All three install the same things:
//!
//! | what                 | where                                      | mode, owner      |
//! |----------------------|--------------------------------------------|------------------|
//! | the agent            | `/usr/bin/qb-agent`                        | 0755 root:root   |
//! | its config (secret)  | `/etc/qb-agent/config.toml`                | 0600 root:root   |
//! | the systemd unit     | `qb-agent.service` (directory per format)  | 0644 root:root   |
//! | its state (scripts)  | `/var/lib/qb-agent`                        | 0700 root:root   |
//!
//! The deb and the rpm also carry the agent's manual page, and the deb its copyright file and
//! changelog, as Debian's policy asks. The deb depends on, and the rpm requires, the libraries
//! the agent's ELF headers say it needs, at the newest symbol version it uses (`libc6 (>= 2.34)`,
//! `libc.so.6(GLIBC_2.34)(64bit)`), so a host whose C library is too old refuses the package; an
//! agent that needs a library other than the C library and gcc's unwinder is refused.
//!
//! The config is a conffile in the deb and `%config(noreplace)` in the rpm, so an upgrade never
//! overwrites one the administrator changed. The maintainer scripts are POSIX `sh` (they run under
//! busybox): after install they create the state directory and, when systemd is PID 1, enable and
//! start the unit, otherwise they say how to start the agent by hand (the deb enables the unit
//! with `deb-systemd-helper` either way, so a host that boots with systemd later starts it);
//! before removal they stop and disable it; purging (the rpm's erase, the tarball's
//! `uninstall.sh`) removes `/var/lib/qb-agent` and `/etc/qb-agent`.
//!
//! The agent binary is shipped as given: stripping it (and keeping its debug info elsewhere) is
//! the release build's work, and [`is_stripped`] tells whether it was done.
//!
//! Output is deterministic: the same inputs give the same bytes (every timestamp is [`MTIME`]).
//!
//! The package architecture is that of the build target (amd64/x86_64 or arm64/aarch64): the
//! controller serves the agent built alongside it, and refuses a binary built for another.

mod content;
mod deb;
mod elf;
mod rpm_pkg;
mod tarball;

use std::fmt;

/// The package name, in every format.
pub const PACKAGE_NAME: &str = "qb-agent";
/// Where the agent binary is installed.
pub const BINARY_PATH: &str = "/usr/bin/qb-agent";
/// The directory of the agent's config.
pub const CONFIG_DIR: &str = "/etc/qb-agent";
/// The agent's config (it holds a bootstrap secret: mode 0600).
pub const CONFIG_PATH: &str = "/etc/qb-agent/config.toml";
/// The agent's state directory (mode 0700), made by the install scripts and by systemd.
pub const STATE_DIR: &str = "/var/lib/qb-agent";
/// The systemd unit's name.
pub const UNIT_NAME: &str = "qb-agent.service";
/// The agent's manual page (deb and rpm).
pub const MAN_PAGE_PATH: &str = "/usr/share/man/man1/qb-agent.1.gz";
/// Who answers for the deb and the rpm (Debian's `Maintainer`, RPM's `Packager`).
/// What a Kubernetes node needs of its distribution besides the C library: packet filtering
/// (`iptables`, `iptables-save`, `iptables-restore`, used by the agent, the kubelet and
/// kube-proxy) and `ip`; as Debian and as RPM distributions name the packages.
const NODE_TOOLS_DEB: &[&str] = &["iptables", "iproute2"];
const NODE_TOOLS_RPM: &[&str] = &["iptables", "iproute"];
/// Recommended: kube-proxy clears stale UDP connections with `conntrack`.
const NODE_RECOMMENDS_DEB: &str = "conntrack";
const NODE_RECOMMENDS_RPM: &str = "conntrack-tools";

pub const MAINTAINER: &str = "qb maintainers <maintainers@qb.invalid>";
/// The timestamp of every file and of the packages themselves (2025-01-01T00:00:00Z), so the same
/// inputs always give the same bytes.
pub const MTIME: u32 = 1_735_689_600;

/// What goes into an agent package.
#[derive(Clone, Copy)]
pub struct AgentPackage<'a> {
    /// The agent's version, e.g. `0.1.0`: an ASCII digit, then letters, digits, `.`, `+` or `~`
    /// (use `~` for a pre-release: `0.2.0~rc.1` sorts before `0.2.0` in dpkg and rpm alike).
    pub version: &'a str,
    /// The `qb-agent` executable.
    pub agent_binary: &'a [u8],
    /// The agent's config: controller URL, CA pins and a fresh bootstrap token (a secret).
    pub config_toml: &'a str,
}

impl fmt::Debug for AgentPackage<'_> {
    /// Never prints the config: it holds a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentPackage")
            .field("version", &self.version)
            .field(
                "agent_binary",
                &format_args!("<{} bytes>", self.agent_binary.len()),
            )
            .field("config_toml", &format_args!("<redacted>"))
            .finish()
    }
}

/// Why a package could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("invalid agent version {version:?}: {reason}")]
    InvalidVersion {
        version: String,
        reason: &'static str,
    },
    #[error("the agent binary is empty")]
    EmptyBinary,
    #[error("the agent binary is not a 64-bit ELF executable")]
    NotElf,
    #[error("cannot read the agent binary's ELF headers")]
    Elf(#[source] object::read::Error),
    #[error("the agent binary is built for ELF machine {machine}, not for {arch}")]
    WrongArch { machine: u16, arch: &'static str },
    #[error(
        "the agent binary needs {0}, which its packages cannot depend on: the agent may link \
         only the C library and gcc's unwinder"
    )]
    UnknownLibrary(String),
    #[error("the agent config is empty")]
    EmptyConfig,
    #[error("no package architecture for the build target's architecture {0:?}")]
    UnsupportedArch(&'static str),
    #[error("could not write the {what}")]
    Archive {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("could not build the rpm")]
    Rpm(#[source] rpm::Error),
}

/// The Debian package (`qb-agent_<version>_<arch>.deb`).
pub fn deb(p: &AgentPackage) -> Result<Vec<u8>, PackageError> {
    let (arch, elf) = check(p)?;
    deb::build(p, arch, &elf)
}

/// The RPM (`qb-agent-<version>-1.<arch>.rpm`).
pub fn rpm(p: &AgentPackage) -> Result<Vec<u8>, PackageError> {
    let (arch, elf) = check(p)?;
    rpm_pkg::build(p, arch, &elf)
}

/// The tarball: `qb-agent-<version>/{qb-agent, config.toml, qb-agent.service, install.sh,
/// uninstall.sh, README}`.
pub fn tarball(p: &AgentPackage) -> Result<Vec<u8>, PackageError> {
    check(p)?;
    tarball::build(p)
}

/// Whether the agent binary has neither a symbol table nor debug info. The packages ship it
/// as given; an unstripped one (a debug build) carries tens of megabytes to every host, and
/// lintian calls it an error.
pub fn is_stripped(agent_binary: &[u8]) -> Result<bool, PackageError> {
    Ok(elf::AgentElf::read(agent_binary, Arch::target()?)?.stripped())
}

/// The three kinds of agent package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Deb,
    Rpm,
    Tarball,
}

impl Format {
    /// `deb`, `rpm` or `tar.gz`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "deb" => Some(Self::Deb),
            "rpm" => Some(Self::Rpm),
            "tar.gz" => Some(Self::Tarball),
            _ => None,
        }
    }

    pub fn build(self, p: &AgentPackage) -> Result<Vec<u8>, PackageError> {
        match self {
            Self::Deb => deb(p),
            Self::Rpm => rpm(p),
            Self::Tarball => tarball(p),
        }
    }

    /// The conventional file name of the package for `version` on this architecture.
    pub fn file_name(self, version: &str) -> Result<String, PackageError> {
        check_version(version)?;
        let arch = Arch::target()?;
        Ok(match self {
            Self::Deb => format!("qb-agent_{version}_{}.deb", arch.debian()),
            Self::Rpm => format!("qb-agent-{version}-1.{}.rpm", arch.rpm()),
            Self::Tarball => format!("qb-agent-{version}.tar.gz"),
        })
    }
}

/// The architectures packages are built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The build target's.
    fn target() -> Result<Self, PackageError> {
        match std::env::consts::ARCH {
            "x86_64" => Ok(Self::X86_64),
            "aarch64" => Ok(Self::Aarch64),
            other => Err(PackageError::UnsupportedArch(other)),
        }
    }

    fn debian(self) -> &'static str {
        match self {
            Self::X86_64 => "amd64",
            Self::Aarch64 => "arm64",
        }
    }

    fn rpm(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        }
    }

    fn elf_machine(self) -> object::elf::Machine {
        match self {
            Self::X86_64 => object::elf::EM_X86_64,
            Self::Aarch64 => object::elf::EM_AARCH64,
        }
    }
}

/// The longest version accepted.
const MAX_VERSION_LEN: usize = 64;

/// Checks the inputs; returns the architecture to build for and the agent's ELF headers.
fn check(p: &AgentPackage) -> Result<(Arch, elf::AgentElf), PackageError> {
    check_version(p.version)?;
    if p.agent_binary.is_empty() {
        return Err(PackageError::EmptyBinary);
    }
    if p.config_toml.is_empty() {
        return Err(PackageError::EmptyConfig);
    }
    let arch = Arch::target()?;
    let elf = elf::AgentElf::read(p.agent_binary, arch)?;
    Ok((arch, elf))
}

/// A version both dpkg and rpm take as is, and that is safe in file names and shell scripts:
/// Debian forbids `_`, RPM forbids `-` (the release separator) and `:` means an epoch in both.
fn check_version(version: &str) -> Result<(), PackageError> {
    let reason = if version.is_empty() {
        Some("it is empty")
    } else if version.len() > MAX_VERSION_LEN {
        Some("it is longer than 64 characters")
    } else if !version.starts_with(|c: char| c.is_ascii_digit()) {
        Some("it must start with a digit")
    } else if !version
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~'))
    {
        Some(
            "only ASCII letters, digits, '.', '+' and '~' are allowed (write a pre-release as 1.0~rc.1)",
        )
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PackageError::InvalidVersion {
            version: version.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// `data` compressed as `gzip -9n` does: best compression, no name or time in the header (Debian
/// wants documentation compressed so, and the same inputs must give the same bytes).
fn gzip_best(data: &[u8], what: &'static str) -> Result<Vec<u8>, PackageError> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(3)
        .write(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, data)
        .and_then(|()| gz.finish())
        .map_err(|source| PackageError::Archive { what, source })
}

/// A gzip-compressed tar archive written in memory, every entry owned by root with [`MTIME`].
struct TarGz {
    builder: tar::Builder<flate2::write::GzEncoder<Vec<u8>>>,
    what: &'static str,
}

impl TarGz {
    /// `what` names the archive in errors.
    fn new(what: &'static str) -> Self {
        let gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::default());
        Self {
            builder: tar::Builder::new(gz),
            what,
        }
    }

    /// A directory; `path` ends with `/`.
    fn dir(&mut self, path: &str) -> Result<(), PackageError> {
        self.entry(path, tar::EntryType::Directory, 0o755, &[])
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<(), PackageError> {
        self.entry(path, tar::EntryType::Regular, mode, data)
    }

    fn entry(
        &mut self,
        path: &str,
        kind: tar::EntryType,
        mode: u32,
        data: &[u8],
    ) -> Result<(), PackageError> {
        let mut header = tar::Header::new_ustar();
        // The name is written as given (tar's `set_path` would drop a leading `./`, which
        // dpkg-deb writes and some tools expect). Paths here are short, fixed, or bounded by
        // the version's length.
        let name = &mut header.as_old_mut().name;
        if path.len() >= name.len() {
            return Err(self.error(std::io::Error::other(format!(
                "path {path:?} is too long for a tar header"
            ))));
        }
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_mtime(u64::from(MTIME));
        header.set_uid(0);
        header.set_gid(0);
        header
            .set_username("root")
            .and_then(|()| header.set_groupname("root"))
            .map_err(|e| self.error(e))?;
        header.set_cksum();
        self.builder
            .append(&header, data)
            .map_err(|e| self.error(e))
    }

    fn finish(self) -> Result<Vec<u8>, PackageError> {
        let what = self.what;
        self.builder
            .into_inner()
            .and_then(|gz| gz.finish())
            .map_err(|source| PackageError::Archive { what, source })
    }

    fn error(&self, source: std::io::Error) -> PackageError {
        PackageError::Archive {
            what: self.what,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "controller = \"https://qb.example:8443\"\ntoken = \"qb_secret\"\n";

    /// A small real executable standing in for the agent: it links only the C library.
    static AGENT: std::sync::LazyLock<Vec<u8>> =
        std::sync::LazyLock::new(|| std::fs::read("/bin/true").unwrap());

    fn package(version: &str) -> AgentPackage<'_> {
        AgentPackage {
            version,
            agent_binary: &AGENT,
            config_toml: CONFIG,
        }
    }

    #[test]
    fn versions_both_formats_accept() {
        for v in ["0.1.0", "1", "2.0~rc.1", "1.2.3+git.abc", "10.0.0~beta2"] {
            check_version(v).unwrap_or_else(|e| panic!("{v}: {e}"));
        }
    }

    #[test]
    fn versions_either_format_refuses() {
        let long = "1".repeat(MAX_VERSION_LEN + 1);
        for v in [
            "",
            "v0.1.0",
            "0.1.0-rc.1",
            "1:0.1.0",
            "0.1_0",
            "0.1 0",
            "0.1.0\n",
            "0.1.0;rm",
            "0.1/0",
            "é",
            &long,
        ] {
            match check_version(v) {
                Err(PackageError::InvalidVersion { version, .. }) => assert_eq!(version, v),
                other => panic!("{v:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn empty_inputs_are_refused_by_every_format() {
        let no_binary = AgentPackage {
            agent_binary: b"",
            ..package("0.1.0")
        };
        let no_config = AgentPackage {
            config_toml: "",
            ..package("0.1.0")
        };
        let script = AgentPackage {
            agent_binary: b"#!/bin/sh\necho agent\n",
            ..package("0.1.0")
        };
        for build in [deb, rpm, tarball] {
            assert!(matches!(build(&no_binary), Err(PackageError::EmptyBinary)));
            assert!(matches!(build(&no_config), Err(PackageError::EmptyConfig)));
            assert!(matches!(build(&script), Err(PackageError::NotElf)));
            assert!(matches!(
                build(&package("0.1.0-1")),
                Err(PackageError::InvalidVersion { .. })
            ));
        }
    }

    #[test]
    fn output_is_deterministic() {
        let p = package("0.1.0");
        for build in [deb, rpm, tarball] {
            assert_eq!(build(&p).unwrap(), build(&p).unwrap());
        }
    }

    #[test]
    fn tells_a_stripped_binary_from_a_debug_build() {
        assert!(is_stripped(&AGENT).unwrap());
        let this_test = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_stripped(&this_test).unwrap());
    }

    #[test]
    fn debug_never_shows_the_config() {
        let shown = format!("{:?}", package("0.1.0"));
        assert!(!shown.contains("qb_secret"), "{shown}");
        assert!(shown.contains("0.1.0"), "{shown}");
    }

    #[test]
    fn tarball_layout_modes_and_owners() {
        let p = package("0.1.0");
        let gz = tarball(&p).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let h = entry.header();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            assert_eq!(h.username().unwrap(), Some("root"));
            assert_eq!(h.mtime().unwrap(), u64::from(MTIME));
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mode = h.mode().unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            if path == "qb-agent-0.1.0/config.toml" {
                assert_eq!(data, CONFIG.as_bytes());
            }
            seen.push((path, mode));
        }
        let expected = [
            ("qb-agent-0.1.0/", 0o755),
            ("qb-agent-0.1.0/qb-agent", 0o755),
            ("qb-agent-0.1.0/config.toml", 0o600),
            ("qb-agent-0.1.0/qb-agent.service", 0o644),
            ("qb-agent-0.1.0/install.sh", 0o755),
            ("qb-agent-0.1.0/uninstall.sh", 0o755),
            ("qb-agent-0.1.0/README", 0o644),
        ];
        let expected: Vec<(String, u32)> = expected
            .iter()
            .map(|(p, m)| ((*p).to_owned(), *m))
            .collect();
        assert_eq!(seen, expected);
    }
}
