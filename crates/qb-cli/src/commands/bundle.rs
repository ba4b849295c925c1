//! `qb bundle`: release bundles, the Kubernetes binaries clusters are installed from.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use qb_api::endpoints;
use qb_api::{Bundle, BundleArtifact};

use super::{App, now};
use crate::cli::BundleCommand;
use crate::client::Client;
use crate::local_bundle;
use crate::output;

pub async fn run(app: &App, cmd: BundleCommand) -> anyhow::Result<()> {
    match cmd {
        BundleCommand::Import { path } => import(app, path).await,
        BundleCommand::List => {
            let client = app.client()?;
            let bundles: Vec<Bundle> = client
                .call(client.request(&endpoints::LIST_BUNDLES, &[], &[]))
                .await?;
            app.out.emit_list(&bundles, "bundles", || {
                output::bundles_table(&bundles, now())
            })
        }
        BundleCommand::Show { version } => {
            let client = app.client()?;
            let bundle: Bundle = client
                .call(client.request(&endpoints::GET_BUNDLE, &[version.as_str()], &[]))
                .await?;
            app.out
                .emit(&bundle, || output::bundle_fields(&bundle, now()))
        }
    }
}

/// Checks the bundle's files, uploads those the controller lacks, then registers the manifest.
async fn import(app: &App, path: PathBuf) -> anyhow::Result<()> {
    let progress = app.table();
    let client = app.client()?;
    // Every file is checked before anything is sent.
    if progress {
        eprintln!("Checking the bundle in {}...", path.display());
    }
    let bundle = tokio::task::spawn_blocking(move || local_bundle::read(&path))
        .await
        .context("checking the bundle stopped unexpectedly")??;
    if progress {
        let total: u64 = bundle.manifest.artifacts.iter().map(|a| a.size).sum();
        let n = bundle.manifest.artifacts.len();
        eprintln!(
            "{}: Kubernetes {}, {n} artifact{} ({}), sizes and checksums match.",
            bundle.root.display(),
            bundle.manifest.kubernetes_version,
            if n == 1 { "" } else { "s" },
            output::bytes(total)
        );
    }
    let width = bundle
        .manifest
        .artifacts
        .iter()
        .map(|a| a.name.len())
        .max()
        .unwrap_or(0);
    for (artifact, file) in bundle.artifacts() {
        if progress {
            eprint!(
                "{:<width$}  {:>7}  ",
                artifact.name,
                output::bytes(artifact.size)
            );
            // Best effort: progress must not stop the import.
            let _ = std::io::stderr().flush();
        }
        let result = upload_if_missing(&client, artifact, file).await;
        if progress {
            eprintln!(
                "{}",
                match &result {
                    Ok(true) => "uploaded",
                    Ok(false) => "already there",
                    Err(_) => "failed",
                }
            );
        }
        result?;
    }
    let (imported, created): (Bundle, bool) = client
        .call_creating(
            client.request(&endpoints::IMPORT_BUNDLE, &[], &[]),
            &bundle.manifest,
        )
        .await?;
    app.out.emit(&imported, || summary(&imported, created))
}

/// What `qb bundle import` says when done.
fn summary(imported: &Bundle, created: bool) -> String {
    let version = &imported.manifest.kubernetes_version;
    if created {
        format!(
            "Imported bundle for Kubernetes {version}: {}.",
            output::bundle_artifacts(&imported.manifest)
        )
    } else {
        format!("Bundle for Kubernetes {version} was already imported.")
    }
}

/// Uploads the artifact unless the controller has it; `true` when uploaded. The file is sent
/// from memory, one artifact at a time.
async fn upload_if_missing(
    client: &Client,
    artifact: &BundleArtifact,
    file: &Path,
) -> anyhow::Result<bool> {
    let sha256 = [artifact.sha256.as_str()];
    if client
        .exists(client.request(&endpoints::ARTIFACT_EXISTS, &sha256, &[]))
        .await?
    {
        return Ok(false);
    }
    let content = tokio::fs::read(file)
        .await
        .with_context(|| format!("artifact {}: cannot read {}", artifact.name, file.display()))?;
    if content.len() as u64 != artifact.size
        || local_bundle::sha256_hex(&content) != artifact.sha256
    {
        bail!(
            "artifact {}: {} changed while importing; nothing more was uploaded",
            artifact.name,
            file.display()
        );
    }
    client
        .upload(
            client.request(&endpoints::UPLOAD_ARTIFACT, &sha256, &[]),
            content,
        )
        .await
        .with_context(|| format!("cannot upload artifact {}", artifact.name))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::fake_server::{self, Protocol};
    use crate::tls::Trust;

    fn artifact(content: &[u8]) -> BundleArtifact {
        BundleArtifact {
            name: "etcd".to_owned(),
            version: "3.4.23".to_owned(),
            sha256: local_bundle::sha256_hex(content),
            size: content.len() as u64,
            file: Some("etcd".to_owned()),
        }
    }

    #[tokio::test]
    async fn only_missing_artifacts_are_uploaded() {
        let present = local_bundle::sha256_hex(b"present");
        let handler = move |seen: &fake_server::Seen| {
            if seen.line.starts_with("HEAD ") {
                let status = if seen.line.ends_with(&present) {
                    200
                } else {
                    404
                };
                (status, String::new())
            } else {
                (204, String::new())
            }
        };
        let server = fake_server::start(Protocol::Http, Arc::new(handler)).await;
        let client = Client::new(&server.url, Trust::Probe, Some("t".into())).expect("client");
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("etcd");

        std::fs::write(&file, b"present").expect("write");
        let uploaded = upload_if_missing(&client, &artifact(b"present"), &file)
            .await
            .expect("already there");
        assert!(!uploaded);

        std::fs::write(&file, b"missing").expect("write");
        let uploaded = upload_if_missing(&client, &artifact(b"missing"), &file)
            .await
            .expect("uploaded");
        assert!(uploaded);
        let missing = local_bundle::sha256_hex(b"missing");
        let lines: Vec<(String, String)> = server
            .requests()
            .into_iter()
            .map(|r| (r.line, r.body))
            .collect();
        assert_eq!(
            lines,
            [
                (
                    format!(
                        "HEAD /api/v1/artifacts/{}",
                        local_bundle::sha256_hex(b"present")
                    ),
                    String::new()
                ),
                (format!("HEAD /api/v1/artifacts/{missing}"), String::new()),
                (
                    format!("PUT /api/v1/artifacts/{missing}"),
                    "missing".to_owned()
                ),
            ]
        );

        // A file that changed since it was checked is not sent.
        std::fs::write(&file, b"MISSING").expect("write");
        let err = upload_if_missing(&client, &artifact(b"missing"), &file)
            .await
            .expect_err("changed");
        assert!(err.to_string().contains("changed while importing"), "{err}");
        assert_eq!(server.requests().len(), 4, "a HEAD, no PUT");
    }

    #[test]
    fn summaries() {
        let bundle = Bundle {
            manifest: qb_api::BundleManifest {
                kubernetes_version: "1.20.2".parse().expect("version"),
                artifacts: vec![artifact(b"x")],
            },
            imported_at: time::macros::datetime!(2024-05-01 10:00:00 UTC),
        };
        assert_eq!(
            summary(&bundle, true),
            "Imported bundle for Kubernetes 1.20.2: etcd 3.4.23."
        );
        assert_eq!(
            summary(&bundle, false),
            "Bundle for Kubernetes 1.20.2 was already imported."
        );
    }
}
