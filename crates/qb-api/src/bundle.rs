//! Release bundles: one Kubernetes version's artifacts, with their checksums.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{InvalidValue, KubernetesVersion};

/// The artifact names the cluster engine knows. A bundle ships `etcd` at least; the engine runs
/// the Kubernetes components whose binaries the bundle has.
pub const KNOWN_ARTIFACTS: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "containerd",
    "containerd-shim-runc-v2",
    "runc",
    "cni-bridge",
    "cni-host-local",
    "cni-loopback",
    "cni-portmap",
    "pause-image",
    "ctr",
];

/// Names of extra container images (OCI image tarballs) start with this, e.g. `image-busybox`;
/// every node imports them into containerd, as it does the pause image.
pub const IMAGE_PREFIX: &str = "image-";

/// Whether `name` is an artifact qb knows: one of [`KNOWN_ARTIFACTS`], or an image named
/// `image-<lowercase letters, digits, dashes>`.
pub fn is_known_artifact(name: &str) -> bool {
    KNOWN_ARTIFACTS.contains(&name)
        || name.strip_prefix(IMAGE_PREFIX).is_some_and(|rest| {
            !rest.is_empty()
                && rest.len() <= 40
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// `bundle.json` at the root of a bundle directory or tarball, and the body of an import.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    pub kubernetes_version: KubernetesVersion,
    pub artifacts: Vec<BundleArtifact>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleArtifact {
    /// One of the known artifact names, e.g. `etcd`.
    pub name: String,
    /// The component's own version, e.g. `3.4.23`.
    #[schema(pattern = "^[A-Za-z0-9._+~-]{1,64}$")]
    pub version: String,
    /// Lowercase hex SHA-256 of the content.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub sha256: String,
    pub size: u64,
    /// Where the file is inside the bundle directory (import only; not kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// An imported bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Bundle {
    #[serde(flatten)]
    pub manifest: BundleManifest,
    #[serde(with = "time::serde::rfc3339")]
    pub imported_at: time::OffsetDateTime,
}

/// `true` for 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl BundleManifest {
    /// The artifact called `name`, if the bundle ships it.
    pub fn artifact(&self, name: &str) -> Option<&BundleArtifact> {
        self.artifacts.iter().find(|a| a.name == name)
    }

    /// Checks names, versions, checksums and files; says what is wrong with the first bad entry.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        let bad = |m: String| Err(InvalidValue(m));
        if self.artifact("etcd").is_none() {
            return bad("a bundle must ship etcd".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for a in &self.artifacts {
            if !is_known_artifact(&a.name) {
                return bad(format!(
                    "unknown artifact {:?}; known: {}, and images named {IMAGE_PREFIX}<name>",
                    a.name,
                    KNOWN_ARTIFACTS.join(", ")
                ));
            }
            if !seen.insert(a.name.as_str()) {
                return bad(format!("artifact {:?} is listed twice", a.name));
            }
            if a.version.is_empty()
                || a.version.len() > 64
                || !a
                    .version
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+-~".contains(&b))
            {
                return bad(format!(
                    "artifact {:?}: invalid version {:?}",
                    a.name, a.version
                ));
            }
            if !is_sha256_hex(&a.sha256) {
                return bad(format!(
                    "artifact {:?}: sha256 must be 64 lowercase hex digits",
                    a.name
                ));
            }
            if let Some(file) = &a.file
                && (file.is_empty()
                    || file.starts_with('/')
                    || file.split('/').any(|part| part == ".." || part.is_empty()))
            {
                return bad(format!(
                    "artifact {:?}: file {file:?} must be a relative path inside the bundle",
                    a.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(json: &str) -> BundleManifest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn images_are_known_artifacts_by_their_prefix() {
        assert!(is_known_artifact("ctr"));
        assert!(is_known_artifact("image-busybox"));
        assert!(is_known_artifact("image-web-2"));
        for name in [
            "image-",
            "image-Busybox",
            "image-a/b",
            "image-a.b",
            "images-x",
            "bash",
        ] {
            assert!(!is_known_artifact(name), "{name}");
        }
    }

    #[test]
    fn manifests_are_validated() {
        let sha = "a".repeat(64);
        let ok = manifest(&format!(
            r#"{{"kubernetes_version":"1.20.2","artifacts":[{{"name":"etcd","version":"3.4.23","sha256":"{sha}","size":3,"file":"bin/etcd"}}]}}"#
        ));
        assert!(ok.validate().is_ok());
        let cases = [
            (r#"[]"#.to_owned(), "must ship etcd"),
            (
                format!(
                    r#"[{{"name":"etcd","version":"1","sha256":"{sha}","size":1}},{{"name":"etcd","version":"1","sha256":"{sha}","size":1}}]"#
                ),
                "twice",
            ),
            (
                format!(
                    r#"[{{"name":"etcd","version":"1","sha256":"{sha}","size":1}},{{"name":"bash","version":"1","sha256":"{sha}","size":1}}]"#
                ),
                "unknown artifact",
            ),
            (
                format!(
                    r#"[{{"name":"etcd","version":"1","sha256":"{sha}","size":1}},{{"name":"image-Busy/box","version":"1","sha256":"{sha}","size":1}}]"#
                ),
                "unknown artifact",
            ),
            (
                r#"[{"name":"etcd","version":"1","sha256":"ABC","size":1}]"#.to_owned(),
                "sha256",
            ),
            (
                format!(r#"[{{"name":"etcd","version":"1 2","sha256":"{sha}","size":1}}]"#),
                "invalid version",
            ),
            (
                format!(
                    r#"[{{"name":"etcd","version":"1","sha256":"{sha}","size":1,"file":"../etc/passwd"}}]"#
                ),
                "relative path",
            ),
            (
                format!(
                    r#"[{{"name":"etcd","version":"1","sha256":"{sha}","size":1,"file":"/etc/passwd"}}]"#
                ),
                "relative path",
            ),
        ];
        for (artifacts, want) in cases {
            let m = manifest(&format!(
                r#"{{"kubernetes_version":"1.20.2","artifacts":{artifacts}}}"#
            ));
            let err = m.validate().unwrap_err().0;
            assert!(err.contains(want), "{artifacts}: {err}");
        }
    }
}
