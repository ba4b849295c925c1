//! Tenants' agent upgrades: the build their hosts move to, how, where it stands, and each
//! host's part in it. What a host's agent runs is the node's `agent_build`, from its hello.

use qb_api::{AgentUpgradeState, Node, NodeId, TenantId};
use serde_json::json;
use sqlx::Row as _;
use time::OffsetDateTime;

use crate::events::NewEvent;
use crate::nodes::NODE_SELECT;
use crate::{Actor, Result, Store, StoreError, from_ms, now_ms, to_ms};

/// A tenant's agent upgrade as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAgentUpgrade {
    pub build: String,
    pub size: u64,
    pub version: String,
    pub batch_size: u32,
    pub trial_seconds: u32,
    pub state: AgentUpgradeState,
    pub message: Option<String>,
    pub started_at: OffsetDateTime,
    /// The hosts told to upgrade, and how that went.
    pub nodes: Vec<UpgradingNode>,
}

/// A host told to upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpgradingNode {
    pub node_id: NodeId,
    pub state: UpgradingState,
    pub since: OffsetDateTime,
    pub message: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpgradingState {
    Upgrading,
    Upgraded,
    Failed,
}

impl UpgradingState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Upgrading => "upgrading",
            Self::Upgraded => "upgraded",
            Self::Failed => "failed",
        }
    }
}

/// What a new agent upgrade is to do.
#[derive(Clone, Debug)]
pub struct NewAgentUpgrade<'a> {
    pub build: &'a str,
    pub size: u64,
    pub version: &'a str,
    pub batch_size: u32,
    pub trial_seconds: u32,
}

fn corrupt(what: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Corrupt {
        what,
        source: Box::new(e),
    }
}

impl Store {
    /// Starts the tenant's agent upgrade, replacing one that stopped or is done; refused while
    /// one runs or is paused.
    pub async fn start_agent_upgrade(
        &self,
        tenant: TenantId,
        new: &NewAgentUpgrade<'_>,
        actor: &Actor,
    ) -> Result<()> {
        let mut w = self.write(tenant).await?;
        let state: Option<String> =
            sqlx::query("SELECT state FROM agent_upgrades WHERE tenant_id = $1")
                .bind(tenant.to_string())
                .fetch_optional(&mut *w.tx)
                .await?
                .map(|row| row.try_get("state"))
                .transpose()?;
        if let Some(state) = state.filter(|s| s == "running" || s == "paused") {
            return Err(StoreError::UpgradeRefused(format!(
                "an agent upgrade is already {state}; resume or wait for it (`qb agent upgrade status`)"
            )));
        }
        for sql in [
            "DELETE FROM agent_upgrade_nodes WHERE tenant_id = $1",
            "DELETE FROM agent_upgrades WHERE tenant_id = $1",
        ] {
            sqlx::query(sql)
                .bind(tenant.to_string())
                .execute(&mut *w.tx)
                .await?;
        }
        let now = now_ms();
        sqlx::query(
            "INSERT INTO agent_upgrades (tenant_id, build, size, version, batch_size, \
             trial_seconds, state, message, started_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'running', NULL, $7, $7)",
        )
        .bind(tenant.to_string())
        .bind(new.build)
        .bind(i64::try_from(new.size).unwrap_or(i64::MAX))
        .bind(new.version)
        .bind(i64::from(new.batch_size))
        .bind(i64::from(new.trial_seconds))
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
        w.commit_with_event(
            tenant,
            actor,
            NewEvent {
                action: "agent_upgrade.started",
                object_kind: "agent_upgrade",
                object_id: new.build.to_owned(),
                object_name: new.version,
                detail: json!({
                    "build": new.build,
                    "batch_size": new.batch_size,
                    "trial_seconds": new.trial_seconds,
                }),
            },
        )
        .await
    }

    /// The tenant's agent upgrade, if it ever started one.
    pub async fn agent_upgrade(&self, tenant: TenantId) -> Result<Option<StoredAgentUpgrade>> {
        let Some(row) = sqlx::query("SELECT * FROM agent_upgrades WHERE tenant_id = $1")
            .bind(tenant.to_string())
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let nodes = sqlx::query(
            "SELECT node_id, state, since, message FROM agent_upgrade_nodes \
             WHERE tenant_id = $1 ORDER BY since, node_id",
        )
        .bind(tenant.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            let state = match row.try_get::<String, _>("state")?.as_str() {
                "upgrading" => UpgradingState::Upgrading,
                "upgraded" => UpgradingState::Upgraded,
                _ => UpgradingState::Failed,
            };
            Ok(UpgradingNode {
                node_id: row
                    .try_get::<String, _>("node_id")?
                    .parse()
                    .map_err(|e| corrupt("agent upgrade node id", e))?,
                state,
                since: from_ms(row.try_get("since")?),
                message: row.try_get("message")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        let number = |column: &str| -> Result<u32> {
            Ok(u32::try_from(row.try_get::<i64, _>(column)?).unwrap_or(u32::MAX))
        };
        Ok(Some(StoredAgentUpgrade {
            build: row.try_get("build")?,
            size: u64::try_from(row.try_get::<i64, _>("size")?).unwrap_or_default(),
            version: row.try_get("version")?,
            batch_size: number("batch_size")?,
            trial_seconds: number("trial_seconds")?,
            state: row
                .try_get::<String, _>("state")?
                .parse()
                .map_err(|e| corrupt("agent upgrade state", e))?,
            message: row.try_get("message")?,
            started_at: from_ms(row.try_get("started_at")?),
            nodes,
        }))
    }

    /// Tenants whose agent upgrade runs.
    pub async fn running_agent_upgrades(&self) -> Result<Vec<TenantId>> {
        sqlx::query("SELECT tenant_id FROM agent_upgrades WHERE state = 'running'")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                row.try_get::<String, _>("tenant_id")?
                    .parse()
                    .map_err(|e| corrupt("agent upgrade tenant id", e))
            })
            .collect()
    }

    /// Moves the tenant's agent upgrade to `state` (an operator's pause or resume, or the
    /// controller's verdict), if it is in one of `from`; whether it moved.
    pub async fn set_agent_upgrade_state(
        &self,
        tenant: TenantId,
        from: &[AgentUpgradeState],
        state: AgentUpgradeState,
        message: Option<&str>,
        actor: &Actor,
    ) -> Result<bool> {
        let mut w = self.write(tenant).await?;
        let current: Option<String> =
            sqlx::query("SELECT state FROM agent_upgrades WHERE tenant_id = $1")
                .bind(tenant.to_string())
                .fetch_optional(&mut *w.tx)
                .await?
                .map(|row| row.try_get("state"))
                .transpose()?;
        let Some(current) = current else {
            return Err(StoreError::not_found("agent upgrade", tenant));
        };
        if !from.iter().any(|s| s.as_str() == current) {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE agent_upgrades SET state = $1, message = $2, updated_at = $3 \
             WHERE tenant_id = $4",
        )
        .bind(state.as_str())
        .bind(message)
        .bind(now_ms())
        .bind(tenant.to_string())
        .execute(&mut *w.tx)
        .await?;
        if state == AgentUpgradeState::Running {
            // A pause does not count against the hosts upgrading: their time starts again.
            sqlx::query(
                "UPDATE agent_upgrade_nodes SET since = $1 \
                 WHERE tenant_id = $2 AND state = 'upgrading'",
            )
            .bind(now_ms())
            .bind(tenant.to_string())
            .execute(&mut *w.tx)
            .await?;
        }
        w.commit_with_event(
            tenant,
            actor,
            NewEvent {
                action: "agent_upgrade.state_changed",
                object_kind: "agent_upgrade",
                object_id: String::new(),
                object_name: "",
                detail: json!({ "from": current, "to": state.as_str(), "message": message }),
            },
        )
        .await?;
        Ok(true)
    }

    /// Records a host's part in its tenant's agent upgrade to `build`, while that upgrade runs
    /// (a decision about an upgrade since stopped or replaced changes nothing).
    pub async fn set_upgrading_node(
        &self,
        tenant: TenantId,
        node: NodeId,
        build: &str,
        state: UpgradingState,
        message: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<()> {
        let _writer = self.bookkeeping_lock().await;
        sqlx::query(
            "INSERT INTO agent_upgrade_nodes (tenant_id, node_id, state, since, message) \
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM agent_upgrades \
             WHERE tenant_id = $1 AND build = $6 AND state = 'running') \
             ON CONFLICT (tenant_id, node_id) DO UPDATE SET state = $3, since = $4, message = $5",
        )
        .bind(tenant.to_string())
        .bind(node.to_string())
        .bind(state.as_str())
        .bind(to_ms(at))
        .bind(message)
        .bind(build)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a host told to upgrade to `build` that has not staged it (it went away): it is
    /// told again, as a host not yet upgraded, once back.
    pub async fn forget_upgrading_node(
        &self,
        tenant: TenantId,
        node: NodeId,
        build: &str,
    ) -> Result<()> {
        let _writer = self.bookkeeping_lock().await;
        sqlx::query(
            "DELETE FROM agent_upgrade_nodes WHERE tenant_id = $1 AND node_id = $2 \
             AND state = 'upgrading' AND message IS NULL AND EXISTS (SELECT 1 FROM agent_upgrades \
             WHERE tenant_id = $1 AND build = $3 AND state = 'running')",
        )
        .bind(tenant.to_string())
        .bind(node.to_string())
        .bind(build)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A host told to upgrade to `build` answered: it staged the build (`Upgrading`, with
    /// `message` "on trial") or could not (`Failed`). Only a host still waiting for that
    /// answer moves: a late or repeated answer changes nothing.
    pub async fn upgrading_node_answered(
        &self,
        tenant: TenantId,
        node: NodeId,
        build: &str,
        state: UpgradingState,
        message: &str,
        at: OffsetDateTime,
    ) -> Result<()> {
        let _writer = self.bookkeeping_lock().await;
        sqlx::query(
            "UPDATE agent_upgrade_nodes SET state = $1, message = $2, since = $3 \
             WHERE tenant_id = $4 AND node_id = $5 AND state = 'upgrading' AND message IS NULL \
             AND EXISTS (SELECT 1 FROM agent_upgrades WHERE tenant_id = $4 AND build = $6 \
             AND state IN ('running', 'paused'))",
        )
        .bind(state.as_str())
        .bind(message)
        .bind(to_ms(at))
        .bind(tenant.to_string())
        .bind(node.to_string())
        .bind(build)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A host's agent went back from `build` (its trial failed): if the tenant's upgrade is to
    /// that build and the host was upgrading, it failed, for `reason`.
    pub async fn agent_rolled_back(
        &self,
        tenant: TenantId,
        node: NodeId,
        build: &str,
        reason: &str,
    ) -> Result<()> {
        let _writer = self.bookkeeping_lock().await;
        sqlx::query(
            "UPDATE agent_upgrade_nodes SET state = 'failed', message = $1, since = $2 \
             WHERE tenant_id = $3 AND node_id = $4 AND state = 'upgrading' AND EXISTS \
             (SELECT 1 FROM agent_upgrades WHERE tenant_id = $3 AND build = $5)",
        )
        .bind(reason)
        .bind(now_ms())
        .bind(tenant.to_string())
        .bind(node.to_string())
        .bind(build)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The tenant's nodes an agent upgrade covers (all but deauthorized ones), by name.
    pub async fn upgradable_nodes(&self, tenant: TenantId) -> Result<Vec<Node>> {
        sqlx::query(&format!(
            "{NODE_SELECT} WHERE n.tenant_id = $1 AND n.state <> 'deauthorized' ORDER BY n.name"
        ))
        .bind(tenant.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(crate::rows::node)
        .collect()
    }
}
