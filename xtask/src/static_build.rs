//! The bundle's Go binaries other than Kubernetes' — etcd, containerd with its shim and `ctr`,
//! runc and the CNI plugins — built from Debian's source packages, statically linked.
//!
//! Debian's own binaries of these link glibc dynamically and need the glibc of the release they
//! were built on (2.34 for Debian 12's), so they would not start on Debian 11, Ubuntu 20.04 or
//! RHEL 8. Static binaries start on any x86_64 Linux. Each package is built the way its
//! upstream builds its static release: pure Go (`CGO_ENABLED=0`) where the code allows, else
//! cgo linked with `-extldflags -static` and the `netgo`/`osusergo` tags (containerd's daemon,
//! runc with libseccomp).
//!
//! The sources are Debian's, patches applied, with the Go dependencies Debian packages: the
//! package's build dependencies are installed and `dh_auto_configure` lays out the GOPATH tree
//! Debian's build uses; then `go build` makes each binary. Cached by source version.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::run;

/// One Debian source package and the binaries the bundle takes from it.
pub struct Source {
    pub package: &'static str,
    /// Import paths `dh_auto_configure` leaves out (as the package's `debian/rules` says).
    excludes: &'static str,
    pub binaries: &'static [Binary],
}

pub struct Binary {
    /// The Go package of `main`.
    import: &'static str,
    /// The artifact's name in the bundle.
    pub artifact: &'static str,
    /// Its path in the bundle.
    pub path: &'static str,
    /// Needs cgo: linked static against glibc (and the C libraries it uses) instead.
    cgo: bool,
    tags: &'static str,
    /// `-X` settings, as the package's `debian/rules` passes them; `{version}` is the source's
    /// upstream version.
    ldflags: &'static str,
}

pub const SOURCES: &[Source] = &[
    Source {
        package: "etcd",
        excludes: "tools",
        binaries: &[Binary {
            import: "go.etcd.io/etcd",
            artifact: "etcd",
            path: "bin/etcd",
            cgo: false,
            tags: "",
            ldflags: "",
        }],
    },
    Source {
        package: "containerd",
        excludes: "cmd/protoc-gen-gogoctrd cmd/containerd-stress runtime/v2/example/cmd \
                   integration tracing/plugin",
        binaries: &[
            Binary {
                import: "github.com/containerd/containerd/cmd/containerd",
                artifact: "containerd",
                path: "bin/containerd",
                // The btrfs snapshotter is cgo.
                cgo: true,
                tags: "static_build",
                ldflags: "-X github.com/containerd/containerd/version.Version={version}",
            },
            Binary {
                import: "github.com/containerd/containerd/cmd/containerd-shim-runc-v2",
                artifact: "containerd-shim-runc-v2",
                path: "bin/containerd-shim-runc-v2",
                cgo: false,
                tags: "",
                ldflags: "-X github.com/containerd/containerd/version.Version={version}",
            },
            Binary {
                import: "github.com/containerd/containerd/cmd/ctr",
                artifact: "ctr",
                path: "bin/ctr",
                cgo: false,
                tags: "",
                ldflags: "-X github.com/containerd/containerd/version.Version={version}",
            },
        ],
    },
    Source {
        package: "runc",
        excludes: "libcontainer/integration contrib/cmd",
        binaries: &[Binary {
            import: "github.com/opencontainers/runc",
            artifact: "runc",
            path: "bin/runc",
            // nsenter is C; seccomp is libseccomp.
            cgo: true,
            tags: "seccomp urfave_cli_no_docs",
            ldflags: "-X main.version={version}",
        }],
    },
    Source {
        package: "golang-github-containernetworking-plugins",
        excludes: "integration plugins/sample plugins/main/windows pkg/testutils/echo",
        binaries: &[
            cni(
                "github.com/containernetworking/plugins/plugins/main/bridge",
                "cni-bridge",
                "cni/bridge",
            ),
            cni(
                "github.com/containernetworking/plugins/plugins/ipam/host-local",
                "cni-host-local",
                "cni/host-local",
            ),
            cni(
                "github.com/containernetworking/plugins/plugins/main/loopback",
                "cni-loopback",
                "cni/loopback",
            ),
            cni(
                "github.com/containernetworking/plugins/plugins/meta/portmap",
                "cni-portmap",
                "cni/portmap",
            ),
        ],
    },
];

const fn cni(import: &'static str, artifact: &'static str, path: &'static str) -> Binary {
    Binary {
        import,
        artifact,
        path,
        cgo: false,
        tags: "",
        ldflags: "",
    }
}

/// What a built source gives: its Debian version and the directory holding its binaries (by
/// artifact name).
pub struct Built {
    pub version: String,
    pub dir: PathBuf,
}

/// Builds `source`'s binaries unless the cache has them.
pub fn build(cache: &Path, source: &Source) -> Result<Built> {
    let root = cache.join("static").join(source.package);
    let downloads = root.join("src");
    let dsc = match find_dsc(&downloads)? {
        Some(dsc) => dsc,
        None => {
            std::fs::create_dir_all(&downloads)?;
            crate::install_missing([("dpkg-dev", "/usr/bin/dpkg-source")].into_iter())?;
            crate::bundle::enable_source_packages()?;
            eprintln!(
                "xtask: downloading Debian's {} source package",
                source.package
            );
            run(Command::new("apt-get")
                .args(["source", "--download-only", source.package])
                .current_dir(&downloads))?;
            find_dsc(&downloads)?
                .with_context(|| format!("apt-get left no {}_*.dsc", source.package))?
        }
    };
    let version = dsc
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.split_once('_'))
        .map(|(_, v)| v.rsplit_once(':').map_or(v, |(_, v)| v).to_owned())
        .context("a .dsc named <package>_<version>.dsc")?;
    let dir = root.join(format!("bin-{version}"));
    if source
        .binaries
        .iter()
        .all(|b| dir.join(b.artifact).is_file())
    {
        return Ok(Built { version, dir });
    }
    eprintln!(
        "xtask: building {} {version} from Debian's source, statically linked (about a minute)",
        source.package
    );
    run(Command::new("apt-get")
        .args(["build-dep", "-y", "-q", source.package])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    let tree = root.join("tree");
    if tree.exists() {
        std::fs::remove_dir_all(&tree)?;
    }
    run(Command::new("dpkg-source").arg("-x").arg(&dsc).arg(&tree))?;
    run(Command::new("dh_auto_configure")
        .args(["--buildsystem=golang", "--builddirectory=_build"])
        .env("DH_GOLANG_EXCLUDES", source.excludes)
        .current_dir(&tree))?;
    let upstream = version.split('-').next().unwrap_or(&version);
    let go = cache.join("go");
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)?;
    for binary in source.binaries {
        let mut ldflags = format!("-s -w {}", binary.ldflags.replace("{version}", upstream));
        let mut tags = binary.tags.to_owned();
        if binary.cgo {
            ldflags.push_str(" -extldflags -static");
            tags.push_str(" netgo osusergo");
        }
        let out = partial.join(binary.artifact);
        run(Command::new("go")
            .args(["build", "-trimpath", "-tags", tags.trim(), "-ldflags"])
            .arg(ldflags.trim())
            .arg("-o")
            .arg(&out)
            .arg(binary.import)
            .current_dir(tree.join("_build"))
            .env("GOPATH", tree.join("_build"))
            .env("GO111MODULE", "off")
            .env("GOPROXY", "off")
            .env("CGO_ENABLED", if binary.cgo { "1" } else { "0" })
            .env("HOME", &go)
            .env("GOCACHE", go.join("cache")))?;
        ensure_static(&out)?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&partial, &dir)?;
    std::fs::remove_dir_all(&tree)?;
    Ok(Built { version, dir })
}

/// The one `.dsc` in `dir`, if any.
fn find_dsc(dir: &Path) -> Result<Option<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "dsc") {
            found.push(path);
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => bail!(
            "{} holds several source packages: {found:?}; remove it",
            dir.display()
        ),
    }
}

/// A statically linked ELF executable has no program interpreter.
fn ensure_static(binary: &Path) -> Result<()> {
    let bytes = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let elf = object::read::elf::ElfFile64::<object::Endianness>::parse(&*bytes)
        .with_context(|| format!("{} is not an ELF executable", binary.display()))?;
    use object::read::elf::ProgramHeader as _;
    let endian = elf.endian();
    let interp = elf
        .elf_program_headers()
        .iter()
        .any(|ph| ph.p_type(endian) == object::elf::PT_INTERP);
    ensure!(
        !interp,
        "{} was linked dynamically (it names a program interpreter)",
        binary.display()
    );
    Ok(())
}
