//! The REST API, `/api/v1/...`: the router and the handlers. A handler extracts and parses
//! its request, checks the caller's role, makes one call to the app layer ([`crate::app`]) and
//! renders the answer: its status and JSON.

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use qb_api::{
    AgentUpgrade, Alert, AlertQuery, AttachRequest, BootstrapToken, Channel, Cluster,
    ClusterDetail, ClusterHealth, CreateBootstrapToken, CreateChannel, CreateCluster,
    CreateKubeconfig, CreateSilence, CreateThresholdRule, CreateToken, CreateUser,
    CreatedBootstrapToken, CreatedChannel, CreatedToken, DeletedCluster, Delivery, DeliveryQuery,
    DetachRequest, Event, Kubeconfig, LabelChange, LogQuery, MetricsQuery, MetricsRange, Node,
    NodeLog, NodeMetrics, NodeMove, NodeState, Page, PageParams, PingResult, ProblemCode, Role,
    SetPassword, Silence, StartAgentUpgrade, ThresholdRule, Token, TokenId, UpdateCluster, User,
    Whoami,
};
use qb_store::{ClusterSpec, EventFilter, Key};
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi as _};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AgentUpgradeChange;
use crate::auth::Caller;
use crate::extract::{ApiJson, ApiQuery};
use crate::{ApiError, AppState};

/// The largest request body the API accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub(crate) type ApiResult<T> = Result<T, ApiError>;

pub fn router(state: AppState) -> Router {
    let (api, _) = documented().split_for_parts();
    Router::new()
        .merge(api)
        .route(
            &format!("{}/openapi.json", qb_api::API_PREFIX),
            get(openapi_document),
        )
        .merge(crate::proxy::routes())
        .merge(crate::ui::routes())
        .route("/healthz", get(healthz))
        .route("/metrics", get(crate::prometheus::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::audit::record_refusals,
        ))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

/// Every documented route of the API, declared once: the router serves these and the OpenAPI
/// document describes these, each at the path its handler's `#[utoipa::path]` names. Handlers
/// of one path go in one `routes!`.
pub(crate) fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(whoami))
        .routes(routes!(list_nodes))
        .routes(routes!(get_node, delete_node))
        .routes(routes!(label_node))
        .routes(routes!(authorize_node))
        .routes(routes!(deauthorize_node))
        .routes(routes!(ping_node))
        .routes(routes!(node_metrics))
        .routes(routes!(node_log))
        .routes(routes!(list_alerts))
        .routes(routes!(list_silences, create_silence))
        .routes(routes!(delete_silence))
        .routes(routes!(list_threshold_rules, create_threshold_rule))
        .routes(routes!(delete_threshold_rule))
        .routes(routes!(list_channels, create_channel))
        .routes(routes!(delete_channel))
        .routes(routes!(test_channel))
        .routes(routes!(list_deliveries))
        .routes(routes!(list_clusters, create_cluster))
        .routes(routes!(get_cluster, update_cluster, delete_cluster))
        .routes(routes!(cluster_health))
        .routes(routes!(attach))
        .routes(routes!(detach))
        .routes(routes!(create_kubeconfig))
        .routes(routes!(
            crate::snapshots::list_snapshots,
            crate::snapshots::take_snapshot
        ))
        .routes(routes!(
            crate::snapshots::get_snapshot,
            crate::snapshots::delete_snapshot
        ))
        .routes(routes!(crate::snapshots::download_snapshot))
        .routes(routes!(list_users, create_user))
        .routes(routes!(set_password))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(list_events))
        .routes(routes!(crate::agents::packages::agent_package))
        .routes(routes!(list_bootstrap_tokens, create_bootstrap_token))
        .routes(routes!(revoke_bootstrap_token))
        .routes(routes!(get_agent_upgrade, start_agent_upgrade))
        .routes(routes!(pause_agent_upgrade))
        .routes(routes!(resume_agent_upgrade))
        .routes(routes!(stop_agent_upgrade))
        .merge(crate::engine::api::routes())
        .merge(crate::session::routes())
        .merge(crate::live::routes())
}

/// Logs each request's method, path (never the query or headers, which may carry secrets),
/// status and duration.
async fn log_request(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if response.status().is_server_error() {
        tracing::warn!(%method, %path, status, ms, "request failed");
    } else {
        tracing::debug!(%method, %path, status, ms, "request");
    }
    response
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        ProblemCode::NotFound,
        format!("no such path: {}", uri.path()),
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ProblemCode::MethodNotAllowed,
        "this path does not support that method",
    )
}

/// Liveness and readiness: 200 when the database answers.
async fn healthz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => "ok\n".into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn openapi_document() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi::document())
}

fn node_key(s: &str) -> Key<qb_api::NodeId> {
    Key::parse(s)
}

pub(crate) fn cluster_key(s: &str) -> Key<qb_api::ClusterId> {
    Key::parse(s)
}

/// Who is calling.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "auth",
    responses((status = 200, body = Whoami), (status = 401, body = qb_api::Problem)))]
async fn whoami(caller: Caller) -> Json<Whoami> {
    let p = caller.0;
    Json(Whoami {
        tenant_id: p.tenant_id,
        tenant: p.tenant,
        user: p.user,
        role: p.role,
        token_id: p.token_id,
    })
}

/// A cluster's health as its own API tells it now: whether each Kubernetes node is Ready,
/// whether the scheduler and the controller manager have a leader, how many pods run, and the
/// pods that restart, wait or fail, with their restart counts and why they last stopped.
#[utoipa::path(get, path = "/api/v1/clusters/{cluster}/health", tag = "clusters",
    params(("cluster" = qb_api::Name, Path, description = "Cluster id or name")),
    responses((status = 200, body = ClusterHealth), (status = 404, body = qb_api::Problem),
        (status = 409, description = "The cluster's API cannot be read now: it has no API server yet, or its masters do not answer", body = qb_api::Problem)))]
async fn cluster_health(
    State(app): State<AppState>,
    caller: Caller,
    Path(cluster): Path<String>,
) -> ApiResult<Json<ClusterHealth>> {
    Ok(Json(
        app.cluster_health(&caller, &cluster_key(&cluster)).await?,
    ))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct NodeQuery {
    /// Only nodes in this state.
    #[param(pattern = "^(pending|authorized|attached|detaching|deauthorized)$")]
    state: Option<String>,
    /// Only nodes of this cluster (id or name).
    #[param(value_type = Option<qb_api::Name>)]
    cluster: Option<String>,
    /// At most this many items, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    after: Option<String>,
}

/// List the tenant's nodes.
#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes", params(NodeQuery),
    responses((status = 200, body = Page<Node>), (status = 400, body = qb_api::Problem),
        (status = 404, description = "The cluster asked for does not exist", body = qb_api::Problem)))]
async fn list_nodes(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<NodeQuery>,
) -> ApiResult<Json<Page<Node>>> {
    let node_state = q
        .state
        .as_deref()
        .map(|s| {
            NodeState::parse(s).ok_or_else(|| {
                ApiError::invalid(format!(
                    "unknown node state {s:?}: use pending, authorized, attached, detaching or deauthorized"
                ))
            })
        })
        .transpose()?;
    let cluster = q.cluster.as_deref().map(cluster_key);
    let page = PageParams {
        limit: q.limit,
        after: q.after,
    };
    let nodes = app
        .list_nodes(&caller, node_state, cluster.as_ref(), &page)
        .await?;
    Ok(Json(nodes))
}

/// Show one node.
#[utoipa::path(get, path = "/api/v1/nodes/{node}", tag = "nodes",
    params(("node" = qb_api::NodeName, Path, description = "Node id or name")),
    responses((status = 200, body = Node), (status = 404, body = qb_api::Problem)))]
async fn get_node(
    State(app): State<AppState>,
    caller: Caller,
    Path(node): Path<String>,
) -> ApiResult<Json<Node>> {
    Ok(Json(app.get_node(&caller, &node_key(&node)).await?))
}

/// Set or remove labels of a node.
#[utoipa::path(post, path = "/api/v1/nodes/{node}/labels", tag = "nodes", request_body = LabelChange,
    params(("node" = qb_api::NodeName, Path, description = "Node id or name")),
    responses((status = 200, body = Node), (status = 400, body = qb_api::Problem), (status = 404, body = qb_api::Problem)))]
async fn label_node(
    State(app): State<AppState>,
    caller: Caller,
    Path(node): Path<String>,
    ApiJson(change): ApiJson<LabelChange>,
) -> ApiResult<Json<Node>> {
    caller.require(Role::Operator)?;
    Ok(Json(
        app.label_node(&caller, &node_key(&node), &change).await?,
    ))
}

/// Authorize a pending node: it enters the pool.
#[utoipa::path(post, path = "/api/v1/nodes/{node}/authorize", tag = "nodes",
    params(("node" = qb_api::NodeName, Path, description = "Node id or name")),
    responses((status = 200, body = Node), (status = 404, body = qb_api::Problem), (status = 409, body = qb_api::Problem)))]
async fn authorize_node(
    State(app): State<AppState>,
    caller: Caller,
    Path(node): Path<String>,
) -> ApiResult<Json<Node>> {
    caller.require(Role::Operator)?;
    Ok(Json(app.authorize_node(&caller, &node_key(&node)).await?))
}

/// Deauthorize a node: its identity is revoked and it leaves its cluster.
#[utoipa::path(post, path = "/api/v1/nodes/{node}/deauthorize", tag = "nodes",
    params(("node" = qb_api::NodeName, Path, description = "Node id or name")),
    responses((status = 200, body = Node), (status = 404, body = qb_api::Problem), (status = 409, body = qb_api::Problem)))]
async fn deauthorize_node(
    State(app): State<AppState>,
    caller: Caller,
    Path(node): Path<String>,
) -> ApiResult<Json<Node>> {
    caller.require(Role::Operator)?;
    Ok(Json(app.deauthorize_node(&caller, &node_key(&node)).await?))
}

/// Forget a pending or deauthorized node.
#[utoipa::path(delete, path = "/api/v1/nodes/{node}", tag = "nodes",
    params(("node" = qb_api::NodeName, Path, description = "Node id or name")),
    responses((status = 204), (status = 404, body = qb_api::Problem), (status = 409, body = qb_api::Problem)))]
async fn delete_node(
    State(app): State<AppState>,
    caller: Caller,
    Path(node): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Operator)?;
    app.delete_node(&caller, &node_key(&node)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List the tenant's clusters.
#[utoipa::path(get, path = "/api/v1/clusters", tag = "clusters", params(PageParams),
    responses((status = 200, body = Page<Cluster>)))]
async fn list_clusters(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(page): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<Cluster>>> {
    Ok(Json(app.list_clusters(&caller, &page).await?))
}

/// Create an empty cluster.
#[utoipa::path(post, path = "/api/v1/clusters", tag = "clusters", request_body = CreateCluster,
    responses((status = 201, body = Cluster), (status = 400, body = qb_api::Problem), (status = 409, body = qb_api::Problem)))]
async fn create_cluster(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateCluster>,
) -> ApiResult<(StatusCode, Json<Cluster>)> {
    caller.require(Role::Operator)?;
    let spec = ClusterSpec::try_from(req)?;
    let cluster = app.create_cluster(&caller, &spec).await?;
    Ok((StatusCode::CREATED, Json(cluster)))
}

/// Show a cluster and its nodes.
#[utoipa::path(get, path = "/api/v1/clusters/{cluster}", tag = "clusters",
    params(("cluster" = qb_api::Name, Path, description = "Cluster id or name")),
    responses((status = 200, body = ClusterDetail), (status = 404, body = qb_api::Problem)))]
async fn get_cluster(
    State(app): State<AppState>,
    caller: Caller,
    Path(cluster): Path<String>,
) -> ApiResult<Json<ClusterDetail>> {
    Ok(Json(
        app.get_cluster(&caller, &cluster_key(&cluster)).await?,
    ))
}

/// Change a cluster's settings. A new `kubernetes_version` upgrades the cluster: its nodes get
/// the new version one at a time, masters first, each once the one before is healthy again.
#[utoipa::path(patch, path = "/api/v1/clusters/{cluster}", tag = "clusters", request_body = UpdateCluster,
    params(("cluster" = qb_api::Name, Path, description = "Cluster id or name")),
    responses((status = 200, body = Cluster), (status = 400, body = qb_api::Problem), (status = 404, body = qb_api::Problem), (status = 409, body = qb_api::Problem)))]
async fn update_cluster(
    State(app): State<AppState>,
    caller: Caller,
    Path(cluster): Path<String>,
    ApiJson(change): ApiJson<UpdateCluster>,
) -> ApiResult<Json<Cluster>> {
    caller.require(Role::Operator)?;
    Ok(Json(
        app.update_cluster(&caller, &cluster_key(&cluster), &change)
            .await?,
    ))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DeleteQuery {
    /// Delete even if the cluster has nodes, returning them to the pool.
    #[serde(default)]
    force: bool,
}

/// Delete a cluster.
#[utoipa::path(delete, path = "/api/v1/clusters/{cluster}", tag = "clusters",
    params(("cluster" = qb_api::Name, Path, description = "Cluster id or name"), DeleteQuery),
    responses((status = 200, body = DeletedCluster), (status = 404, body = qb_api::Problem), (status = 409, body = qb_api::Problem)))]
async fn delete_cluster(
    State(app): State<AppState>,
    caller: Caller,
    Path(cluster): Path<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> ApiResult<Json<DeletedCluster>> {
    caller.require(Role::Operator)?;
    let deleted = app
        .delete_cluster(&caller, &cluster_key(&cluster), q.force)
        .await?;
    Ok(Json(deleted))
}

/// Attach nodes to a cluster: a number from the pool (optionally matching a label selector), or
/// named nodes. All or nothing.
#[utoipa::path(post, path = "/api/v1/clusters/{cluster}/attach", tag = "clusters", request_body = AttachRequest,
    params(("cluster" = qb_api::Name, Path, description = "Cluster id or name")),
    responses((status = 200, body = NodeMove), (status = 400, body = qb_api::Problem), (status = 404, body = qb_api::Problem), (status = 409, body = qb_api::Problem)))]
async fn attach(
    State(app): State<AppState>,
    caller: Caller,
    Path(cluster): Path<String>,
    ApiJson(req): ApiJson<AttachRequest>,
) -> ApiResult<Json<NodeMove>> {
    caller.require(Role::Operator)?;
    let target = req.target()?;
    let moved = app.attach(&caller, &cluster_key(&cluster), &target).await?;
    Ok(Json(moved))
}

/// Detach named nodes from a cluster. They become `detaching` and return to the pool once their
/// components are removed.
#[utoipa::path(post, path = "/api/v1/clusters/{cluster}/detach", tag = "clusters", request_body = DetachRequest,
    params(("cluster" = qb_api::Name, Path, description = "Cluster id or name")),
    responses((status = 202, body = NodeMove), (status = 400, body = qb_api::Problem), (status = 404, body = qb_api::Problem), (status = 409, body = qb_api::Problem)))]
async fn detach(
    State(app): State<AppState>,
    caller: Caller,
    Path(cluster): Path<String>,
    ApiJson(req): ApiJson<DetachRequest>,
) -> ApiResult<(StatusCode, Json<NodeMove>)> {
    caller.require(Role::Operator)?;
    req.validate()?;
    let moved = app
        .detach(&caller, &cluster_key(&cluster), &req.nodes, req.force)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(moved)))
}

/// A kubeconfig for `kubectl`, pointing at the cluster through the controller's Kubernetes API
/// proxy, with a new API token of the caller's own: the same user and role (the cluster's RBAC
/// decides what it may do there), expiring no later than the caller's token. Its secret is in
/// this response only.
#[utoipa::path(post, path = "/api/v1/clusters/{cluster}/kubeconfig", tag = "clusters", request_body = CreateKubeconfig,
    params(("cluster" = qb_api::Name, Path, description = "Cluster id or name")),
    responses((status = 201, body = Kubeconfig), (status = 400, body = qb_api::Problem), (status = 404, body = qb_api::Problem), (status = 503, body = qb_api::Problem)))]
async fn create_kubeconfig(
    State(app): State<AppState>,
    caller: Caller,
    Path(cluster): Path<String>,
    ApiJson(req): ApiJson<CreateKubeconfig>,
) -> ApiResult<(StatusCode, Json<Kubeconfig>)> {
    let kubeconfig = app
        .create_kubeconfig(&caller, &cluster_key(&cluster), &req)
        .await?;
    Ok((StatusCode::CREATED, Json(kubeconfig)))
}

/// List the tenant's users.
#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    responses((status = 200, body = Vec<User>), (status = 403, body = qb_api::Problem)))]
async fn list_users(State(app): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<User>>> {
    caller.require(Role::Admin)?;
    Ok(Json(app.list_users(&caller).await?))
}

/// Create a user.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = CreateUser,
    responses((status = 201, body = User), (status = 403, body = qb_api::Problem), (status = 409, body = qb_api::Problem)))]
async fn create_user(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    caller.require(Role::Admin)?;
    let user = app.create_user(&caller, &req).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// Set a user's password, for logging in to the web UI: admins for anyone of the tenant, every
/// user for themselves. The user's web sessions end, but the one that made the change; their
/// API tokens stay.
#[utoipa::path(put, path = "/api/v1/users/{user}/password", tag = "users", request_body = SetPassword,
    params(("user" = qb_api::Name, Path, description = "User name or id")),
    responses((status = 200, body = User), (status = 400, body = qb_api::Problem),
        (status = 403, body = qb_api::Problem), (status = 404, body = qb_api::Problem)))]
async fn set_password(
    State(app): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    ApiJson(req): ApiJson<SetPassword>,
) -> ApiResult<Json<User>> {
    if user != caller.0.user.as_str() {
        caller.require(Role::Admin)?;
    }
    let user: qb_api::Name = user
        .parse()
        .map_err(|_| ApiError::new(ProblemCode::NotFound, format!("user {user:?} not found")))?;
    Ok(Json(app.set_password(&caller, &user, req.password).await?))
}

/// List the tenant's API tokens (never their secrets).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", params(PageParams),
    responses((status = 200, body = Page<Token>), (status = 403, body = qb_api::Problem)))]
async fn list_tokens(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(page): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<Token>>> {
    caller.require(Role::Admin)?;
    Ok(Json(app.list_tokens(&caller, &page).await?))
}

/// Create an API token. Its secret is in this response only.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = CreateToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = qb_api::Problem), (status = 403, body = qb_api::Problem),
        (status = 404, description = "The user named does not exist", body = qb_api::Problem)))]
async fn create_token(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    caller.require(Role::Admin)?;
    let created = app.create_token(&caller, req).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Revoke a token at once.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id")),
    responses((status = 200, body = Token), (status = 403, body = qb_api::Problem), (status = 404, body = qb_api::Problem)))]
async fn revoke_token(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Token>> {
    caller.require(Role::Admin)?;
    let id: TokenId = id
        .parse()
        .map_err(|_| ApiError::new(ProblemCode::NotFound, format!("token {id:?} not found")))?;
    Ok(Json(app.revoke_token(&caller, id).await?))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventQuery {
    /// Only events about objects of this kind: node, cluster, user, token, tenant, or request
    /// (a refused change).
    kind: Option<String>,
    /// Only events about the object with this id or name.
    object: Option<String>,
    /// Only events whose action starts with this, e.g. `node.` or `cluster.deleted`.
    action: Option<String>,
    /// `oldest` (the default) or `newest` first; `next` continues in the same order.
    #[param(inline)]
    order: Option<EventOrder>,
    /// At most this many items, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next` cursor of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    after: Option<String>,
}

/// The order of the audit trail.
#[derive(Clone, Copy, Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum EventOrder {
    Oldest,
    Newest,
}

/// The audit trail, oldest first unless asked for the newest first.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventQuery),
    responses((status = 200, body = Page<Event>), (status = 400, body = qb_api::Problem)))]
async fn list_events(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> ApiResult<Json<Page<Event>>> {
    let filter = EventFilter {
        object_kind: q.kind,
        object: q.object,
        action_prefix: q.action,
        newest_first: matches!(q.order, Some(EventOrder::Newest)),
    };
    let page = PageParams {
        limit: q.limit,
        after: q.after,
    };
    Ok(Json(app.list_events(&caller, &filter, &page).await?))
}

/// List the tenant's bootstrap tokens (never their secrets).
#[utoipa::path(get, path = "/api/v1/bootstrap-tokens", tag = "agents", params(PageParams),
    responses((status = 200, body = Page<BootstrapToken>), (status = 403, body = qb_api::Problem)))]
async fn list_bootstrap_tokens(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(page): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<BootstrapToken>>> {
    caller.require(Role::Operator)?;
    Ok(Json(app.list_bootstrap_tokens(&caller, &page).await?))
}

/// Create a bootstrap token for agents to register hosts with. Its secret is in this response
/// only.
#[utoipa::path(post, path = "/api/v1/bootstrap-tokens", tag = "agents", request_body = CreateBootstrapToken,
    responses((status = 201, body = CreatedBootstrapToken), (status = 400, body = qb_api::Problem), (status = 403, body = qb_api::Problem)))]
async fn create_bootstrap_token(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateBootstrapToken>,
) -> ApiResult<(StatusCode, Json<CreatedBootstrapToken>)> {
    caller.require(Role::Operator)?;
    let created = app.create_bootstrap_token(&caller, req).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Revoke a bootstrap token at once; hosts not yet registered with it can no longer use it.
#[utoipa::path(delete, path = "/api/v1/bootstrap-tokens/{id}", tag = "agents",
    params(("id" = String, Path, description = "Bootstrap token id")),
    responses((status = 200, body = BootstrapToken), (status = 403, body = qb_api::Problem), (status = 404, body = qb_api::Problem)))]
async fn revoke_bootstrap_token(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<BootstrapToken>> {
    caller.require(Role::Operator)?;
    let id = id.parse().map_err(|_| {
        ApiError::new(
            ProblemCode::NotFound,
            format!("bootstrap token {id:?} not found"),
        )
    })?;
    Ok(Json(app.revoke_bootstrap_token(&caller, id).await?))
}

/// Start moving the tenant's hosts to the build of the agent this controller ships: one host
/// first, then `batch_size` at a time; a host whose new agent fails its trial goes back to the
/// build it ran, and the upgrade stops. Offline hosts upgrade when they return.
#[utoipa::path(post, path = "/api/v1/agent-upgrade", tag = "agents", request_body = StartAgentUpgrade,
    responses((status = 201, body = AgentUpgrade), (status = 400, body = qb_api::Problem), (status = 403, body = qb_api::Problem), (status = 409, body = qb_api::Problem), (status = 503, body = qb_api::Problem)))]
async fn start_agent_upgrade(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<StartAgentUpgrade>,
) -> ApiResult<(StatusCode, Json<AgentUpgrade>)> {
    caller.require(Role::Operator)?;
    let upgrade = app.start_agent_upgrade(&caller, &req).await?;
    Ok((StatusCode::CREATED, Json(upgrade)))
}

/// The tenant's agent upgrade: where it is, and every host's part in it.
#[utoipa::path(get, path = "/api/v1/agent-upgrade", tag = "agents",
    responses((status = 200, body = AgentUpgrade), (status = 404, body = qb_api::Problem)))]
async fn get_agent_upgrade(
    State(app): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<AgentUpgrade>> {
    Ok(Json(app.agent_upgrade(&caller).await?))
}

/// Pause the running agent upgrade: no more hosts start (those on trial finish theirs).
#[utoipa::path(post, path = "/api/v1/agent-upgrade/pause", tag = "agents",
    responses((status = 200, body = AgentUpgrade), (status = 403, body = qb_api::Problem), (status = 404, body = qb_api::Problem), (status = 409, body = qb_api::Problem)))]
async fn pause_agent_upgrade(
    State(app): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<AgentUpgrade>> {
    caller.require(Role::Operator)?;
    Ok(Json(
        app.change_agent_upgrade(&caller, AgentUpgradeChange::Pause)
            .await?,
    ))
}

/// Resume a paused agent upgrade.
#[utoipa::path(post, path = "/api/v1/agent-upgrade/resume", tag = "agents",
    responses((status = 200, body = AgentUpgrade), (status = 403, body = qb_api::Problem), (status = 404, body = qb_api::Problem), (status = 409, body = qb_api::Problem)))]
async fn resume_agent_upgrade(
    State(app): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<AgentUpgrade>> {
    caller.require(Role::Operator)?;
    Ok(Json(
        app.change_agent_upgrade(&caller, AgentUpgradeChange::Resume)
            .await?,
    ))
}

/// Stop the agent upgrade (running or paused): hosts upgrading finish their trial, no other
/// host starts. Start another once ready.
#[utoipa::path(post, path = "/api/v1/agent-upgrade/stop", tag = "agents",
    responses((status = 200, body = AgentUpgrade), (status = 403, body = qb_api::Problem), (status = 404, body = qb_api::Problem), (status = 409, body = qb_api::Problem)))]
async fn stop_agent_upgrade(
    State(app): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<AgentUpgrade>> {
    caller.require(Role::Operator)?;
    Ok(Json(
        app.change_agent_upgrade(&caller, AgentUpgradeChange::Stop)
            .await?,
    ))
}

/// Push a ping to the node's agent and wait for its answer: the round trip from the controller
/// deciding to the agent acting.
#[utoipa::path(post, path = "/api/v1/nodes/{node}/ping", tag = "nodes",
    params(("node" = qb_api::NodeName, Path, description = "Node id or name")),
    responses((status = 200, body = PingResult), (status = 404, body = qb_api::Problem), (status = 409, body = qb_api::Problem)))]
async fn ping_node(
    State(app): State<AppState>,
    caller: Caller,
    Path(node): Path<String>,
) -> ApiResult<Json<PingResult>> {
    caller.require(Role::Operator)?;
    Ok(Json(app.ping_node(&caller, &node_key(&node)).await?))
}

/// A piece of one of a node's service logs (etcd, containerd, kubelet, kube-apiserver, ...,
/// and `qb-agent`, the agent's own), read by its agent: the end of the log, or with `offset`
/// what follows (to follow it).
#[utoipa::path(get, path = "/api/v1/nodes/{node}/logs/{service}", tag = "nodes",
    params(("node" = qb_api::NodeName, Path, description = "Node id or name"),
        ("service" = String, Path, description = "A service of the node's plan, or `qb-agent` for the agent's own log", pattern = "^[-a-z0-9]{1,63}$"), LogQuery),
    responses((status = 200, body = NodeLog), (status = 400, body = qb_api::Problem),
        (status = 404, body = qb_api::Problem), (status = 409, body = qb_api::Problem)))]
async fn node_log(
    State(app): State<AppState>,
    caller: Caller,
    Path((node, service)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<LogQuery>,
) -> ApiResult<Json<NodeLog>> {
    // Logs may say more than a viewer should read.
    caller.require(Role::Operator)?;
    Ok(Json(
        app.node_log(&caller, &node_key(&node), &service, &query)
            .await?,
    ))
}

/// A node's host metrics: its agent's last report (CPU, load, memory, disk, uptime) and their
/// history, by the minute up to a day back and by the hour up to 30 days.
#[utoipa::path(get, path = "/api/v1/nodes/{node}/metrics", tag = "nodes",
    params(("node" = qb_api::NodeName, Path, description = "Node id or name"), MetricsQuery),
    responses((status = 200, body = NodeMetrics), (status = 400, body = qb_api::Problem), (status = 404, body = qb_api::Problem)))]
async fn node_metrics(
    State(app): State<AppState>,
    caller: Caller,
    Path(node): Path<String>,
    ApiQuery(query): ApiQuery<MetricsQuery>,
) -> ApiResult<Json<NodeMetrics>> {
    let range = match query.range.as_deref() {
        Some(range) => range.parse::<MetricsRange>()?,
        None => MetricsRange::default(),
    };
    Ok(Json(
        app.node_metrics(&caller, &node_key(&node), range).await?,
    ))
}

/// The tenant's alerts, newest first: firing ones by default. An alert fires once when its
/// rule finds its object wrong (a host offline, a disk over 90 % full, a cluster degraded or
/// blocked) and resolves when it no longer does.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts", params(AlertQuery),
    responses((status = 200, body = Vec<Alert>), (status = 400, body = qb_api::Problem)))]
async fn list_alerts(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<AlertQuery>,
) -> ApiResult<Json<Vec<Alert>>> {
    Ok(Json(app.list_alerts(&caller, &query).await?))
}

/// The tenant's silences that have not ended.
#[utoipa::path(get, path = "/api/v1/silences", tag = "alerts",
    responses((status = 200, body = Vec<Silence>)))]
async fn list_silences(
    State(app): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<Silence>>> {
    Ok(Json(app.list_silences(&caller).await?))
}

/// Silence the alerts of a rule, of a node or cluster, or both, for a while: they still fire
/// and resolve, marked silenced, and notify no one.
#[utoipa::path(post, path = "/api/v1/silences", tag = "alerts", request_body = CreateSilence,
    responses((status = 201, body = Silence), (status = 400, body = qb_api::Problem)))]
async fn create_silence(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateSilence>,
) -> ApiResult<(StatusCode, Json<Silence>)> {
    caller.require(Role::Operator)?;
    Ok((
        StatusCode::CREATED,
        Json(app.create_silence(&caller, &req).await?),
    ))
}

/// The tenant's own alert rules: a host figure above a threshold for some minutes.
#[utoipa::path(get, path = "/api/v1/alert-rules", tag = "alerts",
    responses((status = 200, body = Vec<ThresholdRule>)))]
async fn list_threshold_rules(
    State(app): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<ThresholdRule>>> {
    Ok(Json(app.list_threshold_rules(&caller).await?))
}

/// Alert (`host_threshold`) on each host whose CPU, memory, disk or load stays above a
/// threshold for some minutes in a row.
#[utoipa::path(post, path = "/api/v1/alert-rules", tag = "alerts",
    request_body = CreateThresholdRule,
    responses((status = 201, body = ThresholdRule), (status = 400, body = qb_api::Problem),
        (status = 409, body = qb_api::Problem)))]
async fn create_threshold_rule(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateThresholdRule>,
) -> ApiResult<(StatusCode, Json<ThresholdRule>)> {
    caller.require(Role::Operator)?;
    Ok((
        StatusCode::CREATED,
        Json(app.create_threshold_rule(&caller, &req).await?),
    ))
}

/// Remove an alert rule; its firing alerts resolve.
#[utoipa::path(delete, path = "/api/v1/alert-rules/{rule}", tag = "alerts",
    params(("rule" = qb_api::Name, Path, description = "Rule name")),
    responses((status = 204), (status = 400, body = qb_api::Problem),
        (status = 404, body = qb_api::Problem)))]
async fn delete_threshold_rule(
    State(app): State<AppState>,
    caller: Caller,
    Path(rule): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Operator)?;
    app.delete_threshold_rule(&caller, &rule).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The tenant's notification channels: where its alerts go when they fire and resolve.
#[utoipa::path(get, path = "/api/v1/notification-channels", tag = "alerts",
    responses((status = 200, body = Vec<Channel>)))]
async fn list_channels(
    State(app): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<Channel>>> {
    Ok(Json(app.list_channels(&caller).await?))
}

/// Send the tenant's alerts to a webhook or to e-mail addresses from now on. A webhook's
/// signing secret is in the answer, and never shown again.
#[utoipa::path(post, path = "/api/v1/notification-channels", tag = "alerts",
    request_body = CreateChannel,
    responses((status = 201, body = CreatedChannel), (status = 400, body = qb_api::Problem),
        (status = 409, body = qb_api::Problem)))]
async fn create_channel(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateChannel>,
) -> ApiResult<(StatusCode, Json<CreatedChannel>)> {
    caller.require(Role::Operator)?;
    Ok((
        StatusCode::CREATED,
        Json(app.create_channel(&caller, &req).await?),
    ))
}

/// Remove a notification channel and its delivery log; what it had not sent is dropped.
#[utoipa::path(delete, path = "/api/v1/notification-channels/{channel}", tag = "alerts",
    params(("channel" = qb_api::Name, Path, description = "Channel name")),
    responses((status = 204), (status = 400, body = qb_api::Problem),
        (status = 404, body = qb_api::Problem)))]
async fn delete_channel(
    State(app): State<AppState>,
    caller: Caller,
    Path(channel): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Operator)?;
    app.delete_channel(&caller, &channel).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Send a test alert to a channel now: 204 when it was delivered, 502 with the receiver's
/// or the SMTP server's answer when not.
#[utoipa::path(post, path = "/api/v1/notification-channels/{channel}/test", tag = "alerts",
    params(("channel" = qb_api::Name, Path, description = "Channel name")),
    responses((status = 204), (status = 400, body = qb_api::Problem),
        (status = 404, body = qb_api::Problem), (status = 502, body = qb_api::Problem)))]
async fn test_channel(
    State(app): State<AppState>,
    caller: Caller,
    Path(channel): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Operator)?;
    app.test_channel(&caller, &channel).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The tenant's notification deliveries, newest first: each alert change sent, or to be
/// sent, to each channel, with its attempts and last error.
#[utoipa::path(get, path = "/api/v1/notification-deliveries", tag = "alerts",
    params(DeliveryQuery),
    responses((status = 200, body = Vec<Delivery>), (status = 400, body = qb_api::Problem)))]
async fn list_deliveries(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<DeliveryQuery>,
) -> ApiResult<Json<Vec<Delivery>>> {
    Ok(Json(app.list_deliveries(&caller, &query).await?))
}

/// End a silence now.
#[utoipa::path(delete, path = "/api/v1/silences/{id}", tag = "alerts",
    params(("id" = String, Path, description = "Silence id")),
    responses((status = 204), (status = 404, body = qb_api::Problem)))]
async fn delete_silence(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Operator)?;
    app.delete_silence(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
