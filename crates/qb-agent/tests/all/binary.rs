//! The agent is one self-contained binary: it needs nothing on a host beyond the C library.

use std::process::Command;

#[test]
fn the_agent_links_only_the_c_library() {
    let agent = env!("CARGO_BIN_EXE_qb-agent");
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
    let version = Command::new(agent).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("qb-agent "));
}
