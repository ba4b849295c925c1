//! `cargo xtask bundle`: a real Kubernetes 1.20.2 release bundle, made on this machine the way an
//! operator would make one for an air-gapped site.
//!
//! - Kubernetes server binaries built from Debian's source package `kubernetes` (the only
//!   Kubernetes Debian ships; it packages kubectl alone as a binary).
//! - etcd, containerd, its runc shim, ctr, runc and the CNI plugins built statically from
//!   Debian's source packages (see [`crate::static_build`]), so that every binary of the bundle
//!   starts on any x86_64 Linux, whatever its C library.
//! - Two OCI images: the pause image (Kubernetes' own `pause.c`, built static) and a workload
//!   image holding Debian's static busybox (sh, httpd, wget, ...).
//!
//! Everything is cached by version under the cache directory (`QB_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/qb`, else `~/.cache/qb`): the slow build runs at most once per machine.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{install_missing, run, static_build};

/// The Kubernetes version Debian's source package holds.
pub const KUBERNETES_VERSION: &str = "1.20.2";
/// Bumped whenever the build of the server binaries changes: cached binaries of an older build
/// are removed, and built again the new way.
const BUILD_REVISION: u32 = 2;
/// Bumped whenever what goes into the bundle changes (3: static etcd, containerd, runc and CNI
/// plugins; 4: `nslookup` in the workload image): bundles of an older revision are removed and
/// made again.
const BUNDLE_REVISION: u32 = 4;
/// The commit of that release, as the tarball's `hack/lib/version.sh` names it.
const KUBERNETES_COMMIT: &str = "faecb196815e248d3ecfb03c680a4507229c2a56";
/// The upstream tarball inside Debian's source package.
const ORIG_TARBALL: &str = "kubernetes_1.20.5+really1.20.2.orig.tar.gz";
pub const SERVER_BINARIES: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
];
/// What building needs from Debian, and a file each one installs.
const BUILD_PACKAGES: &[(&str, &str)] = &[
    ("golang-go", "/usr/bin/go"),
    // Without rsync the build leaves an empty code generator behind.
    ("rsync", "/usr/bin/rsync"),
    ("dpkg-dev", "/usr/bin/dpkg-source"),
    ("gcc", "/usr/bin/gcc"),
];
/// Vendored Go packages replaced by Debian's newer ones before building: package, its source
/// directory, the directory in the Kubernetes tree.
///
/// Kubernetes 1.20 vendors reflect2 1.0.1, which corrupts memory when built with Go 1.18 or
/// later (Debian's is 1.19): kube-apiserver dies (SIGSEGV in `mapiterinit`) on its first
/// pretty-printed answer, i.e. any GET from curl or a browser, or with `?pretty=true`. reflect2
/// 1.0.2 is the fix; Kubernetes took it in 1.23. (`vendor/modules.txt` still names 1.0.1: Go
/// checks that list against `go.mod`, never the vendored files.)
const PATCHED_VENDOR: &[(&str, &str, &str)] = &[(
    "golang-github-modern-go-reflect2-dev",
    "/usr/share/gocode/src/github.com/modern-go/reflect2",
    "vendor/github.com/modern-go/reflect2",
)];
/// The image the bundle's pause image is known as (the renderer's sandbox image).
const PAUSE_REF: &str = "qb.local/pause:3.2";
/// The workload image: Debian's static busybox.
pub const BUSYBOX_REF: &str = "qb.local/busybox:1";
/// Busybox applets the workload image links, so a pod's command can name them.
const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "httpd", "wget", "nc", "echo", "cat", "sleep", "hostname", "ip", "ls", "true", "nslookup",
];

/// The cache directory.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("QB_CACHE_DIR") {
        return Ok(dir.into());
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(Path::new(&dir).join("qb"));
    }
    let home = std::env::var_os("HOME").context("neither QB_CACHE_DIR nor HOME is set")?;
    Ok(Path::new(&home).join(".cache/qb"))
}

/// Builds the bundle unless the cache has it; its directory.
pub fn ensure() -> Result<PathBuf> {
    let cache = cache_dir()?;
    let old_bundles = (1..BUNDLE_REVISION).map(|r| bundle_dir(&cache, r));
    let old_binaries = (1..BUILD_REVISION).map(|r| binaries_dir(&cache, r));
    for old in old_bundles.chain(old_binaries) {
        if old.exists() {
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
            eprintln!("xtask: removed {}, made by an older build", old.display());
        }
    }
    let dir = bundle_dir(&cache, BUNDLE_REVISION);
    if dir.join("bundle.json").is_file() {
        return Ok(dir);
    }
    let binaries = kubernetes_binaries(&cache, None)?;
    let mut statics = Vec::new();
    for source in static_build::SOURCES {
        statics.push((source, static_build::build(&cache, source)?));
    }
    install_missing([("busybox-static", "/bin/busybox")].into_iter())?;
    let partial = dir.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    std::fs::create_dir_all(&partial)?;
    let mut artifacts = Vec::new();
    for name in SERVER_BINARIES {
        let path = format!("bin/{name}");
        copy(&binaries.join(name), &partial.join(&path))?;
        artifacts.push((name.to_string(), KUBERNETES_VERSION.to_owned(), path));
    }
    for (source, built) in &statics {
        for binary in source.binaries {
            copy(&built.dir.join(binary.artifact), &partial.join(binary.path))?;
            artifacts.push((
                binary.artifact.to_owned(),
                built.version.clone(),
                binary.path.to_owned(),
            ));
        }
    }
    let pause = pause_binary(&cache)?;
    std::fs::create_dir_all(partial.join("images"))?;
    oci_image(
        &partial.join("images/pause.tar"),
        PAUSE_REF,
        &[("pause", std::fs::read(&pause)?, 0o755)],
        &[],
        &["/pause"],
    )?;
    artifacts.push((
        "pause-image".into(),
        "3.2".into(),
        "images/pause.tar".into(),
    ));
    let busybox = std::fs::read("/bin/busybox")?;
    let links: Vec<(String, String)> = BUSYBOX_APPLETS
        .iter()
        .map(|applet| (format!("bin/{applet}"), "busybox".to_owned()))
        .collect();
    oci_image(
        &partial.join("images/busybox.tar"),
        BUSYBOX_REF,
        &[("bin/busybox", busybox, 0o755)],
        &links,
        &["/bin/sh"],
    )?;
    artifacts.push((
        "image-busybox".into(),
        debian_version("busybox-static")?,
        "images/busybox.tar".into(),
    ));

    let mut entries = Vec::new();
    for (name, version, path) in &artifacts {
        let bytes = std::fs::read(partial.join(path))?;
        entries.push(json!({
            "name": name,
            "version": version,
            "sha256": hex::encode(Sha256::digest(&bytes)),
            "size": bytes.len(),
            "file": path,
        }));
    }
    let manifest = json!({ "kubernetes_version": KUBERNETES_VERSION, "artifacts": entries });
    std::fs::write(
        partial.join("bundle.json"),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&partial, &dir)?;
    eprintln!("xtask: bundle ready in {}", dir.display());
    Ok(dir)
}

/// Where the bundle of build `revision` is cached (the first had no revision in its name).
fn bundle_dir(cache: &Path, revision: u32) -> PathBuf {
    cache.join(format!(
        "bundles/kubernetes-{KUBERNETES_VERSION}{}",
        revision_suffix(revision)
    ))
}

/// Where the server binaries of build `revision` are cached.
fn binaries_dir(cache: &Path, revision: u32) -> PathBuf {
    cache.join(format!(
        "kubernetes/{KUBERNETES_VERSION}/bin{}",
        revision_suffix(revision)
    ))
}

fn revision_suffix(revision: u32) -> String {
    match revision {
        1 => String::new(),
        n => format!("-r{n}"),
    }
}

/// The Kubernetes server binaries, built from Debian's source package once; with `own_build`
/// (`qb.2`), the same source again with a version of its own, `v1.20.2+qb.2`, which the
/// binaries report (`--version`, `/version`, each Node's kubelet version). Go's build cache
/// makes that second build mostly a link.
pub fn kubernetes_binaries(cache: &Path, own_build: Option<&str>) -> Result<PathBuf> {
    let out = match own_build {
        None => binaries_dir(cache, BUILD_REVISION),
        Some(build) => cache.join(format!(
            "kubernetes/{KUBERNETES_VERSION}+{build}/bin{}",
            revision_suffix(BUILD_REVISION)
        )),
    };
    if SERVER_BINARIES.iter().all(|b| out.join(b).is_file()) {
        return Ok(out);
    }
    install_missing(
        BUILD_PACKAGES.iter().copied().chain(
            PATCHED_VENDOR
                .iter()
                .map(|(package, dir, _)| (*package, *dir)),
        ),
    )?;
    let src = cache.join("kubernetes/src");
    let tarball = src.join(ORIG_TARBALL);
    if !tarball.is_file() {
        enable_source_packages()?;
        std::fs::create_dir_all(&src)?;
        eprintln!("xtask: downloading Debian's kubernetes source package");
        run(Command::new("apt-get")
            .args(["source", "--download-only", "kubernetes"])
            .current_dir(&src))?;
    }
    let build = cache.join("kubernetes/build");
    let tree = build.join(format!("kubernetes-{KUBERNETES_VERSION}"));
    if !tree.join("Makefile").is_file() {
        if build.exists() {
            std::fs::remove_dir_all(&build)?;
        }
        std::fs::create_dir_all(&build)?;
        run(Command::new("tar")
            .arg("xzf")
            .arg(&tarball)
            .current_dir(&build))?;
    }
    for (_, from, vendored) in PATCHED_VENDOR {
        replace_vendored(Path::new(from), &tree.join(vendored))?;
    }
    let go = cache.join("go");
    let what: Vec<String> = SERVER_BINARIES.iter().map(|b| format!("cmd/{b}")).collect();
    let mut make = Command::new("make");
    make.arg(format!("WHAT={}", what.join(" ")))
        .current_dir(&tree)
        .env("CGO_ENABLED", "0")
        .env("HOME", &go)
        .env("GOPATH", go.join("path"))
        .env("GOCACHE", go.join("cache"));
    match own_build {
        None => eprintln!(
            "xtask: building Kubernetes {KUBERNETES_VERSION} server binaries from source (about 10 minutes on 2 cores, once)"
        ),
        Some(build) => {
            // What `hack/lib/version.sh` reads instead of asking git (the source's own commit).
            let file = version_file(&tree, build)?;
            make.env("KUBE_GIT_VERSION_FILE", file);
            eprintln!("xtask: building Kubernetes {KUBERNETES_VERSION}+{build} (once)");
        }
    }
    let status = make.status().context("running make")?;
    if !status.success() {
        // A failed first run can leave an empty code generator behind; start over next time.
        let _ = std::fs::remove_dir_all(tree.join("_output"));
        bail!("building Kubernetes failed: {status}");
    }
    std::fs::create_dir_all(&out)?;
    for binary in SERVER_BINARIES {
        copy(
            &tree.join("_output/local/bin/linux/amd64").join(binary),
            &out.join(binary),
        )?;
    }
    Ok(out)
}

/// A version file for `hack/lib/version.sh`: this source's commit, version `v1.20.2+<build>`.
fn version_file(tree: &Path, build: &str) -> Result<PathBuf> {
    let (major, minor) = KUBERNETES_VERSION
        .split_once('.')
        .and_then(|(major, rest)| Some((major, rest.split('.').next()?)))
        .context("the Kubernetes version is MAJOR.MINOR.PATCH")?;
    let file = tree.join(format!("_output/version-{build}"));
    std::fs::create_dir_all(tree.join("_output"))?;
    std::fs::write(
        &file,
        format!(
            "KUBE_GIT_COMMIT='{KUBERNETES_COMMIT}'\nKUBE_GIT_TREE_STATE='archive'\n\
             KUBE_GIT_VERSION='v{KUBERNETES_VERSION}+{build}'\nKUBE_GIT_MAJOR='{major}'\n\
             KUBE_GIT_MINOR='{minor}'\n"
        ),
    )?;
    Ok(file)
}

/// Replaces the vendored package in `vendored` with the Go sources in `from` (the package's own
/// `go.mod` stays out: a vendored package has none).
fn replace_vendored(from: &Path, vendored: &Path) -> Result<()> {
    if vendored.exists() {
        std::fs::remove_dir_all(vendored)
            .with_context(|| format!("removing {}", vendored.display()))?;
    }
    std::fs::create_dir_all(vendored)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let source = name.ends_with(".go") || name.ends_with(".s");
        if source && !name.ends_with("_test.go") {
            copy(&path, &vendored.join(name))?;
        }
    }
    Ok(())
}

/// Kubernetes' pause program (`build/pause/linux/pause.c`), compiled static.
fn pause_binary(cache: &Path) -> Result<PathBuf> {
    let out = cache.join(format!("kubernetes/{KUBERNETES_VERSION}/pause"));
    if out.is_file() {
        return Ok(out);
    }
    let source = cache.join("kubernetes/build").join(format!(
        "kubernetes-{KUBERNETES_VERSION}/build/pause/linux/pause.c"
    ));
    run(Command::new("gcc")
        .args(["-Os", "-static", "-o"])
        .arg(&out)
        .arg(&source)
        .arg(format!("-DVERSION=v3.2-qb-{KUBERNETES_VERSION}")))?;
    Ok(out)
}

/// Adds a `deb-src` twin of Debian's `deb` sources when there is none, and updates.
pub fn enable_source_packages() -> Result<()> {
    let sources = Path::new("/etc/apt/sources.list.d/debian.sources");
    let twin = Path::new("/etc/apt/sources.list.d/debian-src.sources");
    if !twin.exists() {
        let text = std::fs::read_to_string(sources)
            .with_context(|| format!("reading {}", sources.display()))?;
        std::fs::write(twin, text.replace("Types: deb\n", "Types: deb-src\n"))?;
    }
    run(Command::new("apt-get").args(["update", "-q"]))
}

fn debian_version(package: &str) -> Result<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .context("running dpkg-query")?;
    if !out.status.success() {
        bail!("{package} is not installed");
    }
    // Bundle versions allow `[A-Za-z0-9._+~-]`; Debian's epochs (`1:`) are dropped.
    let version = String::from_utf8_lossy(&out.stdout);
    let version = version.rsplit_once(':').map_or(&*version, |(_, v)| v);
    Ok(version.to_owned())
}

/// Puts `from` at `to` as a hard link (a copy across file systems): a bundle's files are its
/// own, and `qb bundle import` refuses links that lead out of it.
pub(crate) fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if std::fs::hard_link(from, to).is_err() {
        copy(from, to)?;
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Writes an OCI image layout tarball of one uncompressed layer holding `files` (path,
/// content, mode) and `links` (path, target), named `reference` for containerd.
pub(crate) fn oci_image(
    out: &Path,
    reference: &str,
    files: &[(&str, Vec<u8>, u32)],
    links: &[(String, String)],
    entrypoint: &[&str],
) -> Result<()> {
    let mut layer = tar::Builder::new(Vec::new());
    let mut dirs: Vec<String> = files
        .iter()
        .map(|(path, ..)| path.to_string())
        .chain(links.iter().map(|(path, _)| path.clone()))
        .filter_map(|path| path.rsplit_once('/').map(|(dir, _)| dir.to_owned()))
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in &dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        layer.append_data(&mut header, format!("{dir}/"), std::io::empty())?;
    }
    for (path, content, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(*mode);
        header.set_size(content.len() as u64);
        layer.append_data(&mut header, path, content.as_slice())?;
    }
    for (path, target) in links {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        layer.append_link(&mut header, path, target)?;
    }
    let layer = layer.into_inner()?;
    let layer_digest = hex::encode(Sha256::digest(&layer));
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Entrypoint": entrypoint },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
    }))?;
    let config_digest = hex::encode(Sha256::digest(&config));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer.len(),
        }],
    }))?;
    let manifest_digest = hex::encode(Sha256::digest(&manifest));
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": { "io.containerd.image.name": reference },
        }],
    }))?;
    let mut blobs = BTreeMap::new();
    blobs.insert(format!("blobs/sha256/{layer_digest}"), layer);
    blobs.insert(format!("blobs/sha256/{config_digest}"), config);
    blobs.insert(format!("blobs/sha256/{manifest_digest}"), manifest);
    blobs.insert("index.json".to_owned(), index);
    blobs.insert(
        "oci-layout".to_owned(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    );
    let mut image = tar::Builder::new(Vec::new());
    for (path, content) in &blobs {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(content.len() as u64);
        image.append_data(&mut header, path, content.as_slice())?;
    }
    let mut file = std::fs::File::create(out)?;
    file.write_all(&image.into_inner()?)?;
    Ok(())
}
