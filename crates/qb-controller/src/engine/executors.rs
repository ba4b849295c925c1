//! The engine's executors: one task per cluster with work, so that a slow drain, a stuck host
//! or a long preflight of one cluster never delays another. The engine's loop starts and stops
//! them as clusters come and go, wakes them, and wipes pool nodes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use qb_api::{ClusterId, TenantId};
use qb_store::StoreError;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use super::{Engine, EngineError, RESYNC};

/// A cluster's executor, as the engine's loop sees it.
struct Executor {
    /// Wakes it; dropped, it ends after its current pass.
    wake: mpsc::Sender<()>,
    task: AbortHandle,
}

/// What a cluster's pass asks of its executor.
pub(super) enum Next {
    /// Pass again at once: the store changed under the pass (a role, a membership).
    Again,
    /// Wait for a wake-up or [`RESYNC`].
    Wait,
}

impl Engine {
    /// Runs until the process ends (or the task is aborted, which ends every executor): one
    /// executor per cluster with work, and the pool's wipes.
    pub async fn run(self: Arc<Self>) {
        *super::lock(&self.running_since) = Some(std::time::Instant::now());
        let mut tasks = JoinSet::new();
        let mut executors: HashMap<(TenantId, ClusterId), Executor> = HashMap::new();
        // Executors told to stop that may still be in their last pass.
        let mut retiring: Vec<((TenantId, ClusterId), AbortHandle)> = Vec::new();
        loop {
            while tasks.try_join_next().is_some() {}
            retiring.retain(|(_, task)| !task.is_finished());
            self.wipe_pool_nodes().await;
            match self.store.engine_clusters().await {
                Ok(clusters) => {
                    let listed: HashSet<_> = clusters.iter().copied().collect();
                    executors.retain(|key, executor| {
                        if executor.task.is_finished() {
                            return false;
                        }
                        let listed = listed.contains(key);
                        if !listed {
                            retiring.push((*key, executor.task.clone()));
                        }
                        listed
                    });
                    super::lock(&self.preflights)
                        .retain(|id, _| listed.iter().any(|(_, cluster)| cluster == id));
                    for key in clusters {
                        if let Some(executor) = executors.get(&key) {
                            // Full: a wake-up is already pending.
                            let _ = executor.wake.try_send(());
                        } else if !retiring.iter().any(|(k, _)| *k == key) {
                            let (wake, woken) = mpsc::channel(1);
                            let task = tasks.spawn(self.clone().execute(key.0, key.1, woken));
                            executors.insert(key, Executor { wake, task });
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list the clusters; retrying"),
            }
            let _ = tokio::time::timeout(RESYNC, self.wake.notified()).await;
        }
    }

    /// A cluster's executor: its passes, until the engine drops its wake-up channel.
    async fn execute(
        self: Arc<Self>,
        tenant: TenantId,
        cluster: ClusterId,
        mut woken: mpsc::Receiver<()>,
    ) {
        loop {
            match self.reconcile(tenant, cluster).await {
                Ok(Next::Again) => continue,
                Ok(Next::Wait) => {}
                Err(EngineError::Store(StoreError::NotFound { .. })) => return,
                Err(e) => {
                    tracing::warn!(%tenant, cluster_id = %cluster, error = %e, "cluster pass failed")
                }
            }
            if let Ok(None) = tokio::time::timeout(RESYNC, woken.recv()).await {
                return;
            }
        }
    }
}
