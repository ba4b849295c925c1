//! The REST API of the cluster engine: release bundles and their artifacts, and preflight.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use qb_api::{
    Bundle, BundleManifest, KubernetesVersion, NodeName, PreflightReport, ProblemCode, Role,
};
use qb_store::{Key, StoreError};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Engine, EngineError};
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

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Store(e) => e.into(),
            EngineError::Plan(message) => ApiError::new(ProblemCode::InvalidInput, message),
        }
    }
}

impl Engine {
    /// Refuses a detach that would leave etcd without quorum or without members.
    pub async fn check_detach(
        &self,
        tenant: qb_api::TenantId,
        cluster: &Key<qb_api::ClusterId>,
        names: &[NodeName],
    ) -> Result<(), ApiError> {
        let detail = self.store.get_cluster(tenant, cluster).await?;
        let ec = self.store.engine_cluster(tenant, detail.cluster.id).await?;
        let leaving: Vec<qb_api::NodeId> = ec
            .nodes
            .iter()
            .filter(|n| names.contains(&n.node.name))
            .map(|n| n.node.id)
            .collect();
        super::membership::detach_is_safe(self, &ec, &leaving).map_err(|reason| {
            let names: Vec<&str> = names.iter().map(NodeName::as_str).collect();
            ApiError::new(
                ProblemCode::QuorumAtRisk,
                format!(
                    "detaching {} from {} is refused: {reason}; nothing was changed (repeat with force to detach anyway)",
                    names.join(", "),
                    detail.cluster.name
                ),
            )
        })
    }
}

/// List the imported release bundles.
#[utoipa::path(get, path = "/api/v1/bundles", tag = "bundles",
    responses((status = 200, body = Vec<Bundle>)))]
pub(crate) async fn list_bundles(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Bundle>>, ApiError> {
    Ok(Json(state.store.list_bundles(caller.tenant()).await?))
}

/// Show one release bundle.
#[utoipa::path(get, path = "/api/v1/bundles/{version}", tag = "bundles",
    params(("version" = String, Path, description = "Kubernetes version, e.g. 1.20.2")),
    responses((status = 200, body = Bundle), (status = 404, body = qb_api::Problem)))]
pub(crate) async fn get_bundle(
    State(state): State<AppState>,
    caller: Caller,
    Path(version): Path<String>,
) -> Result<Json<Bundle>, ApiError> {
    let version: KubernetesVersion = version.parse()?;
    Ok(Json(
        state.store.get_bundle(caller.tenant(), &version).await?,
    ))
}

/// Import a release bundle whose artifacts were uploaded. Importing the same bundle again
/// changes nothing; a different bundle for an imported version is refused.
#[utoipa::path(post, path = "/api/v1/bundles", tag = "bundles", request_body = BundleManifest,
    responses((status = 201, body = Bundle), (status = 200, body = Bundle), (status = 400, body = qb_api::Problem), (status = 409, body = qb_api::Problem)))]
pub(crate) async fn import_bundle(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(manifest): ApiJson<BundleManifest>,
) -> Result<(StatusCode, Json<Bundle>), ApiError> {
    caller.require(Role::Operator)?;
    manifest.validate()?;
    for a in &manifest.artifacts {
        let size = state
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
    let (bundle, created) = state
        .store
        .import_bundle(caller.tenant(), &manifest, &caller.actor())
        .await?;
    state.engine.wake.notify_one();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(bundle)))
}

/// Upload an artifact: the body's SHA-256 must be the one in the path.
#[utoipa::path(put, path = "/api/v1/artifacts/{sha256}", tag = "bundles",
    params(("sha256" = String, Path, description = "SHA-256 of the content, lowercase hex")),
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
    params(("sha256" = String, Path, description = "SHA-256 of the content, lowercase hex")),
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
    params(("cluster" = String, Path, description = "Cluster id or name")),
    responses((status = 200, body = PreflightReport), (status = 404, body = qb_api::Problem)))]
pub(crate) async fn latest_preflight(
    State(state): State<AppState>,
    caller: Caller,
    Path(cluster): Path<String>,
) -> Result<Json<PreflightReport>, ApiError> {
    let detail = state
        .store
        .get_cluster(caller.tenant(), &Key::parse(&cluster))
        .await?;
    match state
        .store
        .latest_preflight(caller.tenant(), detail.cluster.id)
        .await?
    {
        Some((report, _)) => Ok(Json(report)),
        None => Err(StoreError::NotFound {
            kind: "preflight run of cluster",
            key: cluster,
        }
        .into()),
    }
}

/// Run preflight across the cluster's nodes now and return the result.
#[utoipa::path(post, path = "/api/v1/clusters/{cluster}/preflight", tag = "clusters",
    params(("cluster" = String, Path, description = "Cluster id or name")),
    responses((status = 200, body = PreflightReport), (status = 400, body = qb_api::Problem), (status = 404, body = qb_api::Problem)))]
pub(crate) async fn run_preflight(
    State(state): State<AppState>,
    caller: Caller,
    Path(cluster): Path<String>,
) -> Result<Json<PreflightReport>, ApiError> {
    caller.require(Role::Operator)?;
    let detail = state
        .store
        .get_cluster(caller.tenant(), &Key::parse(&cluster))
        .await?;
    if detail.nodes.is_empty() {
        return Err(ApiError::invalid(format!(
            "cluster {} has no nodes to check",
            detail.cluster.name
        )));
    }
    Ok(Json(
        state
            .engine
            .preflight_now(caller.tenant(), detail.cluster.id)
            .await?,
    ))
}
