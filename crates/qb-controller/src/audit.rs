//! The audit trail beyond the changes themselves (each change is recorded with it, in its
//! transaction): the API's refusals of changes, and retention.
//!
//! Retention: events older than [`KEEP`] are forgotten, checked hourly by the replica that runs
//! the engine. The database itself refuses to delete an event younger than 400 days (its
//! migration `0016_events_retention`); a day more leaves room for clocks.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use qb_api::ProblemCode;
use qb_store::{Actor, Principal, Store};
use serde_json::json;
use time::OffsetDateTime;

use crate::AppState;

/// The action of a refused change's event.
pub const REFUSED: &str = "api.request_refused";

/// Who made a request, once their token was checked ([`crate::auth::Caller`] fills it in):
/// a refusal is recorded against them.
#[derive(Clone, Default)]
pub(crate) struct RequestCaller(Arc<OnceLock<Principal>>);

impl RequestCaller {
    pub(crate) fn set(&self, principal: &Principal) {
        let _ = self.0.set(principal.clone());
    }
}

/// Records every change the API refused (a request of a method other than GET, HEAD or
/// OPTIONS answered with an error) in the caller's tenant's audit trail: who, what, when, and
/// the status and problem code. A request whose token was missing or not valid has no tenant
/// to record it in (and anyone could send those): it is only logged, with its method, path and
/// status.
pub(crate) async fn record_refusals(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    if req.method().is_safe() || !req.uri().path().starts_with(qb_api::API_PREFIX) {
        return next.run(req).await;
    }
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let caller = RequestCaller::default();
    req.extensions_mut().insert(caller.clone());
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let code = response.extensions().get::<ProblemCode>().copied();
    let Some(principal) = caller.0.get() else {
        tracing::info!(%method, %path, status = status.as_u16(), ?code, "refused a change from an unauthenticated caller");
        return response;
    };
    let recorded = state
        .store
        .record_request(
            principal.tenant_id,
            &Actor::user(principal.user.as_str()),
            REFUSED,
            ("request", String::new(), &format!("{method} {path}")),
            json!({"method": method.as_str(), "path": path, "status": status.as_u16(), "code": code}),
        )
        .await;
    if let Err(e) = recorded {
        tracing::warn!(%method, %path, error = %e, "could not record a refused change in the audit trail");
    }
    response
}

/// How long events are kept: a year, and a month to compare a year-old change with.
pub const KEEP: time::Duration = time::Duration::days(401);
const EVERY: Duration = Duration::from_secs(3600);

/// Prunes old events now and every hour, until aborted.
pub async fn run(store: Store) {
    loop {
        match store.prune_events(OffsetDateTime::now_utc() - KEEP).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "forgot events past the audit trail's retention"),
            Err(e) => tracing::warn!(error = %e, "could not prune old events"),
        }
        tokio::time::sleep(EVERY).await;
    }
}
