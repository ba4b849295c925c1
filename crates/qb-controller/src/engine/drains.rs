//! Drains through a master's agent: a leaving node's (given up on after a while, so that a
//! detach ends), and a worker's before a change restarts it (never given up on: the rollout
//! waits), with its uncordon once it runs the change healthy.

use qb_agent_proto::kube::KubeOp;
use qb_store::{Drain, EngineCluster, EngineNode};

use super::{DRAIN_ATTEMPT_SECONDS, DRAIN_TIMEOUT, Engine, EngineError, UNCORDON_PROTOCOL};

impl Engine {
    /// Cordons and drains a leaving node through a master, once ([`decide::leave`] says when:
    /// not yet drained, and the cluster runs an API server). `Some` while it is still being
    /// drained, or waits for a master's API server to answer; `None` when it is drained or
    /// [`DRAIN_TIMEOUT`] ran out. How far it went is kept in
    /// the store: a restarted controller neither drains again nor waits anew.
    pub(super) async fn drain(
        &self,
        ec: &EngineCluster,
        n: &EngineNode,
    ) -> Result<Option<String>, EngineError> {
        let id = n.node.id;
        let started = match n.drain {
            Drain::Since(started) => started,
            _ => self.store.start_drain(ec.tenant, id).await?,
        };
        let elapsed = time::OffsetDateTime::now_utc() - started;
        // The API may be back in a moment (a restarted controller waits for its agents).
        let Some(via) = self.api_master(ec) else {
            if elapsed < DRAIN_TIMEOUT {
                return Ok(Some(format!(
                    "draining {}: waiting for a master's API server",
                    n.node.name
                )));
            }
            tracing::warn!(node = %n.node.name, timeout = ?DRAIN_TIMEOUT,
                "no API server answered to drain the node; detaching it anyway");
            self.store.finish_drain(ec.tenant, id, true).await?;
            return Ok(None);
        };
        let op = KubeOp::Drain {
            node: n.node.name.to_string(),
            timeout_seconds: DRAIN_ATTEMPT_SECONDS,
        };
        let result = self.kube(via, op).await;
        let elapsed = time::OffsetDateTime::now_utc() - started;
        let gave_up = match &result {
            Ok(_) => {
                tracing::info!(node = %n.node.name, "node cordoned and drained");
                false
            }
            Err(e) if elapsed >= DRAIN_TIMEOUT => {
                tracing::warn!(node = %n.node.name, error = %e, timeout = ?DRAIN_TIMEOUT,
                    "draining did not finish in time; detaching anyway");
                true
            }
            Err(e) => return Ok(Some(format!("draining {}: {e}", n.node.name))),
        };
        self.store.finish_drain(ec.tenant, id, gave_up).await?;
        Ok(None)
    }

    /// Cordons and drains a worker before a change restarts it ([`decide::rollout`] says when);
    /// `Some` while it is not drained yet. Unlike a leaving node's drain, this one is never given
    /// up on: a pod that a disruption budget never lets go holds the rollout, which says so.
    pub(super) async fn drain_for_change(
        &self,
        ec: &EngineCluster,
        n: &EngineNode,
    ) -> Result<Option<String>, EngineError> {
        let id = n.node.id;
        if n.drain == Drain::NotStarted {
            self.store.start_drain(ec.tenant, id).await?;
        }
        let Some(via) = self.api_master(ec) else {
            return Ok(Some(format!(
                "draining {}: waiting for a master's API server",
                n.node.name
            )));
        };
        let op = KubeOp::Drain {
            node: n.node.name.to_string(),
            timeout_seconds: DRAIN_ATTEMPT_SECONDS,
        };
        match self.kube(via, op).await {
            Ok(_) => {
                tracing::info!(node = %n.node.name, "worker cordoned and drained for a change");
                self.store.finish_drain(ec.tenant, id, false).await?;
                Ok(None)
            }
            Err(e) => Ok(Some(format!("draining {}: {e}", n.node.name))),
        }
    }

    /// Makes a worker drained for a change schedulable again; a failure is tried again on the
    /// next pass.
    pub(super) async fn uncordon(
        &self,
        ec: &EngineCluster,
        n: &EngineNode,
    ) -> Result<(), EngineError> {
        let Some(via) = self.api_master_speaking(ec, UNCORDON_PROTOCOL) else {
            return Ok(());
        };
        let op = KubeOp::Uncordon {
            node: n.node.name.to_string(),
        };
        match self.kube(via, op).await {
            Ok(_) => {
                tracing::info!(node = %n.node.name, "worker back in service after a change");
                self.store.uncordoned(ec.tenant, n.node.id).await?;
            }
            Err(e) => {
                tracing::warn!(node = %n.node.name, error = %e, "could not uncordon the worker")
            }
        }
        Ok(())
    }
}
