//! The OpenAPI document of the REST API, generated from the handlers and wire types: its paths
//! are the routes `api::documented` declares (the router serves the same list). A committed
//! copy (`openapi.json` in this crate) is checked against it by a test.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "qb controller API", description = "Nodes, the node pool, clusters, users, tokens and the audit trail of one tenant."),
    components(schemas(qb_api::Problem, qb_api::ProblemCode)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub(crate) struct ApiDoc;

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
    let (_, mut doc) = crate::api::documented().split_for_parts();
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
