//! The OpenAPI document of the REST API, generated from the handlers and wire types: its paths
//! are the routes `api::documented` declares (the router serves the same list). A committed
//! copy (`openapi.json` in this crate) is checked against it by a test.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
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
    complete(&mut doc);
    doc
}

/// Operations a client calls without a token: logging in and out, and asking whether the
/// session cookie is still good.
const PUBLIC: &[&str] = &["/api/v1/session"];

/// What every operation may answer beside what its handler declares, so that a client (and a
/// schema-driven fuzzer) finds every status and content type the server sends documented:
/// problems as `application/problem+json`; 401 where a token is needed (`security: []` where
/// none is); 413 and 415 where a body is read; 400 where anything the client chose is read.
fn complete(doc: &mut utoipa::openapi::OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        let operations = [
            &mut item.get,
            &mut item.head,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            if PUBLIC.contains(&path.as_str()) {
                operation.security = Some(Vec::new());
            }
            let reads_input = operation.request_body.is_some()
                || operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
            let responses = &mut operation.responses.responses;
            for (code, response) in responses.iter_mut() {
                if let RefOr::T(response) = response
                    && (code.starts_with('4') || code.starts_with('5'))
                    && let Some(content) = response.content.shift_remove("application/json")
                {
                    response.content.insert(PROBLEM_TYPE.to_owned(), content);
                }
            }
            let mut add = |code: &str, description: &str| {
                responses
                    .entry(code.to_owned())
                    .or_insert_with(|| problem(description));
            };
            if operation.security.as_ref().is_none_or(|s| !s.is_empty()) {
                add("401", "No valid token: the request was not authenticated");
            }
            if operation.request_body.is_some() {
                add("413", "The body is larger than the operation takes");
                add("415", "The body is not `application/json`");
            }
            if reads_input {
                add(
                    "400",
                    "Invalid input: a parameter or the body is malformed or out of range",
                );
            }
        }
    }
}

const PROBLEM_TYPE: &str = "application/problem+json";

fn problem(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                PROBLEM_TYPE,
                Content::new(Some(Ref::from_schema_name("Problem"))),
            )
            .build(),
    )
}

/// The document as committed: pretty JSON with a trailing newline.
pub fn document_json() -> String {
    let mut json =
        serde_json::to_string_pretty(&document()).expect("the OpenAPI document serializes");
    json.push('\n');
    json
}
