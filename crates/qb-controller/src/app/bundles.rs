//! Release bundles: a bundle is imported only once every artifact it names was uploaded whole.

use qb_api::{Bundle, BundleManifest, KubernetesVersion};
use qb_store::StoreError;

use super::AppState;
use crate::ApiError;
use crate::auth::Caller;

/// A bundle after an import.
pub struct ImportedBundle {
    pub bundle: Bundle,
    /// `false` when the same bundle was imported before and nothing changed.
    pub created: bool,
}

impl AppState {
    pub async fn list_bundles(&self, caller: &Caller) -> Result<Vec<Bundle>, StoreError> {
        self.store.list_bundles(caller.tenant()).await
    }

    pub async fn get_bundle(
        &self,
        caller: &Caller,
        version: &KubernetesVersion,
    ) -> Result<Bundle, StoreError> {
        self.store.get_bundle(caller.tenant(), version).await
    }

    /// Imports a bundle whose artifacts are all uploaded with the sizes it says, and wakes the
    /// engine, which may have clusters waiting for it. Importing the same bundle again changes
    /// nothing; a different bundle for an imported version is refused.
    pub async fn import_bundle(
        &self,
        caller: &Caller,
        manifest: &BundleManifest,
    ) -> Result<ImportedBundle, ApiError> {
        for a in &manifest.artifacts {
            let size = self
                .engine
                .artifacts
                .size(&a.sha256)
                .await
                .map_err(|e| ApiError::invalid(e.to_string()))?;
            match size {
                Some(size) if size == a.size => {}
                Some(size) => {
                    return Err(ApiError::invalid(format!(
                        "artifact {} is {size} bytes, the manifest says {}",
                        a.name, a.size
                    )));
                }
                None => {
                    return Err(ApiError::invalid(format!(
                        "artifact {} ({}) was not uploaded; PUT it to /api/v1/artifacts/{} first",
                        a.name, a.sha256, a.sha256
                    )));
                }
            }
        }
        let (bundle, created) = self
            .store
            .import_bundle(caller.tenant(), manifest, &caller.actor())
            .await?;
        self.engine.wake.notify_one();
        Ok(ImportedBundle { bundle, created })
    }
}

#[cfg(test)]
mod tests {
    use qb_api::ProblemCode;

    use super::*;
    use crate::app::fixture::Fixture;

    #[tokio::test]
    async fn a_bundle_whose_artifacts_were_not_uploaded_is_refused() {
        let f = Fixture::new().await;
        let sha256 = "ab".repeat(32);
        let manifest: BundleManifest = serde_json::from_value(serde_json::json!({
            "kubernetes_version": "1.20.2",
            "artifacts": [{ "name": "etcd", "version": "3.4.13", "sha256": sha256, "size": 3 }],
        }))
        .unwrap();
        let refused = f
            .app
            .import_bundle(&f.operator, &manifest)
            .await
            .err()
            .unwrap();
        assert_eq!(refused.0.code, ProblemCode::InvalidInput);
        assert_eq!(
            refused.0.detail,
            format!(
                "artifact etcd ({sha256}) was not uploaded; PUT it to /api/v1/artifacts/{sha256} first"
            )
        );
        assert!(f.app.list_bundles(&f.operator).await.unwrap().is_empty());
    }
}
