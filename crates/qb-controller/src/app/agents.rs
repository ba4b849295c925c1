//! Bringing hosts in: bootstrap tokens for agents to register with, and agent packages that
//! carry one.

use qb_api::{
    AgentUpgrade, AgentUpgradeState, BootstrapToken, BootstrapTokenId, CreateBootstrapToken,
    CreatedBootstrapToken, Page, PageParams, ProblemCode, StartAgentUpgrade,
};
use qb_package::Format;
use qb_store::{NewAgentUpgrade, StoreError};
use sha2::{Digest as _, Sha256};

use super::{AppState, hours_from_now, within};
use crate::ApiError;
use crate::agents::packages;
use crate::auth::{Caller, new_secret_with};

/// An agent package built for a tenant.
pub struct AgentPackageFile {
    pub file_name: String,
    pub bytes: Vec<u8>,
}

impl AppState {
    pub async fn list_bootstrap_tokens(
        &self,
        caller: &Caller,
        page: &PageParams,
    ) -> Result<Page<BootstrapToken>, ApiError> {
        Ok(self
            .store
            .list_bootstrap_tokens(caller.tenant(), page.after.as_deref(), page.limit()?)
            .await?)
    }

    /// A bootstrap token for agents to register hosts with, its secret returned once.
    pub async fn create_bootstrap_token(
        &self,
        caller: &Caller,
        req: CreateBootstrapToken,
    ) -> Result<CreatedBootstrapToken, ApiError> {
        let hours = within(
            "expires_in_hours",
            req.expires_in_hours,
            CreateBootstrapToken::DEFAULT_HOURS,
            CreateBootstrapToken::MAX_HOURS,
        )?;
        let uses = within(
            "max_uses",
            req.max_uses,
            CreateBootstrapToken::DEFAULT_USES,
            CreateBootstrapToken::MAX_USES,
        )?;
        let secret = new_secret_with(crate::agents::endpoint::BOOTSTRAP_TOKEN_PREFIX);
        Ok(self
            .store
            .create_bootstrap_token(
                caller.tenant(),
                secret,
                req.description,
                hours_from_now(hours),
                uses,
                &caller.actor(),
            )
            .await?)
    }

    /// Revokes a bootstrap token at once: hosts not yet registered with it can no longer use
    /// it.
    pub async fn revoke_bootstrap_token(
        &self,
        caller: &Caller,
        id: BootstrapTokenId,
    ) -> Result<BootstrapToken, StoreError> {
        self.store
            .revoke_bootstrap_token(caller.tenant(), id, &caller.actor())
            .await
    }

    /// An agent package in `format` for the caller's tenant, with a new bootstrap token inside
    /// (its lifetime and uses bounded as any bootstrap token's).
    pub async fn agent_package(
        &self,
        caller: &Caller,
        format: Format,
        expires_in_hours: Option<u32>,
        max_uses: Option<u32>,
    ) -> Result<AgentPackageFile, ApiError> {
        let packaging = self.packaging.clone().ok_or_else(|| {
            ApiError::new(
                ProblemCode::Unavailable,
                "this controller has no agent binary to package (see --agent-binary)",
            )
        })?;
        let binary = packaging.agent_binary().await?;
        let file_name = packages::file_name(format)?;
        let request = CreateBootstrapToken {
            description: Some(format!("agent package {file_name}").parse()?),
            expires_in_hours,
            max_uses,
        };
        let token = self.create_bootstrap_token(caller, request).await?;
        let bytes = packaging.build(format, binary, &token.secret).await?;
        tracing::info!(tenant_id = %caller.tenant(), package = %file_name, bootstrap_token = %token.token.id, "built an agent package");
        Ok(AgentPackageFile { file_name, bytes })
    }
}

/// What an operator does to a running agent upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentUpgradeChange {
    Pause,
    Resume,
    /// Ends it: hosts upgrading finish their trial, no other starts.
    Stop,
}

/// Agent upgrades (driven by [`crate::agent_upgrades`]).
impl AppState {
    /// Starts moving the caller's hosts to the build of the agent this controller ships: it
    /// becomes an artifact the tenant's agents may download, and the upgrade runs.
    pub async fn start_agent_upgrade(
        &self,
        caller: &Caller,
        req: &StartAgentUpgrade,
    ) -> Result<AgentUpgrade, ApiError> {
        let (batch_size, trial_seconds) = req.settings()?;
        let packaging = self.packaging.clone().ok_or_else(|| {
            ApiError::new(
                ProblemCode::Unavailable,
                "this controller has no agent build to offer (see --agent-binary)",
            )
        })?;
        let binary = packaging.agent_binary().await?;
        let size = binary.len() as u64;
        let (binary, sha256) = tokio::task::spawn_blocking(move || {
            let sha256 = hex::encode(Sha256::digest(&binary));
            (binary, sha256)
        })
        .await
        .map_err(|e| ApiError::new(ProblemCode::Internal, e.to_string()))?;
        let body = futures_util::stream::once(async move {
            Ok::<_, axum::Error>(axum::body::Bytes::from(binary))
        });
        self.engine
            .artifacts
            .put(&sha256, Box::pin(body))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot keep the agent build as an artifact");
                ApiError::new(
                    ProblemCode::Internal,
                    "cannot keep the agent build; see the controller's log",
                )
            })?;
        let new = NewAgentUpgrade {
            build: &sha256,
            size,
            version: packages::VERSION,
            batch_size,
            trial_seconds,
        };
        self.store
            .start_agent_upgrade(caller.tenant(), &new, &caller.actor())
            .await?;
        tracing::info!(tenant_id = %caller.tenant(), build = sha256, batch_size, trial_seconds, "started an agent upgrade");
        self.agent_upgrade(caller).await
    }

    /// The caller's agent upgrade: where it is and every host's part.
    pub async fn agent_upgrade(&self, caller: &Caller) -> Result<AgentUpgrade, ApiError> {
        let upgrade = self
            .store
            .agent_upgrade(caller.tenant())
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    ProblemCode::NotFound,
                    "no agent upgrade was started (`qb agent upgrade start`)",
                )
            })?;
        let mut nodes = self.store.upgradable_nodes(caller.tenant()).await?;
        self.agents.overlay_all(&mut nodes).await;
        Ok(crate::agent_upgrades::status(&upgrade, &nodes))
    }

    /// Pauses, resumes or stops the caller's agent upgrade. Asking for the state it is in
    /// already is no error.
    pub async fn change_agent_upgrade(
        &self,
        caller: &Caller,
        change: AgentUpgradeChange,
    ) -> Result<AgentUpgrade, ApiError> {
        use AgentUpgradeState::{Paused, Running, Stopped};
        let (from, to, done, message): (&[AgentUpgradeState], _, _, _) = match change {
            AgentUpgradeChange::Pause => (&[Running], Paused, "paused", None),
            AgentUpgradeChange::Resume => (&[Paused], Running, "resumed", None),
            AgentUpgradeChange::Stop => (
                &[Running, Paused],
                Stopped,
                "stopped",
                Some(format!("stopped by {}", caller.actor().0)),
            ),
        };
        let moved = self
            .store
            .set_agent_upgrade_state(
                caller.tenant(),
                from,
                to,
                message.as_deref(),
                &caller.actor(),
            )
            .await?;
        let upgrade = self.agent_upgrade(caller).await?;
        if !moved && upgrade.state != to {
            return Err(ApiError::new(
                ProblemCode::UpgradeRefused,
                format!(
                    "the agent upgrade is {}, so it cannot be {done}",
                    upgrade.state.as_str()
                ),
            ));
        }
        Ok(upgrade)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::fixture::Fixture;

    fn request(hours: Option<u32>, uses: Option<u32>) -> CreateBootstrapToken {
        CreateBootstrapToken {
            description: None,
            expires_in_hours: hours,
            max_uses: uses,
        }
    }

    #[tokio::test]
    async fn bootstrap_tokens_outside_their_bounds_are_refused_and_nothing_is_made() {
        let f = Fixture::new().await;
        for (hours, uses, message) in [
            (Some(0), None, "expires_in_hours must be between 1 and 720"),
            (
                Some(721),
                None,
                "expires_in_hours must be between 1 and 720",
            ),
            (None, Some(0), "max_uses must be between 1 and 10000"),
            (None, Some(10_001), "max_uses must be between 1 and 10000"),
        ] {
            let refused = f
                .app
                .create_bootstrap_token(&f.operator, request(hours, uses))
                .await
                .unwrap_err();
            assert_eq!(refused.0.code, ProblemCode::InvalidInput);
            assert_eq!(refused.0.detail, message);
        }
        let listed = f
            .app
            .list_bootstrap_tokens(&f.operator, &PageParams::default())
            .await
            .unwrap();
        assert!(listed.items.is_empty(), "{:?}", listed.items);
    }

    #[tokio::test]
    async fn a_bootstrap_token_registers_one_host_for_a_day_unless_asked_otherwise() {
        let f = Fixture::new().await;
        let made = f
            .app
            .create_bootstrap_token(&f.operator, request(None, None))
            .await
            .unwrap();
        assert!(
            made.secret
                .starts_with(crate::agents::endpoint::BOOTSTRAP_TOKEN_PREFIX)
        );
        assert_eq!(made.token.max_uses, CreateBootstrapToken::DEFAULT_USES);
        let day = hours_from_now(CreateBootstrapToken::DEFAULT_HOURS);
        assert!(made.token.expires_at <= day);
        assert!(made.token.expires_at > day - time::Duration::minutes(1));
        let revoked = f
            .app
            .revoke_bootstrap_token(&f.operator, made.token.id)
            .await
            .unwrap();
        assert!(revoked.revoked_at.is_some());
    }

    #[tokio::test]
    async fn no_package_without_an_agent_binary() {
        let f = Fixture::new().await;
        let refused = f
            .app
            .agent_package(&f.operator, Format::Tarball, None, None)
            .await
            .err()
            .unwrap();
        assert_eq!(refused.0.code, ProblemCode::Unavailable);
    }

    #[tokio::test]
    async fn an_agent_upgrade_needs_a_build_sane_settings_and_moves_only_as_its_state_allows() {
        let mut f = Fixture::new().await;
        let start = |batch, trial| StartAgentUpgrade {
            batch_size: batch,
            trial_seconds: trial,
        };
        let refused = f
            .app
            .start_agent_upgrade(&f.operator, &start(None, None))
            .await
            .unwrap_err();
        assert_eq!(refused.0.code, ProblemCode::Unavailable);
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("qb-agent");
        std::fs::copy("/bin/true", &agent).unwrap();
        f.app.packaging = Some(std::sync::Arc::new(packages::Packaging {
            agent_url: "https://qb.example.net:7444".to_owned(),
            other_agent_urls: Vec::new(),
            ca_pin: "sha256:0000000000000000000000000000000000000000000000000000000000000000"
                .parse()
                .unwrap(),
            agent_binary: agent.clone(),
        }));
        for (batch, trial, message) in [
            (
                Some(0),
                None,
                "batch_size must be between 1 and 1000, not 0",
            ),
            (
                None,
                Some(9),
                "trial_seconds must be between 10 and 3600, not 9",
            ),
        ] {
            let refused = f
                .app
                .start_agent_upgrade(&f.operator, &start(batch, trial))
                .await
                .unwrap_err();
            assert_eq!(
                (refused.0.code, refused.0.detail.as_str()),
                (ProblemCode::InvalidInput, message)
            );
        }
        assert!(
            f.store.agent_upgrade(f.tenant).await.unwrap().is_none(),
            "nothing started"
        );
        let started = f
            .app
            .start_agent_upgrade(&f.operator, &start(None, None))
            .await
            .unwrap();
        let build = hex::encode(Sha256::digest(std::fs::read(&agent).unwrap()));
        assert_eq!(
            (started.build.as_str(), started.batch_size),
            (build.as_str(), 1)
        );
        // Its agents may download it now.
        assert!(f.store.tenant_has_artifact(f.tenant, &build).await.unwrap());
        assert!(f.app.engine.artifacts.size(&build).await.unwrap().is_some());
        // A stopped upgrade can be neither paused nor resumed; it can be started again.
        f.store
            .set_agent_upgrade_state(
                f.tenant,
                &[AgentUpgradeState::Running],
                AgentUpgradeState::Stopped,
                Some("n1 failed"),
                &qb_store::Actor::controller(),
            )
            .await
            .unwrap();
        for change in [AgentUpgradeChange::Pause, AgentUpgradeChange::Resume] {
            let refused = f
                .app
                .change_agent_upgrade(&f.operator, change)
                .await
                .unwrap_err();
            assert_eq!(
                refused.0.code,
                ProblemCode::UpgradeRefused,
                "{}",
                refused.0.detail
            );
        }
        let again = f
            .app
            .start_agent_upgrade(&f.operator, &start(Some(4), Some(30)))
            .await
            .unwrap();
        assert_eq!(
            (
                again.state,
                again.batch_size,
                again.trial_seconds,
                again.message
            ),
            (AgentUpgradeState::Running, 4, 30, None)
        );
    }
}
