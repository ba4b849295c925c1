//! The agent is one self-contained binary: it needs nothing on a host beyond the C library, and
//! the one that ships (`cargo xtask dist`'s) runs on glibc 2.17 and later, stripped. Every
//! binary of the bundle is statically linked, so it starts whatever C library a host has.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The oldest glibc the shipped agent must start on (CentOS 7, Debian 8).
const OLDEST_GLIBC: (u32, u32) = (2, 17);

#[test]
fn the_agent_links_only_the_c_library() {
    links_only_the_c_library(Path::new(env!("CARGO_BIN_EXE_qb-agent")));
}

#[test]
fn the_shipped_agent_needs_glibc_2_17_at_most_and_is_stripped() {
    let agent = shipped_agent();
    links_only_the_c_library(&agent);
    let newest = newest_glibc(&agent).expect("the agent needs some glibc symbol versions");
    eprintln!(
        "the shipped agent needs glibc {}.{} at most ({})",
        newest.0,
        newest.1,
        agent.display()
    );
    assert!(
        newest <= OLDEST_GLIBC,
        "the shipped agent needs glibc {}.{}, newer than {}.{}",
        newest.0,
        newest.1,
        OLDEST_GLIBC.0,
        OLDEST_GLIBC.1
    );
    // Stripped: no symbol table, no debug info; that is beside it, named in a debug link.
    let sections = objdump(&agent, "-h");
    for gone in [".symtab", ".debug_line", ".debug_info"] {
        assert!(!sections.contains(gone), "{gone} in the shipped agent");
    }
    assert!(sections.contains(".gnu_debuglink"), "{sections}");
    let debug = agent.with_file_name("qb-agent.debug");
    assert!(
        objdump(&debug, "-h").contains(".debug_line"),
        "{} has the debug info",
        debug.display()
    );
    let size = std::fs::metadata(&agent)
        .map(|m| m.len())
        .unwrap_or_default();
    eprintln!(
        "the shipped agent is {:.1} MiB",
        size as f64 / (1 << 20) as f64
    );
}

/// Every executable in the bundle needs no C library at all (statically linked), or one no
/// newer than the agent's: the table of what each needs is printed.
#[test]
fn every_binary_of_the_bundle_is_static() {
    let dir = crate::kubernetes::bundle_dir();
    let text = std::fs::read_to_string(dir.join("bundle.json")).expect("bundle.json");
    let manifest: serde_json::Value = serde_json::from_str(&text).expect("bundle.json is JSON");
    let mut binaries = 0;
    let mut dynamic = Vec::new();
    for artifact in manifest["artifacts"].as_array().expect("artifacts") {
        let file = dir.join(artifact["file"].as_str().expect("file"));
        let bytes = std::fs::read(&file).expect("artifact file");
        if !bytes.starts_with(b"\x7fELF") {
            continue; // images
        }
        binaries += 1;
        let name = artifact["name"].as_str().expect("name");
        let interp = objdump(&file, "-h").contains(".interp");
        let glibc = newest_glibc(&file);
        match (interp, glibc) {
            (false, None) => eprintln!("{name:<26} static, needs no C library"),
            (_, glibc) => {
                let needs = glibc.map_or("no versioned symbols".into(), |(a, b)| {
                    format!("glibc {a}.{b}")
                });
                eprintln!("{name:<26} dynamic, needs {needs}");
                dynamic.push(format!("{name} ({needs})"));
            }
        }
    }
    assert!(binaries >= 14, "only {binaries} executables in the bundle");
    assert!(dynamic.is_empty(), "linked dynamically: {dynamic:?}");
}

/// The newest glibc symbol version `binary` needs (`objdump -T`); `None` when it names none.
fn newest_glibc(binary: &Path) -> Option<(u32, u32)> {
    let symbols = Command::new("objdump")
        .arg("-T")
        .arg(binary)
        .output()
        .expect("objdump (from binutils) must be installed");
    // A static binary has no dynamic symbol table: objdump says so and fails.
    String::from_utf8_lossy(&symbols.stdout)
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|word| word.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let (major, minor) = v.split_once('.')?;
            Some((
                major.parse::<u32>().ok()?,
                minor.split('.').next()?.parse::<u32>().ok()?,
            ))
        })
        .max()
}

/// The agent `cargo xtask dist` builds, as `cargo xtask test` names it.
pub fn shipped_agent() -> PathBuf {
    let path = std::env::var_os("QB_DIST_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "QB_DIST_AGENT is not set: run the suite with `cargo xtask test`, or set it to the \
             qb-agent `cargo xtask dist` writes to target/dist"
            )
        });
    assert!(path.exists(), "{} does not exist", path.display());
    path
}

/// `objdump FLAG BINARY`'s listing.
fn objdump(binary: &Path, flag: &str) -> String {
    let out = Command::new("objdump")
        .arg(flag)
        .arg(binary)
        .output()
        .expect("objdump (from binutils) must be installed");
    assert!(
        out.status.success(),
        "objdump {flag} {}: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ldd` lists nothing but glibc's own libraries, and the binary runs.
fn links_only_the_c_library(agent: &Path) {
    let out = Command::new("ldd")
        .arg(agent)
        .output()
        .expect("ldd (from libc-bin) must be installed");
    assert!(
        out.status.success(),
        "ldd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    // glibc's own libraries, the kernel's vDSO, and gcc's unwinder that every glibc system has.
    let allowed = [
        "linux-vdso",
        "libc.so",
        "libm.so",
        "libgcc_s.so",
        "ld-linux",
        "libpthread.so",
        "libdl.so",
        "librt.so",
    ];
    for line in listing.lines().map(str::trim).filter(|l| !l.is_empty()) {
        assert!(
            allowed
                .iter()
                .any(|a| line.starts_with(a) || line.contains(&format!("/{a}"))),
            "unexpected dependency: {line}"
        );
    }
    let version = Command::new(agent)
        .arg("--version")
        .output()
        .expect("the agent runs");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("qb-agent "));
}
