//! The artifact store: release bundle files, content-addressed by SHA-256, under the data
//! directory. A file is only ever visible under its name once its content hashed to it.

use std::path::{Path, PathBuf};

use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

#[derive(Clone, Debug)]
pub struct ArtifactStore {
    dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{0:?} is not a SHA-256 (64 lowercase hex digits)")]
    BadName(String),
    #[error("the content's SHA-256 is {actual}, not {expected}; nothing was stored")]
    Mismatch { expected: String, actual: String },
    #[error("the upload broke off")]
    Body(#[source] axum::Error),
    #[error("artifact store I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ArtifactStore {
    /// The store in `dir` (created when missing).
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// Where the artifact with this SHA-256 lives, if the name is a SHA-256.
    pub fn path(&self, sha256: &str) -> Result<PathBuf, ArtifactError> {
        if !qb_api::is_sha256_hex(sha256) {
            return Err(ArtifactError::BadName(sha256.chars().take(80).collect()));
        }
        Ok(self.dir.join(sha256))
    }

    /// The size of a stored artifact, `None` when it is not stored.
    pub async fn size(&self, sha256: &str) -> Result<Option<u64>, ArtifactError> {
        let path = self.path(sha256)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ArtifactError::Io { path, source }),
        }
    }

    /// Stores `body` as `sha256`, hashing while it streams to a temporary file; the file is
    /// renamed into place only if the hash matches. Returns the size.
    pub async fn put(
        &self,
        sha256: &str,
        mut body: impl Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin,
    ) -> Result<u64, ArtifactError> {
        let path = self.path(sha256)?;
        let temp = self
            .dir
            .join(format!(".upload-{}-{sha256}", uuid::Uuid::now_v7()));
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ArtifactError::Io { path, source }
        };
        let result = async {
            let mut file = tokio::fs::File::create(&temp).await.map_err(io(&temp))?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(ArtifactError::Body)?;
                hasher.update(&chunk);
                size += chunk.len() as u64;
                file.write_all(&chunk).await.map_err(io(&temp))?;
            }
            file.sync_all().await.map_err(io(&temp))?;
            let actual = hex::encode(hasher.finalize());
            if actual != sha256 {
                return Err(ArtifactError::Mismatch {
                    expected: sha256.to_owned(),
                    actual,
                });
            }
            tokio::fs::rename(&temp, &path).await.map_err(io(&path))?;
            Ok(size)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }

    /// Opens a stored artifact for reading.
    pub async fn open_file(&self, sha256: &str) -> Result<Option<tokio::fs::File>, ArtifactError> {
        let path = self.path(sha256)?;
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ArtifactError::Io { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(
        parts: &[&'static [u8]],
    ) -> impl Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok(axum::body::Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn only_content_that_hashes_to_its_name_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let sha = hex::encode(Sha256::digest(b"hello world"));
        assert_eq!(store.size(&sha).await.unwrap(), None);
        let err = store
            .put(&sha, body(&[b"hello ", b"there"]))
            .await
            .unwrap_err();
        assert!(matches!(err, ArtifactError::Mismatch { .. }), "{err}");
        assert_eq!(store.size(&sha).await.unwrap(), None);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no temporary file left"
        );
        assert_eq!(
            store.put(&sha, body(&[b"hello ", b"world"])).await.unwrap(),
            11
        );
        assert_eq!(store.size(&sha).await.unwrap(), Some(11));
        for bad in ["../../etc/passwd", "ABC", ""] {
            assert!(matches!(store.path(bad), Err(ArtifactError::BadName(_))));
        }
    }
}
