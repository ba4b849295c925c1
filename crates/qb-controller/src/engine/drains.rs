//! Drains through a master's agent: a leaving node's (given up on after a while, so that a
//! detach ends), and a worker's before a change restarts it (never given up on: the rollout
//! waits), with its uncordon once it runs the change healthy.

use qb_agent_proto::kube::KubeOp;
use qb_store::{Drain, EngineCluster, EngineNode};

use super::{DRAIN_ATTEMPT_SECONDS, Engine, EngineError, UNCORDON_PROTOCOL};

impl Engine {
    /// Cordons and drains a node through a master: a leaving one ([`decide::leave`] says when),
    /// given up on once `give_up` has passed since the first attempt, or a worker before a
    /// change restarts it ([`decide::rollout`] says when), never given up on (`None`: a pod a
    /// disruption budget never lets go holds the rollout, which says so). `Some` while it is
    /// still being drained or waits for a master's API server; `None` once drained or given
    /// up on. How far it went is kept in the store: a restarted controller neither drains
    /// again nor waits anew.
    pub(super) async fn drain(
        &self,
        ec: &EngineCluster,
        n: &EngineNode,
        give_up: Option<std::time::Duration>,
    ) -> Result<Option<String>, EngineError> {
        let id = n.node.id;
        let started = match n.drain {
            Drain::Since(started) => started,
            _ => self.store.start_drain(ec.tenant, id).await?,
        };
        let late =
            || give_up.is_some_and(|limit| time::OffsetDateTime::now_utc() - started >= limit);
        // The API may be back in a moment (a restarted controller waits for its agents).
        let Some(via) = self.api_master(ec) else {
            if !late() {
                return Ok(Some(format!(
                    "draining {}: waiting for a master's API server",
                    n.node.name
                )));
            }
            tracing::warn!(node = %n.node.name, timeout = ?give_up,
                "no API server answered to drain the node; detaching it anyway");
            self.store.finish_drain(ec.tenant, id, true).await?;
            return Ok(None);
        };
        let op = KubeOp::Drain {
            node: n.node.name.to_string(),
            timeout_seconds: DRAIN_ATTEMPT_SECONDS,
        };
        let gave_up = match self.kube(via, op).await {
            Ok(_) => {
                tracing::info!(node = %n.node.name, "node cordoned and drained");
                false
            }
            Err(e) if late() => {
                tracing::warn!(node = %n.node.name, error = %e, timeout = ?give_up,
                    "draining did not finish in time; detaching anyway");
                true
            }
            Err(e) => return Ok(Some(format!("draining {}: {e}", n.node.name))),
        };
        self.store.finish_drain(ec.tenant, id, gave_up).await?;
        Ok(None)
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
