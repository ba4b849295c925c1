//! The one mapping from errors to `application/problem+json` responses. Internal details are
//! logged, never sent to clients.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use qb_api::{Problem, ProblemCode};
use qb_store::StoreError;

/// An error a request is answered with, from a handler or an operation of the app layer;
/// becomes a problem response.
#[derive(Debug)]
pub struct ApiError(pub Problem);

impl ApiError {
    pub fn new(code: ProblemCode, detail: impl Into<String>) -> Self {
        Self(Problem::new(code, detail))
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(ProblemCode::InvalidInput, detail)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::NotFound { .. } => ProblemCode::NotFound,
            StoreError::NameTaken { .. } => ProblemCode::NameTaken,
            StoreError::Invalid(_) => ProblemCode::InvalidInput,
            StoreError::PoolExhausted { .. } => ProblemCode::PoolExhausted,
            StoreError::InvalidNodeState { .. } | StoreError::NodeInCluster { .. } => {
                ProblemCode::InvalidNodeState
            }
            StoreError::NodeNotInCluster { .. } => ProblemCode::NodeNotInCluster,
            StoreError::ClusterNotEmpty { .. } => ProblemCode::ClusterNotEmpty,
            StoreError::BundleConflict { .. } => ProblemCode::BundleConflict,
            StoreError::UpgradeRefused(_) => ProblemCode::UpgradeRefused,
            StoreError::SnapshotRefused(_) => ProblemCode::SnapshotRefused,
            StoreError::IdentityConflict(conflict) => {
                return Self::new(ProblemCode::IdentityConflict, conflict.to_string());
            }
            StoreError::TokenRefused(refusal) => {
                return Self::new(ProblemCode::RegistrationRefused, refusal.to_string());
            }
            StoreError::CommitInDoubt(_) => {
                tracing::warn!(error = %format_args!("{:#}", qb_api::error_chain(&e)), "lost the store while committing");
                return Self::new(
                    ProblemCode::Unavailable,
                    "the controller's database went away while saving this change, which may \
                     or may not have been made: look before retrying",
                );
            }
            StoreError::Database(sqlx_error) if is_unavailable(sqlx_error) => {
                tracing::warn!(error = %format_args!("{:#}", qb_api::error_chain(&e)), "store unavailable");
                return Self::new(
                    ProblemCode::Unavailable,
                    "the controller's database is unavailable; retry shortly",
                );
            }
            StoreError::Database(sqlx_error) if is_disk_full(sqlx_error) => {
                tracing::error!(error = %qb_api::error_chain(&e), "the store's disk is full");
                return Self::new(
                    ProblemCode::Unavailable,
                    "the controller's database has no space left on its disk; nothing was \
                     changed: free space there, then retry",
                );
            }
            // Issuing fails on what the agent sent (a CSR that does not verify).
            StoreError::Issue(source) => {
                return Self::invalid(format!("certificate request refused: {source}"));
            }
            StoreError::Corrupt { .. }
            | StoreError::Sealed { .. }
            | StoreError::Database(_)
            | StoreError::Migrate(_) => {
                tracing::error!(error = %qb_api::error_chain(&e), "store error");
                return Self::new(
                    ProblemCode::Internal,
                    "internal error; see the controller's log",
                );
            }
        };
        Self::new(code, e.to_string())
    }
}

impl From<qb_store::SpecError> for ApiError {
    fn from(e: qb_store::SpecError) -> Self {
        match e {
            qb_store::SpecError::CidrOverlap { .. } => {
                Self::new(ProblemCode::CidrOverlap, e.to_string())
            }
            qb_store::SpecError::Invalid(m) => Self::invalid(m),
        }
    }
}

impl From<crate::engine::EngineError> for ApiError {
    fn from(e: crate::engine::EngineError) -> Self {
        match e {
            crate::engine::EngineError::Store(e) => e.into(),
            crate::engine::EngineError::Plan(message) => Self::invalid(message),
        }
    }
}

impl From<qb_api::InvalidValue> for ApiError {
    fn from(e: qb_api::InvalidValue) -> Self {
        Self::invalid(e.0)
    }
}

/// SQLite's `SQLITE_FULL` (13) or PostgreSQL's `disk_full` (53100).
fn is_disk_full(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|db| matches!(db.code().as_deref(), Some("13" | "53100")))
}

fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
        || qb_store::connection_failed(e)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        problem_response(self.0)
    }
}

pub(crate) fn problem_response(problem: Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let code = problem.code;
    let mut response = (status, axum::Json(problem)).into_response();
    // For the audit trail's record of a refusal.
    response.extensions_mut().insert(code);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}
