//! A release bundle on disk: a directory holding `bundle.json` and the files it names, or a
//! tarball (`.tar`, `.tar.gz`) of one. Reading one checks everything the controller would refuse,
//! and every file's size and SHA-256, so that nothing is uploaded from a bundle that is not whole.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use qb_api::{BundleArtifact, BundleManifest};
use sha2::{Digest, Sha256};

/// The manifest's name at the root of a bundle.
pub const MANIFEST: &str = "bundle.json";
/// A manifest larger than this is not one.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// How much of a file is hashed at a time.
const READ_BUFFER: usize = 1 << 20;

/// A bundle directory whose files all match its manifest.
#[derive(Debug)]
pub struct LocalBundle {
    /// The directory holding `bundle.json`.
    pub root: PathBuf,
    pub manifest: BundleManifest,
    /// Each artifact's file, in the manifest's order.
    pub files: Vec<PathBuf>,
    /// Where a tarball was unpacked; removed when the bundle is dropped.
    _unpacked: Option<tempfile::TempDir>,
}

impl LocalBundle {
    /// The artifacts with their files.
    pub fn artifacts(&self) -> impl Iterator<Item = (&BundleArtifact, &Path)> {
        self.manifest
            .artifacts
            .iter()
            .zip(self.files.iter().map(PathBuf::as_path))
    }
}

/// Why a bundle cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{} is not a bundle tarball (.tar or .tar.gz): {reason}", .path.display())]
    BadTarball { path: PathBuf, reason: String },
    #[error("cannot read {}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is not a bundle: it holds no {MANIFEST} (nor does a single directory inside it)",
        .dir.display()
    )]
    NoManifest { dir: PathBuf },
    #[error("{} is not a valid bundle manifest: {reason}", .path.display())]
    BadManifest { path: PathBuf, reason: String },
    #[error("artifact {artifact}: {MANIFEST} names no file for it")]
    NoFile { artifact: String },
    #[error("artifact {artifact}: cannot read {}", .path.display())]
    ArtifactIo {
        artifact: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("artifact {artifact}: {file} leads outside the bundle directory")]
    OutsideBundle { artifact: String, file: String },
    #[error("artifact {artifact}: {} is not a regular file", .path.display())]
    NotAFile { artifact: String, path: PathBuf },
    #[error(
        "artifact {artifact}: {} is {actual} bytes, {MANIFEST} says {expected}; nothing was uploaded",
        .path.display()
    )]
    SizeMismatch {
        artifact: String,
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error(
        "artifact {artifact}: the SHA-256 of {} is {actual}, {MANIFEST} says {expected}; nothing was uploaded",
        .path.display()
    )]
    HashMismatch {
        artifact: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

/// Reads the bundle at `path` and checks every file against the manifest.
pub fn read(path: &Path) -> Result<LocalBundle, BundleError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BundleError::Io { path, source }
    };
    let meta = std::fs::metadata(path).map_err(io(path))?;
    let unpacked = if meta.is_dir() {
        None
    } else {
        Some(unpack(path)?)
    };
    let dir = unpacked.as_ref().map_or(path, |d| d.path());
    let root = find_root(dir)?;
    let manifest_path = root.join(MANIFEST);
    let manifest = read_manifest(&manifest_path)?;
    let canonical_root = std::fs::canonicalize(&root).map_err(io(&root))?;
    let mut files = Vec::with_capacity(manifest.artifacts.len());
    for artifact in &manifest.artifacts {
        files.push(check_artifact(&canonical_root, artifact)?);
    }
    Ok(LocalBundle {
        root,
        manifest,
        files,
        _unpacked: unpacked,
    })
}

/// Unpacks a tarball (gzip-compressed or not) into a temporary directory. Only directories and
/// regular files are accepted, and none outside the directory.
fn unpack(path: &Path) -> Result<tempfile::TempDir, BundleError> {
    let bad = |reason: String| BundleError::BadTarball {
        path: path.to_owned(),
        reason,
    };
    let mut file = File::open(path).map_err(|source| BundleError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut magic = [0u8; 2];
    let gzip = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let file = File::open(path).map_err(|source| BundleError::Io {
        path: path.to_owned(),
        source,
    })?;
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let dir = tempfile::tempdir().map_err(|e| bad(format!("no temporary directory: {e}")))?;
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| bad(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            let name = entry
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            return Err(bad(format!("{name} is neither a file nor a directory")));
        }
        // `unpack_in` refuses paths that would leave the directory.
        let inside = entry
            .unpack_in(dir.path())
            .map_err(|e| bad(e.to_string()))?;
        if !inside {
            let name = entry
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            return Err(bad(format!("{name} leads outside the bundle")));
        }
    }
    Ok(dir)
}

/// `dir` if it holds the manifest, or the one directory inside it that does (a tarball's
/// top-level directory, unpacked).
fn find_root(dir: &Path) -> Result<PathBuf, BundleError> {
    if dir.join(MANIFEST).exists() {
        return Ok(dir.to_owned());
    }
    let entries = std::fs::read_dir(dir).map_err(|source| BundleError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut inside = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| BundleError::Io {
            path: dir.to_owned(),
            source,
        })?;
        if !entry.file_name().to_string_lossy().starts_with('.') {
            inside.push(entry.path());
        }
    }
    match inside.as_slice() {
        [only] if only.is_dir() && only.join(MANIFEST).exists() => Ok(only.clone()),
        _ => Err(BundleError::NoManifest {
            dir: dir.to_owned(),
        }),
    }
}

fn read_manifest(path: &Path) -> Result<BundleManifest, BundleError> {
    let bad = |reason: String| BundleError::BadManifest {
        path: path.to_owned(),
        reason,
    };
    let file = File::open(path).map_err(|source| BundleError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut text = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|source| BundleError::Io {
            path: path.to_owned(),
            source,
        })?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(bad(format!(
            "it is larger than {} KiB",
            MAX_MANIFEST_BYTES >> 10
        )));
    }
    let manifest: BundleManifest = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    manifest.validate().map_err(|e| bad(e.0))?;
    Ok(manifest)
}

/// The artifact's file, checked to lie inside the bundle and to match its size and SHA-256.
fn check_artifact(root: &Path, artifact: &BundleArtifact) -> Result<PathBuf, BundleError> {
    let name = || artifact.name.clone();
    let file = artifact
        .file
        .as_deref()
        .ok_or_else(|| BundleError::NoFile { artifact: name() })?;
    let joined = root.join(file);
    // Symbolic links may point anywhere: what counts is where the file really is.
    let path = std::fs::canonicalize(&joined).map_err(|source| BundleError::ArtifactIo {
        artifact: name(),
        path: joined.clone(),
        source,
    })?;
    if !path.starts_with(root) {
        return Err(BundleError::OutsideBundle {
            artifact: name(),
            file: file.to_owned(),
        });
    }
    let io = |source| BundleError::ArtifactIo {
        artifact: name(),
        path: path.clone(),
        source,
    };
    let meta = std::fs::metadata(&path).map_err(io)?;
    if !meta.is_file() {
        return Err(BundleError::NotAFile {
            artifact: name(),
            path,
        });
    }
    let size_mismatch = |actual| BundleError::SizeMismatch {
        artifact: name(),
        path: path.clone(),
        expected: artifact.size,
        actual,
    };
    if meta.len() != artifact.size {
        return Err(size_mismatch(meta.len()));
    }
    let (actual, size) = sha256_of(&path).map_err(io)?;
    if size != artifact.size {
        // It changed while being read.
        return Err(size_mismatch(size));
    }
    if actual != artifact.sha256 {
        return Err(BundleError::HashMismatch {
            artifact: name(),
            path,
            expected: artifact.sha256.clone(),
            actual,
        });
    }
    Ok(path)
}

/// The lowercase hex SHA-256 of a file and its length, read a piece at a time.
pub fn sha256_of(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// The lowercase hex SHA-256 of bytes in memory.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETCD: &[u8] = b"#!/bin/sh\necho etcd\n";
    const APISERVER: &[u8] = b"#!/bin/sh\necho kube-apiserver\n";

    fn artifact(name: &str, content: &[u8], file: Option<&str>) -> serde_json::Value {
        let mut a = serde_json::json!({
            "name": name,
            "version": if name == "etcd" { "3.4.23" } else { "1.20.2" },
            "sha256": sha256_hex(content),
            "size": content.len(),
        });
        if let Some(file) = file {
            a["file"] = file.into();
        }
        a
    }

    /// A bundle directory: `bundle.json` with `artifacts`, and the files given.
    fn bundle(dir: &Path, artifacts: Vec<serde_json::Value>, files: &[(&str, &[u8])]) {
        for (path, content) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, content).expect("write");
        }
        let manifest = serde_json::json!({
            "kubernetes_version": "1.20.2",
            "artifacts": artifacts,
        });
        std::fs::write(dir.join(MANIFEST), manifest.to_string()).expect("manifest");
    }

    fn good(dir: &Path) {
        bundle(
            dir,
            vec![
                artifact("etcd", ETCD, Some("bin/etcd")),
                artifact("kube-apiserver", APISERVER, Some("kube-apiserver")),
            ],
            &[("bin/etcd", ETCD), ("kube-apiserver", APISERVER)],
        );
    }

    #[test]
    fn a_whole_bundle_reads() {
        let dir = tempfile::tempdir().expect("temp dir");
        good(dir.path());
        let b = read(dir.path()).expect("a good bundle");
        assert_eq!(b.root, dir.path());
        assert_eq!(b.manifest.kubernetes_version.to_string(), "1.20.2");
        let files: Vec<(String, PathBuf)> = b
            .artifacts()
            .map(|(a, p)| (a.name.clone(), p.to_owned()))
            .collect();
        let root = std::fs::canonicalize(dir.path()).expect("canonical");
        assert_eq!(
            files,
            [
                ("etcd".to_owned(), root.join("bin/etcd")),
                ("kube-apiserver".to_owned(), root.join("kube-apiserver")),
            ]
        );
    }

    #[test]
    fn a_single_directory_inside_is_the_bundle() {
        let dir = tempfile::tempdir().expect("temp dir");
        let inner = dir.path().join("bundle-1.20.2");
        std::fs::create_dir(&inner).expect("mkdir");
        good(&inner);
        // Hidden files next to it do not count.
        std::fs::write(dir.path().join(".DS_Store"), b"x").expect("write");
        assert_eq!(read(dir.path()).expect("bundle").root, inner);

        // Two directories: which one?
        std::fs::create_dir(dir.path().join("other")).expect("mkdir");
        let err = read(dir.path()).expect_err("ambiguous");
        assert!(matches!(err, BundleError::NoManifest { .. }), "{err:?}");
    }

    #[test]
    fn hashes_are_checked() {
        let sha = sha256_hex(b"hello\n");
        assert_eq!(
            sha,
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("f"), b"hello\n").expect("write");
        assert_eq!(sha256_of(&dir.path().join("f")).expect("hash"), (sha, 6));
        // Larger than one read.
        let big = vec![7u8; READ_BUFFER * 2 + 5];
        std::fs::write(dir.path().join("big"), &big).expect("write");
        assert_eq!(
            sha256_of(&dir.path().join("big")).expect("hash"),
            (sha256_hex(&big), big.len() as u64)
        );
    }

    #[test]
    fn a_changed_file_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tampered = b"#!/bin/sh\necho ETCD\n";
        assert_eq!(tampered.len(), ETCD.len());
        bundle(
            dir.path(),
            vec![
                artifact("etcd", ETCD, Some("etcd")),
                artifact("kube-apiserver", APISERVER, Some("kube-apiserver")),
            ],
            &[("etcd", tampered), ("kube-apiserver", APISERVER)],
        );
        let err = read(dir.path()).expect_err("wrong content");
        assert!(matches!(err, BundleError::HashMismatch { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.starts_with("artifact etcd: the SHA-256 of ")
                && message.contains(&sha256_hex(tampered))
                && message.contains(&format!("bundle.json says {}", sha256_hex(ETCD)))
                && message.ends_with("nothing was uploaded"),
            "{message}"
        );

        std::fs::write(dir.path().join("etcd"), b"short").expect("write");
        let err = read(dir.path()).expect_err("wrong size");
        assert!(
            err.to_string().starts_with("artifact etcd: ")
                && err
                    .to_string()
                    .contains(&format!("is 5 bytes, bundle.json says {}", ETCD.len())),
            "{err}"
        );
    }

    #[test]
    fn missing_manifest_or_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = read(dir.path()).expect_err("empty directory");
        assert!(err.to_string().contains("holds no bundle.json"), "{err}");

        let err = read(&dir.path().join("nope")).expect_err("no such directory");
        assert!(matches!(err, BundleError::Io { .. }), "{err:?}");

        bundle(dir.path(), vec![artifact("etcd", ETCD, Some("etcd"))], &[]);
        let err = read(dir.path()).expect_err("no file");
        assert!(
            matches!(&err, BundleError::ArtifactIo { artifact, source, .. }
                if artifact == "etcd" && source.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );

        bundle(dir.path(), vec![artifact("etcd", ETCD, None)], &[]);
        let err = read(dir.path()).expect_err("no file named");
        assert_eq!(
            err.to_string(),
            "artifact etcd: bundle.json names no file for it"
        );

        std::fs::create_dir(dir.path().join("d")).expect("mkdir");
        bundle(dir.path(), vec![artifact("etcd", ETCD, Some("d"))], &[]);
        let err = read(dir.path()).expect_err("a directory");
        assert!(matches!(err, BundleError::NotAFile { .. }), "{err:?}");
    }

    #[test]
    fn tarballs_are_unpacked_and_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = dir.path().join("src");
        std::fs::create_dir(&source).expect("mkdir");
        bundle(
            &source,
            vec![artifact("etcd", ETCD, Some("etcd"))],
            &[("etcd", ETCD)],
        );
        for gzip in [false, true] {
            let tarball = dir.path().join(if gzip { "b.tar.gz" } else { "b.tar" });
            let file = File::create(&tarball).expect("create");
            let writer: Box<dyn std::io::Write> = if gzip {
                Box::new(flate2::write::GzEncoder::new(
                    file,
                    flate2::Compression::fast(),
                ))
            } else {
                Box::new(file)
            };
            let mut builder = tar::Builder::new(writer);
            builder
                .append_dir_all("kubernetes-1.20.2", &source)
                .expect("tar");
            builder
                .into_inner()
                .expect("finish")
                .flush()
                .expect("flush");
            let read_back = read(&tarball).expect("a tarball bundle");
            assert_eq!(read_back.manifest.artifacts[0].name, "etcd");
            assert!(read_back.files[0].exists());
            let unpacked = read_back.root.clone();
            drop(read_back);
            assert!(!unpacked.exists(), "the unpacked copy is removed");
        }
        let garbage = dir.path().join("garbage.tar.gz");
        std::fs::write(&garbage, b"\x1f\x8bnot really").expect("write");
        let err = read(&garbage).expect_err("not a tarball");
        assert!(matches!(err, BundleError::BadTarball { .. }), "{err:?}");
    }

    #[test]
    fn bad_manifests_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cases: [(&str, &str); 4] = [
            ("{", "EOF"),
            (
                r#"{"kubernetes_version":"1.20.2","artifacts":[],"extra":1}"#,
                "unknown field",
            ),
            (
                r#"{"kubernetes_version":"1.20.2","artifacts":[]}"#,
                "must ship etcd",
            ),
            (
                r#"{"kubernetes_version":"v1.20","artifacts":[]}"#,
                "invalid Kubernetes version",
            ),
        ];
        for (text, want) in cases {
            std::fs::write(dir.path().join(MANIFEST), text).expect("write");
            let err = read(dir.path()).expect_err(text);
            let message = err.to_string();
            assert!(
                message.contains("is not a valid bundle manifest: ") && message.contains(want),
                "{text}: {message}"
            );
        }
    }

    #[test]
    fn paths_out_of_the_bundle_are_refused() {
        let outside = tempfile::tempdir().expect("temp dir");
        std::fs::write(outside.path().join("etcd"), ETCD).expect("write");
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("bundle");
        std::fs::create_dir(&root).expect("mkdir");
        std::fs::write(root.join("etcd"), ETCD).expect("write");

        // Written out: refused by the manifest's own rules.
        let escape = format!(
            "../../{}/etcd",
            outside.path().file_name().expect("name").to_string_lossy()
        );
        for file in [
            escape.as_str(),
            "/etc/passwd",
            "a//etcd",
            "./../bundle/etcd",
        ] {
            bundle(&root, vec![artifact("etcd", ETCD, Some(file))], &[]);
            let err = read(&root).expect_err(file);
            assert!(
                err.to_string()
                    .contains("must be a relative path inside the bundle"),
                "{file}: {err}"
            );
        }

        // Through a symbolic link: refused by where the file really is.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(outside.path(), root.join("elsewhere")).expect("symlink");
            bundle(
                &root,
                vec![artifact("etcd", ETCD, Some("elsewhere/etcd"))],
                &[],
            );
            let err = read(&root).expect_err("symlink out");
            assert_eq!(
                err.to_string(),
                "artifact etcd: elsewhere/etcd leads outside the bundle directory"
            );
            // A link that stays inside is fine.
            std::os::unix::fs::symlink(root.join("etcd"), root.join("etcd-link")).expect("symlink");
            bundle(&root, vec![artifact("etcd", ETCD, Some("etcd-link"))], &[]);
            assert!(read(&root).is_ok());
        }
    }
}
