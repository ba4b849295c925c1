//! The controller's reconciler: level-triggered, idempotent, restart-safe. It reads what the
//! store says should happen and finishes it.
//!
//! Today it has one job: return `detaching` nodes to the pool once their cluster components are
//! gone. No component is installed yet (that is the cluster engine's work), so a detaching node
//! has nothing to remove and is returned at once; the engine will gate this on the agent's report.

use std::time::Duration;

use qb_store::Actor;

use crate::AppState;

/// How often the reconciler looks even when nothing woke it (after a restart, a missed wake-up).
const RESYNC: Duration = Duration::from_secs(5);

pub async fn run(state: AppState) {
    loop {
        if let Err(e) = pass(&state).await {
            tracing::warn!(error = %e, "reconcile pass failed; retrying");
        }
        let _ = tokio::time::timeout(RESYNC, state.reconcile.notified()).await;
    }
}

/// One pass over everything that needs work.
pub async fn pass(state: &AppState) -> Result<(), qb_store::StoreError> {
    for (tenant, node) in state.store.detaching_nodes().await? {
        match state
            .store
            .finish_detach(tenant, node.id, &Actor::controller())
            .await
        {
            Ok(node) => {
                tracing::info!(node_id = %node.id, node = %node.name, "node returned to the pool")
            }
            // Someone else (another replica, a deauthorize) got there first: nothing to do.
            Err(
                qb_store::StoreError::InvalidNodeState { .. }
                | qb_store::StoreError::NotFound { .. },
            ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
