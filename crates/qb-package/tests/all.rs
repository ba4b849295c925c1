//! The packages checked with the real tools: `dpkg-deb` and `rpm` read their metadata, and
//! `dpkg -i`/`rpm -i`/`install.sh` really install them into a throwaway root (never the real
//! system), running the maintainer scripts there under busybox `sh`, then remove them again.
//!
//! Needs root (dpkg and rpm chroot into the throwaway root to run the scripts) and the Debian
//! packages `dpkg`, `rpm` and `busybox-static` (`cargo xtask deps` installs them). A missing one
//! fails the test with the command that installs it.

// Test helpers are not `#[test]` functions, which clippy.toml already allows to unwrap.
#![allow(clippy::unwrap_used)]

mod integration;
