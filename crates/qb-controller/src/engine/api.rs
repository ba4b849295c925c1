//! The REST API of the cluster engine: release bundles and their artifacts, and preflight.
//! Artifacts stream between the request and the artifact store here; the rest are calls to the
//! app layer ([`crate::app`]).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use qb_api::{Bundle, BundleManifest, KubernetesVersion, PreflightReport, Role};
use qb_store::{Key, StoreError};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::extract::ApiJson;
use crate::{ApiError, AppState};

/// The largest artifact accepted.
const MAX_ARTIFACT_BYTES: u64 = 4 << 30;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_bundles, import_bundle))
        .routes(routes!(get_bundle))
        .routes(routes!(upload_artifact, artifact_exists))
        .routes(routes!(latest_preflight, run_preflight))
}

/// List the imported release bundles.
#[utoipa::path(get, path = "/api/v1/bundles", tag = "bundles",
    responses((status = 200, body = Vec<Bundle>)))]
pub(crate) async fn list_bundles(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Bundle>>, ApiError> {
    Ok(Json(app.list_bundles(&caller).await?))
}

/// Show one release bundle.
#[utoipa::path(get, path = "/api/v1/bundles/{version}", tag = "bundles",
    params(("version" = qb_api::KubernetesVersion, Path, description = "Kubernetes version, e.g. 1.20.2")),
    responses((status = 200, body = Bundle), (status = 404, body = qb_api::Problem)))]
pub(crate) async fn get_bundle(
    State(app): State<AppState>,
    caller: Caller,
    Path(version): Path<String>,
) -> Result<Json<Bundle>, ApiError> {
    let version: KubernetesVersion = version.parse()?;
    Ok(Json(app.get_bundle(&caller, &version).await?))
}

/// Import a release bundle whose artifacts were uploaded. Importing the same bundle again
/// changes nothing; a different bundle for an imported version is refused.
#[utoipa::path(post, path = "/api/v1/bundles", tag = "bundles", request_body = BundleManifest,
    responses((status = 201, body = Bundle), (status = 200, body = Bundle), (status = 400, body = qb_api::Problem), (status = 409, body = qb_api::Problem)))]
pub(crate) async fn import_bundle(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(manifest): ApiJson<BundleManifest>,
) -> Result<(StatusCode, Json<Bundle>), ApiError> {
    caller.require(Role::Operator)?;
    manifest.validate()?;
    let imported = app.import_bundle(&caller, &manifest).await?;
    let status = if imported.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(imported.bundle)))
}

/// Upload an artifact: the body's SHA-256 must be the one in the path.
#[utoipa::path(put, path = "/api/v1/artifacts/{sha256}", tag = "bundles",
    params(("sha256" = String, Path, description = "SHA-256 of the content, lowercase hex", pattern = "^[0-9a-f]{64}$")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204), (status = 400, body = qb_api::Problem), (status = 413, body = qb_api::Problem)))]
pub(crate) async fn upload_artifact(
    State(state): State<AppState>,
    caller: Caller,
    Path(sha256): Path<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    use futures_util::StreamExt;
    caller.require(Role::Operator)?;
    let mut seen = 0u64;
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk?;
        seen += chunk.len() as u64;
        if seen > MAX_ARTIFACT_BYTES {
            return Err(axum::Error::new(std::io::Error::other(
                "artifact too large",
            )));
        }
        Ok(chunk)
    });
    state
        .engine
        .artifacts
        .put(&sha256, Box::pin(stream))
        .await
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Whether an artifact is uploaded (200) or not (404).
#[utoipa::path(head, path = "/api/v1/artifacts/{sha256}", tag = "bundles",
    params(("sha256" = String, Path, description = "SHA-256 of the content, lowercase hex", pattern = "^[0-9a-f]{64}$")),
    responses((status = 200), (status = 404)))]
pub(crate) async fn artifact_exists(
    State(state): State<AppState>,
    _caller: Caller,
    Path(sha256): Path<String>,
) -> Result<StatusCode, ApiError> {
    match state.engine.artifacts.size(&sha256).await {
        Ok(Some(_)) => Ok(StatusCode::OK),
        Ok(None) => Ok(StatusCode::NOT_FOUND),
        Err(e) => Err(ApiError::invalid(e.to_string())),
    }
}

/// The newest preflight run of a cluster.
#[utoipa::path(get, path = "/api/v1/clusters/{cluster}/preflight", tag = "clusters",
    params(("cluster" = qb_api::Name, Path, description = "Cluster id or name")),
    responses((status = 200, body = PreflightReport), (status = 404, body = qb_api::Problem)))]
pub(crate) async fn latest_preflight(
    State(app): State<AppState>,
    caller: Caller,
    Path(cluster): Path<String>,
) -> Result<Json<PreflightReport>, ApiError> {
    match app.latest_preflight(&caller, &Key::parse(&cluster)).await? {
        Some(report) => Ok(Json(report)),
        None => Err(StoreError::NotFound {
            kind: "preflight run of cluster",
            key: cluster,
        }
        .into()),
    }
}

/// Run preflight across the cluster's nodes now and return the result.
#[utoipa::path(post, path = "/api/v1/clusters/{cluster}/preflight", tag = "clusters",
    params(("cluster" = qb_api::Name, Path, description = "Cluster id or name")),
    responses((status = 200, body = PreflightReport), (status = 404, body = qb_api::Problem),
        (status = 409, description = "The cluster has no nodes to check", body = qb_api::Problem)))]
pub(crate) async fn run_preflight(
    State(app): State<AppState>,
    caller: Caller,
    Path(cluster): Path<String>,
) -> Result<Json<PreflightReport>, ApiError> {
    caller.require(Role::Operator)?;
    Ok(Json(
        app.run_preflight(&caller, &Key::parse(&cluster)).await?,
    ))
}
