//! The images of qb's own add-ons, built from this workspace and added to the bundle: each
//! add-on binary is built statically (`crt-static`: a container image holds no C library) and
//! packed as an OCI image `qb.local/<name>:<version>`, the artifact `image-<name>`.
//!
//! The cached bundle stays as it is; the bundle with the add-ons is a directory under
//! `target/bundle` whose manifest lists the cached bundle's files (hard links, where the file
//! system allows) and the add-on images, made again on every run so it always holds this
//! source's add-ons.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{cargo, run};

/// The add-on binaries: the crate, its binary, the image name.
const ADDONS: &[(&str, &str)] = &[("qb-dns", "qb-dns"), ("qb-ingress", "qb-ingress")];
/// The target they are built for: its own target directory, so the static flags never touch
/// the workspace's other builds.
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The bundle `base` with this workspace's add-on images; its directory.
pub fn bundle(root: &Path, base: &Path) -> Result<PathBuf> {
    let target_dir = root.join("target/addons");
    let mut build = Command::new(cargo());
    build
        .current_dir(root)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // What runs in a container needs no debug info.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    for (package, _) in ADDONS {
        build.args(["-p", package, "--bin", package]);
    }
    run(&mut build)?;

    let out = root.join("target/bundle");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    std::fs::create_dir_all(out.join("images"))?;
    let text = std::fs::read_to_string(base.join("bundle.json"))
        .with_context(|| format!("reading {}", base.join("bundle.json").display()))?;
    let mut manifest: Value = serde_json::from_str(&text)?;
    let artifacts = manifest["artifacts"]
        .as_array_mut()
        .context("bundle.json has no artifacts")?;
    for artifact in artifacts.iter() {
        let file = artifact["file"]
            .as_str()
            .context("an artifact without a file")?;
        crate::bundle::link_or_copy(&base.join(file), &out.join(file))?;
    }
    let version = env!("CARGO_PKG_VERSION");
    for (package, image) in ADDONS {
        let binary = std::fs::read(target_dir.join(TARGET).join("release").join(package))
            .with_context(|| format!("reading the built {package}"))?;
        let file = format!("images/{image}.tar");
        crate::bundle::oci_image(
            &out.join(&file),
            &format!("qb.local/{image}:{version}"),
            &[(*package, binary, 0o755)],
            &[],
            &[&format!("/{package}")],
        )?;
        let bytes = std::fs::read(out.join(&file))?;
        artifacts.push(json!({
            "name": format!("image-{image}"),
            "version": version,
            "sha256": hex::encode(Sha256::digest(&bytes)),
            "size": bytes.len(),
            "file": file,
        }));
    }
    std::fs::write(
        out.join("bundle.json"),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;
    Ok(out)
}
