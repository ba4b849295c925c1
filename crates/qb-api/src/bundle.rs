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

/// Whether a cluster running `from` may move to `to`, and why not: Kubernetes never goes down
/// and moves up one minor version at a time (its version skew policy); etcd never goes down
/// (it cannot before 3.6) and moves up one minor version at a time. The same release in
/// another build (`1.20.2` and `1.20.2+qb.1`) may go either way as far as Kubernetes goes.
pub fn check_upgrade(from: &BundleManifest, to: &BundleManifest) -> Result<(), String> {
    let (a, b) = (&from.kubernetes_version, &to.kubernetes_version);
    let (major, minor, patch) = a.release();
    let next = b.release();
    if next.0 != major {
        return Err(format!(
            "Kubernetes {a} cannot move to {b}: another major version"
        ));
    }
    if next < (major, minor, patch) {
        return Err(format!(
            "Kubernetes cannot go down from {a} to {b}; only up"
        ));
    }
    if next.1 > minor + 1 {
        return Err(format!(
            "Kubernetes moves one minor version at a time: from {a} to 1.{}.x first",
            minor + 1
        ));
    }
    let etcd = |m: &BundleManifest| m.artifact("etcd").map(|e| e.version.clone());
    if let (Some(old), Some(new)) = (etcd(from), etcd(to)) {
        let (o, n) = (numeric_version(&old), numeric_version(&new));
        if n < o {
            return Err(format!(
                "etcd cannot go down from {old} (in {a}) to {new} (in {b})"
            ));
        }
        let minor = |v: &[u32]| (v.first().copied(), v.get(1).copied().unwrap_or(0));
        let ((om, on), (nm, nn)) = (minor(&o), minor(&n));
        if om != nm || nn > on + 1 {
            return Err(format!(
                "etcd moves one minor version at a time: {old} (in {a}) cannot move to {new} (in {b})"
            ));
        }
    }
    Ok(())
}

/// `3.4.23` as `[3, 4, 23]`; what does not parse counts as 0.
fn numeric_version(v: &str) -> Vec<u32> {
    v.split(['.', '-', '+'])
        .take(3)
        .map(|p| p.parse().unwrap_or(0))
        .collect()
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

    fn release(version: &str, etcd: &str) -> BundleManifest {
        BundleManifest {
            kubernetes_version: version.parse().unwrap(),
            artifacts: vec![BundleArtifact {
                name: "etcd".to_owned(),
                version: etcd.to_owned(),
                sha256: "0".repeat(64),
                size: 1,
                file: None,
            }],
        }
    }

    #[test]
    fn upgrades_go_up_one_minor_version_at_a_time() {
        let allowed = [
            (("1.20.2", "3.4.23"), ("1.20.2+qb.1", "3.5.1")),
            (("1.20.2+qb.1", "3.5.1"), ("1.20.2", "3.5.1")),
            (("1.20.2", "3.4.23"), ("1.20.3", "3.4.23")),
            (("1.20.2", "3.4.23"), ("1.21.0", "3.4.30")),
        ];
        for (from, to) in allowed {
            let result = check_upgrade(&release(from.0, from.1), &release(to.0, to.1));
            assert_eq!(result, Ok(()), "{from:?} -> {to:?}");
        }
        let refused = [
            (("1.20.2", "3.4.23"), ("1.20.1", "3.4.23"), "cannot go down"),
            (("1.21.0", "3.4.23"), ("1.20.9", "3.4.23"), "cannot go down"),
            (
                ("1.20.2", "3.4.23"),
                ("1.22.0", "3.4.23"),
                "from 1.20.2 to 1.21.x first",
            ),
            (
                ("1.20.2", "3.5.1"),
                ("1.20.2+qb.1", "3.4.23"),
                "etcd cannot go down from 3.5.1",
            ),
            (
                ("1.20.2", "3.3.9"),
                ("1.20.2+qb.1", "3.5.1"),
                "etcd moves one minor version",
            ),
        ];
        for (from, to, why) in refused {
            let result = check_upgrade(&release(from.0, from.1), &release(to.0, to.1));
            let error = result.expect_err(why);
            assert!(error.contains(why), "{from:?} -> {to:?}: {error}");
        }
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
