//! Whether a bundle's images are still in containerd: the names an OCI image archive holds
//! (its `index.json`), against what `ctr images ls` lists. The kubelet deletes every unused
//! image when the disk runs short, and no registry can bring a bundle's images back; the
//! agent imports them again when this says they are gone.

use std::collections::{BTreeSet, HashMap};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Deserialize;

/// The annotation `ctr images import` names an image by, as the bundle's archives carry it.
/// (The OCI `org.opencontainers.image.ref.name` alone is not taken: `ctr` names such an image
/// by more than that annotation says.)
const NAME_ANNOTATION: &str = "io.containerd.image.name";
/// The largest `index.json` read.
const MAX_INDEX: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error("reading the image archive {path}")]
    Archive {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the image archive {path} has no index.json naming an image ({NAME_ANNOTATION})")]
    NoNames { path: PathBuf },
    #[error("the index.json of the image archive {path} is over {MAX_INDEX} bytes")]
    IndexTooLarge { path: PathBuf },
    #[error("running {ctr}")]
    Ctr {
        ctr: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{ctr} failed listing images: {stderr}")]
    CtrFailed { ctr: PathBuf, stderr: String },
    /// What the probe is for: images of the archive are not in containerd.
    #[error("not in containerd: {}", missing.join(", "))]
    Missing { missing: Vec<String> },
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// The image names the archive at `path` holds; read once per version of the file (its
/// `index.json` comes after the blobs: the first read goes through the whole archive).
pub fn names_in(path: &Path) -> Result<Vec<String>, ImagesError> {
    type Cache = Mutex<HashMap<PathBuf, (SystemTime, u64, Vec<String>)>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let io = |source| ImagesError::Archive {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let version = (meta.modified().map_err(io)?, meta.len());
    let cache = CACHE.get_or_init(Default::default);
    if let Some((modified, len, names)) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(path)
        && (*modified, *len) == version
    {
        return Ok(names.clone());
    }
    let names = read_names(path)?;
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(path.to_owned(), (version.0, version.1, names.clone()));
    Ok(names)
}

fn read_names(path: &Path) -> Result<Vec<String>, ImagesError> {
    let io = |source| ImagesError::Archive {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    for entry in archive.entries().map_err(io)? {
        let entry = entry.map_err(io)?;
        if entry.path().map_err(io)?.as_ref() != Path::new("index.json") {
            continue;
        }
        if entry.size() > MAX_INDEX {
            return Err(ImagesError::IndexTooLarge {
                path: path.to_owned(),
            });
        }
        let mut json = Vec::new();
        entry.take(MAX_INDEX).read_to_end(&mut json).map_err(io)?;
        let index: Index = serde_json::from_slice(&json)
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        let names: Vec<String> = index
            .manifests
            .into_iter()
            .filter_map(|mut m| m.annotations.remove(NAME_ANNOTATION))
            .collect();
        if names.is_empty() {
            break;
        }
        return Ok(names);
    }
    Err(ImagesError::NoNames {
        path: path.to_owned(),
    })
}

/// The names of the images in containerd (its socket `address`, `namespace`), as `ctr` lists them.
pub async fn listed(
    ctr: &Path,
    address: &Path,
    namespace: &str,
) -> Result<BTreeSet<String>, ImagesError> {
    let out = tokio::process::Command::new(ctr)
        .arg("--address")
        .arg(address)
        .args(["--namespace", namespace, "images", "ls", "--quiet"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| ImagesError::Ctr {
            ctr: ctr.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(ImagesError::CtrFailed {
            ctr: ctr.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect())
}

/// `Ok` when every image of `archive` is in containerd; [`ImagesError::Missing`] names those
/// that are not.
pub async fn check(
    ctr: &Path,
    address: &Path,
    namespace: &str,
    archive: &Path,
) -> Result<(), ImagesError> {
    let path = archive.to_owned();
    let want = tokio::task::spawn_blocking(move || names_in(&path))
        .await
        .expect("reading an archive does not panic")?;
    let have = listed(ctr, address, namespace).await?;
    let missing: Vec<String> = want.into_iter().filter(|n| !have.contains(n)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ImagesError::Missing { missing })
    }
}

/// Stand-ins for the tests of this module and of the applier.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::{Path, PathBuf};

    /// An OCI archive's layout, as `ctr images export` and the bundle write it: blobs first,
    /// then `index.json` with one manifest per annotation set.
    pub fn archive(dir: &Path, annotations: &[serde_json::Value]) -> PathBuf {
        let path = dir.join("image.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
        let mut add = |name: &str, bytes: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, bytes).unwrap();
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        add("blobs/sha256/00", b"layer");
        let manifests: Vec<serde_json::Value> = annotations
            .iter()
            .map(|a| serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "annotations": a}))
            .collect();
        let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        add("index.json", index.to_string().as_bytes());
        builder.into_inner().unwrap();
        path
    }

    /// A stand-in for `ctr` running `script` (the lab tests run the bundle's real one against
    /// containerd).
    pub fn ctr(dir: &Path, script: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join("ctr");
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{archive, ctr};
    use super::*;

    #[tokio::test]
    async fn an_archive_whose_images_are_listed_passes_and_one_missing_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let tar = archive(
            dir.path(),
            &[
                serde_json::json!({NAME_ANNOTATION: "qb.local/pause:3.2"}),
                serde_json::json!({NAME_ANNOTATION: "qb.local/busybox:1"}),
                serde_json::json!({"org.opencontainers.image.ref.name": "1"}),
            ],
        );
        assert_eq!(
            names_in(&tar).unwrap(),
            ["qb.local/pause:3.2", "qb.local/busybox:1"]
        );
        let socket = Path::new("/run/containerd.sock");
        let both = ctr(
            dir.path(),
            "[ \"$*\" = '--address /run/containerd.sock --namespace k8s.io images ls --quiet' ] || exit 9\n\
             printf 'qb.local/busybox:1\\nqb.local/pause:3.2\\nother:1\\n'",
        );
        check(&both, socket, "k8s.io", &tar).await.unwrap();

        let one = ctr(dir.path(), "echo qb.local/busybox:1");
        let err = check(&one, socket, "k8s.io", &tar).await.unwrap_err();
        assert!(
            matches!(&err, ImagesError::Missing { missing } if missing == &["qb.local/pause:3.2"]),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn containerd_not_answering_is_not_taken_for_images_gone() {
        let dir = tempfile::tempdir().unwrap();
        let tar = archive(
            dir.path(),
            &[serde_json::json!({NAME_ANNOTATION: "qb.local/pause:3.2"})],
        );
        let down = ctr(dir.path(), "echo 'connection refused' >&2; exit 1");
        let err = check(&down, Path::new("/run/c.sock"), "k8s.io", &tar)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ImagesError::CtrFailed { stderr, .. } if stderr == "connection refused"),
            "{err:?}"
        );
    }

    #[test]
    fn an_archive_without_names_or_not_an_archive_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let unnamed = archive(dir.path(), &[serde_json::json!({})]);
        assert!(matches!(
            names_in(&unnamed),
            Err(ImagesError::NoNames { .. })
        ));
        let garbage = dir.path().join("garbage.tar");
        std::fs::write(&garbage, vec![7u8; 2048]).unwrap();
        assert!(names_in(&garbage).is_err());
        assert!(matches!(
            names_in(&dir.path().join("absent.tar")),
            Err(ImagesError::Archive { .. })
        ));
    }
}
