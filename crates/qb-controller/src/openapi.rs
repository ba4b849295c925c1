//! The OpenAPI document of the REST API, generated from the handlers and wire types.
//! A committed copy (`openapi.json` in this crate) is checked against it by a test.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "qb controller API", description = "Nodes, the node pool, clusters, users, tokens and the audit trail of one tenant."),
    paths(
        crate::api::whoami,
        crate::api::list_nodes,
        crate::api::get_node,
        crate::api::label_node,
        crate::api::authorize_node,
        crate::api::deauthorize_node,
        crate::api::delete_node,
        crate::api::list_clusters,
        crate::api::create_cluster,
        crate::api::get_cluster,
        crate::api::delete_cluster,
        crate::api::attach,
        crate::api::detach,
        crate::api::create_kubeconfig,
        crate::api::list_users,
        crate::api::create_user,
        crate::api::set_password,
        crate::api::list_tokens,
        crate::api::create_token,
        crate::api::revoke_token,
        crate::api::list_events,
        crate::api::ping_node,
        crate::api::list_bootstrap_tokens,
        crate::api::create_bootstrap_token,
        crate::api::revoke_bootstrap_token,
        crate::agents::packages::agent_package,
        crate::engine::api::list_bundles,
        crate::engine::api::get_bundle,
        crate::engine::api::import_bundle,
        crate::engine::api::upload_artifact,
        crate::engine::api::artifact_exists,
        crate::engine::api::latest_preflight,
        crate::engine::api::run_preflight,
        crate::session::login,
        crate::session::current,
        crate::session::logout,
        crate::live::changes,
    ),
    components(schemas(qb_api::Problem, qb_api::ProblemCode)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document, with a fixed version so the committed copy only changes with the API.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = "1".to_owned();
    doc.info.license = None;
    doc
}

/// The document as committed: pretty JSON with a trailing newline.
pub fn document_json() -> String {
    let mut json =
        serde_json::to_string_pretty(&document()).expect("the OpenAPI document serializes");
    json.push('\n');
    json
}
