//! Live updates for the web UI: `GET /api/v1/changes` is a stream of server-sent events that
//! says when anything a tenant can see has changed (nodes, their agents coming and going,
//! clusters, plans and their progress, the audit trail). The UI then reads what it shows again
//! through the API, so the stream itself carries no data and needs no rules of its own.
//!
//! Each tenant watched by at least one browser has one task that looks at its state every
//! [`EVERY`] and bumps a version when the state's fingerprint moves. Reading the state rather
//! than hooking every writer also sees changes made by other controller replicas.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use qb_api::{PageParams, TenantId};
use qb_store::NodeFilter;
use tokio::sync::watch;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::Caller;

/// How often a watched tenant's state is looked at.
pub const EVERY: Duration = Duration::from_secs(1);
/// How often a stream checks that its caller's token still holds, when nothing changed.
const RECHECK: Duration = Duration::from_secs(15);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(changes))
}

/// The version of each watched tenant's state.
#[derive(Default)]
pub struct Changes {
    tenants: Mutex<HashMap<TenantId, Arc<watch::Sender<u64>>>>,
}

impl Changes {
    /// Follows `tenant`'s version, starting the tenant's watcher if nobody watched it yet.
    fn subscribe(&self, state: &AppState, tenant: TenantId) -> watch::Receiver<u64> {
        let mut tenants = self.lock();
        if let Some(version) = tenants.get(&tenant) {
            return version.subscribe();
        }
        let (version, receiver) = watch::channel(0);
        let version = Arc::new(version);
        tenants.insert(tenant, version.clone());
        tokio::spawn(watch_tenant(state.clone(), tenant, version));
        receiver
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Arc<watch::Sender<u64>>>> {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Bumps the tenant's version whenever its fingerprint moves, until nobody watches.
async fn watch_tenant(state: AppState, tenant: TenantId, version: Arc<watch::Sender<u64>>) {
    let mut last = None;
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        {
            // Decided under the lock `subscribe` takes, so no new watcher is missed.
            let mut tenants = state.changes.lock();
            if version.receiver_count() == 0 {
                tenants.remove(&tenant);
                return;
            }
        }
        match fingerprint(&state, tenant).await {
            Ok(now) if last != Some(now) => {
                last = Some(now);
                version.send_modify(|v| *v += 1);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(tenant_id = %tenant, error = %e, "cannot read the state for live updates")
            }
        }
    }
}

/// A hash of what the tenant's pages show: nodes (with their agents' live state, but not the
/// heartbeat times, which move all the time), clusters, and the newest event.
async fn fingerprint(state: &AppState, tenant: TenantId) -> Result<u64, qb_store::StoreError> {
    let mut hasher = DefaultHasher::new();
    let mut after = None;
    loop {
        let page = state
            .store
            .list_nodes(
                tenant,
                &NodeFilter::default(),
                after.as_deref(),
                PageParams::MAX_LIMIT,
            )
            .await?;
        for mut node in page.items {
            state.agents.overlay(&mut node);
            if let Some(agent) = node.agent.as_mut() {
                agent.last_seen_at = None;
            }
            serde_json::to_string(&node)
                .unwrap_or_default()
                .hash(&mut hasher);
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let mut after = None;
    loop {
        let page = state
            .store
            .list_clusters(tenant, after.as_deref(), PageParams::MAX_LIMIT)
            .await?;
        for cluster in page.items {
            serde_json::to_string(&cluster)
                .unwrap_or_default()
                .hash(&mut hasher);
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    state.store.latest_event_id(tenant).await?.hash(&mut hasher);
    Ok(hasher.finish())
}

/// Server-sent events: `change` (with the tenant's version) once at once and then whenever
/// the tenant's state changed. The stream ends once the caller's token is revoked or expired.
#[utoipa::path(get, path = "/api/v1/changes", tag = "session",
    responses((status = 200, content_type = "text/event-stream", description = "`change` events"),
        (status = 401, body = qb_api::Problem)))]
pub(crate) async fn changes(
    State(state): State<AppState>,
    caller: Caller,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let version = state.changes.subscribe(&state, caller.tenant());
    let token = caller.0.token_id;
    let stream = futures_util::stream::unfold(
        (state, version, token, true),
        |(state, mut version, token, first)| async move {
            if !first {
                loop {
                    let changed = match tokio::time::timeout(RECHECK, version.changed()).await {
                        Ok(Ok(())) => true,
                        Ok(Err(_)) => return None,
                        Err(_) => false,
                    };
                    if !matches!(state.store.token_active(token).await, Ok(true)) {
                        return None;
                    }
                    if changed {
                        break;
                    }
                }
            }
            let v = *version.borrow_and_update();
            let event = Event::default()
                .event("change")
                .data(format!("{{\"version\":{v}}}"));
            Some((Ok(event), (state, version, token, false)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}
